"""Sizes as people write them in targets and the config: a bare number is
MiB (what Xen's old cow: syntax meant), K, M, G and T suffixes are binary
multiples (KiB, ..., TiB; "KiB" and "KB" are read the same). Also how
much room a file system has left for them."""
import os

MIB = 1 << 20
UNITS = {"": MIB, "K": 1 << 10, "M": MIB, "G": 1 << 30, "T": 1 << 40}


def parse(text):
    """Bytes from text; ValueError with a reason a person understands."""
    word = text.strip().upper()
    digits = len(word) - len(word.lstrip("0123456789"))
    number, unit = word[:digits], word[digits:]
    if unit[1:] in ("B", "IB"):
        unit = unit[0]  # KiB, KB: K
    if not number or unit not in UNITS:
        raise ValueError(f"{text.strip()!r} is not a size: expected a number of MiB, or a number with "
                         "a K, M, G or T suffix (such as 512M or 4G)")
    value = int(number) * UNITS[unit]
    if value == 0:
        raise ValueError("a size of zero")
    return value


def split_trailing(text):
    """(text without its last word, that word as bytes) if the word looks
    like a size (a target's "<path> <size>"), else (text, None); ValueError
    as parse's for a word that looks like a size and is not one."""
    head, _, tail = text.rpartition(" ")
    if head and looks_like_size(tail):
        return head.rstrip(), parse(tail)
    return text, None


def looks_like_size(word):
    """Whether word was meant as a size (and must parse as one)."""
    return word[:1].isdigit()


def text(value, rounded=False):
    """value in bytes for messages: exact in the largest unit that divides
    it (4G), else to a tenth of the largest unit it reaches (935.7M).
    rounded: always to a tenth, for amounts that are not what a person
    asked for, such as a store's use (78.5G; 4M, not 4.0M)."""
    for unit in ("T", "G", "M", "K"):
        if not rounded and value % UNITS[unit] == 0:
            return f"{value // UNITS[unit]}{unit}"
    for unit in ("T", "G", "M", "K"):
        if value >= UNITS[unit]:
            tenths = f"{value / UNITS[unit]:.1f}"
            # Not rounded, 981.0M says that it is not exactly 981M.
            return (tenths.removesuffix(".0") if rounded else tenths) + unit
    return f"{value} bytes"


def free_space(where):
    """Bytes free on the file system of where (a path, or a descriptor,
    O_PATH ones too) for a user who is not root (f_bavail): the reserve that
    keeps the host alive is not for guests' data."""
    st = os.statvfs(where)
    return st.f_bavail * st.f_frsize
