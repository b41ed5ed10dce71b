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

Config = namedtuple(
    "Config", "state_dir log_file debug syslog lock_timeout direct_io",
    defaults=("/run/xenblock", "/var/log/xen/xen-hotplug.log", False, True, 30.0, True))


class ConfigError(HotplugError):
    pass


def _flag(text):
    try:
        return FLAG_WORDS[text.lower()]
    except KeyError:
        raise ValueError("expected yes or no") from None


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= 3600:
        raise ValueError("expected a number of seconds, more than 0 and at most 3600")
    return value


def _path(text):
    if not text.startswith("/"):
        raise ValueError("expected an absolute path")
    return text


# (section, name in the file) -> (Config field, conversion)
SETTINGS = {
    ("general", "state_dir"): ("state_dir", _path),
    ("general", "log_file"): ("log_file", _path),
    ("general", "debug"): ("debug", _flag),
    ("general", "syslog"): ("syslog", _flag),
    ("general", "lock_timeout"): ("lock_timeout", _seconds),
    ("file", "direct_io"): ("direct_io", _flag),
}


def load(environ):
    path = environ.get("XENBLOCK_CONFIG", DEFAULT_PATH)
    values = _read(path)
    if "XENBLOCK_DEBUG" in environ:
        values["debug"] = _converted(_flag, environ["XENBLOCK_DEBUG"], "XENBLOCK_DEBUG in the environment")
    return Config(**values)


def _read(path):
    """The settings path gives, by Config field; {} if there is no file."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    values, section = {}, None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        where = f"{path} line {number}"
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section not in {s for s, _ in SETTINGS}:
                raise ConfigError(f"{where}: unknown section [{section}]")
            continue
        name, equals, value = (part.strip() for part in line.partition("="))
        if not equals or section is None:
            raise ConfigError(f"{where}: expected `name = value` under a [section], not {line!r}")
        if (section, name) not in SETTINGS:
            raise ConfigError(f"{where}: unknown setting {name!r} in [{section}]")
        field, convert = SETTINGS[section, name]
        values[field] = _converted(convert, value, where)
    return values


def _converted(convert, text, where):
    try:
        return convert(text)
    except ValueError as e:
        raise ConfigError(f"{where}: {text!r}: {e}") from None
