"""block-snapshot on the host tier: parsing, and every refusal that comes
before device-mapper (which this host lacks), through the real script and
the xenstored double. What needs a snapshot built runs in the Xen VM
(tests/xen/test_block_snapshot_xl.py).

Every refusal must be one hotplug-error line, exit 1, and leave nothing:
no record, lock or loop device (the fixtures check), and no file made or
changed where the CoW file would be (each case checks its directory).
"""
import contextlib
import hashlib
import os
import subprocess
import time

import pytest

from tests.support.cases import DOM_A, DOM_B, assert_failed, loops_of
from xenblock import config, cowfile, locks
from xenblock.cowfile import HEADER_SIZE, SNAP_HEADER, SNAP_MAGIC
from xenblock.deadline import Deadline
from xenblock.errors import HotplugError
from xenblock.types import snapshot

SCRIPT = "block-snapshot"
HAS_DM = os.path.exists("/dev/mapper/control")


def contents(directory):
    """{name: sha256 of the file, or its symlink's target} of a directory."""
    found = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.islink(path):
            found[name] = "-> " + os.readlink(path)
        elif os.path.isfile(path):
            with open(path, "rb") as f:
                found[name] = hashlib.sha256(f.read()).hexdigest()
    return found


def refused(driver, target, directory, *words, mode="w", env=None):
    """add of a block-snapshot disk with target fails naming words, and
    leaves directory (where the CoW file is or would be) as it was."""
    before = contents(directory) if os.path.isdir(directory) else None
    state = driver.state_files()
    key = driver.backend(target, mode=mode, script=SCRIPT, frontend_id=DOM_A)
    result = driver.add(key, script=SCRIPT, env=env)
    error = assert_failed(result, driver, key, *words)
    assert "\n" not in error
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (contents(directory) if os.path.isdir(directory) else None) == before
    assert driver.state_files() == state
    return error


def snapshot_env(driver, tmp_path, **settings):
    """The tier's config plus a [snapshot] section."""
    with open(driver.env["XENBLOCK_CONFIG"]) as f:
        text = f.read()
    path = tmp_path / "snapshot.conf"
    path.write_text(text + "\n[snapshot]\n" + "".join(f"{name} = {value}\n" for name, value in settings.items()))
    return {"XENBLOCK_CONFIG": str(path)}


def make_cow(base, path):
    """A CoW file at path made for base (as an add would make it)."""
    with open(base, "rb") as f:
        identity = cowfile.base_identity(f.fileno(), os.fstat(f.fileno()), base)
    directory = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(cowfile.create(directory, os.path.basename(path), identity,
                                cowfile.store_size_for(identity["size"], snapshot.CHUNK)))
    finally:
        os.close(directory)
    return str(path)


@pytest.fixture
def cows(tmp_path):
    path = tmp_path / "cows"
    path.mkdir()
    return path


@contextlib.contextmanager
def mounted_tmpfs(path, options):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "xbtest", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (tested in the Xen VM instead)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


# -- the target ---------------------------------------------------------------

@pytest.mark.parametrize("target, base, cow", [
    ("/srv/base.img:/var/lib/cow/web.cow", "/srv/base.img", "/var/lib/cow/web.cow"),
    ("  /srv/base.img:/cow/a.cow \n", "/srv/base.img", "/cow/a.cow"),
    # a colon in the base's path: the first ":/" ends it, the CoW file's path is absolute
    ("/srv/2024:base.img:/cow/a.cow", "/srv/2024:base.img", "/cow/a.cow"),
    ("/srv/base.img:/cow/a:b.cow", "/srv/base.img", "/cow/a:b.cow"),
])
def test_the_target_is_the_base_then_the_cow_files_absolute_path(target, base, cow):
    spec = snapshot.parse(target)
    assert (spec.base, spec.cow) == (base, cow)


@pytest.mark.parametrize("target, words", [
    ("/srv/base.img", "expected <base>:<cow>"),
    ("/srv/base.img:cow/a.cow", "expected <base>:<cow>"),
    (":/cow/a.cow", "no base image before the colon"),
    ("/srv/base.img:/cow/", "'/cow/' names a directory, not the CoW file"),
    ("/srv/base.img:/cow/..", "names a directory"),
])
def test_a_target_without_base_or_cow_file_is_refused(target, words):
    with pytest.raises(HotplugError, match=words.replace("<", ".").replace(">", ".")):
        snapshot.parse(target)


def test_a_bad_target_is_refused_by_the_script(driver, images, cows):
    base = images("base.img")
    refused(driver, base, cows, f"target {base!r}: expected <base>:<cow>, the base image's path, a colon")


def test_read_only_access_is_refused(driver, images, cows):
    refused(driver, f"{images('base.img')}:{cows}/ro.cow", cows, "block-snapshot disks are read-write (access=w)",
            mode="r")


# -- the base -----------------------------------------------------------------

def test_a_missing_base_is_named(driver, tmp_path, cows):
    missing = tmp_path / "no-such-base.img"
    refused(driver, f"{missing}:{cows}/a.cow", cows, f"{missing}: no such file or block device")


def test_a_base_another_guest_writes_is_refused(driver, images, cows):
    base = images("written.img")
    writer = driver.backend(base, frontend_id=DOM_B)
    assert driver.add(writer).returncode == 0
    refused(driver, f"{base}:{cows}/a.cow", cows, f"{base}: already in use read-write by domain {DOM_B}",
            "refusing read-only access")
    assert driver.remove(writer).returncode == 0


# -- the CoW file's directory -------------------------------------------------

def test_a_missing_cow_directory_is_named(driver, images, cows):
    missing = cows / "no-such-dir"
    refused(driver, f"{images('base.img')}:{missing}/a.cow", cows, f"{missing}: no such directory")
    assert not missing.exists()


def test_a_cow_directory_that_is_a_file_is_named(driver, images, cows):
    (cows / "plain").write_text("a file")
    refused(driver, f"{images('base.img')}:{cows}/plain/a.cow", cows, f"{cows}/plain: not a directory")


def test_a_read_only_cow_directory_is_refused(driver, images, tmp_path):
    # root may write a mode 0555 directory: a read-only file system it may not.
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1M") as directory:
        refused(driver, f"{images('base.img')}:{directory}/a.cow", directory,
                f"{directory}: the CoW file's directory is on a read-only file system")


def test_a_cow_directory_about_full_is_refused(driver, images, tmp_path):
    # A new CoW file for a 64 MiB base may grow by more than 64 MiB; 1 MiB free is about full.
    base = images("big-base.img", size=64 << 20)
    with mounted_tmpfs(tmp_path / "full", "size=1M") as directory:
        refused(driver, f"{base}:{directory}/a.cow", directory, f"{directory}: not enough free space for the CoW "
                "file", f"the CoW file {directory}/a.cow may grow by 66688K")


# -- the CoW file -------------------------------------------------------------

def test_a_symlink_planted_at_the_cow_path_is_refused(driver, images, tmp_path, cows):
    # Even to a good CoW file of this very base: a link could send the guest's writes anywhere.
    base = images("base.img")
    real = make_cow(base, tmp_path / "real.cow")
    os.symlink(real, cows / "a.cow")
    refused(driver, f"{base}:{cows}/a.cow", cows, f"{cows}/a.cow: is a symbolic link; a CoW file must be a "
            "regular file, named directly")
    os.symlink(tmp_path / "nowhere.cow", cows / "dangling.cow")
    refused(driver, f"{base}:{cows}/dangling.cow", cows, "is a symbolic link")
    assert not (tmp_path / "nowhere.cow").exists()


def test_a_cow_file_made_for_another_base_is_refused(driver, images, cows):
    cow = make_cow(images("one.img"), cows / "one.cow")
    refused(driver, f"{images('other.img')}:{cow}", cows, f"{cow}: this CoW file was made for another base")


def test_a_cow_file_whose_base_changed_since_is_refused(driver, images, cows):
    base = images("changing.img")
    cow = make_cow(base, cows / "a.cow")
    with open(base, "r+b") as f:
        f.write(b"written past the snapshot")
    refused(driver, f"{base}:{cow}", cows, f"{cow}: the base was modified since this CoW file was made")


def test_a_file_of_another_format_is_refused(driver, images, cows):
    qcow2 = cows / "disk.qcow2"
    qcow2.write_bytes(b"QFI\xfb" + bytes(HEADER_SIZE * 2))
    refused(driver, f"{images('base.img')}:{qcow2}", cows, f"{qcow2}: not a xenblock CoW file")


def test_a_store_the_kernel_marked_invalid_is_refused(driver, images, cows):
    base = images("base.img")
    cow = make_cow(base, cows / "a.cow")
    with open(cow, "r+b") as f:
        f.seek(HEADER_SIZE)
        f.write(SNAP_HEADER.pack(SNAP_MAGIC, 0, 1, snapshot.CHUNK_SECTORS))
    refused(driver, f"{base}:{cow}", cows, "the kernel marked this CoW file's snapshot store invalid")


def test_a_read_only_cow_file_is_refused(driver, images, cows):
    base = images("base.img")
    cow = make_cow(base, cows / "a.cow")
    os.chmod(cow, 0o444)
    refused(driver, f"{base}:{cow}", cows, f"{cow}: CoW file is read-only (mode 0444)")


def test_a_cow_file_another_guest_writes_is_refused(driver, images, cows):
    # Whatever writes it: here a block-file disk of another guest.
    base = images("base.img")
    cow = make_cow(base, cows / "a.cow")
    writer = driver.backend(cow, frontend_id=DOM_B)
    assert driver.add(writer).returncode == 0
    refused(driver, f"{base}:{cow}", cows, f"{cow}: already in use read-write by domain {DOM_B}",
            "refusing read-write access")
    assert driver.remove(writer).returncode == 0
    assert loops_of(cow) == []


def test_a_cap_too_small_for_any_cow_file_is_named(driver, images, tmp_path, cows):
    env = snapshot_env(driver, tmp_path, max_size="1M")
    refused(driver, f"{images('base.img')}:{cows}/a.cow", cows,
            "[snapshot] max_size is 1M, less than the 1216K the smallest CoW file needs", env=env)


# -- the add that gets as far as device-mapper --------------------------------

@pytest.mark.skipif(HAS_DM, reason="this host has device-mapper: the Xen VM tier builds snapshots")
def test_an_add_failing_at_device_mapper_removes_the_cow_file_it_made_and_keeps_one_it_found(
        driver, images, cows):
    base = images("base.img", b"base")
    refused(driver, f"{base}:{cows}/new.cow", cows, "device-mapper: cannot open /dev/mapper/control")
    assert os.listdir(cows) == []
    kept = make_cow(base, cows / "kept.cow")
    refused(driver, f"{base}:{kept}", cows, "device-mapper: cannot open /dev/mapper/control")
    assert loops_of(kept) == []


def test_an_add_looks_for_the_cow_file_only_once_it_holds_the_name_lock(driver, images, cows):
    # As if another add were making the CoW file: this one waits, then
    # finds the file (here made for another base) instead of making its own.
    base = images("base.img")
    spec = snapshot.Spec(base, str(cows / "a.cow"))
    spec.directory, spec.name = os.open(cows, os.O_RDONLY | os.O_DIRECTORY), "a.cow"
    try:
        lock = snapshot._name_lock(spec)
    finally:
        os.close(spec.directory)
    key = driver.backend(f"{base}:{spec.cow}", script=SCRIPT, frontend_id=DOM_A)
    with locks.held(lock, Deadline.after(30), "the test's hold"):
        add = subprocess.Popen([os.path.join(driver.script_dir, SCRIPT), "add"], env={
            "PATH": os.environ["PATH"], **driver.env, "XENBUS_TYPE": "vbd", "XENBUS_PATH": key,
            "XENBUS_BASE_PATH": "backend"}, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        assert add.poll() is None, add.stderr.read()
        assert os.listdir(cows) == []
        make_cow(images("other.img"), cows / "a.cow")
    _, stderr = add.communicate(timeout=60)
    assert_failed(subprocess.CompletedProcess(add.args, add.returncode, "", stderr), driver, key,
                  f"{spec.cow}: this CoW file was made for another base")
    assert os.listdir(cows) == ["a.cow"]


# -- sizes and settings -------------------------------------------------------

def test_a_new_cow_file_can_hold_every_chunk_of_the_base_unless_capped(tmp_path):
    spec = snapshot.Spec("/base", "/cows/a.cow")
    uncapped = snapshot._new_size(10 << 30, spec, config.Config())
    assert uncapped == cowfile.store_size_for(10 << 30, snapshot.CHUNK)
    capped = snapshot._new_size(10 << 30, spec, config.Config(snapshot_max_size=(1 << 30) + 1000))
    assert capped == 1 << 30  # whole chunks after the header
    assert snapshot._new_size(4 << 20, spec, config.Config(snapshot_max_size=1 << 40)) == \
        cowfile.store_size_for(4 << 20, snapshot.CHUNK)


def test_free_space_below_what_the_cow_file_may_grow_by_is_a_warning_in_the_log_line(tmp_path):
    # Refused only about full (the host tier's script case above); between
    # that and the growth the add goes on, and says so.
    with mounted_tmpfs(tmp_path / "roomy", "size=300M") as directory:
        spec = snapshot.Spec("/base", f"{directory}/a.cow")
        spec.directory = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            snapshot._check_space(spec, 200 << 20)
            assert spec.free == ""
            snapshot._check_space(spec, 1 << 30)
            assert spec.free == ("; WARNING: the CoW file may grow by 1G, its file system has 300M free: if it "
                                 "fills up, the guest's changes are lost")
        finally:
            os.close(spec.directory)


def test_the_snapshot_cap_is_a_size_or_none(tmp_path):
    path = tmp_path / "xenblock.conf"
    path.write_text("[snapshot]\nmax_size = 20G\n")
    assert config.load({"XENBLOCK_CONFIG": str(path)}).snapshot_max_size == 20 << 30
    path.write_text("[snapshot]\nmax_size = none\n")
    assert config.load({"XENBLOCK_CONFIG": str(path)}).snapshot_max_size is None
    path.write_text("[snapshot]\nmax_size = lots\n")
    with pytest.raises(config.ConfigError, match="line 2: 'lots': 'lots' is not a size"):
        config.load({"XENBLOCK_CONFIG": str(path)})
