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
A new type is a module here and its name in NAMES.
"""
import importlib

# The types, by the name in their script's (block-<name>). A run imports
# the one it serves, not all: all six took 42 ms on the host against 1 ms
# for file alone (part's dataclasses, snapshot's hashlib and uuid, tap's
# subprocess), and importing is many times slower in an emulated dom0.
NAMES = ("cow", "file", "lvsnap", "nbd", "part", "snapshot", "tap")


def module(name):
    """The module of the type called name; KeyError if there is none."""
    if name not in NAMES:
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name}")

