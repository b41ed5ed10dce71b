"""xenblock.dm against the real device-mapper of dom0 (the VM set-up loads
dm_mod and dm_snapshot). Backing devices are loop devices bound with
losetup, as an administrator would; dmsetup and udevadm only look, except
where a test needs libdevmapper's own behaviour to compare with.

Every test runs inside the tier's leak check (conftest.py): no dm device,
loop device or file under /run may be left.
"""
import contextlib
import errno
import fcntl
import hashlib
import os
import subprocess
import time

import pytest
import pyudev

from xenblock import dm
from xenblock.blockdev import Devnum, read_attribute
from xenblock.deadline import Deadline
from xenblock.errors import HotplugError
from tests.support.fixtures import foreign_loop, read_at

MIB = 1 << 20
SECTORS = 8192  # of a 4 MiB image
MARK_0 = b"xenblock-dm-first-sector"
MARK_1M = b"xenblock-dm-at-one-mebibyte"
BLKFLSBUF = 0x1261  # linux/fs.h: write back and drop a block device's page cache
# The flags as dmsetup udevflags prints them for the rules (DM_COOKIE's upper half).
RULE_FLAGS = {"DM_UDEV_DISABLE_SUBSYSTEM_RULES_FLAG", "DM_UDEV_DISABLE_DISK_RULES_FLAG",
              "DM_UDEV_DISABLE_OTHER_RULES_FLAG", "DM_UDEV_PRIMARY_SOURCE_FLAG"}


def image(path, swap=False):
    """A 4 MiB image with markers at 0 and 1 MiB; swap: with a swap
    signature instead of the first marker, for blkid to find."""
    with open(path, "wb") as f:
        f.truncate(4 * MIB)
    if swap:
        subprocess.run(["mkswap", str(path)], check=True, capture_output=True)
    with open(path, "r+b") as f:
        if not swap:
            f.write(MARK_0)
        f.seek(MIB)
        f.write(MARK_1M)
    return str(path)


def devnum_of(node):
    return Devnum.of_rdev(os.stat(node).st_rdev)


def linear(loop, start=0, length=SECTORS, offset=0):
    return dm.Target(start, length, "linear", f"{loop} {offset}")


@pytest.fixture
def devices():
    """make(name, targets, read_only=False) -> (uuid, devnum) through
    dm.create; whatever a test leaves is removed after."""
    made = []

    def make(name, targets, read_only=False):
        uuid = f"{dm.UUID_PREFIX}TEST-{name}"
        devnum = dm.create(f"xbtest-{name}", uuid, targets, Deadline.after(10), read_only)
        made.append(uuid)
        return uuid, devnum

    yield make
    for uuid in reversed(made):
        dm.remove(uuid, Deadline.after(10))


def settle():
    subprocess.run(["udevadm", "settle", "--timeout=60"], check=True)


def udev_properties(node):
    shown = subprocess.run(["udevadm", "info", "--query=property", f"--name={node}"],
                           check=True, capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)


@contextlib.contextmanager
def kernel_events():
    """events() -> [(action, sys_name, properties)] of the block uevents the
    kernel sent since the start, as they left the kernel (before udev)."""
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
    monitor.start()
    seen = []

    def events():
        # The kernel sends a uevent inside the ioctl that causes it: by now
        # every one is in the socket.
        while (device := monitor.poll(timeout=1)) is not None:
            if device.subsystem == "block":
                seen.append((device.action, device.sys_name, dict(device.properties)))
        return seen

    yield events


def test_linear_devices_read_the_device_under_them(tmp_path, devices):
    assert dm.version()[0] == 4
    with foreign_loop(image(tmp_path / "base.img")) as loop_node:
        loop = devnum_of(loop_node)
        uuid, devnum = devices("linear", [linear(loop)])
        node = dm.node(devnum)
        assert devnum_of(node) == devnum  # devtmpfs' node, no udev needed
        assert read_at(node, 0, len(MARK_0)) == MARK_0
        assert read_at(node, MIB, len(MARK_1M)) == MARK_1M
        # a window of the device, as block-part will hand over a partition
        window_uuid, window = devices("window", [linear(loop, length=2048, offset=2048)])
        assert read_attribute(window, "size") == "2048"
        assert read_at(dm.node(window), 0, len(MARK_1M)) == MARK_1M

        assert dm.table(uuid) == [dm.Target(0, SECTORS, "linear", f"{loop} 0")]
        assert dm.status(uuid) == [dm.Target(0, SECTORS, "linear", "")]
        found = dm.info(uuid)
        assert (found.name, found.uuid, found.devnum, found.open_count) == ("xbtest-linear", uuid, devnum, 0)
        assert found.live_table and not found.suspended and not found.read_only
        assert read_attribute(devnum, "ro") == "0"
        listed = dm.list_devices()
        assert dm.Listed("xbtest-linear", uuid, devnum) in listed
        assert dm.Listed("xbtest-window", window_uuid, window) in listed
        shown = subprocess.run(["dmsetup", "info", "-c", "--noheadings", "-o", "uuid", "xbtest-linear"],
                               check=True, capture_output=True, text=True).stdout.strip()
        assert shown == uuid

        assert dm.remove(window_uuid, Deadline.after(10)) is True
        assert dm.remove(uuid, Deadline.after(10)) is True
        assert dm.info(uuid) is None and dm.status(uuid) is None and dm.table(uuid) is None
        assert uuid not in {device.uuid for device in dm.list_devices()}
        assert dm.remove(uuid, Deadline.after(10)) is False


def test_read_only_device_over_a_read_only_loop_device(tmp_path, devices):
    with foreign_loop(image(tmp_path / "base.img"), read_only=True) as loop_node:
        loop = devnum_of(loop_node)
        uuid, devnum = devices("ro", [linear(loop)], read_only=True)
        assert read_attribute(devnum, "ro") == "1" and dm.info(uuid).read_only
        assert read_at(dm.node(devnum), 0, len(MARK_0)) == MARK_0
        assert dm.remove(uuid, Deadline.after(10)) is True

        # Without read_only the kernel takes the same table, and every write
        # fails with EIO: a guest would get I/O errors, not a read-only disk.
        rw_uuid, rw = devices("rw-over-ro", [linear(loop)])
        assert read_attribute(rw, "ro") == "0"
        fd = os.open(dm.node(rw), os.O_WRONLY | os.O_CLOEXEC)
        try:
            with pytest.raises(OSError) as caught:
                os.pwrite(fd, b"x" * 4096, 0)
                os.fsync(fd)
            assert caught.value.errno == errno.EIO
        finally:
            os.close(fd)
        assert dm.remove(rw_uuid, Deadline.after(10)) is True


def test_udev_reads_the_flags_from_the_cookie_and_probes_nothing(tmp_path, devices):
    with foreign_loop(image(tmp_path / "swap.img", swap=True)) as loop_node, kernel_events() as events:
        uuid, devnum = devices("flags", [linear(devnum_of(loop_node))])
        settle()
        seen = udev_properties(dm.node(devnum))
        assert seen.get("DM_UUID") == uuid
        assert seen.get("XENBLOCK_GUEST_DISK") == "1"  # our rule matched too
        assert {flag for flag in RULE_FLAGS if seen.get(flag) == "1"} == RULE_FLAGS, seen
        assert "ID_FS_TYPE" not in seen, seen  # no blkid, though it would find swap
        assert dm.remove(uuid, Deadline.after(10)) is True

        name = f"dm-{devnum.minor}"
        cookies = {(action, props.get("DM_COOKIE")) for action, sys_name, props in events() if sys_name == name}
    # The "add" comes with the first table load and has no cookie; the
    # resume's "change" and the remove carry the flags.
    assert ("add", None) in cookies
    assert ("change", str(dm.UDEV_COOKIE)) in cookies
    assert ("remove", str(dm.UDEV_COOKIE)) in cookies
    assert ("change", None) not in cookies

    # What the rules make of the cookie (55-dm.rules runs exactly this) ...
    decoded = subprocess.run(["dmsetup", "udevflags", str(dm.UDEV_COOKIE)],
                             check=True, capture_output=True, text=True).stdout.split()
    assert set(decoded) == {f"{flag}='1'" for flag in RULE_FLAGS}
    # ... and that its lower half names no semaphore: 95-dm-notify.rules'
    # udevcomplete has no one to wake and succeeds at once.
    subprocess.run(["dmsetup", "udevcomplete", str(dm.UDEV_COOKIE)], check=True, capture_output=True)


def test_the_flags_alone_keep_blkid_off_without_our_udev_rule(tmp_path, monkeypatch):
    """A uuid our rule does not match: only the flags in the cookie stand
    between the device and blkid. The control, made by dmsetup over the
    same sectors with libdevmapper's default flags, shows blkid runs on dm
    devices here and would find the swap signature."""
    monkeypatch.setattr(dm, "UUID_PREFIX", "XBTEST-")
    with foreign_loop(image(tmp_path / "swap.img", swap=True)) as loop_node:
        loop = devnum_of(loop_node)
        subprocess.run(["dmsetup", "create", "xbtest-control", "--uuid", "XBTEST-CONTROL",
                        "--table", f"0 {SECTORS} linear {loop} 0"], check=True, capture_output=True)
        try:
            devnum = dm.create("xbtest-norule", "XBTEST-norule", [linear(loop)], Deadline.after(10))
            try:
                settle()
                ours = udev_properties(dm.node(devnum))
                control = udev_properties("/dev/mapper/xbtest-control")
            finally:
                assert dm.remove("XBTEST-norule", Deadline.after(10)) is True
        finally:
            settle()  # udev's blkid and inotify watch on the control may hold it a moment
            subprocess.run(["dmsetup", "remove", "--retry", "xbtest-control"], check=True, capture_output=True)
    assert control.get("ID_FS_TYPE") == "swap", control
    assert "XENBLOCK_GUEST_DISK" not in ours
    assert "ID_FS_TYPE" not in ours, ours
    assert {flag for flag in RULE_FLAGS if ours.get(flag) == "1"} == RULE_FLAGS, ours


def test_snapshot_over_a_read_only_base_takes_the_writes(tmp_path, devices):
    base = image(tmp_path / "base.img")
    store = tmp_path / "cow.img"
    with open(store, "wb") as f:
        f.truncate(4 * MIB)
    with open(base, "rb") as f:
        before = hashlib.sha256(f.read()).digest()
    written = b"written-through-the-snapshot".ljust(4096, b"w")
    with foreign_loop(base, read_only=True) as base_node, foreign_loop(str(store)) as store_node:
        real, cow = devnum_of(base_node), devnum_of(store_node)
        # LVM's layout: the origin device over the real one, the snapshot
        # over the real one and its store. "N": a transient store, chunks of
        # 8 sectors.
        origin_uuid, origin = devices("origin", [dm.Target(0, SECTORS, "snapshot-origin", str(real))],
                                      read_only=True)
        snapshot_uuid, snapshot = devices("snapshot", [dm.Target(0, SECTORS, "snapshot", f"{real} {cow} N 8")])
        [fresh] = dm.status(snapshot_uuid)
        assert fresh.type == "snapshot"
        assert dm.snapshot_usage(fresh.params) == dm.SnapshotUsage(0, SECTORS, 0, None)

        fd = os.open(dm.node(snapshot), os.O_RDWR | os.O_CLOEXEC)
        try:
            os.pwrite(fd, written, MIB)
            os.fsync(fd)
            fcntl.ioctl(fd, BLKFLSBUF)  # the reads below come from the device, not the page cache
            assert os.pread(fd, len(written), MIB) == written
            assert os.pread(fd, len(MARK_0), 0) == MARK_0  # unwritten chunks: the base's
        finally:
            os.close(fd)
        [used] = dm.status(snapshot_uuid)
        usage = dm.snapshot_usage(used.params)
        assert usage == dm.SnapshotUsage(8, SECTORS, 0, None), used  # one chunk of the store
        assert usage.fill == 8 / SECTORS

        assert read_attribute(origin, "ro") == "1"
        assert read_at(dm.node(origin), MIB, len(MARK_1M)) == MARK_1M
        assert dm.remove(snapshot_uuid, Deadline.after(10)) is True
        assert dm.remove(origin_uuid, Deadline.after(10)) is True
    with open(base, "rb") as f:
        assert hashlib.sha256(f.read()).digest() == before


def test_remove_of_a_device_held_open_fails_after_the_deadline_then_succeeds(tmp_path, devices):
    with foreign_loop(image(tmp_path / "base.img")) as loop_node:
        uuid, devnum = devices("held", [linear(devnum_of(loop_node))])
        fd = os.open(dm.node(devnum), os.O_RDONLY | os.O_CLOEXEC)
        try:
            started = time.monotonic()
            with pytest.raises(HotplugError) as caught:
                dm.remove(uuid, Deadline.after(2))
            waited = time.monotonic() - started
            assert str(caught.value) == f"device-mapper: cannot remove {uuid}: Device or resource busy (open 1 times)"
            assert 2 <= waited < 6
            assert dm.info(uuid).live_table
        finally:
            os.close(fd)

        # a device stacked on it holds it too, and is named
        upper_uuid, upper = devices("upper", [linear(devnum)])
        with pytest.raises(HotplugError, match=f"cannot remove {uuid}: Device or resource busy "
                                               rf"\(open 1 times; held by dm-{upper.minor}\)"):
            dm.remove(uuid, Deadline.after(0.5))
        assert dm.remove(upper_uuid, Deadline.after(10)) is True
        assert dm.remove(uuid, Deadline.after(10)) is True
        assert dm.info(uuid) is None


@pytest.mark.parametrize("table", [
    lambda loop: [dm.Target(0, SECTORS, "xbtest-nosuch", "")],  # no such target type
    # twice the loop device's size: on Linux 6.1 the first table of a device
    # is checked against its devices at load already (the queue is set up then)
    lambda loop: [linear(loop, length=2 * SECTORS)],
])
def test_a_create_with_a_bad_table_leaves_no_device(tmp_path, devices, table):
    with foreign_loop(image(tmp_path / "base.img")) as loop_node:
        loop = devnum_of(loop_node)
        uuid = f"{dm.UUID_PREFIX}TEST-bad"
        with pytest.raises(HotplugError) as caught:
            dm.create("xbtest-bad", uuid, table(loop), Deadline.after(10))
        assert str(caught.value) == f"device-mapper: cannot load table of {uuid}: Invalid argument"
        assert_gone_and_creatable_again(devices, loop, uuid)


def test_a_create_whose_resume_fails_leaves_no_device(tmp_path, devices, monkeypatch):
    """A new device whose table loads cannot be made to fail its resume by
    the table alone on this kernel (see above): the failure is injected,
    the device and its loaded table are real. The kernel must let the
    half-made device (a table loaded, none live) be removed. (Linux 6.1
    does not flag a new device suspended, whatever dm-ioctl.h says: it has
    no live table, and the resume suspends it only to swap tables.)"""
    seen = []

    def failing_resume(uuid):
        seen.append(dm.info(uuid))
        raise dm.DeviceMapperError(f"device-mapper: cannot resume {uuid}: Invalid argument", errno.EINVAL)

    monkeypatch.setattr(dm, "resume", failing_resume)
    with foreign_loop(image(tmp_path / "base.img")) as loop_node:
        loop = devnum_of(loop_node)
        uuid = f"{dm.UUID_PREFIX}TEST-bad"
        with pytest.raises(HotplugError, match=f"^device-mapper: cannot resume {uuid}: Invalid argument$"):
            dm.create("xbtest-bad", uuid, [linear(loop)], Deadline.after(10))
        [half_made] = seen
        assert half_made.uuid == uuid and not half_made.live_table
        monkeypatch.undo()
        assert_gone_and_creatable_again(devices, loop, uuid)


def assert_gone_and_creatable_again(devices, loop, uuid):
    assert dm.info(uuid) is None
    assert "xbtest-bad" not in {device.name for device in dm.list_devices()}
    # nothing half-made stands in the way of the same name and uuid
    made_uuid, devnum = devices("bad", [linear(loop)])
    assert made_uuid == uuid
    assert read_at(dm.node(devnum), 0, len(MARK_0)) == MARK_0
    assert dm.remove(uuid, Deadline.after(10)) is True


def test_a_name_or_uuid_in_use_is_refused_and_the_device_left_alone(tmp_path, devices):
    with foreign_loop(image(tmp_path / "base.img")) as loop_node:
        loop = devnum_of(loop_node)
        uuid, devnum = devices("taken", [linear(loop)])
        for name, other_uuid in (("xbtest-other", uuid), ("xbtest-taken", uuid + "-2")):
            with pytest.raises(HotplugError, match=r"cannot create .*: Device or resource busy "
                                                   r"\(a device with that name or uuid exists\)"):
                dm.create(name, other_uuid, [linear(loop)], Deadline.after(10))
        assert dm.info(uuid + "-2") is None
        assert dm.info(uuid).live_table
        assert read_at(dm.node(devnum), 0, len(MARK_0)) == MARK_0
        assert dm.remove(uuid, Deadline.after(10)) is True


def test_create_and_remove_never_wait_for_udev(tmp_path):
    """udev's event queue stopped (`udevadm control --stop-exec-queue`):
    udevd takes events and runs no rule, as when udev is hung, busy past
    our deadline, or in another IPC namespace; stopping udevd itself would
    take dom0's udev away from the tests that follow. dmsetup, the control,
    waits there for its cookie; xenblock.dm does not."""
    with foreign_loop(image(tmp_path / "base.img")) as loop_node:
        loop = devnum_of(loop_node)
        settle()
        control = None
        subprocess.run(["udevadm", "control", "--stop-exec-queue"], check=True)
        try:
            started = time.monotonic()
            uuid = f"{dm.UUID_PREFIX}TEST-noudev"
            devnum = dm.create("xbtest-noudev", uuid, [linear(loop)], Deadline.after(10))
            try:
                assert read_at(dm.node(devnum), 0, len(MARK_0)) == MARK_0
            finally:
                assert dm.remove(uuid, Deadline.after(10)) is True
            took = time.monotonic() - started
            assert took < 3, f"create, read and remove took {took:.1f} s"

            control = subprocess.Popen(["dmsetup", "create", "xbtest-cookie", "--uuid", "XBTEST-COOKIE",
                                        "--table", f"0 {SECTORS} linear {loop} 0"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = Deadline.after(30)
            while not ((found := dm.info("XBTEST-COOKIE")) and found.live_table and not found.suspended):
                assert not deadline.expired() and control.poll() is None, "dmsetup create failed"
                time.sleep(0.1)
            time.sleep(3)  # its device is live; it waits only for udev now
            assert control.poll() is None, "dmsetup did not wait for its cookie: was udev's queue stopped?"
        finally:
            subprocess.run(["udevadm", "control", "--start-exec-queue"], check=True)
            if control is not None:
                try:
                    control.wait(timeout=60)
                finally:
                    if control.returncode is None:
                        control.kill()
                        control.wait()
                settle()
                subprocess.run(["dmsetup", "remove", "--retry", "xbtest-cookie"], check=True, capture_output=True)
        assert control.returncode == 0
