"""The one way xenblock runs another program (LVM's tools, qemu-nbd).

Most types need no process at all (loop and device-mapper are ioctls); the
ones that drive LVM or a userspace image server do, and they all go through
here, so that every child is started the same way:
  - stdin is /dev/null: nothing may prompt (a prompt would wait for libxl's
    SIGKILL);
  - no descriptor of ours is inherited (close_fds), so no lock of ours
    either: a flock lives in the open file description, and a daemon that
    inherited one would hold the lock after the script is gone;
  - LC_ALL=C, so that what is parsed is not translated;
  - a failure is a CommandError carrying argv, exit status and stderr, and
    its text names the step that failed.

A command is never killed half-way. An LVM command killed while it has
the origin suspended leaves the guest's I/O hanging; so a step starts only
if the deadline leaves it the time it needs, and one that overruns is let
finish (libxl may kill the script meanwhile: the step's record says what
to undo).
"""
import os
import subprocess
import time

from .errors import HotplugError, one_line


class CommandError(HotplugError):
    def __init__(self, step, argv, returncode, stderr):
        self.step, self.argv, self.returncode, self.stderr = step, argv, returncode, stderr
        said = one_line(" ".join(stderr.split())) or "no message"
        super().__init__(f"{step} failed: {argv[0]} exited with status {returncode}: {said}")


def run(argv, step, deadline, needs, log=None, env=None):
    """Run argv to its end and return its stdout (text). step says what it
    does, for errors and the log ("creating snapshot vg0/web-xvda"); needs
    is the time in seconds the step must have left of deadline to start."""
    left = deadline.remaining()
    if left < needs:
        raise HotplugError(f"{step}: not started, {left:.1f} s left of the script's time and it may take "
                           f"{needs:.0f} s (libxl would kill it half-way)")
    started = time.monotonic()
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              close_fds=True, env=_environment(env))
    except OSError as e:
        raise HotplugError(f"{step} failed: cannot run {argv[0]}: {e.strerror}") from None
    took = time.monotonic() - started
    if log is not None and took > left:
        log.warning(f"{step} took {took:.1f} s, past the script's deadline; let finish")
    if done.returncode != 0:
        raise CommandError(step, argv, done.returncode, done.stderr)
    return done.stdout


def start(argv, step, stderr_path=None):
    """Start argv as a daemon that outlives the script (qemu-nbd): its own
    session, every standard stream on /dev/null (an inherited pipe would
    keep `xl create | tee` waiting for it), but stderr, given stderr_path,
    appended to that file: a file holds no reader waiting, and keeps what
    the daemon says when it fails to start. Returns the Popen."""
    try:
        err = subprocess.DEVNULL if stderr_path is None else os.open(
            stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise HotplugError(f"{step} failed: cannot open {stderr_path}: {e.strerror}") from None
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, close_fds=True, start_new_session=True,
                                env=_environment(None))
    except OSError as e:
        raise HotplugError(f"{step} failed: cannot run {argv[0]}: {e.strerror}") from None
    finally:
        if stderr_path is not None:
            os.close(err)


# libxl's environment may lack the sbin directories, where LVM's tools are.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _environment(extra):
    inherited = os.environ.get("PATH")
    env = {"PATH": f"{inherited}:{SYSTEM_PATH}" if inherited else SYSTEM_PATH, "LC_ALL": "C"}
    env.update(extra or {})
    return env
