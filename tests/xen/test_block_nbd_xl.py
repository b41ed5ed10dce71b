"""block-nbd as xl uses it, against real NBD servers in dom0 over loopback:
Debian's nbd-server (named exports, one read-only) and qemu-nbd (a default
export, for Xen's old "<host> <port>" form). The leak check wraps each test:
no nbd connection, record or lock may remain after destroy."""
import contextlib
import os
import signal
import subprocess

from tests.support import nbd_server
from tests.support.fixtures import read_at
from tests.xen.xl import create_fails, disk, paused_guest, run_guest

MARK = b"xenblock-nbd-export"
READ_ONLY_MARK = b"xenblock-nbd-read-only-export"
OLD_FORM_MARK = b"xenblock-nbd-default-export"
WRITTEN = b"written-by-guest"


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
        servers = [int(pid) for pid in subprocess.run(["pgrep", "-x", "nbd-server"], capture_output=True,
                                                        text=True).stdout.split()]
        assert servers
        try:
            with paused_guest(tmp_path, [disk(f"127.0.0.1:{port}/disk", script="block-nbd")]):
                for pid in servers + nbd_server.children(servers):
                    os.kill(pid, signal.SIGSTOP)
        finally:
            for pid in servers + nbd_server.children(servers):
                os.kill(pid, signal.SIGCONT)
