"""Loop devices through the kernel's own interface (no losetup processes).

Attaching: LOOP_CTL_GET_FREE names a free device, LOOP_CONFIGURE binds it in
one ioctl. If another process (losetup, say) binds that device first, the
kernel answers EBUSY and we ask again: no find-then-attach race.

No waiting for the device node: LOOP_CTL_GET_FREE adds a missing device
and devtmpfs creates /dev/loopN before that ioctl returns (udev only adds
links and permissions later), so the node is there to open and to publish.

Every loop device xenblock binds carries a mark in lo_file_name (readable
with LOOP_GET_STATUS64; sysfs still shows the real backing file), so a
leftover can be told from anyone else's loop device even without a record.
"""
import errno
import fcntl
import os
import struct
import time
from collections import namedtuple

from . import locks
from .blockdev import Devnum, diskseq, read_attribute
from .errors import HotplugError

LOOP_CLR_FD = 0x4C01
LOOP_GET_STATUS64 = 0x4C05
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82

LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16

# struct loop_info64 (linux/loop.h): 5 u64, 4 u32, file name, crypt name, key, 2 u64
LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
# struct loop_config: fd, block_size, loop_info64, 8 reserved u64
LOOP_CONFIG = struct.Struct(f"=2I{LOOP_INFO64.size}s8Q")
NAME_SIZE = 64
# Every mark of ours starts so (lo_file_name): what `xenblock cleanup` trusts.
MARK_PREFIX = "xenblock:"

# A guest's partition table assumes 512-byte sectors; left at 0 the kernel
# would copy a 4K drive's block size whenever the backing file is O_DIRECT.
LOGICAL_BLOCK_SIZE = 512
# How often a wait for the kernel (an unbind, a busy device) looks again.
POLL_SECONDS = 0.1


class Loop(namedtuple("Loop", "number devnum diskseq")):
    __slots__ = ()

    @property
    def node(self):
        return f"/dev/loop{self.number}"


class Status(namedtuple("Status", "backing_dev backing_ino offset size_limit read_only autoclear mark")):
    """What LOOP_GET_STATUS64 tells; backing_dev in the kernel's encoding
    (new_encode_dev), see _kernel_dev; offset and size_limit (0: to the end)
    in bytes of the backing file."""
    __slots__ = ()

    @property
    def extent(self):
        """The (start, end) byte range of the backing file the device serves."""
        return self.offset, self.offset + self.size_limit if self.size_limit else float("inf")


def mark_for(key):
    """The lo_file_name that says "xenblock's, for this backend"."""
    mark = f"{MARK_PREFIX}{key}"
    if len(mark) < NAME_SIZE:
        return mark
    import hashlib  # only for unusually long keys: keep the common path lean
    return f"{MARK_PREFIX}#" + hashlib.sha256(key.encode()).hexdigest()[:40]


def shared_mark(image_id):
    """The mark of the one read-only loop device of a base image that every
    disk built on the base shares (see find_shared)."""
    return f"{MARK_PREFIX}base:{image_id}"[: NAME_SIZE - 1]


def find_shared(st, mark):
    """The Loop of st's inode that carries the shared mark, if one is bound:
    read-only, the whole file, and not on its way out (a LOOP_CLR_FD that
    waits for its last opener arms autoclear)."""
    for node, devnum, info in backed_by(st):
        if info.mark == mark and info.read_only and not info.autoclear and info.extent == (0, float("inf")):
            return Loop(int(node.removeprefix("/dev/loop")), devnum, diskseq(devnum))
    return None


def attach(backing_fd, read_only, direct_io, mark, before_bind, lost_race, deadline, offset=0, size_limit=0):
    """Bind a free loop device to backing_fd (from byte offset on, size_limit
    bytes of it, 0: to the end); returns the Loop.

    before_bind(number) runs just before the bind is attempted (the caller
    writes its udev marker there); lost_race(number) runs when another process
    (util-linux losetup and mount -o loop take no lock of ours) bound that
    device first, before the next number is tried: the caller withdraws what
    before_bind did. xenblock's own binds are serialised by a flock on
    /dev/loop-control (microseconds each), so two of our runs never prepare
    the same free device at once.
    """
    flags = (LO_FLAGS_READ_ONLY if read_only else 0) | (LO_FLAGS_DIRECT_IO if direct_io else 0)
    info = LOOP_INFO64.pack(0, 0, 0, offset, size_limit, 0, 0, 0, flags, mark.encode()[: NAME_SIZE - 1],
                            b"", b"", 0, 0)
    config = LOOP_CONFIG.pack(backing_fd, LOGICAL_BLOCK_SIZE, info, *([0] * 8))
    control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        with locks.on_descriptor(control, deadline, "/dev/loop-control"):
            while True:
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                before_bind(number)
                if _configure(number, config):
                    devnum = Devnum(*_major_minor(number))
                    return Loop(number, devnum, diskseq(devnum))
                lost_race(number)
    finally:
        os.close(control)


def _configure(number, config):
    fd = os.open(f"/dev/loop{number}", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_CONFIGURE, config)
        return True
    except OSError as e:
        if e.errno == errno.EBUSY:
            return False  # bound by someone else since GET_FREE: ask again
        raise HotplugError(f"cannot bind /dev/loop{number}: {e.strerror}") from e
    finally:
        os.close(fd)


def _major_minor(number):
    st = os.stat(f"/dev/loop{number}")
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def status(node):
    """Status of a bound loop device; None if it is not bound or gone."""
    try:
        fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        raw = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(LOOP_INFO64.size))
    except OSError as e:
        if e.errno == errno.ENXIO:
            return None
        raise
    finally:
        os.close(fd)
    fields = LOOP_INFO64.unpack(raw)
    return Status(
        backing_dev=fields[0],
        backing_ino=fields[1],
        offset=fields[3],
        size_limit=fields[4],
        read_only=bool(fields[8] & LO_FLAGS_READ_ONLY),
        autoclear=bool(fields[8] & LO_FLAGS_AUTOCLEAR),
        mark=fields[9].rstrip(b"\0").decode(errors="replace"),
    )


def direct_io_works(fd):
    """Whether one aligned O_DIRECT read of the file at fd succeeds. The loop
    driver trusts the file system's word, and some give it falsely (overlayfs
    over tmpfs claims direct I/O, then every guest I/O fails): ask for direct
    I/O only when it works."""
    import mmap  # an aligned buffer, as O_DIRECT wants
    try:
        probe = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        with mmap.mmap(-1, mmap.PAGESIZE) as aligned:
            os.preadv(probe, [aligned], 0)
        return True
    except OSError:
        return False
    finally:
        os.close(probe)


def direct_io_active(loop):
    return read_attribute(loop.devnum, "loop", "dio") == "1"


def bound_loops():
    """(node, Devnum) of every bound loop device, found through udev's view of sysfs."""
    import pyudev  # imported here: only runs that look for loop devices pay for it
    context = pyudev.Context()
    found = []
    for device in context.list_devices(subsystem="block", sys_name="loop*"):
        if device.attributes.get("loop/backing_file") is not None and device.device_node:
            found.append((device.device_node, Devnum.of_rdev(device.device_number)))
    return found


def backed_by(st):
    """(node, Devnum, Status) of each loop device whose backing file is st's inode."""
    wanted = (_kernel_dev(st.st_dev), st.st_ino)
    found = []
    for node, devnum in bound_loops():
        info = status(node)
        if info is not None and (info.backing_dev, info.backing_ino) == wanted:
            found.append((node, devnum, info))
    return found


def _kernel_dev(dev):
    # LOOP_GET_STATUS64 encodes st_dev the kernel's way (new_encode_dev), not
    # glibc's makedev: compare like with like (Xen's own script compared a
    # decimal with a hex number here, and its sharing check never matched).
    major, minor = os.major(dev), os.minor(dev)
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def detach(node, expected_diskseq, mark, deadline):
    """Unbind node if it is still the device we bound; returns the Devnum to
    watch with wait_unbound, None if there is nothing of ours to unbind.

    diskseq is never reused, so a device number handed to someone else after
    our device went away is recognised and left alone; the mark guards kernels
    without diskseq.
    """
    info = status(node)
    if info is None or info.mark != mark:
        return None
    devnum = Devnum(*_major_minor(int(node.removeprefix("/dev/loop"))))
    if expected_diskseq is not None and diskseq(devnum) != expected_diskseq:
        return None
    _clear(node, deadline)
    return devnum


def _clear(node, deadline):
    # LOOP_CLR_FD on a device still open elsewhere only arms autoclear on
    # current kernels (see wait_unbound); older ones answer EBUSY while
    # udev/blkid probe it.
    while True:
        fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, LOOP_CLR_FD)
            return
        except OSError as e:
            if e.errno == errno.ENXIO:
                return  # already unbound
            if e.errno != errno.EBUSY or deadline.expired():
                raise HotplugError(f"cannot detach {node}: {e.strerror}") from e
        finally:
            os.close(fd)
        time.sleep(POLL_SECONDS)


def wait_unbound(devnum, expected_diskseq, deadline):
    """Whether the device unbound before deadline. After LOOP_CLR_FD the
    kernel unbinds a device only when its last opener closes it (udev and
    blkid for a moment, a dom0 mount or a process for as long as they like);
    until then it stays bound to the image, read-write if it was. Watched in
    sysfs: opening the device to ask would make us one more opener."""
    while is_bound(devnum, expected_diskseq):
        if deadline.expired():
            return False
        time.sleep(POLL_SECONDS)
    return True


def is_bound(devnum, expected_diskseq=None):
    """Whether devnum is bound (and, given a diskseq, still that binding)."""
    if read_attribute(devnum, "loop", "backing_file") is None:
        return False
    return expected_diskseq is None or diskseq(devnum) == expected_diskseq
