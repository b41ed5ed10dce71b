#!/bin/sh
# Runs in dom0, started by virtme's init (xenvm.py puts this one command on
# the kernel command line). Mounts the shares, reads the job the host left in
# the results share (job.env, job.sh), sets dom0 up (dom0-setup.sh), runs the
# command, leaves its output and exit status in the results share, powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
export PYTHONDONTWRITEBYTECODE=1  # the checkout is read-only here
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$(dirname "$HERE")")
OUT=/run/xbout  # /mnt is read-only: mount points go on /run
export XENBLOCK_OUT=$OUT

finish() {
    sync
    poweroff -f
}

mkdir -p $OUT /run/xbfast
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 xbout $OUT; then
    echo "dom0-run: cannot mount the results share (xbout)"  # on the console; the host reports no status
    finish
fi
. $OUT/job.env
# virtme mounts the root share with cache=none: every read goes to the host.
# A second share of / with cache=loose, bound over the trees Python and the
# tests read, keeps file data cached like a local disk (imports ~20% faster).
# It is read-only, so /usr, /opt and /root lose virtme's writable overlay.
mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=512000 xbfast /run/xbfast
for tree in /usr /opt /root "$ROOT"; do
    [ -d "/run/xbfast$tree" ] && mount --bind "/run/xbfast$tree" "$tree"
done

/bin/sh "$HERE/dom0-setup.sh" > $OUT/setup.log 2>&1
echo $? > $OUT/setup.status
[ "$(cat $OUT/setup.status)" = 0 ] || finish

cd "$ROOT" || finish
cut -d' ' -f1 /proc/uptime > $OUT/started  # the host times the boot by this file
/bin/sh $OUT/job.sh < /dev/null > $OUT/output.log 2>&1
echo $? > $OUT/status
finish
