"""Host tier: the checkout's scripts against the xenstored double (no Xen)."""
import os
import sys

import pyxs
import pytest

from tests.support.driver import Driver
from tests.support.fake_xenstored import FakeXenstored
from tests.support.fixtures import images  # noqa: F401 (a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def xenstored(tmp_path):
    with FakeXenstored(str(tmp_path / "xenstored.socket")) as daemon:
        yield daemon


@pytest.fixture
def driver(tmp_path, xenstored):
    state_dir = tmp_path / "run"
    log_file = tmp_path / "xen-hotplug.log"
    config = tmp_path / "xenblock.conf"
    config.write_text(f"[general]\nstate_dir = {state_dir}\nlog_file = {log_file}\nsyslog = no\nlock_timeout = 20\n")
    env = {"XENSTORED_PATH": xenstored.socket_path, "XENBLOCK_CONFIG": str(config),
           "PYTHONPATH": ROOT, "XENBLOCK_SOURCE": ROOT,
           # the checkout's scripts start with "#!/usr/bin/env python3": this one
           "PATH": os.path.dirname(sys.executable) + ":" + os.environ.get("PATH", "/usr/bin:/bin")}
    client = pyxs.Client(unix_socket_path=xenstored.socket_path)
    client.connect()
    made = Driver(client, os.path.join(ROOT, "scripts"), env, str(state_dir), str(log_file), "xenblock-test/vbd")
    try:
        yield made
    finally:
        made.cleanup()
        client.close()
