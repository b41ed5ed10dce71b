"""block-tap as xl uses it: a raw image through a real guest, and a qcow2
image that is not one refused by xl create with nothing left (the leak
check wraps each test)."""
from tests.support.fixtures import read_at
from tests.xen.xl import create_fails, disk, run_guest

MARK = b"xenblock-tap-guest-marker"


def test_a_guest_reads_and_writes_a_raw_image(images, tmp_path):
    path = images("tap-raw.img", MARK)
    snippet = (f"head -c {len(MARK)} /dev/xvda; echo; "
               "echo written-by-guest | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
               "echo write-status $?")
    lines, status = run_guest(tmp_path, [disk(f"raw:{path}", script="block-tap")], snippet)
    assert status == 0, lines
    assert lines[0] == MARK.decode() and "write-status 0" in lines, lines
    assert read_at(path, 2048 * 512, 16) == b"written-by-guest"


def test_a_raw_image_named_qcow2_fails_xl_create_naming_it(images, tmp_path):
    path = images("tap-not-qcow2.img", MARK)
    output = create_fails(tmp_path, [disk(f"qcow2:{path}", script="block-tap")])
    assert f"{path}: not a valid qcow2 image" in output, output
