#!/bin/sh
# Runs in dom0, started by virtme's init (see xenvm.py): mounts the shares,
# brings Xen's daemons up, installs xenblock, runs the command given as $1,
# leaves its output and exit status in the results share, powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONDONTWRITEBYTECODE=1  # the checkout is read-only here
OUT=/run/xbout
export XENBLOCK_OUT=$OUT  # the command may leave result files here
mkdir -p $OUT /run/xbfast
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 xbout $OUT
# The root share has no page cache (cache=none); a second, cached share of /
# bound over the trees Python reads makes imports about 20% faster.
mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=512000 xbfast /run/xbfast
for tree in /usr /opt /root "$XENBLOCK_ROOT"; do
    [ -d "/run/xbfast$tree" ] && mount --bind "/run/xbfast$tree" "$tree"
done

finish() {
    echo "$1" > $OUT/status
    sync
    poweroff -f
}

echo "== dom0 set-up" > $OUT/output.log
sh "$XENBLOCK_ROOT/tests/vm/dom0-setup.sh" >> $OUT/output.log 2>&1 || finish 125
cd "$XENBLOCK_ROOT" || finish 125
sh -c "$1" >> $OUT/output.log 2>&1
finish $?
