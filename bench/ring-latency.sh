#!/usr/bin/env bash
# How long a lone packet waits in the native carrier's receive ring before
# user space sees it: docs/BENCHMARKS.md, "Native receive latency", and
# docs/DESIGN-NOTES.md, "Native receive latency" (why the ring is TPACKET_V2).
#
#   bench/ring-latency.sh [ROUNDS]     (as root; default 5 rounds)
#
# One scratch network namespace with a veth pair va <-> vb. Per round, $N
# frames (an experimental ethertype, 114 bytes, never routed) leave va one
# at a time, 5-25 ms apart (so each is alone, as a sparse flow's packets
# are), and are read on vb three ways at once:
#   plain  a plain AF_PACKET socket's recv: when the kernel delivered it
#   v3     an AF_PACKET TPACKET_V3 ring set up as node/src/native/rx_ring.rs
#          was before (block timeout $TOV ms): when its block turns
#          TP_STATUS_USER, i.e. when the receive thread could first see it
#   v2     an AF_PACKET TPACKET_V2 ring as rx_ring.rs is now: a thread
#          sleeping in poll on it, woken by the kernel, sees the frame
#          TP_STATUS_USER (the node's thread does exactly this)
# each from just before the send, ms. A V3 block holds one frame here
# (checked: a block with more packets is reported), so its wait is the
# block timeout. Prints per round the median [min..max] of each, then the
# medians over rounds, and the load average before and after.
#
# Nothing leaves the namespace; it is removed on exit, also after a failure
# or Ctrl-C. Environment: N=200 frames per round, TOV=1 (ms).
set -euo pipefail
export LC_ALL=C

ROUNDS=${1:-5}
N=${N:-200}
TOV=${TOV:-1}
[ "$(id -u)" = 0 ] || { echo "ring-latency.sh: run as root (network namespace, AF_PACKET)" >&2; exit 1; }
NS="rlat$$"
trap 'ip netns del "$NS" 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM

PROBE='
import mmap, random, select, socket, statistics, struct, sys, threading, time
SOL_PACKET, PACKET_VERSION, PACKET_RX_RING, TPACKET_V2, TPACKET_V3 = 263, 10, 5, 1, 2
n, tov = int(sys.argv[1]), int(sys.argv[2])
BS, BN = 1 << 16, 8
ring = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
ring.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
# struct tpacket_req3: block size and count, frame size and count, block
# timeout (ms), private area, features
ring.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("7I", BS, BN, 2048, BS * BN // 2048, tov, 0, 0))
ring.bind(("vb", 0))
m = mmap.mmap(ring.fileno(), BS * BN)
# V2: struct tpacket_req: block size and count, frame size and count
r2 = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
r2.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
FN = BS * BN // 2048
r2.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("4I", BS, BN, 2048, FN))
r2.bind(("vb", 0))
m2 = mmap.mmap(r2.fileno(), BS * BN)
for f in range(FN):
    struct.pack_into("I", m2, f * 2048, 0)
v2_seen = []                        # time the waiting thread saw each frame
def v2_reader():
    p2 = select.poll()
    p2.register(r2.fileno(), select.POLLIN)
    f = 0
    while len(v2_seen) < n:
        if not struct.unpack_from("I", m2, f * 2048)[0] & 1:
            if not p2.poll(2000):
                return
            continue
        v2_seen.append(time.monotonic())
        struct.pack_into("I", m2, f * 2048, 0)
        f = (f + 1) % FN
reader = threading.Thread(target=v2_reader, daemon=True)
reader.start()
time.sleep(0.05)
plain = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
plain.bind(("vb", 0))
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
tx.bind(("va", 0))
frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + b"x" * 100
status = lambda b: b * BS + 8       # tpacket_block_desc.hdr.bh1.block_status
num_pkts = lambda b: b * BS + 12
for b in range(BN):                 # hand back whatever arrived before
    struct.pack_into("I", m, status(b), 0)
p = select.poll()
p.register(ring.fileno(), select.POLLIN)
blk, ring_ms, plain_ms, v2_ms, odd = 0, [], [], [], 0
for _ in range(n):
    time.sleep(random.uniform(0.005, 0.025))
    while True:
        try:
            plain.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
    k = len(v2_seen)
    t0 = time.monotonic()
    tx.send(frame)
    plain.recv(4096)
    t1 = time.monotonic()
    deadline = t1 + 1
    while not struct.unpack_from("I", m, status(blk))[0] & 1 and time.monotonic() < deadline:
        p.poll(100)
    t2 = time.monotonic()
    odd += struct.unpack_from("I", m, num_pkts(blk))[0] != 1
    struct.pack_into("I", m, status(blk), 0)
    blk = (blk + 1) % BN
    while len(v2_seen) <= k and time.monotonic() < deadline:
        time.sleep(0.0002)
    plain_ms.append((t1 - t0) * 1000)
    ring_ms.append((t2 - t0) * 1000)
    v2_ms.append((v2_seen[k] - t0) * 1000 if len(v2_seen) > k else 1000.0)
print("%.3f %.3f %.3f %.3f %.3f %.3f %d %.3f %.3f %.3f" % (statistics.median(plain_ms), min(plain_ms), max(plain_ms),
      statistics.median(ring_ms), min(ring_ms), max(ring_ms), odd,
      statistics.median(v2_ms), min(v2_ms), max(v2_ms)))
'

ip netns add "$NS"
# No IPv6: its router and neighbour solicitations would share the blocks.
ip netns exec "$NS" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$NS" link add va type veth peer name vb
ip -n "$NS" link set va up
ip -n "$NS" link set vb up
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
RES=()
for r in $(seq "$ROUNDS"); do
    line=$(ip netns exec "$NS" python3 -c "$PROBE" "$N" "$TOV")
    read -r pm pmin pmax rm rmin rmax odd vm vmin vmax <<<"$line"
    echo "round $r: plain recv $pm [$pmin..$pmax] ms, v3 ring (block timeout $TOV ms) $rm [$rmin..$rmax] ms, v2 ring (woken thread) $vm [$vmin..$vmax] ms; v3 blocks not holding exactly one frame: $odd"
    RES+=("$pm $rm $vm")
done
printf '%s\n' "${RES[@]}" | python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in sys.stdin]
for i, name in enumerate(("plain recv", "v3 ring", "v2 ring")):
    v = [r[i] for r in rows]
    print("%s: median of the rounds medians %.3f ms [%.3f..%.3f]" % (name, statistics.median(v), min(v), max(v)))
'
echo "load average before: $LOAD0, after: $(cut -d' ' -f1-3 /proc/loadavg)"
