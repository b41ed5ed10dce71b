"""block-file: an image file through a loop device, or a block device itself.

The drop-in for Xen's `block` script: target= is the path.
"""
from .. import loop
from ..blockdev import Device
from ..errors import HotplugError
from ..source import Use, resolve


def parse(target):
    path = target.strip()
    if not path:
        raise HotplugError("empty target: give the path of an image file or block device")
    return path


def named_paths(path):
    return [path]


def check(path, request, config, opened):
    return [Use(opened.enter_context(resolve(path, request.writable)), request.writable)]


def attach(path, uses, request, build):
    source = uses[0].source
    if source.devnum is not None:
        return Device(source.path, source.devnum, "block device")
    device = build.loop_device(source.fd, read_only=not request.writable)
    mode = "read-write" if request.writable else "read-only"
    io = "direct I/O" if loop.direct_io_active(device) else "buffered I/O"
    return Device(device.node, device.devnum, f"{mode}, {io}")
