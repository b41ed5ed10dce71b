"""Partition tables read by xenblock.partitions, checked against util-linux.

Tables are written by sfdisk (fdisk for 4096-byte sectors: sfdisk 2.38 has
no --sector-size) into small sparse images, then what partitions() finds is
compared with what sfdisk/fdisk list. Crafted damage (loops, truncation,
corrupt checksums, absurd sizes) is written with struct on top of those.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import pytest

from xenblock import partitions
from xenblock.errors import HotplugError

MIB = 1 << 20
SECTOR = 512
# fdisk and sfdisk live in /sbin on Debian, off an ordinary user's PATH
TOOL_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
EXTENDED_TYPES = {"5", "f", "85"}
GPT_HEADER = struct.Struct("<8sIII4xQQQQ16sQIII")
GPT_HEADER_FIELDS = ("signature revision header_size header_crc my_lba alternate_lba first_usable"
                     " last_usable disk_guid entries_lba entry_count entry_size entries_crc").split()


def required_tool(name):
    """The tool's path; the test fails (never skips) without it: a missing
    sfdisk must not turn these comparisons into silent passes."""
    path = shutil.which(name, path=TOOL_PATH)
    if path is None:
        pytest.fail(f"{name} (util-linux, Debian package fdisk) is missing: this test compares with it")
    return path


@pytest.fixture
def sfdisk():
    return required_tool("sfdisk")


@pytest.fixture
def fdisk():
    return required_tool("fdisk")


def blank_image(tmp_path, size, name="disk.img"):
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def run(*command, stdin=""):
    return subprocess.run(command, input=stdin, text=True, capture_output=True, check=True).stdout


def sfdisk_image(sfdisk, tmp_path, size, script, delete=()):
    path = blank_image(tmp_path, size)
    # a file: nothing for the kernel to reread (which costs sfdisk 0.25 s)
    quiet = ("--quiet", "--no-reread", "--no-tell-kernel")
    run(sfdisk, *quiet, path, stdin=script)
    for number in delete:
        run(sfdisk, *quiet, "--delete", path, str(number))
    return path


def sfdisk_view(sfdisk, path):
    """[(number, start, length, extended)] in bytes, as sfdisk reads the image."""
    table = json.loads(run(sfdisk, "--json", path))["partitiontable"]
    size = table["sectorsize"]
    return sorted((int(p["node"].removeprefix(table["device"])), p["start"] * size, p["size"] * size,
                   p["type"] in EXTENDED_TYPES) for p in table.get("partitions", []))


def fdisk_view(fdisk, path, sector_size):
    """[(number, start, length)] in bytes, as fdisk lists the image read with sector_size."""
    listing = run(fdisk, "--sector-size", str(sector_size), "--list", "--output", "Device,Start,Sectors", path)
    found = []
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0].startswith(path):
            found.append((int(fields[0].removeprefix(path)), int(fields[1]) * sector_size,
                          int(fields[2]) * sector_size))
    return sorted(found)


def with_image(path, read):
    fd = os.open(path, os.O_RDONLY)
    try:
        return read(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def ours(path):
    return [(number, e.start, e.length, e.extended)
            for number, e in with_image(path, partitions.partitions)]


def find(path, number):
    return with_image(path, lambda fd, size: partitions.find(fd, size, number))


def refusal(path, number):
    with pytest.raises(HotplugError) as caught:
        find(path, number)
    return str(caught.value)


def put(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def get(path, offset, size):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def mbr_slot(type_, start, count, boot=0, chs=b"\xfe\xff\xff"):
    return struct.pack("<B3sB3sII", boot, chs, type_, chs, start, count)


def put_slot(path, sector, index, slot):
    put(path, sector * SECTOR + 446 + 16 * index, slot)


def signed_sector(*slots):
    """A 512-byte MBR/EBR holding slots (up to 4) and the 0x55AA signature."""
    table = b"".join(slots).ljust(64, b"\0")
    return bytes(446) + table + b"\x55\xaa"


# --- MBR ---------------------------------------------------------------------

# Primaries 1 and 2, extended 3 with three logicals (their EBRs 2048 sectors
# before each), primary 4 after the extended partition.
MBR_SCRIPT = """label: dos
start=2048, size=4096, type=83
start=6144, size=2048, type=83
start=10240, size=40000, type=5
start=12288, size=2048, type=83
start=16384, size=2048, type=82
start=20480, size=2048, type=83
start=51200, size=4096, type=83
"""


def mbr_with_logicals(sfdisk, tmp_path):
    """MBR_SCRIPT with slot 2 emptied: the slots after it keep their numbers."""
    return sfdisk_image(sfdisk, tmp_path, 40 * MIB, MBR_SCRIPT, delete=[2])


def test_mbr_primaries_and_logicals_are_numbered_as_sfdisk_numbers_them(sfdisk, tmp_path):
    path = mbr_with_logicals(sfdisk, tmp_path)
    expected = sfdisk_view(sfdisk, path)
    assert [number for number, *_ in expected] == [1, 3, 4, 5, 6, 7]  # the test's premise
    assert ours(path) == expected
    assert find(path, 5) == (12288 * SECTOR, 2048 * SECTOR, "MBR partition 5 (logical)", False)
    assert find(path, 4).label == "MBR partition 4 (primary)"


def test_a_slot_of_type_0_with_a_size_is_a_partition(sfdisk, tmp_path):
    # msdos.c skips slots by size, not by type; sfdisk agrees
    path = sfdisk_image(sfdisk, tmp_path, 8 * MIB, "label: dos\nstart=2048, size=2048, type=83\n"
                        "start=4096, size=2048, type=0\nstart=6144, size=2048, type=83\n")
    assert ours(path) == sfdisk_view(sfdisk, path)
    assert [number for number, *_ in ours(path)] == [1, 2, 3]


def test_an_old_chs_table_on_a_partial_last_cylinder_is_exact_to_the_byte(sfdisk, tmp_path):
    cylinder = 255 * 63  # sectors, the geometry DOS-era tools aligned to
    sectors = 3 * cylinder + 1000
    path = sfdisk_image(sfdisk, tmp_path, sectors * SECTOR, f"""label: dos
start=63, size={cylinder - 63}, type=83
start={cylinder}, type=5
start={cylinder + 63}, size={cylinder - 63}, type=83
start={2 * cylinder + 63}, type=82
""")
    # the premise: the first partition's CHS start is cylinder 0, head 1,
    # sector 1, and its end head 254, sector 63 (255 heads, 63 sectors)
    slot = get(path, 446, 16)
    assert (slot[1], slot[2] & 0x3F, slot[3]) == (1, 1, 0)
    assert (slot[5], slot[6] & 0x3F) == (254, 63)
    expected = sfdisk_view(sfdisk, path)
    assert ours(path) == expected
    assert find(path, 1).start == 63 * SECTOR
    last = find(path, 6)
    assert last.end == sectors * SECTOR, "the last logical partition fills the partial cylinder"


def test_an_extended_partition_is_refused_naming_its_logical_ones(sfdisk, tmp_path):
    path = mbr_with_logicals(sfdisk, tmp_path)
    message = refusal(path, 3)
    assert "partition 3 is the MBR's extended partition" in message
    assert "logical partitions 5, 6 and 7" in message
    assert [e.extended for number, e in with_image(path, partitions.partitions) if number == 3] == [True]


@pytest.mark.parametrize("number", [2, 8, 300])
def test_a_missing_number_is_refused_listing_the_partitions_there_are(sfdisk, tmp_path, number):
    path = mbr_with_logicals(sfdisk, tmp_path)
    message = refusal(path, number)
    assert f"there is no partition {number} in the image's MBR" in message
    assert "it has partitions 1, 3 (extended), 4, 5, 6 and 7" in message


@pytest.mark.parametrize("number", [0, -1])
def test_numbers_start_at_1(sfdisk, tmp_path, number):
    path = mbr_with_logicals(sfdisk, tmp_path)
    assert "numbered from 1" in refusal(path, number)


def test_an_image_without_a_table_is_refused(tmp_path):
    path = blank_image(tmp_path, 4 * MIB)
    assert "no partition table" in refusal(path, 1)
    with pytest.raises(HotplugError, match="no partition table"):
        ours(path)


def test_an_image_smaller_than_a_sector_is_refused(tmp_path):
    assert "smaller than one sector" in refusal(blank_image(tmp_path, 100), 1)


@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_an_empty_table_is_refused(sfdisk, tmp_path, label):
    path = sfdisk_image(sfdisk, tmp_path, 4 * MIB, f"label: {label}\n")
    assert sfdisk_view(sfdisk, path) == []
    assert "is empty: it holds no partitions" in refusal(path, 1)


def test_a_file_system_boot_sector_is_not_a_partition_table(tmp_path):
    # A FAT boot sector ends in 0x55AA too, with boot code where the slots
    # are: msdos.c rejects boot flags other than 0x00/0x80.
    path = blank_image(tmp_path, 4 * MIB)
    put(path, 0, signed_sector(mbr_slot(0x83, 2048, 2048, boot=0x3C)))
    assert "file system's boot sector" in refusal(path, 1)


def test_a_truncated_image_keeps_the_partitions_that_fit(sfdisk, tmp_path):
    path = sfdisk_image(sfdisk, tmp_path, 40 * MIB, MBR_SCRIPT)
    os.truncate(path, 20 * MIB)
    assert find(path, 5).label == "MBR partition 5 (logical)"
    assert [number for number, *_ in ours(path)] == [1, 2, 3, 4, 5, 6, 7], "listed as the table says"
    message = refusal(path, 4)
    assert "partition 4 starts at byte 26214400, past the end of the image (20971520 bytes (20 MiB))" in message


@pytest.mark.parametrize("cut, size_text", [(20 * MIB, "20971520 bytes (20 MiB)"),
                                             (SECTOR, "41942528 bytes (40 MiB)")])
def test_a_partition_running_past_the_end_names_both_sizes(sfdisk, tmp_path, cut, size_text):
    path = sfdisk_image(sfdisk, tmp_path, 40 * MIB, "label: dos\nstart=2048, size=4096\nstart=8192\n")
    assert find(path, 2).end == 40 * MIB, "a partition that ends where the image ends fits"
    os.truncate(path, 40 * MIB - cut)
    assert find(path, 1).length == 4096 * SECTOR
    message = refusal(path, 2)
    assert "partition 2 runs past the end of the image" in message
    assert f"ends at byte {40 * MIB} but the image is {size_text}" in message


# --- crafted EBR chains --------------------------------------------------------

def ebr_sectors(path, extended_start):
    """The EBRs' sectors, walked by hand along the links (relative to the
    extended partition)."""
    found, sector = [], extended_start
    while True:
        found.append(sector)
        link = struct.unpack("<B3xB3xII", get(path, sector * SECTOR + 446 + 16, 16))
        if link[3] == 0:
            return found
        sector = extended_start + link[2]


def test_an_ebr_chain_that_loops_is_refused(sfdisk, tmp_path):
    path = mbr_with_logicals(sfdisk, tmp_path)
    first, second, last = ebr_sectors(path, 10240)
    put_slot(path, last, 1, mbr_slot(0x05, second - 10240, 4096))  # back to partition 6's EBR
    message = refusal(path, 1)
    assert "the chain of logical partitions loops: after partition 7 it links back to the EBR at sector " \
           f"{second}" in message


def test_an_ebr_linking_to_itself_is_refused(tmp_path):
    path = blank_image(tmp_path, 1 * MIB)
    put(path, 0, signed_sector(mbr_slot(0x0F, 100, 1000)))
    put(path, 100 * SECTOR, signed_sector(mbr_slot(0x83, 10, 10), mbr_slot(0x05, 0, 1000)))
    assert "loops: after partition 5" in refusal(path, 5)


def test_an_endless_chain_of_empty_ebrs_is_refused(tmp_path):
    path = blank_image(tmp_path, 1 * MIB)
    put(path, 0, signed_sector(mbr_slot(0x83, 1000, 100), mbr_slot(0x85, 1, 900)))
    for link in range(300):  # each EBR links to the next sector, none holds a partition
        put(path, (1 + link) * SECTOR, signed_sector(bytes(16), mbr_slot(0x05, link + 1, 1)))
    assert "longer than 256 EBRs" in refusal(path, 1)


def test_more_logical_partitions_than_linux_numbers_are_refused(tmp_path):
    path = blank_image(tmp_path, 1 * MIB)
    put(path, 0, signed_sector(mbr_slot(0x05, 1, 1000)))
    for link in range(255):
        put(path, (1 + 2 * link) * SECTOR, signed_sector(mbr_slot(0x83, 1, 1), mbr_slot(0x05, 2 * link + 2, 2)))
    assert "more logical partitions than Linux numbers (up to 255)" in refusal(path, 5)


def test_a_chain_leaving_the_image_keeps_the_logicals_before_and_says_so(tmp_path):
    path = blank_image(tmp_path, 1 * MIB)
    put(path, 0, signed_sector(mbr_slot(0x05, 100, 1900)))
    put(path, 100 * SECTOR, signed_sector(mbr_slot(0x83, 10, 10), mbr_slot(0x05, 5000, 100)))
    assert find(path, 5).start == 110 * SECTOR
    assert "continues after partition 5 at sector 5100, past the end of the image" in refusal(path, 6)


def test_garbage_in_the_third_ebr_entry_is_ignored_as_linux_ignores_it(tmp_path):
    # msdos.c uses an EBR's 3rd and 4th entries only inside the extended partition
    path = blank_image(tmp_path, 1 * MIB)
    put(path, 0, signed_sector(mbr_slot(0x05, 100, 200)))
    put(path, 100 * SECTOR, signed_sector(mbr_slot(0x83, 10, 10), bytes(16), mbr_slot(0x83, 500, 10),
                                          mbr_slot(0x83, 20, 10)))
    assert [(n, e.start // SECTOR) for n, e in with_image(path, partitions.partitions)] == \
        [(1, 100), (5, 110), (6, 120)]


# --- GPT -----------------------------------------------------------------------

GPT_SCRIPT = "label: gpt\nsize=2M\nsize=3M\nsize=1M\nsize=1M\n"


def test_gpt_with_512_byte_sectors_matches_sfdisk(sfdisk, tmp_path):
    path = sfdisk_image(sfdisk, tmp_path, 20 * MIB, GPT_SCRIPT, delete=[2])
    expected = sfdisk_view(sfdisk, path)
    assert [number for number, *_ in expected] == [1, 3, 4]  # an unused entry keeps its number
    assert ours(path) == expected
    assert find(path, 3).label == "GPT partition 3 (512-byte sectors)"


def test_gpt_entries_past_255_are_not_partitions_as_for_linux(sfdisk, tmp_path):
    # efi.c reads entries while their number stays below DISK_MAX_PARTS (256);
    # sfdisk lists every used entry.
    path = blank_image(tmp_path, 20 * MIB)
    run(sfdisk, "--quiet", "--no-reread", "--no-tell-kernel", path, stdin=f"""label: gpt
table-length: 300
{path}1 : start=2048, size=2048
{path}255 : start=4096, size=2048
{path}256 : start=6144, size=2048
""")
    assert [number for number, *_ in sfdisk_view(sfdisk, path)] == [1, 255, 256]
    assert [number for number, *_ in ours(path)] == [1, 255]
    assert "entry 256 and any after it are not partitions to Linux" in refusal(path, 256)


def fdisk_4096_gpt(fdisk, tmp_path):
    """A GPT written for 4096-byte sectors: partitions 1, 3 and 4 (2 deleted)."""
    path = blank_image(tmp_path, 20 * MIB)
    new = "n\n\n\n+{}\n"
    commands = "g\n" + new.format("2M") + new.format("3M") + new.format("1M") + new.format("1M") + "d\n2\nw\n"
    run(fdisk, "--sector-size", "4096", path, stdin=commands)
    return path


def test_gpt_written_for_4096_byte_sectors_is_read_as_such(fdisk, tmp_path):
    path = fdisk_4096_gpt(fdisk, tmp_path)
    assert get(path, 4096, 8) == b"EFI PART" and get(path, 512, 8) != b"EFI PART"  # the premise
    expected = fdisk_view(fdisk, path, 4096)
    assert [number for number, *_ in expected] == [1, 3, 4]
    assert [(number, start, length) for number, start, length, _ in ours(path)] == expected
    assert find(path, 4).label == "GPT partition 4 (4096-byte sectors)"


def test_a_hybrid_mbr_is_read_as_gpt(sfdisk, tmp_path):
    path = sfdisk_image(sfdisk, tmp_path, 20 * MIB, GPT_SCRIPT)
    gpt = sfdisk_view(sfdisk, path)
    (_, start1, length1, _), (_, start3, length3, _) = gpt[0], gpt[2]
    # gdisk's layout: the 0xEE entry moved to slot 4, slots 1-2 name GPT
    # partitions 3 and 1 for an old OS; as MBR, partition 1 would be GPT's 3
    put(path, 446, mbr_slot(0x0C, start3 // SECTOR, length3 // SECTOR, boot=0x80)
        + mbr_slot(0x83, start1 // SECTOR, length1 // SECTOR) + bytes(16) + mbr_slot(0xEE, 1, 2047))
    assert sfdisk_view(sfdisk, path) == gpt
    assert ours(path) == gpt
    assert find(path, 1) == (start1, length1, "GPT partition 1 (512-byte sectors)", False)


def header_offset(path, sector_size, backup):
    size = os.path.getsize(path)
    return (size // sector_size - 1) * sector_size if backup else sector_size


def damage(path, offset):
    """Flip one byte: a checksum no longer matches."""
    put(path, offset, bytes([get(path, offset, 1)[0] ^ 0xFF]))


@pytest.mark.parametrize("where", ["header", "entries"])
def test_a_corrupt_primary_gpt_gives_way_to_the_backup_as_in_sfdisk(sfdisk, tmp_path, where):
    path = sfdisk_image(sfdisk, tmp_path, 20 * MIB, GPT_SCRIPT, delete=[2])
    intact = sfdisk_view(sfdisk, path)
    # the disk GUID in the header; the type GUID of entry 1 (LBA 2)
    damage(path, 512 + 56 if where == "header" else 1024)
    assert sfdisk_view(sfdisk, path) == intact
    assert ours(path) == intact
    assert find(path, 3).label == "GPT partition 3 (512-byte sectors, backup GPT)"


def test_a_grown_image_finds_the_backup_where_the_primary_header_says(sfdisk, tmp_path):
    # The image was enlarged after the GPT was written: the backup is no
    # longer in the last sector but where the primary header's alternate LBA
    # says, a header still intact when only the primary's entries are
    # corrupt. (sfdisk looks only in the last sector, finds nothing there,
    # and falls back to listing the protective MBR's 0xEE entry.)
    path = sfdisk_image(sfdisk, tmp_path, 20 * MIB, GPT_SCRIPT)
    intact = sfdisk_view(sfdisk, path)
    os.truncate(path, 30 * MIB)
    damage(path, 1024)
    assert ours(path) == intact
    assert find(path, 1).label == "GPT partition 1 (512-byte sectors, backup GPT)"


def test_a_corrupt_primary_gpt_with_4096_byte_sectors_gives_way_to_its_backup(fdisk, tmp_path):
    path = fdisk_4096_gpt(fdisk, tmp_path)
    intact = fdisk_view(fdisk, path, 4096)
    damage(path, 4096 + 56)
    assert fdisk_view(fdisk, path, 4096) == intact
    assert [(number, start, length) for number, start, length, _ in ours(path)] == intact
    assert find(path, 1).label == "GPT partition 1 (4096-byte sectors, backup GPT)"


def test_both_gpts_corrupt_is_refused(sfdisk, tmp_path):
    # sfdisk then falls back to the protective MBR and lists one partition
    # of type 0xEE over the whole disk; Linux (msdos.c) reads no partition
    # from an MBR with a 0xEE entry, and neither do we.
    path = sfdisk_image(sfdisk, tmp_path, 20 * MIB, GPT_SCRIPT)
    damage(path, 512 + 56)
    damage(path, header_offset(path, 512, backup=True) + 56)
    message = refusal(path, 1)
    assert message.startswith("corrupt GPT: both copies are unusable")
    assert "primary header at byte 512 (512-byte sectors): header checksum (CRC32) mismatch" in message
    assert f"backup header at byte {20 * MIB - 512} (512-byte sectors): header checksum" in message


def rewrite_header(path, offset, **changes):
    """Change GPT header fields, with a header CRC to match (a crafted table)."""
    raw = bytearray(get(path, offset, GPT_HEADER.size))
    fields = dict(zip(GPT_HEADER_FIELDS, GPT_HEADER.unpack(raw)))
    fields.update(changes, header_crc=0)
    raw = bytearray(GPT_HEADER.pack(*fields.values()))
    raw[16:20] = struct.pack("<I", zlib.crc32(raw))
    put(path, offset, raw)


def header_field(path, offset, name):
    return dict(zip(GPT_HEADER_FIELDS, GPT_HEADER.unpack(get(path, offset, GPT_HEADER.size))))[name]


@pytest.mark.parametrize("changes, complaint", [
    ({"entry_count": 1_000_000}, "1000000 partition entries (Linux reads 1 to 32768)"),
    ({"entry_count": 0}, "0 partition entries"),
    ({"entry_size": 256}, "partition entries of 256 bytes (Linux reads only 128)"),
    ({"header_size": 4096}, "header size 4096 is not between 92 and 512"),
    ({"last_usable": 1 << 40}, "usable LBAs 2048-1099511627776 do not fit the image's LBAs 0-40959"),
])
def test_absurd_gpt_headers_are_refused(sfdisk, tmp_path, changes, complaint):
    path = sfdisk_image(sfdisk, tmp_path, 20 * MIB, GPT_SCRIPT)
    for backup in (False, True):
        rewrite_header(path, header_offset(path, 512, backup), **changes)
    message = refusal(path, 1)
    assert message.startswith("corrupt GPT")
    assert complaint in message


def rewrite_entry(path, number, first_lba, last_lba):
    """Move GPT partition number (primary table), keeping the checksums right."""
    entries_lba = header_field(path, 512, "entries_lba")
    count = header_field(path, 512, "entry_count")
    put(path, entries_lba * 512 + (number - 1) * 128 + 32, struct.pack("<QQ", first_lba, last_lba))
    rewrite_header(path, 512, entries_crc=zlib.crc32(get(path, entries_lba * 512, count * 128)))


def test_a_gpt_partition_past_the_end_is_refused_and_the_others_are_not(sfdisk, tmp_path):
    path = sfdisk_image(sfdisk, tmp_path, 20 * MIB, GPT_SCRIPT)
    rewrite_entry(path, 4, 30000, 50000)
    assert find(path, 1).label == "GPT partition 1 (512-byte sectors)", "the primary is still valid"
    message = refusal(path, 4)
    assert f"runs past the end of the image: it ends at byte {50001 * 512}" in message
    assert "the image is 20971520 bytes (20 MiB)" in message


def test_a_gpt_partition_ending_before_it_starts_is_refused(sfdisk, tmp_path):
    path = sfdisk_image(sfdisk, tmp_path, 20 * MIB, GPT_SCRIPT)
    rewrite_entry(path, 2, 9000, 8000)
    assert "GPT partition 2 ends (LBA 8000) before it starts (LBA 9000)" in refusal(path, 1)


def test_a_protective_entry_not_at_sector_1_is_no_gpt(sfdisk, tmp_path):
    # efi.c's protective MBR test fails, msdos.c ignores MBRs with 0xEE: Linux sees nothing
    path = sfdisk_image(sfdisk, tmp_path, 20 * MIB, GPT_SCRIPT)
    put(path, 446, mbr_slot(0xEE, 2, 40000))
    assert "does not start at sector 1" in refusal(path, 1)


def test_a_protective_mbr_without_any_gpt_is_refused(tmp_path):
    path = blank_image(tmp_path, 4 * MIB)
    put(path, 0, signed_sector(mbr_slot(0xEE, 1, 8191)))
    assert "corrupt GPT: the MBR announces one (type 0xEE) but there is no GPT header" in refusal(path, 1)


# --- how it reads ----------------------------------------------------------------

def test_reading_leaves_the_descriptor_offset_alone(sfdisk, tmp_path):
    # pread only: the caller's descriptor is shared with the lock and the loop bind
    path = mbr_with_logicals(sfdisk, tmp_path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 12345, os.SEEK_SET)
        partitions.find(fd, os.fstat(fd).st_size, 6)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 12345
    finally:
        os.close(fd)


def test_the_module_imports_nothing_heavy():
    # It runs on every guest start: no subprocess, json, pyudev or hashlib.
    code = ("import sys; import xenblock.partitions; "
            "print(sorted({'subprocess', 'json', 'pyudev', 'hashlib'} & set(sys.modules)))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    output = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"
