"""A xenstored double that speaks the real wire protocol over a Unix socket.

The host tier has no Xen, and Debian's xenstored does not run without a
hypervisor. This daemon serves the xenstore protocol (Xen's
docs/misc/xenstore.txt and xen/include/public/io/xs_wire.h) to any number of
clients, so the production code reaches it unmodified through pyxs
(pyxs.Client(unix_socket_path=...), or XENSTORED_PATH in the environment).
tests/support/xenstore_contract.py states what the project relies on; the
VM tier runs that same contract against the real xenstored, which keeps this
double honest.

Every caller is treated as dom0 on a socket: privileged, so permissions are
stored and reported but never enforced. The rules below mirror the C
xenstored of Xen 4.17 (tools/xenstore/xenstored_*.c, the version the VM
runs; current master keeps them in tools/xenstored/); a comment names the
function each non-obvious rule comes from.

    python3 tests/support/fake_xenstored.py SOCKET     # serve until killed

In process:

    with FakeXenstored(path) as daemon:
        daemon.seed({"/local/domain/0/name": "Domain-0"})
        ...
        assert daemon.dump()["/local/domain/0/name"] == "Domain-0"
"""
import enum
import os
import re
import selectors
import signal
import socket
import stat
import string
import struct
import sys
import threading
from collections import namedtuple
from dataclasses import dataclass, field

HEADER = struct.Struct("<4I")  # struct xsd_sockmsg: type, req_id, tx_id, len
PAYLOAD_MAX = 4096             # XENSTORE_PAYLOAD_MAX
REL_PATH_MAX = 2048            # XENSTORE_REL_PATH_MAX
HOME = "/local/domain/0"       # where a socket caller's relative paths live
NUL = b"\0"
OK = b"OK\0"
VALID_CHARS = frozenset(string.ascii_letters + string.digits + "-/_@")
SPECIAL_WATCHES = ("@introduceDomain", "@releaseDomain")


class XsType(enum.IntEnum):
    """enum xsd_sockmsg_type (only the values this double names)."""
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16


class XenstoreError(Exception):
    """Answered as XS_ERROR carrying this errno name, e.g. "ENOENT"."""


class ProtocolError(Exception):
    """The client broke the framing: xenstored drops such a connection."""


# ---------------------------------------------------------------- paths

def parent_of(path):
    return path.rsplit("/", 1)[0] or "/"


def child_path(parent, name):
    return f"{parent.rstrip('/')}/{name}"


def basename(path):
    return path.rsplit("/", 1)[1]


def canonical(path):
    """The absolute form of a node path, or EINVAL.

    Mirrors canonicalize() + is_valid_nodename(): relative paths resolve
    under the caller's home; only [A-Za-z0-9-/_@]; no trailing or doubled
    slash; not empty; "@..." names no node. Length: at most 2048 characters
    past "/local/domain/<id>/" (4.17 applies this to dom0 too; master no
    longer limits dom0, so this is the stricter of the two).
    """
    if path is None or not set(path) <= VALID_CHARS or path.startswith("@"):
        raise XenstoreError("EINVAL")
    absolute = path if path.startswith("/") else f"{HOME}/{path}"
    if (absolute.endswith("/") and absolute != "/") or "//" in absolute:
        raise XenstoreError("EINVAL")
    local = re.match(r"/local/domain/\d{1,5}/", absolute)
    if len(absolute) > (local.end() if local else 0) + REL_PATH_MAX:
        raise XenstoreError("EINVAL")
    return absolute


def watch_path(path):
    """A watch may also name a special event: check_watch_path()."""
    if path.startswith("@"):
        if len(path) > REL_PATH_MAX or not set(path) <= VALID_CHARS:
            raise XenstoreError("EINVAL")
        return path
    return canonical(path)


def parse_perm(text):
    """One of w<domid> r<domid> b<domid> n<domid> (xenstore_strings_to_perms;
    it also takes strtol's other spellings, which no client sends)."""
    if not re.fullmatch(r"[rwbn](0|[1-9][0-9]*)", text):
        raise XenstoreError("EINVAL")
    return text


# ---------------------------------------------------------------- the tree

@dataclass
class Node:
    value: bytes = b""
    perms: tuple = ("n0",)
    children: list = field(default_factory=list)  # in creation order

    def copy(self):
        return Node(self.value, self.perms, list(self.children))


# What a modification did: the paths whose generation moves (changed
# nodes, created nodes, and parents whose child list changed), and the
# watch events it raises as (path, exact) pairs, in firing order.
Change = namedtuple("Change", "modified events")
NO_CHANGE = Change((), ())


class Store:
    """{absolute path: Node}; every node's parents exist. No locking."""

    def __init__(self, nodes=None):
        # setup_structure(): a fresh xenstored holds /, /tool, /tool/xenstored.
        self.nodes = nodes if nodes is not None else {
            "/": Node(children=["tool"]),
            "/tool": Node(children=["xenstored"]),
            "/tool/xenstored": Node(),
        }

    def copy(self):
        return Store({path: node.copy() for path, node in self.nodes.items()})

    def node(self, path):
        try:
            return self.nodes[path]
        except KeyError:
            raise XenstoreError("ENOENT") from None

    def read(self, path):
        return self.node(path).value

    def children(self, path):
        return list(self.node(path).children)

    def perms(self, path):
        return self.node(path).perms

    def write(self, path, value):
        created = self._create(path)
        self.nodes[path].value = value
        return Change([path, *created], [(path, False)])

    def mkdir(self, path):
        created = self._create(path)
        return Change(created, [(path, False)]) if created else NO_CHANGE

    def remove(self, path):
        if path not in self.nodes:
            # do_rm(): "Didn't exist already? Fine, if parent exists."
            self.node(parent_of(path))
            return NO_CHANGE
        if path == "/":
            raise XenstoreError("EINVAL")  # do_rm() refuses the root
        doomed = self._subtree_bottom_up(path)
        for gone in doomed:
            del self.nodes[gone]
        parent = parent_of(path)
        self.nodes[parent].children.remove(basename(path))
        # delnode_sub(): each removed node fires watches on exactly itself,
        # the removed top fires watches on it and above, children first.
        events = [(gone, gone != path) for gone in doomed]
        return Change([*doomed, parent], events)

    def set_perms(self, path, perms):
        self.node(path).perms = tuple(perms)
        return Change([path], [(path, False)])

    def adopt(self, other, paths):
        """Take these nodes' state (or absence) from another store."""
        for path in paths:
            if path in other.nodes:
                self.nodes[path] = other.nodes[path].copy()
            else:
                self.nodes.pop(path, None)

    def _create(self, path):
        """Create path and its missing parents with empty values (as
        construct_node(): new nodes inherit their parent's permissions).
        Returns the created paths plus the existing ancestor they hang on."""
        missing = []
        while path not in self.nodes:
            missing.append(path)
            path = parent_of(path)
        if not missing:
            return []
        modified = [path]
        for new in reversed(missing):
            parent = self.nodes[parent_of(new)]
            parent.children.append(basename(new))
            self.nodes[new] = Node(perms=parent.perms)
            modified.append(new)
        return modified

    def _subtree_bottom_up(self, top):
        order, stack = [], [top]
        while stack:
            path = stack.pop()
            order.append(path)
            stack.extend(child_path(path, name) for name in self.nodes[path].children)
        return order[::-1]  # every node after all of its descendants


# ---------------------------------------------------------------- the database

@dataclass
class Watch:
    conn: "Connection"
    path: str       # absolute, or a special "@..." name
    token: bytes
    relative: bool  # registered with a relative path: events come back relative

    def fires_for(self, path, exact):
        # fire_watches(): an exact event matches only the watched node, the
        # others also match below it ("/" is above everything).
        if path == self.path:
            return True
        if exact:
            return False
        return self.path == "/" or path.startswith(self.path + "/")

    def reported(self, path):
        return path[len(HOME) + 1:] if self.relative else path


class Database:
    """The committed store, its generation counts and the watches on it.

    Conflict detection follows xenstored's idea (xenstored_transaction.c):
    every modification stamps the nodes it touched with a new generation;
    a transaction fails with EAGAIN when a node it accessed (read, listed,
    wrote, or found missing) was stamped after the transaction began.
    xenstored compares against the generation seen at the first access, so
    this double is slightly more conservative, never less.
    """

    def __init__(self):
        self.store = Store()
        self.generation = 0
        self.changed_at = {}  # path -> generation of its last change (also for removed paths)
        self.watches = []

    def read(self, path):
        return self.store.read(path)

    def children(self, path):
        return self.store.children(path)

    def perms(self, path):
        return self.store.perms(path)

    def write(self, path, value):
        self.publish(self.store.write(path, value))

    def mkdir(self, path):
        self.publish(self.store.mkdir(path))

    def remove(self, path):
        self.publish(self.store.remove(path))

    def set_perms(self, path, perms):
        self.publish(self.store.set_perms(path, perms))

    def begin(self):
        return Transaction(self.store.copy(), self.generation)

    def commit(self, tx):
        if any(self.changed_at.get(path, 0) > tx.start for path in tx.touched):
            raise XenstoreError("EAGAIN")
        self.store.adopt(tx.store, tx.modified)
        self.publish(Change(tx.modified, tx.events()))

    def publish(self, change):
        if not change.modified:
            return
        self.generation += 1
        for path in change.modified:
            self.changed_at[path] = self.generation
        for path, exact in change.events:
            for watch in self.watches:
                if watch.fires_for(path, exact):
                    watch.conn.event(watch.reported(path), watch.token)

    def forget(self, conn):
        self.watches = [w for w in self.watches if w.conn is not conn]


class Transaction:
    """A private copy of the store, and what was done to it.

    Same interface as Database for the operations, so handlers need not care
    whether a request is inside a transaction. Its watch events wait for the
    commit, one per node (queue_watches(): a subtree event wins over an
    exact one).
    """

    def __init__(self, store, start):
        self.store = store
        self.start = start
        self.touched = set()
        self.modified = set()
        self._events = {}

    def read(self, path):
        self.touched.add(path)
        return self.store.read(path)

    def children(self, path):
        self.touched.add(path)
        return self.store.children(path)

    def perms(self, path):
        self.touched.add(path)
        return self.store.perms(path)

    def write(self, path, value):
        self.touched.add(path)
        self._record(self.store.write(path, value))

    def mkdir(self, path):
        self.touched.add(path)
        self._record(self.store.mkdir(path))

    def remove(self, path):
        self.touched.update({path, parent_of(path)})
        self._record(self.store.remove(path))

    def set_perms(self, path, perms):
        self.touched.add(path)
        self._record(self.store.set_perms(path, perms))

    def events(self):
        return list(self._events.items())

    def _record(self, change):
        self.touched.update(change.modified)
        self.modified.update(change.modified)
        for path, exact in change.events:
            self._events[path] = self._events.get(path, True) and exact


# ---------------------------------------------------------------- connections

Packet = namedtuple("Packet", "op req_id tx_id payload")


class Connection:
    """One client socket: its buffers, transactions and watches."""

    def __init__(self, sock):
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.transactions = {}
        self.next_tx = 1
        self.closed = False

    def fileno(self):
        return self.sock.fileno()

    def receive(self):
        """Read what has arrived; False once the peer has gone."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        self.inbox += data
        return bool(data)

    def packets(self):
        while len(self.inbox) >= HEADER.size:
            op, req_id, tx_id, length = HEADER.unpack_from(self.inbox)
            if length > PAYLOAD_MAX:
                raise ProtocolError(f"payload of {length} bytes")
            end = HEADER.size + length
            if len(self.inbox) < end:
                return
            payload = bytes(self.inbox[HEADER.size:end])
            del self.inbox[:end]
            yield Packet(op, req_id, tx_id, payload)

    def send(self, op, req_id, tx_id, payload):
        self.outbox += HEADER.pack(op, req_id, tx_id, len(payload)) + payload

    def event(self, path, token):
        # WATCH_EVENT: <epath>|<token>|, with req_id and tx_id both 0.
        self.send(XsType.WATCH_EVENT, 0, 0, path.encode() + NUL + token + NUL)

    def flush(self):
        """Send what the socket takes now; False once the peer has gone."""
        try:
            sent = self.sock.send(self.outbox)
        except BlockingIOError:
            return True
        except OSError:
            return False
        del self.outbox[:sent]
        return True

    def begin(self, database):
        while self.next_tx == 0 or self.next_tx in self.transactions:
            self.next_tx = (self.next_tx + 1) % 2**32  # ids are never 0
        tx_id = self.next_tx
        self.next_tx = (tx_id + 1) % 2**32
        self.transactions[tx_id] = database.begin()
        return tx_id

    def transaction(self, tx_id):
        """transaction_lookup(): 0 is none; an unknown id is ENOENT."""
        if tx_id == 0:
            return None
        try:
            return self.transactions[tx_id]
        except KeyError:
            raise XenstoreError("ENOENT") from None


# ---------------------------------------------------------------- operations

@dataclass
class Request:
    database: Database
    conn: Connection
    tx_id: int
    tx: Transaction | None
    payload: bytes
    followups: list = field(default_factory=list)  # run after the reply is queued

    @property
    def view(self):
        return self.tx if self.tx is not None else self.database

    def one_arg(self):
        """onearg(): the payload must be one string ending in its only NUL."""
        if not self.payload.endswith(NUL) or self.payload.count(NUL) != 1:
            raise XenstoreError("EINVAL")
        return self.payload[:-1].decode("latin-1")

    def strings(self):
        """get_strings(): the NUL-terminated strings; bytes after the last NUL
        are ignored."""
        return self.payload.split(NUL)[:-1]

    def path(self):
        return canonical(self.one_arg())


def do_read(req):
    return req.view.read(req.path())


def do_directory(req):
    return b"".join(name.encode() + NUL for name in req.view.children(req.path()))


def do_get_perms(req):
    return b"".join(perm.encode() + NUL for perm in req.view.perms(req.path()))


def do_write(req):
    # do_write(): <path>|<value|>, the value being everything after the first NUL.
    if NUL not in req.payload:
        raise XenstoreError("EINVAL")
    path, value = req.payload.split(NUL, 1)
    req.view.write(canonical(path.decode("latin-1")), value)
    return OK


def do_mkdir(req):
    req.view.mkdir(req.path())
    return OK


def do_rm(req):
    req.view.remove(req.path())
    return OK


def do_set_perms(req):
    strings = [s.decode("latin-1") for s in req.strings()]
    if len(strings) < 2:
        raise XenstoreError("EINVAL")
    target, perms = strings[0], [parse_perm(text) for text in strings[1:]]
    if target.startswith("@"):
        # set_perms_special(): only the two special watches carry perms;
        # they gate event delivery to other domains, which do not exist here.
        if target not in SPECIAL_WATCHES:
            raise XenstoreError("EINVAL")
        return OK
    req.view.set_perms(canonical(target), perms)
    return OK


def do_transaction_start(req):
    if req.tx is not None:
        raise XenstoreError("EBUSY")  # no nested transactions
    return str(req.conn.begin(req.database)).encode() + NUL


def do_transaction_end(req):
    decision = req.one_arg()
    if decision not in ("T", "F"):
        raise XenstoreError("EINVAL")
    if req.tx is None:
        raise XenstoreError("ENOENT")
    del req.conn.transactions[req.tx_id]  # gone whatever the outcome, EAGAIN included
    if decision == "T":
        req.database.commit(req.tx)
    return OK


def do_watch(req):
    strings = req.strings()
    if len(strings) != 2:  # 4.17 takes no <depth>
        raise XenstoreError("EINVAL")
    given, token = strings[0].decode("latin-1"), strings[1]
    path = watch_path(given)
    if any(w.conn is req.conn and w.path == path and w.token == token
           for w in req.database.watches):
        raise XenstoreError("EEXIST")
    watch = Watch(req.conn, path, token, relative=not given.startswith(("/", "@")))
    req.database.watches.append(watch)
    # do_watch(): "We fire once up front", after the OK.
    req.followups.append(lambda: req.conn.event(given, token))
    return OK


def do_unwatch(req):
    strings = req.strings()
    if len(strings) != 2:
        raise XenstoreError("EINVAL")
    given, token = strings[0].decode("latin-1"), strings[1]
    path = given if given.startswith(("/", "@")) else f"{HOME}/{given}"
    for watch in req.database.watches:
        if watch.conn is req.conn and watch.path == path and watch.token == token:
            req.database.watches.remove(watch)
            return OK
    raise XenstoreError("ENOENT")


def do_get_domain_path(req):
    # Master's parse_domid() is strict (4.17 used atoi()).
    domid = req.one_arg()
    if not re.fullmatch(r"[0-9]*", domid) or int(domid or "0") > 65535:
        raise XenstoreError("EINVAL")
    return f"/local/domain/{int(domid or '0')}".encode() + NUL


# wire_funcs[]: every other type, including ones xenstored has but this
# double lacks (INTRODUCE, CONTROL, ...), is answered ENOSYS.
HANDLERS = {
    XsType.DIRECTORY: do_directory,
    XsType.READ: do_read,
    XsType.GET_PERMS: do_get_perms,
    XsType.WATCH: do_watch,
    XsType.UNWATCH: do_unwatch,
    XsType.TRANSACTION_START: do_transaction_start,
    XsType.TRANSACTION_END: do_transaction_end,
    XsType.GET_DOMAIN_PATH: do_get_domain_path,
    XsType.WRITE: do_write,
    XsType.MKDIR: do_mkdir,
    XsType.RM: do_rm,
    XsType.SET_PERMS: do_set_perms,
}
IGNORES_TX_ID = {XsType.WATCH, XsType.UNWATCH}  # XS_FLAG_NOTID


def answer(database, conn, packet):
    """Queue the reply to one request (and whatever events it caused)."""
    try:
        handler = HANDLERS.get(packet.op)
        if handler is None:
            raise XenstoreError("ENOSYS")
        tx = None if packet.op in IGNORES_TX_ID else conn.transaction(packet.tx_id)
        req = Request(database, conn, packet.tx_id, tx, packet.payload)
        reply = handler(req)
        if len(reply) > PAYLOAD_MAX:
            raise XenstoreError("E2BIG")  # send_reply()
    except XenstoreError as e:
        conn.send(XsType.ERROR, packet.req_id, packet.tx_id, str(e).encode() + NUL)
        return
    conn.send(packet.op, packet.req_id, packet.tx_id, reply)
    for followup in req.followups:
        followup()


# ---------------------------------------------------------------- the daemon

class FakeXenstored:
    """The daemon: one thread multiplexing every client, like xenstored.

    FakeXenstored(socket_path).start() / .stop(), or use it as a context
    manager. seed() and dump() reach the store directly, for test setup and
    assertions; they are safe while clients are connected.
    """

    def __init__(self, socket_path):
        self.socket_path = str(socket_path)
        self.database = Database()
        self._lock = threading.Lock()
        self._selector = None
        self._listener = None
        self._wakeup = None  # (reader, writer): interrupts select()
        self._thread = None
        self._stopping = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # ---- public API

    def start(self):
        self._remove_stale_socket()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.socket_path)
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._wakeup = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wakeup[0], selectors.EVENT_READ)
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="fake-xenstored", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Close every connection and remove the socket. Idempotent."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake()
        self._thread.join()
        self._thread = None

    def seed(self, nodes):
        """Write {path: value} as another client would (parents created,
        watches fired). Relative paths resolve under /local/domain/0; values
        may be str or bytes."""
        with self._lock:
            for path, value in nodes.items():
                data = value.encode() if isinstance(value, str) else bytes(value)
                self.database.write(canonical(path), data)
        self._wake()  # events may be waiting to go out

    def dump(self, under="/"):
        """{absolute path: value as str} of every node at or below `under`."""
        top = canonical(under)
        with self._lock:
            return {path: node.value.decode(errors="surrogateescape")
                    for path, node in self.database.store.nodes.items()
                    if top == "/" or path == top or path.startswith(top + "/")}

    # ---- the loop

    def _serve(self):
        try:
            while not self._stopping:
                for key, events in self._selector.select():
                    with self._lock:
                        self._ready(key, events)
                with self._lock:
                    self._flush_all()
        finally:
            self._close_all()

    def _ready(self, key, events):
        if key.fileobj is self._listener:
            self._accept()
        elif key.fileobj is self._wakeup[0]:
            self._wakeup[0].recv(4096)
        else:
            conn = key.data
            if events & selectors.EVENT_READ:
                self._read_from(conn)
            if events & selectors.EVENT_WRITE and not conn.closed and not conn.flush():
                self._drop(conn)

    def _accept(self):
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        conn = Connection(sock)
        self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read_from(self, conn):
        alive = conn.receive()
        try:
            for packet in conn.packets():
                answer(self.database, conn, packet)
        except ProtocolError:
            alive = False  # xenstored drops a client sending > 4096 bytes
        if not alive:
            self._drop(conn)

    def _flush_all(self):
        for conn in self._connections():
            if conn.outbox and not conn.flush():
                self._drop(conn)
                continue
            wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbox else 0)
            if self._selector.get_key(conn.sock).events != wanted:
                self._selector.modify(conn.sock, wanted, conn)

    def _connections(self):
        return [key.data for key in self._selector.get_map().values()
                if isinstance(key.data, Connection)]

    def _drop(self, conn):
        """A client went away: its watches and transactions go with it."""
        self.database.forget(conn)
        self._selector.unregister(conn.sock)
        conn.sock.close()
        conn.closed = True

    def _close_all(self):
        with self._lock:
            for conn in self._connections():
                self._drop(conn)
            self._selector.close()
            self._listener.close()
            for end in self._wakeup:
                end.close()
            if os.path.exists(self.socket_path):
                os.unlink(self.socket_path)

    def _wake(self):
        try:
            self._wakeup[1].send(b"!")
        except (OSError, TypeError):
            pass  # not running

    def _remove_stale_socket(self):
        try:
            if stat.S_ISSOCK(os.stat(self.socket_path).st_mode):
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} SOCKET")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with FakeXenstored(argv[1]):
        print(f"fake xenstored listening on {argv[1]}", file=sys.stderr, flush=True)
        stop.wait()


if __name__ == "__main__":
    main(sys.argv)
