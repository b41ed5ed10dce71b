"""What libxl asks for: the backend nodes of one disk, read once."""
from collections import namedtuple

from .errors import HotplugError


class Request(namedtuple("Request", "key target mode frontend_id")):
    """key: XENBUS_PATH (backend/vbd/3/51712); target: params, the target=
    string verbatim; mode: "w" or "r" ("w!" is Xen's old "writable, sharing
    allowed"); frontend_id: the guest's domid, None if not given."""
    __slots__ = ()

    @property
    def writable(self):
        return "w" in self.mode

    @property
    def sharing_forced(self):
        return "!" in self.mode

    @classmethod
    def read(cls, xs, key):
        target = xs.read(f"{key}/params")
        if target is None:
            raise HotplugError(f"{key}/params is missing: the disk has no target")
        if "\0" in target:
            # No path holds one (the kernel would cut it there): refused, not cut.
            raise HotplugError(f"{key}/params holds a NUL byte: {target!r} is no target")
        mode = xs.read(f"{key}/mode", "r").strip() or "r"
        if mode not in MODES:
            raise HotplugError(f"{key}/mode is {mode!r}: expected w or r")
        return cls(key, target, mode, _domain_id(key, xs.read(f"{key}/frontend-id")))


# libxl writes w or r; xend's w! is "writable, sharing allowed". Anything
# else (rw, !) is a mistake, not a mode to guess at.
MODES = {"r", "w", "w!"}
# Domain ids from 0 to DOMID_FIRST_RESERVED - 1 (xen/include/public/xen.h).
DOMID_LIMIT = 0x7FF0


def _domain_id(key, text):
    """frontend-id as a number; None if the node is missing (a backend made
    by hand: nobody's twin). Anything else is refused: the sharing check
    and the snapshot names rely on it."""
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and int(text) < DOMID_LIMIT):
        raise HotplugError(f"{key}/frontend-id is {text!r}: expected a domain id (0 to {DOMID_LIMIT - 1})")
    return int(text)
