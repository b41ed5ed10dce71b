"""block-cow as xl uses it: real blkback, real guests, stores in
/var/lib/xenblock/cow (the default directory; a tmpfs in the test VM)."""
import os
import stat
import subprocess
import threading

from tests.support.fixtures import digest
from tests.vm import guest
from tests.xen.test_block_file_xl import _deactivate
from tests.xen.xl import disk, paused_guest, run_guest
from xenblock import dm, loop

MARK = b"xenblock-cow-guest-base"
SCRIPT = "block-cow"


def cow(target, **kw):
    return disk(target, script=SCRIPT, **kw)


def our_snapshots():
    return dm.ours()


def test_a_guest_reads_the_base_writes_its_own_store_and_the_base_stays_as_it_was(images, tmp_path):
    base = images("cow-base.img", MARK, mode=0o444)  # read-only, as on a live CD
    before = digest(base)
    snippet = (f"head -c {len(MARK)} /dev/xvda; echo; "
               "echo written-by-guest | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
               "echo write-status $?; echo 3 > /proc/sys/vm/drop_caches; "
               "dd if=/dev/xvda bs=512 skip=2048 count=1 2>/dev/null | head -c 16; echo")
    lines, status = run_guest(tmp_path, [cow(f"{base} 16M")], snippet)
    assert status == 0, lines
    assert lines[0] == MARK.decode()
    assert "write-status 0" in lines and lines[-1] == "written-by-guest", lines
    assert digest(base) == before
    assert os.listdir("/var/lib/xenblock/cow") == []


def test_with_access_r_the_guest_gets_the_base_itself_read_only(images, tmp_path):
    base = images("cow-ro-base.img", MARK)
    before = digest(base)
    snippet = (f"head -c {len(MARK)} /dev/xvda; echo; cat /sys/block/xvda/ro; "
               "echo x | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; echo write-status $?")
    lines, status = run_guest(tmp_path, [cow(base, access="r")], snippet)
    assert lines[0] == MARK.decode() and lines[1] == "1", lines
    assert "write-status 0" not in lines
    assert digest(base) == before


def test_two_guests_started_at_the_same_moment_share_one_base_device(images, tmp_path):
    base = images("cow-twins.img", MARK)
    results = {}

    def start(index):
        with paused_guest(tmp_path, [cow(f"{base} 8M")]) as name:
            results[index] = name
            barrier.wait(timeout=240)  # both running: look now
            barrier.wait(timeout=240)  # looked: destroy

    barrier = threading.Barrier(3)
    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait(timeout=240)
        shared = loop.backed_by(os.stat(base))
        snapshots = our_snapshots()
    finally:
        barrier.wait(timeout=240)
        for thread in threads:
            thread.join()
    assert len(results) == 2, results
    assert len(shared) == 1 and shared[0][2].read_only, shared
    assert len(snapshots) == 2, snapshots


def test_a_guest_booted_by_pygrub_from_a_cow_disk(tmp_path):
    path = str(tmp_path / "pygrub-cow.img")
    guest.write_boot_disk(path)
    before = digest(path)
    ext2_magic = "dd if=/dev/xvda bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1"
    lines, status = run_guest(tmp_path, [cow(f"{path} 16M")], ext2_magic, bootloader="pygrub")
    assert status == 0 and lines[0].split() == ["53", "ef"], lines
    assert digest(path) == before


def test_dom0_does_not_activate_a_volume_group_inside_a_cow_disk(images, tmp_path):
    path = images("cow-lvm-inside.img", size=64 << 20)
    vg = f"xbcowvg{os.getpid()}"
    node = subprocess.run(["losetup", "--find", "--show", path], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        quiet = ["-q", "--config", "backup { backup = 0 archive = 0 }"]
        for argv in (["pvcreate", *quiet, node], ["vgcreate", *quiet, vg, node],
                     ["lvcreate", *quiet, "-an", "-L", "8M", "-n", "inner", vg]):
            subprocess.run(argv, check=True, capture_output=True)
        _deactivate(vg, quiet)
    finally:
        subprocess.run(["losetup", "-d", node], check=True)
    subprocess.run(["udevadm", "settle"], check=False)
    with paused_guest(tmp_path, [cow(f"{path} 8M")]):
        subprocess.run(["udevadm", "settle"], check=False)
        devices = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True).stdout
        assert vg not in devices, f"dom0 activated the guest's volume group: {devices}"
        (snapshot,) = our_snapshots()
        info = subprocess.run(["udevadm", "info", "--query=property", dm.node(snapshot.devnum)],
                              capture_output=True, text=True).stdout
        assert "XENBLOCK_GUEST_DISK=1" in info and "ID_FS_TYPE" not in info, info
    subprocess.run(["pvscan", "--cache"], capture_output=True)


def test_a_base_whose_storage_fails_gives_the_guest_io_errors_and_destroy_leaves_nothing(tmp_path):
    # The base's storage fails every I/O (a dm `error` table, as LVM2's tests
    # do): the guest's reads of it fail, it goes on running, and destroy
    # leaves nothing (the leak check). The node is made here: no udev needed.
    name = f"xbfailing{os.getpid()}"
    subprocess.run(["dmsetup", "create", "--noudevsync", name, "--table", "0 16384 error"], check=True)
    try:
        device = next(device for device in dm.list_devices() if device.name == name)
        node = str(tmp_path / "failing-base")
        os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(device.devnum.major, device.devnum.minor))
        snippet = ("dd if=/dev/xvda of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null; echo read-status $?; "
                   "echo still-running")
        lines, status = run_guest(tmp_path, [cow(f"{node} 8M")], snippet)
    finally:
        subprocess.run(["dmsetup", "remove", "--noudevsync", "--retry", name], check=True)
    assert (lines, status) == (["read-status 1", "still-running"], 0)
