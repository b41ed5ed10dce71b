"""Device-mapper devices through the kernel's ioctl interface (linux/dm-ioctl.h).

No dmsetup: the hotplug path starts no process beyond its interpreter, and
dmsetup (libdevmapper) waits after every create, resume and remove until
udev has run its rules for the device and released a SysV semaphore, the
"udev cookie". Where udev is not running, cannot see our IPC namespace or
has its queue stopped, that wait does not end before libxl kills the script.
Here nothing ever waits for udev: the udev flags travel in the uevent itself
(UDEV_COOKIE), and a device is used through its number and /dev/dm-N, which
devtmpfs creates inside the ioctl that registers the disk; /dev/mapper/NAME
is udev's symlink, made some time later, and nothing here relies on it.

Every call is one ioctl on /dev/mapper/control with one buffer: a struct
dm_ioctl (312 bytes) and after it, at data_start, the call's data (a table to
load) or room for the kernel's reply (a status, a device list). The kernel
looks a device up by exactly one of name, uuid or number (it refuses two);
we always use the uuid, and every device we create has one starting with
UUID_PREFIX, so nothing here can change a device that is not ours. The udev
rule etc/udev/rules.d/59-xenblock.rules recognises our devices by it too.
"""
import errno
import fcntl
import os
import struct
import time
from collections import namedtuple

from .blockdev import Devnum, holders
from .errors import HotplugError, one_line

CONTROL = "/dev/mapper/control"
UUID_PREFIX = "XENBLOCK-"

# struct dm_ioctl: version[3], data_size, data_start, target_count,
# open_count (signed), flags, event_nr, padding, dev, name[128], uuid[129],
# data[7] (the padding that makes it 312 bytes, a multiple of 8).
HEADER = struct.Struct("=3I 3I i 3I Q 128s 129s 7s")
NAME_LEN, UUID_LEN = 128, 129  # with the terminating NUL
# struct dm_target_spec: sector_start, length, status, next, target_type[16];
# the target's parameters follow it as a NUL-terminated string.
TARGET_SPEC = struct.Struct("=QQiI16s")
TYPE_LEN = 16
# struct dm_name_list: dev, next; the name follows it (see parse_names).
NAME_LIST = struct.Struct("=QI")
# Records after the header start 8-aligned (the kernel's ALIGN_MASK + 1).
ALIGN = 8
# The interface version we speak. The kernel refuses another major or a
# higher minor than its own, and answers every call with its own version;
# nothing we use needs the client to announce a minor.
VERSION = (4, 0, 0)


def _iowr(nr):
    # _IOWR(DM_IOCTL = 0xfd, nr, struct dm_ioctl): direction read|write (3)
    # in bits 30-31, the struct's size in bits 16-29, type, then number.
    return (3 << 30) | (HEADER.size << 16) | (0xFD << 8) | nr


DM_VERSION = _iowr(0)
DM_LIST_DEVICES = _iowr(2)
DM_DEV_CREATE = _iowr(3)
DM_DEV_REMOVE = _iowr(4)
DM_DEV_SUSPEND = _iowr(6)  # suspend with SUSPEND_FLAG, resume without
DM_DEV_STATUS = _iowr(7)
DM_TABLE_LOAD = _iowr(9)
DM_TABLE_STATUS = _iowr(12)

READONLY_FLAG = 1 << 0
SUSPEND_FLAG = 1 << 1
STATUS_TABLE_FLAG = 1 << 4  # TABLE_STATUS returns the table, not the status
ACTIVE_PRESENT_FLAG = 1 << 5
BUFFER_FULL_FLAG = 1 << 8
UUID_FLAG = 1 << 14  # LIST_DEVICES: with each device's uuid (kernel >= 4.45)
NAME_LIST_HAS_UUID = 1
NAME_LIST_DOESNT_HAVE_UUID = 2

# udev flags, as libdevmapper defines them (libdevmapper.h) and dmsetup's
# "udevflags" command decodes them for the rules.
UDEV_DISABLE_SUBSYSTEM_RULES = 0x0002  # LVM, multipath, cryptsetup rules
UDEV_DISABLE_DISK_RULES = 0x0004  # blkid and /dev/disk/by-* (13-dm-disk, 60-persistent-storage-dm)
UDEV_DISABLE_OTHER_RULES = 0x0008  # everyone else's: 69-lvm pvscan, udisks, ...
UDEV_PRIMARY_SOURCE = 0x0040  # "a genuine event from a dm tool", see below
UDEV_FLAGS_SHIFT = 16
# What event_nr carries into DM_DEV_CREATE, the resume and DM_DEV_REMOVE.
#
# The kernel copies the event_nr of a resume (DM_DEV_SUSPEND), DM_DEV_REMOVE
# or DM_DEV_RENAME into the uevent it sends as DM_COOKIE=<decimal>, when it is
# not 0. The dm rules (55-dm.rules on Debian, 10-dm.rules upstream) run
# `dmsetup udevflags $env{DM_COOKIE}`, which turns each set bit of the upper
# 16 bits into DM_UDEV_<NAME>_FLAG=1, before any rule that probes the device
# reads those flags. The lower 16 bits are the key of the semaphore a
# libdevmapper caller waits on and 95-dm-notify.rules releases (`dmsetup
# udevcomplete`); 0 there means "flags only, nobody waits", which is what
# libdevmapper itself sends when its udev sync is off, and what udevcomplete
# takes as done at once. So no semaphore exists and nothing can hang on one.
#
# libdevmapper adds PRIMARY_SOURCE to every resume, remove and rename: without
# it 55-dm.rules takes the event for a spurious one (`udevadm trigger`, an
# inotify watch) and reads the flags back from udev's database instead of
# the cookie. The first event of a new device, "add", comes at its first
# table load, which carries no cookie; the rules treat such an "add" as not
# yet active and disable every rule for it themselves. DM_DEV_CREATE ignores
# event_nr; it goes there too, as libdevmapper sends it.
#
# Not DISABLE_DM_RULES: /dev/mapper/NAME stays, for administrators.
UDEV_COOKIE = (UDEV_DISABLE_SUBSYSTEM_RULES | UDEV_DISABLE_DISK_RULES | UDEV_DISABLE_OTHER_RULES
               | UDEV_PRIMARY_SOURCE) << UDEV_FLAGS_SHIFT

# Room for a reply at first (libdevmapper's too), doubled while the kernel
# answers BUFFER_FULL, up to a bound no real list or status comes near.
REPLY_SIZE = 16 << 10
MAX_REPLY_SIZE = 64 << 20
# How often a busy remove is tried again.
POLL_SECONDS = 0.1

# One target of a table, in 512-byte sectors; params is the target's
# parameter string on load, its status or table string when read back.
Target = namedtuple("Target", "start length type params")
# What DM_DEV_STATUS tells of a device.
Info = namedtuple("Info", "name uuid devnum open_count suspended read_only live_table event_nr")
# One device of DM_LIST_DEVICES: uuid "" if it has none, None if the kernel
# (older than interface 4.45) did not say.
Listed = namedtuple("Listed", "name uuid devnum")
# The header fields of a reply.
Header = namedtuple("Header", "version data_size data_start target_count open_count flags event_nr dev name uuid")


class DeviceMapperError(HotplugError):
    """An ioctl failed: the message names the operation and the device;
    errno is the kernel's answer (ENXIO: no such device, EBUSY: open)."""

    def __init__(self, message, errno_):
        super().__init__(message)
        self.errno = errno_


class SnapshotUsage(namedtuple("SnapshotUsage", "allocated total metadata problem")):
    """A snapshot target's status: sectors of its store in use (data and
    metadata), the store's size, sectors of metadata; or, with no numbers,
    the kernel's word for its problem: "Invalid" (the store filled up or
    failed, the snapshot is dead), "Overflow", "Merge failed", "Unknown"."""
    __slots__ = ()

    @property
    def fill(self):
        """Fraction of the store in use; None if the kernel gave no numbers."""
        return self.allocated / self.total if self.total else None


class PoolUsage(namedtuple("PoolUsage", "data data_total metadata metadata_total mode problem")):
    """A thin-pool target's status: data and metadata blocks in use and in
    all, and its mode ("rw"; "out_of_data_space" when writes wait or fail
    for want of room, "ro" after a metadata failure); or, with no numbers,
    the kernel's word for its problem ("Fail", "Error")."""
    __slots__ = ()

    @property
    def data_fill(self):
        return self.data / self.data_total if self.data_total else None

    @property
    def metadata_fill(self):
        return self.metadata / self.metadata_total if self.metadata_total else None


# ---------------------------------------------------------------- the devices

def version():
    """The kernel's device-mapper interface version, (major, minor, patch)."""
    return _call(DM_VERSION, pack_request(), "read the interface version").version


def create(name, uuid, targets, deadline, read_only=False):
    """Create device name with uuid (starting with UUID_PREFIX), load
    targets and make them live; returns the device's Devnum. Its node is
    node(devnum), there already (devtmpfs); the udev flags keep every probe
    off it (see UDEV_COOKIE).

    read_only: the table opens its devices read-only (a base image's
    read-only loop device) and the device is read-only.

    All or nothing: if the load or the resume fails, the device is removed
    again (within deadline) and the error raised. If DM_DEV_CREATE itself
    fails (a device with that name or uuid exists), nothing is touched.
    """
    _check_ours(uuid)
    table = pack_targets(targets)  # before anything exists: a bad target leaves nothing
    try:
        header = _call(DM_DEV_CREATE, pack_request(name=name, uuid=uuid, event_nr=UDEV_COOKIE),
                       f"create {one_line(name)} ({uuid})")
    except DeviceMapperError as e:
        if e.errno == errno.EBUSY:
            raise DeviceMapperError(f"{e} (a device with that name or uuid exists)", e.errno) from e
        raise
    try:
        _load(uuid, table, len(targets), read_only)
        resume(uuid)
    except HotplugError as e:
        try:
            remove(uuid, deadline)
        except HotplugError as undo:
            raise HotplugError(f"{e}; and the half-made device is left: {undo}") from e
        raise
    return header.dev


def load(uuid, targets, read_only=False):
    """Load targets as the inactive table of uuid; resume() makes it live
    (a live device: suspend() first to switch at a quiet moment)."""
    _load(uuid, pack_targets(targets), len(targets), read_only)


def _load(uuid, table, count, read_only):
    # The table's mode: without READONLY_FLAG the kernel opens every device
    # of the table for writing, and the device itself is writable.
    request = pack_request(uuid=uuid, flags=READONLY_FLAG if read_only else 0, data=table, target_count=count)
    _call(DM_TABLE_LOAD, request, f"load table of {uuid}")


def suspend(uuid):
    """Suspend uuid: returns once its in-flight I/O is done (a file system
    mounted on it, none on a guest disk in dom0, is frozen first); new I/O
    waits until resume()."""
    _call(DM_DEV_SUSPEND, pack_request(uuid=uuid, flags=SUSPEND_FLAG), f"suspend {uuid}")


def resume(uuid):
    """Make the loaded table live, if any, and let I/O through. The uevent
    ("change") carries the udev flags."""
    _call(DM_DEV_SUSPEND, pack_request(uuid=uuid, event_nr=UDEV_COOKIE), f"resume {uuid}")


def remove(uuid, deadline):
    """Remove device uuid (ours: UUID_PREFIX); True if removed, False if
    there was none.

    The kernel refuses (EBUSY) while anything holds the device open: udev or
    blkid for a moment, a dom0 process or a device stacked on it for as long
    as they like. That is retried until deadline, then raised with how many
    hold it. No deferred removal (DM_DEFERRED_REMOVE): the device would stay,
    still serving its opener, while we reported it gone.
    """
    _check_ours(uuid)
    while True:
        try:
            _call(DM_DEV_REMOVE, pack_request(uuid=uuid, event_nr=UDEV_COOKIE), f"remove {uuid}")
            return True
        except DeviceMapperError as e:
            # ENOENT: no control node, so no device-mapper and no device.
            if e.errno in (errno.ENXIO, errno.ENOENT):
                return False
            if e.errno != errno.EBUSY or deadline.expired():
                raise DeviceMapperError(f"{e}{_users(uuid)}", e.errno) from e
        time.sleep(min(POLL_SECONDS, deadline.remaining()))


def _users(uuid):
    found = info(uuid)
    if found is None:
        return ""
    stacked = holders(found.devnum)
    return f" (open {found.open_count} times{'; held by ' + ', '.join(stacked) if stacked else ''})"


def info(uuid):
    """Info of device uuid; None if there is none."""
    return _info(f"read the state of {uuid}", uuid=uuid)


def _info(what, **lookup):
    try:
        header = _call(DM_DEV_STATUS, pack_request(**lookup), what)
    except DeviceMapperError as e:
        if e.errno == errno.ENXIO:
            return None
        raise
    return Info(header.name, header.uuid, header.dev, header.open_count, bool(header.flags & SUSPEND_FLAG),
                bool(header.flags & READONLY_FLAG), bool(header.flags & ACTIVE_PRESENT_FLAG), header.event_nr)


def status(uuid):
    """The live table's targets with each one's status string (a snapshot's
    "allocated/total metadata", see snapshot_usage); None if no such device."""
    return _targets(uuid, 0, f"read status of {uuid}")


def table(uuid):
    """The live table's targets with their parameters as the kernel holds
    them (devices as major:minor); None if no such device."""
    return _targets(uuid, STATUS_TABLE_FLAG, f"read table of {uuid}")


def _targets(uuid, flags, what):
    try:
        header, reply = _call_with_reply(DM_TABLE_STATUS, what, uuid=uuid, flags=flags)
    except DeviceMapperError as e:
        if e.errno == errno.ENXIO:
            return None
        raise
    return parse_targets(reply, header)


def list_devices():
    """Every device-mapper device (anyone's), as Listed; ours are those
    whose uuid starts with UUID_PREFIX."""
    header, reply = _call_with_reply(DM_LIST_DEVICES, "list devices", flags=UUID_FLAG)
    found = []
    for device in parse_names(reply, header):
        if device.uuid is None:  # a kernel before 4.45: ask the device
            known = _info(f"read the state of {device.name}", name=device.name)
            if known is None:
                continue  # removed meanwhile
            device = device._replace(uuid=known.uuid)
        found.append(device)
    return found


def ours():
    """Every device-mapper device of xenblock's (uuid starting UUID_PREFIX), as Listed."""
    return [device for device in list_devices() if device.uuid.startswith(UUID_PREFIX)]


def snapshot_usage(text):
    """SnapshotUsage from a snapshot target's status string."""
    try:
        fraction, metadata = text.split()
        allocated, total = fraction.split("/")
        return SnapshotUsage(int(allocated), int(total), int(metadata), None)
    except ValueError:
        return SnapshotUsage(None, None, None, text.strip())


def pool_usage(text):
    """PoolUsage from a thin-pool target's status string: "<transaction>
    <metadata used>/<total> <data used>/<total> <held root> <mode> ..."."""
    try:
        _, metadata, data, _, mode, *_ = text.split()
        (metadata, metadata_total), (data, data_total) = (map(int, pair.split("/")) for pair in (metadata, data))
        return PoolUsage(data, data_total, metadata, metadata_total, mode, None)
    except ValueError:
        return PoolUsage(None, None, None, None, None, text.strip())


def names_for(key):
    """(name, uuid) of the device-mapper device of the disk whose backend is
    key: readable in `dmsetup ls` ("/" becomes ".", which xenstore paths
    never contain, so two keys never share a name), a digest of the key
    where it would not fit."""
    readable = key.replace("/", ".")
    if len(UUID_PREFIX) + len(readable) >= NAME_LEN:
        import hashlib  # only for unusually long keys
        readable = "#" + hashlib.sha256(key.encode()).hexdigest()
    return f"xenblock-{readable}", f"{UUID_PREFIX}{readable}"


def node(devnum):
    """The device's node, made by devtmpfs: dm names its disks dm-<minor>."""
    return f"/dev/dm-{devnum.minor}"


def _check_ours(uuid):
    if not uuid.startswith(UUID_PREFIX):
        raise ValueError(f"not a xenblock device-mapper uuid: {uuid!r}")


# ---------------------------------------------------------------- the ioctls

def _ioctl(command, buffer):
    """One ioctl on the control node; the kernel's reply lands in buffer."""
    try:
        fd = os.open(CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise DeviceMapperError(f"device-mapper: cannot open {CONTROL}: {e.strerror}"
                                " (is the dm_mod kernel module loaded?)", e.errno) from e
    try:
        fcntl.ioctl(fd, command, buffer)
    finally:
        os.close(fd)


def _call(command, buffer, what):
    """Header of the reply to command; an error names what was done."""
    try:
        _ioctl(command, buffer)
    except OSError as e:
        raise DeviceMapperError(f"device-mapper: cannot {what}: {os.strerror(e.errno)}", e.errno) from e
    return unpack_header(buffer)


def _call_with_reply(command, what, **fields):
    """(header, buffer) of a call whose reply must fit the buffer: the
    kernel sets BUFFER_FULL_FLAG (and no error) when it does not, and the
    call is repeated with twice the room."""
    size = REPLY_SIZE
    while True:
        buffer = pack_request(room=size, **fields)
        header = _call(command, buffer, what)
        if not header.flags & BUFFER_FULL_FLAG:
            return header, buffer
        if size >= MAX_REPLY_SIZE:
            raise DeviceMapperError(f"device-mapper: cannot {what}: the reply does not fit in {size} bytes",
                                    errno.ENOBUFS)
        size *= 2


# ---------------------------------------------------------------- the wire format

def pack_request(name="", uuid="", flags=0, event_nr=0, data=b"", target_count=0, room=0):
    """A dm_ioctl buffer (a bytearray: the kernel writes its reply into it):
    the header, data at data_start, room bytes after the header for a
    reply. data_size tells the kernel the whole length: what it may read
    and write."""
    name_bytes, uuid_bytes = name.encode(), uuid.encode()
    # The kernel needs the terminating NUL, and struct would cut silently.
    if len(name_bytes) >= NAME_LEN or len(uuid_bytes) >= UUID_LEN:
        raise ValueError(f"device-mapper name or uuid too long: {name!r} {uuid!r}")
    size = HEADER.size + max(len(data), room)
    buffer = bytearray(size)
    HEADER.pack_into(buffer, 0, *VERSION, size, HEADER.size, target_count, 0, flags, event_nr, 0, 0,
                     name_bytes, uuid_bytes, b"")
    buffer[HEADER.size:HEADER.size + len(data)] = data
    return buffer


def unpack_header(buffer):
    fields = HEADER.unpack_from(buffer)
    # fields[9] is the padding, fields[13] the header's own trailing padding.
    return Header(fields[0:3], *fields[3:9], decode_dev(fields[10]), _text(fields[11]), _text(fields[12]))


def pack_targets(targets):
    """The dm_target_spec records of a table load. Each is followed by its
    parameters, NUL-terminated and padded so that the next record starts
    8-aligned; in a load, next is the offset from this record to the next."""
    packed = bytearray()
    for target in targets:
        kind, params = target.type.encode(), target.params.encode()
        if not 0 < len(kind) < TYPE_LEN or b"\0" in params:
            raise ValueError(f"bad device-mapper target: {target!r}")
        params += bytes(ALIGN - len(params) % ALIGN)  # the NUL and the padding
        packed += TARGET_SPEC.pack(target.start, target.length, 0, TARGET_SPEC.size + len(params), kind)
        packed += params
    return bytes(packed)


def parse_targets(buffer, header):
    """The targets of a DM_TABLE_STATUS reply. Unlike in a load, a reply's
    next is the offset from the first record (at data_start), not from the
    current one."""
    found = []
    offset = 0
    for _ in range(header.target_count):
        at = header.data_start + offset
        start, length, _status, offset, kind = TARGET_SPEC.unpack_from(buffer, at)
        found.append(Target(start, length, _text(kind), _string_at(buffer, at + TARGET_SPEC.size, header.data_size)))
    return found


def parse_names(buffer, header):
    """The devices of a DM_LIST_DEVICES reply, as Listed.

    Each record: dev, next (offset from this record to the next; 0 on the
    last), the name; then, 8-aligned, event_nr and flags (interface 4.38
    and later) and, if flags say HAS_UUID, the uuid, 8-aligned again. A
    kernel older than 4.45 ignores UUID_FLAG and leaves flags 0: uuid None.
    An empty list is a single record with dev 0.
    """
    at, end = header.data_start, header.data_size
    found = []
    while at + NAME_LIST.size <= end:
        dev, following = NAME_LIST.unpack_from(buffer, at)
        if dev == 0:
            break
        name_end = buffer.index(b"\0", at + NAME_LIST.size, end)
        uuid = None
        if header.version >= (4, 38):
            extra = _aligned(name_end + 1)
            _event_nr, flags = struct.unpack_from("=II", buffer, extra)
            if flags & NAME_LIST_HAS_UUID:
                uuid = _string_at(buffer, _aligned(extra + 8), end)
            elif flags & NAME_LIST_DOESNT_HAVE_UUID:
                uuid = ""
        found.append(Listed(buffer[at + NAME_LIST.size:name_end].decode(errors="replace"), uuid, decode_dev(dev)))
        if not following:
            break
        at += following
    return found


def decode_dev(dev):
    """Devnum of the kernel's 64-bit encoding (huge_encode_dev): minor's low
    8 bits, then 12 bits of major, then the rest of the minor."""
    return Devnum((dev >> 8) & 0xFFF, (dev & 0xFF) | ((dev >> 12) & 0xFFF00))


def _aligned(offset):
    # Offsets within the buffer align as the kernel's pointers do: the
    # kernel's copy of the buffer starts 8-aligned, and so does data_start.
    return -(-offset // ALIGN) * ALIGN


def _string_at(buffer, start, end):
    stop = buffer.find(b"\0", start, end)
    return bytes(buffer[start:end if stop < 0 else stop]).decode(errors="replace")


def _text(field):
    return field.split(b"\0", 1)[0].decode(errors="replace")
