//! `relayfs stat CHANNEL`: the counters of every buffer of a channel.

use std::time::Duration;

use anyhow::{bail, Result};
use relayfs::RelayFile;
use serde_json::json;

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

fn once(a: &Args) -> Result<()> {
    let dir = util::channel_dir(&a.channel);
    let bufs = util::buffer_files(&dir, None)?;
    if bufs.is_empty() {
        bail!("no relay buffers in {}", dir.display());
    }
    let mut rows = Vec::new();
    for b in &bufs {
        rows.push((b, RelayFile::inspect(&b.path)?));
    }
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(b, st)| {
                let s = &st.stats;
                json!({
                    "buffer": b.name,
                    "subbuf_size": st.header.geometry.subbuf_size,
                    "n_subbufs": st.header.geometry.n_subbufs,
                    "overwrite": st.header.overwrite,
                    "producer_alive": st.producer_alive,
                    "closed": st.closed,
                    "reader_attached": st.reader_attached,
                    "subbufs_produced": s.subbufs_produced,
                    "subbufs_consumed": s.subbufs_consumed,
                    "records_written": s.records_written + s.records_pending,
                    "bytes_written": s.bytes_written,
                    "records_consumed": s.records_consumed,
                    "bytes_consumed": s.bytes_consumed,
                    "dropped_full": s.dropped_full,
                    "dropped_toobig": s.dropped_toobig,
                    "overwritten_records": s.overwritten_records,
                    "overwritten_subbufs": s.overwritten_subbufs,
                    "discarded_records": s.discarded_records,
                    "padding_bytes": s.padding_bytes,
                })
            })
            .collect();
        util::outln!(
            "{}",
            json!({ "channel": dir.display().to_string(), "buffers": v })
        )?;
        return Ok(());
    }
    util::outln!("{}", dir.display())?;
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
            s.records_written + s.records_pending,
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
    }
    Ok(())
}

/// Runs `relayfs stat`.
pub fn run(a: &Args) -> Result<i32> {
    let Some(every) = a.watch else {
        once(a)?;
        return Ok(0);
    };
    util::catch_interrupts();
    // Until interrupted, or until whoever reads the output has gone.
    while !util::interrupted() && !util::stdout_closed() {
        if !a.json {
            util::out!("\x1b[H\x1b[2J")?;
        }
        once(a)?;
        std::thread::sleep(Duration::from_secs_f64(every.max(0.05)));
    }
    Ok(0)
}
