#!/usr/bin/env bash
# What the demo measures, over several rounds: runs `fpn-demo --quick`
# (root needed, about 40 s each) ROUNDS times and prints, per round and as
# median [range], the gap of the record stream to the home router's node
# across the laptop's move to the cafe (from the new address in place to
# records flowing again), the time from the move until `ping nas` answers
# again (the NAS is reached through the relay), the time from the GMS
# serving again until the relayed pair answers, and the whole demo's run
# time.
# Usage: bench/demo-roam.sh [ROUNDS]  (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
export CARGO_INCREMENTAL=0
cargo build -q -p fpn-node -p fpn-gms -p fpn-overlay-tests --bins
gap=() roam=() back=() total=()
for i in $(seq "$rounds"); do
  out=$(target/debug/fpn-demo --quick 2>&1 || true)
  g=$(sed -nE 's/.*receiver waited ([0-9.]+) ms for records.*/\1/p' <<<"$out")
  r=$(sed -nE 's/.*reached the NAS ([0-9.]+) s after the move.*/\1/p' <<<"$out")
  b=$(sed -nE 's/.*the relayed pair answers ([0-9.]+) s later.*/\1/p' <<<"$out")
  t=$(sed -nE 's/^All steps passed in ([0-9.]+) s.*/\1/p' <<<"$out")
  if [[ -z $g || -z $r || -z $b || -z $t ]]; then echo "round $i: FAILED"; continue; fi
  echo "round $i: record gap ${g} ms, NAS reached again ${r} s after the move, relay back ${b} s after the GMS, demo ${t} s"
  gap+=("$g") roam+=("$r") back+=("$b") total+=("$t")
done
stat() { # NAME VALUES...: median [min..max]
  local name=$1; shift
  printf '%s\n' "$@" | sort -g | awk -v n="$name" '{ a[NR] = $1 } END {
    if (NR == 0) { print n ": no successful round"; exit 1 }
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    printf "%s: median %.2f [%.2f..%.2f], %d rounds\n", n, m, a[1], a[NR], NR }'
}
stat "record stream gap across the move to the cafe, ms" "${gap[@]}"
stat "roam to the cafe, until ping nas answers, s" "${roam[@]}"
stat "GMS serving again, until the relayed pair answers, s" "${back[@]}"
stat "fpn-demo --quick run time, s" "${total[@]}"
