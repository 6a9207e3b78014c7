#!/usr/bin/env bash
# relayfs's 64-byte write (rseq and CAS paths, `rseq_cost` example) and
# `relayfs bench --size 64 --threads 1` (the producer's median ns per record
# with `relayfs record` draining into /dev/null) beside LTTng-UST's
# tracepoint() with a 64-byte payload, alternating in one run:
# a private lttng-sessiond, one user-space channel of 16 x 1 MiB
# sub-buffers (discard mode) drained by its consumer into a temporary
# directory. Needs lttng-tools and liblttng-ust-dev (Debian), gcc, root or
# a user allowed to run lttng-sessiond.
#
#     scripts/lttng_cmp/run.sh [PAIRS]     (default 3)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
pairs="${1:-3}"
for t in lttng lttng-sessiond lttng-gen-tp gcc; do
    command -v "$t" >/dev/null || { echo "!!! $t is missing: apt-get install lttng-tools liblttng-ust-dev gcc" >&2; exit 1; }
done
work="$(mktemp -d)"
export LTTNG_HOME="$work/home"
mkdir -p "$LTTNG_HOME"
sessiond=""
cleanup() {
    lttng destroy relayfs_cmp >/dev/null 2>&1 || true
    if [ -n "$sessiond" ] && kill "$sessiond" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$sessiond" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT
(cd "$work" && cp "$here/tp.tp" "$here/bench.c" . && lttng-gen-tp tp.tp -o tp.h -o tp.c &&
    gcc -O2 -I. -o bench bench.c tp.c -llttng-ust -ldl)
(cd "$root" && cargo build -q --release -p relayfs --example rseq_cost && cargo build -q --release -p relayfs-cli)
tdir="$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release"
cost="$tdir/examples/rseq_cost"
relayfs="$tdir/relayfs"
lttng-sessiond --daemonize --no-kernel --pidfile "$work/sessiond.pid"
sessiond="$(cat "$work/sessiond.pid")"
lttng create relayfs_cmp --output="$work/trace" >/dev/null
lttng enable-channel -u ch --subbuf-size=1M --num-subbuf=16 >/dev/null
lttng enable-event -u -c ch 'relayfs_cmp:rec' >/dev/null
lttng start >/dev/null
med() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for i in $(seq "$pairs"); do
    lt="$("$work/bench" 2000000 5 | awk '{print $7}' | med)"
    out="$("$cost" 64 2000000 5)"
    rs="$(echo "$out" | awk '/^  write rseq/ {print $3}')"
    cas="$(echo "$out" | awk '/^  write CAS/ {print $3}')"
    bn="$("$relayfs" bench --size 64 --threads 1 --out /dev/null --duration 3 --no-fs-baseline --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["ns_per_record"])')"
    python3 -c "print(f'pair $i: tracepoint {$lt:.2f} ns  relayfs write rseq {$rs:.2f} ns ({$lt/$rs:.1f}x cheaper)  CAS {$cas:.2f} ns ({$lt/$cas:.1f}x)  relayfs bench {$bn:.2f} ns ({$lt/$bn:.1f}x)')"
    rm -rf "$work/trace"/* 2>/dev/null || true
done
lttng stop >/dev/null
lttng list relayfs_cmp | grep -i discarded || true
