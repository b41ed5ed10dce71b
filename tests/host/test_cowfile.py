"""The CoW file of block-snapshot: its header, its checks, how it is made.
Plain files only (no device-mapper on the host tier)."""
import errno
import fcntl
import os
import re
import shutil
import stat
import subprocess
import sys
import time

import pytest

from xenblock import blockdev, cowfile
from xenblock.cowfile import HEADER_SIZE, SNAP_HEADER, SNAP_MAGIC
from xenblock.errors import HotplugError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHUNK = 16 << 10
BASE_SIZE = 8 << 20
NAME = "disk.cow"


@pytest.fixture
def directory(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base.img"
    with open(path, "wb") as f:
        f.truncate(BASE_SIZE)
        f.write(b"the base's first sector")
    return str(path)


def identity_of(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return cowfile.base_identity(fd, os.fstat(fd), path)
    finally:
        os.close(fd)


@pytest.fixture
def made(directory, base, tmp_path):
    """A CoW file for base, closed; its path."""
    identity = identity_of(base)
    os.close(cowfile.create(directory, NAME, identity, cowfile.store_size_for(identity["size"], CHUNK)))
    return str(tmp_path / NAME)


def check(path, base_path):
    fd = os.open(path, os.O_RDONLY)
    try:
        cowfile.check(fd, identity_of(base_path), path)
    finally:
        os.close(fd)


def refused(path, base_path, words):
    with pytest.raises(HotplugError, match=words) as raised:
        check(path, base_path)
    assert "\n" not in str(raised.value)
    return str(raised.value)


def poke(path, offset, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


# -- round trip -----------------------------------------------------------------

def test_made_file_passes_its_check_and_has_the_layout(made, base, directory):
    check(made, base)
    st = os.stat(made)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == cowfile.store_size_for(BASE_SIZE, CHUNK)
    with open(made, "rb") as f:
        head = f.read(HEADER_SIZE + 4096)
    assert head.startswith(cowfile.MAGIC)
    assert head[HEADER_SIZE:] == bytes(4096), "dm must find a new (zero) store"
    fd = cowfile.open_existing(directory, NAME)
    try:
        assert cowfile.recorded_identity(fd, made) == identity_of(base)
        assert os.fstat(fd).st_ino == st.st_ino
    finally:
        os.close(fd)


def test_header_is_canonical_json_with_its_crc(made, base):
    import json
    import zlib
    with open(made, "rb") as f:
        fixed = f.read(cowfile.FIXED.size)
        magic, version, length, crc = cowfile.FIXED.unpack(fixed)
        text = f.read(length)
    assert (magic, version) == (cowfile.MAGIC, 1)
    assert zlib.crc32(text) == crc
    assert text == json.dumps({"base": identity_of(base)}, sort_keys=True, separators=(",", ":")).encode()


def test_read_only_open_checks_too(made, base, directory):
    fd = cowfile.open_existing(directory, NAME, writable=False)
    try:
        assert os.fstat(fd).st_size > HEADER_SIZE
        with pytest.raises(OSError):
            os.write(fd, b"x")
        cowfile.check(fd, identity_of(base), made)
    finally:
        os.close(fd)


def test_a_store_the_kernel_started_passes(made, base):
    poke(made, HEADER_SIZE, SNAP_HEADER.pack(SNAP_MAGIC, 1, 1, CHUNK // 512))
    check(made, base)


# -- refusals -------------------------------------------------------------------

def test_someone_elses_file_is_not_ours(tmp_path, base):
    path = tmp_path / "other.cow"
    path.write_bytes(b"QFI\xfb" + bytes(HEADER_SIZE * 2))
    refused(str(path), base, r"not a xenblock CoW file .*was it made by something else\?")
    empty = tmp_path / "empty.cow"
    empty.write_bytes(b"")
    refused(str(empty), base, "not a xenblock CoW file")


def test_unknown_format_version(made, base):
    poke(made, 16, (7).to_bytes(4, "little"))
    refused(made, base, "format version 7, this xenblock knows only version 1")


@pytest.mark.parametrize("offset", [cowfile.FIXED.size + 3, 24])
def test_corrupt_header_is_refused(made, base, offset):
    """A flipped byte in the JSON, or in the CRC itself."""
    with open(made, "rb") as f:
        f.seek(offset)
        byte = f.read(1)[0]
    poke(made, offset, bytes([byte ^ 0x20]))
    refused(made, base, r"header is corrupt \(checksum mismatch\)")


def test_length_past_the_header_is_corrupt(made, base):
    poke(made, 20, (HEADER_SIZE).to_bytes(4, "little"))
    refused(made, base, "header is corrupt")


def test_base_replaced_by_another_file_of_the_same_size(made, base, tmp_path):
    old_inode = os.stat(base).st_ino
    other = tmp_path / "other.img"
    shutil.copyfile(base, other)
    os.replace(other, base)
    new_inode = os.stat(base).st_ino
    assert os.path.getsize(base) == BASE_SIZE and new_inode != old_inode
    message = refused(made, base, "made for another base")
    assert f"inode {old_inode}" in message and f"this base is file with inode {new_inode}" in message


def recheck(path, recorded, current):
    """check() of path after its header was rewritten to record recorded."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, cowfile._encode(recorded), 0)
        cowfile.check(fd, current, path)
    finally:
        os.close(fd)


def test_base_on_another_file_system_names_both_uuids(made, base):
    now = dict(identity_of(base), fs_uuid="66666666-7777-4888-9999-000000000000")
    recorded = dict(now, fs_uuid="11111111-2222-3333-4444-555555555555")
    with pytest.raises(HotplugError, match=r"made for another base \(file with inode \d+ on file system "
                                           r"11111111-2222-3333-4444-555555555555\); this base is file with "
                                           r"inode \d+ on file system 66666666-7777-4888-9999-000000000000"):
        recheck(made, recorded, now)


def test_uuid_found_on_one_side_only_does_not_count(made, base):
    """A kernel upgrade (FS_IOC_GETFSUUID) or a udev entry not there yet."""
    with_uuid = dict(identity_of(base), fs_uuid="11111111-2222-3333-4444-555555555555")
    without = dict(with_uuid, fs_uuid=None)
    recheck(made, without, with_uuid)
    recheck(made, with_uuid, without)
    with pytest.raises(HotplugError, match="another base"):
        recheck(made, without, dict(with_uuid, inode=with_uuid["inode"] + 1))


def test_file_cow_refused_for_a_device_base(made, base):
    fd = os.open(made, os.O_RDONLY)
    try:
        device = {"type": "device", "id": "dm:LVM-abc", "size": BASE_SIZE}
        with pytest.raises(HotplugError, match=r"another base \(file with inode .*this base is block device "
                                               r"dm:LVM-abc"):
            cowfile.check(fd, device, made)
    finally:
        os.close(fd)


def test_base_written_in_place(made, base):
    time.sleep(0.05)  # past the file system's timestamp granularity
    poke(base, 4096, b"a write that bypassed the snapshot")
    refused(made, base, r"the base was modified since this CoW file was made; its contents no longer match "
                        r"\(mtime was .* UTC, is .*; ctime was")


def test_mtime_put_back_is_still_caught_by_ctime(made, base):
    before = os.stat(base)
    time.sleep(0.05)
    poke(base, 4096, b"changed")
    os.utime(base, ns=(before.st_atime_ns, before.st_mtime_ns))  # as touch -r or rsync -t would
    message = refused(made, base, "modified since")
    assert "mtime was" not in message and "ctime was" in message


def test_base_resized(made, base):
    os.truncate(base, BASE_SIZE * 2)
    refused(made, base, f"size was {BASE_SIZE} bytes, is {BASE_SIZE * 2}")


def test_reading_the_base_changes_nothing(made, base):
    with open(base, "rb") as f:
        f.read()
    assert identity_of(base) == identity_of(base)
    check(made, base)


@pytest.mark.parametrize("header, words", [
    (SNAP_HEADER.pack(SNAP_MAGIC, 0, 1, 32), r"kernel marked this CoW file's snapshot store invalid .*remove it"),
    (SNAP_HEADER.pack(0x12345678, 1, 1, 32), "snapshot store after the header is corrupt"),
    (SNAP_HEADER.pack(SNAP_MAGIC, 1, 2, 32), "snapshot store has version 2"),
    (SNAP_HEADER.pack(SNAP_MAGIC, 1, 1, 24), "chunk size of 24 sectors"),
])
def test_store_the_kernel_cannot_use(made, base, header, words):
    poke(made, HEADER_SIZE, header)
    refused(made, base, words)


def test_truncated_file_is_too_small(made, base):
    os.truncate(made, HEADER_SIZE)
    refused(made, base, rf"is {HEADER_SIZE} bytes, too small .*was it truncated\?")


def test_too_small_for_the_store_chunk_size(made, base):
    poke(made, HEADER_SIZE, SNAP_HEADER.pack(SNAP_MAGIC, 1, 1, CHUNK // 512))
    os.truncate(made, HEADER_SIZE + 2 * CHUNK)
    check(made, base)  # header chunk and one metadata area: the least dm needs
    os.truncate(made, HEADER_SIZE + 2 * CHUNK - 512)
    refused(made, base, f"at least {2 * CHUNK} bytes")


# -- opening --------------------------------------------------------------------

def test_missing_file_opens_as_none(directory):
    assert cowfile.open_existing(directory, NAME) is None


def test_planted_symlink_is_refused(directory, tmp_path, base):
    victim = tmp_path / "victim"
    victim.write_bytes(b"not to be touched")
    os.symlink(victim, tmp_path / NAME)
    with pytest.raises(HotplugError, match=rf"{NAME}: is a symbolic link; a CoW file must be a regular file"):
        cowfile.open_existing(directory, NAME)
    with pytest.raises(HotplugError, match="appeared while the CoW file was being made"):
        cowfile.create(directory, NAME, identity_of(base), cowfile.store_size_for(BASE_SIZE, CHUNK))
    assert victim.read_bytes() == b"not to be touched"
    assert os.path.islink(tmp_path / NAME)


def test_fifo_is_refused_without_blocking(directory, tmp_path):
    os.mkfifo(tmp_path / NAME)
    with pytest.raises(HotplugError, match="not a regular file"):
        cowfile.open_existing(directory, NAME)


@pytest.mark.parametrize("name", ["", ".", "..", "sub/disk.cow"])
def test_names_with_a_path_are_refused(directory, name):
    with pytest.raises(ValueError):
        cowfile.open_existing(directory, name)
    with pytest.raises(ValueError):
        cowfile.create(directory, name, {}, HEADER_SIZE * 2)


# -- making ---------------------------------------------------------------------

def no_tmpfile(monkeypatch):
    """The file system as one without O_TMPFILE (NFS, for one)."""
    def refuse(directory_fd):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    monkeypatch.setattr(cowfile, "_open_nameless", refuse)


@pytest.fixture(params=["O_TMPFILE", "temporary name"])
def way(request, monkeypatch):
    if request.param == "temporary name":
        no_tmpfile(monkeypatch)
    return request.param


def test_both_ways_make_the_same_file_and_leave_nothing_else(way, directory, base, tmp_path):
    identity = identity_of(base)
    fd = cowfile.create(directory, NAME, identity, cowfile.store_size_for(BASE_SIZE, CHUNK))
    try:
        cowfile.check(fd, identity, NAME)
        assert os.fstat(fd).st_nlink == 1
        other = os.open(tmp_path / NAME, os.O_RDONLY)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no lock of ours left on it
        finally:
            os.close(other)
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == ["base.img", NAME]


def test_existing_name_is_never_overwritten(way, directory, base, tmp_path):
    (tmp_path / NAME).write_bytes(b"someone's data")
    with pytest.raises(HotplugError, match=f"{tmp_path}/{NAME}: appeared while the CoW file was being made"):
        cowfile.create(directory, NAME, identity_of(base), cowfile.store_size_for(BASE_SIZE, CHUNK))
    assert (tmp_path / NAME).read_bytes() == b"someone's data"
    assert sorted(os.listdir(tmp_path)) == ["base.img", NAME]


def test_name_appearing_meanwhile_is_never_overwritten(way, directory, base, tmp_path, monkeypatch):
    fill = cowfile._fill

    def fill_then_race(fd, *args):
        fill(fd, *args)
        (tmp_path / NAME).write_bytes(b"made meanwhile")
    monkeypatch.setattr(cowfile, "_fill", fill_then_race)
    with pytest.raises(HotplugError, match="appeared while the CoW file was being made; left as it is"):
        cowfile.create(directory, NAME, identity_of(base), cowfile.store_size_for(BASE_SIZE, CHUNK))
    assert (tmp_path / NAME).read_bytes() == b"made meanwhile"
    assert sorted(os.listdir(tmp_path)) == ["base.img", NAME]


def test_sparse_leaves_the_store_a_hole_reserved_allocates_it(directory, base):
    identity = identity_of(base)
    size = cowfile.store_size_for(BASE_SIZE, CHUNK)
    sparse = cowfile.create(directory, "sparse.cow", identity, size)
    reserved = cowfile.create(directory, "reserved.cow", identity, size, sparse=False)
    try:
        for fd in (sparse, reserved):
            assert os.fstat(fd).st_size == size
            assert os.pread(fd, 1 << 20, HEADER_SIZE) == bytes(1 << 20)
            cowfile.check(fd, identity, "cow")
        assert os.fstat(sparse).st_blocks * 512 <= 64 << 10  # the header's block or so
        assert os.fstat(reserved).st_blocks * 512 >= size - HEADER_SIZE
    finally:
        os.close(sparse)
        os.close(reserved)


def test_no_room_is_an_error_naming_the_file(directory, base, tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(HotplugError, match=f"{tmp_path}/{NAME}: cannot write a new CoW file of .*"
                                           "No space left on device"):
        cowfile.create(directory, NAME, identity_of(base), free + (1 << 40), sparse=False)
    assert sorted(os.listdir(tmp_path)) == ["base.img"]


def test_temporaries_of_killed_runs_are_swept_live_ones_kept(directory, base, tmp_path, monkeypatch):
    no_tmpfile(monkeypatch)
    prefix = cowfile._temporary_prefix(NAME)
    (tmp_path / f"{prefix}dead").write_bytes(b"left by a killed run")
    live = tmp_path / f"{prefix}live"
    live.write_bytes(b"being made")
    (tmp_path / ".other.cow.xenblock-new-dead").write_bytes(b"another name's")
    holder = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        os.close(cowfile.create(directory, NAME, identity_of(base), cowfile.store_size_for(BASE_SIZE, CHUNK)))
    finally:
        os.close(holder)
    assert sorted(os.listdir(tmp_path)) == sorted([".other.cow.xenblock-new-dead", "base.img", NAME, live.name])


def test_create_refuses_a_size_without_room_for_a_store(directory):
    with pytest.raises(ValueError):
        cowfile.create(directory, NAME, {}, HEADER_SIZE)


# -- killed while making --------------------------------------------------------

CHILD = """
import os, sys
from xenblock import cowfile
if sys.argv[2] == "temporary name":
    def refuse(directory_fd):
        raise OSError(95, "not supported")
    cowfile._open_nameless = refuse
directory = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
identity = {"type": "file", "fs_uuid": None, "inode": 1, "size": %d, "mtime_ns": 2, "ctime_ns": 3}
cowfile.create(directory, %r, identity, cowfile.store_size_for(identity["size"], %d), sparse=sys.argv[3] == "sparse")
""" % (BASE_SIZE, NAME, CHUNK)
# Every call of the making that changes what is on disk or under which name.
CALLS = ("openat", "fchmod", "pwrite64", "ftruncate", "fallocate", "fsync", "flock", "linkat", "unlinkat")
ENV = dict(os.environ, PYTHONPATH=ROOT, PYTHONDONTWRITEBYTECODE="1")


def run_child(tmp_path, way, sparse, strace_args):
    directory = tmp_path / "cows"
    directory.mkdir(exist_ok=True)
    command = ["strace", "-f", "-qq", *strace_args, sys.executable, "-c", CHILD, str(directory), way, sparse]
    return directory, subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=60)


def points(tmp_path, way, sparse):
    """(syscall, N) of every call in CALLS that a successful run makes from
    the O_TMPFILE open or the temporary file's on, N counting that call."""
    trace = tmp_path / "trace"
    directory, result = run_child(tmp_path, way, sparse, ["-o", str(trace), "-e", f"trace={','.join(CALLS)}"])
    assert result.returncode == 0, result.stderr
    assert os.path.exists(directory / NAME)
    os.unlink(directory / NAME)
    counts, found, started = {}, [], False
    for line in trace.read_text().splitlines():
        match = re.match(r"^\d+\s+(\w+)\((.*)", line)
        if not match:
            continue
        call, args = match.groups()
        counts[call] = counts.get(call, 0) + 1
        started = started or "O_TMPFILE" in args or "xenblock-new-" in args
        if started:
            found.append((call, counts[call]))
    assert ("linkat", 1) in found, found
    return found


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace for its fault injection")
@pytest.mark.parametrize("way, sparse", [("O_TMPFILE", "sparse"), ("O_TMPFILE", "reserved"),
                                         ("temporary name", "sparse"), ("temporary name", "reserved")])
def test_killed_at_any_point_leaves_no_partial_file(tmp_path, way, sparse, monkeypatch):
    killed_before_link = 0
    for call, n in points(tmp_path, way, sparse):
        directory, result = run_child(tmp_path, way, sparse, ["-o", "/dev/null", "-e", f"trace={call}",
                                                              "-e", f"inject={call}:signal=KILL:when={n}"])
        assert result.returncode in (-9, 137), (call, n, result.returncode, result.stderr)
        path = directory / NAME
        if os.path.exists(path):
            # killed after the link: then complete
            fd = os.open(path, os.O_RDONLY)
            try:
                assert os.fstat(fd).st_size == cowfile.store_size_for(BASE_SIZE, CHUNK)
                identity = cowfile.recorded_identity(fd, str(path))
                cowfile.check(fd, identity, str(path))
            finally:
                os.close(fd)
            os.unlink(path)
        else:
            killed_before_link += 1
        if way == "temporary name":
            # what a kill left is swept by the next run
            no_tmpfile(monkeypatch)
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                identity = {"type": "file", "fs_uuid": None, "inode": 1, "size": BASE_SIZE, "mtime_ns": 2,
                            "ctime_ns": 3}
                os.close(cowfile.create(fd, NAME, identity, cowfile.store_size_for(BASE_SIZE, CHUNK)))
            finally:
                os.close(fd)
            assert os.listdir(directory) == [NAME], (call, n)
            os.unlink(path)
        assert os.listdir(directory) == [], (call, n)
    assert killed_before_link >= 4


# -- sizes ----------------------------------------------------------------------

def kernel_chunks_touched(data_chunks, chunk_size):
    """The highest chunk index + 1 that dm-snap-persistent.c reads or writes
    when data_chunks exceptions are made in a new store: header and area 0 at
    the start, next_free from 2 skipping each area's chunk, and the next area
    zeroed as soon as one fills."""
    per_area = chunk_size // 16
    stride = per_area + 1
    touched = {0, 1}
    next_free, committed, area = 2, 0, 0
    for _ in range(data_chunks):
        touched.add(next_free)
        next_free += 1
        if next_free % stride == 1:
            next_free += 1
        committed += 1
        if committed == per_area:
            area += 1
            touched.add(1 + stride * area)
            committed = 0
    return max(touched) + 1


@pytest.mark.parametrize("chunk_size", [512, 4096, CHUNK])
def test_store_size_is_exactly_what_the_kernel_can_touch(chunk_size):
    per_area = chunk_size // 16
    for data_chunks in list(range(0, 3 * per_area + 3)) + [10 * per_area - 1, 10 * per_area, 10 * per_area + 1]:
        for base_size in {data_chunks * chunk_size, max(0, data_chunks * chunk_size - 511)}:
            expected = HEADER_SIZE + kernel_chunks_touched(data_chunks, chunk_size) * chunk_size
            assert cowfile.store_size_for(base_size, chunk_size) == expected, (base_size, chunk_size)


@pytest.mark.parametrize("base_size, chunk_size, chunks", [
    (0, 4096, 2),                                   # header chunk and area 0
    (1 << 30, 16 << 10, 1 + (65536 // 1024 + 1) + 65536),
    (10 << 30, 4 << 10, 1 + (2621440 // 256 + 1) + 2621440),
    ((1 << 30) + 1, 1 << 20, 1 + (1025 // 65536 + 1) + 1025),
    (256 * 4096, 4096, 1 + 2 + 256),                # a full area zeroes the next one
])
def test_store_size_formula(base_size, chunk_size, chunks):
    assert cowfile.store_size_for(base_size, chunk_size) == HEADER_SIZE + chunks * chunk_size


@pytest.mark.parametrize("chunk_size", [0, 256, 3000, 4096 + 512])
def test_store_size_refuses_chunk_sizes_dm_refuses(chunk_size):
    with pytest.raises(ValueError, match="power of two"):
        cowfile.store_size_for(1 << 20, chunk_size)


def test_free_space_check_names_directory_needed_and_available(directory, tmp_path):
    cowfile.require_space(directory, 1 << 20)
    with pytest.raises(HotplugError, match=rf"{tmp_path}: not enough free space for the CoW file: "
                                           rf"{1 << 60} bytes needed, \d+ available"):
        cowfile.require_space(directory, 1 << 60)


# -- identities -----------------------------------------------------------------

def test_file_identity_fields(base):
    st = os.stat(base)
    identity = identity_of(base)
    assert identity == {"type": "file", "fs_uuid": identity["fs_uuid"], "inode": st.st_ino, "size": st.st_size,
                        "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def test_other_files_are_not_bases(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(HotplugError, match="a base must be an image file or a block device"):
            cowfile.base_identity(fd, os.fstat(fd), str(tmp_path))
    finally:
        os.close(fd)


def udev_entry(tmp_path, monkeypatch, devnum, *lines):
    data = tmp_path / "udev-data"
    data.mkdir(exist_ok=True)
    (data / f"b{devnum}").write_text("".join(f"{line}\n" for line in lines))
    monkeypatch.setattr(cowfile, "UDEV_DATA", str(data))


def test_fs_uuid_from_udev_where_the_kernel_has_no_ioctl(base, tmp_path, monkeypatch):
    monkeypatch.setattr(cowfile, "_kernel_fs_uuid", lambda fd: None)
    st = os.stat(base)
    devnum = blockdev.Devnum.of_rdev(st.st_dev)
    udev_entry(tmp_path, monkeypatch, devnum, "S:disk/by-uuid/x", "E:ID_FS_TYPE=ext4",
               "E:ID_FS_UUID=0A1B2C3D-0000-4000-8000-00000000ABCD")
    assert identity_of(base)["fs_uuid"] == "0a1b2c3d-0000-4000-8000-00000000abcd"
    udev_entry(tmp_path, monkeypatch, devnum, "E:ID_FS_TYPE=ext4")
    assert identity_of(base)["fs_uuid"] is None


def test_kernel_fs_uuid_first_and_null_uuids_ignored(base, tmp_path, monkeypatch):
    devnum = blockdev.Devnum.of_rdev(os.stat(base).st_dev)
    udev_entry(tmp_path, monkeypatch, devnum, "E:ID_FS_UUID=0a1b2c3d-0000-4000-8000-00000000abcd")
    monkeypatch.setattr(cowfile, "_kernel_fs_uuid", lambda fd: "12345678-9abc-4def-8000-000000000001")
    assert identity_of(base)["fs_uuid"] == "12345678-9abc-4def-8000-000000000001"
    monkeypatch.setattr(cowfile, "_kernel_fs_uuid", lambda fd: cowfile.uuid_text(bytes(16)))
    assert identity_of(base)["fs_uuid"] == "0a1b2c3d-0000-4000-8000-00000000abcd"


def test_uuid_text_is_blkids_form():
    assert cowfile.uuid_text(bytes.fromhex("0a1b2c3d00004000800000000000abcd")) == \
        "0a1b2c3d-0000-4000-8000-00000000abcd"
    assert cowfile.uuid_text(b"\x12\x34\xab\xcd") == "1234abcd"


def test_tmpfs_uuid_if_any_is_the_kernels(tmp_path):
    """tmpfs (Linux >= 6.6) makes up a UUID per mount; older ones have none."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    fd = os.open("/dev/shm", os.O_RDONLY)
    try:
        found = cowfile.fs_uuid(fd, os.fstat(fd))
    finally:
        os.close(fd)
    assert found is None or re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", found)


@pytest.fixture
def sysfs(tmp_path, monkeypatch):
    """A fake /sys/dev/block and udev database; add(devnum, path under
    block/, {attribute: value}) lays out one device."""
    root = tmp_path / "sys"
    (root / "dev" / "block").mkdir(parents=True)
    monkeypatch.setattr(blockdev, "SYS_DEV_BLOCK", str(root / "dev" / "block"))
    monkeypatch.setattr(cowfile, "UDEV_DATA", str(tmp_path / "udev-data"))
    (tmp_path / "udev-data").mkdir()

    def add(devnum, where, attributes, udev=()):
        directory = root / "block" / where
        for name, value in attributes.items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(value + "\n")
        directory.mkdir(parents=True, exist_ok=True)
        os.symlink(directory, root / "dev" / "block" / devnum)
        (tmp_path / "udev-data" / f"b{devnum}").write_text("".join(f"E:{line}\n" for line in udev))
        return blockdev.Devnum.parse(devnum)
    return add


def test_lvm_volume_is_named_by_its_dm_uuid(sysfs):
    devnum = sysfs("253:3", "dm-3", {"dm/uuid": "LVM-vgUUIDvgUUIDlvUUIDlvUUID", "dm/name": "vg-base"},
                   udev=["ID_SERIAL=ignored"])
    assert cowfile.device_id(devnum, "/dev/vg/base") == "dm:LVM-vgUUIDvgUUIDlvUUIDlvUUID"


def test_partition_of_a_disk_with_a_wwid(sysfs):
    sysfs("8:0", "sda", {"device/wwid": "naa.5000c500a1b2c3d4"})
    devnum = sysfs("8:2", "sda/sda2", {"partition": "2"}, udev=["ID_PART_ENTRY_UUID=cafe-02"])
    assert cowfile.device_id(devnum, "/dev/sda2") == "wwid:naa.5000c500a1b2c3d4-part2"


def test_partition_uuid_from_udev(sysfs):
    sysfs("259:0", "nvme0n1", {})
    devnum = sysfs("259:1", "nvme0n1/nvme0n1p1", {"partition": "1"},
                   udev=["ID_PART_ENTRY_UUID=6f1c3a52-8e1b-4c1e-9d0a-0123456789ab", "ID_SERIAL=disk-serial"])
    assert cowfile.device_id(devnum, "/dev/nvme0n1p1") == "partuuid:6f1c3a52-8e1b-4c1e-9d0a-0123456789ab"


@pytest.mark.parametrize("udev, expected", [
    (["ID_WWN=0x5000c500a1b2c3d4", "ID_SERIAL=S1"], "wwn:0x5000c500a1b2c3d4-part3"),
    (["ID_WWN_WITH_EXTENSION=0x5000c500a1b2c3d4ff", "ID_WWN=0x5000c500a1b2c3d4"], "wwn:0x5000c500a1b2c3d4ff-part3"),
    (["ID_SERIAL=WDC_WD40-XYZ"], "serial:WDC_WD40-XYZ-part3"),
])
def test_partition_by_its_disks_udev_id(sysfs, udev, expected):
    sysfs("8:16", "sdb", {})
    devnum = sysfs("8:19", "sdb/sdb3", {"partition": "3"}, udev=udev)
    assert cowfile.device_id(devnum, "/dev/sdb3") == expected


def test_whole_disk_by_serial_has_no_part_suffix(sysfs):
    devnum = sysfs("8:32", "sdc", {}, udev=["ID_SERIAL=S2"])
    assert cowfile.device_id(devnum, "/dev/sdc") == "serial:S2"


def test_device_without_identity_says_so(sysfs):
    devnum = sysfs("7:4", "loop4", {"loop/backing_file": "/srv/x.img"})
    with pytest.raises(HotplugError, match=r"/dev/loop4: block device 7:4 has no stable identity \(no "
                                           r"device-mapper UUID or WWID .*b7:4\)"):
        cowfile.device_id(devnum, "/dev/loop4")


def test_block_device_size_and_identity_on_a_real_device(tmp_path):
    """A private node of the device under tmp_path (no Xen, no loop device
    another test may be using)."""
    st_dev = os.stat(tmp_path).st_dev
    devnum = blockdev.Devnum.of_rdev(st_dev)
    sectors = blockdev.read_attribute(devnum, "size")
    if os.major(st_dev) == 0 or sectors is None:
        pytest.skip("tmp_path is not on a block device")
    node = tmp_path / "node"
    try:
        os.mknod(node, stat.S_IFBLK | 0o600, st_dev)
        fd = os.open(node, os.O_RDONLY)
    except OSError as e:
        pytest.skip(f"cannot open a device node here: {e.strerror}")
    try:
        assert blockdev.size_of(fd) == int(sectors) * 512
        try:
            identity = cowfile.base_identity(fd, os.fstat(fd), str(node))
        except HotplugError as e:
            assert "has no stable identity" in str(e)
        else:
            assert identity["type"] == "device" and identity["size"] == int(sectors) * 512 and identity["id"]
    finally:
        os.close(fd)
