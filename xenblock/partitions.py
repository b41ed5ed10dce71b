"""Partition tables of disk images, numbered the way Linux numbers them.

block-part hands partition N of an image to a guest as a whole disk; N must
name the partition the administrator sees as imgN after `losetup -P` or
kpartx, so the numbering follows the kernel's readers (block/partitions/
msdos.c and efi.c): MBR primaries keep their slot number 1-4, logical
partitions count from 5 along the chain of extended boot records (EBRs), a
GPT partition is its entry's index + 1.

Everything is read with os.pread on the caller's descriptor (the image
opened once, see source.py) and parsed with struct: this runs on every guest
start, so no processes and no heavy imports.

A table the kernel would read differently or half-way (a loop in the EBR
chain, a GPT with absurd sizes, both GPT copies corrupt) is refused with a
HotplugError rather than guessed at; the caller adds the image's name.
"""
import os
import struct
import zlib
from collections import namedtuple

from .errors import HotplugError

# MBR and EBR entries count 512-byte sectors. The kernel counts them in the
# device's logical blocks, and an image file is a disk of 512-byte sectors
# to losetup, kpartx and the loop devices xenblock binds (loop.py).
MBR_SECTOR = 512
MBR_SIGNATURE = b"\x55\xaa"
MBR_SLOTS_OFFSET = 446
# boot flag, CHS start (skipped), type, CHS end (skipped), LBA start, sector count
MBR_SLOT = struct.Struct("<B3xB3xII")
VALID_BOOT_FLAGS = (0x00, 0x80)
# DOS (0x05), Windows LBA (0x0F) and Linux (0x85) extended partitions: the
# types msdos.c's is_extended_partition() follows.
EXTENDED_TYPES = (0x05, 0x0F, 0x85)
GPT_PROTECTIVE_TYPE = 0xEE
FIRST_LOGICAL = 5

# The kernel numbers partitions below DISK_MAX_PARTS (256) and stops there.
MAX_PARTITION_NUMBER = 255
# Longer EBR chains are no table anyone wrote: one EBR per logical partition,
# and there is room for 251 of those.
MAX_EBRS = 256

GPT_SIGNATURE = b"EFI PART"
# The header at LBA 1: where LBA 1 is depends on the sector size the GPT was
# written for, and an image does not say; a GPT from a 4Kn disk is read
# with 4096-byte LBAs, as the kernel reads it on such a disk.
GPT_SECTOR_SIZES = (512, 4096)
GPT_PRIMARY_LBA = 1
# signature, revision, header size, header CRC, reserved, my LBA, alternate
# LBA, first usable LBA, last usable LBA, disk GUID, entries LBA, number of
# entries, entry size, entries CRC
GPT_HEADER = struct.Struct("<8sIII4xQQQQ16sQIII")
GPT_HEADER_CRC_OFFSET = 16
# type GUID, unique GUID, first LBA, last LBA (inclusive); attributes and name unread
GPT_ENTRY = struct.Struct("<16s16sQQ")
# efi.c refuses any other entry size (it indexes entries as struct gpt_entry)
GPT_ENTRY_SIZE = 128
# efi.c refuses an entry array larger than KMALLOC_MAX_SIZE (4 MiB on x86-64)
MAX_GPT_ENTRIES_BYTES = 4 << 20
UNUSED_TYPE_GUID = bytes(16)


class Extent(namedtuple("Extent", "start length label extended", defaults=(False,))):
    """One partition in bytes: start offset in the image and length; label
    says which table and entry ("MBR partition 5 (logical)"); extended is
    True for an MBR extended partition, the container of the logical ones."""
    __slots__ = ()

    @property
    def end(self):
        return self.start + self.length


GptHeader = namedtuple(
    "GptHeader",
    "signature revision header_size header_crc my_lba alternate_lba first_usable last_usable"
    " disk_guid entries_lba entry_count entry_size entries_crc")

# kind names the table in messages ("MBR", "GPT (4096-byte sectors)");
# notes say where a table was cut short, for a "no partition N" error.
Table = namedtuple("Table", "kind partitions notes")


class _Unusable(Exception):
    """One GPT copy that cannot be used, and why (for the "corrupt GPT" error)."""


def find(fd, image_size, number):
    """The Extent of partition number in the image open on fd, image_size
    bytes long; a HotplugError if there is no such data partition or it does
    not fit in the image."""
    if number < 1:
        raise HotplugError(f"partition {number} does not exist: partitions are numbered from 1")
    table = _read_table(fd, image_size)
    extent = dict(table.partitions).get(number)
    if extent is None:
        raise HotplugError(f"there is no partition {number} in the image's {table.kind}: "
                           f"{_listing(table)}" + "".join(f"; {note}" for note in table.notes))
    if extent.extended:
        raise HotplugError(_extended_refusal(number, table))
    _check_inside(number, extent, image_size)
    return extent


def partitions(fd, image_size):
    """(number, Extent) of every partition of the image, by number, the
    extended container included (Extent.extended); a HotplugError if there
    is no usable table. Extents are as the table gives them: find() refuses
    one that runs past the end of the image, but the others of a truncated
    image remain usable."""
    return _read_table(fd, image_size).partitions


def _read_table(fd, image_size):
    boot_sector = _read(fd, 0, MBR_SECTOR, image_size)
    if boot_sector is None:
        raise HotplugError(f"no partition table: the image is smaller than one sector ({image_size} bytes)")
    if boot_sector[510:512] != MBR_SIGNATURE:
        raise HotplugError("no partition table: sector 0 does not end in the MBR signature 0x55AA")
    slots = _mbr_slots(boot_sector)
    # efi.c is tried before msdos.c, and msdos.c ignores any MBR with a 0xEE
    # entry: a protective or hybrid MBR is read as GPT, or not at all.
    if any(slot.type == GPT_PROTECTIVE_TYPE for slot in slots):
        table = _read_gpt(fd, image_size, slots)
    else:
        table = _read_mbr(fd, image_size, slots)
    if not table.partitions:
        raise HotplugError(f"the image's {table.kind} is empty: it holds no partitions")
    return table


def _read(fd, offset, size, image_size):
    """size bytes at offset; None if they are not all inside the image."""
    if offset < 0 or offset + size > image_size:
        return None
    chunks = []
    try:
        while size > 0:
            chunk = os.pread(fd, size, offset)
            if not chunk:
                return None  # the file is shorter than image_size says
            chunks.append(chunk)
            offset += len(chunk)
            size -= len(chunk)
    except OSError as e:
        raise HotplugError(f"cannot read the partition table at byte {offset}: {e.strerror}") from e
    return b"".join(chunks)


# --- MBR ---------------------------------------------------------------------

MbrSlot = namedtuple("MbrSlot", "boot type start count")


def _mbr_slots(sector):
    return [MbrSlot._make(MBR_SLOT.unpack_from(sector, MBR_SLOTS_OFFSET + index * MBR_SLOT.size))
            for index in range(4)]


def _read_mbr(fd, image_size, slots):
    # msdos.c: with the signature present, sector 0 may as well be a FAT or
    # NTFS boot sector, whose code lies where the slots would be; a boot
    # flag other than 0x00/0x80 tells it is not a partition table.
    for number, slot in enumerate(slots, 1):
        if slot.boot not in VALID_BOOT_FLAGS:
            raise HotplugError(f"no partition table: slot {number} of sector 0 has boot flag "
                               f"0x{slot.boot:02X} (neither 0x00 nor 0x80), so sector 0 is a file "
                               "system's boot sector, not an MBR")
    found, notes = [], []
    next_logical = FIRST_LOGICAL
    for number, slot in enumerate(slots, 1):
        # A slot is empty when its size is 0, whatever its type says (msdos.c).
        if slot.count == 0:
            continue
        start, length = slot.start * MBR_SECTOR, slot.count * MBR_SECTOR
        if slot.type in EXTENDED_TYPES:
            found.append((number, Extent(start, length, f"MBR partition {number} (extended)", True)))
            # Each extended slot's chain is followed, numbering on from the last one.
            logicals, note = _logical_partitions(fd, image_size, slot, next_logical)
            found += logicals
            next_logical += len(logicals)
            notes += [note] if note else []
        else:
            found.append((number, Extent(start, length, f"MBR partition {number} (primary)")))
    return Table("MBR", sorted(found), notes)


def _logical_partitions(fd, image_size, container, first_number):
    """The logical partitions in the extended partition container, numbered
    from first_number, and a note if the chain runs out of the image.

    Each EBR's data entries start relative to that EBR; its link to the next
    EBR is relative to the start of the extended partition (msdos.c's
    parse_extended)."""
    found, seen = [], set()
    number = first_number
    ebr_sector, ebr_sectors = container.start, container.count
    while True:
        where = f"after partition {number - 1}" if number > first_number else "before any logical partition"
        if ebr_sector in seen:
            raise HotplugError(f"the chain of logical partitions loops: {where} it links back to "
                               f"the EBR at sector {ebr_sector}")
        if len(seen) == MAX_EBRS:
            raise HotplugError(f"the chain of logical partitions is longer than {MAX_EBRS} EBRs "
                               f"({where} in link {MAX_EBRS + 1}): not a table anyone wrote")
        seen.add(ebr_sector)
        ebr = _read(fd, ebr_sector * MBR_SECTOR, MBR_SECTOR, image_size)
        if ebr is None:
            return found, (f"the chain of logical partitions continues {where} at sector "
                           f"{ebr_sector}, past the end of the image")
        if ebr[510:512] != MBR_SIGNATURE:
            # The end of the chain, as for the kernel: an extended partition
            # that holds no logical partition often has no EBR at all.
            return found, None
        entries = _mbr_slots(ebr)
        for index, entry in enumerate(entries):
            if entry.count == 0 or entry.type in EXTENDED_TYPES:
                continue
            if index >= 2 and not _fits_in_chain(entry, ebr_sector, ebr_sectors, container):
                continue  # msdos.c: the 3rd and 4th entries of an EBR often hold garbage
            if number > MAX_PARTITION_NUMBER:
                raise HotplugError(f"the extended partition holds more logical partitions than Linux "
                                   f"numbers (up to {MAX_PARTITION_NUMBER})")
            start = (ebr_sector + entry.start) * MBR_SECTOR
            found.append((number, Extent(start, entry.count * MBR_SECTOR, f"MBR partition {number} (logical)")))
            number += 1
        link = next((e for e in entries if e.count and e.type in EXTENDED_TYPES), None)
        if link is None:
            return found, None
        ebr_sector, ebr_sectors = container.start + link.start, link.count


def _fits_in_chain(entry, ebr_sector, ebr_sectors, container):
    """msdos.c's test for an EBR's 3rd and 4th entries: used only when inside
    both the EBR's own extent and the extended partition."""
    start = ebr_sector + entry.start
    return (entry.start + entry.count <= ebr_sectors
            and start >= container.start
            and start + entry.count <= container.start + container.count)


# --- GPT ---------------------------------------------------------------------

def _read_gpt(fd, image_size, slots):
    # efi.c's protective MBR test: a 0xEE entry that starts at LBA 1, where
    # the GPT header is. Without one the kernel reads no partitions at all.
    if not any(s.type == GPT_PROTECTIVE_TYPE and s.start == GPT_PRIMARY_LBA for s in slots):
        raise HotplugError("the MBR has a GPT entry (type 0xEE) that does not start at sector 1: "
                           "not a valid protective MBR, and Linux reads no partitions from it")
    problems = []
    for sector_size in GPT_SECTOR_SIZES:
        table = _gpt_for_sector_size(fd, image_size, sector_size, problems)
        if table is not None:
            return table
    if not problems:
        raise HotplugError("corrupt GPT: the MBR announces one (type 0xEE) but there is no GPT header, "
                           f"neither at byte {' nor at byte '.join(map(str, GPT_SECTOR_SIZES))} "
                           "nor in the image's last sector")
    raise HotplugError("corrupt GPT: both copies are unusable: " + "; ".join(problems))


def _gpt_for_sector_size(fd, image_size, sector_size, problems):
    """The Table from the primary GPT, else from the backup; None if neither
    is usable with this sector size (problems gets why, for each copy that
    at least has a GPT signature)."""
    last_lba = image_size // sector_size - 1
    primary = None
    try:
        primary = _gpt_header(fd, image_size, sector_size, GPT_PRIMARY_LBA)
        return _gpt_table(fd, image_size, sector_size, primary, backup=False)
    except _Unusable as e:
        _note_problem(problems, "primary", GPT_PRIMARY_LBA, sector_size, e)
    # The kernel itself looks at the backup only when the primary is valid
    # (or when booted with "gpt"): with a corrupt primary it would show no
    # partitions. Like sfdisk and gdisk we use the backup, found where the
    # primary header says, else in the image's last sector.
    backups = [last_lba]
    if primary is not None and primary.alternate_lba != last_lba:
        backups.insert(0, primary.alternate_lba)
    for lba in backups:
        try:
            header = _gpt_header(fd, image_size, sector_size, lba)
            return _gpt_table(fd, image_size, sector_size, header, backup=True)
        except _Unusable as e:
            _note_problem(problems, "backup", lba, sector_size, e)
    return None


def _note_problem(problems, which, lba, sector_size, error):
    if error.args[0] is not None:  # None: no GPT signature there, nothing to report
        problems.append(f"{which} header at byte {lba * sector_size} "
                        f"({sector_size}-byte sectors): {error.args[0]}")


def _gpt_header(fd, image_size, sector_size, lba):
    """The GPT header at lba, checked as efi.c checks it; _Unusable if not
    (with reason None when there is no GPT signature at all)."""
    raw = _read(fd, lba * sector_size, sector_size, image_size)
    if raw is None:
        raise _Unusable("it lies past the end of the image")
    if raw[:len(GPT_SIGNATURE)] != GPT_SIGNATURE:
        raise _Unusable(None)
    header = GptHeader._make(GPT_HEADER.unpack_from(raw))
    if not GPT_HEADER.size <= header.header_size <= sector_size:
        raise _Unusable(f"header size {header.header_size} is not between {GPT_HEADER.size} and {sector_size}")
    # The CRC covers header_size bytes, with the CRC field itself as zeros.
    covered = bytearray(raw[:header.header_size])
    covered[GPT_HEADER_CRC_OFFSET:GPT_HEADER_CRC_OFFSET + 4] = bytes(4)
    if zlib.crc32(covered) != header.header_crc:
        raise _Unusable("header checksum (CRC32) mismatch")
    if header.my_lba != lba:
        raise _Unusable(f"it says it lies at LBA {header.my_lba}, not {lba}")
    last_lba = image_size // sector_size - 1
    if not header.first_usable <= header.last_usable <= last_lba:
        raise _Unusable(f"usable LBAs {header.first_usable}-{header.last_usable} do not fit "
                        f"the image's LBAs 0-{last_lba}")
    if header.entry_size != GPT_ENTRY_SIZE:
        raise _Unusable(f"partition entries of {header.entry_size} bytes (Linux reads only {GPT_ENTRY_SIZE})")
    if not 0 < header.entry_count * GPT_ENTRY_SIZE <= MAX_GPT_ENTRIES_BYTES:
        raise _Unusable(f"{header.entry_count} partition entries (Linux reads 1 to "
                        f"{MAX_GPT_ENTRIES_BYTES // GPT_ENTRY_SIZE})")
    return header


def _gpt_table(fd, image_size, sector_size, header, backup):
    size = header.entry_count * GPT_ENTRY_SIZE
    raw = _read(fd, header.entries_lba * sector_size, size, image_size)
    if raw is None:
        raise _Unusable(f"its partition entries (LBA {header.entries_lba}) lie past the end of the image")
    if zlib.crc32(raw) != header.entries_crc:
        raise _Unusable("partition entries checksum (CRC32) mismatch")
    where = f"{sector_size}-byte sectors" + (", backup GPT" if backup else "")
    found = []
    # efi.c reads entries while their number stays below DISK_MAX_PARTS.
    for index in range(min(header.entry_count, MAX_PARTITION_NUMBER)):
        type_guid, _, first_lba, last_lba = GPT_ENTRY.unpack_from(raw, index * GPT_ENTRY_SIZE)
        if type_guid == UNUSED_TYPE_GUID:
            continue  # an unused entry; its number stays unused
        number = index + 1
        if last_lba < first_lba:
            raise HotplugError(f"GPT partition {number} ends (LBA {last_lba}) before it starts (LBA {first_lba})")
        found.append((number, Extent(first_lba * sector_size, (last_lba - first_lba + 1) * sector_size,
                                     f"GPT partition {number} ({where})")))
    return Table(f"GPT ({where})", found, _unnumbered_entries(raw, header.entry_count))


def _unnumbered_entries(raw, entry_count):
    """A note if used entries lie beyond the ones Linux numbers."""
    for index in range(MAX_PARTITION_NUMBER, entry_count):
        if raw[index * GPT_ENTRY_SIZE:index * GPT_ENTRY_SIZE + 16] != UNUSED_TYPE_GUID:
            return [f"entry {index + 1} and any after it are not partitions to Linux, which numbers "
                    f"them only up to {MAX_PARTITION_NUMBER}"]
    return []


# --- messages ----------------------------------------------------------------

def _listing(table):
    names = [f"{number} (extended)" if extent.extended else str(number) for number, extent in table.partitions]
    if len(names) == 1:
        return f"it has only partition {names[0]}"
    return f"it has partitions {', '.join(names[:-1])} and {names[-1]}"


def _extended_refusal(number, table):
    logicals = [str(n) for n, extent in table.partitions if n >= FIRST_LOGICAL]
    if not logicals:
        holds = "that holds no logical partition"
    elif len(logicals) == 1:
        holds = f"of logical partition {logicals[0]}"
    else:
        holds = f"of logical partitions {', '.join(logicals[:-1])} and {logicals[-1]}"
    return (f"partition {number} is the MBR's extended partition, a container {holds}: "
            "not a disk to give a guest")


def _check_inside(number, extent, image_size):
    if extent.start >= image_size:
        raise HotplugError(f"partition {number} starts at byte {extent.start}, past the end of the image "
                           f"({_size(image_size)}): is the image truncated?")
    if extent.end > image_size:
        raise HotplugError(f"partition {number} runs past the end of the image: it ends at byte {extent.end} "
                           f"but the image is {_size(image_size)}: is the image truncated?")


def _size(count):
    """A byte count a person can read: "20971520 bytes (20 MiB)"."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count} bytes ({count / (1 << shift):.4g} {unit})"
    return f"{count} bytes"
