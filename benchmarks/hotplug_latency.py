#!/usr/bin/env python3
"""add+remove latency of block-file against Xen's stock `block` script.

Runs in dom0 of the Xen VM (benchmarks/run boots it): both scripts, side by
side in one run, driven exactly as libxl drives them (backend nodes written
first, then `<script> add`, then `<script> remove`), for an image file and
for a block device, with 0, 100 and 500 other vbds in xenstore. Reports
medians, the number of processes each run starts (strace -f, counted in a
separate run so tracing does not distort the timings) and the xenstore
requests each add makes (xenstored's own trace file, -T).

The other vbds live under XENBUS_BASE_PATH (xenblock-bench/vbd), where the
stock script's sharing check walks them; blkback does not watch that path.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import pyxs

BASE = "xenblock-bench"
SCRIPTS = {"stock block": "/etc/xen/scripts/block", "xenblock block-file": "/etc/xen/scripts/block-file"}
TRACE = os.environ.get("XENSTORED_TRACE", "/var/log/xen/xenstored-trace.log")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vbds", default="0,100,500")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="xenblock-bench-")
    image = _image(os.path.join(work, "disk.img"))
    device = subprocess.run(["losetup", "--find", "--show", _image(os.path.join(work, "dev.img"))],
                            capture_output=True, text=True, check=True).stdout.strip()
    client = _xenstore()
    results = []
    try:
        for count in [int(n) for n in args.vbds.split(",")]:
            _set_other_vbds(client, count)
            repeats = args.repeats if count < 500 else max(3, args.repeats // 2)
            for target, kind in ((image, "file"), (device, "phy")):
                results += _compare(client, target, kind, count, repeats)
    finally:
        _set_other_vbds(client, 0)
        client.delete(BASE.encode())
        subprocess.run(["losetup", "-d", device], check=False)
    with open(args.out, "w") as f:
        json.dump({"machine": _machine(), "results": results}, f, indent=1)
    for row in results:
        print(json.dumps(row))


def _compare(client, target, kind, count, repeats):
    samples = {name: {"add": [], "remove": []} for name in SCRIPTS}
    for _ in range(repeats):
        for name, script in SCRIPTS.items():  # interleaved: drift hits both alike
            add, remove = _cycle(client, script, target, kind)
            samples[name]["add"].append(add)
            samples[name]["remove"].append(remove)
    rows = []
    for name, script in SCRIPTS.items():
        processes, requests = _counts(client, script, target, kind)
        add, remove = samples[name]["add"], samples[name]["remove"]
        rows.append({"script": name, "target": kind, "other_vbds": count, "repeats": repeats,
                     "add_median_s": round(statistics.median(add), 3),
                     "remove_median_s": round(statistics.median(remove), 3),
                     "add_remove_median_s": round(statistics.median(a + r for a, r in zip(add, remove)), 3),
                     "processes_per_add": processes, "xenstore_requests_per_add": requests})
    return rows


def _cycle(client, script, target, kind, wrap=()):
    key = _backend(client, target, kind)
    started = time.monotonic()
    _run(wrap, script, "add", key)
    added = time.monotonic()
    # Untimed: the udev events of what add built (four dm devices for an LVM
    # snapshot, each probed) are over before remove, as they are when libxl
    # removes a disk after its guest ran. Under emulation they otherwise
    # starve remove of the CPU (a block-lvsnap remove ran out of its 10 s).
    subprocess.run(["udevadm", "settle", "--timeout=60"], check=False)
    removing = time.monotonic()
    _run((), script, "remove", key)
    removed = time.monotonic()
    client.delete(key.encode())  # what libxl does after remove
    return added - started, removed - removing


def _counts(client, script, target, kind):
    """Processes started and xenstore requests made by one add. strace
    follows a daemon the add leaves running (block-tap's qemu-nbd) until
    remove ends it, so the count is taken once the script itself exited."""
    key = _backend(client, target, kind)
    trace_start = _size(TRACE)
    with tempfile.NamedTemporaryFile("r") as log, tempfile.TemporaryFile("w+") as errors:
        tracer = subprocess.Popen(["strace", "-f", "-q", "-e", "trace=execve", "-e", "signal=none",
                                   "-o", log.name, script, "add"], env=_env(script, key),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
        lines = _traced_until_exit(log, tracer, errors)
        # An execve may be split in two lines ("<unfinished ...>", "<... execve resumed>) = 0").
        processes = sum(1 for line in lines if "execve" in line and line.rstrip().endswith("= 0"))
        requests = _requests_since(trace_start)
        subprocess.run(["udevadm", "settle", "--timeout=60"], check=False)  # as in _cycle
        _run((), script, "remove", key)
        tracer.wait(timeout=120)
    client.delete(key.encode())
    return processes, requests


def _traced_until_exit(log, tracer, errors, timeout=120):
    """strace's whole lines ("<pid> ...") up to its first process's exit;
    exits saying so if that was not 0."""
    text, deadline = "", time.monotonic() + timeout
    while True:
        gone = tracer.poll() is not None  # asked first: then all it wrote is read below
        text += log.read()
        lines = text[:text.rfind("\n") + 1].splitlines()
        words = [line.split() for line in lines]
        ended = [w[1:] for w in words if w[0] == words[0][0] and w[1] == "+++"]
        if ended:
            if ended[0][:4] != ["+++", "exited", "with", "0"]:
                sys.exit(f"traced add failed: {' '.join(ended[0])}: {lines[0][:300]}")
            return lines
        if gone:
            errors.seek(0)
            sys.exit(f"strace ended with status {tracer.returncode}: {errors.read()[-2000:]}")
        if time.monotonic() > deadline:
            sys.exit(f"a traced add did not end in {timeout} s")
        time.sleep(0.1)


def _backend(client, target, kind):
    key = f"{BASE}/vbd/7/51712"
    nodes = {"params": target, "mode": "w", "type": kind, "frontend-id": "7", "state": "2",
             "online": "1", "script": "bench", "device-type": "disk"}
    for name, value in nodes.items():
        client.write(f"{key}/{name}".encode(), value.encode())
    return key


def _run(wrap, script, command, key):
    result = subprocess.run([*wrap, script, command], env=_env(script, key), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{script} {command} failed: {result.stderr[-2000:]}")


def _env(script, key):
    return {"PATH": os.environ["PATH"], "XENBUS_PATH": key, "XENBUS_TYPE": "vbd",
            "XENBUS_BASE_PATH": BASE, "script": script}


def _set_other_vbds(client, count):
    """count other guests' vbds, each with a physical-device and a mode."""
    if client.exists(f"{BASE}/vbd".encode()):
        client.delete(f"{BASE}/vbd".encode())
    for i in range(count):
        key = f"{BASE}/vbd/{100 + i // 4}/{51712 + (i % 4) * 16}"
        client.write(f"{key}/physical-device".encode(), f"fd:{i:x}".encode())
        client.write(f"{key}/mode".encode(), b"w")


def _requests_since(offset):
    if offset is None:
        return None
    with open(TRACE, "rb") as f:
        f.seek(offset)
        # xenstored -T writes one "IN" line per request it receives.
        return sum(1 for line in f if line.startswith(b"IN "))


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _image(path, size=64 << 20):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _xenstore():
    """A connected client of dom0's xenstored, as the scripts' own."""
    client = pyxs.Client(unix_socket_path="/run/xenstored/socket")
    client.connect()
    return client


def _described_machine(storage):
    """_machine() with where the images live and the commit measured."""
    return {**_machine(), "storage": storage, "commit": os.environ.get("XENBLOCK_COMMIT", "?")}


def _machine():
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    xl_info = subprocess.run(["xl", "info"], capture_output=True, text=True).stdout
    xen = next((line.split(":", 1)[1].strip() for line in xl_info.splitlines()
                if line.startswith(("xen_version"))), "?")
    return {"dom0_kernel": platform.release(), "xen": xen, "cpu": model, "vcpus": os.cpu_count(),
            "note": "Xen in QEMU under TCG (software emulation): compare ratios, not absolute times"}


if __name__ == "__main__":
    main()
