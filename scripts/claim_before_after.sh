#!/usr/bin/env bash
# The overwrite-mode cost of claims (a reader that keeps up, so that every
# sub-buffer the writer laps is one the reader claimed) at an earlier
# revision against this tree's, in one run: builds the `claim_cost` example
# (this tree's source, in both trees) at REV (in a temporary worktree) and
# here, then prints
#   - instructions per record under `valgrind --tool=callgrind` (the same
#     every run: one thread, no sleeping): the whole program, the writer's
#     slow path (the sub-buffer switch, where a lap is accounted) and the
#     reader's `read` (where it claims);
#   - the median over PAIRS alternating runs of each one's ns per record,
#     and the ratio.
#
#     scripts/claim_before_after.sh REV [PAIRS]      (default 5)
set -euo pipefail
rev="${1:?usage: $0 REV [PAIRS]}"
pairs="${2:-5}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
cleanup() {
    git -C "$root" worktree remove --force "$work/tree" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
git -C "$root" worktree add -q --detach "$work/tree" "$rev"
cp "$root/crates/relayfs/examples/claim_cost.rs" "$work/tree/crates/relayfs/examples/"
target="$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
(cd "$work/tree" && CARGO_TARGET_DIR="$target/before-after" cargo build -q --release -p relayfs --example claim_cost)
(cd "$root" && cargo build -q --release -p relayfs --example claim_cost)
cp "$target/before-after/release/examples/claim_cost" "$work/before"
cp "$target/release/examples/claim_cost" "$work/after"
subbufs=2000
records=$((subbufs * 256 * 3))
echo "instructions per 64-byte record (callgrind, $records records written and read)"
for which in before after; do
    valgrind --tool=callgrind --callgrind-out-file="$work/$which.cg" "$work/$which" 64 "$subbufs" >/dev/null 2>&1
    total=$(callgrind_annotate "$work/$which.cg" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
    incl() {
        callgrind_annotate --inclusive=yes "$work/$which.cg" 2>/dev/null | grep -m1 "$1" | sed -n 's/^ *\([0-9,]*\) .*/\1/p' | tr -d , || true
    }
    slow=$(incl 'Channel::write_parts_slow \[')
    read=$(incl 'RelayFile::read \[')
    python3 -c "import sys; t,w,r,n=(int(x or 0) for x in sys.argv[1:5]); print(f'  {sys.argv[5]:7s} total {t/n:8.3f}   writer slow path {w/n:6.3f}   read {r/n:7.3f}')" "$total" "$slow" "$read" "$records" "$which"
done
for i in $(seq "$pairs"); do
    for which in before after; do
        "$work/$which" 64 | sed -n "s/^claim_cost 64 B: \([0-9.]*\) ns.*/$which\t\1/p" >> "$work/results"
    done
done
python3 - "$work/results" "$rev" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
res = {}
for which, ns in rows:
    res.setdefault(which, []).append(float(ns))
b, a = statistics.median(res["before"]), statistics.median(res["after"])
print(f"ns per 64-byte record written and read, median of {len(res['before'])} runs each:")
print(f"  {sys.argv[2][:10]:>10s} {b:8.2f}   this tree {a:8.2f}   ratio {a / b:5.3f}")
PY
