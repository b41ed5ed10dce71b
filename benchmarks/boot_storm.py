#!/usr/bin/env python3
"""Boot storm: N adds started at the same moment, then N removes, as libxl
runs them when N guests start (and are destroyed) together.

Runs in dom0 of the Xen VM (benchmarks/run boots it). Side by side in one
run, repeats interleaved: Xen's stock `block` and block-file on N distinct
image files, and block-cow with its N snapshots on one shared base (the case
xenblock's base sharing is for; the stock script has none). Reports the
median wall time from the first start to the last exit, the ratio to the
stock script's, and how many runs failed (each script keeps libxl's 40 s
for an add and gives up past it with a hotplug-error, as under xl).
"""
import argparse
import json
import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from dm_types import STORAGE, _save, _storage
from hotplug_latency import BASE, _env, _image, _machine, _xenstore

CONTENDERS = {"stock block": "/etc/xen/scripts/block", "block-file": "/etc/xen/scripts/block-file",
              "block-cow, one base": "/etc/xen/scripts/block-cow"}
# The backend's type node as libxl writes it: "file" for the default script
# on an image, "phy" for a disk with a script of its own.
TYPES = {"stock block": "file", "block-file": "phy", "block-cow, one base": "phy"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="8,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    client = _xenstore()
    rows = []
    with _storage():
        base = _image(os.path.join(STORAGE, "base.img"), 16 << 20)
        for count in (int(n) for n in args.counts.split(",")):
            images = [_image(os.path.join(STORAGE, f"disk-{i}.img"), 16 << 20) for i in range(count)]
            targets = {"stock block": images, "block-file": images, "block-cow, one base": [f"{base} 8M"] * count}
            samples = {name: [] for name in CONTENDERS}
            for _ in range(args.repeats):
                for name, script in CONTENDERS.items():  # interleaved: drift hits all alike
                    samples[name].append(_storm(client, script, TYPES[name], targets[name]))
            rows += _rows(count, samples)
            for path in images:
                os.unlink(path)
    client.delete(BASE.encode())
    _save(args.out, {"machine": _machine(), "storm": rows})
    for row in rows:
        print(json.dumps(row))


def _storm(client, script, kind, targets):
    """(add wall time, remove wall time, failed runs) of len(targets) adds at
    once, then as many removes at once."""
    keys = [_backend(client, index, kind, target) for index, target in enumerate(targets)]
    adds, add_time = _at_once(script, "add", keys)
    subprocess.run(["udevadm", "settle", "--timeout=120"], check=False)  # untimed, as in _cycle
    removes, remove_time = _at_once(script, "remove", keys)
    for key in keys:
        client.delete(key.encode())  # what libxl does after remove
    return add_time, remove_time, sum(code != 0 for code in adds + removes)


def _at_once(script, command, keys):
    started = time.monotonic()
    with ThreadPoolExecutor(len(keys)) as pool:
        codes = list(pool.map(lambda key: subprocess.run(
            [script, command], env=_env(script, key), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode, keys))
    return codes, time.monotonic() - started


def _backend(client, index, kind, target):
    """One guest's (domain 200 + index) vbd, written as libxl writes it."""
    domain = 200 + index
    key = f"{BASE}/vbd/{domain}/51712"
    nodes = {"params": target, "mode": "w", "type": kind, "frontend-id": str(domain), "state": "2",
             "online": "1", "script": "bench", "device-type": "disk"}
    for name, value in nodes.items():
        client.write(f"{key}/{name}".encode(), value.encode())
    return key


def _rows(count, samples):
    stock = statistics.median(add for add, _, _ in samples["stock block"])
    rows = []
    for name, runs in samples.items():
        add = statistics.median(add for add, _, _ in runs)
        rows.append({"script": name, "at_once": count, "repeats": len(runs),
                     "add_wall_median_s": round(add, 2),
                     "remove_wall_median_s": round(statistics.median(remove for _, remove, _ in runs), 2),
                     "add_ratio_to_stock": round(add / stock, 2),
                     "failed_runs": sum(failed for _, _, failed in runs)})
    return rows


if __name__ == "__main__":
    main()
