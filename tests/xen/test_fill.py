"""`xenblock check-fill`, the installed command, against dom0's real
device-mapper: a block-cow store written past the warning level, then to
its end, where the kernel invalidates the snapshot; a block-snapshot CoW
file whose file system runs short of space. The rules on their own, and
the records with no snapshot, are the host tier's
(tests/host/test_check_fill.py)."""
import mmap
import os
import subprocess

import pytest

from tests.support.cases import DOM_A
from tests.support.cow_cases import cow_env
from xenblock import dm
from xenblock.state import StateDir

CHUNK = 64 << 10  # block-cow's and block-snapshot's chunk


def write_chunks(node, first, count):
    """count whole chunks from chunk first on, O_DIRECT: each write reaches
    the snapshot before the next, and none lingers in dom0's page cache
    after the kernel failed it."""
    buffer = mmap.mmap(-1, CHUNK)  # page-aligned, as O_DIRECT needs
    buffer.write(b"\xa5" * CHUNK)
    fd = os.open(node, os.O_WRONLY | os.O_DIRECT)
    try:
        for chunk in range(first, first + count):
            os.pwrite(fd, buffer, chunk * CHUNK)
    finally:
        os.close(fd)
        buffer.close()


def check_fill(tmp_path):
    """The installed command with the default fill_warning (80%), logging
    to a file of the test's own."""
    config = tmp_path / "check.conf"
    config.write_text(f"[general]\nlog_file = {tmp_path / 'check.log'}\nsyslog = no\n")
    command = os.path.join(os.environ["XENBLOCK_VENV"], "bin", "xenblock")
    return subprocess.run([command, "check-fill"], env={**os.environ, "XENBLOCK_CONFIG": str(config)},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def row(result, key):
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(key + " ")]
    return line


def test_a_block_cow_store_warns_past_the_level_then_dies_full(driver, images, tmp_path):
    base = images("fill-base.img", b"xenblock-fill-base", size=16 << 20)
    env = cow_env(driver, tmp_path)
    key = driver.backend(f"{base} 4M", script="block-cow", frontend_id=DOM_A)
    assert driver.add(key, script="block-cow", env=env).returncode == 0
    try:
        node = driver.read(f"{key}/physical-device-path")
        # A transient store counts data chunks only: 64 of 64 KiB in 4M.
        # 52 of them are 81.25%.
        write_chunks(node, 0, 52)
        result = check_fill(tmp_path)
        assert result.returncode == 1, result
        assert row(result, key).split()[1:] == ["cow", str(DOM_A), "3.2M", "of", "4M", "81.2%", "-",
                                                "WARNING:", "past", "80%"], result.stdout
        warning = (f"check-fill {key} (domain {DOM_A}, cow {base} 4M): its store is 81.2% full (3.2M of 4M), "
                   "past the warning level 80%: ")
        (line,) = (tmp_path / "check.log").read_text().splitlines()
        assert warning in line and result.stderr == line + "\n", (line, result.stderr)

        # The 65th chunk has no room: the kernel invalidates the snapshot.
        with pytest.raises(OSError):
            write_chunks(node, 52, 13)
        result = check_fill(tmp_path)
        assert result.returncode == 1, result
        assert row(result, key).split()[-2:] == ["DEAD", "(Invalid)"], result.stdout
        assert f"check-fill {key} (domain {DOM_A}, cow {base} 4M): the snapshot is dead: the kernel reports " \
               "it 'Invalid'" in result.stderr, result.stderr
    finally:
        assert driver.remove(key, script="block-cow", env=env).returncode == 0
    # A record whose device is gone (killed before it made it, or someone
    # removed it by hand): listed, no warning.
    state = StateDir(driver.state_dir)
    gone = f"{driver.prefix}/{DOM_A}/1"
    name, uuid = dm.names_for(gone)
    state.save({"key": gone, "type": "cow", "mode": "w", "state": "building", "target": f"{base} 4M",
                "frontend_id": DOM_A, "images": [], "steps": [{"undo": "dm", "name": name, "uuid": uuid}]})
    try:
        result = check_fill(tmp_path)
    finally:
        state.delete(gone)
    assert result.returncode == 0 and result.stderr == "", result
    assert row(result, gone).endswith("gone (no device-mapper device)") and key not in result.stdout, result


def test_a_cow_file_whose_file_system_runs_short_is_warned_of(driver, images, tmp_path):
    base = images("fill-base.img", b"xenblock-fill-base", size=16 << 20)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40M", "xenblock-fill-test", str(small)], check=True)
    try:
        cow = small / "guest.cow"
        key = driver.backend(f"{base}:{cow}", script="block-snapshot", frontend_id=DOM_A)
        assert driver.add(key, script="block-snapshot").returncode == 0
        try:
            result = check_fill(tmp_path)
            assert result.returncode == 0, result
            assert row(result, key).split()[-1] == "ok", result.stdout
            # Another file takes all but 8M: the CoW file may grow by some 16M.
            st = os.statvfs(small)
            with open(small / "filler", "wb") as f:
                os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize - (8 << 20))
            result = check_fill(tmp_path)
            assert result.returncode == 1, result
            assert row(result, key).endswith("ok, WARNING: file system short of space"), result.stdout
            assert f"check-fill {key} (domain {DOM_A}, snapshot {base}:{cow}): the CoW file {cow} may grow by " \
                   in result.stderr and "its file system has 8M free" in result.stderr, result.stderr
        finally:
            assert driver.remove(key, script="block-snapshot").returncode == 0
    finally:
        subprocess.run(["umount", str(small)], check=False)
