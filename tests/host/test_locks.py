import os
import signal
import subprocess
import sys
import time

import pytest

from xenblock import locks
from xenblock.deadline import Deadline

HOLDER = """
import os, sys, time
sys.path.insert(0, {root!r})
from xenblock import locks
from xenblock.deadline import Deadline
with locks.held({path!r}, Deadline.after(5), "the test lock"):
    print("held", flush=True)
    {inside}
"""


def start_holder(path, inside="time.sleep(60)"):
    code = HOLDER.format(root=os.getcwd(), path=path, inside=inside)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_lock_excludes_and_times_out_naming_the_holder(tmp_path):
    path = str(tmp_path / "a.lock")
    holder = start_holder(path)
    try:
        started = time.monotonic()
        with pytest.raises(locks.LockTimeout) as raised:
            with locks.held(path, Deadline.after(0.5), "the lock of backend/vbd/1/2"):
                pass
        assert 0.4 < time.monotonic() - started < 3
        message = str(raised.value)
        assert message.startswith(f"waited 0.5 s for the lock of backend/vbd/1/2, held by pid {holder.pid} "
                                  f"({sys.executable} -c "), message
        with locks.held_if_free(path) as free:
            assert not free
    finally:
        holder.kill()
        holder.wait()


def test_an_expired_deadline_does_not_wait_at_all(tmp_path):
    path = str(tmp_path / "a.lock")
    holder = start_holder(path)
    try:
        with pytest.raises(locks.LockTimeout) as raised:
            with locks.held(path, Deadline.after(0), "the lock of it"):
                pass
        # Not "waited 0.0 s": the run had no time left (it started late).
        assert str(raised.value).startswith(f"the lock of it is held by pid {holder.pid} "), raised.value
        assert "no time left to wait for it: libxl's time limit is used up" in str(raised.value)
    finally:
        holder.kill()
        holder.wait()


def test_sigkilled_holder_leaves_no_lock(tmp_path):
    path = str(tmp_path / "a.lock")
    holder = start_holder(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locks.held(path, Deadline.after(2), "it"):
        assert os.path.exists(path)


def test_child_process_never_inherits_the_lock(tmp_path):
    # The holder starts a long-lived child (as a daemon would be) that keeps
    # every inheritable descriptor (close_fds=False: Popen's default would
    # hide an inheritable lock), then is killed as libxl kills a script
    # (no release, no unlink): the lock must go with it.
    path = str(tmp_path / "a.lock")
    child_pid = tmp_path / "child.pid"
    holder = start_holder(path, inside=(
        "import signal, subprocess; p = subprocess.Popen(['sleep', '30'], close_fds=False); "
        f"open({str(child_pid)!r}, 'w').write(str(p.pid)); os.kill(os.getpid(), signal.SIGKILL)"))
    assert holder.wait() == -signal.SIGKILL
    try:
        with locks.held(path, Deadline.after(5), "it"):
            pass
    finally:
        os.kill(int(child_pid.read_text()), signal.SIGKILL)


def test_lock_file_is_removed_on_release(tmp_path):
    path = str(tmp_path / "a.lock")
    with locks.held(path, Deadline.after(1), "it"):
        assert os.path.exists(path)
    assert not os.path.exists(path)


def test_waiter_gets_the_lock_after_the_holder_unlinks_it(tmp_path):
    path = str(tmp_path / "a.lock")
    holder = start_holder(path, inside="time.sleep(0.5)")
    with locks.held(path, Deadline.after(5), "it"):
        # We hold it only once the holder has released: the file is ours now.
        assert holder.wait(timeout=5) == 0
        assert os.path.exists(path)
