"""The disk types, one module each, registered in one table.

Each module offers the same lifecycle:
  parse(target) -> spec          the target= string, checked for form only
  check(spec, request) -> Source what it names, opened once and checked
                                 against the request; creates nothing; the
                                 caller closes it (a context manager)
  attach(source, request, build) -> Device
                                 build the device, recording every kernel
                                 object through build before it exists
Teardown is generic: it undoes the record (see xenblock.build).
"""
from . import file

TYPES = {
    "file": file,
}

