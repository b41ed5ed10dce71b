"""Hostile and wrong input (issue 11, item 4): one table, run by both tiers.

Every row is one hotplug run that must fail the way libxl is told: exit 1,
one hotplug-error line holding the row's words (what, and where), nothing
created (no record or lock, no loop, dm or nbd device, no backend node but
hotplug-error and hotplug-status, no file, nothing in the scene changed),
and nothing the target names opened for writing unless the row allows it
(only ever with mode w).

Placeholders in targets, nodes, environment, config and words:
  {d}      the scene: a directory of prepared oddities (see Scene)
  {p}      in PATH_PROBLEMS: the bad path, {P} as a message shows it
  {key}    the backend path (XENBUS_PATH)
  {config} the run's config file
  {vg}     the VM tier's volume group (rows that need "lvm")
  {rodev}  a read-only loop device (only made for the rows that name it)
  {nbd}    the port of an nbd-server serving the scene's ok.img as "disk"
           and ro.img read-only as "ro" (only started for the rows that name it)

A new disk type is one line in PATH_TYPES (how its target names a path)
plus rows for the target forms of its own.
"""
import contextlib
import os
import re
import socket
import threading
import time
from dataclasses import dataclass

from tests.support import inventory, nbd_server
from tests.support.fixtures import foreign_loop, opened_by_someone


@dataclass(frozen=True)
class Case:
    id: str
    script: str  # the disk type: the script is block-<script>
    target: object  # params: text (surrogates for non-UTF-8 bytes), bytes, or None for no node
    words: tuple  # what the error must say
    mode: object = "r"  # the mode node; None: left out
    nodes: tuple = ()  # other backend nodes, (name, value or None to leave it out)
    env: tuple = ()  # (name, value or None to leave it out)
    config: str = None  # the config file's text; {base}: the tier's own config
    command: str = "add"
    said_in: str = "hotplug-error"  # or "stderr": no backend node to write it to
    writes: tuple = ()  # what the run may open for writing (mode w only)
    needs: frozenset = frozenset()  # {"lvm"}: only where LVM is (the VM tier)
    vm: bool = False  # also in the VM tier: what the real xenstored may store otherwise
    swap: tuple = ()  # (symlink, new target): re-pointed while the add holds the link's first open

    def __post_init__(self):
        assert not self.writes or "w" in (self.mode or ""), f"{self.id}: writes only with mode w"


# How each type's target names one image path, and the mode its normal use
# asks for. A new type that takes a path: one line here.
PATH_TYPES = {
    "file": ("{p}", "r"),
    "part": ("{p} 1", "r"),
    "cow": ("{p} 8M", "w"),
    "snapshot": ("{p}:{d}/cows/new.cow", "w"),
    "tap": ("qcow2:{p}", "r"),
}

NOT_AN_IMAGE = "{P}: not an image file or block device"
# (id, path, words): run for every type in PATH_TYPES.
PATH_PROBLEMS = [
    ("missing", "{d}/missing.img", "{P}: no such file or block device"),
    ("directory", "{d}/dir", NOT_AN_IMAGE),
    ("fifo", "{d}/fifo", NOT_AN_IMAGE),
    ("socket", "{d}/sock", NOT_AN_IMAGE),
    ("dev-zero", "/dev/zero", NOT_AN_IMAGE),
    ("empty-image", "{d}/zero.img", "{P}: image is 0 bytes, smaller than one 512-byte sector"),
    ("511-bytes", "{d}/511.img", "{P}: image is 511 bytes, smaller than one 512-byte sector"),
    ("symlink-dangling", "{d}/dangling", "{P}: no such file or block device"),
    ("symlink-loop", "{d}/loop-a", "{P}: cannot open: Too many levels of symbolic links"),
    ("symlink-to-directory", "{d}/to-dir", NOT_AN_IMAGE),
    ("symlink-to-char-device", "{d}/to-zero", NOT_AN_IMAGE),
    ("relative", "rel/disk.img", "'rel/disk.img' is not an absolute path"),
    ("dot-dot", "{d}/dir/../zero.img", "{P}: image is 0 bytes"),
    ("dot-dot-relative", "../../etc/passwd", "'../../etc/passwd' is not an absolute path"),
    ("space", "{d}/a b.img", "{P}: image is 511 bytes"),
    ("colon", "{d}/a:b.img", "{P}: image is 511 bytes"),
    ("newline", "{d}/new\nline.img", "{P}: image is 511 bytes"),
    ("non-utf8", "{d}/caf\udcff.img", "{P}: image is 511 bytes"),
    ("name-too-long", "/" + "x" * 300, "{P}: cannot open: File name too long"),
]


def _path_cases():
    for script, (form, mode) in PATH_TYPES.items():
        for name, path, words in PATH_PROBLEMS:
            yield Case(f"{script}-{name}", script, form.replace("{p}", path),
                       (words.replace("{P}", shown(path)),), mode=mode)


def shown(text):
    """text as a hotplug-error shows it: control characters and bytes that
    are not UTF-8 escaped, on one line."""
    return re.sub(r"[\udc80-\udcff]", lambda m: f"\\x{ord(m.group()) - 0xdc00:02x}", text.replace("\n", "\\n"))


USAGE = ("usage:",)
ROW = "{d}/ok.img"  # a good image, for rows whose mistake is elsewhere

# Each type's own target forms, the backend nodes, the command line and
# environment, the config file.
OWN_CASES = [
    # Swapped between check and use: the add must judge (and would bind) the
    # inode it opened, whatever the link names afterwards.
    Case("file-symlink-swapped-after-its-open", "file", "{d}/swap", ("{d}/swap: image is 511 bytes",),
         swap=("{d}/swap", "ok.img")),
    Case("file-blank", "file", "   ", ("empty target: give the path of an image file or block device",)),
    Case("file-read-only-file-for-writing", "file", "{d}/ro.img", mode="w",
         words=("{d}/ro.img: file is read-only (mode 0444); use access=r",)),
    Case("file-symlink-to-read-only-block-device-for-writing", "file", "{d}/to-rodev", mode="w",
         words=("{d}/to-rodev: block device is read-only; use access=r",)),

    Case("part-blank", "part", "  ", ("empty target: give the image's path, then the partition number",)),
    Case("part-no-number", "part", ROW, ("target '{d}/ok.img' names no partition",)),
    Case("part-number-a-word", "part", ROW + " x", ("partition number 'x' is not a number",)),
    Case("part-number-a-fraction", "part", ROW + " 1.5", ("partition number '1.5' is not a number",)),
    Case("part-number-zero", "part", ROW + " 0", ("partition number 0: partitions are numbered from 1",)),
    Case("part-number-negative", "part", ROW + " -1", ("partition number -1: partitions are numbered from 1",)),
    Case("part-number-huge", "part", ROW + " 99999999999999999999",
         ("partition number 99999999999999999999: Linux numbers partitions only up to 255",)),
    Case("part-no-partition-table", "part", ROW + " 1", ("{d}/ok.img: no partition table",)),

    Case("cow-blank", "cow", "  ", ("empty target: give the base image's path",), mode="w"),
    Case("cow-size-not-a-size", "cow", ROW + " 12Q", ("the store's size: '12Q' is not a size",), mode="w"),
    Case("cow-size-fraction", "cow", ROW + " 1.5G", ("'1.5G' is not a size",), mode="w"),
    Case("cow-size-zero", "cow", ROW + " 0", ("the store's size: a size of zero",), mode="w"),
    Case("cow-size-above-the-maximum", "cow", ROW + " 65G",
         ("a store of 65G asked for {d}/ok.img: the most the config allows is 64G ([cow] max_size)",), mode="w"),
    Case("cow-size-huge", "cow", ROW + " 99999999999999999999T", ("the most the config allows is 64G",), mode="w"),

    Case("snapshot-no-colon", "snapshot", ROW, ("target '{d}/ok.img': expected <base>:<cow>",), mode="w"),
    Case("snapshot-cow-relative", "snapshot", ROW + ":cows/a.cow", ("expected <base>:<cow>",), mode="w"),
    Case("snapshot-no-base", "snapshot", ":{d}/cows/a.cow", ("no base image before the colon",), mode="w"),
    Case("snapshot-cow-a-directory", "snapshot", ROW + ":{d}/cows/", ("'{d}/cows/' names a directory",), mode="w"),
    Case("snapshot-cow-dot-dot", "snapshot", ROW + ":{d}/cows/..", ("'{d}/cows/..' names a directory",), mode="w"),
    Case("snapshot-read-only-mode", "snapshot", ROW + ":{d}/cows/a.cow",
         ("{d}/cows/a.cow: block-snapshot disks are read-write (access=w)",)),
    Case("snapshot-cow-directory-missing", "snapshot", ROW + ":{d}/nodir/a.cow",
         ("{d}/nodir: no such directory, for the CoW file a.cow",), mode="w"),
    Case("snapshot-cow-directory-a-file", "snapshot", ROW + ":{d}/ok.img/a.cow",
         ("{d}/ok.img: not a directory, so it cannot hold the CoW file a.cow",), mode="w"),
    Case("snapshot-cow-a-fifo", "snapshot", ROW + ":{d}/fifo",
         ("{d}/fifo: not a regular file; a CoW file must be one",), mode="w"),
    Case("snapshot-cow-dev-zero", "snapshot", ROW + ":/dev/zero",
         ("/dev/zero: not a regular file; a CoW file must be one",), mode="w"),
    Case("snapshot-cow-a-symlink", "snapshot", ROW + ":{d}/to-cow",
         ("{d}/to-cow: is a symbolic link; a CoW file must be a regular file",), mode="w"),
    Case("snapshot-cow-not-ours", "snapshot", ROW + ":{d}/plain.img",
         ("{d}/plain.img: not a xenblock CoW file",), mode="w", writes=("{d}/plain.img",)),
    Case("snapshot-cow-of-511-bytes", "snapshot", ROW + ":{d}/511.img",
         ("{d}/511.img: ",), mode="w", writes=("{d}/511.img",)),
    Case("snapshot-cow-read-only", "snapshot", ROW + ":{d}/ro.img",
         ("{d}/ro.img: CoW file is read-only (mode 0444)",), mode="w"),

    Case("tap-no-format", "tap", ROW, ("target '{d}/ok.img' names no format",)),
    Case("tap-unknown-format", "tap", "qed:" + ROW, ("unknown format 'qed'",)),
    Case("tap-empty-format", "tap", ":" + ROW, ("unknown format ''",)),
    Case("tap-no-path", "tap", "qcow2:", ("empty target",)),
    Case("tap-raw-image-named-qcow2", "tap", "qcow2:" + ROW, ("{d}/ok.img: not a valid qcow2 image",)),
    Case("tap-block-device-named-vhd", "tap", "vhd:{rodev}", ("{rodev}: a block device, not a vhd image file",)),
    Case("tap-raw-fifo", "tap", "raw:{d}/fifo", ("{d}/fifo: not an image file or block device",)),

    Case("nbd-blank", "nbd", "  ", ("empty target: give <host>:<port>[/<export>]",)),
    Case("nbd-no-host", "nbd", ":10809/disk", ("target ':10809/disk' names no host",)),
    Case("nbd-port-out-of-range", "nbd", "127.0.0.1:65536", ("'65536' is not a TCP port",)),
    Case("nbd-port-not-a-number", "nbd", "127.0.0.1:nbd/disk", ("'nbd' is not a TCP port",)),
    Case("nbd-ipv6-without-brackets", "nbd", "::1:10809", ("an IPv6 address goes in brackets: [::1:10809]",)),
    Case("nbd-ipv6-unclosed", "nbd", "[::1:10809", ("an unclosed or malformed [IPv6 address]",)),
    Case("nbd-three-words", "nbd", "127.0.0.1 10809 disk", ("target '127.0.0.1 10809 disk': give",)),
    Case("nbd-nothing-listens", "nbd", "127.0.0.1:1/disk",
         ("nbd://127.0.0.1:1/disk: cannot connect to the NBD server: Connection refused",), vm=True),
    Case("nbd-no-such-export", "nbd", "127.0.0.1:{nbd}/nothing",
         ("nbd://127.0.0.1:{nbd}/nothing: the NBD server refused the export: no such export",)),
    Case("nbd-read-only-export-written", "nbd", "127.0.0.1:{nbd}/ro",
         ("nbd://127.0.0.1:{nbd}/ro: the NBD server exports it read-only; give the disk mode r",), mode="w"),
    Case("nbd-old-form-and-no-default-export", "nbd", "127.0.0.1 {nbd}",
         ("no such export", "(no export was named: give <host>:<port>/<export>)")),
    Case("lvsnap-blank", "lvsnap", "  ", ("expected <vg>/<lv> [<size>]",), mode="w"),
    Case("lvsnap-no-slash", "lvsnap", "vg0", ("target 'vg0': expected <vg>/<lv>",), mode="w"),
    Case("lvsnap-three-parts", "lvsnap", "vg0/lv/x", ("expected <vg>/<lv>",), mode="w"),
    Case("lvsnap-device-path", "lvsnap", "/dev/vg0/lv", ("expected <vg>/<lv>",), mode="w"),
    Case("lvsnap-name-starting-with-a-dash", "lvsnap", "-vg/lv", ("expected <vg>/<lv>",), mode="w"),
    Case("lvsnap-size-not-a-size", "lvsnap", "vg0/lv 8X", ("the snapshot's size: '8X' is not a size",), mode="w"),
    Case("lvsnap-size-zero", "lvsnap", "vg0/lv 0", ("a size of zero",), mode="w"),
    Case("lvsnap-read-only-mode", "lvsnap", "vg0/lv 8M", ("vg0/lv: block-lvsnap disks are read-write",)),
    Case("lvsnap-no-such-volume-group", "lvsnap", "{vg}missing/orig 8M", ("volume group {vg}missing not found",),
         mode="w", needs=frozenset({"lvm"})),
    Case("lvsnap-no-such-volume", "lvsnap", "{vg}/missing 8M",
         ("{vg}/missing: no such logical volume in volume group {vg}",), mode="w", needs=frozenset({"lvm"})),
    Case("lvsnap-classic-origin-without-size", "lvsnap", "{vg}/orig",
         ("{vg}/orig is a classic (thick) volume: give the snapshot's size",), mode="w", needs=frozenset({"lvm"})),
    Case("lvsnap-size-above-the-volume-groups-free-space", "lvsnap", "{vg}/orig 9999T",
         ("a snapshot of 9999T asked for, volume group {vg} has",), mode="w", needs=frozenset({"lvm"})),
    Case("lvsnap-thin-origin-with-size", "lvsnap", "{vg}/torig 8M", ("{vg}/torig is a thin volume",), mode="w",
         needs=frozenset({"lvm"})),
    # (A user's LV of our snapshot's name: test_block_lvsnap_xl, which makes one for it.)

    # The backend nodes libxl writes, missing, empty or absurd.
    Case("params-missing", "file", None, ("{key}/params is missing: the disk has no target",)),
    Case("params-empty", "file", b"", ("empty target",)),
    Case("params-newlines-only", "file", "\n\n", ("empty target",)),
    Case("params-with-a-nul-byte", "file", b"/etc/passwd\0/tmp/x", ("{key}/params", "NUL"), vm=True),
    Case("params-not-utf8", "file", "{d}/caf\udcff.img", ("{d}/caf\\xff.img: image is 511 bytes",), vm=True),
    Case("mode-absurd", "file", ROW, ("{key}/mode is 'x': expected w or r",), mode="x"),
    Case("mode-both", "file", ROW, ("{key}/mode is 'rw': expected w or r",), mode="rw"),
    Case("mode-only-bang", "file", ROW, ("{key}/mode is '!': expected w or r",), mode="!"),
    Case("mode-empty-for-a-read-write-type", "snapshot", ROW + ":{d}/cows/a.cow",
         ("block-snapshot disks are read-write (access=w)",), mode=""),
    Case("mode-missing-for-a-read-write-type", "snapshot", ROW + ":{d}/cows/a.cow",
         ("block-snapshot disks are read-write (access=w)",), mode=None),
    Case("frontend-id-a-word", "file", ROW, ("{key}/frontend-id is 'dom1': expected a domain id",),
         nodes=(("frontend-id", "dom1"),)),
    Case("frontend-id-negative", "file", ROW, ("{key}/frontend-id is '-1': expected a domain id",),
         nodes=(("frontend-id", "-1"),)),
    Case("frontend-id-huge", "file", ROW, ("{key}/frontend-id is '99999999999999999999': expected a domain id",),
         nodes=(("frontend-id", "99999999999999999999"),)),
    Case("frontend-id-empty", "file", ROW, ("{key}/frontend-id is '': expected a domain id",),
         nodes=(("frontend-id", b""),)),

    # The command line and the environment.
    Case("command-unknown", "file", ROW, USAGE, command="bogus", said_in="stderr"),
    Case("command-empty", "file", ROW, USAGE, command="", said_in="stderr"),
    Case("xenbus-path-missing", "file", ROW, USAGE, env=(("XENBUS_PATH", None),), said_in="stderr"),
    Case("xenbus-path-empty", "file", ROW, USAGE, env=(("XENBUS_PATH", ""),), said_in="stderr"),
    Case("xenbus-path-root", "file", ROW, USAGE, env=(("XENBUS_PATH", "/"),), said_in="stderr"),
    Case("xenbus-path-nowhere", "file", ROW,
         ("{key}/nowhere/params is missing", "could not write hotplug-error: {key}/nowhere is not in xenstore"),
         env=(("XENBUS_PATH", "{key}/nowhere"),), said_in="stderr"),
    Case("xenbus-path-invalid", "file", ROW, ("{key}//x",), env=(("XENBUS_PATH", "{key}//x"),), said_in="stderr"),
    Case("debug-switch-absurd", "file", ROW, ("XENBLOCK_DEBUG in the environment: 'maybe': expected yes or no",),
         env=(("XENBLOCK_DEBUG", "maybe"),)),

    # The config file, with every kind of mistake.
    Case("config-unknown-section", "file", ROW, ("{config} line ", "unknown section [genral]"),
         config="{base}\n[genral]\n"),
    Case("config-unknown-setting", "file", ROW, ("unknown setting 'debgu' in [general]",),
         config="{base}\n[general]\ndebgu = yes\n"),
    Case("config-setting-before-any-section", "file", ROW,
         ("{config} line 1: expected `name = value` under a [section], not 'debug = yes'",),
         config="debug = yes\n{base}"),
    Case("config-line-without-equals", "file", ROW, ("expected `name = value` under a [section], not 'debug'",),
         config="{base}\n[general]\ndebug\n"),
    Case("config-flag-not-yes-or-no", "file", ROW, ("'maybe': expected yes or no",),
         config="{base}\n[file]\ndirect_io = maybe\n"),
    Case("config-relative-path", "file", ROW, ("'var/cow': expected an absolute path",),
         config="{base}\n[cow]\ndirectory = var/cow\n"),
    Case("config-size-not-a-size", "file", ROW, ("'1.5G' is not a size",), config="{base}\n[cow]\nsize = 1.5G\n"),
    Case("config-size-zero", "file", ROW, ("a size of zero",), config="{base}\n[cow]\nmax_size = 0\n"),
    Case("config-percentage-without-percent", "file", ROW, ("expected a percentage, such as 80%",),
         config="{base}\n[general]\nfill_warning = 0.8\n"),
    Case("config-percentage-out-of-range", "file", ROW, ("above 0% and at most 100%",),
         config="{base}\n[general]\nfill_warning = 150%\n"),
    Case("config-origins-not-vg-lv", "file", ROW, ("expected origins as <vg>/<lv>",),
         config="{base}\n[lvsnap]\nkeep_origins = /dev/vg0/lv\n"),
    Case("config-a-directory", "file", ROW, ("{d}/dir: cannot read: Is a directory",),
         env=(("XENBLOCK_CONFIG", "{d}/dir"),)),
    Case("config-not-utf8", "file", ROW, ("{config}", "UTF-8"), config="{base}\n# caf\udcff\n"),
]

CASES = list(_path_cases()) + OWN_CASES
HOST_CASES = [case for case in CASES if not case.needs]
VM_CASES = [case for case in CASES if case.needs or case.vm]


# -- the scene ----------------------------------------------------------------

class Scene:
    """A directory of prepared oddities ({d}): good and read-only images,
    images of 0 and 511 bytes (also under names with a space, a colon, a
    newline and a byte that is not UTF-8), a directory, a FIFO, a socket,
    symlinks (dangling, a loop, to a directory, to /dev/zero, to a
    read-only block device), an empty directory for CoW files."""

    def __init__(self, root, stack):
        self.d = str(root)
        os.mkdir(root)
        for name in ("dir", "cows"):
            os.mkdir(root / name)
        self._file("ok.img", 4 << 20)
        self._file("plain.img", 4 << 20)
        self._file("ro.img", 4 << 20, mode=0o444)
        self._file("zero.img", 0)
        for name in ("511.img", "a b.img", "a:b.img", "new\nline.img", "caf\udcff.img"):
            self._file(name, 511)
        os.mkfifo(root / "fifo")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(root / "sock"))
        for name, to in (("swap", "511.img"), ("dangling", "nothing"), ("loop-a", "loop-b"), ("loop-b", "loop-a"), ("to-dir", "dir"),
                         ("to-zero", "/dev/zero"), ("to-cow", "plain.img")):
            os.symlink(to, root / name)
        self._stack = stack
        self._rodev = None
        self._nbd = None

    def _file(self, name, size, mode=0o644):
        path = os.path.join(self.d, name)
        with open(path, "wb") as f:
            f.write(b"xenblock hostile input"[:size])
            f.truncate(size)
        os.chmod(path, mode)

    @property
    def rodev(self):
        """A read-only loop device over ok.img (not xenblock's), made on first use."""
        if self._rodev is None:
            self._rodev = self._stack.enter_context(foreign_loop(os.path.join(self.d, "ok.img"), read_only=True))
            os.symlink(self._rodev, os.path.join(self.d, "to-rodev"))
        return self._rodev

    @property
    def nbd(self):
        """The port of an nbd-server serving the scene's images, started on first use."""
        if self._nbd is None:
            exports = {"disk": (os.path.join(self.d, "ok.img"), False), "ro": (os.path.join(self.d, "ro.img"), True)}
            self._nbd = str(self._stack.enter_context(nbd_server.serving(self.d + "-nbd-server", exports)))
        return self._nbd

    def state(self):
        """Everything in the scene: name -> (type and mode, size, mtime)."""
        found = {}
        for directory, subdirectories, files in os.walk(self.d):
            for name in subdirectories + files:
                st = os.lstat(os.path.join(directory, name))
                found[os.path.join(directory, name)] = (st.st_mode, st.st_size, st.st_mtime_ns)
        return found


@contextlib.contextmanager
def scene(tmp_path):
    with contextlib.ExitStack() as stack:
        yield Scene(tmp_path / "scene", stack)


# -- running a case -----------------------------------------------------------

# What a run could change a file with: opens (checked for write flags) and
# every call that makes, removes, renames or changes one.
TRACED = ("open,openat,creat,truncate,ftruncate,fallocate,unlink,unlinkat,rename,renameat,renameat2,mkdir,"
          "mkdirat,mknodat,symlinkat,linkat,fchmodat,fchownat,utimensat")
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_TMPFILE")


def run(case, driver, where, tmp_path, vg=None):
    """Run case against driver in the scene where; assert everything the
    module's doc promises. Returns the error text."""
    fill = _Filler(where, tmp_path, vg)
    key = driver.backend(ROW.replace("{d}", where.d), mode=case.mode or "r", script=f"block-{case.script}",
                         omit=("params",) + (("mode",) if case.mode is None else ()))
    fill.values["{key}"] = key
    _write_nodes(case, driver, key, fill)
    env = _environment(case, driver, tmp_path, fill)
    nodes, state, objects, files = driver.children(key), where.state(), inventory.kernel_objects(), driver.state_files()
    trace = tmp_path / "trace"
    wrapper = ["strace", "-f", "-qq", "--seccomp-bpf", "-y", "-o", str(trace), "-e", f"trace={TRACED}"]
    if case.swap:
        result = _run_swapping(case, driver, key, env, wrapper, fill)
    else:
        result = driver.run(case.command, key, script=f"block-{case.script}", env=env, wrapper=wrapper)
    assert result.returncode == 1, (result.returncode, result.stderr)
    error = _said(case, driver, key, result, fill)
    assert driver.children(key) == sorted(set(nodes) | ({"hotplug-error", "hotplug-status"}
                                                        if case.said_in == "hotplug-error" else set()))
    assert driver.state_files() == files, "a record, lock or marker left"
    assert inventory.kernel_objects() == objects, "a device left"
    after, swapped = where.state(), {fill(case.swap[0])} if case.swap else set()
    assert {path for path in state.keys() | after.keys() if state.get(path) != after.get(path)} <= swapped, \
        "the scene changed"
    allowed = [fill(path) for path in case.writes]
    assert _writes(trace.read_text(errors="replace"), where, allowed) == [], "opened for writing"
    return error


# How long the add is held at the link's first open (strace's delay_exit);
# the swap happens as soon as the open is seen.
WINDOW_US = 1_000_000


def _run_swapping(case, driver, key, env, wrapper, fill):
    """driver.run, the link case.swap names re-pointed while the add holds
    its first open of it (strace -P: only that link's calls are traced)."""
    link, new_target = fill(case.swap[0]), case.swap[1]
    opened = os.path.realpath(link)
    delayed = [*wrapper, "-P", link, "-e", f"inject=openat:delay_exit={WINDOW_US}:when=1"]
    result = []
    runner = threading.Thread(target=lambda: result.append(
        driver.run(case.command, key, script=f"block-{case.script}", env=env, wrapper=delayed)))
    runner.start()
    deadline = time.monotonic() + 20
    while not opened_by_someone(opened):
        assert time.monotonic() < deadline and runner.is_alive(), "the window never opened"
        time.sleep(0.01)
    os.symlink(new_target, link + ".new")
    os.replace(link + ".new", link)
    runner.join()
    return result[0]


class _Filler:
    """fill(text): text with the placeholders of this run filled in."""

    def __init__(self, where, tmp_path, vg):
        self.values = {"{d}": where.d, "{config}": str(tmp_path / "hostile.conf"), "{vg}": vg or "{vg}"}
        self.where = where

    def __call__(self, text):
        if "{rodev}" in text or "to-rodev" in text:
            self.values["{rodev}"] = self.where.rodev
        if "{nbd}" in text:
            self.values["{nbd}"] = self.where.nbd
        for name, value in self.values.items():
            text = text.replace(name, value)
        return text


def _write_nodes(case, driver, key, fill):
    if case.target is not None:
        target = case.target if isinstance(case.target, bytes) else os.fsencode(fill(case.target))
        driver.write_unchecked(f"{key}/params", target)
    for name, value in case.nodes:
        if value is None:
            driver.delete(f"{key}/{name}")
        else:
            driver.write_unchecked(f"{key}/{name}", value)


def _environment(case, driver, tmp_path, fill):
    env = {name: (None if value is None else fill(value)) for name, value in case.env}
    if case.config is not None:
        base = driver.env.get("XENBLOCK_CONFIG", "/etc/xenblock/xenblock.conf")
        with open(base) as f:
            text = case.config.replace("{base}", f.read())
        with open(fill("{config}"), "wb") as f:
            f.write(os.fsencode(text))
        env["XENBLOCK_CONFIG"] = fill("{config}")
    return env


def _said(case, driver, key, result, fill):
    """The error as the case says it is told; asserted to hold its words."""
    words = [fill(word) for word in case.words]
    lines = [line for line in result.stderr.splitlines() if not line.startswith("strace: ")]  # -P's notes
    if case.said_in == "stderr":
        assert driver.read(f"{key}/hotplug-error") is None
        for word in words:
            assert word in result.stderr, (word, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        return result.stderr
    error = driver.read(f"{key}/hotplug-error")
    assert error is not None, result.stderr
    for word in words:
        assert word in error, (word, error)
    assert driver.read(f"{key}/hotplug-status") == "error"
    assert driver.read(f"{key}/physical-device") is None
    # One line said, in xenstore and in the log (which the script copies to
    # stderr when stderr is not the log): no traceback, no second line.
    assert "\n" not in error
    assert len(lines) == 1 and lines[0].endswith(f": failed: {error}"), result.stderr
    return error


def _writes(trace, where, allowed):
    """The traced calls that opened for writing, or changed, something the
    scene holds (or /dev/zero, or the read-only device) and are not allowed."""
    guarded = [where.d, os.path.realpath(where.d), "/dev/zero"] + ([where._rodev] if where._rodev else [])
    found = []
    for line in trace.splitlines():
        call = line.split(None, 1)[-1]
        if not any(path in call for path in guarded):
            continue
        is_open = re.match(r"(open|openat|creat)\(", call)
        if is_open and not any(flag in call for flag in WRITE_FLAGS):
            continue
        if any(path in call for path in allowed):
            continue
        if " = -1 " in call and is_open:
            continue  # an open that failed opened nothing
        found.append(call)
    return found
