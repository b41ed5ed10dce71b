"""Fixtures for the xenstore contract: two clients and a scratch path."""
import uuid

import pyxs
import pytest


def contract_fixtures(socket_path_fixture):
    """client, other and scratch fixtures for a xenstored at the socket the
    named fixture gives."""

    @pytest.fixture
    def client(request):
        made = pyxs.Client(unix_socket_path=request.getfixturevalue(socket_path_fixture))
        made.connect()
        yield made
        made.close()

    @pytest.fixture
    def other(request):
        made = pyxs.Client(unix_socket_path=request.getfixturevalue(socket_path_fixture))
        made.connect()
        yield made
        made.close()

    @pytest.fixture
    def scratch(other):
        path = f"/xenblock-contract/{uuid.uuid4().hex[:12]}"
        yield path
        if other.exists(b"/xenblock-contract"):
            other.delete(path.encode())
            if not other.list(b"/xenblock-contract"):
                other.delete(b"/xenblock-contract")

    return client, other, scratch
