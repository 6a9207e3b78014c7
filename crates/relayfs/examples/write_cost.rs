//! Prints the cost of `write` per record on one thread, with no reader
//! (overwrite mode, so the buffer never refuses), beside a copy of the same
//! bytes into a local ring, and of `write_record` of the same payload: `cargo run --release --example write_cost -- 64`
//! (an optional second argument sets the number of records per round).

use std::hint::black_box;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size: usize = std::env::args().nth(1).map_or(Ok(64), |s| s.parse())?;
    let n: u64 = std::env::args()
        .nth(2)
        .map_or(Ok(20_000_000), |s| s.parse())?;
    let dir = tempfile_dir();
    let chan = relayfs::Channel::builder("cost")
        .dir(&dir)
        .subbuf_size(1 << 20)
        .n_subbufs(4)
        .mode(relayfs::Mode::Overwrite)
        .open()?;
    let rec = vec![0x5au8; size];
    let mut ring = vec![0u8; 4 << 20];
    for round in 0..3 {
        let t = Instant::now();
        let mut at = 0;
        for _ in 0..n {
            if at + size > ring.len() {
                at = 0;
            }
            ring[at..at + size].copy_from_slice(black_box(&rec));
            at += size;
        }
        black_box(&ring);
        let floor = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            let _ = chan.write(black_box(&rec));
        }
        let w = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        // The same payload as a framed record (8 bytes more: the header).
        let t = Instant::now();
        for _ in 0..n {
            let _ = chan.write_record(black_box(&rec));
        }
        let f = t.elapsed().as_secs_f64() * 1e9 / n as f64;
        println!(
            "round {round}: {size} B  floor {floor:.2} ns  write {w:.2} ns  ratio {:.2}  write_record {f:.2} ns (+{:.2})",
            w / floor,
            f - w
        );
    }
    chan.close()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("relayfs-write-cost-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
