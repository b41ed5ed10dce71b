"""Who a process is, as /proc says: for naming, in an error, the holder of a
lock or of a device. Only failure paths read these (a scan of /proc is slow
on a busy host)."""
import os
import stat

from .blockdev import Devnum, listdir


def command_line(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "gone"
    return " ".join(w.decode(errors="replace") for w in words if w) or "a kernel thread"


def flock_holder(fd):
    """The process holding the flock on fd's file: 'pid N (command line)'."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; a waiter's line has "->" second
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode:
                return f"pid {fields[4]} ({command_line(fields[4])})"
    return "a process that let go meanwhile"


def openers(devnum):
    """(pid, command line) of each other process with block device devnum open."""
    found = []
    for pid in listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        directory = f"/proc/{pid}/fd"
        for fd in listdir(directory):
            try:
                st = os.stat(os.path.join(directory, fd))
            except OSError:
                continue  # closed meanwhile
            if stat.S_ISBLK(st.st_mode) and Devnum.of_rdev(st.st_rdev) == devnum:
                found.append((int(pid), command_line(pid)))
                break
    return found

