import os

from xenblock.state import StateDir


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


def test_records_lists_every_record_and_no_temporary_file(tmp_path):
    state = StateDir(str(tmp_path / "run"))
    for devid in (51712, 51728):
        state.save(record(f"backend/vbd/1/{devid}"))
    (tmp_path / "run" / "backend~vbd~1~1.json.99.tmp").write_text("{half")
    assert [r["key"] for r in state.records()] == ["backend/vbd/1/51712", "backend/vbd/1/51728"]


def test_save_replaces_atomically(tmp_path):
    state = StateDir(str(tmp_path / "run"))
    state.save(record("k", steps=[{"undo": "loop"}]))
    state.save(record("k", steps=[]))
    assert state.load("k")["steps"] == []
    leftovers = [n for n in os.listdir(tmp_path / "run") if n.endswith(".tmp")]
    assert leftovers == []
