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
