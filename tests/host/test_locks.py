import os
import signal
import subprocess
import sys
import time

import pytest

from xenblock import locks

HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from xenblock import locks
with locks.held({path!r}, 5):
    print("held", flush=True)
    {inside}
"""


def start_holder(path, inside="time.sleep(60)"):
    code = HOLDER.format(root=os.getcwd(), path=path, inside=inside)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_lock_excludes_and_times_out_with_a_clear_error(tmp_path):
    path = str(tmp_path / "a.lock")
    holder = start_holder(path)
    try:
        with pytest.raises(locks.LockTimeout, match="waited 0.3 s for .*a.lock, held by another xenblock run"):
            with locks.held(path, 0.3):
                pass
        with locks.held_if_free(path) as free:
            assert not free
    finally:
        holder.kill()
        holder.wait()


def test_sigkilled_holder_leaves_no_lock(tmp_path):
    path = str(tmp_path / "a.lock")
    holder = start_holder(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locks.held(path, 2):
        assert os.path.exists(path)


def test_child_process_never_inherits_the_lock(tmp_path):
    path = str(tmp_path / "a.lock")
    # The holder starts a long-lived child (as a daemon would be), then exits.
    holder = start_holder(path, inside="import subprocess; subprocess.Popen(['sleep', '30'])")
    holder.wait()
    started = time.monotonic()
    with locks.held(path, 5):
        assert time.monotonic() - started < 2


def test_lock_file_is_removed_on_release(tmp_path):
    path = str(tmp_path / "a.lock")
    with locks.held(path, 1):
        assert os.path.exists(path)
    assert not os.path.exists(path)


def test_waiter_gets_the_lock_after_the_holder_unlinks_it(tmp_path):
    path = str(tmp_path / "a.lock")
    holder = start_holder(path, inside="time.sleep(0.5)")
    with locks.held(path, 5):
        # We hold it only once the holder has released: the file is ours now.
        assert holder.wait(timeout=5) == 0
        assert os.path.exists(path)
