# Shared by the benchmark scripts that run modes in interleaved rounds
# (bench/overlay.sh, bench/nat.sh): sourced, not run.
#
# The caller defines `log`, `measure MODE` (one round of one mode; it
# records "ROUND MODE value..." in $WORK/rounds.txt when its required checks
# pass, else "ROUND MODE reasons" in $WORK/failures.txt), `round_error MODE`
# (the file where a round that died left its reason) and `after_mode` (what
# to undo after each round of a mode), and sets WORK, REPEAT, MODES and
# METRICS (the names of the values in a rounds.txt line).

# stop_pid PID: TERM, then KILL after 3 s.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# wait_for SECONDS CMD...: polls CMD every 20 ms until it succeeds.
wait_for() {
    local end=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.02
    done
}

# Medians (sums for flowlost, maxima for flow1max) with min and max of each
# metric of each mode over the rounds that passed.
AGGREGATE='
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
names = sys.argv[2].split()
for mode in sys.argv[3].split():
    for i, name in enumerate(names):
        vals = []
        for r in rows:
            if r[1] == mode:
                try:
                    vals.append(float(r[2 + i]))
                except ValueError:
                    pass
        if not vals:
            print(mode, name, "NA", "NA", "NA")
            continue
        agg = sum(vals) if name == "flowlost" else max(vals) if name == "flow1max" else statistics.median(vals)
        g = lambda v: ("%d" % v) if name.startswith("retr") or name == "flowlost" else ("%.3g" % v if v < 100 else "%.0f" % v)
        print(mode, name, g(agg), g(min(vals)), g(max(vals)))
'

declare -A R   # R[mode.metric]: the aggregate over the rounds that passed
declare -A RNG # RNG[mode.metric]: "min..max" over those rounds

# run_rounds: REPEAT rounds of every mode, interleaved; then LOAD0, LOAD1,
# R and RNG are set.
run_rounds() {
    local m rc why k v lo hi
    LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
    : >"$WORK/rounds.txt"
    : >"$WORK/failures.txt"
    for ROUND in $(seq "$REPEAT"); do
        [ "$REPEAT" = 1 ] || log "--- round $ROUND of $REPEAT"
        for m in "${MODES[@]}"; do
            # A round that dies (a tunnel that does not come up) is a failed
            # round of its mode, not the end of the run. set -e holds inside
            # the subshell because its status is not tested by || or if.
            set +e
            (set -e; measure "$m")
            rc=$?
            set -e
            if [ $rc = 130 ]; then exit 130; fi
            if [ $rc != 0 ]; then
                why=$(cat "$(round_error "$m")" 2>/dev/null || echo "exited with status $rc")
                log "   ROUND FAILED: $why"
                echo "$ROUND $m ${why//$'\n'/ }" >>"$WORK/failures.txt"
            fi
            after_mode
        done
    done
    LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
    while read -r m k v lo hi; do
        R[$m.$k]=$v
        RNG[$m.$k]="$lo..$hi"
    done < <(python3 -c "$AGGREGATE" "$WORK/rounds.txt" "$METRICS" "${MODES[*]}")
}

passed() { grep -c " $1 " "$WORK/rounds.txt" 2>/dev/null || true; }
failed() { grep -c " $1 " "$WORK/failures.txt" 2>/dev/null || true; }
