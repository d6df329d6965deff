#!/usr/bin/env bash
# The fpn demo: builds the users' network in network namespaces on this
# machine (a VPS running fpn-gms with its DNS server and relay; a home
# behind a NAT with a NAS, a desktop, the laptop and a guest's phone the
# policy refuses; a cafe behind a NAT with random ports) and shows, step by
# step, names, an encrypted transfer over the home LAN, a refused flow, a
# key rotation under traffic, the laptop moving to the cafe (the relay takes
# over) and the GMS going down, saying which path each pair uses.
# Everything is removed at the end (also on failure and Ctrl-C).
#
#   sudo scripts/demo.sh            # the full demo (about a minute)
#   sudo scripts/demo.sh --quick    # shorter transfers
#   sudo scripts/demo.sh --keep-logs
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

if [ "$(id -u)" != 0 ]; then
  fpn_die "the demo creates network namespaces and must run as root (sudo scripts/demo.sh)"
fi
fpn_ensure_deps

echo "==> building release binaries (fpn-gms, fpn-node, fpn-demo)"
cargo build --release --locked -p fpn-gms -p fpn-node -p fpn-overlay-tests --bins
target_dir=${CARGO_TARGET_DIR:-target}
exec "$target_dir/release/fpn-demo" "$@"
