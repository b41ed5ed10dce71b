"""block-snapshot: a disk over a read-only base whose changes persist in a CoW file.

target=<base>:<cow>, <cow> an absolute path. The guest gets a device-mapper
snapshot of the base whose store is the CoW file (xenblock.cowfile: our
header, then a persistent dm store, "P"): its changes outlive a destroy and
a host reboot, and the next guest on the same CoW file finds them. The base
is only ever read, through the read-only loop device every disk built on it
shares (as block-cow's); it must stay unchanged while CoW files of it live:
a CoW file records which base it was made for, and one applied to another
base, or to its base after that changed, is refused (cowfile.check).

A missing <cow> is made at add: sparse, and big enough that its store can
never fill (cowfile.store_size_for: a chunk of the base is copied at most
once), unless [snapshot] max_size caps it. A full store would not be an
error the guest sees once: the kernel marks it invalid and every change it
held is lost.

The host file system's free space is checked at add against what the CoW
file may still grow by (its size less what it already takes up): below
that, the add goes on and its log line warns (many sparse CoW files share
one file system: refusing every add while they could, together, fill it
would keep guests from starting that write little; the free space is
watched like a store's fill level). Only a file system about full (less
than FULL_BELOW free, or less than the CoW file can grow by if that is
less) refuses the add: there a guest's first writes would fill it, and a
write the host cannot store invalidates the snapshot, all of it.

One CoW file serves one disk at a time: each snapshot loads the store's
table into kernel memory when it is built and then allocates chunks on its
own, so two would overwrite each other's changes. Two domains of one VM (a
live migration's, a stub domain's) therefore get one snapshot, the one the
first built (xenblock.twin); another guest's disk on a CoW file in use is
refused. access=r is refused too (a read-only snapshot would still have to
write a new store's header; block-file serves a base read-only).
"""
import hashlib
import os

from .. import cowfile, dm, locks, sizes
from ..blockdev import Device, read_attribute
from ..deadline import Deadline
from ..errors import HotplugError
from ..source import Source, Use, resolve
from ..state import StateDir

# 64 KiB chunks (block-cow's too). The kernel reads a persistent store's
# whole exception table when the snapshot is built, inside add's 40 s, and
# keeps it in memory for as long as the disk lives: one exception (16 bytes
# on disk, 32 in dom0's memory plus its hash chain) per chunk the guest ever
# changed. 10 GiB of changes are 163,840 exceptions in 40 metadata chunks
# with 64 KiB chunks, 2.6 million in 10,240 with LVM's 4 KiB. Measured in
# the emulated test dom0 (stores made up to that fill, table load alone):
# 64 KiB chunks 1.8 s for 10 GiB of changes, 7.3 s for 40 GiB; 4 KiB
# chunks 27.7 s for 10 GiB, most of libxl's 40 s. Larger chunks would cut
# that again, but every small write to a chunk not yet copied costs a copy
# of the whole chunk (64 KiB for a 4 KiB write here), while a guest's
# streaming writes of 64 KiB and more cover whole chunks, which dm stores
# without reading the base first.
# HEADER_SIZE (1 MiB) is a multiple of it, so chunks stay aligned in the file.
CHUNK_SECTORS = 128
SECTOR = 512
CHUNK = CHUNK_SECTORS * SECTOR
# Below this much free space (or what the CoW file can still grow by, if
# less) on the CoW file's file system an add is refused: the kernel writes
# a new store's header and first metadata chunk at once, and a guest that
# boots writes a few MiB before anyone could react.
FULL_BELOW = 256 << 20
# The least a capped CoW file must hold: our header, the store's header
# chunk, one metadata chunk and one data chunk.
SMALLEST = cowfile.HEADER_SIZE + 3 * CHUNK
# See the module's doc and xenblock.twin.
ONE_DEVICE_PER_VM = True


class Spec:
    """parse's result, base and cow (paths), and what check leaves for
    attach: directory, the CoW file's directory (open, so the directory
    checked and locked is the one written), name (of the CoW file in it),
    identity (the base's, for a new CoW file's header), size (a new CoW
    file's), free (a warning about free space for the log line, or "")."""

    def __init__(self, base, cow):
        self.base, self.cow = base, cow
        self.directory = self.name = self.identity = self.size = None
        self.free = ""


def parse(target):
    text = target.strip()
    # The CoW file's path is absolute: the first ":/" ends the base's path
    # (a colon in a base's path is rare, followed by a slash rarer still).
    split = text.find(":/")
    if split < 0:
        raise HotplugError(f"target {text!r}: expected <base>:<cow>, the base image's path, a colon and the "
                           "CoW file's absolute path")
    base, cow = text[:split].strip(), text[split + 1:]
    if not base:
        raise HotplugError(f"target {text!r}: no base image before the colon; expected <base>:<cow>")
    name = os.path.basename(cow)
    if name in ("", ".", ".."):
        raise HotplugError(f"target {text!r}: {cow!r} names a directory, not the CoW file")
    return Spec(base, cow)


def named_paths(spec):
    """The base, and the CoW file's directory (the file itself is made if missing)."""
    return [spec.base, os.path.dirname(spec.cow)]


def check(spec, request, config, opened):
    if not request.writable:
        raise HotplugError(f"{spec.cow}: block-snapshot disks are read-write (access=w); for a read-only disk "
                           "give the base to block-file")
    base = opened.enter_context(resolve(spec.base, writable=False))
    identity = cowfile.base_identity(base.fd, base.stat, base.path)
    spec.directory = _directory(spec.cow, opened)
    spec.name = os.path.basename(spec.cow)
    # The lock of the CoW file's name (its directory's identity and the
    # name), held to the end of add. A new CoW file has no identity yet, so
    # no image lock: the lifecycle locks the images check returns, before
    # its sharing check. Every block-snapshot add of this path takes the
    # name lock before it looks for the file, and one that makes the file
    # holds it until its record names the file (attach); so a second add
    # of the same path either finds no file and waits for this lock, or
    # finds the file and with it the record of its maker, which the sharing
    # check then sees ("already in use"). Two adds can never both make it.
    # This lock comes before every image lock, in every run that takes it:
    # no two runs can wait for each other.
    opened.enter_context(locks.held(_name_lock(spec), Deadline.of_run("add"), f"the lock of {spec.cow}"))
    fd = cowfile.open_existing(spec.directory, spec.name)
    if fd is None:
        spec.identity, spec.size = identity, _new_size(identity["size"], spec, config)
        _check_space(spec, spec.size)
        return [Use(base, writable=False)]
    cow = opened.enter_context(Source.of_descriptor(spec.cow, fd))  # open_existing refused a read-only one
    cowfile.check(fd, identity, spec.cow)
    _check_space(spec, cow.stat.st_size - cow.stat.st_blocks * 512)  # less what it takes up already
    return [Use(base, writable=False), Use(cow, writable=True)]


def attach(spec, uses, request, build):
    base = uses[0].source
    if len(uses) > 1:
        cow, created = uses[1].source, False
        _refuse_second_store(cow, build)
    else:
        cow, created = _create(spec, build), True
    try:
        base_devnum = base.devnum or build.shared_loop(base).devnum
        store = build.loop_device(cow.fd, read_only=False, offset=cowfile.HEADER_SIZE)
        sectors = int(read_attribute(base_devnum, "size"))
        chunk = _store_chunk_sectors(cow.fd)
        table = [dm.Target(0, sectors, "snapshot", f"{base_devnum} {store.devnum} P {chunk}")]
        devnum = build.dm_device(*dm.names_for(build.record["key"]), table)
    except BaseException:
        if created:
            _remove_new(spec, cow)
        raise
    finally:
        if created:
            os.close(cow.fd)  # the loop device holds the file now
    what = "made now" if created else "kept"
    return Device(dm.node(devnum), devnum, f"snapshot of {base_devnum}, CoW file {spec.cow} ({what}, "
                                           f"{sizes.text(cow.stat.st_size)}) on {store.node}{spec.free}")


# -- check's helpers ---------------------------------------------------------------

def _directory(cow, opened):
    """The CoW file's directory, open (O_RDONLY: cowfile makes files in it);
    an error unless it exists and is writable."""
    path = os.path.dirname(cow)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HotplugError(f"{path}: no such directory, for the CoW file {os.path.basename(cow)}; "
                           "make it first") from None
    except NotADirectoryError:
        raise HotplugError(f"{path}: not a directory, so it cannot hold the CoW file "
                           f"{os.path.basename(cow)}") from None
    except OSError as e:
        raise HotplugError(f"{path}: cannot open the CoW file's directory: {e.strerror}") from None
    opened.callback(os.close, fd)
    # access() answers for root too: a read-only mount (EROFS), an immutable directory.
    if not os.access(f"/proc/self/fd/{fd}", os.W_OK):
        why = "on a read-only file system" if os.fstatvfs(fd).f_flag & os.ST_RDONLY else "not writable"
        raise HotplugError(f"{path}: the CoW file's directory is {why}; the CoW file keeps the guest's "
                           "changes there")
    return fd


def _name_lock(spec):
    st = os.fstat(spec.directory)
    digest = hashlib.sha256(os.fsencode(spec.name)).hexdigest()[:32]  # any name, in a lock file's name
    return StateDir().lock_path(f"cow-name:{st.st_dev}:{st.st_ino}:{digest}")


def _new_size(base_size, spec, config):
    """A new CoW file's size: one whose store can never fill, unless the
    config caps it (rounded down to whole chunks)."""
    size = cowfile.store_size_for(base_size, CHUNK)
    cap = config.snapshot_max_size
    if cap is None or cap >= size:
        return size
    if cap < SMALLEST:
        raise HotplugError(f"{spec.cow}: [snapshot] max_size is {sizes.text(cap)}, less than the "
                           f"{sizes.text(SMALLEST)} the smallest CoW file needs")
    return cap - (cap - cowfile.HEADER_SIZE) % CHUNK


def _check_space(spec, growth):
    """See the module's doc: refused about full, a warning below growth."""
    growth = max(growth, 0)
    free = sizes.free_space(spec.directory)
    try:
        cowfile.require_space(spec.directory, min(growth, FULL_BELOW))
    except HotplugError as e:
        raise HotplugError(f"{e}; the CoW file {spec.cow} may grow by {sizes.text(growth)}, and a snapshot "
                           "whose writes the host cannot store is lost, all of it") from None
    if free < growth:
        spec.free = (f"; WARNING: the CoW file may grow by {sizes.text(growth)}, its file system has "
                     f"{sizes.text(free)} free: if it fills up, the guest's changes are lost")


# -- attach's helpers --------------------------------------------------------------

def _refuse_second_store(cow, build):
    """The sharing check lets two domains of one VM share a writable image;
    they share the snapshot of a CoW file (lifecycle adopts it), never build
    a second one: this is reached when the first domain's disk is not yet
    connected. Called under its image lock."""
    for record in build.state.records():
        if record["key"] != build.record["key"] and \
                any(image["id"] == cow.image_id for image in record.get("images", ())):
            raise HotplugError(
                f"{cow.path}: already in use by domain {record.get('frontend_id')} ({record['key']}), not yet "
                "connected; a CoW file serves one snapshot at a time (two would overwrite each other's "
                "changes), which a second domain of one VM shares once the first has it")


def _create(spec, build):
    """The new CoW file, made under the name lock check took; its identity
    is in the record before anything is bound to it, under its image lock:
    from then on every sharing check sees it written by this disk."""
    fd = cowfile.create(spec.directory, spec.name, spec.identity, spec.size)
    cow = Source.of_descriptor(spec.cow, fd)
    try:
        with locks.held(build.state.image_lock_path(cow.image_id), build.deadline, f"the lock of {spec.cow}"):
            build.record["images"].append({"id": cow.image_id, "writable": True, "extent": None})
            build.save()
    except BaseException:
        _remove_new(spec, cow)
        os.close(fd)
        raise
    return cow


def _remove_new(spec, cow):
    """A CoW file this add made and could not use goes again: it holds
    nothing but our header. Only if its name still names it; the name lock
    keeps every other block-snapshot add of it away meanwhile."""
    try:
        if os.stat(spec.name, dir_fd=spec.directory, follow_symlinks=False).st_ino == cow.stat.st_ino:
            os.unlink(spec.name, dir_fd=spec.directory)
    except OSError:
        pass


def _store_chunk_sectors(fd):
    """The chunk size of the store in the CoW file: its own if the kernel
    has written one (it was made with another size: the kernel would use
    the store's and warn), else ours."""
    head = os.pread(fd, cowfile.SNAP_HEADER.size, cowfile.HEADER_SIZE)
    magic, _valid, _version, chunk_sectors = cowfile.SNAP_HEADER.unpack(head.ljust(cowfile.SNAP_HEADER.size, b"\0"))
    return chunk_sectors if magic == cowfile.SNAP_MAGIC else CHUNK_SECTORS
