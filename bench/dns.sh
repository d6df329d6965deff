#!/usr/bin/env bash
# bench/dns.sh - fpn-ddns against BIND and Knot, same zone, same load tool, same run.
#
#   bench/dns.sh                   # fpn, bind, knot; 1 round
#   REPEAT=3 bench/dns.sh          # 3 interleaved rounds, then median [min..max]
#   bench/dns.sh fpn knot          # a subset
#   bench/dns.sh interop           # BIND and Knot as secondaries: NOTIFY, AXFR/IXFR with TSIG
#   bench/dns.sh fsync [fpn bind]  # strace: a sync between each update's arrival and its answer
#
# Every server runs in the foreground on 127.0.0.1 (UDP+TCP, its own port), from a fresh
# copy of the same zone (bench.fpn.: SOA, NS, ns1, name0..name999 A, TXT on every 10th
# name), with THREADS worker threads and dynamic updates allowed for one TSIG key
# (HMAC-SHA256, fresh random secret per run). It is stopped by PID when its turn is over;
# nothing leaves loopback. Load comes from dnsperf (Debian package dnsperf).
#
# Per server:
#   qps, avg_ms      dnsperf -c CLIENTS -q OUTSTANDING, DURATION s, random A lookups (UDP)
#   qps_edns         the same with EDNS0 on every query (dnsperf -e), as resolvers send
#   cpu              cores the server used during the qps run (the machine has NCPU;
#                    dnsperf runs on the same cores)
#   upd_ms           UPDATES sequential signed additions with dnsperf -u -q 1: mean latency,
#                    each one durable (fsync'd) before its answer for fpn and BIND
#   upd_p99          99th percentile of the same
#   upd/s, burst_ms  UPD_BURST signed additions with dnsperf -u -c CLIENTS -q UPD_OUTSTANDING
#                    (many in flight): rate and mean latency
#   ms/upd           1000 / upd/s: wall time per durable update with many in flight
# Every addition is checked afterwards (NOERROR count, last name resolves).
# fsync_ms: one 4 KiB write + fdatasync on the data disk, measured before each server.
#
# Knobs: DURATION=15 CLIENTS=10 OUTSTANDING=100 UPDATES=300 UPD_BURST=3000
#        UPD_OUTSTANDING=20 THREADS=2 REPEAT=1 FPN_PORT=5311 BIND_PORT=5312 KNOT_PORT=5313
#        WORK=${TMPDIR:-/tmp}/fpn-dns-bench (wiped at start; logs and results.tsv stay)
# Needs root only to install packages (apt-get install dnsperf bind9 knot bind9-dnsutils).
set -u
export LC_ALL=C
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-10}
OUTSTANDING=${OUTSTANDING:-100}
UPDATES=${UPDATES:-300}
UPD_BURST=${UPD_BURST:-3000}
UPD_OUTSTANDING=${UPD_OUTSTANDING:-20}
THREADS=${THREADS:-2}
REPEAT=${REPEAT:-1}
FPN_PORT=${FPN_PORT:-5311}
BIND_PORT=${BIND_PORT:-5312}
KNOT_PORT=${KNOT_PORT:-5313}
WORK=${WORK:-${TMPDIR:-/tmp}/fpn-dns-bench}
ORIGIN=bench.fpn.
KEY=bench-key.
NAMES=1000
CLK_TCK=$(getconf CLK_TCK)
SERVER_PID=""

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }

case $WORK in /|"") die "refusing WORK=$WORK" ;; esac

# ------------------------------------------------------------------ tools
need_pkgs=()
command -v dnsperf >/dev/null || need_pkgs+=(dnsperf)
command -v dig >/dev/null || need_pkgs+=(bind9-dnsutils)
command -v named >/dev/null || need_pkgs+=(bind9)
command -v knotd >/dev/null || need_pkgs+=(knot)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${need_pkgs[*]}; run as root to install them"
  log "==> installing ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null \
    || die "apt-get install failed"
fi
log "==> building fpn-ddns (release)"
cargo build --release -p fpn-ddns --locked >&2 || die "build failed"
FPN_BIN="${CARGO_TARGET_DIR:-target}/release/fpn-ddns"
[ -x "$FPN_BIN" ] || die "no binary at $FPN_BIN"

# ------------------------------------------------------------------ processes
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=""
}
trap 'stop_server; rm -f "$WORK"/tsig.* "$WORK"/*/tsig.*' EXIT
trap 'exit 130' INT TERM

port_free() { ! ss -Hlnu "sport = :$1" | grep -q . && ! ss -Hlnt "sport = :$1" | grep -q .; }

# ------------------------------------------------------------------ inputs
make_inputs() {
  rm -rf "$WORK"; mkdir -p "$WORK"
  awk -v n="$NAMES" -v o="$ORIGIN" 'BEGIN {
    printf "$ORIGIN %s\n$TTL 300\n", o
    printf "@\t3600\tIN\tSOA\tns1.%s hostmaster.%s 1 3600 600 86400 60\n", o, o
    printf "@\t3600\tIN\tNS\tns1.%s\nns1\t\tIN\tA\t127.0.0.1\n", o
    for (i = 0; i < n; i++) {
      printf "name%d\t\tIN\tA\t100.64.%d.%d\n", i, int(i / 256), i % 256
      if (i % 10 == 0) printf "name%d\t\tIN\tTXT\t\"node=%d v=1\"\n", i, i
    } }' >"$WORK/zone"
  awk -v n="$NAMES" -v o="$ORIGIN" 'BEGIN { srand(42); for (i = 0; i < 100000; i++)
    printf "name%d.%s A\n", int(rand() * n), o }' >"$WORK/queries"
  (umask 077
   SECRET=$(head -c 32 /dev/urandom | base64 -w0)
   echo "$SECRET" >"$WORK/tsig.b64"
   printf 'key "%s" {\n\talgorithm hmac-sha256;\n\tsecret "%s";\n};\n' "$KEY" "$SECRET" >"$WORK/tsig.key")
  SECRET=$(cat "$WORK/tsig.b64")
}

# ------------------------------------------------------------------ servers
start_fpn() {  # dir port
  "$FPN_BIN" serve --zone "$ORIGIN" --listen "127.0.0.1:$2" --data "$1/db" --zone-file "$1/zone" \
    --tsig-key-file "$WORK/tsig.key" --udp-threads "$THREADS" >"$1/server.out" 2>"$1/server.log" &
  SERVER_PID=$!
}
start_bind() {
  cp "$WORK/tsig.key" "$1/tsig.key"
  cat >"$1/named.conf" <<EOF
include "$1/tsig.key";
options { directory "$1"; pid-file "$1/named.pid"; session-keyfile "$1/session.key";
  listen-on port $2 { 127.0.0.1; }; listen-on-v6 { none; }; recursion no; dnssec-validation no; notify no; };
controls { };
zone "${ORIGIN%.}" { type primary; file "$1/zone"; allow-update { key "$KEY"; }; };
EOF
  named -g -4 -n "$THREADS" -c "$1/named.conf" >"$1/server.log" 2>&1 &
  SERVER_PID=$!
}
start_knot() {
  mkdir -p "$1/db"
  cat >"$1/knot.conf" <<EOF
server:
    rundir: "$1"
    pidfile: "$1/knot.pid"
    listen: 127.0.0.1@$2
    udp-workers: $THREADS
    tcp-workers: $THREADS
    background-workers: 1
log:
  - target: stderr
    any: info
database:
    storage: "$1/db"
key:
  - id: $KEY
    algorithm: hmac-sha256
    secret: $SECRET
acl:
  - id: ddns
    key: $KEY
    action: update
zone:
  - domain: $ORIGIN
    file: "$1/zone"
    storage: "$1"
    acl: ddns
EOF
  knotd -c "$1/knot.conf" >"$1/server.log" 2>&1 &
  SERVER_PID=$!
}

wait_ready() {  # port [zone]
  local deadline=$(( $(now_us) + 20000000 )) zone=${2:-$ORIGIN}
  while [ "$(now_us)" -lt "$deadline" ]; do
    kill -0 "$SERVER_PID" 2>/dev/null || return 1
    dig +norec +time=1 +tries=1 @127.0.0.1 -p "$1" "$zone" SOA 2>/dev/null | grep -q 'flags:.* aa' && return 0
    sleep 0.05
  done
  return 1
}

# ------------------------------------------------------------------ measurements
stat_of() {  # dnsperf summary file, key
  awk -v k="$2" '
    k == "qps" && /(Queries|Updates) per second:/ { printf "%.0f\n", $4; exit }
    k == "avg" && /Average Latency \(s\):/ { printf "%.3f\n", $4 * 1000; exit }
    k == "noerr" && /Response codes:/ { for (i = 3; i < NF; i++) if ($i == "NOERROR") { print $(i+1); exit } print 0; exit }
  ' "$1"
}
p99_of() {  # dnsperf -v output -> p99 latency, ms
  awk '/^> [A-Z]/ && $2 != "T" && $NF ~ /^[0-9.]+$/ { print $NF * 1000 }' "$1" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) { print "NA"; exit } r = int(NR * 0.99); if (r < NR * 0.99) r++; printf "%.3f\n", v[r] }'
}
srv_ticks() { sed 's/^.*) //' "/proc/$SERVER_PID/stat" 2>/dev/null | awk '{print $12+$13}'; }
fsync_ms() {  # one 4 KiB write + fdatasync, 50 times, on the disk the servers write to
  python3 - "$1" <<'EOF' 2>/dev/null || echo NA
import os, sys, time
p = os.path.join(sys.argv[1], "fsync.probe"); fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
os.write(fd, b"\0" * 4096); os.fsync(fd); t = time.perf_counter()
for i in range(50): os.pwrite(fd, b"x" * 4096, 0); os.fdatasync(fd)
print("%.3f" % ((time.perf_counter() - t) / 50 * 1000)); os.close(fd); os.unlink(p)
EOF
}

measure() {  # round mode -> appends a TSV line
  local round=$1 mode=$2 d="$WORK/r$1-$2" port t0 t1 p0 p1 cpu n fs tag
  case $mode in fpn) port=$FPN_PORT ;; bind) port=$BIND_PORT ;; knot) port=$KNOT_PORT ;; esac
  mkdir -p "$d"; cp "$WORK/zone" "$d/zone"
  port_free "$port" || { log "port $port busy: skipping $mode"; return; }
  fs=$(fsync_ms "$d")
  "start_$mode" "$d" "$port"
  wait_ready "$port" || { log "$mode did not start, see $d/server.log"; stop_server; return; }
  [ "$(dig +short +norec @127.0.0.1 -p "$port" "name999.$ORIGIN" A)" = 100.64.3.231 ] || { log "$mode: wrong answer"; stop_server; return; }
  dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries" -c "$CLIENTS" -q "$OUTSTANDING" -l 2 >/dev/null 2>&1  # warm-up
  p0=$(srv_ticks); t0=$(now_us)
  timeout 120 dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries" -c "$CLIENTS" -q "$OUTSTANDING" -l "$DURATION" >"$d/qps.txt" 2>&1
  t1=$(now_us); p1=$(srv_ticks)
  cpu=$(awk -v p="$((p1 - p0))" -v hz="$CLK_TCK" -v dt="$((t1 - t0))" 'BEGIN { printf "%.2f", p / hz / (dt / 1e6) }')
  timeout 120 dnsperf -e -s 127.0.0.1 -p "$port" -d "$WORK/queries" -c "$CLIENTS" -q "$OUTSTANDING" -l "$DURATION" >"$d/qps-edns.txt" 2>&1
  # sequential updates, one in flight
  tag="r${round}${mode}"
  awk -v n="$UPDATES" -v o="$ORIGIN" -v t="$tag" 'BEGIN { for (i = 1; i <= n; i++)
    printf "%s\nadd s%s-%d 60 A 198.18.%d.%d\nsend\n", o, t, i, int(i / 256), i % 256 }' >"$d/upd-seq.in"
  timeout 120 dnsperf -u -s 127.0.0.1 -p "$port" -d "$d/upd-seq.in" -c 1 -q 1 -n 1 -t 5 -v \
    -y "hmac-sha256:$KEY:$SECRET" >"$d/upd-seq.txt" 2>&1
  n=$(stat_of "$d/upd-seq.txt" noerr)
  local u_avg u_p99
  u_avg=$(awk '/^> NOERROR/ { s += $NF; c++ } END { if (c) printf "%.3f", s / c * 1000; else print "NA" }' "$d/upd-seq.txt")
  u_p99=$(p99_of "$d/upd-seq.txt")
  if [ "${n:-0}" != "$UPDATES" ] || [ -z "$(dig +short +norec @127.0.0.1 -p "$port" "s$tag-$UPDATES.$ORIGIN" A)" ]; then
    log "$mode: sequential updates: ${n:-0}/$UPDATES NOERROR"; u_avg="FAIL"
  fi
  # many updates in flight
  awk -v n="$UPD_BURST" -v o="$ORIGIN" -v t="$tag" 'BEGIN { for (i = 1; i <= n; i++)
    printf "%s\nadd b%s-%d 60 A 198.19.%d.%d\nsend\n", o, t, i, int(i / 256) % 256, i % 256 }' >"$d/upd-burst.in"
  timeout 120 dnsperf -u -s 127.0.0.1 -p "$port" -d "$d/upd-burst.in" -c "$CLIENTS" -q "$UPD_OUTSTANDING" -n 1 -t 5 \
    -y "hmac-sha256:$KEY:$SECRET" >"$d/upd-burst.txt" 2>&1
  n=$(stat_of "$d/upd-burst.txt" noerr)
  local rate b_avg per
  rate=$(stat_of "$d/upd-burst.txt" qps); b_avg=$(stat_of "$d/upd-burst.txt" avg)
  per=$(awk -v r="$rate" 'BEGIN { if (r > 0) printf "%.3f", 1000 / r; else print "NA" }')
  [ "${n:-0}" = "$UPD_BURST" ] || { log "$mode: burst: ${n:-0}/$UPD_BURST NOERROR"; rate="${rate}(${n:-0}ok)"; }
  stop_server
  rm -f "$d/upd-seq.in" "$d/upd-burst.in"
  grep -v '^> ' "$d/upd-seq.txt" >"$d/upd-seq.summary"; rm -f "$d/upd-seq.txt"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$mode" \
    "$(stat_of "$d/qps.txt" qps)" "$(stat_of "$d/qps.txt" avg)" "$(stat_of "$d/qps-edns.txt" qps)" "$cpu" \
    "$u_avg" "$u_p99" "$rate" "$b_avg" "$per" "$fs" "$(cut -d' ' -f1 /proc/loadavg)" >>"$WORK/results.tsv"
}

# ------------------------------------------------------------------ interop
# bench/dns.sh interop: BIND and Knot as secondaries of fpn-ddns. fpn-ddns NOTIFYs them
# (signed), they transfer with TSIG (AXFR first, then IXFR), and must then serve a LIP
# record and a later change. Prints PASS/FAIL per secondary.
interop() {
  local d="$WORK/interop" fpn_port=$FPN_PORT sec_port=$BIND_PORT ok=0 sec
  mkdir -p "$d"
  "$FPN_BIN" tsig-keygen admin-key >"$d/admin.key"; "$FPN_BIN" tsig-keygen xfer-key >"$d/xfer.key"
  local xsecret; xsecret=$(sed -n 's/.*secret "\(.*\)".*/\1/p' "$d/xfer.key")
  for sec in bind knot; do
    rm -rf "$d/db" "$d/$sec"; mkdir -p "$d/$sec/db"
    printf 'zone = "home.fpn."\n[[key]]\nfile = "admin.key"\nupdate = ["@"]\n[[key]]\nfile = "xfer.key"\ntransfer = true\n[[notify]]\naddress = "127.0.0.1:%s"\nkey = "xfer-key"\n' \
      "$sec_port" >"$d/ddns.toml"
    "$FPN_BIN" serve --config "$d/ddns.toml" --listen "127.0.0.1:$fpn_port" --data "$d/db" >"$d/fpn.out" 2>"$d/fpn.log" &
    local fpn_pid=$!
    SERVER_PID=$fpn_pid; wait_ready "$fpn_port" home.fpn. || { log "fpn-ddns did not start"; stop_server; return 1; }
    if [ $sec = bind ]; then
      cat >"$d/bind/named.conf" <<EOF
include "$d/xfer.key";
options { directory "$d/bind"; pid-file "$d/bind/named.pid"; session-keyfile "$d/bind/s.key";
  listen-on port $sec_port { 127.0.0.1; }; listen-on-v6 { none; }; recursion no; dnssec-validation no; notify no; };
controls { };
server 127.0.0.1 { keys { xfer-key; }; };
zone "home.fpn" { type secondary; primaries port $fpn_port { 127.0.0.1; }; file "$d/bind/zone.bak"; };
EOF
      named -g -4 -c "$d/bind/named.conf" >"$d/bind/log" 2>&1 &
    else
      cat >"$d/knot/knot.conf" <<EOF
server:
    rundir: "$d/knot"
    listen: 127.0.0.1@$sec_port
log:
  - target: stderr
    any: info
database:
    storage: "$d/knot/db"
key:
  - id: xfer-key.
    algorithm: hmac-sha256
    secret: $xsecret
remote:
  - id: primary
    address: 127.0.0.1@$fpn_port
    key: xfer-key.
acl:
  - id: from_primary
    address: 127.0.0.1
    key: xfer-key.
    action: notify
zone:
  - domain: home.fpn.
    master: primary
    acl: from_primary
    storage: "$d/knot"
EOF
      knotd -c "$d/knot/knot.conf" >"$d/knot/log" 2>&1 &
    fi
    SERVER_PID=$!
    sleep 1
    printf 'server 127.0.0.1 %s\nzone home.fpn.\nupdate add nas.home.fpn. 60 A 198.18.0.7\nupdate add nas.home.fpn. 60 TYPE65300 \\# 4 c0a8010a\nsend\n' \
      "$fpn_port" | nsupdate -k "$d/admin.key"
    sleep 2
    printf 'server 127.0.0.1 %s\nzone home.fpn.\nupdate add pc.home.fpn. 60 A 198.18.0.8\nsend\n' "$fpn_port" | nsupdate -k "$d/admin.key"
    local lip="" pc="" i
    for i in $(seq 50); do
      lip=$(dig +short +norec @127.0.0.1 -p "$sec_port" nas.home.fpn. TYPE65300)
      pc=$(dig +short +norec @127.0.0.1 -p "$sec_port" pc.home.fpn. A)
      [ "$lip" = '\# 4 C0A8010A' ] && [ "$pc" = 198.18.0.8 ] && break
      sleep 0.2
    done
    stop_server; SERVER_PID=$fpn_pid; stop_server
    if [ "$lip" = '\# 4 C0A8010A' ] && [ "$pc" = 198.18.0.8 ]; then
      echo "interop $sec secondary: PASS ($(grep -ciE 'transfer completed|XFR, incoming.*finished' "$d/$sec/log") transfers)"
    else
      echo "interop $sec secondary: FAIL (lip=$lip pc=$pc; see $d/$sec/log)"; ok=1
    fi
  done
  return $ok
}


# ------------------------------------------------------------------ fsync check
# bench/dns.sh fsync [fpn bind]: each server under `strace -f -ttt`, FSYNC_UPDATES (20)
# signed additions one at a time (dnsperf -q 1, so each waits for the previous answer).
# An update is durable before its answer if an fsync/fdatasync of any thread falls
# between the answer before it and its own answer (the update arrives in between).
# Prints per server the answers, the syncs and how many answers had no sync before them:
# PASS when that is 0 and every update was NOERROR. Knot is not in the default set: it
# does not sync before answering, so `bench/dns.sh fsync knot` is the control that FAILs.
fsync_check() {
  local mode port d n answers syncs unsynced ok=0 nupd=${FSYNC_UPDATES:-20}
  for mode in ${*:-fpn bind}; do
    case $mode in fpn) port=$FPN_PORT ;; bind) port=$BIND_PORT ;; knot) port=$KNOT_PORT ;; *) log "fsync: no $mode"; continue ;; esac
    d="$WORK/fsync-$mode"; mkdir -p "$d"; cp "$WORK/zone" "$d/zone"
    "start_$mode" "$d" "$port"
    wait_ready "$port" || { log "$mode did not start, see $d/server.log"; stop_server; ok=1; continue; }
    # Attach now, after start-up and the readiness queries: every answer traced is an update's.
    strace -f -ttt -p "$SERVER_PID" -e trace=fsync,fdatasync,sync_file_range,sendto,sendmsg,sendmmsg \
      -o "$d/strace.txt" 2>"$d/strace.log" &
    local st=$!
    sleep 1
    awk -v n="$nupd" -v o="$ORIGIN" 'BEGIN { for (i = 1; i <= n; i++)
      printf "%s\nadd fs-%d 60 A 198.18.9.%d\nsend\n", o, i, i }' >"$d/upd.in"
    timeout 60 dnsperf -u -s 127.0.0.1 -p "$port" -d "$d/upd.in" -c 1 -q 1 -n 1 -t 5 \
      -y "hmac-sha256:$KEY:$SECRET" >"$d/upd.txt" 2>&1
    n=$(stat_of "$d/upd.txt" noerr)
    sleep 0.5; kill -INT "$st" 2>/dev/null; wait "$st" 2>/dev/null
    stop_server
    # One line per answer (a send that did not fail), S per sync before it.
    read -r answers syncs unsynced < <(awk '
      # A syscall counts when it returns: its own line unless <unfinished ...>, else its resumed line.
      /<unfinished/ || /= -1/ { next }
      /(fsync|fdatasync)\(/ || /<\.\.\. (fsync|fdatasync) resumed>/ { s++; pending = 1; next }
      /send(to|msg|mmsg)\(/ || /<\.\.\. send(to|msg|mmsg) resumed>/ { a++; if (!pending) u++; pending = 0 }
      END { printf "%d %d %d\n", a, s, u }' "$d/strace.txt")
    if [ "${n:-0}" = "$nupd" ] && [ "$answers" -ge "$nupd" ] && [ "$unsynced" = 0 ]; then
      echo "fsync $mode: PASS ($nupd updates NOERROR, $answers answers, $syncs syncs, every answer after a sync)"
    else
      echo "fsync $mode: FAIL (${n:-0}/$nupd NOERROR, $answers answers, $syncs syncs, $unsynced answers with no sync before them; $d/strace.txt)"
      ok=1
    fi
  done
  return $ok
}

# ------------------------------------------------------------------ main
if [ "${1:-}" = interop ]; then
  rm -rf "$WORK"; mkdir -p "$WORK"
  interop; exit $?
fi
if [ "${1:-}" = fsync ]; then
  shift; make_inputs; fsync_check "$@"; exit $?
fi
MODES=${*:-fpn bind knot}
make_inputs
: >"$WORK/results.tsv"
FMT='%-4s %-5s %9s %7s %9s %5s %8s %8s %8s %9s %7s %8s %5s\n'
echo "=== bench/dns.sh: $MODES | $(nproc) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), $THREADS server threads, ${DURATION}s runs, $REPEAT round(s)"
echo "dnsperf $(dnsperf -h 2>&1 | awk '/^Version/{print $2}') | $(named -v | head -1) | $(knotd --version | head -1) | fpn-ddns $(git rev-parse --short HEAD)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "$FMT" run srv qps avg_ms qps_edns cpu upd_ms upd_p99 upd/s burst_ms ms/upd fsync_ms load
for round in $(seq "$REPEAT"); do
  for mode in $MODES; do
    measure "$round" "$mode"
    tail -n1 "$WORK/results.tsv" | awk -F'\t' -v f="$FMT" -v m="$mode" '$2 == m { printf f, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 }'
  done
done
if [ "$REPEAT" -gt 1 ]; then
  echo; echo "median [min..max] over $REPEAT rounds:"
  for mode in $MODES; do
    line="$mode:"
    for c in 3:qps 5:qps_edns 7:upd_ms 9:upd/s 11:ms/upd; do
      col=${c%%:*}; name=${c#*:}
      line="$line  $name $(awk -F'\t' -v m="$mode" -v c="$col" '$2 == m && $c ~ /^[0-9.]+$/ { print $c }' "$WORK/results.tsv" | sort -g |
        awk '{ v[NR] = $1 } END { if (!NR) { print "-"; exit } m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%s [%s..%s]", m, v[1], v[NR] }')"
    done
    echo "$line"
  done
fi
echo "work dir (logs, results.tsv): $WORK"
