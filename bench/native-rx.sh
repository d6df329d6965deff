#!/usr/bin/env bash
# Native carrier receive mechanisms: docs/DESIGN-NOTES.md note 11.
#
#   bench/native-rx.sh [ROUNDS]     (as root; default 5 rounds)
#
#   netns <id>a  veth 198.18.77.1/24  <====>  198.18.77.2/24  netns <id>b
#   a: native_rx_bench tx (raw sendmmsg sender)   b: native_rx_bench rx (NativeIo)
#
# Per round, interleaved, for MECH in nfq ring and PROTO in udp tcp:
#   check  $CHECK packets paced at $CHECK_RATE/s: every sequence number must
#          arrive exactly once, and the receiving namespace's TcpOutRsts,
#          IcmpOutDestUnreachs and UdpNoPorts must not move (nothing listens
#          on the port: a packet the kernel saw would draw a RST or an ICMP)
#   blast  up to $BLAST packets of 1400 bytes as fast as the sender goes, for
#          $SECS s at most: packets/s and Mbit/s received, the receiver's CPU
#          time per packet (user+sys of its process, first to last packet),
#          and how many were lost (kernel queue or ring full); also the
#          sender's CPU time per packet, which includes the receiving
#          kernel's softirq work (veth delivers in the sender's context)
# Then, once per round, the cost of changing the flow set (nft binary).
# Prints every JSON record to $OUT (default /tmp/native-rx.<pid>.jsonl) and a
# summary: medians over rounds with [min..max], and the load average.
#
# Nothing is sent outside the two namespaces it creates; they are removed on
# exit, also after a failure or Ctrl-C. Every load loop is bounded in count
# and time. Environment: CHECK=20000 CHECK_RATE=20000 BLAST=1000000 SECS=5
# BIN=<native_rx_bench binary> (default: built here, release).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

ROUNDS=${1:-5}
CHECK=${CHECK:-20000}
CHECK_RATE=${CHECK_RATE:-20000}
BLAST=${BLAST:-1000000}
SECS=${SECS:-5}
OUT=${OUT:-/tmp/native-rx.$$.jsonl}
[ "$(id -u)" = 0 ] || { echo "error: run as root (network namespaces, raw sockets, nft)" >&2; exit 1; }
. scripts/deps.sh
fpn_ensure_deps

if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q -p fpn-node --example native_rx_bench
  BIN=${CARGO_TARGET_DIR:-target}/release/examples/native_rx_bench
fi

ID="fpnrx$$"
A="${ID}a" B="${ID}b"
RXPID=""
cleanup() {
  [ -n "$RXPID" ] && kill "$RXPID" 2>/dev/null || true
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

ip netns add "$A"
ip netns add "$B"
ip -n "$A" link add va type veth peer name vb netns "$B"
ip -n "$A" addr add 198.18.77.1/24 dev va
ip -n "$B" addr add 198.18.77.2/24 dev vb
for x in "$A:va" "$B:vb"; do
  ip -n "${x%%:*}" link set lo up
  ip -n "${x%%:*}" link set "${x##*:}" up
done
ip netns exec "$A" ping -c 1 -W 5 -q 198.18.77.2 >/dev/null

FLOWS=(--src 198.18.77.1 --dst 198.18.77.2 --flows 4)
: > "$OUT"

# run MECH PROTO KIND COUNT RATE: one receiver, one sender, one JSON line.
run() {
  local mech=$1 proto=$2 kind=$3 count=$4 rate=$5 fifo line tx
  fifo=$(mktemp -u) && mkfifo "$fifo"
  ip netns exec "$B" "$BIN" rx --mech "$mech" --proto "$proto" "${FLOWS[@]}" \
    --expect "$count" --secs $((SECS + 10)) > "$fifo" &
  RXPID=$!
  exec 3< "$fifo"
  read -r -t 20 line <&3 || { echo "error: receiver did not start" >&2; exit 1; }
  [ "$line" = READY ] || { echo "error: receiver said $line" >&2; exit 1; }
  tx=$(ip netns exec "$A" "$BIN" tx --proto "$proto" "${FLOWS[@]}" \
    --count "$count" --secs "$SECS" --rate "$rate")
  read -r -t $((SECS + 15)) line <&3 || { echo "error: no receiver result" >&2; exit 1; }
  wait "$RXPID"; RXPID=""
  exec 3<&-; rm -f "$fifo"
  printf '{"round":%d,"kind":"%s","load":"%s","rx":%s,"tx":%s}\n' \
    "$round" "$kind" "$(cut -d' ' -f1-3 /proc/loadavg)" "$line" "$tx" | tee -a "$OUT"
}

for round in $(seq 1 "$ROUNDS"); do
  for mech in nfq ring; do
    for proto in udp tcp; do
      run "$mech" "$proto" check "$CHECK" "$CHECK_RATE"
      run "$mech" "$proto" blast "$BLAST" 0
    done
  done
  cost=$(ip netns exec "$B" "$BIN" nftcost)
  printf '{"round":%d,"kind":"nftcost","load":"%s","cost":%s}\n' \
    "$round" "$(cut -d' ' -f1-3 /proc/loadavg)" "$cost" | tee -a "$OUT"
done

python3 - "$OUT" <<'EOF'
import json, sys, statistics
recs = [json.loads(l) for l in open(sys.argv[1])]
def med(xs):
    return f"{statistics.median(xs):.4g} [{min(xs):.4g}..{max(xs):.4g}]"
ok = True
print(f"\n{len(set(r['round'] for r in recs))} rounds; load average (1 min) during the run: "
      + med([float(r['load'].split()[0]) for r in recs]))
print("\ncorrectness (check runs): every packet once, no RST/ICMP/NoPorts")
for mech in ("Nfq", "Ring"):
    for proto in ("Udp", "Tcp"):
        rs = [r["rx"] for r in recs if r["kind"] == "check" and r["rx"]["mech"] == mech and r["rx"]["proto"] == proto]
        bad = [x for x in rs if x["unique"] != x["expect"] or x["dups"] or x["tcp_out_rsts"] or x["icmp_out_dest_unreachs"] or x["udp_no_ports"]]
        ok &= not bad
        print(f"  {mech:4} {proto}: {len(rs) - len(bad)}/{len(rs)} rounds correct")
print("\nblast: 1400-byte packets, median [min..max] over rounds")
print("  mech proto  rx kpps              rx Mbit/s            rx CPU us/pkt        lost %          sender kpps          sender CPU us/pkt")
for mech in ("Nfq", "Ring"):
    for proto in ("Udp", "Tcp"):
        rs = [r for r in recs if r["kind"] == "blast" and r["rx"]["mech"] == mech and r["rx"]["proto"] == proto]
        if not rs: continue
        rx = [r["rx"] for r in rs]
        bad = [x for x in rx if x["dups"] or x["tcp_out_rsts"] or x["icmp_out_dest_unreachs"] or x["udp_no_ports"]]
        ok &= not bad
        lost = [100.0 * (r["tx"]["sent"] - r["rx"]["unique"]) / max(r["tx"]["sent"], 1) for r in rs]
        print(f"  {mech:4} {proto:5} {med([x['pps']/1e3 for x in rx]):20} {med([x['mbps'] for x in rx]):20} "
              f"{med([x['cpu_us_per_pkt'] for x in rx]):20} {med(lost):15} {med([r['tx']['pps']/1e3 for r in rs]):20} "
              f"{med([r['tx']['cpu_us_per_pkt'] for r in rs])}")
cs = [r["cost"] for r in recs if r["kind"] == "nftcost"]
if cs:
    print("\nflow-set changes (netlink batches since note 41; the nft binary before), ms (median of rounds' medians [min..max])")
    print(f"  add one flow:    {med([c['add_ms'] for c in cs])}")
    print(f"  remove one flow: {med([c['remove_ms'] for c in cs])}")
    print(f"  add one flow with {cs[0]['bulk']} present: {med([c['add_ms_with_bulk_present'] for c in cs])}")
    print(f"  add {cs[0]['bulk']} flows in one call: {med([c['bulk_ms'] for c in cs])}")
    print(f"  remove {cs[0]['bulk']} flows in one call: {med([c['bulk_remove_ms'] for c in cs])}")
print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
sys.exit(0 if ok else 1)
EOF
