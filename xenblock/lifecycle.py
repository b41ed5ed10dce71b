"""add and remove of one disk, whatever its type.

add: nothing if physical-device is already there (libxl may run add twice);
undo the leftovers of an earlier add of the same backend that was killed;
then check, refuse a conflicting sharer, build with a record, publish.
remove: undo exactly what the record names; nothing recorded, nothing to do.
"""
import contextlib
from collections import namedtuple

from . import locks, twin
from .build import Build, teardown
from .errors import HotplugError
from .request import Request
from .state import new_record


# One run's surroundings: key is XENBUS_PATH, xs the xenstore.XenStore,
# state the state.StateDir, deadline the run's deadline.Deadline.
Context = namedtuple("Context", "key disk_type xs state config log deadline")


def add(ctx):
    """Returns the summary for the log line."""
    existing = ctx.xs.read(f"{ctx.key}/physical-device")
    if existing is not None:
        return f"already connected to {existing}, nothing to do"
    module = _type_module(ctx.disk_type)
    request = Request.read(ctx.xs, ctx.key)
    ctx.log.debug(f"add {ctx.key}: {request}")
    leftover = ctx.state.load(ctx.key)
    if leftover is not None:
        teardown(leftover, ctx.state, ctx.deadline)
        ctx.log.info(f"undid the leftovers of an earlier add of {ctx.key}")
    ctx.state.sweep()
    with contextlib.ExitStack() as opened:
        spec = module.parse(request.target)
        if hasattr(module, "named_after"):
            module.named_after(spec, _guest(ctx.xs, request.frontend_id), ctx.xs.read(f"{ctx.key}/dev") or
                               ctx.key.rsplit("/", 1)[-1])
        uses = module.check(spec, request, ctx.config, opened)
        record = new_record(ctx.key, ctx.disk_type, request, uses)
        found = twin.find(record, request, ctx, opened) if _one_device_per_vm(module, request) else None
        with _undone_on_failure(record, ctx):
            # Held from the sharing check until the record is saved: two adds of one
            # image cannot both see "no other user". Other images are not held up.
            with _images_locked(uses, ctx):
                for use in uses:
                    _refuse_conflicts(use, request, ctx)
                ctx.state.save(record)  # from here on, concurrent sharing checks see us
                build = Build(ctx.state, record, ctx.config, ctx.deadline)
                device = (found and twin.adopt(found, build)) or module.attach(spec, uses, request, build)
            _publish(device, record, ctx)
    guest = _guest_name(ctx.xs, request.frontend_id)
    return f"{request.target} -> {device.path} ({device.devnum}, {device.detail}) for {guest}"


def remove(ctx):
    record = ctx.state.load(ctx.key)
    ctx.state.sweep()  # what a killed add of this disk may have left, beside the record
    if record is None:
        ctx.state.delete(ctx.key)  # a temporary record of an add killed at its first save
        return "nothing recorded, nothing to undo"
    devices = [step["node"] for step in record["steps"] if "node" in step]
    teardown(record, ctx.state, ctx.deadline)
    detail = f" ({', '.join(devices)})" if devices else ""
    return f"took down {record['target']}{detail} of domain {record['frontend_id']}"


def _type_module(disk_type):
    from . import types  # here, not at the top: remove never needs the types
    try:
        return types.module(disk_type)
    except KeyError:
        known = ", ".join(f"block-{name}" for name in types.NAMES)
        raise HotplugError(f"unknown disk type {disk_type!r}: this script must be one of {known}") from None


def _one_device_per_vm(module, request):
    """Whether a second domain of one VM gets the first's device (see
    xenblock.twin): a type's writable snapshots."""
    return request.writable and getattr(module, "ONE_DEVICE_PER_VM", False)


def _images_locked(uses, ctx):
    """The locks of every image the disk uses, taken in one fixed order
    (by identity), so that two adds sharing two images cannot deadlock."""
    stack = contextlib.ExitStack()
    by_id = {use.source.image_id: use.source for use in uses}
    for image_id in sorted(by_id):
        stack.enter_context(_image_locked(by_id[image_id], ctx))
    return stack


def _image_locked(source, ctx):
    # A block device is locked by a flock on the device itself, which is also
    # what tells udev not to probe it meanwhile. An image file gets a lock
    # file named by its identity: a flock on the image would fail on NFS
    # (emulated with POSIX locks, which need a writable descriptor) and meet
    # QEMU's own locks on it.
    what = f"the lock of {source.path}"
    if source.devnum is not None:
        return locks.on_descriptor(source.fd, ctx.deadline, what)
    return locks.held(ctx.state.image_lock_path(source.image_id), ctx.deadline, what)


def _refuse_conflicts(use, request, ctx):
    from . import sharing  # add only
    source = use.source
    if request.sharing_forced:
        ctx.log.info(f"{source.path}: mode {request.mode}: sharing check skipped on request")
        return
    user = sharing.conflicting_user(use, request, ctx)
    ctx.log.debug(f"{source.path} ({source.image_id}): conflicting user: {user}")
    if user is not None:
        theirs = "read-write" if user.writable else "read-only"
        ours = "read-write" if use.writable else "read-only"
        raise HotplugError(f"{source.path}: already in use {theirs} by {user.what}; refusing {ours} access")


@contextlib.contextmanager
def _undone_on_failure(record, ctx):
    """Whatever fails from here to the end of add (a bind, a save, the
    publishing), what the record names is undone: a failed add leaves
    nothing bound."""
    try:
        yield
    except BaseException as failure:
        try:
            teardown(record, ctx.state, ctx.deadline)
        except HotplugError as undo:
            # Both are news to the administrator: what failed, and what stays.
            raise HotplugError(f"{failure}; and undoing the add failed: {undo}") from failure
        raise


def _publish(device, record, ctx):
    published = ctx.xs.write_all(ctx.key, {
        "physical-device": device.devnum.xen_hex(),
        "physical-device-path": device.path,
        "hotplug-status": "connected",
    })
    if not published:
        raise HotplugError(f"{ctx.key} vanished from xenstore while the disk was being built; undone")
    record["state"] = "connected"
    record["physical_device"] = device.devnum.xen_hex()
    ctx.state.save(record)


def _guest(xs, domid):
    """The guest's name; None if not known."""
    return None if domid is None else xs.read(f"/local/domain/{domid}/name")


def _guest_name(xs, domid):
    if domid is None:
        return "an unknown domain"
    name = _guest(xs, domid)
    return f"domain {domid} ({name})" if name else f"domain {domid}"
