"""Hotplug cases for block-part (run by the host tier, tests/host/test_block_part.py).

Each test gets `driver` and `images` from its tier's conftest and must
leave nothing behind (the tier's fixtures check). Images are partitioned by
sfdisk, then marked: distinct 512-byte markers in a partition's first and
last sector and in the sectors just outside it, so a device that serves one
byte too many or too few at either end is caught.

Kept few: each script run costs about two seconds in the Xen VM. What
depends on the kernel (a loop device's offset and size limit, at aligned
and unaligned offsets, read and written) and the sharing rule is here;
refusals, decided before the kernel is asked anything, are host-only
(tests/host/test_block_part_host_only.py).
"""
import json
import os
import shutil
import subprocess

import pytest

from tests.support.cases import DOM_A, DOM_B, DOM_C, assert_failed, loops_of
from tests.support.fixtures import read_at
from xenblock import loop

MIB = 1 << 20
SECTOR = 512
# sfdisk lives in /sbin on Debian, off an ordinary user's PATH
TOOL_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
# The geometry DOS-era tools aligned partitions to: 255 heads, 63 sectors
# a track, so a cylinder of 16065 sectors and the first partition at 63.
CYLINDER = 255 * 63

TWO_PRIMARIES = "label: dos\nstart=2048, size=4096, type=83\nstart=6144, size=2048, type=83\n"
# Primary 1, extended 2 holding logicals 5 and 6 (their EBRs 2048 sectors before each).
WITH_LOGICALS = """label: dos
start=2048, size=2048, type=83
start=4096, size=12288, type=5
start=6144, size=2048, type=83
start=10240, size=2048, type=83
"""
GPT = "label: gpt\nsize=2M\nsize=3M\n"


def _sfdisk():
    tool = shutil.which("sfdisk", path=TOOL_PATH)
    if tool is None:  # fail, never skip: the cases would pass silently
        pytest.fail("sfdisk (util-linux, Debian package fdisk) is missing: the block-part cases need it")
    return tool


def sfdisk(path, script):
    # a file: nothing for the kernel to reread
    subprocess.run([_sfdisk(), "--quiet", "--no-reread", "--no-tell-kernel", path], input=script, text=True,
                   capture_output=True, check=True)


def partitioned(images, name, script, size=8 * MIB):
    path = images(name, size=size)
    sfdisk(path, script)
    return path


def chs_image(images, name):
    """Partition 1 at sector 63 up to the end of cylinder 0, partition 2 from
    cylinder 1 to the end of an image that ends 1000 sectors into cylinder 2
    (not a whole number of cylinders)."""
    return partitioned(images, name, f"label: dos\nstart=63, size={CYLINDER - 63}, type=83\n"
                                     f"start={CYLINDER}, type=83\n", size=(2 * CYLINDER + 1000) * SECTOR)


def part_extent(path, number):
    """(start, end) in bytes of partition number, as sfdisk reads the image."""
    table = json.loads(subprocess.run([_sfdisk(), "--json", path], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    for entry in table["partitions"]:
        if entry["node"] == f"{path}{number}":
            return entry["start"] * SECTOR, (entry["start"] + entry["size"]) * SECTOR
    raise AssertionError(f"sfdisk sees no partition {number} in {path}")


def marker(number, where):
    return f"<xenblock: partition {number}, {where} sector>".encode().ljust(SECTOR, b".")


def put_markers(path, number, start, end, outside=True):
    """Markers in partition number's first and last sector and, with
    outside, in the sectors just before and after it (those in the image,
    never sector 0). Partitions next to each other: mark each without
    outside, their own markers are each other's neighbours."""
    places = {"first": start, "last": end - SECTOR}
    if outside:
        places.update(before=start - SECTOR, after=end)
    with open(path, "r+b") as f:
        for where, offset in places.items():
            if SECTOR <= offset <= os.path.getsize(path) - SECTOR:
                f.seek(offset)
                f.write(marker(number, where))


def device_size(node):
    fd = os.open(node, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def write_at(node, offset, data):
    """pwrite data at offset of node, synced; the OSError if refused."""
    fd = os.open(node, os.O_WRONLY)
    try:
        written = os.pwrite(fd, data, offset)
        os.fsync(fd)
        return written
    finally:
        os.close(fd)


def add_part(driver, path, number, mode="w", frontend_id=DOM_A):
    """A block-part disk of partition number, added: its key and device node."""
    key = driver.backend(f"{path} {number}", mode=mode, frontend_id=frontend_id, script="block-part")
    result = driver.add(key, script="block-part")
    assert result.returncode == 0, (result.stderr, driver.read(f"{key}/hotplug-error"))
    return key, driver.read(f"{key}/physical-device-path")


def remove_part(driver, key):
    result = driver.remove(key, script="block-part")
    assert result.returncode == 0, (result.stderr, driver.read(f"{key}/hotplug-error"))


def assert_serves_exactly(node, path, start, end, read_only=False):
    """node serves the bytes [start, end) of path: its loop status says so,
    its first and last sectors are the partition's, and not one byte more."""
    status = loop.status(node)
    assert status.extent == (start, end), status
    assert status.read_only == read_only
    assert device_size(node) == end - start
    assert read_at(node, 0, SECTOR) == read_at(path, start, SECTOR)
    assert read_at(node, end - start - SECTOR, SECTOR) == read_at(path, end - SECTOR, SECTOR)
    assert read_at(node, end - start, SECTOR) == b"", "nothing after the partition's last sector"


def assert_writes_stay_inside(node, path, start, end):
    """A write to the device's last sector lands in the partition's last
    sector; one past the device's end is refused; the neighbours keep their
    markers."""
    outside = [read_at(path, start - SECTOR, SECTOR), read_at(path, end, SECTOR)]
    data = b"written through block-part".ljust(SECTOR, b"!")
    assert write_at(node, end - start - SECTOR, data) == SECTOR
    with pytest.raises(OSError):
        write_at(node, end - start, data)
    assert read_at(path, end - SECTOR, SECTOR) == data
    assert [read_at(path, start - SECTOR, SECTOR), read_at(path, end, SECTOR)] == outside


def test_a_partition_is_served_exact_to_the_byte_and_writes_stay_inside_it(driver, images):
    path = partitioned(images, "exact.img", TWO_PRIMARIES)
    start, end = 6144 * SECTOR, 8192 * SECTOR
    assert part_extent(path, 2) == (start, end)  # the premise
    put_markers(path, 2, start, end)
    log_start = driver.log_offset()
    key, node = add_part(driver, path, 2)
    assert loops_of(path) == [node]
    assert read_at(node, 0, SECTOR) == marker(2, "first")
    assert read_at(node, end - start - SECTOR, SECTOR) == marker(2, "last")
    assert_serves_exactly(node, path, start, end)
    assert_writes_stay_inside(node, path, start, end)
    assert read_at(path, start - SECTOR, SECTOR) == marker(2, "before")
    assert read_at(path, end, SECTOR) == marker(2, "after")
    log = "\n".join(driver.log_since(log_start))
    assert f"{path} 2 -> {node}" in log, log
    assert f"MBR partition 2 (primary): {end - start} bytes from byte {start}, read-write" in log, log
    remove_part(driver, key)
    assert loops_of(path) == [] and driver.state_files() == []


def test_an_old_chs_table_partition_at_sector_63_and_one_ending_in_a_partial_cylinder(driver, images):
    # Offsets that are not multiples of 4096 (63 and 16065 sectors): the
    # loop device must serve them exactly, with or without direct I/O.
    path = chs_image(images, "chs.img")
    extents = {1: (63 * SECTOR, CYLINDER * SECTOR), 2: (CYLINDER * SECTOR, os.path.getsize(path))}
    for number, (start, end) in extents.items():
        assert part_extent(path, number) == (start, end)  # the premise
        put_markers(path, number, start, end, outside=False)
    keys = []
    for number, (start, end) in extents.items():
        key, node = add_part(driver, path, number, frontend_id=DOM_A + number)
        keys.append(key)
        assert read_at(node, 0, SECTOR) == marker(number, "first")
        assert read_at(node, end - start - SECTOR, SECTOR) == marker(number, "last")
        assert_serves_exactly(node, path, start, end)
    assert_writes_stay_inside(driver.read(f"{keys[0]}/physical-device-path"), path, *extents[1])
    assert read_at(path, CYLINDER * SECTOR, SECTOR) == marker(2, "first")
    for key in keys:
        remove_part(driver, key)
    assert loops_of(path) == []


def test_a_logical_partition(driver, images):
    path = partitioned(images, "logical.img", WITH_LOGICALS)
    start, end = part_extent(path, 5)
    assert (start, end) == (6144 * SECTOR, 8192 * SECTOR)
    put_markers(path, 5, start, end)
    key, node = add_part(driver, path, 5, mode="r")
    assert read_at(node, 0, SECTOR) == marker(5, "first")
    assert_serves_exactly(node, path, start, end, read_only=True)
    remove_part(driver, key)


def test_a_gpt_partition(driver, images):
    path = partitioned(images, "gpt.img", GPT)
    start, end = part_extent(path, 2)
    put_markers(path, 2, start, end)
    key, node = add_part(driver, path, 2)
    assert read_at(node, end - start - SECTOR, SECTOR) == marker(2, "last")
    assert_serves_exactly(node, path, start, end)
    remove_part(driver, key)


def test_two_writers_of_two_partitions_share_an_image_and_one_partition_has_one_writer(driver, images):
    path = partitioned(images, "two-writers.img", TWO_PRIMARIES)
    first, _ = add_part(driver, path, 1, frontend_id=DOM_A)
    second, _ = add_part(driver, path, 2, frontend_id=DOM_B)
    again = driver.backend(f"{path} 2", frontend_id=DOM_C, script="block-part")
    assert_failed(driver.add(again, script="block-part"), driver, again, path, "already in use read-write",
                  f"domain {DOM_B}", "refusing read-write")
    assert len(loops_of(path)) == 2
    whole = driver.backend(path, mode="r", frontend_id=DOM_C)
    assert_failed(driver.add(whole), driver, whole, path, "already in use read-write", "refusing read-only")
    for key in (again, whole, first, second):
        remove_part(driver, key)
    assert loops_of(path) == []


def test_the_whole_image_and_a_partition_of_it_exclude_each_other(driver, images):
    path = partitioned(images, "whole-and-part.img", TWO_PRIMARIES)
    whole = driver.backend(path, frontend_id=DOM_A)
    assert driver.add(whole).returncode == 0
    part = driver.backend(f"{path} 1", frontend_id=DOM_B, script="block-part")
    assert_failed(driver.add(part, script="block-part"), driver, part, path, f"domain {DOM_A}")
    assert driver.remove(whole).returncode == 0
    assert driver.add(part, script="block-part").returncode == 0, "free again once the whole image is"
    late = driver.backend(path, frontend_id=DOM_C)
    assert_failed(driver.add(late), driver, late, path, "already in use read-write", f"domain {DOM_B}")
    for key in (whole, part, late):
        remove_part(driver, key)
    assert loops_of(path) == []


def test_readers_of_one_partition_share_it_and_no_writer_joins_them(driver, images):
    path = partitioned(images, "readers.img", TWO_PRIMARIES)
    readers = [add_part(driver, path, 1, mode="r", frontend_id=d)[0] for d in (DOM_A, DOM_B)]
    writer = driver.backend(f"{path} 1", frontend_id=DOM_C, script="block-part")
    assert_failed(driver.add(writer, script="block-part"), driver, writer, path, "already in use read-only",
                  "refusing read-write")
    for key in (*readers, writer):
        remove_part(driver, key)
    assert loops_of(path) == []
