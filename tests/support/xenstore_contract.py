"""What xenblock relies on xenstored to do, as tests any xenstored must pass.

Run against the double on the host (tests/host) and against the real
xenstored in dom0 (tests/xen): that second run is what keeps the double
honest. Each function takes a connected pyxs.Client and a unique absolute
scratch path, and cleans up after itself.
"""
import errno
import uuid

import pyxs
import pytest


def test_write_then_read(client, scratch):
    client.write(f"{scratch}/a".encode(), b"value")
    assert client.read(f"{scratch}/a".encode()) == b"value"


def test_relative_paths_resolve_under_dom0s_home(client, scratch):
    relative = f"xenblock-contract-{uuid.uuid4().hex[:8]}"
    try:
        client.write(f"{relative}/k".encode(), b"v")
        assert client.read(f"/local/domain/0/{relative}/k".encode()) == b"v"
    finally:
        client.delete(relative.encode())


def test_missing_node_is_enoent_and_default_is_returned(client, scratch):
    with pytest.raises(pyxs.PyXSError) as raised:
        client.read(f"{scratch}/missing".encode())
    assert raised.value.args[0] == errno.ENOENT
    assert client.read(f"{scratch}/missing".encode(), b"dflt") == b"dflt"


def test_write_creates_parents_which_list_their_children(client, scratch):
    client.write(f"{scratch}/x/y/z".encode(), b"1")
    client.write(f"{scratch}/x/w".encode(), b"2")
    assert sorted(client.list(f"{scratch}/x".encode())) == [b"w", b"y"]
    assert client.read(f"{scratch}/x/y".encode()) == b""


def test_delete_removes_a_subtree_and_a_missing_leaf_is_fine(client, scratch):
    client.write(f"{scratch}/t/u/v".encode(), b"1")
    client.delete(f"{scratch}/t".encode())
    assert not client.exists(f"{scratch}/t/u/v".encode())
    client.delete(f"{scratch}/never-there".encode())  # parent exists: OK
    with pytest.raises(pyxs.PyXSError) as raised:
        client.delete(f"{scratch}/no-parent/leaf".encode())
    assert raised.value.args[0] == errno.ENOENT


def test_transaction_writes_appear_at_commit(client, other, scratch):
    client.transaction()
    client.write(f"{scratch}/tx".encode(), b"in-tx")
    assert other.read(f"{scratch}/tx".encode(), b"absent") == b"absent"
    assert client.commit()
    assert other.read(f"{scratch}/tx".encode()) == b"in-tx"


def test_conflicting_transaction_fails_to_commit(client, other, scratch):
    client.write(f"{scratch}/c".encode(), b"0")
    client.transaction()
    client.read(f"{scratch}/c".encode())
    other.write(f"{scratch}/c".encode(), b"changed by another")
    client.write(f"{scratch}/c".encode(), b"from tx")
    assert client.commit() is False  # EAGAIN: the caller retries
    assert other.read(f"{scratch}/c".encode()) == b"changed by another"


def test_a_watch_fires_on_registration_and_on_a_write_below(client, other, scratch):
    client.mkdir(f"{scratch}/w".encode())
    with client.monitor() as monitor:
        monitor.watch(f"{scratch}/w".encode(), b"tok")
        first = next(monitor.wait())
        assert first.path == f"{scratch}/w".encode()
        other.write(f"{scratch}/w/child".encode(), b"x")
        event = next(monitor.wait())
        assert event.path == f"{scratch}/w/child".encode() and event.token == b"tok"
