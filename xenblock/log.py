"""One line per add/remove an administrator can follow.

Lines go to xen-hotplug.log (the file Xen's own scripts write) and syslog.
libxl already points a hotplug script's stderr at xen-hotplug.log, so stderr
gets the line only when it is somewhere else (a person running the script by
hand), never twice into the same file.
"""
import os
import sys
import syslog
import time

from .errors import one_line


class Log:
    def __init__(self, config, program):
        self.program = program
        self.debug_enabled = config.debug
        self.path = config.log_file
        self.use_syslog = config.syslog
        self.stderr_is_log = _same_file(sys.stderr, self.path)
        if self.use_syslog:
            syslog.openlog(program, syslog.LOG_PID, syslog.LOG_DAEMON)

    def info(self, message):
        self._emit(syslog.LOG_INFO, message)

    def warning(self, message):
        self._emit(syslog.LOG_WARNING, message)

    def error(self, message):
        self._emit(syslog.LOG_ERR, message)

    def debug(self, message):
        if self.debug_enabled:
            self._emit(syslog.LOG_DEBUG, message)

    def _emit(self, priority, message):
        message = one_line(message)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp} {self.program}[{os.getpid()}]: {message}\n"
        self._append(line)
        if not self.stderr_is_log:
            sys.stderr.write(line)
        if self.use_syslog:
            syslog.syslog(priority, message)

    def _append(self, line):
        # O_APPEND makes each line one atomic write among concurrent scripts.
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return  # no /var/log/xen (a host without Xen): syslog still has it
        try:
            os.write(fd, line.encode(errors="backslashreplace"))
        finally:
            os.close(fd)


def _same_file(stream, path):
    try:
        mine = os.fstat(stream.fileno())
        theirs = os.stat(path)
    except (OSError, ValueError, AttributeError):
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)
