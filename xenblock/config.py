"""Settings from /etc/xenblock/xenblock.conf, with the environment on top.

XENBLOCK_CONFIG names another file (tests use it); XENBLOCK_DEBUG=1 turns
on debug logging without editing the file.

The file is INI-style: [section] lines, `name = value` lines, and comments
starting with # or ;. It is read by the few lines below rather than by
configparser, whose import compiles eight regular expressions on every
hotplug run (see benchmarks/RESULTS.md). A mistake in the file (an unknown
name, a value that is not one) is an error naming the file and line: a
typo must not silently leave a setting at its default.
"""
from collections import namedtuple

from .errors import HotplugError

DEFAULT_PATH = "/etc/xenblock/xenblock.conf"
FLAG_WORDS = {"1": True, "yes": True, "true": True, "on": True,
              "0": False, "no": False, "false": False, "off": False}


class Seconds(int):
    """A whole number of seconds (an int that `xenblock config` does not
    print as a size)."""


Config = namedtuple(
    "Config", "log_file debug syslog direct_io cow_directory cow_size cow_max_size cow_sparse snapshot_max_size "
              "fill_warning lvsnap_keep lvsnap_keep_origins lvsnap_live_origin tap_outside_files nbd_io_timeout",
    defaults=("/var/log/xen/xen-hotplug.log", False, True, True,
              "/var/lib/xenblock/cow", 1 << 30, 64 << 30, False, None, 0.8, False, frozenset(), False, False,
              # block-nbd's I/O timeout: see xenblock.types.nbd.
              Seconds(120)))


class ConfigError(HotplugError):
    pass


def _flag(text):
    try:
        return FLAG_WORDS[text.lower()]
    except KeyError:
        raise ValueError("expected yes or no") from None


def _path(text):
    if not text.startswith("/"):
        raise ValueError("expected an absolute path")
    return text


def _size(text):
    from . import sizes  # only when the file sets a size
    return sizes.parse(text)


def _size_or_none(text):
    """A size, or none: no limit."""
    return None if text.lower() == "none" else _size(text)


def _percentage(text):
    """A fraction from a percentage such as 80% or 92.5%; the % is required,
    so that 0.8 cannot be read as 0.8% by one person and 80% by another."""
    number = text[:-1].strip() if text.endswith("%") else ""
    if not (number.replace(".", "", 1).isdecimal() and number.isascii()):
        raise ValueError("expected a percentage, such as 80%")
    value = float(number)
    if not 0 < value <= 100:
        raise ValueError("expected a percentage above 0% and at most 100%")
    return value / 100


def _seconds(text):
    # At most a day: "never" is what a timeout is there to rule out.
    if not (text.isdecimal() and text.isascii() and 0 < int(text) <= 86400):
        raise ValueError("expected a whole number of seconds from 1 to 86400 (a day)")
    return Seconds(text)


def _origins(text):
    """A set of origin LVs, <vg>/<lv> separated by spaces; none: no origin."""
    words = [] if text.lower() == "none" else text.split()
    wrong = [word for word in words if word.count("/") != 1 or word.startswith("/") or word.endswith("/")]
    if wrong:
        raise ValueError(f"expected origins as <vg>/<lv> separated by spaces, not {wrong[0]!r}")
    return frozenset(words)


# (section, name in the file) -> (Config field, conversion)
SETTINGS = {
    ("general", "log_file"): ("log_file", _path),
    ("general", "debug"): ("debug", _flag),
    ("general", "syslog"): ("syslog", _flag),
    ("general", "fill_warning"): ("fill_warning", _percentage),
    ("file", "direct_io"): ("direct_io", _flag),
    ("cow", "directory"): ("cow_directory", _path),
    ("cow", "size"): ("cow_size", _size),
    ("cow", "max_size"): ("cow_max_size", _size),
    ("cow", "sparse"): ("cow_sparse", _flag),
    ("snapshot", "max_size"): ("snapshot_max_size", _size_or_none),
    ("lvsnap", "keep"): ("lvsnap_keep", _flag),
    ("lvsnap", "keep_origins"): ("lvsnap_keep_origins", _origins),
    ("lvsnap", "live_origin"): ("lvsnap_live_origin", _flag),
    ("tap", "outside_files"): ("tap_outside_files", _flag),
    ("nbd", "io_timeout"): ("nbd_io_timeout", _seconds),
}
SECTIONS = {section for section, _ in SETTINGS}


def load(environ):
    """The settings; raises ConfigError naming the first mistake."""
    config, mistakes = load_all(environ)
    if mistakes:
        raise mistakes[0]
    return config


def load_all(environ):
    """(the settings with every mistaken line left out, [ConfigError, ...]):
    for a teardown, which must go on with what it can."""
    values, mistakes, _ = _values(environ)
    return Config(**values), mistakes


def explained(environ):
    """[(section, name, value as the file would say it, where it came from)]
    for every setting, and the mistakes: what `xenblock config` prints."""
    values, mistakes, origins = _values(environ)
    config = Config(**values)
    rows = [(section, name, _text(getattr(config, field)), origins.get(field, "default"))
            for (section, name), (field, _) in SETTINGS.items()]
    return rows, mistakes


def _text(value):
    if isinstance(value, frozenset):
        return " ".join(sorted(value)) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value * 100:g}%"
    if isinstance(value, Seconds):
        return str(int(value))
    if isinstance(value, int):
        from . import sizes
        return sizes.text(value)
    return value


def _values(environ):
    """(settings by Config field, [ConfigError, ...], where each came from)."""
    path = environ.get("XENBLOCK_CONFIG", DEFAULT_PATH)
    values, mistakes, origins = _read(path)
    if "XENBLOCK_DEBUG" in environ:
        where = "XENBLOCK_DEBUG in the environment"
        try:
            values["debug"] = _converted(_flag, environ["XENBLOCK_DEBUG"], where)
            origins["debug"] = where
        except ConfigError as e:
            mistakes.append(e)
    return values, mistakes, origins


def _read(path):
    """(the settings path gives, by Config field, [ConfigError, ...], the
    line each came from); no settings if there is no file."""
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}, [], {}
    except OSError as e:
        return {}, [ConfigError(f"{path}: cannot read: {e.strerror}")], {}
    values, mistakes, origins, section = {}, [], {}, None
    for number, raw in enumerate(lines, 1):
        where = f"{path} line {number}"
        try:
            line = raw.decode().strip()
        except UnicodeDecodeError:  # a line at a time: the others still count
            mistakes.append(ConfigError(f"{where}: not UTF-8 text: {raw!r}"))
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section not in SECTIONS:
                mistakes.append(ConfigError(f"{where}: unknown section [{section}]"))
            continue
        try:
            field = _setting(line, where, section, values)
        except ConfigError as e:
            mistakes.append(e)
            continue
        if field is not None:
            origins[field] = where
    return values, mistakes, origins


def _setting(line, where, section, values):
    """Read one line (a setting, a comment or nothing) into values; the
    field it set, if any."""
    if not line or line.startswith(("#", ";")):
        return None
    name, equals, value = (part.strip() for part in line.partition("="))
    if not equals or section is None:
        raise ConfigError(f"{where}: expected `name = value` under a [section], not {line!r}")
    if section not in SECTIONS:
        # Its header is reported; its lines must not count for the section before.
        raise ConfigError(f"{where}: {name!r} is under the unknown section [{section}]")
    if (section, name) not in SETTINGS:
        raise ConfigError(f"{where}: unknown setting {name!r} in [{section}]")
    field, convert = SETTINGS[section, name]
    values[field] = _converted(convert, value, where)
    return field


def _converted(convert, text, where):
    try:
        return convert(text)
    except ValueError as e:
        raise ConfigError(f"{where}: {text!r}: {e}") from None
