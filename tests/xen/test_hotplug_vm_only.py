"""Hotplug cases the host tier cannot show: its kernel makes no partition
devices for loop devices (partscan is refused there)."""
import subprocess

from tests.support.cases import DOM_A, DOM_B, assert_failed
from tests.support.fixtures import foreign_loop


def test_a_whole_disk_and_its_partitions_conflict(driver, images):
    path = images("partitioned.img", size=8 << 20)
    subprocess.run(["sfdisk", "-q", path], input="1MiB,2MiB\n,\n", text=True, check=True, capture_output=True)
    with foreign_loop(path, partitions=True) as node:
        subprocess.run(["udevadm", "settle"], check=False)  # the partition nodes
        partition = node + "p1"
        for first_target, second_target in ((node, partition), (partition, node)):
            first = driver.backend(first_target, frontend_id=DOM_A)
            assert driver.add(first).returncode == 0, driver.read(f"{first}/hotplug-error")
            second = driver.backend(second_target, frontend_id=DOM_B)
            assert_failed(driver.add(second), driver, second, second_target, f"domain {DOM_A}")
            assert driver.remove(first).returncode == 0
        other_partition = driver.backend(node + "p2", frontend_id=DOM_B)
        first = driver.backend(partition, frontend_id=DOM_A)
        assert driver.add(first).returncode == 0
        assert driver.add(other_partition).returncode == 0, "two partitions share no sector"
        for key in (first, other_partition):
            assert driver.remove(key).returncode == 0


