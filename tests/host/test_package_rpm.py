"""make rpm from a clean copy of HEAD: what the RPM installs where, its
config file, requirements and scriptlets, the man pages, and rpmlint's
verdict. One build per module (~15 s)."""
import glob
import os
import shutil
import subprocess

import pytest

from tests.support.packages import DEBIAN_PATH, REPO, XEN_NAMES, check_man_pages, make_in_copy_of_head, run

pytestmark = pytest.mark.skipif(shutil.which("rpmbuild", path=DEBIAN_PATH) is None,
                                reason="rpm not installed (tools/debian-packages.txt)")
SITE = "/usr/lib/python3.11/site-packages"


@pytest.fixture(scope="module")
def rpm(tmp_path_factory):
    (path,) = make_in_copy_of_head(tmp_path_factory, "rpm", "xenblock-*.noarch.rpm")
    return path


@pytest.fixture(scope="module")
def root(rpm, tmp_path_factory):
    """The RPM's files, unpacked."""
    root = tmp_path_factory.mktemp("root")
    subprocess.run(f"rpm2cpio {rpm} | cpio -idm --quiet", shell=True, cwd=root, check=True,
                   env=dict(os.environ, PATH=DEBIAN_PATH))
    return root


def _query(rpm, *options):
    return run(["rpm", "-qp", *options, rpm])


def test_every_script_is_a_hotplug_script_run_by_python3(rpm, root):
    files = set(_query(rpm, "-l").split())
    for script in glob.glob(os.path.join(REPO, "scripts", "block-*")):
        name = os.path.basename(script)
        where = "/usr/libexec/xenblock/" if name in XEN_NAMES else "/etc/xen/scripts/"
        assert where + name in files, name
        assert os.access(root / (where + name).lstrip("/"), os.X_OK), name
        assert (root / (where + name).lstrip("/")).read_text().splitlines()[0] == "#!/usr/bin/python3"
    assert not any(f"/etc/xen/scripts/{name}" in files for name in XEN_NAMES)
    assert f"{SITE}/xenblock/lifecycle.py" in files
    assert f"{SITE}/xenblock/__pycache__/lifecycle.cpython-311.pyc" in files
    assert "/usr/bin/xenblock" in files
    assert not [f for f in files if "/usr/local/" in f or "dist-packages" in f]


def test_config_udev_rule_and_timer(rpm, root):
    flags = {name: flag for flag, _, name in
             (line.partition(" ") for line in _query(rpm, "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]").splitlines())}
    conf = "/etc/xenblock/xenblock.conf"
    assert "c" in flags[conf] and "n" in flags[conf]  # %config(noreplace)
    assert (root / conf.lstrip("/")).read_text() == open(os.path.join(REPO, "etc/xenblock.conf")).read()
    assert (root / "usr/lib/udev/rules.d/59-xenblock.rules").exists()
    assert "OnUnitActiveSec=5min" in (root / "usr/lib/systemd/system/xenblock-check-fill.timer").read_text()
    assert "xenblock check-fill" in (root / "usr/lib/systemd/system/xenblock-check-fill.service").read_text()


def test_man_pages_are_made_from_the_rst_and_render_without_warnings(root):
    check_man_pages(root / "usr/share/man")


def test_requirements(rpm):
    requires = _query(rpm, "--requires")
    for name in ("python3dist(pyudev)", "device-mapper", "/usr/bin/python3"):
        assert name in requires
    assert "pyxs" not in requires  # not in Fedora; xenblock speaks xenstore's protocol itself
    assert "lvm2" in _query(rpm, "--recommends")


def _scriptlet(rpm, tag, tmp_path):
    """The scriptlet, pointed at tmp_path instead of the system's
    directories (and at no systemd)."""
    body = _query(rpm, "--qf", tag)
    for path in ("/run/xenblock", "/etc/xen/scripts", "/run/systemd/system"):
        body = body.replace(path, str(tmp_path / path.strip("/").replace("/", "-")))
    script = tmp_path / "scriptlet"
    script.write_text(body)
    return script


def test_preun_warns_on_erase_only(rpm, tmp_path):
    script = _scriptlet(rpm, "%{PREUN}", tmp_path)
    (tmp_path / "run-xenblock").mkdir()
    (tmp_path / "run-xenblock" / "disk.json").write_text("{}")
    # rpm passes the number of versions left: 0 on erase, 1 on upgrade.
    for left, warns in (("0", True), ("1", False)):
        out = subprocess.run(["sh", str(script), left], capture_output=True, text=True)
        assert out.returncode == 0
        assert ("warning" in out.stderr) == warns, left


@pytest.mark.parametrize("name", XEN_NAMES)
def test_trigger_keeps_the_administrators_choice_of_a_script_xen_ships(rpm, tmp_path, name):
    assert _query(rpm, "--qf", "[%{TRIGGERNAME}\n]").split() == ["xen-runtime"]
    script = _scriptlet(rpm, "[%{TRIGGERSCRIPTS}\n]", tmp_path)
    scripts = tmp_path / "etc-xen-scripts"
    scripts.mkdir()
    (scripts / name).write_text("xen's")
    # No choice made: Xen's stays.
    subprocess.run(["sh", str(script), "1", "1"], check=True)
    assert (scripts / name).read_text() == "xen's" and not (scripts / name).is_symlink()
    # Chosen (Xen's moved aside), then Xen's package upgraded: ours again.
    (scripts / f"{name}.xen").write_text("xen's old")
    (scripts / name).write_text("xen's new")
    subprocess.run(["sh", str(script), "1", "1"], check=True)
    assert os.readlink(scripts / name) == f"/usr/libexec/xenblock/{name}"
    assert (scripts / f"{name}.xen").read_text() == "xen's new"
    # xenblock erased: Xen's back in place; upgraded: the choice stays.
    postun = _scriptlet(rpm, "%{POSTUN}", tmp_path)
    subprocess.run(["sh", str(postun), "1"], check=True)
    assert (scripts / name).is_symlink()
    subprocess.run(["sh", str(postun), "0"], check=True)
    assert (scripts / name).read_text() == "xen's new" and not (scripts / f"{name}.xen").exists()


def test_rpmlint_reports_no_error(rpm):
    out = subprocess.run(["rpmlint", "-c", os.path.join(REPO, "packaging/rpm/rpmlint.toml"), rpm,
                          os.path.join(REPO, "packaging/rpm/xenblock.spec")],
                         env=dict(os.environ, PATH=DEBIAN_PATH), capture_output=True, text=True)
    assert " 0 errors" in out.stdout, out.stdout
    assert not [line for line in out.stdout.splitlines() if ": E: " in line], out.stdout
