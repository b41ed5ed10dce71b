"""nbd devices of ours: the NBD handshake, and the kernel's netlink interface.

block-tap serves qemu's image formats through qemu-nbd on a unix socket.
This module does the client's half without nbd-client or qemu-nbd -c:
  - the NBD handshake (fixed newstyle, NBD_OPT_GO) over the socket, in
    Python, which tells the export's size and transmission flags;
  - the kernel's generic netlink family "nbd": NBD_CMD_CONNECT hands the
    negotiated socket to the kernel with no index, so the kernel itself
    picks (or adds) a free device: no find-then-connect race with another
    script, nbd-client or qemu-nbd -c. Its NBD_ATTR_BACKEND_IDENTIFIER,
    shown in /sys/block/nbdN/backend, marks the device as ours (the udev
    rule and `xenblock cleanup` read it); it is there before the device's
    first uevent.
  - NBD_CMD_DISCONNECT, which sends NBD_CMD_DISC to the server and shuts the
    socket: qemu-nbd then flushes the image and exits by itself.
The wire formats are the NBD protocol's (doc/proto.md of the NBD project)
and linux/nbd-netlink.h, linux/netlink.h and linux/genetlink.h.
"""
import errno
import os
import socket
import struct
from collections import namedtuple

from .blockdev import Devnum, listdir, read_text
from .errors import HotplugError

# --- the NBD handshake (all numbers big-endian) ---
NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
FLAG_FIXED_NEWSTYLE = 1 << 0  # handshake flags, and the client's flags
FLAG_NO_ZEROES = 1 << 1
OPT_ABORT = 2
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
REP_FLAG_ERROR = 1 << 31
INFO_EXPORT = 0
# NBD_REP_ERR_* (without the error flag), as a person would say them.
REP_ERR_UNKNOWN = 6
REFUSALS = {1: "the server is too old for NBD_OPT_GO", 2: "not allowed by the server's policy",
            3: "an invalid request", 5: "the server requires TLS", REP_ERR_UNKNOWN: "no such export",
            7: "the server is shutting down"}
# Transmission flags (the server's, handed to the kernel as they are).
TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_SEND_TRIM = 1 << 5
CMD_DISC = 2
# Options answer in a few bytes; anything far larger is not an NBD server.
MAX_REPLY = 64 << 10

# --- generic netlink (native byte order) ---
NETLINK_GENERIC = 16
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLA_F_NESTED = 1 << 15
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NBD_FAMILY = "nbd"
NBD_GENL_VERSION = 1
NBD_CMD_CONNECT = 1
NBD_CMD_DISCONNECT = 2
NBD_ATTR_INDEX = 1
NBD_ATTR_SIZE_BYTES = 2
NBD_ATTR_BLOCK_SIZE_BYTES = 3
NBD_ATTR_TIMEOUT = 4
NBD_ATTR_SERVER_FLAGS = 5
NBD_ATTR_SOCKETS = 7
NBD_ATTR_BACKEND_IDENTIFIER = 10
NBD_SOCK_ITEM = 1
NBD_SOCK_FD = 1
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
GENLMSGHDR = struct.Struct("=BBH")  # command, version, reserved
NLATTR = struct.Struct("=HH")  # length, type

# A guest's partition table assumes 512-byte sectors (as loop.LOGICAL_BLOCK_SIZE).
BLOCK_SIZE = 512
NBD_MAJOR = 43

Export = namedtuple("Export", "size flags")


class NbdError(HotplugError):
    pass


class Refused(NbdError):
    """The server refused the export; code is its NBD_REP_ERR_* value."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


# --- the handshake ---

def handshake(sock, what, name=""):
    """Negotiate the export called name ("": the server's default) on a
    connected stream socket; returns its Export. what names the server in
    errors."""
    try:
        return _negotiate(sock, what, name.encode())
    except socket.timeout:
        raise NbdError(f"{what}: the NBD server did not answer in time") from None
    except (BrokenPipeError, ConnectionResetError):
        raise NbdError(f"{what}: the NBD server closed the connection during the handshake") from None


def _negotiate(sock, what, name):
    magic, option_magic, flags = struct.unpack(">QQH", _receive(sock, 18, what))
    if magic != NBDMAGIC or option_magic != IHAVEOPT:
        raise NbdError(f"{what}: not an NBD server speaking the newstyle protocol")
    if not flags & FLAG_FIXED_NEWSTYLE:
        raise NbdError(f"{what}: the NBD server does not speak fixed newstyle")
    # NO_ZEROES only matters for NBD_OPT_EXPORT_NAME, which is not used.
    sock.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)))
    _send_option(sock, OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    export = None
    while True:
        kind, data = _option_reply(sock, OPT_GO, what)
        if kind == REP_ACK:
            break
        if kind & REP_FLAG_ERROR:
            said = data.decode(errors="replace").strip()
            code = kind & ~REP_FLAG_ERROR
            reason = REFUSALS.get(code, f"error {code}")
            raise Refused(f"{what}: the NBD server refused the export: {reason}{': ' if said else ''}{said}", code)
        if kind == REP_INFO and len(data) >= 12 and struct.unpack(">H", data[:2])[0] == INFO_EXPORT:
            export = Export(*struct.unpack(">QH", data[2:12]))
    if export is None:
        raise NbdError(f"{what}: the NBD server did not say the export's size")
    return export


def disconnect_request():
    """NBD_CMD_DISC: a client's clean goodbye in the transmission phase."""
    return struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0)


def _send_option(sock, option, data):
    sock.sendall(struct.pack(">QII", IHAVEOPT, option, len(data)) + data)


def _option_reply(sock, option, what):
    magic, replied, kind, length = struct.unpack(">QIII", _receive(sock, 20, what))
    if magic != OPTION_REPLY_MAGIC or replied != option or length > MAX_REPLY:
        raise NbdError(f"{what}: a malformed NBD option reply")
    return kind, _receive(sock, length, what)


def _receive(sock, size, what):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise NbdError(f"{what}: the NBD server closed the connection during the handshake")
        data += chunk
    return data


# --- netlink messages ---

def attribute(kind, payload):
    """One netlink attribute: header, payload, padding to 4 bytes."""
    header = NLATTR.pack(NLATTR.size + len(payload), kind)
    return header + payload + bytes(-len(payload) % 4)


def nested(kind, *attributes):
    return attribute(kind | NLA_F_NESTED, b"".join(attributes))


def message(family, flags, sequence, command, *attributes):
    """A generic netlink request: nlmsghdr, genlmsghdr, attributes."""
    body = GENLMSGHDR.pack(command, NBD_GENL_VERSION, 0) + b"".join(attributes)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), family, flags, sequence, 0) + body


def connect_message(family, sequence, sock_fd, export, identifier, io_timeout=None):
    """NBD_CMD_CONNECT with no NBD_ATTR_INDEX: the kernel picks the device.
    io_timeout: seconds after which the kernel fails a request the server
    has not answered, and the connection; None: never."""
    timeout = [] if io_timeout is None else [attribute(NBD_ATTR_TIMEOUT, struct.pack("=Q", io_timeout))]
    return message(
        family, NLM_F_REQUEST | NLM_F_ACK, sequence, NBD_CMD_CONNECT,
        attribute(NBD_ATTR_SIZE_BYTES, struct.pack("=Q", export.size)),
        attribute(NBD_ATTR_BLOCK_SIZE_BYTES, struct.pack("=Q", BLOCK_SIZE)),
        # As the server said: READ_ONLY makes the kernel's device read-only,
        # SEND_FLUSH lets the guest's flushes reach qemu-nbd (and the file),
        # SEND_TRIM passes its discards.
        attribute(NBD_ATTR_SERVER_FLAGS, struct.pack("=Q", export.flags)),
        *timeout,
        nested(NBD_ATTR_SOCKETS, nested(NBD_SOCK_ITEM, attribute(NBD_SOCK_FD, struct.pack("=I", sock_fd)))),
        attribute(NBD_ATTR_BACKEND_IDENTIFIER, identifier.encode() + b"\0"),
    )


def disconnect_message(family, sequence, index):
    return message(family, NLM_F_REQUEST | NLM_F_ACK, sequence, NBD_CMD_DISCONNECT,
                   attribute(NBD_ATTR_INDEX, struct.pack("=I", index)))


def family_message(sequence, name):
    return message(GENL_ID_CTRL, NLM_F_REQUEST, sequence, CTRL_CMD_GETFAMILY,
                   attribute(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"))


def parse_attributes(data):
    """{type: payload} of a run of attributes (nested flag cleared)."""
    found, offset = {}, 0
    while offset + NLATTR.size <= len(data):
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size:
            break
        found[kind & ~NLA_F_NESTED] = data[offset + NLATTR.size: offset + length]
        offset += (length + 3) & ~3
    return found


def parse_replies(data, sequence):
    """[attributes of each answer to sequence in data, None for the closing
    acknowledgement]; an error answer raises OSError with its errno."""
    found, offset = [], 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _, replied, _ = NLMSGHDR.unpack_from(data, offset)
        body = data[offset + NLMSGHDR.size: offset + length]
        offset += max(NLMSGHDR.size, (length + 3) & ~3)
        if replied != sequence or kind == NLMSG_DONE:
            continue
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", body)[0]
            if code:
                raise OSError(-code, os.strerror(-code))
            found.append(None)
        else:
            found.append(parse_attributes(body[GENLMSGHDR.size:]))
    return found


# --- talking to the kernel ---

class Netlink:
    """One generic netlink socket to the kernel's nbd family."""

    def __init__(self, deadline):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
        # The kernel answers every request; the bound is for a kernel stuck
        # in a connect, which must become an error before libxl's kill.
        self.sock.settimeout(max(deadline.remaining(), 0.1))
        self.sock.bind((0, 0))
        self.sequence = 0
        self.family = self._family_id()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.sock.close()

    def request(self, build, acknowledged=True):
        """Send build(sequence); the attributes of the kernel's answer ({}
        if there is none but the acknowledgement, which ends the wait)."""
        self.sequence += 1
        self.sock.send(build(self.sequence))
        answer = {}
        while True:
            for found in parse_replies(self.sock.recv(65536), self.sequence):
                if found is None:
                    return answer
                answer = found
                if not acknowledged:
                    return answer

    def _family_id(self):
        try:
            return self.family_id(NBD_FAMILY)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise NbdError("the kernel's nbd module is not loaded (no nbd netlink family)") from None
            raise

    def family_id(self, name):
        """The id of the generic netlink family name (CTRL_CMD_GETFAMILY)."""
        found = self.request(lambda n: family_message(n, name), acknowledged=False)
        return struct.unpack("=H", found[CTRL_ATTR_FAMILY_ID][:2])[0]

    def connect(self, sock_fd, export, identifier, io_timeout=None):
        """Hand sock_fd to a device the kernel picks; its index."""
        answer = self.request(lambda n: connect_message(self.family, n, sock_fd, export, identifier, io_timeout))
        if NBD_ATTR_INDEX not in answer:
            raise NbdError("the kernel connected an nbd device without saying which")
        return struct.unpack("=I", answer[NBD_ATTR_INDEX][:4])[0]

    def disconnect(self, index):
        self.request(lambda n: disconnect_message(self.family, n, index))


# --- devices ---

def node(index):
    return f"/dev/nbd{index}"


def sysfs(index, name):
    """An attribute of nbd index; None if it has none now. A disconnect removes
    the pid attribute: a read while another run disconnects that device (two
    disks of a guest going at once) fails ENODEV, a kernfs node on its way out."""
    return read_text(f"/sys/block/nbd{index}/{name}")


def devnum(index):
    text = sysfs(index, "dev")
    return Devnum.parse(text) if text else None


def is_connected(index):
    """A live connection shows its receiving kernel thread in pid."""
    return sysfs(index, "pid") is not None


def backend(index):
    """The backend identifier the connection was made with ("" for none)."""
    return sysfs(index, "backend") or ""


def ours():
    """(index, backend identifier) of each connected nbd device of xenblock's."""
    from .loop import MARK_PREFIX
    found = []
    for name in listdir("/sys/block"):
        if name.startswith("nbd") and name[3:].isdigit():
            index = int(name[3:])
            mark = backend(index)
            if mark.startswith(MARK_PREFIX) and is_connected(index):
                found.append((index, mark))
    return sorted(found)


# --- the module ---

MODULE = "/sys/module/nbd"
# modprobe of one small module (a few process starts under the emulated test host).
MODPROBE_SECONDS = 5.0


def ensure_module(deadline):
    """Load nbd with max_part=0 if it is not loaded; returns a warning for
    the log line if it was loaded before with partition scanning on (the
    kernel default, max_part=16): dom0's kernel then reads each guest's
    partition table and makes nbdNpM devices (our udev rule hides those
    too). Refusing would break a host where nbd serves other uses; the
    warning says how to turn it off."""
    from . import command
    if not os.path.exists(MODULE):
        try:
            command.run(["modprobe", "nbd", "max_part=0"], "loading the kernel's nbd module", deadline,
                        MODPROBE_SECONDS)
        except command.CommandError as e:
            said = " ".join(e.stderr.split()) or f"status {e.returncode}"
            raise NbdError(f"the kernel's nbd module is missing ({said}): block-tap's qemu formats and "
                           "block-nbd are served through nbd devices; install the kernel's modules "
                           "(CONFIG_BLK_DEV_NBD), or for block-tap convert the image to raw") from None
        return None
    try:
        with open(os.path.join(MODULE, "parameters", "max_part")) as f:
            max_part = f.read().strip()
    except FileNotFoundError:
        return None
    if max_part == "0":
        return None
    return (f"nbd was loaded with max_part={max_part}: dom0's kernel scans guests' partition tables "
            "(load it with max_part=0, e.g. in /etc/modprobe.d)")


def find(identifier):
    """The index of the connected device whose backend is identifier."""
    return next((index for index, mark in ours() if mark == identifier), None)


def connect(sock, export, identifier, deadline, io_timeout=None):
    """Hand the negotiated socket to a device the kernel picks; its index
    (io_timeout: see connect_message)."""
    try:
        with Netlink(deadline) as link:
            return link.connect(sock.fileno(), export, identifier, io_timeout)
    except socket.timeout:
        raise NbdError("connecting an nbd device: the kernel did not answer in time") from None
    except OSError as e:
        if e.errno in (errno.EBUSY, errno.ENOSPC, errno.ENODEV):
            raise NbdError(f"no free nbd device: {e.strerror}") from None
        raise NbdError(f"connecting an nbd device failed: {e.strerror}") from None


def disconnect(identifier, deadline):
    """Disconnect the device of ours with that backend identifier, if it
    is connected (only ours: the index alone may serve someone else now)."""
    index = find(identifier)
    if index is None:
        return None
    try:
        with Netlink(deadline) as link:
            link.disconnect(index)
    except (OSError, socket.timeout) as e:
        raise NbdError(f"disconnecting {node(index)} failed: {getattr(e, 'strerror', None) or e}") from None
    return index
