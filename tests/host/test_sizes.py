"""xenblock.sizes: sizes as people write and read them."""
import os

import pytest

from xenblock import sizes


@pytest.mark.parametrize("text, value", [("512", 512 << 20), ("4G", 4 << 30), ("64k", 64 << 10),
                                         ("2GiB", 2 << 30), ("1TB", 1 << 40), (" 8M ", 8 << 20)])
def test_parse(text, value):
    assert sizes.parse(text) == value


@pytest.mark.parametrize("text, reason", [("0", "zero"), ("4X", "not a size"), ("G", "not a size"),
                                          ("-1G", "not a size"), ("1.5G", "not a size")])
def test_parse_refuses(text, reason):
    with pytest.raises(ValueError, match=reason):
        sizes.parse(text)


@pytest.mark.parametrize("value, exact, rounded", [
    (4 << 30, "4G", "4G"),
    (3 << 20, "3M", "3M"),
    (3 * (1 << 20) + (1 << 19), "3584K", "3.5M"),
    (981 * (1 << 20) + 12345, "981.0M", "981M"),
    (1000, "1000 bytes", "1000 bytes"),
])
def test_text_exact_for_what_was_asked_rounded_for_what_was_measured(value, exact, rounded):
    assert sizes.text(value) == exact
    assert sizes.text(value, rounded=True) == rounded


def test_free_space_of_a_path_and_of_an_o_path_descriptor(tmp_path):
    st = os.statvfs(tmp_path)
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        by_fd = sizes.free_space(fd)
    finally:
        os.close(fd)
    assert by_fd == sizes.free_space(str(tmp_path))
    assert abs(by_fd - st.f_bavail * st.f_frsize) <= (1 << 20)  # the file system may change meanwhile
    assert by_fd < st.f_blocks * st.f_frsize
