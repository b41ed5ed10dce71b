"""block-cow driven as libxl drives it, against dom0's real device-mapper:
what is built, what is shared, what teardown leaves (nothing)."""
import os
import subprocess

import pytest

from tests.support.cases import DOM_A, DOM_B, DOM_C, assert_error
from tests.support.fixtures import digest, read_at
from tests.support.cow_cases import cow_env
from xenblock import dm, loop

SCRIPT = "block-cow"
MARK = b"xenblock-cow-base"


def base_loops(path):
    return [(node, info) for node, _, info in loop.backed_by(os.stat(path))]


def write_at(node, offset, data):
    with open(node, "r+b") as f:
        f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def test_two_snapshots_share_one_read_only_base_device_and_keep_their_writes_apart(driver, images, tmp_path):
    base = images("shared-base.img", MARK, size=16 << 20)
    before = digest(base)
    env = cow_env(driver, tmp_path)
    keys = [driver.backend(f"{base} 8M", script=SCRIPT, frontend_id=domid) for domid in (DOM_A, DOM_B)]
    for key in keys:
        result = driver.add(key, script=SCRIPT, env=env)
        assert result.returncode == 0, result.stderr
    shared = base_loops(base)
    assert len(shared) == 1 and shared[0][1].read_only, shared
    nodes = [driver.read(f"{key}/physical-device-path") for key in keys]
    assert all(node.startswith("/dev/dm-") for node in nodes) and nodes[0] != nodes[1], nodes
    for key, node in zip(keys, nodes):
        name, uuid = dm.names_for(key)
        (target,) = dm.table(uuid)
        assert target.type == "snapshot" and target.params.split()[2:] == ["N", "128"], target
        assert read_at(node, 0, len(MARK)) == MARK
    write_at(nodes[0], 1 << 20, b"written through A")
    write_at(nodes[1], 1 << 20, b"written through B")
    assert read_at(nodes[0], 1 << 20, 17) == b"written through A"
    assert read_at(nodes[1], 1 << 20, 17) == b"written through B"
    assert driver.remove(keys[0], script=SCRIPT, env=env).returncode == 0
    assert base_loops(base) == shared, "the base device went while B's snapshot is on it"
    assert read_at(nodes[1], 1 << 20, 17) == b"written through B"
    assert driver.remove(keys[1], script=SCRIPT, env=env).returncode == 0
    assert base_loops(base) == []
    assert dm.info(dm.names_for(keys[0])[1]) is None and dm.info(dm.names_for(keys[1])[1]) is None
    assert digest(base) == before
    assert [name for name in (tmp_path / "cow").iterdir()] == []


def test_a_file_writer_of_a_base_under_a_live_snapshot_is_refused_and_readers_share(driver, images, tmp_path):
    base = images("busy-base.img", MARK)
    env = cow_env(driver, tmp_path)
    snapshot = driver.backend(f"{base} 8M", script=SCRIPT, frontend_id=DOM_A)
    assert driver.add(snapshot, script=SCRIPT, env=env).returncode == 0
    writer = driver.backend(base, frontend_id=DOM_B)
    assert_error(driver.add(writer), driver, writer, f"{base}: already in use read-only by domain {DOM_A}",
                 "refusing read-write access")
    reader = driver.backend(base, mode="r", frontend_id=DOM_B)
    assert driver.add(reader).returncode == 0
    assert driver.remove(reader).returncode == 0
    assert driver.remove(snapshot, script=SCRIPT, env=env).returncode == 0


def test_remove_of_a_snapshot_dom0_holds_open_fails_naming_the_holder_then_finishes(driver, images, tmp_path):
    base = images("held-base.img", MARK)
    env = cow_env(driver, tmp_path)
    key = driver.backend(f"{base} 8M", script=SCRIPT, frontend_id=DOM_A)
    assert driver.add(key, script=SCRIPT, env=env).returncode == 0
    node = driver.read(f"{key}/physical-device-path")
    holder = subprocess.Popen(["sleep", "600"], stdin=open(node, "rb"))
    try:
        result = driver.remove(key, script=SCRIPT, env=env)
        assert_error(result, driver, key, f"{node} is still in use", f"pid {holder.pid} (sleep 600)",
                     "the record is kept")
        assert driver.record(key) is not None and len(base_loops(base)) == 1
    finally:
        holder.kill()
        holder.wait()
    assert driver.remove(key, script=SCRIPT, env=env).returncode == 0
    assert driver.record(key) is None and base_loops(base) == []


@pytest.mark.parametrize("script", ["block-cow", "block-snapshot"])
def test_the_domains_of_one_vm_get_one_snapshot_which_goes_with_the_last_of_them(driver, images, tmp_path, script):
    # A live migration's destination (same /vm node) and a stub domain (its
    # target is the guest) must see the guest's changes: the same device,
    # not a second snapshot with an empty store.
    base = images("one-vm-base.img", MARK)
    target = f"{base} 8M" if script == SCRIPT else f"{base}:{tmp_path / 'one-vm.cow'}"
    env = cow_env(driver, tmp_path)
    for domid in (DOM_A, DOM_B):
        driver.write(f"/local/domain/{domid}/vm", "/vm/xenblock-test-one-vm")
    driver.write(f"/local/domain/{DOM_C}/target", str(DOM_A))
    try:
        keys = [driver.backend(target, script=script, frontend_id=DOM_A)]
        devid = keys[0].rsplit("/", 1)[1]  # each domain's disk is the same device of the guest's
        keys += [driver.backend(target, script=script, frontend_id=domid, devid=devid) for domid in (DOM_B, DOM_C)]
        assert driver.add(keys[0], script=script, env=env).returncode == 0
        node = driver.read(f"{keys[0]}/physical-device-path")
        write_at(node, 1 << 20, b"the guest's change")
        for key in keys[1:]:
            result = driver.add(key, script=script, env=env)
            assert result.returncode == 0, result.stderr
            assert driver.read(f"{key}/physical-device-path") == node
        assert len(our_devices()) == 1
        for key in keys[:2]:
            assert driver.remove(key, script=script, env=env).returncode == 0
            assert read_at(node, 1 << 20, 18) == b"the guest's change", "taken from under the last domain"
        assert len(base_loops(base)) == 1 and len(our_devices()) == 1
        assert driver.remove(keys[2], script=script, env=env).returncode == 0
        assert our_devices() == [] and base_loops(base) == []
    finally:
        for domid in (DOM_A, DOM_B, DOM_C):
            driver.delete(f"/local/domain/{domid}")


def our_devices():
    return dm.ours()
