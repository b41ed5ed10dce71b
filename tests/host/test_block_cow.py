"""block-cow's refusals against the xenstored double (see tests/support/cow_cases.py)."""
from tests.support.cow_cases import *  # noqa: F401,F403


def test_a_cow_add_that_fails_at_device_mapper_unbinds_what_it_bound(driver, tmp_path, images):
    # This kernel has no device-mapper: the add gets as far as the base's
    # shared loop device and the store's, then fails creating the snapshot,
    # and must undo both (the images fixture checks the base's loop devices,
    # the driver fixture the records and locks).
    base = images("base.img", b"base")
    refused(driver, tmp_path, f"{base} 8M", "device-mapper: cannot open /dev/mapper/control",
            "is the dm_mod kernel module loaded?")
    log = open(driver.log_file).read()
    assert "failed" in log and "/dev/loop" not in driver.read(f"{driver.keys[-1]}/hotplug-error")
