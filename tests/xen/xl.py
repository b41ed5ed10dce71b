"""Running xl and small PV guests from tests in dom0."""
import itertools
import os
import subprocess
import time

from tests.vm import guest

_names = itertools.count(1)


def xl(*args, timeout=120):
    return subprocess.run(["xl", *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def config(tmp_path, disks, snippet="true", **options):
    """An xl config for a busybox guest that runs snippet, then powers off
    (options: see guest.write_config)."""
    name = f"xbtest{os.getpid()}-{next(_names)}"
    path = tmp_path / f"{name}.cfg"
    guest.write_config(str(path), name, disks, snippet, **options)
    return name, str(path)


def run_guest(tmp_path, disks, snippet, timeout=300, **options):
    """xl create -c: the guest's XBGUEST lines and exit status, once it is gone."""
    name, path = config(tmp_path, disks, snippet, **options)
    result = xl("create", "-c", path, timeout=timeout)
    assert result.returncode == 0, f"xl create failed:\n{result.stdout}\n{result.stderr}"
    wait_gone(name)
    lines = [line.split("XBGUEST: ", 1)[1].rstrip("\r") for line in result.stdout.splitlines()
             if "XBGUEST: " in line]
    status = [line.split("XBGUEST-EXIT: ", 1)[1].strip() for line in result.stdout.splitlines()
              if "XBGUEST-EXIT: " in line]
    assert status, f"the guest did not finish its snippet:\n{result.stdout[-3000:]}"
    return lines, int(status[0])


def create_fails(tmp_path, disks):
    """xl create of a guest with these disks, expected to fail: xl's output."""
    name, path = config(tmp_path, disks)
    result = xl("create", path)
    assert result.returncode != 0, f"xl create succeeded:\n{result.stdout}"
    wait_gone(name)
    return result.stdout + result.stderr


def wait_gone(name, timeout=60):
    deadline = time.monotonic() + timeout
    while xl("domid", name).returncode == 0:
        assert time.monotonic() < deadline, f"domain {name} still there after {timeout} s"
        time.sleep(0.5)


def disk(target, vdev="xvda", access="w", script="block-file"):
    return f"vdev={vdev},access={access},script={script},target={target}"


def domid(name):
    result = xl("domid", name)
    assert result.returncode == 0, f"no domain {name}: {result.stderr}"
    return int(result.stdout)
