"""Building with a record: every kernel object is recorded before it exists.

A Build appends a step to the disk's record and saves it before the object
is created, then completes the step; on failure the caller undoes the steps
in reverse. The record is therefore the rollback stack while building and
the teardown record afterwards: one list, never two places.
"""
import contextlib
import errno
import os

from . import locks, loop, twin
from .blockdev import Devnum, diskseq, holders, read_attribute
from .errors import HotplugError


class Build:
    def __init__(self, state, record, config, deadline):
        self.state = state
        self.record = record
        self.config = config
        self.deadline = deadline

    def intend(self, undo, **data):
        step = {"undo": undo, **data}
        self.record["steps"].append(step)
        self.save()
        return step

    def save(self):
        self.state.save(self.record)

    def loop_device(self, backing_fd, read_only, offset=0, size_limit=0):
        """A loop device of this disk's own over backing_fd (from byte
        offset, size_limit bytes; 0: to the end)."""
        step = self.intend("loop", mark=loop.mark_for(self.record["key"]))
        return self._bind(step, backing_fd, read_only, offset, size_limit)

    def shared_loop(self, source):
        """The one read-only loop device of a base image, shared by every
        disk built on it: found if bound, else bound. Its step's undo lets it
        go once nothing is stacked on it. Found or bound under the base's
        loop lock, as that undo is, so a find and a release never cross."""
        from .sharing import opened_only_through
        with locks.held(self.state.shared_loop_lock_path(source.image_id), self.deadline,
                        f"the lock of the loop device of {source.path}"):
            step = self.intend("shared_loop", mark=loop.shared_mark(source.image_id), image=source.image_id)
            # The first disk on a base: no loop device holds it open, and the
            # scan (pyudev, whose import runs ldconfig) is skipped.
            found = None if opened_only_through(source.fd) else loop.find_shared(source.stat, step["mark"])
            if found is None:
                return self._bind(step, source.fd, read_only=True)
            step.update(node=found.node, diskseq=found.diskseq, devnum=str(found.devnum))
            self.save()
            return found

    def _bind(self, step, backing_fd, read_only, offset=0, size_limit=0):
        def before_bind(number):
            step["node"] = f"/dev/loop{number}"
            self.save()
            _write_marker(self.state.marker_dir, number, step["mark"])

        def lost_race(number):
            # The device is someone else's now: udev must go on seeing it.
            _remove_marker(self.state.marker_dir, f"/dev/loop{number}", step["mark"])

        direct_io = self.config.direct_io and loop.direct_io_works(backing_fd)
        device = loop.attach(backing_fd, read_only, direct_io, step["mark"], before_bind, lost_race,
                             self.deadline, offset, size_limit)
        step.update(node=device.node, diskseq=device.diskseq, devnum=str(device.devnum))
        self.save()
        _refuse_if_empty(device, backing_fd)
        return device

    def dm_device(self, name, uuid, targets):
        """A device-mapper device of this disk's own; its Devnum."""
        from . import dm  # only the types that stack devices
        step = self.intend("dm", uuid=uuid, name=name)
        devnum = dm.create(name, uuid, targets, self.deadline)
        step.update(node=dm.node(devnum), devnum=str(devnum))
        self.save()
        return devnum

    def nbd_device(self, sock, export, io_timeout=None):
        """An nbd device of this disk's own, connected to the NBD server on
        the negotiated socket sock; its (node, Devnum). The kernel picks the device;
        the step names it by its backend identifier (our mark), which finds
        it even if the run is killed before the index is saved. io_timeout:
        see nbd.connect_message."""
        from . import nbd  # only block-tap's qemu formats and block-nbd
        step = self.intend("nbd", backend=loop.mark_for(self.record["key"]))
        index = nbd.connect(sock, export, step["backend"], self.deadline, io_timeout)
        devnum = nbd.devnum(index)
        step.update(node=nbd.node(index), index=index, devnum=str(devnum), diskseq=diskseq(devnum))
        self.save()
        return step["node"], devnum


def _refuse_if_empty(device, backing_fd):
    """The image's size was checked when it was opened; one truncated since
    (by its owner, by another tool) binds a loop device of no sector, a disk
    the guest could not use. The caller's rollback unbinds it."""
    if read_attribute(device.devnum, "size") == "0":
        path = os.readlink(f"/proc/self/fd/{backing_fd}")
        raise HotplugError(f"{path}: the image shrank to {os.fstat(backing_fd).st_size} bytes while it was "
                           f"being attached: no sector of it is left to serve")


def undo_loop(step, state, deadline):
    node = step.get("node")
    if node is None:
        return  # killed before a device was chosen: nothing was bound
    devnum = loop.detach(node, step.get("diskseq"), step["mark"], deadline)
    if devnum is not None and not loop.wait_unbound(devnum, step.get("diskseq"), deadline):
        raise _still_in_use(node, devnum, "it stays bound to its image (the kernel unbinds it when the "
                                          "last user lets go)")
    _remove_marker(state.marker_dir, node, step["mark"])


def undo_shared_loop(step, state, deadline):
    """Let a base's shared loop device go if nothing is stacked on it any
    more and no add is about to stack on it. The count is the kernel's (the
    device's holders in sysfs), not one of ours: a killed run cannot leave
    it wrong; the adds still building are those whose records say so and
    whose runs are alive."""
    node = step.get("node")
    if node is None or _stacked_on(node):
        # Another disk is still built on the base: not ours to let go.
        # Whoever takes down the last disk on it looks after its own dm
        # device is gone (its record says "removing" by then, see teardown),
        # so that one sees no holder and lets the base go, under the lock.
        return
    with locks.held(state.shared_loop_lock_path(step["image"]), deadline, f"the lock of base {step['image']}"):
        if _stacked_on(node) is False and not _about_to_stack(step, state):
            undo_loop(step, state, deadline)


def _about_to_stack(step, state):
    """Whether another disk's add has found or bound this base's loop device
    and not yet stacked its own device on it: add holds the base's lock only
    to find or bind it, not for its whole build, which a remove would wait
    out. That add stacks on it, or its rollback comes here in turn. A
    record whose run is gone is a killed add's leftover, no add to wait for;
    one whose lock this process holds is the one being taken down."""
    return any(record.get("state") == "building"
               and any(other["undo"] == "shared_loop" and other.get("image") == step["image"]
                       for other in record["steps"])
               and locks.held_elsewhere(state.lock_path(record["key"]))
               for record in state.records())


def _stacked_on(node):
    """Whether a device is stacked on node (its holders in sysfs); None if
    node is gone."""
    try:
        devnum = Devnum.of_rdev(os.stat(node).st_rdev)
    except FileNotFoundError:
        return None
    return bool(holders(devnum))


def undo_dm(step, state, deadline):
    from . import dm
    try:
        dm.remove(step["uuid"], deadline)
    except dm.DeviceMapperError as e:
        if e.errno != errno.EBUSY or "devnum" not in step:
            raise
        raise _still_in_use(step["node"], Devnum.parse(step["devnum"]), "it cannot be removed while open") from e


def undo_nbd(step, state, deadline):
    from . import nbd
    nbd.disconnect(step["backend"], deadline)


def undo_qemu_nbd(step, state, deadline):
    from . import qemunbd
    qemunbd.undo(step, deadline)


def undo_unlink(step, state, deadline):
    try:
        os.unlink(step["path"])
    except FileNotFoundError:
        pass


def _still_in_use(node, devnum, consequence):
    from .sharing import device_users  # only when something holds it
    holders_ = "; ".join(user.what for user in device_users(devnum, openers=True)) or "an unknown holder"
    return HotplugError(f"{node} is still in use, by {holders_}: {consequence}; the record is kept for "
                        "a later remove to finish")


def undo_lvsnap(step, state, deadline):
    """Remove the snapshot the step names, unless it is kept (block-lvsnap)."""
    # lvm alone, not xenblock.types: that imports every type, 60 ms here and
    # about 2 s of remove's 10 under emulation.
    from . import lvm
    if not step.get("keep"):
        lvm.remove_ours(step["vg"], step["lv"], step.get("uuid"), deadline)


# Undo functions by the name a step records; each is safe to run again.
UNDO = {"loop": undo_loop, "shared_loop": undo_shared_loop, "dm": undo_dm, "unlink": undo_unlink,
        "lvsnap": undo_lvsnap, "nbd": undo_nbd, "qemu_nbd": undo_qemu_nbd}


def teardown(record, state, deadline):
    """Undo a record's steps, newest first, saving progress after each, so a
    remove killed or failing half-way resumes where it stopped; then drop the
    record. A step that cannot be undone raises, and stays recorded. An
    object a twin's record names too (xenblock.twin) is left to the twin."""
    with _twin_objects(record, state, deadline) as twins:
        # No longer an add that is about to stack on a shared base
        # (undo_shared_loop), nor a snapshot to adopt (twin.find).
        record["state"] = "removing"
        state.save(record)
        steps = record["steps"]
        while steps:
            if _identity(steps[-1]) not in twins:
                UNDO[steps[-1]["undo"]](steps[-1], state, deadline)
            steps.pop()
            state.save(record)
        state.delete(record["key"])


@contextlib.contextmanager
def _twin_objects(record, state, deadline):
    """The identities of the objects that the records of this disk's twins
    (the same dm snapshot) name, under the lock that adopting them takes."""
    lock = twin.lock_path(state, record)
    if lock is None:
        yield frozenset()
        return
    uuid = twin.snapshot_uuid(record)
    with locks.held(lock, deadline, f"the lock of {uuid}"):
        yield {_identity(step) for other in state.records()
               if other["key"] != record["key"] and twin.snapshot_uuid(other) == uuid
               for step in other["steps"]}


def _identity(step):
    return step["undo"], step.get("uuid"), step.get("path"), step.get("node"), step.get("diskseq")


def _write_marker(directory, number, mark):
    # The udev rule (etc/udev/rules.d/59-xenblock.rules) tests for this file
    # when the bind's change event arrives: it must exist before the bind.
    with open(os.path.join(directory, f"loop{number}"), "w") as f:
        f.write(mark + "\n")


def _remove_marker(directory, node, mark):
    # Only our own: the device number may already serve another disk, whose
    # marker must stay for udev to keep ignoring it.
    path = os.path.join(directory, os.path.basename(node))
    try:
        with open(path) as f:
            if f.read().strip() != mark:
                return
        os.unlink(path)
    except FileNotFoundError:
        pass
