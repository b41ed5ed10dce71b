"""block-cow: a throw-away disk over a shared read-only base.

target=<base> [<size>] (the old Xen live-CD's cow: disks). The guest gets a
device-mapper snapshot of the base; its writes go to a store of its own,
gone with the disk. The base is only ever read: it may sit on read-only
media or be mode 0444, and any number of guests use it at once, through one
read-only loop device that they share. With access=r the guest gets the
base itself, read-only, and no store.

The store is an unnamed file (O_TMPFILE) in the configured directory, bound
to a loop device and closed: the loop device holds the only reference, so
the file's space is freed when the device unbinds, and a script killed at
any moment cannot leave a store behind (an unbound one dies with the
process). Where the file system cannot make unnamed files, a named one is
recorded, made and unlinked at once. Its space is reserved with fallocate unless the config says
sparse: a sparse store passes a free-space check that N guests share, then
hits ENOSPC after the guest's write was acknowledged, and the kernel
invalidates the snapshot.
"""
import errno
import os
from collections import namedtuple

from .. import dm, sizes
from ..blockdev import Device, read_attribute
from ..errors import HotplugError
from ..source import Use, resolve
from . import file

# The store is transient ("N"): its exception table lives in kernel memory,
# nothing is written but the guest's data. 64 KiB chunks: a guest's write
# that covers whole chunks is stored without reading the base first (dm's
# full-chunk optimisation), and guests write in 64 KiB and larger pieces
# when they stream (see benchmarks/); a 4 KiB write to a fresh chunk costs a
# 64 KiB copy, and the kernel keeps 16 times fewer exceptions than with
# LVM's 4 KiB default.
CHUNK_SECTORS = 128
SECTOR = 512

# A second domain of one VM (a live migration's destination, a stub domain)
# gets the first's snapshot, with the guest's changes, not a second one with
# an empty store (xenblock.twin).
ONE_DEVICE_PER_VM = True

Spec = namedtuple("Spec", "path size")


def parse(target):
    try:
        path, size = sizes.split_trailing(target.strip())
    except ValueError as e:
        raise HotplugError(f"target {target.strip()!r}: the store's size: {e}") from None
    if not path:
        raise HotplugError("empty target: give the base image's path, then optionally the store's size")
    return Spec(path, size)


def named_paths(spec):
    return [spec.path]


def check(spec, request, config, opened):
    size = spec.size or config.cow_size
    if request.writable and size > config.cow_max_size:
        raise HotplugError(f"a store of {sizes.text(size)} asked for {spec.path}: the most the config "
                           f"allows is {sizes.text(config.cow_max_size)} ([cow] max_size)")
    return [Use(opened.enter_context(resolve(spec.path, writable=False)), writable=False)]


def attach(spec, uses, request, build):
    if not request.writable:
        return file.attach(spec.path, uses, request, build)
    base, size = uses[0].source, spec.size or build.config.cow_size
    store = _store(build, size)
    try:
        base_devnum = base.devnum or build.shared_loop(base).devnum
        store_loop = build.loop_device(store, read_only=False)
    finally:
        os.close(store)  # the loop device holds the file now, and nothing else
    sectors = int(read_attribute(base_devnum, "size"))
    table = [dm.Target(0, sectors, "snapshot", f"{base_devnum} {store_loop.devnum} N {CHUNK_SECTORS}")]
    name, uuid = dm.names_for(build.record["key"])
    devnum = build.dm_device(name, uuid, table)
    kind = "sparse" if build.config.cow_sparse else "reserved"
    return Device(dm.node(devnum), devnum, f"snapshot of {base_devnum}, {sizes.text(size)} {kind} store "
                                           f"on {store_loop.node}")


def _store(build, size):
    """An unnamed file of size bytes in the configured directory, open
    read-write; its space reserved unless the config says sparse."""
    path = build.config.cow_directory
    directory = _directory(path)
    try:
        free = sizes.free_space(directory)
        if free < size:
            raise HotplugError(f"{path}: {sizes.text(free)} free, not enough for a {sizes.text(size)} "
                               "copy-on-write store")
        store = _unnamed_file(directory, path, build)
    finally:
        os.close(directory)
    try:
        if build.config.cow_sparse:
            os.ftruncate(store, size)
        else:
            os.posix_fallocate(store, 0, size)
    except OSError as e:
        os.close(store)
        raise HotplugError(f"{path}: cannot reserve {sizes.text(size)} for a copy-on-write store: "
                           f"{e.strerror}") from None
    return store


def _unnamed_file(directory, path, build):
    try:
        return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=directory)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
            raise HotplugError(f"{path}: cannot make a copy-on-write store there: {e.strerror}") from None
    # No O_TMPFILE here (NFS; overlayfs before Linux 6.6): a name of ours,
    # recorded before it exists and unlinked as soon as it is open, so a run
    # killed in between leaves a record whose undo removes it.
    name = ".xenblock-store-" + build.record["key"].replace("/", ".")
    build.intend("unlink", path=os.path.join(path, name))
    flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            store = os.open(name, flags, 0o600, dir_fd=directory)
        except FileExistsError:  # a killed run's, whose record is lost: ours all the same
            os.unlink(name, dir_fd=directory)
            store = os.open(name, flags, 0o600, dir_fd=directory)
        os.unlink(name, dir_fd=directory)
    except OSError as e:
        raise HotplugError(f"{path}: cannot make a copy-on-write store there: {e.strerror}") from None
    return store


def _directory(path):
    """The store directory, opened without following a symlink at its
    name: one planted there would send guests' writes elsewhere. Made
    (mode 0700, root's) if missing."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        directory = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise HotplugError(f"{path}: the copy-on-write directory is a symlink; refusing to follow it "
                               "(name the real directory in [cow] directory)") from None
        if e.errno in (errno.EEXIST, errno.ENOTDIR):
            raise HotplugError(f"{path}: the copy-on-write directory is not a directory") from None
        raise HotplugError(f"{path}: cannot use as the copy-on-write directory: {e.strerror}") from None
    return directory
