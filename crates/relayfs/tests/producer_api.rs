//! The producer API on a shared channel: `close(&self)` from any holder of
//! an `Arc<Channel>`, and waiting for readers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use relayfs::{BufferStats, Channel, RelayFile, WriteError};

fn open(dir: &std::path::Path) -> Channel {
    Channel::builder("c")
        .dir(dir)
        .subbuf_size(256)
        .n_subbufs(8)
        .open()
        .unwrap()
}

#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    offered: u64,
    ok: u64,
    full: u64,
    closed: u64,
}

#[test]
fn a_shared_channel_closed_by_one_of_its_writers_accounts_for_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Arc::new(open(dir.path()));
    let n_threads = 4;
    let start = Arc::new(Barrier::new(n_threads));
    let closer_done = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..n_threads)
        .map(|t| {
            let chan = chan.clone();
            let start = start.clone();
            let closer_done = closer_done.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut tally = Tally::default();
                let mut closed_stats = None;
                let mut i = 0u64;
                loop {
                    tally.offered += 1;
                    match chan.write(&(t as u64 * 1_000_000 + i).to_le_bytes()) {
                        Ok(()) => tally.ok += 1,
                        Err(WriteError::Full) => tally.full += 1,
                        Err(WriteError::Closed) => {
                            tally.closed += 1;
                            // Every write after a refusal for close is
                            // refused too (and counted).
                            if t != 0 && closer_done.load(Ordering::Acquire) {
                                break;
                            }
                        }
                        Err(e) => panic!("{e}"),
                    }
                    i += 1;
                    if t == 0 && i == 500 {
                        closed_stats = Some(chan.close().unwrap());
                        closer_done.store(true, Ordering::Release);
                    }
                    if t == 0 && i == 510 {
                        break;
                    }
                }
                (tally, closed_stats)
            })
        })
        .collect();
    let mut total = Tally::default();
    let mut at_close = None;
    for h in handles {
        let (t, s) = h.join().unwrap();
        total.offered += t.offered;
        total.ok += t.ok;
        total.full += t.full;
        total.closed += t.closed;
        at_close = at_close.or(s);
    }
    let at_close: BufferStats = at_close.expect("thread 0 closed the channel");
    assert!(
        total.closed >= 10,
        "thread 0's last ten writes were refused"
    );
    // Closing again returns what the first close returned.
    assert_eq!(chan.close().unwrap(), at_close);
    let s = chan.total_stats();
    // Every record offered was accepted or refused, and counted so.
    assert_eq!(s.records_written(), total.ok, "{s:?} {total:?}");
    assert_eq!(s.dropped_full, total.full, "{s:?} {total:?}");
    assert_eq!(s.dropped_closed, total.closed, "{s:?} {total:?}");
    assert_eq!(
        s.records_written() + s.dropped_full + s.dropped_closed,
        total.offered
    );
    // Nothing was accepted after the close began, and with no reader
    // attached every accepted record is counted unread at close.
    assert_eq!(at_close.records_written(), total.ok);
    assert_eq!(s.records_pending, 0, "{s:?}");
    assert_eq!(s.unread_at_close, total.ok, "{s:?}");
    assert_eq!(s.records_consumed + s.lost(), total.offered, "{s:?}");
    // And the files are gone.
    for cpu in 0..chan.n_buffers() {
        assert!(!chan.buffer_path(cpu).exists());
    }
}

#[test]
fn writes_after_close_are_refused_and_counted_and_close_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let chan = open(dir.path());
    chan.write_cpu(0, b"kept").unwrap();
    let first = chan.close().unwrap();
    assert_eq!(first.records_written(), 1);
    assert_eq!(first.unread_at_close, 1);
    assert_eq!(chan.write(b"late"), Err(WriteError::Closed));
    assert_eq!(chan.write_cpu(0, b"late"), Err(WriteError::Closed));
    assert_eq!(chan.reserve(8).err(), Some(WriteError::Closed));
    let s = chan.total_stats();
    assert_eq!(s.dropped_closed, 3, "{s:?}");
    assert_eq!(s.records_written(), 1);
    assert_eq!(s.records_consumed + s.lost(), 4);
    assert_eq!(chan.close().unwrap(), first);
    assert!(WriteError::Closed.to_string().contains("closed"));
}

#[test]
fn wait_for_readers_returns_once_every_buffer_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let chan = open(dir.path());
    assert_eq!(chan.readers_attached(), 0);
    let paths: Vec<_> = (0..chan.n_buffers())
        .map(|c| chan.buffer_path(c).to_path_buf())
        .collect();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let readers: Vec<_> = paths.iter().map(|p| RelayFile::open(p).unwrap()).collect();
        let _ = rx.recv();
        drop(readers);
    });
    assert!(chan.wait_for_readers(Duration::from_secs(30)));
    assert_eq!(chan.readers_attached(), chan.n_buffers());
    tx.send(()).unwrap();
    late.join().unwrap();
    assert_eq!(chan.readers_attached(), 0, "readers that let go are gone");
}

#[test]
fn wait_for_readers_times_out_while_a_buffer_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let chan = open(dir.path());
    assert!(!chan.wait_for_readers(Duration::from_millis(30)));
    // One buffer of several, or the only one, attached: all or nothing
    // decides.
    let r = RelayFile::open(chan.buffer_path(0)).unwrap();
    assert_eq!(chan.readers_attached(), 1);
    assert_eq!(
        chan.wait_for_readers(Duration::from_millis(30)),
        chan.n_buffers() == 1
    );
    drop(r);
    assert!(!chan.wait_for_readers(Duration::ZERO));
}
