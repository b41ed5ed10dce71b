"""Settings from /etc/xenblock/xenblock.conf, with the environment on top.

XENBLOCK_CONFIG names another file (tests use it); XENBLOCK_DEBUG=1 turns
on debug logging without editing the file.
"""
import configparser
from collections import namedtuple

DEFAULT_PATH = "/etc/xenblock/xenblock.conf"
TRUE_WORDS = ("1", "yes", "true", "on")


Config = namedtuple(
    "Config", "state_dir log_file debug syslog lock_timeout direct_io",
    defaults=("/run/xenblock", "/var/log/xen/xen-hotplug.log", False, True, 30.0, True))


def load(environ):
    parser = configparser.ConfigParser()
    parser.read(environ.get("XENBLOCK_CONFIG", DEFAULT_PATH))
    general = parser["general"] if parser.has_section("general") else {}
    file_section = parser["file"] if parser.has_section("file") else {}
    defaults = Config()
    return Config(
        state_dir=general.get("state_dir", defaults.state_dir),
        log_file=general.get("log_file", defaults.log_file),
        debug=_flag(environ.get("XENBLOCK_DEBUG", general.get("debug", "no"))),
        syslog=_flag(general.get("syslog", "yes")),
        lock_timeout=float(general.get("lock_timeout", defaults.lock_timeout)),
        direct_io=_flag(file_section.get("direct_io", "yes")),
    )


def _flag(text):
    return str(text).strip().lower() in TRUE_WORDS
