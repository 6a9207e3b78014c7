//! The cost of an overwrite-mode buffer whose reader keeps up, so that the
//! writer's every sub-buffer switch laps a sub-buffer the reader claimed
//! (and leaves it to the reader), and the reader claims every sub-buffer it
//! reads: one thread writes a sub-buffer's worth of records, then reads
//! them back with `RelayFile::read`, over and over. One thread, no
//! sleeping, so that `valgrind --tool=callgrind` counts the same
//! instructions every run.
//!
//! ```text
//! cargo run --release --example claim_cost -- [RECORD_SIZE [SUB_BUFFERS]]
//! ```
//!
//! Prints ns per record (write and read together) for the best of three
//! rounds. `scripts/claim_before_after.sh REV` compares it with an earlier
//! revision's, in one run.

use relayfs::{Channel, Mode, RelayFile};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size: usize = std::env::args().nth(1).map_or(Ok(64), |s| s.parse())?;
    let subbufs: u64 = std::env::args().nth(2).map_or(Ok(20_000), |s| s.parse())?;
    let dir = std::env::temp_dir().join(format!("relayfs-claim-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let subbuf_size = 16 << 10;
    let chan = Channel::builder("claimcost")
        .dir(&dir)
        .subbuf_size(subbuf_size)
        .n_subbufs(4)
        .global(true)
        .mode(Mode::Overwrite)
        .open()?;
    let mut reader = RelayFile::open(chan.buffer_path(0))?;
    let rec = vec![0x5au8; size];
    let per_subbuf = subbuf_size as usize / size;
    let mut buf = vec![0u8; subbuf_size as usize];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let mut read = 0usize;
        for _ in 0..subbufs {
            for _ in 0..per_subbuf {
                chan.write(&rec)?;
            }
            read += reader.read(&mut buf)?;
        }
        let ns = t.elapsed().as_nanos() as f64 / (subbufs as f64 * per_subbuf as f64);
        best = best.min(ns);
        std::hint::black_box(read);
    }
    let s = reader.stats();
    println!(
        "claim_cost {size} B: {best:.2} ns per record written and read ({} consumed, {} overwritten, {} discarded)",
        s.records_consumed, s.overwritten_records, s.discarded_records
    );
    drop(reader);
    chan.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
