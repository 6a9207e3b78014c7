//! One tight loop, for a profiler to look at: a thread pinned to its CPU
//! writes `N` records of `SIZE` bytes with `write` into a channel shaped as
//! the `write` benchmark's (16 sub-buffers of 1 MiB per CPU, overwrite mode
//! so that it never refuses, no reader), or, with `floor`, copies the same
//! bytes into a local ring of the same size. Prints ns per record.
//! `scripts/write_account.py` runs both under `perf record` and says where
//! the time goes.
//!
//! `cargo run --release --example write_loop -- [write|floor] [SIZE] [N]`
//! (defaults write, 64, 200000000).

use std::hint::black_box;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "write".into());
    let size: usize = std::env::args().nth(2).map_or(Ok(64), |s| s.parse())?;
    let n: u64 = std::env::args()
        .nth(3)
        .map_or(Ok(200_000_000), |s| s.parse())?;
    relayfs::cpu::pin_current_thread(relayfs::cpu::current_cpu())?;
    let rec = vec![0x5au8; size];
    let ns = match what.as_str() {
        "write" => {
            let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?;
            let chan = relayfs::Channel::builder("loop")
                .dir(dir.path())
                .subbuf_size(1 << 20)
                .n_subbufs(16)
                .mode(relayfs::Mode::Overwrite)
                .open()?;
            let t = Instant::now();
            for _ in 0..n {
                let _ = chan.write(black_box(&rec));
            }
            let ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
            let s = chan.total_stats();
            if s.records_written() != n {
                return Err(format!("{} records written of {n}", s.records_written()).into());
            }
            ns
        }
        "floor" => {
            let mut ring = vec![0u8; 16 << 20];
            let t = Instant::now();
            let mut at = 0usize;
            for _ in 0..n {
                if at + size > ring.len() {
                    at = 0;
                }
                ring[at..at + size].copy_from_slice(black_box(&rec));
                at += size;
            }
            black_box(&ring);
            t.elapsed().as_secs_f64() * 1e9 / n as f64
        }
        other => return Err(format!("unknown loop {other:?}: write or floor").into()),
    };
    println!("{what} {size} B: {ns:.2} ns per record");
    Ok(())
}
