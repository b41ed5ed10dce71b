"""Loop devices on the host kernel (it has them; no Xen needed)."""
import multiprocessing
import os
import subprocess

import pytest

from xenblock import loop
from xenblock.blockdev import read_attribute
from xenblock.deadline import Deadline
from xenblock.errors import HotplugError


def attach(fd, read_only, direct_io, mark):
    return loop.attach(fd, read_only, direct_io, mark, lambda number: None, lambda number: None,
                       Deadline.after(5))


def detach(device, mark, diskseq=None):
    """loop.detach and wait; the devnum it unbound, None if nothing of ours."""
    devnum = loop.detach(device.node, device.diskseq if diskseq is None else diskseq, mark, Deadline.after(5))
    assert devnum is None or loop.wait_unbound(devnum, device.diskseq, Deadline.after(5))
    return devnum


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
            device = attach(fd, read_only, True, mark)
        finally:
            os.close(fd)
        devices.append((device, mark))
        return device

    yield bind
    for device, mark in devices:
        detach(device, mark)


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


def test_an_image_on_a_4k_sector_disk_keeps_512_byte_logical_blocks(bound, tmp_path):
    # With direct I/O asked for and no block size given, this host's kernel
    # (6.18) copies the backing disk's 4096-byte sectors into the loop device
    # (6.1 does so only for an O_DIRECT descriptor: tests/xen/test_storage_kinds.py),
    # and a guest's partition table written for 512-byte sectors breaks.
    disk = tmp_path / "4k-disk"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    node = subprocess.run(["losetup", "--find", "--show", "--sector-size", "4096", str(disk)],
                          capture_output=True, text=True, check=True).stdout.strip()
    mount_point = tmp_path / "4k"
    mount_point.mkdir()
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", node], check=True, capture_output=True)
        subprocess.run(["mount", node, str(mount_point)], check=True)
        try:
            image = mount_point / "guest.img"
            with open(image, "wb") as f:
                f.truncate(4 << 20)
            device = bound(path=str(image))
            try:
                assert read_attribute(device.devnum, "queue", "logical_block_size") == "512"
            finally:
                detach(device, "xenblock:test/loop")  # before the umount
        finally:
            subprocess.run(["umount", str(mount_point)], check=True)
    finally:
        subprocess.run(["losetup", "-d", node], check=True)


def test_detach_unbinds(bound):
    device = bound()
    assert detach(device, "xenblock:test/loop") == device.devnum
    assert loop.status(device.node) is None
    assert not loop.is_bound(device.devnum)
    assert detach(device, "xenblock:test/loop") is None  # again: nothing


def test_detach_leaves_a_device_that_is_no_longer_ours(bound):
    device = bound(mark="xenblock:test/other")
    assert detach(device, "xenblock:test/loop") is None
    assert detach(device, "xenblock:test/other", diskseq=device.diskseq + 1000) is None
    assert loop.status(device.node) is not None


def test_a_device_held_open_stays_bound_until_let_go(bound):
    # LOOP_CLR_FD on an open device only arms autoclear: the binding, and
    # write access to the image, lasts until the last opener closes it.
    device = bound()
    holder = os.open(device.node, os.O_RDONLY)
    try:
        assert loop.detach(device.node, device.diskseq, "xenblock:test/loop", Deadline.after(5)) == device.devnum
        assert not loop.wait_unbound(device.devnum, device.diskseq, Deadline.after(0.5))
        assert loop.is_bound(device.devnum, device.diskseq)
    finally:
        os.close(holder)
    assert loop.wait_unbound(device.devnum, device.diskseq, Deadline.after(5))
    assert loop.status(device.node) is None


def test_the_longest_mark_kept_whole_is_the_one_the_kernel_gives_back(bound):
    # lo_file_name holds 63 characters and a NUL: a mark of 63 is kept as it
    # is (a longer key is hashed by mark_for), and must read back whole, or
    # teardown would not recognise its own device.
    mark = loop.mark_for("k" * (loop.NAME_SIZE - 1 - len("xenblock:")))
    assert len(mark) == loop.NAME_SIZE - 1
    device = bound(mark=mark)
    assert loop.status(device.node).mark == mark


def test_long_keys_get_a_short_unique_mark():
    a = loop.mark_for("x" * 100 + "a")
    b = loop.mark_for("x" * 100 + "b")
    assert a != b and len(a) < loop.NAME_SIZE and a.startswith("xenblock:")
    assert loop.mark_for("backend/vbd/3/51712") == "xenblock:backend/vbd/3/51712"


def _bind_one(args):
    path, mark = args
    fd = os.open(path, os.O_RDWR)
    try:
        return attach(fd, False, False, mark).node
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
            loop.detach(node, None, mark, Deadline.after(5))


def test_bind_error_names_the_device(tmp_path, monkeypatch):
    directory = os.open(str(tmp_path), os.O_RDONLY)
    try:
        with pytest.raises(HotplugError, match=r"cannot bind /dev/loop\d+"):
            attach(directory, True, False, "xenblock:test/dir")
    finally:
        os.close(directory)
