//! `relayfs stat CHANNEL`: the counters of every buffer of a channel.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use relayfs::RelayFile;
use serde::Serialize;

use crate::util;

/// Arguments of `relayfs stat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Channel name or directory
    pub channel: String,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECONDS until interrupted
    #[arg(long, num_args = 0..=1, default_missing_value = "1", value_parser = crate::args::seconds)]
    pub watch: Option<f64>,
}

/// `relayfs stat --json`: one look at a channel.
#[derive(Debug, Serialize)]
struct ChannelStat {
    channel: String,
    buffers: Vec<BufferStat>,
    /// Buffers that could not be read.
    errors: Vec<BufferError>,
}

/// One buffer's header and counters.
#[derive(Debug, Serialize)]
struct BufferStat {
    buffer: String,
    subbuf_size: u64,
    n_subbufs: u64,
    overwrite: bool,
    producer_alive: bool,
    closed: bool,
    reader_attached: bool,
    subbufs_produced: u64,
    subbufs_consumed: u64,
    records_written: u64,
    bytes_written: u64,
    records_consumed: u64,
    bytes_consumed: u64,
    dropped_full: u64,
    dropped_toobig: u64,
    overwritten_records: u64,
    overwritten_subbufs: u64,
    discarded_records: u64,
    padding_bytes: u64,
    dropped_corrupt: u64,
    unread_at_close: u64,
    /// Why the producer found the buffer corrupt, if it did.
    corrupt: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct BufferError {
    buffer: String,
    error: String,
}

/// `relayfs stat --watch --json` once the channel is gone.
#[derive(Debug, Serialize)]
struct ChannelClosed {
    channel: String,
    closed: bool,
}

/// Prints `v` as one line of JSON, its keys sorted (through a `Value`).
fn print_json(v: &impl Serialize) -> Result<()> {
    util::outln!("{}", serde_json::to_value(v)?)?;
    Ok(())
}

/// Prints the channel's counters once; returns whether every buffer of the
/// channel could be read (each one that can't is listed, with the reason),
/// or None if the directory holds no buffer.
fn once(a: &Args, dir: &Path) -> Result<Option<bool>> {
    let scan = util::scan_channel(dir, None)?;
    if scan.bufs.is_empty() && scan.bad.is_empty() {
        return Ok(None);
    }
    let mut rows = Vec::new();
    let mut bad: Vec<(String, String)> = scan
        .bad
        .iter()
        .map(|b| {
            (
                b.name.clone(),
                format!("{}: {}", b.path.display(), b.reason),
            )
        })
        .collect();
    for b in &scan.bufs {
        match RelayFile::inspect(&b.path) {
            Ok(st) => rows.push((b, st)),
            Err(e) => bad.push((b.name.clone(), util::error_chain(&e))),
        }
    }
    bad.sort();
    let ok = bad.is_empty();
    if a.json {
        let buffers = rows
            .iter()
            .map(|(b, st)| {
                let s = &st.stats;
                BufferStat {
                    buffer: b.name.clone(),
                    subbuf_size: st.header.geometry.subbuf_size,
                    n_subbufs: st.header.geometry.n_subbufs,
                    overwrite: st.header.overwrite,
                    producer_alive: st.producer_alive,
                    closed: st.closed,
                    reader_attached: st.reader_attached,
                    subbufs_produced: s.subbufs_produced,
                    subbufs_consumed: s.subbufs_consumed,
                    records_written: s.records_written(),
                    bytes_written: s.bytes_written,
                    records_consumed: s.records_consumed,
                    bytes_consumed: s.bytes_consumed,
                    dropped_full: s.dropped_full,
                    dropped_toobig: s.dropped_toobig,
                    overwritten_records: s.overwritten_records,
                    overwritten_subbufs: s.overwritten_subbufs,
                    discarded_records: s.discarded_records,
                    padding_bytes: s.padding_bytes,
                    dropped_corrupt: s.dropped_corrupt,
                    unread_at_close: s.unread_at_close,
                    corrupt: relayfs::layout::corrupt_reason(s.corrupt),
                }
            })
            .collect();
        let errors = bad
            .iter()
            .map(|(name, e)| BufferError {
                buffer: name.clone(),
                error: e.clone(),
            })
            .collect();
        print_json(&ChannelStat {
            channel: dir.display().to_string(),
            buffers,
            errors,
        })?;
        return Ok(Some(ok));
    }
    // Names and paths are anyone's bytes: control characters are shown
    // escaped, never sent to the terminal.
    util::outln!("{}", util::escape_name(&dir.display().to_string()))?;
    util::outln!(
        "{:<8} {:>9} {:>9} {:>11} {:>11} {:>10} {:>9} {:>8} {:>11} {:>10} {:>10}  state",
        "buffer",
        "produced",
        "consumed",
        "records",
        "delivered",
        "bytes",
        "drop-full",
        "too-big",
        "overwritten",
        "discarded",
        "padding"
    )?;
    for (b, st) in &rows {
        let s = &st.stats;
        let state = match (st.closed, st.producer_alive) {
            (true, _) => "closed",
            (false, true) => "open",
            (false, false) => "producer gone",
        };
        util::outln!(
            "{:<8} {:>9} {:>9} {:>11} {:>11} {:>10} {:>9} {:>8} {:>11} {:>10} {:>10}  {state}{}",
            b.name,
            s.subbufs_produced,
            s.subbufs_consumed,
            s.records_written(),
            s.records_consumed,
            util::human_bytes(s.bytes_written),
            s.dropped_full,
            s.dropped_toobig,
            s.overwritten_records,
            s.discarded_records,
            util::human_bytes(s.padding_bytes),
            if st.reader_attached {
                ", reader attached"
            } else {
                ""
            }
        )?;
        if let Some(why) = relayfs::layout::corrupt_reason(s.corrupt) {
            util::outln!(
                "{:<8} corrupt: {why}; {} records refused since",
                "",
                s.dropped_corrupt
            )?;
        }
    }
    for (name, e) in &bad {
        util::outln!(
            "{:<8} ERROR: {}",
            util::escape_name(name),
            util::escape_name(e)
        )?;
    }
    Ok(Some(ok))
}

/// Runs `relayfs stat`.
pub fn run(a: &Args) -> Result<i32> {
    let dir = util::channel_dir(&a.channel);
    let no_buffers = || anyhow::anyhow!("no relay buffers in {}", dir.display());
    let Some(every) = a.watch else {
        let ok = once(a, &dir)?.ok_or_else(no_buffers)?;
        return Ok(if ok { 0 } else { 1 });
    };
    util::catch_interrupts();
    // Clear the screen between looks only on a terminal, not in a file or
    // a pipe.
    let clear = !a.json && std::io::stdout().is_terminal();
    // The status of the last look at the channel.
    let mut ok = true;
    let mut seen = false;
    // Until interrupted, until whoever reads the output has gone, or until
    // the channel closes (its producer removes its files and directory).
    while !util::interrupted() && !util::stdout_closed() {
        if clear {
            util::out!("\x1b[H\x1b[2J")?;
        }
        let look = match once(a, &dir) {
            Ok(look) => look,
            // Gone since the last look: closed.
            Err(_) if seen && !exists(&dir) => None,
            Err(e) => return Err(e),
        };
        match look {
            Some(k) => ok = k,
            None if seen => {
                if a.json {
                    print_json(&ChannelClosed {
                        channel: dir.display().to_string(),
                        closed: true,
                    })?;
                } else {
                    util::outln!(
                        "{}: the channel closed",
                        util::escape_name(&dir.display().to_string())
                    )?;
                }
                return Ok(0);
            }
            None => return Err(no_buffers()),
        }
        seen = true;
        std::thread::sleep(Duration::from_secs_f64(every.max(0.05)));
    }
    Ok(if ok { 0 } else { 1 })
}

/// Whether `p` names anything (a symbolic link is not followed).
fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}
