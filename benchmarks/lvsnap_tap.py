#!/usr/bin/env python3
"""block-lvsnap and block-tap against block-file: add+remove latency, and a
guest's sequential throughput through a block-tap qcow2 disk against a
block-file raw disk and against xl's own way to give a guest a qcow2 image,
QEMU's qdisk backend (no script).

Runs in dom0 of the Xen VM, in the same VM run as dm_types.py
(benchmarks/run), with its helpers and on the same storage: one tmpfs
mounted for the run (the VM has no disk).

Latency: block-file on a 64 MiB raw image; block-tap on a 64 MiB qcow2
(served by qemu-nbd); block-lvsnap of a classic origin (an 8 MiB snapshot)
and of a thin one, in a volume group on a loop-backed sparse PV in the
tmpfs. Driven as libxl drives the scripts, interleaved, medians, the ratio
to block-file, processes and xenstore requests per add.

Throughput: one guest with xvda through block-file (a raw image, sparse),
xvdb through block-tap (a qcow2 image, empty) and xvdc through qdisk (a
qcow2 image, empty; libxl starts QEMU, qemu-system-xen's
/usr/libexec/xen-qemu-system-i386, as the PV guest's backend), running
dm_types' dd rounds (first write, rewrite, read; O_DIRECT, bs=1M), the
three disks' order rotated every round. If xl cannot start a guest with a
qdisk disk, the results say why and the guest runs without it.
"""
import argparse
import contextlib
import glob
import json
import os
import statistics
import subprocess

from dm_types import STORAGE, _save, _storage, guest_throughput, latency
from hotplug_latency import _described_machine, _image, _xenstore
from tests.xen.xl import disk  # dm_types put the checkout on sys.path

VG = "xenblockbench"
QUIET = ["-q", "--config", "backup { backup = 0 archive = 0 }"]
FILE, TAP, QDISK = "block-file raw", "block-tap qcow2", "qdisk qcow2"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7, help="throughput rounds in the guest")
    parser.add_argument("--mib", type=int, default=32, help="MiB per dd (three images of rounds*mib in 1 GiB)")
    parser.add_argument("--no-lvsnap", action="store_true", help="block-file and block-tap only")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    client = _xenstore()
    results = {"machine": _described_machine("tmpfs in dom0 (images, qcow2 files, the PV's file)")}
    with _storage(), _volume_group() as vg:
        cases = _cases(vg)
        if args.no_lvsnap:
            cases = {name: case for name, case in cases.items() if case[0] != "block-lvsnap"}
        results["latency"] = latency(client, cases, args.repeats)
        _save(args.out, results)  # kept if the guest below fails
        results["throughput"] = _throughput(args.rounds, args.mib)
    _save(args.out, results)
    print(json.dumps(results["latency"], indent=1))
    print(json.dumps({k: v for k, v in results["throughput"].items() if k != "guest_lines"}, indent=1))


@contextlib.contextmanager
def _volume_group():
    """A VG on a loop-backed sparse PV in STORAGE with a classic origin
    `orig` and a thin origin `torig` (16 MiB each); removed after."""
    node = _sh("losetup", "--find", "--show", _image(os.path.join(STORAGE, "pv.img"), 160 << 20)).strip()
    try:
        _sh("pvcreate", *QUIET, node)
        _sh("vgcreate", *QUIET, VG, node)
        _sh("lvcreate", *QUIET, "-y", "-L", "16M", "-n", "orig", VG)
        _sh("lvcreate", *QUIET, "-y", "-L", "48M", "-T", f"{VG}/pool")
        _sh("lvcreate", *QUIET, "-y", "-V", "16M", "-T", f"{VG}/pool", "-n", "torig")
        yield VG
    finally:
        subprocess.run(["vgremove", *QUIET, "-y", "-ff", VG], capture_output=True)
        subprocess.run(["losetup", "-d", node], check=False)


def _cases(vg):
    """case -> (script, target, None): dm_types.latency's cases."""
    return {
        "block-file": ("block-file", _image(os.path.join(STORAGE, "file.img")), None),
        "block-tap qcow2": ("block-tap", "qcow2:" + _qcow2(os.path.join(STORAGE, "tap.qcow2"), 64), None),
        "block-lvsnap classic": ("block-lvsnap", f"{vg}/orig 8M", None),
        "block-lvsnap thin": ("block-lvsnap", f"{vg}/torig", None),
    }


def _qcow2(path, mib):
    _sh("qemu-img", "create", "-q", "-f", "qcow2", path, f"{mib}M")
    return path


def _sh(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


# --- guest throughput -------------------------------------------------------

def _throughput(rounds, mib):
    try:
        result = guest_throughput(_guest_disks(rounds * mib), rounds, mib)
    except (AssertionError, SystemExit) as e:  # xl create failed, or a dd in the guest
        print(f"lvsnap_tap: the guest with a qdisk disk failed, running it without: {e}", flush=True)
        result = guest_throughput(_guest_disks(rounds * mib)[:2], rounds, mib)
        result["qdisk_error"] = str(e)[-3000:]
    result["qdisk_log"] = _qemu_logs()
    result["tap_log"] = _tap_log_lines()
    result["summary"] = _summary(result["mb_per_s"])
    return result


def _guest_disks(size):
    """The guest's disks, of size MiB each (every round has a region of its
    own), made afresh: the first write is the first."""
    raw = _image(os.path.join(STORAGE, "guest.img"), size << 20)
    return [(FILE, disk(raw, vdev="xvda")),
            (TAP, disk("qcow2:" + _qcow2(os.path.join(STORAGE, "guest-tap.qcow2"), size), vdev="xvdb",
                       script="block-tap")),
            # xl's own qcow2 disk: no script, QEMU in dom0 serves it.
            (QDISK, "format=qcow2,vdev=xvdc,access=w,backendtype=qdisk,target="
             + _qcow2(os.path.join(STORAGE, "guest-qdisk.qcow2"), size))]


def _qemu_logs():
    """What the device models libxl started said (their logs' last lines)."""
    logs = {}
    for path in sorted(glob.glob("/var/log/xen/qemu-dm-*.log")):
        with open(path, errors="replace") as f:
            logs[os.path.basename(path)] = f.read()[-2000:]
    return logs


def _tap_log_lines():
    """xenblock's log lines for the guest's block-tap disk (they say direct or buffered I/O)."""
    with open("/var/log/xen/xen-hotplug.log", errors="replace") as f:
        return [line.strip() for line in f if "guest-tap.qcow2" in line][-4:]


def _summary(samples):
    """Per operation: each disk's median MB/s, block-tap's ratio to the others'."""
    summary = {}
    for operation, by in samples.items():
        medians = {name: statistics.median(rates) for name, rates in by.items()}
        row = {f"{name}_median_mb_s": median for name, median in medians.items()}
        for other, key in ((FILE, "tap_to_file"), (QDISK, "tap_to_qdisk")):
            if other in medians:
                row[key] = round(medians[TAP] / medians[other], 2)
        summary[operation] = row
    return summary


if __name__ == "__main__":
    main()
