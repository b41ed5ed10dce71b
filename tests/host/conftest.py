"""Host tier: the checkout's scripts against the xenstored double (no Xen)."""
import os
import sys

import pyxs
import pytest

from tests.support.driver import Driver
from tests.support.fake_xenstored import FakeXenstored
from tests.support.fixtures import images  # noqa: F401 (a fixture)
from xenblock.state import STATE_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def xenstored(tmp_path):
    with FakeXenstored(str(tmp_path / "xenstored.socket")) as daemon:
        yield daemon


@pytest.fixture
def driver(tmp_path, xenstored):
    log_file = tmp_path / "xen-hotplug.log"
    config = tmp_path / "xenblock.conf"
    config.write_text(f"[general]\nlog_file = {log_file}\nsyslog = no\n")
    env = {"XENSTORED_PATH": xenstored.socket_path, "XENBLOCK_CONFIG": str(config),
           "PYTHONPATH": ROOT, "XENBLOCK_SOURCE": ROOT,
           # the checkout's scripts start with "#!/usr/bin/env python3": this one
           "PATH": os.path.dirname(sys.executable) + ":" + os.environ.get("PATH", "/usr/bin:/bin")}
    client = pyxs.Client(unix_socket_path=xenstored.socket_path)
    client.connect()
    # The state directory is fixed (/run/xenblock), as in dom0: one host
    # tier runs at a time on a machine.
    made = Driver(client, os.path.join(ROOT, "scripts"), env, STATE_DIR, str(log_file), "xenblock-test/vbd")
    for path in made.state_files():
        os.unlink(path)  # left by a killed run of the tests: not this test's to answer for
    try:
        yield made
    finally:
        made.cleanup()
        client.close()
        left = made.state_files()
        for path in left:
            os.unlink(path)  # so that the next test starts clean
        assert left == [], f"left in {STATE_DIR}: {left}"
