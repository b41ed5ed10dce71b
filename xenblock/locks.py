"""Exclusive locks on files under the state directory, held with flock.

Why flock on a file descriptor: the kernel drops it when the process dies,
SIGKILL included, so a killed script never leaves a lock behind. Every
descriptor is opened O_CLOEXEC, so no child (a daemon above all) can inherit
a lock and keep it after the script is gone.

The lock file is unlinked by its holder on release, so /run does not fill with
lock files. A waiter may then hold a lock on an unlinked file; it notices
(the path no longer names its inode) and tries again.
"""
import contextlib
import fcntl
import os

from .errors import HotplugError


class LockTimeout(HotplugError):
    pass


@contextlib.contextmanager
def held(path, timeout):
    """Hold the lock at path, waiting at most timeout seconds for it."""
    fd = _acquire(path, timeout)
    try:
        yield
    finally:
        _release(path, fd)


@contextlib.contextmanager
def on_descriptor(fd, timeout, what):
    """Hold an exclusive flock on an open file (an image, a device node):
    nothing is created, so a killed holder leaves nothing behind."""
    _flock_within(fd, timeout, what)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def held_if_free(path):
    """Hold the lock at path if nobody does; yields whether it is held."""
    fd = _acquire(path, timeout=None)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            _release(path, fd)


def _acquire(path, timeout):
    """timeout None: do not wait, return None if the lock is taken."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if timeout is None:
                if not _try_flock(fd):
                    os.close(fd)
                    return None
            else:
                _flock_within(fd, timeout, path)
        except BaseException:
            os.close(fd)
            raise
        if _still_linked(fd, path):
            return fd
        os.close(fd)  # the holder before us unlinked it: lock the new file


def _release(path, fd):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.close(fd)


def _try_flock(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _flock_within(fd, timeout, path):
    if _try_flock(fd):
        return  # free, as it mostly is: no alarm to set, no signal module to import
    import signal  # flock has no timeout of its own: an alarm interrupts the wait

    def expire(signum, frame):
        raise LockTimeout(f"waited {timeout:g} s for {path}, held by another xenblock run")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
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
