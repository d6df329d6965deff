#!/usr/bin/env bash
# NAT benchmark: docs/BENCHMARKS.md, "NAT traversal".
#
#   bench/nat.sh [--json | --markdown] [MODE...]     (as root)
#
# On the lab's NAT matrix (configs/lab/nat-matrix-*.toml: a VPS, an internet
# router, node a behind router gwa, node b behind router gwb), every mode on
# a fresh lab, a -> b:
#
#   raw-eim, raw-sym  no overlay: a -> gwb's public address through both
#                     routers (gwb forwards TCP 5201 to b; ping answers from
#                     gwb itself), on nat-matrix-eim / nat-matrix-symmetric
#   fpn-eim           fpn-gms (with its relay) on the VPS, fpn-node on a and b
#                     behind endpoint-independent NATs, the default carrier:
#                     the native path through both NATs (punched)
#   fpn-eim-quic      the same with `carrier = "quic"`: punched direct QUIC
#   fpn-sym           the same behind symmetric NATs (random ports): the relay
#                     (fpn-gms's default [relay] rate_mbit = 50 per node)
#   fpn-sym-nocap     the same with the relay's per-node rate raised to
#                     100 Gbit/s (gms.toml [relay] rate_mbit), i.e. what the
#                     relay itself can carry here
#   nebula-eim        nebula 1.6: lighthouse + relay on the VPS, punchy on,
#                     a and b behind the same NATs: direct after punching
#   nebula-sym        the same behind symmetric NATs: nebula's relay
#
# Measured per mode:
#   setup   from starting the daemons on a and b at once (fpn: `fpn-node up`,
#           already enrolled; nebula: `nebula`, the lighthouse already up) to
#           the first ping a -> b answered (ping -D every 0.1 s; the reply's
#           own timestamp), seconds
#   ping    ping -c $PINGS -i 0.2 on the warm path: average RTT, ms
#   tcp     iperf3 TCP, $DURATION s, one stream: receiver Mbit/s
#   via_vps bytes the VPS's interface received during the iperf3 run, as a
#           share of what iperf3 carried: ~0 for a direct path, >= 1 when
#           the traffic went through the VPS (the relay)
#   gwa_pkts packets router gwa sent (all its interfaces) during the iperf3
#           run per MB iperf3 carried: what each router forwards and
#           NATs, one socket buffer each (a GSO super-packet is one); on
#           this lab the routers share the nodes' two cores
# Required checks (a round that fails one is reported, not counted): the
# path came up and every measurement answered; fpn-eim: a's status for b is
# `direct via NAT (...)` on native (fpn-eim-quic: on QUIC) and the VPS saw
# < 10 % of the iperf3 bytes; fpn-sym: `relay` and the VPS saw >= 90 %; nebula-eim: the VPS saw
# < 10 %; nebula-sym: >= 90 % (nebula's relay).
#
# REPEAT=n runs the modes n times, interleaved; the report shows medians
# with [min..max] and the load average before and after.
# Environment: REPEAT=1, DURATION=10, PINGS=20, FPN_BIN=<dir with release
# fpn-lab, fpn-gms, fpn-node> (default: built here, target/release),
# KEEP=1 keeps the work directory (logs). Nothing leaves the lab's
# namespaces; each lab is removed after its mode, also on failure or Ctrl-C.
set -euo pipefail
export LC_ALL=C

FORMAT=table
MODES=()
for arg in "$@"; do
    case $arg in
        --json) FORMAT=json ;;
        --markdown | --md) FORMAT=markdown ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        raw-eim | raw-sym | fpn-eim | fpn-eim-quic | fpn-sym | fpn-sym-nocap | nebula-eim | nebula-sym) MODES+=("$arg") ;;
        *) echo "nat.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
[ ${#MODES[@]} -gt 0 ] || MODES=(raw-eim fpn-eim fpn-eim-quic nebula-eim raw-sym fpn-sym fpn-sym-nocap nebula-sym)

REPEAT=${REPEAT:-1}
DURATION=${DURATION:-10}
PINGS=${PINGS:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
PREFIX=${FPN_LAB_PREFIX:-fpnlab}
WORK=$(mktemp -d -t nat-bench.XXXXXX)
LAB_ID=""
PIDS=()

log() { echo "$*" >&2; }
die() {
    echo "nat.sh: $*" >&2
    [ -z "${ROUND_ERR:-}" ] || echo "$*" >"$ROUND_ERR"
    exit 1
}
[ "$(id -u)" = 0 ] || die "must run as root (the lab creates network namespaces)"

for t in iperf3 ping python3 nebula nebula-cert; do
    command -v "$t" >/dev/null || die "$t missing (bench/overlay.sh installs nebula and iperf3)"
done

if [ -n "${FPN_BIN:-}" ]; then
    BIN=$FPN_BIN
else
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
    log "building release fpn-lab, fpn-gms and fpn-node"
    (cd "$ROOT" && CARGO_INCREMENTAL=0 cargo build --release -q -p fpn-gms -p fpn-node -p fpn-overlay-tests --bins >&2) ||
        die "cargo build --release failed"
fi
for b in fpn-lab fpn-gms fpn-node; do [ -x "$BIN/$b" ] || die "no $b in $BIN"; done
LAB="$BIN/fpn-lab"

# ------------------------------------------------------------------ lab
ns() { echo "$PREFIX-$LAB_ID-$1"; }
in_() { local h=$1; shift; ip netns exec "$(ns "$h")" "$@"; }
spawn() { # spawn HOST LOG CMD...: background, PID remembered (ended by PID)
    local h=$1 logf=$2
    shift 2
    ip netns exec "$(ns "$h")" "$@" >"$logf" 2>&1 &
    PIDS+=($!)
}
teardown() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
    # fpn-lab down kills what still runs in this lab's namespaces.
    [ -z "$LAB_ID" ] || "$LAB" down "$LAB_ID" >/dev/null 2>&1 || true
    LAB_ID=""
}
on_exit() {
    local rc=$?
    teardown
    if [ "${KEEP:-0}" = 1 ] || [ $rc != 0 ]; then
        find "$WORK" -name '*.key' -delete 2>/dev/null || true
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

lab_up() { # lab_up eim|sym
    local file
    case $1 in eim) file=nat-matrix-eim.toml ;; sym) file=nat-matrix-symmetric.toml ;; esac
    LAB_ID="nb$$r$ROUND${MODE//[^a-z]/}"
    LAB_ID=${LAB_ID:0:12}
    "$LAB" up "$ROOT/configs/lab/$file" --id "$LAB_ID" >"$D/lab.txt" 2>&1 || die "fpn-lab up $file failed: $(tail -3 "$D/lab.txt")"
}

VPS=198.18.1.10
GWB=198.18.3.2
B_LAN=192.168.1.20

# ------------------------------------------------------------------ set-ups
# Each sets DST (b's address for a) and T0 (the start of the daemons).

raw_up() {
    "$LAB" nat --lab "$LAB_ID" gwb --set "forwards = [{ proto = \"tcp\", port = 5201, to = \"$B_LAN:5201\" }]" \
        >"$D/nat.txt" 2>&1 || die "fpn-lab nat gwb --set forwards failed: $(tail -3 "$D/nat.txt")"
    DST=$GWB
    T0=""
}

fpn_up() {
    local gms=("$BIN/fpn-gms" --data "$D/gms") n tok
    in_ vps "${gms[@]}" init --zone home.fpn. --listen "$VPS:4433" --public-addr "$VPS:4433" \
        --overlay-range 100.64.0.0/16 --rotation-schedule off >"$D/init.log" 2>&1 ||
        die "fpn-gms init failed: $(tail -3 "$D/init.log")"
    if [ -n "$RELAY_RATE" ]; then
        grep -q '^rate_mbit' "$D/gms/gms.toml" || die "no rate_mbit in the gms.toml fpn-gms init wrote"
        sed -i "s/^rate_mbit = .*/rate_mbit = $RELAY_RATE/" "$D/gms/gms.toml"
    fi
    spawn vps "$D/gms.log" env RUST_LOG=info "$BIN/fpn-gms" serve --data "$D/gms"
    wait_for 20 grep -q "GMS serving" "$D/gms.log" || die "fpn-gms did not start: $(tail -5 "$D/gms.log")"
    in_ vps "${gms[@]}" group add 1 --name home >/dev/null
    for n in a b; do
        in_ vps "${gms[@]}" ge add "$n" --kind ges --mode op --group 1 >/dev/null
        tok=$(in_ vps "${gms[@]}" token create "$n" --ttl 1h --json | json_field token)
        in_ "$n" "$BIN/fpn-node" enroll "$tok" --state "$D/$n" --json >"$D/$n.enroll.json" ||
            die "fpn-node enroll $n failed"
        printf 'split_dns = false\n%s' "$CARRIER_LINE" >"$D/$n.toml"
    done
    DST=$(json_field overlay <"$D/b.enroll.json")
    T0=$(date +%s.%N)
    for n in a b; do
        spawn "$n" "$D/$n.log" env RUST_LOG=info "$BIN/fpn-node" up --state "$D/$n" --config "$D/$n.toml"
    done
}

nebula_conf() { # name am_lighthouse
    local lh=$2
    cat <<EOF
pki:
  ca: $D/ca.crt
  cert: $D/$1.crt
  key: $D/$1.key
static_host_map:
  "100.64.0.1": ["$VPS:4242"]
lighthouse:
  am_lighthouse: $lh
  interval: 60
  hosts: $([ "$lh" = true ] && echo '[]' || echo '["100.64.0.1"]')
listen:
  host: 0.0.0.0
  port: 4242
punchy:
  punch: true
  respond: true
relay:
  am_relay: $lh
  use_relays: true
  relays: $([ "$lh" = true ] && echo '[]' || echo '["100.64.0.1"]')
tun:
  dev: nebula1
  mtu: 1300
logging:
  level: info
firewall:
  outbound:
    - {port: any, proto: any, host: any}
  inbound:
    - {port: any, proto: any, host: any}
EOF
}

nebula_up() {
    local n ip
    nebula-cert ca -name nat-bench -out-crt "$D/ca.crt" -out-key "$D/ca.key"
    for n in vps:1 a:2 b:3; do
        ip=100.64.0.${n#*:}
        nebula-cert sign -ca-crt "$D/ca.crt" -ca-key "$D/ca.key" -name "${n%:*}" -ip "$ip/24" \
            -out-crt "$D/${n%:*}.crt" -out-key "$D/${n%:*}.key"
    done
    nebula_conf vps true >"$D/vps.yml"
    nebula_conf a false >"$D/a.yml"
    nebula_conf b false >"$D/b.yml"
    spawn vps "$D/vps.log" nebula -config "$D/vps.yml"
    wait_for 10 has_addr vps 100.64.0.1 || die "nebula lighthouse did not come up"
    DST=100.64.0.3
    T0=$(date +%s.%N)
    spawn a "$D/a.log" nebula -config "$D/a.yml"
    spawn b "$D/b.log" nebula -config "$D/b.yml"
}

has_addr() { in_ "$1" ip -4 -o addr show 2>/dev/null | grep -q " $2/"; }

json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# ------------------------------------------------------------------ measurements
# Seconds from T0 to the first answered ping a -> DST: ping -D every 0.1 s
# (restarted while a has no route to DST yet), the reply's own timestamp.
first_ping() {
    local line end=$((SECONDS + 60))
    while [ $SECONDS -lt $end ]; do
        line=$(timeout 30 ip netns exec "$(ns a)" ping -D -n -i 0.1 -w 30 "$DST" 2>/dev/null | grep -m1 'bytes from' || true)
        if [ -n "$line" ]; then
            python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) - float(sys.argv[2])))' \
                "$(sed -E 's/^\[([0-9.]+)\].*/\1/' <<<"$line")" "$T0"
            return 0
        fi
        sleep 0.05
    done
    return 1
}

vps_rx() { in_ vps cat /sys/class/net/eth0/statistics/rx_bytes; }
gwa_tx_packets() { in_ gwa sh -c 'cat /sys/class/net/*/statistics/tx_packets' | awk '{ s += $1 } END { print s }'; }

IPERF_RATE='
import json, sys
j = json.load(sys.stdin)["end"]
print("%.1f %d" % (j["sum_received"]["bits_per_second"] / 1e6, j["sum_received"]["bytes"]))
'
PEER='
import json, sys
p = next((p for p in json.load(sys.stdin).get("peers", []) if p.get("name") == "b"), {})
print("%s|%s|%s" % (p.get("carrier"), p.get("candidate"), p.get("path")))
'

measure() {
    MODE=$1
    D="$WORK/$MODE-$ROUND"
    mkdir -p "$D"
    ROUND_ERR="$D/error"
    trap teardown EXIT
    trap 'exit 130' INT TERM
    log "== $MODE (round $ROUND)"
    local kind tool=${MODE%%-*} setup=NA ping rx0 rx1 tcp bytes via gp0 gp1 gpkts fails=()
    kind=$(cut -d- -f2 <<<"$MODE")
    RELAY_RATE=""
    [ "$MODE" != fpn-sym-nocap ] || RELAY_RATE=100000
    CARRIER_LINE=""
    local carrier=native
    if [ "$MODE" = fpn-eim-quic ]; then
        CARRIER_LINE=$'carrier = "quic"\n'
        carrier=quic
    fi
    lab_up "$kind"
    case $tool in
        raw) raw_up ;;
        fpn) fpn_up ;;
        nebula) nebula_up ;;
    esac
    if [ -n "$T0" ]; then
        setup=$(first_ping) || die "no ping answered within 60 s of starting the daemons"
    else
        wait_for 10 in_ a ping -n -c1 -W1 "$DST" || die "no raw ping answered"
    fi
    ping=$(in_ a ping -n -q -c "$PINGS" -i 0.2 "$DST" | awk -F/ '/^rtt/ { print $5 }' || true)
    [ -n "$ping" ] || die "ping on the warm path failed"
    spawn b "$D/iperf3-server.log" iperf3 -s --forceflush
    wait_for 5 grep -q "Server listening" "$D/iperf3-server.log" || die "iperf3 -s did not start"
    rx0=$(vps_rx)
    gp0=$(gwa_tx_packets)
    in_ a iperf3 -c "$DST" -t "$DURATION" -J >"$D/iperf3.json" 2>&1 || die "iperf3 failed: $(tail -3 "$D/iperf3.json")"
    gp1=$(gwa_tx_packets)
    rx1=$(vps_rx)
    read -r tcp bytes < <(python3 -c "$IPERF_RATE" <"$D/iperf3.json")
    via=$(python3 -c 'import sys; print("%.2f" % ((int(sys.argv[2]) - int(sys.argv[1])) / max(int(sys.argv[3]), 1)))' "$rx0" "$rx1" "$bytes")
    gpkts=$(python3 -c 'import sys; print("%.1f" % ((int(sys.argv[2]) - int(sys.argv[1])) / max(int(sys.argv[3]) / 1e6, 1e-9)))' "$gp0" "$gp1" "$bytes")
    local direct=true
    [ "$kind" != sym ] || [ "$tool" = raw ] || direct=false
    if [ "$tool" != raw ]; then
        if $direct; then
            python3 -c 'import sys; sys.exit(float(sys.argv[1]) >= 0.1)' "$via" || fails+=("the VPS carried ${via}x the iperf3 bytes on a direct path")
        else
            python3 -c 'import sys; sys.exit(float(sys.argv[1]) < 0.9)' "$via" || fails+=("the VPS carried only ${via}x the iperf3 bytes on the relay path")
        fi
    fi
    if [ "$tool" = fpn ]; then
        local peer
        peer=$(in_ a "$BIN/fpn-node" status --json --state "$D/a" | python3 -c "$PEER")
        echo "$peer" >"$D/peer.txt"
        log "   a's status for b: $peer"
        if $direct; then
            [[ $peer == "$carrier|direct via NAT ("* ]] || fails+=("a's status for b is not direct via NAT on $carrier: $peer")
        else
            [[ $peer == "relay|relay|"* ]] || fails+=("a's status for b is not the relay: $peer")
        fi
    fi
    log "   setup ${setup} s, ping ${ping} ms, tcp ${tcp} Mbit/s, VPS carried ${via}x the iperf3 bytes, gwa sent ${gpkts} packets per MB"
    if [ ${#fails[@]} -gt 0 ]; then
        log "   ROUND FAILED: ${fails[*]}"
        echo "$ROUND $MODE ${fails[*]}" >>"$WORK/failures.txt"
        return 0
    fi
    echo "$ROUND $MODE $setup $ping $tcp $via $gpkts" >>"$WORK/rounds.txt"
}

METRICS="setup ping tcp via gpkts"
cell() { # cell MODE METRIC: "median [min..max]" (no range for one round)
    local v=${R[$1.$2]:-NA}
    if [ "$REPEAT" = 1 ] || [ "$v" = NA ]; then echo "$v"; else echo "$v [${RNG[$1.$2]}]"; fi
}
what() {
    case $1 in
        raw-eim) echo "raw routing a -> gwb (EIM routers), no overlay" ;;
        raw-sym) echo "raw routing a -> gwb (symmetric routers), no overlay" ;;
        fpn-eim) echo "fpn, direct through EIM NATs (native, the default carrier)" ;;
        fpn-eim-quic) echo "fpn, direct through EIM NATs (punched QUIC, carrier pinned)" ;;
        fpn-sym) echo "fpn, relay (symmetric NATs), relay rate cap 50 Mbit/s per node (default)" ;;
        fpn-sym-nocap) echo "fpn, relay (symmetric NATs), rate cap raised to 100 Gbit/s" ;;
        nebula-eim) echo "nebula 1.6, direct through EIM NATs (punchy)" ;;
        nebula-sym) echo "nebula 1.6, relay (symmetric NATs)" ;;
    esac
}

report() {
    local m
    case $FORMAT in
        json)
            printf '{"date":"%s","cpus":%s,"load_before":"%s","load_after":"%s","rounds":%s,"duration_s":%s,"pings":%s,"modes":[' \
                "$(date -u +%FT%TZ)" "$(nproc)" "$LOAD0" "$LOAD1" "$REPEAT" "$DURATION" "$PINGS"
            local sep=
            for m in "${MODES[@]}"; do
                printf '%s{"mode":"%s","passed":%s,"failed":%s,"setup_s":"%s","ping_ms":"%s","tcp_mbps":"%s","via_vps":"%s","gwa_packets_per_mb":"%s"}' \
                    "$sep" "$m" "$(passed "$m")" "$(failed "$m")" "$(cell "$m" setup)" "$(cell "$m" ping)" "$(cell "$m" tcp)" "$(cell "$m" via)" "$(cell "$m" gpkts)"
                sep=,
            done
            printf ']}\n'
            ;;
        markdown)
            echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, Linux $(uname -r), fpn at commit" \
                "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nebula -version 2>&1 | head -1 | tr -d '\n');" \
                "medians of the rounds that passed of $REPEAT interleaved, [min..max]; load average $LOAD0 before," \
                "$LOAD1 after; iperf3 TCP ${DURATION} s, ping ${PINGS} x 0.2 s."
            echo
            echo "| mode | path | up to first answered ping, s | ping avg ms | TCP Mbit/s | VPS bytes / iperf3 bytes | gwa packets per MB | rounds passed / failed |"
            echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
            for m in "${MODES[@]}"; do
                echo "| $m | $(what "$m") | $(cell "$m" setup) | $(cell "$m" ping) | $(cell "$m" tcp) | $(cell "$m" via) | $(cell "$m" gpkts) | $(passed "$m") / $(failed "$m") |"
            done
            if [ -s "$WORK/failures.txt" ]; then
                echo
                while read -r k m why; do echo "- failed: round $k, $m: $why"; done <"$WORK/failures.txt"
            fi
            ;;
        table)
            echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); load average before: $LOAD0, after: $LOAD1; REPEAT=$REPEAT DURATION=${DURATION}s"
            printf '%-13s %-22s %-22s %-24s %-18s %-20s %s\n' mode "setup s" "ping ms" "tcp Mbit/s" "via VPS" "gwa pkts/MB" "ok/bad"
            for m in "${MODES[@]}"; do
                printf '%-13s %-22s %-22s %-24s %-18s %-20s %s/%s\n' "$m" "$(cell "$m" setup)" "$(cell "$m" ping)" \
                    "$(cell "$m" tcp)" "$(cell "$m" via)" "$(cell "$m" gpkts)" "$(passed "$m")" "$(failed "$m")"
            done
            [ ! -s "$WORK/failures.txt" ] || { echo "FAILED ROUNDS:"; cat "$WORK/failures.txt"; }
            ;;
    esac
}

# ------------------------------------------------------------------ main
round_error() { echo "$WORK/$1-$ROUND/error"; }
after_mode() { :; }
run_rounds
report
[ ! -s "$WORK/failures.txt" ] || exit 1
