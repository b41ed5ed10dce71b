"""How full every live snapshot is, and which ones need a person.

A block-cow or block-snapshot disk is a device-mapper snapshot whose store
takes the guest's changes, and so is a block-lvsnap disk of a classic
origin (LVM's snapshot LV, whose store is its -cow LV). When the store fills up, the kernel invalidates
the snapshot: the guest gets I/O errors and every change it held is lost.
A block-snapshot's store is a sparse CoW file, so it can also fail before
it is full, when its host file system has no room left for the blocks it
still has to allocate. Nothing warns of either in time but a look at the
numbers: levels() takes that look for every disk in /run/xenblock, for
`xenblock check-fill` and whatever else wants the numbers.

Not on the hotplug path: no script imports this.
"""
import errno
import math
import os
from collections import namedtuple

from . import dm, sizes
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
        name = f"{step['vg'].replace('-', '--')}-{step['lv'].replace('-', '--')}"
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

