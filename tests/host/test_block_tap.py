"""block-tap on the host: raw/aio through a loop device (block-file's way),
the refusals of the qemu formats, which qemu-img decides before any kernel
object exists, and a real qemu-nbd started and taken down again when the
add cannot go on (the host has no nbd module: the VM tier connects one)."""
import os
import subprocess
import time

import pytest

from tests.support.cases import assert_failed, loops_of, settings_env

SCRIPT = "block-tap"


def qemu_image(path, fmt, *options):
    subprocess.run(["qemu-img", "create", "-f", fmt, *options, str(path), "16M"], check=True, capture_output=True)
    return str(path)


@pytest.mark.parametrize("fmt", ["raw", "aio", "AIO"])
def test_raw_and_aio_are_served_through_a_loop_device_and_remove_takes_it_down(driver, images, fmt):
    path = images("tap.img", b"first sector")
    key = driver.backend(f"{fmt}:{path}", script=SCRIPT)
    result = driver.add(key, script=SCRIPT)
    assert result.returncode == 0, result.stderr
    node = driver.read(f"{key}/physical-device-path")
    with open(f"/sys/block/{node.removeprefix('/dev/')}/loop/backing_file") as f:
        assert f.read().strip() == path
    with open(node, "rb") as f:
        assert f.read(12) == b"first sector"
    assert driver.remove(key, script=SCRIPT).returncode == 0
    assert loops_of(path) == []


@pytest.mark.parametrize("target,words", [
    ("/srv/x.img", ["names no format"]),
    ("qed:/srv/x.img", ["unknown format 'qed'"]),
    ("qcow2:", ["empty target"]),
    ("qcow2:/nonexistent/x.qcow2", ["/nonexistent/x.qcow2", "no such file"]),
])
def test_a_bad_target_is_refused_with_one_line(driver, target, words):
    key = driver.backend(target, script=SCRIPT)
    assert_failed(driver.add(key, script=SCRIPT), driver, key, *words)
    assert driver.record(key) is None


def test_an_image_that_is_not_of_the_named_format_is_refused_never_probed(driver, images, tmp_path):
    # A raw disk that holds a qcow2 image: named raw, it is served as raw;
    # a raw image named qcow2 is refused.
    raw = images("plain.img")
    key = driver.backend(f"qcow2:{raw}", script=SCRIPT)
    assert_failed(driver.add(key, script=SCRIPT), driver, key, raw, "not a valid qcow2 image",
                  "not in qcow2 format")
    vhd = qemu_image(tmp_path / "disk.vhd", "vpc")
    key = driver.backend(f"qcow2:{vhd}", script=SCRIPT)
    assert_failed(driver.add(key, script=SCRIPT), driver, key, "not a valid qcow2 image")
    assert loops_of(raw) == [] and driver.state_files() == []


def test_a_corrupt_qcow2_header_is_refused(driver, tmp_path):
    path = qemu_image(tmp_path / "corrupt.qcow2", "qcow2")
    with open(path, "r+b") as f:
        f.seek(4)
        f.write(b"\0\0\0\x63")  # version 99
    key = driver.backend(f"qcow2:{path}", script=SCRIPT)
    assert_failed(driver.add(key, script=SCRIPT), driver, key, path, "not a valid qcow2 image")
    assert driver.record(key) is None


def test_a_qcow2_with_a_backing_file_is_refused_missing_or_not(driver, tmp_path):
    base = qemu_image(tmp_path / "base.qcow2", "qcow2")
    overlay = qemu_image(tmp_path / "overlay.qcow2", "qcow2", "-b", base, "-F", "qcow2")
    key = driver.backend(f"qcow2:{overlay}", script=SCRIPT)
    assert_failed(driver.add(key, script=SCRIPT), driver, key, overlay, f"backing file {base}")
    (tmp_path / "base.qcow2").unlink()
    key = driver.backend(f"qcow2:{overlay}", script=SCRIPT)
    assert_failed(driver.add(key, script=SCRIPT), driver, key, overlay, "backing file")
    assert driver.record(key) is None


def test_a_qcow2_with_an_external_data_file_is_refused(driver, tmp_path):
    data = tmp_path / "data.raw"
    path = qemu_image(tmp_path / "ext.qcow2", "qcow2", "-o", f"data_file={data}")
    key = driver.backend(f"qcow2:{path}", script=SCRIPT)
    assert_failed(driver.add(key, script=SCRIPT), driver, key, f"external data file {data}")


def test_a_vmdk_with_an_extent_elsewhere_is_refused(driver, tmp_path):
    path = qemu_image(tmp_path / "flat.vmdk", "vmdk", "-o", "subformat=monolithicFlat")
    with open(path, "a") as f:
        f.write("#" * 512 + "\n")  # a descriptor of one sector at least, as block-tap requires
    key = driver.backend(f"vmdk:{path}", script=SCRIPT)
    assert_failed(driver.add(key, script=SCRIPT), driver, key, "extent", "flat-flat.vmdk")


def qemu_nbd_processes(path):
    """pids of live qemu-nbd processes whose command line names path."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = f.read().decode(errors="replace").split("\0")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if os.path.basename(words[0]) == "qemu-nbd" and path in words and state != "Z":
            found.append(int(pid))
    return found


needs_no_nbd = pytest.mark.skipif(os.path.exists("/sys/module/nbd"), reason="the host has an nbd module")


@needs_no_nbd
def test_with_no_nbd_module_add_fails_saying_so_and_its_qemu_nbd_is_gone(driver, tmp_path):
    # qemu-nbd was started and negotiated with before the module was
    # looked for: the failed add's undo must make it exit.
    path = qemu_image(tmp_path / "ok.qcow2", "qcow2")
    key = driver.backend(f"qcow2:{path}", script=SCRIPT)
    assert_failed(driver.add(key, script=SCRIPT), driver, key, path, "nbd module is missing", "modprobe")
    assert driver.record(key) is None
    assert qemu_nbd_processes(path) == []
    assert [name for name in driver.state_files() if "/nbd/" in name] == []
    assert driver.remove(key, script=SCRIPT).returncode == 0


@needs_no_nbd
def test_outside_files_yes_takes_a_qcow2_past_its_backing_file_unless_that_is_missing(driver, tmp_path):
    # The VM tier serves such an image (tests/xen/test_block_tap_xl.py);
    # this host has no nbd module, so the add goes as far as looking for it.
    base = qemu_image(tmp_path / "base.qcow2", "qcow2")
    overlay = qemu_image(tmp_path / "overlay.qcow2", "qcow2", "-b", base, "-F", "qcow2")
    env = settings_env(driver, tmp_path, "tap", outside_files="yes")
    key = driver.backend(f"qcow2:{overlay}", script=SCRIPT)
    assert_failed(driver.add(key, script=SCRIPT, env=env), driver, key, overlay, "nbd module is missing")
    (tmp_path / "base.qcow2").unlink()
    key = driver.backend(f"qcow2:{overlay}", script=SCRIPT)
    assert_failed(driver.add(key, script=SCRIPT, env=env), driver, key, overlay, "not a valid qcow2 image", base)
    assert driver.record(key) is None and qemu_nbd_processes(overlay) == []


def test_an_image_another_qemu_writes_is_refused_by_qemus_lock(driver, tmp_path):
    path = qemu_image(tmp_path / "held.qcow2", "qcow2")
    socket_path = str(tmp_path / "theirs.sock")
    theirs = subprocess.Popen(["qemu-nbd", "-f", "qcow2", "--socket", socket_path, "--persistent", path],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(socket_path):
            assert theirs.poll() is None
            time.sleep(0.05)
        key = driver.backend(f"qcow2:{path}", script=SCRIPT)
        assert_failed(driver.add(key, script=SCRIPT), driver, key, path,
                      "already in use by another program holding qemu's lock", "refusing read-write access")
        assert driver.record(key) is None
        assert qemu_nbd_processes(path) == [theirs.pid]
    finally:
        theirs.terminate()
        theirs.wait()
