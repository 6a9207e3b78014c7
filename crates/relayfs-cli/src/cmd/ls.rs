//! `relayfs ls`: the channels under the relay directory.

use anyhow::{Context, Result};
use relayfs::RelayFile;
use serde::Serialize;

use crate::util;

/// `relayfs ls --json`.
#[derive(Debug, Serialize)]
struct Listing {
    relay_dir: String,
    channels: Vec<ChannelEntry>,
}

/// One channel in the listing.
#[derive(Debug, Serialize)]
struct ChannelEntry {
    name: String,
    path: String,
    buffers: usize,
    subbuf_size: u64,
    n_subbufs: u64,
    /// `overwrite` or `no-overwrite`.
    mode: &'static str,
    global: bool,
    /// `alive`, `closed` or `gone`.
    producer: &'static str,
    producer_pid: u64,
    readers: u32,
}

/// Arguments of `relayfs ls`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

/// Runs `relayfs ls`.
pub fn run(a: &Args) -> Result<i32> {
    let root = relayfs::relay_dir();
    let mut chans = Vec::new();
    // No relay directory yet is no channels; one that can't be read (not a
    // directory, no permission, an I/O error) is an error, not "no channels".
    let entries = match std::fs::read_dir(&root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        r => Some(r.with_context(|| format!("cannot read {}", root.display()))?),
    };
    if let Some(entries) = entries {
        let mut dirs = Vec::new();
        for e in entries {
            let e = e.with_context(|| format!("cannot read {}", root.display()))?;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e);
            }
        }
        dirs.sort_by_key(|e| e.file_name());
        for d in dirs {
            let Ok(bufs) = util::buffer_files(&d.path(), None) else {
                continue;
            };
            let Some(first) = bufs.first() else { continue };
            let Ok(st) = RelayFile::inspect(&first.path) else {
                continue;
            };
            let mut alive = false;
            let mut readers = 0;
            let mut closed = true;
            for b in &bufs {
                if let Ok(s) = RelayFile::inspect(&b.path) {
                    alive |= s.producer_alive;
                    readers += s.reader_attached as u32;
                    closed &= s.closed;
                }
            }
            let g = st.header.geometry;
            chans.push(ChannelEntry {
                name: d.file_name().to_string_lossy().into_owned(),
                path: d.path().display().to_string(),
                buffers: bufs.len(),
                subbuf_size: g.subbuf_size,
                n_subbufs: g.n_subbufs,
                mode: if st.header.overwrite {
                    "overwrite"
                } else {
                    "no-overwrite"
                },
                global: st.header.global,
                producer: if alive {
                    "alive"
                } else if closed {
                    "closed"
                } else {
                    "gone"
                },
                producer_pid: st.header.producer_pid,
                readers,
            });
        }
    }
    if a.json {
        let listing = Listing {
            relay_dir: root.display().to_string(),
            channels: chans,
        };
        // Through a `Value`: its keys sorted, as they always were.
        util::outln!("{}", serde_json::to_value(&listing)?)?;
        return Ok(0);
    }
    if chans.is_empty() {
        util::outln!("no channels in {}", root.display())?;
        return Ok(0);
    }
    util::outln!(
        "{:<24} {:>7} {:>12} {:<13} {:<16} {:>7}",
        "channel",
        "buffers",
        "size",
        "mode",
        "producer",
        "readers"
    )?;
    for c in &chans {
        let size = format!("{}x{}", c.n_subbufs, util::human_bytes(c.subbuf_size));
        let producer = match c.producer {
            "alive" => format!("alive (pid {})", c.producer_pid),
            s => s.to_string(),
        };
        util::outln!(
            "{:<24} {:>7} {:>12} {:<13} {:<16} {:>7}",
            util::escape_name(&c.name),
            c.buffers,
            size,
            c.mode,
            producer,
            c.readers
        )?;
    }
    Ok(0)
}
