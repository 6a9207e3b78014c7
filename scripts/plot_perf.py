#!/usr/bin/env python3
"""Plots how the cost of a record grows with record size, thread count and
buffer size, into docs/perf.png.

Left and middle: the write benchmark (run `cargo bench -p relayfs --bench
write` first), median ns per record against record size, one thread and one
thread per CPU, with the baselines measured in the same run.
Right: end to end (`relayfs bench`, run here, so build it first with `cargo
build --release -p relayfs-cli`), 64-byte records, one producer thread
against `relayfs record` in another process, for a fixed 16 MiB per buffer
cut into sub-buffers of 16 KiB to 4 MiB: the producer's median ns per record
and the share of records dropped.

Needs matplotlib (pip install matplotlib).
Usage: python3 scripts/plot_perf.py [criterion-dir] [output.png]
"""
import json
import pathlib
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

crit = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
out = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "docs/perf.png")
relayfs = pathlib.Path("target/release/relayfs")

rows = {}
for est in crit.glob("*/*/*/new/estimates.json"):
    group, what, size = est.parts[-5], est.parts[-4], est.parts[-3]
    med = json.loads(est.read_text())["median"]["point_estimate"]
    rows.setdefault(group, {}).setdefault(what, {})[int(size)] = med
if not rows:
    sys.exit(f"no criterion results under {crit}: run cargo bench -p relayfs --bench write")

fig, axes = plt.subplots(1, 3, figsize=(16, 5))
for ax, group, title in (
    (axes[0], "one_thread", "one writer thread"),
    (axes[1], "per_cpu", "one writer thread per CPU (wall time / record)"),
):
    for what, pts in sorted(rows.get(group, {}).items()):
        xs = sorted(pts)
        style = "--" if what.startswith("floor_") or what in ("rtrb_push", "crossbeam_send") else "-"
        ax.plot(xs, [pts[x] for x in xs], style, marker="o", label=what)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("record size (bytes)")
    ax.set_ylabel("median ns per record")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

if relayfs.exists():
    total = 16 << 20
    sizes = [16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20]
    ns, drop = [], []
    for sb in sizes:
        r = subprocess.run(
            [str(relayfs), "bench", "--json", "--threads", "1", "--size", "64",
             "--duration", "2", "--subbuf-size", str(sb), "--n-subbufs", str(total // sb),
             "--no-fs-baseline"],
            capture_output=True, text=True, check=True)
        v = json.loads(r.stdout)
        ns.append(v["ns_per_record"])
        drop.append(100.0 * v["dropped"] / max(v["written"], 1))
        print(f"sub-buffer {sb >> 10} KiB: {v['ns_per_record']:.1f} ns/record, "
              f"{drop[-1]:.1f}% dropped, recorder {v['recorder_bytes_per_sec'] / 1e6:.0f} MB/s")
    ax = axes[2]
    ax.plot([s >> 10 for s in sizes], ns, marker="o", label="producer ns/record (median)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sub-buffer size (KiB), 16 MiB per buffer")
    ax.set_ylabel("median ns per record")
    ax.set_title("end to end, 64 B, 1 producer + relayfs record")
    ax.grid(True, which="both", alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot([s >> 10 for s in sizes], drop, "r--", marker="x", label="% dropped")
    ax2.set_ylabel("% of records dropped (counted)")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8)
else:
    axes[2].text(0.5, 0.5, "build target/release/relayfs\nfor the end-to-end panel",
                 ha="center", va="center")

fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
