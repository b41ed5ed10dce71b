"""block-file on storage that is not a local 512-byte disk: an image on NFS,
an image on a file system whose device has 4096-byte sectors.

Each test builds its storage in a function-scoped fixture. The tier's
autouse leak check (conftest.py) is set up before any fixture a test asks
for and torn down after them, so its inventories are taken before the
storage exists and after it is gone: the NFS server's daemons, mounts and
files count as leaks unless the fixture removes every one of them.
"""
import contextlib
import errno
import fcntl
import os
import platform
import struct
import subprocess
import time

import pytest

from xenblock import loop
from xenblock.deadline import Deadline
from tests.support.fixtures import image_files, read_at
from tests.xen.xl import (assert_second_writer_refused, config, disk, domid, guest_result, run_guest,
                          wait_gone, xl)

MARK = b"xenblock-storage-marker"
SHARED_MARK = b"xenblock-shared-read-only"
WRITTEN = b"written-by-guest"
XVDA = 51712  # xenstore's device id of xvda (202 << 8)
# Files the daemons and mount(8) of the fixtures make under /run: removed
# after if they were not there before (the leak check would see them).
NFS_RUN_FILES = ("/run/rpcbind.sock", "/run/rpcbind.lock", "/run/rpcbind/portmap.xdr",
                 "/run/rpcbind/rpcbind.xdr")
MOUNT_RUN_FILES = ("/run/mount/utab", "/run/mount/utab.lock")


# ---------------------------------------------------------------- image on NFS

@pytest.fixture
def nfs(tmp_path):
    """An NFS v4.2 mount of a tmpfs exported by dom0 to itself over loopback:
    (mount point, export directory, make_image). Everything started, mounted
    or written is undone after, in reverse order."""
    pid = os.getpid()
    export = f"/run/xbtest-nfs-export-{pid}"
    mountpoint = f"/run/xbtest-nfs-{pid}"
    with contextlib.ExitStack() as undo:
        undo.enter_context(_removing_new_files(NFS_RUN_FILES + MOUNT_RUN_FILES))
        _run("modprobe", "nfsd")
        _mount_once("nfsd", "nfsd", "/proc/fs/nfsd", undo)
        if not os.path.isdir("/var/lib/nfs/rpc_pipefs"):
            os.makedirs("/var/lib/nfs/rpc_pipefs")
            undo.callback(os.rmdir, "/var/lib/nfs/rpc_pipefs")
        _mount_once("rpc_pipefs", "sunrpc", "/var/lib/nfs/rpc_pipefs", undo)
        if not _running("rpcbind"):
            # In the foreground: ours to stop by its pid, and no other rpcbind.
            rpcbind = _daemon(["rpcbind", "-f", "-w"], tmp_path / "rpcbind.log", undo)
            _wait_until(lambda: "/run/rpcbind.sock" in _listening_unix_sockets(),
                        f"rpcbind listening on /run/rpcbind.sock (log: {tmp_path / 'rpcbind.log'})",
                        rpcbind)
        # An overlay cannot be exported: a tmpfs of its own.
        _mount_new(undo, export, "-t", "tmpfs", "-o", "size=64m", "xbtest-nfs")
        # One export on the command line, leaving /etc/exports alone.
        client_export = f"127.0.0.1:{export}"
        _run("exportfs", "-o", "rw,no_root_squash,sync,no_subtree_check,fsid=0", client_export)
        undo.callback(_run, "exportfs", "-u", client_export)
        if not _running("rpc.mountd"):
            mountd = _daemon(["rpc.mountd", "-F"], tmp_path / "mountd.log", undo)
            # mountd answers nfsd's export upcalls through this channel.
            _wait_until(lambda: _has_open(mountd.pid, "nfsd.export/channel"),
                        f"rpc.mountd serving export upcalls (log: {tmp_path / 'mountd.log'})", mountd)
        if _nfsd_threads() == 0:
            _run("rpc.nfsd", "4")
            undo.callback(_run, "rpc.nfsd", "0")
        _mount_new(undo, mountpoint, "-t", "nfs", "-o", "vers=4.2,proto=tcp", "127.0.0.1:/")
        yield mountpoint, export, undo.enter_context(image_files(mountpoint))


def test_image_on_nfs_is_served_read_write_and_read_only_and_refused_to_a_second_writer(nfs, tmp_path):
    mountpoint, export, make_image = nfs
    path = make_image("guest.img", MARK)
    shared = make_image("shared.img", SHARED_MARK)
    # What made this storage kind fail before: NFS emulates flock with POSIX
    # locks, and an exclusive lock of a read-only descriptor is EBADF.
    # Xenblock keeps its locks in files under /run/xenblock instead.
    fd = os.open(shared, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as refused:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert refused.value.errno == errno.EBADF
    finally:
        os.close(fd)

    assert_second_writer_refused(tmp_path, path)

    # One guest: the image read-write as xvda, another read-only as xvdb.
    snippet = (f"head -c {len(MARK)} /dev/xvda; echo; head -c {len(SHARED_MARK)} /dev/xvdb; echo; "
               "cat /sys/block/xvdb/ro; "
               f"echo {WRITTEN.decode()} | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
               "echo write-status $?; "
               "echo x | dd of=/dev/xvdb bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
               "echo read-only-write-status $?")
    before = read_at(shared)
    lines, status = run_guest(tmp_path, [disk(path), disk(shared, vdev="xvdb", access="r")], snippet)
    assert lines[:3] == [MARK.decode(), SHARED_MARK.decode(), "1"], lines
    assert "write-status 0" in lines, lines
    assert "read-only-write-status 0" not in lines, lines
    # The write reached the file on the server (the exported tmpfs), not
    # only the client's cache.
    server_copy = os.path.join(export, "guest.img")
    assert read_at(server_copy, 2048 * 512, len(WRITTEN)) == WRITTEN
    assert read_at(path, 2048 * 512, len(WRITTEN)) == WRITTEN
    assert read_at(shared) == before


# --------------------------------------------- image on a 4096-byte-sector disk

@pytest.fixture
def fourk(tmp_path):
    """(mount point, make_image): an ext4 on a loop device with 4096-byte
    logical sectors (set up with losetup, as any 4Kn disk would be)."""
    backing = tmp_path / "4kn-disk.raw"
    mountpoint = f"/run/xbtest-4k-{os.getpid()}"
    with contextlib.ExitStack() as undo:
        undo.enter_context(_removing_new_files(MOUNT_RUN_FILES))
        with open(backing, "wb") as f:
            f.truncate(64 << 20)
        undo.callback(os.unlink, backing)
        node = _run("losetup", "--find", "--show", "--sector-size", "4096", str(backing)).strip()
        undo.callback(_run, "losetup", "-d", node)
        undo.callback(_run, "udevadm", "settle", "--timeout=60")  # udev's probes keep it open
        assert _read_text(f"/sys/block/{os.path.basename(node)}/queue/logical_block_size") == "4096"
        _run("mkfs.ext4", "-q", "-F", node)
        _mount_new(undo, mountpoint, node)
        yield mountpoint, undo.enter_context(image_files(mountpoint))


def test_image_on_a_4k_sector_disk_reaches_the_guest_with_512_byte_sectors(fourk, tmp_path, driver):
    mountpoint, make_image = fourk

    # Without a guest: the kernel behaviour LOGICAL_BLOCK_SIZE guards
    # against. With block_size 0 in LOOP_CONFIGURE the loop driver copies the
    # backing file system's device's logical block size when it does direct
    # I/O (Linux 6.1: when the backing descriptor is O_DIRECT; newer kernels,
    # e.g. 6.18, also for LO_FLAGS_DIRECT_IO alone), so a guest would see
    # 4096-byte sectors; with xenblock's explicit 512 it does not.
    probe = make_image("probe.img", size=1 << 20)
    odirect = os.open(probe, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
    plain = os.open(probe, os.O_RDWR | os.O_CLOEXEC)  # as xenblock opens an image
    try:
        assert _bind(odirect, 0) == ("4096", "1"), "the kernel kept 512 without being asked for it"
        assert _bind(odirect, loop.LOGICAL_BLOCK_SIZE) == ("512", "0")
        assert _bind(plain, loop.LOGICAL_BLOCK_SIZE) == ("512", "0")
        if platform.release().startswith("6.1."):
            # Debian 12's kernel decides by the descriptor's O_DIRECT only,
            # and xenblock's descriptor has none: on this kernel a block
            # size of 0 would still give 512, and the guest check below
            # could not tell. It can on kernels that look at LO_FLAGS_DIRECT_IO.
            assert _bind(plain, 0) == ("512", "0")
    finally:
        os.close(odirect)
        os.close(plain)

    # A guest whose image carries an MBR partition table for 512-byte
    # sectors: partition 1 from sector 2048, 8192 sectors, starting with MARK.
    # On a disk with 4096-byte sectors the kernel would read those numbers as
    # 4096-byte sectors: the partition would start at 8 MiB, past the end.
    path = make_image("guest.img", _mbr(2048, 8192), size=8 << 20)
    with open(path, "r+b") as f:
        f.seek(2048 * 512)
        f.write(MARK)
    snippet = ("i=0; while [ ! -e /dev/xvda1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; "
               "cat /sys/block/xvda/queue/logical_block_size /sys/block/xvda/xvda1/start "
               f"/sys/block/xvda/xvda1/size; head -c {len(MARK)} /dev/xvda1; echo; "
               f"echo {WRITTEN.decode()} | dd of=/dev/xvda1 bs=512 seek=8 conv=notrunc,fsync 2>/dev/null; "
               "echo write-status $?")
    log_start = driver.log_offset()
    seen = {}

    def while_paused(guest):
        # xenblock's loop device, as blkback was told to serve it.
        bound = loop.backed_by(os.stat(path))
        assert len(bound) == 1, bound
        node, devnum, status = bound[0]
        assert status.mark.startswith("xenblock:"), status
        backend = f"/local/domain/0/backend/vbd/{guest}/{XVDA}"
        assert driver.read(f"{backend}/physical-device") == devnum.xen_hex()
        seen["logical_block_size"] = _read_text(devnum.sysfs("queue", "logical_block_size"))
        seen["dio"] = _read_text(devnum.sysfs("loop", "dio"))

    lines, status = _run_guest_inspected(tmp_path, [disk(path)], snippet, while_paused, driver)
    assert seen["logical_block_size"] == "512", seen
    # xenblock asked for direct I/O (an O_DIRECT read of the image works on
    # ext4) and the kernel refused it: Linux 6.1's __loop_update_dio() uses
    # direct I/O only if the loop device's logical block size is at least
    # that of the backing file system's device (512 < 4096 here), because
    # every guest request would otherwise be a misaligned O_DIRECT access.
    assert seen["dio"] == "0", seen
    added = [line for line in driver.log_since(log_start) if path in line and " -> /dev/loop" in line]
    assert added and all("buffered I/O" in line for line in added), added

    assert status == 0, lines
    assert lines[:4] == ["512", "2048", "8192", MARK.decode()], lines
    assert "write-status 0" in lines, lines
    assert read_at(path, (2048 + 8) * 512, len(WRITTEN)) == WRITTEN


def _bind(fd, logical_block_size):
    """Bind fd with direct I/O asked and the given LOOP_CONFIGURE block size
    (xenblock.loop.LOGICAL_BLOCK_SIZE forced to it); the device's
    (logical_block_size, loop/dio) as the kernel set them. Unbound after."""
    mark = "xbtest-4k-probe"
    saved = loop.LOGICAL_BLOCK_SIZE
    loop.LOGICAL_BLOCK_SIZE = logical_block_size
    try:
        bound = loop.attach(fd, False, True, mark, lambda number: None, lambda number: None,
                            Deadline.after(30))
    finally:
        loop.LOGICAL_BLOCK_SIZE = saved
    try:
        return (_read_text(bound.devnum.sysfs("queue", "logical_block_size")),
                _read_text(bound.devnum.sysfs("loop", "dio")))
    finally:
        deadline = Deadline.after(60)
        devnum = loop.detach(bound.node, bound.diskseq, mark, deadline)
        assert devnum is not None and loop.wait_unbound(devnum, bound.diskseq, deadline), bound


def _run_guest_inspected(tmp_path, disks, snippet, while_paused, driver, timeout=300):
    """Like xl.run_guest, but created paused with its console attached:
    while_paused(domid) runs once its disks are connected, then the guest
    runs. Returns the guest's XBGUEST lines and exit status."""
    name, path = config(tmp_path, disks, snippet)
    creating = subprocess.Popen(["xl", "create", "-p", "-c", path], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        number = _wait_until(lambda: domid(name, must_exist=False), f"domain {name}", creating)
        status_node = f"/local/domain/0/backend/vbd/{number}/{XVDA}/hotplug-status"
        _wait_until(lambda: driver.read(status_node) == "connected",
                    f"{name}'s xvda connected by its hotplug script", creating)
        while_paused(number)
        # xl attaches the console in a child (xenconsole): let it connect
        # before the guest prints anything.
        _wait_until(lambda: _child_running(creating.pid, "xenconsole"), "xl's console client", creating)
        assert xl("unpause", name).returncode == 0
        output, _ = creating.communicate(timeout=timeout)
    finally:
        if creating.poll() is None:
            xl("destroy", name)
            creating.kill()
            creating.communicate()
        wait_gone(name)
    assert creating.returncode == 0, f"xl create failed:\n{output}"
    return guest_result(output)


def _mbr(start, sectors):
    """A DOS partition table with one Linux partition, in 512-byte sectors."""
    entry = struct.pack("<B3sB3sII", 0, bytes(3), 0x83, bytes(3), start, sectors)
    return bytes(446) + entry + bytes(48) + b"\x55\xaa"


# ------------------------------------------------------------------- helpers

def _run(*argv):
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}"
    return result.stdout


def _read_text(path):
    with open(path) as f:
        return f.read().strip()


def _mount_once(fstype, source, target, undo):
    """Mount unless something already is there; unmounted after only if we mounted it."""
    with open("/proc/mounts") as f:
        if any(line.split()[1] == target for line in f):
            return
    _run("mount", "-t", fstype, source, target)
    undo.callback(_run, "umount", target)


def _mount_new(undo, target, *argv):
    """Make the directory target and mount there (mount argv... target); both undone after."""
    os.mkdir(target)
    undo.callback(os.rmdir, target)
    _run("mount", *argv, target)
    undo.callback(_run, "umount", target)


def _daemon(argv, log_path, undo):
    """A daemon run in the foreground as our child, stopped (by its pid) after."""
    log = open(log_path, "w")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()

    def stop():
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    undo.callback(stop)
    return process


@contextlib.contextmanager
def _removing_new_files(paths):
    """Remove those of paths that were not there before and are after
    (libmount's utab only if no mount is left in it)."""
    existing = {path for path in paths if os.path.lexists(path)}
    try:
        yield
    finally:
        for path in paths:
            if path in existing or not os.path.lexists(path):
                continue
            if path.endswith("/utab") and os.path.getsize(path) > 0:
                continue
            os.unlink(path)


def _running(comm):
    return any(name == comm[:15] for name, _, _ in _processes())


def _listening_unix_sockets():
    with open("/proc/net/unix") as f:
        return {line.split()[-1] for line in f.readlines()[1:] if len(line.split()) > 7}


def _has_open(pid, suffix):
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").endswith(suffix):
                return True
        except OSError:
            pass
    return False


def _nfsd_threads():
    try:
        return int(_read_text("/proc/fs/nfsd/threads"))
    except (OSError, ValueError):
        return 0


def _child_running(parent, word):
    return any(ppid == parent and word.encode() in cmdline for _, ppid, cmdline in _processes())


def _processes():
    """(comm, parent pid, command line) of each process still there."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            comm, rest = stat.split(" (", 1)[1].rsplit(") ", 1)
            ppid = int(rest.split()[1])
        except (OSError, ValueError, IndexError):
            continue
        yield comm, ppid, cmdline


def _wait_until(probe, what, process=None, timeout=90):
    """probe()'s first true value; fails if process (one of ours) exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if process is not None and process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"waiting for {what}: {process.args[0]} exited {process.returncode}\n{output}")
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)
