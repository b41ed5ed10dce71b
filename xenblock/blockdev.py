"""Facts about block devices, read from sysfs and /proc (no processes)."""
import errno
import os
from collections import namedtuple

from .errors import HotplugError

SYS_DEV_BLOCK = "/sys/dev/block"
XEN_BACKEND_DEVICES = "/sys/bus/xen-backend/devices"
BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t)


class Devnum(namedtuple("Devnum", "major minor")):
    __slots__ = ()

    @classmethod
    def of_rdev(cls, rdev):
        return cls(os.major(rdev), os.minor(rdev))

    @classmethod
    def parse(cls, text, base=10):
        major, minor = text.strip().split(":")
        return cls(int(major, base), int(minor, base))

    def __str__(self):
        return f"{self.major}:{self.minor}"

    def xen_hex(self):
        """The form physical-device takes in xenstore ("%x:%x")."""
        return f"{self.major:x}:{self.minor:x}"

    def sysfs(self, *parts):
        return os.path.join(SYS_DEV_BLOCK, str(self), *parts)


# What blkback is told to serve (physical-device and its path); detail is
# for the log line.
Device = namedtuple("Device", "path devnum detail", defaults=("",))


def read_attribute(devnum, *parts):
    return read_text(devnum.sysfs(*parts))


def read_text(path):
    """A sysfs, /proc or /run file's text, stripped; None if it cannot be
    read (gone with its device, or never there)."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def size_of(fd):
    """The size in bytes of the block device open on fd (BLKGETSIZE64)."""
    import fcntl
    import struct
    raw = fcntl.ioctl(fd, BLKGETSIZE64, bytes(8))
    return struct.unpack("=Q", raw)[0]


def diskseq(devnum):
    """The kernel's never-reused sequence number of the disk (Linux >= 5.15)."""
    value = read_attribute(devnum, "diskseq")
    return int(value) if value else None


def is_read_only(devnum):
    return read_attribute(devnum, "ro") == "1"


def family(devnum):
    """devnum with the devices that share its sectors: a whole disk's
    partitions, or a partition's whole disk. A writer of one conflicts with
    any user of the others."""
    found = [devnum]
    if os.path.exists(devnum.sysfs("partition")):
        whole = os.path.dirname(os.path.realpath(devnum.sysfs()))
        number = read_text(os.path.join(whole, "dev"))
        return found + [Devnum.parse(number)] if number else found
    for name in listdir(devnum.sysfs()):
        if os.path.exists(devnum.sysfs(name, "partition")):
            number = read_attribute(devnum, name, "dev")
            if number:
                found.append(Devnum.parse(number))
    return found


def mounts(devnums):
    """(mount point, read-write?) for each mount of one of devnums in dom0."""
    wanted = {str(d) for d in devnums}
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # mountinfo: id parent major:minor root mount-point options ...
            if fields[2] in wanted:
                found.append((fields[4], "rw" in fields[5].split(",")))
    return found


def holders(devnum):
    """Kernel devices stacked on devnum (dm, md, ...)."""
    return sorted(listdir(devnum.sysfs("holders")))


def vbd_users(devnum):
    """(domid, devid, writable) of every blkback device serving devnum.

    blkback publishes physical_device ("%x:%x") and mode for each vbd it has
    opened, whichever script set it up; reading sysfs spawns nothing and costs
    no xenstore request per vbd (Xen's own script pays one process per vbd).
    """
    found = []
    for name in listdir(XEN_BACKEND_DEVICES):
        if not name.startswith("vbd-"):
            continue
        directory = os.path.join(XEN_BACKEND_DEVICES, name)
        try:
            with open(os.path.join(directory, "physical_device")) as f:
                if Devnum.parse(f.read(), base=16) != devnum:
                    continue
            with open(os.path.join(directory, "mode")) as f:
                writable = "w" in f.read()
        except (OSError, ValueError):
            continue  # torn down meanwhile (ENOENT, or ENODEV mid-removal), or not connected yet
        _, domid, devid = name.split("-")
        found.append((int(domid), int(devid), writable))
    return found


def claimed_exclusively(fd, path):
    """Whether dom0 holds the device open on fd exclusively (mounted,
    dm/md/LVM member, swap). An O_EXCL open of a block device fails with
    EBUSY exactly then, for the device and, for a whole disk, for any of its
    partitions. Reopened through /proc/self/fd: the device checked is the
    one resolved, whatever path names now."""
    try:
        claim = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:
            return True
        raise HotplugError(f"{path}: cannot open: {e.strerror}") from e
    os.close(claim)
    return False


def listdir(path):
    """Names in a sysfs or /proc directory; none if it is gone (a device or
    process that went meanwhile). glob would cost the hotplug path the import
    of fnmatch and re."""
    try:
        return os.listdir(path)
    except OSError:
        return []
