"""Building the packages as a fresh clone would: the Makefile copies the
files git knows, so the tests give it a copy of HEAD (git archive) that is
a repository of its own, and Debian's tools on PATH (whatever venv runs
the tests)."""
import glob
import gzip
import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
MAN_SOURCES = sorted(glob.glob(os.path.join(REPO, "packaging", "man", "*.rst")))
# Names Xen's own packages ship in /etc/xen/scripts: ours go to
# /usr/libexec/xenblock, for the administrator to choose.
XEN_NAMES = ("block-nbd", "block-tap")
SCRIPT_NAMES = sorted(os.path.basename(path) for path in glob.glob(os.path.join(REPO, "scripts", "block-*")))


def run(argv, cwd="/", env=None):
    """stdout of argv run with Debian's tools (and env added to the
    environment); raises if it fails."""
    env = dict(os.environ, **(env or {}), PATH=DEBIAN_PATH, LC_ALL="C")
    return subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def make_in_copy_of_head(tmp_path_factory, target, *patterns):
    """`make target` in a new directory that gets a copy of HEAD; the one
    file in its dist/ that each glob pattern matches."""
    checkout = tmp_path_factory.mktemp("checkout")
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "xf", "-"], cwd=checkout, input=archive, check=True)
    run(["git", "init", "-q"], checkout)
    run(["make", target], checkout)
    found = [glob.glob(str(checkout / "dist" / pattern)) for pattern in patterns]
    assert all(len(paths) == 1 for paths in found), found
    return [paths[0] for paths in found]


def man(mandir, *page):
    """man's rendering of page (e.g. "5", "xenblock-disks") from the
    installed tree mandir, where .so lines and symlinks resolve, with every
    groff warning on (-ww: -wall leaves out undefined macros, strings and
    registers); its words, one space apart. Fails on a warning."""
    out = subprocess.run(["man", "--warnings=w", "-M", str(mandir), *page], capture_output=True, text=True,
                         env=dict(os.environ, PATH=DEBIAN_PATH, MANWIDTH="80", LC_ALL="C.UTF-8"))
    assert out.returncode == 0 and not out.stderr, (page, out.stderr)
    # Words that groff hyphenated at a line's end, whole again.
    return " ".join(re.sub("\u2010\n *", "", out.stdout).split())


def _rst_phrases(rst):
    """The page's one-line description (the document's subtitle, between
    two rows of -) and its section titles (underlined with = or -)."""
    lines = open(rst).read().splitlines()
    rows = [i for i, line in enumerate(lines) if line and set(line) == {"-"}]
    phrases = [lines[rows[0] + 1]]
    for i, line in enumerate(lines[1:-1], 1):
        if line and set(lines[i + 1] or " ") <= {"=", "-"} and not set(lines[i - 1] or " ") <= {"=", "-"}:
            phrases.append(line)
    return phrases


def check_man_pages(mandir):
    """mandir holds the pages rst2man made from packaging/man/*.rst, each
    rendering without warnings and saying what its source says; the
    xenblock-disks(5) page names every script (whatis finds it by their
    names) and each has its block-<type>(8) alias."""
    assert MAN_SOURCES
    for rst in MAN_SOURCES:
        name, section = os.path.basename(rst)[:-len(".rst")].rsplit(".", 1)
        with gzip.open(os.path.join(mandir, f"man{section}", f"{name}.{section}.gz"), "rt") as page:
            assert page.readline() == '.\\" Man page generated from reStructuredText.\n', rst
        text = man(mandir, section, name)
        for phrase in _rst_phrases(rst):
            assert phrase.upper() in text.upper(), (rst, phrase)
    whatis = subprocess.run(["lexgrog", os.path.join(mandir, "man5", "xenblock-disks.5.gz")], check=True,
                            capture_output=True, text=True, env=dict(os.environ, PATH=DEBIAN_PATH)).stdout
    for script in SCRIPT_NAMES:
        assert f'"{script} - guest disks built by the xenblock hotplug scripts"' in whatis, (script, whatis)
        assert man(mandir, "8", script) == man(mandir, "5", "xenblock-disks"), script
