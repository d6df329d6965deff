#!/usr/bin/env bash
# Overlay benchmark: docs/BENCHMARKS.md, "Overlay".
#
#   bench/overlay.sh [--json | --markdown] [MODE...]     (as root)
#
# MODE: raw wireguard-go nebula fpn fpn-native fpn6 fpn-native6 fpn-nogso (default:
# the first five, in that order). Every mode runs in the same invocation on
# a fresh copy of the same topology, so the ratios against raw veth compare
# like with like:
#
#   netns <id>a  veth 198.18.0.1/24  <==== veth, MTU 1500 ====>  198.18.0.2/24  netns <id>b
#   tunnel: A -> B over the tunnel's own addresses; every tunnel's MTU is $TUN_MTU
#
# UNDERLAY=6 gives the veth 2001:db8:18::1/64 and ::2/64 instead (no IPv4
# on it): every tunnel then runs over IPv6 (wireguard-go and nebula
# endpoints, fpn's GMS, QUIC and native carriers), raw is IPv6 on the veth.
# The native carrier's packets are IPv6 there (design note 63): fpn-native's
# IPv4 flows change family on the wire, fpn-native6's keep theirs.
#
#   fpn         fpn-gms in A, two fpn-node daemons, `carrier = "quic"`: every
#               packet rides QUIC DATAGRAM frames
#   fpn-native  the same with `carrier = "native"`: TCP and UDP flows leave as
#               the application's own packets with the PCCOM trailer, after
#               their first 300 ms on QUIC (NATIVE_GRACE); ICMP echo goes
#               natively too (design note 22)
#   fpn6, fpn-native6  the same daemons as fpn and fpn-native, the traffic
#               to B's IPv6 overlay address (design note 59): on an IPv4
#               underlay its TCP, UDP and ICMPv6 echoes cross natively as
#               IPv4 packets (the header swapped in place; notes 59, 62)
#   fpn-nogso   fpn with `quic_gso = false`: the QUIC carrier sends one UDP
#               datagram per syscall instead of a GSO batch (what GSO gains
#               is fpn against this row; receive-side GRO stays on)
#
# Nothing is sent outside the two namespaces this script creates; they, the
# processes it started and its temporary directory are removed on exit,
# also after a failure or Ctrl-C.
#
# Measured per mode, A -> B through the tunnel:
#   tcp1, tcp4  iperf3 TCP, $DURATION s, 1 and 4 streams: receiver Gbit/s, the
#               sender's retransmissions, the CPU both tunnel daemons used
#               meanwhile (cores: CPU seconds per second of the run) and
#               that CPU per Gbit/s (cores / Gbit/s: lower is cheaper)
#   ping        ping -c $PINGS -i 0.2 on the warm tunnel: average RTT, ms
#   udp-echo    one UDP socket held open past fpn's 300 ms new-flow grace,
#               then $PINGS 64-byte datagrams at 0.2 s to a UDP echo server
#               on B, each echo timed in-process: average RTT, ms (for
#               fpn-native the native carrier's round trip; the echo server
#               is Python, so compare against the raw row)
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
#               Median and max, ms. For fpn each such flow is fast-opened
#               on the pair epoch the warm tunnel's first negotiation left
#               (design note 64: the first packet leaves at once, a FOP
#               beside it); with FPN_NODE_FAST_OPEN=0 in the environment
#               (the nodes inherit it) each is negotiated (DPRP) before its
#               first packet is released. WireGuard and nebula have no
#               per-flow state, so theirs is a plain RTT.
#   tcp16       with TCP16=1 (default off), iperf3 with 16 streams after
#               the 4-stream run, measured the same way (a separate table)
#   storm       with STORM_SECS > 0 (default 0: off), after the other
#               measurements, the connection storm of issue 13 with
#               fpn-storm (overlay-tests): for STORM_SECS seconds each,
#               $STORM_CONC TCP connections at a time (closed loop: connect,
#               64-byte request, answer, close) to a server on B, then
#               $STORM_CONC UDP queries at a time, each from a new socket
#               (a new source port, as a resolver sends them): completed
#               per second, the 99th-percentile latency (ms) and the failed
#               ones (no answer within 3 s). A's namespace gets
#               ip_local_port_range 1024-65535 and tcp_tw_reuse = 1, so
#               ports are not reused within a 10 s storm below about 6 000
#               connections a second. For fpn every such flow is a new flow
#               (fast-opened on the pair epoch, or negotiated with
#               FPN_NODE_FAST_OPEN=0); the log shows its fast-open and
#               refusal counters after the storm, and each storm's CPU
#               of the tunnel daemons (both ends) per 1000 completed, in
#               ms. With STORM_PERF=1 the
#               fpn rows' UDP storm runs under `perf record` (call graphs,
#               $STORM_PERF_HZ samples per CPU second) of both daemons, and
#               the log shows their CPU per query by thread and function
#               (bench/perf-top.py); perf slows the storm, so such a
#               round's rates are not comparable.
#
# Required checks: a round that fails one is not counted in the medians but
# reported (failed rounds per mode, with the reason). Every mode: its tunnel
# came up and iperf3, ping and the UDP echo answered. fpn and fpn-native,
# from `fpn-node status --json` on A before and after the iperf3 runs:
#   - peer b's carrier is the one the row claims (quic / native);
#   - encryption: every iperf3 flow (TCP to port 5201) has action `encrypt`
#     (PCCOM) and those flows' bytes out are at least what iperf3 received,
#     so the measured traffic was PCCOM-protected. For `fpn` this status
#     check is the encryption check: QUIC's own TLS would hide a plaintext
#     marker on the wire whatever PCCOM does, so a capture proves nothing;
#   - fpn: the counters native_out and native_in did not move;
#     fpn-native: native_out moved by at least 80 % of the iperf3 flows'
#     packets out (the rest: the 300 ms grace per connection) and native_in
#     moved (the ACKs came back natively).
# fpn-native also: a capture on A's veth (AF_PACKET, in Python) while a UDP
# flow held past the grace carries a random marker through the overlay: the
# marker must NOT be in the capture, at least one of its packets must be
# native (A:port -> B:7799 UDP, payload = marker + the 24-byte PCCOM
# trailer) and 3 of 5 echoes must come back; then the control: the same
# marker sent raw to B's underlay address MUST be in the capture (the
# capture works). SELFTEST_PLAIN=1 sends the "overlay" marker raw instead,
# so every fpn-native round must fail this check: a test of the check.
# SELFTEST_PCCOM_OFF=1 puts B in another group than A (both open mode), so
# their flows are plain (no PCCOM): every fpn and fpn-native round must fail.
#
# Socket buffers, the same for every tunnel: net.core.rmem_max and wmem_max
# are set to $SOCKBUF (default 4194304, 4 MiB) and rmem_default and
# wmem_default to twice that (what the kernel grants a socket that asks for
# $SOCKBUF: it doubles the request for its bookkeeping); the old values are
# restored on exit. So wireguard-go 0.0.20220316 (it sets no buffer: the
# defaults), nebula (listen.read_buffer/write_buffer = $SOCKBUF) and fpn-node
# (its QUIC UDP socket asks 8 MiB, capped to $SOCKBUF; the native carrier's
# raw send socket asks 4 MiB) all get 2 x $SOCKBUF per UDP/raw socket, as
# long as SOCKBUF <= 4 MiB (fpn's requests are fixed in its code). Each
# round's diagnostics file lists the UDP sockets' skmem (ss -uawnmp; ss
# shows none for raw sockets).
# fpn-native's NFQUEUE netlink socket forces its own 16 MiB (rx_nfq.rs).
#
# With REPEAT=n the modes run n times, interleaved (raw, wg, nebula, fpn,
# fpn-native, raw, ...), and the report shows medians over the rounds that
# passed (new-flow max: the max; lost flows: the sum) with [min..max], the
# load average before and after, the failed rounds with their reasons, and,
# when fpn-native ran, the issue's aims as same-run ratios.
#
# Environment: DURATION=10 (iperf3 seconds; QUICK=1 sets 3), PINGS=20,
# FLOWS=10, REPEAT=1, TUN_MTU=1380, SOCKBUF=4194304, TCP16=0, STORM_SECS=0,
# STORM_CONC=32, STORM_PERF=0, STORM_PERF_HZ=2000, SELFTEST_PLAIN=0,
# SELFTEST_PCCOM_OFF=0,
# FPN_BIN=<dir with release fpn-gms and fpn-node> (default: built here with
# cargo into $CARGO_TARGET_DIR or ./target), KEEP=1 keeps the work
# directory (logs, status snapshots, iperf3 JSON) after the run.
# Installs iperf3, wireguard-go, wireguard-tools and nebula with apt-get
# when missing, and stops with an error if that fails. Exit status: 0 when
# every round passed, 1 when one failed (the report is printed either way).
set -euo pipefail
export LC_ALL=C

FORMAT=table
MODES=()
for arg in "$@"; do
    case $arg in
        --json) FORMAT=json ;;
        --markdown | --md) FORMAT=markdown ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        raw | wireguard-go | nebula | fpn | fpn-native | fpn6 | fpn-native6 | fpn-nogso) MODES+=("$arg") ;;
        *) echo "overlay.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
[ ${#MODES[@]} -gt 0 ] || MODES=(raw wireguard-go nebula fpn fpn-native)

DURATION=${DURATION:-10}
[ "${QUICK:-0}" = 1 ] && DURATION=3
PINGS=${PINGS:-20}
FLOWS=${FLOWS:-10}
REPEAT=${REPEAT:-1}
TUN_MTU=${TUN_MTU:-1380}
SOCKBUF=${SOCKBUF:-4194304}
SELFTEST_PLAIN=${SELFTEST_PLAIN:-0}
STORM_SECS=${STORM_SECS:-0}
TCP16=${TCP16:-0}
STORM_CONC=${STORM_CONC:-32}
STORM_PERF=${STORM_PERF:-0}
STORM_PERF_HZ=${STORM_PERF_HZ:-2000}
SELFTEST_PCCOM_OFF=${SELFTEST_PCCOM_OFF:-0}
UNDERLAY=${UNDERLAY:-4}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"

log() { echo "$*" >&2; }
# die: this run (or, inside a round, this round) cannot go on. Inside a
# round the reason is kept for the report.
die() {
    echo "overlay.sh: $*" >&2
    [ -z "${ROUND_ERR:-}" ] || echo "$*" >"$ROUND_ERR"
    exit 1
}
[ "$(id -u)" = 0 ] || die "must run as root (it creates network namespaces)"
case $SOCKBUF in '' | *[!0-9]*) die "SOCKBUF must be a number of bytes" ;; esac
case $UNDERLAY in 4 | 6) ;; *) die "UNDERLAY must be 4 or 6" ;; esac
[[ $TCP16 =~ ^[01]$ ]] || die "TCP16 must be 0 or 1"
[[ $STORM_SECS =~ ^(0|[1-9][0-9]*)$ ]] || die "STORM_SECS must be a number of seconds (0: no storm)"
[[ $STORM_CONC =~ ^[1-9][0-9]*$ ]] || die "STORM_CONC must be a positive number"
[[ $STORM_PERF =~ ^[01]$ ]] || die "STORM_PERF must be 0 or 1"
[[ $STORM_PERF_HZ =~ ^[1-9][0-9]*$ ]] || die "STORM_PERF_HZ must be a positive number"
[ "$STORM_PERF" != 1 ] || command -v perf >/dev/null || die "STORM_PERF=1 needs perf (linux-perf)"

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

storm_binary() { # the storm's client and server (overlay-tests)
    STORM_BIN="${FPN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}/fpn-storm"
    if [ ! -x "$STORM_BIN" ]; then
        STORM_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/fpn-storm"
        log "building release fpn-storm"
        (cd "$ROOT" && cargo build --release -q -p fpn-overlay-tests --bin fpn-storm >&2) ||
            die "cargo build --release -p fpn-overlay-tests --bin fpn-storm failed"
    fi
    [ -x "$STORM_BIN" ] || die "no fpn-storm at $STORM_BIN"
}

# ------------------------------------------------------------------ topology
ID="ovb$$"                          # unique per run; interface names stay < 16 chars
NSA="${ID}a"
NSB="${ID}b"
if [ "$UNDERLAY" = 6 ]; then
    UA=2001:db8:18::1
    UB=2001:db8:18::2
    ULEN=64
    EA="[$UA]"                      # UA and UB as the host part of host:port
    EB="[$UB]"
else
    UA=198.18.0.1
    UB=198.18.0.2
    ULEN=24
    EA=$UA
    EB=$UB
fi
WORK=$(mktemp -d -t overlay-bench.XXXXXX)
PIDS=()                             # processes this script started (ended by PID)
DAEMONS=()                          # the tunnel daemons of the current mode (CPU accounting)
SYSCTLS=(net.core.rmem_max net.core.wmem_max net.core.rmem_default net.core.wmem_default)
declare -A SYSCTL0                  # their values before this run, restored on exit

inA() { ip netns exec "$NSA" "$@"; }
inB() { ip netns exec "$NSB" "$@"; }

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

# The buffer limits are the host's (not per namespace): set for the run,
# put back after it.
set_buffers() {
    local k
    for k in "${SYSCTLS[@]}"; do SYSCTL0[$k]=$(sysctl -n "$k"); done
    sysctl -q -w net.core.rmem_max="$SOCKBUF" net.core.wmem_max="$SOCKBUF" \
        net.core.rmem_default=$((2 * SOCKBUF)) net.core.wmem_default=$((2 * SOCKBUF)) ||
        die "cannot set the socket buffer limits"
}

restore_buffers() {
    local k
    for k in "${!SYSCTL0[@]}"; do sysctl -q -w "$k=${SYSCTL0[$k]}" || true; done
}

on_exit() {
    local rc=$?
    teardown
    restore_buffers
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

underlay() {
    teardown
    ip netns add "$NSA"
    ip netns add "$NSB"
    ip link add "${ID}va" netns "$NSA" mtu 1500 type veth peer name "${ID}vb" netns "$NSB" mtu 1500
    inA ip link set lo up
    inB ip link set lo up
    # nodad: the address is usable at once (no duplicate address detection
    # on a link of two namespaces).
    inA ip addr add "$UA/$ULEN" dev "${ID}va" $([ "$UNDERLAY" = 4 ] || echo nodad)
    inB ip addr add "$UB/$ULEN" dev "${ID}vb" $([ "$UNDERLAY" = 4 ] || echo nodad)
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
        peer "$kb" endpoint "$EB:51820" allowed-ips 100.64.0.2/32
    inB wg set "${ID}wb" private-key "$d/b.key" listen-port 51820 \
        peer "$ka" endpoint "$EA:51820" allowed-ips 100.64.0.1/32
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
  "100.64.0.1": ["$EA:4242"]
lighthouse:
  am_lighthouse: $4
  hosts: $([ "$4" = true ] && echo '[]' || echo '["100.64.0.1"]')
listen:
  host: "$2"
  port: 4242
  read_buffer: $SOCKBUF
  write_buffer: $SOCKBUF
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

fpn_up() { # fpn_up CARRIER FAMILY [KEYS]: quic or native (the node config's `carrier` key), 4 or 6 (B's overlay address), more config lines
    local carrier=$1 extra=${3:-} d="$WORK/fpn" gms n ns tok
    rm -rf "$d"
    mkdir -p "$d"
    gms=(env FPN_GMS_DATA="$d/gms" "$BIN/fpn-gms")
    "${gms[@]}" init --zone bench.fpn. --listen "$EA:7700" --public-addr "$EA:7700" >"$d/init.log" 2>&1 ||
        die "fpn-gms init failed: $(cat "$d/init.log")"
    spawn "$NSA" "$d/gms.log" "${gms[@]}" serve
    wait_for 10 "${gms[@]}" status || die "fpn-gms did not start: $(tail -5 "$d/gms.log")"
    "${gms[@]}" group add 1 --name bench >/dev/null
    "${gms[@]}" group add 2 --name other >/dev/null
    for n in a b; do
        # SELFTEST_PCCOM_OFF: open-mode GEs without a shared group talk in
        # plain (no PCCOM), which the required checks must catch.
        local group=1
        [ "$SELFTEST_PCCOM_OFF" != 1 ] || [ $n = a ] || group=2
        "${gms[@]}" ge add "$n" --kind ges --mode op --group $group >/dev/null
        tok=$("${gms[@]}" token create "$n" --json | json_field token)
        [ $n = a ] && ns=$NSA || ns=$NSB
        ip netns exec "$ns" "$BIN/fpn-node" enroll "$tok" --state "$d/$n" --json >"$d/$n.enroll.json" ||
            die "fpn-node enroll $n failed"
        cat >"$d/$n.toml" <<EOF
tun_name = "${ID}f$n"
mtu = $TUN_MTU
listen = "$([ "$UNDERLAY" = 4 ] && echo 0.0.0.0 || echo '[::]'):7718"
dns = false
log = "info"
carrier = "$carrier"
$extra
EOF
        daemon "$ns" "$d/$n.log" "$BIN/fpn-node" up --state "$d/$n" --config "$d/$n.toml"
    done
    for n in a b; do
        wait_for 20 grep -q "node ready" "$d/$n.log" || die "fpn-node $n not ready: $(tail -5 "$d/$n.log")"
    done
    DST=$(json_field overlay <"$d/b.enroll.json")
    if [ "$2" = 6 ]; then
        "$BIN/fpn-node" status --state "$d/b" --json >"$d/b.status.json" || die "fpn-node status b failed"
        DST=$(json_field overlay6 <"$d/b.status.json")
        case $DST in *:*) ;; *) die "b has no IPv6 overlay address: $DST" ;; esac
        wait_for 5 inA ping -6 -c1 -W1 -q "$DST" || die "b's IPv6 overlay address $DST does not answer"
    fi
}

# ------------------------------------------------------------------ measurements
# ------------------------------------------------------------------ measurements
# The echo server takes both families (one dual-stack socket); the clients
# use the destination's.
UDP_ECHO='
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
while True:
    d, a = s.recvfrom(4096)
    s.sendto(d, a)
'
# Each flow: a fresh socket (new source port), one datagram, the echo timed in-process.
NEW_FLOWS='
import json, socket, sys, time
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
for _ in range(n):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", 0))
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
# One flow held past fpn's 300 ms new-flow grace (so fpn-native measures its
# native path), then n echoes at 0.2 s: "average-ms lost min-median-max" (ms).
UDP_RTT='
import socket, sys, time
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(1)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", 0))
s.sendto(b"warm-up", (dst, port))
try:
    s.recvfrom(4096)
except socket.timeout:
    pass
time.sleep(0.8)
rtts = []
for i in range(n):
    msg = b"%063d" % i
    t = time.perf_counter()
    s.sendto(msg, (dst, port))
    try:
        while s.recvfrom(4096)[0] != msg:  # a late echo of an earlier one
            pass
        rtts.append((time.perf_counter() - t) * 1000)
    except socket.timeout:
        pass
    time.sleep(0.2)
rtts.sort()
print("%.3f %d %.3f-%.3f-%.3f" % (sum(rtts) / len(rtts), n - len(rtts), rtts[0], rtts[len(rtts) // 2], rtts[-1]) if rtts else "NA %d -" % n)
'
STATS='
import json, statistics, sys
v = json.load(sys.stdin)
ok = sorted(x for x in v if x is not None)
print(f"{statistics.median(ok):.3f} {max(ok):.3f} {len(v) - len(ok)}" if ok else "NA NA %d" % len(v))
'
# "Gbit/s-at-the-receiver retransmits bytes-received"
IPERF_RATE='
import json, sys
j = json.load(sys.stdin)["end"]
r = j["sum_received"]
print("%.3f %d %d" % (r["bits_per_second"] / 1e9, j["sum_sent"].get("retransmits", 0), r["bytes"]))
'
ACTIONS='
import collections, json, sys
c = collections.Counter(f["action"] for f in json.load(sys.stdin)["flows"])
print(",".join("%s=%d" % kv for kv in sorted(c.items())) or "none")
'
# The required fpn checks on `fpn-node status --json` of A before and after
# the iperf3 runs (see the header). Prints "ok" or the reasons, "; "-joined,
# then one line of evidence for the log.
FPN_CHECK='
import json, sys
mode, before, after, rx = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3])), int(sys.argv[4])
want = "native" if mode.startswith("fpn-native") else "quic"
errs = []
peer = next((p for p in after.get("peers", []) if p.get("name") == "b"), None)
if peer is None:
    errs.append("peer b missing from status")
elif peer.get("carrier") != want:
    errs.append("peer b carrier %s (path %s), not %s" % (peer.get("carrier"), peer.get("path"), want))
flows = [f for f in after.get("flows", []) if f.get("proto") == "tcp" and f.get("dport") == 5201]
enc = sum(f["bytes_out"] for f in flows if f.get("action") == "encrypt")
pkts = sum(f["packets_out"] for f in flows)
other = sorted({f.get("action") for f in flows} - {"encrypt"})
if not flows:
    errs.append("no iperf3 flow in status")
if other:
    errs.append("iperf3 flows with action " + ",".join(map(str, other)) + ", not only encrypt")
if enc < rx:
    errs.append("encrypted iperf3 bytes out %d < %d bytes iperf3 received" % (enc, rx))
d = {k: after["counters"].get(k, 0) - before["counters"].get(k, 0) for k in ("native_out", "native_in", "native_in_rejected", "data_out")}
if mode.startswith("fpn-native"):
    if d["native_out"] < 0.8 * pkts:
        errs.append("native_out +%d < 80%% of the iperf3 flows %d packets out" % (d["native_out"], pkts))
    if d["native_in"] == 0:
        errs.append("native_in did not move")
elif d["native_out"] or d["native_in"]:
    errs.append("native counters moved on the QUIC row (out +%d, in +%d)" % (d["native_out"], d["native_in"]))
print("; ".join(errs) or "ok")
print("peer b %s (%s); %d iperf3 flows, %d encrypted bytes out (iperf3 received %d), %d packets out; native_out +%d, native_in +%d, native_in_rejected +%d, data_out +%d" % (
    peer and peer.get("carrier"), peer and peer.get("path"), len(flows), enc, rx, pkts,
    d["native_out"], d["native_in"], d["native_in_rejected"], d["data_out"]))
'
# fpn-native plaintext check (see the header), run in A: captures A's veth
# with an AF_PACKET socket while a marker crosses the overlay on a UDP flow
# held past the grace, then while the same marker goes raw (the control).
# Prints one JSON object.
MARKER_CHECK='
import json, os, socket, struct, sys, time
dst, port, ua, ub, ifname, raw_instead = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6] == "1"
marker = b"fpn-bench-marker-" + os.urandom(12).hex().encode()
cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
cap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
cap.bind((ifname, 0))
cap.setblocking(False)
def drain():
    out = []
    while True:
        try:
            out.append(cap.recv(65535))
        except BlockingIOError:
            return out
def same(a, b):
    return socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a) == b
def udp_payload_lens(frames, sport):
    # UDP ua:sport -> ub:port on the underlay (IPv4, ethertype 0x0800, or
    # IPv6 without extension headers, 0x86dd): the UDP payload lengths
    lens = []
    for f in frames:
        if len(f) >= 42 and f[12:14] == b"\x08\x00":
            ip = f[14:]
            ihl = (ip[0] & 15) * 4
            if ip[9] != 17 or not same(ua, ip[12:16]) or not same(ub, ip[16:20]):
                continue
        elif len(f) >= 62 and f[12:14] == b"\x86\xdd":
            ip = f[14:]
            ihl = 40
            if ip[6] != 17 or not same(ua, ip[8:24]) or not same(ub, ip[24:40]):
                continue
        else:
            continue
        sp, dp, ulen = struct.unpack("!HHH", ip[ihl:ihl + 6])
        if sp == sport and dp == port:
            lens.append(ulen - 8)
    return lens
drain()
to = (ub if raw_instead else dst, port)
fam = socket.AF_INET6 if ":" in to[0] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(0.5)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", 0))
s.sendto(b"warm-up", to)
try:
    s.recvfrom(4096)
except socket.timeout:
    pass
time.sleep(0.8)
echoes = 0
for _ in range(5):
    s.sendto(marker, to)
    try:
        if s.recvfrom(4096)[0] == marker:
            echoes += 1
    except socket.timeout:
        pass
time.sleep(0.1)
frames = drain()
lens = udp_payload_lens(frames, s.getsockname()[1])
c = socket.socket(socket.AF_INET6 if ":" in ub else socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(1)
c.sendto(marker, (ub, port))
try:
    c.recvfrom(4096)
except socket.timeout:
    pass
time.sleep(0.1)
control = drain()
print(json.dumps({
    "frames": len(frames), "echoes": echoes,
    "marker_in_overlay_capture": any(marker in f for f in frames),
    "native_marker_packets": lens.count(len(marker) + 24),
    "flow_payload_lengths": sorted(set(lens)), "marker_len": len(marker),
    "control_frames": len(control), "marker_in_control_capture": any(marker in f for f in control),
}))
'
MARKER_VERDICT='
import json, sys
r = json.load(sys.stdin)
errs = []
if r["marker_in_overlay_capture"]:
    errs.append("plaintext marker on the wire")
if r["native_marker_packets"] == 0:
    errs.append("no native marker packet (UDP payload = marker + 24-byte trailer) on the wire: lengths %s" % r["flow_payload_lengths"])
if r["echoes"] < 3:
    errs.append("only %d of 5 marker echoes came back" % r["echoes"])
if not r["marker_in_control_capture"]:
    errs.append("control: the raw marker is not in the capture (the capture does not work)")
print("; ".join(errs) or "ok")
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

iperf() { # iperf STREAMS -> "Gbit/s-at-the-receiver retransmits bytes-received daemon-cores"
    local f="$WORK/iperf-$MODE-$ROUND-$1.json" t0 t1 d0 d1
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
        echo NA NA 0 NA
    fi
}

per_gbit() { # per_gbit CORES GBITS: daemon cores per Gbit/s
    awk -v c="$1" -v g="$2" 'BEGIN { if (c == "NA" || g == "NA" || g == 0) print "NA"; else printf "%.3f", c / g }'
}

fpn_status() { # fpn_status NODE FILE: `fpn-node status --json` of a or b
    "$BIN/fpn-node" status --state "$WORK/fpn/$1" --json >"$2" 2>&1 ||
        { log "   fpn-node status $1 failed: $(head -3 "$2")"; return 1; }
}

storm() { # storm tcp|udp -> "completed-per-second p99-ms failed daemon-CPU-ms-per-1000"
    local f="$WORK/storm-$MODE-$ROUND-$1.json" to="$DST:7801" d0 d1
    [[ $DST != *:* ]] || to="[$DST]:7801"
    d0=$(daemon_ticks)
    if timeout $((STORM_SECS + 30)) ip netns exec "$NSA" "$STORM_BIN" "$1" --to "$to" --secs "$STORM_SECS" \
        --concurrency "$STORM_CONC" >"$f" 2>"$f.err"; then
        d1=$(daemon_ticks)
        # p99 is null when nothing completed. The daemons' CPU (both
        # ends) per 1000 completed, in ms.
        python3 -c 'import json, sys; r = json.load(sys.stdin); t = int(sys.argv[1]) / int(sys.argv[2]); n = r["completed"]; print("%.0f %s %d %s" % (r["per_sec"], "NA" if r["p99_ms"] is None else "%.2f" % r["p99_ms"], r["failed"], "%.1f" % (t * 1e6 / n) if n and int(sys.argv[3]) else "NA"))' \
            "$((d1 - d0))" "$(getconf CLK_TCK)" "${#DAEMONS[@]}" <"$f" ||
            echo NA NA NA NA
        # Which flows failed (local port, when, why), to find in the logs.
        python3 -c 'import json, sys; r = json.load(sys.stdin); f = r.get("failures") or []; f and print(" ".join("%s@%sms:%s" % (x["port"], x["began_ms"], x["why"]) for x in f))' <"$f" 2>/dev/null |
            while read -r l; do log "   $1 storm failures (port@start:why): $l"; done
    else
        log "  fpn-storm $1 failed (see $f)"
        echo NA NA NA NA
    fi
}

# The counters that explain an fpn storm: its new flows and what refused them.
STORM_COUNTERS='
import json, sys
c = json.load(open(sys.argv[1])).get("counters", {})
keys = sorted(k for k in c if "fast" in k or "rate_limited" in k or "table_full" in k or "evict" in k or "parked" in k or "notice" in k
              or k in ("dprp_started", "dprp_established", "dprp_failed", "pit_entries", "held", "data_in_no_flow",
                       "policy_drops", "native_in_unknown", "native_ready_timeouts", "pending_drops", "icmp_sent",
                       "native_bindings_refused", "native_in_rejected", "native_in", "tun_out")
              or k.startswith("worker_"))
print(" ".join("%s=%s" % (k, c[k]) for k in keys))
'

METRICS="tcp1 retr1 cpu1 cpg1 tcp4 retr4 cpu4 cpg4 tcp16 retr16 cpu16 cpg16 ping urtt cold flow1 flow1max flowlost stcp stcp99 stcpu sudp sudp99 sudpcpu sfail"
# One round of one mode. Runs in a subshell (see main): it records its
# numbers in rounds.txt when every required check passed, else its reasons
# in failures.txt; nothing it sets survives it.
measure() {
    MODE=$1
    ROUND_ERR="$WORK/error-$MODE-$ROUND"
    trap teardown EXIT
    trap 'exit 130' INT TERM
    log "== $MODE (round $ROUND)"
    underlay
    case $MODE in
        raw) raw_up ;;
        wireguard-go) wireguard_up ;;
        nebula) nebula_up ;;
        fpn) fpn_up quic 4 ;;
        fpn-native) fpn_up native 4 ;;
        fpn6) fpn_up quic 6 ;;
        fpn-native6) fpn_up native 6 ;;
        fpn-nogso) fpn_up quic 4 "quic_gso = false" ;;
    esac
    local -A V
    local fails=() fpn=false
    case $MODE in fpn*) fpn=true ;; esac
    V[cold]=$(cold_ping)
    spawn "$NSB" "$WORK/udp-echo-$MODE.log" python3 -c "$UDP_ECHO" 7799
    spawn "$NSB" "$WORK/iperf3-server-$MODE.log" iperf3 -s -p 5201
    wait_for 5 sh -c "ip netns exec $NSB ss -lntH 'sport = :5201' | grep -q ." || die "iperf3 server did not start"
    V[ping]=$(warm_ping)
    local flows lost spread
    read -r V[urtt] lost spread < <(inA python3 -c "$UDP_RTT" "$DST" 7799 "$PINGS")
    flows=$(inA python3 -c "$NEW_FLOWS" "$DST" 7799 "$FLOWS")
    echo "$flows" >"$WORK/flows-$MODE-$ROUND.json"
    read -r V[flow1] V[flow1max] V[flowlost] < <(python3 -c "$STATS" <<<"$flows")
    local st0="$WORK/status-$MODE-$ROUND-before.json" st1="$WORK/status-$MODE-$ROUND-after.json" rx1 rx4 rx16=0
    local before=false
    if $fpn; then fpn_status a "$st0" && before=true; fi
    read -r V[tcp1] V[retr1] rx1 V[cpu1] < <(iperf 1)
    sleep 1
    read -r V[tcp4] V[retr4] rx4 V[cpu4] < <(iperf 4)
    V[cpg1]=$(per_gbit "${V[cpu1]}" "${V[tcp1]}")
    V[cpg4]=$(per_gbit "${V[cpu4]}" "${V[tcp4]}")
    V[tcp16]=NA V[retr16]=NA V[cpu16]=NA V[cpg16]=NA
    if [ "$TCP16" = 1 ]; then
        sleep 1
        read -r V[tcp16] V[retr16] rx16 V[cpu16] < <(iperf 16)
        V[cpg16]=$(per_gbit "${V[cpu16]}" "${V[tcp16]}")
        log "   tcp16 ${V[tcp16]} Gbit/s (retransmits ${V[retr16]}, daemon cores ${V[cpu16]}, per Gbit/s ${V[cpg16]})"
        [ "${V[tcp16]}" != NA ] || fails+=("no tcp16 result")
    fi
    log "   tcp1 ${V[tcp1]} tcp4 ${V[tcp4]} Gbit/s (retransmits ${V[retr1]}/${V[retr4]}," \
        "daemon cores ${V[cpu1]}/${V[cpu4]}, per Gbit/s ${V[cpg1]}/${V[cpg4]}), ping ${V[ping]} ms," \
        "udp echo ${V[urtt]} ms (min-median-max $spread, lost $lost), cold ${V[cold]} ms, new flow ${V[flow1]} (max ${V[flow1max]}," \
        "lost ${V[flowlost]}) ms"
    local k
    for k in tcp1 tcp4 ping; do [ "${V[$k]}" != NA ] || fails+=("no $k result"); done
    [ "${V[urtt]}" != NA ] || fails+=("no UDP echo came back")
    if $fpn; then
        local verdict evidence
        if $before && fpn_status a "$st1"; then
            verdict="the status check did not run" evidence=-
            { read -r verdict && read -r evidence; } < <(python3 -c "$FPN_CHECK" "$MODE" "$st0" "$st1" $((rx1 + rx4 + rx16)) 2>&1) || true
            log "   status: $evidence"
            [ "$verdict" = ok ] || fails+=("$verdict")
            python3 -c "$ACTIONS" <"$st1" >"$WORK/actions-$MODE"
            log "   fpn flows at A by action: $(cat "$WORK/actions-$MODE")"
        else
            fails+=("fpn-node status failed")
        fi
        fpn_status b "$WORK/status-$MODE-$ROUND-b.json" || true
    fi
    if [[ $MODE == fpn-native* ]]; then
        local mc="$WORK/marker-$MODE-$ROUND.json"
        inA python3 -c "$MARKER_CHECK" "$DST" 7799 "$UA" "$UB" "${ID}va" "$SELFTEST_PLAIN" >"$mc" 2>&1 ||
            die "the plaintext check did not run: $(tail -3 "$mc")"
        verdict=$(python3 -c "$MARKER_VERDICT" <"$mc")
        log "   plaintext check: $verdict ($(cat "$mc"))"
        [ "$verdict" = ok ] || fails+=("$verdict")
    fi
    V[stcp]=NA V[stcp99]=NA V[stcpu]=NA V[sudp]=NA V[sudp99]=NA V[sudpcpu]=NA V[sfail]=NA
    if [ "$STORM_SECS" -gt 0 ]; then
        local ftcp fudp
        inA sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
        spawn "$NSB" "$WORK/storm-server-$MODE.log" "$STORM_BIN" serve --port 7801
        wait_for 5 sh -c "ip netns exec $NSB ss -lntH 'sport = :7801' | grep -q ." || die "fpn-storm server did not start"
        read -r 'V[stcp]' 'V[stcp99]' ftcp 'V[stcpu]' < <(storm tcp)
        sleep 1
        local perf_pid="" pids=""
        if $fpn && [ "$STORM_PERF" = 1 ]; then
            # Both daemons (the only fpn-node processes in the namespaces).
            pids=$(for ns in "$NSA" "$NSB"; do for p in $(ip netns pids "$ns"); do
                if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = fpn-node ]; then echo "$ns=$p"; fi; done; done)
            if [ "$(wc -l <<<"$pids")" = 2 ]; then
                perf record -q -e cpu-clock -F "$STORM_PERF_HZ" --call-graph dwarf,16384 \
                    -p "$(sed 's/.*=//' <<<"$pids" | paste -sd,)" \
                    -o "$WORK/storm-$MODE-$ROUND.perf" >"$WORK/storm-$MODE-$ROUND.perf.log" 2>&1 &
                perf_pid=$!
                sleep 0.5 # attached before the storm starts
            else
                log "   STORM_PERF: the two fpn-node daemons not found ($pids): no profile"
            fi
        fi
        read -r 'V[sudp]' 'V[sudp99]' fudp 'V[sudpcpu]' < <(storm udp)
        if [ -n "$perf_pid" ]; then
            kill -INT "$perf_pid" 2>/dev/null || true
            wait "$perf_pid" || true
            local n=${V[sudp]%.*}
            [ "$n" = NA ] || n=$((n * STORM_SECS))
            if [ "$n" != NA ] && [ "$n" -gt 0 ] && [ -s "$WORK/storm-$MODE-$ROUND.perf" ]; then
                log "   CPU of the fpn daemons per UDP storm query, us (perf; bench/perf-top.py; A=${NSA}, B=${NSB}):"
                perf script -i "$WORK/storm-$MODE-$ROUND.perf" -F comm,pid,tid,period,ip,sym 2>/dev/null |
                    python3 "$ROOT/bench/perf-top.py" "$n" $(sed "s/^$NSA=/A=/; s/^$NSB=/B=/" <<<"$pids") |
                    while IFS= read -r l; do log "$l"; done ||
                    log "   (perf script or bench/perf-top.py failed)"
            else
                log "   STORM_PERF: no profile (see $WORK/storm-$MODE-$ROUND.perf.log)"
            fi
            rm -f "$WORK/storm-$MODE-$ROUND.perf"
        fi
        [ "$ftcp" = NA ] || [ "$fudp" = NA ] || V[sfail]=$((ftcp + fudp))
        log "   storm: TCP ${V[stcp]} connections/s (p99 ${V[stcp99]} ms, failed $ftcp)," \
            "UDP ${V[sudp]} queries/s (p99 ${V[sudp99]} ms, failed $fudp);" \
            "the daemons' CPU per 1000: TCP ${V[stcpu]} ms, UDP ${V[sudpcpu]} ms"
        if $fpn && fpn_status a "$WORK/status-$MODE-$ROUND-storm.json"; then
            log "   fpn counters at A after the storm: $(python3 -c "$STORM_COUNTERS" "$WORK/status-$MODE-$ROUND-storm.json")"
        fi
        if $fpn && fpn_status b "$WORK/status-$MODE-$ROUND-storm-b.json"; then
            log "   fpn counters at B after the storm: $(python3 -c "$STORM_COUNTERS" "$WORK/status-$MODE-$ROUND-storm-b.json")"
        fi
        [ "${V[stcp]}" != NA ] && [ "${V[sudp]}" != NA ] || fails+=("the storm did not run")
    fi
    diagnostics >"$WORK/diag-$MODE-$ROUND.txt" 2>&1 || true
    if [ ${#fails[@]} -gt 0 ]; then
        local why=${fails[0]} f
        for f in "${fails[@]:1}"; do why="$why; $f"; done
        log "   ROUND FAILED: $why"
        echo "$ROUND $MODE $why" >>"$WORK/failures.txt"
        return 0
    fi
    local line="$ROUND $MODE"
    for k in $METRICS; do line="$line ${V[$k]}"; done
    echo "$line" >>"$WORK/rounds.txt"
}

diagnostics() { # kernel drop counters and the daemons' socket buffers, for reading after a run
    local ns
    for ns in "$NSA" "$NSB"; do
        echo "== $ns"
        ip netns exec "$ns" nstat -asz 2>/dev/null | grep -E 'Udp(InErrors|RcvbufErrors|SndbufErrors)|TcpRetransSegs' || true
        ip netns exec "$ns" ss -uawnmp 2>/dev/null || true
        ip -n "$ns" -s link
    done
}

# ------------------------------------------------------------------ report
ratio() { # ratio VALUE BASE
    awk -v v="$1" -v b="$2" 'BEGIN { if (v == "NA" || b == "NA" || b == 0) print "-"; else printf "%.2fx", v / b }'
}

# The issue's aims (#8) as same-run ratios of the medians, when fpn-native
# ran: "name value aim met" lines (met: yes, no or NA).
AIMS='
import sys
r = dict(p for p in (l.split() for l in sys.stdin.read().splitlines()) if len(p) == 2)
f = lambda k: float(r[k]) if r.get(k, "NA") != "NA" else None
out = []
for s in ("1", "4"):
    n, q = f("fpn-native.tcp" + s), f("fpn.tcp" + s)
    peers = [v for v in (f("wireguard-go.tcp" + s), f("nebula.tcp" + s)) if v is not None]
    best = max(peers) if peers else None
    out.append(("native_vs_quic_tcp" + s, n / q if n and q else None, ">= 2x", 2.0, True))
    out.append(("native_vs_best_peer_tcp" + s, n / best if n and best else None, ">= 3x", 3.0, True))
out.append(("native_ping_avg_ms", f("fpn-native.ping"), "<= 0.15 ms", 0.15, False))
out.append(("native_udp_echo_avg_ms", f("fpn-native.urtt"), "<= 0.15 ms", 0.15, False))
for name, v, aim, bound, up in out:
    met = "NA" if v is None else ("yes" if (v >= bound if up else v <= bound) else "no")
    print(name, "NA" if v is None else ("%.2f" % v if up else "%.3f" % v), aim.replace(" ", "_"), met)
'

aims() { # prints the AIMS lines when fpn-native is among the modes
    local m k
    [[ " ${MODES[*]} " == *" fpn-native "* ]] || return 0
    for m in "${MODES[@]}"; do
        for k in tcp1 tcp4 ping urtt; do echo "$m.$k ${R[$m.$k]}"; done
    done | python3 -c "$AIMS"
}

aim_text() { # aim_text NAME: what an aim compares, in words
    case $1 in
        native_vs_quic_tcp1) echo "fpn-native / fpn (QUIC), TCP 1 stream" ;;
        native_vs_quic_tcp4) echo "fpn-native / fpn (QUIC), TCP 4 streams" ;;
        native_vs_best_peer_tcp1) echo "fpn-native / best of wireguard-go and nebula, TCP 1 stream" ;;
        native_vs_best_peer_tcp4) echo "fpn-native / best of wireguard-go and nebula, TCP 4 streams" ;;
        native_ping_avg_ms) echo "fpn-native ping avg (ICMP echo, native since note 22)" ;;
        native_udp_echo_avg_ms) echo "fpn-native UDP echo avg (native)" ;;
    esac
}

versions() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
    echo "load average before: $LOAD0, after: $LOAD1"
    echo "iperf3: $(iperf3 --version | head -1)"
    echo "wireguard-go: $(wireguard-go --version 2>&1 | head -1)"
    echo "nebula: $(nebula -version 2>&1 | head -1)"
    echo "fpn: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "underlay: IPv$UNDERLAY ($UA <-> $UB)"
    echo "settings: DURATION=${DURATION}s PINGS=$PINGS FLOWS=$FLOWS REPEAT=$REPEAT TUN_MTU=$TUN_MTU" \
        "SOCKBUF=$SOCKBUF (rmem/wmem_max; defaults $((2 * SOCKBUF)))$([ "$SELFTEST_PLAIN" != 1 ] || echo " SELFTEST_PLAIN=1")$([ "$SELFTEST_PCCOM_OFF" != 1 ] || echo " SELFTEST_PCCOM_OFF=1")"
}


report() {
    local m b=raw k
    case $FORMAT in
        json)
            printf '{"underlay":"ipv%s","date":"%s","cpus":%s,"load_before":"%s","load_after":"%s","duration_s":%s,"pings":%s,"flows":%s,"rounds":%s,"tun_mtu":%s,"socket_buffer_bytes":%s,"selftest_plain":%s,"selftest_pccom_off":%s,"modes":[' \
                "$UNDERLAY" "$(date -u +%FT%TZ)" "$(nproc)" "$LOAD0" "$LOAD1" "$DURATION" "$PINGS" "$FLOWS" "$REPEAT" \
                "$TUN_MTU" "$SOCKBUF" "$(bool "$SELFTEST_PLAIN")" "$(bool "$SELFTEST_PCCOM_OFF")"
            local sep=
            for m in "${MODES[@]}"; do
                printf '%s{"mode":"%s","rounds_passed":%s,"rounds_failed":%s' "$sep" "$m" "$(passed "$m")" "$(failed "$m")"
                sep=,
                for k in tcp1:tcp1_gbps retr1:tcp1_retransmits cpu1:tcp1_daemon_cores cpg1:tcp1_daemon_cores_per_gbps \
                    tcp4:tcp4_gbps retr4:tcp4_retransmits cpu4:tcp4_daemon_cores cpg4:tcp4_daemon_cores_per_gbps \
                    tcp16:tcp16_gbps retr16:tcp16_retransmits cpu16:tcp16_daemon_cores cpg16:tcp16_daemon_cores_per_gbps \
                    ping:ping_avg_ms urtt:udp_echo_avg_ms cold:cold_first_ping_ms flow1:new_flow_first_ms \
                    flow1max:new_flow_first_max_ms flowlost:new_flows_lost stcp:storm_tcp_per_s \
                    stcp99:storm_tcp_p99_ms stcpu:storm_tcp_cpu_ms_per_1000 sudp:storm_udp_per_s \
                    sudp99:storm_udp_p99_ms sudpcpu:storm_udp_cpu_ms_per_1000 sfail:storm_failed; do
                    printf ',"%s":%s' "${k#*:}" "$(num "${R[$m.${k%%:*}]}")"
                done
                for k in tcp1:tcp1 tcp4:tcp4 tcp16:tcp16 ping:ping urtt:udp_echo cpg1:tcp1_daemon_cores_per_gbps \
                    cpg4:tcp4_daemon_cores_per_gbps cpg16:tcp16_daemon_cores_per_gbps; do
                    printf ',"%s_range":[%s]' "${k#*:}" "$(sed 's/\.\./,/; s/NA/null/g' <<<"${RNG[$m.${k%%:*}]}")"
                done
                printf ',"failures":['
                local s2=
                while read -r _ _ why; do
                    printf '%s%s' "$s2" "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$why")"
                    s2=,
                done < <(grep " $m " "$WORK/failures.txt" 2>/dev/null || true)
                printf '],"fpn_flow_actions":"%s"}' "$(cat "$WORK/actions-$m" 2>/dev/null || echo -)"
            done
            printf '],"aims":['
            sep=
            while read -r k v aim met; do
                printf '%s{"aim":"%s","value":%s,"target":"%s","met":%s}' "$sep" "$k" "$(num "$v")" "${aim//_/ }" \
                    "$(case $met in yes) echo true ;; no) echo false ;; *) echo null ;; esac)"
                sep=,
            done < <(aims)
            printf ']}\n'
            ;;
        markdown)
            echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, Linux $(uname -r), fpn at commit" \
                "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown), IPv$UNDERLAY underlay:" \
                "medians of the rounds that passed of $REPEAT interleaved, [min..max];" \
                "load average $LOAD0 before, $LOAD1 after; iperf3 ${DURATION} s, TUN MTU $TUN_MTU," \
                "socket buffers $SOCKBUF (rmem/wmem_max; defaults $((2 * SOCKBUF)))."
            echo
            echo "| mode | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | retransmits 1 / 4 | daemon cores 1 / 4 | daemon cores per Gbit/s 1 / 4 | ping avg ms | UDP echo avg ms | first ping, cold ms | new flow, first packet ms (median / max) | rounds passed / failed |"
            echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
            for m in "${MODES[@]}"; do
                printf '| %s | %s (%s)%s | %s (%s)%s | %s / %s | %s / %s | %s%s / %s%s | %s (%s)%s | %s%s | %s | %s / %s%s | %s / %s |\n' "$m" \
                    "${R[$m.tcp1]}" "$(ratio "${R[$m.tcp1]}" "${R[$b.tcp1]:-NA}")" "$(range "$m" tcp1)" \
                    "${R[$m.tcp4]}" "$(ratio "${R[$m.tcp4]}" "${R[$b.tcp4]:-NA}")" "$(range "$m" tcp4)" \
                    "${R[$m.retr1]}" "${R[$m.retr4]}" "${R[$m.cpu1]}" "${R[$m.cpu4]}" \
                    "${R[$m.cpg1]}" "$(range "$m" cpg1)" "${R[$m.cpg4]}" "$(range "$m" cpg4)" \
                    "${R[$m.ping]}" "$(ratio "${R[$m.ping]}" "${R[$b.ping]:-NA}")" "$(range "$m" ping)" \
                    "${R[$m.urtt]}" "$(range "$m" urtt)" \
                    "${R[$m.cold]}" "${R[$m.flow1]}" "${R[$m.flow1max]}" "$(lost "$m")" \
                    "$(passed "$m")" "$(failed "$m")"
            done
            if [ "$TCP16" = 1 ]; then
                echo
                echo "TCP with 16 streams, ${DURATION} s:"
                echo
                echo "| mode | TCP 16 streams Gbit/s | retransmits | daemon cores | daemon cores per Gbit/s |"
                echo "| --- | --- | --- | --- | --- |"
                for m in "${MODES[@]}"; do
                    printf '| %s | %s (%s)%s | %s | %s | %s%s |\n' "$m" \
                        "${R[$m.tcp16]}" "$(ratio "${R[$m.tcp16]}" "${R[$b.tcp16]:-NA}")" "$(range "$m" tcp16)" \
                        "${R[$m.retr16]}" "${R[$m.cpu16]}" "${R[$m.cpg16]}" "$(range "$m" cpg16)"
                done
            fi
            if [ "$STORM_SECS" -gt 0 ]; then
                echo
                echo "Connection storm, ${STORM_SECS} s each, $STORM_CONC at a time (fpn-storm): completed per second, p99 latency; ratio against the best of wireguard-go and nebula:"
                echo
                echo "| mode | TCP connections/s | TCP p99 ms | UDP queries/s (new port each) | UDP p99 ms | failed |"
                echo "| --- | --- | --- | --- | --- | --- |"
                for m in "${MODES[@]}"; do
                    printf '| %s | %s (%s)%s | %s%s | %s (%s)%s | %s%s | %s |\n' "$m" \
                        "${R[$m.stcp]}" "$(ratio "${R[$m.stcp]}" "$(best_peer stcp)")" "$(range "$m" stcp)" \
                        "${R[$m.stcp99]}" "$(range "$m" stcp99)" \
                        "${R[$m.sudp]}" "$(ratio "${R[$m.sudp]}" "$(best_peer sudp)")" "$(range "$m" sudp)" \
                        "${R[$m.sudp99]}" "$(range "$m" sudp99)" "${R[$m.sfail]}"
                done
            fi
            if [ -s "$WORK/failures.txt" ]; then
                echo
                echo "Failed rounds (not in the medians):"
                echo
                while read -r k m why; do echo "- round $k, $m: $why"; done <"$WORK/failures.txt"
            fi
            local lines
            lines=$(aims)
            if [ -n "$lines" ]; then
                echo
                echo "| aim (#8), same run | value | target | met |"
                echo "| --- | --- | --- | --- |"
                while read -r k v aim met; do
                    echo "| $(aim_text "$k") | $v | ${aim//_/ } | $met |"
                done <<<"$lines"
            fi
            ;;
        table)
            versions
            printf '\n%-13s %16s %16s %13s %11s %11s %16s %8s %9s %20s %6s\n' mode "tcp1 Gbit/s" "tcp4 Gbit/s" \
                "retr 1/4" "cores 1/4" "c/Gb 1/4" "ping avg ms" "udp ms" "cold ms" "new flow med/max ms" "ok/bad"
            for m in "${MODES[@]}"; do
                printf '%-13s %7s %8s %7s %8s %13s %11s %11s %7s %8s %8s %9s %20s %6s%s\n' "$m" \
                    "${R[$m.tcp1]}" "($(ratio "${R[$m.tcp1]}" "${R[$b.tcp1]:-NA}"))" \
                    "${R[$m.tcp4]}" "($(ratio "${R[$m.tcp4]}" "${R[$b.tcp4]:-NA}"))" \
                    "${R[$m.retr1]}/${R[$m.retr4]}" "${R[$m.cpu1]}/${R[$m.cpu4]}" "${R[$m.cpg1]}/${R[$m.cpg4]}" \
                    "${R[$m.ping]}" "($(ratio "${R[$m.ping]}" "${R[$b.ping]:-NA}"))" "${R[$m.urtt]}" \
                    "${R[$m.cold]}" "${R[$m.flow1]}/${R[$m.flow1max]}" "$(passed "$m")/$(failed "$m")" "$(lost "$m")"
            done
            if [ "$STORM_SECS" -gt 0 ]; then
                printf '\nstorm (%s s, %s at a time)   TCP conn/s (vs best peer)   p99 ms   UDP queries/s (vs best peer)   p99 ms   failed\n' \
                    "$STORM_SECS" "$STORM_CONC"
                for m in "${MODES[@]}"; do
                    printf '%-13s %14s %8s %8s %14s %8s %8s %8s\n' "$m" "${R[$m.stcp]}" "($(ratio "${R[$m.stcp]}" "$(best_peer stcp)"))" \
                        "${R[$m.stcp99]}" "${R[$m.sudp]}" "($(ratio "${R[$m.sudp]}" "$(best_peer sudp)"))" "${R[$m.sudp99]}" "${R[$m.sfail]}"
                done
            fi
            if [ "$REPEAT" != 1 ]; then
                echo "(medians of the rounds that passed; ranges below)"
                for m in "${MODES[@]}"; do
                    printf '%-13s tcp1 [%s]  tcp4 [%s]  cores/Gbit/s [%s] [%s]  ping [%s]  udp [%s]\n' "$m" \
                        "${RNG[$m.tcp1]}" "${RNG[$m.tcp4]}" "${RNG[$m.cpg1]}" "${RNG[$m.cpg4]}" "${RNG[$m.ping]}" "${RNG[$m.urtt]}"
                done
            fi
            echo "(ratios against raw veth in parentheses; cores = CPU of both tunnel daemons during the"
            echo " iperf3 run, c/Gb = cores per Gbit/s; see the head of bench/overlay.sh for each column)"
            for m in fpn fpn-native fpn6 fpn-native6 fpn-nogso; do
                [ ! -s "$WORK/actions-$m" ] || echo "$m flows at A by action (last round): $(cat "$WORK/actions-$m")"
            done
            if [ -s "$WORK/failures.txt" ]; then
                echo "FAILED ROUNDS (not in the medians):"
                while read -r k m why; do echo "  round $k, $m: $why"; done <"$WORK/failures.txt"
            fi
            local lines
            lines=$(aims)
            if [ -n "$lines" ]; then
                echo "aims (#8), same run:"
                while read -r k v aim met; do
                    printf '  %-62s %8s  aim %-10s met: %s\n' "$(aim_text "$k")" "$v" "${aim//_/ }" "$met"
                done <<<"$lines"
            fi
            ;;
    esac
}

best_peer() { # best_peer METRIC: the larger of wireguard-go's and nebula's medians, or NA
    awk -v a="${R[wireguard-go.$1]:-NA}" -v b="${R[nebula.$1]:-NA}" \
        'BEGIN { if (a == "NA" && b == "NA") print "NA"; else if (a == "NA") print b; else if (b == "NA" || a + 0 > b + 0) print a; else print b }'
}

range() { [ "$REPEAT" = 1 ] || [ "${RNG[$1.$2]}" = NA..NA ] || echo " [${RNG[$1.$2]}]"; }

lost() { [ "${R[$1.flowlost]}" = 0 ] || [ "${R[$1.flowlost]}" = NA ] || echo " (${R[$1.flowlost]} of $((FLOWS * $(passed "$1"))) new flows lost)"; }

num() { [ "$1" = NA ] && echo null || echo "$1"; }

bool() { [ "$1" = 1 ] && echo true || echo false; }

# ------------------------------------------------------------------ main
ensure_tools
[ "$STORM_SECS" = 0 ] || storm_binary
for m in "${MODES[@]}"; do
    case $m in fpn*) fpn_binaries; break ;; esac
done
set_buffers
round_error() { echo "$WORK/error-$1-$ROUND"; }
after_mode() { teardown; }
run_rounds
report
[ ! -s "$WORK/failures.txt" ] || exit 1
