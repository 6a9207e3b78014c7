//! The emitting thread's cost of `info!(a = 1, b = "x", "message")`:
//! the relay layer, `tracing-appender`'s non-blocking writer with `fmt`,
//! and `fmt` straight into a file; the parts of the relay layer's cost
//! (tracing's dispatch, the clock, the write); the clocks (`CLOCK_MONOTONIC`
//! against the TSC); and the decoder's rate.
//!
//! `cargo bench -p relayfs-tracing --bench emit`

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use relayfs::{Channel, OverwriteCallbacks, RelayFile};
use relayfs_tracing::RelayLayer;
use tracing_subscriber::prelude::*;

/// A directory in memory if there is one (the channel's buffers; the text
/// outputs go to a real file system, as a log file would).
fn shm_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

fn emit(c: &mut Criterion) {
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
    let relay =
        tracing::Dispatch::new(tracing_subscriber::registry().with(RelayLayer::new(chan.clone())));
    g.bench_function("relay_layer", |b| {
        tracing::dispatcher::with_default(&relay, || {
            b.iter(|| tracing::info!(a = 1, b = "x", "message"))
        })
    });
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
    g.finish();
    drop(relay);
    chan.close().unwrap();
}

fn decode(c: &mut Criterion) {
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

criterion_group!(benches, emit, decode);
criterion_main!(benches);
