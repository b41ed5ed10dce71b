"""LVM through its own tools, done the way the hotplug path needs it.

Every command goes through xenblock.command (stdin /dev/null, nothing of
ours inherited, never killed half-way: an lvcreate killed while it has the
origin suspended leaves the origin's guest hanging), answers in JSON
(`--reportformat json`, sizes in bytes), never prompts (`-y`), and carries a
device filter that rejects the devices xenblock builds for guests: a guest
disk may hold physical volumes (a template's clones carry the same PV and VG
UUIDs), and dom0's LVM must never scan, let alone activate, them. LVM's own
locking is used as it is: no lock of ours around a volume group.

The filter replaces lvm.conf's devices/global_filter for our commands only.
"""
import os
from collections import namedtuple

from .blockdev import Devnum, listdir, read_attribute, read_text
from .errors import HotplugError

# The tag on every LV xenblock makes: what cleanup and reuse look for. A
# second tag names the backend path of the disk it was made for.
TAG = "xenblock"
BACKEND_TAG = "xenblock-backend:"
# A third tag on a snapshot kept at destroy ([lvsnap] keep): `xenblock
# cleanup` removes a snapshot of ours that no record names unless it has it.
KEEP_TAG = "xenblock-kept"
# The names of the snapshots xenblock makes start with this (see
# xenblock.types.lvsnap): the filter rejects them by name.
NAME_PREFIX = "xenblock-"
MARKER_DIR = "/run/xenblock/udev"
SYS_BLOCK = "/sys/block"
# Seconds a step must have left of the run's deadline to start. Measured in
# the emulated test dom0, where everything is about 30 times slower than on
# a real host: lvcreate of a classic snapshot took 5 to 15 s, of a thin one
# 5 s, lvs 1 to 3 s. remove has 10 s in all, of which the interpreter's start
# took 2.5 to 3.5 s there (up to 6 s on a loaded host), and lvremove 2.5 to
# 4 s (--noudevsync): it starts however little is left, and may overrun into
# the margin kept for the hotplug-error, because a refusal leaves the
# snapshot for certain, while an lvremove that outlives a killed script
# still ends (libxl kills the script's pid only) and leaves only the record,
# whose undo is then a no-op.
NEEDS = {"lvs": 3.0, "lvcreate": 12.0, "lvchange": 6.0, "lvremove": 0.0}
FIELDS = ("vg_name,lv_name,lv_uuid,lv_attr,lv_size,origin,segtype,lv_tags,snap_percent,"
          "lv_kernel_major,lv_kernel_minor,lv_dm_path,vg_free")


class Volume(namedtuple("Volume", "vg name uuid attr size origin segtype tags snap_percent devnum path "
                                  "vg_free")):
    """One LV as lvs reports it; devnum None when it is not active."""
    __slots__ = ()

    @property
    def full_name(self):
        return f"{self.vg}/{self.name}"

    @property
    def thin(self):
        return self.segtype == "thin"

    @property
    def ours(self):
        return TAG in self.tags

    @property
    def open(self):
        return self.attr[5:6] == "o"

    @property
    def invalid(self):
        """A classic snapshot the kernel gave up: it overflowed (or its store
        failed) and the changes it held are lost."""
        return self.attr[4:5] in ("I", "S") or (self.snap_percent or 0) >= 100


def volumes(vg, deadline, log=None):
    """Every LV of vg (hidden ones left out); a HotplugError if vg does not exist."""
    from . import command
    try:
        return _listed([vg], f"listing the logical volumes of {vg}", deadline, log)
    except command.CommandError as e:
        if "not found" in e.stderr:
            raise HotplugError(f"volume group {vg} not found (vgs lists the volume groups)") from None
        raise


def ours(deadline, log=None):
    """Every LV of xenblock's (tagged TAG), in every volume group."""
    return _listed(["--select", f"lv_tags={{{TAG}}}"], "listing xenblock's logical volumes", deadline, log)


def _listed(selection, step, deadline, log):
    import json  # here: the types table imports this module for every type
    out = _run(["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", FIELDS, *selection],
               step, "lvs", deadline, log)
    return [_volume(row) for row in json.loads(out)["report"][0]["lv"]]


def create_snapshot(origin, name, size, tags, deadline, log=None):
    """A snapshot of origin (a Volume) named name, activated: thin if size
    is None (with activation skip off, so that it is activated now and
    whenever its VG is), else classic, of size bytes."""
    argv = ["lvcreate", "-y", "-s", "-n", name]
    argv += ["-kn"] if size is None else ["-L", f"{size}b"]
    for tag in tags:
        argv += ["--addtag", tag]
    _run(argv + [origin.full_name], f"creating snapshot {origin.vg}/{name} of {origin.full_name}",
         "lvcreate", deadline, log)


def active(vg, name):
    """The active LV vg/name as the kernel shows it, or None if it has no
    node: read from sysfs rather than by a second lvs, which costs a few
    seconds of add's 40 under emulation. lvcreate and lvchange wait for
    udev (udev sync), so the node is there when they return."""
    path = f"/dev/{vg}/{name}"
    try:
        devnum = Devnum.of_rdev(os.stat(path).st_rdev)
    except FileNotFoundError:
        return None
    # An LV's dm UUID is LVM- then its VG's UUID and its own, 32 characters
    # each without the dashes that lvs puts in (6-4-4-4-4-4-6).
    raw = (read_attribute(devnum, "dm", "uuid") or "").removeprefix("LVM-")[32:64]
    if len(raw) != 32:
        return None
    cuts = (0, 6, 10, 14, 18, 22, 26, 32)
    uuid = "-".join(raw[a:b] for a, b in zip(cuts, cuts[1:]))
    size = int(read_attribute(devnum, "size")) * 512
    return Volume(vg, name, uuid, "", size, None, None, {TAG}, None, devnum, path, None)


def activate(volume, deadline, log=None):
    """Activate volume, also if it skips activation (a thin snapshot)."""
    _run(["lvchange", "-y", "-ay", "-K", volume.full_name], f"activating {volume.full_name}", "lvchange",
         deadline, log)


def remove_ours(vg, name, uuid, deadline, log=None):
    """Remove vg/name if it is still the LV we made: it carries our tag and,
    if uuid is given, that UUID. Nothing if it is gone (or vg is)."""
    from . import command
    select = f"lv_name='{name}' && lv_tags={{{TAG}}}" + (f" && lv_uuid='{uuid}'" if uuid else "")
    try:
        # --noudevsync: udev still removes the device's links; waiting for
        # it would take half of remove's time.
        _run(["lvremove", "-y", "--noudevsync", "--select", select, vg], f"removing snapshot {vg}/{name}", "lvremove",
             deadline, log)
    except command.CommandError as e:
        if "not found" not in e.stderr:
            raise


def device_filter():
    """The --config argument that rejects every device xenblock built for a
    guest: our loop devices (their udev markers), our device-mapper devices
    (UUID prefix XENBLOCK-) and our snapshot LVs (name prefix), by every name
    LVM may find them under (/dev/loopN, /dev/dm-N, /dev/block/M:m, the
    mapper and VG links). LVM rejects a device only if all its names are."""
    patterns = [r"^/dev/mapper/xenblock-", r"/dm-uuid-XENBLOCK-", rf"^/dev/[^/]+/{NAME_PREFIX}",
                r"^/dev/mapper/.+[^-]-xenblock--", r"/dm-name-xenblock-", r"/dm-name-.+[^-]-xenblock--"]
    patterns += [rf"^/dev/({'|'.join(names)})$" for names in [_our_kernel_names()] if names]
    return "devices/global_filter=[" + ",".join(f'"r|{p}|"' for p in patterns) + "]"


def _our_kernel_names():
    names = []
    for marker in listdir(MARKER_DIR):
        if marker.startswith("loop") and marker[4:].isdigit():
            names += [marker, f"block/7:{marker[4:]}"]
    for entry in listdir(SYS_BLOCK):
        if entry.startswith("dm-") and _is_ours(entry):
            dev = read_text(os.path.join(SYS_BLOCK, entry, "dev"))
            names += [entry] + ([f"block/{dev}"] if dev else [])
    return names


def _is_ours(dm_entry):
    uuid = read_text(os.path.join(SYS_BLOCK, dm_entry, "dm", "uuid")) or ""
    name = read_text(os.path.join(SYS_BLOCK, dm_entry, "dm", "name")) or ""
    # An LV's dm name is <vg>-<lv> with the dashes inside each doubled: ours
    # hold "-xenblock--" (a VG whose own name holds that too is filtered as
    # well, which only keeps LVM from looking for PVs on its LVs).
    return uuid.startswith("XENBLOCK-") or (uuid.startswith("LVM-") and "-xenblock--" in name)


def _run(argv, step, kind, deadline, log):
    from . import command
    return command.run([argv[0], "--config", device_filter(), *argv[1:]], step, deadline, NEEDS[kind], log)


def _volume(row):
    major, minor = int(row["lv_kernel_major"] or -1), int(row["lv_kernel_minor"] or -1)
    percent = row.get("snap_percent") or ""
    return Volume(row["vg_name"], row["lv_name"], row["lv_uuid"], row["lv_attr"], int(row["lv_size"]),
                  row["origin"], row["segtype"], set(filter(None, row["lv_tags"].split(","))),
                  float(percent) if percent else None, Devnum(major, minor) if major >= 0 else None,
                  row["lv_dm_path"], int(row["vg_free"]))
