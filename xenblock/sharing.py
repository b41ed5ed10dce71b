"""Xen's sharing rule, done right: who else uses an image, and may we?

The rule (Xen's check_sharing): a writable request conflicts with any other
user; a read-only request conflicts with a writing user. Users that belong to
the same VM as the requesting guest do not count: the source domain during a
live migration, and a guest's device-model stub domain.

Users are found without scanning xenstore (which costs Xen's script one
process per vbd): our own records, the loop devices bound to the same inode
(looked for only when the kernel says someone else has the image open),
blkback's sysfs entries, dom0's mounts, stacked devices and exclusive claims.
For a block device, the whole disk and its partitions share sectors: a user
of one is a user of the others.
"""
import fcntl
from collections import namedtuple

from . import blockdev, build, locks, loop
from .errors import HotplugError

# A record whose backend is gone is cleaned on the spot, but a device of it
# that something still holds is not waited for at length: add has a disk to
# build.
ORPHAN_TEARDOWN_SECONDS = 1.0


# Someone using an image; domid None: dom0 itself, or someone we cannot name.
User = namedtuple("User", "what domid writable")


def conflicting_user(use, request, ctx):
    """The first user that forbids use (a source.Use of request's disk), or None."""
    for user in users(use, ctx):
        if not (use.writable or user.writable):
            continue
        if user.domid is not None and same_vm(ctx.xs, user.domid, request.frontend_id):
            continue
        return user
    return None


def users(use, ctx):
    source = use.source
    found, recorded_loops = _record_users(use, ctx)
    if source.devnum is not None:
        found += device_users(source.devnum)
        if use.writable and blockdev.claimed_exclusively(source.fd, source.path):
            found.append(User("dom0 (mounted, or held by LVM, md, device-mapper or swap)", None, True))
    elif source.fd is None:
        pass  # a network export (source.Remote): its users on this host are in the records
    elif opened_only_through(source.fd):
        ctx.log.debug(f"{source.path}: open nowhere else, so no loop device is bound to it")
    else:
        ctx.log.debug(f"{source.path}: open elsewhere: looking for loop devices bound to it")
        for node, devnum, info in loop.backed_by(source.stat):
            if (devnum, info.mark) not in recorded_loops and use.overlaps(info.extent):
                found += device_users(devnum) or [User(_unrecorded(node, info), None, not info.read_only)]
    return found


def _unrecorded(node, info):
    if info.mark.startswith("xenblock:"):
        # A teardown that could not finish (something held the device) and
        # whose record is gone: bound is bound, whoever bound it.
        return f"{node}, a loop device xenblock bound that no record accounts for"
    return f"{node}, a loop device not set up by xenblock"


def opened_only_through(fd):
    """Whether no file but fd has the image open. A loop device holds its
    backing file open, so then none is bound to it and the scan of every
    loop device (and importing pyudev for it) can be skipped.

    The kernel answers: it grants a write lease exactly when the inode's
    reader and writer counts are fd's own. Any refusal (another opener, a
    file system without leases) only means "look". The lease lives for two
    system calls; an open() meanwhile waits for its release and would send
    us SIGIO, whose default action is to kill: ignored meanwhile.
    """
    import signal  # here: adds of block devices and removes do without it
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError:
        return False
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return True
    finally:
        signal.signal(signal.SIGIO, previous)


def _record_users(use, ctx):
    """Users that other disks' records name, and the (Devnum, mark) of the
    loop devices those records account for. A record's use of the image
    counts where its extent overlaps ours: two partitions of one image are
    no conflict."""
    found, loops = [], set()
    wanted = use.source.overlapping_ids()
    for record in ctx.state.records():
        if record["key"] == ctx.key:
            continue
        theirs = [image for image in record.get("images", ())
                  if image["id"] in wanted and use.overlaps(image["extent"])]
        if not theirs or _clean_if_orphaned(record, ctx):
            continue
        domid = record.get("frontend_id")
        writable = any(image["writable"] for image in theirs)
        found.append(User(f"domain {domid} ({record['key']})", domid, writable))
        loops |= {(blockdev.Devnum.parse(step["devnum"]), step["mark"])
                  for step in record["steps"] if "devnum" in step and "mark" in step}
    return found, loops


def _clean_if_orphaned(record, ctx):
    """A record whose backend is gone from xenstore will never see a remove
    (libxl runs scripts only while the backend exists): undo it now, unless a
    run holds its lock (then it is alive) or its device is still held (then
    it is still a user). Returns whether it was cleaned."""
    if ctx.xs.exists(record["key"]):
        return False
    with locks.held_if_free(ctx.state.lock_path(record["key"])) as free:
        if not free:
            return False
        current = ctx.state.load(record["key"])
        if current is not None:
            try:
                build.teardown(current, ctx.state, ctx.deadline.capped(ORPHAN_TEARDOWN_SECONDS))
            except HotplugError as e:
                ctx.log.info(f"leftovers of vanished backend {record['key']} stay: {e}")
                return False
            ctx.log.info(f"cleaned up leftovers of vanished backend {record['key']}")
    return True


def device_users(devnum, openers=False):
    """Users of a block device and of the devices sharing its sectors:
    guests (blkback), dom0 mounts, stacked devices, and with openers=True
    (slow: a scan of /proc) every process that has one open."""
    found, members = [], blockdev.family(devnum)
    for member in members:
        found += [User(f"domain {domid} (vbd {devid})", domid, writable)
                  for domid, devid, writable in blockdev.vbd_users(member)]
        found += [User(f"dom0 device {holder}, stacked on {member}", None, True)
                  for holder in blockdev.holders(member)]
        if openers:
            from .procfs import openers as processes
            found += [User(f"pid {pid} ({command})", None, True) for pid, command in processes(member)]
    for mount_point, writable in blockdev.mounts(members):
        mode = "read-write" if writable else "read-only"
        found.append(User(f"dom0, mounted {mode} on {mount_point}", None, writable))
    return found


def same_vm(xs, domid, other):
    """Whether two domains are one VM, as Xen's block-common.sh decides: a
    domain stands for its own VM (/local/domain/N/vm) and, when it is a stub
    domain, for its target's (/local/domain/N/target). So the source and
    destination of a migration are one VM, and so is a stub domain with its
    guest and with its guest's migration twin."""
    if other is None:
        return False
    if domid == other:
        return True
    mine, theirs = _vms_of(xs, domid), _vms_of(xs, other)
    return bool(mine & theirs) or str(other) in mine or str(domid) in theirs


def _vms_of(xs, domid):
    """The VM paths a domain stands for, plus its target's domid."""
    target = xs.read(f"/local/domain/{domid}/target")
    found = {xs.read(f"/local/domain/{domid}/vm")}
    if target is not None:
        found |= {target, xs.read(f"/local/domain/{target}/vm")}
    return found - {None}
