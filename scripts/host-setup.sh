#!/bin/bash
# Idempotent set-up of a Debian test host for virtnbd: the Debian packages
# of DESIGN.md's test host recipe, qemu.conf, virtlogd and libvirtd (there
# is no systemd here), then a wait for the libvirt socket.
set -euo pipefail

say() { echo "host-setup: $*"; }

PACKAGES=(
  qemu-utils qemu-system-x86 libvirt-daemon-system libvirt-clients
  nbdkit libnbd-bin virtnbdbackup ovmf openssh-server
  e2fsprogs
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "packages already installed"
fi

# QEMU must reach disks, scratch files and NBD sockets in test directories:
# run it as root without a security driver.
CONF=/etc/libvirt/qemu.conf
changed=0
set_conf() {
  local key=$1 value=$2
  if ! grep -qE "^${key} = ${value}\$" "$CONF"; then
    sed -i -E "/^#?\s*${key}\s*=/d" "$CONF"
    echo "${key} = ${value}" >> "$CONF"
    changed=1
  fi
}
set_conf security_driver '"none"'
set_conf user '"root"'
set_conf group '"root"'
set_conf dynamic_ownership 0
[ $changed = 1 ] && say "configured $CONF"

SOCK=/var/run/libvirt/libvirt-sock
running() { pgrep -x "$1" >/dev/null; }

if [ $changed = 1 ] && running libvirtd; then
  say "restarting libvirtd for the new qemu.conf"
  pkill -x libvirtd || true
  for _ in $(seq 50); do running libvirtd || break; sleep 0.1; done
fi
if ! running virtlogd; then
  say "starting virtlogd"
  virtlogd -d
fi
if ! running libvirtd; then
  say "starting libvirtd"
  rm -f "$SOCK"
  libvirtd -d
fi
for _ in $(seq 100); do
  [ -S "$SOCK" ] && virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  say "libvirtd did not answer on $SOCK"
  exit 1
fi
say "libvirtd is up ($(virsh -c qemu:///system version | awk '/Running hypervisor/ {print $3, $4}'))"
