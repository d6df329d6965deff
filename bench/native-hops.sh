#!/usr/bin/env bash
# Where a lone packet's time goes on the native carrier, hop by hop:
# docs/BENCHMARKS.md, "Native carrier latency, per hop".
#
#   bench/native-hops.sh [ROUNDS]     (as root; default 3 rounds)
#
# The topology of bench/overlay.sh's fpn-native row: netns <id>a and <id>b
# joined by a veth pair (198.18.0.1/24, 198.18.0.2/24), fpn-gms in A, two
# fpn-node daemons with `carrier = "native"`, a UDP echo server on B's
# overlay address. A sniffer (AF_PACKET, every interface, kernel
# timestamps: SO_TIMESTAMPNS, CLOCK_REALTIME, the same clock in both
# namespaces) runs in each namespace and records when each packet passes
# each interface. Per round:
#   udp   $N lone UDP echoes (64 bytes, $GAP s apart) on one flow held past
#         the 300 ms new-flow grace (so native), timed in the client too
#   ping  $N ICMP echoes (`ping -i $GAP`, native since note 22)
#   idle  the CPU both nodes use over $IDLE s with nothing to carry (after
#         the path went native), ms of CPU per second
#   flow1 $FLOWS brand-new UDP flows, one datagram each ($FGAP s apart),
#         fast-opened on the warm pair epoch: the same hops as udp, A_out
#         ending at the first packet on A's veth that carries the datagram
#         (its FOP on UDP 7717 with the packet inside, note 71, told apart
#         by its length; or the datagram itself, which with
#         FPN_NODE_FAST_FIRST=0 leaves after the FOK's round trip, so A_out
#         then holds that round trip). A flow negotiated instead (DPRP
#         fallback: a large DDE on 7717) is counted from its DDE.
# From the captures, per packet (ms): A out = app's packet in A's TUN ->
# native packet on A's veth; B in = on B's veth -> written into B's TUN;
# app = B's TUN in -> the echo's reply out into B's TUN; B out; A in; and
# for a new flow the same hops. Prints the
# medians per round and the medians of the rounds' medians [min..max], with
# the load average; the raw events are kept in $OUT (a directory).
#
# SYSCALLS=1 adds a phase to each round: strace -c -f on both nodes while
# $FLOWS more brand-new flows go (one each, $FGAP s apart), printed as
# system calls per flow by name, both nodes together (design note 79 counts
# the heap's mprotect and brk so), then the same over $N more lone UDP
# echoes on one warm flow ($GAP s apart), per echo (note 84 counts the
# driver's wake-ups so); strace slows the nodes, so that phase is not
# timed.
# PROFILE=1 adds a phase to each round: `perf record` (cpu-clock, call
# graphs, dwarf, $PERF_HZ samples per CPU second) of both nodes while $PFLOWS more
# brand-new flows go ($FGAP s apart; no sniffer, no strace), printed per
# node as the functions with the most CPU time under them (perf's
# "children", bench/perf-top.py), in microseconds per new flow, with the
# threads' shares; the recordings are kept in $OUT (design note 80 reads
# them so).
# Nothing is sent outside the two namespaces; they, the processes and the
# temporary files are removed on exit, also after a failure or Ctrl-C.
# Every loop is bounded. Environment: IDLE=10 N=40 GAP=0.05 FLOWS=10 FGAP=0.1
# SYSCALLS=0, PROFILE=0, PFLOWS=300, PERF_HZ=10000, FPN_BIN=<dir with fpn-gms and fpn-node> (default: release,
# built here), OUT=/tmp/native-hops.<pid>.
set -euo pipefail
export LC_ALL=C

ROUNDS=${1:-3}
N=${N:-40}
GAP=${GAP:-0.05}
FLOWS=${FLOWS:-10}
IDLE=${IDLE:-10}
FGAP=${FGAP:-0.1}
OUT=${OUT:-/tmp/native-hops.$$}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SYSCALLS=${SYSCALLS:-0}
PROFILE=${PROFILE:-0}
PFLOWS=${PFLOWS:-300}
PERF_HZ=${PERF_HZ:-10000}
[ "$(id -u)" = 0 ] || { echo "native-hops.sh: run as root (network namespaces)" >&2; exit 1; }
for cmd in ip ping python3 $([ "$SYSCALLS" = 1 ] && echo strace) $([ "$PROFILE" = 1 ] && echo perf); do
    command -v "$cmd" >/dev/null || { echo "native-hops.sh: $cmd is missing (scripts/deps.sh installs it)" >&2; exit 1; }
done
if [ -z "${FPN_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p fpn-gms -p fpn-node --bins)
    FPN_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi
BIN=$FPN_BIN
ID="nhop$$"
NSA="${ID}a" NSB="${ID}b"
UA=198.18.0.1 UB=198.18.0.2
WORK=$(mktemp -d -t native-hops.XXXXXX)
mkdir -p "$OUT"
PIDS=()

stop_all() {
    local pid ns
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    PIDS=()
    for ns in "$NSA" "$NSB"; do
        if [ -e "/run/netns/$ns" ]; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
}
trap 'stop_all; find "$WORK" -name "*.key" -delete 2>/dev/null; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

wait_for() { # wait_for SECONDS CMD...
    local end=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $end ] || return 1; sleep 0.02; done
}
spawn() { local ns=$1 logf=$2; shift 2; ip netns exec "$ns" "$@" >"$logf" 2>&1 & PIDS+=($!); }
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

up() {
    stop_all
    ip netns add "$NSA"
    ip netns add "$NSB"
    ip link add "${ID}va" netns "$NSA" type veth peer name "${ID}vb" netns "$NSB"
    ip -n "$NSA" link set lo up
    ip -n "$NSB" link set lo up
    ip -n "$NSA" addr add "$UA/24" dev "${ID}va"
    ip -n "$NSB" addr add "$UB/24" dev "${ID}vb"
    ip -n "$NSA" link set "${ID}va" up
    ip -n "$NSB" link set "${ID}vb" up
    wait_for 5 ip netns exec "$NSA" ping -c1 -W1 -q "$UB" || { echo "native-hops.sh: the veth pair does not answer ping" >&2; return 1; }
    local d="$WORK/fpn" gms n ns tok
    rm -rf "$d"
    mkdir -p "$d"
    gms=(env FPN_GMS_DATA="$d/gms" "$BIN/fpn-gms")
    "${gms[@]}" init --zone bench.fpn. --listen "$UA:7700" --public-addr "$UA:7700" >"$d/init.log" 2>&1
    spawn "$NSA" "$d/gms.log" "${gms[@]}" serve
    wait_for 10 "${gms[@]}" status
    "${gms[@]}" group add 1 --name bench >/dev/null
    for n in a b; do
        "${gms[@]}" ge add "$n" --kind ges --mode op --group 1 >/dev/null
        tok=$("${gms[@]}" token create "$n" --json | json_field token)
        [ $n = a ] && ns=$NSA || ns=$NSB
        ip netns exec "$ns" "$BIN/fpn-node" enroll "$tok" --state "$d/$n" --json >"$d/$n.enroll.json"
        printf 'tun_name = "%s"\nmtu = 1380\nlisten = "0.0.0.0:7718"\ndns = false\nlog = "info"\ncarrier = "native"\n' \
            "${ID}f$n" >"$d/$n.toml"
        spawn "$ns" "$d/$n.log" "$BIN/fpn-node" up --state "$d/$n" --config "$d/$n.toml"
        eval "PID_$n=${PIDS[-1]}"
    done
    for n in a b; do wait_for 20 grep -q "node ready" "$d/$n.log"; done
    DST=$(json_field overlay <"$d/b.enroll.json")
    spawn "$NSB" "$d/echo.log" python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7799))
while True:
    d, a = s.recvfrom(4096)
    s.sendto(d, a)
'
    # First contact (QUIC, directory, DPRP) and the path going native.
    wait_for 15 ip netns exec "$NSA" ping -c1 -W1 -q "$DST"
    sleep 1
}

# The sniffer: one line per IPv4 packet on any interface of its namespace:
# ns_time side(a/b) if(tun/veth) dir(in/out) proto sport dport icmp_type
SNIFF='
import signal, socket, struct, sys, time
def stop(*_):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, stop)
side, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
s.setsockopt(socket.SOL_SOCKET, 35, 1)      # SO_TIMESTAMPNS
s.settimeout(0.2)
out = open(sys.argv[3], "w")
print("ready", flush=True)
def recv():
    while time.monotonic() < end:
        try:
            yield s.recvmsg(256, 64)
        except socket.timeout:
            continue
        except KeyboardInterrupt:
            return
for d, anc, _, addr in recv():
    if addr[1] != 0x0800 or len(d) < 20:
        continue
    ts = next((struct.unpack("qq", c[2][:16]) for c in anc if c[1] == 35), None)
    if ts is None:
        continue
    ifk = "tun" if "f" + side == addr[0][-2:] else "veth" if addr[0].endswith("v" + side) else None
    if ifk is None:
        continue
    proto, ihl = d[9], (d[0] & 15) * 4
    sp = dp = it = 0
    if proto in (6, 17) and len(d) >= ihl + 4:
        sp, dp = struct.unpack("!HH", d[ihl:ihl + 4])
        it = struct.unpack("!H", d[2:4])[0]     # TCP/UDP: the IP length
    elif proto == 1 and len(d) > ihl:
        it = d[ihl]
    out.write("%d %s %s %s %d %d %d %d\n" % (ts[0] * 10**9 + ts[1], side, ifk,
              "out" if addr[2] == 4 else "in", proto, sp, dp, it))
out.close()
'

# Clients, run in A. udp: N echoes on one flow held past the grace.
UDP_CLIENT='
import socket, sys, time
dst, n, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.connect((dst, 7799))
for _ in range(3):
    s.send(b"w" * 64)
    try: s.recv(4096)
    except socket.timeout: pass
    time.sleep(0.3)
rtt = []
for i in range(n):
    time.sleep(gap)
    t = time.perf_counter()
    s.send(b"x" * 64)
    try:
        s.recv(4096)
        rtt.append((time.perf_counter() - t) * 1000)
    except socket.timeout:
        pass
rtt.sort()
print("%.3f" % rtt[len(rtt) // 2] if rtt else "NA")
'
FLOW_CLIENT='
import socket, sys, time
dst, n, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rtt = []
for i in range(n):
    time.sleep(gap)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect((dst, 7799))
    t = time.perf_counter()
    s.send(b"y" * 64)
    try:
        s.recv(4096)
        rtt.append((time.perf_counter() - t) * 1000)
    except socket.timeout:
        pass
    s.close()
rtt.sort()
print("%.3f" % rtt[len(rtt) // 2] if rtt else "NA")
'

# The analysis: events of both sides, merged; one echo per cluster.
ANALYSE='
import statistics, sys
kind = sys.argv[1]
ev = []
for f in sys.argv[2:]:
    for l in open(f):
        t, side, ifk, d, proto, sp, dp, it = l.split()
        ev.append((int(t), side, ifk, d, int(proto), int(sp), int(dp), int(it)))
ev.sort()
def med(v):
    return statistics.median(v) if v else float("nan")
def clusters(sel, gap_ns=15_000_000):
    c, last = [], None
    for e in ev:
        if not sel(e):
            continue
        if last is not None and e[0] - last > gap_ns:
            yield c
            c = []
        c.append(e)
        last = e[0]
    if c:
        yield c
def first(c, side, ifk, d, after=0, pred=lambda e: True):
    for e in c:
        if e[0] >= after and e[1:4] == (side, ifk, d) and pred(e):
            return e[0]
    return None
names = ["A out", "B in", "app", "B out", "A in", "wire x2", "total"]
if kind in ("udp", "ping"):
    if kind == "udp":
        sel = lambda e: e[4] == 17 and 7799 in (e[5], e[6])
    else:
        sel = lambda e: e[4] == 1 and e[7] in (0, 8)
    rows = []
    for c in clusters(sel):
        t1 = first(c, "a", "tun", "out")
        t2 = first(c, "a", "veth", "out", t1 or 0)
        t3 = first(c, "b", "veth", "in", t2 or 0)
        t4 = first(c, "b", "tun", "in", t3 or 0)
        t5 = first(c, "b", "tun", "out", t4 or 0)
        t6 = first(c, "b", "veth", "out", t5 or 0)
        t7 = first(c, "a", "veth", "in", t6 or 0)
        t8 = first(c, "a", "tun", "in", t7 or 0)
        ts = [t1, t2, t3, t4, t5, t6, t7, t8]
        if None in ts:
            continue
        us = lambda a, b: (b - a) / 1000
        rows.append([us(t1, t2), us(t3, t4), us(t4, t5), us(t5, t6), us(t7, t8),
                     us(t2, t3) + us(t6, t7), us(t1, t8)])
    print(" ".join("%.1f" % med([r[i] for r in rows]) for i in range(len(names))), len(rows))
else:
    # New flows, fast-opened on the warm pair epoch (design notes 64, 71):
    # the app packet into A s TUN, then the first packet on A s veth that
    # carries it (its FOP on UDP 7717 with the packet inside, or the packet
    # itself when it travels beside its FOP), into B s TUN, the reply and
    # its way back.
    sel = lambda e: (e[4] == 17 and (7799 in (e[5], e[6]) or 7717 in (e[5], e[6]))) or \
        (e[4] == 17 and e[2] == "veth" and 7718 in (e[5], e[6]))
    rows = []
    is_app = lambda e: 7799 in (e[5], e[6])
    # A FOP with the datagram inside (note 71) is at least 200 bytes long
    # (IP length): a FOP without one is about 100, the datagram
    # sealed adds 119 (its headers, 64 bytes, the trailer, flags and length).
    carries = lambda e: 7799 in (e[5], e[6]) or (e[6] == 7717 and e[7] >= 200)
    for c in clusters(sel, 50_000_000):
        t1 = first(c, "a", "tun", "out", 0, is_app)
        if t1 is None:
            continue
        t2 = first(c, "a", "veth", "out", t1, carries)
        t3 = first(c, "b", "veth", "in", t2 or 0, carries)
        t4 = first(c, "b", "tun", "in", t3 or 0, is_app)
        t5 = first(c, "b", "tun", "out", t4 or 0, is_app)
        t6 = first(c, "b", "veth", "out", t5 or 0, is_app)
        t7 = first(c, "a", "veth", "in", t6 or 0, is_app)
        t8 = first(c, "a", "tun", "in", t7 or 0, is_app)
        ts = [t1, t2, t3, t4, t5, t6, t7, t8]
        if None in ts:
            continue
        us = lambda a, b: (b - a) / 1000
        rows.append([us(t1, t2), us(t3, t4), us(t4, t5), us(t5, t6), us(t7, t8),
                     us(t2, t3) + us(t6, t7), us(t1, t8)])
    print(" ".join("%.1f" % med([r[i] for r in rows]) for i in range(len(names))), len(rows))
'
HEAD_UDP="A_out B_in app B_out A_in wire total"
HEAD_FLOW=$HEAD_UDP

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
ticks() { local t=0 pid; for pid in "$PID_a" "$PID_b"; do t=$((t + $(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }'))); done; echo $t; }
# System calls of both nodes (strace -c -f, every thread) while CMD runs,
# per unit: syscalls_per LABEL UNITS OUTFILE CMD...
syscalls_per() {
    local label=$1 units=$2 out=$3 st
    shift 3
    strace -c -f -p "$PID_a" -p "$PID_b" -o "$out" &
    st=$!
    sleep 1
    "$@" >/dev/null
    kill -INT "$st"
    wait "$st" || true
    python3 - "$out" "$units" "$label" <<'EOF'
import sys
rows, units, label = [], int(sys.argv[2]), sys.argv[3]
for l in open(sys.argv[1]):
    f = l.split()
    # % time, seconds, usecs/call, calls, [errors,] syscall
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        rows.append((int(f[3]), f[-1]))
rows.sort(reverse=True)
shown = rows[:12] + [r for r in rows[12:] if r[1] in ("mprotect", "brk", "mmap", "munmap")]
print("  system calls per %s, both nodes (strace -c, %d): " % (label, units)
      + ", ".join("%s %.2f" % (n, c / units) for c, n in shown))
for n in ("mprotect", "brk"):
    if n not in [r[1] for r in rows]:
        print("  (no %s)" % n)
EOF
}

for r in $(seq "$ROUNDS"); do
    up
    t0=$(ticks)
    sleep "$IDLE"
    idle=$(python3 -c "print('%.2f' % (($(ticks) - $t0) * 1000 / $(getconf CLK_TCK) / $IDLE))")
    echo "  idle $idle" >>"$WORK/res-idle"
    secs=$(python3 -c "print(int(6 + $N * ($GAP + 0.002) * 2 + $FLOWS * ($FGAP + 0.01) + 10))")
    for s in a b; do
        [ $s = a ] && ns=$NSA || ns=$NSB
        ip netns exec "$ns" python3 -c "$SNIFF" $s "$secs" "$OUT/r$r-$s.txt" >"$WORK/sniff-$s" 2>&1 &
        PIDS+=($!)
    done
    wait_for 5 grep -q ready "$WORK/sniff-a"
    wait_for 5 grep -q ready "$WORK/sniff-b"
    ta=$(date +%s%N)
    udp=$(ip netns exec "$NSA" python3 -c "$UDP_CLIENT" "$DST" "$N" "$GAP")
    tb=$(date +%s%N)
    ip netns exec "$NSA" ping -q -n -c "$N" -i "$GAP" "$DST" >"$WORK/ping" || true
    pingavg=$(sed -n 's/.*= [0-9.]*\/\([0-9.]*\)\/.*/\1/p' "$WORK/ping")
    tc=$(date +%s%N)
    flow=$(ip netns exec "$NSA" python3 -c "$FLOW_CLIENT" "$DST" "$FLOWS" "$FGAP")
    td=$(date +%s%N)
    # Stop the sniffers (they flush on their deadline or on exit).
    for pid in "${PIDS[@]: -2}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]: -2}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    for k in udp ping flow; do
        case $k in udp) lo=$ta hi=$tb ;; ping) lo=$tb hi=$tc ;; flow) lo=$tc hi=$td ;; esac
        cat "$OUT/r$r-a.txt" "$OUT/r$r-b.txt" 2>/dev/null | awk -v lo="$lo" -v hi="$hi" '$1 >= lo && $1 <= hi' >"$OUT/r$r-$k.txt"
    done
    echo "round $r: idle CPU of both nodes ${idle} ms/s, udp echo median ${udp} ms (client), ping avg ${pingavg:-NA} ms, new flow median ${flow} ms (client)"
    for k in udp ping; do
        echo "  $k per hop, us (median of the echoes; n last): $HEAD_UDP n"
        echo "  $k $(python3 -c "$ANALYSE" "$k" "$OUT/r$r-$k.txt")" | tee -a "$WORK/res-$k"
    done
    echo "  flow1 per hop, us (median of the flows; n last): $HEAD_FLOW n"
    echo "  flow $(python3 -c "$ANALYSE" flow "$OUT/r$r-flow.txt")" | tee -a "$WORK/res-flow"
    if [ "$SYSCALLS" = 1 ]; then
        syscalls_per "new flow" "$FLOWS" "$OUT/r$r-strace.txt" \
            ip netns exec "$NSA" python3 -c "$FLOW_CLIENT" "$DST" "$FLOWS" "$FGAP"
        syscalls_per "warm UDP echo" "$N" "$OUT/r$r-strace-udp.txt" \
            ip netns exec "$NSA" python3 -c "$UDP_CLIENT" "$DST" "$N" "$GAP"
    fi
    if [ "$PROFILE" = 1 ]; then
        perf record -q -e cpu-clock -F "$PERF_HZ" --call-graph dwarf,16384 -p "$PID_a,$PID_b" \
            -o "$OUT/r$r-perf.data" >"$OUT/r$r-perf.log" 2>&1 &
        pf=$!
        sleep 0.5
        ip netns exec "$NSA" python3 -c "$FLOW_CLIENT" "$DST" "$PFLOWS" "$FGAP" >/dev/null
        kill -INT "$pf" 2>/dev/null || true
        wait "$pf" || true
        if [ -s "$OUT/r$r-perf.data" ]; then
            # The recording also holds the nodes' idle CPU over its
            # ~$PFLOWS x $FGAP s (the idle line above, per second).
            echo "  CPU of each node per new flow, us (perf over $PFLOWS flows $FGAP s apart; bench/perf-top.py):"
            perf script -i "$OUT/r$r-perf.data" -F comm,pid,tid,period,ip,sym 2>/dev/null |
                python3 "$ROOT/bench/perf-top.py" "$PFLOWS" "a=$PID_a" "b=$PID_b" ||
                echo "  (perf script or bench/perf-top.py failed)"
        else
            echo "native-hops.sh: perf recorded nothing (see $OUT/r$r-perf.log)" >&2
            exit 1
        fi
    fi
    stop_all
done
echo "medians of the rounds' medians [min..max], us:"
for k in udp ping flow; do
    [ $k = flow ] && h=$HEAD_FLOW || h=$HEAD_UDP
    python3 - "$k" "$h" "$WORK/res-$k" <<'EOF'
import statistics, sys
k, head, f = sys.argv[1], sys.argv[2].split(), sys.argv[3]
rows = [list(map(float, l.split()[1:-1])) for l in open(f)]
print("  %s: " % k + ", ".join("%s %.1f [%.1f..%.1f]" % (h, statistics.median(c), min(c), max(c))
                             for h, c in zip(head, zip(*rows))))
EOF
done
python3 - "$WORK/res-idle" <<'EOF'
import statistics, sys
v = [float(l.split()[1]) for l in open(sys.argv[1])]
print("  idle CPU of both nodes, ms per s: %.2f [%.2f..%.2f]" % (statistics.median(v), min(v), max(v)))
EOF
echo "load average before: $LOAD0, after: $(cut -d' ' -f1-3 /proc/loadavg); events in $OUT"
