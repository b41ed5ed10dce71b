"""The xenstore contract against the double (tests/xen runs it against the real one)."""
import pytest

from tests.support.xenstore_contract import *  # noqa: F401,F403
from tests.support.xenstore_fixtures import contract_fixtures
from tests.support.fake_xenstored import FakeXenstored


@pytest.fixture
def xenstored_socket(tmp_path):
    with FakeXenstored(str(tmp_path / "xenstored.socket")) as daemon:
        yield daemon.socket_path


client, other, scratch = contract_fixtures("xenstored_socket")
