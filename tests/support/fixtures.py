"""Fixtures both tiers share: image files and the leak check around each case."""
import contextlib
import hashlib
import os
import subprocess
import time

import pytest

from xenblock import loop


@pytest.fixture
def images(tmp_path):
    """images(name, head=b"", mode=0o644, size=4 MiB) -> path of a new image file."""
    with image_files(tmp_path) as make:
        yield make


@contextlib.contextmanager
def image_files(directory):
    """make(name, head=b"", mode=0o644, size=4 MiB) -> path of a new image
    file in directory; after, no loop device may be left bound to any of them."""
    made = []

    def make(name, head=b"", mode=0o644, size=4 << 20):
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.truncate(size)
            f.write(head)
        os.chmod(path, mode)
        made.append(path)
        return path

    yield make
    assert_no_loop_devices_on([path for path in made if os.path.exists(path)])


def assert_no_loop_devices_on(paths):
    leaked = {path: [node for node, _, _ in loop.backed_by(os.stat(path))] for path in paths}
    assert not any(leaked.values()), f"loop devices left behind: {leaked}"


def read_at(path, offset=0, size=-1):
    """size bytes of path (a file or a device) from offset; size -1: to the end."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


@contextlib.contextmanager
def foreign_loop(path, read_only=False, partitions=False):
    """A loop device bound by util-linux losetup, as an administrator would
    (not xenblock's); unbound after. partitions: with partition devices."""
    argv = ["losetup", "--find", "--show", *(["--read-only"] if read_only else []),
            *(["--partscan"] if partitions else []), path]
    node = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield node
    finally:
        subprocess.run(["losetup", "-d", node], check=True)


def opened_by_someone(path, for_io=False):
    """Whether another process holds path open (by the path it resolves to);
    for_io: by a descriptor that reads or writes (not an O_PATH one)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        directory = f"/proc/{pid}/fd"
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for fd in names:
            try:
                if os.readlink(os.path.join(directory, fd)) == path and not (for_io and _is_o_path(pid, fd)):
                    return True
            except OSError:
                continue
    return False


def _is_o_path(pid, fd):
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        flags = next(line.split()[1] for line in f if line.startswith("flags:"))
    return bool(int(flags, 8) & os.O_PATH)


def digest(path):
    """sha256 of a whole file or device: unchanged data, byte for byte."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def wait_until(condition, what, timeout=30):
    """Poll condition until it holds; fail naming what after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        time.sleep(0.2)
