#!/bin/bash
# make-test-certs.sh DIR [HOSTNAME]: a throw-away test PKI for NBD over TLS,
# laid out as QEMU's tls-creds-x509 and libnbd read it, so DIR serves both
# sides: libvirt's backup_tls_x509_cert_dir (the server) and virtnbdbackup's
# --tls-cert DIR (the client).
#
#   ca-cert.pem                     a test CA (its key is not kept)
#   server-cert.pem server-key.pem  for HOSTNAME (default: this host's), localhost, 127.0.0.1, ::1
#   client-cert.pem client-key.pem  a client certificate (backup_tls_x509_verify)
#
# Idempotent: certificates that are still valid for a week and name
# HOSTNAME are kept. For tests only: never point a production libvirt at it.
set -euo pipefail

dir=${1:?usage: make-test-certs.sh DIR [HOSTNAME]}
host=${2:-$(hostname)}
days=3650

valid() {
  [ -s "$dir/ca-cert.pem" ] && [ -s "$dir/server-cert.pem" ] && [ -s "$dir/server-key.pem" ] &&
    [ -s "$dir/client-cert.pem" ] && [ -s "$dir/client-key.pem" ] &&
    openssl verify -CAfile "$dir/ca-cert.pem" "$dir/server-cert.pem" "$dir/client-cert.pem" >/dev/null 2>&1 &&
    openssl x509 -in "$dir/server-cert.pem" -noout -checkend $((7 * 86400)) >/dev/null &&
    openssl x509 -in "$dir/server-cert.pem" -noout -checkhost "$host" | grep -q 'does match'
}

if valid; then
  echo "make-test-certs: $dir already holds valid test certificates for $host"
  exit 0
fi

mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Write to temporary names and rename at the end, so a failure leaves the old set.
openssl req -x509 -new -newkey rsa:2048 -nodes -days $days -subj "/CN=virtnbd test CA for $host" \
  -keyout "$work/ca-key.pem" -out "$work/ca-cert.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

issue() { # NAME CN extendedKeyUsage [subjectAltName]
  local name=$1 cn=$2 usage=$3 san=${4:-}
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$cn" -keyout "$work/$name-key.pem" -out "$work/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    if [ -n "$san" ]; then echo "subjectAltName=$san"; fi
  } > "$work/$name.ext"
  openssl x509 -req -days $days -in "$work/$name.csr" -CA "$work/ca-cert.pem" -CAkey "$work/ca-key.pem" \
    -set_serial "0x$(openssl rand -hex 8)" -extfile "$work/$name.ext" -out "$work/$name-cert.pem" 2>/dev/null
}

san="DNS:$host,DNS:localhost,IP:127.0.0.1,IP:::1"
# An IP address given as HOSTNAME goes in as one.
if [[ $host =~ ^[0-9.]+$ ]]; then san="IP:$host,DNS:localhost,IP:127.0.0.1,IP:::1"; fi
issue server "$host" serverAuth "$san"
issue client "virtnbd test client" clientAuth

for f in ca-cert.pem server-cert.pem client-cert.pem; do install -m 0644 "$work/$f" "$dir/$f"; done
# QEMU reads server-key.pem as the user qemu.conf names (root on the test host).
for f in server-key.pem client-key.pem; do install -m 0600 "$work/$f" "$dir/$f"; done
echo "make-test-certs: wrote a test CA, a server certificate for $host and a client certificate to $dir"
