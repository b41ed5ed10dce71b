"""xenblock's own xenstore client against the xenstored double (the VM tier
runs every hotplug run against the real xenstored, and this client over
the xenbus device in tests/xen/test_xenstore_contract.py)."""
import os
import socketserver
import threading

import pytest

from tests.support.fake_xenstored import HOME
from xenblock import xenstore


@pytest.fixture
def xs(xenstored):
    with xenstore.XenStore({"XENSTORED_PATH": xenstored.socket_path}) as connection:
        yield connection


def test_reads_a_node_and_the_default_for_a_missing_one(xs, xenstored, driver):
    # What a domU config gives, byte for byte: UTF-8, or not (a Latin-1 name).
    driver.write_unchecked("xenblock-test/vbd/1/51712/params", "/images/caf\u00e9.img")
    driver.write_unchecked("xenblock-test/vbd/1/51712/other", b"/images/caf\xe9.img")
    assert xs.read("xenblock-test/vbd/1/51712/params") == "/images/caf\u00e9.img"
    assert xs.read(f"{HOME}/xenblock-test/vbd/1/51712/params") == "/images/caf\u00e9.img"
    assert xs.read("xenblock-test/vbd/1/51712/other") == "/images/caf\udce9.img"  # as os.fsdecode has it
    assert xs.read("xenblock-test/vbd/1/51712/nothing") is None
    assert xs.read("xenblock-test/vbd/1/51712/nothing", "") == ""
    assert xs.exists("xenblock-test/vbd/1") and not xs.exists("xenblock-test/vbd/2")


def test_write_all_writes_every_node_at_once_and_nothing_under_a_gone_key(xs, xenstored, driver):
    driver.write("xenblock-test/vbd/1/51712/params", "/images/a.img")
    assert xs.write_all("xenblock-test/vbd/1/51712", {"hotplug-status": "connected", "physical-device": "7:0"})
    nodes = xenstored.dump()
    assert nodes[f"{HOME}/xenblock-test/vbd/1/51712/hotplug-status"] == b"connected"
    assert nodes[f"{HOME}/xenblock-test/vbd/1/51712/physical-device"] == b"7:0"
    # A backend libxl deleted meanwhile is not made again as stale nodes.
    assert xs.write_all("xenblock-test/vbd/2/51712", {"hotplug-status": "error"}) is False
    assert not [path for path in xenstored.dump() if "/vbd/2" in path]
    # Neither transaction is left open: the next request runs outside one.
    assert xs._transaction == 0
    assert xs.write_all("xenblock-test/vbd/1/51712", {"hotplug-status": "error"})


def test_a_transaction_another_writer_got_in_the_way_of_is_run_again(xs, xenstored, driver, monkeypatch):
    driver.write("xenblock-test/vbd/1/51712/params", "/images/a.img")
    exists, calls = xs.exists, []

    def exists_while_another_writes(key):
        calls.append(key)
        if len(calls) == 1:  # inside the first transaction: xenstored will answer its commit EAGAIN
            driver.write("xenblock-test/vbd/1/51712/other", "changed meanwhile")
        return exists(key)

    monkeypatch.setattr(xs, "exists", exists_while_another_writes)
    assert xs.write_all("xenblock-test/vbd/1/51712", {"hotplug-status": "connected"})
    assert len(calls) == 2
    assert xenstored.dump()[f"{HOME}/xenblock-test/vbd/1/51712/hotplug-status"] == b"connected"


def test_a_value_is_one_line_of_ascii_and_cut_to_what_a_request_may_carry(xs, xenstored, driver):
    driver.write("xenblock-test/vbd/1/51712/params", "x")
    message = "/tmp/k.img\nforged line, caf\u00e9 " + "x" * 5000
    assert xs.write_all("xenblock-test/vbd/1/51712", {"hotplug-error": message})
    written = xenstored.dump()[f"{HOME}/xenblock-test/vbd/1/51712/hotplug-error"]
    assert written.startswith(b"/tmp/k.img\\nforged line, caf\\xe9 xxx") and written.endswith(b"...")
    assert len(written) == xenstore.MAX_VALUE


def test_no_xenstore_is_a_connection_error(tmp_path):
    with xenstore.XenStore({"XENSTORED_PATH": str(tmp_path / "no-socket")}) as xs:
        with pytest.raises(ConnectionError, match="cannot reach xenstore"):
            xs.read("backend/vbd/1/51712/params")


class HangsUp(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(xenstore.HEADER.size)  # a request's header; then gone


class AnswersAnotherRequest(socketserver.BaseRequestHandler):
    def handle(self):
        kind, request_id, transaction, length = xenstore.HEADER.unpack(self.request.recv(xenstore.HEADER.size))
        self.request.recv(length)
        self.request.sendall(xenstore.HEADER.pack(kind, request_id + 1, transaction, 1) + b"x")


@pytest.mark.parametrize("handler, error", [(HangsUp, "lost the connection to xenstore"),
                                            (AnswersAnotherRequest, "xenstore answered request 2")])
def test_a_connection_that_breaks_the_protocol_is_a_connection_error(tmp_path, handler, error):
    path = str(tmp_path / "broken.socket")
    with socketserver.UnixStreamServer(path, handler) as server:
        threading.Thread(target=server.handle_request, daemon=True).start()
        with xenstore.XenStore({"XENSTORED_PATH": path}) as xs:
            with pytest.raises(ConnectionError, match=error):
                xs.read("backend/vbd/1/51712/params")
    os.unlink(path)


def test_a_refused_request_names_the_error_and_the_path(xs):
    # The double answers a transaction it does not know ENOENT, as xenstored does.
    xs._transaction = 12345
    with pytest.raises(xenstore.XenStoreError, match="'backend/vbd/1/51712/params': ENOENT") as refused:
        xs._request(xenstore.WRITE, b"backend/vbd/1/51712/params\0x")
    assert refused.value.name == "ENOENT"
