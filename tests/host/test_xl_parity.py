"""xenblock's readers of xl configs held to xl's own (libxlutil, called
through tests/support/libxlu.py): every entry of tests/support/disk_specs.py
and a set of whole files get the same verdict, and an entry xl reads gets
the same fields; the modern form of an xend entry is read by xl as the
script and target xend meant."""
import pytest

from tests.support import libxlu
from tests.support.disk_specs import SPECS
from xenblock import diskspec, xlconfig


def fields_of(disk):
    """A diskspec.Disk in libxl's JSON terms (JSON leaves out what is zero or unset)."""
    return {"pdev_path": disk.target, "vdev": disk.vdev, "script": disk.script, "format": disk.format,
            "readwrite": int(disk.writable), "is_cdrom": int(disk.cdrom)}


def libxl_fields(theirs):
    return {"pdev_path": theirs.get("pdev_path"), "vdev": theirs.get("vdev"), "script": theirs.get("script"),
            "format": theirs.get("format", "unknown"), "readwrite": theirs.get("readwrite", 0),
            "is_cdrom": theirs.get("is_cdrom", 0)}


@pytest.mark.parametrize("spec", SPECS)
def test_each_entry_is_read_as_xl_reads_it(spec):
    ours = diskspec.parse(spec)
    theirs, report = libxlu.read_disk(spec)
    assert (theirs is not None) == (not ours.errors), f"xl: {report}\nxenblock: {ours.errors}"
    if theirs is None:
        assert ours.errors[0] in report, report  # xl's own words
    else:
        assert fields_of(ours) == libxl_fields(theirs)


@pytest.mark.parametrize("spec", [spec for spec in SPECS if diskspec.xend_script(spec)])
def test_the_modern_form_of_an_xend_entry_is_what_xend_meant(spec):
    script, old = diskspec.xend_script(spec)
    theirs, report = libxlu.read_disk(diskspec.modern(old, script))
    assert theirs is not None, report
    assert (theirs["script"], theirs["pdev_path"], theirs["vdev"]) == (script, old.target, old.vdev)
    assert theirs.get("readwrite", 0) == int(old.writable)


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
    "an octal escape": 'name = "xb\\101"\n',
    "an unterminated string": 'name = "xbdry\n',
    "a nested list": 'name = "xbdry"\ncpus = [ [ "1" ], "2" ]\n',
    "a missing value": 'name =\n',
    "an empty list": 'disk = [ ]\n',
    "two values": 'name = "a" "b"\n',
    "a list without commas": "disk = [ 'a' 'b' ]\n",
    "blank lines and a semicolon alone": '\n\n;\nname = "x"\n',
    "a number": "memory = 0x40\n",
}


@pytest.mark.parametrize("what", FILES)
def test_each_file_is_read_as_xl_reads_it(what):
    _, problems = xlconfig.read(FILES[what])
    xl_reads_it, report = libxlu.read_config(FILES[what])
    assert xl_reads_it == (not problems), f"xl: {report}\nxenblock: {problems}"
