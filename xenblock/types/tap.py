"""block-tap: an image in a named format (target=<format>:<path>).

aio and raw are plain image files: block-file serves them (a loop device),
so this module hands them to xenblock.types.file. The other formats are
qemu's; the format is the user's word and never probed (a raw guest disk
may hold what looks like a qcow2 header): `qemu-img info -f <format>`
checks that the image really is one, and an image that names other files
(a backing file, an external data file, vmdk extents) is refused: such a
name can reach any file or device of dom0.

Serving the qemu formats (qemu-nbd onto an nbd device) is not built yet:
add refuses them after the checks, naming that.
"""
import json
from dataclasses import dataclass

from .. import command
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


def check(spec, request, config, opened):
    if spec.format in LOOP_FORMATS:
        return file.check(spec.path, request, config, opened)
    source = opened.enter_context(resolve(spec.path, request.writable))
    if source.devnum is not None:
        raise HotplugError(f"{spec.path}: a block device, not a {spec.format} image file; use raw:")
    return [Use(source, request.writable)]


def attach(spec, uses, request, build):
    if spec.format in LOOP_FORMATS:
        return file.attach(spec.path, uses, request, build)
    # Here rather than in check, which has no deadline: a refusal now undoes
    # an empty record, nothing else.
    _refuse_outside_files(spec, _image_info(spec, build.deadline))
    raise HotplugError(f"{spec.path}: format {spec.format} is served through qemu-nbd, which block-tap "
                       "does not do yet; convert the image to raw (qemu-img convert) and use raw:")


def _image_info(spec, deadline):
    # -U: only headers are read, and a writer's lock must not fail the check
    # (qemu's own lock, taken by whatever serves the image, keeps a second
    # writer out).
    argv = ["qemu-img", "info", "-U", "-f", QEMU_FORMATS[spec.format], "--output=json", spec.path]
    try:
        out = command.run(argv, f"checking that {spec.path} is a {spec.format} image", deadline, INFO_SECONDS)
    except command.CommandError as e:
        said = " ".join(e.stderr.split()).removeprefix("qemu-img: ") or f"status {e.returncode}"
        raise HotplugError(f"{spec.path}: not a valid {spec.format} image: {said}") from None
    return json.loads(out)


def _refuse_outside_files(spec, info):
    """Refuse an image naming another file: the user named this one only."""
    named = []
    if "backing-filename" in info:
        named.append(f"backing file {info['backing-filename']}")
    specific = info.get("format-specific", {}).get("data", {})
    if "data-file" in specific:
        named.append(f"external data file {specific['data-file']}")
    for extent in specific.get("extents", []):
        if extent.get("filename") != info.get("filename"):
            named.append(f"extent {extent.get('filename')}")
    if named:
        raise HotplugError(f"{spec.path}: the {spec.format} image names other files ({'; '.join(named)}); "
                           "block-tap serves only self-contained images")
