#!/bin/sh
# Bring up Xen's user space in dom0 and install xenblock the way a user does:
# scripts linked into /etc/xen/scripts from the installed venv, the config
# and the udev rule copied into /etc (a writable overlay in the VM).
set -e
T0=$(cut -d' ' -f1 /proc/uptime)
mount -t xenfs xenfs /proc/xen
modprobe -a xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-blkback xen-blkfront loop dm_mod dm_snapshot
mkdir -p /run/xen /run/xenstored /var/log/xen /var/lib/xen
/usr/lib/xen-4.17/bin/xenstored --pid-file /run/xenstored.pid ${XENSTORED_ARGS:-}
/usr/lib/xen-4.17/bin/xen-init-dom0
/usr/lib/xen-4.17/bin/xenconsoled --pid-file=/run/xenconsoled.pid
xl info > /dev/null || { echo "dom0-setup: xl info fails: Xen is not up"; exit 1; }

for script in "$XENBLOCK_VENV"/bin/block-*; do
    ln -sf "$script" /etc/xen/scripts/
done
mkdir -p /etc/xenblock
cp "$XENBLOCK_ROOT/etc/xenblock.conf" /etc/xenblock/xenblock.conf
cp "$XENBLOCK_ROOT"/etc/udev/rules.d/*.rules /etc/udev/rules.d/
if ! pgrep -x systemd-udevd > /dev/null; then
    /lib/systemd/systemd-udevd --daemon
fi
udevadm control --reload
udevadm settle
echo "dom0-setup: Xen up, xenblock installed ($(ls "$XENBLOCK_VENV"/bin | grep -c "^block-") xenblock scripts), in $(echo "$(cut -d' ' -f1 /proc/uptime) - $T0" | bc 2>/dev/null || echo '?') s"
