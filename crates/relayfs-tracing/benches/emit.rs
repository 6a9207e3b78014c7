//! The emitting thread's cost of `info!(a = 1, b = "x", "message")`:
//! the relay layer, `tracing-appender`'s non-blocking writer with `fmt`,
//! and `fmt` straight into a file; the parts of the relay layer's cost
//! (tracing's dispatch, the clock, the write); the clocks (`CLOCK_MONOTONIC`
//! against the TSC); and the decoder's rate.
//!
//! `cargo bench -p relayfs-tracing --bench emit` (`relay_layer` with the
//! layer's default clock, the anchored TSC where the kernel keeps time with
//! it; `relay_layer_monotonic` with `CLOCK_MONOTONIC`, in the same run)
//!
//! With `BENCH_CPU_TIME=1` in the environment, criterion measures the
//! benchmarking thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) instead of
//! the wall clock: on a machine shared with other work, what the emitting
//! thread itself spent, without the time other programs had its CPU. (A
//! thread that waits spends no CPU time: the lossless appender's emitting
//! thread, blocked while its worker is behind, looks the cheaper for it.)

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{black_box, Criterion, Throughput};
use relayfs::{Channel, OverwriteCallbacks, RelayFile};
use relayfs_tracing::RelayLayer;
use tracing_subscriber::prelude::*;

/// A directory in memory if there is one (the channel's buffers; the text
/// outputs go to a real file system, as a log file would).
fn shm_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

/// The calling thread's CPU time in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Criterion's measurement of the benchmarking thread's CPU time.
struct CpuTime;

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, i: u64) -> u64 {
        thread_cpu_ns().saturating_sub(i)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (d, unit) = if typical < 1e3 {
            (1.0, "ns (CPU)")
        } else if typical < 1e6 {
            (1e3, "µs (CPU)")
        } else if typical < 1e9 {
            (1e6, "ms (CPU)")
        } else {
            (1e9, "s (CPU)")
        };
        for v in values {
            *v /= d;
        }
        unit
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Elements(n) => {
                *n as f64
            }
        };
        // Per nanosecond times 10^9, in millions.
        for v in values {
            *v = n * 1e3 / *v;
        }
        "M/s (CPU)"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn emit<M: Measurement>(c: &mut Criterion<M>) {
    let mut g = c.benchmark_group("emit");
    g.measurement_time(Duration::from_secs(4));

    // The relay layer; overwrite mode, so that every write succeeds with no
    // reader, as a recorder that keeps up would let it.
    let shm = shm_dir();
    let chan = Arc::new(
        Channel::builder("bench")
            .dir(shm.path())
            .subbuf_size(1 << 20)
            .n_subbufs(8)
            .callbacks(OverwriteCallbacks)
            .open()
            .unwrap(),
    );
    // The process's first layer: with the TSC, it calibrates its rate.
    let t0 = std::time::Instant::now();
    let first = RelayLayer::new(chan.clone());
    let first_clock = first.clock();
    println!(
        "emit/relay_layer: timestamps from the {} clock; the first layer made in {:.1} ms",
        first.clock(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    let relay = tracing::Dispatch::new(tracing_subscriber::registry().with(first));
    g.bench_function("relay_layer", |b| {
        tracing::dispatcher::with_default(&relay, || {
            b.iter(|| tracing::info!(a = 1, b = "x", "message"))
        })
    });
    // The same with CLOCK_MONOTONIC read for every record: what
    // `relay_layer` does too where the kernel's clocksource is not the TSC
    // (or without the `tsc` feature, or with RELAYFS_TRACING_CLOCK=monotonic).
    let mono = tracing::Dispatch::new(
        tracing_subscriber::registry().with(RelayLayer::with_monotonic_clock(chan.clone())),
    );
    g.bench_function("relay_layer_monotonic", |b| {
        tracing::dispatcher::with_default(&mono, || {
            b.iter(|| tracing::info!(a = 1, b = "x", "message"))
        })
    });
    paired_clocks(&relay, &mono, first_clock);
    let lost = chan.total_stats().lost() - chan.total_stats().overwritten_records;
    assert_eq!(lost, 0, "the relay layer lost writes");

    let files = tempfile::tempdir().unwrap();
    // tracing-appender, lossless: the emitting thread waits when the worker
    // is behind, so every event is written.
    {
        let f = std::fs::File::create(files.path().join("appender.log")).unwrap();
        let (w, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .finish(f);
        let d = tracing::Dispatch::new(
            tracing_subscriber::registry().with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(w),
            ),
        );
        g.bench_function("appender_nonblocking_lossless", |b| {
            tracing::dispatcher::with_default(&d, || {
                b.iter(|| tracing::info!(a = 1, b = "x", "message"))
            })
        });
        drop(guard);
    }
    // tracing-appender's default: lossy, the emitting thread drops the line
    // when the channel to the worker is full.
    {
        let f = std::fs::File::create(files.path().join("lossy.log")).unwrap();
        let (w, guard) = tracing_appender::non_blocking(f);
        let d = tracing::Dispatch::new(
            tracing_subscriber::registry().with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(w),
            ),
        );
        g.bench_function("appender_nonblocking_lossy", |b| {
            tracing::dispatcher::with_default(&d, || {
                b.iter(|| tracing::info!(a = 1, b = "x", "message"))
            })
        });
        drop(guard);
    }
    // fmt straight into a file.
    {
        let f = std::fs::File::create(files.path().join("fmt.log")).unwrap();
        let d = tracing::Dispatch::new(
            tracing_subscriber::registry().with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(Mutex::new(f)),
            ),
        );
        g.bench_function("fmt_file", |b| {
            tracing::dispatcher::with_default(&d, || {
                b.iter(|| tracing::info!(a = 1, b = "x", "message"))
            })
        });
    }
    g.finish();

    // Where the relay layer's time goes.
    let mut g = c.benchmark_group("parts");
    g.measurement_time(Duration::from_secs(3));
    let bare = tracing::Dispatch::new(tracing_subscriber::registry());
    g.bench_function("dispatch_registry_only", |b| {
        tracing::dispatcher::with_default(&bare, || {
            b.iter(|| tracing::info!(a = 1, b = "x", "message"))
        })
    });
    let payload = [7u8; 22];
    g.bench_function("write_record_timed_22", |b| {
        b.iter(|| chan.write_record_timed(black_box(&payload)))
    });
    g.bench_function("write_record_22", |b| {
        b.iter(|| chan.write_record(black_box(&payload)))
    });
    g.finish();

    let mut g = c.benchmark_group("clock");
    g.bench_function("clock_gettime_monotonic", |b| b.iter(relayfs::frame::now));
    let q = quanta::Clock::new();
    g.bench_function("tsc_raw", |b| b.iter(|| q.raw()));
    // The layer's clock: the TSC scaled to nanoseconds where the kernel's
    // clocksource is the TSC (and the `tsc` feature is on, by default).
    let layer = RelayLayer::new(chan.clone());
    g.bench_function(format!("layer_{}", layer.clock()), |b| {
        b.iter(|| layer.now())
    });
    g.finish();
    drop(relay);
    drop(mono);
    chan.close().unwrap();
}

/// The layer with its default clock against the layer with
/// `CLOCK_MONOTONIC`, in alternating short rounds of the emitting thread's
/// CPU time, so that both meet the same load: the medians and their ratio.
/// (`BENCH_PAIRED_ROUNDS=0` skips it.)
fn paired_clocks(default: &tracing::Dispatch, mono: &tracing::Dispatch, clock: &str) {
    let rounds: usize = std::env::var("BENCH_PAIRED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    if rounds == 0 {
        return;
    }
    const N: u64 = 200_000;
    let round = |d: &tracing::Dispatch| {
        tracing::dispatcher::with_default(d, || {
            let t0 = thread_cpu_ns();
            for _ in 0..N {
                tracing::info!(a = 1, b = "x", "message");
            }
            (thread_cpu_ns() - t0) as f64 / N as f64
        })
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Each first in turn.
        if r % 2 == 0 {
            a.push(round(default));
            b.push(round(mono));
        } else {
            b.push(round(mono));
            a.push(round(default));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ma, mb) = (median(&mut a), median(&mut b));
    println!(
        "emit/paired: {rounds} alternating rounds of {N} events, CPU time: \
         relay_layer ({clock}) {ma:.1} ns, relay_layer_monotonic {mb:.1} ns, ratio {:.3}",
        ma / mb
    );
}

fn decode<M: Measurement>(c: &mut Criterion<M>) {
    // A recording of N events, read back as bytes.
    const N: u64 = 200_000;
    let shm = shm_dir();
    let chan = Arc::new(
        Channel::builder("decode")
            .dir(shm.path())
            .subbuf_size(4 << 20)
            .n_subbufs(4)
            .global(true)
            .open()
            .unwrap(),
    );
    let mut reader = RelayFile::open(chan.buffer_path(0)).unwrap();
    let d =
        tracing::Dispatch::new(tracing_subscriber::registry().with(RelayLayer::new(chan.clone())));
    tracing::dispatcher::with_default(&d, || {
        for i in 0..N {
            tracing::info!(a = i, b = "x", "message");
        }
    });
    chan.close().unwrap();
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).unwrap();
    let bytes: Arc<[u8]> = bytes.into();

    // The rate in this thread's CPU time too: on a shared machine the wall
    // clock also counts the time other work had the CPU.
    for json in [false, true] {
        let cpu = || {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
            t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
        };
        let runs = 5;
        let t0 = cpu();
        for _ in 0..runs {
            let src: Box<dyn Read> = Box::new(std::io::Cursor::new(bytes.clone()));
            let mut sink = std::io::sink();
            relayfs_tracing::decode::decode_streams(
                vec![("cpu0".into(), src)],
                json,
                &mut sink,
                &mut |p| panic!("{p}"),
            )
            .unwrap();
        }
        let per = (cpu() - t0) / (runs as f64 * N as f64);
        println!(
            "decode/{}: {:.0} ns of CPU time an event, {:.2} M events/s of CPU time",
            if json { "json" } else { "text" },
            per * 1e9,
            1e-6 / per
        );
    }

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    for json in [false, true] {
        g.bench_function(if json { "json" } else { "text" }, |b| {
            b.iter(|| {
                let src: Box<dyn Read> = Box::new(std::io::Cursor::new(bytes.clone()));
                let mut sink = std::io::sink();
                let s = relayfs_tracing::decode::decode_streams(
                    vec![("cpu0".into(), src)],
                    json,
                    &mut sink,
                    &mut |p| panic!("{p}"),
                )
                .unwrap();
                assert_eq!(s.events, N);
            })
        });
    }
    g.finish();
}

fn main() {
    if std::env::var_os("BENCH_CPU_TIME").is_some() {
        let mut c = Criterion::default()
            .with_measurement(CpuTime)
            .configure_from_args();
        emit(&mut c);
        decode(&mut c);
        c.final_summary();
    } else {
        let mut c = Criterion::default().configure_from_args();
        emit(&mut c);
        decode(&mut c);
        c.final_summary();
    }
}
