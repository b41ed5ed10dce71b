"""Building with a record: every kernel object is recorded before it exists.

A Build appends a step to the disk's record and saves it before the object
is created, then completes the step; on failure the caller undoes the steps
in reverse. The record is therefore the rollback stack while building and
the teardown record afterwards: one list, never two places.
"""
import os

from . import loop
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

    def loop_device(self, backing_fd, read_only, direct_io):
        step = self.intend("loop", mark=loop.mark_for(self.record["key"]))

        def before_bind(number):
            step["node"] = f"/dev/loop{number}"
            self.save()
            _write_marker(self.state.marker_dir, number, step["mark"])

        def lost_race(number):
            # The device is someone else's now: udev must go on seeing it.
            _remove_marker(self.state.marker_dir, f"/dev/loop{number}", step["mark"])

        device = loop.attach(backing_fd, read_only, direct_io, step["mark"], before_bind, lost_race,
                             self.deadline)
        step.update(node=device.node, diskseq=device.diskseq, devnum=str(device.devnum))
        self.save()
        return device


def undo_loop(step, state, deadline):
    node = step.get("node")
    if node is None:
        return  # killed before a device was chosen: nothing was bound
    devnum = loop.detach(node, step.get("diskseq"), step["mark"], deadline)
    if devnum is not None and not loop.wait_unbound(devnum, step.get("diskseq"), deadline):
        from .sharing import device_users  # only when something holds it
        holders = "; ".join(user.what for user in device_users(devnum, openers=True)) or "an unknown holder"
        raise HotplugError(
            f"{node} is still in use, by {holders}: it stays bound to its image (the kernel unbinds "
            f"it when the last user lets go); the record is kept for a later remove to finish")
    _remove_marker(state.marker_dir, node, step["mark"])


# Undo functions by the name a step records; each is safe to run again.
UNDO = {"loop": undo_loop}


def teardown(record, state, deadline):
    """Undo a record's steps, newest first, saving progress after each, so a
    remove killed or failing half-way resumes where it stopped; then drop the
    record. A step that cannot be undone raises, and stays recorded."""
    steps = record["steps"]
    while steps:
        UNDO[steps[-1]["undo"]](steps[-1], state, deadline)
        steps.pop()
        state.save(record)
    state.delete(record["key"])


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
