//! A producer whose buffer file is scribbled on by someone else (its owner,
//! root) never hangs: every write returns, and every refused record is
//! counted.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relayfs::{Channel, Mode, WriteError};

/// What to scribble over.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// 256 pseudo-random bytes over the descriptors.
    Descriptors,
    /// Every generation word set far ahead.
    Generations,
    /// Every commit word set to a pseudo-random value.
    CommitWords,
    /// The write position set to a pseudo-random value.
    Head,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const HEAD_OFFSET: u64 = 256;
const DESC_SIZE: u64 = 32;

fn scribble(path: &std::path::Path, g: relayfs::Geometry, target: Target, seed: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut rng = Rng(seed | 1);
    let put = |off: u64, v: u64| f.write_all_at(&v.to_ne_bytes(), off).unwrap();
    match target {
        Target::Descriptors => {
            let span = (g.n_subbufs * DESC_SIZE).min(256);
            for i in 0..span / 8 {
                put(g.desc_offset + i * 8, rng.next());
            }
        }
        Target::Generations => {
            for s in 0..g.n_subbufs {
                put(
                    g.desc_offset + s * DESC_SIZE + 8,
                    1 << 40 | rng.next() >> 30,
                );
            }
        }
        Target::CommitWords => {
            for s in 0..g.n_subbufs {
                put(g.desc_offset + s * DESC_SIZE, rng.next());
            }
        }
        Target::Head => put(HEAD_OFFSET, rng.next()),
    }
}

/// Writes `n` records from a thread of their own; `None` if they did not all
/// return within the timeout.
fn write_all(chan: &Arc<Channel>, n: u64) -> Option<(u64, u64, u64)> {
    let (tx, rx) = mpsc::channel();
    let c = chan.clone();
    std::thread::spawn(move || {
        let (mut ok, mut full, mut corrupt) = (0u64, 0u64, 0u64);
        for i in 0..n {
            match c.write(&i.to_le_bytes()[..1 + (i % 8) as usize]) {
                Ok(()) => ok += 1,
                Err(WriteError::Full) => full += 1,
                Err(WriteError::Corrupt) => corrupt += 1,
                Err(e) => panic!("{e}"),
            }
        }
        let _ = tx.send((ok, full, corrupt));
    });
    rx.recv_timeout(Duration::from_secs(60)).ok()
}

fn run(mode: Mode, n_subbufs: u64, target: Target, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let chan = Arc::new(
        Channel::builder("s")
            .dir(dir.path())
            .subbuf_size(256)
            .n_subbufs(n_subbufs)
            .mode(mode)
            .global(true)
            .open()
            .unwrap(),
    );
    let g = chan.geometry();
    // A live buffer: a few laps in (overwrite) or full (no-overwrite).
    let before = write_all(&chan, 300).expect("writes on a sound buffer return");
    scribble(chan.buffer_path(0), g, target, seed);
    let s0 = chan.total_stats();
    const N: u64 = 50_000;
    let what = format!("{mode:?} n_subbufs={n_subbufs} {target:?} seed={seed:#x}");
    let (ok, full, corrupt) =
        write_all(&chan, N).unwrap_or_else(|| panic!("{what}: the writer never returned"));
    chan.flush();
    let s1 = chan.total_stats();
    assert_eq!(ok + full + corrupt, N, "{what}");
    // Every refused record is counted, in the counter its error names.
    assert_eq!(s1.dropped_full - s0.dropped_full, full, "{what}");
    assert_eq!(s1.dropped_corrupt - s0.dropped_corrupt, corrupt, "{what}");
    assert_eq!(s1.dropped_toobig, 0, "{what}");
    if corrupt > 0 {
        assert_ne!(s1.corrupt, 0, "{what}: the buffer is marked corrupt");
        assert!(relayfs::layout::corrupt_reason(s1.corrupt).is_some());
    }
    if s1.corrupt != 0 {
        // Once marked, writes drop at once and are counted.
        let s2 = chan.total_stats();
        assert_eq!(chan.write(b"after"), Err(WriteError::Corrupt), "{what}");
        assert_eq!(
            chan.total_stats().dropped_corrupt,
            s2.dropped_corrupt + 1,
            "{what}"
        );
    }
    // The written records are those of the sound part plus what was
    // accepted after: never more than offered.
    assert!(s1.records_completed <= before.0 + ok, "{what} {s1:?}");
}

#[test]
fn scribbled_generations_never_hang_the_writer() {
    for mode in [Mode::Overwrite, Mode::NoOverwrite] {
        for n in [3, 4] {
            run(mode, n, Target::Generations, 0x1234);
            let s = {
                let dir = tempfile::tempdir().unwrap();
                let chan = Arc::new(
                    Channel::builder("g")
                        .dir(dir.path())
                        .subbuf_size(256)
                        .n_subbufs(n)
                        .mode(mode)
                        .global(true)
                        .open()
                        .unwrap(),
                );
                write_all(&chan, 300).unwrap();
                scribble(chan.buffer_path(0), chan.geometry(), Target::Generations, 7);
                write_all(&chan, 1000).expect("returns");
                chan.total_stats()
            };
            // A generation ahead of the head is never possible: found at the
            // next switch, and the buffer marked.
            assert_eq!(
                s.corrupt,
                relayfs::layout::CORRUPT_GENERATION,
                "{mode:?} {n}"
            );
            assert!(s.dropped_corrupt > 0);
        }
    }
}

#[test]
fn scribbled_descriptors_never_hang_the_writer() {
    for mode in [Mode::Overwrite, Mode::NoOverwrite] {
        for n in [3, 4, 16] {
            for seed in [0x9E37_79B9_7F4A_7C15u64, 0xdead_beef, 42] {
                run(mode, n, Target::Descriptors, seed);
            }
        }
    }
}

#[test]
fn scribbled_commit_words_never_hang_the_writer() {
    for mode in [Mode::Overwrite, Mode::NoOverwrite] {
        for n in [3, 4] {
            for seed in [1u64, 0xabcdef, 0x5555_aaaa_5555] {
                run(mode, n, Target::CommitWords, seed);
            }
        }
    }
}

#[test]
fn scribbled_head_never_hangs_the_writer_or_escapes_the_buffer() {
    for mode in [Mode::Overwrite, Mode::NoOverwrite] {
        // 3 sub-buffers: a random head names slot 3 a quarter of the time.
        for n in [3, 4] {
            for seed in 1..12u64 {
                run(mode, n, Target::Head, seed * 0x9E37_79B9);
            }
        }
    }
}

/// The header's `OPENING` word (switches in flight, and the closing bit).
const OPENING_OFFSET: u64 = 464;

/// Writer `w`'s records until `stop`: (accepted, refused as full, refused
/// as closed).
fn write_until(chan: &Channel, w: u32, stop: &AtomicBool) -> (u64, u64, u64) {
    let (mut ok, mut full, mut closed) = (0, 0, 0);
    let mut buf = [0u8; 32];
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let len = common::HDR + (seq % 8) as usize;
        common::record_into(w, seq, &mut buf[..len]);
        match chan.write(&buf[..len]) {
            Ok(()) => ok += 1,
            Err(WriteError::Full) => full += 1,
            Err(WriteError::Closed) => closed += 1,
            Err(e) => panic!("writer {w}: {e}"),
        }
        seq += 1;
    }
    (ok, full, closed)
}

/// `OPENING` scribbled while writers switch sub-buffers of 64 bytes without
/// pause, then `close`: the closing bit set before the producer closes
/// (switches are refused, and counted, and the process refuses writes as
/// closed from then on), a count no switch will take back (close waits its
/// bounded 2 s), one a single switch carries into the closing bit, a
/// word a switch's decrement takes below 0. No writer hangs, close returns
/// within its bound, and every record a writer was told was accepted is
/// delivered to the reader or counted; every refusal is counted.
#[test]
fn a_scribbled_opening_word_never_hangs_a_writer_or_close() {
    for value in [
        1u64 << 63,
        0xffff_ffff,
        u64::MAX,
        0x7fff_ffff_ffff_ffff,
        1 << 32,
        0,
    ] {
        for mode in [Mode::NoOverwrite, Mode::Overwrite] {
            for reader in [false, true] {
                scribbled_opening(value, mode, reader);
            }
        }
    }
}

fn scribbled_opening(value: u64, mode: Mode, reader: bool) {
    let what = format!("OPENING = {value:#x}, {mode:?}, reader {reader}");
    let dir = tempfile::tempdir().unwrap();
    let chan = Arc::new(
        Channel::builder("o")
            .dir(dir.path())
            .subbuf_size(64)
            .n_subbufs(4)
            .mode(mode)
            .open()
            .unwrap(),
    );
    let readers = reader.then(|| common::drain_to_close(&chan, 4096, Duration::from_millis(1)));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (chan, stop) = (chan.clone(), stop.clone());
            std::thread::spawn(move || write_until(&chan, w, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    for i in 0..chan.n_buffers() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(chan.buffer_path(i))
            .unwrap();
        f.write_all_at(&value.to_ne_bytes(), OPENING_OFFSET)
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    let t0 = Instant::now();
    chan.close().unwrap();
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut full, mut closed) = (0, 0, 0);
    for w in writers {
        let (o, f, c) = w.join().unwrap();
        ok += o;
        full += f;
        closed += c;
    }
    let s = chan.total_stats();
    let what =
        format!("{what}: close took {took:?}; accepted {ok}, full {full}, closed {closed}\n{s:?}");
    // 2 s of waiting for switches in flight, and time to spare on a busy
    // machine.
    assert!(took < Duration::from_secs(4), "{what}");
    assert_eq!(s.corrupt, 0, "{what}");
    assert_eq!(s.records_written(), ok, "{what}");
    assert_eq!(s.dropped_full, full, "{what}");
    assert_eq!(s.dropped_closed, closed, "{what}");
    let delivered = match readers {
        Some(r) => {
            let (seen, rs) = common::gather(r, false);
            assert_eq!(rs.records_consumed, seen.len() as u64, "{what}");
            seen.len() as u64
        }
        None => s.records_consumed,
    };
    assert_eq!(
        ok,
        delivered + s.unread_at_close + s.overwritten_records + s.discarded_records,
        "{what}"
    );
}
