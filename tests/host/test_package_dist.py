"""make dist from a clean copy of HEAD: the sdist holds what the tests and
the packages need, twine passes both, and the wheel installed into a venv
gives the hotplug scripts and the command."""
import os
import shutil
import subprocess
import tarfile

import pytest

from tests.support.packages import DEBIAN_PATH, SCRIPT_NAMES, make_in_copy_of_head, run

pytestmark = pytest.mark.skipif(shutil.which("twine", path=DEBIAN_PATH) is None,
                                reason="twine not installed (tools/debian-packages.txt)")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    return make_in_copy_of_head(tmp_path_factory, "dist", "xenblock-*.tar.gz", "xenblock-*-py3-none-any.whl")


def test_sdist_holds_the_tests_and_the_packaging(dist):
    with tarfile.open(dist[0]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in ("tests/host/test_package_deb.py", "tests/support/driver.py", "pytest.ini", "Makefile",
                   "etc/xenblock.conf", "etc/udev/rules.d/59-xenblock.rules", "packaging/debian/rules",
                   "packaging/rpm/xenblock.spec", "packaging/man/xenblock-disks.5.rst", "tools/debian-packages.txt",
                   "scripts/block-file", "xenblock/lifecycle.py"):
        assert needed in names, needed
    assert not [name for name in names if "__pycache__" in name]


def test_twine_check_passes(dist):
    assert run(["twine", "check", "--strict", *dist]).count("PASSED") == 2


def test_wheel_installs_the_scripts_and_the_command(dist, tmp_path):
    # Debian's python3 with its python3-pyudev: no PyPI here.
    venv = tmp_path / "venv"
    run(["python3", "-m", "venv", "--system-site-packages", str(venv)])
    run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", dist[1]])
    for name in SCRIPT_NAMES:
        script = venv / "bin" / name
        assert os.access(script, os.X_OK), name
        assert script.read_text().splitlines()[0] == f"#!{venv}/bin/python", name
        # No XENBUS_PATH: the script's own usage line, so it imported xenblock.
        out = subprocess.run([str(script), "add"], capture_output=True, text=True, env={"PATH": DEBIAN_PATH})
        assert out.returncode == 1 and "usage: XENBUS_PATH=" in out.stderr, (name, out.stderr)
    out = run([str(venv / "bin/xenblock"), "config"], env={"XENBLOCK_CONFIG": "/nonexistent"})
    assert "fill_warning" in out
