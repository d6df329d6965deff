#!/usr/bin/env bash
# Handover benchmark: docs/BENCHMARKS.md, "Handover (a laptop that moves)".
#
#   bench/handover.sh        (as root)
#
# Builds the release daemons and runs overlay-tests/tests/bench_handover.rs
# (ignored in the suite): on configs/lab/nat-home.toml the laptop sends a
# timestamped record every 10 ms over one TCP connection to the home router
# while it walks home -> cafe (NAT) -> public hotspot -> home, MOVES times;
# the gap of each move (from the new address in place to the records
# flowing again), median and worst per kind of move, for fpn's native
# path, fpn's QUIC carrier and wireguard-go in the same lab; and the RTT of
# the flow that moved against a new one. See the test's doc comment.
#
# Environment: MOVES=12, DWELL=4 (seconds at each place). Installs
# wireguard-go and wireguard-tools with apt-get when missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
[ "$(id -u)" = 0 ] || { echo "handover.sh: run as root (network namespaces)" >&2; exit 1; }
missing=()
command -v wireguard-go >/dev/null || missing+=(wireguard-go)
command -v wg >/dev/null || missing+=(wireguard-tools)
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
        { echo "handover.sh: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi
echo "==> building the release daemons" >&2
cargo build --release --locked -q -p fpn-node -p fpn-gms
cargo build --locked -q -p fpn-overlay-tests --bins
echo "==> measuring (MOVES=${MOVES:-12} DWELL=${DWELL:-4}; uptime: $(uptime))" >&2
FPN_BIN_DIR="$ROOT/target/release" cargo test --locked -q -p fpn-overlay-tests --test bench_handover \
    -- --ignored --nocapture --test-threads 1
echo "==> done (uptime: $(uptime))" >&2
