"""The xenstored double: the shared contract, then what only the double is asked.

tests/support/xenstore_contract.py holds the checks the real xenstored also
passes (tests/xen). The tests after it pin the double's own behaviour:
concurrency, transaction conflicts, watch details, the raw wire format,
seed()/dump() and the standalone command.
"""
import errno
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pyxs
import pytest

from tests.support.fake_xenstored import HEADER, FakeXenstored, XsType
from tests.support.xenstore_contract import CONTRACT, next_event
from xenblock import xenstore

FAKE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "support", "fake_xenstored.py")


@pytest.fixture
def daemon(tmp_path):
    with FakeXenstored(tmp_path / "xenstored.socket") as made:
        made.seed({"/local/domain/0/name": "Domain-0"})  # as after xen-init-dom0
        yield made


def connect(daemon):
    client = pyxs.Client(unix_socket_path=daemon.socket_path)
    client.connect()
    return client


@pytest.fixture
def client(daemon):
    made = connect(daemon)
    yield made
    made.close()


@pytest.fixture
def other(daemon):
    made = connect(daemon)
    yield made
    made.close()


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
def test_contract(check, daemon, client):
    before = daemon.dump()
    scratch = f"/xenblock-contract/{uuid.uuid4().hex[:12]}"
    check(client, scratch)
    left = {path for path in daemon.dump() if path.startswith("/xenblock-contract/")}
    assert not left, "the check did not clean up after itself"
    assert {k: v for k, v in daemon.dump().items() if k != "/xenblock-contract"} == before


# ---------------------------------------------------------------- transactions

def test_commit_fails_when_a_node_read_in_the_transaction_changed(client, other):
    client.write(b"/t/a", b"0")
    client.transaction()
    client.read(b"/t/a")
    other.write(b"/t/a", b"1")
    client.write(b"/t/b", b"from tx")
    assert client.commit() is False
    assert other.read(b"/t/b", b"absent") == b"absent"


def test_commit_fails_when_a_node_found_missing_was_created_meanwhile(client, other):
    client.mkdir(b"/t")
    client.transaction()
    assert client.read(b"/t/a", b"absent") == b"absent"
    other.write(b"/t/a", b"created")
    client.write(b"/t/b", b"from tx")
    assert client.commit() is False


def test_commit_fails_when_a_listed_directory_gained_a_child(client, other):
    client.mkdir(b"/t")
    client.transaction()
    assert client.list(b"/t") == []
    other.write(b"/t/new", b"1")
    client.write(b"/t/b", b"from tx")
    assert client.commit() is False


def test_writes_elsewhere_do_not_fail_a_commit(client, other):
    # xenstored checks only the nodes the transaction accessed.
    client.write(b"/t/a", b"0")
    client.write(b"/u/x", b"0")
    client.transaction()
    client.read(b"/t/a")
    other.write(b"/u/x", b"1")
    other.write(b"/u/y", b"1")
    client.write(b"/t/a", b"1")
    assert client.commit() is True
    assert other.read(b"/t/a") == b"1"


def test_a_transaction_reads_a_snapshot_and_fails_if_that_moved(client, other):
    # The double's own, stricter choice: xenstored reads a node it has not
    # touched yet from the live store (here "1") and would then commit.
    client.write(b"/t/a", b"0")
    client.transaction()
    other.write(b"/t/a", b"1")
    assert client.read(b"/t/a") == b"0"
    assert client.commit() is False


def test_delete_inside_a_transaction_applies_at_commit(client, other):
    client.write(b"/t/a/b", b"1")
    client.transaction()
    client.delete(b"/t/a")
    assert other.read(b"/t/a/b") == b"1"
    assert client.commit() is True
    assert not other.exists(b"/t/a")
    assert other.list(b"/t") == []


def test_concurrent_clients_increment_a_counter_with_retries(daemon):
    workers, rounds = 6, 25
    daemon.seed({"/counter": "0"})
    retries = []

    def work(n):
        with pyxs.Client(unix_socket_path=daemon.socket_path) as c:
            for i in range(rounds):
                c.write(f"/own/{n}/{i}".encode(), str(i).encode())  # no conflict with anyone
                while True:
                    c.transaction()
                    value = int(c.read(b"/counter"))
                    c.write(b"/counter", str(value + 1).encode())
                    if c.commit():
                        break
                    retries.append(n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    dump = daemon.dump()
    assert dump["/counter"] == str(workers * rounds)
    assert all(dump[f"/own/{n}/{i}"] == str(i) for n in range(workers) for i in range(rounds))


def test_a_dropped_connection_takes_its_transaction_along(daemon, other):
    c = connect(daemon)
    c.transaction()
    c.write(b"/t/a", b"never")
    c.close()
    assert other.read(b"/t/a", b"absent") == b"absent"


# ---------------------------------------------------------------- watches

def test_removal_fires_for_watched_nodes_inside_and_above(client, other):
    other.write(b"/r/a/b/c", b"1")
    with client.monitor() as monitor:
        for path in (b"/r", b"/r/a/b/c", b"/r/a/b/missing"):
            monitor.watch(path, path)
        events = monitor.wait()
        initial = {next_event(events) for _ in range(3)}
        assert initial == {(p, p) for p in (b"/r", b"/r/a/b/c", b"/r/a/b/missing")}
        other.delete(b"/r/a")
        assert next_event(events) == (b"/r/a/b/c", b"/r/a/b/c")  # exact: the node itself
        assert next_event(events) == (b"/r/a", b"/r")             # the top, for watches above
        other.write(b"/r/done", b"1")
        assert next_event(events) == (b"/r/done", b"/r")  # nothing else came in between


def test_transaction_events_wait_for_the_commit(client, other):
    other.mkdir(b"/w")
    with client.monitor() as monitor:
        monitor.watch(b"/w", b"tok")
        events = monitor.wait()
        next_event(events)
        other.transaction()
        other.write(b"/w/a", b"1")
        other.write(b"/w/a", b"2")
        other.rollback()
        other.transaction()
        other.write(b"/w/b", b"1")
        assert other.commit()
        assert next_event(events) == (b"/w/b", b"tok")


# ---------------------------------------------------------------- the wire

def exchange(daemon, op, payload, req_id=77, tx_id=0):
    """One raw request; returns the reply as (type, req_id, tx_id, payload)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket_path)
        return _exchange(s, op, payload, req_id, tx_id)


def _exchange(s, op, payload, req_id=77, tx_id=0):
    s.sendall(HEADER.pack(op, req_id, tx_id, len(payload)) + payload)
    return _next_packet(s)


def _next_packet(s):
    op, req_id, tx_id, length = HEADER.unpack(_receive(s, HEADER.size))
    return op, req_id, tx_id, _receive(s, length)


def _receive(s, size):
    data = b""
    while len(data) < size:
        chunk = s.recv(size - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def test_errors_carry_the_errno_name_and_echo_the_ids(daemon):
    assert exchange(daemon, XsType.READ, b"/missing\0", req_id=5) == (XsType.ERROR, 5, 0, b"ENOENT\0")


def test_replies_echo_type_and_ids(daemon):
    daemon.seed({"/a": "v"})
    assert exchange(daemon, XsType.READ, b"/a\0", req_id=9) == (XsType.READ, 9, 0, b"v")
    assert exchange(daemon, XsType.WRITE, b"/b\0x\0y")[3] == b"OK\0"
    assert daemon.dump()["/b"] == "x\0y"  # a value is everything after the path's NUL


@pytest.mark.parametrize("op", [0, 8, 17, 20, 21, 22, 99, XsType.WATCH_EVENT, XsType.ERROR])
def test_unknown_or_missing_operations_are_enosys(daemon, op):
    assert exchange(daemon, op, b"/\0")[3] == b"ENOSYS\0"


@pytest.mark.parametrize("path", [b"", b"/a/", b"a//b", b"/a b", b"@foo", b"/" + b"x" * 2048,
                                  "/\u00e9".encode("latin-1")])
def test_invalid_paths_are_einval(daemon, path):
    assert exchange(daemon, XsType.READ, path + b"\0")[3] == b"EINVAL\0"


def test_a_long_path_under_a_domain_is_measured_from_the_domain(daemon):
    under_domain = b"/local/domain/7/" + b"x" * 2048
    assert exchange(daemon, XsType.WRITE, under_domain + b"\0v")[3] == b"OK\0"


@pytest.mark.parametrize("payload", [b"", b"/a", b"/a\0\0", b"/a\0b\0"])
def test_single_path_arguments_must_be_one_nul_terminated_string(daemon, payload):
    assert exchange(daemon, XsType.READ, payload)[3] == b"EINVAL\0"


def test_root_cannot_be_removed(daemon):
    assert exchange(daemon, XsType.RM, b"/\0")[3] == b"EINVAL\0"


def test_unknown_transaction_ids_are_enoent(daemon):
    assert exchange(daemon, XsType.READ, b"/\0", tx_id=42) == (XsType.ERROR, 77, 42, b"ENOENT\0")
    assert exchange(daemon, XsType.TRANSACTION_END, b"T\0")[3] == b"ENOENT\0"


def test_transactions_on_the_wire(daemon):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket_path)
        op, _, _, tx = _exchange(s, XsType.TRANSACTION_START, b"\0")
        assert op == XsType.TRANSACTION_START and tx == b"1\0"
        tx_id = int(tx[:-1])
        assert _exchange(s, XsType.TRANSACTION_START, b"\0", tx_id=tx_id)[3] == b"EBUSY\0"
        assert _exchange(s, XsType.WRITE, b"/t\0v", tx_id=tx_id) == (XsType.WRITE, 77, tx_id, b"OK\0")
        assert _exchange(s, XsType.TRANSACTION_END, b"X\0", tx_id=tx_id)[3] == b"EINVAL\0"
        assert _exchange(s, XsType.TRANSACTION_END, b"T\0", tx_id=tx_id)[3] == b"OK\0"
        assert _exchange(s, XsType.TRANSACTION_END, b"T\0", tx_id=tx_id)[3] == b"ENOENT\0"
    assert daemon.dump()["/t"] == "v"


def test_watch_registration_and_removal_on_the_wire(daemon):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket_path)
        assert _exchange(s, XsType.WATCH, b"/w\0tok\0") == (XsType.WATCH, 77, 0, b"OK\0")
        assert _next_packet(s) == (XsType.WATCH_EVENT, 0, 0, b"/w\0tok\0")
        assert _exchange(s, XsType.WATCH, b"/w\0tok\0")[3] == b"EEXIST\0"
        # The event for a change comes before the reply to the change.
        assert _exchange(s, XsType.WRITE, b"/w/x\0v") == (XsType.WATCH_EVENT, 0, 0, b"/w/x\0tok\0")
        assert _next_packet(s) == (XsType.WRITE, 77, 0, b"OK\0")
        assert _exchange(s, XsType.UNWATCH, b"/w\0tok\0")[3] == b"OK\0"
        assert _exchange(s, XsType.UNWATCH, b"/w\0tok\0")[3] == b"ENOENT\0"
        assert _exchange(s, XsType.WRITE, b"/w/y\0v") == (XsType.WRITE, 77, 0, b"OK\0")
        assert _exchange(s, XsType.WATCH, b"/w\0")[3] == b"EINVAL\0"


def test_an_oversized_payload_drops_the_connection(daemon):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket_path)
        s.sendall(HEADER.pack(XsType.READ, 1, 0, 4097))
        assert s.recv(16) == b""


def test_directory_lists_children_in_creation_order(client):
    for name in (b"zeta", b"alpha", b"mid"):
        client.write(b"/d/" + name, b"1")
    client.delete(b"/d/alpha")
    client.write(b"/d/alpha", b"1")
    assert client.list(b"/d") == [b"zeta", b"mid", b"alpha"]


def test_permissions_are_stored_and_inherited(client):
    client.write(b"/p/a", b"1")
    assert client.get_perms(b"/p/a") == [b"n0"]
    client.set_perms(b"/p", [b"n0", b"r5"])
    client.write(b"/p/b", b"1")
    assert client.get_perms(b"/p") == [b"n0", b"r5"]
    assert client.get_perms(b"/p/b") == [b"n0", b"r5"]
    assert client.get_perms(b"/p/a") == [b"n0"]
    with pytest.raises(pyxs.PyXSError) as raised:
        client.set_perms(b"/p/missing", [b"n0"])
    assert raised.value.args[0] == errno.ENOENT


def test_domain_paths(client, daemon):
    assert client.get_domain_path(7) == b"/local/domain/7"
    assert exchange(daemon, XsType.GET_DOMAIN_PATH, b"x\0")[3] == b"EINVAL\0"
    assert exchange(daemon, XsType.GET_DOMAIN_PATH, b"65536\0")[3] == b"EINVAL\0"


# ---------------------------------------------------------------- the test API

def test_seed_and_dump(daemon, client):
    daemon.seed({"/a/b": "1", "rel/x": b"2"})
    dump = daemon.dump()
    assert dump["/a"] == "" and dump["/a/b"] == "1"
    assert dump["/local/domain/0/rel/x"] == "2"
    assert client.read(b"/a/b") == b"1"
    assert daemon.dump("/a") == {"/a": "", "/a/b": "1"}
    assert set(FakeXenstored("/unused").dump()) == {"/", "/tool", "/tool/xenstored"}


def test_seed_fires_watches(daemon, client):
    with client.monitor() as monitor:
        monitor.watch(b"/s", b"tok")
        events = monitor.wait()
        next_event(events)
        daemon.seed({"/s/x": "1"})
        assert next_event(events) == (b"/s/x", b"tok")


def test_stop_removes_the_socket_and_is_idempotent(tmp_path):
    path = tmp_path / "s"
    daemon = FakeXenstored(path).start()
    assert path.exists()
    daemon.stop()
    daemon.stop()
    assert not path.exists()


def test_production_code_reaches_it_through_xenstored_path(daemon):
    with xenstore.XenStore({"XENSTORED_PATH": daemon.socket_path}) as xs:
        assert xs.read("name") == "Domain-0"
        xs.write_all("backend/vbd/1/51712", {})  # the key is missing: nothing written
        assert not xs.exists("backend/vbd/1/51712")
    daemon.seed({"backend/vbd/1/51712/state": "2"})
    with xenstore.XenStore({"XENSTORED_PATH": daemon.socket_path}) as xs:
        assert xs.write_all("backend/vbd/1/51712", {"hotplug-status": "connected"})
        assert xs.read("backend/vbd/1/51712/hotplug-status") == "connected"
        assert xs.read("backend/vbd/1/51712/state") == "2"  # untouched
    assert daemon.dump()["/local/domain/0/backend/vbd/1/51712/hotplug-status"] == "connected"


def test_runs_standalone(tmp_path):
    path = str(tmp_path / "standalone.socket")
    proc = subprocess.Popen([sys.executable, FAKE, path], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        with pyxs.Client(unix_socket_path=path) as c:
            c.write(b"/standalone", b"yes")
            assert c.read(b"/standalone") == b"yes"
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
    assert not os.path.exists(path)
