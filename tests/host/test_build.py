"""Teardown from a record: progress saved after every step."""
import contextlib
import os
import signal
import subprocess
import time

import pytest

from xenblock import build, locks, loop
from xenblock.blockdev import Devnum
from xenblock.config import load as load_config
from xenblock.deadline import Deadline
from xenblock.errors import HotplugError
from xenblock.source import resolve
from xenblock.state import StateDir


def test_a_teardown_failing_half_way_keeps_exactly_what_is_left(tmp_path, monkeypatch):
    undone = []

    def undo(step, state, deadline):
        if step["name"] == "stuck":
            raise HotplugError("still in use")
        undone.append(step["name"])

    monkeypatch.setitem(build.UNDO, "test", undo)
    state = StateDir(str(tmp_path))
    record = {"key": "k", "steps": [{"undo": "test", "name": n} for n in ("first", "stuck", "last")]}
    state.save(record)
    with pytest.raises(HotplugError, match="still in use"):
        build.teardown(record, state, Deadline.after(1))
    assert undone == ["last"]
    assert [step["name"] for step in state.load("k")["steps"]] == ["first", "stuck"], \
        "a later remove must resume at the step that failed, not redo the ones done"


def test_a_finished_teardown_drops_the_record(tmp_path, monkeypatch):
    monkeypatch.setitem(build.UNDO, "test", lambda step, state, deadline: None)
    state = StateDir(str(tmp_path))
    record = {"key": "k", "steps": [{"undo": "test"}]}
    state.save(record)
    build.teardown(record, state, Deadline.after(1))
    assert state.load("k") is None


def twin_records(names, uuids=("XENBLOCK-backend.vbd.1.51712",) * 2):
    """Records of two domains of one VM sharing one snapshot (as
    xenblock.twin.adopt leaves them): the same steps; with two uuids, two
    VMs' snapshots of one base instead."""
    steps = [{"undo": "test", "name": "base", "node": "/dev/loop1"},
             {"undo": "test", "name": "store", "node": "/dev/loop2"}]
    return [{"key": f"backend/vbd/{n}/51712", "steps": [dict(step) for step in steps]
             + [{"undo": "dm", "name": "snapshot", "uuid": uuid}]} for n, uuid in zip(names, uuids)]


def test_a_snapshot_two_domains_share_goes_with_the_last_of_them(tmp_path, monkeypatch):
    undone = []
    for kind in ("test", "dm"):
        monkeypatch.setitem(build.UNDO, kind, lambda step, state, deadline: undone.append(step["name"]))
    state = StateDir(str(tmp_path))
    source, destination = twin_records((1, 2))
    state.save(source)
    state.save(destination)
    build.teardown(source, state, Deadline.after(1))
    assert undone == [] and state.load(source["key"]) is None, "the destination's disk was taken down"
    build.teardown(destination, state, Deadline.after(1))
    assert undone == ["snapshot", "store", "base"]
    assert state.records() == []


def test_objects_named_by_another_snapshot_s_record_are_not_a_twin_s(tmp_path, monkeypatch):
    undone = []
    for kind in ("test", "dm"):
        monkeypatch.setitem(build.UNDO, kind, lambda step, state, deadline: undone.append(step["name"]))
    state = StateDir(str(tmp_path))
    mine, other = twin_records((1, 2), ("XENBLOCK-a", "XENBLOCK-b"))  # two VMs' snapshots of one base
    state.save(other)
    build.teardown(mine, state, Deadline.after(1))
    assert undone == ["snapshot", "store", "base"], "what is not a twin's is undone (a shared base " \
                                                    "device goes by its holders)"


def test_an_lvm_snapshot_two_domains_share_goes_with_the_last_of_them(tmp_path, monkeypatch):
    # block-lvsnap's step, as attach records it and xenblock.twin finds it.
    undone = []
    monkeypatch.setitem(build.UNDO, "lvsnap", lambda step, state, deadline: undone.append(step["lv"]))
    state = StateDir(str(tmp_path))
    step = {"undo": "lvsnap", "vg": "vg0", "lv": "xenblock-web-51712", "uuid": "wcPpRc-Kuvp-oGyI-MWY3-plhH-DWcR-0b3NX8",
            "keep": False, "thin": False}
    source, destination = ({"key": f"backend/vbd/{n}/51712", "steps": [dict(step)]} for n in (1, 2))
    state.save(source)
    state.save(destination)
    build.teardown(source, state, Deadline.after(1))
    assert undone == [], "the destination's snapshot was removed with the source's disk"
    build.teardown(destination, state, Deadline.after(1))
    assert undone == ["xenblock-web-51712"] and state.records() == []


def test_a_snapshot_s_twin_lock_is_named_by_its_kind_and_uuid(tmp_path):
    state = StateDir(str(tmp_path))
    dm_snapshot = {"steps": [{"undo": "loop"}, {"undo": "dm", "uuid": "XENBLOCK-backend.vbd.1.51712"}]}
    lvm_snapshot = {"steps": [{"undo": "lvsnap", "vg": "vg0", "lv": "xenblock-web-51712", "uuid": "abc"}]}
    # Recorded before lvcreate ran: no UUID yet, nothing a twin could share.
    unnamed = {"steps": [{"undo": "lvsnap", "vg": "vg0", "lv": "xenblock-web-51712", "uuid": None}]}
    # The dm lock's name is the one older versions take: an upgrade between
    # two domains' runs keeps them on one lock.
    assert build.twin.lock_path(state, dm_snapshot) == state.lock_path("dm:XENBLOCK-backend.vbd.1.51712")
    assert build.twin.lock_path(state, lvm_snapshot) == state.lock_path("lvsnap:abc")
    assert build.twin.lock_path(state, unnamed) is None and build.twin.snapshot_uuid(unnamed) is None
    assert build.twin.lock_path(state, {"steps": [{"undo": "loop"}]}) is None


# -- a base's shared loop device, between a remove and a concurrent add ---------

def built_on(path, state, key, record_state):
    """The record of a disk whose add has found or bound the shared loop
    device of the base at path, as block-cow and block-snapshot do first."""
    record = {"key": key, "state": "building", "images": [], "steps": []}
    config = load_config({"XENBLOCK_CONFIG": "/nonexistent/xenblock.conf"})  # the defaults
    with resolve(path, writable=False) as base:  # each add opens it itself
        build.Build(state, record, config, Deadline.after(10)).shared_loop(base)
    record["state"] = record_state
    state.save(record)
    return record


@contextlib.contextmanager
def run_alive(state, key):
    """Another process holding key's lock, as a run of a hotplug script does."""
    path = state.lock_path(key)
    holder = subprocess.Popen(["flock", "--close", path, "sleep", "60"], start_new_session=True)
    try:
        while not locks.held_elsewhere(path):
            assert holder.poll() is None
            time.sleep(0.01)
        yield
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # flock and its sleep
        holder.wait()


@pytest.mark.parametrize("other, alive, stays", [
    ("building", True, True),  # an add that found the device and is building on it
    ("building", False, False),  # a killed add's leftover: its teardown comes later
    ("removing", True, False),  # a remove taking its own disk down at the same time
])
def test_a_base_s_loop_device_stays_for_an_add_that_is_about_to_stack_on_it(tmp_path, images, other, alive, stays):
    # The remove of a base's last disk does not wait for the base's image
    # lock, which an add holds for its whole build: an add that found the
    # base's loop device and has not yet stacked its snapshot on it leaves
    # the device no holder, yet it must stay. Nothing else holds it up, or
    # two removes at once could each leave it to the other.
    state = StateDir(str(tmp_path / "state"))
    path = images("base.img")
    removed, another = (built_on(path, state, f"backend/vbd/{domid}/51712", record_state)
                        for domid, record_state in ((1, "connected"), (2, other)))
    node = removed["steps"][0]["node"]
    devnum = Devnum.of_rdev(os.stat(node).st_rdev)
    assert another["steps"][0]["node"] == node, "the second disk found the first one's device"
    with run_alive(state, another["key"]) if alive else contextlib.nullcontext():
        build.teardown(removed, state, Deadline.after(10))
        assert loop.is_bound(devnum) == stays
    build.teardown(another, state, Deadline.after(10))
    assert not loop.is_bound(devnum) and state.records() == []
