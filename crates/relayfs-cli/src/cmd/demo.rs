//! `relayfs demo`: relay end to end in a few seconds. Opens a fresh channel,
//! starts `relayfs record` on it as a separate process, writes demo records
//! from T threads, closes the channel, waits for the recorder, verifies the
//! recording and prints a summary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::checker as verify;
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

/// What `relayfs demo` reports (`--json` prints it as one object).
#[derive(Debug, serde::Serialize)]
struct Summary {
    /// Channel name.
    channel: String,
    /// "overwrite" or "no-overwrite".
    mode: &'static str,
    /// Buffers of the channel.
    buffers: usize,
    /// Writer threads.
    threads: u32,
    /// `--count`: records per writer asked for.
    count: u64,
    /// The writers stopped early (a signal).
    interrupted: bool,
    /// `--size`, as `S` or `MIN..MAX`.
    size: String,
    subbuf_size: u64,
    n_subbufs: u64,
    /// Records offered by all writers.
    written: u64,
    /// Records offered by each writer (interrupted, they may differ).
    offered_by_writer: Vec<u64>,
    /// Records the channel accepted.
    accepted: u64,
    /// Records found in the recording (0 with --no-record).
    delivered: u64,
    /// Every record lost, whatever the reason: the counters below.
    dropped: u64,
    dropped_full: u64,
    dropped_toobig: u64,
    dropped_corrupt: u64,
    unread_at_close: u64,
    overwritten: u64,
    /// Discarded by the recorder.
    discarded: u64,
    /// The recording checked out and written = delivered + dropped.
    verified: bool,
    /// Median over the writers of their nanoseconds per record.
    ns_per_record: f64,
    /// How a writer learns its CPU: "rseq" or "sched_getcpu".
    cpu_id: &'static str,
    producer_mb_per_s: f64,
    /// 0 with --no-record.
    recorder_pid: u32,
    recorded_bytes: u64,
    /// `--out`.
    out: Option<String>,
    /// What verification found wrong (`None` with --no-record).
    defects: Option<Vec<String>>,
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
    let discarded = rec.as_ref().map_or(0, |r| r.discarded);
    let dropped = workload::dropped(&pstats, rec.as_ref());
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
    let summary = Summary {
        channel: name,
        mode: a.chan.mode_name(),
        buffers: nbuf,
        threads,
        count: a.count,
        interrupted,
        size: a.size.to_string(),
        subbuf_size: g.subbuf_size,
        n_subbufs: g.n_subbufs,
        written: offered,
        offered_by_writer,
        accepted: written.accepted(),
        delivered,
        dropped,
        dropped_full: pstats.dropped_full,
        dropped_toobig: pstats.dropped_toobig,
        dropped_corrupt: pstats.dropped_corrupt,
        unread_at_close: pstats.unread_at_close,
        overwritten: pstats.overwritten_records,
        discarded,
        verified: ok,
        ns_per_record,
        cpu_id: if relayfs::cpu::uses_rseq() {
            "rseq"
        } else {
            "sched_getcpu"
        },
        producer_mb_per_s: mb_per_s,
        recorder_pid: rec_pid,
        recorded_bytes: rec.as_ref().map_or(0, |r| r.bytes),
        out: a.out.as_ref().map(|p| p.display().to_string()),
        defects: verified.map(|r| r.defects),
    };
    if a.json {
        // Through a `Value`: keys in the order they have always had.
        util::outln!("{}", serde_json::to_value(&summary)?)?;
    } else {
        print_summary(&summary, a.no_record)?;
    }
    Ok(if ok { 0 } else { 1 })
}

fn print_summary(s: &Summary, no_record: bool) -> Result<()> {
    util::outln!("relayfs demo: channel {}", s.channel)?;
    util::outln!(
        "  channel    {} buffers x {} sub-buffers x {}, {} mode",
        s.buffers,
        s.n_subbufs,
        util::human_bytes(s.subbuf_size),
        s.mode
    )?;
    util::outln!(
        "  producer   {} threads x {} records of {} B: {:.1} ns/record (median thread), {:.0} MB/s",
        s.threads,
        s.count,
        s.size,
        s.ns_per_record,
        s.producer_mb_per_s
    )?;
    if !no_record {
        util::outln!(
            "  recorder   relayfs record (pid {}) wrote {} to {}",
            s.recorder_pid,
            util::human_bytes(s.recorded_bytes),
            s.out.as_deref().unwrap_or("a temporary directory")
        )?;
    }
    util::outln!(
        "  written    {}{}",
        s.written,
        if s.interrupted {
            " (interrupted: the writers stopped early)"
        } else {
            ""
        }
    )?;
    if !no_record {
        util::outln!("  delivered  {}", s.delivered)?;
    }
    util::outln!(
        "  dropped    {} (buffer full {}, too big {}, overwritten {}, discarded by the reader {}, unread at close {}, corrupt buffer {})",
        s.dropped,
        s.dropped_full,
        s.dropped_toobig,
        s.overwritten,
        s.discarded,
        s.unread_at_close,
        s.dropped_corrupt
    )?;
    if no_record {
        return Ok(());
    }
    if s.verified {
        util::outln!(
            "  verified   OK: every record whole and in order, no duplicate; written = delivered + dropped"
        )?;
    } else {
        util::outln!("  verified   FAILED")?;
        let defects = s.defects.as_deref().unwrap_or_default();
        for d in defects.iter().take(10) {
            util::outln!("    {d}")?;
        }
        if defects.is_empty() {
            util::outln!(
                "    the counters don't add up: {} written != {} delivered + {} dropped",
                s.written,
                s.delivered,
                s.dropped
            )?;
        }
    }
    Ok(())
}
