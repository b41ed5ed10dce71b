"""A small PV guest for tests: the dom0 kernel plus a busybox initramfs.

The guest's /init mounts proc, sys and devtmpfs, loads xen-blkfront, waits
for its disks (/dev/xvd*), runs a shell snippet given base64-encoded on the
kernel command line (xbtest=...), prints each output line of it as
"XBGUEST: <line>", then how many it printed ("XBGUEST-SHOWN: <n>") and
"XBGUEST-EXIT: <status>", and powers off.

The initramfs is built on the host before the VM boots (xenvm.py passes
XENBLOCK_GUEST_KERNEL and XENBLOCK_GUEST_INITRD into dom0): building it
under emulation would be slow, and the checkout is read-only there.

As a module (in dom0):
    guest.write_config("/tmp/g.cfg", "g1", ["vdev=xvda,access=w,target=/tmp/disk.img"],
                       "head -c 40 /dev/xvda")
    xl create -c /tmp/g.cfg        # prints XBGUEST: lines, then XBGUEST-EXIT: 0

As a CLI:
    python3 tests/vm/guest.py initramfs           # build if needed, print its path
    python3 tests/vm/guest.py config PATH NAME --disk SPEC [--disk SPEC ...] --snippet SH [--memory MB]
"""
import argparse
import base64
import glob
import gzip
import io
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, "build", "vm")
BUSYBOX = "/bin/busybox"  # Debian's busybox-static: no shared libraries to copy
MODULES = ("xen-blkfront",)
# Xen copies a PV guest's command line into start_info.cmd_line, 1024 bytes
# with the NUL (MAX_GUEST_CMDLINE), and silently cuts what is longer.
MAX_CMDLINE = 1023

# How the guest runs its snippet and reports, in the guest's busybox sh ($snippet
# is set): each output line streamed as it comes (a hanging snippet still shows
# how far it got), then their count, then the exit status. The count is there
# because a reader that died (emulation has crashed guest processes) loses lines
# silently; tests.xen.xl.guest_result compares it with the lines that arrived.
REPORT = r"""{ sh -c "$snippet" </dev/null 2>&1; echo $? >/tmp/status; } |
    { n=0; while IFS= read -r line || [ -n "$line" ]; do echo "XBGUEST: $line"; n=$((n+1)); done; echo $n >/tmp/shown; }
echo "XBGUEST-SHOWN: $(cat /tmp/shown 2>/dev/null || echo none)"
echo "XBGUEST-EXIT: $(cat /tmp/status)"
"""

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# Modules in dependency order (listed by the host when it built this image).
for m in $(cat /lib/modules.order); do insmod "/lib/$m"; done
# xenbus lists the vbds before blkfront binds them: wait until each has its
# disk, at most 20 s (a guest with no disk does not wait at all).
want=$(ls -d /sys/bus/xen/devices/vbd-* 2>/dev/null | wc -l)
i=0
while [ "$(ls -d /sys/block/xvd* 2>/dev/null | wc -l)" -lt "$want" ] && [ $i -lt 100 ]; do
    sleep 0.2; i=$((i+1))
done
snippet=$(sed -n 's/.*xbtest=\([^ ]*\).*/\1/p' /proc/cmdline | base64 -d)
""" + REPORT + """sync
poweroff -f
"""

GRUB_CFG = """set default=0
set timeout=0
menuentry 'xenblock test guest' {
    linux /boot/vmlinuz
    initrd /boot/initrd.img
}
"""


def kernel():
    """The guest's kernel, an uncompressed ELF: in dom0 the one the host
    unpacked (XENBLOCK_GUEST_KERNEL), on the host unpacked from the newest
    /boot/vmlinuz if stale.

    Why unpacked: libxc decompresses a bzImage's XZ payload on every xl
    create, which takes 20 s under TCG (a guest's whole boot takes 7 s); an
    ELF is copied in 0.5 s. dom0 boots the same ELF, sparing Xen the same work.
    """
    if os.environ.get("XENBLOCK_GUEST_KERNEL"):
        return os.environ["XENBLOCK_GUEST_KERNEL"]
    kernels = sorted(glob.glob("/boot/vmlinuz-*"), key=_version_key)
    if not kernels:
        sys.exit("guest: no /boot/vmlinuz-*: install linux-image-amd64")
    path = os.path.join(BUILD, "vmlinux-" + kernel_version(kernels[-1]))
    if not os.path.exists(path) or os.path.getmtime(kernels[-1]) > os.path.getmtime(path):
        _unpack_bzimage(kernels[-1], path)
    return path


def packed_kernel():
    """The guest's kernel gzipped, for boot disks (see write_boot_disk):
    beside kernel(), written with it on the host."""
    return kernel() + ".gz"


def _unpack_bzimage(bzimage, path):
    """Write the ELF inside bzimage to path, and path.gz (gzip -1: libxc
    unpacks that in 3 s under TCG, against 20 s for XZ)."""
    with open(bzimage, "rb") as f:
        image = f.read()
    # The x86 boot protocol's setup header: setup_sects at 0x1f1; the payload's
    # offset (from the protected-mode code, after the setup sectors) and length.
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    payload = image[(setup_sects + 1) * 512 + offset:][:length]
    if payload.startswith(b"\xfd7zXZ\x00"):
        elf = lzma.LZMADecompressor().decompress(payload)
    elif payload.startswith(b"\x1f\x8b"):
        elf = gzip.GzipFile(fileobj=io.BytesIO(payload)).read()
    else:
        sys.exit(f"guest: {bzimage}: the kernel is neither XZ- nor gzip-compressed; cannot unpack it")
    if not elf.startswith(b"\x7fELF"):
        sys.exit(f"guest: {bzimage}: its payload is not an ELF kernel")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for name, data in ((path + ".gz", gzip.compress(elf, 1)), (path, elf)):  # the ELF last: it marks done
        with open(name + ".tmp", "wb") as f:
            f.write(data)
        os.rename(name + ".tmp", name)


def kernel_version(path=None):
    """The kernel's release, from its file name (vmlinuz-<release> or vmlinux-<release>)."""
    return re.sub(r"^vmlinu[xz]-", "", os.path.basename(path or kernel()))


def initramfs():
    """The guest's initramfs: in dom0 the host's (XENBLOCK_GUEST_INITRD), on the host built if stale."""
    if os.environ.get("XENBLOCK_GUEST_INITRD"):
        return os.environ["XENBLOCK_GUEST_INITRD"]
    version = kernel_version()
    path = os.path.join(BUILD, f"guest-initramfs-{version}.img")
    modules = _modules(version)
    inputs = [__file__, BUSYBOX, *modules]
    if not os.path.exists(path) or any(os.path.getmtime(i) > os.path.getmtime(path) for i in inputs):
        _build(path, modules)
    return path


def write_config(path, name, disks, snippet, memory=128, bootloader=None, uuid=None):
    """Write an xl config for a guest that runs snippet; disks are disk= entries, verbatim.
    With a bootloader (pygrub) the kernel comes from the first disk (see write_boot_disk);
    uuid: the domain's (libxl makes one up if None)."""
    extra = "console=hvc0 quiet xbtest=" + base64.b64encode(snippet.encode()).decode()
    if len(extra) > MAX_CMDLINE:
        raise ValueError(f"guest snippet too long: the kernel command line would be {len(extra)} "
                         f"bytes, Xen keeps {MAX_CMDLINE} (keep the snippet under ~740 bytes)")
    if bootloader:
        boot = [f'bootloader = "{bootloader}"']  # it appends extra= to the entry's arguments
    else:
        boot = [f'kernel = "{kernel()}"', f'ramdisk = "{initramfs()}"']
    lines = [
        f'name = "{name}"',
        'type = "pv"',
        *boot,
        f'extra = "{extra}"',
        f"memory = {memory}",
        "vcpus = 1",
        'on_poweroff = "destroy"',
        'on_crash = "destroy"',
        "disk = [" + ", ".join(_xl_string(d) for d in disks) + "]",
    ]
    if uuid:
        lines.append(f'uuid = "{uuid}"')
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_boot_disk(path, size=24 << 20):
    """An ext2 image file that pygrub boots: the guest kernel and initramfs
    under /boot and a grub.cfg naming them."""
    with tempfile.TemporaryDirectory() as tree:
        os.makedirs(os.path.join(tree, "boot", "grub"))
        shutil.copy(packed_kernel(), os.path.join(tree, "boot", "vmlinuz"))
        shutil.copy(initramfs(), os.path.join(tree, "boot", "initrd.img"))
        with open(os.path.join(tree, "boot", "grub", "grub.cfg"), "w") as f:
            f.write(GRUB_CFG)
        with open(path, "wb") as f:
            f.truncate(size)
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-d", tree, path], check=True, capture_output=True)


def _modules(version):
    """Paths of MODULES and everything they depend on, dependencies first."""
    ordered = []

    def add(name):
        path = _modinfo(version, "-n", name)
        if path in ordered:
            return
        for dependency in filter(None, _modinfo(version, "-F", "depends", name).split(",")):
            add(dependency)
        ordered.append(path)

    for module in MODULES:
        add(module)
    return ordered


def _modinfo(version, *args):
    return subprocess.run(["modinfo", "-k", version, *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _build(path, modules):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory() as tree:
        for directory in ("bin", "lib", "proc", "sys", "dev", "tmp"):
            os.makedirs(os.path.join(tree, directory))
        shutil.copy(BUSYBOX, os.path.join(tree, "bin", "busybox"))
        for module in modules:
            shutil.copy(module, os.path.join(tree, "lib"))
        with open(os.path.join(tree, "lib", "modules.order"), "w") as f:
            f.write("".join(os.path.basename(m) + "\n" for m in modules))
        with open(os.path.join(tree, "init"), "w") as f:
            f.write(INIT)
        os.chmod(os.path.join(tree, "init"), 0o755)
        image = subprocess.run("find . | cpio --quiet -o -H newc | gzip -1", shell=True, cwd=tree,
                               capture_output=True, check=True).stdout
    with open(path + ".tmp", "wb") as f:
        f.write(image)
    os.rename(path + ".tmp", path)


def _xl_string(text):
    # xl's config parser takes '...' or "..." without escapes.
    quote = "'" if "'" not in text else '"'
    if quote in text:
        raise ValueError(f"disk entry has both quote characters: {text}")
    return quote + text + quote


def _version_key(path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def main(argv=None):
    parser = argparse.ArgumentParser(description="A busybox PV guest for xenblock's VM tests.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("initramfs", help="build the guest initramfs if needed and print its path")
    config = commands.add_parser("config", help="write an xl config for a guest running a snippet")
    config.add_argument("path")
    config.add_argument("name")
    config.add_argument("--disk", action="append", default=[], help="a disk= entry (repeatable)")
    config.add_argument("--snippet", default="true", help="shell run in the guest")
    config.add_argument("--memory", type=int, default=128)
    args = parser.parse_args(argv)
    if args.command == "initramfs":
        print(initramfs())
    else:
        write_config(args.path, args.name, args.disk, args.snippet, args.memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
