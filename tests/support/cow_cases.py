"""block-cow's refusals (the host has no device-mapper, and each of these
is refused before one is needed). Run by the host tier: their kernel and
xenstore behaviour is the host's too, and every script run costs about two
seconds in the emulated Xen VM, where tests/xen/test_block_cow.py uses
cow_env against the real device-mapper.

Each case names its store directory in a config of its own (the tier's
config plus a [cow] section) under tmp_path: a file system with O_TMPFILE
on the host; virtme's overlay without it in the Xen VM, so the VM tests
take the other way of making a store. Every refusal must leave nothing:
the tiers' fixtures check loop devices, records and locks, and each case
checks the store directory.
"""
import os

from tests.support.cases import DOM_A, DOM_B, assert_failed, settings_env

SCRIPT = "block-cow"


def cow_env(driver, tmp_path, **settings):
    """The environment of a run with the tier's config plus [cow] settings
    (directory: tmp_path/cow unless given)."""
    settings.setdefault("directory", str(tmp_path / "cow"))
    return settings_env(driver, tmp_path, "cow", **settings)


def refused(driver, tmp_path, target, *words, env=None, frontend_id=DOM_A):
    """add of a block-cow disk with target fails naming words, and leaves no store."""
    env = env or cow_env(driver, tmp_path)
    key = driver.backend(target, script=SCRIPT, frontend_id=frontend_id)
    result = driver.add(key, script=SCRIPT, env=env)
    assert_failed(result, driver, key, *words)
    assert len(result.stderr.strip().splitlines()) <= 1, result.stderr
    store_dir = tmp_path / "cow"
    assert not store_dir.is_dir() or os.listdir(store_dir) == [], os.listdir(store_dir)
    return result


def test_cow_refuses_a_missing_base(driver, tmp_path):
    missing = str(tmp_path / "no-such-base.img")
    refused(driver, tmp_path, f"{missing} 8M", f"{missing}: no such file or block device")


def test_cow_refuses_a_directory_as_base(driver, tmp_path):
    refused(driver, tmp_path, f"{tmp_path} 8M", f"{tmp_path}: not an image file or block device")


def test_cow_refuses_an_empty_target(driver, tmp_path):
    refused(driver, tmp_path, "  ", "empty target")


def test_cow_refuses_sizes_it_cannot_read_or_zero(driver, tmp_path, images):
    base = images("base.img")
    refused(driver, tmp_path, f"{base} 12Q", "the store's size", "'12Q' is not a size")
    refused(driver, tmp_path, f"{base} 1.5G", "'1.5G' is not a size")
    refused(driver, tmp_path, f"{base} 0", "a size of zero")


def test_cow_refuses_a_store_above_the_configured_maximum(driver, tmp_path, images):
    env = cow_env(driver, tmp_path, max_size="16M")
    refused(driver, tmp_path, f"{images('base.img')} 17M", "a store of 17M", "allows is 16M",
            "[cow] max_size", env=env)


def test_cow_refuses_a_store_the_free_space_cannot_hold(driver, tmp_path, images):
    env = cow_env(driver, tmp_path, max_size="64T")
    refused(driver, tmp_path, f"{images('base.img')} 60T", f"{tmp_path / 'cow'}: ", "free, not enough for a 60T",
            env=env)


def test_cow_refuses_a_store_directory_planted_as_a_symlink(driver, tmp_path, images):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "cow")
    refused(driver, tmp_path, f"{images('base.img')} 8M", f"{tmp_path / 'cow'}: the copy-on-write directory is a symlink")
    assert os.listdir(elsewhere) == []


def test_cow_refuses_a_store_directory_that_is_a_file(driver, tmp_path, images):
    (tmp_path / "cow").write_text("not a directory")
    env = cow_env(driver, tmp_path)
    key = driver.backend(f"{images('base.img')} 8M", script=SCRIPT, frontend_id=DOM_A)
    assert_failed(driver.add(key, script=SCRIPT, env=env), driver, key,
                  f"{tmp_path / 'cow'}: the copy-on-write directory is not a directory")


def test_cow_refuses_a_base_another_guest_writes(driver, tmp_path, images):
    base = images("written.img")
    writer = driver.backend(base, frontend_id=DOM_B)
    assert driver.add(writer).returncode == 0
    refused(driver, tmp_path, f"{base} 8M", f"{base}: already in use read-write by domain {DOM_B}",
            "refusing read-only access")
    assert driver.remove(writer).returncode == 0
