"""The xenstore contract against the real xenstored: keeps the host tier's double honest."""
import pytest

from tests.support.xenstore_contract import *  # noqa: F401,F403
from tests.support.xenstore_fixtures import contract_fixtures


@pytest.fixture
def xenstored_socket():
    return "/run/xenstored/socket"


client, other, scratch = contract_fixtures("xenstored_socket")
