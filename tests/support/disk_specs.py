"""disk= entries for the xl-parity tests: the forms of Xen's and xend's
documentation, old prefixes, odd spacing and mistakes. tests/host checks
what xenblock.diskspec makes of some of them; tests/xen holds every one to
`xl create -n` in the Xen VM."""

SPECS = [
    # the modern keyword form
    "vdev=xvda,access=w,target=/srv/a.img",
    "format=raw, vdev=xvda, access=rw, target=/srv/a.img",
    "vdev=xvda,access=w,script=block-cow,target=/srv/live.img 2G",
    "vdev=xvda,access=ro,backendtype=phy,target=/dev/vg0/a",
    "vdev=xvdb,devtype=cdrom,target=/srv/cd.iso",
    "vdev=xvda,discard,access=w,target=/srv/a.img",
    "vdev=xvda,target=/srv/with,comma.img",
    "vdev=xvda,access=w,target=/srv/a.img,",
    # positional, with and without prefixes
    "/srv/a.img,raw,xvda,w",
    "/srv/a.img,,xvda,rw",
    "/srv/a.img,qcow2,xvda,r",
    "phy:/dev/vg0/a,xvda,w",
    "file:/srv/a.img,hda,w",
    "file:/srv/a.img,xvda1,w",
    "tap:aio:/srv/a.img,xvda,w",
    "tap:qcow2:/srv/a.qcow2,xvda,w",
    "tap2:tapdisk:aio:/srv/a.img,xvda,w",
    "qcow2:/srv/a.qcow2,xvda,w",
    "vhd:/srv/a.vhd,xvda,r",
    "aio:/srv/a.img,xvda,w",
    "iscsi:iqn.2001-05.com.example:disk,xvda,w",
    "nbd:127.0.0.1 10809,xvda,w",
    "drbd:resource0,xvda,w",
    ",hdc:cdrom,r",
    "phy:/dev/sr0,hdc:cdrom,r",
    # xend's script prefixes, which xl refuses
    "cow:/mnt/cdrom/rootfs.img 30,sda1,w",
    "lvsnap:vg0/web 1G,xvda,w",
    "snapshot:/srv/base.img:/srv/web.cow,xvda,w",
    "part:/srv/disk.img 2,xvda,w",
    "tap:vmdk:/srv/a.vmdk,xvda,w",
    "tap:ram:/srv/a.img,xvda,w",
    # mistakes
    "/srv/a.img,xvda,w",
    "vdev=xvda",
    "target=/srv/a.img",
    "vdev=xvda,vdev=xvdb,target=/srv/a.img",
    "vdev=xvda,access=x,target=/srv/a.img",
    "vdev=xvda,format=vmdk,target=/srv/a.img",
    "vdev=xvda,bogus=1,target=/srv/a.img",
    "/srv/a.img,raw,xvda,w,extra",
    "phy:/dev/a,xvda,w,",
    "vdev=xvda,devtype=floppy,target=/srv/a.img",
    "phy:/dev/a,hdc:floppy,r",
    "  phy:/dev/a,xvda,w",
    "vdev=xvda,target=",
]
