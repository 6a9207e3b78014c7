#!/usr/bin/env bash
# How much faster `write` could get if parts of its synchronisation were
# gone: builds the `rseq_cost` example from this tree and from this tree
# with each patch of scripts/write_ceiling/ applied (in temporary
# worktrees), then runs them all in turn PAIRS times and prints, per case,
# the median over the runs of each binary's median ns per record, and each
# variant's ratio to this tree. One pinned thread, no reader (see
# examples/rseq_cost.rs).
#
# The variants are measurements, not designs: they are correct only for a
# single pinned writer, which is what rseq_cost runs.
#   no_commit_sequence  the commit is a plain load and store instead of a
#                       restartable sequence: the most a write that
#                       commits inside its reserving sequence could save
#                       (it still keeps the commit word up to date)
#   no_sequences        no sequence at all, for the reservation either:
#                       the kernel's relay write, with no atomic, in our
#                       format
#   inline_copy         records of 16 to 128 bytes copied inline (two
#                       overlapping halves) instead of by a `memcpy` call
#
#     scripts/write_ceiling.sh [PAIRS] [SIZE]      (defaults 9, 64)
set -euo pipefail
pairs="${1:-9}"
size="${2:-64}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
cleanup() {
    for p in "$root"/scripts/write_ceiling/*.patch; do
        git -C "$root" worktree remove --force "$work/$(basename "$p" .patch)" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
target="$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
(cd "$root" && cargo build -q --release -p relayfs --example rseq_cost)
cp "$target/release/examples/rseq_cost" "$work/bin-this_tree"
names=(this_tree)
for p in "$root"/scripts/write_ceiling/*.patch; do
    name="$(basename "$p" .patch)"
    git -C "$root" worktree add -q --detach "$work/$name" HEAD
    # The patches are against the committed tree.
    git -C "$work/$name" apply "$p"
    (cd "$work/$name" && CARGO_TARGET_DIR="$target/write-ceiling" cargo build -q --release -p relayfs --example rseq_cost 2>/dev/null)
    cp "$target/write-ceiling/release/examples/rseq_cost" "$work/bin-$name"
    names+=("$name")
done
for i in $(seq "$pairs"); do
    for name in "${names[@]}"; do
        "$work/bin-$name" "$size" | grep -v " / " | sed -n 's/^  \([A-Za-z+ ]*[A-Za-z]\) *\([0-9.]*\) .*/\1\t\2/p' | sed "s/^/$name\t/" >> "$work/results"
    done
done
python3 - "$work/results" "$size" "${names[@]}" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
size, names = sys.argv[2], sys.argv[3:]
res = {}
for which, case, ns in rows:
    res.setdefault(case, {}).setdefault(which, []).append(float(ns))
print(f"{'case (' + size + ' B)':14s}" + "".join(f" {n:>20s}" for n in names))
for case, v in res.items():
    base = statistics.median(v["this_tree"])
    cells = []
    for n in names:
        m = statistics.median(v[n])
        cells.append(f"{m:8.2f}" if n == "this_tree" else f"{m:8.2f} ({m / base:4.2f}x)")
    print(f"{case:14s}" + "".join(f" {c:>20s}" for c in cells))
PY
