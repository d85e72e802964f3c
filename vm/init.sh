#!/bin/busybox sh
# Stage 1 (PID 1 in the initramfs): load the modules, build the root, hand over.
#
# Root = the host's / over virtio-9p, read-only, as the lower layer of an
# overlayfs whose upper layer is a tmpfs: the guest can write /run/netns,
# /etc, /lib/modules, and nothing reaches the host.  A second, read-write 9p
# share (tag sdlabshare) carries the command in and output + status out.
# Variables from the kernel command line (unknown key=value words become
# init's environment): sdlab_kver, sdlab_kdir (host path of the extracted
# kernel package).
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "SDLAB-VM-INIT-FAILED: $*"
    echo o > /proc/sysrq-trigger
    sleep 5
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/sysrq

for m in $(cat /modules/order); do
    insmod "/modules/$m" || fail "insmod $m"
done

mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /lower \
    || fail "mount host root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "tmpfs for the overlay"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "overlay root"

mkdir -p /newroot/sdlab-share
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 sdlabshare /newroot/sdlab-share \
    || fail "mount the command share"

# The package's module tree where modprobe looks for it.
mkdir -p "/newroot/lib/modules/$sdlab_kver"
mount --bind "/newroot$sdlab_kdir/lib/modules/$sdlab_kver" "/newroot/lib/modules/$sdlab_kver" \
    || fail "bind the kernel modules"

for d in proc sys dev; do
    mount --move "/$d" "/newroot/$d" || fail "move /$d"
done
exec switch_root /newroot /bin/bash /sdlab-share/stage2.sh
fail "switch_root"
