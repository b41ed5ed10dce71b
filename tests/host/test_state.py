import json
import os
import subprocess
import sys

import pytest

from xenblock import locks
from xenblock.errors import HotplugError
from xenblock.deadline import Deadline
from xenblock.state import STATE_DIR, StateDir


def record(key, **more):
    return {"key": key, "steps": [], "state": "building", **more}


def test_save_load_delete_round_trip(tmp_path):
    state = StateDir(str(tmp_path / "run"))
    state.save(record("backend/vbd/3/51712", target="/srv/a.img"))
    assert state.load("backend/vbd/3/51712")["target"] == "/srv/a.img"
    assert os.path.basename(state.record_path("backend/vbd/3/51712")) == "backend~vbd~3~51712.json"
    state.delete("backend/vbd/3/51712")
    assert state.load("backend/vbd/3/51712") is None
    state.delete("backend/vbd/3/51712")  # twice is fine


def test_an_absolute_and_a_relative_key_have_records_of_their_own(tmp_path):
    # xenstored resolves "x/vbd/7/51712" under the caller's domain: another node than "/x/vbd/7/51712".
    state = StateDir(str(tmp_path / "run"))
    state.save(record("x/vbd/7/51712", target="relative"))
    state.save(record("/x/vbd/7/51712", target="absolute"))
    assert state.load("x/vbd/7/51712")["target"] == "relative"
    assert state.load("/x/vbd/7/51712")["target"] == "absolute"
    assert state.lock_path("x/vbd/7/51712") != state.lock_path("/x/vbd/7/51712")


def test_records_lists_every_record_and_no_temporary_file(tmp_path):
    state = StateDir(str(tmp_path / "run"))
    for devid in (51712, 51728):
        state.save(record(f"backend/vbd/1/{devid}"))
    (tmp_path / "run" / "backend~vbd~1~1.json.tmp").write_text("{half")
    assert [r["key"] for r in state.records()] == ["backend/vbd/1/51712", "backend/vbd/1/51728"]


def test_save_replaces_atomically(tmp_path):
    state = StateDir(str(tmp_path / "run"))
    state.save(record("k", steps=[{"undo": "loop"}]))
    state.save(record("k", steps=[]))
    assert state.load("k")["steps"] == []
    leftovers = [n for n in os.listdir(tmp_path / "run") if n.endswith(".tmp")]
    assert leftovers == []


HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from xenblock import locks
from xenblock.deadline import Deadline
with locks.held({path!r}, Deadline.after(5), "test"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_sweep_removes_what_killed_runs_left_and_nothing_in_use(tmp_path):
    state = StateDir(str(tmp_path / "run"))
    stale_lock = state.lock_path("backend/vbd/1/51712")
    open(stale_lock, "w").close()  # a run killed while holding it
    stale_record = state.record_path("backend/vbd/1/51712") + ".tmp"
    open(stale_record, "w").close()  # a run killed between write and rename
    live_key = "backend/vbd/2/51712"
    live_record = state.record_path(live_key) + ".tmp"
    open(live_record, "w").close()  # being written by the run holding the lock
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=os.getcwd(), path=state.lock_path(live_key))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        state.sweep()
        assert not os.path.exists(stale_lock) and not os.path.exists(stale_record)
        assert os.path.exists(state.lock_path(live_key)) and os.path.exists(live_record)
    finally:
        holder.kill()
        holder.wait()
    with locks.held(state.lock_path(live_key), Deadline.after(2), "it"):
        pass


def test_the_udev_rule_looks_for_markers_where_they_are_written():
    # The rule cannot read a config file: the state directory is fixed for both.
    rule = open("etc/udev/rules.d/59-xenblock.rules").read()
    assert f'TEST=="{STATE_DIR}/udev/%k"' in rule
    assert StateDir.__init__.__defaults__ == (STATE_DIR,)


def test_a_record_of_another_format_is_refused_not_misread(tmp_path):
    state = StateDir(str(tmp_path))
    with open(state.record_path("backend/vbd/1/51712"), "w") as f:
        json.dump({"format": 2, "key": "backend/vbd/1/51712", "steps": []}, f)
    with pytest.raises(HotplugError, match="record format 2, this xenblock reads format 1"):
        state.load("backend/vbd/1/51712")


def test_a_record_without_format_is_format_1(tmp_path):
    state = StateDir(str(tmp_path))
    with open(state.record_path("k"), "w") as f:
        json.dump({"key": "k", "steps": []}, f)
    assert state.load("k")["steps"] == []
