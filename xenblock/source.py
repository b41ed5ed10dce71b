"""What a target path names: an image file or a block device, opened once.

The path is resolved once, to one descriptor that every later check, the
image lock and the loop bind use: a path swapped meanwhile (a rename, a
symlink changed) cannot make us bind another inode than the one checked and
recorded. It is first opened with O_PATH, which opens nothing in the driver's
sense: a FIFO would block a real open forever and /dev/watchdog arms a
reboot on open. Only a regular file or a block device is then reopened
through /proc/self/fd, which names that very inode.
"""
import errno
import os
import stat
from collections import namedtuple

from .blockdev import Devnum, family, is_read_only
from .errors import HotplugError

SECTOR = 512


class Use(namedtuple("Use", "source writable extent", defaults=(None,))):
    """One image a disk uses and how: source (a Source), writable, and
    extent, the (start, end) byte range used, None for all of it. A
    copy-on-write disk reads its base (writable False) and writes its store;
    a partition disk uses one extent of its image."""
    __slots__ = ()

    def overlaps(self, extent):
        """Whether this use shares bytes with extent (None: the whole image)."""
        if self.extent is None or extent is None:
            return True
        return self.extent[0] < extent[1] and extent[0] < self.extent[1]


class Source:
    """path: as the target gave it (for messages); fd: the open descriptor
    (read-write only for an image file the guest may write); stat: its fstat;
    devnum: set for a block device, None for a file. Close it when done."""

    def __init__(self, path, fd, st, devnum):
        self.path, self.fd, self.stat, self.devnum = path, fd, st, devnum

    @classmethod
    def of_descriptor(cls, path, fd):
        """The Source of a file or block device already open on fd, opened
        as a caller needs it (block-snapshot's CoW file: O_NOFOLLOW, read-
        write). It owns fd from now on: closed with it."""
        st = os.fstat(fd)
        return cls(path, fd, st, Devnum.of_rdev(st.st_rdev) if stat.S_ISBLK(st.st_mode) else None)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        os.close(self.fd)

    @property
    def image_id(self):
        """Equal for two paths that name the same data (links, bind mounts)."""
        if self.devnum is not None:
            return f"dev:{self.devnum}"
        return f"file:{self.stat.st_dev}:{self.stat.st_ino}"

    def overlapping_ids(self):
        """The image ids whose users share sectors with this one: a block
        device's whole disk or partitions too."""
        if self.devnum is None:
            return {self.image_id}
        return {f"dev:{devnum}" for devnum in family(self.devnum)}

    def reopen(self, flags):
        """Another descriptor of the same inode (e.g. with O_DIRECT)."""
        return os.open(f"/proc/self/fd/{self.fd}", flags | os.O_CLOEXEC)


class Remote:
    """A network export (block-nbd): no file of dom0's, so no descriptor
    and no device number; image_id names it by the server's address and the
    export's name, and only this host's records know who uses it."""
    fd = stat = devnum = None

    def __init__(self, path, image_id):
        self.path, self.image_id = path, image_id

    def overlapping_ids(self):
        return {self.image_id}


def resolve(path, writable):
    """The Source at path, refusing what cannot serve the request."""
    if not os.path.isabs(path):
        raise HotplugError(f"{path!r} is not an absolute path")
    try:
        handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HotplugError(f"{path}: no such file or block device") from None
    except OSError as e:
        raise HotplugError(f"{path}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(handle)
        devnum, flags = _checked(path, st, writable)
        return Source(path, _reopen(handle, flags, path), st, devnum)
    finally:
        os.close(handle)


def _checked(path, st, writable):
    """(devnum or None, open flags) for what st describes, or an error."""
    if stat.S_ISBLK(st.st_mode):
        devnum = Devnum.of_rdev(st.st_rdev)
        if writable and is_read_only(devnum):
            raise HotplugError(f"{path}: block device is read-only; use access=r")
        # Read-only whatever the mode: blkback opens the device itself, and
        # closing a block device opened for writing makes udev probe it.
        return devnum, os.O_RDONLY
    if not stat.S_ISREG(st.st_mode):
        raise HotplugError(f"{path}: not an image file or block device")
    if st.st_size < SECTOR:
        raise HotplugError(f"{path}: image is {st.st_size} bytes, smaller than one 512-byte sector")
    if writable and not st.st_mode & 0o222:
        # root could write it anyway; the read-only mode is the owner's word.
        raise HotplugError(
            f"{path}: file is read-only (mode {stat.S_IMODE(st.st_mode):04o}); use access=r or make it writable")
    return None, os.O_RDWR if writable else os.O_RDONLY


def _reopen(handle, flags, path):
    try:
        return os.open(f"/proc/self/fd/{handle}", flags | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EROFS:
            raise HotplugError(f"{path}: on a read-only file system; use access=r") from None
        writing = "read-write" if flags & os.O_RDWR else "read-only"
        raise HotplugError(f"{path}: cannot open {writing}: {e.strerror}") from None
