"""`xenblock cleanup`: what a lost or failed remove left behind, taken down.

Two kinds of leftover, each provably xenblock's:
  - a record whose backend is gone from xenstore (a guest destroyed while
    its remove did not run, failed, or was killed): its steps are undone
    as remove would, under the same lock of the disk that the scripts take,
    so a script running meanwhile is never raced (its disk is left, and
    said to be busy);
  - a device of ours that no record names (the records were lost with
    /run, or a run was killed in an older version): a loop device whose
    name field carries our mark (xenblock:...), a device-mapper device whose
    UUID starts XENBLOCK-, a snapshot LV tagged xenblock and not kept (no
    xenblock-kept tag), an nbd device connected with our backend
    identifier (xenblock:...), and a qemu-nbd process serving on a socket
    under /run/xenblock/nbd (disconnected, it exits by itself; one that
    never had a client is sent SIGTERM, on which qemu-nbd flushes the image
    and exits). A user's own devices, LVs and qemu-nbd carry none of these,
    whatever their names.
Nothing still in use is touched (a guest's blkback, a dom0 mount, a process,
a device stacked on it), and nothing a user keeps: undoing a record removes
only what its add made (never a base image, a CoW file, a kept snapshot).

The kernel is scanned before the records are read: an add saves its record
before it makes anything, so whatever the scan saw of a running add is
named by a record read after it.
"""
from collections import namedtuple

from . import build, dm, locks, loop, lvm, nbd, qemunbd
from .blockdev import diskseq
from .deadline import Deadline, start_ticks
from .errors import HotplugError

# What cleanup found: what (for a person), done (None: only listed, True:
# taken down, False: left, with why).
Action = namedtuple("Action", "what done why")
# block-tap's leftovers: devices [(index, backend identifier)] and daemons
# [(pid, socket path)].
Served = namedtuple("Served", "devices daemons")
STEP_SECONDS = 30


def run(state, xs, dry_run=False):
    """The Actions taken (or, with dry_run, that would be)."""
    records, devices, loops, volumes, served = unrecorded(state)
    actions = [_record(record, state, xs, dry_run) for record in records
               if xs.read(f"{record['key']}/frontend-id") is None]
    actions += [_volume(volume, dry_run) for volume in volumes]
    # Devices before the daemons serving them: a disconnected qemu-nbd exits by itself.
    actions += [_nbd(index, mark, dry_run) for index, mark in served.devices]
    actions += [_qemu_nbd(pid, path, dry_run) for pid, path in served.daemons]
    removed = [_device(device, state, dry_run) for device in devices]
    # A dry run takes nothing down: a loop device under a device-mapper
    # device it would remove first is not held by that one.
    going = {f"dm-{device.devnum.minor}" for device, action in zip(devices, removed) if action.done is not False}
    actions += removed + [_loop(node, devnum, mark, state, dry_run, going) for node, devnum, mark in loops]
    return actions


def unrecorded(state):
    """(the records, the device-mapper devices of ours that none names (as
    dm.Listed), the loop devices of ours that none names ((node, Devnum,
    mark)), the snapshot LVs of ours that none names and that are not kept
    (lvm.Volume), block-tap's nbd devices and qemu-nbd processes that none
    names (Served)); the kernel scanned first (see the module's doc)."""
    loops, devices, volumes = _our_loops(), _our_dm_devices(), _our_volumes()
    nbds, daemons = nbd.ours(), qemunbd.ours(state.path)
    records = state.records()
    steps = [step for record in records for step in record["steps"]]
    recorded = {(step.get("vg"), step.get("lv")) for step in steps}
    volumes = [volume for volume in volumes if (volume.vg, volume.name) not in recorded
               and lvm.KEEP_TAG not in volume.tags]
    named = {(step.get("node"), step.get("diskseq")) for step in steps}
    uuids = {step.get("uuid") for step in steps}
    backends = {step.get("backend") for step in steps}
    sockets = {step.get("socket") for step in steps}
    served = Served([(index, mark) for index, mark in nbds if mark not in backends],
                    [(pid, path) for pid, path in daemons if path not in sockets])
    return (records, [device for device in devices if device.uuid not in uuids],
            [(node, devnum, mark) for node, devnum, mark in loops
             if (node, diskseq(devnum)) not in named and (node, None) not in named], volumes, served)


def _record(record, state, xs, dry_run):
    key = record["key"]
    what = f"record {key} ({record['target']}, domain {record.get('frontend_id')}): its backend is gone"
    with locks.held_if_free(state.lock_path(key)) as held:
        if not held:
            return Action(what, False, "a hotplug script is running for it")
        current = state.load(key)
        if current is None or xs.read(f"{key}/frontend-id") is not None:
            return Action(what, False, "taken down or made again meanwhile")
        if dry_run:
            return Action(what, None, None)
        try:
            build.teardown(current, state, Deadline.after(STEP_SECONDS))
        except HotplugError as e:
            return Action(what, False, str(e))
    return Action(what, True, None)


def _volume(volume, dry_run):
    what = f"logical volume {volume.full_name} (tagged {lvm.TAG}, not kept), no record names it"
    if volume.open:
        return Action(what, False, "open (in use)")
    if dry_run:
        return Action(what, None, None)
    try:
        lvm.remove_ours(volume.vg, volume.name, volume.uuid, Deadline.after(STEP_SECONDS))
    except HotplugError as e:
        return Action(what, False, str(e))
    return Action(what, True, None)


def _device(device, state, dry_run):
    what = f"device-mapper device {device.name} ({device.devnum}), no record names it"
    users = _users(device.devnum)
    if users:
        return Action(what, False, f"in use by {users}")
    if dry_run:
        return Action(what, None, None)
    try:
        build.undo_dm({"uuid": device.uuid, "node": dm.node(device.devnum), "devnum": str(device.devnum)},
                      state, Deadline.after(STEP_SECONDS))
    except (HotplugError, dm.DeviceMapperError) as e:
        return Action(what, False, str(e))
    return Action(what, True, None)


def _loop(node, devnum, mark, state, dry_run, going):
    what = f"loop device {node} ({mark}), no record names it"
    users = _users(devnum, going)
    if users:
        return Action(what, False, f"in use by {users}")
    if dry_run:
        return Action(what, None, None)
    try:
        build.undo_loop({"undo": "loop", "node": node, "diskseq": diskseq(devnum), "mark": mark}, state,
                        Deadline.after(STEP_SECONDS))
    except HotplugError as e:
        return Action(what, False, str(e))
    return Action(what, True, None)


def _nbd(index, mark, dry_run):
    what = f"nbd device {nbd.node(index)} ({mark}), no record names it"
    users = _users(nbd.devnum(index))
    if users:
        return Action(what, False, f"in use by {users}")
    if dry_run:
        return Action(what, None, None)
    try:
        nbd.disconnect(mark, Deadline.after(STEP_SECONDS))
    except HotplugError as e:
        return Action(what, False, str(e))
    return Action(what, True, None)


def _qemu_nbd(pid, path, dry_run):
    what = f"qemu-nbd (pid {pid}) serving on {path}, no record names it"
    if dry_run:
        return Action(what, None, None)
    step = {"socket": path, "log": path.removesuffix(".sock") + ".log", "image": f"the image of pid {pid}",
            "pid": pid, "start_time": start_ticks(pid), "served": True}
    try:
        qemunbd.undo(step, Deadline.after(STEP_SECONDS))
    except HotplugError as e:
        return Action(what, False, str(e))
    return Action(what, True, None)


def _users(devnum, going=frozenset()):
    """Who uses devnum, but the stacked devices named in going (dm-N)."""
    from .sharing import device_users
    return "; ".join(user.what for user in device_users(devnum, openers=True)
                     if user.what.split(",")[0].removeprefix("dom0 device ") not in going)


def _our_loops():
    """(node, Devnum, mark) of every bound loop device with our mark."""
    found = []
    for node, devnum in loop.bound_loops():
        info = loop.status(node)
        if info is not None and info.mark.startswith(loop.MARK_PREFIX) and not info.autoclear:
            found.append((node, devnum, info.mark))
    return found


def _our_volumes():
    try:
        return lvm.ours(Deadline.after(STEP_SECONDS))
    except HotplugError:
        return []  # no LVM here (lvs missing or failing): no snapshot of ours either


def _our_dm_devices():
    try:
        return dm.ours()
    except dm.DeviceMapperError:
        return []  # no device-mapper here: none of ours either

