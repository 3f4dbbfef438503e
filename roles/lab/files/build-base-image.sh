#!/usr/bin/env bash
# Build the lab's base image offline: debootstrap a Debian root, install the
# packages the roles expect to find on hosts, drop every package source (an
# isolated site has none), and import the tree into Docker. No image is pulled.
#
# usage: build-base-image.sh IMAGE:TAG SUITE "PKG PKG ..." [MIRROR]
set -euo pipefail

image=$1 suite=$2 packages=$3 mirror=${4:-}

# With no mirror given, use the Debian source this machine's apt already uses;
# failing that, debootstrap's own default.
[ -n "$mirror" ] || mirror=$("$(dirname "$0")/debian-mirror.sh")
work=$(mktemp -d /var/tmp/agr-rootfs.XXXXXX)
root="$work/root"
cleanup() {
  for m in proc sys dev/pts dev; do umount -l "$root/$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

debootstrap --variant=minbase \
  --include=python3,systemd,systemd-sysv,ca-certificates \
  "$suite" "$root" ${mirror:+"$mirror"} >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    echo "build-base-image: debootstrap of $suite failed (log above)" >&2
    exit 1
  }

mount -t proc proc "$root/proc"
# Services must not start inside the chroot while packages install.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
chroot "$root" apt-get update -q >"$work/apt.log" 2>&1
# shellcheck disable=SC2086 # the package list is word-split on purpose
chroot "$root" apt-get install -y -q --no-install-recommends $packages >>"$work/apt.log" 2>&1 || {
  tail -n 30 "$work/apt.log" >&2
  echo "build-base-image: installing packages into $suite failed (log above)" >&2
  exit 1
}
chroot "$root" apt-get clean
rm -f "$root/usr/sbin/policy-rc.d"
umount "$root/proc"

# An isolated host has no package source: remove them all, so a role that
# forgot to declare a package fails instead of silently downloading it.
rm -rf "$root"/etc/apt/sources.list "$root"/etc/apt/sources.list.d/* "$root"/var/lib/apt/lists/*
# Services that the roles own stay disabled until a role enables them.
for unit in docker-registry nginx cron; do
  chroot "$root" systemctl disable "$unit" >/dev/null 2>&1 || true
done
# systemd in a container: no getty, no kernel-facing units.
chroot "$root" systemctl mask getty@tty1.service systemd-udevd.service \
  systemd-modules-load.service sys-kernel-config.mount >/dev/null 2>&1 || true
: >"$root/etc/machine-id"

tar --numeric-owner -C "$root" -c . |
  docker import --change 'CMD ["/sbin/init"]' - "$image" >/dev/null
echo "$image"
