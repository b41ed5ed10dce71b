"""A script killed at every point where it changes something, as libxl's
SIGKILL after its time limit may kill it: the next add or remove of the
disk must finish the job, with nothing left and the image's data intact.

The points come from a trace of a successful run (strace), so they follow
the code; the kill is strace's own fault injection (inject=SYSCALL:
signal=KILL:when=N), with no hook in xenblock. Host tier only: the same
runs under emulation would take minutes, and the kernel parts involved
(loop devices, flock, rename) are the host's too.
"""
import re
import signal

from tests.support.cases import loops_of

MARKER = b"data the guest must find after the kill"
# System calls that change state a kill could strand: files created,
# renamed or removed, locks taken, loop devices chosen, bound or unbound.
CHANGING = ("openat", "rename", "unlink", "flock", "ioctl")
# The same calls in every run: no .pyc written by the first one.
STABLE = {"PYTHONDONTWRITEBYTECODE": "1"}
LINE = re.compile(r"^\d+\s+(\w+)\((.*)")


def changing_calls(driver, command, key, tmp_path):
    """(syscall, N, call text) of each state-changing call a successful
    `command` makes, N counting that syscall's calls in the run."""
    trace = tmp_path / f"{command}.trace"
    wrapper = ["strace", "-f", "-qq", "-o", str(trace), "-e", f"trace={','.join(CHANGING)}"]
    result = driver.run(command, key, wrapper=wrapper, env=STABLE)
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
    return points


def _changes_state(name, args):
    if name == "openat":
        return "O_CREAT" in args or "O_WRONLY" in args
    if name == "ioctl":
        return "LOOP_" in args
    return True


def fresh_backend(driver, key, path):
    """libxl's next backend for the disk: the old one's nodes are gone."""
    driver.destroy_backend(key)
    return driver.backend(path)


def killed(driver, command, key, syscall, number):
    wrapper = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
               "-e", f"inject={syscall}:signal=KILL:when={number}"]
    result = driver.run(command, key, wrapper=wrapper, env=STABLE)
    assert result.returncode == -signal.SIGKILL or result.returncode == 128 + signal.SIGKILL, result.stderr


def read_device(driver, key):
    with open(driver.read(f"{key}/physical-device-path"), "rb") as f:
        f.seek(1 << 20)
        return f.read(len(MARKER))


def test_add_killed_anywhere_then_remove_leaves_nothing_and_add_again_serves_the_image(
        driver, images, tmp_path):
    path = images("killed-add.img", size=4 << 20)
    with open(path, "r+b") as f:
        f.seek(1 << 20)
        f.write(MARKER)
    key = driver.backend(path)
    points = changing_calls(driver, "add", key, tmp_path)
    assert driver.remove(key).returncode == 0
    for syscall, number, line in points:
        for next_run in ("remove", "add"):
            key = fresh_backend(driver, key, path)
            killed(driver, "add", key, syscall, number)
            result = driver.run(next_run, key)
            assert result.returncode == 0, (line, next_run, result.stderr)
            if next_run == "add":
                assert read_device(driver, key) == MARKER, line
                assert len(loops_of(path)) == 1, line
                assert driver.remove(key).returncode == 0, line
            assert loops_of(path) == [] and driver.state_files() == [], (line, next_run)


def test_add_failing_anywhere_rolls_back_or_says_what_is_left(driver, images, tmp_path):
    # Each state-changing call of add fails once with EIO (strace's
    # inject=SYSCALL:error=EIO): add either copes (a failed log write) or
    # exits 1 with a hotplug-error and no loop device left bound; a remove
    # then leaves nothing at all.
    path = images("failing-add.img")
    key = driver.backend(path)
    points = changing_calls(driver, "add", key, tmp_path)
    assert driver.remove(key).returncode == 0
    for syscall, number, line in points:
        key = fresh_backend(driver, key, path)
        wrapper = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
                   "-e", f"inject={syscall}:error=EIO:when={number}"]
        result = driver.run("add", key, wrapper=wrapper, env=STABLE)
        if result.returncode != 0:
            assert result.returncode == 1, (line, result.stderr)
            assert driver.read(f"{key}/hotplug-status") == "error", line
            assert driver.read(f"{key}/hotplug-error"), line
            assert loops_of(path) == [], (line, "a failed add rolls back what it bound")
        assert driver.remove(key).returncode == 0, line
        assert loops_of(path) == [] and driver.state_files() == [], line


def test_remove_killed_anywhere_then_remove_again_leaves_nothing(driver, images, tmp_path):
    path = images("killed-remove.img")
    key = driver.backend(path)
    assert driver.add(key).returncode == 0
    points = changing_calls(driver, "remove", key, tmp_path)
    for syscall, number, line in points:
        key = fresh_backend(driver, key, path)
        assert driver.add(key).returncode == 0, line
        killed(driver, "remove", key, syscall, number)
        result = driver.remove(key)
        assert result.returncode == 0, (line, result.stderr)
        assert loops_of(path) == [] and driver.state_files() == [], line
