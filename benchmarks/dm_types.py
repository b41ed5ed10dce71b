#!/usr/bin/env python3
"""The device-mapper types against block-file: add+remove latency, and a
guest's sequential throughput through block-cow.

Runs in dom0 of the Xen VM, in the same VM run as hotplug_latency.py
(benchmarks/run). Every image, base, CoW file and block-cow store lives on
one file system: a tmpfs mounted for this run (the VM has no disk), named to
block-cow as its store directory by a [cow] section added to
/etc/xenblock/xenblock.conf for the run and taken out after.

Latency: block-file, block-cow, block-snapshot and block-part driven as
libxl drives them (hotplug_latency's helpers), interleaved, medians, the
ratio to block-file; processes started (strace -f) and xenstore requests
(xenstored -T) per add. block-snapshot twice: with a CoW file made by the
add (a guest's first start: it measures the file's creation) and with a
CoW file kept from before (every later start, the common case).

Throughput: one guest (tests/xen/xl.py) with xvda through block-file (an
image file) and xvdb through block-cow (a base of the same size), running
dd with O_DIRECT, bs=1M. Per round, each disk in turn (the order swapped
every round) writes a region of the round's own, never written before (for
block-cow: a copy-on-write to fresh chunks, the worst case); then each
writes it again (the steady state); then each reads it back. MB/s from
/proc/uptime around each dd.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

from hotplug_latency import BASE, _counts, _cycle, _described_machine, _image, _xenstore

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.xen.xl import disk, run_guest  # noqa: E402 (needs the checkout on sys.path)

STORAGE = "/run/xenblock-bench"
CONFIG = "/etc/xenblock/xenblock.conf"
SCRIPT_DIR = "/etc/xen/scripts"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=9, help="throughput rounds in the guest")
    parser.add_argument("--mib", type=int, default=32, help="MiB per dd (9 rounds of 64 fill the 1 GiB tmpfs)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    client = _xenstore()
    results = {"machine": _described_machine("tmpfs in dom0 (images, bases, CoW files, stores)")}
    with _storage(), _cow_directory(os.path.join(STORAGE, "cow")):
        cases = _cases()
        # An untimed add+remove makes the kept CoW file.
        _cycle(client, _script("block-snapshot"), cases["block-snapshot, kept CoW file"][1], "phy")
        results["latency"] = latency(client, cases, args.repeats)
        _save(args.out, results)  # kept if the guest below fails
        results["throughput"] = _throughput(args.rounds, args.mib)
    _save(args.out, results)
    print(json.dumps(results["latency"], indent=1))
    print(json.dumps(results["throughput"]["summary"], indent=1))


def _save(path, results):
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


class _storage:
    """A tmpfs at STORAGE for the run's files."""

    def __enter__(self):
        os.makedirs(STORAGE, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1G,mode=0700", "xenblock-bench", STORAGE], check=True)

    def __exit__(self, *_):
        subprocess.run(["umount", STORAGE], check=False)


class _cow_directory:
    """block-cow's store directory set in the installed config; the file as it was after."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        with open(CONFIG) as f:
            self.saved = f.read()
        with open(CONFIG, "a") as f:
            f.write(f"\n[cow]\ndirectory = {self.path}\n")

    def __exit__(self, *_):
        with open(CONFIG, "w") as f:
            f.write(self.saved)


# --- add+remove latency -----------------------------------------------------

def latency(client, cases, repeats):
    """Rows of medians for cases ({case: (script, target, a file to delete
    before each add or None)}), block-file's the ratios' baseline."""
    samples = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (script, target, fresh) in cases.items():  # interleaved: drift hits all alike
            _unlink(fresh)
            samples[name].append(_cycle(client, _script(script), target, "phy"))
    file_total = _median_total(samples["block-file"])
    rows = []
    for name, (script, target, fresh) in cases.items():
        _unlink(fresh)
        processes, requests = _counts(client, _script(script), target, "phy")
        total = _median_total(samples[name])
        rows.append({"case": name, "script": script, "target": target, "repeats": repeats,
                     "add_median_s": round(statistics.median(a for a, _ in samples[name]), 3),
                     "remove_median_s": round(statistics.median(r for _, r in samples[name]), 3),
                     "add_remove_median_s": round(total, 3),
                     "ratio_to_block_file": round(total / file_total, 2),
                     "processes_per_add": processes, "xenstore_requests_per_add": requests})
    client.delete(BASE.encode())
    return rows


def _cases():
    """case -> (script, target, a CoW file to delete before each add or None)."""
    file_image = _image(os.path.join(STORAGE, "file.img"))
    base = _image(os.path.join(STORAGE, "base.img"))
    part_image = _partitioned(os.path.join(STORAGE, "part.img"))
    new, kept = os.path.join(STORAGE, "new.cow"), os.path.join(STORAGE, "kept.cow")
    return {
        "block-file": ("block-file", file_image, None),
        "block-cow": ("block-cow", f"{base} 16M", None),
        "block-snapshot, new CoW file": ("block-snapshot", f"{base}:{new}", new),
        "block-snapshot, kept CoW file": ("block-snapshot", f"{base}:{kept}", None),
        "block-part": ("block-part", f"{part_image} 2", None),
    }


def _partitioned(path):
    """A 64 MiB image with two MBR partitions (16 MiB, then the rest)."""
    _image(path)
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", path], input="1MiB,16MiB\n,\n",
                   text=True, check=True)
    return path


def _median_total(samples):
    return statistics.median(add + remove for add, remove in samples)


def _script(name):
    return os.path.join(SCRIPT_DIR, name)


def _unlink(path):
    if path and os.path.exists(path):
        os.unlink(path)


# --- guest throughput -------------------------------------------------------

# Runs in the guest (busybox sh); one line per dd: round, disk, operation,
# /proc/uptime before and after. A failed dd marks its operation "-failed".
# Round r takes the disks in the order rotated by r (a b, b a; a b c, b c a, ...).
SNIPPET = """M={mib};L="{letters}";n={n}
t(){{ u=$(cut -d' ' -f1 /proc/uptime)
if [ $o = read ];then dd if=/dev/xvd$d of=/dev/null bs=1M count=$M skip=$((r*M)) iflag=direct
else dd if=/dev/zero of=/dev/xvd$d bs=1M count=$M seek=$((r*M)) oflag=direct;fi 2>/dev/null||o=$o-failed
echo "$r $d $o $u $(cut -d' ' -f1 /proc/uptime)";}}
for r in $(seq 0 {last});do s=$(echo $L $L|cut -d' ' -f$((r%n+1))-$((r%n+n)))
for o in first-write rewrite read;do for d in $s;do t;done;done;done
"""


def _throughput(rounds, mib):
    size = rounds * mib  # MiB: each round has a region of its own
    image = _image(os.path.join(STORAGE, "guest.img"), size << 20)
    base = _image(os.path.join(STORAGE, "guest-base.img"), size << 20)
    result = guest_throughput([("block-file", disk(image, vdev="xvda")),
                               ("block-cow", disk(f"{base} {size + 64}M", vdev="xvdb", script="block-cow"))],
                              rounds, mib)
    result["summary"] = _summary(result["mb_per_s"])
    return result


def guest_throughput(disks, rounds, mib):
    """One guest with disks ([(name, disk entry)], vdevs xvda, xvdb, ... in
    order) runs SNIPPET: its lines and {operation: {name: [MB/s per round]}}."""
    letters = "abcdefgh"[:len(disks)]
    snippet = SNIPPET.format(mib=mib, last=rounds - 1, letters=" ".join(letters), n=len(disks))
    lines, status = run_guest(pathlib.Path(STORAGE), [entry for _, entry in disks], snippet, timeout=1800)
    if status != 0 or any("failed" in line for line in lines):
        sys.exit(f"the throughput guest failed (status {status}):\n" + "\n".join(lines))
    names = {letter: name for letter, (name, _) in zip(letters, disks)}
    return {"rounds": rounds, "mib_per_dd": mib, "guest_lines": lines, "mb_per_s": _mb_per_s(lines, mib, names)}


def _mb_per_s(lines, mib, names):
    """{operation: {disk's name: [MB/s per round]}} from the guest's lines."""
    samples = {}
    for line in lines:
        try:
            _, d, operation, before, after = line.split()
        except ValueError:  # not one of the snippet's (a kernel message, say): kept in guest_lines
            continue
        seconds = max(float(after) - float(before), 0.01)  # /proc/uptime counts hundredths
        rate = (mib << 20) / 1e6 / seconds
        samples.setdefault(operation, {}).setdefault(names[d], []).append(round(rate, 1))
    return samples


def _summary(samples):
    return {operation: {"block-file_median_mb_s": statistics.median(by["block-file"]),
                        "block-cow_median_mb_s": statistics.median(by["block-cow"]),
                        "ratio": round(statistics.median(by["block-cow"]) /
                                       statistics.median(by["block-file"]), 2)}
            for operation, by in samples.items()}


if __name__ == "__main__":
    main()
