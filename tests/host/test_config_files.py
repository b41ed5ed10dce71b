"""xenblock check-config / migrate-config on the host: the xl config reader
(xenblock.xlconfig), the disk entry reader (xenblock.diskspec) and the
command. tests/xen/test_xl_config.py holds both readers to xl itself."""
import os
import subprocess
import sys

import pytest

from xenblock import configcheck, diskspec, xlconfig

COMMAND = [sys.executable, "-m", "xenblock.admin"]


# -- the config file -------------------------------------------------------------

def test_a_config_with_comments_both_quotes_and_a_list_over_lines():
    text = ("# a guest\nname = \"web\" # its name\nmemory = 512\n"
            "disk = [ 'phy:/dev/vg/web,xvda,w',\n   # the data disk\n"
            "         \"vdev=xvdb,target=/srv/d.img\",\n]\nvif = []\n")
    settings, problems = xlconfig.read(text)
    assert problems == []
    assert [(s.name, s.line) for s in settings] == [("name", 2), ("memory", 3), ("disk", 4), ("vif", 8)]
    disks = xlconfig.strings(settings[2].value)
    assert [(d.text, d.line, d.quote) for d in disks] == [("phy:/dev/vg/web,xvda,w", 4, "'"),
                                                          ("vdev=xvdb,target=/srv/d.img", 6, '"')]
    assert text[disks[1].start:disks[1].end] == '"vdev=xvdb,target=/srv/d.img"'


def test_escapes_are_read_and_written_back():
    settings, problems = xlconfig.read("name = 'it\\'s\\\\a\\ttab'\n")
    assert problems == [] and settings[0].value.text == "it's\\a\ttab"
    assert xlconfig.read(f"name = {xlconfig.quoted(settings[0].value.text)}\n")[0][0].value.text == "it's\\a\ttab"


@pytest.mark.parametrize("text, line", [
    ("name = 'a'\nimport os\n", 2),          # Python, which xm ran and xl does not
    ("name = \"a\n", 1),                      # an unterminated string
    ("name = 'a'\nName = 'b'\n", 2),          # names are lower case
    ("name =\n", 1),                          # no value
    ("disk = [ 'a' 'b' ]\n", 1),              # no comma
    ("name = 'a\\x41'\n", 1),                 # xl cannot read hex escapes
])
def test_what_xl_refuses_is_a_problem_on_its_line(text, line):
    settings, problems = xlconfig.read(text)
    assert [p.line for p in problems][:1] == [line], problems


def test_reading_goes_on_after_a_bad_line():
    settings, problems = xlconfig.read("bad bad\ndisk = [ 'cow:/a,xvda,w' ]\n")
    assert len(problems) == 1 and [s.name for s in settings] == ["disk"]


# -- one disk entry ----------------------------------------------------------------

@pytest.mark.parametrize("spec, fields", [
    ("phy:/dev/vg0/a,xvda,w", ("/dev/vg0/a", "raw", "xvda", "w", None)),
    ("/srv/a.img,qcow2,xvda,r", ("/srv/a.img", "qcow2", "xvda", "r", None)),
    ("tap:qcow2:/srv/a.qcow2,xvdb,w", ("/srv/a.qcow2", "qcow2", "xvdb", "w", None)),
    ("iscsi:iqn.2001-05.com.example:disk,xvda,w", ("iqn.2001-05.com.example:disk", "raw", "xvda", "w", "block-iscsi")),
    ("nbd:127.0.0.1 10809,xvda,w", ("127.0.0.1 10809", "raw", "xvda", "w", "block-nbd")),
    ("format=raw, vdev=xvda, access=ro, target=/srv/a,b.img", ("/srv/a,b.img", "raw", "xvda", "r", None)),
    ("vdev=xvda,script=block-cow,target=/srv/live.img 2G", ("/srv/live.img 2G", "raw", "xvda", "w", "block-cow")),
])
def test_entries_xl_reads(spec, fields):
    disk = diskspec.parse(spec)
    assert disk.errors == []
    assert (disk.target, disk.format, disk.vdev, disk.access, disk.script) == fields


@pytest.mark.parametrize("spec, error", [
    ("cow:/mnt/cdrom/rootfs.img 30,sda1,w", "unknown deprecated disk prefix: near `cow:'"),
    # a prefix followed by a letter is no prefix to xl: the target, then xvda in the format's place
    ("lvsnap:vg0/web 1G,xvda,w", "unknown value for format: near `xvda'"),
    ("/srv/a.img,xvda,w", "unknown value for format: near `xvda'"),
    ("vdev=xvda,vdev=xvdb,target=/a", "vdev respecified: near `xvdb'"),
    ("vdev=xvda,bogus=1,target=/a", "unknown parameter"),
    ("/a,raw,xvda,w,extra", "too many positional parameters: near `extra'"),
    ("target=/a", "no vdev specified"),
    ("vdev=xvda", "no target specified (and device not removable)"),
])
def test_entries_xl_refuses(spec, error):
    assert diskspec.parse(spec).errors[0].startswith(error)


@pytest.mark.parametrize("spec, script, modern", [
    ("cow:/mnt/cdrom/rootfs.img 30,sda1,w", "block-cow", "vdev=sda1,access=w,script=block-cow,target=/mnt/cdrom/rootfs.img 30"),
    ("lvsnap:vg0/web 1G,xvda,w", "block-lvsnap", "vdev=xvda,access=w,script=block-lvsnap,target=vg0/web 1G"),
    ("tap:vmdk:/srv/a.vmdk,xvda,r", "block-tap", "vdev=xvda,access=r,script=block-tap,target=vmdk:/srv/a.vmdk"),
    ("snapshot:/b.img:/c.cow,xvda,w", "block-snapshot", "vdev=xvda,access=w,script=block-snapshot,target=/b.img:/c.cow"),
])
def test_an_xend_prefix_becomes_its_script(spec, script, modern):
    found, old = diskspec.xend_script(spec)
    assert found == script and diskspec.modern(old, found) == modern
    assert diskspec.parse(modern).errors == []


@pytest.mark.parametrize("spec", ["phy:/dev/a,xvda,w", "tap:aio:/a,xvda,w", "tap:qcow2:/a,xvda,w",
                                  "/a,raw,xvda,w", "vdev=xvda,target=/a", "iscsi:iqn.x:l,xvda,w"])
def test_prefixes_xl_knows_are_no_xend_script(spec):
    assert diskspec.xend_script(spec) is None


@pytest.mark.parametrize("spec, modern", [
    ("phy:/dev/a,xvda,w", "vdev=xvda,access=w,target=/dev/a"),
    ("tap:qcow2:/a.qcow2,xvdb,r", "format=qcow2,vdev=xvdb,access=r,target=/a.qcow2"),
    ("iscsi:iqn.x:l,xvda,w", "vdev=xvda,access=w,script=block-iscsi,target=iqn.x:l"),
    ("phy:/dev/sr0,hdc:cdrom,r", "vdev=hdc,devtype=cdrom,target=/dev/sr0"),
    ("phy:/dev/a,xvda,w,discard", "vdev=xvda,access=w,discard,target=/dev/a"),
])
def test_the_modern_form_of_a_deprecated_entry_means_the_same(spec, modern):
    old = diskspec.parse(spec)
    assert diskspec.modern(old) == modern and not diskspec.is_modern(old)
    new = diskspec.parse(modern)
    assert diskspec.is_modern(new)
    assert (new.target, new.format, new.vdev, new.access, new.script, new.cdrom) == \
           (old.target, old.format, old.vdev, old.access, old.script, old.cdrom)


# -- the commands --------------------------------------------------------------------

@pytest.fixture
def site(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name in ("block-cow", "block-file"):
        (scripts / name).write_text("#!/bin/sh\n")
        (scripts / name).chmod(0o755)
    base = tmp_path / "base.img"
    base.write_bytes(b"\0" * 4096)
    return tmp_path, str(scripts), str(base)


def run(*args):
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True)


def legacy(base):
    return (f"# old\nname = \"web\"\nmemory = 128\ndisk = [ 'cow:{base} 30,sda1,w',\n"
            f"         \"phy:{base},xvdb,r\",  # deprecated, works\n"
            f"         'vdev=xvdc,access=w,script=block-cow,target=/nonexistent.img 2G',\n"
            f"         'vdev=xvdd,access=w,script=block-missing,target={base}',\n"
            f"         'vdev=xvde,access=w,script=block-cow,target={base} 2X',\n"
            f"         'vdev=xvdf,access=r,target={base}' ]\n")


def test_check_config_names_file_line_problem_and_the_xl_form(site):
    tmp_path, scripts, base = site
    path = tmp_path / "web.cfg"
    path.write_text(legacy(base))
    result = run("check-config", "--scripts", scripts, str(path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == (f"{path}:4: refused: 'cow:{base} 30,sda1,w': xl cannot read xend's cow: prefix "
                        "(unknown deprecated disk prefix: near `cow:'); it named the script block-cow; "
                        f"xl form: 'vdev=sda1,access=w,script=block-cow,target={base} 30'")
    assert lines[1] == (f"{path}:5: deprecated: 'phy:{base},xvdb,r': xl still reads phy:, kept for old configs; "
                        f"xl form: 'vdev=xvdb,access=r,target={base}'")
    assert lines[2].startswith(f"{path}:6: fails: ") and "/nonexistent.img: no such file" in lines[2]
    assert lines[3].startswith(f"{path}:7: fails: ") and f"{scripts}/block-missing is not installed" in lines[3]
    assert lines[4].startswith(f"{path}:8: fails: ") and "block-cow cannot use target" in lines[4]
    assert len(lines) == 5  # the modern, working entry is fine


def test_check_config_exits_0_when_only_deprecated_forms_remain(site):
    tmp_path, scripts, base = site
    path = tmp_path / "ok.cfg"
    path.write_text(f"disk = [ 'phy:{base},xvda,w' ]\n")
    result = run("check-config", "--scripts", scripts, str(path))
    assert result.returncode == 0 and ": deprecated: " in result.stdout


def test_check_config_of_a_file_that_is_not_an_xl_config(site):
    tmp_path, scripts, _ = site
    path = tmp_path / "script.py"
    path.write_text("import os\nos.system('x')\n")
    result = run("check-config", "--scripts", scripts, str(path), str(tmp_path / "missing.cfg"))
    assert result.returncode == 1
    assert f"{path}:1: refused: " in result.stdout
    assert f"{tmp_path / 'missing.cfg'}: refused: cannot read: No such file or directory" in result.stdout


def test_migrate_config_rewrites_what_xl_refuses_and_nothing_else(site):
    tmp_path, scripts, base = site
    path = tmp_path / "web.cfg"
    original = legacy(base)
    path.write_text(original)
    os.chmod(path, 0o640)
    result = run("migrate-config", "--scripts", scripts, str(path))
    assert f"{path}:4: rewritten" in result.stdout and f"the original is kept as {path}.bak" in result.stdout
    assert (tmp_path / "web.cfg.bak").read_text() == original
    assert path.read_text() == original.replace(f"'cow:{base} 30,sda1,w'",
                                                f"'vdev=sda1,access=w,script=block-cow,target={base} 30'")
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert result.returncode == 1  # the entries that fail to start are still there, and said
    assert "refused" not in result.stdout.split("the original is kept")[1]


def test_migrate_config_all_also_rewrites_deprecated_forms_and_keeps_every_backup(site):
    tmp_path, scripts, base = site
    path = tmp_path / "web.cfg"
    path.write_text(f"disk = [ \"phy:{base},xvdb,r\" ]  # keep me\n")
    (tmp_path / "web.cfg.bak").write_text("an older backup")
    untouched = run("migrate-config", "--scripts", scripts, str(path))  # deprecated only: said, not rewritten
    assert untouched.returncode == 0 and "rewritten" not in untouched.stdout and ": deprecated: " in untouched.stdout
    assert path.read_text() == f"disk = [ \"phy:{base},xvdb,r\" ]  # keep me\n"
    result = run("migrate-config", "--all", "--scripts", scripts, str(path))
    assert result.returncode == 0, result
    assert path.read_text() == f"disk = [ \"vdev=xvdb,access=r,target={base}\" ]  # keep me\n"
    assert (tmp_path / "web.cfg.bak").read_text() == "an older backup"
    assert (tmp_path / "web.cfg.bak.1").read_text() == f"disk = [ \"phy:{base},xvdb,r\" ]  # keep me\n"


def test_check_file_findings_are_in_file_order(site):
    tmp_path, scripts, base = site
    path = tmp_path / "a.cfg"
    path.write_text(f"disk = [ 'phy:{base},xvda,w' ]\nbad line\n")
    findings = configcheck.check_file(str(path), scripts)
    assert [(f.line, f.severity) for f in findings] == [(1, "deprecated"), (2, "refused")]
