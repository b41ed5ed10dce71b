"""xenblock.command: how every child process is started."""
import os
import sys

import pytest

from xenblock import command
from xenblock.deadline import Deadline
from xenblock.errors import HotplugError

PY = sys.executable


def test_returns_stdout_and_gives_the_child_an_empty_stdin():
    assert command.run([PY, "-c", "import sys; print(repr(sys.stdin.read()))"], "reading", Deadline.after(30),
                       needs=1) == "''\n"


def test_no_descriptor_of_ours_reaches_the_child(tmp_path):
    fd = os.open(tmp_path / "lock", os.O_CREAT | os.O_RDWR)
    os.set_inheritable(fd, True)  # even one marked inheritable
    try:
        listed = command.run([PY, "-c", "import os; print(' '.join(os.listdir('/proc/self/fd')))"], "listing",
                             Deadline.after(30), needs=1).split()
    finally:
        os.close(fd)
    assert str(fd) not in listed
    assert {"0", "1", "2"} <= set(listed)


def test_the_child_speaks_c_and_finds_sbin(monkeypatch):
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    monkeypatch.delenv("PATH")
    out = command.run([PY, "-c", "import os; print(os.environ['LC_ALL'], os.environ['PATH'])"], "env",
                      Deadline.after(30), needs=1)
    language, path = out.split()
    assert language == "C"
    assert "/usr/sbin" in path.split(":") and "/sbin" in path.split(":")


def test_a_failure_names_the_step_and_carries_what_the_program_said():
    argv = [PY, "-c", "import sys; sys.stderr.write('  Volume group \"vg9\" not found\\n'); sys.exit(5)"]
    with pytest.raises(command.CommandError) as failed:
        command.run(argv, "creating snapshot vg9/web", Deadline.after(30), needs=1)
    assert failed.value.argv == argv and failed.value.returncode == 5
    assert "Volume group" in failed.value.stderr
    assert str(failed.value) == ('creating snapshot vg9/web failed: ' + PY +
                                 ' exited with status 5: Volume group "vg9" not found')


def test_a_step_without_the_time_it_needs_is_not_started(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(HotplugError, match=r"removing vg0/x: not started, \d+\.\d s left"):
        command.run([PY, "-c", f"open({str(marker)!r}, 'w')"], "removing vg0/x", Deadline.after(2), needs=10)
    assert not marker.exists()


def test_a_step_that_overruns_is_let_finish_and_logged():
    warnings = []

    class Log:
        def warning(self, text):
            warnings.append(text)

    out = command.run([PY, "-c", "import time; time.sleep(0.5); print('done')"], "slow step",
                      Deadline.after(0.2), needs=0, log=Log())
    assert out == "done\n"
    assert len(warnings) == 1 and warnings[0].startswith("slow step took ")


def test_a_missing_program_is_a_plain_error():
    with pytest.raises(HotplugError, match="^listing volumes failed: cannot run /nonexistent/lvs: No such file"):
        command.run(["/nonexistent/lvs"], "listing volumes", Deadline.after(30), needs=1)


def test_a_daemon_gets_its_own_session_and_no_stream_of_ours(tmp_path):
    out = tmp_path / "seen"
    child = command.start([PY, "-c", f"""import os
open({str(out)!r}, 'w').write(' '.join([str(os.getsid(0) == os.getpid())] +
                                       [os.readlink('/proc/self/fd/%d' % n) for n in (0, 1, 2)]))"""],
                          "starting a daemon")
    assert child.wait(timeout=30) == 0
    assert out.read_text() == "True /dev/null /dev/null /dev/null"
