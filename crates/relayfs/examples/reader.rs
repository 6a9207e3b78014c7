//! Relay's classic simple example, reader half: wait for a channel, then
//! drain every per-CPU relay file `cpuN` into `OUTDIR/cpuN.out` as data
//! becomes available, until the producer closes the channel.
//!
//! ```text
//! cargo run --example reader -- simple /tmp/simple-out
//! ```

use std::path::PathBuf;
use std::time::Duration;

use relayfs::{Ready, RelayFile};

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
        eprintln!("reader: {}", chain(&*e));
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "simple".into());
    let out = PathBuf::from(args.next().unwrap_or_else(|| "simple-out".into()));
    std::fs::create_dir_all(&out)?;
    let dir = relayfs::relay_dir().join(&name);
    println!("waiting for {}", dir.display());
    // Wait for the producer to publish its buffers. Each appears whole, and
    // cpu0 last, so once cpu0 is there every buffer its header counts is.
    let n_buffers = loop {
        match RelayFile::peek_header(&dir.join("cpu0")) {
            Ok(h) => break h.n_buffers,
            Err(relayfs::ReadError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut threads = Vec::new();
    for cpu in 0..n_buffers {
        let path = dir.join(format!("cpu{cpu}"));
        let out = out.join(format!("cpu{cpu}.out"));
        threads.push(std::thread::spawn(
            move || -> Result<u64, relayfs::ReadError> {
                let mut f = RelayFile::open(&path)?;
                let file = std::fs::File::create(&out).map_err(|e| relayfs::ReadError::Io {
                    what: "create",
                    path: out.clone(),
                    source: e,
                })?;
                let mut total = 0;
                loop {
                    // sendfile: straight from the buffer to the output file, padding removed.
                    let n = f.sendfile(&file, u64::MAX)?;
                    total += n;
                    if n == 0 {
                        match f.poll(Some(Duration::from_millis(500)))? {
                            Ready::Readable | Ready::Timeout => {}
                            Ready::Closed | Ready::ProducerGone => return Ok(total),
                        }
                    }
                }
            },
        ));
    }
    let mut failed = 0;
    for (cpu, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(Ok(n)) => println!("cpu{cpu}.out: {n} bytes"),
            Ok(Err(e)) => {
                eprintln!("reader: cpu{cpu}: {}", chain(&e));
                failed += 1;
            }
            Err(_) => {
                eprintln!("reader: cpu{cpu}: reader thread panicked");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} of {n_buffers} buffers failed").into());
    }
    Ok(())
}
