//! More pinned buffers than the mark table has slots (`rseq.rs`, 4096): the
//! buffers past it keep the compare-and-swap, the channels mixing both
//! modes account exactly, and a slot freed by a closed channel is taken
//! again by the next one.

mod common;
use common::{gather, record, HDR};
use relayfs::{Channel, Ready, RelayFile, WriteError};
use std::time::Duration;

fn open(root: &std::path::Path, i: usize) -> Channel {
    let d = root.join(format!("c{i}"));
    std::fs::create_dir(&d).unwrap();
    Channel::builder("s")
        .dir(d)
        .subbuf_size(256)
        .n_subbufs(4)
        .open()
        .unwrap()
}

/// Writes from two migrating threads (plain writes and `write_cpu` into
/// every buffer) into `chan`, with a reader per buffer; checks that every
/// record is delivered once or counted.
fn exercise(chan: &Channel) {
    let n = chan.n_buffers();
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let readers: Vec<_> = (0..n)
        .map(|i| {
            let mut f = RelayFile::open(chan.buffer_path(i)).unwrap();
            std::thread::spawn(move || {
                let mut stream = Vec::new();
                let mut buf = vec![0u8; 4096];
                loop {
                    let k = f.read(&mut buf).unwrap();
                    stream.extend_from_slice(&buf[..k]);
                    if k == 0 && f.poll(Some(Duration::from_millis(10))).unwrap() == Ready::Closed {
                        break;
                    }
                }
                (stream, f.stats())
            })
        })
        .collect();
    let (ok, full) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2u32)
            .map(|w| {
                s.spawn(move || {
                    let (mut ok, mut full) = (0u64, 0u64);
                    for seq in 0..5_000u64 {
                        if seq % 64 == 0 {
                            let _ = relayfs::cpu::pin_current_thread(
                                (seq / 64 + w as u64) as usize % ncpu,
                            );
                        }
                        let rec = record(w, seq, HDR + (seq % 40) as usize);
                        let r = if seq % 3 == 0 {
                            chan.write_cpu(seq as usize % n, &rec)
                        } else {
                            chan.write(&rec)
                        };
                        match r {
                            Ok(()) => ok += 1,
                            Err(WriteError::Full) => full += 1,
                            Err(e) => panic!("{e}"),
                        }
                        if seq % 500 == 0 {
                            chan.flush();
                        }
                    }
                    (ok, full)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    chan.close().unwrap();
    let (seen, s) = gather(readers, false);
    assert_eq!(s.corrupt, 0, "{s:?}");
    assert_eq!(s.dropped_full, full, "{s:?}");
    assert_eq!(s.records_completed, ok, "{s:?}");
    assert_eq!(seen.len() as u64, ok, "{s:?}");
}

#[test]
fn more_pinned_buffers_than_slots() {
    let probe_dir = tempfile::tempdir().unwrap();
    if !open(probe_dir.path(), 0).uses_rseq() {
        eprintln!("NOTE: no rseq here: nothing to check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut chans = Vec::new();
    // 4096 slots: at most 4096 channels of one buffer each.
    for i in 0..4200 {
        let c = open(dir.path(), i);
        let pinned = c.uses_rseq();
        chans.push(c);
        if !pinned {
            break;
        }
    }
    let last = chans.pop().unwrap();
    assert!(
        !last.uses_rseq(),
        "every slot taken after {} channels",
        chans.len()
    );
    // A channel past the table, written hard: the compare-and-swap path.
    exercise(&last);
    // The one before it may have got only some of its buffers pinned: both
    // modes in one channel.
    let mixed = chans.pop().unwrap();
    exercise(&mixed);
    drop(mixed);
    // Its slots are free again: a new channel gets them.
    let again = open(dir.path(), 10_000);
    assert!(again.uses_rseq(), "freed slots are taken again");
    exercise(&again);
    // And the first ones, with every other slot taken.
    let first = chans.remove(0);
    exercise(&first);
}
