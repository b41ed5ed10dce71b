"""A xenstored double that speaks the real wire protocol over a Unix socket.

The host has no Xen, and Debian's xenstored does not run without a
hypervisor. This daemon implements the subset of xenstored the project
relies on, with the same packets (xs_wire.h: four little-endian u32s type,
req_id, tx_id, len, then the payload; errors are XS_ERROR carrying the errno
name) and the same rules, so the production code runs unmodified against
it through pyxs. tests/support/xenstore_contract.py states those rules; the
VM tier runs the same contract against the real xenstored.

Rules mirrored from xenstored (tools/xenstored/core.c):
- relative paths resolve under the caller's home, /local/domain/0 for dom0;
- WRITE and MKDIR create missing parents with empty values;
- RM of a missing node answers OK when its parent exists, else ENOENT;
- a transaction works on a private copy; its commit fails with EAGAIN when
  the store changed since it began (more conservative than xenstored's
  per-node generations, which only makes retries more frequent);
- WATCH fires once at registration, then for changes at or below its path.

    python3 tests/support/fake_xenstored.py SOCKET   # run standalone
"""
import os
import socket
import struct
import sys
import threading

HEADER = struct.Struct("<4I")
OPS = {"DIRECTORY": 1, "READ": 2, "GET_PERMS": 3, "WATCH": 4, "UNWATCH": 5,
       "TRANSACTION_START": 6, "TRANSACTION_END": 7, "GET_DOMAIN_PATH": 10,
       "WRITE": 11, "MKDIR": 12, "RM": 13, "SET_PERMS": 14, "WATCH_EVENT": 15, "ERROR": 16}
HOME = "/local/domain/0"
VALID = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/_@")


class XenstoreError(Exception):
    """Answered as XS_ERROR with this errno name."""


class Store:
    """The tree: {absolute path: value}; every path's parents are present."""

    def __init__(self, nodes=None):
        self.nodes = dict(nodes) if nodes is not None else {"/": b""}

    def copy(self):
        return Store(self.nodes)

    def read(self, path):
        if path not in self.nodes:
            raise XenstoreError("ENOENT")
        return self.nodes[path]

    def write(self, path, value):
        self._create_parents(path)
        self.nodes[path] = value

    def mkdir(self, path):
        if path not in self.nodes:
            self.write(path, b"")

    def children(self, path):
        self.read(path)
        prefix = path.rstrip("/") + "/"
        return sorted({p[len(prefix):].split("/")[0] for p in self.nodes
                       if p.startswith(prefix) and p != prefix})

    def remove(self, path):
        if path not in self.nodes:
            if _parent(path) in self.nodes:
                return  # xenstored: "Didn't exist already? Fine, if parent exists."
            raise XenstoreError("ENOENT")
        if path == "/":
            raise XenstoreError("EINVAL")
        prefix = path + "/"
        for p in [p for p in self.nodes if p == path or p.startswith(prefix)]:
            del self.nodes[p]

    def _create_parents(self, path):
        parent = _parent(path)
        if parent not in self.nodes:
            self.write(parent, b"")


def _parent(path):
    return path.rsplit("/", 1)[0] or "/"


def canonical(path):
    if not path or len(path) > 3072 or not set(path) <= VALID or "//" in path or (
            len(path) > 1 and path.endswith("/")):
        raise XenstoreError("EINVAL")
    return path if path.startswith("/") else f"{HOME}/{path}"


class FakeXenstored:
    def __init__(self, socket_path):
        self.socket_path = socket_path
        self.store = Store()
        self.generation = 0
        self.lock = threading.Lock()
        self.watches = []  # (connection, absolute path, path as given, token)
        self.connections = []
        self._listener = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def start(self):
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.socket_path)
        self._listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self._listener.close()
        for connection in list(self.connections):
            connection.close()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def seed(self, nodes):
        with self.lock:
            for path, value in nodes.items():
                self.store.write(canonical(path), value.encode())

    def dump(self):
        with self.lock:
            return {p: v.decode(errors="replace") for p, v in self.store.nodes.items()}

    def _accept(self):
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # stopped
            connection = Connection(self, sock)
            self.connections.append(connection)
            threading.Thread(target=connection.serve, daemon=True).start()

    def changed(self, path):
        """Called with the lock held after a committed change at path."""
        self.generation += 1
        for connection, watched, given, token in self.watches:
            if path == watched or path.startswith(watched.rstrip("/") + "/") or watched.startswith(path + "/"):
                relative = given if given.startswith("/") else path[len(HOME) + 1:]
                connection.event(path if given.startswith("/") else relative, token)


class Connection:
    def __init__(self, daemon, sock):
        self.daemon = daemon
        self.sock = sock
        self.send_lock = threading.Lock()
        self.transactions = {}  # id -> (Store copy, generation at start, changed paths)
        self.next_tx = 1

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def serve(self):
        try:
            while True:
                header = self._receive(HEADER.size)
                if header is None:
                    return
                op, req_id, tx_id, length = HEADER.unpack(header)
                payload = self._receive(length) if length else b""
                self._answer(op, req_id, tx_id, payload)
        finally:
            with self.daemon.lock:
                self.daemon.watches = [w for w in self.daemon.watches if w[0] is not self]
            if self in self.daemon.connections:
                self.daemon.connections.remove(self)

    def _receive(self, size):
        data = b""
        while len(data) < size:
            try:
                chunk = self.sock.recv(size - len(data))
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def _answer(self, op, req_id, tx_id, payload):
        handler = HANDLERS.get(op)
        try:
            if handler is None:
                raise XenstoreError("ENOSYS")
            with self.daemon.lock:
                reply = handler(self, tx_id, payload)
            self._send(op, req_id, tx_id, reply)
        except XenstoreError as e:
            self._send(OPS["ERROR"], req_id, tx_id, str(e).encode() + b"\0")

    def _send(self, op, req_id, tx_id, payload):
        with self.send_lock:
            try:
                self.sock.sendall(HEADER.pack(op, req_id, tx_id, len(payload)) + payload)
            except OSError:
                pass

    def event(self, path, token):
        self._send(OPS["WATCH_EVENT"], 0, 0, path.encode() + b"\0" + token + b"\0")

    def store_for(self, tx_id):
        if tx_id == 0:
            return self.daemon.store
        if tx_id not in self.transactions:
            raise XenstoreError("ENOENT")
        return self.transactions[tx_id][0]

    def modify(self, tx_id, path, change):
        change(self.store_for(tx_id))
        if tx_id:
            self.transactions[tx_id][2].append(path)
        else:
            self.daemon.changed(path)


def _args(payload, count):
    parts = payload.split(b"\0", count)
    if len(parts) <= count - 1:
        raise XenstoreError("EINVAL")
    return parts


def _path(payload):
    return canonical(payload.split(b"\0", 1)[0].decode(errors="replace"))


def _read(conn, tx_id, payload):
    return conn.store_for(tx_id).read(_path(payload))


def _directory(conn, tx_id, payload):
    return b"".join(name.encode() + b"\0" for name in conn.store_for(tx_id).children(_path(payload)))


def _write(conn, tx_id, payload):
    name, value = payload.split(b"\0", 1) if b"\0" in payload else (payload, b"")
    path = canonical(name.decode(errors="replace"))
    conn.modify(tx_id, path, lambda store: store.write(path, value))
    return b"OK\0"


def _mkdir(conn, tx_id, payload):
    path = _path(payload)
    conn.modify(tx_id, path, lambda store: store.mkdir(path))
    return b"OK\0"


def _rm(conn, tx_id, payload):
    path = _path(payload)
    conn.modify(tx_id, path, lambda store: store.remove(path))
    return b"OK\0"


def _get_perms(conn, tx_id, payload):
    conn.store_for(tx_id).read(_path(payload))
    return b"n0\0"


def _set_perms(conn, tx_id, payload):
    conn.store_for(tx_id).read(_path(payload))
    return b"OK\0"


def _transaction_start(conn, tx_id, payload):
    number = conn.next_tx
    conn.next_tx += 1
    conn.transactions[number] = (conn.daemon.store.copy(), conn.daemon.generation, [])
    return str(number).encode() + b"\0"


def _transaction_end(conn, tx_id, payload):
    if tx_id not in conn.transactions:
        raise XenstoreError("ENOENT")
    store, generation, changed = conn.transactions.pop(tx_id)
    if payload.startswith(b"T"):
        if generation != conn.daemon.generation:
            raise XenstoreError("EAGAIN")
        conn.daemon.store = store
        for path in changed:
            conn.daemon.changed(path)
    return b"OK\0"


def _watch(conn, tx_id, payload):
    given, token = _args(payload, 2)[:2]
    given = given.decode()
    watched = canonical(given)
    conn.daemon.watches.append((conn, watched, given, token))
    conn.event(given, token)  # xenstored fires every new watch once
    return b"OK\0"


def _unwatch(conn, tx_id, payload):
    given, token = _args(payload, 2)[:2]
    daemon = conn.daemon
    daemon.watches = [w for w in daemon.watches if not (w[0] is conn and w[2] == given.decode() and w[3] == token)]
    return b"OK\0"


def _get_domain_path(conn, tx_id, payload):
    domid = payload.split(b"\0", 1)[0].decode()
    if not domid.isdigit():
        raise XenstoreError("EINVAL")
    return f"/local/domain/{domid}".encode() + b"\0"


HANDLERS = {OPS["READ"]: _read, OPS["DIRECTORY"]: _directory, OPS["WRITE"]: _write,
            OPS["MKDIR"]: _mkdir, OPS["RM"]: _rm, OPS["GET_PERMS"]: _get_perms,
            OPS["SET_PERMS"]: _set_perms, OPS["TRANSACTION_START"]: _transaction_start,
            OPS["TRANSACTION_END"]: _transaction_end, OPS["WATCH"]: _watch,
            OPS["UNWATCH"]: _unwatch, OPS["GET_DOMAIN_PATH"]: _get_domain_path}


if __name__ == "__main__":
    daemon = FakeXenstored(sys.argv[1])
    daemon.start()
    threading.Event().wait()
