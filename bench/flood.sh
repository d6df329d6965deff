#!/usr/bin/env bash
# The flood acceptance test in rounds: docs/DESIGN-NOTES.md note 25
# and docs/TESTING.md quote its medians.
#
#   bench/flood.sh [ROUNDS] [UNSAFE_ROUNDS]     (as root; default 5 and 2)
#
# Runs overlay-tests/tests/node_flood.rs ROUNDS times as it is, then
# UNSAFE_ROUNDS times with FPN_NODE_UNSAFE_NO_FLOOD_LIMITS=1 (the nodes'
# DPRP budgets, capacities and cookies off), and prints per kind of round:
# how many passed, and the medians with [min..max] of the unflooded and
# flooded iperf3 throughput (a -> b, 5 s each), their ratio, the time a new
# TCP flow by name took during the flood, and the flood's rates (fpn-flood
# under its 25% CPU quota). Records go to $OUT (default
# /tmp/flood.<pid>.jsonl). Each round is bounded by the test (< 90 s).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

ROUNDS=${1:-5}
UNSAFE_ROUNDS=${2:-2}
OUT=${OUT:-/tmp/flood.$$.jsonl}
[ "$(id -u)" = 0 ] || { echo "error: run as root (the lab)" >&2; exit 1; }
cargo build -q -p fpn-node -p fpn-gms
cargo test -q -p fpn-overlay-tests --test node_flood --no-run
: >"$OUT"

round() { # KIND ENV...
    local kind=$1; shift
    local log
    log=$(env "$@" cargo test -q -p fpn-overlay-tests --test node_flood -- --nocapture 2>&1) && ok=true || ok=false
    local rec
    rec=$(printf '%s\n' "$log" | sed -n 's/^flood-result: //p' | tail -1)
    [ -n "$rec" ] || rec='{}'
    printf '%s\n' "$rec" | python3 -c 'import json,sys; r=json.load(sys.stdin); r["kind"]=sys.argv[1]; r["passed"]=sys.argv[2]=="true"; print(json.dumps(r))' "$kind" "$ok" >>"$OUT"
    echo "$kind round: passed=$ok $rec" >&2
}

for _ in $(seq "$ROUNDS"); do round protected FPN_FLOOD_BENCH=1; done
for _ in $(seq "$UNSAFE_ROUNDS"); do round unprotected FPN_NODE_UNSAFE_NO_FLOOD_LIMITS=1; done

python3 - "$OUT" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
for kind in ("protected", "unprotected"):
    rs = [r for r in recs if r["kind"] == kind]
    if not rs:
        continue
    print(f"{kind}: {sum(r['passed'] for r in rs)}/{len(rs)} rounds passed")
    for k in ("quiet_mbps", "flooded_mbps", "ratio", "new_flow_ms", "dde_per_s", "junk_per_s", "enroll_attempts", "rate_limited"):
        v = [r[k] for r in rs if isinstance(r.get(k), (int, float))]
        if v:
            print(f"  {k:16} median {statistics.median(v):10.2f}  [{min(v):.2f}..{max(v):.2f}]  n={len(v)}")
print(f"load average: {open('/proc/loadavg').read().split()[:3]}")
PY
