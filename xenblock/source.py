"""What a target path names: an image file or a block device, and its identity."""
import os
import stat
from collections import namedtuple

from .blockdev import Devnum, is_read_only
from .errors import HotplugError

SECTOR = 512


class Source(namedtuple("Source", "path stat devnum")):
    """stat: os.stat_result of path; devnum: set for a block device, None
    for a file."""
    __slots__ = ()

    @property
    def image_id(self):
        """Equal for two paths that name the same data (links, bind mounts)."""
        if self.devnum is not None:
            return f"dev:{self.devnum}"
        return f"file:{self.stat.st_dev}:{self.stat.st_ino}"


def resolve(path, writable):
    """The Source at path, refusing what cannot serve the request."""
    if not os.path.isabs(path):
        raise HotplugError(f"{path!r} is not an absolute path")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise HotplugError(f"{path}: no such file or block device") from None
    except OSError as e:
        raise HotplugError(f"{path}: cannot stat: {e.strerror}") from None
    if stat.S_ISBLK(st.st_mode):
        devnum = Devnum.of_rdev(st.st_rdev)
        if writable and is_read_only(devnum):
            raise HotplugError(f"{path}: block device is read-only; use access=r")
        return Source(path, st, devnum)
    if not stat.S_ISREG(st.st_mode):
        raise HotplugError(f"{path}: not an image file or block device")
    if st.st_size < SECTOR:
        raise HotplugError(f"{path}: image is {st.st_size} bytes, smaller than one 512-byte sector")
    if writable and not st.st_mode & 0o222:
        # root could write it anyway; the read-only mode is the owner's word.
        raise HotplugError(
            f"{path}: file is read-only (mode {stat.S_IMODE(st.st_mode):04o}); use access=r or make it writable")
    return Source(path, st, None)
