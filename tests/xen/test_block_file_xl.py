"""block-file as xl uses it: real blkback, real guests."""
import os
import subprocess

from tests.support.fixtures import foreign_loop, read_at, wait_until
from tests.vm import guest
from tests.xen.xl import (assert_second_writer_refused, create_fails, disk, domid, paused_guest,
                          run_guest, xl)

MARK = b"xenblock-guest-marker"


def test_block_attach_to_dom0_reads_back_the_image(images):
    path = images("dom0.img", MARK)
    result = xl("block-attach", "0", disk(path, vdev="xvdb"))
    assert result.returncode == 0, result.stderr
    try:
        wait_until(lambda: os.path.exists("/dev/xvdb"), "/dev/xvdb appears")
        assert read_at("/dev/xvdb", 0, len(MARK)) == MARK
    finally:
        assert xl("block-detach", "0", "xvdb").returncode == 0


def test_guest_reads_and_writes_its_image(images, tmp_path):
    path = images("rw.img", MARK)
    snippet = (f"head -c {len(MARK)} /dev/xvda; echo; "
               "echo written-by-guest | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
               "echo write-status $?")
    lines, status = run_guest(tmp_path, [disk(path)], snippet)
    assert status == 0, lines
    assert lines[0] == MARK.decode()
    assert "write-status 0" in lines
    assert read_at(path, 2048 * 512, 16) == b"written-by-guest"


def test_read_only_guest_cannot_write(images, tmp_path):
    path = images("ro.img", MARK)
    before = open(path, "rb").read()
    snippet = (f"head -c {len(MARK)} /dev/xvda; echo; cat /sys/block/xvda/ro; "
               "echo x | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
               "echo write-status $?")
    lines, status = run_guest(tmp_path, [disk(path, access="r")], snippet)
    assert lines[0] == MARK.decode()
    assert lines[1] == "1", "blkfront must see a read-only disk"
    assert "write-status 0" not in lines
    assert open(path, "rb").read() == before


def test_second_guest_writing_the_same_image_is_refused(images, tmp_path):
    assert_second_writer_refused(tmp_path, images("twice.img"))


def test_missing_image_fails_xl_create_naming_the_path(tmp_path):
    path = str(tmp_path / "no-such.img")
    assert f"{path}: no such file or block device" in create_fails(tmp_path, [disk(path)])


def test_read_only_file_asked_for_writing_fails_xl_create(images, tmp_path):
    path = images("locked.img", mode=0o444)
    assert f"{path}: file is read-only" in create_fails(tmp_path, [disk(path)])


def test_dom0_attach_then_guest_attach_like_pygrub(images, tmp_path):
    # pygrub attaches each disk to dom0, detaches it, then the guest gets it.
    path = images("boot.img", MARK)
    assert xl("block-attach", "0", disk(path, vdev="xvdc")).returncode == 0
    wait_until(lambda: os.path.exists("/dev/xvdc"), "/dev/xvdc appears")
    assert read_at("/dev/xvdc", 0, len(MARK)) == MARK
    assert xl("block-detach", "0", "xvdc").returncode == 0
    lines, status = run_guest(tmp_path, [disk(path)], f"head -c {len(MARK)} /dev/xvda; echo")
    assert lines[0] == MARK.decode()


def test_a_guest_booted_by_pygrub_gets_its_disk_in_dom0_then_in_the_guest(driver, tmp_path):
    # libxl attaches a script= disk to dom0 for pygrub to read the kernel
    # from, detaches it, then attaches it to the guest: two add/remove cycles.
    path = str(tmp_path / "pygrub-boot.img")
    guest.write_boot_disk(path)
    start = driver.log_offset()
    ext2_magic = "dd if=/dev/xvda bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1"
    lines, status = run_guest(tmp_path, [disk(path)], ext2_magic, bootloader="pygrub")
    assert status == 0 and lines[0].split() == ["53", "ef"], lines
    ours = [line for line in driver.log_since(start) if path in line]
    adds = [line for line in ours if " add " in line]
    removes = [line for line in ours if " remove " in line]
    assert len(adds) == 2 and len(removes) == 2, ours
    assert "for domain 0 (Domain-0)" in adds[0] and "for domain 0" not in adds[1], adds


def test_two_domains_of_one_vm_share_a_writable_disk_and_no_other_guest_does(images, tmp_path, xs_client):
    # A live migration's destination domain is created with the source's
    # uuid, so both have the same /vm/<uuid> node while both hold the disk.
    # (Real `xl migrate` of a PV guest needs log-dirty, which Debian's Xen
    # 4.17 lacks: it is built without CONFIG_SHADOW_PAGING.)
    path = images("one-vm.img")
    uuid = "5e7b1a3c-0000-4000-8000-00000000b10c"
    with paused_guest(tmp_path, [disk(path)], uuid=uuid) as source, \
            paused_guest(tmp_path, [disk(path)], uuid=uuid) as twin:
        vms = {xs_client.read(f"/local/domain/{domid(name)}/vm".encode()).decode() for name in (source, twin)}
        assert vms == {f"/vm/{uuid}"}, vms
        output = create_fails(tmp_path, [disk(path)])
        assert f"{path}: already in use read-write by domain" in output, output


def test_block_device_is_passed_through_to_a_guest(images, tmp_path):
    with foreign_loop(images("under.img", MARK)) as node:
        lines, status = run_guest(tmp_path, [disk(node)], f"head -c {len(MARK)} /dev/xvda; echo")
        assert lines[0] == MARK.decode()


def test_dom0_does_not_activate_a_volume_group_inside_a_guest_disk(images, tmp_path):
    path = images("lvm-inside.img", size=64 << 20)
    vg = f"xbguestvg{os.getpid()}"
    with foreign_loop(path) as node:
        # No metadata backups in /etc/lvm: the leak check would see them.
        quiet = ["-q", "--config", "backup { backup = 0 archive = 0 }"]
        for argv in (["pvcreate", *quiet, node], ["vgcreate", *quiet, vg, node],
                     ["lvcreate", *quiet, "-an", "-L", "8M", "-n", "inner", vg]):
            subprocess.run(argv, check=True, capture_output=True)
        _deactivate(vg, quiet)
    subprocess.run(["udevadm", "settle"], check=False)
    # A paused guest: its disk is attached, and no frontend in dom0 shows it.
    with paused_guest(tmp_path, [disk(path)]):
        subprocess.run(["udevadm", "settle"], check=False)
        dm = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True).stdout
        assert vg not in dm, f"dom0 activated the guest's volume group: {dm}"
        info = subprocess.run(["udevadm", "info", "--query=property", _loop_of(path)],
                              capture_output=True, text=True).stdout
        assert "XENBLOCK_GUEST_DISK=1" in info and "ID_FS_TYPE=LVM2_member" not in info, info
    subprocess.run(["pvscan", "--cache"], capture_output=True)


def _deactivate(vg, quiet):
    """The set-up loop device is not xenblock's: dom0's udev may auto-activate
    the new volume group on it (69-lvm.rules, once LVM's writes end), after
    any vgchange -an we run. Let udev finish, then deactivate, until it stays so."""
    for _ in range(5):
        subprocess.run(["udevadm", "settle", "--timeout=60"], check=False)
        subprocess.run(["vgchange", *quiet, "-an", vg], check=True, capture_output=True)
        subprocess.run(["udevadm", "settle", "--timeout=60"], check=False)
        if vg not in subprocess.run(["dmsetup", "ls"], capture_output=True, text=True).stdout:
            return
    raise AssertionError(f"cannot keep {vg} inactive while setting the test up")


def _loop_of(path):
    from xenblock import loop
    nodes = [node for node, _, _ in loop.backed_by(os.stat(path))]
    assert len(nodes) == 1, nodes
    return nodes[0]
