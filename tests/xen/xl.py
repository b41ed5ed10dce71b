"""Running xl and small PV guests from tests in dom0."""
import contextlib
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


def run_guest(tmp_path, disks, snippet, timeout=150, **options):
    """xl create -c: the guest's XBGUEST lines and exit status, once it is gone."""
    name, path = config(tmp_path, disks, snippet, **options)
    return guest_result(create_on_console(name, path, timeout))


def create_on_console(name, path, timeout=150):
    """xl create -c of config path for domain name: its console, once the
    domain is gone. A guest runs about 10 s; one still running at timeout
    is destroyed and fails the test with what its console showed (in the
    snippet, after it, in poweroff), so the next test starts clean."""
    try:
        result = xl("create", "-c", path, timeout=timeout)
    except subprocess.TimeoutExpired as hung:
        xl("destroy", name)
        wait_gone(name)
        console = (hung.stdout or b"").decode(errors="replace")
        raise AssertionError(f"guest {name} still running after {timeout} s; its console:\n"
                             f"{console[-3000:]}") from None
    assert result.returncode == 0, f"xl create failed:\n{result.stdout}\n{result.stderr}"
    wait_gone(name)
    return result.stdout


def guest_result(console):
    """The XBGUEST lines and XBGUEST-EXIT status a guest printed on its console.
    Fails if the console shows fewer lines than the guest counted (XBGUEST-SHOWN):
    a lost line is a broken run, never an empty answer."""
    lines = _tagged(console, "XBGUEST")
    status = _tagged(console, "XBGUEST-EXIT")
    assert status, f"the guest did not finish its snippet:\n{console[-3000:]}"
    shown = _tagged(console, "XBGUEST-SHOWN")
    assert shown == [str(len(lines))], (f"the guest's console lost lines: it showed {shown or 'no count'}, "
                                        f"{len(lines)} arrived:\n{console[-3000:]}")
    return lines, int(status[0])


def _tagged(console, tag):
    return [line.split(f"{tag}: ", 1)[1].rstrip("\r") for line in console.splitlines() if f"{tag}: " in line]


def create_fails(tmp_path, disks):
    """xl create of a guest with these disks, expected to fail: xl's output."""
    name, path = config(tmp_path, disks)
    result = xl("create", path)
    assert result.returncode != 0, f"xl create succeeded:\n{result.stdout}"
    wait_gone(name)
    return result.stdout + result.stderr


@contextlib.contextmanager
def paused_guest(tmp_path, disks, **options):
    """A guest created paused (its disks are attached, it runs nothing): its
    name; destroyed after."""
    name, path = config(tmp_path, disks, **options)
    try:
        result = xl("create", "-p", path)
        assert result.returncode == 0, f"xl create -p of a guest with {disks} failed:\n{result.stderr}"
        yield name
    finally:
        xl("destroy", name)
        wait_gone(name)


def assert_second_writer_refused(tmp_path, path):
    """A guest writing path holds it; xl create of a second one fails."""
    with paused_guest(tmp_path, [disk(path)]):
        output = create_fails(tmp_path, [disk(path)])
        assert f"{path}: already in use read-write by domain" in output, output


def wait_gone(name, timeout=60):
    deadline = time.monotonic() + timeout
    while xl("domid", name).returncode == 0:
        assert time.monotonic() < deadline, f"domain {name} still there after {timeout} s"
        time.sleep(0.5)


def disk(target, vdev="xvda", access="w", script="block-file"):
    return f"vdev={vdev},access={access},script={script},target={target}"


def domid(name, must_exist=True):
    """name's domain id; None if there is no such domain and must_exist is false."""
    result = xl("domid", name)
    if result.returncode != 0 and not must_exist:
        return None
    assert result.returncode == 0, f"no domain {name}: {result.stderr}"
    return int(result.stdout)
