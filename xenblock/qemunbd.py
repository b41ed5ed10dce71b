"""qemu-nbd, the one child that outlives a hotplug script.

block-tap serves a qemu image format by starting `qemu-nbd` on a unix
socket of ours (/run/xenblock/nbd/<token>.sock), connecting to it, doing
the NBD handshake, and handing the connection to the kernel (xenblock.nbd).
qemu-nbd is started through command.start: its own session, no descriptor
of ours (so no lock), stdin and stdout on /dev/null, stderr appended to
<token>.log beside the socket (what it says when it fails to start).

Its step is recorded before it starts (socket and log paths), and its pid
and start time (/proc/PID/stat field 22) as soon as it runs: a pid alone
may name another process by the time a remove comes, so no signal is ever
sent to a pid whose start time differs. A run killed before the pid was
saved leaves the socket's path, random and under our directory: the
server is the qemu-nbd whose command line names it.

Options, and why:
  --shared=1, no --persistent: qemu-nbd exits by itself once its one
      client (the kernel's connection) has gone, after flushing the image
      and releasing qemu's lock on it: a disconnect is a clean shutdown;
  --cache=none (O_DIRECT, flushes honoured) where one aligned direct read
      of the image works and `[file] direct_io` allows it, with
      --aio=native (which needs O_DIRECT); else --cache=writeback, which
      honours flushes too: a guest's fsync reaches the file either way
      (never cache=unsafe);
  --discard=unmap: the guest's discards punch holes in the image;
  --read-only for access=r: the export says so, and the kernel's device is
      read-only.
"""
import os
import signal
import socket
import time

from . import command, nbd
from .blockdev import listdir
from .deadline import start_ticks, stat_fields
from .errors import HotplugError
from .procfs import command_line

SUBDIRECTORY = "nbd"
POLL_SECONDS = 0.05
# How long a served qemu-nbd may take to flush and exit once its client
# went, before it is asked to (SIGTERM) within what is left of the deadline.
EXIT_GRACE_SECONDS = 3.0


def start(build, image, fmt, writable, direct_io):
    """Start qemu-nbd serving image (qemu format fmt), recorded in build;
    returns (the step, a socket connected to it, the nbd.Export it
    negotiated)."""
    directory = os.path.join(build.state.path, SUBDIRECTORY)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    token = os.urandom(8).hex()
    step = build.intend("qemu_nbd", socket=os.path.join(directory, f"{token}.sock"),
                        log=os.path.join(directory, f"{token}.log"), image=image)
    argv = ["qemu-nbd", f"--format={fmt}", f"--socket={step['socket']}", "--shared=1", "--discard=unmap",
            *(["--cache=none", "--aio=native"] if direct_io else ["--cache=writeback"]),
            *([] if writable else ["--read-only"]), image]
    what = f"starting qemu-nbd for {image}"
    process = command.start(argv, what, stderr_path=step["log"])
    step.update(pid=process.pid, start_time=start_ticks(process.pid))
    build.save()
    sock = _connected(step, process, writable, build.deadline)
    try:
        return step, sock, nbd.handshake(sock, f"qemu-nbd serving {image}")
    except nbd.NbdError:
        sock.close()
        # qemu-nbd listens before it has the image's lock: one that failed
        # to open the image hangs up on us, and its log says why.
        _wait_exit(process.pid, step["start_time"], build.deadline.capped(EXIT_GRACE_SECONDS))
        if process.poll() is not None:
            raise _start_failure(step, writable) from None
        raise


def _connected(step, process, writable, deadline):
    """A socket connected to qemu-nbd once it listens; its failure to start
    (it exited) becomes the error its log names."""
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(step["socket"])
            sock.settimeout(max(deadline.remaining(), 0.1))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
        if process.poll() is not None:
            raise _start_failure(step, writable)
        if deadline.expired():
            raise HotplugError(f"qemu-nbd serving {step['image']} did not listen on {step['socket']} in time")
        time.sleep(POLL_SECONDS)


def _start_failure(step, writable):
    said = " ".join(_read(step["log"]).split()).replace("qemu-nbd: ", "") or "no message"
    if "lock" in said:
        # qemu's own image locks: another qemu or qemu-nbd writes the image
        # (or reads it, refusing writers). xenblock's own users are refused
        # earlier, by the sharing check; this one is a program of dom0's.
        ours = "read-write" if writable else "read-only"
        return HotplugError(f"{step['image']}: already in use by another program holding qemu's lock on it "
                            f"({said}); refusing {ours} access")
    return HotplugError(f"qemu-nbd could not serve {step['image']}: {said}")


def served(step, build):
    """The kernel holds the connection: from now on qemu-nbd exits by
    itself when the device is disconnected."""
    step["served"] = True
    build.save()


def undo(step, deadline):
    """Make the recorded qemu-nbd exit, cleanly, then remove its files.

    A served one exits by itself after its device was disconnected (the
    step after this one, undone first): it is waited for. One that never
    had its client handed to the kernel (an add failed or killed before)
    never exits by itself; it gets SIGTERM, on which qemu-nbd stops
    serving, flushes the image and exits as cleanly as after a disconnect.
    A connection of ours and an NBD_CMD_DISC would do the same, but a
    server still holding a client (shared=1) never answers a second one,
    and one killed before its pid was saved may not listen yet.
    Never SIGKILL: a killed writer may leave the image's metadata behind.
    """
    pid, ticks = _server(step)
    if pid is not None:
        if step.get("served"):
            _wait_exit(pid, ticks, deadline.capped(EXIT_GRACE_SECONDS))
        if _alive(pid, ticks):
            os.kill(pid, signal.SIGTERM)
        if not _wait_exit(pid, ticks, deadline):
            raise HotplugError(f"qemu-nbd (pid {pid}) serving {step['image']} has not exited yet; the record is "
                               "kept for a later remove to finish")
    for path in (step["socket"], step["log"]):
        _unlink(path)


def ours(state_path):
    """(pid, socket path) of every qemu-nbd serving on a socket of ours
    (under state_path/nbd), whatever its record says."""
    return _serving(os.path.join(state_path, SUBDIRECTORY) + "/")


def _serving(prefix):
    """(pid, socket path) of each live qemu-nbd whose --socket starts with prefix."""
    found = []
    for pid in filter(str.isdigit, listdir("/proc")):
        words = command_line(pid).split()
        socket_path = next((w.removeprefix("--socket=") for w in words if w.startswith(f"--socket={prefix}")), None)
        if socket_path and os.path.basename(words[0]) == "qemu-nbd" and _alive(int(pid), start_ticks(pid)):
            found.append((int(pid), socket_path))
    return found


def running(step):
    """Whether the qemu-nbd a step recorded still runs."""
    return _server(step)[0] is not None


def _server(step):
    """(pid, start ticks) of the recorded qemu-nbd if it still runs, else
    (None, None)."""
    pid = step.get("pid")
    if pid is not None:
        return (pid, step["start_time"]) if _alive(pid, step["start_time"]) else (None, None)
    # Killed between starting it and saving its pid: found by the socket its
    # command line names (a random name under our directory), which it may
    # not have created yet.
    pid = next((found for found, path in _serving(step["socket"]) if path == step["socket"]), None)
    return (None, None) if pid is None else (pid, start_ticks(pid))


def _alive(pid, ticks):
    """Whether pid is still the process that started at ticks, and has not
    exited (a zombie child of this run is reaped)."""
    fields = stat_fields(pid)
    if fields is None or int(fields[19]) != ticks:
        return False
    if fields[0] == b"Z":
        _reap(pid)
        return False
    return True


def _wait_exit(pid, ticks, deadline):
    while _alive(pid, ticks):
        if deadline.expired():
            return False
        time.sleep(POLL_SECONDS)
    return True


def _reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # someone else's child: init reaps it


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read(4096)
    except OSError:
        return ""


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
