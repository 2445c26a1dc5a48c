#!/bin/sh
# PID 1 of a wgmesh lab UML guest. The root file system is the host's, read-only
# (hostfs); LAB is the lab directory on the host, mounted writable at the same
# path, and X the node's directory inside it. The harness talks to the guest through X/cmd: it drops ID.sh there,
# this loop runs it in the background and leaves ID.out and then ID.rc (renamed
# into place last, so ID.rc means "done"). hostfs writes through to the host at
# every write(2), so no sync is needed; one would only add a host fsync.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
mkdir -p "$LAB" && mount -t hostfs -o "$LAB" hostfs "$LAB" || { echo "uml init: cannot mount $LAB"; poweroff -f; }
[ -n "$NAME" ] && hostname "$NAME"
ip link set lo up
mkdir -p "$X/cmd"
echo "booted $(uname -r) in $(cut -d' ' -f1 /proc/uptime)s" > "$X/cmd/boot"
while :; do
	for f in "$X"/cmd/*.sh; do
		[ -e "$f" ] || continue
		id=${f%.sh}
		mv "$f" "$id.run" || continue
		(
			sh "$id.run" > "$id.out" 2>&1 < /dev/null
			echo $? > "$id.rc.tmp"
			mv "$id.rc.tmp" "$id.rc"
		) &
	done
	[ -e "$X/cmd/poweroff" ] && poweroff -f
	sleep 0.05
done
