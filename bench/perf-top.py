#!/usr/bin/env python3
"""Where the fpn-node daemons' CPU goes, from `perf script` output.

    perf script -i DATA -F comm,pid,tid,ip,sym | bench/perf-top.py HZ UNITS NAME=PID...

Reads the samples of a `perf record -F HZ --call-graph dwarf` of the
daemons and prints per daemon: its CPU time per unit (UNITS new flows or
queries: microseconds per unit) by thread, and the functions with the most
CPU time under them (perf's "children", inclusive; self time beside it):
fpn's own functions, ring's crypto and the kernel's system-call entry
points, the top 40. Used by bench/native-hops.sh (PROFILE=1) and
bench/overlay.sh (STORM_PERF=1); design note 80 reads it.
"""
import collections
import re
import sys


def main():
    hz, units = float(sys.argv[1]), int(sys.argv[2])
    names = dict(reversed(a.split("=", 1)) for a in sys.argv[3:])
    total = collections.Counter()
    incl = collections.defaultdict(collections.Counter)
    selfc = collections.defaultdict(collections.Counter)
    threads = collections.defaultdict(collections.Counter)
    pid, comm, syms = None, None, []

    def flush():
        if pid in names and syms:
            total[pid] += 1
            threads[pid][comm] += 1
            selfc[pid][syms[0]] += 1
            for s in set(syms):
                incl[pid][s] += 1

    for line in sys.stdin:
        if not line.strip():
            continue
        if not line[0].isspace():
            flush()
            m = re.match(r"\s*(.*?)\s+(\d+)/(\d+)", line)
            pid, comm, syms = (m.group(2), m.group(1), []) if m else (None, None, [])
            continue
        f = line.split(None, 1)
        if len(f) == 2:
            syms.append(re.sub(r"::h[0-9a-f]{16}$", "", f[1].replace("(inlined)", "").strip()))
    flush()
    us = lambda n: n / hz / units * 1e6
    wanted = ("fpn_", "<fpn_", "ring::", "ring_core", "quinn", "<quinn")
    for p, name in names.items():
        print("  %s: %.1f us of CPU per unit (%d samples at %d Hz over %d units); by thread: %s" % (
            name, us(total[p]), total[p], hz, units,
            ", ".join("%s %.1f" % (t, us(c)) for t, c in threads[p].most_common(8))))
        print("    us per unit under the function (its own in brackets), top 40:")
        shown = 0
        for s, c in incl[p].most_common():
            if not (s.startswith(wanted) or (s.startswith("__x64_sys_"))):
                continue
            print("    %8.2f (%7.2f)  %s" % (us(c), us(selfc[p][s]), s[:140]))
            shown += 1
            if shown >= 40:
                break
        if total[p] == 0:
            print("    (no samples)")


if __name__ == "__main__":
    main()
