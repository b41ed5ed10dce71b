"""block-part as xl uses it: a real guest on one partition of an image."""
from tests.support.fixtures import read_at
from tests.support.part_cases import CYLINDER, SECTOR, chs_image, marker, part_extent, put_markers
from tests.xen.xl import disk, run_guest

WRITTEN = b"written-by-the-guest"


def test_a_guest_gets_exactly_one_partition_of_an_old_255_63_image_and_writes_only_there(images, tmp_path):
    # Partition 1 at sector 63 (the old 255 heads/63 sectors geometry: an
    # offset that is no multiple of 4096), ending where cylinder 0 ends;
    # the image does not end on a cylinder boundary.
    path = chs_image(images, "guest-chs.img")
    start, end = 63 * SECTOR, CYLINDER * SECTOR
    assert part_extent(path, 1) == (start, end)  # the premise
    put_markers(path, 1, start, end)
    before = read_at(path)
    sectors = (end - start) // SECTOR
    shown = len(b"<xenblock: partition 1, first sector>")

    def show(skip):
        return f"dd if=/dev/xvda bs=512 skip={skip} count=1 2>/dev/null | head -c {shown}; echo; "

    snippet = ("blockdev --getsize64 /dev/xvda; cat /sys/block/xvda/size; " + show(0) + show(sectors - 1)
               + f"dd if=/dev/xvda bs=512 skip={sectors} count=1 2>/dev/null | wc -c; "
               f"echo -n {WRITTEN.decode()} | dd of=/dev/xvda bs=512 seek={sectors - 1} conv=notrunc,fsync "
               "2>/dev/null; echo write $?; "
               f"echo -n beyond | dd of=/dev/xvda bs=512 seek={sectors} conv=notrunc,fsync 2>/dev/null; "
               "echo beyond $?")
    lines, status = run_guest(tmp_path, [disk(f"{path} 1", script="block-part")], snippet)
    assert status == 0, lines
    size, size_sectors, first, last, past_end, write, beyond = lines
    assert int(size) == end - start and int(size_sectors) == sectors, lines
    assert first.encode() == marker(1, "first")[:shown]
    assert last.encode() == marker(1, "last")[:shown]
    assert past_end.strip() == "0", "the guest reads nothing past the partition's last sector"
    assert write == "write 0" and beyond != "beyond 0", lines
    after = read_at(path)
    assert after[end - SECTOR:end - SECTOR + len(WRITTEN)] == WRITTEN, "the write lands in the last sector"
    assert after[:end - SECTOR] == before[:end - SECTOR], "nothing before it changed (table, sector 62)"
    assert after[end - SECTOR + len(WRITTEN):] == before[end - SECTOR + len(WRITTEN):], \
        "nothing after it changed (the next partition's first sector)"
    assert after[end:end + SECTOR] == marker(1, "after")
