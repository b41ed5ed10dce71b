"""block-part cases run on the host tier only: refusals decided before the
kernel is asked anything, sharing decided from records and loop devices'
status (the same kernel interface in the Xen VM), and an image that is a
block device. The cases that depend on the kernel and the real xenstored
run in both tiers (tests/support/part_cases.py)."""
import contextlib
import os
import struct
import subprocess

from tests.support.cases import DOM_A, DOM_B, DOM_C, assert_failed, loops_of
from tests.support.fixtures import foreign_loop, image_files, read_at
from tests.support.part_cases import (CYLINDER, MIB, SECTOR, TWO_PRIMARIES, WITH_LOGICALS, add_part,
                                      assert_serves_exactly, assert_writes_stay_inside, chs_image, marker,
                                      part_extent, partitioned, put_markers, remove_part)
from xenblock import loop
from xenblock.blockdev import Devnum, read_attribute


def refused(driver, target, *words, mode="w"):
    """An add of target refused with one hotplug-error line holding words,
    and nothing left: no record, lock or marker, no loop device."""
    key = driver.backend(target, mode=mode, script="block-part")
    error = assert_failed(driver.add(key, script="block-part"), driver, key, *words)
    assert "\n" not in error
    assert driver.state_files() == [], target
    return error


def test_every_bad_target_is_named_with_its_image_and_leaves_nothing(driver, images, tmp_path):
    plain = partitioned(images, "plain.img", TWO_PRIMARIES)
    logicals = partitioned(images, "logicals.img", WITH_LOGICALS)
    blank = images("blank.img")
    cut = partitioned(images, "cut.img", TWO_PRIMARIES)
    os.truncate(cut, 3 * MIB + MIB // 2)
    missing = str(tmp_path / "missing.img")
    cases = [
        (f"{missing} 1", f"{missing}: no such file or block device"),
        (f"{plain} x", f"target '{plain} x': partition number 'x' is not a number"),
        (f"{plain} 1.5", "partition number '1.5' is not a number"),
        (f"{plain} 0", f"target '{plain} 0': partition number 0: partitions are numbered from 1"),
        (f"{plain} -2", "partition number -2: partitions are numbered from 1"),
        (f"{plain} 256", "partition number 256: Linux numbers partitions only up to 255"),
        (plain, f"target '{plain}' names no partition: give the image's path, then the partition number"),
        ("   ", "empty target: give the image's path, then the partition number"),
        ("relative.img 1", "'relative.img' is not an absolute path"),
        (f"{plain} 4", f"{plain}: there is no partition 4 in the image's MBR: it has partitions 1 and 2"),
        (f"{logicals} 2", f"{logicals}: partition 2 is the MBR's extended partition, a container of "
                          "logical partitions 5 and 6: not a disk to give a guest"),
        (f"{blank} 1", f"{blank}: no partition table: sector 0 does not end in the MBR signature"),
        (f"{cut} 2", f"{cut}: partition 2 runs past the end of the image: it ends at byte {4 * MIB} but the "
                     f"image is {3 * MIB + MIB // 2} bytes (3.5 MiB)"),
    ]
    for target, words in cases:
        refused(driver, target, words)
    assert part_extent(cut, 1) == (2048 * SECTOR, 6144 * SECTOR)
    key, _ = add_part(driver, cut, 1)  # the partition that fits is served all the same
    remove_part(driver, key)
    for path in (plain, logicals, blank, cut):
        assert loops_of(path) == []


def test_a_read_only_image_is_refused_for_writing_and_served_for_reading(driver, images):
    path = partitioned(images, "ro.img", TWO_PRIMARIES)
    os.chmod(path, 0o444)
    refused(driver, f"{path} 1", f"{path}: file is read-only (mode 0444); use access=r")
    key, node = add_part(driver, path, 1, mode="r")
    assert_serves_exactly(node, path, 2048 * SECTOR, 6144 * SECTOR, read_only=True)
    remove_part(driver, key)


def test_a_path_with_spaces_is_split_at_the_last_whitespace(driver, images):
    path = partitioned(images, "with  spaces 2.img", TWO_PRIMARIES)
    put_markers(path, 2, 6144 * SECTOR, 8192 * SECTOR)
    key = driver.backend(f" {path}   2 ", script="block-part")
    assert driver.add(key, script="block-part").returncode == 0, driver.read(f"{key}/hotplug-error")
    assert read_at(driver.read(f"{key}/physical-device-path"), 0, SECTOR) == marker(2, "first")
    remove_part(driver, key)


def test_crafted_overlapping_partitions_are_one_partition_to_the_sharing_check(driver, images):
    # No tool writes such a table; a guest that writes its neighbour's
    # table, or an attacker, can. Partition 2 starts inside partition 1.
    path = images("overlap.img")
    slot = struct.Struct("<B3xB3xII")
    table = slot.pack(0, 0x83, 2048, 4096) + slot.pack(0, 0x83, 4096, 2048)
    with open(path, "r+b") as f:
        f.seek(446)
        f.write(table.ljust(64, b"\0") + b"\x55\xaa")
    first, _ = add_part(driver, path, 1, frontend_id=DOM_A)
    second = driver.backend(f"{path} 2", frontend_id=DOM_B, script="block-part")
    assert_failed(driver.add(second, script="block-part"), driver, second, path, "already in use read-write",
                  f"domain {DOM_A}")
    for key in (first, second):
        remove_part(driver, key)


@contextlib.contextmanager
def foreign_range(path, start, end):
    """An administrator's `losetup --offset --sizelimit` over [start, end) of path."""
    node = subprocess.run(["losetup", "--find", "--show", "--offset", str(start), "--sizelimit",
                           str(end - start), path], check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield node
    finally:
        subprocess.run(["losetup", "-d", node], check=True)


def test_someone_elses_loop_device_counts_by_the_bytes_it_serves(driver, images):
    # No record tells of these: the sharing check reads each one's offset
    # and size limit from the kernel (loop.Status.extent).
    path = partitioned(images, "foreign.img", TWO_PRIMARIES)
    with foreign_range(path, 6144 * SECTOR, 8192 * SECTOR) as node:
        refused(driver, f"{path} 2", f"{path}: already in use read-write by {node}, a loop device not set up "
                                     "by xenblock")
        key, _ = add_part(driver, path, 1)  # the other partition is free
        remove_part(driver, key)
    with foreign_loop(path, read_only=True) as node:
        refused(driver, f"{path} 1", f"already in use read-only by {node}", "refusing read-write")
        key, _ = add_part(driver, path, 1, mode="r")  # readers share
        remove_part(driver, key)


def test_a_partition_of_a_block_device(driver, images):
    path = partitioned(images, "under.img", TWO_PRIMARIES)
    start, end = 6144 * SECTOR, 8192 * SECTOR
    put_markers(path, 2, start, end)
    with foreign_loop(path) as device:
        log_start = driver.log_offset()
        key, node = add_part(driver, device, 2, frontend_id=DOM_A)
        status = loop.status(node)
        assert (status.extent, status.read_only) == ((start, end), False), "writable: the device reopened so"
        assert read_at(node, 0, SECTOR) == marker(2, "first")
        assert_serves_exactly(node, device, start, end)
        assert_writes_stay_inside(node, device, start, end)
        assert driver.record(key)["images"] == [
            {"id": f"dev:{Devnum.of_rdev(os.stat(device).st_rdev)}", "writable": True, "extent": [start, end]}]
        assert f"{device} 2 -> {node}" in "\n".join(driver.log_since(log_start))
        other = driver.backend(f"{device} 2", frontend_id=DOM_B, script="block-part")
        assert_failed(driver.add(other, script="block-part"), driver, other, device, f"domain {DOM_A}")
        whole = driver.backend(device, frontend_id=DOM_C)
        assert_failed(driver.add(whole), driver, whole, device, f"domain {DOM_A}")
        neighbour, _ = add_part(driver, device, 1, frontend_id=DOM_B)
        for each in (key, other, whole, neighbour):
            remove_part(driver, each)
        assert not [n for n, *_ in loop.backed_by(os.stat(path)) if n != device]
    subprocess.run(["sync"], check=True)
    assert read_at(path, end - SECTOR, SECTOR).startswith(b"written through block-part")


def test_a_partition_at_sector_63_on_a_disk_with_4096_byte_sectors(driver, images, tmp_path):
    # Direct I/O needs the offset aligned to the file system's sectors: 63
    # sectors of 512 bytes are not, so the kernel serves the partition with
    # buffered I/O, exact all the same (and the guest sees 512-byte sectors).
    backing = images("4kn.img", size=64 * MIB)
    mount_point = tmp_path / "4kn"
    mount_point.mkdir()
    with foreign_loop_4k(backing) as disk:
        subprocess.run(["mkfs.ext4", "-q", disk], check=True, capture_output=True)
        subprocess.run(["mount", disk, str(mount_point)], check=True)
        try:
            with image_files(str(mount_point)) as make:
                path = chs_image(make, "chs.img")
                start, end = 63 * SECTOR, CYLINDER * SECTOR
                put_markers(path, 1, start, end)
                log_start = driver.log_offset()
                key, node = add_part(driver, path, 1)
                assert read_at(node, 0, SECTOR) == marker(1, "first")
                assert_serves_exactly(node, path, start, end)
                assert_writes_stay_inside(node, path, start, end)
                assert read_attribute(Devnum.of_rdev(os.stat(node).st_rdev), "queue", "logical_block_size") == "512"
                assert "MBR partition 1 (primary): 8193024 bytes from byte 32256, read-write, buffered I/O" in \
                    "\n".join(driver.log_since(log_start))
                remove_part(driver, key)
        finally:
            subprocess.run(["umount", str(mount_point)], check=True)


@contextlib.contextmanager
def foreign_loop_4k(path):
    node = subprocess.run(["losetup", "--find", "--show", "--sector-size", "4096", path], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        yield node
    finally:
        subprocess.run(["losetup", "-d", node], check=True)
