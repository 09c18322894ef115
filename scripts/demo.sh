#!/bin/bash
# The demo of README.md: prepares this Debian host, builds virtnbd, makes a
# small demo VM and backs it up. Until the backup CLI lands it says so.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/host-setup.sh
npm ci --no-audit --no-fund >/dev/null
if ./bin/virtnbdbackup --help | grep -q "Not yet implemented"; then
  echo "demo: not yet: virtnbdbackup's backup job is not implemented in this version; run the tests instead: sudo bash scripts/test.sh"
  exit 0
fi
