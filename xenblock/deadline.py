"""One deadline per run, from libxl's limits.

libxl gives `add` 40 s and `remove` 10 s, counted from the moment it started
the script, and then kills the script's own pid with SIGKILL: nothing is
logged and no hotplug-error is written. So every wait and retry of a run is
bounded by what is left of one deadline, counted from the process's own start
(the interpreter's start is part of libxl's 40 s), less a margin for writing
the hotplug-error that says what the run waited for.
"""
import os
import time

LIBXL_LIMITS = {"add": 40.0, "remove": 10.0}
# Enough to connect to xenstore and write hotplug-error (it took 1.5 s under
# the emulated test host with pyxs, where everything is 30 times slower).
MARGIN = 3.0


class Deadline:
    def __init__(self, end):
        self.end = end  # on the time.monotonic() clock

    @classmethod
    def after(cls, seconds):
        return cls(time.monotonic() + seconds)

    @classmethod
    def of_run(cls, command):
        """The deadline of this process as libxl's `command` script."""
        return cls.after(LIBXL_LIMITS[command] - MARGIN - process_age())

    def remaining(self):
        return max(0.0, self.end - time.monotonic())

    def expired(self):
        return self.remaining() == 0.0

    def capped(self, seconds):
        """This deadline or seconds from now, whichever comes first."""
        return Deadline(min(self.end, time.monotonic() + seconds))


def process_age():
    """Seconds since this process was forked (exec keeps the start time)."""
    started = start_ticks("self") / os.sysconf("SC_CLK_TCK")
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)


def start_ticks(pid):
    """When process pid started, in clock ticks since boot (on the clock
    CLOCK_BOOTTIME reads); with the pid, an identity no later process
    shares. None if there is no such process.

    /proc/PID/stat's 22nd field. The command name (field 2) may hold spaces
    and parentheses, so fields are counted after its closing parenthesis.
    """
    fields = stat_fields(pid)
    return None if fields is None else int(fields[19])


def stat_fields(pid):
    """/proc/PID/stat from field 3 (the state) on; None if pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
