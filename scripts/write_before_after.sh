#!/usr/bin/env bash
# The 64-byte write path of an earlier revision against this tree's, in one
# run: builds the `rseq_cost` example at REV (in a temporary worktree) and
# here, then runs the two alternately PAIRS times and prints, for each, the
# median over the runs of each case's median ns per record (floor copy,
# write and reserve+commit with and without restartable sequences), and
# this tree's / REV's ratio per case.
#
#     scripts/write_before_after.sh REV [PAIRS] [SIZE]      (defaults 3, 64)
set -euo pipefail
rev="${1:?usage: $0 REV [PAIRS] [SIZE]}"
pairs="${2:-3}"
size="${3:-64}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
cleanup() {
    git -C "$root" worktree remove --force "$work/tree" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
git -C "$root" worktree add -q --detach "$work/tree" "$rev"
target="$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
(cd "$work/tree" && CARGO_TARGET_DIR="$target/before-after" cargo build -q --release -p relayfs --example rseq_cost)
(cd "$root" && cargo build -q --release -p relayfs --example rseq_cost)
cp "$target/before-after/release/examples/rseq_cost" "$work/before"
cp "$target/release/examples/rseq_cost" "$work/after"
for i in $(seq "$pairs"); do
    for which in before after; do
        "$work/$which" "$size" | grep -v " / " | sed -n 's/^  \([A-Za-z+ ]*[A-Za-z]\) *\([0-9.]*\) .*/\1\t\2/p' | sed "s/^/$which\t/" >> "$work/results"
    done
done
python3 - "$work/results" "$rev" "$size" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
res = {}
for which, case, ns in rows:
    res.setdefault(case, {}).setdefault(which, []).append(float(ns))
print(f"{'case (' + sys.argv[3] + ' B)':16s} {sys.argv[2][:10]:>10s} {'this tree':>10s} {'ratio':>7s}")
for case, v in res.items():
    b, a = statistics.median(v["before"]), statistics.median(v["after"])
    print(f"{case:16s} {b:10.2f} {a:10.2f} {a / b:7.2f}")
PY
