"""The xenstored double held to the shared contract.

tests/support/xenstore_contract.py holds the checks the real xenstored also
passes (tests/xen): they cover every behaviour of the double that anything
relies on, wire framing included, as they go through pyxs. So nothing here
is asked of the double alone.
"""
import pyxs
import pytest

from tests.support.fake_xenstored import FakeXenstored
from tests.support.xenstore_contract import CONTRACT


@pytest.fixture
def daemon(tmp_path):
    with FakeXenstored(tmp_path / "xenstored.socket") as made:
        yield made


@pytest.fixture
def client(daemon):
    made = pyxs.Client(unix_socket_path=daemon.socket_path)
    made.connect()
    made.write(b"/local/domain/0/name", b"Domain-0")  # dom0's home, as xen-init-dom0 leaves it
    yield made
    made.close()


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
def test_contract(check, daemon, client):
    before = daemon.dump()
    check(client, f"/xenblock-contract/{check.__name__}")
    after = daemon.dump()
    after.pop("/xenblock-contract", None)  # the scratch path's parent is ours to remove
    assert after == before, "the check did not clean up after itself"
