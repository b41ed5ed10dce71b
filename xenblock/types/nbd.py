"""block-nbd: an export of an NBD server on the network, as an nbd device.

target=<host>:<port>[/<export>], nbd://<host>[:<port>][/<export>], or Xen's
old "<host> <port>" (what follows the nbd: prefix of a disk line: xl maps
nbd: to this script and passes the rest of the spec). The port defaults to
10809 (IANA's for NBD), the export to the server's default one; an IPv6
address goes in brackets.

check connects and negotiates the export (xenblock.nbd's handshake), so an
unreachable server, an unknown export or a read-only export asked for
writing is refused before anything is made; attach hands that very socket
to a device the kernel picks (no find-then-connect race), read-only when
the mode is r. remove disconnects it by its backend identifier, which a
killed add leaves on the device too.

The export's users on this host are in the records (the image identity is
the server's address and the export's name); another host's are not ours
to see: the server decides, and nbd-server's own options say whether an
export may be served to two clients.
"""
import hashlib
import socket
from dataclasses import dataclass

from .. import nbd
from ..blockdev import Device
from ..errors import HotplugError
from ..network import Address, parse_address, parse_port
from ..source import Remote, Use

DEFAULT_PORT = 10809
URI_SCHEME = "nbd://"
USAGE = ("give <host>:<port>[/<export>], nbd://<host>[:<port>][/<export>] or <host> <port> "
         "(an IPv6 address in brackets)")
# Connecting and negotiating, out of add's 40 s: a server that does not
# answer in this time is refused while libxl still reads our error.
CONNECT_SECONDS = 10.0


@dataclass
class Spec:
    host: str
    port: int
    export: str
    sock: socket.socket = None  # connected and negotiated by check
    info: nbd.Export = None

    @property
    def text(self):
        return f"nbd://{Address(self.host, self.port)}/{self.export}"


def parse(target):
    text = target.strip()
    words = text.split()
    if len(words) == 2 and words[1].isdigit():  # Xen's old "<host> <port>"
        return Spec(words[0], parse_port(words[1], text), "")
    if len(words) != 1:
        raise HotplugError(f"target {text!r}: {USAGE}" if text else f"empty target: {USAGE}")
    address, _, export = text.removeprefix(URI_SCHEME).partition("/")
    server = parse_address(address, DEFAULT_PORT, text, USAGE)
    return Spec(server.host, server.port, export)


def check(spec, request, config, opened):
    from ..deadline import Deadline  # check runs in add only: the add's deadline
    deadline = Deadline.of_run("add").capped(CONNECT_SECONDS)
    spec.sock = opened.enter_context(_connected(spec, deadline))
    spec.sock.settimeout(max(deadline.remaining(), 0.1))
    try:
        spec.info = nbd.handshake(spec.sock, spec.text, spec.export)
    except nbd.NbdError as e:
        # nbd-server has no default export; qemu-nbd and nbdkit have one.
        unnamed = not spec.export and isinstance(e, nbd.Refused) and e.code == nbd.REP_ERR_UNKNOWN
        hint = " (no export was named: give <host>:<port>/<export>)" if unnamed else ""
        raise HotplugError(f"{e}{hint}") from None
    if spec.info.size == 0:
        raise HotplugError(f"{spec.text}: the export is empty (0 bytes)")
    if request.writable and spec.info.flags & nbd.TFLAG_READ_ONLY:
        raise HotplugError(f"{spec.text}: the NBD server exports it read-only; give the disk mode r")
    return [Use(Remote(spec.text, _identity(spec)), request.writable)]


def _connected(spec, deadline):
    """A TCP connection to the server, within deadline."""
    try:
        return socket.create_connection((spec.host, spec.port), timeout=max(deadline.remaining(), 0.1))
    except socket.gaierror as e:
        raise HotplugError(f"{spec.text}: cannot resolve {spec.host!r}: {e.strerror}") from None
    except socket.timeout:
        raise HotplugError(f"{spec.text}: the NBD server did not answer within {CONNECT_SECONDS:g} s") from None
    except OSError as e:
        raise HotplugError(f"{spec.text}: cannot connect to the NBD server: {e.strerror}") from None


def _identity(spec):
    """The export's image id: the server's address as connected (two names
    of one server are one server) and the export's name, hashed if it holds
    characters a lock file's name should not."""
    address, port = spec.sock.getpeername()[:2]
    name = spec.export
    if not all(c.isascii() and (c.isalnum() or c in "._-") for c in name):
        name = "#" + hashlib.sha256(name.encode()).hexdigest()[:32]
    return f"nbd:{address}:{port}/{name}"


def named_paths(spec):
    return []  # nothing of dom0's: the server is checked at add


def attach(spec, uses, request, build):
    warning = nbd.ensure_module(build.deadline)
    # Read-only for mode r whatever the server allows: the kernel's device
    # refuses writes (blkback opens it read-only too).
    flags = spec.info.flags | (0 if request.writable else nbd.TFLAG_READ_ONLY)
    spec.sock.settimeout(None)  # the kernel's now
    # The kernel fails a request the server has not answered in [nbd]
    # io_timeout, and the connection with it: a server gone for good must
    # not hang the guest's I/O, and the guest's destroy, for ever. 120 s by
    # default, as open-iscsi's replacement_timeout: a server restarting or a
    # network blip is waited out.
    try:
        node, devnum = build.nbd_device(spec.sock, spec.info._replace(flags=flags), build.config.nbd_io_timeout)
    except nbd.NbdError as e:
        raise HotplugError(f"{spec.text}: {e}") from None
    mode = "read-write" if request.writable else "read-only"
    detail = f"{spec.text}, {mode}"
    return Device(node, devnum, f"{detail}; {warning}" if warning else detail)
