#!/usr/bin/env python3
"""Run a command in dom0 of a real Xen 4.17 host booted in QEMU.

    python3 tests/vm/xenvm.py [--timeout S] [--out DIR] -- 'shell command'

The host's root is shared read-only over 9p (the dom0 kernel, Xen's tools and
the project's venv come from it); the virtme-ng initramfs and init bring dom0
up and run tests/vm/dom0-run.sh, which starts Xen's daemons, installs
xenblock as a user would (tests/vm/dom0-setup.sh), runs the command with the
checkout as its working directory and writes its output and exit status to a
writable share. This process prints that output and exits with that status.

Facts that shaped it (see shared/xen-in-qemu.md): TCG only (KVM hangs), Xen
needs smap=0 smep=0 under TCG, Xen is loaded through multiboot from the
gunzipped image with dom0's kernel and initramfs as modules.
"""
import argparse
import base64
import glob
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, "build", "vm")
XEN_GZ = "/boot/xen-4.17-amd64.gz"
XEN_ARGS = "console=com1 com1=115200 dom0_mem=2048M smap=0 smep=0 noreboot"
# What the VM's venv is built from: rebuilt when any of these change.
PROJECT_INPUTS = ("xenblock", "scripts", "etc", "setup.cfg", "pyproject.toml", "README.md")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", default=os.path.join(BUILD, "out"))
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set in dom0 before its set-up runs (e.g. XENSTORED_ARGS)")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    return run(" ".join(args.command), args.out, args.timeout, extra)


def run(command, out, timeout, extra_env=None):
    os.makedirs(out, exist_ok=True)
    for name in ("output.log", "status", "console.log"):
        _remove(os.path.join(out, name))
    from tests.vm import guest  # the guest's kernel and initramfs are built here, not under TCG
    env = {
        "XENBLOCK_ROOT": ROOT,
        "XENBLOCK_VENV": project_venv(),
        "XENBLOCK_GUEST_KERNEL": guest.kernel(),
        "XENBLOCK_GUEST_INITRD": guest.initramfs(),
        **(extra_env or {}),
    }
    argv = qemu_argv(out, dom0_command(env, command))
    started = time.monotonic()
    print(f"xenvm: booting Xen in QEMU (console in {out}/console.log)", file=sys.stderr, flush=True)
    with open(os.path.join(out, "console.log"), "wb") as console:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    elapsed = time.monotonic() - started
    _print_file(os.path.join(out, "output.log"))
    status = _read(os.path.join(out, "status"))
    if status is None:
        print(f"xenvm: no exit status from dom0 after {elapsed:.0f} s (timed out or crashed); "
              f"last console lines:", file=sys.stderr)
        _print_tail(os.path.join(out, "console.log"))
        return 124
    print(f"xenvm: dom0 command exited {status.strip()} after {elapsed:.0f} s", file=sys.stderr)
    return int(status)


def dom0_command(env, command):
    assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    script = os.path.join(ROOT, "tests", "vm", "dom0-run.sh")
    return f"{assignments} /bin/sh {shlex.quote(script)} {shlex.quote(command)}"


def qemu_argv(out, command):
    kernel = dom0_kernel()
    exec_b64 = base64.b64encode(command.encode()).decode()
    dom0_args = " ".join([
        "console=hvc0 earlyprintk=xen",
        *[f"virtme_rw_overlay{i}={d}" for i, d in enumerate(("/etc", "/lib", "/home", "/opt", "/srv", "/usr", "/var", "/tmp"))],
        "virtme_root_mods=1 virtme_console=hvc0 virtme_root_user=1 virtme_hostname=xenblock-dom0",
        f"virtme.exec=`{exec_b64}`",
        f"init={virtme_init()}",
    ])
    return [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "3G", "-smp", "2",
        "-nographic", "-no-reboot", "-serial", "stdio", "-monitor", "none",
        "-kernel", xen_binary(), "-append", XEN_ARGS,
        "-initrd", f"{kernel} {dom0_args},{dom0_initramfs(kernel)}",
        # / read-only for virtme's root; again with caching for speed; and a writable results folder.
        "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=root,mount_tag=/dev/root",
        "-fsdev", "local,id=fast,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=fast,mount_tag=xbfast",
        "-fsdev", f"local,id=out,path={out},security_model=none",
        "-device", "virtio-9p-pci,fsdev=out,mount_tag=xbout",
    ]


def xen_binary():
    path = os.path.join(BUILD, "xen")
    if _stale(path, [XEN_GZ]):
        os.makedirs(BUILD, exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            subprocess.run(["zcat", XEN_GZ], stdout=f, check=True)
        os.rename(path + ".tmp", path)
    return path


def dom0_kernel():
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels:
        sys.exit("xenvm: no /boot/vmlinuz-*: install linux-image-amd64 (tools/setup-host does)")
    return kernels[-1]


def dom0_initramfs(kernel):
    version = os.path.basename(kernel).removeprefix("vmlinuz-")
    path = os.path.join(BUILD, f"dom0-initramfs-{version}.img")
    if _stale(path, [kernel]):
        tool = _tool("virtme-mkinitramfs")
        subprocess.run([tool, "--mod-kversion", version, "--outfile", path], check=True)
    return path


def virtme_init():
    import virtme
    return os.path.join(os.path.dirname(virtme.__file__), "guest", "bin", "virtme-ng-init")


def project_venv():
    """A venv with xenblock installed from the checkout, as a user installs it."""
    venv = os.path.join(BUILD, "venv")
    stamp = os.path.join(venv, "xenblock-inputs.sha256")
    digest = _inputs_digest()
    if _read(stamp) != digest:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", f"{ROOT}[test]"], check=True)
        with open(stamp, "w") as f:
            f.write(digest)
    return venv


def _inputs_digest():
    digest = hashlib.sha256()
    for name in PROJECT_INPUTS:
        top = os.path.join(ROOT, name)
        paths = [top] if os.path.isfile(top) else sorted(
            os.path.join(d, f) for d, _, files in os.walk(top) for f in files if "__pycache__" not in d)
        for path in paths:
            digest.update(os.path.relpath(path, ROOT).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def _tool(name):
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.path.exists(beside) else (shutil.which(name) or sys.exit(f"xenvm: {name} not found"))


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


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _print_file(path):
    text = _read(path)
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def _print_tail(path, lines=40):
    with open(path, "rb") as f:
        tail = f.read().decode(errors="replace").splitlines()[-lines:]
    print("\n".join(tail), file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
