#!/usr/bin/env bash
# Reading through `relayfs mount` (dd bs=1M and bs=128K into /dev/null, and
# bs=1M into a tmpfs file) against `relayfs record -o /dev/null` (and -o a
# tmpfs directory), on the same channel geometry in the
# same run: one global buffer of 1 MiB sub-buffers filled while the reader
# is stopped, then drained and timed; and, as a reference, dd bs=1M of a
# tmpfs file as large as the buffer (one copy into a process, which
# record -o /dev/null never makes). Needs FUSE (/dev/fuse, fusermount3)
# and root or a user allowed to mount. Arguments go to the benchmark
# (--n-subbufs N, --record BYTES, --rounds N, --json, --baseline-bin
# PATH: another relayfs build mounted beside this one, for an A/B of the
# mount itself, paired round by round in rate and in the mount process's
# CPU time per GiB; --bin PATH: measure that build instead of this one;
# --ab: only the recorder into /dev/null and the two mounts' dd bs=1M).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p relayfs-cli --bins --examples
exec "${CARGO_TARGET_DIR:-target}/release/examples/mount_bench" "$@"
