"""Network addresses in targets: <host>[:<port>], an IPv6 address in
brackets ([::1]:3260), as the network types (block-nbd, block-iscsi) take
them."""
from dataclasses import dataclass

from .errors import HotplugError


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(address, default_port, text, usage):
    """The Address that address (<host>[:<port>]) names, the port
    default_port if it names none; text (the whole target) and usage go
    into the error of a malformed one."""
    if address.startswith("["):
        host, bracket, port = address[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise HotplugError(f"target {text!r}: an unclosed or malformed [IPv6 address]: {usage}")
        port = port[1:]
    elif address.count(":") > 1:
        raise HotplugError(f"target {text!r}: an IPv6 address goes in brackets: [{address}]:<port>")
    else:
        host, _, port = address.partition(":")
    if not host:
        raise HotplugError(f"target {text!r} names no host: {usage}")
    return Address(host, parse_port(port, text) if port else default_port)


def parse_port(word, text):
    if not word.isdigit() or not 0 < int(word) < 65536:
        raise HotplugError(f"target {text!r}: {word!r} is not a TCP port (1-65535)")
    return int(word)
