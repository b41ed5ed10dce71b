"""block-lvsnap: a per-guest LVM snapshot of an origin LV.

target=<vg>/<lv> [<size>]. A classic (thick) origin gets a classic snapshot
of <size> (required: LVM's copy-on-write store); a thin origin gets a thin
snapshot in its pool, and a size given for it is an error (with a size LVM
would make a thick snapshot of the thin origin). Thin snapshots skip
activation by default: ours are made with the skip flag off (-kn), so they
are active now and whenever their VG is activated.

The snapshot is <vg>/xenblock-<guest>-<device>, tagged xenblock and
xenblock-backend:<backend path>. The name is what finds it again: a kept
snapshot at the guest's next start, or one a killed run (or a dom0 reboot,
which empties /run/xenblock) left, which is removed and made afresh instead
of failing with "already exists". An LV of that name without our tag is a
user's: refused, never touched.

The record names the LV before lvcreate runs; its undo (in xenblock.build)
removes exactly that LV (name, our tag, and its UUID once known), and
nothing if it is gone. A kept snapshot's undo leaves it be. The origin
counts as read for the sharing check: a guest writing it refuses the add (a
snapshot of a live writer is only crash-consistent) unless [lvsnap]
live_origin allows it.

A second domain of the guest's VM (a live migration's destination, named
<guest>--incoming until the source is gone) gets the first's snapshot, with
the guest's changes, not a fresh one of the origin (xenblock.twin).
"""
import re

from .. import lvm, sizes
from ..blockdev import Device
from ..deadline import Deadline
from ..errors import HotplugError
from ..source import Use, resolve

# LVM's names: letters, digits and + _ . -, not starting with a dash.
NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")
MAX_NAME = 127
# See the module's doc and xenblock.twin.
ONE_DEVICE_PER_VM = True


class Spec:
    """parse's result: vg, lv, size (bytes or None); check adds name (the
    snapshot's), keep, origin (an lvm.Volume) and found (our LV of that
    name, if there is one)."""

    def __init__(self, vg, lv, size):
        self.vg, self.lv, self.size = vg, lv, size
        self.name = self.origin = self.found = None
        self.keep = False

    @property
    def origin_name(self):
        return f"{self.vg}/{self.lv}"


def parse(target):
    try:
        text, size = sizes.split_trailing(target.strip())
    except ValueError as e:
        raise HotplugError(f"target {target.strip()!r}: the snapshot's size: {e}") from None
    vg, slash, lv = text.partition("/")
    if not slash or not NAME.fullmatch(vg) or not NAME.fullmatch(lv):
        raise HotplugError(f"target {target.strip()!r}: expected <vg>/<lv> [<size>], the origin logical "
                           "volume's volume group and name (letters, digits, + _ . -), then a size for a "
                           "classic origin")
    return Spec(vg, lv, size)


def named_after(spec, guest, device):
    """The snapshot's name, from the guest's name (None: not known) and the
    device (its vdev, xvda). The lifecycle calls this before check."""
    guest = _lvm_word(guest) if guest else "unnamed"
    spec.name = f"{lvm.NAME_PREFIX}{guest}-{_lvm_word(device)}"[:MAX_NAME]


def check(spec, request, config, opened):
    where = spec.origin_name
    if not request.writable:
        raise HotplugError(f"{where}: block-lvsnap disks are read-write (access=w); for a read-only disk give "
                           f"/dev/{where} to block-file")
    deadline = Deadline.of_run("add")
    found = {volume.name: volume for volume in lvm.volumes(spec.vg, deadline)}
    spec.origin = found.get(spec.lv)
    if spec.origin is None:
        raise HotplugError(f"{where}: no such logical volume in volume group {spec.vg}")
    spec.keep = config.lvsnap_keep or where in config.lvsnap_keep_origins
    _check_size(spec)
    spec.found = _ours(found.get(spec.name), spec)
    if spec.origin.devnum is None or config.lvsnap_live_origin:
        return []  # an inactive origin has no reader or writer
    return [Use(opened.enter_context(resolve(spec.origin.path, writable=False)), writable=False)]


def attach(spec, uses, request, build):
    vg, found = spec.vg, spec.found
    if found is not None and not spec.keep:
        # A leftover of ours (a killed run whose record is lost, or kept
        # before keep was turned off): made afresh.
        lvm.remove_ours(vg, found.name, found.uuid, build.deadline)
        found = None
    if found is not None:
        build.intend("lvsnap", vg=vg, lv=found.name, uuid=found.uuid, keep=True, thin=found.thin)
        if found.devnum is None:
            lvm.activate(found, build.deadline)
        what = "kept"
    else:
        step = build.intend("lvsnap", vg=vg, lv=spec.name, uuid=None, keep=False, thin=spec.origin.thin)
        tags = [lvm.TAG, lvm.BACKEND_TAG + build.record["key"]] + ([lvm.KEEP_TAG] if spec.keep else [])
        lvm.create_snapshot(spec.origin, spec.name, None if spec.origin.thin else spec.size, tags, build.deadline)
        found = _made(vg, spec.name, build.deadline)
        step.update(uuid=found.uuid, keep=spec.keep)
        build.save()
        what = "made now"
    if found.devnum is None:
        found = _made(vg, found.name, build.deadline)
    kind = "thin snapshot" if spec.origin.thin else f"{sizes.text(found.size)} snapshot"
    return Device(found.path, found.devnum, f"{kind} {found.full_name} of {spec.origin_name} ({what}"
                                            f"{', kept at destroy' if spec.keep else ''})")


def _check_size(spec):
    origin, where = spec.origin, spec.origin_name
    if origin.thin:
        if spec.size is not None:
            raise HotplugError(f"{where} is a thin volume: its snapshot takes space from the thin pool as it "
                               "is written; give no size (with one, LVM would make a thick snapshot)")
        return
    if spec.size is None:
        raise HotplugError(f"{where} is a classic (thick) volume: give the snapshot's size after it "
                           f"(target={where} <size>, e.g. 1G), the space its changes may take")
    # vg_free is whole extents: a size LVM rounds up past it is past it already.
    if spec.size > origin.vg_free:
        raise HotplugError(f"{where}: a snapshot of {sizes.text(spec.size)} asked for, volume group {spec.vg} "
                           f"has {sizes.text(origin.vg_free)} free")


def _ours(volume, spec):
    """volume (the LV named as our snapshot) if we may use or replace it."""
    if volume is None:
        return None
    if not volume.ours:
        raise HotplugError(f"{volume.full_name} exists and is not xenblock's (no tag {lvm.TAG}); it is left "
                           "alone: rename or remove it to give this guest a snapshot")
    if volume.origin != spec.lv:
        raise HotplugError(f"{volume.full_name}: kept snapshot of {volume.origin or 'no origin'}, not of "
                           f"{spec.origin_name}; lvremove it to start from {spec.origin_name}")
    if volume.open:
        raise HotplugError(f"{volume.full_name}: already open (in use by another guest or in dom0)")
    if spec.keep and volume.invalid:
        raise HotplugError(f"{volume.full_name}: the kept snapshot is invalid (it overflowed: "
                           f"{volume.snap_percent or 100:.0f}% full), the guest's changes are lost; lvremove "
                           "it to start afresh")
    return volume


def _made(vg, name, deadline):
    """vg/name, just made or activated, from the kernel; lvs if it has no node."""
    return lvm.active(vg, name) or _volume(vg, name, deadline)


def _volume(vg, name, deadline):
    for volume in lvm.volumes(vg, deadline):
        if volume.name == name:
            return volume
    raise HotplugError(f"{vg}/{name}: made, but lvs does not list it")


def _lvm_word(text):
    return re.sub(r"[^A-Za-z0-9+_.-]", "_", text)
