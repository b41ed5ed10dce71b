"""block-tap: an image in a named format (target=<format>:<path>).

aio and raw are plain image files: block-file serves them (a loop device),
so this module hands them to xenblock.types.file.

The other formats are qemu's, served by qemu-nbd (xenblock.qemunbd) onto an
nbd device the kernel picks (xenblock.nbd). The format is the user's word
and never probed (a raw guest disk may hold what looks like a qcow2
header): `qemu-img info -f <format>` checks that the image really is one.
An image that names other files (a backing file, an external data file,
vmdk extents) is refused, as such a name can reach any file or device of
dom0, unless `[tap] outside_files = yes`: then each file it names is a user
of its own to the sharing check (a backing file read-only, a data file or
extent as the disk is), and is locked with the image.

qemu's own image locks keep out a writer that is not xenblock's (a qemu
or qemu-nbd started by hand); qemu-nbd's refusal is the sharing error.
"""
import json
from dataclasses import dataclass

from .. import command
from ..blockdev import Device
from ..errors import HotplugError
from ..source import Use, resolve
from . import file

LOOP_FORMATS = {"aio", "raw"}
# The format as the target names it -> qemu's driver name.
QEMU_FORMATS = {"qcow2": "qcow2", "qcow": "qcow", "vhd": "vpc", "vpc": "vpc", "vmdk": "vmdk"}
USAGE = "give <format>:<path>, format one of " + ", ".join(sorted(LOOP_FORMATS | set(QEMU_FORMATS)))
# qemu-img info of a local image reads a few headers (about 1 s under the emulated test host).
INFO_SECONDS = 5.0


@dataclass
class Spec:
    format: str
    path: str


def parse(target):
    name, colon, path = target.strip().partition(":")
    if not colon:
        raise HotplugError(f"target {target.strip()!r} names no format: {USAGE}")
    name = name.strip().lower()
    if name not in LOOP_FORMATS and name not in QEMU_FORMATS:
        raise HotplugError(f"target {target.strip()!r}: unknown format {name!r}: {USAGE}")
    return Spec(name, file.parse(path))


def named_paths(spec):
    return [spec.path]


def check(spec, request, config, opened):
    if spec.format in LOOP_FORMATS:
        return file.check(spec.path, request, config, opened)
    source = opened.enter_context(resolve(spec.path, request.writable))
    if source.devnum is not None:
        raise HotplugError(f"{spec.path}: a block device, not a {spec.format} image file; use raw:")
    from ..deadline import Deadline  # check runs in add only: the add's deadline
    info = _image_info(spec, Deadline.of_run("add"), config.tap_outside_files)
    named = _outside_files(info)
    if named and not config.tap_outside_files:
        listed = "; ".join(f"{kind} {path}" for kind, path, _ in named)
        raise HotplugError(f"{spec.path}: the {spec.format} image names other files ({listed}); block-tap "
                           "serves only self-contained images unless [tap] outside_files = yes")
    return [Use(source, request.writable)] + [
        Use(opened.enter_context(resolve(path, request.writable and writes)), request.writable and writes)
        for _, path, writes in named]


def attach(spec, uses, request, build):
    if spec.format in LOOP_FORMATS:
        return file.attach(spec.path, uses, request, build)
    from .. import loop, nbd, qemunbd  # only the qemu formats
    direct_io = build.config.direct_io and loop.direct_io_works(uses[0].source.fd)
    daemon, sock, export = qemunbd.start(build, spec.path, QEMU_FORMATS[spec.format], request.writable,
                                         direct_io)
    with sock:
        try:
            warning = nbd.ensure_module(build.deadline)
            sock.settimeout(None)  # the kernel's now: it waits on it as on a disk
            node, devnum = build.nbd_device(sock, export)
        except nbd.NbdError as e:
            raise HotplugError(f"{spec.path}: {e}") from None
    qemunbd.served(daemon, build)
    mode = "read-write" if request.writable else "read-only"
    detail = f"{spec.format} through qemu-nbd, {mode}, {'direct' if direct_io else 'buffered'} I/O"
    return Device(node, devnum, f"{detail}; {warning}" if warning else detail)


def _image_info(spec, deadline, chain):
    # -U: only headers are read, and a writer's lock must not fail the check
    # (qemu's own lock, taken by qemu-nbd, keeps a second writer out). With
    # chain, every backing file's info too (a list, the image first).
    argv = ["qemu-img", "info", "-U", "-f", QEMU_FORMATS[spec.format], "--output=json",
            *(["--backing-chain"] if chain else []), spec.path]
    try:
        out = command.run(argv, f"checking that {spec.path} is a {spec.format} image", deadline, INFO_SECONDS)
    except command.CommandError as e:
        said = " ".join(e.stderr.split()).removeprefix("qemu-img: ") or f"status {e.returncode}"
        raise HotplugError(f"{spec.path}: not a valid {spec.format} image: {said}") from None
    found = json.loads(out)
    return found if isinstance(found, list) else [found]


def _outside_files(chain):
    """[(kind, path, whether the disk writes it)] of the files the image
    names: the user named this one only."""
    info = chain[0]
    named = [("backing file", backing.get("filename", info.get("backing-filename")), False)
             for backing in chain[1:]] or (
        [("backing file", info["backing-filename"], False)] if "backing-filename" in info else [])
    specific = info.get("format-specific", {}).get("data", {})
    if "data-file" in specific:
        named.append(("external data file", specific["data-file"], True))
    for extent in specific.get("extents", []):
        if extent.get("filename") != info.get("filename"):
            named.append(("extent", extent.get("filename"), True))
    return named
