"""How full every live snapshot is, and which ones need a person.

A block-cow or block-snapshot disk is a device-mapper snapshot whose store
takes the guest's changes, and so is a block-lvsnap disk of a classic
origin (LVM's snapshot LV, whose store is its -cow LV). When the store fills up, the kernel invalidates
the snapshot: the guest gets I/O errors and every change it held is lost.
A block-snapshot's store is a sparse CoW file, so it can also fail before
it is full, when its host file system has no room left for the blocks it
still has to allocate. Nothing warns of either in time but a look at the
numbers: levels() takes that look for every disk in /run/xenblock, for
`xenblock check-fill` and whatever else wants the numbers. A thin
block-lvsnap snapshot has no store: pools() looks at its thin pool.

Nothing here extends a store. LVM's own dmeventd extends classic LVM
snapshots, once lvm.conf's snapshot_autoextend_threshold is set:
autoextend_note() says when it is not.

Not on the hotplug path: no script imports this.
"""
import errno
import math
import os
from collections import namedtuple

from . import dm, lvm, sizes
from .errors import HotplugError

SECTOR = 512

# One live snapshot: the keys, type ("cow", "snapshot"), target and guests
# (frontend ids) of the records that name it; usage, the kernel's
# dm.SnapshotUsage of its store, None if the device-mapper device is gone;
# space, for a CoW file, a Space. Two records name one snapshot while a VM
# has two domains (a live migration's, a stub domain's: see twin.py).
Level = namedtuple("Level", "keys type target guests usage space")
# A CoW file's room to grow: its path, its file system's free space and
# how much more the file may take up (its size less its allocated blocks),
# in bytes; or error (why these could not be read) and None for both.
Space = namedtuple("Space", "path free growth error")


def levels(state):
    """A Level for every snapshot the records in state describe, once each."""
    found = {}  # by the device's uuid
    uuid_of = _SnapshotUuids()
    for record in state.records():
        for step in record["steps"]:
            uuid = uuid_of(step)
            if uuid is None:
                continue
            level = found.get(uuid)
            if level is None:
                found[uuid] = Level((record["key"],), record["type"], record["target"],
                                    (record.get("frontend_id"),), _usage(uuid), _space(record))
            else:
                found[uuid] = level._replace(keys=level.keys + (record["key"],),
                                             guests=level.guests + (record.get("frontend_id"),))
    return list(found.values())


class _SnapshotUuids:
    """The dm uuid of the snapshot a record's step names, None for a step
    that names none: our own dm devices', or a classic LVM snapshot's (LVM
    names its device <vg>-<lv>, the dashes in each doubled; its uuid holds
    the VG's and LV's UUIDs, so it is looked up by name, from one listing).
    A thin snapshot has no store of its own to fill: its pool does."""

    def __init__(self):
        self.by_name = None

    def __call__(self, step):
        if step.get("undo") == "dm":
            return step["uuid"]
        if step.get("undo") != "lvsnap" or step.get("thin"):
            return None
        if self.by_name is None:
            self.by_name = {device.name: device.uuid for device in _devices()}
        name = lvm.dm_name(step["vg"], step["lv"])
        return self.by_name.get(name, f"LVM-gone:{name}")


def _devices():
    try:
        return dm.list_devices()
    except dm.DeviceMapperError as e:
        if e.errno != errno.ENOENT:
            raise
        return []  # no device-mapper, so no device either


def _usage(uuid):
    try:
        targets = dm.status(uuid)
    except dm.DeviceMapperError as e:
        if e.errno != errno.ENOENT:
            raise
        targets = None  # no control node: no device-mapper, so no device either
    # No snapshot target in a device that exists: its table is not live yet
    # or any more, which only happens while an add or a remove runs.
    snapshots = [target for target in targets or () if target.type == "snapshot"]
    return dm.snapshot_usage(snapshots[0].params) if snapshots else None


def _space(record):
    if record["type"] != "snapshot":
        return None  # block-cow's store is reserved at add, or sparse by a setting that accepts the risk
    from .types import snapshot  # only for its target's syntax
    path = None
    try:
        path = snapshot.parse(record["target"]).cow
        st = os.stat(path)
        free = sizes.free_space(path)
    except (HotplugError, OSError) as e:
        return Space(path, None, None, str(e))
    # A sparse file's allocated blocks can pass its size (file system
    # metadata, preallocation): then it grows by nothing.
    return Space(path, free, max(st.st_size - st.st_blocks * 512, 0), None)


# A thin pool that holds thin block-lvsnap snapshots: its name (vg/pool),
# the keys and guests of the records whose snapshots it holds, and usage,
# the kernel's dm.PoolUsage. A thin snapshot has no store of its own: it
# takes its pool's blocks as its guest writes, and a full pool fails (or
# holds back, queue_if_no_space) the writes of every thin volume in it.
Pool = namedtuple("Pool", "name keys guests usage")


def pools(state):
    """A Pool for every live thin pool a record's thin snapshot is in, once each."""
    found, devices = {}, None
    for record in state.records():
        for step in record["steps"]:
            if step.get("undo") != "lvsnap" or not step.get("thin"):
                continue
            if devices is None:
                devices = _devices()
            pool = _pool_of(lvm.dm_name(step["vg"], step["lv"]), devices)
            if pool is None:
                continue  # the snapshot is gone, or being made or removed
            known = found.get(pool.uuid)
            keys, guests = (known.keys, known.guests) if known else ((), ())
            found[pool.uuid] = Pool(lvm.lv_of_dm_name(pool.name), keys + (record["key"],),
                                    guests + (record.get("frontend_id"),), _pool_usage(pool.uuid))
    return [pool for pool in found.values() if pool.usage is not None]


def _pool_of(name, devices):
    """The pool device (dm.Listed) under the thin volume named name: its
    table is "thin <pool major:minor> <device id>"."""
    thin = next((device for device in devices if device.name == name), None)
    targets = dm.table(thin.uuid) if thin is not None else None
    if not targets or targets[0].type != "thin":
        return None
    from .blockdev import Devnum
    pool = Devnum.parse(targets[0].params.split()[0])
    return next((device for device in devices if device.devnum == pool), None)


def _pool_usage(uuid):
    targets = dm.status(uuid) or ()
    return next((dm.pool_usage(target.params) for target in targets if target.type == "thin-pool"), None)


def pool_warnings(pool, warn_at):
    """Why a thin pool needs a person, at fill level warn_at."""
    usage, what = pool.usage, f"thin pool {pool.name}"
    if usage.problem is not None:
        return [f"{what} has failed: the kernel reports it {usage.problem!r}; its thin volumes get I/O errors"]
    reasons = []
    if usage.mode != "rw":
        reasons.append(f"{what} is {usage.mode}: writes to its thin volumes (the guests' snapshots) fail or wait")
    for part, fraction in (("data", usage.data_fill), ("metadata", usage.metadata_fill)):
        if fraction is not None and fraction >= warn_at:
            reasons.append(f"{what}'s {part} is {percent(fraction)} full, past the warning level "
                           f"{percent(warn_at)}: when it is full, writes to its thin volumes (the guests' "
                           "snapshots) fail or wait (lvextend the pool, or set LVM's thin_pool_autoextend)")
    return reasons


def autoextend_note(levels):
    """Why nothing extends the classic block-lvsnap snapshots among levels,
    or None. xenblock does not extend them itself: LVM's monitoring does
    (dmeventd, which runs lvextend --use-policies past lvm.conf's
    activation/snapshot_autoextend_threshold), and only if that is set."""
    if not any(level.type == "lvsnap" for level in levels):
        return None
    try:
        threshold, grow = lvm.snapshot_autoextend()
    except (HotplugError, KeyError, ValueError) as e:
        return f"cannot tell whether LVM extends block-lvsnap's classic snapshots: {e}"
    if threshold < 100 and grow > 0:
        return None
    return (f"LVM's snapshot autoextend is off (activation/snapshot_autoextend_threshold = {threshold}, "
            f"snapshot_autoextend_percent = {grow}): nothing extends block-lvsnap's classic snapshots, and one "
            "that fills up is invalidated; to have dmeventd extend them, set both in /etc/lvm/lvm.conf "
            "(see xenblock-disks(5))")


def store_warning(usage, warn_at):
    """Why a store with usage (a dm.SnapshotUsage, None: gone) needs a
    person at fill level warn_at (a fraction), or None if it does not."""
    if usage is None:
        return None  # no device, no store to fill: a leftover record, or a disk being built or taken down
    if usage.problem is not None:
        return (f"the snapshot is dead: the kernel reports it {usage.problem!r} (its store filled up or "
                "failed): the guest gets I/O errors and the changes it made are lost")
    if usage.fill >= warn_at:
        return (f"its store is {percent(usage.fill)} full ({used_text(usage)}), past the warning level "
                f"{percent(warn_at)}: when it is full, the kernel invalidates the snapshot and the guest's "
                "changes are lost")
    return None


def space_warning(space):
    """Why a CoW file's Space needs a person, or None."""
    if space is None or space.error is not None or space.free >= space.growth:
        return None
    return (f"the CoW file {space.path} may grow by {_rounded(space.growth)}, its file system has "
            f"{_rounded(space.free)} free: if that runs out, the kernel invalidates the snapshot and the "
            "guest's changes are lost")


def warnings(level, warn_at):
    """Every reason level needs a person."""
    return [why for why in (store_warning(level.usage, warn_at), space_warning(level.space)) if why]


def percent(fraction):
    """0.8 as 80%, 0.9058 as 90.5%: rounded down to one decimal, so that a
    store not quite full never reads 100%."""
    return f"{math.floor(fraction * 1000 + 1e-9) / 10:g}%"


def used_text(usage):
    return f"{_rounded(usage.allocated * SECTOR)} of {_rounded(usage.total * SECTOR)}"


def _rounded(value):
    return sizes.text(value, rounded=True)

