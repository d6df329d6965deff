#!/usr/bin/env bash
# How long relayed traffic is interrupted by a restart of the relay (the one
# inside fpn-gms): runs overlay-tests' node_relay lab test ROUNDS times (root
# needed, about 35 s each) and prints each round's gap between the GMS
# serving again and the first answered probe through the relay, then the
# median and the range. Usage: bench/relay-restart.sh [ROUNDS]  (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
export CARGO_INCREMENTAL=0
cargo build -q -p fpn-node -p fpn-gms
gaps=()
for i in $(seq "$rounds"); do
  line=$(cargo test -q -p fpn-overlay-tests --test node_relay -- --nocapture 2>&1 |
    grep -E "relay restart: traffic resumed" || true)
  if [[ -z $line ]]; then echo "round $i: FAILED"; continue; fi
  # "... resumed 762.768648ms after ..." or "... resumed 1.000670528s after ..."
  v=$(sed -E 's/.*resumed ([0-9.]+)(ms|s) after.*/\1 \2/' <<<"$line" |
    awk '{ print ($2 == "ms") ? $1 / 1000 : $1 }')
  echo "round $i: ${v} s"
  gaps+=("$v")
done
printf '%s\n' "${gaps[@]}" | sort -g | awk '{ a[NR] = $1 } END {
  if (NR == 0) { print "no successful round"; exit 1 }
  m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
  printf "relay restart gap: median %.2f s [%.2f..%.2f], %d rounds\n", m, a[1], a[NR], NR }'
