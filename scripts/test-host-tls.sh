#!/bin/bash
# Makes this test host ready for backups over NBD with TLS (test/backup-tls.test.ts):
# a test PKI in a dedicated directory (make-test-certs.sh), and qemu.conf's
# backup_tls_x509_cert_dir pointing at it, so QEMU's backup NBD server
# takes its certificate from there and demands a client certificate signed
# by the same CA (backup_tls_x509_verify defaults to 1). Nothing else of
# libvirt's TLS set-up (/etc/pki/qemu, default_tls_x509_cert_dir) is touched.
#
# libvirt 9.0 reads qemu.conf (and checks that the directory exists) when
# libvirtd starts; QEMU reads the certificate files each time a backup job
# with TLS starts. So libvirtd is restarted only when qemu.conf changes,
# and new certificates in the same directory need no restart.
# Run by scripts/test.sh after host-setup.sh; VIRTNBD_TEST_TLS_DIR overrides the directory.
set -euo pipefail
cd "$(dirname "$0")"

say() { echo "test-host-tls: $*"; }

DIR=${VIRTNBD_TEST_TLS_DIR:-/etc/pki/virtnbd-test/backup}
CONF=/etc/libvirt/qemu.conf
KEY=backup_tls_x509_cert_dir

bash make-test-certs.sh "$DIR"

want="$KEY = \"$DIR\""
if grep -qxF "$want" "$CONF"; then
  say "$CONF already has $want"
  exit 0
fi
sed -i -E "/^#?\s*${KEY}\s*=/d" "$CONF"
echo "$want" >> "$CONF"
say "set $want in $CONF"

pid=$(cat /run/libvirtd.pid 2>/dev/null || true)
if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = libvirtd ]; then
  say "restarting libvirtd (pid $pid) to read $CONF"
  kill "$pid"
  for _ in $(seq 100); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
fi
# host-setup.sh starts libvirtd as this host runs it (with --listen) and waits for it.
bash host-setup.sh
