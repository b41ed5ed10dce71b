"""block-nbd's target forms. What the server says at add is in the hostile
table (tests/support/hostile_cases.py, against a real nbd-server); the
device itself needs the kernel's nbd module: the VM tier."""
import pytest

from xenblock.errors import HotplugError
from xenblock.types import nbd


@pytest.mark.parametrize("target, host, port, export, text", [
    ("127.0.0.1:10809/disk", "127.0.0.1", 10809, "disk", "nbd://127.0.0.1:10809/disk"),
    ("nbd://storage.example:10900/vm/web", "storage.example", 10900, "vm/web", "nbd://storage.example:10900/vm/web"),
    ("nbd://storage.example/disk", "storage.example", 10809, "disk", "nbd://storage.example:10809/disk"),
    ("storage.example:10810", "storage.example", 10810, "", "nbd://storage.example:10810/"),
    ("storage.example", "storage.example", 10809, "", "nbd://storage.example:10809/"),
    ("[::1]:10811/disk", "::1", 10811, "disk", "nbd://[::1]:10811/disk"),
    ("nbd://[fe80::1]/disk", "fe80::1", 10809, "disk", "nbd://[fe80::1]:10809/disk"),
    # Xen's old form, what xl passes from nbd:<host> <port>
    ("  127.0.0.1 10809 ", "127.0.0.1", 10809, "", "nbd://127.0.0.1:10809/"),
])
def test_a_target_names_the_server_and_the_export(target, host, port, export, text):
    spec = nbd.parse(target)
    assert (spec.host, spec.port, spec.export, spec.text) == (host, port, export, text)


@pytest.mark.parametrize("target, words", [
    ("host:0", "'0' is not a TCP port"),
    ("host 10809x", "give <host>:<port>"),
    ("[::1]x:10809", "malformed [IPv6 address]"),
    ("nbd://", "names no host"),
])
def test_a_malformed_target_is_refused_naming_what_is_wrong(target, words):
    with pytest.raises(HotplugError, match=words.replace("[", r"\[")):
        nbd.parse(target)
