//! Many writers, one reader per buffer: every record is delivered exactly
//! once, whole and in per-writer order, or counted as lost.

mod common;
use common::{gather, parse, record, HDR};
use relayfs::{Channel, Mode, Ready, RelayFile, WriteError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Outcome {
    delivered: u64,
    written_ok: u64,
    refused: u64,
    stats: relayfs::BufferStats,
}

/// How a reader thread reads its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// `RelayFile::read`, in 700-byte pieces.
    Read,
    /// The mapping: `ready`, copy, `consume`.
    MapConsume,
    /// The mapping, the kernel's way: `ready`, copy, `still_valid`,
    /// `subbufs_consumed(1)`.
    MapStillValid,
}

fn run(mode: Mode, global: bool, writers: u32, per_writer: u64, slow_reader: bool) -> Outcome {
    run_with(
        How::Read,
        1024,
        mode,
        global,
        writers,
        per_writer,
        slow_reader,
    )
}

/// A reader thread: returns what it delivered, as one stream, and the
/// buffer's counters at the end. `written`: records the writers have
/// written so far (a slow mapping reader holds each sub-buffer until they
/// wrote another `HOLD` records, or finished).
fn reader(
    mut f: RelayFile,
    how: How,
    slow: bool,
    written: Arc<AtomicU64>,
    writers_done: Arc<AtomicBool>,
) -> (Vec<u8>, relayfs::BufferStats) {
    const HOLD: u64 = 2_000;
    let mut stream = Vec::new();
    if how == How::Read {
        let mut buf = vec![0u8; 700];
        loop {
            let n = f.read(&mut buf).unwrap();
            stream.extend_from_slice(&buf[..n]);
            if slow {
                std::thread::sleep(Duration::from_micros(200));
            }
            if n == 0 {
                match f.poll(Some(Duration::from_millis(20))).unwrap() {
                    Ready::Closed => break,
                    Ready::ProducerGone => panic!("producer gone"),
                    _ => {}
                }
            }
        }
        return (stream, f.stats());
    }
    let mut m = f.map();
    loop {
        let Some(sb) = m.ready().unwrap() else {
            match m.poll(Some(Duration::from_millis(20))).unwrap() {
                Ready::Closed => break,
                Ready::ProducerGone => panic!("producer gone"),
                _ => continue,
            }
        };
        assert_eq!(sb.len + sb.padding, 64 << 10);
        // Copy it from where it lies, as a mapping reader does.
        let mut copy = vec![0u8; sb.len as usize];
        // SAFETY: the bytes of a sub-buffer `ready` returned, within the
        // mapping (`index * subbuf_size + len <= m.len()`). In overwrite mode
        // a writer may change them meanwhile, which is why the copy is
        // checked before use; a raw copy (as `copy_subbuf` makes) never
        // forms a reference to them.
        unsafe {
            let at = sb.index * (sb.len + sb.padding);
            assert!(at + sb.len <= m.len());
            std::ptr::copy_nonoverlapping(
                m.as_ptr().add(at as usize),
                copy.as_mut_ptr(),
                copy.len(),
            );
        }
        if slow {
            let at = written.load(Ordering::Relaxed);
            while written.load(Ordering::Relaxed) < at + HOLD
                && !writers_done.load(Ordering::Relaxed)
            {
                std::thread::yield_now();
            }
        }
        let good = match how {
            How::MapConsume => m.consume(&sb).unwrap(),
            How::MapStillValid => {
                let good = m.still_valid(&sb);
                assert_eq!(m.subbufs_consumed(1).unwrap(), 1);
                good
            }
            How::Read => unreachable!(),
        };
        if good {
            // The library's record count, against the records in it.
            assert_eq!(parse(&copy).len() as u64, sb.records, "records in {sb:?}");
            stream.extend_from_slice(&copy);
        }
    }
    drop(m);
    (stream, f.stats())
}

fn run_with(
    how: How,
    subbuf_size: u64,
    mode: Mode,
    global: bool,
    writers: u32,
    per_writer: u64,
    slow_reader: bool,
) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let chan = Arc::new(
        Channel::builder("stress")
            .dir(dir.path())
            .subbuf_size(subbuf_size)
            .n_subbufs(4)
            .mode(mode)
            .global(global)
            .open()
            .unwrap(),
    );
    let written = Arc::new(AtomicU64::new(0));
    let writers_done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..chan.n_buffers())
        .map(|i| {
            let f = RelayFile::open(chan.buffer_path(i)).unwrap();
            let (written, done) = (written.clone(), writers_done.clone());
            std::thread::spawn(move || reader(f, how, slow_reader, written, done))
        })
        .collect();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let chan = chan.clone();
            let written = written.clone();
            std::thread::spawn(move || {
                let (mut ok, mut refused) = (0u64, 0u64);
                for seq in 0..per_writer {
                    let len = HDR + ((seq * 7 + w as u64 * 13) % 300) as usize;
                    let rec = record(w, seq, len);
                    let res = if seq % 2 == 0 {
                        chan.write(&rec)
                    } else {
                        chan.reserve(len).map(|mut slot| {
                            slot.copy_from_slice(&rec);
                            if seq % 5 == 0 {
                                std::thread::yield_now(); // hold it open a while
                            }
                        })
                    };
                    match res {
                        Ok(()) => ok += 1,
                        Err(WriteError::Full) => refused += 1,
                        Err(e) => panic!("{e}"),
                    }
                    written.fetch_add(1, Ordering::Relaxed);
                }
                (ok, refused)
            })
        })
        .collect();
    let (mut written_ok, mut refused) = (0, 0);
    for h in handles {
        let (o, r) = h.join().unwrap();
        written_ok += o;
        refused += r;
    }
    writers_done.store(true, Ordering::Relaxed);
    let chan = Arc::try_unwrap(chan).unwrap();
    chan.close().unwrap();
    let (seen, stats) = gather(readers, true);
    let delivered = seen.len() as u64;
    Outcome {
        delivered,
        written_ok,
        refused,
        stats,
    }
}

fn check(o: &Outcome, offered: u64) {
    let s = &o.stats;
    assert_eq!(o.written_ok + o.refused, offered);
    assert_eq!(s.dropped_full, o.refused, "refusals counted");
    assert_eq!(
        s.records_completed, o.written_ok,
        "every accepted record completes"
    );
    assert_eq!(
        s.records_consumed, o.delivered,
        "reader's count matches what it parsed"
    );
    assert_eq!(
        o.delivered + s.overwritten_records + s.discarded_records + s.dropped_full,
        offered,
        "delivered + lost = offered: {s:?}"
    );
}

#[test]
fn no_overwrite_per_cpu_fast_reader() {
    let o = run(Mode::NoOverwrite, false, 4, 20_000, false);
    check(&o, 80_000);
}

#[test]
fn no_overwrite_global_slow_reader() {
    let o = run(Mode::NoOverwrite, true, 4, 5_000, true);
    check(&o, 20_000);
    assert!(o.refused > 0, "a slow reader makes the producer drop");
}

#[test]
fn overwrite_per_cpu_fast_reader() {
    let o = run(Mode::Overwrite, false, 4, 20_000, false);
    check(&o, 80_000);
}

#[test]
fn overwrite_global_slow_reader() {
    let o = run(Mode::Overwrite, true, 4, 5_000, true);
    check(&o, 20_000);
    assert!(o.stats.overwritten_records + o.stats.discarded_records > 0);
}

// The mapping reader (`RelayFile::map`), 64 KiB x 4 sub-buffers. The slow
// readers hold each sub-buffer, between reading it and consuming it, until
// the writers wrote more than the ring holds: so every one held while they
// write is overwritten under the reader.

const MAP_SUBBUF: u64 = 64 << 10;

#[test]
fn mapping_overwrite_per_cpu_fast_reader() {
    let o = run_with(
        How::MapConsume,
        MAP_SUBBUF,
        Mode::Overwrite,
        false,
        4,
        20_000,
        false,
    );
    check(&o, 80_000);
}

#[test]
fn mapping_overwrite_global_slow_reader() {
    let o = run_with(
        How::MapConsume,
        MAP_SUBBUF,
        Mode::Overwrite,
        true,
        4,
        20_000,
        true,
    );
    check(&o, 80_000);
    assert!(o.stats.discarded_records > 0, "{:?}", o.stats);
}

#[test]
fn mapping_overwrite_per_cpu_fast_reader_kernel_path() {
    let o = run_with(
        How::MapStillValid,
        MAP_SUBBUF,
        Mode::Overwrite,
        false,
        4,
        20_000,
        false,
    );
    check(&o, 80_000);
}

#[test]
fn mapping_overwrite_global_slow_reader_kernel_path() {
    let o = run_with(
        How::MapStillValid,
        MAP_SUBBUF,
        Mode::Overwrite,
        true,
        4,
        20_000,
        true,
    );
    check(&o, 80_000);
    assert!(o.stats.discarded_records > 0, "{:?}", o.stats);
}

#[test]
fn mapping_no_overwrite_per_cpu_fast_reader() {
    let o = run_with(
        How::MapConsume,
        MAP_SUBBUF,
        Mode::NoOverwrite,
        false,
        4,
        20_000,
        false,
    );
    check(&o, 80_000);
}

#[test]
fn mapping_no_overwrite_global_slow_reader_kernel_path() {
    let o = run_with(
        How::MapStillValid,
        MAP_SUBBUF,
        Mode::NoOverwrite,
        true,
        4,
        20_000,
        true,
    );
    check(&o, 80_000);
    assert!(o.refused > 0, "a slow reader makes the producer drop");
}
