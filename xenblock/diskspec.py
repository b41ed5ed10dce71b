"""One disk= entry read as xl reads it, and its modern form.

xl's reader (libxlu's disk scanner, documented in xl-disk-configuration(5))
is a flex scanner: at each position the rule with the longest match wins,
the trailing context of the prefix rules counting in its length, and the
earlier rule wins a tie. Emulating those rules, not approximating them, is
what makes our verdict xl's: `lvsnap:vg/lv 1G,xvda,w` is not refused for
its prefix (a prefix followed by a letter is a positional target) but for
`xvda`, which lands in the format's place. tests/xen/test_xl_config.py holds
this module to `xl create -n` in the Xen VM.

Keyword parameters: `name=value` (target= last: it takes the rest) and
flags. Positional ones, in order: target, format, vdev, access; after a
deprecated prefix (`phy:`, `file:`, `tap:aio:`, ...) the format's place is
skipped. xend ran /etc/xen/scripts/block-<prefix> for any other prefix
(`cow:`, `lvsnap:`, `tap:vmdk:`); xl refuses those, and the modern form
names the script.
"""
import re

# Keyword parameters that set a string ("respecified" if set twice).
STRINGS = {"vdev": "vdev", "script": "script", "backend": "backend", "colo-host": "colo-host",
           "colo-export": "colo-export", "active-disk": "active-disk", "hidden-disk": "hidden-disk"}
FORMATS = {"", "raw", "qcow", "qcow2", "vhd", "empty", "qed"}
BACKEND_TYPES = {"phy", "tap", "qdisk", "standalone"}
FLAGS = ("direct-io-safe", "discard", "no-discard", "colo", "no-colo", "trusted", "untrusted",
         "grant_usage=1", "grant_usage=0")
# Prefixes xl still takes: a format, a script of its own, or nothing at all.
FORMAT_PREFIXES = ("raw", "qcow", "qcow2", "vhd")
SCRIPT_PREFIXES = ("iscsi", "nbd", "enbd", "drbd")
EMPTY_PREFIXES = ("tapdisk", "tap", "tap2", "aio", "ioemu", "file", "phy")


def _rules():
    """(consumed, trailing context or None, action) in xl's order."""
    keyword = [(rf"{re.escape(name)}=[^,]*,?", None, ("string", name)) for name in STRINGS]
    return [
        (r"[ \t\n]+", r"(?:[^ \t\n].*)?", ("skip",)),
        (r"format=[^,]*,?", None, ("format",)),
        (r"cdrom,?", None, ("cdrom", True)),
        (r"devtype=cdrom,?", None, ("cdrom", True)),
        (r"devtype=disk,?", None, ("cdrom", False)),
        (r"devtype=[^,]*,?", None, ("error", "unknown value for type")),
        (r"access=[^,]*,?", None, ("access",)),
        (r"backendtype=[^,]*,?", None, ("backendtype",)),
        (r"specification=(?:xen|virtio),?", None, ("keep",)),
        (r"specification=[^,]*,?", None, ("error", "unknown value for specification")),
        (r"colo-port=[0-9]+[^,]*,?", None, ("keep",)),
        *keyword,
        *[(rf"{re.escape(flag)},?", None, ("keep",)) for flag in FLAGS],
        (r"target=.*", None, ("target",)),
        (r"[a-z][-a-z0-9]*=[^,],?", None, ("error", "unknown parameter")),
        (r"(?:raw|qcow2?|vhd):", r".*", ("format_prefix",)),
        (r"(?:iscsi|e?nbd|drbd):", r".*", ("script_prefix",)),
        (r"(?:tapdisk|tap2?|aio|ioemu|file|phy):", r".*", ("prefix",)),
        (r"[a-z][a-z0-9]*:", r"(?:[^a-z0-9].*)?", ("fatal", "unknown deprecated disk prefix")),
        (r"[^=,]*,|[^=,]+,?", None, ("positional",)),
        (r".", None, ("fatal_rest", "bad disk syntax")),
    ]


RULES = [(re.compile(consumed), re.compile(trailing) if trailing else None, action)
         for consumed, trailing, action in _rules()]


class Disk:
    """What xl makes of one entry: the fields, the prefixes it met, the
    keyword parameters kept as written, and errors (xl's wording; any
    error means xl refuses the guest's config)."""

    def __init__(self, spec):
        self.spec = spec
        self.target = self.format = self.vdev = self.script = self.backendtype = None
        self.writable, self.cdrom, self.access_set = True, False, False
        self.prefixes, self.kept, self.errors, self.positional = [], [], [], 0

    @property
    def access(self):
        return "w" if self.writable else "r"

    def error(self, message, near=None):
        self.errors.append(f"{message}: near `{near}'" if near is not None else message)


def parse(spec):
    """The Disk xl reads from spec."""
    disk, pos = Disk(spec), 0
    while pos < len(spec):
        _, consumed, action = _longest(spec, pos)
        if not _act(disk, action, spec[pos:pos + consumed], spec[pos:]):
            break
        pos += consumed
    if not disk.errors:
        _finish(disk)
    return disk


def _longest(spec, pos):
    best = None
    for consumed_re, trailing_re, action in RULES:
        found = consumed_re.match(spec, pos)
        if found is None:
            continue
        consumed = found.end() - pos
        total = consumed
        if trailing_re is not None:
            rest = trailing_re.match(spec, found.end())
            if rest is None:
                continue
            total += rest.end() - found.end()
        if total > 0 and (best is None or total > best[0]):
            best = (total, consumed, action)
    return best


def _act(disk, action, text, rest):
    """Apply one rule; False when xl stops reading the entry."""
    kind, value = action[0], text.removesuffix(",") if action[0] != "target" else text
    after_equals = value.split("=", 1)[1] if "=" in value else value
    if kind == "skip":
        pass
    elif kind == "string":
        _save(disk, action[1], after_equals)
    elif kind == "format":
        _set_format(disk, after_equals)
    elif kind == "cdrom":
        disk.cdrom = action[1]
    elif kind == "access":
        _set_access(disk, after_equals)
    elif kind == "backendtype":
        if after_equals in BACKEND_TYPES:
            disk.backendtype = after_equals
        else:
            disk.error("unknown value for backendtype", after_equals)
    elif kind == "keep":
        disk.kept.append(value)
    elif kind == "target":
        _save(disk, "target", text.split("=", 1)[1].removesuffix(","))
    elif kind in ("format_prefix", "script_prefix", "prefix"):
        disk.prefixes.append(value.removesuffix(":"))
        if kind == "format_prefix":
            _set_format(disk, value.removesuffix(":"))
        elif kind == "script_prefix":
            _save(disk, "script", "block-" + value.removesuffix(":"))
    elif kind == "positional":
        return _positional(disk, value)
    elif kind == "error":
        disk.error(action[1], text)
    else:  # fatal: xl reports it and reads no further
        disk.error(action[1], text if kind == "fatal" else rest)
        return False
    return True


def _save(disk, field, value):
    attribute = field.replace("-", "_")
    current = getattr(disk, attribute, None)
    if current:
        disk.error(f"{field} respecified", value)
    elif attribute in ("target", "vdev", "script"):
        setattr(disk, attribute, value)
    else:
        disk.kept.append(f"{field}={value}")


def _set_format(disk, value):
    value = value or "raw"
    if value not in FORMATS:
        disk.error("unknown value for format", value)
    elif disk.format not in (None, value):
        disk.error("format respecified", value)
    else:
        disk.format = value


def _set_access(disk, value):
    if value in ("r", "ro"):
        disk.writable = False
    elif value in ("rw", "w", ""):
        disk.writable = True
    else:
        disk.error("unknown value for access", value)


def _positional(disk, value):
    """Positional parameters: target, format (not after a prefix), vdev, access."""
    if disk.errors:
        return True  # xl goes on reading but reports nothing more
    disk.positional += 1
    if disk.target is None:
        disk.target = value
    elif not disk.prefixes and disk.format is None:
        if disk.target == "" and _vdev_and_devtype(disk, value):
            disk.format = "empty"
        else:
            _set_format(disk, value)
    elif disk.vdev is None:
        if not _vdev_and_devtype(disk, value):
            _save(disk, "vdev", value)
    elif not disk.access_set:
        disk.access_set = True
        _set_access(disk, value)
    else:
        disk.error("too many positional parameters", value)
        return False
    return True


def _vdev_and_devtype(disk, value):
    """The old <vdev>:<devtype> form (hdc:cdrom)."""
    vdev, colon, devtype = value.rpartition(":")
    if not colon:
        return False
    _save(disk, "vdev", vdev)
    if devtype in ("cdrom", "disk"):
        disk.cdrom = devtype == "cdrom"
    else:
        disk.error("unknown deprecated type", devtype)
    return True


def _finish(disk):
    disk.format = disk.format or "raw"
    if disk.cdrom:
        disk.writable = False
        if not disk.target:
            disk.format = "empty"
    if disk.vdev is None:
        disk.error("no vdev specified")
    elif disk.target is None and not disk.cdrom:
        disk.error("no target specified (and device not removable)")


# -- the modern form -------------------------------------------------------------

XEND_PREFIX = re.compile(r"([a-z][a-z0-9]*):(.*)", re.S)


def xend_script(spec):
    """(script, Disk) for an entry whose target starts with a prefix that
    xend took for a script name (cow:, lvsnap:, tap:vmdk:) and xl does not
    know; None for any other entry. The Disk is the rest of the entry as xl
    reads it after a prefix it knows (no format in the second place), with
    the target as xend passed it to the script: up to the first comma."""
    found = XEND_PREFIX.match(spec.lstrip(" \t\n"))
    if found is None:
        return None
    word, rest = found.groups()
    known = FORMAT_PREFIXES + SCRIPT_PREFIXES + EMPTY_PREFIXES
    if word == "tap":  # tap:<driver>:<path>: blktap's drivers, block-tap's formats
        driver = XEND_PREFIX.match(rest)
        if driver is None or driver.group(1) in known:
            return None
        script = "block-tap"
    elif word in known:
        return None
    else:
        script = f"block-{word}"
    target, _, parameters = rest.partition(",")
    disk = parse("phy:," + parameters)  # an empty target in the target's place
    disk.target, disk.prefixes = target, [word]
    return script, disk


def modern(disk, script=None):
    """The entry in xl's keyword form: what it means, no prefix, no
    positional parameter, target last. script: the script to name instead
    of the one the entry has (for an xend prefix)."""
    words = []
    if disk.format and disk.format != "raw":
        words.append(f"format={disk.format}")
    if disk.vdev is not None:
        words.append(f"vdev={disk.vdev}")
    if disk.cdrom:
        words.append("devtype=cdrom")
    else:
        words.append(f"access={disk.access}")
    if disk.backendtype:
        words.append(f"backendtype={disk.backendtype}")
    words += disk.kept
    if script or disk.script:
        words.append(f"script={script or disk.script}")
    if disk.target is not None:
        words.append(f"target={disk.target}")
    return ",".join(words)


def is_modern(disk):
    """Whether the entry already uses only keyword parameters."""
    return not disk.prefixes and not disk.positional
