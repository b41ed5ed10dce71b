#!/bin/sh
# Runs in dom0 before the command (dom0-run.sh): brings Xen's user space up,
# then installs xenblock the way a user does: the block-* scripts of the venv
# the host built ($XENBLOCK_VENV) linked into /etc/xen/scripts, the config and
# the udev rules copied into /etc (a writable tmpfs overlay in the VM).
# Exits non-zero with a message if anything fails.
ROOT=${XENBLOCK_ROOT:?XENBLOCK_ROOT is not set}
XEN=/usr/lib/xen-4.17/bin
T0=$(cut -d' ' -f1 /proc/uptime)

die() {
    echo "dom0-setup: $*" >&2
    exit 1
}

grep -q control_d /proc/xen/capabilities 2>/dev/null ||
    mount -t xenfs xenfs /proc/xen || die "cannot mount xenfs: not running under Xen?"
modprobe -a xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-blkback xen-blkfront \
    loop dm_mod dm_snapshot dm_thin_pool || die "modprobe failed"
mkdir -p /var/run/xen /var/run/xenstored /var/log/xen /var/lib/xen
$XEN/xenstored --pid-file /var/run/xenstored.pid ${XENSTORED_ARGS:-} || die "xenstored did not start"
$XEN/xen-init-dom0 || die "xen-init-dom0 failed"
$XEN/xenconsoled --pid-file=/var/run/xenconsoled.pid || die "xenconsoled did not start"
xl info > /dev/null || die "xl info fails: Xen is not up"

# virtme's init starts systemd-udevd and waits for the coldplug; libxl and
# xenblock need it for device nodes and events.
if ! pgrep -x systemd-udevd > /dev/null; then
    /lib/systemd/systemd-udevd --daemon || die "udevd is not running and does not start"
fi
udevadm settle --timeout=60 || die "udevadm settle fails"
# ... and restarted if it dies, as systemd does on a real host.
setsid python3 "$ROOT/tests/vm/keep-udevd.py" </dev/null >/dev/null 2>&1 &

# virtme's init binds a generated config from /run/tmp/lvm over /etc/lvm, so
# LVM's archive and backup files would land under /run, where no real dom0
# has them. Use the host's /etc/lvm (Debian's stock config) through the
# writable /etc overlay instead, as on a real host.
if mountpoint -q /etc/lvm; then
    umount /etc/lvm || die "cannot unmount virtme's /etc/lvm"
fi

# A Debian host runs dmeventd from boot (dm-event.socket), and LVM has it
# watch snapshots and thin pools. virtme's init starts no services, so the
# first lvcreate would start it in whichever test came first, and the leak
# check would count the daemon and its fifos against that test.
dmeventd || die "dmeventd does not start"

# block-cow's stores go to /var/lib/xenblock/cow, on a host's local disk. Here
# /var is virtme's overlay, which cannot make unnamed files (O_TMPFILE) before
# Linux 6.6: a tmpfs stands in for the disk, as ext4 or xfs would.
mkdir -p /var/lib/xenblock && mount -t tmpfs -o size=512M,mode=0700 xenblock /var/lib/xenblock \
    || die "cannot mount a tmpfs on /var/lib/xenblock"

[ -x "$XENBLOCK_VENV/bin/python" ] || die "no venv at XENBLOCK_VENV=$XENBLOCK_VENV"
installed=""
for script in "$XENBLOCK_VENV"/bin/block-*; do
    [ -e "$script" ] || continue  # the glob matched nothing
    ln -sf "$script" /etc/xen/scripts/ || die "cannot link $script into /etc/xen/scripts"
    installed="$installed $(basename "$script")"
done
if [ -f "$ROOT/etc/xenblock.conf" ]; then
    mkdir -p /etc/xenblock
    cp "$ROOT/etc/xenblock.conf" /etc/xenblock/xenblock.conf || die "cannot install xenblock.conf"
    installed="$installed xenblock.conf"
fi
for rules in "$ROOT"/etc/udev/*.rules "$ROOT"/etc/udev/rules.d/*.rules; do
    [ -e "$rules" ] || continue
    cp "$rules" /etc/udev/rules.d/ || die "cannot install $rules"
    installed="$installed $(basename "$rules")"
done
udevadm control --reload || die "udevadm control --reload fails"

echo "dom0-setup: Xen up, installed:${installed:- nothing} ($(awk -v t0="$T0" '{printf "%.1f", $1 - t0}' /proc/uptime) s)"
