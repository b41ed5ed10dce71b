"""Loop devices on the host kernel (it has them; no Xen needed)."""
import multiprocessing
import os

import pytest

from xenblock import loop
from xenblock.blockdev import read_attribute
from xenblock.errors import HotplugError


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(4 << 20)
        f.seek(0)
        f.write(b"xenblock-marker")
    return str(path)


@pytest.fixture
def bound(image):
    """Bind and always unbind, whatever the test does."""
    devices = []

    def bind(read_only=False, mark="xenblock:test/loop", path=image):
        fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        try:
            device = loop.attach(fd, read_only, True, mark, lambda number: None)
        finally:
            os.close(fd)
        devices.append((device, mark))
        return device

    yield bind
    for device, mark in devices:
        loop.detach(device.node, device.diskseq, mark)


def test_bind_reads_the_image_and_carries_the_mark(bound, image):
    device = bound()
    with open(device.node, "rb") as f:
        assert f.read(15) == b"xenblock-marker"
    info = loop.status(device.node)
    assert info.mark == "xenblock:test/loop"
    assert not info.read_only
    assert [node for node, _, _ in loop.backed_by(os.stat(image))] == [device.node]


def test_read_only_bind_refuses_writes(bound):
    device = bound(read_only=True)
    assert loop.status(device.node).read_only
    assert read_attribute(device.devnum, "ro") == "1"
    with pytest.raises(OSError):
        with open(device.node, "r+b", buffering=0) as f:
            f.write(b"must not land")


def test_logical_block_size_stays_512_whatever_direct_io_does(bound):
    device = bound()
    assert read_attribute(device.devnum, "queue", "logical_block_size") == "512"
    assert read_attribute(device.devnum, "loop", "dio") in ("0", "1")


def test_detach_unbinds(bound):
    device = bound()
    assert loop.detach(device.node, device.diskseq, "xenblock:test/loop")
    assert loop.status(device.node) is None
    assert not loop.detach(device.node, device.diskseq, "xenblock:test/loop")  # again: nothing


def test_detach_leaves_a_device_that_is_no_longer_ours(bound):
    device = bound(mark="xenblock:test/other")
    assert not loop.detach(device.node, device.diskseq, "xenblock:test/loop")
    assert not loop.detach(device.node, device.diskseq + 1000, "xenblock:test/other")
    assert loop.status(device.node) is not None


def test_long_keys_get_a_short_unique_mark():
    a = loop.mark_for("x" * 100 + "a")
    b = loop.mark_for("x" * 100 + "b")
    assert a != b and len(a) < loop.NAME_SIZE and a.startswith("xenblock:")
    assert loop.mark_for("backend/vbd/3/51712") == "xenblock:backend/vbd/3/51712"


def _bind_one(args):
    path, mark = args
    fd = os.open(path, os.O_RDWR)
    try:
        return loop.attach(fd, False, False, mark, lambda number: None).node
    finally:
        os.close(fd)


def test_concurrent_binds_get_distinct_devices(tmp_path):
    paths = []
    for i in range(6):
        path = tmp_path / f"d{i}.img"
        path.write_bytes(b"\0" * 4096)
        paths.append(str(path))
    marks = [f"xenblock:test/race{i}" for i in range(6)]
    with multiprocessing.Pool(6) as pool:
        nodes = pool.map(_bind_one, zip(paths, marks))
    try:
        assert len(set(nodes)) == 6
        for node, path in zip(nodes, paths):
            info = loop.status(node)
            assert (info.backing_ino) == os.stat(path).st_ino
    finally:
        for node, mark in zip(nodes, marks):
            loop.detach(node, None, mark)


def test_bind_error_names_the_device(tmp_path, monkeypatch):
    directory = os.open(str(tmp_path), os.O_RDONLY)
    try:
        with pytest.raises(HotplugError, match=r"cannot bind /dev/loop\d+"):
            loop.attach(directory, True, False, "xenblock:test/dir", lambda number: None)
    finally:
        os.close(directory)
