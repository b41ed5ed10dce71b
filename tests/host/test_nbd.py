"""xenblock.nbd and xenblock.qemunbd on the host: the NBD handshake against
a real qemu-nbd, the netlink messages against the kernel's documented
layout (linux/netlink.h, genetlink.h, nbd-netlink.h) and the kernel's own
generic netlink controller, and the undo of a qemu-nbd step."""
import contextlib
import errno
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from xenblock import blockdev, nbd, qemunbd
from xenblock.deadline import Deadline, start_ticks
from xenblock.errors import HotplugError


def image(tmp_path, fmt="qcow2", size="16M"):
    path = str(tmp_path / f"disk.{fmt}")
    subprocess.run(["qemu-img", "create", "-f", fmt, path, size], check=True, capture_output=True)
    return path


@contextlib.contextmanager
def serving(argv):
    """A process running argv, killed after (if it still runs)."""
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def serve(tmp_path, path, *options, fmt="qcow2"):
    """qemu-nbd on a unix socket, as block-tap starts it: (Popen, socket path)."""
    socket_path = str(tmp_path / "s.sock")
    with serving(["qemu-nbd", f"--format={fmt}", f"--socket={socket_path}", "--shared=1", *options,
                  path]) as process:
        yield process, socket_path


def connected(socket_path, process):
    for _ in range(200):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(socket_path)
            sock.settimeout(10)
            return sock
        except OSError:
            sock.close()
            assert process.poll() is None, "qemu-nbd exited"
            time.sleep(0.05)
    raise AssertionError("qemu-nbd never listened")


@pytest.mark.parametrize("read_only", [False, True])
def test_the_handshake_with_qemu_nbd_gives_size_and_flags(tmp_path, read_only):
    with serve(tmp_path, image(tmp_path, size="24M"), "--discard=unmap",
               *(["--read-only"] if read_only else [])) as (process, socket_path):
        with connected(socket_path, process) as sock:
            export = nbd.handshake(sock, "test")
            assert export.size == 24 << 20
            assert export.flags & nbd.TFLAG_HAS_FLAGS and export.flags & nbd.TFLAG_SEND_FLUSH
            assert bool(export.flags & nbd.TFLAG_READ_ONLY) == read_only
            if not read_only:
                assert export.flags & nbd.TFLAG_SEND_TRIM
            # A clean goodbye: qemu-nbd (not persistent) exits by itself.
            sock.sendall(nbd.disconnect_request())
        assert process.wait(timeout=10) == 0


def test_a_server_that_is_not_nbd_is_refused(tmp_path):
    left, right = socket.socketpair()
    right.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    left.settimeout(5)
    with left, right, pytest.raises(nbd.NbdError, match="not an NBD server"):
        nbd.handshake(left, "test")


def test_a_server_that_hangs_up_mid_handshake_is_an_error(tmp_path):
    left, right = socket.socketpair()
    right.sendall(struct.pack(">QQH", nbd.NBDMAGIC, nbd.IHAVEOPT, 3))
    right.close()
    with left, pytest.raises(nbd.NbdError, match="closed the connection"):
        nbd.handshake(left, "test")


def test_an_option_error_from_the_server_names_it():
    left, right = socket.socketpair()

    def server():
        right.sendall(struct.pack(">QQH", nbd.NBDMAGIC, nbd.IHAVEOPT, 3))
        right.recv(4)
        right.recv(16 + 6)
        said = b"no such export"
        right.sendall(struct.pack(">QIII", nbd.OPTION_REPLY_MAGIC, nbd.OPT_GO, nbd.REP_FLAG_ERROR | 6, len(said))
                      + said)

    thread = threading.Thread(target=server)
    thread.start()
    with left, right, pytest.raises(nbd.NbdError, match="refused the export.*no such export"):
        nbd.handshake(left, "test")
    thread.join()


def attributes(data):
    """[(type, nested?, payload)] read by the documented layout."""
    found, offset = [], 0
    while offset < len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        found.append((kind & 0x7FFF, bool(kind & 0x8000), data[offset + 4: offset + length]))
        offset += (length + 3) // 4 * 4
    return found


def test_the_connect_message_has_the_kernels_layout():
    data = nbd.connect_message(0x1d, 7, 42, nbd.Export(5 << 30, 0x4D), "xenblock:backend/vbd/3/51712")
    length, family, flags, sequence, port = struct.unpack_from("=IHHII", data)
    assert (length, family, sequence, port) == (len(data), 0x1d, 7, 0)
    assert flags == 1 | 4  # NLM_F_REQUEST | NLM_F_ACK: the kernel answers even a success
    assert struct.unpack_from("=BBH", data, 16) == (1, 1, 0)  # NBD_CMD_CONNECT, NBD_GENL_VERSION
    assert len(data) % 4 == 0
    found = {kind: (is_nested, payload) for kind, is_nested, payload in attributes(data[20:])}
    assert 1 not in found, "no NBD_ATTR_INDEX: the kernel picks a free device"
    assert struct.unpack("=Q", found[2][1]) == (5 << 30,)  # NBD_ATTR_SIZE_BYTES
    assert struct.unpack("=Q", found[3][1]) == (512,)  # NBD_ATTR_BLOCK_SIZE_BYTES
    assert struct.unpack("=Q", found[5][1]) == (0x4D,)  # NBD_ATTR_SERVER_FLAGS, as the server said
    assert found[10][1] == b"xenblock:backend/vbd/3/51712\0"  # NBD_ATTR_BACKEND_IDENTIFIER
    is_nested, sockets = found[7]  # NBD_ATTR_SOCKETS > NBD_SOCK_ITEM > NBD_SOCK_FD
    [(item, item_nested, fds)] = attributes(sockets)
    assert is_nested and item_nested and item == 1
    assert attributes(fds) == [(1, False, struct.pack("=I", 42))]


def test_the_disconnect_message_names_the_index():
    data = nbd.disconnect_message(0x1d, 9, 5)
    assert struct.unpack_from("=BB", data, 16) == (2, 1)  # NBD_CMD_DISCONNECT
    assert attributes(data[20:]) == [(1, False, struct.pack("=I", 5))]


def test_replies_are_read_acks_errors_and_attributes():
    answer = nbd.message(0x1d, 0, 3, 1, nbd.attribute(nbd.NBD_ATTR_INDEX, struct.pack("=I", 4)))
    ack = struct.pack("=IHHII", 36, nbd.NLMSG_ERROR, 0, 3, 0) + struct.pack("=i", 0) + bytes(16)
    assert nbd.parse_replies(answer + ack, 3) == [{nbd.NBD_ATTR_INDEX: struct.pack("=I", 4)}, None]
    assert nbd.parse_replies(answer, 2) == [], "another request's answer is not ours"
    refused = struct.pack("=IHHII", 36, nbd.NLMSG_ERROR, 0, 3, 0) + struct.pack("=i", -16) + bytes(16)
    with pytest.raises(OSError) as failed:
        nbd.parse_replies(refused, 3)
    assert failed.value.errno == 16


def test_the_kernels_generic_netlink_controller_answers_our_requests():
    # The real kernel reads our CTRL_CMD_GETFAMILY: the controller's own
    # family has the fixed id 0x10; without the nbd module, nbd has none.
    link = object.__new__(nbd.Netlink)  # without resolving nbd's family, which the host lacks
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nbd.NETLINK_GENERIC)
    sock.settimeout(5)
    link.sock, link.sequence = sock, 0
    with sock:
        assert link.family_id("nlctrl") == nbd.GENL_ID_CTRL
        if not os.path.exists("/sys/module/nbd"):
            with pytest.raises(OSError):
                link.family_id("nbd")
            with pytest.raises(nbd.NbdError, match="nbd module is not loaded"):
                nbd.Netlink(Deadline.after(5))


def step_for(tmp_path, socket_path, **more):
    return {"undo": "qemu_nbd", "socket": socket_path, "log": str(tmp_path / "s.log"), "image": "img", **more}


def test_undo_finds_a_qemu_nbd_whose_pid_was_never_saved_and_makes_it_exit(tmp_path):
    # An add killed between starting qemu-nbd and saving its pid: the
    # socket path in its command line names it; it gets SIGTERM and exits.
    with serve(tmp_path, image(tmp_path)) as (process, socket_path):
        connected(socket_path, process).close()
        (tmp_path / "s.log").write_text("")
        qemunbd.undo(step_for(tmp_path, socket_path), Deadline.after(10))
        assert process.wait(timeout=5) == 0, "a clean exit, not a kill"
        assert not os.path.exists(socket_path) and not (tmp_path / "s.log").exists()


def test_undo_never_signals_a_pid_that_names_another_process_now(tmp_path):
    with serving(["sleep", "60"]) as other:
        step = step_for(tmp_path, str(tmp_path / "gone.sock"), pid=other.pid,
                        start_time=start_ticks(other.pid) - 1)
        qemunbd.undo(step, Deadline.after(5))
        assert other.poll() is None


def test_undo_of_a_served_qemu_nbd_waits_for_it_to_exit_by_itself(tmp_path):
    # Its client (the kernel's connection, here ours) says goodbye; undo
    # then only waits: no signal reaches it.
    with serve(tmp_path, image(tmp_path)) as (process, socket_path):
        sock = connected(socket_path, process)
        nbd.handshake(sock, "test")
        step = step_for(tmp_path, socket_path, pid=process.pid, start_time=start_ticks(process.pid), served=True)

        def goodbye():
            time.sleep(0.5)
            sock.sendall(nbd.disconnect_request())
            sock.close()

        threading.Thread(target=goodbye).start()
        started = time.monotonic()
        qemunbd.undo(step, Deadline.after(10))
        assert process.wait(timeout=5) == 0
        assert time.monotonic() - started >= 0.4, "it was waited for, not told to go"


def test_a_qemu_nbd_that_will_not_exit_keeps_the_record(tmp_path):
    with serve(tmp_path, image(tmp_path)) as (process, socket_path):
        connected(socket_path, process).close()
        os.kill(process.pid, signal.SIGSTOP)  # SIGTERM stays pending: it does not exit
        step = step_for(tmp_path, socket_path, pid=process.pid, start_time=start_ticks(process.pid))
        with pytest.raises(HotplugError, match=f"qemu-nbd \\(pid {process.pid}\\) serving img has not exited"):
            qemunbd.undo(step, Deadline.after(0.5))
        assert process.poll() is None and os.path.exists(socket_path)


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ENODEV, errno.ESRCH])
def test_an_attribute_going_with_a_disconnect_reads_as_none_and_no_device_is_ours(monkeypatch, code):
    # ENODEV is what a read gets while another run's disconnect removes the
    # pid attribute (seen in the VM: two nbd disks of one guest removed at once).
    def vanishing(path, *args, **kwargs):
        raise OSError(code, os.strerror(code), path)
    monkeypatch.setattr(blockdev, "open", vanishing, raising=False)
    monkeypatch.setattr(nbd, "listdir", lambda path: ["nbd0", "nbd1"])
    assert nbd.sysfs(0, "pid") is None
    assert nbd.ours() == []
