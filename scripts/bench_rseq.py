#!/usr/bin/env python3
"""The write path with and without the restartable-sequence reservation, in
one run: `cargo bench -p relayfs --bench write` on the 64-byte cases (one
thread and one writer per CPU), alternating rounds with `RELAYFS_RSEQ=0`
(the compare-and-swap path, the baseline) and without it (the rseq path),
beside the floor copy of each round, and the floor copy with a relay reader
woken as often on the other CPU (`floor_copy_beside_reader`). Prints the median over the rounds of
each case's criterion median, its ratio to the floor, and rseq / CAS.

    python3 scripts/bench_rseq.py [ROUNDS]      (default 3)
"""
import os, re, statistics, subprocess, sys

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
cases = "floor_copy|floor_copy_beside_reader|write_no_overwrite|write_overwrite|reserve_no_overwrite|reserve_overwrite"
filt = f"^(one_thread|per_cpu)/({cases})/64$"
line = re.compile(r"^(\S+/\S+/64)\s+time:\s+\[\S+ \S+ (\S+) (\S+) ")
unit = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6}
res = {"cas": {}, "rseq": {}}
for r in range(rounds):
    for path in ("cas", "rseq"):
        env = dict(os.environ)
        env.pop("RELAYFS_RSEQ", None)
        if path == "cas":
            env["RELAYFS_RSEQ"] = "0"
        out = subprocess.run(
            ["cargo", "bench", "-q", "-p", "relayfs", "--bench", "write", "--", filt],
            env=env, capture_output=True, text=True, check=True).stdout
        # criterion prints the name on its own line when it is long
        out = re.sub(r"(\S+/\S+/64)\n\s+time:", r"\1 time:", out)
        for l in out.splitlines():
            m = line.match(l.strip())
            if m:
                res[path].setdefault(m.group(1), []).append(float(m.group(2)) * unit[m.group(3)])
        print(f"round {r + 1} {path} done", file=sys.stderr)
names = sorted(res["cas"], key=lambda n: (n.split("/")[0], "floor_copy" not in n, n))
print(f"{'case (64 B)':40s} {'CAS ns':>9s} {'rseq ns':>9s} {'rseq/CAS':>9s}  (ratio to floor: CAS, rseq)")
for n in names:
    c, s = statistics.median(res["cas"][n]), statistics.median(res["rseq"].get(n, [float("nan")]))
    g = n.split("/")[0]
    fc = statistics.median(res["cas"][f"{g}/floor_copy/64"])
    fs = statistics.median(res["rseq"][f"{g}/floor_copy/64"])
    print(f"{n:40s} {c:9.2f} {s:9.2f} {s / c:9.2f}  ({c / fc:.2f}x, {s / fs:.2f}x)")
for path in ("cas", "rseq"):
    fb = res[path].get("one_thread/floor_copy_beside_reader/64")
    if fb:
        fb = statistics.median(fb)
        for g in ("write_no_overwrite", "write_overwrite"):
            w = res[path].get(f"one_thread/{g}/64")
            if w:
                print(f"one_thread {g} {path}: {statistics.median(w) / fb:.2f}x the floor beside a reader ({fb:.2f} ns)")
for g in ("write_no_overwrite", "write_overwrite"):
    for path in ("cas", "rseq"):
        one, per = res[path].get(f"one_thread/{g}/64"), res[path].get(f"per_cpu/{g}/64")
        if one and per:
            print(f"scaling {g} {path}: {statistics.median(one) / statistics.median(per):.2f}x")
