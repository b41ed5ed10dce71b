"""block-file: an image file through a loop device, or a block device itself.

The drop-in for Xen's `block` script: target= is the path.
"""
import mmap
import os

from .. import loop
from ..blockdev import Device
from ..errors import HotplugError
from ..source import resolve


def parse(target):
    path = target.strip()
    if not path:
        raise HotplugError("empty target: give the path of an image file or block device")
    return path


def check(path, request):
    return resolve(path, request.writable)


def attach(source, request, build):
    if source.devnum is not None:
        return Device(source.path, source.devnum, "block device")
    direct_io = build.config.direct_io and _direct_io_works(source)
    device = build.loop_device(source.fd, read_only=not request.writable, direct_io=direct_io)
    mode = "read-write" if request.writable else "read-only"
    io = "direct I/O" if loop.direct_io_active(device) else "buffered I/O"
    return Device(device.node, device.devnum, f"{mode}, {io}")


def _direct_io_works(source):
    """One aligned O_DIRECT read of the backing file. The loop driver trusts
    the file system's word, and some give it falsely (overlayfs over tmpfs
    claims direct I/O, then every guest I/O fails): ask only when it works."""
    try:
        fd = source.reopen(os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    try:
        with mmap.mmap(-1, mmap.PAGESIZE) as aligned:  # O_DIRECT wants an aligned buffer
            os.preadv(fd, [aligned], 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
