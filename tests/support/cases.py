"""Hotplug contract cases for block-file, run by both tiers.

Each test gets `driver` (tests.support.driver.Driver) and `images` (a
factory of image files) from its tier's conftest, and must leave nothing:
the tier's fixtures check for loop devices and state files left behind.
"""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from tests.support.fixtures import foreign_loop
from xenblock import loop
from xenblock.blockdev import Devnum

# Domain ids far above what the test VM's guests get.
DOM_A, DOM_B, DOM_C = 30001, 30002, 30003


INSTALLED_CONFIG = "/etc/xenblock/xenblock.conf"


def settings_env(driver, tmp_path, section, **settings):
    """The environment of a run with the tier's config plus settings in
    [section] (a config file of its own under tmp_path)."""
    base = driver.env.get("XENBLOCK_CONFIG", INSTALLED_CONFIG)
    with open(base) as f:
        text = f.read()
    config = tmp_path / f"{section}.conf"
    config.write_text(text + _section(section, settings))
    return {"XENBLOCK_CONFIG": str(config)}


@contextlib.contextmanager
def installed_settings(section, **settings):
    """settings in [section] of the installed config file, which the runs
    xl starts read; the file as it was after."""
    with open(INSTALLED_CONFIG) as f:
        saved = f.read()
    try:
        with open(INSTALLED_CONFIG, "a") as f:
            f.write(_section(section, settings))
        yield
    finally:
        with open(INSTALLED_CONFIG, "w") as f:
            f.write(saved)


def _section(section, settings):
    return f"\n[{section}]\n" + "".join(f"{name} = {value}\n" for name, value in settings.items())


def physical(driver, key):
    return Devnum.parse(driver.read(f"{key}/physical-device"), base=16)


def loops_of(path):
    return [node for node, _, _ in loop.backed_by(os.stat(path))]


def assert_error(result, driver, key, *words):
    """The run failed as libxl is told: exit 1, hotplug-error with words."""
    assert result.returncode == 1, result.stderr
    error = driver.read(f"{key}/hotplug-error")
    for word in words:
        assert word in error, error
    assert driver.read(f"{key}/hotplug-status") == "error"
    return error


def assert_failed(result, driver, key, *words):
    """An add failed: assert_error, and nothing published."""
    error = assert_error(result, driver, key, *words)
    assert driver.read(f"{key}/physical-device") is None
    return error


def test_add_serves_the_image_through_a_loop_device_and_remove_takes_it_down(driver, images):
    path = images("a.img", b"first sector of a")
    key = driver.backend(path)
    result = driver.add(key)
    assert result.returncode == 0, result.stderr
    node = driver.read(f"{key}/physical-device-path")
    assert loops_of(path) == [node]
    assert physical(driver, key) == Devnum.of_rdev(os.stat(node).st_rdev)
    assert driver.read(f"{key}/hotplug-status") == "connected"
    with open(node, "rb") as f:
        assert f.read(17) == b"first sector of a"
    assert driver.remove(key).returncode == 0
    assert loops_of(path) == []
    assert driver.state_files() == []


def test_read_only_mode_gives_a_read_only_device(driver, images):
    path = images("ro.img")
    key = driver.backend(path, mode="r")
    assert driver.add(key).returncode == 0
    assert loop.status(driver.read(f"{key}/physical-device-path")).read_only
    assert driver.remove(key).returncode == 0


def test_add_twice_changes_nothing(driver, images):
    path = images("twice.img")
    key = driver.backend(path)
    assert driver.add(key).returncode == 0
    first = driver.read(f"{key}/physical-device")
    assert driver.add(key).returncode == 0
    assert driver.read(f"{key}/physical-device") == first
    assert len(loops_of(path)) == 1
    assert driver.remove(key).returncode == 0


def test_remove_of_nothing_and_remove_twice_succeed(driver, images):
    key = driver.backend(images("never.img"))
    assert driver.remove(key).returncode == 0
    assert driver.add(key).returncode == 0
    assert driver.remove(key).returncode == 0
    assert driver.remove(key).returncode == 0
    assert driver.state_files() == []


def test_remove_works_after_the_backend_nodes_are_gone(driver, images):
    path = images("gone.img")
    key = driver.backend(path)
    assert driver.add(key).returncode == 0
    driver.destroy_backend(key)
    assert driver.remove(key).returncode == 0
    assert loops_of(path) == []
    assert driver.read(key) is None, "remove must not re-create backend nodes"


def test_remove_needs_no_xenstore_and_add_cannot_do_without_it(driver, images):
    # remove works from its record alone (libxl deletes the backend nodes
    # itself), so it neither connects to xenstore nor pays for importing pyxs.
    path = images("noxs.img")
    key = driver.backend(path)
    unreachable = {"XENSTORED_PATH": "/nonexistent/xenstored-socket"}
    assert driver.add(key).returncode == 0
    result = driver.remove(key, env=unreachable)
    assert result.returncode == 0, result.stderr
    assert loops_of(path) == []
    result = driver.add(key, env=unreachable)
    assert result.returncode == 1
    assert f"add {key}: failed: cannot reach xenstore" in result.stderr
    assert loops_of(path) == []
    assert driver.state_files() == []


def test_xend_names_create_and_destroy_work(driver, images):
    path = images("xend.img")
    key = driver.backend(path)
    assert driver.run("create", key).returncode == 0
    assert len(loops_of(path)) == 1
    assert driver.run("destroy", key).returncode == 0
    assert loops_of(path) == []


def test_missing_image_names_the_path_and_leaves_nothing(driver, images):
    path = os.path.join(os.path.dirname(images("here.img")), "missing.img")
    key = driver.backend(path)
    result = driver.add(key)
    assert_failed(result, driver, key, path, "no such file")
    assert driver.state_files() == []
    assert f"add {key}: failed: {path}: no such file or block device" in result.stderr


def test_every_bad_target_is_named_and_leaves_nothing(driver, images, tmp_path):
    tiny = images("tiny.img", size=100)
    with foreign_loop(images("ro-device.img"), read_only=True) as read_only_device:
        for target, words in (
                (tiny, f"{tiny}: image is 100 bytes, smaller than one 512-byte sector"),
                ("relative/disk.img", "'relative/disk.img' is not an absolute path"),
                (str(tmp_path), f"{tmp_path}: not an image file or block device"),
                ("   ", "empty target: give the path of an image file or block device"),
                (read_only_device, f"{read_only_device}: block device is read-only; use access=r")):
            key = driver.backend(target, mode="w")
            assert_failed(driver.add(key), driver, key, words)
            assert driver.state_files() == [], target


def test_read_only_file_asked_for_writing_is_refused(driver, images):
    path = images("locked.img", mode=0o444)
    key = driver.backend(path, mode="w")
    assert_failed(driver.add(key), driver, key, path, "read-only", "access=r")
    assert driver.state_files() == []


def test_a_second_writer_from_another_guest_is_refused(driver, images):
    path = images("shared.img")
    first = driver.backend(path, frontend_id=DOM_A)
    second = driver.backend(path, frontend_id=DOM_B)
    assert driver.add(first).returncode == 0
    assert_failed(driver.add(second), driver, second, path, "read-write", f"domain {DOM_A}")
    assert len(loops_of(path)) == 1
    assert driver.remove(second).returncode == 0
    assert driver.remove(first).returncode == 0
    assert driver.add(second).returncode == 0, "free again once the first is gone"
    assert driver.remove(second).returncode == 0


def test_readers_share_but_a_writer_and_a_reader_do_not(driver, images):
    path = images("readers.img")
    readers = [driver.backend(path, mode="r", frontend_id=d) for d in (DOM_A, DOM_B)]
    writer = driver.backend(path, mode="w", frontend_id=DOM_C)
    for key in readers:
        assert driver.add(key).returncode == 0
    assert_failed(driver.add(writer), driver, writer, "read-only", "refusing read-write")
    for key in readers:
        assert driver.remove(key).returncode == 0
    assert driver.add(writer).returncode == 0
    late_reader = driver.backend(path, mode="r", frontend_id=DOM_A)
    assert_failed(driver.add(late_reader), driver, late_reader, "already in use read-write")
    for key in (writer, late_reader):
        assert driver.remove(key).returncode == 0


def test_same_vm_and_stub_domain_may_share_a_writable_image(driver, images):
    path = images("migrating.img")
    driver.write(f"/local/domain/{DOM_A}/vm", "/vm/xenblock-test-uuid")
    driver.write(f"/local/domain/{DOM_B}/vm", "/vm/xenblock-test-uuid")
    driver.write(f"/local/domain/{DOM_C}/target", str(DOM_A))
    try:
        keys = [driver.backend(path, frontend_id=d) for d in (DOM_A, DOM_B, DOM_C)]
        for key in keys:
            assert driver.add(key).returncode == 0, driver.read(f"{key}/hotplug-error")
        for key in keys:
            assert driver.remove(key).returncode == 0
    finally:
        for domid in (DOM_A, DOM_B, DOM_C):
            driver.delete(f"/local/domain/{domid}")


def test_an_image_bound_read_write_by_someone_else_is_refused(driver, images):
    path = images("foreign.img")
    with foreign_loop(path) as foreign:
        key = driver.backend(path, mode="r")
        assert_failed(driver.add(key), driver, key, foreign, "not set up by xenblock")


def add_logged(driver, key):
    """add with debug logging: the log lines it wrote."""
    start = driver.log_offset()
    result = driver.add(key, env={"XENBLOCK_DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    return "\n".join(driver.log_since(start))


def test_an_image_open_nowhere_else_is_not_scanned_for(driver, images):
    path = images("alone.img")
    key = driver.backend(path)
    assert f"{path}: open nowhere else, so no loop device is bound to it" in add_logged(driver, key)
    assert driver.remove(key).returncode == 0


def test_an_image_merely_open_elsewhere_is_looked_at_and_shared(driver, images):
    path = images("opened.img")
    key = driver.backend(path)
    with open(path, "rb"):  # a backup job reading it, say: not a user of the disk
        log = add_logged(driver, key)
    assert f"{path}: open elsewhere: looking for loop devices bound to it" in log
    assert "conflicting user: None" in log
    assert driver.remove(key).returncode == 0


def test_a_block_device_is_passed_through(driver, images):
    path = images("under.img")
    with foreign_loop(path) as node:
        key = driver.backend(node, frontend_id=DOM_A)
        assert driver.add(key).returncode == 0
        assert physical(driver, key) == Devnum.of_rdev(os.stat(node).st_rdev)
        assert driver.read(f"{key}/physical-device-path") == node
        other = driver.backend(node, frontend_id=DOM_B)
        assert_failed(driver.add(other), driver, other, node, f"domain {DOM_A}")
        assert driver.remove(key).returncode == 0
        assert loop.status(node) is not None, "a passed-through device is not ours to remove"


def test_what_dom0_has_mounted_is_refused_to_writers_and_shared_with_readers_only_if_read_only(
        driver, images, tmp_path):
    path = images("mounted.img", size=8 << 20)
    subprocess.run(["mkfs.ext2", "-q", "-F", path], check=True, capture_output=True)
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    subprocess.run(["mount", "-o", "loop", path, str(mount_point)], check=True)
    try:
        node = loops_of(path)[0]  # mount's own loop device
        for target, mode in ((path, "r"), (node, "r"), (node, "w")):
            key = driver.backend(target, mode=mode)
            assert_failed(driver.add(key), driver, key, target, f"dom0, mounted read-write on {mount_point}")
        subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
        for target in (path, node):
            writer = driver.backend(target, mode="w")
            assert_failed(driver.add(writer), driver, writer, f"dom0, mounted read-only on {mount_point}")
            reader = driver.backend(target, mode="r")
            assert driver.add(reader).returncode == 0, driver.read(f"{reader}/hotplug-error")
            assert driver.remove(reader).returncode == 0
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)  # its loop device goes too (autoclear)


def test_a_vanished_backends_leftovers_do_not_block_the_next_guest(driver, images):
    # pygrub: the disk is attached to dom0, then to the guest. If the first
    # remove never ran (its backend went first), the second add cleans up.
    path = images("pygrub.img")
    first = driver.backend(path, frontend_id=0)
    assert driver.add(first).returncode == 0
    driver.destroy_backend(first)
    second = driver.backend(path, frontend_id=DOM_A)
    assert driver.add(second).returncode == 0, driver.read(f"{second}/hotplug-error")
    assert len(loops_of(path)) == 1
    assert driver.remove(second).returncode == 0
    assert loops_of(path) == []
    assert driver.state_files() == []


def test_remove_of_a_device_dom0_holds_fails_naming_the_holder_and_keeps_it_a_user(driver, images, tmp_path):
    # LOOP_CLR_FD on a device dom0 holds (an administrator mounted it to look
    # inside) only arms autoclear: it stays bound to the image, read-write.
    path = images("held.img", size=8 << 20)
    subprocess.run(["mkfs.ext2", "-q", "-F", path], check=True, capture_output=True)
    first = driver.backend(path, frontend_id=DOM_A)
    assert driver.add(first).returncode == 0
    node = driver.read(f"{first}/physical-device-path")
    mount_point = tmp_path / "look-inside"
    mount_point.mkdir()
    subprocess.run(["mount", "-o", "ro", node, str(mount_point)], check=True)
    try:
        assert_error(driver.remove(first), driver, first, f"{node} is still in use",
                      f"dom0, mounted read-only on {mount_point}", "the record is kept")
        assert loops_of(path) == [node], "still bound: the kernel unbinds it when the mount goes"
        assert driver.record(first) is not None
        driver.destroy_backend(first)  # xl destroy deletes the nodes anyway
        second = driver.backend(path, frontend_id=DOM_B)
        assert_failed(driver.add(second), driver, second, path, "already in use read-write by", first)
        assert loops_of(path) == [node], "no second writer's loop device"
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    assert driver.remove(first).returncode == 0, "a later remove finishes the job"
    assert loops_of(path) == []
    assert driver.state_files() == []


HOLD_LOCK = """
import sys, time
if {root!r}:
    sys.path.insert(0, {root!r})
from xenblock import locks
from xenblock.deadline import Deadline
from xenblock.state import StateDir
with locks.held(StateDir({state_dir!r}).lock_path({key!r}), Deadline.after(5), "test"):
    print("held", flush=True)
    time.sleep(120)
"""


@contextlib.contextmanager
def held_in_another_process(driver, key):
    """The lock of key, held by another process (as a running script would)."""
    code = HOLD_LOCK.format(root=driver.env.get("XENBLOCK_SOURCE", ""), state_dir=driver.state_dir, key=key)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_held_past_the_time_left_ends_in_hotplug_error(driver, images):
    # remove has 10 s from libxl: the wait ends in time to say what it waited for.
    key = driver.backend(images("lock-held.img"))
    assert driver.add(key).returncode == 0
    with held_in_another_process(driver, key) as holder:
        started = time.monotonic()
        result = driver.remove(key)
        waited = time.monotonic() - started
        assert_error(result, driver, key, f"for the lock of {key}, held by pid {holder.pid} ({sys.executable} -c")
    assert 4 < waited < 10, waited
    assert driver.remove(key).returncode == 0


def test_an_absolute_backend_path_works_and_is_not_its_relative_twin(driver, images):
    top = f"xenblock-test-abs{os.getpid()}"
    relative = driver.backend(images("rel.img"), prefix=f"{top}/vbd")
    absolute = driver.backend(images("abs.img"), prefix=f"/{top}/vbd")
    try:
        for key in (relative, absolute):
            result = driver.add(key)
            assert result.returncode == 0, result.stderr
            assert driver.read(f"{key}/hotplug-status") == "connected"
        assert driver.record(relative)["target"].endswith("rel.img")
        assert driver.record(absolute)["target"].endswith("abs.img")
        for key in (relative, absolute):
            assert driver.remove(key).returncode == 0
        assert driver.state_files() == []
    finally:
        driver.delete(f"/{top}")
        driver.delete(top)


KILL_AFTER_BIND = """
import os, signal, sys
if {root!r}:
    sys.path.insert(0, {root!r})  # the host tier runs the checkout; the VM the installed package
from xenblock import loop
real = loop.attach
def attach_then_die(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # libxl's timeout, at the worst moment
loop.attach = attach_then_die
from xenblock.hotplug import main
sys.exit(main([{script!r}, "add"], os.environ))
"""


def add_killed_after_bind(driver, key):
    script = os.path.join(driver.script_dir, "block-file")
    code = KILL_AFTER_BIND.format(root=driver.env.get("XENBLOCK_SOURCE", ""), script=script)
    environ = {**driver.env, "XENBUS_PATH": key}
    result = subprocess.run([sys.executable, "-c", code], env=environ, stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL


def test_remove_undoes_an_add_killed_right_after_binding(driver, images):
    path = images("killed.img")
    key = driver.backend(path)
    add_killed_after_bind(driver, key)
    assert len(loops_of(path)) == 1, "the kill came after the bind"
    assert driver.remove(key).returncode == 0
    assert loops_of(path) == []
    assert driver.state_files() == []


def test_add_after_a_killed_add_replaces_its_leftovers(driver, images):
    path = images("retry.img")
    key = driver.backend(path)
    add_killed_after_bind(driver, key)
    assert driver.add(key).returncode == 0
    assert loops_of(path) == [driver.read(f"{key}/physical-device-path")]
    assert driver.remove(key).returncode == 0
    assert loops_of(path) == []


def test_concurrent_adds_of_many_disks_all_succeed(driver, images):
    keys = [driver.backend(images(f"many{i}.img"), frontend_id=DOM_A) for i in range(6)]
    results = run_concurrently(driver, "add", keys)
    assert [r.returncode for r in results] == [0] * 6, [r.stderr for r in results]
    devices = {driver.read(f"{key}/physical-device") for key in keys}
    assert len(devices) == 6
    assert [r.returncode for r in run_concurrently(driver, "remove", keys)] == [0] * 6
    assert driver.state_files() == []


def test_concurrent_writers_of_one_image_one_wins(driver, images):
    path = images("contended.img")
    keys = [driver.backend(path, frontend_id=DOM_A + i) for i in range(4)]
    results = run_concurrently(driver, "add", keys)
    assert sorted(r.returncode for r in results) == [0, 1, 1, 1]
    assert len(loops_of(path)) == 1
    for key in keys:
        assert driver.remove(key).returncode == 0
    assert loops_of(path) == []


def run_concurrently(driver, command, keys):
    results = [None] * len(keys)

    def one(index):
        results[index] = driver.run(command, keys[index])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(keys))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_a_mistake_in_the_config_file_fails_the_disk_naming_the_line(driver, images, tmp_path):
    config = tmp_path / "typo.conf"
    config.write_text("[general]\ndebgu = yes\nsyslog = perhaps\n")  # the first mistake is named
    key = driver.backend(images("config.img"))
    result = driver.add(key, env={"XENBLOCK_CONFIG": str(config)})
    assert_failed(result, driver, key, f"{config} line 2: unknown setting 'debgu' in [general]")
    assert driver.state_files() == []


def test_a_script_named_for_an_unknown_type_says_so(driver, images, tmp_path):
    os.symlink(os.path.join(driver.script_dir, "block-file"), tmp_path / "block-nosuch")
    key = driver.backend(images("any.img"), script="block-nosuch")
    result = subprocess.run([str(tmp_path / "block-nosuch"), "add"], stdin=subprocess.DEVNULL,
                            env={**os.environ, **driver.env, "XENBUS_PATH": key},
                            capture_output=True, text=True, timeout=60)
    assert_failed(result, driver, key, "unknown disk type 'nosuch'", "block-file")


def test_without_a_command_or_path_the_script_explains_itself(driver):
    script = os.path.join(driver.script_dir, "block-file")
    for argv, env in (([script], {"XENBUS_PATH": "x/y"}), ([script, "add"], {}), ([script, "bogus"], {"XENBUS_PATH": "x/y"})):
        result = subprocess.run(argv, env={**os.environ, **driver.env, **env}, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert "usage:" in result.stderr


def test_the_log_has_one_line_per_add_and_remove(driver, images):
    path = images("logged.img")
    key = driver.backend(path, frontend_id=DOM_A)
    start = driver.log_offset()
    assert driver.add(key).returncode == 0
    node = driver.read(f"{key}/physical-device-path")
    assert driver.remove(key).returncode == 0
    lines = [line for line in driver.log_since(start) if key in line]
    assert len(lines) == 2, lines
    assert f"add {key}: {path} -> {node}" in lines[0] and f"domain {DOM_A}" in lines[0]
    assert f"remove {key}: took down {path} ({node}) of domain {DOM_A}" in lines[1]


def test_the_lines_go_to_syslog_too(driver, images, tmp_path):
    # The script runs in a mount namespace of its own where /dev/log is our
    # socket, as syslog's: glibc's syslog() always writes to /dev/log.
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "dev-log"))
    receiver.settimeout(10)
    config = tmp_path / "syslog.conf"
    config.write_text(f"[general]\nlog_file = {driver.log_file}\nsyslog = yes\n")
    mount_target_made = not os.path.lexists("/dev/log")  # a bind mount needs something to cover
    if mount_target_made:
        open("/dev/log", "w").close()
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$0" /dev/log && exec "$@"', str(tmp_path / "dev-log")]
    path = images("syslogged.img")
    key = driver.backend(path, frontend_id=DOM_A)
    try:
        for command in ("add", "remove"):
            result = driver.run(command, key, env={"XENBLOCK_CONFIG": str(config)}, wrapper=wrapper)
            assert result.returncode == 0, result.stderr
    finally:
        if mount_target_made:
            os.unlink("/dev/log")
    added, removed = receiver.recv(4096).decode(), receiver.recv(4096).decode()
    receiver.close()
    daemon_info = f"<{3 * 8 + 6}>"  # facility daemon (3), priority info (6)
    assert added.startswith(daemon_info) and "block-file[" in added, added
    assert f"add {key}: {path} -> /dev/loop" in added and f"domain {DOM_A}" in added, added
    assert removed.startswith(daemon_info) and f"remove {key}: took down {path}" in removed, removed


def test_direct_io_is_used_exactly_where_the_file_system_takes_it(driver, images):
    # Linux 6.1's tmpfs refuses O_DIRECT (and overlayfs over it claims it,
    # then fails every I/O); newer kernels' tmpfs takes it. Either way the
    # guest gets a working disk, with direct I/O only where it works.
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else "/run"
    path = os.path.join(directory, f"xenblock-test-{os.getpid()}.img")
    with open(path, "wb") as f:
        f.truncate(1 << 20)
        f.write(b"on tmpfs")
    try:
        key = driver.backend(path)
        assert driver.add(key).returncode == 0
        node = driver.read(f"{key}/physical-device-path")
        with open(node, "rb") as f:
            assert f.read(8) == b"on tmpfs"
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
            takes_direct_io = True
        except OSError:
            takes_direct_io = False
        assert loop.direct_io_active(loop.Loop(0, physical(driver, key), None)) is takes_direct_io
        assert driver.remove(key).returncode == 0
    finally:
        os.unlink(path)
