"""The xenblock admin command. Subcommands grow with later work; for now:
`xenblock list` shows what the hotplug scripts have built (their records)."""
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
    args = parser.parse_args(argv)
    try:
        config_module.load(os.environ)  # a mistake in it fails every add: say so here too
    except HotplugError as e:
        print(f"xenblock: {e}", file=sys.stderr)
        return 1
    if args.command == "list":
        return list_records(StateDir())
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


if __name__ == "__main__":
    sys.exit(main())
