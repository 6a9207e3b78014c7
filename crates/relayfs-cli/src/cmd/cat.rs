//! `relayfs cat FILE`: a consuming read of one relay file to standard
//! output, like `cat` on a kernel relay file (which it also reads).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use relayfs::{AnyRelayFile, ReadError, Ready};

use crate::util;

/// Arguments of `relayfs cat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The relay file: a buffer file such as /dev/shm/relayfs/demo/cpu0, or
    /// a kernel relay file such as /sys/kernel/debug/block/sda/trace0
    pub file: PathBuf,
    /// Stop when nothing is readable instead of following the channel to
    /// its end
    #[arg(long)]
    pub no_follow: bool,
}

/// Runs `relayfs cat`.
pub fn run(a: &Args) -> Result<i32> {
    util::catch_interrupts();
    let mut f = AnyRelayFile::open(&a.file)?;
    let stdout = std::io::stdout();
    loop {
        let n = match f.sendfile(&stdout, 64 << 20) {
            Ok(n) => n,
            Err(ReadError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                return Ok(0)
            }
            Err(e) => return Err(e.into()),
        };
        if n > 0 {
            continue;
        }
        if a.no_follow || util::interrupted() {
            return Ok(0);
        }
        match f.poll(Some(Duration::from_millis(200)))? {
            Ready::Readable | Ready::Timeout => {}
            Ready::Closed => return Ok(0),
            Ready::ProducerGone => return Ok(crate::recorder::report::EXIT_PRODUCER_GONE),
        }
    }
}
