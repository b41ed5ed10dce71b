"""Hostile and wrong input, every case the host can run (see tests/support/hostile_cases.py)."""
import os
import threading
import time

import pytest

from tests.support import hostile_cases
from tests.support.cases import loops_of
from tests.support.fixtures import opened_by_someone
from tests.support.hostile_cases import HOST_CASES


@pytest.mark.parametrize("case", HOST_CASES, ids=[case.id for case in HOST_CASES])
def test_bad_input_fails_with_one_line_naming_it_and_changes_nothing(case, driver, tmp_path):
    with hostile_cases.scene(tmp_path) as where:
        hostile_cases.run(case, driver, where, tmp_path)


# A file whose size changes during add (issue 11, item 4): the size is
# checked when add opens the image; the change comes right after, while add's
# ioctl on /dev/loop-control (asking for a free device) is held a second
# (strace -P), so the loop device is bound over the file as it is then.
HELD_IOCTLS = ["strace", "-qq", "-o", "/dev/null", "-P", "/dev/loop-control", "-e", "trace=ioctl",
               "-e", "inject=ioctl:delay_enter=1000000"]


def add_while_changing(driver, key, path, change):
    result = []
    runner = threading.Thread(target=lambda: result.append(driver.run("add", key, wrapper=HELD_IOCTLS)))
    runner.start()
    deadline = time.monotonic() + 20
    while not opened_by_someone(path, for_io=True):
        assert time.monotonic() < deadline and runner.is_alive(), "add never opened the image"
        time.sleep(0.005)
    change(path)
    runner.join()
    return result[0]


def test_an_image_shrunk_to_nothing_during_add_is_refused_naming_it_and_nothing_is_left(driver, images):
    path = images("shrinking.img", size=1 << 20)
    key = driver.backend(path)
    result = add_while_changing(driver, key, path, lambda p: os.truncate(p, 100))
    assert result.returncode == 1, result.stderr
    assert driver.read(f"{key}/hotplug-error") == (f"{path}: the image shrank to 100 bytes while it was being "
                                                   f"attached: no sector of it is left to serve")
    assert loops_of(path) == [] and driver.state_files() == []


def test_an_image_grown_during_add_is_served_at_its_new_size(driver, images):
    path = images("growing.img", size=1 << 20)
    key = driver.backend(path)
    result = add_while_changing(driver, key, path, lambda p: os.truncate(p, 3 << 20))
    assert result.returncode == 0, result.stderr
    with open(driver.read(f"{key}/physical-device-path"), "rb") as device:
        assert device.seek(0, os.SEEK_END) == 3 << 20
    assert driver.remove(key).returncode == 0
    assert loops_of(path) == [] and driver.state_files() == []


def test_a_backend_removed_during_add_is_not_made_again_and_nothing_is_left(driver, images):
    # libxl deletes the backend directory of a guest whose creation it gives
    # up; an add still running then must not write it back into being.
    path = images("orphan.img", size=1 << 20)
    key = driver.backend(path)
    result = add_while_changing(driver, key, path, lambda p: driver.destroy_backend(key))
    assert result.returncode == 1, result.stderr
    assert f"{key} vanished from xenstore while the disk was being built; undone" in result.stderr
    assert driver.read(key) is None, driver.children(key)
    assert loops_of(path) == [] and driver.state_files() == []
