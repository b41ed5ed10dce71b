"""block-cow and block-snapshot killed where add or remove changes a
kernel object or a file of the disk's (tests/support/kills.py): at every
loop and device-mapper ioctl, and every call on the test's files (the CoW
file, the store). The next run must finish the job: no snapshot, loop
device, store or record left, the base as it was, its data served again.
The record and lock machinery these share with block-file is killed at
every call on the host tier (tests/host/test_kills.py); every point here
costs a few script runs of about two seconds under emulation, so after a
killed add the next run is remove and add by turns, and each test tries 8
of its points drawn with a seed it prints (tests/support/kills.py
sampled: XENBLOCK_KILL_POINTS=all tools/test tries every one)."""
import pytest

from tests.support import inventory
from tests.support.cases import loops_of
from tests.support.cow_cases import cow_env
from tests.support.kills import MARKER, Disk, changing_calls, kill_add_at_each, kill_remove_at_each, run, sampled
from xenblock import dm

MIB = 1 << 20


@pytest.fixture(params=["block-cow", "block-snapshot"])
def disk(request, images, driver, tmp_path):
    """A disk whose device shows the base's MARKER at 1 MiB."""
    base = images("killed-base.img", size=4 * MIB)
    with open(base, "r+b") as f:
        f.seek(MIB)
        f.write(MARKER)
    if request.param == "block-cow":
        return Disk("block-cow", f"{base} 8M", base, MIB, cow_env(driver, tmp_path))
    return Disk("block-snapshot", f"{base}:{tmp_path / 'killed.cow'}", base, MIB)


def points_of(driver, disk, command, key, tmp_path):
    return [point for point in changing_calls(driver, disk, command, key, tmp_path)
            if point[0] == "ioctl" or str(tmp_path) in point[2]]


def leftovers(driver, disk, loops_before):
    """What is left, by kind; only kinds with something in them."""
    found = {"base loops": loops_of(disk.image), "records": driver.state_files(),
             "snapshots": [d.name for d in dm.list_devices() if d.uuid.startswith(dm.UUID_PREFIX)],
             "loop devices": inventory.bound_loops() - loops_before}
    return {kind: what for kind, what in found.items() if what}


def test_add_killed_at_each_device_step_then_remove_or_add_finishes_the_job(driver, disk, tmp_path):
    loops_before = inventory.bound_loops()
    key = driver.backend(disk.target, script=disk.script)
    points = points_of(driver, disk, "add", key, tmp_path)
    assert any("DM_DEV_CREATE" in line for _, _, line in points), points
    assert run(driver, disk, "remove", key).returncode == 0
    kill_add_at_each(driver, disk, key, sampled(points), lambda: leftovers(driver, disk, loops_before), alternate=True)
    with open(disk.image, "rb") as f:
        f.seek(disk.marker_at)
        assert f.read(len(MARKER)) == MARKER


def test_remove_killed_at_each_device_step_then_remove_again_leaves_nothing(driver, disk, tmp_path):
    loops_before = inventory.bound_loops()
    key = driver.backend(disk.target, script=disk.script)
    assert run(driver, disk, "add", key).returncode == 0
    points = points_of(driver, disk, "remove", key, tmp_path)
    assert any("DM_DEV_REMOVE" in line for _, _, line in points), points
    kill_remove_at_each(driver, disk, key, sampled(points), lambda: leftovers(driver, disk, loops_before))
