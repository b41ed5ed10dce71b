"""A small PV guest for tests: the dom0 kernel plus a busybox initramfs.

Its /init loads xen-blkfront, runs a shell snippet given base64-encoded on
the kernel command line (xbtest=...), prints each output line as
"XBGUEST: <line>", then "XBGUEST-EXIT: <status>", and powers off.
The initramfs is built on the host before the VM boots (XENBLOCK_GUEST_*
tell dom0 where it is): building it under emulation would be slow.
"""
import base64
import glob
import os
import shutil
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, "build", "vm")
MODULES = ("xen-blkfront",)

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /lib/*.ko; do insmod "$m"; done
i=0
while ! ls /dev/xvd* >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done
snippet=$(sed -n 's/.*xbtest=\([^ ]*\).*/\1/p' /proc/cmdline | base64 -d)
sh -c "$snippet" >/tmp/out 2>&1
status=$?
sed 's/^/XBGUEST: /' /tmp/out
echo "XBGUEST-EXIT: $status"
sync
poweroff -f
"""


def kernel():
    """In dom0, the kernel the host chose; on the host, the newest one."""
    return os.environ.get("XENBLOCK_GUEST_KERNEL") or sorted(glob.glob("/boot/vmlinuz-*"))[-1]


def initramfs():
    if os.environ.get("XENBLOCK_GUEST_INITRD"):
        return os.environ["XENBLOCK_GUEST_INITRD"]
    version = os.path.basename(kernel()).removeprefix("vmlinuz-")
    path = os.path.join(BUILD, f"guest-initramfs-{version}.img")
    if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(__file__):
        _build(version, path)
    return path


def _build(version, path):
    os.makedirs(BUILD, exist_ok=True)
    with tempfile.TemporaryDirectory() as tree:
        for directory in ("bin", "lib", "proc", "sys", "dev", "tmp"):
            os.makedirs(os.path.join(tree, directory))
        shutil.copy("/bin/busybox", os.path.join(tree, "bin", "busybox"))
        for module in MODULES:
            found = subprocess.run(["modinfo", "-k", version, "-n", module], capture_output=True,
                                   text=True, check=True).stdout.strip()
            shutil.copy(found, os.path.join(tree, "lib", os.path.basename(found)))
        with open(os.path.join(tree, "init"), "w") as f:
            f.write(INIT)
        os.chmod(os.path.join(tree, "init"), 0o755)
        files = subprocess.run("find . | cpio --quiet -o -H newc | gzip -1", shell=True, cwd=tree,
                               capture_output=True, check=True).stdout
    with open(path + ".tmp", "wb") as f:
        f.write(files)
    os.rename(path + ".tmp", path)


def write_config(path, name, disks, snippet, memory=128):
    """An xl config for the guest: disks verbatim, snippet run by its /init."""
    encoded = base64.b64encode(snippet.encode()).decode()
    lines = [
        f'name = "{name}"',
        'type = "pv"',
        f'kernel = "{kernel()}"',
        f'ramdisk = "{initramfs()}"',
        f'extra = "console=hvc0 quiet xbtest={encoded}"',
        f"memory = {memory}",
        "vcpus = 1",
        'on_poweroff = "destroy"',
        'on_crash = "destroy"',
        "disk = [" + ", ".join(repr(d) for d in disks) + "]",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
