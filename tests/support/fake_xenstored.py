"""A xenstored double for the host tier, which has no Xen to run xenstored.

It speaks xenstored's wire protocol (xen/include/public/io/xs_wire.h) on a
Unix socket, so the production code reaches it unmodified (xenblock.xenstore,
through XENSTORED_PATH), and so do the tests through pyxs. It does only what xenblock and its tests ask of xenstore:
READ, WRITE, RM, DIRECTORY and transactions. Every caller is dom0, so there
are no permissions; any other operation (watches, permissions, MKDIR, ...)
is answered ENOSYS, as xenstored answers one it lacks.
tests/support/xenstore_contract.py checks each behaviour relied on, and the
VM tier runs the same checks against the real xenstored: that is what keeps
this double honest.

    with FakeXenstored(socket_path) as daemon:
        ...                # clients connect to socket_path
        daemon.dump()      # {absolute path: value}
"""
import enum
import itertools
import os
import socketserver
import struct
import threading
from collections import namedtuple

HEADER = struct.Struct("<4I")  # struct xsd_sockmsg: type, req_id, tx_id, len
HOME = "/local/domain/0"       # where dom0's relative paths resolve
NUL = b"\0"
OK = b"OK\0"


class XsType(enum.IntEnum):
    """enum xsd_sockmsg_type: the values this double answers, and ERROR."""
    DIRECTORY = 1
    READ = 2
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    WRITE = 11
    RM = 13
    ERROR = 16


class XenstoreError(Exception):
    """Answered as XS_ERROR carrying this errno name, e.g. "ENOENT"."""


def parent_of(path):
    return path.rsplit("/", 1)[0] or "/"


def absolute(path):
    # The clients check a path's form before sending it (pyxs; xenblock's
    # hotplug checks XENBUS_PATH), so only its place is worked out here.
    return path if path.startswith("/") else f"{HOME}/{path}"


def path_of(payload):
    return absolute(payload.split(NUL, 1)[0].decode())


class Store:
    """{absolute path: value}, every node's parent included; generation
    counts the changes made to it."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.generation = 0

    def read(self, path):
        try:
            return self.nodes[path]
        except KeyError:
            raise XenstoreError("ENOENT") from None

    def children(self, path):
        self.read(path)  # a missing node is ENOENT, not an empty list
        return [p.rsplit("/", 1)[1] for p in self.nodes if p != "/" and parent_of(p) == path]

    def write(self, path, value):
        self.generation += 1
        self.nodes[path] = value
        while (path := parent_of(path)) not in self.nodes:
            self.nodes[path] = b""  # missing parents are created empty

    def remove(self, path):
        self.read(parent_of(path))  # do_rm(): a missing node is fine, a missing parent ENOENT
        self.generation += 1
        for doomed in [p for p in self.nodes if p == path or p.startswith(path + "/")]:
            del self.nodes[doomed]

    def commit(self, tx):
        # EAGAIN once anything changed since the transaction began: stricter
        # than xenstored, which looks only at the nodes the transaction used
        # (xenstored_transaction.c), but EAGAIN is what every client must be
        # ready to retry, and the contract holds both to failing a conflict.
        if self.generation != tx.start:
            raise XenstoreError("EAGAIN")
        self.nodes = tx.store.nodes
        self.generation += 1


# A transaction works on a copy of the store taken at its start.
Transaction = namedtuple("Transaction", "start store")


class Connection(socketserver.StreamRequestHandler):
    """One client: its requests answered in order, its transactions its own."""

    def handle(self):
        self.transactions = {}
        self.tx_ids = itertools.count(1)  # 0 means "no transaction"
        while len(header := self.rfile.read(HEADER.size)) == HEADER.size:
            op, req_id, tx_id, length = HEADER.unpack(header)
            payload = self.rfile.read(length)
            with self.server.lock:
                op, reply = self.answer(op, tx_id, payload)
            # Clients match a reply by req_id and check its type (pyxs its tx_id too).
            self.wfile.write(HEADER.pack(op, req_id, tx_id, len(reply)) + reply)

    def answer(self, op, tx_id, payload):
        try:
            if op not in HANDLERS:
                raise XenstoreError("ENOSYS")
            return op, HANDLERS[op](self, tx_id, payload)
        except XenstoreError as e:
            return XsType.ERROR, str(e).encode() + NUL

    def store(self, tx_id):
        return self.server.store if tx_id == 0 else self.transaction(tx_id).store

    def transaction(self, tx_id):
        try:
            return self.transactions[tx_id]
        except KeyError:
            raise XenstoreError("ENOENT") from None  # as transaction_lookup()

    def read(self, tx_id, payload):
        return self.store(tx_id).read(path_of(payload))

    def directory(self, tx_id, payload):
        return b"".join(name.encode() + NUL for name in self.store(tx_id).children(path_of(payload)))

    def write(self, tx_id, payload):
        path, value = payload.split(NUL, 1)  # the value is everything after the path
        self.store(tx_id).write(absolute(path.decode()), value)
        return OK

    def rm(self, tx_id, payload):
        self.store(tx_id).remove(path_of(payload))
        return OK

    def transaction_start(self, tx_id, payload):
        live = self.server.store
        new_id = next(self.tx_ids)
        self.transactions[new_id] = Transaction(live.generation, Store(dict(live.nodes)))
        return str(new_id).encode() + NUL

    def transaction_end(self, tx_id, payload):
        tx = self.transaction(tx_id)
        del self.transactions[tx_id]  # gone whatever the outcome
        if payload == b"T\0":
            self.server.store.commit(tx)
        return OK


HANDLERS = {
    XsType.DIRECTORY: Connection.directory,
    XsType.READ: Connection.read,
    XsType.TRANSACTION_START: Connection.transaction_start,
    XsType.TRANSACTION_END: Connection.transaction_end,
    XsType.WRITE: Connection.write,
    XsType.RM: Connection.rm,
}


class FakeXenstored(socketserver.ThreadingUnixStreamServer):
    """The daemon: listening from construction, serving inside `with`.

    Each client has a thread of its own; nothing waits for it, so it
    outlives the daemon until its client disconnects.
    """
    daemon_threads = True

    def __init__(self, socket_path):
        self.socket_path = str(socket_path)
        self.store = Store({"/": b""})
        self.lock = threading.Lock()
        super().__init__(self.socket_path, Connection)

    def __enter__(self):
        # The poll interval is how long leaving the `with` waits.
        threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        self.shutdown()
        self.server_close()
        os.unlink(self.socket_path)

    def dump(self):
        """{absolute path: value} of every node, for assertions."""
        with self.lock:
            return dict(self.store.nodes)
