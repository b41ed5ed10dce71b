"""Races with other processes, opened wide by strace's fault injection
(inject=SYSCALL:delay_exit=US, -P PATH: only that path's calls), with no
hook in xenblock: the test acts in the window, then checks the outcome."""
import os
import subprocess
import time

from tests.support.cases import loops_of
from tests.support.fixtures import opened_by_someone
from xenblock import loop

WINDOW_US = 1_000_000  # the delay; the test acts as soon as it sees the window open


def delayed_at(driver, key, *paths):
    """Start add under strace, its first open of one of paths delayed on return."""
    wrapper = ["strace", "-f", "-qq", "-o", "/dev/null", *(f"-P{path}" for path in paths), "-e", "trace=openat",
               "-e", f"inject=openat:delay_exit={WINDOW_US}:when=1"]
    environ = {"PATH": os.environ["PATH"], **driver.env, "XENBUS_TYPE": "vbd", "XENBUS_PATH": key,
               "XENBUS_BASE_PATH": "backend"}
    return subprocess.Popen([*wrapper, os.path.join(driver.script_dir, "block-file"), "add"], env=environ,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition, timeout=20):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the window never opened"
        time.sleep(0.01)


def test_a_bind_race_lost_to_losetup_leaves_no_marker_on_its_device(driver, images):
    # util-linux losetup takes no lock of ours: it may bind the free device
    # between our LOOP_CTL_GET_FREE and LOOP_CONFIGURE. We write the udev
    # marker in between; it must not stay on the device losetup won, or dom0's
    # udev, blkid and LVM would ignore that device until reboot.
    path, theirs = images("ours.img"), images("theirs.img")
    markers = os.path.join(driver.state_dir, "udev")
    key = driver.backend(path)
    # Whichever free device the script picks: its marker's open is delayed.
    script = delayed_at(driver, key, *(os.path.join(markers, f"loop{n}") for n in range(256)))
    wait_until(lambda: os.listdir(markers))
    [name] = os.listdir(markers)
    free, marker = f"/dev/{name}", os.path.join(markers, name)
    subprocess.run(["losetup", free, theirs], check=True)  # in the window: they win the device
    try:
        out, err = script.communicate(timeout=60)
        assert script.returncode == 0, err
        ours = driver.read(f"{key}/physical-device-path")
        assert ours != free and loops_of(path) == [ours], "ours is another device"
        assert not os.path.exists(marker), "their device must stay visible to udev"
        assert os.path.exists(os.path.join(driver.state_dir, "udev", os.path.basename(ours)))
        assert loops_of(theirs) == [free], "theirs untouched"
        assert driver.remove(key).returncode == 0
        assert loops_of(theirs) == [free]
    finally:
        subprocess.run(["losetup", "-d", free], check=True)


def test_a_target_swapped_while_checked_binds_the_inode_checked(driver, images):
    # The path is resolved once: replacing it after the check (a rename over
    # it) must not make us bind, record or lock another file than the one
    # checked. The old code opened the path three times.
    path = images("checked.img", b"the checked image")
    impostor = images("impostor.img", b"another image")
    checked_inode = os.stat(path).st_ino
    key = driver.backend(path)
    script = delayed_at(driver, key, path)
    wait_until(lambda: opened_by_someone(path))
    os.rename(impostor, path)  # in the window
    out, err = script.communicate(timeout=60)
    assert script.returncode == 0, err
    node = driver.read(f"{key}/physical-device-path")
    assert loop.status(node).backing_ino == checked_inode
    with open(node, "rb") as f:
        assert f.read(17) == b"the checked image"
    assert driver.record(key)["images"][0]["id"].endswith(f":{checked_inode}")
    assert driver.remove(key).returncode == 0
