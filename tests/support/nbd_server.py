"""A real nbd-server (Debian's nbd-server package) on a free port of
127.0.0.1, for both tiers: the server block-nbd meets on the network."""
import contextlib
import os
import signal
import socket
import subprocess
import time

from xenblock.deadline import stat_fields

START_SECONDS = 30
READY_SECONDS = 60


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(directory, exports):
    """nbd-server serving exports ({name: (path, read_only)}), its files in
    directory; yields its port. Stopped after, and waited for."""
    os.makedirs(directory, exist_ok=True)
    port, config, pid_file = free_port(), os.path.join(directory, "nbd-server.conf"), os.path.join(directory, "pid")
    with open(config, "w") as f:
        f.write(f"[generic]\nuser = root\ngroup = root\nlistenaddr = 127.0.0.1\nport = {port}\n")
        for name, (path, read_only) in exports.items():
            f.write(f"[{name}]\nexportname = {path}\nreadonly = {'true' if read_only else 'false'}\n")
    subprocess.run(["nbd-server", "-C", config, "-p", pid_file], check=True, capture_output=True)
    try:
        assert wait_listening(port), f"nbd-server did not start listening on {port}: {_diagnosis(pid_file)}"
        assert _answers(port, next(iter(exports))), f"nbd-server does not negotiate: {_diagnosis(pid_file)}"
        yield port
    finally:
        pid = _read_pid(pid_file)  # written before it listens
        if pid is not None:
            stop(pid)


def stop(pid):
    """Stop nbd-server (and the children serving its connections)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + START_SECONDS
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _alive(pid):
    # A daemon's parent is init, and dom0's under virtme does not reap:
    # a zombie has exited.
    fields = stat_fields(pid)
    return fields is not None and fields[0] != b"Z"


def _read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def wait_listening(port, timeout=START_SECONDS):
    """Whether something listens on 127.0.0.1:port within timeout seconds.
    The kernel's table says so; connecting to ask would make nbd-server fork
    a child for each try (slow under emulation) and qemu-nbd complain."""
    deadline = time.monotonic() + timeout
    while f"0100007F:{port:04X}" not in _listening():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _answers(port, export):
    """Whether nbd-server negotiates export within READY_SECONDS. It
    listens before it is ready: under emulation its start went on for 13 s
    of computing after listen(), and a client's connection waited in the
    backlog meanwhile (seen with strace -tt in dom0, 2026-11-28)."""
    from xenblock import nbd
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=READY_SECONDS) as sock:
            nbd.handshake(sock, "nbd-server", export)
            return True
    except (OSError, nbd.NbdError):
        return False


def children(pids):
    """The processes whose parent is one of pids (nbd-server forks one per client)."""
    return [int(pid) for pid in filter(str.isdigit, os.listdir("/proc"))
            if (fields := stat_fields(pid)) is not None and int(fields[1]) in pids]


def _listening():
    """The local addresses with a listening socket, as /proc/net/tcp shows
    them ("sl local_address rem_address st ...": hex IP:port, 127.0.0.1 in
    little-endian order as 0100007F; st 0A for LISTEN)."""
    with open("/proc/net/tcp") as f:
        return {fields[1] for fields in (line.split() for line in f.readlines()[1:]) if fields[3] == "0A"}


def _diagnosis(pid_file):
    """What the nbd-server processes are doing, for a failure's message."""
    ps = subprocess.run(["ps", "-eo", "pid,ppid,stat,wchan:32,args"], capture_output=True, text=True).stdout
    return (f"pid file says {_read_pid(pid_file)}; listening: {sorted(_listening())}; "
            f"{[line for line in ps.splitlines() if 'nbd' in line]}")
