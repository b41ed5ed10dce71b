"""The kernel's word on whether an image is open anywhere else (host kernel)."""
import os

import pytest

from tests.support.fixtures import foreign_loop
from xenblock.sharing import opened_only_through


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    fd = os.open(path, os.O_RDONLY)  # as lifecycle holds it, for the image lock
    yield str(path), fd
    os.close(fd)


def test_an_image_open_only_here_is_known_to_be_bound_nowhere(image):
    path, fd = image
    assert opened_only_through(fd)
    assert opened_only_through(fd), "asking twice: the lease was given back"


@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_RDWR])
def test_any_other_open_of_the_image_means_look(image, flags):
    path, fd = image
    other = os.open(path, flags)
    try:
        assert not opened_only_through(fd)
    finally:
        os.close(other)
    assert opened_only_through(fd)


@pytest.mark.parametrize("read_only", [True, False])
def test_a_loop_device_bound_to_the_image_means_look(image, read_only):
    path, fd = image
    with foreign_loop(path, read_only):
        assert not opened_only_through(fd)
    assert opened_only_through(fd)


def test_what_takes_no_lease_means_look():
    read_end, write_end = os.pipe()
    try:
        assert not opened_only_through(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)
