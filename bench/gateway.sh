#!/usr/bin/env bash
# NAT-f benchmark: docs/BENCHMARKS.md, "Hosts behind a gateway (NAT-f)".
#
#   bench/gateway.sh        (as root)
#
# Builds the release daemons and runs overlay-tests/tests/bench_gateway.rs
# (ignored in the suite) against them: on configs/lab/nat-home.toml, the
# laptop at the cafe reaches hosts behind fpn-node on the home router:
# first packet to a never-contacted host (NAT-f negotiation included), a new
# flow to a contacted one, a plain port forward's RTT, and TCP throughput
# through the gateway next to a plain port forward. See the test's doc
# comment for what each number is.
#
# Environment: REPEAT=3 (rounds), HOSTS=10 (never-contacted hosts per
# round), DURATION=10 (iperf3 seconds). Run on a quiet machine; the
# report gives same-run medians with [min..max] over the rounds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
[ "$(id -u)" = 0 ] || { echo "gateway.sh: run as root (network namespaces)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "gateway.sh: python3 is needed (the timed UDP client)" >&2; exit 1; }
echo "==> building the release daemons" >&2
cargo build --release --locked -q -p fpn-node -p fpn-gms
cargo build --locked -q -p fpn-overlay-tests --bins
echo "==> measuring (REPEAT=${REPEAT:-3} HOSTS=${HOSTS:-10} DURATION=${DURATION:-10}; uptime: $(uptime))" >&2
FPN_BIN_DIR="$ROOT/target/release" cargo test --locked -q -p fpn-overlay-tests --test bench_gateway \
    -- --ignored --nocapture --test-threads 1
echo "==> done (uptime: $(uptime))" >&2
