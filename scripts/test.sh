#!/bin/bash
# The test command of README.md: prepares this Debian host (packages,
# libvirtd), installs and builds the project, runs the whole suite and ends
# with the plain count line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/host-setup.sh || { echo "host set-up failed"; exit 1; }
bash scripts/test-host-tls.sh || { echo "TLS set-up of the test host failed"; exit 1; }
npm ci --no-audit --no-fund || { echo "npm ci failed"; exit 1; }

tap=$(mktemp)
trap 'rm -f "$tap"' EXIT
npx ava --tap "$@" | tee "$tap"
status=${PIPESTATUS[0]}

passed=$(grep -cE '^ok [0-9]+' "$tap")
failed=$(grep -cE '^not ok [0-9]+' "$tap")
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  # ava failed outside any test (a crashed file, an unhandled rejection): count it.
  failed=1
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
