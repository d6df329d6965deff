#!/bin/sh
# GMS key rotation fan-out benchmark: docs/BENCHMARKS.md, "GMS key rotation fan-out".
# Usage: bench/gms-fanout.sh [NODES...]      (default: 1000 10000)
# RECONNECT=1 adds the GMS restart measurement (every node lists the
# directory and looks up 5 peers again; docs/BENCHMARKS.md).
set -eu
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p fpn-gms --bin fpn-gms --example fanout
[ $# -gt 0 ] || set -- 1000 10000
for n in "$@"; do
    echo "== $n nodes"
    "$target/release/examples/fanout" --gms-bin "$target/release/fpn-gms" --nodes "$n" \
        ${RECONNECT:+--reconnect}
done
