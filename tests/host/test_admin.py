import contextlib
import json
import os
import subprocess
import sys
import time

from tests.support.cases import loops_of
from tests.support.fixtures import foreign_loop
from xenblock import loop
from xenblock.deadline import Deadline



def status(driver, *args):
    return subprocess.run([sys.executable, "-m", "xenblock.admin", "status", *args], capture_output=True,
                          text=True, env=driver.env)


def test_xenblock_status_shows_each_disk_and_what_disagrees_with_the_kernel_and_xenstore(driver, images):
    path = images("status.img")
    key = driver.backend(path, frontend_id=7)
    driver.write("/local/domain/7/name", "web")
    driver.write(f"{key}/dev", "xvda")
    assert driver.add(key).returncode == 0
    node = driver.read(f"{key}/physical-device-path")
    shown = status(driver)
    assert shown.returncode == 0, shown
    header, row = shown.stdout.splitlines()
    assert header.split() == ["DISK", "GUEST", "VDEV", "SCRIPT", "TARGET", "DEVICES", "ACCESS", "FILL"]
    assert row.split()[:6] == [key, "web", "(7)", "xvda", "block-file", path]
    assert f"{node} (" in row and row.split()[-2:] == ["w", "-"]

    as_json = json.loads(status(driver, "--json").stdout)
    assert [(d["key"], d["guest"], d["domid"], d["vdev"], d["script"], d["access"], d["problems"])
            for d in as_json] == [(key, "web", 7, "xvda", "block-file", "w", [])]

    # A loop device of ours that no record names, and the backend gone without a remove.
    with stray_loop(images("stray.img")) as stray:
        driver.delete(key)
        shown = status(driver)
    assert shown.returncode == 1
    lines = shown.stdout.splitlines()
    assert lines[1].startswith(key) and "its backend is gone from xenstore" in lines[2]
    assert lines[3].startswith("(no record)") and f"{stray} (xenblock:lost)" in lines[3]
    assert "no record names" in lines[4]
    assert driver.remove(key).returncode == 0
    assert status(driver).stderr == "no disks\n"


@contextlib.contextmanager
def stray_loop(path, mark="xenblock:lost"):
    """A loop device with a mark of ours and no record (as after /run was lost)."""
    fd = os.open(path, os.O_RDWR)
    try:
        bound = loop.attach(fd, False, False, mark, lambda number: None, lambda number: None,
                            Deadline.after(10))
    finally:
        os.close(fd)
    try:
        yield bound.node
    finally:
        loop.detach(bound.node, bound.diskseq, mark, Deadline.after(10))


def cleanup(driver, *args):
    return subprocess.run([sys.executable, "-m", "xenblock.admin", "cleanup", *args], capture_output=True,
                          text=True, env=driver.env)


def test_xenblock_cleanup_takes_down_only_what_is_provably_ours_and_unused(driver, images):
    orphan_image, stray_image, held_image, user_image = (images(name) for name in ("orphan.img", "stray.img",
                                                                                  "held.img", "user.img"))
    orphan = driver.backend(orphan_image)
    live = driver.backend(images("live.img"))
    assert driver.add(orphan).returncode == 0 and driver.add(live).returncode == 0
    orphan_node = driver.read(f"{orphan}/physical-device-path")
    driver.delete(orphan)  # the guest went; its remove never ran
    with stray_loop(stray_image) as stray, stray_loop(held_image, "xenblock:held") as held, \
            foreign_loop(user_image) as users:
        with open(held, "rb") as holder_device:
            holder = subprocess.Popen(["sleep", "60"], stdin=holder_device)
        try:
            listed = cleanup(driver, "--dry-run")
            assert listed.returncode == 1  # the held one would be left
            assert listed.stdout.splitlines() == [
                f"would take down record {orphan} ({orphan_image}, domain 0): its backend is gone",
                *sorted([f"would take down loop device {stray} (xenblock:lost), no record names it",
                         f"left loop device {held} (xenblock:held), no record names it: in use by pid "
                         f"{holder.pid} (sleep 60)"], key=lambda line: int(line.split("/dev/loop")[1].split()[0]))]
            assert loops_of(orphan_image) and loops_of(stray_image)  # a dry run touches nothing
            done = cleanup(driver)
            assert f"took down record {orphan}" in done.stdout
            assert f"took down loop device {stray} (xenblock:lost)" in done.stdout
            assert f"left loop device {held} (xenblock:held)" in done.stdout and done.returncode == 1
            assert loops_of(orphan_image) == [] and loops_of(stray_image) == [] and driver.record(orphan) is None
            assert loops_of(held_image) == [held] and loops_of(user_image) == [users]
            assert driver.read(f"{live}/physical-device-path") in loops_of(driver.read(f"{live}/params"))
        finally:
            holder.kill()
            holder.wait()
    assert orphan_node not in loops_of(orphan_image)
    assert cleanup(driver).stderr == "nothing to clean up\n"
    assert driver.remove(live).returncode == 0


def test_xenblock_status_says_when_a_device_is_gone(driver, images):
    key = driver.backend(images("gone.img"))
    assert driver.add(key).returncode == 0
    record = driver.record(key)
    record["steps"][0]["diskseq"] += 1000  # the number now names another disk than the one made
    driver.save_record(record)
    shown = status(driver)
    assert shown.returncode == 1 and f"{record['steps'][0]['node']} is gone" in shown.stdout
    record["steps"][0]["diskseq"] -= 1000
    driver.save_record(record)
    assert status(driver).returncode == 0
    assert driver.remove(key).returncode == 0


def test_xenblock_without_a_subcommand_explains_itself():
    result = subprocess.run([sys.executable, "-m", "xenblock.admin"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage: xenblock" in result.stderr and "the following arguments are required: command" in result.stderr


def test_xenblock_names_a_mistake_in_its_config_file(tmp_path):
    config = tmp_path / "x.conf"
    config.write_text("[general]\nlog_file = relative\n")
    result = subprocess.run([sys.executable, "-m", "xenblock.admin", "status"], capture_output=True, text=True,
                            env={"XENBLOCK_CONFIG": str(config), "PYTHONPATH": "."})
    assert result.returncode == 1
    assert result.stderr == f"xenblock: {config} line 2: 'relative': expected an absolute path\n"


def _config_command(env):
    return subprocess.run([sys.executable, "-m", "xenblock.admin", "config"], capture_output=True, text=True,
                          env={"PYTHONPATH": ".", **env})


def test_xenblock_config_shows_every_setting_in_force_and_where_it_comes_from(tmp_path):
    config = tmp_path / "x.conf"
    config.write_text("[general]\n# comment\nfill_warning = 92.5%\n[cow]\nsize = 2048M\nsparse = on\n"
                      "[lvsnap]\nkeep_origins = vg1/b vg0/a\n[nbd]\nio_timeout = 30\n")
    result = _config_command({"XENBLOCK_CONFIG": str(config), "XENBLOCK_DEBUG": "1"})
    assert result.returncode == 0 and result.stderr == ""
    settings = {line.split(" = ")[0]: line.split(" = ")[1] for line in result.stdout.splitlines() if " = " in line}
    assert settings["fill_warning"].split() == ["92.5%", "#", f"{config}", "line", "3"]
    assert settings["size"].split() == ["2G", "#", f"{config}", "line", "5"]
    assert settings["sparse"].split() == ["yes", "#", f"{config}", "line", "6"]
    assert settings["debug"].split("#")[1].strip() == "XENBLOCK_DEBUG in the environment"
    assert "max_size = none" in result.stdout.split("[snapshot]")[1]
    assert settings["syslog"].split() == ["yes", "#", "default"]
    assert settings["keep_origins"].split() == ["vg0/a", "vg1/b", "#", f"{config}", "line", "8"]
    assert settings["io_timeout"].split() == ["30", "#", f"{config}", "line", "10"]
    assert result.stdout.splitlines()[0] == f"# {config}"
    from xenblock.config import SETTINGS
    assert sum(" = " in line for line in result.stdout.splitlines()) == len(SETTINGS)


def test_xenblock_config_without_a_file_shows_the_defaults_and_a_mistake_fails_it(tmp_path):
    missing = _config_command({"XENBLOCK_CONFIG": str(tmp_path / "none.conf")})
    assert missing.returncode == 0
    assert missing.stdout.splitlines()[0] == f"# {tmp_path / 'none.conf'} (missing: every setting is its default)"
    assert all(line.endswith("# default") for line in missing.stdout.splitlines() if " = " in line)
    config = tmp_path / "x.conf"
    config.write_text("[cow]\nsize = 2X\nmax_size = 8G\n")
    broken = _config_command({"XENBLOCK_CONFIG": str(config)})
    assert broken.returncode == 1
    assert f"{config} line 2: '2X'" in broken.stderr
    assert "max_size = 8G" in broken.stdout and "size = 1G" in broken.stdout  # the good line counts, the bad does not


def test_xenblock_cleanup_makes_a_qemu_nbd_of_ours_no_record_names_exit(driver, tmp_path):
    # block-tap's daemon left by a run whose record was lost: found by its
    # socket under /run/xenblock/nbd, asked to exit (it flushes and does),
    # its socket gone; a user's own qemu-nbd elsewhere is not touched.
    image = str(tmp_path / "lost.qcow2")
    subprocess.run(["qemu-img", "create", "-f", "qcow2", image, "4M"], check=True, capture_output=True)
    os.makedirs(f"{driver.state_dir}/nbd", exist_ok=True)
    ours, users = f"{driver.state_dir}/nbd/lost.sock", str(tmp_path / "user.sock")
    started = [subprocess.Popen(["qemu-nbd", "-f", "qcow2", f"--socket={path}", "--read-only", image],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for path in (ours, users)]
    try:
        while not (os.path.exists(ours) and os.path.exists(users)):
            assert all(process.poll() is None for process in started), "a qemu-nbd did not start"
            time.sleep(0.05)
        assert f"qemu-nbd pid {started[0].pid} ({ours})" in status(driver).stdout
        done = cleanup(driver)
        assert f"took down qemu-nbd (pid {started[0].pid}) serving on {ours}" in done.stdout, done
        assert started[0].wait(timeout=10) == 0 and not os.path.exists(ours)
        assert started[1].poll() is None
    finally:
        for process in started:
            process.kill()
            process.wait()
