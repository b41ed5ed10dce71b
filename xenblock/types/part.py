"""block-part: one partition of a partitioned image, as a whole disk.

target=<image> <N>: the image (a file or a block device) and the number of
the partition, as Linux numbers it (imgN after `losetup -P`: MBR primaries
1-4, logicals from 5, a GPT partition its entry's index + 1; see
xenblock.partitions, which reads the table). The guest gets exactly that
partition's bytes: its own partition table, if it writes one, starts at
the partition's first sector.

The device is a loop device over the image with an offset and a size limit
(LOOP_CONFIGURE takes both), not a device-mapper linear table over a loop
device of the whole image: one kernel object instead of two, no
device-mapper needed, and the sharing check reads the byte range back from
the loop device itself (loop.Status.extent), so even a loop device whose
record is lost is compared by the bytes it serves. The disk's record names
the image with that byte range (source.Use.extent): two guests writing two
different partitions of one image do not conflict; one partition twice,
crafted entries that overlap, or the whole image (block-file) and one of
its partitions do.

The table is read once, in check, through the image's one descriptor (see
source.py); attach binds exactly the range check found and recorded.
"""
import os
import re
from dataclasses import dataclass

from .. import loop, partitions
from ..blockdev import Device, size_of
from ..errors import HotplugError
from ..source import Use, resolve

USAGE = "give the image's path, then the partition number (such as '/srv/disk.img 1')"


@dataclass
class Spec:
    """path and number from the target; partition, the partitions.Extent
    that check found, for attach (which must bind what check recorded)."""
    path: str
    number: int
    partition: partitions.Extent = None


def parse(target):
    words = target.strip().rsplit(None, 1)
    if not words:
        raise HotplugError(f"empty target: {USAGE}")
    if len(words) == 1:
        raise HotplugError(f"target {words[0]!r} names no partition: {USAGE}")
    path, word = words
    if not re.fullmatch(r"[+-]?[0-9]+", word, re.ASCII):
        raise HotplugError(f"target {target.strip()!r}: partition number {word!r} is not a number: {USAGE}")
    digits = word.lstrip("+-").lstrip("0")
    if word.startswith("-") or not digits:
        raise HotplugError(f"target {target.strip()!r}: partition number {word}: partitions are numbered "
                           "from 1")
    if len(digits) > 3 or int(digits) > partitions.MAX_PARTITION_NUMBER:
        raise HotplugError(f"target {target.strip()!r}: partition number {word}: Linux numbers partitions "
                           f"only up to {partitions.MAX_PARTITION_NUMBER}")
    return Spec(path, int(digits))


def named_paths(spec):
    return [spec.path]


def check(spec, request, config, opened):
    source = opened.enter_context(resolve(spec.path, request.writable))
    size = _image_size(source)
    try:
        spec.partition = partitions.find(source.fd, size, spec.number)
    except HotplugError as e:
        raise HotplugError(f"{spec.path}: {e}") from None
    return [Use(source, request.writable, (spec.partition.start, spec.partition.end))]


def attach(spec, uses, request, build):
    source, partition = uses[0].source, spec.partition
    backing = source.fd
    if source.devnum is not None and request.writable:
        # source.py opens a block device read-only (blkback opens a device it
        # serves itself); a loop device over it is read-only unless its
        # backing descriptor is writable. The loop device keeps its own
        # reference: this one is closed once bound.
        backing = _reopen_writable(source)
    try:
        device = build.loop_device(backing, read_only=not request.writable,
                                   offset=partition.start, size_limit=partition.length)
    finally:
        if backing != source.fd:
            os.close(backing)
    mode = "read-write" if request.writable else "read-only"
    io = "direct I/O" if loop.direct_io_active(device) else "buffered I/O"
    return Device(device.node, device.devnum,
                  f"{partition.label}: {partition.length} bytes from byte {partition.start}, {mode}, {io}")


def _image_size(source):
    if source.devnum is None:
        return source.stat.st_size
    try:
        return size_of(source.fd)
    except OSError as e:
        raise HotplugError(f"{source.path}: cannot read the block device's size: {e.strerror}") from None


def _reopen_writable(source):
    try:
        return source.reopen(os.O_RDWR)
    except OSError as e:
        raise HotplugError(f"{source.path}: cannot open read-write: {e.strerror}") from None
