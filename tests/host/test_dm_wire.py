"""xenblock.dm's wire format, against byte layouts derived from
linux/dm-ioctl.h by hand (the host kernel has no device-mapper), and its
logic (rollback, busy retries, buffer growth) against a stand-in for the
kernel's side of the ioctl. The real kernel is in tests/xen/test_dm.py.

Offsets in struct dm_ioctl (all little-endian, no implicit padding):
  0 version[3]  12 data_size  16 data_start  20 target_count  24 open_count
  28 flags  32 event_nr  36 padding  40 dev (u64)  48 name[128]
  176 uuid[129]  305 data[7]  = 312 bytes.
struct dm_target_spec: 0 sector_start  8 length  16 status  20 next
  24 target_type[16]  = 40 bytes, parameters after it.
struct dm_name_list: 0 dev  8 next  12 name.
"""
import errno
import os
import struct
import time

import pytest

from xenblock import dm
from xenblock.blockdev import Devnum
from xenblock.deadline import Deadline
from xenblock.errors import HotplugError

UUID = "XENBLOCK-test-0"


def u32(buffer, offset):
    return struct.unpack_from("<I", buffer, offset)[0]


def u64(buffer, offset):
    return struct.unpack_from("<Q", buffer, offset)[0]


def cstr(buffer, offset, size):
    return bytes(buffer[offset:offset + size]).split(b"\0", 1)[0].decode()


def huge_encode_dev(major, minor):
    """The kernel's new_encode_dev, written out from include/linux/kdev_t.h."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def reply_header(buffer, *, version=(4, 47, 0), data_size=None, target_count=0, open_count=0, flags=0,
                 event_nr=0, dev=0, name="", uuid=""):
    """Write a reply's header into buffer as the kernel does, by offset."""
    struct.pack_into("<3I", buffer, 0, *version)
    struct.pack_into("<I", buffer, 12, len(buffer) if data_size is None else data_size)
    struct.pack_into("<I", buffer, 16, 312)
    struct.pack_into("<IiII", buffer, 20, target_count, open_count, flags, event_nr)
    struct.pack_into("<Q", buffer, 40, dev)
    buffer[48:176] = name.encode().ljust(128, b"\0")
    buffer[176:305] = uuid.encode().ljust(129, b"\0")


def align8(offset):
    return (offset + 7) & ~7


# ---------------------------------------------------------------- layouts

def test_struct_sizes_and_ioctl_numbers():
    assert dm.HEADER.size == 312
    assert dm.TARGET_SPEC.size == 40
    assert dm.NAME_LIST.size == 12
    # _IOWR(0xfd, nr, 312 bytes) = 0xc0000000 | 312 << 16 | 0xfd00 | nr
    assert dm.DM_VERSION == 0xC138FD00
    assert (dm.DM_LIST_DEVICES, dm.DM_DEV_CREATE, dm.DM_DEV_REMOVE) == (0xC138FD02, 0xC138FD03, 0xC138FD04)
    assert (dm.DM_DEV_SUSPEND, dm.DM_DEV_STATUS) == (0xC138FD06, 0xC138FD07)
    assert (dm.DM_TABLE_LOAD, dm.DM_TABLE_STATUS) == (0xC138FD09, 0xC138FD0C)


def test_request_header_fields_at_their_offsets():
    buffer = dm.pack_request(name="guest-disk", uuid=UUID, flags=dm.READONLY_FLAG, event_nr=0x4E0000,
                             target_count=2, data=b"x" * 20)
    assert isinstance(buffer, bytearray) and len(buffer) == 312 + 20
    assert struct.unpack_from("<3I", buffer, 0) == (4, 0, 0)
    assert u32(buffer, 12) == 332  # data_size: the whole buffer
    assert u32(buffer, 16) == 312  # data_start: right after the header
    assert u32(buffer, 20) == 2
    assert u32(buffer, 28) == 1
    assert u32(buffer, 32) == 0x4E0000
    assert u64(buffer, 40) == 0
    assert cstr(buffer, 48, 128) == "guest-disk"
    assert cstr(buffer, 176, 129) == UUID
    assert buffer[305:312] == bytes(7)
    assert buffer[312:] == b"x" * 20


def test_request_leaves_room_for_a_reply():
    buffer = dm.pack_request(uuid=UUID, room=16384)
    assert len(buffer) == 312 + 16384 and u32(buffer, 12) == len(buffer)


@pytest.mark.parametrize("name, uuid", [("n" * 128, ""), ("", "X" * 129)])
def test_names_that_leave_no_room_for_the_nul_are_refused(name, uuid):
    with pytest.raises(ValueError):
        dm.pack_request(name=name, uuid=uuid)
    dm.pack_request(name=name[:127], uuid=uuid[:128])  # the longest that fit


def test_reply_header_unpacked():
    buffer = bytearray(400)
    reply_header(buffer, target_count=1, open_count=2, flags=dm.SUSPEND_FLAG | dm.ACTIVE_PRESENT_FLAG,
                 event_nr=7, dev=huge_encode_dev(253, 3), name="guest-disk", uuid=UUID)
    header = dm.unpack_header(buffer)
    assert header.version == (4, 47, 0)
    assert (header.data_size, header.data_start, header.target_count, header.open_count) == (400, 312, 1, 2)
    assert header.flags == dm.SUSPEND_FLAG | dm.ACTIVE_PRESENT_FLAG and header.event_nr == 7
    assert header.dev == Devnum(253, 3)
    assert (header.name, header.uuid) == ("guest-disk", UUID)


@pytest.mark.parametrize("major, minor", [(253, 0), (253, 255), (253, 256), (254, 1048575), (4095, 70000)])
def test_device_numbers_decoded_as_the_kernel_encodes_them(major, minor):
    assert dm.decode_dev(huge_encode_dev(major, minor)) == Devnum(major, minor)


# ---------------------------------------------------------------- tables

def test_table_load_records():
    packed = dm.pack_targets([dm.Target(0, 2048, "linear", "7:0 2048"),  # 8 bytes: NUL needs 8 more
                              dm.Target(2048, 1000, "snapshot", "7:0 7:1 N 8"),  # 11 bytes
                              dm.Target(3048, 8, "zero", "")])
    # first record at 0: 40-byte spec, "7:0 2048" + NUL + 7 bytes padding = 16
    assert u64(packed, 0) == 0 and u64(packed, 8) == 2048 and u32(packed, 16) == 0
    assert u32(packed, 20) == 56
    assert cstr(packed, 24, 16) == "linear" and packed[24:40] == b"linear".ljust(16, b"\0")
    assert packed[40:56] == b"7:0 2048" + bytes(8)
    # second at 56: params 11 bytes + NUL, padded to 16
    assert u64(packed, 56) == 2048 and u64(packed, 64) == 1000 and u32(packed, 76) == 56
    assert cstr(packed, 80, 16) == "snapshot"
    assert packed[96:112] == b"7:0 7:1 N 8" + bytes(5)
    # third at 112: empty params are one NUL, padded to 8
    assert u64(packed, 112) == 3048 and u32(packed, 132) == 48
    assert packed[152:160] == bytes(8)
    assert len(packed) == 160


@pytest.mark.parametrize("target", [dm.Target(0, 8, "", "x"), dm.Target(0, 8, "t" * 16, "x"),
                                    dm.Target(0, 8, "linear", "7:0\0 0")])
def test_bad_targets_are_refused_before_anything_is_sent(target):
    with pytest.raises(ValueError):
        dm.pack_targets([target])


def status_reply(targets, version=(4, 47, 0)):
    """A DM_TABLE_STATUS reply built as the kernel's retrieve_status does:
    next counts from the first record; data_size ends after the last string."""
    data = bytearray()
    used = 0
    for start, length, kind, text in targets:
        spec = len(data)
        data += struct.pack("<QQiI16s", start, length, 0, 0, kind.encode())
        data += text.encode() + b"\0"
        used = 312 + len(data)
        data += bytes(align8(len(data)) - len(data))
        struct.pack_into("<I", data, spec + 20, len(data))
    buffer = bytearray(312) + data + bytes(64)  # room the kernel did not use
    reply_header(buffer, version=version, data_size=used or 312, target_count=len(targets))
    return buffer


def test_status_reply_parsed():
    buffer = status_reply([(0, 8192, "snapshot", "16/8192 0"), (8192, 100, "linear", ""),
                           (8292, 8, "error", "x" * 8)])
    header = dm.unpack_header(buffer)
    assert dm.parse_targets(buffer, header) == [dm.Target(0, 8192, "snapshot", "16/8192 0"),
                                                 dm.Target(8192, 100, "linear", ""),
                                                 dm.Target(8292, 8, "error", "x" * 8)]


def test_snapshot_usage():
    usage = dm.snapshot_usage("16/8192 0")
    assert usage == dm.SnapshotUsage(16, 8192, 0, None) and usage.fill == 16 / 8192
    persistent = dm.snapshot_usage("4112/2097152 16")
    assert (persistent.allocated, persistent.total, persistent.metadata) == (4112, 2097152, 16)
    for word in ("Invalid", "Overflow", "Merge failed", "Unknown"):
        assert dm.snapshot_usage(word) == dm.SnapshotUsage(None, None, None, word)
        assert dm.snapshot_usage(word).fill is None


# ---------------------------------------------------------------- device lists

def names_reply(devices, version=(4, 47, 0), with_flags=True, uuid_flags=True):
    """A DM_LIST_DEVICES reply built as the kernel's list_devices does:
    (name, major, minor, uuid) per device; uuid None: the device has none.
    with_flags: event_nr and flags after the name (4.38 on); uuid_flags: the
    kernel honoured DM_UUID_FLAG (4.45 on)."""
    data = bytearray()
    previous = None
    for name, major, minor, uuid in devices:
        record = len(data)
        if previous is not None:
            struct.pack_into("<I", data, previous + 8, record - previous)
        data += struct.pack("<QI", huge_encode_dev(major, minor), 0) + name.encode() + b"\0"
        if with_flags:
            data += bytes(align8(312 + len(data)) - 312 - len(data))
            flags = dm.NAME_LIST_HAS_UUID if uuid is not None else dm.NAME_LIST_DOESNT_HAVE_UUID
            data += struct.pack("<II", 5, flags if uuid_flags else 0)
            if uuid is not None and uuid_flags:
                data += uuid.encode() + b"\0"
        data += bytes(align8(312 + len(data)) - 312 - len(data))
        previous = record
    if not devices:
        data += bytes(12)  # the kernel's "no data": one record with dev 0
    buffer = bytearray(312) + data
    reply_header(buffer, version=version)
    return buffer


def test_device_list_with_uuids():
    buffer = names_reply([("a", 253, 0, UUID), ("lvm-name-longer-than-eight", 253, 300, "LVM-abc"),
                          ("no-uuid", 253, 2, None)])
    assert dm.parse_names(buffer, dm.unpack_header(buffer)) == [
        dm.Listed("a", UUID, Devnum(253, 0)),
        dm.Listed("lvm-name-longer-than-eight", "LVM-abc", Devnum(253, 300)),
        dm.Listed("no-uuid", "", Devnum(253, 2))]


def test_empty_device_list():
    buffer = names_reply([])
    assert dm.parse_names(buffer, dm.unpack_header(buffer)) == []


def test_device_list_of_a_kernel_that_gives_no_uuids():
    # 4.38 to 4.44: event_nr and flags present, flags 0 (DM_UUID_FLAG ignored)
    buffer = names_reply([("a", 253, 0, "X"), ("b", 253, 1, None)], version=(4, 44, 0), uuid_flags=False)
    assert [d.uuid for d in dm.parse_names(buffer, dm.unpack_header(buffer))] == [None, None]
    # before 4.38: no event_nr or flags at all
    old = names_reply([("a", 253, 0, None), ("b", 253, 1, None)], version=(4, 37, 0), with_flags=False)
    assert dm.parse_names(old, dm.unpack_header(old)) == [dm.Listed("a", None, Devnum(253, 0)),
                                                          dm.Listed("b", None, Devnum(253, 1))]


# ---------------------------------------------------------------- the udev cookie

def test_udev_cookie_has_the_flags_above_and_no_semaphore_below():
    assert dm.UDEV_COOKIE & 0xFFFF == 0  # nothing for anyone to wait on
    flags = dm.UDEV_COOKIE >> 16
    # the bits dmsetup udevflags names (libdevmapper.h)
    named = {0x1: "DISABLE_DM_RULES", 0x2: "DISABLE_SUBSYSTEM_RULES", 0x4: "DISABLE_DISK_RULES",
             0x8: "DISABLE_OTHER_RULES", 0x10: "LOW_PRIORITY", 0x20: "DISABLE_LIBRARY_FALLBACK",
             0x40: "PRIMARY_SOURCE"}
    assert {name for bit, name in named.items() if flags & bit} == {
        "DISABLE_SUBSYSTEM_RULES", "DISABLE_DISK_RULES", "DISABLE_OTHER_RULES", "PRIMARY_SOURCE"}
    assert dm.UDEV_COOKIE == 5111808  # what the uevent says: DM_COOKIE=5111808


# ---------------------------------------------------------------- against a stand-in kernel

class FakeKernel:
    """The kernel's side of the ioctls, enough for the logic around them:
    devices by uuid; answers[command] may hold errnos to fail with, in turn."""

    def __init__(self):
        self.devices = {}  # uuid -> [name, minor, open_count, tables]
        self.calls = []  # (command, header) of each call
        self.answers = {}

    def __call__(self, command, buffer):
        header = dm.unpack_header(buffer)
        self.calls.append((command, header))
        pending = self.answers.get(command)
        if pending:
            code = pending.pop(0)
            raise OSError(code, os.strerror(code))
        if command == dm.DM_DEV_CREATE:
            if header.uuid in self.devices:
                raise OSError(errno.EBUSY, "")
            self.devices[header.uuid] = [header.name, len(self.devices), 0]
            reply_header(buffer, data_size=312, dev=huge_encode_dev(253, self.devices[header.uuid][1]),
                         name=header.name, uuid=header.uuid)
            return
        device = self.devices.get(header.uuid)
        if device is None:
            raise OSError(errno.ENXIO, "")
        if command == dm.DM_DEV_REMOVE:
            if device[2]:
                raise OSError(errno.EBUSY, "")
            del self.devices[header.uuid]
        if command == dm.DM_DEV_STATUS:
            reply_header(buffer, data_size=312, open_count=device[2], dev=huge_encode_dev(253, device[1]),
                         name=device[0], uuid=header.uuid)

    def commands(self):
        return [command for command, _ in self.calls]


@pytest.fixture
def kernel(monkeypatch):
    fake = FakeKernel()
    monkeypatch.setattr(dm, "_ioctl", fake)
    return fake


def test_create_loads_and_resumes_with_the_cookie(kernel):
    devnum = dm.create("guest", UUID, [dm.Target(0, 8, "zero", "")], Deadline.after(1))
    assert devnum == Devnum(253, 0)
    assert kernel.commands() == [dm.DM_DEV_CREATE, dm.DM_TABLE_LOAD, dm.DM_DEV_SUSPEND]
    create, load, resume = (header for _, header in kernel.calls)
    assert (create.name, create.uuid, create.event_nr) == ("guest", UUID, dm.UDEV_COOKIE)
    # after the create, the device is looked up by uuid alone
    assert (load.name, load.uuid, load.target_count, load.flags) == ("", UUID, 1, 0)
    assert (resume.name, resume.uuid, resume.event_nr, resume.flags) == ("", UUID, dm.UDEV_COOKIE, 0)


def test_read_only_create_loads_a_read_only_table(kernel):
    dm.create("guest", UUID, [dm.Target(0, 8, "zero", "")], Deadline.after(1), read_only=True)
    assert kernel.calls[1][1].flags == dm.READONLY_FLAG


@pytest.mark.parametrize("failing, operation", [(dm.DM_TABLE_LOAD, "load table of"), (dm.DM_DEV_SUSPEND, "resume")])
def test_a_create_that_fails_half_way_removes_the_device(kernel, failing, operation):
    kernel.answers[failing] = [errno.EINVAL]
    with pytest.raises(HotplugError) as caught:
        dm.create("guest", UUID, [dm.Target(0, 8, "zero", "")], Deadline.after(1))
    assert str(caught.value) == f"device-mapper: cannot {operation} {UUID}: Invalid argument"
    assert kernel.commands()[-1] == dm.DM_DEV_REMOVE and kernel.calls[-1][1].event_nr == dm.UDEV_COOKIE
    assert kernel.devices == {}


def test_a_create_refused_touches_nothing(kernel):
    dm.create("guest", UUID, [dm.Target(0, 8, "zero", "")], Deadline.after(1))
    with pytest.raises(HotplugError, match=f"cannot create other \\({UUID}\\): Device or resource busy "
                                           r"\(a device with that name or uuid exists\)"):
        dm.create("other", UUID, [dm.Target(0, 8, "zero", "")], Deadline.after(1))
    assert kernel.commands()[3:] == [dm.DM_DEV_CREATE]
    assert UUID in kernel.devices


def test_a_bad_target_creates_nothing(kernel):
    with pytest.raises(ValueError):
        dm.create("guest", UUID, [dm.Target(0, 8, "a-type-name-too-long", "")], Deadline.after(1))
    assert kernel.calls == []


def test_only_our_uuids_are_created_or_removed(kernel):
    with pytest.raises(ValueError):
        dm.create("guest", "LVM-xyz", [dm.Target(0, 8, "zero", "")], Deadline.after(1))
    with pytest.raises(ValueError):
        dm.remove("LVM-xyz", Deadline.after(1))
    assert kernel.calls == []


def test_remove_of_nothing_is_false(kernel):
    assert dm.remove(UUID, Deadline.after(1)) is False


def test_remove_retries_busy_until_the_deadline_then_names_the_device(kernel):
    dm.create("guest", UUID, [dm.Target(0, 8, "zero", "")], Deadline.after(1))
    kernel.devices[UUID][2] = 1  # held open
    started = time.monotonic()
    with pytest.raises(HotplugError) as caught:
        dm.remove(UUID, Deadline.after(0.5))
    assert 0.5 <= time.monotonic() - started < 1.5
    assert str(caught.value) == f"device-mapper: cannot remove {UUID}: Device or resource busy (open 1 times)"
    assert kernel.commands().count(dm.DM_DEV_REMOVE) > 2
    kernel.devices[UUID][2] = 0
    assert dm.remove(UUID, Deadline.after(1)) is True


def test_remove_that_gets_free_in_time_succeeds(kernel):
    dm.create("guest", UUID, [dm.Target(0, 8, "zero", "")], Deadline.after(1))
    kernel.answers[dm.DM_DEV_REMOVE] = [errno.EBUSY, errno.EBUSY]  # udev probing for a moment
    assert dm.remove(UUID, Deadline.after(5)) is True
    assert kernel.commands().count(dm.DM_DEV_REMOVE) == 3


def test_full_buffer_is_asked_again_with_more_room(monkeypatch):
    sizes = []

    def kernel(command, buffer):
        sizes.append(len(buffer))
        if len(buffer) < 312 + (64 << 10):
            reply_header(buffer, flags=dm.BUFFER_FULL_FLAG, data_size=len(buffer))
            return
        reply = names_reply([("a", 253, 0, UUID)])
        buffer[:len(reply)] = reply
        struct.pack_into("<I", buffer, 12, len(reply))

    monkeypatch.setattr(dm, "_ioctl", kernel)
    assert dm.list_devices() == [dm.Listed("a", UUID, Devnum(253, 0))]
    assert sizes == [312 + (16 << 10), 312 + (32 << 10), 312 + (64 << 10)]


def test_list_asks_a_device_for_its_uuid_where_the_kernel_does_not_list_it(monkeypatch):
    def kernel(command, buffer):
        if command == dm.DM_LIST_DEVICES:
            assert dm.unpack_header(buffer).flags == dm.UUID_FLAG
            reply = names_reply([("a", 253, 0, None)], version=(4, 37, 0), with_flags=False)
            buffer[:len(reply)] = reply
            struct.pack_into("<I", buffer, 12, len(reply))
        else:
            assert command == dm.DM_DEV_STATUS and dm.unpack_header(buffer).name == "a"
            reply_header(buffer, data_size=312, dev=huge_encode_dev(253, 0), name="a", uuid=UUID)

    monkeypatch.setattr(dm, "_ioctl", kernel)
    assert dm.list_devices() == [dm.Listed("a", UUID, Devnum(253, 0))]


def test_missing_device_mapper_is_named():
    if os.path.exists(dm.CONTROL):
        pytest.skip("this host has device-mapper")
    with pytest.raises(HotplugError, match=r"device-mapper: cannot open /dev/mapper/control: .*dm_mod"):
        dm.version()
