#!/usr/bin/env python3
"""Where the time of a 64-byte `write` goes, part by part.

Builds `examples/write_loop` (release), times `write` and the floor copy
alternately ROUNDS times (no profiler attached), then runs the `write` loop
once under `perf record -e cpu-clock` and sorts the samples of the loop's
instructions by the source they were inlined from (`perf annotate`), into the
parts of the write path. Each part's time is its share of the samples times
the median `write` time. cpu-clock samples land on the instruction waiting
to retire, so a part's share is where the pipeline waited, not a count of
its instructions; the listing it prints (`--listing`) has both.

With `--with-reader` the `write` loop is `write-reader`: no-overwrite mode,
with a reader thread draining the buffer from another CPU as the benchmark's
does. Only the writer thread's samples are counted, and the time it spends
outside the loop (the sub-buffer switch, the reader's wakeup, the kernel)
is listed by function.

    python3 scripts/write_account.py [--rounds N] [--records N] [--listing] [--with-reader]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

# (part, patterns of the innermost inlined function an instruction came from)
PARTS = [
    ("reserve: the restartable sequence", [r"rseq::Pin::sequence", r"Pin::compare_exchange"]),
    ("commit: the restartable sequence", [r"rseq::Pin::add_sequence", r"Pin::fetch_add"]),
    ("which CPU, which buffer", [r"Channel::current", r"cpu::", r"rseq::known_offset",
                                r"rseq::area_at", r"then_some", r"read_volatile",
                                r"SliceIndex", r"unwrap_or_else"]),
    ("reserve: position and room checks", [r"reserve_fast", r"pos_offset", r"header_word",
                                           r"move_head", r"PartialOrd", r"wrapping_add"]),
    ("copy: offset, bounds, call", [r"write_at", r"data_offset", r"copy_nonoverlapping",
                                    r"ptr::.*add", r"mut_ptr"]),
    ("commit: descriptor and completion test", [r"commit_bytes", r"Shared::commit",
                                                r"slot_of", r"descriptor", r"add_to"]),
    ("entry checks (closed, size)", [r"write_parts", r"write_to", r"Channel::write",
                                     r"atomic_load", r"Buffer::shared", r"is_closed"]),
    ("the benchmark's loop", [r"black_box", r"Vec", r"RawVec", r"non_null", r"as_ref",
                              r"Range", r"spec_next", r"write_loop::main"]),
]


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def part_of(func):
    for name, pats in PARTS:
        if any(re.search(p, func) for p in pats):
            return name
    return "other: " + func


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--records", type=int, default=200_000_000)
    ap.add_argument("--listing", action="store_true", help="print the annotated instructions")
    ap.add_argument("--with-reader", action="store_true",
                    help="profile write-reader: a reader draining from another CPU")
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    meta = json.loads(sh(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=root))
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "relayfs", "--example", "write_loop"],
                   cwd=root, check=True)
    exe = os.path.join(meta["target_directory"], "release", "examples", "write_loop")

    loop_name = "write-reader" if a.with_reader else "write"
    times = {"floor": [], "write": []}
    for _ in range(a.rounds):
        for what in ("floor", "write"):
            out = sh([exe, loop_name if what == "write" else what, "64", str(a.records)])
            times[what].append(float(re.search(r"([0-9.]+) ns", out).group(1)))
            if "refused" in out:
                print(out.splitlines()[0], file=sys.stderr)
    floor = statistics.median(times["floor"])
    write = statistics.median(times["write"])

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        sh(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-o", data, "--",
            exe, loop_name, "64", str(a.records)])
        # The writer thread only (the reader thread is called `drain`).
        report = sh(["perf", "report", "-i", data, "--stdio", "--sort", "dso,sym",
                     "--comms", "write_loop"])
        outside = []
        for line in report.splitlines():
            m = re.match(r"\s*([0-9.]+)%\s+(\S+)\s+\[([.k])\]\s+(.*\S)", line)
            if m and not m.group(4).startswith("write_loop::main") and "memmove" not in m.group(4):
                outside.append((float(m.group(1)), m.group(4)))
        rows = []
        for line in report.splitlines():
            m = re.match(r"\s*([0-9.]+)%\s+(\S+)\s+\[\.\]\s+(.*\S)", line)
            if m:
                rows.append((float(m.group(1)), m.group(2), m.group(3)))
        loop = next(r for r in rows if r[1] == "write_loop")
        copy = sum(r[0] for r in rows if r[1].startswith("libc") and "mem" in r[2])
        ann = sh(["perf", "annotate", "-i", data, "--stdio", "-s", loop[2]])

    shares, counts, cur = {}, {}, "?"
    listing = []
    for line in ann.splitlines():
        m = re.match(r"^\s+:\s+\d+\s+(.*\S):\s*$", line)
        if m and ("::" in m.group(1) or "<" in m.group(1)):
            cur = m.group(1)
            continue
        m = re.match(r"^\s+([0-9]+\.[0-9]+)\s+:\s+([0-9a-f]+):\s+(.*)$", line)
        if m:
            pct = float(m.group(1))
            part = part_of(cur)
            if pct > 0:
                shares[part] = shares.get(part, 0.0) + pct * loop[0] / 100
                counts[part] = counts.get(part, 0) + 1
            listing.append(f"{pct:6.2f}  {m.group(3):50.50s} {part}")
    shares["copy: memcpy (libc)"] = copy
    counts["copy: memcpy (libc)"] = 0
    total = sum(shares.values())

    print(f"floor copy {floor:.2f} ns, write {write:.2f} ns ({write / floor:.2f}x), "
          f"medians of {a.rounds} rounds of {a.records} records")
    print(f"{'part':42s} {'samples':>8s} {'ns':>6s} {'instr. hit':>10s}")
    for part, s in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"{part:42s} {100 * s / total:7.1f}% {write * s / total:6.2f} {counts[part]:10d}")
    print(f"(samples outside the loop and libc's copy, dropped: {100 - total:.1f}%)")
    if a.with_reader:
        print("the writer thread outside the loop (share of its samples):")
        for pct, sym in outside[:15]:
            print(f"  {pct:6.2f}%  {sym}")
    if a.listing:
        print("\n".join(listing))


if __name__ == "__main__":
    sys.exit(main())
