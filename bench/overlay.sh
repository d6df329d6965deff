#!/usr/bin/env bash
# Overlay benchmark: docs/BENCHMARKS.md, "Overlay".
#
#   bench/overlay.sh [--json | --markdown] [MODE...]     (as root)
#
# MODE: raw wireguard-go nebula fpn (default: all four, in that order). Every
# mode runs in the same invocation on a fresh copy of the same topology, so
# the ratios against raw veth compare like with like:
#
#   netns <id>a  veth 198.18.0.1/24  <==== veth, MTU 1500 ====>  198.18.0.2/24  netns <id>b
#   tunnel: A -> B over the tunnel's own addresses; every tunnel's MTU is $TUN_MTU
#
# Nothing is sent outside the two namespaces this script creates; they, the
# processes it started and its temporary directory are removed on exit,
# also after a failure or Ctrl-C.
#
# Measured per mode, A -> B through the tunnel:
#   tcp1, tcp4  iperf3 TCP, $DURATION s, 1 and 4 streams: receiver Gbit/s, the
#               sender's retransmissions, and the CPU both tunnel daemons used
#               meanwhile (cores: CPU seconds per second of the run)
#   ping        ping -c $PINGS -i 0.2 on the warm tunnel: average RTT, ms
#   cold        the first ping to a peer never contacted since the daemons
#               came up: its RTT as ping reports it (ms), i.e. including
#               whatever the tunnel does on first contact (WireGuard and
#               nebula handshakes; for fpn the QUIC connection, the GMS
#               directory lookup and the DPRP negotiation). raw: ARP included.
#   flow1       first-packet latency of a brand-new flow on the warm tunnel:
#               $FLOWS times, a fresh UDP socket (new source port, so a new
#               5-tuple) sends one 64-byte datagram to a UDP echo server on
#               B and times the echo inside the client (perf_counter from
#               sendto to recvfrom; no process start-up in the number).
#               Median and max, ms. For fpn every such flow is negotiated
#               (DPRP) before its first packet is released; WireGuard and
#               nebula have no per-flow state, so theirs is a plain RTT.
#
# With REPEAT=n the modes run n times, interleaved (raw, wg, nebula, fpn,
# raw, ...), and the report shows medians (new-flow max: the max; lost
# flows: the sum) with [min..max] of the throughputs and ping.
#
# Environment: DURATION=10 (iperf3 seconds; QUICK=1 sets 3), PINGS=20,
# FLOWS=10, REPEAT=1, TUN_MTU=1380, FPN_BIN=<dir with release fpn-gms and fpn-node>
# (default: built here with cargo into $CARGO_TARGET_DIR or ./target),
# KEEP=1 keeps the work directory (logs) after the run.
# Installs iperf3, wireguard-go, wireguard-tools and nebula with apt-get
# when missing, and stops with an error if that fails.
set -euo pipefail
export LC_ALL=C

FORMAT=table
MODES=()
for arg in "$@"; do
    case $arg in
        --json) FORMAT=json ;;
        --markdown | --md) FORMAT=markdown ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        raw | wireguard-go | nebula | fpn) MODES+=("$arg") ;;
        *) echo "overlay.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
[ ${#MODES[@]} -gt 0 ] || MODES=(raw wireguard-go nebula fpn)

DURATION=${DURATION:-10}
[ "${QUICK:-0}" = 1 ] && DURATION=3
PINGS=${PINGS:-20}
FLOWS=${FLOWS:-10}
REPEAT=${REPEAT:-1}
TUN_MTU=${TUN_MTU:-1380}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "overlay.sh: $*" >&2; exit 1; }
log() { echo "$*" >&2; }
[ "$(id -u)" = 0 ] || die "must run as root (it creates network namespaces)"

# ------------------------------------------------------------------ tools
ensure_tools() {
    local missing=()
    command -v ip >/dev/null || missing+=(iproute2)
    command -v ping >/dev/null || missing+=(iputils-ping)
    command -v iperf3 >/dev/null || missing+=(iperf3)
    command -v python3 >/dev/null || missing+=(python3)
    command -v wireguard-go >/dev/null || missing+=(wireguard-go)
    command -v wg >/dev/null || missing+=(wireguard-tools)
    { command -v nebula >/dev/null && command -v nebula-cert >/dev/null; } || missing+=(nebula)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing: ${missing[*]}"
        # --no-install-recommends: wireguard-tools would otherwise pull a kernel image.
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
            die "apt-get install ${missing[*]} failed"
    fi
    local t
    for t in ip ping iperf3 python3 wireguard-go wg nebula nebula-cert; do
        command -v "$t" >/dev/null || die "$t is still missing after installing"
    done
}

fpn_binaries() {
    if [ -n "${FPN_BIN:-}" ]; then
        BIN=$FPN_BIN
    else
        BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
        log "building release fpn-gms and fpn-node"
        (cd "$ROOT" && cargo build --release -q -p fpn-gms -p fpn-node --bins >&2) ||
            die "cargo build --release failed"
    fi
    [ -x "$BIN/fpn-gms" ] && [ -x "$BIN/fpn-node" ] || die "no fpn-gms/fpn-node in $BIN"
}

# ------------------------------------------------------------------ topology
ID="ovb$$"                          # unique per run; interface names stay < 16 chars
NSA="${ID}a"
NSB="${ID}b"
UA=198.18.0.1
UB=198.18.0.2
WORK=$(mktemp -d -t overlay-bench.XXXXXX)
PIDS=()                             # processes this script started (ended by PID)
DAEMONS=()                          # the tunnel daemons of the current mode (CPU accounting)

inA() { ip netns exec "$NSA" "$@"; }
inB() { ip netns exec "$NSB" "$@"; }

stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

teardown() {
    local pid ns
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
    for ns in "$NSA" "$NSB"; do
        if [ -e "/run/netns/$ns" ]; then
            # Whatever still runs in our own namespaces was started by this script.
            for pid in $(ip netns pids "$ns" 2>/dev/null); do stop_pid "$pid"; done
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
    rm -f "/var/run/wireguard/${ID}wa.sock" "/var/run/wireguard/${ID}wb.sock"
}

on_exit() {
    local rc=$?
    teardown
    if [ "${KEEP:-0}" = 1 ] || [ $rc != 0 ]; then
        # Keys are never kept; logs are.
        find "$WORK" \( -name '*.key' -o -name 'node.key' \) -delete 2>/dev/null || true
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

wait_for() { # wait_for SECONDS CMD...: poll every 20 ms
    local end=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.02
    done
}

underlay() {
    teardown
    ip netns add "$NSA"
    ip netns add "$NSB"
    ip link add "${ID}va" netns "$NSA" mtu 1500 type veth peer name "${ID}vb" netns "$NSB" mtu 1500
    inA ip link set lo up
    inB ip link set lo up
    inA ip addr add "$UA/24" dev "${ID}va"
    inB ip addr add "$UB/24" dev "${ID}vb"
    inA ip link set "${ID}va" up
    inB ip link set "${ID}vb" up
    wait_for 5 inA ping -c1 -W1 -q "$UB" || die "the veth link does not come up"
}

spawn() { # spawn NS LOG CMD...: runs CMD in NS in the background, remembers its PID
    local ns=$1 logf=$2
    shift 2
    # ip netns exec and env exec the command, so $! is the command's own PID.
    ip netns exec "$ns" "$@" >"$logf" 2>&1 &
    PIDS+=($!)
}

daemon() { # like spawn, for a tunnel daemon whose CPU time is reported
    spawn "$@"
    DAEMONS+=("${PIDS[-1]}")
}

daemon_ticks() { # user+system clock ticks of the tunnel daemons so far
    local pid t=0
    for pid in "${DAEMONS[@]}"; do
        [ -r "/proc/$pid/stat" ] || continue
        t=$((t + $(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')))
    done
    echo $t
}

# ------------------------------------------------------------------ tunnels
# Each *_up sets DST (B's tunnel address) once both ends are configured.

raw_up() {
    DST=$UB
    # The first packet then includes ARP, as a new peer on a LAN would.
    ip -n "$NSA" neigh flush dev "${ID}va"
}

wireguard_up() {
    local d="$WORK/wg" ka kb
    rm -rf "$d"
    mkdir -p "$d"
    (umask 077 && wg genkey >"$d/a.key" && wg genkey >"$d/b.key")
    ka=$(wg pubkey <"$d/a.key")
    kb=$(wg pubkey <"$d/b.key")
    daemon "$NSA" "$d/a.log" env WG_PROCESS_FOREGROUND=1 wireguard-go -f "${ID}wa"
    daemon "$NSB" "$d/b.log" env WG_PROCESS_FOREGROUND=1 wireguard-go -f "${ID}wb"
    wait_for 10 test -S "/var/run/wireguard/${ID}wa.sock" || die "wireguard-go A did not start"
    wait_for 10 test -S "/var/run/wireguard/${ID}wb.sock" || die "wireguard-go B did not start"
    inA wg set "${ID}wa" private-key "$d/a.key" listen-port 51820 \
        peer "$kb" endpoint "$UB:51820" allowed-ips 100.64.0.2/32
    inB wg set "${ID}wb" private-key "$d/b.key" listen-port 51820 \
        peer "$ka" endpoint "$UA:51820" allowed-ips 100.64.0.1/32
    inA ip addr add 100.64.0.1/24 dev "${ID}wa"
    inB ip addr add 100.64.0.2/24 dev "${ID}wb"
    inA ip link set "${ID}wa" mtu "$TUN_MTU" up
    inB ip link set "${ID}wb" mtu "$TUN_MTU" up
    DST=100.64.0.2
}

nebula_conf() { # name underlay tun_if lighthouse
    cat <<EOF
pki:
  ca: $WORK/nebula/ca.crt
  cert: $WORK/nebula/$1.crt
  key: $WORK/nebula/$1.key
static_host_map:
  "100.64.0.1": ["$UA:4242"]
lighthouse:
  am_lighthouse: $4
  hosts: $([ "$4" = true ] && echo '[]' || echo '["100.64.0.1"]')
listen:
  host: $2
  port: 4242
punchy:
  punch: false
tun:
  dev: $3
  mtu: $TUN_MTU
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
    local d="$WORK/nebula"
    rm -rf "$d"
    mkdir -p "$d"
    nebula-cert ca -name overlay-bench -out-crt "$d/ca.crt" -out-key "$d/ca.key"
    nebula-cert sign -ca-crt "$d/ca.crt" -ca-key "$d/ca.key" -name a -ip 100.64.0.1/24 \
        -out-crt "$d/a.crt" -out-key "$d/a.key"
    nebula-cert sign -ca-crt "$d/ca.crt" -ca-key "$d/ca.key" -name b -ip 100.64.0.2/24 \
        -out-crt "$d/b.crt" -out-key "$d/b.key"
    nebula_conf a "$UA" "${ID}na" true >"$d/a.yml"
    nebula_conf b "$UB" "${ID}nb" false >"$d/b.yml"
    daemon "$NSA" "$d/a.log" nebula -config "$d/a.yml"
    daemon "$NSB" "$d/b.log" nebula -config "$d/b.yml"
    wait_for 10 has_addr "$NSA" "${ID}na" 100.64.0.1 || die "nebula A did not come up"
    wait_for 10 has_addr "$NSB" "${ID}nb" 100.64.0.2 || die "nebula B did not come up"
    DST=100.64.0.2
}

has_addr() { ip -n "$1" -4 -o addr show dev "$2" 2>/dev/null | grep -q " $3/"; }

json_field() { # json_field FIELD < json
    python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

fpn_up() {
    local d="$WORK/fpn" gms n ns tok
    rm -rf "$d"
    mkdir -p "$d"
    gms=(env FPN_GMS_DATA="$d/gms" "$BIN/fpn-gms")
    "${gms[@]}" init --zone bench.fpn. --listen "$UA:7700" --public-addr "$UA:7700" >"$d/init.log" 2>&1 ||
        die "fpn-gms init failed: $(cat "$d/init.log")"
    spawn "$NSA" "$d/gms.log" "${gms[@]}" serve
    wait_for 10 "${gms[@]}" status || die "fpn-gms did not start: $(tail -5 "$d/gms.log")"
    "${gms[@]}" group add 1 --name bench >/dev/null
    for n in a b; do
        "${gms[@]}" ge add "$n" --kind ges --mode op --group 1 >/dev/null
        tok=$("${gms[@]}" token create "$n" --json | json_field token)
        [ $n = a ] && ns=$NSA || ns=$NSB
        ip netns exec "$ns" "$BIN/fpn-node" enroll "$tok" --state "$d/$n" --json >"$d/$n.enroll.json" ||
            die "fpn-node enroll $n failed"
        cat >"$d/$n.toml" <<EOF
tun_name = "${ID}f$n"
mtu = $TUN_MTU
listen = "0.0.0.0:7718"
dns = false
log = "info"
EOF
        daemon "$ns" "$d/$n.log" "$BIN/fpn-node" up --state "$d/$n" --config "$d/$n.toml"
    done
    for n in a b; do
        wait_for 20 grep -q "node ready" "$d/$n.log" || die "fpn-node $n not ready: $(tail -5 "$d/$n.log")"
    done
    DST=$(json_field overlay <"$d/b.enroll.json")
}

# ------------------------------------------------------------------ measurements
UDP_ECHO='
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    d, a = s.recvfrom(4096)
    s.sendto(d, a)
'
# Each flow: a fresh socket (new source port), one datagram, the echo timed in-process.
NEW_FLOWS='
import json, socket, sys, time
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.bind(("0.0.0.0", 0))
    t = time.perf_counter()
    s.sendto(b"x" * 64, (dst, port))
    try:
        s.recvfrom(4096)
        out.append(round((time.perf_counter() - t) * 1000, 3))
    except socket.timeout:
        out.append(None)
    s.close()
    time.sleep(0.05)
print(json.dumps(out))
'
STATS='
import json, statistics, sys
v = json.load(sys.stdin)
ok = sorted(x for x in v if x is not None)
print(f"{statistics.median(ok):.3f} {max(ok):.3f} {len(v) - len(ok)}" if ok else "NA NA %d" % len(v))
'
IPERF_RATE='
import json, sys
j = json.load(sys.stdin)["end"]
print("%.3f %d" % (j["sum_received"]["bits_per_second"] / 1e9, j["sum_sent"].get("retransmits", 0)))
'

ACTIONS='
import collections, json, sys
c = collections.Counter(f["action"] for f in json.load(sys.stdin)["flows"])
print(",".join("%s=%d" % kv for kv in sorted(c.items())) or "none")
'

cold_ping() { # RTT of the first ping (up to 10 s for the tunnel to deliver it)
    local out
    out=$(inA ping -n -c 1 -W 10 "$DST" 2>&1) || { echo NA; return; }
    sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' <<<"$out" | head -1
}

warm_ping() {
    local out
    out=$(inA ping -n -q -c "$PINGS" -i 0.2 "$DST" 2>&1) || { echo NA; return; }
    awk -F/ '/^rtt|^round-trip/ { print $5 }' <<<"$out"
}

iperf() { # iperf STREAMS -> "Gbit/s-at-the-receiver retransmits daemon-cores"
    local f="$WORK/iperf-$MODE-$1.json" t0 t1 d0 d1
    d0=$(daemon_ticks)
    t0=$EPOCHREALTIME
    if timeout $((DURATION + 30)) ip netns exec "$NSA" iperf3 -c "$DST" -p 5201 -t "$DURATION" -P "$1" \
        -J --connect-timeout 5000 >"$f" 2>&1; then
        t1=$EPOCHREALTIME
        d1=$(daemon_ticks)
        echo "$(python3 -c "$IPERF_RATE" <"$f") $(awk -v d=$((d1 - d0)) -v hz="$(getconf CLK_TCK)" \
            -v t0="$t0" -v t1="$t1" -v n=${#DAEMONS[@]} 'BEGIN { if (n == 0) print "NA"; else printf "%.2f", d / hz / (t1 - t0) }')"
    else
        log "  iperf3 -P $1 failed (see $f)"
        echo NA NA NA
    fi
}

declare -A R   # R[mode.metric]: this round's value, then the aggregate over rounds
declare -A RNG # RNG[mode.metric]: "min..max" over rounds
METRICS="tcp1 retr1 cpu1 tcp4 retr4 cpu4 ping cold flow1 flow1max flowlost"
AGGREGATE='
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
names = sys.argv[2].split()
for mode in dict.fromkeys(r[1] for r in rows):
    for i, name in enumerate(names):
        vals = []
        for r in rows:
            if r[1] == mode:
                try:
                    vals.append(float(r[2 + i]))
                except ValueError:
                    pass
        if not vals:
            print(mode, name, "NA", "NA", "NA")
            continue
        agg = sum(vals) if name == "flowlost" else max(vals) if name == "flow1max" else statistics.median(vals)
        g = lambda v: ("%d" % v) if name.startswith("retr") or name == "flowlost" else ("%.3g" % v if v < 100 else "%.0f" % v)
        print(mode, name, g(agg), g(min(vals)), g(max(vals)))
'

measure() {
    MODE=$1
    log "== $MODE"
    underlay
    case $MODE in
        raw) raw_up ;;
        wireguard-go) wireguard_up ;;
        nebula) nebula_up ;;
        fpn) fpn_up ;;
    esac
    R[$MODE.cold]=$(cold_ping)
    spawn "$NSB" "$WORK/udp-echo-$MODE.log" python3 -c "$UDP_ECHO" 7799
    spawn "$NSB" "$WORK/iperf3-server-$MODE.log" iperf3 -s -p 5201
    wait_for 5 sh -c "ip netns exec $NSB ss -lntH 'sport = :5201' | grep -q ." || die "iperf3 server did not start"
    R[$MODE.ping]=$(warm_ping)
    local flows
    flows=$(inA python3 -c "$NEW_FLOWS" "$DST" 7799 "$FLOWS")
    echo "$flows" >"$WORK/flows-$MODE.json"
    read -r R[$MODE.flow1] R[$MODE.flow1max] R[$MODE.flowlost] < <(python3 -c "$STATS" <<<"$flows")
    read -r R[$MODE.tcp1] R[$MODE.retr1] R[$MODE.cpu1] < <(iperf 1)
    sleep 1
    read -r R[$MODE.tcp4] R[$MODE.retr4] R[$MODE.cpu4] < <(iperf 4)
    log "   tcp1 ${R[$MODE.tcp1]} tcp4 ${R[$MODE.tcp4]} Gbit/s (retransmits ${R[$MODE.retr1]}/${R[$MODE.retr4]}," \
        "daemon cores ${R[$MODE.cpu1]}/${R[$MODE.cpu4]}), ping ${R[$MODE.ping]} ms," \
        "cold ${R[$MODE.cold]} ms, new flow ${R[$MODE.flow1]} (max ${R[$MODE.flow1max]}," \
        "lost ${R[$MODE.flowlost]}) ms"
    diagnostics >"$WORK/diag-$MODE.txt" 2>&1 || true
    local k line="$ROUND $MODE"
    for k in $METRICS; do line="$line ${R[$MODE.$k]}"; done
    echo "$line" >>"$WORK/rounds.txt"
    R[$MODE.actions]=-
    if [ "$MODE" = fpn ]; then
        # What the flows above were: proves the numbers are for protected traffic.
        "$BIN/fpn-node" status --state "$WORK/fpn/b" --json >"$WORK/fpn-status-b.json" 2>&1 || true
        "$BIN/fpn-node" status --state "$WORK/fpn/a" --json >"$WORK/fpn-status.json" 2>&1 &&
            R[$MODE.actions]=$(python3 -c "$ACTIONS" <"$WORK/fpn-status.json") ||
            log "   fpn-node status failed: $(cat "$WORK/fpn-status.json")"
        log "   fpn flows at A by action: ${R[$MODE.actions]}"
    fi
    DAEMONS=()
    teardown
}

diagnostics() { # kernel drop counters of both namespaces, for reading after a run
    local ns
    for ns in "$NSA" "$NSB"; do
        echo "== $ns"
        ip netns exec "$ns" nstat -asz 2>/dev/null | grep -E 'Udp(InErrors|RcvbufErrors|SndbufErrors)|TcpRetransSegs' || true
        ip -n "$ns" -s link
    done
}

# ------------------------------------------------------------------ report
ratio() { # ratio VALUE BASE
    awk -v v="$1" -v b="$2" 'BEGIN { if (v == "NA" || b == "NA" || b == 0) print "-"; else printf "%.2fx", v / b }'
}

versions() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
    echo "load average before: $LOAD0"
    echo "iperf3: $(iperf3 --version | head -1)"
    echo "wireguard-go: $(wireguard-go --version 2>&1 | head -1)"
    echo "nebula: $(nebula -version 2>&1 | head -1)"
    echo "fpn: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "settings: DURATION=${DURATION}s PINGS=$PINGS FLOWS=$FLOWS REPEAT=$REPEAT TUN_MTU=$TUN_MTU"
}

report() {
    local m b=raw
    case $FORMAT in
        json)
            printf '{"date":"%s","cpus":%s,"load_before":"%s","duration_s":%s,"pings":%s,"flows":%s,"rounds":%s,"tun_mtu":%s,"modes":[' \
                "$(date -u +%FT%TZ)" "$(nproc)" "$LOAD0" "$DURATION" "$PINGS" "$FLOWS" "$REPEAT" "$TUN_MTU"
            local sep=
            for m in "${MODES[@]}"; do
                printf '%s{"mode":"%s"' "$sep" "$m"
                sep=,
                local k
                for k in tcp1:tcp1_gbps retr1:tcp1_retransmits cpu1:tcp1_daemon_cores \
                    tcp4:tcp4_gbps retr4:tcp4_retransmits cpu4:tcp4_daemon_cores ping:ping_avg_ms \
                    cold:cold_first_ping_ms flow1:new_flow_first_ms flow1max:new_flow_first_max_ms \
                    flowlost:new_flows_lost; do
                    printf ',"%s":%s' "${k#*:}" "$(num "${R[$m.${k%%:*}]}")"
                done
                for k in tcp1 tcp4 ping; do
                    printf ',"%s_range":[%s]' "$k" "$(sed 's/\.\./,/; s/NA/null/g' <<<"${RNG[$m.$k]}")"
                done
                printf ',"fpn_flow_actions":"%s"}' "${R[$m.actions]}"
            done
            printf ']}\n'
            ;;
        markdown)
            echo "| mode | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | retransmits 1/4 | daemon cores 1/4 | ping avg ms | first ping, cold ms | new flow, first packet ms (median / max) |"
            echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
            for m in "${MODES[@]}"; do
                printf '| %s | %s (%s)%s | %s (%s)%s | %s / %s | %s / %s | %s (%s) | %s | %s / %s%s |\n' "$m" \
                    "${R[$m.tcp1]}" "$(ratio "${R[$m.tcp1]}" "${R[$b.tcp1]:-NA}")" "$(range "$m" tcp1)" \
                    "${R[$m.tcp4]}" "$(ratio "${R[$m.tcp4]}" "${R[$b.tcp4]:-NA}")" "$(range "$m" tcp4)" \
                    "${R[$m.retr1]}" "${R[$m.retr4]}" "${R[$m.cpu1]}" "${R[$m.cpu4]}" \
                    "${R[$m.ping]}" "$(ratio "${R[$m.ping]}" "${R[$b.ping]:-NA}")" \
                    "${R[$m.cold]}" "${R[$m.flow1]}" "${R[$m.flow1max]}" "$(lost "$m")"
            done
            ;;
        table)
            versions
            printf '\n%-13s %16s %16s %13s %11s %16s %9s %20s\n' mode "tcp1 Gbit/s" "tcp4 Gbit/s" \
                "retr 1/4" "cores 1/4" "ping avg ms" "cold ms" "new flow med/max ms"
            for m in "${MODES[@]}"; do
                printf '%-13s %7s %8s %7s %8s %13s %11s %7s %8s %9s %20s%s\n' "$m" \
                    "${R[$m.tcp1]}" "($(ratio "${R[$m.tcp1]}" "${R[$b.tcp1]:-NA}"))" \
                    "${R[$m.tcp4]}" "($(ratio "${R[$m.tcp4]}" "${R[$b.tcp4]:-NA}"))" \
                    "${R[$m.retr1]}/${R[$m.retr4]}" "${R[$m.cpu1]}/${R[$m.cpu4]}" \
                    "${R[$m.ping]}" "($(ratio "${R[$m.ping]}" "${R[$b.ping]:-NA}"))" \
                    "${R[$m.cold]}" "${R[$m.flow1]}/${R[$m.flow1max]}" "$(lost "$m")"
            done
            if [ "$REPEAT" != 1 ]; then
                echo "(medians of $REPEAT rounds; ranges below)"
                for m in "${MODES[@]}"; do
                    printf '%-13s tcp1 [%s]  tcp4 [%s]  ping [%s]\n' "$m" "${RNG[$m.tcp1]}" "${RNG[$m.tcp4]}" "${RNG[$m.ping]}"
                done
            fi
            echo "(ratios against raw veth in parentheses; cores = CPU of both tunnel daemons during the"
            echo " iperf3 run; see the head of bench/overlay.sh for what each column is)"
            [ -z "${R[fpn.actions]:-}" ] || echo "fpn flows at A by action: ${R[fpn.actions]}"
            ;;
    esac
}

range() { [ "$REPEAT" = 1 ] || echo " [${RNG[$1.$2]}]"; }

lost() { [ "${R[$1.flowlost]}" = 0 ] || echo " (${R[$1.flowlost]} of $((FLOWS * REPEAT)) new flows lost)"; }

num() { [ "$1" = NA ] && echo null || echo "$1"; }

# ------------------------------------------------------------------ main
ensure_tools
for m in "${MODES[@]}"; do [ "$m" = fpn ] && fpn_binaries; done
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for ROUND in $(seq "$REPEAT"); do
    [ "$REPEAT" = 1 ] || log "--- round $ROUND of $REPEAT"
    for m in "${MODES[@]}"; do measure "$m"; done
done
while read -r m k v lo hi; do
    R[$m.$k]=$v
    RNG[$m.$k]="$lo..$hi"
done < <(python3 -c "$AGGREGATE" "$WORK/rounds.txt" "$METRICS")
report
