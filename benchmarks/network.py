#!/usr/bin/env python3
"""The network types against block-file: add+remove latency of block-nbd on
an export of nbd-server in dom0 (over loopback), next to block-file on a
local image of the same size, driven as libxl drives the scripts,
interleaved, medians (dm_types.latency). Xen's own block-nbd is not
measured: it reads host and port from arguments libxl never passes and
attaches nothing under xl.

Runs in dom0 of the Xen VM (benchmarks/run network), its images on one
tmpfs mounted for the run (nbd-server cannot export virtme's overlay).
"""
import argparse
import json
import os

from dm_types import STORAGE, _save, _storage, latency
from hotplug_latency import _described_machine, _image, _xenstore
from tests.support import nbd_server  # dm_types put the checkout on sys.path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    client = _xenstore()
    results = {"machine": _described_machine("tmpfs in dom0; nbd-server in dom0 over 127.0.0.1")}
    with _storage():
        export = _image(os.path.join(STORAGE, "export.img"))
        with nbd_server.serving(os.path.join(STORAGE, "nbd-server"), {"disk": (export, False)}) as port:
            cases = {"block-file": ("block-file", _image(os.path.join(STORAGE, "file.img")), None),
                     "block-nbd": ("block-nbd", f"127.0.0.1:{port}/disk", None)}
            results["latency"] = latency(client, cases, args.repeats)
    _save(args.out, results)
    print(json.dumps(results["latency"], indent=1))


if __name__ == "__main__":
    main()
