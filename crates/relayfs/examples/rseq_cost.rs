//! The write path with and without the restartable-sequence reservation,
//! in one process and interleaved round by round so that a noisy machine
//! affects both alike: one thread pinned to its CPU, no reader (overwrite
//! mode, so the buffer never refuses), `write` and `reserve`+commit of
//! `SIZE` bytes into a channel that uses rseq and one that doesn't
//! (`ChannelBuilder::rseq(false)`), beside a copy of the same bytes into a
//! local ring (the floor). Prints each round, then the medians, the ratios
//! to the floor and rseq / CAS.
//!
//! `cargo run --release --example rseq_cost -- [SIZE] [RECORDS_PER_ROUND] [ROUNDS]`
//! (defaults 64, 2000000, 9).

use std::hint::black_box;
use std::time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |i: usize, d: u64| std::env::args().nth(i).map_or(Ok(d), |s| s.parse());
    let size = arg(1, 64)? as usize;
    let n = arg(2, 2_000_000)?;
    let rounds = arg(3, 9)?.max(1) as usize;
    relayfs::cpu::pin_current_thread(relayfs::cpu::current_cpu())?;
    let dir = std::env::temp_dir().join(format!("relayfs-rseq-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let open = |name: &str, rseq: bool| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        relayfs::Channel::builder(name)
            .dir(d)
            .subbuf_size(1 << 20)
            .n_subbufs(4)
            .mode(relayfs::Mode::Overwrite)
            .rseq(rseq)
            .open()
            .map_err(Box::<dyn std::error::Error>::from)
    };
    let (fast, cas) = (open("rseq", true)?, open("cas", false)?);
    println!("rseq used: {}", fast.uses_rseq());
    let rec = vec![0x5au8; size];
    let mut ring = vec![0u8; 4 << 20];
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1e9 / n as f64
    };
    let names = [
        "floor",
        "write rseq",
        "write CAS",
        "reserve rseq",
        "reserve CAS",
    ];
    let mut res: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..rounds {
        let floor = time(&mut || {
            let mut at = 0;
            for _ in 0..n {
                if at + size > ring.len() {
                    at = 0;
                }
                ring[at..at + size].copy_from_slice(black_box(&rec));
                at += size;
            }
            black_box(&ring);
        });
        let w = |c: &relayfs::Channel| {
            time(&mut || {
                for _ in 0..n {
                    let _ = c.write(black_box(&rec));
                }
            })
        };
        let (wf, wc) = (w(&fast), w(&cas));
        let r = |c: &relayfs::Channel| {
            time(&mut || {
                for _ in 0..n {
                    if let Ok(mut slot) = c.reserve(size) {
                        slot.copy_from_slice(black_box(&rec));
                    }
                }
            })
        };
        let (rf, rc) = (r(&fast), r(&cas));
        let row = [floor, wf, wc, rf, rc];
        println!(
            "round {round}: {}",
            names
                .iter()
                .zip(row)
                .map(|(n, v)| format!("{n} {v:.2}"))
                .collect::<Vec<_>>()
                .join("  ")
        );
        for (v, x) in res.iter_mut().zip(row) {
            v.push(x);
        }
    }
    let m: Vec<f64> = res.iter_mut().map(|v| median(v)).collect();
    println!("median ns per record ({size} B, {rounds} rounds of {n}):");
    for (name, v) in names.iter().zip(&m) {
        println!("  {name:14} {v:7.2}  ({:.2}x floor)", v / m[0]);
    }
    println!(
        "  rseq / CAS: write {:.2}, reserve+commit {:.2}",
        m[1] / m[2],
        m[3] / m[4]
    );
    fast.close()?;
    cas.close()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
