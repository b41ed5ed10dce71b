"""One device for the two domains of one VM.

A live migration's destination domain, and a guest's stub domain, add a disk
a second time while another domain of the same VM has it. For block-file
that is harmless: a second loop device of one file shows the same data. A
snapshot built twice is not: the destination of a block-cow disk would see
the base without the guest's changes, and two snapshot tables over one
block-snapshot CoW file would overwrite each other's, and block-lvsnap would
give the destination a fresh snapshot of the origin (its name comes from the
guest's, which is <name>--incoming during a migration) and the source's
remove would discard the guest's changes. So the second domain's record
adopts the first's steps: both records name the same kernel objects, and the
teardown of either leaves what the other still names (build.teardown).
Adopting and that teardown decision take one lock, named by the snapshot's
UUID (the dm UUID of a device-mapper snapshot, the LV UUID of an LVM one),
so neither can act on a record the other is changing.
"""
from . import locks
from .blockdev import Device


# The steps that make a snapshot a twin can share: a device-mapper one
# (block-cow, block-snapshot) and an LVM one (block-lvsnap).
SNAPSHOT_STEPS = ("dm", "lvsnap")


def lock_path(state, record):
    """The lock of the objects a record may share with a twin; None if it
    has no snapshot (only snapshots are shared this way)."""
    step = _snapshot_step(record)
    return None if step is None else state.lock_path(f"{step['undo']}:{step['uuid']}")


def snapshot_uuid(record):
    step = _snapshot_step(record)
    return None if step is None else step["uuid"]


def _snapshot_step(record):
    """The record's snapshot step, once its UUID is known (an lvsnap step
    is recorded before lvcreate names it)."""
    return next((step for step in record["steps"] if step["undo"] in SNAPSHOT_STEPS and step.get("uuid")), None)


def find(record, request, ctx, opened):
    """The connected record of the same disk of another domain of the
    requesting guest's VM, with its lock taken (entered into opened); None
    if there is none. Read before the image locks, re-read under its own."""
    from .sharing import same_vm
    for other in ctx.state.records():
        if _same_disk(other, record) and same_vm(ctx.xs, other.get("frontend_id"), request.frontend_id):
            opened.enter_context(locks.held(lock_path(ctx.state, other), ctx.deadline,
                                            f"the lock of {other['key']}'s device"))
            current = ctx.state.load(other["key"])
            if current is not None and _same_disk(current, record) and ctx.xs.exists(current["key"]):
                return current
    return None


def _same_disk(other, record):
    """Another domain's record of this disk: the same type, target, mode and
    images, the same device number in its guest (the last part of the
    backend path), built and connected."""
    return (other["key"] != record["key"]
            and other["key"].rsplit("/", 1)[-1] == record["key"].rsplit("/", 1)[-1]
            and all(other.get(field) == record[field] for field in ("type", "target", "mode", "images"))
            and other.get("state") == "connected" and snapshot_uuid(other) is not None)


def adopt(twin, build):
    """The twin's device, its steps now this record's too; None if the
    device is gone (then build anew)."""
    step = _snapshot_step(twin)
    device = _dm_device(step) if step["undo"] == "dm" else _lv_device(step)
    if device is None:
        return None
    build.record["steps"] = [dict(step) for step in twin["steps"]]  # flat: one level copies all
    build.save()
    return Device(device.path, device.devnum, f"the device of {twin['key']}, shared by one VM's domains")


def _dm_device(step):
    from . import dm
    found = dm.info(step["uuid"])
    if found is None or str(found.devnum) != step.get("devnum"):
        return None
    return Device(step["node"], found.devnum)


def _lv_device(step):
    from . import lvm
    found = lvm.active(step["vg"], step["lv"])
    if found is None or found.uuid != step["uuid"]:
        return None
    return Device(found.path, found.devnum)
