"""The entry point of every block-<type> hotplug script (libxl's contract).

libxl runs `<script> add|remove` with XENBUS_PATH naming the backend
directory; xend-era callers say create/destroy. On success add has written
physical-device, physical-device-path and hotplug-status=connected; on any
failure the script writes one hotplug-error line and hotplug-status=error
and exits 1 (libxl reads the exit status, then logs hotplug-error).
"""
import os
import sys
import time

from . import config as config_module
from . import lifecycle, locks, xenstore
from .errors import HotplugError
from .log import Log
from .state import StateDir

COMMANDS = {"add": "add", "create": "add", "remove": "remove", "destroy": "remove"}
SCRIPT_PREFIX = "block-"


def main(argv, environ):
    program = os.path.basename(argv[0])
    command = COMMANDS.get(argv[1] if len(argv) > 1 else "")
    key = environ.get("XENBUS_PATH", "").strip("/")
    if command is None or not key:
        print(f"usage: XENBUS_PATH=<backend path> {program} add|remove\n"
              "(libxl runs this script for disks with script=; see xenblock's README)",
              file=sys.stderr)
        return 1
    try:
        config, broken = config_module.load(environ), None
    except HotplugError as e:  # still log and report it, with the default settings
        config, broken = config_module.Config(), e
    log = Log(config, program)
    started = time.monotonic()
    try:
        with xenstore.XenStore(environ) as xs:
            if broken is not None:
                return _fail(command, key, str(broken), xs, log)
            status = _run(command, key, _disk_type(program, environ), xs, config, log)
    except ConnectionError as e:  # nowhere to write hotplug-error: the log has it
        log.error(f"{command} {key}: failed: {e}")
        return 1
    if status == 0:
        log.debug(f"{command} {key}: {time.monotonic() - started:.2f} s")
    return status


def _disk_type(program, environ):
    # libxl looks scripts up by name; the name says the type. A wrapper with
    # another name can still say which script it stands for in $script.
    name = program if program.startswith(SCRIPT_PREFIX) else os.path.basename(environ.get("script", ""))
    return name.removeprefix(SCRIPT_PREFIX)


def _run(command, key, disk_type, xs, config, log):
    ctx = lifecycle.Context(key, disk_type, xs, StateDir(config.state_dir), config, log)
    action = lifecycle.add if command == "add" else lifecycle.remove
    try:
        with locks.held(ctx.state.lock_path(key), config.lock_timeout):
            summary = action(ctx)
    except HotplugError as e:
        return _fail(command, key, str(e), xs, log)
    except ConnectionError:
        raise  # xenstore unreachable: no hotplug-error can be written; main logs it
    except Exception as e:  # a bug of ours: still one readable line for libxl
        import traceback
        log.error(traceback.format_exc().rstrip())
        return _fail(command, key, f"internal error in xenblock: {e!r}; see xen-hotplug.log", xs, log)
    log.info(f"{command} {key}: {summary}")
    return 0


def _fail(command, key, message, xs, log):
    log.error(f"{command} {key}: failed: {message}")
    try:
        xs.write_all(key, {"hotplug-error": message, "hotplug-status": "error"})
    except Exception as e:  # the message is in the log; do not hide it behind this
        log.error(f"{command} {key}: could not write hotplug-error: {e!r}")
    return 1
