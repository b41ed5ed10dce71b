"""What xenblock relies on xenstored to do, as checks any xenstored must pass.

Each check is a plain function taking a connected pyxs.Client and a scratch
path: an absolute path that does not exist yet and is unique to this call
(e.g. /xenblock-contract/<random>). The check works only at or below that
path (plus one uniquely named relative directory), assumes nothing else
about the store, and removes what it created before returning, whether it
passes or fails. The scratch path's parent is the caller's to remove.

The host tier runs CONTRACT against tests/support/fake_xenstored.py, the
Xen VM tier against the real xenstored: the second run is what keeps the
double honest. Nothing here may assume either of them.

The checks are named test_* so that a test module can also collect them
with `from tests.support.xenstore_contract import *` and fixtures named
client and scratch; they need nothing from pytest.
"""
import errno
import threading
import uuid

import pyxs

HOME = "/local/domain/0"  # dom0's home: where its relative paths resolve
EVENT_TIMEOUT = 10.0       # seconds to wait for a watch event


def test_write_then_read_round_trips_bytes(client, scratch):
    with _cleaned(client, scratch):
        client.write(_key(scratch, "a"), b"value with spaces/and-slashes")
        assert client.read(_key(scratch, "a")) == b"value with spaces/and-slashes"
        client.write(_key(scratch, "a"), b"replaced")
        assert client.read(_key(scratch, "a")) == b"replaced"


def test_relative_paths_resolve_under_dom0s_home(client, scratch):
    top = "xenblock-contract-rel"
    relative = f"{top}/{uuid.uuid4().hex[:12]}"
    try:
        client.write(f"{relative}/a".encode(), b"rel")
        assert client.read(f"{HOME}/{relative}/a".encode()) == b"rel"
        assert client.read(f"{relative}/a".encode()) == b"rel"
        assert client.get_domain_path(0) == HOME.encode()
    finally:
        _remove(client, f"{HOME}/{relative}")
        _remove_if_empty(client, f"{HOME}/{top}")


def test_reading_a_missing_key_is_enoent(client, scratch):
    with _cleaned(client, scratch):
        client.write(_key(scratch, "present"), b"1")
        _expect_errno(errno.ENOENT, client.read, _key(scratch, "missing"))
        _expect_errno(errno.ENOENT, client.read, _key(scratch, "no-parent/missing"))


def test_read_with_a_default_returns_it_for_a_missing_key_only(client, scratch):
    with _cleaned(client, scratch):
        client.write(_key(scratch, "present"), b"1")
        assert client.read(_key(scratch, "missing"), b"dflt") == b"dflt"
        assert client.read(_key(scratch, "present"), b"dflt") == b"1"


def test_write_creates_missing_parents_with_empty_values(client, scratch):
    with _cleaned(client, scratch):
        client.write(_key(scratch, "x/y/z"), b"1")
        assert client.read(scratch.encode()) == b""
        assert client.read(_key(scratch, "x")) == b""
        assert client.read(_key(scratch, "x/y")) == b""
        assert client.read(_key(scratch, "x/y/z")) == b"1"


def test_list_gives_the_immediate_children(client, scratch):
    with _cleaned(client, scratch):
        client.write(_key(scratch, "x/y/z"), b"1")
        client.write(_key(scratch, "x/w"), b"2")
        assert sorted(client.list(_key(scratch, "x"))) == [b"w", b"y"]
        assert client.list(_key(scratch, "x/w")) == []
        _expect_errno(errno.ENOENT, client.list, _key(scratch, "missing"))


def test_delete_removes_a_whole_subtree(client, scratch):
    with _cleaned(client, scratch):
        client.write(_key(scratch, "t/u/v"), b"1")
        client.write(_key(scratch, "t/w"), b"2")
        client.write(_key(scratch, "kept"), b"3")
        client.delete(_key(scratch, "t"))
        for gone in ("t", "t/u", "t/u/v", "t/w"):
            _expect_errno(errno.ENOENT, client.read, _key(scratch, gone))
        assert client.list(scratch.encode()) == [b"kept"]


def test_delete_of_a_missing_leaf_is_fine_when_its_parent_exists(client, scratch):
    with _cleaned(client, scratch):
        client.mkdir(scratch.encode())
        client.delete(_key(scratch, "never-there"))
        _expect_errno(errno.ENOENT, client.delete, _key(scratch, "no-parent/leaf"))


def test_transaction_writes_become_visible_at_commit(client, scratch):
    with _cleaned(client, scratch), _second_client(client) as other:
        client.mkdir(scratch.encode())
        client.transaction()
        client.write(_key(scratch, "tx"), b"in-tx")
        assert client.read(_key(scratch, "tx")) == b"in-tx"
        assert other.read(_key(scratch, "tx"), b"absent") == b"absent"
        assert client.commit() is True
        assert other.read(_key(scratch, "tx")) == b"in-tx"


def test_rolled_back_transaction_leaves_no_trace(client, scratch):
    with _cleaned(client, scratch):
        client.write(_key(scratch, "kept"), b"before")
        client.transaction()
        client.write(_key(scratch, "kept"), b"in-tx")
        client.write(_key(scratch, "new"), b"in-tx")
        client.rollback()
        assert client.read(_key(scratch, "kept")) == b"before"
        assert client.read(_key(scratch, "new"), b"absent") == b"absent"


def test_conflicting_transaction_fails_to_commit(client, scratch):
    with _cleaned(client, scratch), _second_client(client) as other:
        client.write(_key(scratch, "c"), b"0")
        client.transaction()
        assert client.read(_key(scratch, "c")) == b"0"
        other.write(_key(scratch, "c"), b"changed by another")
        client.write(_key(scratch, "c"), b"from tx")
        assert client.commit() is False  # EAGAIN: the caller retries
        assert client.read(_key(scratch, "c")) == b"changed by another"


def test_watch_fires_once_at_registration_then_on_a_write_below(client, scratch):
    watched = _key(scratch, "w")
    with _cleaned(client, scratch), _second_client(client) as other:
        client.mkdir(watched)
        with client.monitor() as monitor:
            monitor.watch(watched, b"tok")
            events = monitor.wait()
            assert next_event(events) == (watched, b"tok")
            other.write(_key(scratch, "w/child"), b"x")
            assert next_event(events) == (_key(scratch, "w/child"), b"tok")


def test_watch_on_a_relative_path_reports_relative_paths(client, scratch):
    top = "xenblock-contract-rel"
    relative = f"{top}/{uuid.uuid4().hex[:12]}"
    try:
        client.mkdir(relative.encode())
        with client.monitor() as monitor:
            monitor.watch(relative.encode(), b"rel-tok")
            events = monitor.wait()
            assert next_event(events) == (relative.encode(), b"rel-tok")
            client.write(f"{HOME}/{relative}/child".encode(), b"x")
            assert next_event(events) == (f"{relative}/child".encode(), b"rel-tok")
    finally:
        _remove(client, f"{HOME}/{relative}")
        _remove_if_empty(client, f"{HOME}/{top}")


CONTRACT = [
    test_write_then_read_round_trips_bytes,
    test_relative_paths_resolve_under_dom0s_home,
    test_reading_a_missing_key_is_enoent,
    test_read_with_a_default_returns_it_for_a_missing_key_only,
    test_write_creates_missing_parents_with_empty_values,
    test_list_gives_the_immediate_children,
    test_delete_removes_a_whole_subtree,
    test_delete_of_a_missing_leaf_is_fine_when_its_parent_exists,
    test_transaction_writes_become_visible_at_commit,
    test_rolled_back_transaction_leaves_no_trace,
    test_conflicting_transaction_fails_to_commit,
    test_watch_fires_once_at_registration_then_on_a_write_below,
    test_watch_on_a_relative_path_reports_relative_paths,
]


# ---------------------------------------------------------------- helpers

def _key(scratch, name):
    return f"{scratch}/{name}".encode()


def _expect_errno(code, call, *args):
    try:
        call(*args)
    except pyxs.PyXSError as e:
        assert e.args[0] == code, f"{call.__name__}{args}: {e.args}, not {errno.errorcode[code]}"
    else:
        raise AssertionError(f"{call.__name__}{args} succeeded, not {errno.errorcode[code]}")


class _cleaned:
    """Removes the scratch subtree on the way out, and ends a transaction a
    failed check left open (pyxs keeps it on the client)."""

    def __init__(self, client, path):
        self.client, self.path = client, path

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.client.tx_id:
            self.client.rollback()
        _remove(self.client, self.path)


def _remove(client, path):
    # RM of a node whose parent is missing is ENOENT, so look first.
    if client.exists(path.encode()):
        client.delete(path.encode())


def _remove_if_empty(client, path):
    if client.exists(path.encode()) and not client.list(path.encode()):
        client.delete(path.encode())


def _second_client(client):
    """A separate connection to the same xenstored (an unconnected Client,
    to be used as a context manager)."""
    connection = client.router.connection
    return pyxs.Client(router=pyxs.Router(type(connection)(connection.path)))


def next_event(events):
    """The next (path, token) from a Monitor.wait() generator, or fail after
    EVENT_TIMEOUT instead of hanging."""
    got = []
    waiter = threading.Thread(target=lambda: got.append(next(events)), daemon=True)
    waiter.start()
    waiter.join(EVENT_TIMEOUT)
    assert got, f"no watch event within {EVENT_TIMEOUT}s"
    return tuple(got[0])
