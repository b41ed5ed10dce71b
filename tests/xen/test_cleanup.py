"""xenblock cleanup in dom0 of the real host: leftovers made on purpose
(a backend gone without remove, a record lost, an add killed half-way) are
taken down; a user's own loop and device-mapper devices next to them, one
named like ours, are left alone."""
import os
import subprocess

from tests.support import kills
from tests.support.cases import loops_of
from tests.support.fixtures import foreign_loop
from xenblock import dm

XENBLOCK = os.path.join(os.environ.get("XENBLOCK_VENV", "/nonexistent"), "bin", "xenblock")


def cleanup(*args):
    return subprocess.run([XENBLOCK, "cleanup", *args], capture_output=True, text=True, timeout=120)


def ours():
    return sorted(device.name for device in dm.ours())


def test_cleanup_takes_down_leftovers_and_leaves_a_users_devices(driver, images, tmp_path):
    gone_image, lost_base, killed_base, user_image = (images(name) for name in (
        "gone.img", "lost-base.img", "killed-base.img", "user.img"))
    gone = driver.backend(gone_image)
    lost = driver.backend(f"{lost_base} 4M", script="block-cow")
    killed = driver.backend(f"{killed_base} 4M", script="block-cow")
    assert driver.add(gone).returncode == 0 and driver.add(lost, script="block-cow").returncode == 0
    # killed as it loads its snapshot's table: the record names the devices, nothing is published
    disk = kills.Disk("block-cow", f"{killed_base} 4M", killed_base, 0)
    probe = driver.backend(disk.target, script="block-cow")
    points = kills.changing_calls(driver, disk, "add", probe, tmp_path)
    assert driver.remove(probe, script="block-cow").returncode == 0
    syscall, number, _ = next(point for point in points if "DM_TABLE_LOAD" in point[2])
    kills.killed(driver, disk, "add", killed, syscall, number)
    assert driver.record(killed)["steps"]
    driver.delete(gone)
    driver.delete(killed)
    os.unlink(driver.record_path(lost))  # as if /run was lost: its devices remain, unnamed
    with foreign_loop(user_image) as users:
        # --noudevsync: nothing here needs udev's work on it, so no wait on a cookie
        subprocess.run(["dmsetup", "create", "--noudevsync", "xenblock-lookalike", "--uuid", "XENBLOCKX-user",
                        "--table", f"0 8 linear {users} 0"], check=True)
        try:
            listed = cleanup("--dry-run")
            assert listed.returncode == 0, listed
            assert f"would take down record {gone}" in listed.stdout
            assert f"would take down record {killed}" in listed.stdout
            assert "would take down device-mapper device xenblock-" in listed.stdout
            assert "lookalike" not in listed.stdout and users not in listed.stdout
            assert loops_of(gone_image) and loops_of(lost_base)  # nothing touched
            done = cleanup()
            assert done.returncode == 0, done
            assert loops_of(gone_image) == [] and loops_of(lost_base) == [] and loops_of(killed_base) == []
            assert ours() == [] and driver.record(gone) is None and driver.record(killed) is None
            assert loops_of(user_image) == [users]
            assert "xenblock-lookalike" in [device.name for device in dm.list_devices()]
            assert cleanup().stderr == "nothing to clean up\n"
        finally:
            subprocess.run(["dmsetup", "remove", "--noudevsync", "--retry", "xenblock-lookalike"], check=True)
