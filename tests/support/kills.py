"""A script killed, or failing, at every point where it changes something,
as libxl's SIGKILL after its time limit may kill it. Shared by the host
tier (block-file, block-part) and the VM tier (the device-mapper types).

The points come from a trace of a successful run (strace), so they follow
the code; the kill is strace's own fault injection (inject=SYSCALL:
signal=KILL:when=N), with no hook in xenblock. strace follows the script's
own process alone (no -f): when=N counts per process, and a child (lvcreate,
qemu-img, qemu-nbd) killed at its Nth call would be another test, of LVM or
QEMU; the script killed while its child runs is the point at the clone.
"""
import os
import random
import re
import signal
from collections import namedtuple

MARKER = b"data the guest must find after the kill"
CHILD_STARTS = ("clone", "clone3", "vfork")
# System calls that change state a kill could strand: files created,
# renamed or removed, locks taken, loop and dm devices chosen, made,
# bound, loaded or removed, children started (lvcreate, qemu-nbd) or
# signalled.
CHANGING = ("openat", "rename", "unlink", "flock", "ioctl", "kill", *CHILD_STARTS)
# Device-mapper ioctls that only read.
DM_READS = ("DM_VERSION", "DM_DEV_STATUS", "DM_TABLE_STATUS", "DM_LIST_DEVICES")
# The same calls in every run: no .pyc written by the first one.
STABLE = {"PYTHONDONTWRITEBYTECODE": "1"}
LINE = re.compile(r"^(\w+)\((.*)")

# A disk to kill: its script and target, the image whose loop devices must
# all go, where the guest's device shows MARKER, and the run's environment.
Disk = namedtuple("Disk", "script target image marker_at env", defaults=({},))


def sampled(points, default=8):
    """The points this run tries. Every one with XENBLOCK_KILL_POINTS=all;
    else at most XENBLOCK_KILL_POINTS (else default) drawn with the seed
    XENBLOCK_KILL_SEED (default: a new one each run), in their order. The
    seed is printed: pytest shows it with a failure, and the same seed
    draws the same points again. Under emulation every point costs a few
    script runs of two seconds; tools/test passes both variables into the VM."""
    wanted = os.environ.get("XENBLOCK_KILL_POINTS", str(default))
    if wanted == "all" or len(points) <= int(wanted):
        print(f"kill points: all {len(points)}")
        return points
    seed = int(os.environ.get("XENBLOCK_KILL_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"kill points: {wanted} of {len(points)}, XENBLOCK_KILL_SEED={seed}")
    chosen = set(random.Random(seed).sample(range(len(points)), int(wanted)))
    return [point for index, point in enumerate(points) if index in chosen]


def changing_calls(driver, disk, command, key, tmp_path, calls=CHANGING, options=()):
    """(syscall, N, call text) of each state-changing call a successful
    `command` makes, N counting that syscall's calls in the run; calls:
    the system calls traced, options: strace's own (-yy names sockets)."""
    trace = tmp_path / f"{command}.trace"
    wrapper = ["strace", "-qq", *options, "-o", str(trace), "-e", f"trace={','.join(calls)}"]
    result = run(driver, disk, command, key, wrapper)
    assert result.returncode == 0, result.stderr
    counts, points = {}, []
    for line in trace.read_text().splitlines():
        match = LINE.match(line)
        if not match:
            continue  # "<... resumed>" halves and signals
        name, args = match.groups()
        counts[name] = counts.get(name, 0) + 1
        if _changes_state(name, args):
            points.append((name, counts[name], line))
    assert points, "the trace shows no state-changing call"
    print(f"{disk.script} {command}: {len(points)} state-changing calls")  # RELIABILITY.md's figures
    return points


def _changes_state(name, args):
    if name == "openat":
        return "O_CREAT" in args or "O_WRONLY" in args or "O_TMPFILE" in args
    if name == "ioctl":
        return "LOOP_" in args or ("DM_" in args and not any(read in args for read in DM_READS))
    return True


def run(driver, disk, command, key, wrapper=()):
    return driver.run(command, key, script=disk.script, env={**STABLE, **disk.env}, wrapper=wrapper)


def fresh_backend(driver, disk, key):
    """libxl's next backend for the disk: the old one's nodes are gone."""
    driver.destroy_backend(key)
    return driver.backend(disk.target, script=disk.script)


def killed(driver, disk, command, key, syscall, number):
    wrapper = ["strace", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
               "-e", f"inject={syscall}:signal=KILL:when={number}"]
    result = run(driver, disk, command, key, wrapper)
    assert result.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), result.stderr


def failed(driver, disk, key, syscall, number):
    """add with the call failing once with EIO."""
    wrapper = ["strace", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
               "-e", f"inject={syscall}:error=EIO:when={number}"]
    return run(driver, disk, "add", key, wrapper)


def fail_add_at_each(driver, disk, key, points, leftovers, unaccounted):
    """add with each point failing once with EIO: it copes (a failed log
    write), or exits 1 with one hotplug-error line, leaving nothing that
    unaccounted() names (what no record says is left); a remove then
    leaves nothing at all (leftovers() empty). Returns the last key used."""
    for syscall, number, line in points:
        key = fresh_backend(driver, disk, key)
        result = failed(driver, disk, key, syscall, number)
        if result.returncode != 0:
            assert result.returncode == 1, (line, result.stderr)
            assert driver.read(f"{key}/hotplug-status") == "error", line
            error = driver.read(f"{key}/hotplug-error")
            assert error and "\n" not in error, (line, error)
            assert not unaccounted(), (line, "a failed add leaves what no record names", unaccounted())
        assert run(driver, disk, "remove", key).returncode == 0, line
        assert not leftovers(), (line, leftovers())
    return key


def read_device(driver, key, disk):
    with open(driver.read(f"{key}/physical-device-path"), "rb") as f:
        f.seek(disk.marker_at)
        return f.read(len(MARKER))


def kill_add_at_each(driver, disk, key, points, leftovers, alternate=False):
    """add killed at each point, then remove (nothing left) and, again,
    add (the data served, then removed: nothing left); with alternate, one
    or the other by turns (both undo the record by one teardown), for
    half the time. leftovers() names what is left: empty when nothing is.
    Returns the last key used."""
    for index, (syscall, number, line) in enumerate(points):
        next_runs = [("remove", "add")[index % 2]] if alternate else ("remove", "add")
        for next_run in next_runs:
            key = fresh_backend(driver, disk, key)
            killed(driver, disk, "add", key, syscall, number)
            result = run(driver, disk, next_run, key)
            assert result.returncode == 0, (line, next_run, result.stderr)
            if next_run == "add":
                assert read_device(driver, key, disk) == MARKER, line
                assert run(driver, disk, "remove", key).returncode == 0, line
            assert not leftovers(), (line, next_run, leftovers())
    return key


def kill_remove_at_each(driver, disk, key, points, leftovers):
    """remove killed at each point, then remove again: nothing left."""
    for syscall, number, line in points:
        key = fresh_backend(driver, disk, key)
        assert run(driver, disk, "add", key).returncode == 0, line
        killed(driver, disk, "remove", key, syscall, number)
        result = run(driver, disk, "remove", key)
        assert result.returncode == 0, (line, result.stderr)
        assert not leftovers(), (line, leftovers())
    return key
