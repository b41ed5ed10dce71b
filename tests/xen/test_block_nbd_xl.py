"""block-nbd as xl uses it, against real NBD servers in dom0 over loopback:
Debian's nbd-server (named exports, one read-only) and qemu-nbd (a default
export, for Xen's old "<host> <port>" form). The leak check wraps each test:
no nbd connection, record or lock may remain after destroy."""
import contextlib
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

from tests.support import nbd_server
from tests.support.cases import installed_settings, physical
from tests.support.fixtures import read_at, wait_until
from tests.xen.xl import (config, create_fails, create_on_console, disk, domid, guest_result, paused_guest, run_guest,
                          xl)
from xenblock.blockdev import read_attribute

MARK = b"xenblock-nbd-export"
READ_ONLY_MARK = b"xenblock-nbd-read-only-export"
OLD_FORM_MARK = b"xenblock-nbd-default-export"
WRITTEN = b"written-by-guest"
STARTED = b"guest-started-its-io"
XVDA, XVDB = 51712, 51728  # the guests' device numbers of xvda and xvdb


@contextlib.contextmanager
def qemu_nbd_default_export(path):
    """qemu-nbd serving path read-only as its default ("") export; its port."""
    port = nbd_server.free_port()
    server = subprocess.Popen(["qemu-nbd", "--persistent", "--read-only", "--format=raw", "--bind=127.0.0.1",
                               f"--port={port}", path])
    try:
        assert nbd_server.wait_listening(port), "qemu-nbd did not start listening"
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_guest_reads_and_writes_exports_named_in_every_target_form(exports, tmp_path):
    # xvda: script=block-nbd with target=<host>:<port>/<export>, read-write.
    # xvdb: the nbd: prefix, which xl maps to block-nbd, with the comma-free
    #   form, read-only: the guest's write is refused by its kernel.
    # xvdc: Xen's old nbd:<host> <port>, a server's default export.
    disk_image, read_only_image = exports("disk.img", MARK), exports("ro.img", READ_ONLY_MARK)
    old_form_image = exports("old.img", OLD_FORM_MARK)
    served = {"disk": (disk_image, False), "ro": (read_only_image, True)}
    with nbd_server.serving(str(tmp_path / "nbd-server"), served) as port, \
            qemu_nbd_default_export(old_form_image) as old_port:
        snippet = (f"head -c {len(MARK)} /dev/xvda; echo; head -c {len(READ_ONLY_MARK)} /dev/xvdb; echo; "
                   f"head -c {len(OLD_FORM_MARK)} /dev/xvdc; echo; "
                   f"echo {WRITTEN.decode()} | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
                   "echo write-status $?; cat /sys/block/xvdb/ro /sys/block/xvdc/ro")
        lines, status = run_guest(tmp_path, [disk(f"127.0.0.1:{port}/disk", script="block-nbd"),
                                             f"nbd:127.0.0.1:{port}/ro,xvdb,r",
                                             f"nbd:127.0.0.1 {old_port},xvdc,r"], snippet)
    assert status == 0, lines
    assert lines == [MARK.decode(), READ_ONLY_MARK.decode(), OLD_FORM_MARK.decode(), "write-status 0", "1", "1"]
    assert read_at(disk_image, 2048 * 512, len(WRITTEN)) == WRITTEN
    assert read_at(read_only_image, 2048 * 512, len(WRITTEN)) == bytes(len(WRITTEN))


def test_an_export_a_guest_writes_is_refused_to_a_second_guest(exports, tmp_path):
    path = exports("shared.img", MARK)
    with nbd_server.serving(str(tmp_path / "nbd-server"), {"disk": (path, False)}) as port:
        target = f"127.0.0.1:{port}/disk"
        with paused_guest(tmp_path, [disk(target, script="block-nbd")]):
            output = create_fails(tmp_path, [disk(target, script="block-nbd")])
            assert f"nbd://127.0.0.1:{port}/disk: already in use read-write by domain" in output, output


def test_a_server_that_stops_answering_does_not_keep_the_destroyed_guests_disk(exports, tmp_path):
    # The server is stopped (SIGSTOP: it neither answers nor closes the
    # connection) while the guest has its disk; destroy runs remove, whose
    # disconnect must not wait for the server: the leak check then finds
    # no nbd connection left.
    path = exports("stalled.img", MARK)
    with nbd_server.serving(str(tmp_path / "nbd-server"), {"disk": (path, False)}) as port:
        servers = nbd_servers()
        with stopped_at_will(servers) as stop:
            with paused_guest(tmp_path, [disk(f"127.0.0.1:{port}/disk", script="block-nbd")]):
                stop()


def test_a_guest_s_io_fails_after_io_timeout_once_its_server_stops_answering(driver, exports, tmp_path):
    # The kernel's nbd device fails the guest's read after [nbd] io_timeout
    # and drops the connection: the guest gets an I/O error instead of
    # hanging, powers off, and destroy leaves nothing. dom0 also sees the
    # setting and mode r on the nbd devices themselves (a guest's write to a
    # mode r disk is refused by the guest's own kernel, which would hide a
    # writable device).
    path, other = exports("stalling.img", MARK), exports("other.img", READ_ONLY_MARK)
    served = {"disk": (path, False), "other": (other, False)}
    with installed_settings("nbd", io_timeout=IO_TIMEOUT), \
            nbd_server.serving(str(tmp_path / "nbd-server"), served) as port, \
            stalling_guest(tmp_path, path, [disk(f"127.0.0.1:{port}/disk", script="block-nbd"),
                                            f"nbd:127.0.0.1:{port}/other,xvdb,r"]) as (name, console, stop):
        devices = {vdev: nbd_sysfs(driver, domid(name), vdev, "queue/io_timeout", "ro") for vdev in (XVDA, XVDB)}
        stop()
        lines, status = guest_result(console.result())
    assert status == 0 and lines == ["read-status 1"], lines
    assert devices == {XVDA: [str(IO_TIMEOUT * 1000), "0"], XVDB: [str(IO_TIMEOUT * 1000), "1"]}


def test_a_guest_destroyed_while_its_read_waits_on_a_stopped_server_leaves_nothing(driver, exports, tmp_path):
    # The default io_timeout (120 s) outlasts libxl's patience: the guest
    # is destroyed while its read is in flight on the nbd device. libxl
    # gives blkback 10 s to close, then removes the backend and runs remove,
    # whose disconnect must not wait for the server nor for blkback's
    # request; the leak check then finds no nbd connection left.
    path, log_start = exports("in-flight.img", MARK), driver.log_offset()
    with nbd_server.serving(str(tmp_path / "nbd-server"), {"disk": (path, False)}) as port, \
            stalling_guest(tmp_path, path, [disk(f"127.0.0.1:{port}/disk", script="block-nbd")]) as \
            (name, console, stop):
        guest = domid(name)
        stop()
        wait_until(lambda: nbd_sysfs(driver, guest, XVDA, "inflight")[0].split()[0] != "0",
                   "the guest's read is in flight", timeout=GUEST_WAITS * 6)
        destroyed = xl("destroy", name)
        assert destroyed.returncode == 0, destroyed.stderr
        console.result()
    removes = [line for line in driver.log_since(log_start) if f" remove backend/vbd/{guest}/{XVDA}: " in line]
    assert len(removes) == 1 and ": failed: " not in removes[0], removes


# The guest writes a mark (fsync: the server has it), sleeps, then reads
# with direct I/O a block it never read: by then dom0, which saw the mark
# arrive, has stopped the server.
STALLING_SNIPPET = (f"echo {STARTED.decode()} | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
                    f"sleep {{waits}}; dd if=/dev/xvda of=/dev/null bs=4096 skip=512 count=1 iflag=direct "
                    "2>/dev/null; echo read-status $?")
IO_TIMEOUT = 5
# Time enough for dom0 to see the guest's write and stop the server (dom0
# polls a tmpfs file; its scheduling under emulation is the margin).
GUEST_WAITS = 10


@contextlib.contextmanager
def stalling_guest(tmp_path, path, disks):
    """A guest running STALLING_SNIPPET on disks (xvda: the export of path),
    once its mark has reached path: (its name, the future of its console,
    a stop() for the server, which stays stopped until the end)."""
    with stopped_at_will(nbd_servers()) as stop, ThreadPoolExecutor(1) as pool:
        name, config_path = config(tmp_path, disks, STALLING_SNIPPET.format(waits=GUEST_WAITS))
        console = pool.submit(create_on_console, name, config_path)
        wait_until(lambda: read_at(path, 2048 * 512, len(STARTED)) == STARTED or console.done(),
                   "the guest's write reaches the export", timeout=150)
        assert not console.done(), console.result()
        yield name, console, stop


def nbd_servers():
    servers = [int(pid) for pid in subprocess.run(["pgrep", "-x", "nbd-server"], capture_output=True,
                                                    text=True).stdout.split()]
    assert servers
    return servers


@contextlib.contextmanager
def stopped_at_will(servers):
    """A stop() that sends SIGSTOP to servers and the children serving
    their connections (nbd-server forks one per client); SIGCONT after."""
    def stop():
        for pid in servers + nbd_server.children(servers):
            os.kill(pid, signal.SIGSTOP)
    try:
        yield stop
    finally:
        for pid in servers + nbd_server.children(servers):
            os.kill(pid, signal.SIGCONT)


def nbd_sysfs(driver, guest, vdev, *attributes):
    """The sysfs attributes of the nbd device blkback serves as the guest's vdev."""
    devnum = physical(driver, f"/local/domain/0/backend/vbd/{guest}/{vdev}")
    assert os.path.basename(os.path.realpath(devnum.sysfs())).startswith("nbd"), devnum
    return [read_attribute(devnum, attribute) for attribute in attributes]
