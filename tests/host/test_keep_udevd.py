"""The VM's udev keeper (tests/vm/keep-udevd.py) picks out device-mapper
udev cookies by their semaphore key and age, from the kernel's own list: a
real SysV semaphore made here, with libdevmapper's key prefix and without."""
import ctypes
import importlib.util
import os
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
IPC_CREAT, IPC_EXCL, IPC_RMID = 0o1000, 0o2000, 0

spec = importlib.util.spec_from_file_location("keep_udevd", os.path.join(HERE, "..", "vm", "keep-udevd.py"))
keep_udevd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(keep_udevd)
libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture
def semaphore():
    """semaphore(key): a new semaphore with that key, removed after."""
    made = []

    def make(key):
        semid = libc.semget(key, 1, 0o600 | IPC_CREAT | IPC_EXCL)
        if semid < 0:
            pytest.fail(f"semget({key:#x}): {os.strerror(ctypes.get_errno())}")
        made.append(semid)
        return key

    yield make
    for semid in made:
        libc.semctl(semid, 0, IPC_RMID)


def test_a_cookie_is_stale_only_past_the_limit_and_other_semaphores_never(semaphore):
    number = os.getpid() & 0xFFFF
    cookie = semaphore(keep_udevd.COOKIE_MAGIC << 16 | number)
    other = semaphore(0x0D4E0000 | number)
    now = time.time()
    assert cookie not in keep_udevd.stale_cookies(now)
    later = keep_udevd.stale_cookies(now + keep_udevd.COOKIE_STALE_SECONDS + 2)
    assert cookie in later and other not in later
