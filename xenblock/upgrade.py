"""A hotplug run never imports half-old, half-new code during a package upgrade.

dpkg and rpm replace the library file by file, and a run imports its
modules as it goes (a type's module only when that type is asked for), so a
run overlapping an upgrade could load some modules of each version. The
hotplug scripts call hold_code(argv) before importing anything else of
xenblock: it holds LOCK shared for the rest of the process, and waits while
MARKER says an upgrade is replacing the files.

The package's preinst (rpm: %pre) creates MARKER, then takes LOCK
exclusively: once it has it, every run that started on the old files is
over, and new runs wait on MARKER. It is removed once the new files are all
in place: by the old package's postrm (dpkg runs it "upgrade" right after
unpacking the new files), else by the new postinst (rpm: %post).

Bounded both ways, since neither side may hang a guest's start: a run
waits at most half its time (then goes on: the files are almost certainly in
place by then, and a failed add would cost the guest for sure), and a
MARKER older than STALE is one a failed dpkg left behind. This module uses
the standard library alone: it runs before the rest of xenblock may be
imported.
"""
import fcntl
import os
import time

LOCK = "/run/xenblock/upgrade.lock"
MARKER = "/run/xenblock/upgrading"
STALE = 120  # seconds; preinst waits at most 60 s for runs, the unpack takes one
POLL = 0.1
# Kept open (shared flock) until the process exits; O_CLOEXEC, so no daemon
# a run starts holds it and keeps an upgrade waiting.
_held = None


def hold_code(argv):
    """Hold the installed code for the hotplug run of argv, first waiting out
    an upgrade in progress: at most half of what libxl gives the run (add
    40 s, remove 10 s)."""
    global _held
    if _held is not None:
        return
    wait = 5.0 if argv[1:2] == ["remove"] else 20.0
    try:
        os.makedirs(os.path.dirname(LOCK), mode=0o700, exist_ok=True)
        fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        give_up = time.monotonic() + wait
        fcntl.flock(fd, fcntl.LOCK_SH)
        while _upgrading() and time.monotonic() < give_up:
            # Not waited for while holding the lock: preinst waits for it.
            fcntl.flock(fd, fcntl.LOCK_UN)
            time.sleep(POLL)
            fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        # /run failing: the run goes on unguarded (an upgrade is rare, a
        # failed add costs the guest), and the run's own use of /run
        # reports the trouble where it matters.
        return
    _held = fd


def _upgrading():
    try:
        age = time.time() - os.stat(MARKER).st_mtime
    except FileNotFoundError:
        return False
    return age < STALE
