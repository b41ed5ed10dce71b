"""The disk types, one module each, registered in one table.

Each module offers the same lifecycle:
  parse(target) -> spec          the target= string, checked for form only
  check(spec, request, config, opened) -> [Use, ...]
                                 the images it names (source.Use: each opened
                                 once, entered into the ExitStack opened, and
                                 how the disk uses it), checked against the
                                 request; creates nothing
  attach(spec, uses, request, build) -> Device
                                 build the device, recording every kernel
                                 object through build before it exists
  named_paths(spec) -> [path, ...]
                                 what must exist for an add to work, for
                                 `xenblock check-config` (optional)
A type may also offer named_after(spec, guest, device), called before
check with the guest's name and the device's (xvda), for what it names
after them (block-lvsnap's snapshot).
Teardown is generic: it undoes the record (see xenblock.build).
"""
from . import cow, file, lvsnap, part, snapshot, tap

TYPES = {
    "cow": cow,
    "file": file,
    "lvsnap": lvsnap,
    "part": part,
    "snapshot": snapshot,
    "tap": tap,
}

