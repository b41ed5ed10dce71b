"""Exclusive locks held with flock, waited for within the run's deadline.

Why flock on a file descriptor: the kernel drops it when the process dies,
SIGKILL included, so a killed script never leaves a lock held. Every
descriptor is opened O_CLOEXEC, so no child (a daemon above all) can inherit
a lock and keep it after the script is gone.

Lock files live under the state directory (a local tmpfs), never on the
image itself: on NFS flock is emulated with POSIX locks, which need a
descriptor opened for writing, and would meet QEMU's own locks on the image.
A lock file is unlinked by its holder on release, so /run does not fill with
lock files. A waiter may then hold a lock on an unlinked file; it notices
(the path no longer names its inode) and tries again. A file left by a
killed holder is unlinked by the next run that finds it free
(state.StateDir.sweep).
"""
import contextlib
import fcntl
import os

from .errors import HotplugError


class LockTimeout(HotplugError):
    pass


# Lock files this process holds, and how often: held() of one of them again
# is a no-op. A teardown runs under the locks of its images, and an add that
# cleans another disk's leftovers on the way already holds them: a second
# flock on another descriptor of the same file would wait for ourselves.
_held = {}


@contextlib.contextmanager
def held(path, deadline, what):
    """Hold the lock at path, waiting for it until deadline; what names it
    in the error. Re-entrant within the process."""
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    fd = _acquire(path, deadline, what)
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        _release(path, fd)


@contextlib.contextmanager
def on_descriptor(fd, deadline, what):
    """Hold an exclusive flock on an open block device or /dev/loop-control:
    nothing is created, so a killed holder leaves nothing behind. On a block
    device it is also what tells udev not to probe it meanwhile."""
    _flock_within(fd, deadline, what)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def held_if_free(path):
    """Hold the lock at path if nobody does; yields whether it is held (not
    if this process holds it: then it is not free)."""
    fd = None if path in _held else _acquire(path, None, path)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            _release(path, fd)


def held_elsewhere(path):
    """Whether another process holds the lock at path (a run of it is alive)."""
    if path in _held:
        return False
    with held_if_free(path) as free:
        return not free


def _acquire(path, deadline, what):
    """deadline None: do not wait, return None if the lock is taken."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if deadline is None:
                if not _try_flock(fd):
                    os.close(fd)
                    return None
            else:
                _flock_within(fd, deadline, what)
        except BaseException:
            os.close(fd)
            raise
        if _still_linked(fd, path):
            return fd
        os.close(fd)  # the holder before us unlinked it: lock the new file


def _release(path, fd):
    # Closing is what releases the lock; the unlink only tidies up. Failing
    # it must not fail a run whose work is done: the file is swept later.
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def _try_flock(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _flock_within(fd, deadline, what):
    if _try_flock(fd):
        return  # free, as it mostly is: no alarm to set, no signal module to import
    import signal  # flock has no timeout of its own: an alarm interrupts the wait
    waited = deadline.remaining()

    def expire(signum, frame):
        from .procfs import flock_holder
        if waited == 0:  # a run that started late (a busy dom0) has nothing left to wait with
            raise LockTimeout(f"{what} is held by {flock_holder(fd)}, and this run has no time left "
                              f"to wait for it: libxl's time limit is used up")
        raise LockTimeout(f"waited {waited:.1f} s for {what}, held by {flock_holder(fd)}")

    previous = signal.signal(signal.SIGALRM, expire)
    try:
        if waited == 0:
            expire(None, None)
        signal.setitimer(signal.ITIMER_REAL, waited)
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _still_linked(fd, path):
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)
