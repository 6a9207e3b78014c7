//! The classic relay consumer with the whole-channel reader: wait for a
//! channel, then drain every buffer `cpuN` into `OUTDIR/cpuN.out` as data
//! comes, until the producer closes the channel; then check that what was
//! read adds up with the producer's counters.
//!
//! ```text
//! cargo run --example channel_reader -- simple /tmp/simple-out &   # start the reader first
//! cargo run --example producer -- simple 100000
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use relayfs::Readers;

/// The error and its causes, one after the other.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

fn main() {
    if let Err(e) = run() {
        eprintln!("channel_reader: {}", chain(&*e));
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "simple".into());
    let out = PathBuf::from(args.next().unwrap_or_else(|| "simple-out".into()));
    let wait: u64 = args.next().map_or(Ok(60), |s| s.parse())?;
    std::fs::create_dir_all(&out)?;
    // A bare name is under $RELAYFS_DIR (or /dev/shm/relayfs); waits for the
    // producer to publish every buffer.
    let mut chan = Readers::open(&name, Some(Duration::from_secs(wait)))?;
    println!("{}: {} buffers", chan.dir().display(), chan.len());
    let mut files = (0..chan.len())
        .map(|i| std::fs::File::create(out.join(format!("cpu{i}.out"))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut bytes = vec![0u64; chan.len()];
    let mut buf = vec![0u8; 1 << 16];
    // Whichever buffer has data, until every one is closed and read.
    while let Some((i, n)) = chan.read_any(&mut buf)? {
        files[i].write_all(&buf[..n])?;
        bytes[i] += n as u64;
    }
    for (i, n) in bytes.iter().enumerate() {
        println!("cpu{i}.out: {n} bytes ({:?})", chan.end(i));
    }
    let st = chan.stats();
    let read: u64 = bytes.iter().sum();
    println!(
        "read {read} bytes, {} records; lost {} records ({} dropped, buffer full)",
        st.records_consumed,
        st.lost(),
        st.dropped_full
    );
    if read != st.bytes_consumed {
        return Err(format!(
            "read {read} bytes but the buffers count {}",
            st.bytes_consumed
        )
        .into());
    }
    Ok(())
}
