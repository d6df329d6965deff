#!/usr/bin/env bash
# Before/after comparison of two fpn builds with bench/overlay.sh, rounds
# alternated so the shared machine's load falls on both alike:
# docs/BENCHMARKS.md, "TUN offloads in the data path".
#
#   bench/overlay-ab.sh BEFORE_BIN AFTER_BIN [MODE...]     (as root)
#
# BEFORE_BIN and AFTER_BIN are directories with release fpn-gms and fpn-node
# (copy target/release/ aside before rebuilding). MODE defaults to
# "fpn fpn-native". Per round, in this order: BEFORE, AFTER, and AFTER with
# FPN_NODE_TUN_OFFLOADS=0 (the nodes inherit it: offloads off, the same
# binary), each one bench/overlay.sh --json invocation of all MODEs.
# Prints per configuration and mode the medians [min..max] over the rounds
# that passed, the same-invocation ratio fpn-native / fpn (TCP 1 and 4
# streams), and every invocation's load average.
#
# CONFIGS="before after off" picks and orders the configurations; a fourth,
# "nocoalesce", is AFTER with FPN_NODE_TUN_COALESCE=0 (offloads on, TCP
# writes not coalesced: what the write side adds on its own); "nostages"
# is AFTER with FPN_NODE_NATIVE_SEND_STAGE=0 and FPN_NODE_TUN_WRITE_STAGE=0
# (the driver sends native batches and writes the TUN itself: what the two
# stage threads add), "notx" and "notun" turn off one of them; "threads1"
# and "threads2" are AFTER with FPN_NODE_THREADS=1 or 2 (the node's tokio
# runtime with that many worker threads; the default is one per core);
# "workers0" and "workers1" are AFTER with FPN_NODE_WORKERS=0 or 1 (the
# data-path workers on the native receive threads off or on). "tunw0",
# "tunw1" and "tunw2" are AFTER with FPN_NODE_TUN_WORKERS=0, 1 or 2 (the
# driver reads the TUN, or one or two TUN workers do); "nospread" is AFTER
# with FPN_NODE_TUN_SPREAD=0 (every TUN write into the first queue, so the
# kernel steers every flow with inbound traffic to the first worker);
# "first0" is AFTER with FPN_NODE_FAST_FIRST=0 (a fast-opened flow's first
# packet leaves beside its FOP, not inside it: design note 71); "ringgap"
# is AFTER with FPN_NODE_RING_DENSE=gap (the native receive ring naps by
# the rule before design note 72: the next packet within 200 us).
#
# Environment: REPEAT=3 (rounds), CONFIGS, OUT=<dir> (default a new temporary
# directory, kept: the JSON of every invocation), and everything
# bench/overlay.sh reads (DURATION, TUN_MTU, ...).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
BEFORE=$1 AFTER=$2
shift 2
MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(fpn fpn-native)
REPEAT=${REPEAT:-3}
read -r -a CFGS <<<"${CONFIGS:-before after off}"
OUT=${OUT:-$(mktemp -d /tmp/overlay-ab.XXXXXX)}
mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")" && pwd)
for r in $(seq "$REPEAT"); do
    for cfg in "${CFGS[@]}"; do
        case $cfg in
            before) bin=$BEFORE env=() ;;
            after) bin=$AFTER env=() ;;
            off) bin=$AFTER env=(FPN_NODE_TUN_OFFLOADS=0) ;;
            nocoalesce) bin=$AFTER env=(FPN_NODE_TUN_COALESCE=0) ;;
            nostages) bin=$AFTER env=(FPN_NODE_NATIVE_SEND_STAGE=0 FPN_NODE_TUN_WRITE_STAGE=0) ;;
            notx) bin=$AFTER env=(FPN_NODE_NATIVE_SEND_STAGE=0) ;;
            notun) bin=$AFTER env=(FPN_NODE_TUN_WRITE_STAGE=0) ;;
            threads1) bin=$AFTER env=(FPN_NODE_THREADS=1) ;;
            threads2) bin=$AFTER env=(FPN_NODE_THREADS=2) ;;
            workers0) bin=$AFTER env=(FPN_NODE_WORKERS=0) ;;
            workers1) bin=$AFTER env=(FPN_NODE_WORKERS=1) ;;
            tunw0) bin=$AFTER env=(FPN_NODE_TUN_WORKERS=0) ;;
            tunw1) bin=$AFTER env=(FPN_NODE_TUN_WORKERS=1) ;;
            tunw2) bin=$AFTER env=(FPN_NODE_TUN_WORKERS=2) ;;
            nospread) bin=$AFTER env=(FPN_NODE_TUN_SPREAD=0) ;;
            first0) bin=$AFTER env=(FPN_NODE_FAST_FIRST=0) ;;
            ringgap) bin=$AFTER env=(FPN_NODE_RING_DENSE=gap) ;;
            *) echo "overlay-ab.sh: unknown configuration $cfg" >&2; exit 2 ;;
        esac
        echo "round $r $cfg $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
        # A failed round is in the JSON (rounds_failed); go on with the rest.
        env "${env[@]}" FPN_BIN="$bin" \
            "$HERE/overlay.sh" --json "${MODES[@]}" >"$OUT/$cfg-$r.json" 2>"$OUT/$cfg-$r.log" || true
    done
done
python3 - "$OUT" <<'EOF'
import glob, json, statistics as st, sys
out = sys.argv[1]
keys = ["tcp1_gbps", "tcp4_gbps", "tcp1_daemon_cores", "tcp4_daemon_cores",
        "tcp1_daemon_cores_per_gbps", "tcp4_daemon_cores_per_gbps",
        "tcp1_retransmits", "tcp4_retransmits", "ping_avg_ms", "udp_echo_avg_ms",
        "new_flow_first_ms",
        # with TCP16=1 only
        "tcp16_gbps", "tcp16_daemon_cores_per_gbps",
        # with STORM_SECS > 0 only
        "storm_tcp_per_s", "storm_tcp_p99_ms", "storm_udp_per_s", "storm_udp_p99_ms", "storm_failed",
        "storm_tcp_cpu_ms_per_1000", "storm_udp_cpu_ms_per_1000"]
rows, loads = {}, []
for cfg in ["before", "after", "off", "nocoalesce", "nostages", "notx", "notun", "threads1", "threads2",
            "workers0", "workers1", "tunw0", "tunw1", "tunw2", "nospread", "first0", "ringgap"]:
    for f in sorted(glob.glob(f"{out}/{cfg}-*.json")):
        try:
            d = json.load(open(f))
        except ValueError:
            print(f"{f}: no report"); continue
        loads.append(f"{f.rsplit('/', 1)[1]}: load {d['load_before']} -> {d['load_after']}")
        ok = {m["mode"]: m for m in d["modes"] if m["rounds_passed"] > 0}
        for m in d["modes"]:
            if m["mode"] not in ok:
                print(f"{f}: {m['mode']} failed: {m['failures']}")
        for name, m in ok.items():
            r = rows.setdefault((cfg, name), {})
            for k in keys:
                if m.get(k) is not None:
                    r.setdefault(k, []).append(m[k])
        if "fpn" in ok and "fpn-native" in ok:
            r = rows.setdefault((cfg, "fpn-native / fpn"), {})
            for k in ["tcp1_gbps", "tcp4_gbps"]:
                r.setdefault(k, []).append(round(ok["fpn-native"][k] / ok["fpn"][k], 2))
for (cfg, name), r in rows.items():
    print(f"{cfg} {name}")
    for k, v in r.items():
        print(f"  {k:28} {st.median(v):10.3f} [{min(v)}..{max(v)}] n={len(v)}")
print("\n".join(loads))
print(f"JSON in {out}")
EOF
