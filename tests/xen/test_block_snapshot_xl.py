"""block-snapshot as xl uses it: a persistent snapshot over a read-only base,
real guests, real device-mapper. The refusals that come before
device-mapper run on the host tier (tests/host/test_block_snapshot.py);
every guest costs some 15 s under emulation, so these are few."""
import os
import threading

from tests.support.cases import loops_of
from tests.support.fixtures import digest
from tests.xen.xl import config, create_fails, disk, paused_guest, run_guest, wait_gone, xl
from xenblock import cowfile, dm
from xenblock.types import snapshot

SCRIPT = "block-snapshot"
MARK = b"xenblock-base-marker"
WRITTEN = "written-by-the-first-guest"


def snap(base, cow):
    return disk(f"{base}:{cow}", script=SCRIPT)


def our_dm_devices():
    return [device.name for device in dm.ours()]


def test_a_guests_changes_persist_in_the_cow_file_and_the_base_is_never_written(images, tmp_path):
    base = images("base.img", MARK)
    before = digest(base)
    cow = tmp_path / "guest.cow"
    write = (f"head -c {len(MARK)} /dev/xvda; echo; "
             f"echo {WRITTEN} | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
             "echo write-status $?")
    lines, status = run_guest(tmp_path, [snap(base, cow)], write)
    assert status == 0 and lines[0] == MARK.decode() and "write-status 0" in lines, lines
    # Made at add, sparse, big enough for every chunk of the base.
    st = os.stat(cow)
    assert st.st_size == cowfile.store_size_for(os.path.getsize(base), snapshot.CHUNK)
    assert st.st_blocks * 512 < st.st_size
    # The guest is gone and so is every device of its disk: what the next
    # guest finds is in the file. Dropping dom0's page cache as well leaves
    # what a host reboot would.
    assert loops_of(str(cow)) == [] and loops_of(base) == [] and our_dm_devices() == []
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    read = (f"dd if=/dev/xvda bs=512 skip=2048 count=1 2>/dev/null | head -c {len(WRITTEN)}; echo; "
            f"head -c {len(MARK)} /dev/xvda; echo")
    lines, status = run_guest(tmp_path, [snap(base, cow)], read)
    assert lines[:2] == [WRITTEN, MARK.decode()], lines
    assert digest(base) == before


def test_a_cow_file_serves_one_guest_and_its_base_many(images, tmp_path):
    base = images("shared-base.img", MARK)
    first, second = tmp_path / "first.cow", tmp_path / "second.cow"
    with paused_guest(tmp_path, [snap(base, first)]):
        output = create_fails(tmp_path, [snap(base, first)])
        assert f"{first}: already in use read-write by domain" in output, output
        with paused_guest(tmp_path, [snap(base, second)]):
            assert len(loops_of(base)) == 1, "one read-only loop device of the base, shared"
            assert len(our_dm_devices()) == 2


def test_two_guests_started_at_once_on_one_new_cow_file_get_it_once(images, tmp_path):
    # Both adds find no CoW file; one makes it, the other must then find it
    # in use, never make a second one over it.
    base = images("race-base.img", MARK)
    cow = tmp_path / "contested.cow"
    guests = [config(tmp_path, [snap(base, cow)]) for _ in range(2)]
    results = {}

    def create(name, path):
        results[name] = xl("create", "-p", path)

    threads = [threading.Thread(target=create, args=guest) for guest in guests]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        codes = sorted(result.returncode for result in results.values())
        assert codes[0] == 0 and codes[1] != 0, results
        refused = next(result for result in results.values() if result.returncode != 0)
        assert f"{cow}: already in use read-write by domain" in refused.stdout + refused.stderr, refused
    finally:
        for name, _ in guests:
            xl("destroy", name)
            wait_gone(name)
    assert os.listdir(tmp_path).count("contested.cow") == 1


def test_a_cow_file_made_for_another_base_fails_xl_create(images, tmp_path):
    made_for = images("one.img", MARK)
    with open(made_for, "rb") as f:
        identity = cowfile.base_identity(f.fileno(), os.fstat(f.fileno()), made_for)
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(cowfile.create(directory, "one.cow", identity,
                                cowfile.store_size_for(identity["size"], snapshot.CHUNK)))
    finally:
        os.close(directory)
    cow = tmp_path / "one.cow"
    output = create_fails(tmp_path, [snap(images("other.img"), cow)])
    assert f"{cow}: this CoW file was made for another base" in output, output
