"""make deb from a clean copy of HEAD (git archive): what the .deb installs
where, its conffiles, dependencies and maintainer scripts, and lintian's
verdict. One build per module (~20 s)."""
import glob
import os
import shutil
import subprocess

import pytest

from tests.support.packages import DEBIAN_PATH, REPO, XEN_NAMES, check_man_pages, make_in_copy_of_head
from tests.support.packages import run as _run

pytestmark = pytest.mark.skipif(shutil.which("dpkg-buildpackage", path=DEBIAN_PATH) is None
                                or not os.path.exists("/usr/share/perl5/Debian/Debhelper/Buildsystem/pybuild.pm"),
                                reason="debhelper/dh-python not installed (tools/debian-packages.txt)")


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    (path,) = make_in_copy_of_head(tmp_path_factory, "deb", "xenblock_*_all.deb")
    return path


def _files(deb):
    out = subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar tvf -", shell=True, check=True,
                         capture_output=True, text=True).stdout
    # A symlink's line ends "name -> target".
    return {line.split(" -> ")[0].split()[-1].lstrip("."): line.split()[0] for line in out.splitlines()
            if not line.endswith("/")}


def _member(deb, path):
    return subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar xOf - .{path}", shell=True, check=True,
                          capture_output=True, text=True).stdout


def test_every_script_is_a_hotplug_script_run_by_debian_python(deb):
    files = _files(deb)
    for script in glob.glob(os.path.join(REPO, "scripts", "block-*")):
        name = os.path.basename(script)
        where = "/usr/libexec/xenblock/" if name in XEN_NAMES else "/etc/xen/scripts/"
        assert files[where + name].startswith("-rwx"), name
        assert _member(deb, where + name).splitlines()[0] == "#!/usr/bin/python3"
    assert not any(f"/etc/xen/scripts/{name}" in files for name in XEN_NAMES)
    assert "/usr/lib/python3/dist-packages/xenblock/lifecycle.py" in files
    assert files["/usr/bin/xenblock"].startswith("-rwx")
    assert "/usr/share/man/man8/xenblock.8.gz" in files
    assert "/usr/share/man/man5/xenblock-disks.5.gz" in files
    assert files["/usr/share/man/man8/block-cow.8.gz"].startswith("l")  # dh_installman: .so to symlink


def test_man_pages_are_made_from_the_rst_and_render_without_warnings(deb, tmp_path):
    subprocess.run(["dpkg-deb", "-x", deb, str(tmp_path)], check=True, env=dict(os.environ, PATH=DEBIAN_PATH))
    check_man_pages(tmp_path / "usr/share/man")


def test_config_udev_rule_and_timer(deb):
    files = _files(deb)
    assert "/lib/udev/rules.d/59-xenblock.rules" in files
    assert _member(deb, "/etc/xenblock/xenblock.conf") == open(os.path.join(REPO, "etc/xenblock.conf")).read()
    assert "OnUnitActiveSec=5min" in _member(deb, "/lib/systemd/system/xenblock-check-fill.timer")
    assert "xenblock check-fill" in _member(deb, "/lib/systemd/system/xenblock-check-fill.service")


def test_metadata(deb):
    assert _run(["dpkg-deb", "-f", deb, "Package"], "/").strip() == "xenblock"
    control = subprocess.run(f"dpkg-deb --ctrl-tarfile {deb} | tar xOf - ./conffiles", shell=True,
                             check=True, capture_output=True, text=True).stdout.split()
    assert "/etc/xenblock/xenblock.conf" in control
    depends = _run(["dpkg-deb", "-f", deb, "Depends"], "/")
    for package in ("python3-pyudev", "dmsetup"):
        assert package in depends
    assert "pyxs" not in depends  # xenblock speaks xenstore's protocol itself
    prerm = subprocess.run(f"dpkg-deb --ctrl-tarfile {deb} | tar xOf - ./prerm", shell=True,
                           check=True, capture_output=True, text=True).stdout
    assert '"$1" = remove' in prerm and "/run/xenblock" in prerm


def test_prerm_warns_on_remove_only(deb, tmp_path):
    prerm = subprocess.run(f"dpkg-deb --ctrl-tarfile {deb} | tar xOf - ./prerm", shell=True,
                           check=True, capture_output=True, text=True).stdout
    # Run its warning part against a state directory of our own.
    body = prerm.split("#DEBHELPER#")[0] if "#DEBHELPER#" in prerm else prerm.split("# Automatically added")[0]
    script = tmp_path / "prerm"
    script.write_text(body.replace("/run/xenblock", str(tmp_path)))
    (tmp_path / "disk.json").write_text("{}")
    for action, warns in (("remove", True), ("upgrade", False)):
        out = subprocess.run(["sh", str(script), action], capture_output=True, text=True)
        assert out.returncode == 0
        assert ("warning" in out.stderr) == warns, action


@pytest.mark.skipif(shutil.which("lintian", path=DEBIAN_PATH) is None, reason="lintian not installed")
def test_lintian_reports_no_error_or_warning(deb):
    out = subprocess.run(["lintian", deb], env=dict(os.environ, PATH=DEBIAN_PATH), capture_output=True, text=True)
    assert not [line for line in out.stdout.splitlines() if line.startswith(("E:", "W:"))], out.stdout
