import os

import pytest

from xenblock.errors import HotplugError
from xenblock.source import resolve


def image(tmp_path, size=1 << 20, mode=0o644):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(size)
    os.chmod(path, mode)
    return str(path)


def test_file_identity_is_the_inode(tmp_path):
    path = image(tmp_path)
    link = tmp_path / "link.img"
    os.link(path, link)
    assert resolve(path, True).image_id == resolve(str(link), True).image_id
    assert resolve(path, True).devnum is None


@pytest.mark.parametrize("path, words", [
    ("relative.img", "not an absolute path"),
    ("/nonexistent/xenblock/disk.img", "/nonexistent/xenblock/disk.img: no such file"),
    ("/proc", "/proc: not an image file or block device"),
])
def test_bad_paths_are_named(path, words):
    with pytest.raises(HotplugError, match=words):
        resolve(path, False)


def test_tiny_image_refused(tmp_path):
    with pytest.raises(HotplugError, match="100 bytes, smaller than one 512-byte sector"):
        resolve(image(tmp_path, size=100), False)


def test_read_only_file_refused_for_writing_only(tmp_path):
    path = image(tmp_path, mode=0o444)
    with pytest.raises(HotplugError, match=r"file is read-only \(mode 0444\); use access=r"):
        resolve(path, True)
    assert resolve(path, False).path == path


def test_block_device_identity_is_its_number():
    source = resolve("/dev/loop0", False)
    assert source.image_id == "dev:7:0"
