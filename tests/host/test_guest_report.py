"""The test guest's report (tests/vm/guest.py REPORT) and its reading
(tests.xen.xl.guest_result): lines, count and status arrive whole, and a
console that lost lines fails instead of answering with fewer."""
import subprocess

import pytest

from tests.vm import guest
from tests.xen.xl import guest_result


def report(tmp_path, snippet):
    """The console REPORT prints for snippet, run by busybox sh as the guest runs it."""
    script = guest.REPORT.replace("/tmp/", f"{tmp_path}/")
    result = subprocess.run([guest.BUSYBOX, "sh", "-c", script], env={"snippet": snippet, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, check=True)
    return result.stdout


def test_the_snippets_lines_and_status_arrive(tmp_path):
    console = report(tmp_path, "echo one; echo 'two words'; printf last; exit 3")
    assert guest_result(console) == (["one", "two words", "last"], 3)


def test_a_silent_snippet_arrives_as_no_lines(tmp_path):
    assert guest_result(report(tmp_path, "true")) == ([], 0)


def test_a_console_that_lost_a_line_fails(tmp_path):
    console = report(tmp_path, "echo one; echo two")
    lost = "\n".join(line for line in console.splitlines() if line != "XBGUEST: two")
    with pytest.raises(AssertionError, match="lost lines: it showed \\['2'\\], 1 arrived"):
        guest_result(lost)


def test_a_reader_that_died_fails_even_with_a_good_status():
    # What a crashed reader leaves: the snippet's status, no lines, no count.
    with pytest.raises(AssertionError, match="it showed \\['none'\\], 0 arrived"):
        guest_result("XBGUEST-SHOWN: none\r\nXBGUEST-EXIT: 0\r\n")
