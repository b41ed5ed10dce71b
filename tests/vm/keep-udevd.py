"""dom0's systemd-udevd, started again whenever it dies, and device-mapper
udev cookies that udev will never complete, completed.

A Debian host's systemd restarts udevd (systemd-udevd.service:
Restart=always); virtme's init starts udevd once and supervises nothing.
Debian 12's udevd has been seen dying here of a corrupt heap in a worker.
An event lost that way (its worker dead, or the daemon with its queue) never
runs 95-dm-notify.rules' `dmsetup udevcomplete`, so the dmsetup or LVM
command that made the event waits on its cookie's semaphore for good: a CI
run once hung an hour in one test on a `dmsetup create`. xenblock itself
never waits for udev (dm.py); LVM and the tests' own dmsetup calls do. So a
cookie older than COOKIE_STALE_SECONDS (udev completes one within seconds,
even under emulation) is completed here, as `dmsetup udevcomplete` would.
Each restart and each completion is logged to the kernel log, so the VM's
console shows it.

No child but udevd and those rare dmsetup runs: the leak check lists
long-lived processes, and a polling `sleep` would come and go.
"""
import os
import subprocess
import time

UDEVD = "/lib/systemd/systemd-udevd"
COOKIE_MAGIC = 0x0D4D  # libdevmapper's cookie semaphores: key = magic << 16 | number
COOKIE_STALE_SECONDS = 120


def udevd_running():
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == "systemd-udevd":
                    return True
        except (OSError, NotADirectoryError):
            continue
    return False


def stale_cookies(now):
    """The cookies (semaphore keys) made more than COOKIE_STALE_SECONDS ago."""
    try:
        with open("/proc/sysvipc/sem") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        return []
    # columns: key semid perms nsems uid gid cuid cgid otime ctime
    return [int(row[0]) for row in rows
            if int(row[0]) >> 16 == COOKIE_MAGIC and now - int(row[9]) > COOKIE_STALE_SECONDS]


def log(message):
    with open("/dev/kmsg", "w") as kmsg:
        kmsg.write(f"keep-udevd: {message}\n")


def main():
    while True:
        time.sleep(1)
        if not udevd_running():
            log("systemd-udevd died; starting it again")
            subprocess.run([UDEVD, "--daemon"], check=False)
        for cookie in stale_cookies(time.time()):
            log(f"udev never completed device-mapper cookie {cookie:#x}; completing it")
            subprocess.run(["dmsetup", "udevcomplete", str(cookie)], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
