"""xenblock check-config and migrate-config held to xl itself: every entry
of tests/support/disk_specs.py and a few whole files through `xl create -n`
(xl's dry run: it reads the config and prints the domain's JSON), and a
legacy xend config migrated and booted."""
import json
import os
import subprocess

import pytest

from tests.support.disk_specs import SPECS
from tests.vm import guest
from tests.xen.test_block_cow_xl import digest
from tests.xen.xl import config, guest_result, wait_gone, xl
from xenblock import diskspec, xlconfig

XENBLOCK = os.path.join(os.environ.get("XENBLOCK_VENV", "/nonexistent"), "bin", "xenblock")
# libxl's JSON names and what they hold, against a diskspec.Disk.
FORMATS = {"raw": "raw", "qcow": "qcow", "qcow2": "qcow2", "vhd": "vhd", "empty": "empty", "qed": "qed"}


def dry_run(tmp_path, text):
    path = tmp_path / "dry.cfg"
    path.write_text(text)
    return xl("create", "-n", str(path))


def minimal(disk_line):
    return (f'name = "xbdry"\ntype = "pv"\nkernel = "{guest.kernel()}"\nmemory = 64\n'
            f"disk = [ {disk_line} ]\n")


@pytest.mark.parametrize("spec", SPECS)
def test_xenblock_reads_each_entry_as_xl_does(tmp_path, spec):
    ours = diskspec.parse(spec)
    result = dry_run(tmp_path, minimal(xlconfig.quoted(spec)))
    assert (result.returncode == 0) == (not ours.errors), (
        f"xl: status {result.returncode}\n{result.stderr}\nxenblock: {ours.errors}")
    if ours.errors:
        assert "config parsing error in disk specification" in result.stderr, result.stderr
        return
    theirs = json.loads(result.stdout)["disks"][0]
    assert theirs.get("pdev_path") == (ours.target or None)
    assert theirs.get("vdev") == ours.vdev
    assert theirs.get("script") == ours.script
    assert theirs.get("format", "unknown") == FORMATS[ours.format]
    assert bool(theirs.get("readwrite", 0)) == ours.writable
    assert bool(theirs.get("is_cdrom", 0)) == ours.cdrom


@pytest.mark.parametrize("spec", [spec for spec in SPECS if diskspec.xend_script(spec)])
def test_the_modern_form_of_an_xend_entry_is_read_by_xl_as_the_script_and_target_xend_meant(tmp_path, spec):
    script, old = diskspec.xend_script(spec)
    result = dry_run(tmp_path, minimal(xlconfig.quoted(diskspec.modern(old, script))))
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout)["disks"][0]
    assert (theirs["script"], theirs["pdev_path"], theirs["vdev"]) == (script, old.target, old.vdev)


FILES = {
    "no newline at the end": 'name = "xbdry"\nmemory = 64',
    "a comment at the end without a newline": 'name = "xbdry"\nmemory = 64\n# end',
    "settings ended by semicolons": 'name = "xbdry"; memory = 64;\n',
    "a list over lines with a trailing comma and comments": 'name = "xbdry"\ndisk = [\n  # one\n'
                                                           "  'vdev=xvda,target=/a', # two\n\n]\n",
    "+= appends": "name = 'xbdry'\ndisk = [ 'vdev=xvda,target=/a' ]\ndisk += [ 'vdev=xvdb,target=/b' ]\n",
    "python": 'name = "xbdry"\nimport os\n',
    "an upper-case name": 'Name = "xbdry"\n',
    "escapes": 'name = "xb\\tdry\\\\"\n',
    "a hex escape": 'name = "xb\\x41"\n',
    "an unterminated string": 'name = "xbdry\n',
    "a nested list": 'name = "xbdry"\ncpus = [ [ "1" ], "2" ]\n',
    "a missing value": 'name =\n',
}


@pytest.mark.parametrize("what", FILES)
def test_xenblock_reads_each_file_as_xl_does(tmp_path, what):
    text = FILES[what]
    _, problems = xlconfig.read(text)
    result = dry_run(tmp_path, text)
    xl_read_it = "config parsing error" not in result.stderr and "lexical error" not in result.stderr
    assert xl_read_it == (not problems), f"xl: {result.stderr}\nxenblock: {problems}"


def test_a_migrated_xend_config_boots_its_cow_disk(images, tmp_path):
    mark = b"xenblock-migrated-base"
    base = images("migrated-base.img", mark)
    before = digest(base)
    name, path = config(tmp_path, [f"cow:{base} 8,xvda,w"],
                        f"head -c {len(mark)} /dev/xvda; echo; echo new | dd of=/dev/xvda conv=fsync 2>/dev/null;"
                        " echo wrote $?")
    original = open(path).read()
    checked = subprocess.run([XENBLOCK, "check-config", path], capture_output=True, text=True)
    assert checked.returncode == 1 and "refused" in checked.stdout and "script=block-cow" in checked.stdout, checked
    assert xl("create", path).returncode != 0  # xl agrees
    wait_gone(name)
    migrated = subprocess.run([XENBLOCK, "migrate-config", path], capture_output=True, text=True)
    assert migrated.returncode == 0, migrated
    assert open(path + ".bak").read() == original
    # every other byte as it was
    assert open(path).read() == original.replace(f"'cow:{base} 8,xvda,w'",
                                                 f"'vdev=xvda,access=w,script=block-cow,target={base} 8'")
    result = xl("create", "-c", path, timeout=300)
    assert result.returncode == 0, result.stderr
    wait_gone(name)
    lines, status = guest_result(result.stdout)
    assert status == 0 and lines[0] == mark.decode() and "wrote 0" in lines, lines
    assert digest(base) == before
