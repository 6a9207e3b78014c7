//! Framed, timestamped records: producer threads write them into a per-CPU
//! channel while a reader decodes every buffer and merges them in time
//! order, then prints the counts.
//!
//! Run: `cargo run -p relayfs --example framed [threads] [records-per-thread]`
//! (the channel lives in a temporary directory).

use std::path::Path;
use std::sync::Arc;

use relayfs::frame::{Merge, Records};
use relayfs::{Channel, RelayFile};

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Records the producers offered.
    pub offered: u64,
    /// Records the channel refused and counted (buffer full).
    pub dropped: u64,
    /// Records decoded.
    pub decoded: u64,
    /// Decoded records per producer thread.
    pub per_thread: Vec<u64>,
    /// Error items (corruption) met while decoding.
    pub errors: u64,
    /// Records the merge counted out of time order.
    pub out_of_order: u64,
    /// Records seen below the latest timestamp before them.
    pub inversions_seen: u64,
}

/// Writes `per_thread` records from each of `threads` threads into a
/// channel in `dir`, and reads them back merged in time order.
pub fn run(
    dir: &Path,
    threads: u32,
    per_thread: u32,
) -> Result<Report, Box<dyn std::error::Error>> {
    let chan = Arc::new(
        Channel::builder("framed")
            .dir(dir)
            .subbuf_size(16 << 10)
            .n_subbufs(16)
            .open()?,
    );
    // Readers first: a buffer file goes away at close unless a reader holds it.
    let readers = (0..chan.n_buffers())
        .map(|i| RelayFile::open(chan.buffer_path(i)).map(Records::live))
        .collect::<Result<Vec<_>, _>>()?;

    // The producers, and a thread that closes the channel once they are
    // done: the merge below reads until every buffer is closed.
    let producer = {
        let chan = chan.clone();
        std::thread::spawn(move || -> std::io::Result<(u64, u64)> {
            let writers: Vec<_> = (0..threads)
                .map(|t| {
                    let chan = chan.clone();
                    std::thread::spawn(move || {
                        let mut dropped = 0u64;
                        for k in 0..per_thread {
                            // A record: thread, sequence number, some text.
                            let mut slot = match chan.reserve_record_timed(16) {
                                Ok(slot) => slot,
                                Err(_) => {
                                    dropped += 1;
                                    continue;
                                }
                            };
                            slot[..4].copy_from_slice(&t.to_le_bytes());
                            slot[4..8].copy_from_slice(&k.to_le_bytes());
                            slot[8..].copy_from_slice(b"framed!\n");
                            slot.commit();
                        }
                        dropped
                    })
                })
                .collect();
            let dropped: u64 = writers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
            let chan = Arc::into_inner(chan).expect("every writer is done");
            let stats = chan.close()?;
            Ok((dropped, stats.lost()))
        })
    };
    drop(chan);

    let mut report = Report {
        offered: u64::from(threads) * u64::from(per_thread),
        per_thread: vec![0; threads as usize],
        ..Report::default()
    };
    let mut merge = Merge::new(readers);
    let mut latest = 0;
    for (_buffer, item) in merge.by_ref() {
        let rec = match item {
            Ok(rec) => rec,
            Err(e) => {
                eprintln!("{e}");
                report.errors += 1;
                continue;
            }
        };
        let ts = rec.timestamp.unwrap_or(latest);
        if ts < latest {
            report.inversions_seen += 1;
        }
        latest = latest.max(ts);
        let t = u32::from_le_bytes(rec.payload[..4].try_into()?);
        report.decoded += 1;
        if let Some(n) = report.per_thread.get_mut(t as usize) {
            *n += 1;
        }
    }
    report.out_of_order = merge.out_of_order();
    let (refused, lost) = producer.join().map_err(|_| "producer panicked")??;
    assert_eq!(refused, lost, "the channel counts what it refused");
    report.dropped = lost;
    Ok(report)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let threads = args.next().map_or(Ok(4), |a| a.parse())?;
    let per_thread = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let r = run(dir.path(), threads, per_thread)?;
    println!(
        "offered {} decoded {} dropped {} errors {} out of time order {}",
        r.offered, r.decoded, r.dropped, r.errors, r.out_of_order
    );
    for (t, n) in r.per_thread.iter().enumerate() {
        println!("thread {t}: {n} records");
    }
    Ok(())
}
