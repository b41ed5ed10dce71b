"""xenblock check-config and migrate-config against xl itself: the host
tier's harness of xl's readers (tests/support/libxlu.py, which holds
xenblock's readers to libxlutil) held to `xl create -n` (xl's dry run: it
reads the config and prints the domain's JSON), and a legacy xend config
migrated and booted."""
import json
import os
import subprocess

import pytest

from tests.support import libxlu
from tests.support.fixtures import digest
from tests.vm import guest
from tests.xen.xl import config, create_on_console, guest_result, wait_gone, xl
from xenblock import xlconfig

XENBLOCK = os.path.join(os.environ.get("XENBLOCK_VENV", "/nonexistent"), "bin", "xenblock")


def dry_run(tmp_path, text):
    path = tmp_path / "dry.cfg"
    path.write_text(text)
    return xl("create", "-n", str(path))


def minimal(disk_line, end="\n"):
    return (f'name = "xbdry"\ntype = "pv"\nkernel = "{guest.kernel()}"\nmemory = 64\n'
            f"disk = [ {disk_line} ]{end}")


# Few: xl takes seconds per run under emulation. An entry xl reads, a
# cd-rom with no target, one it refuses, and a file without a last newline.
@pytest.mark.parametrize("spec", ["tap:qcow2:/srv/a.qcow2,xvda,r", ",hdc:cdrom,r",
                                  "cow:/mnt/cdrom/rootfs.img 30,sda1,w"])
def test_the_harness_reads_an_entry_as_xl_create_does(tmp_path, spec):
    theirs, _ = libxlu.read_disk(spec)
    result = dry_run(tmp_path, minimal(xlconfig.quoted(spec)))
    assert (result.returncode == 0) == (theirs is not None), result.stderr
    if theirs is None:
        assert "config parsing error in disk specification" in result.stderr
    else:
        assert json.loads(result.stdout)["disks"][0] == theirs


def test_the_harness_reads_a_file_as_xl_create_does(tmp_path):
    text = minimal("'vdev=xvda,target=/srv/a.img'", end="")
    assert libxlu.read_config(text)[0]
    assert dry_run(tmp_path, text).returncode == 0


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
    lines, status = guest_result(create_on_console(name, path))
    assert status == 0 and lines[0] == mark.decode() and "wrote 0" in lines, lines
    assert digest(base) == before
