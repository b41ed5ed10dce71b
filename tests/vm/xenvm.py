#!/usr/bin/env python3
"""Run a command in dom0 of a real Xen 4.17 host booted in QEMU.

    python3 tests/vm/xenvm.py [--timeout S] [--out DIR] [--env NAME=VALUE]... -- COMMAND...

COMMAND's words are joined with spaces and run by /bin/sh in dom0 (as ssh
does), as root, in the checkout, with stdin from /dev/null, after
tests/vm/dom0-setup.sh has brought Xen's daemons up and installed xenblock.
Its stdout+stderr are printed here once the VM is off, and this exits with
its status: 124 if the VM timed out or left no status, 125 if dom0's set-up
failed. Example:

    python3 tests/vm/xenvm.py -- 'xl info | grep xen_version'

In dom0 the environment has XENBLOCK_ROOT (the checkout, same path as on the
host), XENBLOCK_VENV (a venv with xenblock installed from the checkout),
XENBLOCK_OUT (a folder written through to DIR on the host),
XENBLOCK_GUEST_KERNEL and XENBLOCK_GUEST_INITRD (see guest.py), and every
--env NAME=VALUE (also seen by the set-up, e.g. XENSTORED_ARGS).

DIR (default build/vm/out) receives console.log (Xen's and dom0's serial
console), setup.log, output.log, status; build/vm holds the cached products
(gunzipped Xen, dom0 initramfs, guest initramfs, venv). Stdlib only, except
that virtme-ng must be installed for some Python on the host.

Facts that shaped it (see shared/xen-in-qemu.md): TCG only (KVM hangs), Xen
needs smap=0 smep=0 under TCG, QEMU loads Xen through multiboot from the
gunzipped image with dom0's kernel and initramfs as modules.
"""
import argparse
import base64
import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

if __package__:
    from . import guest
else:  # run as a script: this folder is sys.path[0]
    import guest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.join(ROOT, "build", "vm")
XEN_GZ = "/boot/xen-4.17-amd64.gz"
# smap=0 smep=0: without them dom0 crashes at once under TCG. spec-ctrl=eager-fpu:
# Xen takes the emulated CPU for an AMD one and switches FPU/SSE state lazily;
# under TCG dom0's and the guests' processes then crashed at random (registers
# holding another process's values), the more often the more domains ran.
# Eager switching ended that (tests/RELIABILITY.md, guests started at once).
# spec-ctrl=no (before eager-fpu, which it would turn off) and dom0's
# mitigations=off: an emulated CPU does not speculate, so the Spectre
# mitigations (retpolines, branch hardening, RSB stuffing) only cost time:
# a process start in dom0 took about 15% less without them (2026-11-28).
XEN_ARGS = "console=com1 com1=115200 dom0_mem=2048M smap=0 smep=0 spec-ctrl=no,eager-fpu noreboot"
# The interpreter the dom0 venv is made from: dom0 sees the host's / so the
# same path works there. Debian's own python3 (tools/debian-packages.txt), as
# on a Debian dom0; called directly, never through a shim such as pyenv's,
# which costs ~0.8 s per start under TCG.
VENV_PYTHON = os.environ.get("XENBLOCK_VM_PYTHON") or next(
    (p for p in ("/usr/bin/python3",) if os.path.exists(p)),
    getattr(sys, "_base_executable", sys.executable))
# What the venv is built from (setup.cfg reads README.md and etc/).
PROJECT_INPUTS = ("xenblock", "scripts", "etc", "setup.cfg", "pyproject.toml", "README.md")
TIMEOUT_STATUS, SETUP_FAILED_STATUS = 124, 125


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=1800, help="default 1800")
    parser.add_argument("--out", metavar="DIR", default=os.path.join(BUILD, "out"),
                        help="results folder (default build/vm/out)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set in dom0 before its set-up runs")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.env):
        parser.error("--env takes NAME=VALUE")
    extra = dict(item.split("=", 1) for item in args.env)
    # A CI job cancelled with SIGTERM must not leave QEMU running: exit through
    # _run_qemu's clean-up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    return run(" ".join(args.command), args.out, args.timeout, extra)


def run(command, out=os.path.join(BUILD, "out"), timeout=1800, extra_env=None):
    """Boot the VM, run command in dom0, print its output; return its exit status."""
    out = os.path.abspath(out)
    # The machine lock comes first: a run waiting for the VM must not rebuild
    # build/vm (the venv above all) under the VM that is running.
    with _machine_lock(), _build_lock():
        env = {
            "XENBLOCK_ROOT": ROOT,
            "XENBLOCK_VENV": project_venv(),
            "XENBLOCK_GUEST_KERNEL": guest.kernel(),
            "XENBLOCK_GUEST_INITRD": guest.initramfs(),
            **(extra_env or {}),
        }
        argv = qemu_argv(out)
        _write_job(out, env, command)
        print(f"xenvm: booting Xen in QEMU (console in {out}/console.log)", file=sys.stderr, flush=True)
        started = time.monotonic()
        code, command_started = _run_qemu(argv, out, timeout)
        elapsed = time.monotonic() - started
    return _report(out, code, elapsed, command_started)


def _write_job(out, env, command):
    """The command and its environment go through the results share, not the
    kernel command line: Xen keeps only 1023 bytes of dom0's command line."""
    os.makedirs(out, exist_ok=True)
    for name in ("job.env", "job.sh", "started", "status", "setup.log", "setup.status",
                 "output.log", "console.log"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(out, name))
    with open(os.path.join(out, "job.env"), "w") as f:
        f.writelines(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
    with open(os.path.join(out, "job.sh"), "w") as f:
        f.write(command + "\n")


def _run_qemu(argv, out, timeout):
    """Run QEMU with its console in console.log; kill it at the timeout.
    Returns QEMU's exit code (None if killed) and when dom0 started the command."""
    started = time.monotonic()
    command_started = None
    with open(os.path.join(out, "console.log"), "wb") as console:
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT)
        try:
            while qemu.poll() is None:
                if time.monotonic() - started > timeout:
                    return None, command_started
                if command_started is None and os.path.exists(os.path.join(out, "started")):
                    command_started = time.monotonic() - started
                time.sleep(0.5)
            return qemu.returncode, command_started
        finally:
            if qemu.poll() is None:
                qemu.kill()
                qemu.wait()


def _report(out, code, elapsed, command_started):
    """Print the command's output; the exit status for this process."""
    _print_file(os.path.join(out, "output.log"), sys.stdout)
    status = _read(os.path.join(out, "status"))
    boot = f"{command_started:.0f} s" if command_started is not None else "never"
    if code is None:
        print(f"xenvm: timed out after {elapsed:.0f} s (command started: {boot}); QEMU killed. "
              f"Last console lines:", file=sys.stderr)
        _print_tail(os.path.join(out, "console.log"))
        return TIMEOUT_STATUS
    if _read(os.path.join(out, "setup.status")) not in (None, "0\n"):
        print("xenvm: dom0 set-up failed:", file=sys.stderr)
        _print_file(os.path.join(out, "setup.log"), sys.stderr)
        return SETUP_FAILED_STATUS
    if status is None:
        print(f"xenvm: QEMU exited ({code}) after {elapsed:.0f} s but dom0 left no exit status "
              f"(crash?). Last console lines:", file=sys.stderr)
        _print_tail(os.path.join(out, "console.log"))
        return TIMEOUT_STATUS
    print(f"xenvm: command exited {int(status)}; dom0 ready after {boot}, total {elapsed:.0f} s",
          file=sys.stderr)
    return int(status)


def qemu_argv(out):
    kernel = guest.kernel()
    virtme_python = _virtme_python()
    # virtme's init runs this one command; everything else comes from job.env.
    exec_b64 = base64.b64encode(f"/bin/sh {shlex.quote(os.path.join(HERE, 'dom0-run.sh'))}".encode()).decode()
    overlays = ("/etc", "/lib", "/home", "/opt", "/srv", "/usr", "/var", "/tmp")  # as vng uses
    dom0_args = " ".join([
        "console=hvc0 earlyprintk=xen mitigations=off",  # see XEN_ARGS
        *[f"virtme_rw_overlay{i}={d}" for i, d in enumerate(overlays)],
        "virtme_root_mods=1 virtme_console=hvc0 virtme_root_user=1 virtme_hostname=xenblock-dom0",
        f"virtme.exec=`{exec_b64}`",
        f"init={_virtme_init(virtme_python)}",
    ])
    return [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "3G", "-smp", "2",
        "-nographic", "-no-reboot", "-serial", "stdio", "-monitor", "none",
        # No VGA and no NIC: their drivers cost seconds of udev coldplug under TCG.
        "-vga", "none", "-nic", "none",
        "-kernel", xen_binary(), "-append", XEN_ARGS,
        # Multiboot modules are comma-separated; a module's command line follows its path.
        "-initrd", f"{kernel} {dom0_args},{dom0_initramfs(kernel, virtme_python)}",
        # / read-only for virtme's root (mounted with cache=none by virtme's init) ...
        *_share("root", "/", "/dev/root", readonly=True),
        # ... again, mounted by dom0-run.sh with cache=loose for speed ...
        *_share("fast", "/", "xbfast", readonly=True),
        # ... and the writable results folder.
        *_share("out", out, "xbout", readonly=False),
    ]


def _share(fsdev, path, tag, readonly):
    if "," in path:
        sys.exit(f"xenvm: QEMU cannot share a path with a comma: {path}")
    options = f"local,id={fsdev},path={path},security_model=none,multidevs=remap"
    return ["-fsdev", options + (",readonly=on" if readonly else ""),
            "-device", f"virtio-9p-pci,fsdev={fsdev},mount_tag={tag}"]


def xen_binary():
    """QEMU's multiboot loader takes no gzip: a gunzipped copy of Xen."""
    path = os.path.join(BUILD, "xen")
    if _stale(path, [XEN_GZ]):
        with open(path + ".tmp", "wb") as f:
            subprocess.run(["zcat", XEN_GZ], stdout=f, check=True)
        os.rename(path + ".tmp", path)
    return path


def dom0_initramfs(kernel, virtme_python):
    version = guest.kernel_version(kernel)
    path = os.path.join(BUILD, f"dom0-initramfs-{version}.img")
    if _stale(path, [kernel, f"/lib/modules/{version}/modules.dep", _virtme_init(virtme_python)]):
        subprocess.run([virtme_python, "-m", "virtme.commands.mkinitramfs", "--mod-kversion", version,
                        "--outfile", path + ".tmp"], check=True, stdout=subprocess.DEVNULL)
        os.rename(path + ".tmp", path)
    return path


def _virtme_python():
    """A Python on the host that has virtme-ng: this one, or the venvs' base."""
    for python in (sys.executable, VENV_PYTHON):
        if subprocess.run([python, "-c", "import virtme"], capture_output=True).returncode == 0:
            return python
    sys.exit(f"xenvm: virtme-ng is not installed for {sys.executable} nor {VENV_PYTHON} "
             "(pip install virtme-ng)")


def _virtme_init(virtme_python):
    package = subprocess.run([virtme_python, "-c", "import os, virtme; print(os.path.dirname(virtme.__file__))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    return os.path.join(package, "guest", "bin", "virtme-ng-init")


def project_venv():
    """build/vm/venv with xenblock[test] installed from the checkout, as a user installs it.

    Rebuilt when the project's files change. pip gets a copy of them: an
    in-tree setuptools build keeps stale modules in build/lib, which would
    then be installed too."""
    venv = os.path.join(BUILD, "venv")
    stamp = os.path.join(venv, "xenblock-inputs.sha256")
    digest = _inputs_digest()
    if _read(stamp) == digest:
        return venv
    print(f"xenvm: building {venv} (pip install {ROOT}[test])", file=sys.stderr, flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([VENV_PYTHON, "-m", "venv", venv], check=True)
    with tempfile.TemporaryDirectory() as source:
        for name in PROJECT_INPUTS:
            _copy(os.path.join(ROOT, name), os.path.join(source, name))
        subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", f"{source}[test]"], check=True)
    with open(stamp, "w") as f:
        f.write(digest)
    return venv


def _inputs_digest():
    digest = hashlib.sha256(VENV_PYTHON.encode())
    for name in PROJECT_INPUTS:
        top = os.path.join(ROOT, name)
        paths = [top] if os.path.isfile(top) else sorted(
            os.path.join(d, f) for d, _, files in os.walk(top) for f in files if "__pycache__" not in d)
        for path in paths:
            digest.update(os.path.relpath(path, ROOT).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def _copy(source, target):
    if os.path.isdir(source):
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    elif os.path.exists(source):
        shutil.copy2(source, target)


@contextlib.contextmanager
def _build_lock():
    os.makedirs(BUILD, exist_ok=True)
    with open(os.path.join(BUILD, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _machine_lock():
    """One Xen VM at a time on this machine, whichever checkout it comes from.

    Two TCG VMs on a 2-CPU machine each run several times slower: boot took
    213 s instead of 26 s and Xen's own block script overran libxl's 40 s."""
    folder = "/run/lock" if os.access("/run/lock", os.W_OK) else tempfile.gettempdir()
    with open(os.path.join(folder, "xenvm-qemu.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("xenvm: waiting for another Xen VM on this machine to finish", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _stale(path, inputs):
    if not os.path.exists(path):
        return True
    return any(os.path.getmtime(i) > os.path.getmtime(path) for i in inputs)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _print_file(path, stream):
    text = _read(path)
    if text:
        stream.write(text)
        stream.flush()


def _print_tail(path, lines=40):
    with open(path, "rb") as f:
        tail = f.read().decode(errors="replace").splitlines()[-lines:]
    print("\n".join(tail), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
