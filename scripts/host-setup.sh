#!/bin/bash
# Idempotent set-up of a Debian test host for virtnbd: the Debian packages
# of DESIGN.md's test host recipe, qemu.conf, virtlogd and libvirtd (there
# is no systemd here), then a wait for the libvirt socket.
set -euo pipefail

say() { echo "host-setup: $*"; }

PACKAGES=(
  qemu-utils qemu-system-x86 libvirt-daemon-system libvirt-clients
  nbdkit libnbd-bin python3-libnbd virtnbdbackup ovmf openssh-server gnuplot-nox
  e2fsprogs sasl2-bin libsasl2-modules openssl wabt
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

# Remote access for the SASL tests: libvirtd listens on loopback only, on
# TCP (16509) and TLS (16514), both demanding SASL. Plain TCP offers no SASL
# mechanism without a security layer (libvirtd asks for SSF >= 56 there), so
# SCRAM-SHA-256 logins work over TLS; the tests add their own users to
# /etc/libvirt/passwd.db (saslpasswd2 -a libvirt).
DCONF=/etc/libvirt/libvirtd.conf
set_dconf() {
  local key=$1 value=$2
  if ! grep -qE "^${key} = ${value}\$" "$DCONF"; then
    sed -i -E "/^#?\s*${key}\s*=/d" "$DCONF"
    echo "${key} = ${value}" >> "$DCONF"
    changed=1
  fi
}
set_dconf listen_tcp 1
set_dconf listen_tls 1
set_dconf listen_addr '"127.0.0.1"'
set_dconf auth_tcp '"sasl"'
set_dconf auth_tls '"sasl"'

SASLCONF=/etc/sasl2/libvirt.conf
want_sasl=$'mech_list: scram-sha-256\nsasldb_path: /etc/libvirt/passwd.db'
if [ "$(cat "$SASLCONF" 2>/dev/null)" != "$want_sasl" ]; then
  mkdir -p /etc/sasl2
  printf '%s\n' "$want_sasl" > "$SASLCONF"
  changed=1
  say "configured $SASLCONF"
fi

# A test PKI at libvirt's default paths (CA, server cert for localhost and
# 127.0.0.1, client cert for root), made once; a CA someone else put there
# is never replaced (the TLS/SASL tests then use whatever it signed).
CA=/etc/pki/CA; PKI=/etc/pki/libvirt
if [ -s $CA/cacert.pem ] && { [ ! -s $PKI/servercert.pem ] || [ ! -s $PKI/clientcert.pem ]; }; then
  say "$CA/cacert.pem exists but $PKI lacks servercert.pem or clientcert.pem: leaving the PKI alone (qemu+tls:// will not work)"
elif [ ! -s $CA/cacert.pem ]; then
  say "creating the test PKI under /etc/pki"
  mkdir -p $CA/private $PKI/private
  chmod 700 $CA/private $PKI/private
  pki_tmp=$(mktemp -d)
  openssl req -x509 -new -newkey rsa:2048 -nodes -days 3650 -subj "/CN=virtnbd test CA" \
    -keyout $CA/private/cakey.pem -out $CA/cacert.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  issue() { # name CN extendedKeyUsage [subjectAltName]
    openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout $PKI/private/$1key.pem -out "$pki_tmp/$1.csr" 2>/dev/null
    { echo "basicConstraints=critical,CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=$3"; if [ -n "${4:-}" ]; then echo "subjectAltName=$4"; fi; } > "$pki_tmp/$1.ext"
    openssl x509 -req -days 3650 -in "$pki_tmp/$1.csr" -CA $CA/cacert.pem -CAkey $CA/private/cakey.pem \
      -set_serial "0x$(openssl rand -hex 8)" -extfile "$pki_tmp/$1.ext" -out $PKI/$1cert.pem 2>/dev/null
    chmod 600 $PKI/private/$1key.pem
  }
  issue server localhost serverAuth "DNS:localhost,IP:127.0.0.1"
  issue client "virtnbd test client" clientAuth
  rm -rf "$pki_tmp"
  changed=1
fi

SOCK=/var/run/libvirt/libvirt-sock
running() { pgrep -x "$1" >/dev/null; }

# libvirtd opens its TCP/TLS listeners only when started with --listen.
listening() { local pid; pid=$(pgrep -xo libvirtd) && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- '--listen'; }
if running libvirtd && ! listening; then changed=1; fi
if [ $changed = 1 ] && running libvirtd; then
  say "restarting libvirtd for the new configuration"
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
  libvirtd -d --listen
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
