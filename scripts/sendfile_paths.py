#!/usr/bin/env python3
"""Compares the ways of moving a tmpfs buffer file's bytes to an output fd:
write(2) from a read-only mapping (what RelayFile::sendfile does),
sendfile(2) and copy_file_range(2), to /dev/null and to a tmpfs file.
Run: python3 scripts/sendfile_paths.py (needs 1 GiB free in /dev/shm)."""
import os, mmap, time
src = "/dev/shm/sf-src"; N = 512 << 20; CH = 1 << 20
with open(src, "wb") as f: f.truncate(N)
fd = os.open(src, os.O_RDWR); os.posix_fallocate(fd, 0, N)
m = mmap.mmap(fd, N, mmap.MAP_SHARED, mmap.PROT_READ)
mv = memoryview(m)
def run(name, dst_path, how):
    best = 1e9
    for _ in range(3):
        out = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        t = time.perf_counter()
        off = 0
        while off < N:
            if how == "write": n = os.write(out, mv[off:off+CH])
            elif how == "cfr": n = os.copy_file_range(fd, out, CH, off)
            elif how == "sendfile": n = os.sendfile(out, fd, off, CH)
            off += n
        dt = time.perf_counter() - t
        os.close(out); best = min(best, dt)
        if dst_path != "/dev/null": os.unlink(dst_path)
    print(f"{name:32s} {N/best/1e9:6.2f} GB/s")
for dst in ["/dev/null", "/dev/shm/sf-dst"]:
    run(f"write from mapping -> {dst}", dst, "write")
    run(f"sendfile(2) -> {dst}", dst, "sendfile")
    try: run(f"copy_file_range -> {dst}", dst, "cfr")
    except OSError as e: print(f"copy_file_range -> {dst}: {e}")
os.unlink(src)
