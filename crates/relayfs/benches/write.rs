//! Cost of `write` and `reserve`+commit per record, with a reader draining
//! the channel so that it never fills, beside baselines measured in the same
//! run: a copy of the same bytes into a local ring (the floor), an SPSC ring
//! push of the same bytes (rtrb, with a consumer thread draining it) and a
//! `crossbeam-channel` send of the same bytes (a boxed copy, drained by a
//! consumer thread). Beside the floor, one thread: the floor plus a CAS and
//! a fetch_add on private words (`floor_cas_xadd`, the locked instructions
//! of relayfs's fast path and nothing else), and plus a plain store and a
//! fetch_add (`floor_store_xadd`, what a reservation without a lock prefix
//! could reach).
//!
//! Framed records (`write_record`, `write_record_timed`, 64 bytes, beside
//! `write_no_overwrite`) and the decoder (`decode/records_64`: records per
//! second) are measured too.
//!
//! Run: `cargo bench -p relayfs --bench write`, then
//! `python3 scripts/bench_table.py` for ns per record and ratios to the floor.
//! Groups: `one_thread/<what>/<size>` and `per_cpu/<what>/<size>` (one writer
//! thread per CPU; the time is wall time per record over all threads).

use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use relayfs::{Channel, Mode, RelayFile};

const SIZES: [usize; 4] = [8, 64, 512, 4096];

/// A channel with one reader thread per buffer draining it to /dev/null the
/// way a relay reader does: woken at sub-buffer boundaries, it writes each
/// complete sub-buffer out from the mapping and hands it back, so it meets
/// the writer's cache lines once per sub-buffer instead of chasing every
/// record.
struct Drained {
    chan: Arc<Channel>,
    stop: Arc<AtomicBool>,
    readers: Vec<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drained {
    fn new(mode: Mode) -> Drained {
        Drained::with_subbufs(mode, 1 << 20)
    }

    fn with_subbufs(mode: Mode, subbuf_size: u64) -> Drained {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let chan = Arc::new(
            Channel::builder("bench")
                .dir(dir.path())
                .subbuf_size(subbuf_size)
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
                    let mut m = f.map();
                    while !stop.load(Ordering::Relaxed) {
                        match m.ready().unwrap() {
                            Some(sb) => {
                                let at = sb.index * subbuf_size;
                                // SAFETY: a ready sub-buffer, not yet handed
                                // back, within the mapping.
                                let n = unsafe {
                                    libc::write(
                                        devnull.as_raw_fd(),
                                        m.as_ptr().add(at as usize).cast(),
                                        sb.len as usize,
                                    )
                                };
                                black_box(n);
                                m.subbufs_consumed(1).unwrap();
                            }
                            None => {
                                let _ = m.poll(Some(Duration::from_millis(10)));
                            }
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
        let s = self.chan.total_stats();
        eprintln!(
            "    (channel: {} records written, {} dropped)",
            s.records_written(),
            s.lost()
        );
    }
}

/// Runs `per_thread(thread, iters)` on `threads` threads at once (thread t
/// pinned to CPU t when there are several) and returns the wall time.
fn parallel(threads: usize, iters: u64, per_thread: impl Fn(usize, u64) + Sync) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (barrier, per_thread) = (&barrier, &per_thread);
            s.spawn(move || {
                if threads > 1 {
                    // One writer per CPU means one per CPU, not two the
                    // scheduler happens to put on one CPU (and one buffer).
                    let _ = relayfs::cpu::pin_current_thread(t);
                }
                barrier.wait();
                per_thread(t, iters / threads as u64);
            });
        }
        barrier.wait();
        let t = Instant::now();
        // The scope joins the threads before returning.
        t
    })
    .elapsed()
}

fn bench_sizes(c: &mut Criterion, group: &str, threads: usize) {
    let mut g = c.benchmark_group(group);
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300))
        .sample_size(20);
    for size in SIZES {
        let rec = vec![0x5au8; size];
        g.throughput(Throughput::Elements(1));
        // The floor: a copy into a local 16 MiB ring per thread.
        g.bench_with_input(BenchmarkId::new("floor_copy", size), &size, |b, _| {
            b.iter_custom(|iters| {
                parallel(threads, iters, |_, n| {
                    let mut ring = vec![0u8; 16 << 20];
                    let mut at = 0usize;
                    for _ in 0..n {
                        if at + size > ring.len() {
                            at = 0;
                        }
                        ring[at..at + size].copy_from_slice(black_box(&rec));
                        at += size;
                    }
                    black_box(&ring);
                })
            })
        });
        if threads == 1 {
            // The floor beside a reader: the same copy, while a relay reader
            // on the other CPU does what it does beside `write` here (woken
            // at every sub-buffer boundary, it claims the sub-buffer, writes
            // it to /dev/null and hands it back), as often as it does it
            // there: one 64-byte write every `every` copies into a channel
            // of 4 KiB sub-buffers completes one as often as `write` of
            // `size`-byte records completes a 1 MiB one. What `write` with
            // a reader costs over this is relayfs's; what this costs over
            // the floor is the reader's share of the machine (on 2 vCPUs,
            // its wakeups and system calls slow the copy too).
            let side = Drained::with_subbufs(Mode::NoOverwrite, 4096);
            let every = ((1u64 << 14) / size as u64).max(1);
            let small = [0x5au8; 64];
            g.bench_with_input(
                BenchmarkId::new("floor_copy_beside_reader", size),
                &size,
                |b, _| {
                    b.iter_custom(|iters| {
                        parallel(threads, iters, |_, n| {
                            let mut ring = vec![0u8; 16 << 20];
                            let mut at = 0usize;
                            for i in 0..n {
                                if at + size > ring.len() {
                                    at = 0;
                                }
                                ring[at..at + size].copy_from_slice(black_box(&rec));
                                at += size;
                                if i % every == 0 {
                                    let _ = side.chan.write(&small);
                                }
                            }
                            black_box(&ring);
                        })
                    })
                },
            );
            drop(side);
            // The floor plus the atomics of a reserve/commit protocol, on
            // private words, nothing else: what the locked instructions
            // alone cost beside the copy. `floor_cas_xadd` is relayfs's fast
            // path (a CAS reserves, a fetch_add commits); `floor_store_xadd`
            // reserves with a plain load and store, as a reservation under
            // a restartable sequence would.
            for (name, cas) in [("floor_cas_xadd", true), ("floor_store_xadd", false)] {
                g.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                    b.iter_custom(|iters| {
                        let mut ring = vec![0u8; 16 << 20];
                        let head = std::sync::atomic::AtomicU64::new(0);
                        let commit = std::sync::atomic::AtomicU64::new(0);
                        let t = Instant::now();
                        let mut at = 0usize;
                        for _ in 0..iters {
                            if at + size > ring.len() {
                                at = 0;
                            }
                            let h = head.load(Ordering::Relaxed);
                            if cas {
                                let _ = head.compare_exchange(
                                    h,
                                    h + size as u64,
                                    Ordering::Acquire,
                                    Ordering::Relaxed,
                                );
                            } else {
                                head.store(h + size as u64, Ordering::Relaxed);
                            }
                            ring[at..at + size].copy_from_slice(black_box(&rec));
                            commit.fetch_add(size as u64, Ordering::AcqRel);
                            at += size;
                        }
                        black_box(&ring);
                        t.elapsed()
                    })
                });
            }
            // rtrb: push the bytes into an SPSC ring a consumer drains.
            g.bench_with_input(BenchmarkId::new("rtrb_push", size), &size, |b, _| {
                let (mut p, mut cons) = rtrb::RingBuffer::<u8>::new(16 << 20);
                let stop = Arc::new(AtomicBool::new(false));
                let st = stop.clone();
                let drain = std::thread::spawn(move || {
                    while !st.load(Ordering::Relaxed) {
                        let n = cons.slots();
                        if n == 0 {
                            std::hint::spin_loop();
                            continue;
                        }
                        if let Ok(ch) = cons.read_chunk(n) {
                            ch.commit_all();
                        }
                    }
                });
                b.iter(|| {
                    if let Ok(ch) = p.write_chunk_uninit(size) {
                        ch.fill_from_iter(black_box(&rec).iter().copied());
                    }
                });
                stop.store(true, Ordering::Relaxed);
                let _ = drain.join();
            });
            // crossbeam-channel: send a boxed copy of the bytes.
            g.bench_with_input(BenchmarkId::new("crossbeam_send", size), &size, |b, _| {
                let (tx, rx) = crossbeam_channel::bounded::<Box<[u8]>>(1 << 16);
                let drain = std::thread::spawn(move || while rx.recv().is_ok() {});
                b.iter(|| {
                    let _ = tx.try_send(Box::from(black_box(&rec[..])));
                });
                drop(tx);
                let _ = drain.join();
            });
        }
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
                    b.iter_custom(|iters| {
                        parallel(threads, iters, |_, n| {
                            for _ in 0..n {
                                let _ = d.chan.write(black_box(&rec));
                            }
                        })
                    })
                },
            );
            if mode == Mode::NoOverwrite && size == 64 {
                // Framed records beside plain `write`: the header built in
                // the reserved slot (8 more bytes), and with a timestamp
                // (16 more bytes and a clock read).
                for (name, timed) in [("write_record", false), ("write_record_timed", true)] {
                    g.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                        b.iter_custom(|iters| {
                            parallel(threads, iters, |_, n| {
                                for _ in 0..n {
                                    let _ = if timed {
                                        d.chan.write_record_timed(black_box(&rec))
                                    } else {
                                        d.chan.write_record(black_box(&rec))
                                    };
                                }
                            })
                        })
                    });
                }
            }
            g.bench_with_input(
                BenchmarkId::new(format!("reserve_{tag}"), size),
                &size,
                |b, _| {
                    b.iter_custom(|iters| {
                        parallel(threads, iters, |_, n| {
                            for _ in 0..n {
                                if let Ok(mut slot) = d.chan.reserve(size) {
                                    slot.copy_from_slice(black_box(&rec));
                                }
                            }
                        })
                    })
                },
            );
        }
    }
    g.finish();
}

/// Decoding framed records on one core: a prepared `read` stream of
/// 64-byte records (no timestamp) read through `Records` from a slice, one
/// copy into the decoder's buffer as a file read would make; the time is
/// per record.
fn bench_decode(c: &mut Criterion) {
    use relayfs::frame::{encode_header, Records};
    const N: usize = 100_000;
    let payload = [0x5au8; 64];
    let mut stream = Vec::with_capacity(N * 72);
    for _ in 0..N {
        stream.extend_from_slice(&encode_header(64, 0));
        stream.extend_from_slice(&payload);
    }
    let mut g = c.benchmark_group("decode");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300))
        .sample_size(20)
        .throughput(Throughput::Elements(N as u64));
    g.bench_function("records_64", |b| {
        b.iter(|| {
            let mut r = Records::from_reader(black_box(&stream[..]));
            let mut n = 0usize;
            while let Some(rec) = r.next_record() {
                if let Ok(rec) = rec {
                    n += rec.payload.len();
                }
            }
            assert_eq!(n, N * 64);
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    bench_decode(c);
    bench_sizes(c, "one_thread", 1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    bench_sizes(c, "per_cpu", cpus);
}

criterion_group!(benches, bench);
criterion_main!(benches);
