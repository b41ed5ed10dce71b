"""The run's deadline counts from the process's own start, as libxl's does."""
import subprocess
import sys
import time

from xenblock import deadline
from xenblock.deadline import Deadline

AGE = "import sys; sys.path.insert(0, '.'); from xenblock.deadline import process_age; print(process_age())"


def test_a_process_started_late_has_less_time():
    # exec keeps the start time: sleeping before exec ages the process.
    fresh = float(subprocess.run([sys.executable, "-c", AGE], capture_output=True, text=True, check=True).stdout)
    aged = float(subprocess.run(["sh", "-c", 'sleep 1.5; exec "$0" -c "$1"', sys.executable, AGE],
                                capture_output=True, text=True, check=True).stdout)
    assert 0 <= fresh < 1.5
    assert aged >= 1.5 and aged - fresh > 1.0


def test_the_runs_deadline_leaves_the_margin_before_libxls_limit():
    for command, limit in deadline.LIBXL_LIMITS.items():
        left = Deadline.of_run(command).remaining()
        assert limit - deadline.MARGIN - deadline.process_age() - 0.5 < left <= limit - deadline.MARGIN


def test_capped_and_expired():
    later = Deadline.after(100)
    assert 0.4 < later.capped(0.5).remaining() <= 0.5
    assert later.capped(1000).remaining() <= 100
    assert Deadline.after(0).expired() and not later.expired()
    assert Deadline(time.monotonic() - 5).remaining() == 0.0
