"""The one xenstore connection of a run, through pyxs, opened on first use.

Strings in and out. Paths may be relative ("backend/vbd/3/51712"): xenstored
resolves them under the caller's domain, which is what makes driver domains
work, so they are passed through untouched.

A remove that finds its record never talks to xenstore (libxl deletes the
backend nodes itself), so it never imports pyxs either: that import is the
costliest part of a run (about a second under emulation, see benchmarks/).
"""
import os

from .errors import one_line

SOCKET_PATHS = ("/run/xenstored/socket", "/var/run/xenstored/socket")


class XenStore:
    """Context manager: connects on the first request, closes on exit.

    Raises ConnectionError (the builtin) when xenstore cannot be reached.
    XENSTORED_PATH (pyxs's own variable) names another socket: the host tests'
    xenstored double listens there.
    """

    def __init__(self, environ):
        self._environ = environ
        self._client = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self._client is not None:
            self._client.close()

    def read(self, key, default=None):
        value = self._connected().read(key.encode(), _MISSING)
        return default if value is _MISSING else value.decode(errors="surrogateescape")

    def exists(self, key):
        return self.read(key) is not None

    def write_all(self, key, values):
        """Write key/<name> for each item in one transaction, only if key
        still exists (a backend deleted meanwhile must not be re-created as
        stale nodes). Returns False when key is gone."""
        client = self._connected()
        while True:
            client.transaction()
            if not self.exists(key):
                client.rollback()
                return False
            for name, value in values.items():
                client.write(f"{key}/{name}".encode(), _wire(value))
            if client.commit():
                return True
            # EAGAIN: another writer touched what we read; xenstored wants a retry.

    def _connected(self):
        if self._client is None:
            import pyxs
            socket_path = self._environ.get("XENSTORED_PATH") or _first_existing(SOCKET_PATHS)
            if socket_path:
                client = pyxs.Client(unix_socket_path=socket_path)
            else:
                client = pyxs.Client(xen_bus_path=_xenbus_path())
            try:
                client.connect()
            except (OSError, pyxs.PyXSError) as e:
                raise ConnectionError(f"cannot reach xenstore: {e}") from e
            self._client = client
        return self._client

# What pyxs's read returns for a missing node (it returns its default only
# when that is not None).
_MISSING = object()


def _wire(value):
    # pyxs accepts only non-empty 7-bit text without control characters; a
    # path with other characters must still end up readable in hotplug-error.
    text = one_line(str(value)).encode("ascii", errors="backslashreplace")
    return text or b" "


def _first_existing(paths):
    return next((p for p in paths if os.path.exists(p)), None)


def _xenbus_path():
    return _first_existing(("/dev/xen/xenbus", "/proc/xen/xenbus")) or "/dev/xen/xenbus"
