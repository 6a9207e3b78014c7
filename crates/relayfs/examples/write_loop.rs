//! One tight loop, for a profiler to look at: a thread pinned to its CPU
//! writes `N` records of `SIZE` bytes with `write` into a channel shaped as
//! the `write` benchmark's (16 sub-buffers of 1 MiB per CPU, overwrite mode
//! so that it never refuses, no reader), or, with `floor`, copies the same
//! bytes into a local ring of the same size. With `write-reader`, the
//! channel is in no-overwrite mode and a reader thread pinned to another
//! CPU drains the writer's buffer as the benchmark's reader does (woken at
//! sub-buffer boundaries, each complete sub-buffer written from the mapping
//! to `/dev/null` and handed back); records refused because the reader
//! fell behind are counted and reported; the reader thread is called
//! `drain`, so a profile can tell it from the writer. Prints ns per record.
//! `scripts/write_account.py` runs them under `perf record` and says where
//! the time goes.
//!
//! `cargo run --release --example write_loop -- [write|write-reader|floor] [SIZE] [N]`
//! (defaults write, 64, 200000000).

use std::hint::black_box;
use std::time::Instant;

/// The benchmark's sub-buffer size.
const SUBBUF_SIZE: u64 = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "write".into());
    let size: usize = std::env::args().nth(2).map_or(Ok(64), |s| s.parse())?;
    let n: u64 = std::env::args()
        .nth(3)
        .map_or(Ok(200_000_000), |s| s.parse())?;
    relayfs::cpu::pin_current_thread(relayfs::cpu::current_cpu())?;
    let rec = vec![0x5au8; size];
    let ns = match what.as_str() {
        "write" | "write-reader" => {
            let with_reader = what == "write-reader";
            let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir())?;
            let chan = relayfs::Channel::builder("loop")
                .dir(dir.path())
                .subbuf_size(SUBBUF_SIZE)
                .n_subbufs(16)
                .mode(if with_reader {
                    relayfs::Mode::NoOverwrite
                } else {
                    relayfs::Mode::Overwrite
                })
                .open()?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let reader = with_reader
                .then(|| drain(chan.buffer_path(relayfs::cpu::current_cpu()), stop.clone()))
                .transpose()?;
            let t = Instant::now();
            for _ in 0..n {
                let _ = chan.write(black_box(&rec));
            }
            let ns = t.elapsed().as_secs_f64() * 1e9 / n as f64;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(r) = reader {
                r.join().map_err(|_| "the reader panicked")??;
            }
            let s = chan.total_stats();
            if s.records_written() + s.dropped_full != n {
                return Err(format!("{} records written of {n}", s.records_written()).into());
            }
            if s.dropped_full > 0 {
                println!(
                    "({} records refused: the reader fell behind)",
                    s.dropped_full
                );
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
        other => {
            return Err(format!("unknown loop {other:?}: write, write-reader or floor").into())
        }
    };
    println!("{what} {size} B: {ns:.2} ns per record");
    Ok(())
}

/// The benchmark's reader: a thread on another CPU (where there is one)
/// that drains the buffer at `path` until `stop`.
fn drain(
    path: &std::path::Path,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<(), relayfs::ReadError>>, Box<dyn std::error::Error>> {
    use std::os::fd::AsRawFd;
    let mut f = relayfs::RelayFile::open(path)?;
    let devnull = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let me = relayfs::cpu::current_cpu();
    let other = (0..relayfs::cpu::possible_cpus()).find(|&c| c != me);
    Ok(std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            if let Some(c) = other {
                let _ = relayfs::cpu::pin_current_thread(c);
            }
            let mut m = f.map();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match m.ready()? {
                    Some(sb) => {
                        let at = (sb.index * SUBBUF_SIZE) as usize;
                        // SAFETY: a ready sub-buffer, not yet handed back, lies
                        // within the mapping (as in benches/write.rs).
                        let n = unsafe {
                            libc::write(
                                devnull.as_raw_fd(),
                                m.as_ptr().add(at).cast(),
                                sb.len as usize,
                            )
                        };
                        black_box(n);
                        m.subbufs_consumed(1)?;
                    }
                    None => {
                        let _ = m.poll(Some(std::time::Duration::from_millis(10)));
                    }
                }
            }
            Ok(())
        })?)
}
