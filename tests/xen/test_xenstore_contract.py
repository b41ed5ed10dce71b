"""The xenstore contract against the real xenstored: what keeps the host
tier's double (tests/support/fake_xenstored.py, checked by the same
contract in tests/host/test_fake_xenstored.py) honest."""
import uuid

import pyxs
import pytest

from tests.support.xenstore_contract import *  # noqa: F401,F403

PARENT = b"/xenblock-contract"


@pytest.fixture
def client(xs_client):
    return xs_client


@pytest.fixture
def scratch(xs_client):
    yield f"{PARENT.decode()}/{uuid.uuid4().hex[:12]}"
    try:
        if not xs_client.list(PARENT):
            xs_client.delete(PARENT)
    except pyxs.PyXSError:
        pass  # never created


@pytest.mark.parametrize("transport", ["socket", "xenbus device"])
def test_xenblocks_client_reads_and_writes_through_the_socket_and_the_xenbus_device(xs_client, scratch, transport,
                                                                                    monkeypatch):
    # Where xenstored runs in another domain, dom0 has no socket and talks to
    # it through the kernel's xenbus device: the same messages, passed through.
    from xenblock import xenstore
    if transport == "xenbus device":
        monkeypatch.setattr(xenstore, "SOCKET_PATHS", ())
        assert xenstore._xenbus_path() == "/dev/xen/xenbus"
    key = f"{scratch}/vbd"
    xs_client.write(f"{key}/params".encode(), b"/images/a.img")
    try:
        with xenstore.XenStore({}) as xs:
            assert type(xs._connected()).__name__ == ("_Socket" if transport == "socket" else "_Device")
            assert xs.read(f"{key}/params") == "/images/a.img" and xs.read(f"{key}/none") is None
            assert xs.write_all(key, {"hotplug-status": "connected", "physical-device": "7:0"})
            assert xs.write_all(f"{scratch}/gone", {"hotplug-status": "error"}) is False
        assert xs_client.read(f"{key}/hotplug-status".encode()) == b"connected"
        assert not xs_client.exists(f"{scratch}/gone".encode())
    finally:
        xs_client.delete(scratch.encode())
