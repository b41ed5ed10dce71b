"""xenblock status while guests run: the real kernel, xenstore and xl."""
import json
import os
import subprocess

from tests.xen.xl import disk, domid, paused_guest

XENBLOCK = os.path.join(os.environ.get("XENBLOCK_VENV", "/nonexistent"), "bin", "xenblock")


def status(*args):
    return subprocess.run([XENBLOCK, "status", *args], capture_output=True, text=True)


def test_status_shows_a_running_guests_disks_with_its_name_devices_and_fill(images, tmp_path):
    image, base = images("status-file.img"), images("status-base.img")
    disks = [disk(image, vdev="xvda"), disk(f"{base} 8M", vdev="xvdb", script="block-cow")]
    with paused_guest(tmp_path, disks) as name:
        shown = json.loads(status("--json").stdout)
        ours = sorted((d for d in shown if d["guest"] == name), key=lambda d: d["vdev"])
        assert [(d["vdev"], d["script"], d["access"], d["domid"], d["problems"]) for d in ours] == [
            ("xvda", "block-file", "w", domid(name), []), ("xvdb", "block-cow", "w", domid(name), [])]
        assert ours[0]["devices"][0].startswith("/dev/loop") and ours[0]["fill"] is None
        assert ours[1]["fill"]["percent"].endswith("%") and ours[1]["fill"]["warning"] == []
        assert any(device.startswith("/dev/dm-") for device in ours[1]["devices"])
        table = status()
        assert table.returncode == 0, table
        assert sum(name in line for line in table.stdout.splitlines()) == 2
    assert all(d["guest"] != name for d in json.loads(status("--json").stdout or "[]"))
