"""dom0's systemd-udevd, started again whenever it dies.

A Debian host's systemd does this (systemd-udevd.service: Restart=always);
virtme's init starts udevd once and supervises nothing. Debian 12's udevd
has been seen dying here of a corrupt heap in a worker, and without udevd
every LVM command waits for udev for good. Each restart is logged to the
kernel log, so the VM's console shows it beside the crash.

No child but udevd itself: the leak check lists long-lived processes, and
a polling `sleep` would come and go.
"""
import os
import subprocess
import time

UDEVD = "/lib/systemd/systemd-udevd"


def udevd_running():
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == "systemd-udevd":
                    return True
        except (OSError, NotADirectoryError):
            continue
    return False


def main():
    while True:
        time.sleep(1)
        if not udevd_running():
            with open("/dev/kmsg", "w") as kmsg:
                kmsg.write("keep-udevd: systemd-udevd died; starting it again\n")
            subprocess.run([UDEVD, "--daemon"], check=False)


if __name__ == "__main__":
    main()
