//! Delivery latency of a paced producer: how long a record waits between
//! `write` and a whole-channel reader getting it, for a sub-buffer size.
//! Readers are woken when a sub-buffer completes (and look every 200 ms for
//! a partly filled one), so the latency follows the time to fill one.
//!
//! ```text
//! cargo run --release --example latency -- SUBBUF_SIZE RATE SECONDS [FLUSH_MS]
//! cargo run --release --example latency -- 65536 10000 5
//! ```

use std::time::{Duration, Instant};

use relayfs::{Channel, Mode};

const RECORD: usize = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut num = |default: u64| -> Result<u64, std::num::ParseIntError> {
        args.next().map_or(Ok(default), |s| s.parse())
    };
    let subbuf = num(65536)?;
    let rate = num(10_000)?.max(1);
    let secs = num(5)?;
    let flush_ms = num(0)?;
    let root = std::env::temp_dir().join(format!("relayfs-latency-{}", std::process::id()));
    let mut b = Channel::builder("latency")
        .relay_dir(&root)
        .mode(Mode::NoOverwrite)
        .global(true)
        .subbuf_size(subbuf)
        .n_subbufs(8);
    if flush_ms > 0 {
        b = b.flush_interval(Duration::from_millis(flush_ms));
    }
    let chan = b.open()?;
    let mut readers = chan.open_readers()?;
    let t0 = Instant::now();
    let n = rate * secs;
    let mut lat = Vec::with_capacity(n as usize);
    std::thread::scope(|s| -> Result<(), Box<dyn std::error::Error>> {
        s.spawn(move || {
            let mut rec = [0u8; RECORD];
            for i in 0..n {
                let due = Duration::from_nanos(i * 1_000_000_000 / rate);
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(wait);
                }
                let now = t0.elapsed().as_nanos() as u64;
                rec[..8].copy_from_slice(&now.to_le_bytes());
                let _ = chan.write(&rec);
            }
            chan.close()
        });
        // Records are fixed-size: the byte stream splits into them.
        let mut buf = vec![0u8; 1 << 16];
        let mut partial = Vec::new();
        while let Some((_, len)) = readers.read_any(&mut buf)? {
            let now = t0.elapsed().as_nanos() as u64;
            partial.extend_from_slice(&buf[..len]);
            let whole = partial.len() / RECORD * RECORD;
            for r in partial[..whole].chunks_exact(RECORD) {
                let at = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
                lat.push(now.saturating_sub(at));
            }
            partial.drain(..whole);
        }
        Ok(())
    })?;
    drop(readers);
    let _ = std::fs::remove_dir(&root);
    lat.sort_unstable();
    let pct = |p: usize| {
        lat.get(lat.len().saturating_sub(1) * p / 100)
            .copied()
            .unwrap_or(0)
    };
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "sub-buffer {subbuf} B, {rate} records/s of {RECORD} B ({:.1} MB/s), flush {}: \
         median {:.1} ms, p90 {:.1} ms, max {:.1} ms ({} of {n} records delivered)",
        (rate as f64 * RECORD as f64) / 1e6,
        if flush_ms > 0 {
            format!("every {flush_ms} ms")
        } else {
            "none".into()
        },
        ms(pct(50)),
        ms(pct(90)),
        ms(pct(100)),
        lat.len(),
    );
    Ok(())
}
