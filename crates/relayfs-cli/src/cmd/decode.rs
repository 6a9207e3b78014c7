//! `relayfs decode DIR`: a recording of `relayfs-tracing` events (the
//! `cpuN.out` files `relayfs record` wrote) merged into time order and
//! printed like `tracing-subscriber`'s `fmt`, or as JSON lines. The decoder
//! is `relayfs_tracing::decode`; this is its command line.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use relayfs_tracing::decode::{self, Options};

use crate::util;

/// Arguments of `relayfs decode`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recording: the output directory of `relayfs record`
    pub dir: PathBuf,
    /// JSON lines instead of text
    #[arg(long)]
    pub json: bool,
    /// The recording is still being written: print as it grows, until the
    /// recorder has finished (its relayfs-record.json appears)
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// Runs `relayfs decode`: exit 0, or 1 if the input had problems (each
/// said on standard error with its file and offset; decoding goes on).
pub fn run(a: &Args) -> Result<i32> {
    let opts = Options {
        json: a.json,
        follow: a.follow,
        poll: Duration::from_millis(100),
        ..Options::default()
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut problems = 0u64;
    let r = decode::decode_dir(&a.dir, &opts, &mut out, &mut |p| {
        problems += 1;
        util::errln!("relayfs decode: {}", util::escape_name(&p.to_string()));
    });
    let r = r.and_then(|s| out.flush().map(|()| s));
    match r {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("decoding {}", a.dir.display())),
    }
    Ok(if problems > 0 { 1 } else { 0 })
}
