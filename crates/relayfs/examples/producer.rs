//! Relay's classic simple example, producer half: open a channel and write
//! records into it from one thread per CPU, then close it.
//!
//! ```text
//! cargo run --example reader -- simple /tmp/simple-out &   # start the reader first
//! cargo run --example producer -- simple 100000
//! ```

use std::sync::Arc;

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
        eprintln!("producer: {}", chain(&*e));
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "simple".into());
    let count: u64 = args.next().map_or(Ok(100_000), |s| s.parse())?;
    // relay_open("cpu", parent = <relay dir>/<name>, 256 KiB x 8 sub-buffers)
    let chan = Arc::new(
        relayfs::Channel::builder(&name)
            .subbuf_size(256 << 10)
            .n_subbufs(8)
            .open()?,
    );
    println!(
        "channel {} open: {} buffers",
        chan.dir().display(),
        chan.n_buffers()
    );
    // Give a reader up to 5 s to attach to every buffer, so nothing is lost
    // before it starts (a kernel client just writes; this is a courtesy).
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(5)
        && !(0..chan.n_buffers()).all(|i| {
            relayfs::RelayFile::inspect(chan.buffer_path(i)).is_ok_and(|s| s.reader_attached)
        })
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let writers: Vec<_> = (0..chan.n_cpus())
        .map(|t| {
            let chan = chan.clone();
            std::thread::spawn(move || {
                let mut dropped = 0u64;
                for i in 0..count {
                    let line = format!("thread {t} record {i}\n");
                    // relay_write: into the buffer of the CPU we run on.
                    if chan.write(line.as_bytes()).is_err() {
                        dropped += 1;
                    }
                }
                dropped
            })
        })
        .collect();
    let mut dropped = 0u64;
    for w in writers {
        dropped += w.join().map_err(|_| "a writer thread panicked")?;
    }
    let stats = chan.total_stats();
    println!(
        "wrote {} records, {dropped} dropped (buffer full: {})",
        stats.records_written(),
        stats.dropped_full
    );
    // relay_close: flush the last sub-buffers, wake the readers, remove the files.
    chan.close()?;
    Ok(())
}
