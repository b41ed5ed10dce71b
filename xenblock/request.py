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
        mode = xs.read(f"{key}/mode", "r").strip() or "r"
        if not set(mode) <= set("rw!"):
            raise HotplugError(f"{key}/mode is {mode!r}: expected w or r")
        frontend = xs.read(f"{key}/frontend-id")
        return cls(key, target, mode, int(frontend) if frontend and frontend.isdigit() else None)
