//! Model-checks reserve / commit / switch / read with loom on tiny
//! configurations: 2 writers, 1 reader, 2–3 sub-buffers.
//!
//! The data region is loom cells too (`DataCell`): in no-overwrite mode
//! loom reports a reader that reads bytes no commit published to it (or a
//! writer that writes bytes a reader may still read) as a data race; in
//! both modes every record must come out byte for byte as written.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p relayfs --release --test loom`
//! (`.ci/loom` does, with LOOM_MAX_PREEMPTIONS bounded).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use relayfs::loom_support::{Killed, LoomBuffer};

/// The record with tag `tag` (`w * 16 + id + 1` for record `id` of writer
/// `w`): `len` bytes, the tag then bytes that differ from their neighbours
/// and from the same position of every other record, so that a byte from
/// the wrong record, position or lap (or a zero never written) shows.
fn tagged(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            if i == 0 {
                tag
            } else {
                tag.wrapping_mul(37).wrapping_add(i as u8 * 5) | 1
            }
        })
        .collect()
}

/// Record `id` of writer `w`, `len` bytes.
fn rec(w: u8, id: u8, len: usize) -> Vec<u8> {
    tagged(w * 16 + id + 1, len)
}

/// Splits a stream into records of `len` bytes and checks each is exactly
/// a record that was written, byte for byte, and appears at most once.
fn check_stream(stream: &[u8], len: usize) -> Vec<u8> {
    assert_eq!(stream.len() % len, 0, "partial record in {stream:?}");
    let mut ids = Vec::new();
    for r in stream.chunks(len) {
        assert_eq!(r, tagged(r[0], len), "torn or wrong record");
        assert!(!ids.contains(&r[0]), "record {} twice", r[0]);
        ids.push(r[0]);
    }
    ids
}

fn model(overwrite: bool, n_subbufs: u64, records_per_writer: u8, len: usize, races: usize) {
    model_n(
        2,
        overwrite,
        n_subbufs,
        records_per_writer,
        len,
        races,
        false,
    )
}

fn model_n(
    n_writers: u8,
    overwrite: bool,
    n_subbufs: u64,
    records_per_writer: u8,
    len: usize,
    races: usize,
    reader_thread: bool,
) {
    loom::model(move || {
        let buf = Arc::new(LoomBuffer::new(64, n_subbufs, overwrite));
        let writers: Vec<_> = (0..n_writers)
            .map(|w| {
                let buf = buf.clone();
                thread::spawn(move || {
                    let mut ok = 0u64;
                    for id in 0..records_per_writer {
                        if buf.write(&rec(w, id, len)).is_ok() {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        // The reader races the writers, from the model's main thread or
        // (more interleavings, a much larger state space) a thread of its
        // own; then it drains after a flush.
        let race = move |buf: &LoomBuffer| {
            let mut reader = buf.reader();
            let mut stream = Vec::new();
            let mut out = [0u8; 256];
            for _ in 0..races {
                let n = reader.read(buf, &mut out);
                stream.extend_from_slice(&out[..n]);
            }
            (reader, stream)
        };
        let (ok, (mut reader, mut stream)) = if reader_thread {
            let b = buf.clone();
            let racer = thread::spawn(move || race(&b));
            let ok: u64 = writers.into_iter().map(|h| h.join().unwrap()).sum();
            (ok, racer.join().unwrap())
        } else {
            let raced = race(&buf);
            (writers.into_iter().map(|h| h.join().unwrap()).sum(), raced)
        };
        let mut out = [0u8; 256];
        buf.flush();
        loop {
            let n = reader.read(&buf, &mut out);
            if n == 0 {
                break;
            }
            stream.extend_from_slice(&out[..n]);
        }
        let ids = check_stream(&stream, len);
        // Per-writer order.
        for w in 0..n_writers {
            let mine: Vec<u8> = ids.iter().copied().filter(|i| (i - 1) / 16 == w).collect();
            assert!(
                mine.windows(2).all(|p| p[0] < p[1]),
                "out of order {mine:?}"
            );
        }
        let s = buf.stats();
        let offered = n_writers as u64 * records_per_writer as u64;
        assert_eq!(s.records_completed, ok);
        assert_eq!(s.dropped_full, offered - ok);
        assert_eq!(s.records_consumed, ids.len() as u64);
        assert_eq!(
            ids.len() as u64 + s.overwritten_records + s.discarded_records + s.dropped_full,
            offered,
            "{s:?}"
        );
    });
}

#[test]
fn no_overwrite_two_writers_two_subbufs() {
    // 40-byte records: one per 64-byte sub-buffer, so every write switches.
    model(false, 2, 2, 40, 1);
}

#[test]
fn no_overwrite_two_records_per_subbuf() {
    model(false, 3, 2, 24, 1);
}

#[test]
fn overwrite_two_writers_two_subbufs() {
    model(true, 2, 2, 40, 2);
}

#[test]
fn overwrite_three_subbufs() {
    model(true, 3, 2, 24, 1);
}

#[test]
fn no_overwrite_two_writers_and_a_reader_thread() {
    // The reader on a thread of its own races the writers once (a partial
    // read of the open sub-buffer, or a complete one), with two 24-byte
    // records per 64-byte sub-buffer, one record per writer: loom checks
    // that each byte it reads was published to it by a commit, and the
    // checker that it got exactly the bytes written. (More records or
    // races than this do not finish in CI time.)
    model_n(2, false, 2, 1, 24, 1, true);
}

#[test]
fn overwrite_writer_laps_while_the_reader_skips() {
    // One writer laps a 2-sub-buffer ring (one record each) while a reader
    // thread races it twice: the reader may find sub-buffer 0 reused and
    // skip it before the writer has counted it as overwritten.
    model_n(1, true, 2, 3, 40, 2, true);
}

/// One writer laps a 2-sub-buffer overwrite ring (one record each) while a
/// mapping reader thread takes two sub-buffers (`ready`, copy, consume):
/// the writer may reopen the one it holds, before or after it copies; then
/// the main thread flushes and drains through the mapping. Each record is
/// delivered once, or counted once as overwritten or discarded.
fn mapping_model(kernel_path: bool) {
    loom::model(move || {
        let buf = Arc::new(LoomBuffer::new(64, 2, true));
        let b = buf.clone();
        let writer = thread::spawn(move || {
            (0..3)
                .filter(|&id| b.write(&rec(0, id, 40)).is_ok())
                .count()
        });
        let b = buf.clone();
        let reader = thread::spawn(move || {
            let mut stream = Vec::new();
            for _ in 0..2 {
                if let Some(Some(copy)) = b.map_read(kernel_path) {
                    stream.extend_from_slice(&copy);
                }
            }
            stream
        });
        let ok = writer.join().unwrap() as u64;
        let mut stream = reader.join().unwrap();
        buf.flush();
        while let Some(got) = buf.map_read(kernel_path) {
            stream.extend_from_slice(&got.unwrap_or_default());
        }
        let ids = check_stream(&stream, 40);
        assert!(ids.windows(2).all(|p| p[0] < p[1]), "out of order {ids:?}");
        let s = buf.stats();
        assert_eq!(s.records_completed, ok);
        assert_eq!(s.records_consumed, ids.len() as u64, "{s:?}");
        assert_eq!(
            ids.len() as u64 + s.overwritten_records + s.discarded_records + s.dropped_full,
            3,
            "{s:?}"
        );
    });
}

#[test]
fn mapping_reader_consume_while_the_writer_laps() {
    mapping_model(false);
}

#[test]
fn mapping_reader_kernel_path_while_the_writer_laps() {
    mapping_model(true);
}

/// One writer laps a 2-sub-buffer overwrite ring (one record each) up to
/// twice over sub-buffer 0 while a reader thread takes the sub-buffer at
/// its position and is killed (`Killed`); then a new reader drains it
/// after a flush. The writer may lap the killed reader's sub-buffer before
/// or after its claim, once (its claim word still says who has it) or
/// twice (the word is a later lap's: `LEFT_TO_READER` says). Each record
/// is delivered once, or counted once as overwritten or discarded.
fn killed_reader_model(at: Killed) {
    loom::model(move || {
        let buf = Arc::new(LoomBuffer::new(64, 2, true));
        let b = buf.clone();
        let writer = thread::spawn(move || {
            (0..5)
                .filter(|&id| b.write(&rec(0, id, 40)).is_ok())
                .count()
        });
        let b = buf.clone();
        let killed = thread::spawn(move || b.killed_reader(at));
        let ok = writer.join().unwrap() as u64;
        let mut stream = killed.join().unwrap();
        buf.flush();
        let mut reader = buf.reader();
        let mut out = [0u8; 256];
        loop {
            let n = reader.read(&buf, &mut out);
            if n == 0 {
                break;
            }
            stream.extend_from_slice(&out[..n]);
        }
        let ids = check_stream(&stream, 40);
        assert!(ids.windows(2).all(|p| p[0] < p[1]), "out of order {ids:?}");
        let s = buf.stats();
        assert_eq!(s.records_completed, ok);
        assert_eq!(s.records_consumed, ids.len() as u64, "{s:?}");
        assert_eq!(
            ids.len() as u64 + s.overwritten_records + s.discarded_records + s.dropped_full,
            5,
            "{s:?}"
        );
    });
}

#[test]
fn killed_reader_held_while_the_writer_laps() {
    killed_reader_model(Killed::Held);
}

#[test]
fn killed_reader_claimed_while_the_writer_laps() {
    killed_reader_model(Killed::Claimed);
}

#[test]
fn killed_reader_delivered_while_the_writer_laps() {
    killed_reader_model(Killed::Delivered);
}
