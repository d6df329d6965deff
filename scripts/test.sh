#!/usr/bin/env bash
# Runs the whole fpn test suite: unit, property, simulation, integration and
# (as root) network-namespace tests. Installs what it needs first.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p fpn-proto    # extra arguments go to `cargo nextest run`
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
fpn_ensure_deps

if [ "$(id -u)" != 0 ]; then
  echo "error: the suite includes network-namespace tests and must run as root" >&2
  exit 1
fi

echo "==> fpn-node links no server code"
# The node links the GMS client only (fpn-gms-client), never the GMS itself
# nor what only the server needs: sled, rcgen, the DNS server.
node_tree=$(cargo tree -p fpn-node -e normal --locked)
server_deps=$(grep -E 'sled|rcgen|fpn-ddns|fpn-gms ' <<<"$node_tree" || true)
if [ -n "$server_deps" ]; then
  echo "error: fpn-node's normal dependencies include server crates:" >&2
  echo "$server_deps" >&2
  exit 1
fi

echo "==> building"
cargo build --workspace --all-targets --locked
# The fuzz targets live outside the workspace (cargo-fuzz layout); fuzzing
# needs nightly, but building them does not, so a decoder change that breaks
# a target fails here instead of at the next fuzzing session.
echo "==> fuzz targets build"
for dir in proto/fuzz ddns/fuzz gms-client/fuzz gms/fuzz node/fuzz; do
  CARGO_TARGET_DIR="$PWD/target" cargo check --manifest-path "$dir/Cargo.toml" --all-targets --locked
done
echo "==> cargo nextest run"
cargo nextest run --workspace --locked --no-fail-fast "$@"
# The node core's scenarios once more with a data-path worker per node
# (design note 67): every outcome must be the same as the core's own.
echo "==> node core scenarios with data-path workers"
FPN_SIM_WORKERS=1 cargo nextest run -p fpn-node --lib --locked --no-fail-fast -E 'test(/^core::/)'
echo "==> doc tests"
cargo test --workspace --doc --locked "$@"
