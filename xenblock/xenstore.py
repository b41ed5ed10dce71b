"""The one xenstore connection of a run, through pyxs.

Strings in and out. Paths may be relative ("backend/vbd/3/51712"): xenstored
resolves them under the caller's domain, which is what makes driver domains
work, so they are passed through untouched.
"""
import errno
import os

import pyxs

SOCKET_PATHS = ("/run/xenstored/socket", "/var/run/xenstored/socket")


class XenStore:
    def __init__(self, client):
        self._client = client

    def read(self, key, default=None):
        try:
            return self._client.read(key.encode()).decode(errors="surrogateescape")
        except pyxs.PyXSError as e:
            if e.args and e.args[0] == errno.ENOENT:
                return default
            raise

    def exists(self, key):
        return self.read(key) is not None

    def write_all(self, key, values):
        """Write key/<name> for each item in one transaction, only if key
        still exists (a backend deleted meanwhile must not be re-created as
        stale nodes). Returns False when key is gone."""
        while True:
            self._client.transaction()
            if not self.exists(key):
                self._client.rollback()
                return False
            for name, value in values.items():
                self._client.write(f"{key}/{name}".encode(), _wire(value))
            if self._client.commit():
                return True
            # EAGAIN: another writer touched what we read; xenstored wants a retry.


def _wire(value):
    # pyxs accepts only non-empty 7-bit text; a path with other characters
    # must still end up readable in hotplug-error.
    text = str(value).encode("ascii", errors="backslashreplace")
    return text or b" "


class connect:
    """Context manager: XenStore over xenstored's socket, else the xenbus device.

    XENSTORED_PATH (pyxs's own variable) names another socket: the host tests'
    xenstored double listens there.
    """

    def __init__(self, environ):
        socket_path = environ.get("XENSTORED_PATH") or _first_existing(SOCKET_PATHS)
        if socket_path:
            self._client = pyxs.Client(unix_socket_path=socket_path)
        else:
            self._client = pyxs.Client(xen_bus_path=_xenbus_path())

    def __enter__(self):
        try:
            self._client.connect()
        except (OSError, pyxs.PyXSError) as e:
            raise ConnectionError(f"cannot reach xenstore: {e}") from e
        return XenStore(self._client)

    def __exit__(self, *exc_info):
        self._client.close()


def _first_existing(paths):
    return next((p for p in paths if os.path.exists(p)), None)


def _xenbus_path():
    return _first_existing(("/dev/xen/xenbus", "/proc/xen/xenbus")) or "/dev/xen/xenbus"
