"""Settings from /etc/xenblock/xenblock.conf, with the environment on top.

XENBLOCK_CONFIG names another file (tests use it); XENBLOCK_DEBUG=1 turns
on debug logging without editing the file.
"""
import configparser
from dataclasses import dataclass

DEFAULT_PATH = "/etc/xenblock/xenblock.conf"
TRUE_WORDS = ("1", "yes", "true", "on")


@dataclass(frozen=True)
class Config:
    state_dir: str = "/run/xenblock"
    log_file: str = "/var/log/xen/xen-hotplug.log"
    debug: bool = False
    syslog: bool = True
    lock_timeout: float = 30.0
    direct_io: bool = True


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
