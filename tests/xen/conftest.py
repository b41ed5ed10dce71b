"""VM tier: runs in dom0 of a real Xen host (tools/test boots it in QEMU).

The scripts are the installed ones in /etc/xen/scripts, talking to the real
xenstored; `xl` runs them for real guests. Every test is wrapped in a leak
check: an inventory of dom0 before and after, and anything new fails it.
"""
import os
import subprocess

import pyxs
import pytest

from tests.support import inventory, leak_check as leak_check_module
from tests.support.driver import Driver
from tests.support.fixtures import image_files, images  # noqa: F401 (a fixture)

SCRIPT_DIR = "/etc/xen/scripts"


def pytest_configure(config):
    try:
        with open("/proc/xen/capabilities") as f:
            in_dom0 = "control_d" in f.read()
    except OSError:
        in_dom0 = False
    if not in_dom0:
        pytest.exit("tests/xen runs in dom0 of the Xen VM: use tools/test, which boots it", returncode=2)
    leak_check_module.install(config)


@pytest.fixture(scope="session")
def xs_client():
    client = pyxs.Client(unix_socket_path="/run/xenstored/socket")
    client.connect()
    yield client
    client.close()


@pytest.fixture(autouse=True)
def leak_check(request, xs_client):
    yield from leak_check_module.check(request, lambda domains=None: inventory.take(xs_client, domains),
                                       lambda: f"xen-hotplug.log ends:\n{_log_tail()}")


def _log_tail(lines=25):
    """What the scripts said last: why a remove left something."""
    try:
        with open("/var/log/xen/xen-hotplug.log", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"(unreadable: {e.strerror})"


@pytest.fixture
def driver(xs_client):
    made = Driver(xs_client, SCRIPT_DIR, {"PATH": os.environ["PATH"]}, "/run/xenblock",
                  "/var/log/xen/xen-hotplug.log", "xenblock-test/vbd")
    try:
        yield made
    finally:
        made.cleanup()
        made.delete("/local/domain/0/xenblock-test")


@pytest.fixture
def exports(tmp_path):
    """make(name, head=b"", mode=0o644, size=4 MiB) -> path of an image on a
    tmpfs: nbd-server cannot export a file of virtme's overlay (dom0's root)."""
    directory = tmp_path / "exports"
    directory.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64M", "exports", str(directory)], check=True)
    try:
        with image_files(directory) as make:
            yield make
    finally:
        subprocess.run(["umount", str(directory)], check=True)
