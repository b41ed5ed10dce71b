"""A package upgrade and the hotplug runs around it (xenblock/upgrade.py):
the packages' own maintainer scripts (the .deb's preinst/postrm/postinst,
the spec's %pre/%post) against processes that take the code as the
scripts do. Real files under /run/xenblock: the host tier holds it alone."""
import os
import re
import select
import subprocess
import sys
import time

import pytest

from tests.support.packages import REPO
from xenblock import upgrade

DEBIAN = os.path.join(REPO, "packaging", "debian")
# What every scripts/block-* does first, then waits to be told to end. A
# child started without close_fds would keep any descriptor not O_CLOEXEC.
RUN = """import subprocess, sys
from xenblock import upgrade
upgrade.hold_code(sys.argv)
subprocess.Popen(["sleep", "60"], close_fds=False)
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def no_upgrade_left():
    yield
    if os.path.exists(upgrade.MARKER):
        os.unlink(upgrade.MARKER)
        pytest.fail("an upgrade marker was left")


def start_run(command="add"):
    return subprocess.Popen([sys.executable, "-c", RUN, command], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)


def holds_within(run, seconds):
    """Whether run says it holds the code within seconds."""
    ready, _, _ = select.select([run.stdout], [], [], seconds)
    return bool(ready) and run.stdout.readline() == "held\n"


def end(run, child_too=True):
    run.stdin.close()
    assert run.wait(timeout=10) == 0
    if child_too:
        os.killpg(run.pid, 9)  # its sleep


def maintainer_script(name, *args):
    return subprocess.Popen(["sh", os.path.join(DEBIAN, f"xenblock.{name}"), *args])


def rpm_scriptlet(name):
    """The spec's %name scriptlet, as rpm would run it (sh -c)."""
    spec = open(os.path.join(REPO, "packaging", "rpm", "xenblock.spec")).read()
    return re.search(rf"^%{name}\n(.*?)\n(?=%\w)", spec, re.S | re.M).group(1)


def test_preinst_waits_for_a_running_run_and_new_runs_wait_for_the_new_files():
    first = start_run()
    assert holds_within(first, 10)
    preinst = maintainer_script("preinst", "upgrade", "0.1")
    try:
        time.sleep(1)
        assert os.path.exists(upgrade.MARKER)
        assert preinst.poll() is None, "preinst went on while a run held the old code"
        second = start_run()
        assert not holds_within(second, 1), "a run started while the files are being replaced"
        end(first)
        assert preinst.wait(timeout=10) == 0
        assert not holds_within(second, 1)
        # dpkg: the old postrm "upgrade", right after the new files are unpacked
        assert maintainer_script("postrm", "upgrade", "0.2").wait(timeout=10) == 0
        assert holds_within(second, 10)
        end(second)
    finally:
        preinst.kill()


def test_a_child_of_a_run_does_not_keep_an_upgrade_waiting():
    run = start_run()
    assert holds_within(run, 10)
    end(run, child_too=False)
    try:
        preinst = maintainer_script("preinst", "upgrade", "0.1")
        assert preinst.wait(timeout=10) == 0
        assert maintainer_script("postinst", "configure", "0.1").wait(timeout=10) == 0
    finally:
        os.killpg(run.pid, 9)


def test_a_run_goes_on_after_half_its_time_and_past_a_stale_marker():
    open(upgrade.MARKER, "w").close()
    remove = start_run("remove")
    assert not holds_within(remove, 2)
    assert holds_within(remove, 10), "remove waited past half its 10 s"
    end(remove)
    stale = time.time() - upgrade.STALE - 1
    os.utime(upgrade.MARKER, (stale, stale))
    add = start_run("add")
    assert holds_within(add, 5), "a run waited on a marker a failed upgrade left"
    end(add)
    os.unlink(upgrade.MARKER)


def test_the_rpm_scriptlets_keep_the_same_protocol():
    run = start_run()
    assert holds_within(run, 10)
    pre = subprocess.Popen(["sh", "-c", rpm_scriptlet("pre"), "pre", "2"])
    try:
        time.sleep(1)
        assert os.path.exists(upgrade.MARKER) and pre.poll() is None
        end(run)
        assert pre.wait(timeout=10) == 0
        post = subprocess.run(["sh", "-c", rpm_scriptlet("post"), "post", "2"])
        assert post.returncode == 0 and not os.path.exists(upgrade.MARKER)
    finally:
        pre.kill()
