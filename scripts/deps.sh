#!/usr/bin/env bash
# Installs (Debian, as root) what building, testing and the demo need, and fails
# loudly when something cannot be had. Sourced by scripts/test.sh and
# scripts/demo.sh; safe to run again (it only installs what is missing).
set -euo pipefail

fpn_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# command -> Debian package that provides it
FPN_APT_NEEDS=(
  "ip:iproute2"
  "nft:nftables"
  "iptables:iptables"
  "iperf3:iperf3"
  "dig:bind9-dnsutils"
  "nsupdate:bind9-dnsutils"
  # The transferred zone is checked as a parent's secondary would check it.
  "named-checkzone:bind9-utils"
  # The generated man pages are rendered (and groff's warnings read) in tests.
  "groff:groff-base"
  "man:man-db"
  "tcpdump:tcpdump"
  "ping:iputils-ping"
  "pkill:procps"
  "gcc:gcc"
  "strace:strace"
  # `systemd-analyze verify` on configs/systemd (overlay-tests systemd_units).
  "systemd-analyze:systemd"
  # The lab's port-mapping router and its clients (nat_kinds tests). Only the
  # daemon's binary package: Debian's `miniupnpd` package would also install
  # a service for the machine's own interfaces.
  "miniupnpd:miniupnpd-nftables"
  "upnpc:miniupnpc"
  "natpmpc:natpmp-utils"
  # The web admin's browser tests (overlay-tests web_admin): headless
  # Chromium driven over WebDriver.
  "chromium:chromium"
  "chromedriver:chromium-driver"
  # NAT-f: the NAS behind the lab's home gateway runs a real FTP server, and
  # the remote laptop fetches from it (overlay-tests node_gateway). The
  # package's own service is stopped and disabled after the install.
  "vsftpd:vsftpd"
  "curl:curl"
)

fpn_ensure_deps() {
  local missing=() entry cmd pkg
  for entry in "${FPN_APT_NEEDS[@]}"; do
    cmd=${entry%%:*}; pkg=${entry##*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    # sort -u: two commands may come from one package
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    [ "$(id -u)" = 0 ] || fpn_die "missing packages ${missing[*]}; run as root so they can be installed"
    command -v apt-get >/dev/null 2>&1 || fpn_die "missing packages ${missing[*]} and no apt-get to install them"
    echo "==> installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || fpn_die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || fpn_die "apt-get install ${missing[*]} failed"
    for entry in "${FPN_APT_NEEDS[@]}"; do
      cmd=${entry%%:*}
      command -v "$cmd" >/dev/null 2>&1 || fpn_die "$cmd still missing after installing its package"
    done
    # The tests start vsftpd in a namespace; the host must not serve FTP.
    if [[ " ${missing[*]} " == *" vsftpd "* ]] && command -v systemctl >/dev/null 2>&1; then
      systemctl disable --now vsftpd >/dev/null 2>&1 || true
    fi
  fi

  # Rust: the stable toolchain must already be there (rustup); Debian's own cargo
  # is too old for edition 2024.
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  command -v cargo >/dev/null 2>&1 \
    || fpn_die "cargo not found: install the stable Rust toolchain with rustup (https://rustup.rs)"
  local rustv
  rustv=$(rustc --version | awk '{print $2}')
  case "$rustv" in
    1.[0-8][0-9].*) fpn_die "rustc $rustv is too old: fpn needs 1.89 or newer (rustup update stable)";;
  esac
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> installing cargo-nextest"
    cargo install cargo-nextest --locked || fpn_die "cargo install cargo-nextest failed"
  fi
}
