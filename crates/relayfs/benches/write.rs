//! Cost of `write` and `reserve`+commit per record, with a reader draining
//! the channel so that it never fills, beside the floor: a copy of the same
//! bytes into a local ring. Run: `cargo bench -p relayfs --bench write`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use relayfs::{Channel, Mode, RelayFile};

struct Drained {
    chan: Arc<Channel>,
    stop: Arc<AtomicBool>,
    readers: Vec<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drained {
    fn new(mode: Mode) -> Drained {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let chan = Arc::new(
            Channel::builder("bench")
                .dir(dir.path())
                .subbuf_size(1 << 20)
                .n_subbufs(16)
                .mode(mode)
                .open()
                .unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let readers = (0..chan.n_buffers())
            .map(|i| {
                let mut f = RelayFile::open(chan.buffer_path(i)).unwrap();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let devnull = std::fs::OpenOptions::new()
                        .write(true)
                        .open("/dev/null")
                        .unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        if f.sendfile(&devnull, u64::MAX).unwrap() == 0 {
                            let _ = f.poll(Some(Duration::from_millis(10)));
                        }
                    }
                })
            })
            .collect();
        Drained {
            chan,
            stop,
            readers,
            _dir: dir,
        }
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("one_thread");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for size in [8usize, 64, 512, 4096] {
        let rec = vec![0x5au8; size];
        g.throughput(Throughput::Elements(1));
        // The floor: copy into a local 16 MiB ring.
        let mut ring = vec![0u8; 16 << 20];
        let mut at = 0usize;
        g.bench_with_input(BenchmarkId::new("floor_copy", size), &size, |b, _| {
            b.iter(|| {
                if at + size > ring.len() {
                    at = 0;
                }
                ring[at..at + size].copy_from_slice(black_box(&rec));
                at += size;
            })
        });
        for mode in [Mode::NoOverwrite, Mode::Overwrite] {
            let d = Drained::new(mode);
            let tag = if mode == Mode::Overwrite {
                "overwrite"
            } else {
                "no_overwrite"
            };
            g.bench_with_input(
                BenchmarkId::new(format!("write_{tag}"), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        let _ = d.chan.write(black_box(&rec));
                    })
                },
            );
            g.bench_with_input(
                BenchmarkId::new(format!("reserve_{tag}"), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        if let Ok(mut slot) = d.chan.reserve(size) {
                            slot.copy_from_slice(black_box(&rec));
                        }
                    })
                },
            );
            let s = d.chan.total_stats();
            eprintln!(
                "  ({tag} {size} B: dropped {} of {})",
                s.dropped_full,
                s.records_written + s.dropped_full
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
