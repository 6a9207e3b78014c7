//! What the C boundary costs: a 64-byte record written through the C ABI
//! (`relay_write`, and `relay_reserve` + `relay_commit`), called through a
//! function pointer as a C program calls a shared library, beside the Rust
//! `Channel::write` and `reserve` + commit on a channel of the same shape,
//! in the same run.
//!
//! Both channels are in overwrite mode, so that no reader is needed and a
//! write never takes the refusal path: every record is a real write, and a
//! sub-buffer switch (with its overwrite accounting) comes every 16384
//! records on either side.
//!
//! Criterion measures each in turn (groups `ffi/<what>/64`); on a busy
//! machine the load changes between them, so the bench then also measures
//! them interleaved: rounds of 200,000 records of each kind in turn (the
//! order rotating), and prints each kind's median time per record over the
//! rounds, and the median of the per-round differences to the Rust call
//! (what the boundary adds, paired so that a load change hits both sides).
//!
//! Run: `cargo bench -p relayfs-ffi --bench ffi_write`.

use std::ffi::{c_int, c_void};
use std::hint::black_box;
use std::ptr::null_mut;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use relayfs::{Channel, Mode};
use relayfs_ffi::{
    rchan, rchan_callbacks, relay_close, relay_commit, relay_open, relay_reserve, relay_write,
};

const LEN: usize = 64;
const SUBBUF: usize = 1 << 20;
const N_SUBBUFS: usize = 16;

type WriteFn = unsafe extern "C" fn(*mut rchan, *const c_void, usize) -> c_int;
type ReserveFn = unsafe extern "C" fn(*mut rchan, usize) -> *mut c_void;
type CommitFn = unsafe extern "C" fn(*mut rchan, *mut c_void) -> c_int;

fn shm_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

fn bench(c: &mut Criterion) {
    let rust_dir = shm_dir();
    let chan = Channel::builder("bench")
        .dir(rust_dir.path())
        .subbuf_size(SUBBUF as u64)
        .n_subbufs(N_SUBBUFS as u64)
        .mode(Mode::Overwrite)
        .open()
        .unwrap();

    let c_dir = shm_dir();
    let parent = std::ffi::CString::new(c_dir.path().to_str().unwrap()).unwrap();
    let cb = rchan_callbacks {
        overwrite: 1,
        ..Default::default()
    };
    // SAFETY: valid strings and callbacks.
    let cchan = unsafe {
        relay_open(
            c"cpu".as_ptr(),
            parent.as_ptr(),
            SUBBUF,
            N_SUBBUFS,
            &cb,
            null_mut(),
        )
    };
    assert!(!cchan.is_null());
    // Called through pointers the optimiser can't see through, as a C
    // program calls librelayfs.so (through its PLT).
    let write: WriteFn = black_box(relay_write);
    let reserve: ReserveFn = black_box(relay_reserve);
    let commit: CommitFn = black_box(relay_commit);

    let rec = [0x5au8; LEN];
    let mut g = c.benchmark_group("ffi");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("rust_write", LEN), |b| {
        b.iter(|| chan.write(black_box(&rec)))
    });
    g.bench_function(BenchmarkId::new("c_relay_write", LEN), |b| {
        // SAFETY: a live channel and a 64-byte record.
        b.iter(|| unsafe { write(black_box(cchan), black_box(rec.as_ptr()).cast(), LEN) })
    });
    g.bench_function(BenchmarkId::new("rust_reserve_commit", LEN), |b| {
        b.iter(|| {
            if let Ok(mut r) = chan.reserve(LEN) {
                r.copy_from_slice(black_box(&rec));
                r.commit();
            }
        })
    });
    g.bench_function(BenchmarkId::new("c_relay_reserve_commit", LEN), |b| {
        // SAFETY: a live channel; the slot has LEN bytes.
        b.iter(|| unsafe {
            let p = reserve(black_box(cchan), LEN);
            if !p.is_null() {
                p.cast::<u8>()
                    .copy_from_nonoverlapping(black_box(rec.as_ptr()), LEN);
                commit(cchan, p);
            }
        })
    });
    g.finish();

    interleaved(&chan, cchan, write, reserve, commit, &rec);

    chan.close().unwrap();
    // SAFETY: no call on it is in progress.
    assert_eq!(unsafe { relay_close(cchan) }, 0);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The four kinds of write measured in alternation (see the module doc).
fn interleaved(
    chan: &Channel,
    cchan: *mut rchan,
    write: WriteFn,
    reserve: ReserveFn,
    commit: CommitFn,
    rec: &[u8; LEN],
) {
    const ROUNDS: usize = 31;
    const PER: u32 = 200_000;
    let kinds: [(&str, &dyn Fn()); 4] = [
        ("rust_write", &|| {
            let _ = chan.write(black_box(rec));
        }),
        ("c_relay_write", &|| {
            // SAFETY: a live channel and a 64-byte record.
            unsafe { write(black_box(cchan), black_box(rec.as_ptr()).cast(), LEN) };
        }),
        ("rust_reserve_commit", &|| {
            if let Ok(mut r) = chan.reserve(LEN) {
                r.copy_from_slice(black_box(rec));
                r.commit();
            }
        }),
        ("c_relay_reserve_commit", &|| {
            // SAFETY: a live channel; the slot has LEN bytes.
            unsafe {
                let p = reserve(black_box(cchan), LEN);
                if !p.is_null() {
                    p.cast::<u8>()
                        .copy_from_nonoverlapping(black_box(rec.as_ptr()), LEN);
                    commit(cchan, p);
                }
            }
        }),
    ];
    let mut ns = vec![Vec::with_capacity(ROUNDS); kinds.len()];
    for round in 0..ROUNDS {
        for k in 0..kinds.len() {
            let k = (k + round) % kinds.len();
            let f = kinds[k].1;
            let t = Instant::now();
            for _ in 0..PER {
                f();
            }
            ns[k].push(t.elapsed().as_nanos() as f64 / PER as f64);
        }
    }
    let diff = |a: usize, b: usize| {
        let mut d: Vec<f64> = ns[a].iter().zip(&ns[b]).map(|(x, y)| x - y).collect();
        median(&mut d)
    };
    let (dw, dr) = (diff(1, 0), diff(3, 2));
    let med: Vec<f64> = ns.iter_mut().map(|v| median(v)).collect();
    println!(
        "\ninterleaved, {ROUNDS} rounds of {PER} records of {LEN} bytes, median ns per record:"
    );
    for (k, m) in kinds.iter().zip(&med) {
        println!("  {:<24} {m:7.2}", k.0);
    }
    println!(
        "  relay_write / write: {:.3} (median paired difference {dw:+.2} ns)",
        med[1] / med[0]
    );
    println!(
        "  relay_reserve+relay_commit / reserve+commit: {:.3} (median paired difference {dr:+.2} ns)",
        med[3] / med[2]
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench
}
criterion_main!(benches);
