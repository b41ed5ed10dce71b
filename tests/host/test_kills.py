"""A script killed at every point where it changes something (see
tests/support/kills.py): the next add or remove of the disk must finish the
job, with nothing left and the image's data intact. block-file, block-part
and block-tap's raw images here; the same runs under emulation would take
minutes, and the kernel parts involved (loop devices, flock, rename) are the
host's too. The device-mapper types have theirs in the VM tier
(tests/xen/test_kills.py)."""
import pytest

from tests.support.cases import loops_of
from tests.support.kills import (MARKER, Disk, changing_calls, fail_add_at_each, kill_add_at_each,
                                 kill_remove_at_each, run)
from tests.support.part_cases import MIB, sfdisk


@pytest.fixture(params=["block-file", "block-part", "block-tap"])
def disk(request, images):
    """A disk whose device shows MARKER at 1 MiB: an image (block-tap's raw
    one too, through a loop device), or partition 1 of one (at 1 MiB, 3 MiB
    long)."""
    path = images(f"killed-{request.param}.img", size=4 * MIB)
    if request.param == "block-file":
        return _marked(Disk("block-file", path, path, 1 * MIB), 1 * MIB)
    if request.param == "block-tap":
        return _marked(Disk("block-tap", f"raw:{path}", path, 1 * MIB), 1 * MIB)
    sfdisk(path, "1MiB,3MiB\n")
    return _marked(Disk("block-part", f"{path} 1", path, 1 * MIB), 2 * MIB)


def _marked(disk, offset):
    with open(disk.image, "r+b") as f:
        f.seek(offset)
        f.write(MARKER)
    return disk


def leftovers(driver, disk):
    return loops_of(disk.image) + driver.state_files()


def test_add_killed_anywhere_then_remove_leaves_nothing_and_add_again_serves_the_image(driver, disk, tmp_path):
    key = driver.backend(disk.target, script=disk.script)
    points = changing_calls(driver, disk, "add", key, tmp_path)
    assert run(driver, disk, "remove", key).returncode == 0
    kill_add_at_each(driver, disk, key, points, lambda: leftovers(driver, disk))


def test_add_failing_anywhere_rolls_back_or_says_what_is_left(driver, disk, tmp_path):
    # Each state-changing call of add fails once with EIO (strace's
    # inject=SYSCALL:error=EIO): add either copes (a failed log write) or
    # exits 1 with a hotplug-error and no loop device left bound; a remove
    # then leaves nothing at all.
    key = driver.backend(disk.target, script=disk.script)
    points = changing_calls(driver, disk, "add", key, tmp_path)
    assert run(driver, disk, "remove", key).returncode == 0
    fail_add_at_each(driver, disk, key, points, lambda: leftovers(driver, disk), lambda: loops_of(disk.image))


def test_remove_killed_anywhere_then_remove_again_leaves_nothing(driver, disk, tmp_path):
    key = driver.backend(disk.target, script=disk.script)
    assert run(driver, disk, "add", key).returncode == 0
    points = changing_calls(driver, disk, "remove", key, tmp_path)
    kill_remove_at_each(driver, disk, key, points, lambda: leftovers(driver, disk))
