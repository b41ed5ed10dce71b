"""Typed errors: their text is the one hotplug-error line a person reads."""


class HotplugError(Exception):
    """A failure the administrator can act on: what, which path, why."""


def one_line(text):
    """text with control characters escaped as Python writes them (\\n,
    \\x1b, ...): a target or node quoted in a message is whatever a domU
    config said, and must neither break the line into two (forging a log
    line, or making xenstore refuse the hotplug-error) nor reach a terminal."""
    if text.isprintable():
        return text  # the common case, without building a new string
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def _escaped(c):
    # A byte that is not UTF-8 (a path read with surrogateescape) as the
    # byte it is, \xff, not as the surrogate Python made of it (\udcff).
    if "\udc80" <= c <= "\udcff":
        return f"\\x{ord(c) - 0xdc00:02x}"
    return repr(c)[1:-1]
