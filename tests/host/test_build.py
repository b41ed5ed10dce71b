"""Teardown from a record: progress saved after every step."""
import pytest

from xenblock import build
from xenblock.deadline import Deadline
from xenblock.errors import HotplugError
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


def twin_records(names):
    """Records of two domains of one VM sharing one snapshot (as
    xenblock.twin.adopt leaves them): the same steps."""
    steps = [{"undo": "test", "name": "base", "node": "/dev/loop1"},
             {"undo": "test", "name": "store", "node": "/dev/loop2"},
             {"undo": "test-dm", "name": "snapshot", "uuid": "XENBLOCK-backend.vbd.1.51712"}]
    return [{"key": f"backend/vbd/{n}/51712", "steps": [dict(step) for step in steps]} for n in names]


def test_a_snapshot_two_domains_share_goes_with_the_last_of_them(tmp_path, monkeypatch):
    undone = []
    for kind in ("test", "test-dm"):
        monkeypatch.setitem(build.UNDO, kind, lambda step, state, deadline: undone.append(step["name"]))
    monkeypatch.setattr(build.twin, "snapshot_uuid", lambda record: next(
        (step["uuid"] for step in record["steps"] if step["undo"] == "test-dm"), None))
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
    monkeypatch.setitem(build.UNDO, "test", lambda step, state, deadline: undone.append(step["name"]))
    monkeypatch.setattr(build.twin, "snapshot_uuid", lambda record: record["uuid"])
    state = StateDir(str(tmp_path))
    mine, other = twin_records((1, 2))
    for record, uuid in ((mine, "XENBLOCK-a"), (other, "XENBLOCK-b")):  # two VMs' snapshots of one base
        record["uuid"] = uuid
        for step in record["steps"]:
            step["undo"] = "test"
    state.save(other)
    build.teardown(mine, state, Deadline.after(1))
    assert undone == ["snapshot", "store", "base"], "what is not a twin's is undone (a shared base " \
                                                    "device goes by its holders)"
