"""Building the packages as a fresh clone would: the Makefile copies the
files git knows, so the tests give it a copy of HEAD (git archive) that is
a repository of its own, and Debian's tools on PATH (whatever venv runs
the tests)."""
import glob
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


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
