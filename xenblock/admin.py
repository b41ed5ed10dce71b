"""The xenblock admin command: `xenblock list` shows what the hotplug scripts
have built (their records); `xenblock check-fill` how full each snapshot's
store is, and logs a warning for each one that needs a person."""
import argparse
import os
import sys

from . import config as config_module
from .errors import HotplugError
from .state import StateDir


def main(argv=None):
    parser = argparse.ArgumentParser(prog="xenblock", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="disks xenblock has built, from /run/xenblock")
    sub.add_parser("check-fill", help="how full each block-cow and block-snapshot store is; warns (in the "
                                      "hotplug log and syslog, exit status 1) of any past [general] "
                                      "fill_warning, dead, or short of free space")
    args = parser.parse_args(argv)
    try:
        config = config_module.load(os.environ)  # a mistake in it fails every add: say so here too
    except HotplugError as e:
        print(f"xenblock: {e}", file=sys.stderr)
        return 1
    if args.command == "list":
        return list_records(StateDir())
    if args.command == "check-fill":
        from .log import Log
        return check_fill(StateDir(), config, Log(config, "xenblock"))
    return 2


def list_records(state):
    records = state.records()
    for record in records:
        devices = ", ".join(step.get("node", "?") for step in record["steps"]) or "-"
        print(f"{record['key']}\t{record['type']}\t{record['mode']}\t{record['state']}\t"
              f"{devices}\t{record['target']}")
    if not records:
        print("no disks", file=sys.stderr)
    return 0


def check_fill(state, config, log):
    """A table of every live snapshot's fill level on stdout, a warning in
    the log for each one that needs a person; 1 if any did (or the check
    could not be made), else 0: a timer or a monitor needs only the status."""
    from . import fill
    try:
        levels = fill.levels(state)
    except (HotplugError, OSError) as e:
        log.error(f"check-fill: cannot read the snapshots' fill levels: {e}")
        return 1
    if not levels:
        print("no snapshots", file=sys.stderr)
        return 0
    rows = [("DISK", "TYPE", "GUEST", "STORE", "FILL", "COW FILE SPACE", "STATE")]
    warned = False
    for level in levels:
        reasons = fill.warnings(level, config.fill_warning)
        for why in reasons:
            log.warning(f"check-fill {', '.join(level.keys)} (domain {', '.join(map(str, level.guests))}, "
                        f"{level.type} {level.target}): {why}")
        warned = warned or bool(reasons)
        rows.append((",".join(level.keys), level.type, ",".join(map(str, level.guests)), *_store_columns(level.usage),
                     _space_column(level.space), _state_column(level, config.fill_warning)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 1 if warned else 0


def _store_columns(usage):
    from . import fill
    if usage is None or usage.problem is not None:
        return "-", "-"
    return fill.used_text(usage), fill.percent(usage.fill)


def _space_column(space):
    from . import sizes
    if space is None:
        return "-"
    if space.error is not None:
        return f"unknown ({space.error})"
    return f"{sizes.text(space.free, rounded=True)} free, may grow {sizes.text(space.growth, rounded=True)}"


def _state_column(level, warn_at):
    from . import fill
    if level.usage is None:
        states = ["gone (no device-mapper device)"]
    elif level.usage.problem is not None:
        states = [f"DEAD ({level.usage.problem})"]
    elif fill.store_warning(level.usage, warn_at):
        states = [f"WARNING: past {fill.percent(warn_at)}"]
    else:
        states = ["ok"]
    if fill.space_warning(level.space):
        states.append("WARNING: file system short of space")
    return ", ".join(states)


if __name__ == "__main__":
    sys.exit(main())
