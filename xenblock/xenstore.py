"""The one xenstore connection of a run, opened on first use.

Strings in and out. Paths may be relative ("backend/vbd/3/51712"): xenstored
resolves them under the caller's domain, which is what makes driver domains
work, so they are passed through untouched.

xenstored's wire protocol (Xen's xen/include/public/io/xs_wire.h) is spoken
here directly: a header of four little-endian 32-bit words (request type,
request id, transaction id, payload length), then the payload; a reply
comes back in the same form, or as XS_ERROR carrying an errno name. A run
makes a handful of requests, one at a time, so no reader thread is needed.
This replaced pyxs, whose import (socket, threading, queue, platform and
thirteen regular expressions) and reader thread cost an add 0.7 s in the
emulated dom0, a fifth of its time (benchmarks/RESULTS.md). The tests
still use pyxs as an independent client: the xenstored double is held to
the real xenstored through it (tests/support/xenstore_contract.py).

A remove that finds its record never talks to xenstore (libxl deletes the
backend nodes itself), so it never opens the connection.
"""
import os
import struct

from .errors import one_line

SOCKET_PATHS = ("/run/xenstored/socket", "/var/run/xenstored/socket")
XENBUS_PATHS = ("/dev/xen/xenbus", "/proc/xen/xenbus")
HEADER = struct.Struct("<4I")  # struct xsd_sockmsg: type, req_id, tx_id, len
# enum xsd_sockmsg_type: the requests a run makes, and the error reply.
READ, TRANSACTION_START, TRANSACTION_END, WRITE, ERROR = 2, 6, 7, 11, 16
# A request carries at most 4096 bytes (XENSTORE_PAYLOAD_MAX; xenstored
# drops a client that sends more): a value is cut to leave room for its path.
MAX_VALUE = 3072


class XenStore:
    """Context manager: connects on the first request, closes on exit.

    Raises ConnectionError (the builtin) when xenstore cannot be reached or
    the connection breaks, and XenStoreError when xenstored refuses a
    request. XENSTORED_PATH (libxenstore's variable) names another socket:
    the host tests' xenstored double listens there.
    """

    def __init__(self, environ):
        self._environ = environ
        self._connection = None
        self._transaction = 0  # 0: none
        self._request_id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self._connection is not None:
            self._connection.close()

    def read(self, key, default=None):
        try:
            value = self._request(READ, key.encode() + b"\0")
        except XenStoreError as e:
            if e.name == "ENOENT":
                return default
            raise
        return value.decode(errors="surrogateescape")

    def exists(self, key):
        return self.read(key) is not None

    def write_all(self, key, values):
        """Write key/<name> for each item in one transaction, only if key
        still exists (a backend deleted meanwhile must not be re-created as
        stale nodes). Returns False when key is gone."""
        while True:
            self._transaction = int(self._request(TRANSACTION_START, b"\0").rstrip(b"\0"))
            try:
                gone = not self.exists(key)
                for name, value in {} if gone else values.items():
                    self._request(WRITE, f"{key}/{name}".encode() + b"\0" + _wire(value))
            except BaseException:
                self._end(commit=False)
                raise
            if gone:
                self._end(commit=False)
                return False
            if self._end(commit=True):
                return True
            # EAGAIN: another writer touched what we read; xenstored wants a retry.

    def _end(self, commit):
        """End the transaction; False if xenstored refused the commit (EAGAIN)."""
        transaction, self._transaction = self._transaction, 0
        try:
            self._request(TRANSACTION_END, b"T\0" if commit else b"F\0", transaction)
        except XenStoreError as e:
            if commit and e.name == "EAGAIN":
                return False
            raise
        return commit

    def _request(self, kind, payload, transaction=None):
        """The reply's payload to one request, in the current transaction
        unless another is given."""
        connection = self._connected()
        self._request_id += 1
        header = HEADER.pack(kind, self._request_id, self._transaction if transaction is None else transaction,
                             len(payload))
        try:
            connection.send(header + payload)
            reply, request_id, _, length = HEADER.unpack(connection.receive(HEADER.size))
            body = connection.receive(length)
        except OSError as e:
            raise ConnectionError(f"lost the connection to xenstore: {e}") from e
        if request_id != self._request_id or reply not in (kind, ERROR):
            raise ConnectionError(f"xenstore answered request {request_id} with type {reply}, "
                                  f"not {self._request_id} with type {kind}")
        if reply == ERROR:
            raise XenStoreError(body.rstrip(b"\0").decode(errors="replace"), kind, payload)
        return body

    def _connected(self):
        if self._connection is None:
            socket_path = self._environ.get("XENSTORED_PATH") or _first_existing(SOCKET_PATHS)
            try:
                self._connection = _Socket(socket_path) if socket_path else _Device(_xenbus_path())
            except OSError as e:
                raise ConnectionError(f"cannot reach xenstore: {e}") from e
        return self._connection


class XenStoreError(Exception):
    """xenstored refused a request: name is the errno name it answered."""

    def __init__(self, name, kind, payload):
        path = payload.split(b"\0", 1)[0].decode(errors="replace")
        super().__init__(f"xenstore refused request {kind} on {path!r}: {name}")
        self.name = name


class _Socket:
    """xenstored's unix socket."""

    def __init__(self, path):
        # The C module under socket: socket.py's import builds enums of all
        # its constants and imports selectors, slow under emulation.
        import _socket
        self._socket = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)  # close-on-exec, as all are
        try:
            self._socket.connect(path)
        except OSError:
            self._socket.close()
            raise

    def send(self, data):
        self._socket.sendall(data)

    def receive(self, size):
        return _exactly(size, self._socket.recv)

    def close(self):
        self._socket.close()


class _Device:
    """The xenbus device, where xenstored has no socket here (it runs in
    another domain): the kernel passes whole messages through."""

    def __init__(self, path):
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def send(self, data):
        while data:
            data = data[os.write(self._fd, data):]

    def receive(self, size):
        return _exactly(size, lambda wanted: os.read(self._fd, wanted))

    def close(self):
        os.close(self._fd)


def _exactly(size, read):
    data = b""
    while len(data) < size:
        chunk = read(size - len(data))
        if not chunk:
            raise ConnectionError("xenstore closed the connection")
        data += chunk
    return data


def _wire(value):
    # One line of 7-bit text, never empty: a path with other characters must
    # still end up readable in hotplug-error (libxl logs it as a C string).
    text = one_line(str(value)).encode("ascii", errors="backslashreplace")
    if len(text) > MAX_VALUE:
        text = text[:MAX_VALUE - 3] + b"..."
    return text or b" "


def _first_existing(paths):
    return next((p for p in paths if os.path.exists(p)), None)


def _xenbus_path():
    return _first_existing(XENBUS_PATHS) or XENBUS_PATHS[0]
