"""The persistent copy-on-write file of a block-snapshot disk (target=<base>:<cow>).

A CoW file holds a guest's changes to a read-only base as a device-mapper
persistent snapshot store, and lives on across destroys and host reboots.
It begins with a header of ours that records which base it was made for;
the dm store follows at HEADER_SIZE, and the loop device that serves the
store to dm is bound with that offset, so the kernel never sees our header.

    0            magic (16 bytes), format version, JSON length, CRC32 of the JSON
    FIXED.size   {"base": <identity>} as canonical JSON (sorted keys, no spaces)
    ...          zeros (a hole: only the bytes above are ever written)
    HEADER_SIZE  the dm store: chunk 0 its header (magic "SnAp", valid, version,
                 chunk size), then metadata areas and data chunks (store_size_for)

A CoW file applied to another base, or to its base after the base changed,
would show the guest a mix of two disks: check() refuses both, before dm
ever reads the store.
"""
import errno
import fcntl
import json
import os
import stat
import struct
import time
import uuid
import zlib

from .blockdev import Devnum, read_attribute, read_text, size_of
from .errors import HotplugError

# Where the dm store starts. 1 MiB is a multiple of every logical block size
# (512, 4096), so the loop device bound at this offset can use direct I/O
# (the loop driver uses it only where the offset is aligned to the backing
# file system's blocks), and of every chunk size up to 1 MiB, so each dm
# chunk is as aligned in the file as if the store began at 0: no chunk
# straddles two file system blocks. Partitioning tools align to 1 MiB for the
# same reasons. The header needs well under a page; the rest is a hole.
HEADER_SIZE = 1 << 20

MAGIC = b"xenblock-cow\0\0\0\0"
FORMAT_VERSION = 1
# magic, format version, length of the JSON, CRC32 of the JSON (little-endian)
FIXED = struct.Struct("<16sIII")

SECTOR = 512
# dm's persistent store (drivers/md/dm-snap-persistent.c), little-endian.
SNAP_HEADER = struct.Struct("<IIII")  # magic, valid, version, chunk size in sectors
SNAP_MAGIC = 0x70416E53  # "SnAp"
SNAP_VERSION = 1
EXCEPTION_SIZE = 16  # struct disk_exception: old_chunk, new_chunk, two le64

# ioctls: _IOR(0x15, 0, struct fsuuid2 {u8 len; u8 uuid[16]}), _IOR(0x12, 114, u64)
FS_IOC_GETFSUUID = 0x80111500

UDEV_DATA = "/run/udev/data"

# The identity fields that say which base (another value: another base; see
# _same_base) and those that say whether it is unchanged (another value:
# modified since).
WHICH = {"file": ("inode",), "device": ("id",)}
UNCHANGED = {"file": ("size", "mtime_ns", "ctime_ns"), "device": ("size",)}


# -- the base's identity ------------------------------------------------------

def base_identity(fd, st, path):
    """A JSON-able dict that names the open base (a regular file or a block
    device; st is its fstat) across reboots and changes when it is written.

    A file: its file system's UUID, inode, size, mtime and ctime. No device
    number: a file system's st_dev can change at the next boot (dm minors
    follow activation order). ctime as well as mtime: `touch -r` or a copy
    tool can put an old mtime back after a write, but only setting the clock
    back could do that to ctime.
    (ctime also moves on chmod, chown, link and rename: after those the base
    counts as modified, which errs on the safe side.)

    A block device: a UUID it carries wherever it appears, and its size. A
    device has no mtime: in-place writes are kept out by keeping bases
    read-only while any snapshot of them lives, not detected here.
    """
    if stat.S_ISBLK(st.st_mode):
        devnum = Devnum.of_rdev(st.st_rdev)
        return {"type": "device", "id": device_id(devnum, path), "size": size_of(fd)}
    if not stat.S_ISREG(st.st_mode):
        raise HotplugError(f"{path}: a base must be an image file or a block device")
    return {"type": "file", "fs_uuid": fs_uuid(fd, st), "inode": st.st_ino, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def fs_uuid(fd, st):
    """The UUID of the file system holding the open file fd, None if it has none.

    First the kernel's own (FS_IOC_GETFSUUID, Linux >= 6.9): the superblock's
    UUID, the one blkid shows for ext4, xfs and btrfs, read straight from the
    file, so it also works for a btrfs subvolume (whose st_dev names no block
    device). Older kernels (Debian 12's 6.1): the udev database entry of
    st_dev, E:ID_FS_UUID=, which blkid wrote from the same superblock field,
    so a kernel upgrade between making a CoW file and using it changes nothing.

    Not statvfs().f_fsid: ext4 and btrfs derive it from the UUID, but xfs from
    the device number (which may change at the next boot) and NFS leaves it
    zero. None (no UUID found) happens on NFS, on tmpfs of older kernels, on
    btrfs before 6.9 and on file systems made with a null UUID; _same_base
    then compares inode, size and both times to the nanosecond only. Recent
    kernels give tmpfs a random UUID at each mount: right, as a file on it
    cannot outlive the mount.
    """
    return (_known(_kernel_fs_uuid(fd))
            or _known(_udev_properties(Devnum.of_rdev(st.st_dev)).get("ID_FS_UUID", "").lower()))


def _kernel_fs_uuid(fd):
    try:
        answer = fcntl.ioctl(fd, FS_IOC_GETFSUUID, bytes(17))
    except OSError:
        return None  # an older kernel, or a file system without a UUID (ENOTTY)
    return uuid_text(answer[1:1 + answer[0]])


def _known(found):
    """found, unless it is missing or null (all zeros: mkfs was told to
    leave it out; every such file system would share it)."""
    return found if found and found.strip("0-") else None


def uuid_text(raw):
    """raw UUID bytes as blkid writes them: the usual 8-4-4-4-12 form for 16."""
    return str(uuid.UUID(bytes=raw)) if len(raw) == 16 else raw.hex()


def device_id(devnum, path):
    """A name for the block device devnum that stays the same across reboots
    and hosts: the kernel's own ids first (dm's UUID, which for an LVM LV is
    "LVM-<vg uuid><lv uuid>"; the disk's WWID), which are there whether or
    not udev has run yet, then the udev database's (GPT or MBR partition
    UUID, WWN, serial, md array UUID). An id of a whole disk gets -part<N>
    for one of its partitions."""
    dm_uuid = read_attribute(devnum, "dm", "uuid")
    if dm_uuid:
        return f"dm:{dm_uuid}"
    disk_dir, partition = _whole_disk(devnum)
    wwid = read_text(os.path.join(disk_dir, "wwid")) or read_text(os.path.join(disk_dir, "device", "wwid"))
    if wwid:
        return _on_partition(f"wwid:{wwid}", partition)
    udev = _udev_properties(devnum)
    if udev.get("ID_PART_ENTRY_UUID"):
        return f"partuuid:{udev['ID_PART_ENTRY_UUID']}"
    for key, kind in (("ID_WWN_WITH_EXTENSION", "wwn"), ("ID_WWN", "wwn"), ("ID_SERIAL", "serial"),
                      ("MD_UUID", "md")):
        if udev.get(key):
            return _on_partition(f"{kind}:{udev[key]}", partition)
    raise HotplugError(
        f"{path}: block device {devnum} has no stable identity (no device-mapper UUID or WWID in sysfs, no "
        f"partition UUID, WWN or serial in {os.path.join(UDEV_DATA, f'b{devnum}')}): a CoW file made for it "
        "could not be told from another device's after a reboot; use an LVM volume or an image file as base")


def _whole_disk(devnum):
    """(sysfs directory of the whole disk, partition number or None)."""
    partition = read_attribute(devnum, "partition")
    if partition is None:
        return devnum.sysfs(), None
    # /sys/dev/block/M:m links to .../block/<disk>/<partition>
    return os.path.dirname(os.path.realpath(devnum.sysfs())), partition


def _on_partition(disk_id, partition):
    return disk_id if partition is None else f"{disk_id}-part{partition}"


def _udev_properties(devnum):
    """E: lines of udev's database entry for block device devnum (empty
    without udev, or for a device number no device has: tmpfs, NFS)."""
    found = {}
    text = read_text(os.path.join(UDEV_DATA, f"b{devnum}"))
    for line in (text or "").splitlines():
        if line.startswith("E:"):
            key, _, value = line[2:].partition("=")
            found[key] = value
    return found





# -- sizes ----------------------------------------------------------------------

def store_size_for(base_size, chunk_size):
    """Bytes of a CoW file (our header included) whose dm store can never
    fill up for a base of base_size bytes, with chunks of chunk_size bytes.

    A full store is not an error the guest sees once: the kernel marks it
    invalid for good and every change in it is lost. It cannot fill if it
    holds one data chunk per chunk of the base (a chunk is copied at most
    once) plus dm's metadata. The persistent store (dm-snap-persistent.c) is:
    chunk 0 the store header; then repeatedly one metadata chunk ("area") of
    chunk_size / 16 exceptions (16 bytes each, old and new chunk as le64)
    followed by that many data chunks. When an area's last exception is
    committed, the kernel zeroes the NEXT area at once (it must end the
    list on disk), and a write past the end invalidates the store: so n data
    chunks need n // per_area + 1 areas, one more than the areas they fill
    when n is a multiple of per_area. In chunks: 1 + (n // per_area + 1) + n.
    """
    if chunk_size < SECTOR or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk size {chunk_size} is not a power of two of at least {SECTOR} bytes")
    per_area = chunk_size // EXCEPTION_SIZE
    data_chunks = -(-base_size // chunk_size)
    chunks = 1 + (data_chunks // per_area + 1) + data_chunks
    return HEADER_SIZE + chunks * chunk_size


def require_space(directory_fd, needed):
    """An error naming the directory unless its file system has needed bytes
    free for us (sizes.free_space)."""
    from .sizes import free_space
    available = free_space(directory_fd)
    if available < needed:
        raise HotplugError(f"{_directory(directory_fd)}: not enough free space for the CoW file: "
                           f"{needed} bytes needed, {available} available")


# -- making and opening -------------------------------------------------------

def create(directory_fd, name, identity, size, sparse=True):
    """A new CoW file name in the directory open on directory_fd (a plain
    O_RDONLY descriptor): size bytes in all, the header recorded for identity,
    the store zero (so that dm starts a new one). Returns it open read-write.

    Never overwrites: if name exists, or appears meanwhile, an error. Never
    leaves a part-made file under name, whenever the process is killed: the
    file is made nameless (O_TMPFILE), filled, synced, and only then linked
    in. sparse: leave the store a hole (its space is taken as the guest
    writes); otherwise reserve it now, so that the host file system cannot
    run out under the guest.
    """
    _check_name(name)
    if size < HEADER_SIZE + 2 * SECTOR:
        raise ValueError(f"a CoW file of {size} bytes has no room for a store")
    where = os.path.join(_directory(directory_fd), name)
    header = _encode(identity)
    try:
        fd = _open_nameless(directory_fd)
    except OSError as e:
        # EISDIR: a kernel without O_TMPFILE sees O_DIRECTORY in its bits.
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
            raise HotplugError(f"{where}: cannot create the CoW file: {e.strerror}") from None
        return _create_by_temporary_name(directory_fd, name, header, size, sparse, where)
    try:
        _fill(fd, header, size, sparse, where)
        _link(fd, directory_fd, name, where)
        _sync_directory(directory_fd, where)
    except BaseException:
        os.close(fd)  # a nameless file goes with it
        raise
    return fd


def _open_nameless(directory_fd):
    return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=directory_fd)


def _create_by_temporary_name(directory_fd, name, header, size, sparse, where):
    """create() where the file system has no O_TMPFILE (NFS, for one): the
    file is made under a temporary name and linked to name once complete
    (link, unlike rename, never replaces what is there). A killed run leaves
    the temporary name; its flock, gone with the process, lets the next run
    remove it. (A run that removes a temporary file between another's open and
    flock makes that one fail; two runs creating one name cannot both win.)"""
    _sweep_temporaries(directory_fd, name)
    temporary = f"{_temporary_prefix(name)}{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=directory_fd)
    except OSError as e:
        raise HotplugError(f"{where}: cannot create the CoW file: {e.strerror}") from None
    try:
        try:
            _lock(fd)
            _fill(fd, header, size, sparse, where)
            _link(fd, directory_fd, name, where)
        finally:
            os.unlink(temporary, dir_fd=directory_fd)
        _sync_directory(directory_fd, where)
        # The caller's descriptor lives on (in a loop device, for one): not the lock.
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BaseException:
        os.close(fd)  # and with it our flock
        raise
    return fd


def _lock(fd):
    """flock, where the file system has locks: an NFS mount without lockd
    answers ENOLCK, and then no run can sweep another's temporary files."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:
        if e.errno != errno.ENOLCK:
            raise


def _temporary_prefix(name):
    return f".{name}.xenblock-new-"


def _sweep_temporaries(directory_fd, name):
    """Remove the temporary files of killed runs that were making name."""
    prefix = _temporary_prefix(name)
    for entry in os.listdir(directory_fd):
        if not entry.startswith(prefix):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory_fd)
        except OSError:
            continue  # gone meanwhile, or not a file we could have made
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Still the same file under that name: unlink removes a name, not an inode.
            if os.stat(entry, dir_fd=directory_fd, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(entry, dir_fd=directory_fd)
        except OSError:
            pass  # its maker is alive (EWOULDBLOCK), or it went meanwhile
        finally:
            os.close(fd)


def _fill(fd, header, size, sparse, where):
    """Header written, size set (the store zero) and all of it on disk."""
    try:
        os.fchmod(fd, 0o600)  # whatever the umask: the guest's data
        os.pwrite(fd, header, 0)
        if sparse:
            os.ftruncate(fd, size)
        else:
            os.posix_fallocate(fd, HEADER_SIZE, size - HEADER_SIZE)
        os.fsync(fd)
    except OSError as e:
        raise HotplugError(f"{where}: cannot write a new CoW file of {size} bytes: {e.strerror}") from None


def _link(fd, directory_fd, name, where):
    try:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=directory_fd, follow_symlinks=True)
    except FileExistsError:
        raise HotplugError(f"{where}: appeared while the CoW file was being made; left as it is") from None
    except OSError as e:
        raise HotplugError(f"{where}: cannot put the new CoW file in place: {e.strerror}") from None


def _sync_directory(directory_fd, where):
    """The new name on disk too: a CoW file is meant to outlive a crash."""
    try:
        os.fsync(directory_fd)
    except OSError as e:
        if e.errno != errno.EINVAL:  # a file system that cannot sync directories
            raise HotplugError(f"{where}: made, but its directory could not be synced: {e.strerror}") from None


def open_existing(directory_fd, name, writable=True):
    """The CoW file name in the directory open on directory_fd, opened
    read-write (or read-only); None if there is none. Only a regular file
    named directly: a symlink planted there could point dm at any file. It
    is first opened with O_PATH|O_NOFOLLOW, which opens neither a FIFO (that
    would block) nor a device, then reopened through /proc/self/fd, so the
    inode checked is the inode opened."""
    _check_name(name)
    where = os.path.join(_directory(directory_fd), name)
    try:
        handle = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise HotplugError(f"{where}: cannot open the CoW file: {e.strerror}") from None
    try:
        mode = os.fstat(handle).st_mode
        if stat.S_ISLNK(mode):
            raise HotplugError(f"{where}: is a symbolic link; a CoW file must be a regular file, named directly")
        if not stat.S_ISREG(mode):
            raise HotplugError(f"{where}: not a regular file; a CoW file must be one")
        if writable and not mode & 0o222:
            # Refused before it is opened for writing. root could write it
            # anyway; the read-only mode is the owner's word (as for block-file).
            raise HotplugError(f"{where}: CoW file is read-only (mode {stat.S_IMODE(mode):04o}); "
                               "make it writable to use it")
        flags = os.O_RDWR if writable else os.O_RDONLY
        try:
            return os.open(f"/proc/self/fd/{handle}", flags | os.O_CLOEXEC)
        except OSError as e:
            raise HotplugError(f"{where}: cannot open the CoW file: {e.strerror}") from None
    finally:
        os.close(handle)


def _check_name(name):
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a file name")


def _directory(directory_fd):
    """The directory's path, for messages."""
    try:
        return os.readlink(f"/proc/self/fd/{directory_fd}")
    except OSError:
        return f"(directory fd {directory_fd})"


# -- the header ---------------------------------------------------------------

def _encode(identity):
    text = json.dumps({"base": identity}, sort_keys=True, separators=(",", ":")).encode()
    if FIXED.size + len(text) > HEADER_SIZE:
        raise ValueError("identity too large for the header")
    return FIXED.pack(MAGIC, FORMAT_VERSION, len(text), zlib.crc32(text)) + text


def recorded_identity(fd, path):
    """The base identity fd's header records; an error if it has none."""
    fixed = os.pread(fd, FIXED.size, 0)
    if len(fixed) < FIXED.size or not fixed.startswith(MAGIC):
        raise HotplugError(f"{path}: not a xenblock CoW file (no xenblock header at its start); "
                           "was it made by something else?")
    _, version, length, crc = FIXED.unpack(fixed)
    if version != FORMAT_VERSION:
        raise HotplugError(f"{path}: CoW file format version {version}, this xenblock knows only "
                           f"version {FORMAT_VERSION}; was it made by a newer xenblock?")
    text = os.pread(fd, length, FIXED.size) if length <= HEADER_SIZE - FIXED.size else b""
    if len(text) != length or zlib.crc32(text) != crc:
        raise HotplugError(f"{path}: the CoW file's header is corrupt (checksum mismatch); "
                           "it cannot be trusted to belong to this base")
    try:
        return json.loads(text)["base"]
    except (ValueError, KeyError, TypeError):
        raise HotplugError(f"{path}: the CoW file's header is unreadable") from None


# -- checking -----------------------------------------------------------------

def check(fd, identity, path):
    """Refuse, with a reason a person can act on, a CoW file that is not
    ours, was made for another base or for this base before it changed, is
    too small, or holds a dm store the kernel marked invalid. identity is
    base_identity() of the base as it is now; path names the CoW file."""
    recorded = recorded_identity(fd, path)
    _compare(recorded, identity, path)
    _check_store(fd, path)


def _compare(recorded, current, path):
    kind = current["type"]
    if not _same_base(recorded, current):
        raise HotplugError(f"{path}: this CoW file was made for another base ({_describe(recorded)}); "
                           f"this base is {_describe(current)}")
    changes = [_change(key, recorded.get(key), current[key]) for key in UNCHANGED[kind]
               if recorded.get(key) != current[key]]
    if changes:
        raise HotplugError(f"{path}: the base was modified since this CoW file was made; its contents no "
                           f"longer match ({'; '.join(changes)})")


def _same_base(recorded, current):
    """Whether recorded and current name one base. A file system UUID found
    on one side only does not count: it appears with a kernel upgrade (to
    6.9, for btrfs) or when the udev database has no entry yet, and the
    inode with both times to the nanosecond still tell one file from another."""
    kind = current["type"]
    if not isinstance(recorded, dict) or recorded.get("type") != kind:
        return False
    if kind == "file" and recorded.get("fs_uuid") and current["fs_uuid"] \
            and recorded["fs_uuid"] != current["fs_uuid"]:
        return False
    return all(recorded.get(key) == current[key] for key in WHICH[kind])


def _describe(identity):
    if not isinstance(identity, dict):
        return "unknown"
    if identity.get("type") == "device":
        return f"block device {identity.get('id')}"
    fs = identity.get("fs_uuid")
    where = f"file system {fs}" if fs else "a file system without UUID"
    return f"file with inode {identity.get('inode')} on {where}"


def _change(key, was, now):
    if key == "size":
        return f"size was {was} bytes, is {now}"
    name = key.removesuffix("_ns")
    return f"{name} was {_time_text(was)}, is {_time_text(now)}"


def _time_text(ns):
    if not isinstance(ns, int):
        return repr(ns)
    seconds, fraction = divmod(ns, 10 ** 9)
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(seconds))}.{fraction:09d} UTC"


def _check_store(fd, path):
    """The dm store at HEADER_SIZE: new (all zero: the kernel starts it), or
    one the kernel can use; and the file big enough for its header and one
    metadata area, the least the kernel needs."""
    head = os.pread(fd, SNAP_HEADER.size, HEADER_SIZE)
    magic, valid, version, chunk_sectors = SNAP_HEADER.unpack(head.ljust(SNAP_HEADER.size, b"\0"))
    chunk = SECTOR
    if magic:
        if magic != SNAP_MAGIC:
            raise HotplugError(f"{path}: the snapshot store after the header is corrupt (no dm store header); "
                               "the kernel would refuse it")
        if version != SNAP_VERSION:
            raise HotplugError(f"{path}: the snapshot store has version {version}, the kernel's is {SNAP_VERSION}")
        if not chunk_sectors or chunk_sectors & (chunk_sectors - 1):
            raise HotplugError(f"{path}: the snapshot store is corrupt (chunk size of {chunk_sectors} sectors)")
        if not valid:
            raise HotplugError(f"{path}: the kernel marked this CoW file's snapshot store invalid (it filled up or "
                               "hit an I/O error); the changes it held are lost: remove it to start again from "
                               "the base")
        chunk = chunk_sectors * SECTOR
    size = os.fstat(fd).st_size
    if size < HEADER_SIZE + 2 * chunk:
        raise HotplugError(f"{path}: CoW file is {size} bytes, too small for its {HEADER_SIZE}-byte header and a "
                           f"snapshot store (at least {2 * chunk} bytes); was it truncated?")
