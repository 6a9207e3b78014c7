#!/usr/bin/env python3
"""Prints the write benchmark (cargo bench -p relayfs --bench write) as a
table: median ns per record and the ratio to the floor (a copy of the same
bytes into a local ring) measured in the same run."""
import json, pathlib, sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
rows = {}
for est in root.glob("*/*/*/new/estimates.json"):
    group, what, size = est.parts[-5], est.parts[-4], est.parts[-3]
    med = json.loads(est.read_text())["median"]["point_estimate"]
    rows.setdefault(group, {}).setdefault(int(size), {})[what] = med
for group in sorted(rows):
    sizes = sorted(rows[group])
    whats = sorted({w for s in sizes for w in rows[group][s]}, key=lambda w: (w != "floor_copy", w))
    print(f"\n{group}: median ns per record (ratio to floor_copy)")
    print(f"{'':22s}" + "".join(f"{s:>18d} B" for s in sizes))
    for w in whats:
        cells = []
        for s in sizes:
            v, f = rows[group][s].get(w), rows[group][s].get("floor_copy")
            cells.append(f"{v:9.2f} ({v / f:4.1f}x)" if v and f else f"{'-':>16s}")
        print(f"{w:22s}" + "".join(f"{c:>20s}" for c in cells))
