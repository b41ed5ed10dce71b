"""What xenblock and its tests rely on xenstored to do, as checks any
xenstored must pass.

Each check is a plain function taking a connected pyxs.Client and a scratch
path: an absolute path that does not exist yet and is unique to this call
(e.g. /xenblock-contract/<random>). The check works only at or below that
path (plus one uniquely named node under dom0's home), assumes nothing else
about the store, and removes what it created before returning, whether it
passes or fails. The scratch path's parent is the caller's to remove.
Being absolute and outside dom0's home, the scratch path makes every check
one of absolute paths too, as a XENBUS_PATH may be (xenblock passes it on as
it is); relative paths have a check of their own.

The host tier runs CONTRACT against tests/support/fake_xenstored.py, the
Xen VM tier against the real xenstored: the second run is what keeps the
double honest. Nothing here may assume either of them. Each check says who
relies on it; a behaviour nobody relies on has no check, and the double
need not have it.

The checks are named test_* so that a test module can also collect them
with `from tests.support.xenstore_contract import *` and fixtures named
client and scratch; they need nothing from pytest.
"""
import errno
import uuid

import pyxs

HOME = "/local/domain/0"  # dom0's home: where its relative paths resolve


def test_write_then_read_round_trips_bytes(client, scratch):
    # Every node xenblock publishes and the driver sets up; hotplug-error is
    # text with backslash escapes, spaces and colons.
    value = rb"/images/caf\xe9.img: no such file, see xen-hotplug.log"
    with _cleaned(client, scratch):
        client.write(_key(scratch, "a"), value)
        assert client.read(_key(scratch, "a")) == value
        client.write(_key(scratch, "a"), b"replaced")
        assert client.read(_key(scratch, "a")) == b"replaced"


def test_relative_paths_resolve_under_dom0s_home(client, scratch):
    # XENBUS_PATH and the driver's backend keys are relative; the VM tier
    # cleans them up through the absolute form. write_all's transaction
    # takes them too.
    relative = f"xenblock-contract-{uuid.uuid4().hex[:12]}"
    with _cleaned(client, f"{HOME}/{relative}"):
        client.write(f"{relative}/a".encode(), b"rel")
        assert client.read(f"{HOME}/{relative}/a".encode()) == b"rel"
        client.write(f"{HOME}/{relative}/b".encode(), b"abs")
        client.transaction()
        assert client.read(f"{relative}/b".encode()) == b"abs"
        client.write(f"{relative}/c".encode(), b"in-tx")
        assert client.commit() is True
        assert client.read(f"{HOME}/{relative}/c".encode()) == b"in-tx"


def test_reading_a_missing_key_is_enoent(client, scratch):
    # XenStore.read's default and exists(), the driver's read, and the cases'
    # "is None" all take ENOENT to mean "not there".
    with _cleaned(client, scratch):
        client.write(_key(scratch, "present"), b"1")
        _expect_errno(errno.ENOENT, client.read, _key(scratch, "missing"))
        _expect_errno(errno.ENOENT, client.read, _key(scratch, "no-parent/missing"))


def test_write_creates_missing_parents_with_empty_values(client, scratch):
    # The driver writes only a backend's leaves; write_all's exists() then
    # reads the backend directory itself.
    with _cleaned(client, scratch):
        client.write(_key(scratch, "x/y/z"), b"1")
        assert client.read(scratch.encode()) == b""
        assert client.read(_key(scratch, "x")) == b""
        assert client.read(_key(scratch, "x/y")) == b""
        assert client.read(_key(scratch, "x/y/z")) == b"1"


def test_list_gives_the_immediate_children(client, scratch):
    # The VM tier's leak inventory walks the store from "/" by listing;
    # these checks' clean-up asks exists(), which pyxs answers by listing.
    with _cleaned(client, scratch):
        client.write(_key(scratch, "x/y/z"), b"1")
        client.write(_key(scratch, "x/w"), b"2")
        assert sorted(client.list(_key(scratch, "x"))) == [b"w", b"y"]
        assert client.list(_key(scratch, "x/w")) == []
        assert scratch.split("/")[1].encode() in client.list(b"/")
        _expect_errno(errno.ENOENT, client.list, _key(scratch, "missing"))


def test_delete_removes_a_whole_subtree(client, scratch):
    # libxl's (and the driver's) removal of a backend directory, the cases'
    # removal of /local/domain/<id>, the VM tier's clean-up.
    with _cleaned(client, scratch):
        client.write(_key(scratch, "t/u/v"), b"1")
        client.write(_key(scratch, "t/w"), b"2")
        client.write(_key(scratch, "kept"), b"3")
        client.delete(_key(scratch, "t"))
        for gone in ("t", "t/u", "t/u/v", "t/w"):
            _expect_errno(errno.ENOENT, client.read, _key(scratch, gone))
        assert client.read(_key(scratch, "kept")) == b"3"


def test_transaction_writes_become_visible_at_commit(client, scratch):
    # write_all publishes a disk's nodes together, having read the backend
    # directory in the same transaction.
    with _cleaned(client, scratch), _second_client(client) as other:
        client.write(_key(scratch, "backend/params"), b"/img")
        client.transaction()
        assert client.read(_key(scratch, "backend")) == b""
        client.write(_key(scratch, "backend/tx"), b"in-tx")
        assert client.read(_key(scratch, "backend/tx")) == b"in-tx"
        assert other.read(_key(scratch, "backend/tx"), b"absent") == b"absent"
        assert client.commit() is True
        assert other.read(_key(scratch, "backend/tx")) == b"in-tx"


def test_a_missing_key_is_enoent_in_a_transaction_and_rollback_leaves_no_trace(client, scratch):
    # write_all finding its backend gone: it rolls back what it began.
    with _cleaned(client, scratch):
        client.write(_key(scratch, "kept"), b"before")
        client.transaction()
        _expect_errno(errno.ENOENT, client.read, _key(scratch, "missing"))
        client.write(_key(scratch, "kept"), b"in-tx")
        client.write(_key(scratch, "new"), b"in-tx")
        client.rollback()
        assert client.read(_key(scratch, "kept")) == b"before"
        assert client.read(_key(scratch, "new"), b"absent") == b"absent"


def test_conflicting_transaction_fails_to_commit(client, scratch):
    # write_all retries on EAGAIN (pyxs's commit() gives False).
    with _cleaned(client, scratch), _second_client(client) as other:
        client.write(_key(scratch, "c"), b"0")
        client.transaction()
        assert client.read(_key(scratch, "c")) == b"0"
        other.write(_key(scratch, "c"), b"changed by another")
        client.write(_key(scratch, "c"), b"from tx")
        assert client.commit() is False
        assert client.read(_key(scratch, "c")) == b"changed by another"


def test_a_key_removed_after_a_transaction_read_it_fails_the_commit(client, scratch):
    # write_all's promise: a backend removed meanwhile is not re-created by
    # the writes below it.
    backend = _key(scratch, "backend")
    with _cleaned(client, scratch), _second_client(client) as other:
        client.write(_key(scratch, "backend/params"), b"/img")
        client.transaction()
        assert client.read(backend) == b""
        other.delete(backend)
        client.write(_key(scratch, "backend/hotplug-status"), b"connected")
        assert client.commit() is False
        _expect_errno(errno.ENOENT, client.read, backend)


CONTRACT = [
    test_write_then_read_round_trips_bytes,
    test_relative_paths_resolve_under_dom0s_home,
    test_reading_a_missing_key_is_enoent,
    test_write_creates_missing_parents_with_empty_values,
    test_list_gives_the_immediate_children,
    test_delete_removes_a_whole_subtree,
    test_transaction_writes_become_visible_at_commit,
    test_a_missing_key_is_enoent_in_a_transaction_and_rollback_leaves_no_trace,
    test_conflicting_transaction_fails_to_commit,
    test_a_key_removed_after_a_transaction_read_it_fails_the_commit,
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
    """Removes a subtree on the way out, and ends a transaction a failed
    check left open (pyxs keeps it on the client)."""

    def __init__(self, client, path):
        self.client, self.path = client, path

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.client.tx_id:
            self.client.rollback()
        # RM of a node whose parent is missing is ENOENT, so look first.
        if self.client.exists(self.path.encode()):
            self.client.delete(self.path.encode())


def _second_client(client):
    """A separate connection to the same xenstored (an unconnected Client,
    to be used as a context manager)."""
    connection = client.router.connection
    return pyxs.Client(router=pyxs.Router(type(connection)(connection.path)))
