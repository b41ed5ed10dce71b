"""block-cow and block-snapshot killed where add or remove changes a
kernel object or a file of the disk's (tests/support/kills.py): at every
loop and device-mapper ioctl, and every call on the test's files (the CoW
file, the store); block-lvsnap and block-tap (qcow2) where the script
starts or signals a child (lvcreate, lvremove; qemu-img, qemu-nbd) and
saves or drops its record; block-nbd (an export of a real nbd-server)
where it connects to the server, hands the connection to the kernel or
takes it back (netlink), and saves or drops its record. The next run must finish the job: no snapshot,
LV, loop or nbd device, qemu-nbd, store or record left, the base as it
was, its data served again. The same points fail once with EIO in add
(strace's inject=...:error=EIO): add copes, or exits 1 with one
hotplug-error line and leaves nothing that no record names; a remove
then leaves nothing.
The record and lock machinery these share with block-file is killed at
every call on the host tier (tests/host/test_kills.py); every point here
costs a few script runs of about two seconds under emulation, so after a
killed add the next run is remove and add by turns, and each test tries 3
of its points (block-lvsnap and block-tap 2) drawn with a seed it prints
(tests/support/kills.py sampled: XENBLOCK_KILL_POINTS=all tools/test tries
every one)."""
import os
import subprocess

import pytest

from tests.support import inventory, nbd_server
from tests.support.cases import loops_of
from tests.support.cow_cases import cow_env
from tests.support.kills import (CHANGING, CHILD_STARTS, MARKER, Disk, changing_calls, fail_add_at_each,
                                 kill_add_at_each, kill_remove_at_each, run, sampled)
from tests.xen.test_block_lvsnap_xl import QUIET
from tests.xen.test_block_tap_xl import qemu_nbd_running
from xenblock import dm, nbd
from xenblock.state import RECORD_SUFFIX, STATE_DIR

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
             "snapshots": [device.name for device in dm.ours()],
             "loop devices": inventory.bound_loops() - loops_before}
    return {kind: what for kind, what in found.items() if what}


# The kill tests were a third of the VM tier's time with 8 and 4, and a
# quarter with 5 and 3 (about 100 s a test, 2026-11-28): each run draws a
# new sample (its seed printed), so the runs together cover more.
DM_POINTS_PER_RUN = 3


def test_add_killed_at_each_device_step_then_remove_or_add_finishes_the_job(driver, disk, tmp_path):
    loops_before = inventory.bound_loops()
    key = driver.backend(disk.target, script=disk.script)
    points = points_of(driver, disk, "add", key, tmp_path)
    assert any("DM_DEV_CREATE" in line for _, _, line in points), points
    assert run(driver, disk, "remove", key).returncode == 0
    kill_add_at_each(driver, disk, key, sampled(points, DM_POINTS_PER_RUN), lambda: leftovers(driver, disk, loops_before), alternate=True)
    with open(disk.image, "rb") as f:
        f.seek(disk.marker_at)
        assert f.read(len(MARKER)) == MARKER


def test_add_failing_at_each_device_step_rolls_back_or_says_what_is_left(driver, disk, tmp_path):
    # Each sampled point fails once with EIO (strace's inject=SYSCALL:error=EIO).
    loops_before = inventory.bound_loops()
    key = driver.backend(disk.target, script=disk.script)
    points = points_of(driver, disk, "add", key, tmp_path)
    assert run(driver, disk, "remove", key).returncode == 0
    fail_add_at_each(driver, disk, key, sampled(points, DM_POINTS_PER_RUN),
                     lambda: leftovers(driver, disk, loops_before),
                     lambda: unrecorded(driver, leftovers(driver, disk, loops_before)))


def unrecorded(driver, left):
    """What is left when no record says so: nothing may be left without one."""
    return {} if driver.state_files() else left


def test_remove_killed_at_each_device_step_then_remove_again_leaves_nothing(driver, disk, tmp_path):
    loops_before = inventory.bound_loops()
    key = driver.backend(disk.target, script=disk.script)
    assert run(driver, disk, "add", key).returncode == 0
    points = points_of(driver, disk, "remove", key, tmp_path)
    assert any("DM_DEV_REMOVE" in line for _, _, line in points), points
    kill_remove_at_each(driver, disk, key, sampled(points, DM_POINTS_PER_RUN), lambda: leftovers(driver, disk, loops_before))


# block-lvsnap and block-tap make their kernel objects through a child
# (lvcreate; qemu-nbd, then a netlink connect): their points are where the
# script starts or signals one, and where it saves or drops its record.

@pytest.fixture(scope="module")
def volume_group(tmp_path_factory):
    """A VG with an 8M origin `orig` showing MARKER at 1 MiB."""
    name = f"xbkill{os.getpid()}"
    pv = tmp_path_factory.mktemp("kills") / "pv.img"
    with open(pv, "wb") as f:
        f.truncate(48 * MIB)
    node = subprocess.run(["losetup", "--find", "--show", str(pv)], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        for argv in (["pvcreate", node], ["vgcreate", name, node], ["lvcreate", "-y", "-L", "8M", "-n", "orig", name]):
            subprocess.run([argv[0], *QUIET, *argv[1:]], check=True, capture_output=True)
        with open(f"/dev/{name}/orig", "r+b") as f:
            f.seek(MIB)
            f.write(MARKER)
        yield name
    finally:
        subprocess.run(["vgremove", *QUIET, "-y", "-ff", name], capture_output=True)
        subprocess.run(["losetup", "-d", node], check=True)


@pytest.fixture(params=["block-lvsnap", "block-tap"])
def child_disk(request, images, volume_group):
    if request.param == "block-lvsnap":
        return Disk("block-lvsnap", f"{volume_group}/orig 4M", f"/dev/{volume_group}/orig", MIB)
    raw = images("killed-tap.raw", size=4 * MIB)
    with open(raw, "r+b") as f:
        f.seek(MIB)
        f.write(MARKER)
    qcow2 = raw.removesuffix(".raw") + ".qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True, capture_output=True)
    return Disk("block-tap", f"qcow2:{qcow2}", qcow2, MIB)


# Each point costs an LVM command or a qemu-nbd start or two more: fewer
# drawn per run than for the device-mapper types (DM_POINTS_PER_RUN).
CHILD_POINTS_PER_RUN = 2


def warm_up(driver, disk):
    """For block-tap and block-nbd, one add and remove of the disk before
    any traced run: the first add loads the nbd module (modprobe, a child
    the later runs lack). block-lvsnap's first add is like the rest, so it
    gets none: the warm-up would only add LVM commands, slow under emulation."""
    if disk.script not in ("block-tap", "block-nbd"):
        return
    key = driver.backend(disk.target, script=disk.script)
    assert run(driver, disk, "add", key).returncode == 0
    assert run(driver, disk, "remove", key).returncode == 0
    driver.destroy_backend(key)


def child_points(driver, disk, command, key, tmp_path):
    return [point for point in changing_calls(driver, disk, command, key, tmp_path)
            if point[0] in (*CHILD_STARTS, "kill") or (STATE_DIR in point[2] and RECORD_SUFFIX in point[2])]


def child_leftovers(driver, disk, volume_group):
    found = {"records": driver.state_files(), "nbd devices": nbd.ours(),
             "qemu-nbd": [disk.image] if qemu_nbd_running(disk.image) else [],
             "snapshots": sorted(set(subprocess.run(["lvs", "--noheadings", "-o", "lv_name", volume_group],
                                                    capture_output=True, text=True).stdout.split()) - {"orig"})}
    return {kind: what for kind, what in found.items() if what}


def test_lvsnap_and_tap_add_killed_at_each_step_then_remove_or_add_finishes_the_job(driver, child_disk, volume_group,
                                                                                    tmp_path):
    disk = child_disk
    warm_up(driver, disk)
    key = driver.backend(disk.target, script=disk.script)
    points = child_points(driver, disk, "add", key, tmp_path)
    assert any(name in CHILD_STARTS for name, _, _ in points), points
    assert run(driver, disk, "remove", key).returncode == 0
    kill_add_at_each(driver, disk, key, sampled(points, CHILD_POINTS_PER_RUN),
                     lambda: child_leftovers(driver, disk, volume_group), alternate=True)


def test_lvsnap_and_tap_add_failing_at_each_step_rolls_back_or_says_what_is_left(driver, child_disk, volume_group,
                                                                                 tmp_path):
    disk = child_disk
    warm_up(driver, disk)
    key = driver.backend(disk.target, script=disk.script)
    points = child_points(driver, disk, "add", key, tmp_path)
    assert run(driver, disk, "remove", key).returncode == 0
    fail_add_at_each(driver, disk, key, sampled(points, CHILD_POINTS_PER_RUN),
                     lambda: child_leftovers(driver, disk, volume_group),
                     lambda: unrecorded(driver, child_leftovers(driver, disk, volume_group)))


def test_lvsnap_and_tap_remove_killed_at_each_step_then_remove_again_leaves_nothing(driver, child_disk, volume_group,
                                                                                   tmp_path):
    disk = child_disk
    warm_up(driver, disk)
    key = driver.backend(disk.target, script=disk.script)
    assert run(driver, disk, "add", key).returncode == 0
    points = child_points(driver, disk, "remove", key, tmp_path)
    assert points, "remove shows no point"
    kill_remove_at_each(driver, disk, key, sampled(points, CHILD_POINTS_PER_RUN),
                        lambda: child_leftovers(driver, disk, volume_group))


@pytest.fixture
def nbd_disk(exports, tmp_path):
    """A block-nbd disk on an export of nbd-server showing MARKER at 1 MiB."""
    image = exports("killed-export.img", size=4 * MIB)
    with open(image, "r+b") as f:
        f.seek(MIB)
        f.write(MARKER)
    with nbd_server.serving(str(tmp_path / "nbd-server"), {"disk": (image, False)}) as port:
        yield Disk("block-nbd", f"127.0.0.1:{port}/disk", image, MIB)


def nbd_points(driver, disk, command, key, tmp_path):
    """The server's connect, the netlink messages (connect, disconnect),
    the record's saves and removal."""
    calls = changing_calls(driver, disk, command, key, tmp_path, (*CHANGING, "connect", "sendto"), ("-yy",))
    return [point for point in calls if point[0] == "connect" and "TCP" in point[2]
            or point[0] == "sendto" and "NETLINK" in point[2]
            or STATE_DIR in point[2] and RECORD_SUFFIX in point[2]]


def nbd_leftovers(driver):
    found = {"records": driver.state_files(), "nbd devices": nbd.ours()}
    return {kind: what for kind, what in found.items() if what}


def test_nbd_add_killed_at_each_step_then_remove_or_add_finishes_the_job(driver, nbd_disk, tmp_path):
    warm_up(driver, nbd_disk)
    key = driver.backend(nbd_disk.target, script=nbd_disk.script)
    points = nbd_points(driver, nbd_disk, "add", key, tmp_path)
    assert any(name == "sendto" for name, _, _ in points), points
    assert run(driver, nbd_disk, "remove", key).returncode == 0
    kill_add_at_each(driver, nbd_disk, key, sampled(points, CHILD_POINTS_PER_RUN), lambda: nbd_leftovers(driver),
                     alternate=True)


def test_nbd_add_failing_at_each_step_rolls_back_or_says_what_is_left(driver, nbd_disk, tmp_path):
    warm_up(driver, nbd_disk)
    key = driver.backend(nbd_disk.target, script=nbd_disk.script)
    points = nbd_points(driver, nbd_disk, "add", key, tmp_path)
    assert run(driver, nbd_disk, "remove", key).returncode == 0
    fail_add_at_each(driver, nbd_disk, key, sampled(points, CHILD_POINTS_PER_RUN), lambda: nbd_leftovers(driver),
                     lambda: unrecorded(driver, nbd_leftovers(driver)))


def test_nbd_remove_killed_at_each_step_then_remove_again_leaves_nothing(driver, nbd_disk, tmp_path):
    warm_up(driver, nbd_disk)
    key = driver.backend(nbd_disk.target, script=nbd_disk.script)
    assert run(driver, nbd_disk, "add", key).returncode == 0
    points = nbd_points(driver, nbd_disk, "remove", key, tmp_path)
    assert any(name == "sendto" for name, _, _ in points), points
    kill_remove_at_each(driver, nbd_disk, key, sampled(points, CHILD_POINTS_PER_RUN), lambda: nbd_leftovers(driver))
