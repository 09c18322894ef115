#!/bin/bash
# The demo of README.md (`bash scripts/demo.sh` as root, or `npm run demo`):
# on a Debian host it sets the host up, installs and builds virtnbd, makes a
# throwaway firmware-only VM (TCG) with a 1 GiB qcow2 disk holding some
# data, takes a full backup of the running VM, writes into its disk, takes
# an incremental backup, restores the chain to a new image, verifies the
# checksums and compares the restored image with the VM's disk. The VM and
# its disk are removed on exit, even on failure; the backup set, the
# restored image and the logs stay in a directory under /var/tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
human() { numfmt --to=iec-i --suffix=B "$1" 2>/dev/null || echo "$1 bytes"; }

[ "$(id -u)" = 0 ] || die "run me as root: sudo bash scripts/demo.sh (libvirt's qemu:///system and the VM need it)"
command -v node >/dev/null || die "Node.js >= 20 is needed (node not found)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
  die "Node.js >= 20 is needed (found $(node --version))"

T_START=$(now)
declare -a TIMES=()
timed() { # timed LABEL CMD... : run CMD, remember how long it took
  local label=$1 t0
  shift
  t0=$(now)
  "$@"
  TIMES+=("$(printf '%-34s %6ss' "$label" "$(secs "$t0" "$(now)")")")
}

WORK=$(mktemp -d /var/tmp/virtnbd-demo.XXXXXX)
VM=virtnbd-demo-$$
VMDIR=$WORK/vm
BACKUP=$WORK/backup
RESTORE=$WORK/restore
LOGS=$WORK/logs
mkdir -p "$VMDIR" "$LOGS"
DISK=$VMDIR/demo.qcow2
VIRSH=(virsh -q -c qemu:///system)

# Runs a quiet step; on failure shows the end of its log.
quiet() { # quiet LOGNAME CMD...
  local log=$LOGS/$1
  shift
  if ! "$@" >"$log" 2>&1; then
    echo "demo: failed: $*" >&2
    tail -n 30 "$log" >&2
    return 1
  fi
}

cleanup() {
  local status=$?
  if "${VIRSH[@]}" dominfo "$VM" >/dev/null 2>&1; then
    "${VIRSH[@]}" destroy "$VM" >/dev/null 2>&1 || true
    "${VIRSH[@]}" undefine "$VM" --checkpoints-metadata --nvram >/dev/null 2>&1 || true
  fi
  rm -rf "$VMDIR"
  rm -f "/var/log/libvirt/qemu/$VM.log"
  if [ $status -ne 0 ]; then
    echo "demo: FAILED (exit $status). VM $VM removed; logs and any backup files are in $WORK" >&2
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "Setting up the host (Debian packages, libvirtd)"
timed "host set-up" quiet host-setup.log bash scripts/host-setup.sh
tail -n 1 "$LOGS/host-setup.log"

say "Installing and building virtnbd"
# npm ci replaces node_modules; skip it when it is already current (a
# development tree where tests may be running).
if [ -f node_modules/.package-lock.json ] && [ node_modules/.package-lock.json -nt package-lock.json ] &&
  [ node_modules/.package-lock.json -nt package.json ]; then
  echo "dependencies are up to date (npm ci skipped)"
else
  timed "npm ci (includes the build)" quiet npm-ci.log npm ci --no-audit --no-fund --loglevel=error
fi
# npm ci builds (prepare = tsc + bundle); build again only if sources are newer than the bundle.
if [ ! -f dist/bundle/virtnbdbackup.js ] || [ -n "$(find lib streams -name '*.ts' -newer dist/bundle/virtnbdbackup.js | head -n 1)" ]; then
  timed "build (tsc, bundle)" quiet build.log npm run build
fi
./bin/virtnbdbackup --version

say "Creating VM $VM: firmware only (no OS), TCG, 1 GiB qcow2 disk with data"
t0=$(now)
qemu-img create -q -f qcow2 "$DISK" 1G
head -c 8M /dev/urandom >"$VMDIR/random.bin"
for cmd in "write -P 0x11 0 4M" "write -P 0x5a 64M 40M" "write -s $VMDIR/random.bin 300M 8M"; do
  quiet qemu-io.log qemu-io -f qcow2 -c "$cmd" "$DISK"
done
rm -f "$VMDIR/random.bin"
cat >"$VMDIR/$VM.xml" <<EOF
<domain type='qemu'>
  <name>$VM</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/><bios rebootTimeout='-1'/></os>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$DISK'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
quiet define.log "${VIRSH[@]}" define "$VMDIR/$VM.xml"
quiet start.log "${VIRSH[@]}" start "$VM"
TIMES+=("$(printf '%-34s %6ss' "VM created and started" "$(secs "$t0" "$(now)")")")
echo "disk $DISK: $(qemu-img info -U --output=json "$DISK" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"] >> 20)') MiB virtual, 52 MiB written"

BACKUP_ARGS=(-d "$VM" -o "$BACKUP" --scratchdir "$VMDIR" -f "$VMDIR/backup.sock")
[ -t 1 ] || BACKUP_ARGS+=(-n)

say "Full backup of the running VM: ./bin/virtnbdbackup -d $VM -l full -o $BACKUP"
timed "full backup (virtnbdbackup -l full)" ./bin/virtnbdbackup "${BACKUP_ARGS[@]}" -l full

# Write into the running VM's disk as a guest would: QEMU's qemu-io over the
# monitor; the dirty bitmap of the checkpoint sees exactly these ranges.
QOM="/machine/peripheral/$("${VIRSH[@]}" dumpxml "$VM" | grep -o "alias name='virtio-disk[0-9]*'" | head -n 1 | cut -d"'" -f2)/virtio-backend"
vm_io() {
  local out
  out=$("${VIRSH[@]}" qemu-monitor-command "$VM" --hmp "qemu-io -d $QOM \"$1\"")
  [ -z "$out" ] || die "qemu-io \"$1\" in $VM failed: $out"
}
say "Writing 9 MiB into the running VM's disk (qemu-io over the QEMU monitor)"
vm_io "write -P 0x33 100M 8M"
vm_io "write -P 0x44 700M 1M"
vm_io "flush"
# qemu-io prints its results to the domain log: both writes must be there.
for _ in $(seq 100); do
  [ "$(grep -c '^wrote ' "/var/log/libvirt/qemu/$VM.log" || true)" -ge 2 ] && break
  sleep 0.1
done
[ "$(grep -c '^wrote ' "/var/log/libvirt/qemu/$VM.log" || true)" -ge 2 ] || die "the writes into $VM did not complete (see /var/log/libvirt/qemu/$VM.log)"
grep '^wrote ' "/var/log/libvirt/qemu/$VM.log" | sed 's/^/    /'

say "Incremental backup: ./bin/virtnbdbackup -d $VM -l inc -o $BACKUP"
timed "incremental backup (-l inc)" ./bin/virtnbdbackup "${BACKUP_ARGS[@]}" -l inc

say "Restoring the chain (full + inc) to a new image in $RESTORE"
RESTORED_BY="virtnbd's virtnbdrestore"
if ./bin/virtnbdrestore --help | grep -q "Not yet implemented"; then
  RESTORED_BY="Debian's virtnbdrestore $(virtnbdrestore -V 2>&1 | tail -n 1) (virtnbd's virtnbdrestore is not implemented in this version)"
  echo "note: restoring with $RESTORED_BY"
  timed "restore (Debian virtnbdrestore)" quiet restore.log \
    virtnbdrestore -n -i "$BACKUP" -o "$RESTORE" -f "$VMDIR/restore.sock" -L "$LOGS/virtnbdrestore.log"
else
  timed "restore (virtnbdrestore)" ./bin/virtnbdrestore -n -i "$BACKUP" -o "$RESTORE" -f "$VMDIR/restore.sock"
fi
RESTORED=$RESTORE/$(basename "$DISK")
[ -f "$RESTORED" ] || die "no restored image $RESTORED"

say "Verifying the backup files against their checksums"
if ./bin/virtnbdrestore --help | grep -q "Not yet implemented"; then
  echo "(virtnbd's virtnbdrestore -a verify is not implemented in this version: checking the .chksum files with zlib.adler32)"
  timed "verify (python zlib.adler32)" python3 - "$BACKUP" <<'PY'
import glob, os, sys, zlib
bad = 0
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.data"))):
    want = int(open(f + ".chksum").read())
    got = 1
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            got = zlib.adler32(block, got)
    print(f"    {os.path.basename(f)}: {'OK' if got == want else 'MISMATCH'} ({got})")
    bad += got != want
sys.exit(1 if bad else 0)
PY
else
  timed "verify (virtnbdrestore -a verify)" ./bin/virtnbdrestore -n -a verify -i "$BACKUP" -o verify
fi

say "Comparing the restored image with the VM's disk (qemu-img compare)"
vm_io "flush"
qemu-img compare -U "$RESTORED" "$DISK"

T_END=$(now)
RESTORED_SIZES=$(qemu-img info --output=json "$RESTORED" |
  python3 -c 'import json, sys; i = json.load(sys.stdin); print("%d MiB virtual, %d MiB allocated" % (i["virtual-size"] >> 20, i["actual-size"] >> 20))')
say "Summary"
cat <<EOF
  VM:          $VM (firmware only, TCG; removed again on exit)
  did:         full backup, 9 MiB written into the running VM, incremental backup,
               restore of full + inc with $RESTORED_BY,
               checksum verification, qemu-img compare: identical
  backup set:  $BACKUP ($(human "$(du -s --apparent-size -B1 "$BACKUP" | cut -f1)") in all)
EOF
for f in "$BACKUP"/*.data; do
  printf '    %-32s %10s\n' "$(basename "$f")" "$(human "$(stat -c %s "$f")")"
done
cat <<EOF
  restored:    $RESTORED ($RESTORED_SIZES)
  logs:        $LOGS and $BACKUP/backup.*.log
  times:
EOF
for line in "${TIMES[@]}"; do echo "    $line"; done
printf '    %-34s %6ss\n' "total" "$(secs "$T_START" "$T_END")"
echo
echo "demo: OK. Remove the files with: rm -rf $WORK"
