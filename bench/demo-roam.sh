#!/usr/bin/env bash
# What the demo measures, over several rounds: runs `fpn-demo --quick`
# (root needed, about 40 s each) ROUNDS times and prints, per round and as
# median [range], the time from the laptop's move to the cafe until
# `ping nas` answers again (no restart: the node does not follow an address
# change by itself yet), the time from the GMS serving again until the
# relayed pair answers, and the whole demo's run time.
# Usage: bench/demo-roam.sh [ROUNDS]  (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
export CARGO_INCREMENTAL=0
cargo build -q -p fpn-node -p fpn-gms -p fpn-overlay-tests --bins
roam=() back=() total=()
for i in $(seq "$rounds"); do
  out=$(target/debug/fpn-demo --quick 2>&1 || true)
  r=$(sed -nE 's/.*reached the NAS ([0-9.]+) s after the move.*/\1/p' <<<"$out")
  b=$(sed -nE 's/.*the relayed pair answers ([0-9.]+) s later.*/\1/p' <<<"$out")
  t=$(sed -nE 's/^All steps passed in ([0-9.]+) s.*/\1/p' <<<"$out")
  if [[ -z $r || -z $b || -z $t ]]; then echo "round $i: FAILED"; continue; fi
  echo "round $i: reached again ${r} s after the move, relay back ${b} s after the GMS, demo ${t} s"
  roam+=("$r") back+=("$b") total+=("$t")
done
stat() { # NAME VALUES...: median [min..max]
  local name=$1; shift
  printf '%s\n' "$@" | sort -g | awk -v n="$name" '{ a[NR] = $1 } END {
    if (NR == 0) { print n ": no successful round"; exit 1 }
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    printf "%s: median %.2f s [%.2f..%.2f], %d rounds\n", n, m, a[1], a[NR], NR }'
}
stat "roam to the cafe, until ping nas answers" "${roam[@]}"
stat "GMS serving again, until the relayed pair answers" "${back[@]}"
stat "fpn-demo --quick run time" "${total[@]}"
