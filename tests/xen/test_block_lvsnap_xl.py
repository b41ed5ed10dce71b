"""block-lvsnap with real LVM: a volume group on a loop-backed sparse PV
(made once for the module), a classic origin and a thin one, guests
started by xl and hotplug runs driven directly where no guest is needed."""
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from tests.support import hostile_cases
from tests.xen.xl import config, disk, paused_guest, run_guest, wait_gone, xl

SCRIPT = "block-lvsnap"
MARK = b"xenblock-lvsnap-origin"
QUIET = ["-q", "--config", "backup { backup = 0 archive = 0 }"]
CONF = "/etc/xenblock/xenblock.conf"


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


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


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
    saved = CONF + ".saved"
    shutil.copy(CONF, saved)
    with open(CONF, "a") as f:
        f.write(f"\n[lvsnap]\nkeep_origins = {vg}/orig\n")
    try:
        yield
    finally:
        os.replace(saved, CONF)


def test_a_kept_snapshot_is_found_again_with_the_guests_changes(vg, tmp_path, keep_config):
    volumes, before = logical_volumes(vg), digest(f"/dev/{vg}/orig")
    snippet = ("dd if=/dev/xvda bs=512 skip=64 count=1 2>/dev/null | head -c 13; echo; "
               "echo kept-by-guest | dd of=/dev/xvda bs=512 seek=64 conv=notrunc,fsync 2>/dev/null")
    name, path = config(tmp_path, [lvsnap(f"{vg}/orig 8M")], snippet)
    seen = []
    try:
        for _ in range(2):
            result = xl("create", "-c", path, timeout=300)
            assert result.returncode == 0, result.stderr
            wait_gone(name)
            seen.append([line.split("XBGUEST: ", 1)[1].rstrip("\r") for line in result.stdout.splitlines()
                         if "XBGUEST: " in line])
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
