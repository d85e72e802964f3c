#!/bin/bash
# Stage 2 (PID 1 in the overlay root, the host's userland): make the
# filesystems a lab run needs, run the command, report its output and exit
# status through the share, power off.  Copied into the share by vm/run.py.
SHARE=/sdlab-share
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8

mount -t tmpfs -o mode=0755 tmpfs /run     # fresh: the host's /run/netns entries mean nothing here
# /tmp stays the overlay's (writes land in its tmpfs upper layer): a tmpfs mounted over it would hide
# a checkout that lives under the host's /tmp (CI clones there).
mkdir -p /dev/pts /dev/shm /dev/net /run/netns
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
[ -e /dev/net/tun ] || mknod /dev/net/tun c 10 200
hostname sdlab-vm
ip link set lo up

echo "SDLAB-VM-BEGIN $(cut -d' ' -f1 /proc/uptime)"
bash "$SHARE/cmd.sh" 2>&1 | tee "$SHARE/output"
status=${PIPESTATUS[0]}
echo "$status" > "$SHARE/status"
echo "SDLAB-VM-END $status $(cut -d' ' -f1 /proc/uptime)"
sync
/usr/bin/busybox poweroff -f
echo o > /proc/sysrq-trigger
sleep 10
