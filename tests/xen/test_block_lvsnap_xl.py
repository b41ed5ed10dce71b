"""block-lvsnap with real LVM: a volume group on a loop-backed sparse PV
(made once for the module), a classic origin and a thin one, guests
started by xl and hotplug runs driven directly where no guest is needed."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests.support import hostile_cases
from tests.support.cases import DOM_A, DOM_B, DOM_C, installed_settings
from tests.support.fixtures import digest, read_at
from tests.support.part_cases import write_at
from tests.xen.xl import config, create_on_console, disk, guest_result, paused_guest, run_guest

SCRIPT = "block-lvsnap"
MARK = b"xenblock-lvsnap-origin"
QUIET = ["-q", "--config", "backup { backup = 0 archive = 0 }"]


def sh(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def vg(tmp_path_factory):
    """A VG with a classic origin `orig` (16M) and a thin origin `torig`,
    each starting with MARK; removed with everything in it after."""
    name = f"xblvsnap{os.getpid()}"
    image = tmp_path_factory.mktemp("lvsnap") / "pv.img"
    with open(image, "wb") as f:
        f.truncate(160 << 20)
    node = sh("losetup", "--find", "--show", str(image)).strip()
    try:
        sh("pvcreate", *QUIET, node)
        sh("vgcreate", *QUIET, name, node)
        sh("lvcreate", *QUIET, "-y", "-L", "16M", "-n", "orig", name)
        sh("lvcreate", *QUIET, "-y", "-L", "48M", "-T", f"{name}/pool")
        sh("lvcreate", *QUIET, "-y", "-V", "16M", "-T", f"{name}/pool", "-n", "torig")
        # A file system on the classic origin: dom0's blkid must not see it in our snapshots.
        sh("mkfs.ext2", "-q", f"/dev/{name}/orig")
        for lv in ("orig", "torig"):
            with open(f"/dev/{name}/{lv}", "r+b") as f:
                f.write(MARK)
        yield name
    finally:
        subprocess.run(["vgremove", *QUIET, "-y", "-ff", name], capture_output=True)
        subprocess.run(["losetup", "-d", node], check=True)


def lvsnap(target, **kw):
    return disk(target, script=SCRIPT, **kw)


def logical_volumes(vg):
    return set(sh("lvs", "--noheadings", "-o", "lv_name", vg).split())


READ_AND_WRITE = (f"head -c {len(MARK)} /dev/xvda; echo; "
                  "echo written-by-guest | dd of=/dev/xvda bs=512 seek=64 conv=notrunc,fsync 2>/dev/null; "
                  "echo write-status $?; echo 3 > /proc/sys/vm/drop_caches; "
                  "dd if=/dev/xvda bs=512 skip=64 count=1 2>/dev/null | head -c 16; echo")


@pytest.mark.parametrize("origin,size", [("orig", " 8M"), ("torig", "")])
def test_a_guest_reads_the_origin_through_its_snapshot_and_writes_and_the_origin_stays(vg, tmp_path, origin,
                                                                                       size):
    before, volumes = digest(f"/dev/{vg}/{origin}"), logical_volumes(vg)
    lines, status = run_guest(tmp_path, [lvsnap(f"{vg}/{origin}{size}")], READ_AND_WRITE)
    assert status == 0, lines
    assert lines[0] == MARK.decode()
    assert "write-status 0" in lines and lines[-1] == "written-by-guest", lines
    assert digest(f"/dev/{vg}/{origin}") == before
    assert logical_volumes(vg) == volumes


LVM_CASES = [case for case in hostile_cases.VM_CASES if "lvm" in case.needs]


@pytest.mark.parametrize("case", LVM_CASES, ids=[case.id for case in LVM_CASES])
def test_bad_input_fails_with_one_line_naming_it_and_changes_nothing(case, vg, driver, tmp_path):
    # The rows of the hostile-input table that need LVM (the host tier runs the rest).
    volumes = logical_volumes(vg)
    with hostile_cases.scene(tmp_path) as where:
        hostile_cases.run(case, driver, where, tmp_path, vg=vg)
    assert logical_volumes(vg) == volumes


def test_an_origin_a_running_guest_writes_is_refused(vg, driver, tmp_path):
    with paused_guest(tmp_path, [disk(f"/dev/{vg}/orig")]):
        key = driver.backend(f"{vg}/orig 8M", script=SCRIPT)
        result = driver.add(key, script=SCRIPT)
        error = driver.read(f"{key}/hotplug-error")
        assert result.returncode == 1 and "already in use read-write by domain" in error, error
        driver.destroy_backend(key)


def test_leftovers_of_killed_runs_are_recognised_at_the_next_add(vg, driver):
    volumes = logical_volumes(vg)
    key = driver.backend(f"{vg}/orig 8M", script=SCRIPT)
    assert driver.add(key, script=SCRIPT).returncode == 0
    made = logical_volumes(vg) - volumes
    (name,) = made
    node = f"/dev/{vg}/{name}"
    subprocess.run(["udevadm", "settle"], check=False)
    properties = sh("udevadm", "info", "--query=property", node)
    assert "XENBLOCK_GUEST_DISK=1" in properties and "ID_FS_TYPE" not in properties, properties
    # Killed after lvcreate, before the LV's UUID reached the record.
    record = driver.record(key)
    record["steps"][-1]["uuid"] = None
    driver.save_record(record)
    driver.delete(f"{key}/physical-device")
    assert driver.add(key, script=SCRIPT).returncode == 0, driver.read(f"{key}/hotplug-error")
    assert logical_volumes(vg) - volumes == made
    # The record lost (a dom0 reboot empties /run): found by its name and tag.
    os.unlink(driver.record_path(key))
    driver.destroy_backend(key)
    devid = key.rsplit("/", 1)[1]
    again = driver.backend(f"{vg}/orig 8M", script=SCRIPT, devid=devid)
    assert driver.add(again, script=SCRIPT).returncode == 0, driver.read(f"{again}/hotplug-error")
    assert driver.remove(again, script=SCRIPT).returncode == 0
    assert logical_volumes(vg) == volumes


def test_the_domains_of_one_vm_get_one_snapshot_which_goes_with_the_last_of_them(vg, driver):
    # A live migration's destination (the source's /vm node, and its name
    # with --incoming until the source is gone) and a stub domain (its
    # target is the guest) must see the guest's changes: its snapshot, not a
    # fresh one of the origin that the source's remove would leave as the
    # only copy while it discards the guest's.
    volumes, before = logical_volumes(vg), digest(f"/dev/{vg}/orig")
    for domid, name in ((DOM_A, "web"), (DOM_B, "web--incoming"), (DOM_C, "web-dm")):
        driver.write(f"/local/domain/{domid}/name", name)
    for domid in (DOM_A, DOM_B):
        driver.write(f"/local/domain/{domid}/vm", "/vm/xenblock-test-one-vm")
    driver.write(f"/local/domain/{DOM_C}/target", str(DOM_A))
    target = f"{vg}/orig 8M"
    try:
        keys = [driver.backend(target, script=SCRIPT, frontend_id=DOM_A)]
        devid = keys[0].rsplit("/", 1)[1]  # each domain's disk is the same device of the guest's
        keys += [driver.backend(target, script=SCRIPT, frontend_id=domid, devid=devid) for domid in (DOM_B, DOM_C)]
        assert driver.add(keys[0], script=SCRIPT).returncode == 0, driver.read(f"{keys[0]}/hotplug-error")
        node = driver.read(f"{keys[0]}/physical-device-path")
        write_at(node, 1 << 20, b"the guest's change")
        for key in keys[1:]:
            assert driver.add(key, script=SCRIPT).returncode == 0, driver.read(f"{key}/hotplug-error")
            assert driver.read(f"{key}/physical-device") == driver.read(f"{keys[0]}/physical-device")
        assert logical_volumes(vg) - volumes == {f"xenblock-web-{devid}"}
        for key in keys[:2]:
            assert driver.remove(key, script=SCRIPT).returncode == 0
            assert read_at(node, 1 << 20, 18) == b"the guest's change", "taken from under the last domain"
        assert driver.remove(keys[2], script=SCRIPT).returncode == 0
        assert logical_volumes(vg) == volumes and digest(f"/dev/{vg}/orig") == before
    finally:
        for domid in (DOM_A, DOM_B, DOM_C):
            driver.delete(f"/local/domain/{domid}")


def test_a_users_lv_with_our_snapshots_name_is_never_touched(vg, driver):
    key = driver.backend(f"{vg}/orig 8M", script=SCRIPT)
    name = f"xenblock-Domain-0-{key.rsplit('/', 1)[1]}"
    sh("lvcreate", *QUIET, "-y", "-L", "4M", "-n", name, vg)
    try:
        result = driver.add(key, script=SCRIPT)
        error = driver.read(f"{key}/hotplug-error")
        assert result.returncode == 1 and "is not xenblock's" in error, error
        assert name in logical_volumes(vg)
    finally:
        sh("lvremove", *QUIET, "-y", f"{vg}/{name}")
    driver.destroy_backend(key)


@pytest.fixture
def keep_config(vg):
    with installed_settings("lvsnap", keep_origins=f"{vg}/orig"):
        yield


def test_a_kept_snapshot_is_found_again_with_the_guests_changes(vg, tmp_path, keep_config):
    volumes, before = logical_volumes(vg), digest(f"/dev/{vg}/orig")
    snippet = ("dd if=/dev/xvda bs=512 skip=64 count=1 2>/dev/null | head -c 13; echo; "
               "echo kept-by-guest | dd of=/dev/xvda bs=512 seek=64 conv=notrunc,fsync 2>/dev/null")
    name, path = config(tmp_path, [lvsnap(f"{vg}/orig 8M")], snippet)
    seen = []
    try:
        for _ in range(2):
            seen.append(guest_result(create_on_console(name, path))[0])
        kept = logical_volumes(vg) - volumes
        assert kept == {f"xenblock-{name}-xvda"}, kept
        tags = sh("lvs", "--noheadings", "-o", "lv_tags", f"{vg}/xenblock-{name}-xvda").strip().split(",")
        assert "xenblock-kept" in tags  # what keeps `xenblock cleanup` off it
    finally:
        subprocess.run(["lvremove", *QUIET, "-y", "--select", "lv_tags={xenblock}", vg], capture_output=True)
    assert seen[0][0] != "kept-by-guest" and seen[1][0] == "kept-by-guest", seen
    assert digest(f"/dev/{vg}/orig") == before


def test_a_classic_snapshot_s_fill_level_is_read_like_the_cow_types(vg, driver):
    from xenblock import fill
    from xenblock.state import StateDir
    key = driver.backend(f"{vg}/orig 4M", script=SCRIPT)
    assert driver.add(key, script=SCRIPT).returncode == 0, driver.read(f"{key}/hotplug-error")
    try:
        (name,) = [lv for lv in logical_volumes(vg) if lv.startswith("xenblock-")]
        with open(f"/dev/{vg}/{name}", "r+b") as f:
            f.write(b"x" * (7 << 19))  # 3.5M
            os.fsync(f.fileno())
        (level,) = [level for level in fill.levels(StateDir()) if key in level.keys]
        assert level.type == "lvsnap" and level.usage.fill >= 0.85, level
        admin = os.path.join(os.path.dirname(sys.executable), "xenblock")
        result = subprocess.run([admin, "check-fill"], capture_output=True, text=True)
        assert result.returncode == 1 and key in result.stdout + result.stderr, result
        # dom0's lvm.conf is Debian's stock one: LVM's autoextend is off.
        assert "note: LVM's snapshot autoextend is off (activation/snapshot_autoextend_threshold = 100" in \
            result.stderr, result
    finally:
        assert driver.remove(key, script=SCRIPT).returncode == 0
        driver.destroy_backend(key)


def pool_percents(vg):
    return [float(value) for value in
            sh("lvs", "--noheadings", "-o", "data_percent,metadata_percent", f"{vg}/pool").split()]


def test_a_thin_snapshot_s_pool_fill_level_is_warned_of(vg, driver, tmp_path):
    """A thin snapshot has no store of its own: its pool's use is what
    check-fill and status report, warned of past fill_warning: here a level
    just above what the pool holds now (a small pool's metadata is some
    10% used from the start), which the snapshot's writes then pass."""
    data, metadata = pool_percents(vg)
    warn = int(max(data, metadata)) + 3
    assert warn < 30, (data, metadata)  # what the 16M volume can fill in the 48M pool
    conf = tmp_path / "check.conf"
    conf.write_text(f"[general]\nfill_warning = {warn}%\nlog_file = {tmp_path / 'check.log'}\nsyslog = no\n")
    env = {**os.environ, "XENBLOCK_CONFIG": str(conf)}
    admin = os.path.join(os.path.dirname(sys.executable), "xenblock")
    key = driver.backend(f"{vg}/torig", script=SCRIPT)
    assert driver.add(key, script=SCRIPT).returncode == 0, driver.read(f"{key}/hotplug-error")
    try:
        calm = subprocess.run([admin, "check-fill"], env=env, capture_output=True, text=True)
        (row,) = [line for line in calm.stdout.splitlines() if line.startswith(f"{vg}/pool ")]
        assert calm.returncode == 0 and row.split()[1] == key and row.endswith("ok"), calm
        with open(driver.read(f"{key}/physical-device-path"), "r+b") as f:
            f.write(os.urandom(-(-(warn + 2 - int(data)) * 48 // 100) << 20))
            os.fsync(f.fileno())
        result = subprocess.run([admin, "check-fill"], env=env, capture_output=True, text=True)
        (row,) = [line for line in result.stdout.splitlines() if line.startswith(f"{vg}/pool ")]
        assert result.returncode == 1 and row.endswith(f"WARNING: past {warn}%"), result
        shown_data = float(row.split()[3].rstrip("%"))
        assert abs(shown_data - pool_percents(vg)[0]) < 0.2, (row, pool_percents(vg))
        assert f"thin pool {vg}/pool's data is " in (tmp_path / "check.log").read_text()
        shown = subprocess.run([admin, "status", "--json"], env=env, capture_output=True, text=True)
        (mine,) = [entry for entry in json.loads(shown.stdout) if entry["key"] == key]
        assert mine["pool"]["name"] == f"{vg}/pool" and mine["pool"]["warning"], mine
    finally:
        assert driver.remove(key, script=SCRIPT).returncode == 0
        driver.destroy_backend(key)


def test_cleanup_removes_a_snapshot_of_ours_no_record_names_but_not_a_kept_one_or_a_users(vg):
    """As after /run was lost: LVs of ours with no record."""
    for name, tags in (("xenblock-lost-xvda", ["xenblock"]), ("xenblock-kept-xvda", ["xenblock", "xenblock-kept"]),
                       ("xenblock-users-own", [])):
        sh("lvcreate", *QUIET, "-y", "-s", "-L", "4M", "-n", name, *[f"--addtag={tag}" for tag in tags],
           f"{vg}/orig")
    admin = os.path.join(os.path.dirname(sys.executable), "xenblock")
    try:
        listed = subprocess.run([admin, "cleanup", "--dry-run"], capture_output=True, text=True)
        assert f"would take down logical volume {vg}/xenblock-lost-xvda" in listed.stdout, listed
        assert "xenblock-kept-xvda" not in listed.stdout and "xenblock-users-own" not in listed.stdout
        assert {"xenblock-lost-xvda"} <= logical_volumes(vg)
        done = subprocess.run([admin, "cleanup"], capture_output=True, text=True)
        assert done.returncode == 0 and f"took down logical volume {vg}/xenblock-lost-xvda" in done.stdout, done
        assert {"xenblock-kept-xvda", "xenblock-users-own"} <= logical_volumes(vg)
        assert "xenblock-lost-xvda" not in logical_volumes(vg)
    finally:
        for name in ("xenblock-lost-xvda", "xenblock-kept-xvda", "xenblock-users-own"):
            subprocess.run(["lvremove", *QUIET, "-y", f"{vg}/{name}"], capture_output=True)


LVM_CONF = "/etc/lvm/lvm.conf"
# LVM's own extender, set the way xenblock-disks(5) tells an administrator:
# dmeventd (running from boot, see tests/vm/dom0-setup.sh) polls each
# monitored snapshot every 10 s and, past the threshold, runs
# `lvextend --use-policies`, which grows it by the percentage. dmeventd reads
# lvm.conf again when it changes (its ctime or size), before each lvextend.
AUTOEXTEND = "\tsnapshot_autoextend_threshold = 50\n\tsnapshot_autoextend_percent = 50\n"


@pytest.fixture
def autoextend():
    with open(LVM_CONF) as f:
        saved = f.read()
    edited = saved.replace("\nactivation {\n", "\nactivation {\n" + AUTOEXTEND, 1)
    assert edited != saved, f"no activation section in {LVM_CONF}"
    try:
        with open(LVM_CONF, "w") as f:
            f.write(edited)
        assert sh("lvmconfig", "activation/snapshot_autoextend_threshold").strip() == \
            "snapshot_autoextend_threshold=50"
        assert subprocess.run(["pgrep", "-x", "dmeventd"], capture_output=True).returncode == 0, "no dmeventd"
        yield
    finally:
        with open(LVM_CONF, "w") as f:
            f.write(saved)


# The guest writes 10 MiB of its own random data to its 8M snapshot, 1 MiB
# every 5 s or so: at 50% (4M) the snapshot has 4M of room, about 20 s of
# writes, for dmeventd to see it (within 10 s) and lvextend (5-10 s under
# emulation). Then it reads them back past its page cache.
GROW = ("dd if=/dev/urandom of=/tmp/d bs=1M count=10 2>/dev/null; for i in 0 1 2 3 4 5 6 7 8 9; do "
        "dd if=/tmp/d of=/dev/xvda bs=1M skip=$i seek=$i count=1 conv=notrunc,fsync 2>/dev/null || "
        "echo write-failed $i; sleep 5; done; echo 3 > /proc/sys/vm/drop_caches; "
        "sha256sum < /tmp/d; dd if=/dev/xvda bs=1M count=10 2>/dev/null | sha256sum")


def test_a_classic_snapshot_the_guest_writes_past_its_threshold_is_extended_in_time(vg, tmp_path, keep_config,
                                                                                    autoextend):
    """Kept at destroy (keep_config), so that its size and contents can be
    looked at after: the data the guest wrote, and more room than 8M."""
    volumes, before = logical_volumes(vg), digest(f"/dev/{vg}/orig")
    try:
        lines, status = run_guest(tmp_path, [lvsnap(f"{vg}/orig 8M")], GROW)
        (kept,) = logical_volumes(vg) - volumes
        size, attr = sh("lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_size,lv_attr",
                        f"{vg}/{kept}").split()
        with open(f"/dev/{vg}/{kept}", "rb") as f:
            written = hashlib.sha256(f.read(10 << 20)).hexdigest()
    finally:
        subprocess.run(["lvremove", *QUIET, "-y", "--select", "lv_tags={xenblock}", vg], capture_output=True)
    assert status == 0 and not any("write-failed" in line for line in lines), lines
    wrote, read = (line.split()[0] for line in lines[-2:])
    assert read == wrote == written, lines
    assert int(size) > 8 << 20 and attr[4] != "I", (size, attr)
    assert digest(f"/dev/{vg}/orig") == before
    assert logical_volumes(vg) == volumes
