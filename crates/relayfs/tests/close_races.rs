//! `close` racing writers: every record offered is read, or counted lost,
//! exactly once, including writes still in flight when `close` stops
//! waiting for them.

use relayfs::{BufferStats, Channel, Mode, RelayFile, WriteError};
use std::sync::atomic::{AtomicU64, Ordering};

fn open(dir: &std::path::Path, mode: Mode, global: bool) -> Channel {
    Channel::builder("c")
        .dir(dir)
        .subbuf_size(256)
        .n_subbufs(8)
        .mode(mode)
        .global(global)
        .open()
        .unwrap()
}

fn check(what: &str, s: &BufferStats, offered: u64, accepted: u64) {
    assert_eq!(s.records_pending, 0, "{what}: nothing pending {s:?}");
    assert_eq!(s.records_written(), accepted, "{what}: written {s:?}");
    assert_eq!(
        s.records_consumed + s.lost(),
        offered,
        "{what}: consumed + lost = offered {s:?}"
    );
}

/// A reservation held until `close` has given up waiting for it, with no
/// reader attached: when it commits, its sub-buffer (its own record and the
/// ones written before it) can never be read, and must be counted unread.
#[test]
fn a_reservation_committed_after_close_gave_up_on_it_is_counted_unread() {
    for mode in [Mode::NoOverwrite, Mode::Overwrite] {
        let dir = tempfile::tempdir().unwrap();
        let chan = open(dir.path(), mode, true);
        for i in 0..5u64 {
            chan.write(&i.to_le_bytes()).unwrap();
        }
        let mut slot = chan.reserve(16).unwrap();
        let closed = std::thread::scope(|s| {
            let c = &chan;
            // close returns only once it has stopped waiting for the slot.
            s.spawn(move || c.close().unwrap()).join().unwrap()
        });
        // What close returned can't count the open sub-buffer yet.
        assert_eq!(closed.records_written(), 0, "{mode:?} {closed:?}");
        slot.copy_from_slice(&[7; 16]);
        slot.commit();
        let s = chan.total_stats();
        assert_eq!(s.unread_at_close, 6, "{mode:?}: all six unread {s:?}");
        check(&format!("{mode:?}"), &s, 6, 6);
        // Refusals after that add up too.
        assert_eq!(chan.write(b"late"), Err(WriteError::Closed));
        check(&format!("{mode:?} refused"), &chan.total_stats(), 7, 6);
    }
}

/// Four threads write and reserve (holding reservations across the close)
/// while two other threads close the channel, with or without a reader
/// attached to every buffer: offered = consumed + lost, exactly.
fn close_racing_writers(mode: Mode, with_reader: bool, runs: u32) {
    for run in 0..runs {
        let what = format!("run {run} {mode:?} reader {with_reader}");
        let dir = tempfile::tempdir().unwrap();
        let chan = open(dir.path(), mode, false);
        let mut readers: Vec<RelayFile> = if with_reader {
            (0..chan.n_buffers())
                .map(|i| RelayFile::open(chan.buffer_path(i)).unwrap())
                .collect()
        } else {
            Vec::new()
        };
        let offered = AtomicU64::new(0);
        let accepted = AtomicU64::new(0);
        let done = std::sync::atomic::AtomicBool::new(false);
        let consumed = std::thread::scope(|s| {
            let chan = &chan;
            let (offered, accepted) = (&offered, &accepted);
            let drain = s.spawn(move || {
                let mut buf = vec![0u8; 4096];
                for r in &mut readers {
                    while !r.is_eof().unwrap() {
                        r.read(&mut buf).unwrap();
                    }
                }
                readers
                    .iter()
                    .map(|r| r.stats().records_consumed)
                    .sum::<u64>()
            });
            let n_bufs = chan.n_buffers();
            let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
            // Flushes from wherever it runs (a hold of each pinned buffer's
            // mark) until the close.
            let done = &done;
            s.spawn(move || {
                while !done.load(Ordering::Acquire) {
                    chan.flush();
                    std::thread::yield_now();
                }
            });
            for t in 0..4u64 {
                s.spawn(move || {
                    for i in 0..2000u64 {
                        if i % 64 == 0 {
                            // Migrate: sequences abort, commits go remote.
                            let _ = relayfs::cpu::pin_current_thread((i / 64 + t) as usize % ncpu);
                        }
                        offered.fetch_add(1, Ordering::Relaxed);
                        let r = if (i + t) % 5 == 1 {
                            // Into every CPU's buffer in turn: a hold of its
                            // mark across reserve and commit.
                            chan.write_cpu((i + t) as usize % n_bufs, &[t as u8; 32])
                        } else if (i + t) % 3 == 0 {
                            chan.reserve(24).map(|mut slot| {
                                slot.fill(t as u8);
                                if i % 97 == 0 {
                                    std::thread::yield_now();
                                }
                                slot.commit();
                            })
                        } else {
                            chan.write(&[t as u8; 40])
                        };
                        match r {
                            Ok(()) => {
                                accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(WriteError::Full | WriteError::Closed) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                });
            }
            s.spawn(move || {
                std::thread::yield_now();
                chan.close().unwrap();
            });
            s.spawn(move || chan.close().unwrap()).join().unwrap();
            done.store(true, Ordering::Release);
            drain.join().unwrap()
        });
        // Every writer is done: nothing more can be counted.
        let mut s = chan.total_stats();
        if with_reader {
            // The readers counted what they consumed in the files.
            assert_eq!(s.records_consumed, consumed, "{what}");
        }
        s.records_consumed = consumed;
        check(
            &what,
            &s,
            offered.load(Ordering::Relaxed),
            accepted.load(Ordering::Relaxed),
        );
    }
}

#[test]
fn close_racing_writers_with_no_reader_adds_up() {
    close_racing_writers(Mode::NoOverwrite, false, 8);
    close_racing_writers(Mode::Overwrite, false, 8);
}

/// The reader drains until `is_eof`: it must not take a producer that
/// fills the buffer and closes while it looks for the end for an empty
/// buffer (it then left full sub-buffers behind, neither read nor lost).
#[test]
fn close_racing_writers_with_a_reader_draining_to_the_end_adds_up() {
    close_racing_writers(Mode::NoOverwrite, true, 100);
}

/// Overwrite mode with a reader racing the writers and the close. A reader
/// that found a sub-buffer complete and lost the CPU while writers lapped
/// its slot twice used to claim it anyway and count it as discarded, after
/// a writer had counted it as overwritten: consumed + lost exceeded what was
/// offered by one sub-buffer's records (4 runs in 150; 0 in 80 since).
#[test]
fn close_racing_writers_with_a_reader_in_overwrite_mode_adds_up() {
    close_racing_writers(Mode::Overwrite, true, 60);
}

/// The late counting trusts the reader page (consumed and discarded
/// counts) only as far as records completed after close began: a reader
/// that read everything and then zeroed its consumed count before leaving
/// can't make close count anything unread.
#[test]
fn a_scribbled_reader_page_does_not_make_close_count_unread() {
    use std::io::{Seek, SeekFrom, Write};
    for mode in [Mode::NoOverwrite, Mode::Overwrite] {
        let dir = tempfile::tempdir().unwrap();
        let chan = open(dir.path(), mode, true);
        for i in 0..50u64 {
            chan.write(&i.to_le_bytes()).unwrap();
        }
        chan.flush();
        {
            let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
            let mut buf = vec![0u8; 4096];
            while r.read(&mut buf).unwrap() > 0 {}
            assert_eq!(r.stats().records_consumed, 50, "{mode:?}");
        }
        let g = chan.geometry();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(chan.buffer_path(0))
            .unwrap();
        // The reader page's consumed-records word.
        f.seek(SeekFrom::Start(g.reader_offset + 32)).unwrap();
        f.write_all(&0u64.to_ne_bytes()).unwrap();
        drop(f);
        assert_eq!(
            chan.total_stats().records_consumed,
            0,
            "{mode:?}: scribbled"
        );
        let s = chan.close().unwrap();
        assert_eq!(s.unread_at_close, 0, "{mode:?}: nothing was left {s:?}");
    }
}

/// A writer that passed the closed check of a sub-buffer switch
/// (`subbuf_start` runs after it) and opens the sub-buffer only once
/// `close` has found the buffer quiet and finished: its record is
/// accepted, but close did not wait for it, no reader will read it and
/// nothing counts it (it stays pending, or is read by no one once a later
/// flush completes it). A preemption in that window does the same as the
/// slow callback here: seen once in 60 runs of the racing test above with
/// eight (faked) possible CPUs on two cores.
#[test]
fn a_writer_opening_a_sub_buffer_while_close_runs_is_waited_for_or_refused() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    struct Slow(Arc<AtomicBool>, Arc<AtomicBool>);
    impl relayfs::Callbacks for Slow {
        fn subbuf_start(&self, _b: &relayfs::BufferInfo, _i: &relayfs::SwitchInfo) -> bool {
            if !self.0.swap(true, Ordering::AcqRel) {
                // The first switch: let close begin meanwhile.
                self.1.store(true, Ordering::Release);
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            true
        }
    }
    for with_reader in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (once, inside) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let chan = Channel::builder("c")
            .dir(dir.path())
            .subbuf_size(256)
            .n_subbufs(8)
            .global(true)
            .callbacks(Slow(once, inside.clone()))
            .open()
            .unwrap();
        let mut reader = with_reader.then(|| RelayFile::open(chan.buffer_path(0)).unwrap());
        let (res, closed) = std::thread::scope(|s| {
            let c = &chan;
            let w = s.spawn(move || c.write(&[1u8; 40]));
            while !inside.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            let closed = c.close().unwrap();
            (w.join().unwrap(), closed)
        });
        let mut consumed = 0;
        if let Some(r) = &mut reader {
            let mut buf = vec![0u8; 4096];
            while !r.is_eof().unwrap() {
                r.read(&mut buf).unwrap();
            }
            consumed = r.stats().records_consumed;
        }
        let mut s = chan.total_stats();
        s.records_consumed = consumed;
        let what = format!("reader {with_reader}, write {res:?}, close returned {closed:?}");
        check(&what, &s, 1, u64::from(res.is_ok()));
    }
}
