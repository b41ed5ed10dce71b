"""Hotplug cases run on the host tier only: the kernel and xenstore
behaviour they rely on is the same in the Xen VM (loop devices, flock, O_PATH,
O_EXCL; the xenstore contract holds the double to the real xenstored), and
each script run costs about two seconds under emulation, so the VM tier keeps
the cases where the real Xen host can differ (tests/support/cases.py)."""
import os
import subprocess
import sys

from tests.support.cases import (DOM_A, DOM_B, assert_error, assert_failed, held_in_another_process,
                                 loops_of)
from tests.support.fixtures import foreign_loop
from xenblock import loop
from xenblock.blockdev import Devnum, diskseq
from xenblock.deadline import Deadline


def test_a_process_holding_the_device_is_named_by_remove(driver, images):
    path = images("held-by-process.img")
    key = driver.backend(path)
    assert driver.add(key).returncode == 0
    node = driver.read(f"{key}/physical-device-path")
    with open(node, "rb") as device:
        holder = subprocess.Popen(["sleep", "60"], stdin=device)
    try:
        assert_error(driver.remove(key), driver, key, f"{node} is still in use", f"pid {holder.pid} (sleep 60)")
    finally:
        holder.kill()
        holder.wait()
    assert driver.remove(key).returncode == 0
    assert loops_of(path) == [] and driver.state_files() == []


def test_a_loop_device_of_ours_no_record_accounts_for_is_still_a_user(driver, images):
    # A teardown that could not finish and whose record is gone (a host
    # that lost /run): bound is bound, whatever mark it carries.
    path = images("unrecorded.img")
    first = driver.backend(path, frontend_id=DOM_A)
    assert driver.add(first).returncode == 0
    node = driver.read(f"{first}/physical-device-path")
    record = driver.record(first)
    os.unlink(os.path.join(driver.state_dir, os.path.basename(driver.record_path(first))))
    try:
        second = driver.backend(path, frontend_id=DOM_B)
        assert_failed(driver.add(second), driver, second, f"{node}, a loop device xenblock bound that no record")
    finally:
        driver.save_record(record)
    assert driver.remove(first).returncode == 0
    assert loops_of(path) == []


def test_an_orphan_whose_lock_is_held_is_left_to_its_run(driver, images):
    # A record whose backend is gone is cleaned by the next add of its image,
    # unless a run holds its lock: that run is alive and will finish it.
    path = images("orphan-locked.img")
    first = driver.backend(path, frontend_id=DOM_A)
    assert driver.add(first).returncode == 0
    driver.destroy_backend(first)
    with held_in_another_process(driver, first):
        second = driver.backend(path, frontend_id=DOM_B)
        assert_failed(driver.add(second), driver, second, "already in use read-write", first)
        assert len(loops_of(path)) == 1
    third = driver.backend(path, frontend_id=DOM_B)
    assert driver.add(third).returncode == 0, "free once the lock is: the orphan is cleaned"
    assert len(loops_of(path)) == 1
    assert driver.remove(third).returncode == 0
    assert loops_of(path) == [] and driver.state_files() == []


def test_the_device_number_of_a_gone_device_reused_with_our_mark_is_left_alone(driver, images):
    # diskseq, never reused, tells our binding from a later one of the same
    # device number, even one carrying the same mark.
    path = images("reused.img")
    key = driver.backend(path)
    assert driver.add(key).returncode == 0
    record = driver.record(key)
    step = record["steps"][0]
    assert step["diskseq"] == diskseq(Devnum.parse(step["devnum"]))
    number = int(step["node"].removeprefix("/dev/loop"))
    other = images("other.img")
    deadline = Deadline.after(5)
    assert loop.wait_unbound(loop.detach(step["node"], step["diskseq"], step["mark"], deadline),
                             step["diskseq"], deadline)
    fd = os.open(other, os.O_RDWR)
    try:
        again = loop.attach(fd, False, False, step["mark"], lambda n: None, lambda n: None, deadline)
    finally:
        os.close(fd)
    try:
        assert again.number == number, "the kernel gave out the lowest free number again"
        assert driver.remove(key).returncode == 0
        assert loops_of(other) == [again.node], "not ours: another binding of the same number"
    finally:
        loop.detach(again.node, again.diskseq, step["mark"], deadline)


def test_the_record_says_connected_once_published(driver, images):
    key = driver.backend(images("connected.img"))
    assert driver.add(key).returncode == 0
    record = driver.record(key)
    assert record["state"] == "connected"
    assert record["physical_device"] == driver.read(f"{key}/physical-device")
    assert driver.remove(key).returncode == 0


def test_remove_with_a_broken_config_still_takes_the_disk_down(driver, images, tmp_path):
    path = images("broken-config.img")
    key = driver.backend(path)
    assert driver.add(key).returncode == 0
    config = tmp_path / "broken.conf"
    config.write_text(f"[general]\nlog_file = {driver.log_file}\nsyslog = no\ndirect_io = maybe\n")
    start = driver.log_offset()
    result = driver.remove(key, env={"XENBLOCK_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert loops_of(path) == [] and driver.state_files() == []
    assert any(f"{config} line 4" in line for line in driver.log_since(start)), "the mistake is still logged"


def test_a_target_with_a_newline_is_refused_on_one_line(driver, images):
    path = images("newline.img")
    key = driver.backend(path)
    driver.write_unchecked(f"{key}/params", path + "\nforged log line")
    start = driver.log_offset()
    error = assert_failed(driver.add(key), driver, key, f"{path}\\nforged log line: no such file")
    assert "\n" not in error
    lines = driver.log_since(start)
    assert len(lines) == 1 and lines[0].endswith(f"{path}\\nforged log line: no such file or block device"), lines


def test_a_fifo_or_character_device_is_refused_without_opening_it(driver, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # a real open would block for ever, waiting for a writer
    for target in (str(fifo), "/dev/null"):
        key = driver.backend(target)
        assert_failed(driver.add(key), driver, key, f"{target}: not an image file or block device")


def test_mode_w_bang_writes_even_when_shared(driver, images):
    # "w!" is Xen's "writable, sharing allowed": the administrator's call.
    path = images("forced.img")
    first = driver.backend(path, frontend_id=DOM_A)
    forced = driver.backend(path, mode="w!", frontend_id=DOM_B)
    assert driver.add(first).returncode == 0
    start = driver.log_offset()
    assert driver.add(forced).returncode == 0, driver.read(f"{forced}/hotplug-error")
    assert any("mode w!: sharing check skipped on request" in line for line in driver.log_since(start))
    assert not loop.status(driver.read(f"{forced}/physical-device-path")).read_only
    for key in (forced, first):
        assert driver.remove(key).returncode == 0


def test_a_disk_without_a_frontend_id_is_nobodys_twin(driver, images):
    path = images("no-frontend.img")
    first = driver.backend(path, omit=("frontend-id",), frontend_id=DOM_A)
    start = driver.log_offset()
    assert driver.add(first).returncode == 0, driver.read(f"{first}/hotplug-error")
    assert any("for an unknown domain" in line for line in driver.log_since(start))
    second = driver.backend(path, omit=("frontend-id",), frontend_id=DOM_A)
    assert_failed(driver.add(second), driver, second, "already in use read-write by domain None")
    assert driver.remove(first).returncode == 0


def test_a_claim_by_dom0_is_seen_also_beside_a_same_vm_user(driver, images):
    # The same VM may share the device; dom0 holding it exclusively (a mount,
    # LVM, md, swap: here a process's O_EXCL open) still forbids writing.
    path = images("claimed.img")
    with foreign_loop(path) as node:
        driver.write(f"/local/domain/{DOM_A}/vm", "/vm/xenblock-test-claim")
        driver.write(f"/local/domain/{DOM_B}/vm", "/vm/xenblock-test-claim")
        try:
            first = driver.backend(node, frontend_id=DOM_A)
            assert driver.add(first).returncode == 0
            claim = os.open(node, os.O_RDONLY | os.O_EXCL)
            try:
                twin = driver.backend(node, frontend_id=DOM_B)
                assert_failed(driver.add(twin), driver, twin, "dom0 (mounted, or held by")
            finally:
                os.close(claim)
            assert driver.remove(first).returncode == 0
        finally:
            for domid in (DOM_A, DOM_B):
                driver.delete(f"/local/domain/{domid}")


def test_a_writer_is_refused_whatever_records_sort_before_its_rival(driver, images):
    # Records are read in name order; one of another image coming first must
    # not end the search for the rival.
    unrelated = driver.backend(images("unrelated.img"), frontend_id=0)  # sorts first
    path = images("rivalled.img")
    first = driver.backend(path, frontend_id=DOM_A)
    second = driver.backend(path, frontend_id=DOM_B)
    for key in (unrelated, first):
        assert driver.add(key).returncode == 0
    assert_failed(driver.add(second), driver, second, path, f"domain {DOM_A}")
    for key in (first, unrelated):
        assert driver.remove(key).returncode == 0


def test_a_writer_is_refused_by_name_after_an_orphan_of_the_image_is_cleaned(driver, images):
    # An orphan (backend gone) sorting before the live rival is cleaned on
    # the way; the search goes on and names the rival.
    path = images("orphan-then-rival.img")
    first = driver.backend(path, mode="r", frontend_id=DOM_A)
    assert driver.add(first).returncode == 0
    orphan = driver.backend(path, mode="r", frontend_id=0)  # sorts first
    assert driver.add(orphan).returncode == 0
    driver.destroy_backend(orphan)
    second = driver.backend(path, frontend_id=DOM_B)
    assert_failed(driver.add(second), driver, second, path, f"already in use read-only by domain {DOM_A}")
    assert driver.record(orphan) is None, "the orphan was cleaned"
    assert driver.remove(first).returncode == 0


# The script run as libxl runs it, printing at exit which type modules it imported.
TYPES_IMPORTED = """import atexit, runpy, sys
atexit.register(lambda: print("TYPES", *sorted(m for m in sys.modules if m.startswith("xenblock.types.")),
                              file=sys.stderr))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_an_add_imports_the_module_of_its_own_type_alone(driver, images):
    # libxl runs add for every disk at every guest start: all six types took
    # 42 ms to import here, and seconds in the emulated dom0.
    key = driver.backend(images("lean.img"))
    result = driver.add(key, wrapper=[sys.executable, "-c", TYPES_IMPORTED])
    assert result.returncode == 0, result.stderr
    assert "TYPES xenblock.types.file\n" in result.stderr, result.stderr
    assert driver.remove(key).returncode == 0
