"""The .deb as an administrator uses it: installed with dpkg -i into dom0
(Debian's python3 and its python3-pyudev, no venv, no pip), a guest given
a disk of every type through the package's scripts, then the package
removed and purged with the guests' data intact.

tools/test builds the package (make deb) into dist/ before the VM tier.
dom0's /usr is the host's, read only, and the rest of the tier uses the
venv's scripts: so this test runs in a mount namespace of its own, with
overlays on a tmpfs over /usr, /etc and the package databases under
/var/lib; what dpkg writes there is gone with the namespace. udevd runs
outside it and keeps the rule dom0-setup copied into /etc/udev/rules.d,
the same file the package puts in /usr/lib/udev/rules.d.
"""
import ctypes
import glob
import os
import struct
import subprocess
import time

import pytest

from tests.support.fixtures import digest
from tests.support.packages import REPO
from tests.xen.xl import disk, run_guest

CLONE_NEWNS = 0x00020000
OVERLAID = ("/usr", "/etc", "/var/lib/dpkg", "/var/lib/systemd")
SCRIPTS = "/etc/xen/scripts"
# The README's command that makes libxl run xenblock's block-tap instead of Xen's.
USE_OUR_BLOCK_TAP = ("dpkg-divert --local --rename --add /etc/xen/scripts/block-tap && "
                     "ln -s /usr/libexec/xenblock/block-tap /etc/xen/scripts/block-tap")
QUIET = ["-q", "--config", "backup { backup = 0 archive = 0 }"]


def sh(*argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw).stdout


@pytest.fixture
def namespace(tmp_path):
    """This process in a mount namespace of its own, with tmpfs-backed
    overlays over OVERLAID; back in dom0's own namespace after."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    # pyxs's client thread shares this thread's fs: unshare gives the
    # calling thread alone the new namespace, and the processes it starts.
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    try:
        sh("mount", "--make-rprivate", "/")
        scratch = tmp_path / "overlays"
        scratch.mkdir()
        sh("mount", "-t", "tmpfs", "overlays", str(scratch))
        for number, directory in enumerate(OVERLAID):
            os.makedirs(directory, exist_ok=True)
            upper, work = scratch / f"{number}-upper", scratch / f"{number}-work"
            upper.mkdir(), work.mkdir()
            sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={directory},upperdir={upper},workdir={work}",
               directory)
        yield
    finally:
        if libc.setns(home, CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "setns back to dom0's mount namespace")
        os.close(home)


def the_package():
    found = glob.glob(os.path.join(REPO, "dist", "xenblock_*_all.deb"))
    assert len(found) == 1, f"tools/test builds one package into dist/ (make deb); found {found}"
    return found[0]


def install(package):
    """As on a fresh host: no xenblock script, config or rule of dom0-setup's."""
    for path in glob.glob(f"{SCRIPTS}/block-*"):
        if os.path.islink(path) and os.readlink(path).startswith(os.environ["XENBLOCK_VENV"]):
            os.unlink(path)
    for path in ("/etc/xenblock/xenblock.conf", "/etc/udev/rules.d/59-xenblock.rules"):
        if os.path.exists(path):
            os.unlink(path)
    # No man-db or other triggers: slow under emulation, and nothing here needs them.
    sh("dpkg", "-i", "--no-triggers", package)
    sh("sh", "-c", USE_OUR_BLOCK_TAP)


def read_and_write(letters):
    """A guest snippet: print the first 16 bytes of each /dev/xvd<letter>,
    then write a line at sector 8 of each ("failed-<letter>" if it cannot)."""
    return (f"for d in {' '.join(letters)}; do head -c 16 /dev/xvd$d; echo; done; "
            f"for d in {' '.join(letters)}; do echo written-by-guest | "
            "dd of=/dev/xvd$d bs=512 seek=8 conv=notrunc,fsync 2>/dev/null || echo failed-$d; done")


def partitioned(path, marker):
    """An image with one MBR partition from sector 2048 (1 MiB), marker at its start."""
    with open(path, "wb") as f:
        f.truncate(8 << 20)
        entry = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", 2048, (7 << 20) // 512)
        f.seek(446)
        f.write(entry)
        f.seek(510)
        f.write(b"\x55\xaa")
        f.seek(1 << 20)
        f.write(marker)
    return path


def image(path, marker, size=8 << 20):
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(marker)
    return path


@pytest.fixture(scope="module")
def volume_group(tmp_path_factory):
    """A VG on a loop-backed PV with an 8M origin LV starting with its marker
    (made before the leak check's first inventory, as LVM's own files under
    /run/lvm come with it)."""
    name = f"xbdeb{os.getpid()}"
    pv = image(str(tmp_path_factory.mktemp("deb") / "pv.img"), b"", 64 << 20)
    node = sh("losetup", "--find", "--show", pv).strip()
    try:
        sh("pvcreate", *QUIET, node)
        sh("vgcreate", *QUIET, name, node)
        sh("lvcreate", *QUIET, "-y", "-L", "8M", "-n", "origin", name)
        with open(f"/dev/{name}/origin", "r+b") as f:
            f.write(b"mark-of-lvsnap..")
        yield name
    finally:
        subprocess.run(["vgremove", *QUIET, "-y", "-ff", name], capture_output=True)
        subprocess.run(["losetup", "-d", node], check=True)


def test_the_deb_serves_every_disk_type_and_goes_without_touching_guest_data(tmp_path, namespace, volume_group):
    install(the_package())
    # Installed, or waiting for man-db's trigger (dpkg ran with --no-triggers).
    status = sh("dpkg-query", "-W", "-f", "${Status}", "xenblock")
    assert status in ("install ok installed", "install ok triggers-awaited"), status
    for name in ("file", "cow", "snapshot", "part", "lvsnap"):
        with open(f"{SCRIPTS}/block-{name}") as f:
            assert f.readline().startswith("#!/usr/bin/python3"), name
    assert os.path.realpath(f"{SCRIPTS}/block-tap") == "/usr/libexec/xenblock/block-tap"
    files = {kind: image(str(tmp_path / f"{kind}.img"), f"mark-of-{kind}".ljust(16, ".").encode())
             for kind in ("file", "cow", "snapshot", "tap")}
    files["part"] = partitioned(str(tmp_path / "part.img"), b"mark-of-part....")
    qcow2 = str(tmp_path / "tap.qcow2")
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", files.pop("tap"), qcow2)
    cow_file = str(tmp_path / "snapshot.cow")
    disks = [disk(files["file"], "xvda"),
             disk(f"{files['cow']} 8M", "xvdb", script="block-cow"),
             disk(f"{files['snapshot']}:{cow_file}", "xvdc", script="block-snapshot"),
             disk(f"{files['part']} 1", "xvdd", script="block-part"),
             disk(f"qcow2:{qcow2}", "xvde", script="block-tap")]
    before = {path: digest(path) for path in (files["cow"], files["snapshot"], f"/dev/{volume_group}/origin")}
    lines, status = run_guest(tmp_path, disks, read_and_write("abcde"))
    assert status == 0 and lines[:5] == ["mark-of-file....", "mark-of-cow.....", "mark-of-snapshot",
                                         "mark-of-part....", "mark-of-tap....."], lines
    assert not [line for line in lines if line.startswith("failed-")], lines
    # block-lvsnap in a guest of its own: libxl runs a guest's hotplug scripts
    # all at once, and under emulation LVM's lvcreate beside five others
    # outlasts libxl's 40 s (issue 11 covers many disks at once).
    lines, status = run_guest(tmp_path, [disk(f"{volume_group}/origin 4M", "xvda", script="block-lvsnap")],
                              read_and_write("a"))
    assert status == 0 and lines[:1] == ["mark-of-lvsnap.."], lines
    assert not [line for line in lines if line.startswith("failed-")], lines
    # The guest's writes: kept in the image, the partition and the qcow2;
    # not in block-cow's base, block-snapshot's base or the LVM origin.
    assert {path: digest(path) for path in before} == before
    with open(files["file"], "rb") as f:
        f.seek(8 * 512)
        assert f.read(16) == b"written-by-guest"
    with open(files["part"], "rb") as f:
        f.seek((1 << 20) + 8 * 512)
        assert f.read(16) == b"written-by-guest"
    raw = str(tmp_path / "back.raw")
    sh("qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, raw)
    with open(raw, "rb") as f:
        f.seek(8 * 512)
        assert f.read(16) == b"written-by-guest"

    kept = {path: digest(path) for path in (*files.values(), qcow2, cow_file)}
    sh("sh", "-c", "rm /etc/xen/scripts/block-tap && dpkg-divert --local --rename --remove /etc/xen/scripts/block-tap")
    # The scripts under /etc/xen/scripts are conffiles, as Xen's own are
    # (xen-utils-common): dpkg -r keeps them with the config, -P removes them.
    conffiles = [*(f"{SCRIPTS}/block-{name}" for name in ("file", "cow", "snapshot", "part", "lvsnap")),
                 "/etc/xenblock/xenblock.conf"]
    sh("dpkg", "-r", "--no-triggers", "xenblock")
    assert not glob.glob("/usr/lib/python3/dist-packages/xenblock/*.py") and not os.path.exists(
        "/usr/libexec/xenblock/block-tap")
    assert [path for path in conffiles if not os.path.exists(path)] == []
    sh("dpkg", "-P", "--no-triggers", "xenblock")
    assert [path for path in conffiles if os.path.exists(path)] == []
    assert {path: digest(path) for path in kept} == kept
    assert "xenblock" not in sh("lvs", "--noheadings", "-o", "lv_name", volume_group)


# A hotplug run as /etc/xen/scripts/block-file starts one (xenblock/upgrade.py),
# stopped after its first line until told to go on; then the script itself.
HELD_RUN = """import runpy, sys
from xenblock import upgrade
sys.argv = ["/etc/xen/scripts/block-file", "remove"]
upgrade.hold_code(sys.argv)
print("held", flush=True)
sys.stdin.readline()
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def next_version(package, tmp_path):
    """package rebuilt as its next version, whose hotplug module cannot be
    imported beside the installed version's package __init__: a run that
    mixes the two fails."""
    tree = tmp_path / "next"
    sh("dpkg-deb", "-R", package, str(tree))
    control = tree / "DEBIAN" / "control"
    version = sh("dpkg-deb", "-f", package, "Version").strip() + "+next1"
    control.write_text("".join(f"Version: {version}\n" if line.startswith("Version:") else line
                               for line in control.read_text().splitlines(keepends=True)))
    library = tree / "usr" / "lib" / "python3" / "dist-packages" / "xenblock"
    with open(library / "__init__.py", "a") as f:
        f.write("\nNEXT_VERSION = True\n")
    hotplug = library / "hotplug.py"
    hotplug.write_text("from . import NEXT_VERSION  # noqa: F401\n" + hotplug.read_text())
    path = str(tmp_path / f"xenblock_{version}_all.deb")
    sh("dpkg-deb", "-Znone", "-b", str(tree), path)  # no xz under emulation
    return path, version


def test_an_upgrade_waits_for_a_running_hotplug_run_which_keeps_the_old_code(tmp_path, namespace):
    install(the_package())
    upgraded, version = next_version(the_package(), tmp_path)
    run = subprocess.Popen(["python3", "-c", HELD_RUN], text=True, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           cwd=tmp_path, env={"PATH": os.environ["PATH"], "XENBUS_PATH": "backend/vbd/0/60000"})
    dpkg = None
    try:
        assert run.stdout.readline() == "held\n"
        dpkg = subprocess.Popen(["dpkg", "-i", "--no-triggers", upgraded], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(300):
            if os.path.exists("/run/xenblock/upgrading") or dpkg.poll() is not None:
                break
            time.sleep(0.1)
        time.sleep(2)
        assert dpkg.poll() is None, "dpkg replaced the code of a hotplug run going on"
        out, err = run.communicate("go\n", timeout=60)
        assert run.returncode == 0, err  # old code throughout: the new hotplug would not import
        assert dpkg.wait(timeout=120) == 0, dpkg.stdout.read()
    finally:
        run.kill()
        if dpkg:
            dpkg.kill()
    assert sh("dpkg-query", "-W", "-f", "${Version}", "xenblock") == version
    assert not os.path.exists("/run/xenblock/upgrading"), "the old postrm ends the upgrade"
    # The new code serves a guest.
    path = image(str(tmp_path / "after.img"), b"mark-of-upgrade.")
    lines, status = run_guest(tmp_path, [disk(path)], "head -c 16 /dev/xvda; echo")
    assert status == 0 and lines[:1] == ["mark-of-upgrade."], lines
