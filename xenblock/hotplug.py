"""The entry point of every block-<type> hotplug script (libxl's contract).

libxl runs `<script> add|remove` with XENBUS_PATH naming the backend
directory; xend-era callers say create/destroy. On success add has written
physical-device, physical-device-path and hotplug-status=connected; on any
failure the script writes one hotplug-error line and hotplug-status=error
and exits 1 (libxl reads the exit status, then logs hotplug-error).
"""
import os
import sys

from . import config as config_module
from . import lifecycle, locks, xenstore
from .deadline import Deadline, process_age
from .errors import HotplugError
from .log import Log
from .state import StateDir

COMMANDS = {"add": "add", "create": "add", "remove": "remove", "destroy": "remove"}
SCRIPT_PREFIX = "block-"


def main(argv, environ):
    program = os.path.basename(argv[0])
    command = COMMANDS.get(argv[1] if len(argv) > 1 else "")
    # Relative (libxl's "backend/vbd/3/51712", resolved by xenstored under the
    # caller's domain) or absolute: passed on as it is.
    key = environ.get("XENBUS_PATH", "").rstrip("/")
    if command is None or not key:
        print(f"usage: XENBUS_PATH=<backend path> {program} add|remove\n"
              "(libxl runs this script for disks with script=; see xenblock's README)",
              file=sys.stderr)
        return 1
    if not _is_xenstore_path(key):  # xenstored would refuse every request, hotplug-error too
        print(f"{program} {command}: XENBUS_PATH {key!r} is not a xenstore path", file=sys.stderr)
        return 1
    deadline = Deadline.of_run(command)
    # A mistake in the file fails an add; a remove logs it and goes on with
    # the other settings (teardown needs none: xl destroy never retries).
    config, mistakes = config_module.load_all(environ)
    broken = mistakes[0] if mistakes else None
    log = Log(config, program)
    try:
        with xenstore.XenStore(environ) as xs:
            if broken is not None and command == "add":
                return _fail(command, key, str(broken), xs, log)
            if broken is not None:
                log.error(f"{command} {key}: {broken}; taking the disk down all the same")
            status = _run(command, key, _disk_type(program, environ), xs, config, log, deadline)
    except ConnectionError as e:  # nowhere to write hotplug-error: the log has it
        log.error(f"{command} {key}: failed: {e}")
        return 1
    if status == 0:
        log.debug(f"{command} {key}: {process_age():.2f} s since the script started")
    return status


def _is_xenstore_path(key):
    """Whether xenstored takes key as a node's path: words of letters,
    digits and - _ @, joined by single slashes (one leading slash at most)."""
    words = key.removeprefix("/").split("/")
    return all(word and all(c.isascii() and (c.isalnum() or c in "-_@") for c in word) for word in words)


def _disk_type(program, environ):
    # libxl looks scripts up by name; the name says the type. A wrapper with
    # another name can still say which script it stands for in $script.
    name = program if program.startswith(SCRIPT_PREFIX) else os.path.basename(environ.get("script", ""))
    return name.removeprefix(SCRIPT_PREFIX)


def _run(command, key, disk_type, xs, config, log, deadline):
    ctx = lifecycle.Context(key, disk_type, xs, StateDir(), config, log, deadline)
    action = lifecycle.add if command == "add" else lifecycle.remove
    try:
        with locks.held(ctx.state.lock_path(key), deadline, f"the lock of {key}"):
            summary = action(ctx)
    except HotplugError as e:
        return _fail(command, key, str(e), xs, log)
    except ConnectionError:
        raise  # xenstore unreachable: no hotplug-error can be written; main logs it
    except Exception as e:  # a bug of ours: still one readable line for libxl
        import traceback
        for line in traceback.format_exc().splitlines():
            log.error(line)
        return _fail(command, key, f"internal error in xenblock: {e!r}; see xen-hotplug.log", xs, log)
    log.info(f"{command} {key}: {summary}")
    return 0


def _fail(command, key, message, xs, log):
    log.error(f"{command} {key}: failed: {message}")
    try:
        written = xs.write_all(key, {"hotplug-error": message, "hotplug-status": "error"})
    except Exception as e:  # the message is in the log; do not hide it behind this
        log.error(f"{command} {key}: could not write hotplug-error: {e!r}")
        return 1
    if not written:
        log.error(f"{command} {key}: could not write hotplug-error: {key} is not in xenstore")
    return 1
