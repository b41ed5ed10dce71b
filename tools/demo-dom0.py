"""The demo, as it runs in dom0 of the Xen VM (tools/demo boots it).

Starts a guest whose disk comes through block-file, shows what the guest
read and wrote, shows a second writer refused, and shows that nothing is
left behind once the guests are gone.
"""
import glob
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.vm import guest  # noqa: E402

IMAGE = "/tmp/xenblock-demo/web.img"
DISK = f"vdev=xvda,access=w,script=block-file,target={IMAGE}"
GREETING = b"written in dom0 before the guest started"


def say(text):
    print(f"\n== {text}", flush=True)


def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def main():
    os.makedirs(os.path.dirname(IMAGE), exist_ok=True)
    with open(IMAGE, "wb") as f:
        f.truncate(64 << 20)
        f.write(GREETING)
    say(f"a 64 MiB image at {IMAGE}; the guest's disk line:\n   disk = ['{DISK}']")

    config = "/tmp/xenblock-demo/web.cfg"
    guest.write_config(config, "web", [DISK],
                       f"echo guest read: $(head -c {len(GREETING)} /dev/xvda); "
                       "echo guest sees $(cat /sys/block/xvda/size) sectors; "
                       "echo written by the guest | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; "
                       "echo guest wrote at 1 MiB")
    say("xl create -c web.cfg (a PV guest: Debian's kernel, a busybox initramfs)")
    started = time.monotonic()
    result = sh("xl", "create", "-c", config)
    for line in result.stdout.splitlines():
        if "XBGUEST: " in line:
            print("   " + line.split("XBGUEST: ", 1)[1])
    print(f"   (xl exited {result.returncode} after {time.monotonic() - started:.0f} s)")
    wait_gone("web")
    with open(IMAGE, "rb") as f:
        f.seek(1 << 20)
        print(f"   dom0 reads back at 1 MiB: {f.read(23).decode(errors='replace')!r}")

    say("a second guest asking for the same image read-write is refused")
    sh("xl", "create", "-p", config)  # paused: its disk is attached
    second = "/tmp/xenblock-demo/web2.cfg"
    guest.write_config(second, "web2", [DISK], "true")
    refused = sh("xl", "create", second)
    for line in (refused.stdout + refused.stderr).splitlines():
        if "already in use" in line:
            print("   xl: " + line.strip())
    print(f"   (xl create exited {refused.returncode})")
    sh("xl", "destroy", "web")
    wait_gone("web")
    wait_gone("web2")

    say("what block-file logged (/var/log/xen/xen-hotplug.log)")
    with open("/var/log/xen/xen-hotplug.log") as f:
        for line in f:
            if "block-file" in line:
                print("   " + line.rstrip())

    say("after every guest is gone")
    sh("udevadm", "settle")
    loops = [p for p in glob.glob("/sys/block/loop*/loop/backing_file")]
    backends = sh("xenstore-ls", "/local/domain/0/backend/vbd").stdout.strip()
    records = [p for p in glob.glob("/run/xenblock/*") if os.path.isfile(p)]
    print(f"   loop devices bound: {len(loops)}; vbd backend nodes: {len(backends.splitlines())}; "
          f"xenblock records: {len(records)}")
    return 0 if not loops and not records and result.returncode == 0 and refused.returncode != 0 else 1


def wait_gone(name, timeout=60):
    deadline = time.monotonic() + timeout
    while sh("xl", "domid", name).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
