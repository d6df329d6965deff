#!/usr/bin/env python3
"""Where the fpn-node daemons' CPU goes, from `perf script` output.

    perf script -i DATA -F comm,pid,tid,period,ip,sym | bench/perf-top.py UNITS NAME=PID...

Reads the samples of a `perf record -e cpu-clock --call-graph dwarf` of the
daemons and prints per daemon: its CPU time per unit (UNITS new flows or
queries: microseconds per unit) by thread, and the functions with the most
CPU time under them (perf's "children", inclusive; self time beside it):
fpn's own functions, ring's crypto, quinn and the kernel's system-call
entry points, the top 40. Time is each sample's period (nanoseconds of
cpu-clock), not the requested rate, which perf may lower. Samples
without a call chain count in the totals only. Used by
bench/native-hops.sh (PROFILE=1) and bench/overlay.sh (STORM_PERF=1);
design note 80 reads it.
"""
import collections
import re
import sys

WANTED = ("fpn_", "<fpn_", "ring::", "ring_core", "quinn", "<quinn", "__x64_sys_")


def main():
    if len(sys.argv) < 3 or not sys.argv[1].isdigit() or int(sys.argv[1]) < 1:
        sys.exit("usage: perf-top.py UNITS NAME=PID... (UNITS > 0) < perf script output")
    units = int(sys.argv[1])
    names = {}
    for a in sys.argv[2:]:
        name, sep, pid = a.partition("=")
        if not sep or not pid.isdigit():
            sys.exit("perf-top.py: %r is not NAME=PID" % a)
        names[pid] = name
    total = collections.Counter()
    incl = collections.defaultdict(collections.Counter)
    own = collections.defaultdict(collections.Counter)
    threads = collections.defaultdict(collections.Counter)
    pid, comm, period, syms = None, None, 0, []

    def flush():
        if pid not in names:
            return
        total[pid] += period
        threads[pid][comm] += period
        if syms:
            own[pid][syms[0]] += period
            for s in set(syms):
                incl[pid][s] += period

    for line in sys.stdin:
        if not line.strip():
            continue
        if not line[0].isspace():
            flush()
            m = re.match(r"\s*(.*?)\s+(\d+)/(\d+)\s+(\d+)", line)
            if m:
                pid, comm, period, syms = m.group(2), m.group(1), int(m.group(4)), []
            else:
                pid, comm, period, syms = None, None, 0, []
            continue
        f = line.split(None, 1)
        if len(f) == 2:
            syms.append(re.sub(r"::h[0-9a-f]{16}$", "", f[1].replace("(inlined)", "").strip()))
    flush()

    def us(ns):
        return ns / 1000 / units

    for p, name in names.items():
        print("  %s: %.1f us of CPU per unit (%.3f s over %d units); by thread: %s" % (
            name, us(total[p]), total[p] / 1e9, units,
            ", ".join("%s %.1f" % (t, us(c)) for t, c in threads[p].most_common(8))))
        if total[p] == 0:
            print("    (no samples)")
            continue
        print("    us per unit under the function (its own in brackets), top 40:")
        shown = 0
        for s, c in incl[p].most_common():
            if not s.startswith(WANTED):
                continue
            print("    %8.2f (%7.2f)  %s" % (us(c), us(own[p][s]), s[:140]))
            shown += 1
            if shown >= 40:
                break


if __name__ == "__main__":
    main()
