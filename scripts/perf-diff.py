#!/usr/bin/env python3
"""Inclusive CPU per request, by function, of two profiled processes.

Record each process under the same load with dwarf stacks, e.g.
  perf record -F 2999 --call-graph dwarf,16384 -p PID -o a.data -- sleep 3
  perf script -i a.data -F comm,tid,ip,sym > a.txt
then: scripts/perf-diff.py a.txt REQUESTS_PER_S_A b.txt REQUESTS_PER_S_B [--hz 2999]
  [--seconds 3] [--skip-thread NAME] [--match WORD ...]
Prints microseconds of CPU per request under each function (inclusive),
A minus B first. A thread name given to --skip-thread (e.g. spate-allocator,
warming a segment) is left out of both.
"""
import argparse
import collections
import re


def stacks(path):
    cur = None
    for line in open(path):
        if not line.strip():
            if cur:
                yield cur
            cur = None
        elif not line[0].isspace():
            cur = [line.split()[0]]
        elif cur is not None:
            parts = line.split(None, 1)
            cur.append(re.sub(r"\+0x[0-9a-f]+$", "", parts[-1].strip()))
    if cur:
        yield cur


def inclusive(path, skip):
    counts = collections.Counter()
    for s in stacks(path):
        if any(k in s[0] for k in skip):
            continue
        counts["(all)"] += 1
        for f in set(s[1:]):
            counts[f] += 1
    return counts


def main():
    p = argparse.ArgumentParser()
    p.add_argument("a")
    p.add_argument("rate_a", type=float)
    p.add_argument("b")
    p.add_argument("rate_b", type=float)
    p.add_argument("--hz", type=float, default=2999)
    p.add_argument("--seconds", type=float, default=3)
    p.add_argument("--skip-thread", action="append", default=[])
    p.add_argument("--match", action="append", default=[])
    p.add_argument("--top", type=int, default=40)
    o = p.parse_args()
    a, b = inclusive(o.a, o.skip_thread), inclusive(o.b, o.skip_thread)
    us_a = 1e6 / o.hz / (o.rate_a * o.seconds)
    us_b = 1e6 / o.hz / (o.rate_b * o.seconds)
    rows = sorted(((a[f] * us_a - b[f] * us_b, a[f] * us_a, b[f] * us_b, f) for f in set(a) | set(b)), reverse=True)
    if o.match:
        rows = [r for r in rows if r[3] == "(all)" or any(m in r[3] for m in o.match)]
    print("  A-B      A      B   us/request, inclusive")
    for r in rows[: o.top]:
        print("%+6.2f %6.2f %6.2f  %s" % (r[0], r[1], r[2], r[3][:140]))


if __name__ == "__main__":
    main()
