"""The xenblock admin command: `xenblock status` shows what the hotplug
scripts have built, checked against the kernel and xenstore; `xenblock check-fill` how full each snapshot's
store is, and logs a warning for each one that needs a person;
`xenblock check-config` and `migrate-config` check and convert the disk=
entries of xl domU config files."""
import argparse
import os
import sys

from . import config as config_module
from .errors import HotplugError
from .state import StateDir


def main(argv=None):
    parser = argparse.ArgumentParser(prog="xenblock", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="every disk xenblock has built and is live, checked against the "
                                           "kernel and xenstore; exit 1 where they disagree")
    status.add_argument("--json", action="store_true", help="one JSON list, for scripts and monitoring")
    cleanup = sub.add_parser("cleanup", help="take down what lost or failed removes left: records whose backend "
                                             "is gone, and devices of xenblock's that no record names")
    cleanup.add_argument("--dry-run", action="store_true", help="list them, touch nothing")
    sub.add_parser("config", help="the settings in force and where each comes from (the config file's line, "
                                  "the environment, or the default)")
    sub.add_parser("check-fill", help="how full each block-cow, block-snapshot and classic block-lvsnap store "
                                      "is, and each thin pool holding a thin block-lvsnap snapshot; warns (in "
                                      "the hotplug log and syslog, exit status 1) of any past [general] "
                                      "fill_warning, dead, or short of free space")
    for name, text in (("check-config", "check the disk= entries of xl domU config files as xl reads them; "
                                        "exit 1 if xl would refuse a file or a disk would fail to start"),
                       ("migrate-config", "rewrite the disk= entries xl refuses (xend's cow:, lvsnap:, "
                                          "tap:vmdk: ... prefixes) to the form xl takes, keeping a backup")):
        command = sub.add_parser(name, help=text)
        command.add_argument("files", nargs="+", metavar="FILE")
        command.add_argument("--scripts", default=None, metavar="DIR",
                             help="where xl finds hotplug scripts (default /etc/xen/scripts)")
        if name == "migrate-config":
            command.add_argument("--all", action="store_true",
                                 help="also rewrite the deprecated forms xl still reads (phy:, file:, tap:aio:, "
                                      "positional parameters)")
    args = parser.parse_args(argv)
    if args.command in ("check-config", "migrate-config"):
        return config_files(args)  # a domU config is not ours: our own settings do not matter here
    if args.command == "config":
        return show_config(os.environ)
    try:
        config = config_module.load(os.environ)  # a mistake in it fails every add: say so here too
    except HotplugError as e:
        print(f"xenblock: {e}", file=sys.stderr)
        return 1
    if args.command == "status":
        return show_status(StateDir(), config, args.json)
    if args.command == "cleanup":
        return clean_up(StateDir(), args.dry_run)
    if args.command == "check-fill":
        from .log import Log
        return check_fill(StateDir(), config, Log(config, "xenblock"))
    return 2


def show_config(environ):
    """Every setting as the file would say it, with where it comes from;
    the mistakes on stderr and exit 1 if the file has any (a mistake fails
    every add)."""
    rows, mistakes = config_module.explained(environ)
    path = environ.get("XENBLOCK_CONFIG", config_module.DEFAULT_PATH)
    print(f"# {path}{'' if os.path.exists(path) else ' (missing: every setting is its default)'}")
    section = None
    for row_section, name, value, origin in rows:
        if row_section != section:
            print(f"[{row_section}]")
            section = row_section
        print(f"{name} = {value}".ljust(40) + f"  # {origin}")
    for mistake in mistakes:
        print(f"xenblock: {mistake}", file=sys.stderr)
    return 1 if mistakes else 0


def show_status(state, config, as_json=False):
    """A table (or JSON) of every disk; 1 if anything disagrees, else 0."""
    from . import status, xenstore
    try:
        with xenstore.XenStore(os.environ) as xs:
            rows = status.rows(state, xs)
    except ConnectionError as e:
        print(f"xenblock: cannot reach xenstore: {e}", file=sys.stderr)
        return 1
    if as_json:
        import json
        print(json.dumps([status.as_json(row, config.fill_warning) for row in rows], indent=1))
    elif rows:
        _print_table([("DISK", "GUEST", "VDEV", "SCRIPT", "TARGET", "DEVICES", "ACCESS", "FILL")] +
                     [_status_cells(row, config.fill_warning) for row in rows],
                     notes=[[]] + [row.problems for row in rows])
    else:
        print("no disks", file=sys.stderr)
    return 1 if any(row.problems for row in rows) else 0


def clean_up(state, dry_run):
    """One line per leftover; 1 if any had to be left, else 0."""
    from . import cleanup, xenstore
    try:
        with xenstore.XenStore(os.environ) as xs:
            actions = cleanup.run(state, xs, dry_run)
    except ConnectionError as e:
        print(f"xenblock: cannot reach xenstore: {e}", file=sys.stderr)
        return 1
    for action in actions:
        verb = {None: "would take down", True: "took down", False: "left"}[action.done]
        print(f"{verb} {action.what}" + (f": {action.why}" if action.why else ""))
    if not actions:
        print("nothing to clean up", file=sys.stderr)
    return 1 if any(action.done is False for action in actions) else 0


def _status_cells(row, warn_at):
    from .status import fill_text
    guest = f"{row.guest or '?'} ({row.domid})" if row.domid is not None else "-"
    return (row.key or "(no record)", guest, row.vdev or "-", row.script or "-", row.target or "-",
            ", ".join(row.devices) or "-", row.access or "-", fill_text(row.fill, warn_at, row.pool))


def _print_table(rows, notes=None):
    """rows as aligned columns; each row's notes on lines of their own under it."""
    from .errors import one_line
    notes = notes or [[] for _ in rows]
    widths = [max(len(one_line(str(row[i]))) for row in rows) for i in range(len(rows[0]) - 1)]
    for row, row_notes in zip(rows, notes):
        print("  ".join(one_line(str(cell)).ljust(width) for cell, width in zip(row, widths)) + "  " +
              one_line(str(row[-1])))
        for note in row_notes:
            print(f"    ! {one_line(note)}")


def check_fill(state, config, log):
    """A table of every live snapshot's fill level on stdout (and of the
    thin pools that hold thin snapshots), a warning in the log for each one
    that needs a person; 1 if any did (or the check could not be made),
    else 0: a timer or a monitor needs only the status."""
    from . import fill
    try:
        levels, pools = fill.levels(state), fill.pools(state)
    except (HotplugError, OSError) as e:
        log.error(f"check-fill: cannot read the snapshots' fill levels: {e}")
        return 1
    if not levels and not pools:
        print("no snapshots", file=sys.stderr)
        return 0
    warned = _level_table(levels, config.fill_warning, log) if levels else False
    warned = (_pool_table(pools, config.fill_warning, log) if pools else False) or warned
    note = fill.autoextend_note(levels)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return 1 if warned else 0


def _level_table(levels, warn_at, log):
    from . import fill
    rows = [("DISK", "TYPE", "GUEST", "STORE", "FILL", "COW FILE SPACE", "STATE")]
    warned = False
    for level in levels:
        warned = _logged(log, level.keys, level.guests, f"{level.type} {level.target}",
                         fill.warnings(level, warn_at)) or warned
        rows.append((",".join(level.keys), level.type, ",".join(map(str, level.guests)), *_store_columns(level.usage),
                     _space_column(level.space), _state_column(level, warn_at)))
    _print_table(rows)
    return warned


def _pool_table(pools, warn_at, log):
    from . import fill
    rows = [("THIN POOL", "DISKS", "GUESTS", "DATA", "METADATA", "STATE")]
    warned = False
    for pool in pools:
        reasons = fill.pool_warnings(pool, warn_at)
        warned = _logged(log, pool.keys, pool.guests, "lvsnap", reasons) or warned
        usage = pool.usage
        numbers = ["-", "-"] if usage.problem else [fill.percent(usage.data_fill), fill.percent(usage.metadata_fill)]
        rows.append((pool.name, ",".join(pool.keys), ",".join(map(str, pool.guests)), *numbers,
                     _pool_state(usage, reasons, warn_at)))
    _print_table(rows)
    return warned


def _logged(log, keys, guests, what, reasons):
    """A warning in the log for each reason the disks keys need a person;
    whether there was any."""
    for why in reasons:
        log.warning(f"check-fill {', '.join(keys)} (domain {', '.join(map(str, guests))}, {what}): {why}")
    return bool(reasons)


def _pool_state(usage, reasons, warn_at):
    from . import fill
    if usage.problem:
        return f"DEAD ({usage.problem})"
    if usage.mode != "rw":
        return f"WARNING: {usage.mode}"
    return f"WARNING: past {fill.percent(warn_at)}" if reasons else "ok"


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



def config_files(args):
    from . import configcheck
    script_dir = args.scripts or configcheck.SCRIPT_DIR
    if args.command == "migrate-config":
        for path in args.files:
            _migrate(path, args.all, script_dir)
    findings = [finding for path in args.files for finding in configcheck.check_file(path, script_dir)]
    for finding in findings:
        print(_finding_text(finding))
    if not findings:
        print("no problems found", file=sys.stderr)
    return 1 if any(finding.severity != "deprecated" for finding in findings) else 0


def _migrate(path, everything, script_dir):
    from . import configcheck
    try:
        backup, changes = configcheck.migrate_file(path, everything, script_dir)
    except OSError as e:
        print(f"{path}: cannot rewrite: {e.strerror}", file=sys.stderr)
        return
    for line, old, new in changes:
        print(f"{path}:{line}: rewritten {old!r} -> {new!r}")
    if backup is not None:
        print(f"{path}: the original is kept as {backup}")


def _finding_text(finding):
    from .errors import one_line
    where = f"{finding.path}:{finding.line}" if finding.line else finding.path
    entry = f" {one_line(repr(finding.spec))}:" if finding.spec is not None else ""
    text = f"{where}: {finding.severity}:{entry} {one_line(finding.message)}"
    if finding.replacement is not None:
        text += f"; xl form: {one_line(repr(finding.replacement))}"
    return text


if __name__ == "__main__":
    sys.exit(main())
