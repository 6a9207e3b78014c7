//! `relayfs demo`: relay end to end in a few seconds. Opens a fresh channel,
//! starts `relayfs record` on it as a separate process, writes demo records
//! from T threads, closes the channel, waits for the recorder, verifies the
//! recording and prints a summary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::cmd::verify;
use crate::util;
use crate::workload::{self, ChannelArgs, SizeSpec};

/// Arguments of `relayfs demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Channel name (default: demo-<pid>)
    #[arg(long)]
    pub name: Option<String>,
    /// Writer threads (default: one per CPU)
    #[arg(long, value_parser = crate::args::threads)]
    pub threads: Option<u32>,
    /// Records per writer
    #[arg(long, default_value_t = 100_000, value_parser = crate::args::count)]
    pub count: u64,
    /// Record length S, or MIN..MAX for lengths drawn from a seeded generator
    #[arg(long, default_value = "64", value_parser = workload::parse_size_spec)]
    pub size: SizeSpec,
    /// Seed of the length generator
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub chan: ChannelArgs,
    /// Keep the recorded files in DIR (default: a temporary directory in
    /// $TMPDIR, removed at the end; none with --no-record)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Produce only, for a `relayfs record` started by hand (waits up to
    /// --attach-timeout seconds for it to attach)
    #[arg(long)]
    pub no_record: bool,
    /// With --no-record: how long to wait for readers to attach
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS", value_parser = crate::args::seconds)]
    pub attach_timeout: f64,
    /// Print the summary as one JSON object
    #[arg(long)]
    pub json: bool,
}

/// Runs `relayfs demo`; returns the exit code.
pub fn run(a: &Args) -> Result<i32> {
    a.chan.check()?;
    util::catch_interrupts();
    let threads = a.threads.unwrap_or_else(workload::default_threads);
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| format!("demo-{}", std::process::id()));
    let chan = Arc::new(
        a.chan
            .builder(&name)
            .open()
            .with_context(|| format!("cannot open channel {name}"))?,
    );
    let g = chan.geometry();
    let nbuf = chan.n_buffers();
    // Without --out, the recording goes to a temporary directory (in
    // $TMPDIR), removed when `tmp` is dropped: on every return, error or
    // panic of this function (a SIGINT, SIGTERM or SIGHUP ends it normally).
    // With --no-record there is nothing to record: none is made.
    let mut tmp = None;
    let out: PathBuf = match &a.out {
        Some(o) => o.clone(),
        None if a.no_record => PathBuf::new(),
        None => {
            let t = tempfile::Builder::new()
                .prefix("relayfs-demo-out-")
                .tempdir()
                .context("cannot create a temporary output directory")?;
            tmp.insert(t).path().to_path_buf()
        }
    };
    let mut recorder = None;
    let mut rec_pid = 0;
    if a.no_record {
        if !a.json {
            crate::util::errln!(
                "relayfs demo: channel {} is open; start `relayfs record {name} -o DIR` (waiting up to {} s)",
                chan.dir().display(),
                a.attach_timeout
            );
        }
        workload::wait_for_readers(&chan, Duration::from_secs_f64(a.attach_timeout), None)?;
    } else {
        let child = workload::start_recorder(&chan, &out)?;
        rec_pid = child.id();
        recorder = Some(child);
    }
    let written = workload::write(
        &chan,
        workload::Load {
            threads,
            size: a.size,
            seed: a.seed,
            until: workload::Until::Count(a.count),
            rate: None,
        },
    )?;
    let writers = &written.writers;
    let chan = Arc::try_unwrap(chan).map_err(|_| anyhow::anyhow!("channel still shared"))?;
    // The final counts, with what no reader was left to read.
    let pstats = chan.close().context("closing the channel")?;

    let rec = match recorder {
        Some(child) => Some(workload::finish_recorder(child)?),
        None => None,
    };
    let offered = written.offered();
    let interrupted = writers.iter().any(|w| w.offered < a.count);
    // Interrupted, the writers may each have offered a different number.
    let offered_by_writer = written.offered_by_writer();
    let bytes = written.bytes();
    let producer_lost = pstats.dropped_full
        + pstats.dropped_toobig
        + pstats.dropped_corrupt
        + pstats.overwritten_records
        + pstats.unread_at_close;
    let discarded = rec.as_ref().map_or(0, |r| r.discarded);
    let dropped = producer_lost + discarded;
    let verified = if a.no_record {
        None
    } else {
        Some(verify::verify_dir(
            &out,
            &verify::Expect {
                offered: Some(verify::Offered::PerWriter(offered_by_writer.clone())),
                lost: Some(dropped),
                producer_lost: None,
            },
        )?)
    };
    let delivered = verified.as_ref().map_or(0, |r| r.records);
    let ok =
        verified.as_ref().is_none_or(|r| r.ok()) && (a.no_record || delivered + dropped == offered);
    let ns_per_record = {
        let mut v: Vec<f64> = writers
            .iter()
            .map(|w| w.secs * 1e9 / w.offered.max(1) as f64)
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mb_per_s = bytes as f64 / written.wall.max(1e-9) / 1e6;
    let summary = json!({
        "channel": name,
        "mode": a.chan.mode_name(),
        "buffers": nbuf,
        "threads": threads,
        "count": a.count,
        "interrupted": interrupted,
        "size": a.size.to_string(),
        "subbuf_size": g.subbuf_size,
        "n_subbufs": g.n_subbufs,
        "written": offered,
        "offered_by_writer": offered_by_writer,
        "accepted": written.accepted(),
        "delivered": delivered,
        "dropped": dropped,
        "dropped_full": pstats.dropped_full,
        "dropped_toobig": pstats.dropped_toobig,
        "dropped_corrupt": pstats.dropped_corrupt,
        "unread_at_close": pstats.unread_at_close,
        "overwritten": pstats.overwritten_records,
        "discarded": discarded,
        "verified": ok,
        "ns_per_record": ns_per_record,
        "cpu_id": if relayfs::cpu::uses_rseq() { "rseq" } else { "sched_getcpu" },
        "producer_mb_per_s": mb_per_s,
        "recorder_pid": rec_pid,
        "recorded_bytes": rec.as_ref().map_or(0, |r| r.bytes),
        "out": a.out.as_ref().map(|p| p.display().to_string()),
        "defects": verified.as_ref().map(|r| r.defects.clone()),
    });
    if a.json {
        util::outln!("{summary}")?;
    } else {
        print_summary(&summary, a.no_record)?;
    }
    Ok(if ok { 0 } else { 1 })
}

fn print_summary(s: &serde_json::Value, no_record: bool) -> Result<()> {
    let u = |k: &str| s[k].as_u64().unwrap_or(0);
    let text = |k: &str| s[k].as_str().unwrap_or("").to_string();
    util::outln!("relayfs demo: channel {}", text("channel"))?;
    util::outln!(
        "  channel    {} buffers x {} sub-buffers x {}, {} mode",
        u("buffers"),
        u("n_subbufs"),
        util::human_bytes(u("subbuf_size")),
        text("mode")
    )?;
    util::outln!(
        "  producer   {} threads x {} records of {} B: {:.1} ns/record (median thread), {:.0} MB/s",
        u("threads"),
        u("count"),
        text("size"),
        s["ns_per_record"].as_f64().unwrap_or(0.0),
        s["producer_mb_per_s"].as_f64().unwrap_or(0.0)
    )?;
    if !no_record {
        util::outln!(
            "  recorder   relayfs record (pid {}) wrote {} to {}",
            u("recorder_pid"),
            util::human_bytes(u("recorded_bytes")),
            s["out"].as_str().unwrap_or("a temporary directory")
        )?;
    }
    util::outln!(
        "  written    {}{}",
        u("written"),
        if s["interrupted"] == true {
            " (interrupted: the writers stopped early)"
        } else {
            ""
        }
    )?;
    if !no_record {
        util::outln!("  delivered  {}", u("delivered"))?;
    }
    util::outln!(
        "  dropped    {} (buffer full {}, too big {}, overwritten {}, discarded by the reader {}, unread at close {}, corrupt buffer {})",
        u("dropped"),
        u("dropped_full"),
        u("dropped_toobig"),
        u("overwritten"),
        u("discarded"),
        u("unread_at_close"),
        u("dropped_corrupt")
    )?;
    if no_record {
        return Ok(());
    }
    let defects: Vec<&str> = s["defects"]
        .as_array()
        .map(|d| d.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    if s["verified"] == true {
        util::outln!(
            "  verified   OK: every record whole and in order, no duplicate; written = delivered + dropped"
        )?;
    } else {
        util::outln!("  verified   FAILED")?;
        for d in defects.iter().take(10) {
            util::outln!("    {d}")?;
        }
        if defects.is_empty() {
            util::outln!(
                "    the counters don't add up: {} written != {} delivered + {} dropped",
                u("written"),
                u("delivered"),
                u("dropped")
            )?;
        }
    }
    Ok(())
}
