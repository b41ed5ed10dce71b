"""block-tap as xl uses it: a raw image through a real guest, qemu formats
through qemu-nbd and the kernel's nbd driver, images that are not what they
are named refused by xl create with nothing left (the leak check wraps each
test: no nbd connection, qemu-nbd process or file under /run may remain)."""
import os
import subprocess
import time

from tests.support.cases import DOM_A, DOM_B, assert_failed, settings_env
from tests.support.fixtures import read_at
from tests.vm import guest
from tests.xen.xl import create_fails, disk, paused_guest, run_guest
from xenblock import nbd
from xenblock.deadline import start_ticks
from xenblock.state import StateDir

MARK = b"xenblock-tap-guest-marker"


def test_a_guest_reads_and_writes_a_raw_image(images, tmp_path):
    path = images("tap-raw.img", MARK)
    snippet = (f"head -c {len(MARK)} /dev/xvda; echo; "
               "echo written-by-guest | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
               "echo write-status $?")
    lines, status = run_guest(tmp_path, [disk(f"raw:{path}", script="block-tap")], snippet)
    assert status == 0, lines
    assert lines[0] == MARK.decode() and "write-status 0" in lines, lines
    assert read_at(path, 2048 * 512, 16) == b"written-by-guest"


def test_a_raw_image_named_qcow2_fails_xl_create_naming_it(images, tmp_path):
    path = images("tap-not-qcow2.img", MARK)
    output = create_fails(tmp_path, [disk(f"qcow2:{path}", script="block-tap")])
    assert f"{path}: not a valid qcow2 image" in output, output


WRITTEN = b"written-by-guest"


def qemu_image(images, name, fmt, head):
    """A fmt image whose first bytes are head (converted from a raw one)."""
    raw = images(f"{name}.raw", head)
    path = raw.removesuffix(".raw") + f".{fmt}"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, raw, path], check=True, capture_output=True)
    return path


def guest_bytes(path, fmt, offset, size):
    """What the image holds at offset, read by qemu-img (the guest's view)."""
    raw = path + ".check"
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", path, raw], check=True, capture_output=True)
    try:
        return read_at(raw, offset, size)
    finally:
        os.unlink(raw)


def test_a_guest_writes_a_qcow2_image_and_is_refused_writing_a_read_only_vhd(images, tmp_path):
    # One guest, two nbd disks, each with its own qemu-nbd: xvda a qcow2
    # read-write, xvdb a vhd with access=r that the guest tries to write
    # (its kernel refuses: blkfront marks the disk read-only). After
    # destroy qemu-img finds the guest's write in the qcow2 (its fsync got
    # through qemu-nbd's flush), the vhd is unchanged, and the leak check
    # finds no nbd connection, qemu-nbd process or file under /run left.
    qcow2 = qemu_image(images, "tap-guest", "qcow2", MARK)
    vhd = qemu_image(images, "tap-ro", "vpc", MARK)
    snippet = (f"head -c {len(MARK)} /dev/xvda; echo; head -c {len(MARK)} /dev/xvdb; echo; "
               f"echo {WRITTEN.decode()} | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
               "echo write-status $?; "
               "echo nope | dd of=/dev/xvdb bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
               "echo ro-write-status $?; cat /sys/block/xvdb/ro")
    lines, status = run_guest(tmp_path, [disk(f"qcow2:{qcow2}", script="block-tap"),
                                         disk(f"vhd:{vhd}", vdev="xvdb", access="r", script="block-tap")],
                              snippet)
    assert status == 0, lines
    assert lines[:3] == [MARK.decode(), MARK.decode(), "write-status 0"], lines
    assert lines[3] != "ro-write-status 0" and lines[4] == "1", lines
    assert guest_bytes(qcow2, "qcow2", 2048 * 512, len(WRITTEN)) == WRITTEN
    assert guest_bytes(vhd, "vpc", 2048 * 512, 4) == bytes(4)
    assert not os.listdir("/run/xenblock/nbd")


def test_a_paused_guests_nbd_device_is_ours_hidden_from_udev_and_read_only_as_asked(images, tmp_path):
    path = qemu_image(images, "tap-paused", "vpc", MARK)
    with paused_guest(tmp_path, [disk(f"vhd:{path}", access="r", script="block-tap")]):
        [(index, backend)] = nbd.ours()
        assert backend.startswith("xenblock:backend/vbd/")
        assert nbd.sysfs(index, "ro") == "1"
        with open("/sys/module/nbd/parameters/max_part") as f:
            assert f.read().strip() == "0", "loaded by block-tap with partition scanning off"
        subprocess.run(["udevadm", "settle", "--timeout=30"], check=False)
        udev = subprocess.run(["udevadm", "info", "--query=property", f"/dev/nbd{index}"],
                              capture_output=True, text=True).stdout
        assert "XENBLOCK_GUEST_DISK=1" in udev, udev
        # Its qemu-nbd is recorded by pid and start time, its own session.
        record = next(r for r in StateDir().records() if r["target"] == f"vhd:{path}")
        daemon = next(step for step in record["steps"] if step["undo"] == "qemu_nbd")
        assert start_ticks(daemon["pid"]) == daemon["start_time"] and daemon["served"]
        assert os.getsid(daemon["pid"]) == daemon["pid"]
        assert "--read-only" in open(f"/proc/{daemon['pid']}/cmdline").read().split("\0")


def test_a_corrupt_qcow2_fails_xl_create_naming_it_and_leaves_nothing(images, tmp_path):
    path = qemu_image(images, "tap-corrupt", "qcow2", MARK)
    with open(path, "r+b") as f:
        f.seek(4)
        f.write(b"\0\0\0\x63")  # version 99
    output = create_fails(tmp_path, [disk(f"qcow2:{path}", script="block-tap")])
    assert f"{path}: not a valid qcow2 image" in output, output


def test_an_add_killed_once_qemu_nbd_runs_is_undone_by_remove(driver, images):
    # libxl's SIGKILL may come at any moment; here once qemu-nbd has been
    # started (its pid perhaps saved, the device perhaps connected).
    path = qemu_image(images, "tap-killed", "qcow2", MARK)
    for delay in (0.0, 0.5, 1.5):
        key = driver.backend(f"qcow2:{path}", script="block-tap")
        add = subprocess.Popen([f"{driver.script_dir}/block-tap", "add"], env={
            "PATH": os.environ["PATH"], **driver.env, "XENBUS_TYPE": "vbd", "XENBUS_PATH": key,
            "XENBUS_BASE_PATH": "backend", "script": f"{driver.script_dir}/block-tap"},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not qemu_nbd_running(path) and add.poll() is None:
            time.sleep(0.02)
        time.sleep(delay)
        add.kill()
        add.wait()
        result = driver.remove(key, script="block-tap")
        assert result.returncode == 0, (delay, result.stderr)
        assert not qemu_nbd_running(path) and nbd.ours() == [] and driver.record(key) is None, delay
        driver.destroy_backend(key)


def qemu_nbd_running(path):
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = f.read().decode(errors="replace").split("\0")
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        if os.path.basename(words[0]) == "qemu-nbd" and path in words:
            return True
    return False


EXT2_MAGIC = "dd if=/dev/xvda bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1"


def test_pygrub_boots_a_guest_from_a_vhd_image_through_block_tap(driver, tmp_path):
    # libxl attaches the disk to dom0 first and pygrub reads the kernel
    # from its physical-device-path (/dev/nbdN, through qemu-nbd's vpc
    # driver); then it is detached (that qemu-nbd exits, releasing qemu's
    # lock) and attached to the guest, which sees the ext2 file system at
    # the disk's start: the image read as vhd, not as the raw file (which
    # starts with the vhd footer's copy).
    raw = str(tmp_path / "pygrub-boot.raw")
    guest.write_boot_disk(raw)
    path = str(tmp_path / "pygrub-boot.vhd")
    # vpc rounds the disk's size up to a CHS geometry: the disk is a few
    # sectors larger than the raw image, which the file system ignores.
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", raw, path], check=True, capture_output=True)
    os.unlink(raw)
    start = driver.log_offset()
    lines, status = run_guest(tmp_path, [disk(f"vhd:{path}", script="block-tap")], EXT2_MAGIC, bootloader="pygrub")
    assert status == 0 and lines[0].split() == ["53", "ef"], lines
    ours = [line for line in driver.log_since(start) if path in line]
    adds = [line for line in ours if " add " in line]
    assert len(adds) == 2 and len([line for line in ours if " remove " in line]) == 2, ours
    assert "for domain 0 (Domain-0)" in adds[0] and "for domain 0" not in adds[1], adds
    assert all("through qemu-nbd" in line for line in adds), adds


def test_outside_files_yes_serves_a_qcow2_over_its_backing_file_a_read_only_user(driver, images, tmp_path):
    # Refused by default (tests/host/test_block_tap.py). With the setting,
    # the overlay is served with its backing file's data under it, writes
    # go to the overlay only, and the backing file is a read-only user to
    # the sharing check: another domain may read it, not write it.
    base = images("tap-base.raw", MARK)
    overlay = str(tmp_path / "tap-overlay.qcow2")
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", base, "-F", "raw", overlay],
                   check=True, capture_output=True)
    before = read_at(base)
    env = settings_env(driver, tmp_path, "tap", outside_files="yes")
    key = driver.backend(f"qcow2:{overlay}", frontend_id=DOM_A, script="block-tap")
    result = driver.add(key, script="block-tap", env=env)
    assert result.returncode == 0, result.stderr
    node = driver.read(f"{key}/physical-device-path")
    assert read_at(node, 0, len(MARK)) == MARK
    with open(node, "r+b") as f:
        f.seek(2048 * 512)
        f.write(WRITTEN)
        os.fsync(f.fileno())
    writer = driver.backend(base, frontend_id=DOM_B)
    assert_failed(driver.add(writer), driver, writer, base, "already in use read-only", f"domain {DOM_A}")
    reader = driver.backend(base, mode="r", frontend_id=DOM_B)
    assert driver.add(reader).returncode == 0
    assert driver.remove(reader).returncode == 0
    assert driver.remove(key, script="block-tap").returncode == 0
    assert read_at(base) == before
    assert guest_bytes(overlay, "qcow2", 2048 * 512, len(WRITTEN)) == WRITTEN
