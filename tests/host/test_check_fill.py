"""`xenblock check-fill` and xenblock.fill on the host, which has no
device-mapper: the setting, the warning rules on the kernel's own status
words, and the records with no live snapshot. A store filling up under a
real snapshot is tests/xen/test_fill.py's."""
import os

import pytest

from xenblock import admin, config, dm, fill
from xenblock.log import Log
from xenblock.state import StateDir


def load(tmp_path, value):
    path = tmp_path / "x.conf"
    path.write_text(f"[general]\nfill_warning = {value}\n")
    return config.load({"XENBLOCK_CONFIG": str(path)})


@pytest.mark.parametrize("value, fraction", [("90%", 0.9), ("92.5%", 0.925), ("100%", 1.0), ("5 %", 0.05)])
def test_fill_warning_is_a_percentage(tmp_path, value, fraction):
    assert load(tmp_path, value).fill_warning == fraction


def test_fill_warning_defaults_to_80_percent(tmp_path):
    assert config.load({"XENBLOCK_CONFIG": str(tmp_path / "missing.conf")}).fill_warning == 0.8


@pytest.mark.parametrize("value, words", [
    ("80", "expected a percentage, such as 80%"),  # 80 or 0.8%? Not guessed.
    ("0.8", "expected a percentage, such as 80%"),
    ("%", "expected a percentage, such as 80%"),
    ("eighty%", "expected a percentage, such as 80%"),
    ("-5%", "expected a percentage, such as 80%"),
    ("1e2%", "expected a percentage, such as 80%"),
    ("nan%", "expected a percentage, such as 80%"),
    ("1.2.3%", "expected a percentage, such as 80%"),
    ("0%", "expected a percentage above 0% and at most 100%"),
    ("100.5%", "expected a percentage above 0% and at most 100%"),
])
def test_fill_warning_mistakes_name_the_line(tmp_path, value, words):
    with pytest.raises(config.ConfigError) as raised:
        load(tmp_path, value)
    assert str(raised.value) == f"{tmp_path / 'x.conf'} line 2: {value!r}: {words}"


# -- the rules, on status strings as the kernel writes them -------------------

def usage(status):
    return dm.snapshot_usage(status)


def test_a_store_below_the_level_is_fine_and_at_it_warns():
    assert fill.store_warning(usage("6552/8192 128"), 0.8) is None  # 79.98%
    warning = fill.store_warning(usage("6554/8192 128"), 0.8)  # 80.004%
    assert warning.startswith("its store is 80% full (3.2M of 4M), past the warning level 80%: "), warning
    assert fill.store_warning(usage("8192/8192 128"), 1.0).startswith("its store is 100% full (4M of 4M)")
    assert fill.store_warning(usage("8191/8192 128"), 1.0) is None


def test_a_dead_snapshot_warns_with_the_kernels_word_and_a_gone_one_does_not():
    for word in ("Invalid", "Overflow", "Merge failed"):
        warning = fill.store_warning(usage(word), 0.8)
        assert warning.startswith(f"the snapshot is dead: the kernel reports it {word!r}"), warning
    assert fill.store_warning(None, 0.8) is None


def test_a_cow_file_warns_when_its_file_system_has_less_free_space_than_it_may_grow_by():
    assert fill.space_warning(fill.Space("/srv/a.cow", 2 << 30, 2 << 30, None)) is None
    assert fill.space_warning(fill.Space("/srv/a.cow", (2 << 30) - 1, 2 << 30, None)) is not None
    assert fill.space_warning(fill.Space("/srv/a.cow", 3 << 29, 2 << 30, None)) == (
        "the CoW file /srv/a.cow may grow by 2G, its file system has 1.5G free: if that runs out, the kernel "
        "invalidates the snapshot and the guest's changes are lost")
    assert fill.space_warning(fill.Space("/srv/a.cow", None, None, "no such file")) is None
    assert fill.space_warning(None) is None


def test_percentages_round_down_so_a_store_not_full_never_reads_full():
    assert [fill.percent(f) for f in (0.8, 0.9058, 0.99999, 1.0, 0.0)] == ["80%", "90.5%", "99.9%", "100%", "0%"]


# -- the command --------------------------------------------------------------

@pytest.fixture
def state(tmp_path):
    return StateDir(str(tmp_path / "run"))


@pytest.fixture
def log(tmp_path):
    return Log(config.Config(log_file=str(tmp_path / "hotplug.log"), syslog=False), "xenblock")


def logged(tmp_path):
    path = tmp_path / "hotplug.log"
    return path.read_text().splitlines() if path.exists() else []


def record(key, disk_type, target, steps, frontend_id=3):
    return {"key": key, "type": disk_type, "mode": "w", "state": "connected", "target": target,
            "frontend_id": frontend_id, "images": [], "steps": steps}


def dm_step(key):
    name, uuid = dm.names_for(key)
    return {"undo": "dm", "name": name, "uuid": uuid, "node": "/dev/dm-7", "devnum": "253:7"}


def test_no_records_no_snapshots(state, log, tmp_path, capsys):
    assert admin.check_fill(state, config.Config(), log) == 0
    assert capsys.readouterr() == ("", "no snapshots\n")
    assert logged(tmp_path) == []


def test_disks_without_a_snapshot_are_not_listed(state, log, tmp_path, capsys):
    state.save(record("backend/vbd/3/51712", "file", "/srv/web.img", [{"undo": "loop", "node": "/dev/loop3"}]))
    state.save(record("backend/vbd/3/51728", "part", "/srv/disk.img 2",
                      [{"undo": "loop", "node": "/dev/loop4"}]))
    assert admin.check_fill(state, config.Config(), log) == 0
    assert capsys.readouterr() == ("", "no snapshots\n")


def test_a_snapshot_whose_device_is_gone_is_listed_as_gone_without_a_warning(state, log, tmp_path, capsys):
    # This host has no device-mapper, so no device at all (dm.remove reads it the same way).
    key = "backend/vbd/3/51712"
    state.save(record(key, "cow", "/srv/base.img 4M", [{"undo": "shared_loop", "node": "/dev/loop2"},
                                                      {"undo": "loop", "node": "/dev/loop3"}, dm_step(key)]))
    assert [level.usage for level in fill.levels(state)] == [None]
    assert admin.check_fill(state, config.Config(), log) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "DISK                 TYPE  GUEST  STORE  FILL  COW FILE SPACE  STATE",
        "backend/vbd/3/51712  cow   3      -      -     -               gone (no device-mapper device)"]
    assert err == "" and logged(tmp_path) == []


def test_a_cow_file_its_file_system_cannot_hold_is_warned_of(state, log, tmp_path, capsys):
    # A real sparse file that may grow by 1G more than its file system has free.
    cow = tmp_path / "guest.cow"
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    try:
        with open(cow, "wb") as f:
            f.write(b"\1" * (1 << 20))  # what it takes up already, it cannot grow by
            f.truncate(free + (2 << 30))
            os.fsync(f.fileno())
    except OSError as e:
        pytest.skip(f"no sparse file of {free + (2 << 30)} bytes here: {e}")
    key = "backend/vbd/4/51712"
    state.save(record(key, "snapshot", f"/srv/base.img:{cow}", [dm_step(key)], frontend_id=4))
    (level,) = fill.levels(state)
    assert level.keys == (key,) and level.space.path == str(cow) and level.space.growth > level.space.free, level
    assert level.space.growth <= free + (2 << 30) - (1 << 20), level
    assert admin.check_fill(state, config.Config(), log) == 1
    out, err = capsys.readouterr()
    assert "WARNING: file system short of space" in out.splitlines()[1], out
    (line,) = logged(tmp_path)
    assert f"xenblock[{os.getpid()}]: check-fill {key} (domain 4, snapshot /srv/base.img:{cow}): the CoW file " \
           f"{cow} may grow by " in line, line
    assert err.splitlines() == [line]


def test_the_snapshot_two_domains_of_a_vm_share_is_one_line_naming_both(state, log, tmp_path, capsys):
    # A live migration's destination adopts its source's steps (twin.py).
    source, destination = "backend/vbd/3/51712", "backend/vbd/9/51712"
    steps = [{"undo": "shared_loop", "node": "/dev/loop2"}, {"undo": "loop", "node": "/dev/loop3"}, dm_step(source)]
    state.save(record(source, "cow", "/srv/base.img 4M", steps, frontend_id=3))
    state.save(record(destination, "cow", "/srv/base.img 4M", steps, frontend_id=9))
    (level,) = fill.levels(state)
    assert (level.keys, level.guests) == ((source, destination), (3, 9))
    assert admin.check_fill(state, config.Config(), log) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(f"{source},{destination}  cow   3,9    -")


def test_a_cow_file_that_is_missing_is_reported_not_warned_of(state, log, tmp_path, capsys):
    key = "backend/vbd/4/51712"
    state.save(record(key, "snapshot", f"/srv/base.img:{tmp_path}/gone.cow", [dm_step(key)]))
    assert admin.check_fill(state, config.Config(), log) == 0
    out = capsys.readouterr().out
    assert "unknown ([Errno 2] No such file or directory" in out, out


# -- block-lvsnap: LVM's extender and thin pools --------------------------------

def lvsnap_step(lv, thin=False):
    return {"undo": "lvsnap", "vg": "vg-0", "lv": lv, "uuid": "x", "keep": False, "thin": thin}


@pytest.fixture
def lvm_conf(tmp_path, monkeypatch):
    """An lvm.conf of the test's own, read by the real lvmconfig."""
    import shutil
    if shutil.which("lvmconfig", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        pytest.skip("no lvmconfig (lvm2) on this host")
    folder = tmp_path / "lvm"
    folder.mkdir()
    monkeypatch.setenv("LVM_SYSTEM_DIR", str(folder))

    def write(text):
        (folder / "lvm.conf").write_text(text)
    return write


def test_with_lvms_autoextend_off_check_fill_says_once_that_nothing_extends_classic_snapshots(
        state, log, tmp_path, capsys, lvm_conf):
    # LVM's built-in defaults (threshold 100: off), as Debian's stock lvm.conf leaves them.
    lvm_conf("activation {\n\t# snapshot_autoextend_threshold = 100\n}\n")
    for devid in ("51712", "51728"):
        key = f"backend/vbd/3/{devid}"
        state.save(record(key, "lvsnap", "vg-0/web 1G", [lvsnap_step(f"xenblock-web-{devid}")]))
    assert admin.check_fill(state, config.Config(), log) == 0  # a setting, not a store that needs a person
    out, err = capsys.readouterr()
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["lvsnap", "lvsnap"], out
    assert err.splitlines() == [
        "note: LVM's snapshot autoextend is off (activation/snapshot_autoextend_threshold = 100, "
        "snapshot_autoextend_percent = 20): nothing extends block-lvsnap's classic snapshots, and one that "
        "fills up is invalidated; to have dmeventd extend them, set both in /etc/lvm/lvm.conf "
        "(see xenblock-disks(5))"], err
    assert logged(tmp_path) == []


def test_with_lvms_autoextend_on_check_fill_has_nothing_to_say_about_it(state, log, tmp_path, capsys, lvm_conf):
    lvm_conf("activation {\n\tsnapshot_autoextend_threshold = 70\n\tsnapshot_autoextend_percent = 20\n}\n")
    state.save(record("backend/vbd/3/51712", "lvsnap", "vg-0/web 1G", [lvsnap_step("xenblock-web-xvda")]))
    assert admin.check_fill(state, config.Config(), log) == 0
    assert capsys.readouterr().err == ""


def test_thin_snapshots_and_other_types_do_not_ask_lvm(state, log, tmp_path, capsys, lvm_conf):
    lvm_conf("activation {\n}\n")
    key = "backend/vbd/3/51712"
    state.save(record(key, "cow", "/srv/base.img 4M", [dm_step(key)]))
    state.save(record("backend/vbd/3/51728", "lvsnap", "vg-0/thin", [lvsnap_step("xenblock-web-xvdb", thin=True)]))
    assert admin.check_fill(state, config.Config(), log) == 0
    assert "note:" not in capsys.readouterr().err


@pytest.mark.parametrize("status, data, metadata, mode", [
    ("0 21/4096 45/768 - rw discard_passdown queue_if_no_space - 1024", 45 / 768, 21 / 4096, "rw"),
    ("3 100/100 768/768 - out_of_data_space no_discard_passdown error_if_no_space needs_check 80", 1.0, 1.0,
     "out_of_data_space"),
])
def test_a_thin_pools_status_is_read_as_the_kernel_writes_it(status, data, metadata, mode):
    usage = dm.pool_usage(status)
    assert (usage.data_fill, usage.metadata_fill, usage.mode, usage.problem) == (data, metadata, mode, None)
    assert dm.pool_usage("Fail").problem == "Fail"


def pool(status):
    return fill.Pool("vg-0/pool", ("backend/vbd/3/51712",), (3,), dm.pool_usage(status))


def test_a_thin_pool_warns_past_the_level_in_data_or_metadata_and_when_it_is_not_writable():
    assert fill.pool_warnings(pool("0 799/1000 799/1000 - rw discard_passdown queue_if_no_space - 1"), 0.8) == []
    (data,) = fill.pool_warnings(pool("0 799/1000 800/1000 - rw discard_passdown queue_if_no_space - 1"), 0.8)
    assert data.startswith("thin pool vg-0/pool's data is 80% full, past the warning level 80%: "), data
    (metadata,) = fill.pool_warnings(pool("0 900/1000 1/1000 - rw discard_passdown queue_if_no_space - 1"), 0.8)
    assert metadata.startswith("thin pool vg-0/pool's metadata is 90% full"), metadata
    (full, _) = fill.pool_warnings(
        pool("0 1/1000 1000/1000 - out_of_data_space discard_passdown queue_if_no_space - 1"), 0.8)
    assert full.startswith("thin pool vg-0/pool is out_of_data_space: writes to its thin volumes"), full
    (dead,) = fill.pool_warnings(pool("Fail"), 0.8)
    assert dead.startswith("thin pool vg-0/pool has failed: the kernel reports it 'Fail'"), dead


@pytest.mark.parametrize("vg, lv", [("vg0", "web"), ("xb-vg", "xenblock-dom-1-xvda"), ("a--b", "c-")])
def test_lvm_device_mapper_names_are_read_back_to_the_volume(vg, lv):
    from xenblock import lvm
    name = lvm.dm_name(vg, lv)
    assert lvm.lv_of_dm_name(name) == lvm.lv_of_dm_name(name + "-tpool") == f"{vg}/{lv}"
