"""What a test could leave behind in dom0, like OSSTest's ts-leak-check.

An inventory is a dict of sets; the difference of two names every new thing:
xenstore nodes, loop devices, device-mapper devices, logical volumes, nbd
connections, processes, files under /run, domains.
"""
import glob
import os
import subprocess
import time

from xenblock import dm

# Paths under /run that change by themselves, not through anything a test
# leaves: udev's database follows devices (checked directly above); virtme
# keeps the VM's writable /tmp, /etc, /var ... under /run/tmp (tests make
# files in /tmp on purpose).
# xenblock's upgrade lock is made by the first script run and kept on purpose
# (xenblock/upgrade.py: the package's preinst takes it).
RUN_EXCLUDED = ("/run/udev/", "/run/tmp/virtme_", "/run/xen/domid-history", "/run/xenblock/upgrade.lock")
# libxl creates these the first time a domain starts and keeps them, empty,
# for the next: toolstack state, not something a test leaves.
XENSTORE_KEPT = {"/libxl", "/vm"}


def take(xs_client, domains=None):
    """domains: `xl list`'s lines if just taken (wait_for_quiet gives them),
    else listed here: each xl start costs over half a second in the VM."""
    if domains is None:
        domains = _lines(["xl", "list"])
    return {
        "xenstore": _xenstore_paths(xs_client) - XENSTORE_KEPT,
        "loop devices": bound_loops(),
        "dm devices": {device.name for device in dm.list_devices()},  # no process to start
        "logical volumes": _lines(["lvs", "--noheadings", "-o", "vg_name,lv_name"]),
        "nbd connections": {p for p in glob.glob("/sys/block/nbd*/pid")},
        "processes": _processes(),
        "files under /run": _run_files(),
        "domains": {" ".join(line.split()[:2]) for line in domains},
    }


def difference(before, after):
    """Only what is new: a test may tear down what was there before."""
    return {name: sorted(after[name] - before[name]) for name in after if after[name] - before[name]}


def wait_for_quiet(timeout=60):
    """Domains being destroyed still hold devices: wait until only dom0 is left
    and udev has handled every event, before taking the after-inventory.
    Returns the last `xl list` lines (for take)."""
    deadline = time.monotonic() + timeout
    while True:
        listing = _lines(["xl", "list"])
        if len(listing) <= 2 or time.monotonic() >= deadline:  # header and Domain-0
            break
        time.sleep(0.5)
    subprocess.run(["udevadm", "settle", "--timeout=30"], check=False)
    return listing


def _xenstore_paths(client):
    found = set()
    stack = [b"/"]
    while stack:
        path = stack.pop()
        found.add(path.decode())
        try:
            children = client.list(path)
        except Exception:
            continue  # removed meanwhile
        stack += [(path.rstrip(b"/") + b"/" + child) for child in children]
    return found


def bound_loops():
    found = set()
    for backing in glob.glob("/sys/block/loop*/loop/backing_file"):
        with open(backing) as f:
            found.add(f"{backing.split('/')[3]} -> {f.read().strip()}")
    return found


def kernel_objects():
    """Loop, device-mapper (active LVs too) and nbd devices in use now, from
    sysfs alone: cheap enough to take around every script run, and the same
    on the host, which has no dmsetup or lvs to ask."""
    found = bound_loops()
    for path in glob.glob("/sys/block/dm-*/dm/name"):
        with open(path) as f:
            found.add(f"dm {f.read().strip()}")
    return found | set(glob.glob("/sys/block/nbd*/pid"))


def _lines(argv, ignore=None):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return {line.strip() for line in result.stdout.splitlines()
            if line.strip() and (ignore is None or ignore not in line)}


def _processes():
    """Long-lived processes by command line (pids of short-lived ones differ)."""
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        # Kernel threads have no command line; udev forks workers that come
        # and go by themselves.
        if cmdline and "udevd" not in cmdline and "udev-worker" not in cmdline:
            found.add(f"{entry} {cmdline}")
    return found


def _run_files():
    """Files on /run's own file system (not the 9p shares mounted below it)."""
    found = set()
    run_device = os.stat("/run").st_dev
    for directory, subdirectories, files in os.walk("/run"):
        subdirectories[:] = [d for d in subdirectories
                             if os.lstat(os.path.join(directory, d)).st_dev == run_device]
        for name in files:
            path = os.path.join(directory, name)
            if not path.startswith(RUN_EXCLUDED):
                found.add(path)
    return found
