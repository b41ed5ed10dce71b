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
