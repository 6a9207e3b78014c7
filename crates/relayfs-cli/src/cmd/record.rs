//! `relayfs record CHANNEL -o OUTDIR`: the classic relay consumer. One reader
//! thread per buffer, driven by poll, moving data with `sendfile` into
//! `OUTDIR/<buffer>.out`, padding removed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relayfs::{BufferStats, Ready, RelayFile};
use serde_json::json;

pub(crate) use crate::output::{is_sink, Output};
use crate::util::{self, BufferFile};

/// Summary file the recorder leaves in OUTDIR (read by `relayfs verify`).
pub const SUMMARY_FILE: &str = "relayfs-record.json";

/// Exit status when the producer died without closing the channel.
pub const EXIT_PRODUCER_GONE: i32 = 3;

/// Arguments of `relayfs record`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Channel name under the relay directory ($RELAYFS_DIR, default
    /// /dev/shm/relayfs), or a path to a channel directory
    pub channel: String,
    /// Output directory (created if missing), or a character device such as
    /// /dev/null that takes every buffer's output (to measure the recorder
    /// alone; no summary file then)
    #[arg(short, long)]
    pub out: PathBuf,
    /// Wait for the channel to appear
    #[arg(long)]
    pub wait: bool,
    /// Base name of the buffer files (default: every relay buffer file in the
    /// directory; in a kernel channel directory, its one set of numbered
    /// files, e.g. trace0, trace1, ...)
    #[arg(long)]
    pub base: Option<String>,
    /// Rotate output files when one reaches SIZE (e.g. 64M): files are then
    /// named <buffer>.out.0, <buffer>.out.1, ...; a file may exceed SIZE by
    /// up to one sub-buffer, since a record is never split
    #[arg(long, value_parser = crate::args::nonzero_size)]
    pub max_size: Option<u64>,
    /// With --max-size, keep only the newest N files per buffer
    #[arg(long, requires = "max_size", value_parser = crate::args::files)]
    pub max_files: Option<u64>,
    /// When the output filesystem is full (ENOSPC, EDQUOT), wait and retry
    /// instead of stopping with an error (the producer keeps running and
    /// counts what it drops meanwhile)
    #[arg(long)]
    pub retry: bool,
    /// Stop after this many seconds (then drain what is ready)
    #[arg(long, short = 'w', value_name = "SECONDS", value_parser = crate::args::seconds)]
    pub duration: Option<f64>,
    /// Print the summary as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    /// No status line and no summary (errors only)
    #[arg(short, long)]
    pub quiet: bool,
}

/// How a buffer's recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The producer closed the channel and everything was drained.
    Closed,
    /// The producer died; every complete sub-buffer was drained.
    ProducerGone,
    /// SIGINT, SIGTERM or SIGHUP: what was ready was drained.
    Interrupted,
    /// `--duration` passed: what was ready was drained.
    Stopped,
    /// An error stopped it.
    Error,
}

impl End {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ProducerGone => "producer_gone",
            End::Interrupted => "interrupted",
            End::Stopped => "stopped",
            End::Error => "error",
        }
    }
}

/// Live counters of one buffer, for the status line.
#[derive(Default)]
pub(crate) struct Progress {
    pub(crate) bytes: AtomicU64,
    pub(crate) lost: AtomicU64,
}

struct BufResult {
    name: String,
    bytes: u64,
    /// Bytes and committed records given up in the sub-buffer a dead
    /// producer was writing.
    abandoned: Option<(u64, u64)>,
    files: Vec<PathBuf>,
    stats: BufferStats,
    end: End,
    error: Option<String>,
}

fn record_buffer(
    buf: &BufferFile,
    mut f: RelayFile,
    a: &Args,
    progress: &Progress,
    stop: &AtomicBool,
) -> BufResult {
    let mut res = BufResult {
        name: buf.name.clone(),
        bytes: 0,
        abandoned: None,
        files: Vec::new(),
        stats: BufferStats::default(),
        end: End::Error,
        error: None,
    };
    let mut go = |res: &mut BufResult| -> Result<End> {
        let mut warned = false;
        let mut out = retrying(a, stop, &mut warned, || {
            Output::resume(
                &a.out,
                &format!("{}.out", buf.name),
                a.max_size,
                a.max_files,
                f.header().channel_id,
                f.stats().bytes_consumed,
            )
        })?;
        // Kept up to date, so that a recording stopped by an error lists
        // its files too.
        res.files = out.files.clone();
        let rotate = a.max_size.is_some();
        // Whole sub-buffers only while the producer is busy: one large write
        // each, and no chasing the producer record by record. The sub-buffer
        // being written is taken too (`tail`) once a poll times out (the
        // producer went quiet), when the channel ends, and before stopping.
        let mut tail = false;
        let mut final_pass = false;
        // Size of the current output file when the reader last stood at a
        // sub-buffer boundary (`None`: it started in the middle of one).
        // The buffer counts a sub-buffer's records when its reader finishes
        // it, and one left half-read counts whole as unread at close; so on
        // a write error the output is cut back to here, so that it holds
        // exactly the records counted delivered.
        let mut kept = f.at_subbuf_boundary().then_some(out.size);
        let end = loop {
            f.set_complete_only(!tail);
            // One sub-buffer at a time (one write each), so that the last
            // boundary passed is known when a write fails (`kept`), and a
            // rotation never splits a record.
            let moved = f.sendfile_subbuf(&out.file);
            let n = match moved {
                Ok(n) => n,
                Err(e) if a.retry && out_of_space(&e) => {
                    if !warned {
                        crate::util::errln!(
                            "relayfs record: {}: {}; retrying (the producer counts what it drops meanwhile)",
                            out.files.last().map_or(String::new(), |p| p.display().to_string()),
                            crate::util::error_chain(&e),
                        );
                        warned = true;
                    }
                    if stop.load(Ordering::Relaxed) || util::interrupted() {
                        break End::Interrupted;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Err(e) => {
                    let path = out
                        .files
                        .last()
                        .map_or(String::new(), |p| p.display().to_string());
                    // The library names the relay buffer it read from; the
                    // write that failed was to the output file.
                    let cause = match e {
                        relayfs::ReadError::Io { source, .. } => anyhow::Error::new(source),
                        e => anyhow::Error::new(e),
                    };
                    let cut = match kept {
                        Some(k) if out.size > k => {
                            let cut = out.size - k;
                            out.file.set_len(k).with_context(|| {
                                format!("cannot cut {path} back to its last whole sub-buffer")
                            })?;
                            out.size = k;
                            res.bytes -= cut;
                            progress.bytes.fetch_sub(cut, Ordering::Relaxed);
                            cut
                        }
                        _ => 0,
                    };
                    return Err(cause.context(if cut > 0 {
                        format!(
                            "cannot write {path}; the {cut} bytes written of the sub-buffer being read were removed (the buffer counts that sub-buffer as not delivered)"
                        )
                    } else {
                        format!("cannot write {path}")
                    }));
                }
            };
            out.wrote(n);
            if f.at_subbuf_boundary() {
                kept = Some(out.size);
                if rotate {
                    retrying(a, stop, &mut warned, || out.maybe_rotate())?;
                    res.files.clone_from(&out.files);
                    kept = Some(out.size);
                }
            }
            res.bytes += n;
            progress.bytes.fetch_add(n, Ordering::Relaxed);
            tail = false;
            if n > 0 {
                continue;
            }
            progress.lost.store(f.stats().lost(), Ordering::Relaxed);
            if stop.load(Ordering::Relaxed) || util::interrupted() {
                if !final_pass {
                    final_pass = true;
                    tail = true;
                    continue;
                }
                break End::Interrupted;
            }
            match f.poll(Some(Duration::from_millis(200)))? {
                Ready::Readable => {}
                Ready::Timeout => tail = true,
                // `is_eof` looks at the partial sub-buffer too.
                Ready::Closed => {
                    if f.is_eof()? {
                        break End::Closed;
                    }
                    tail = true;
                }
                Ready::ProducerGone => {
                    if f.is_eof()? {
                        res.abandoned = f.abandoned();
                        break End::ProducerGone;
                    }
                    tail = true;
                }
            }
        };
        out.file.flush()?;
        res.files = out.files.clone();
        res.stats = f.stats();
        Ok(end)
    };
    match go(&mut res) {
        Ok(end) => res.end = end,
        Err(e) => {
            res.end = End::Error;
            res.error = Some(format!("{e:#}"));
            // What was delivered before the error still counts.
            res.stats = f.stats();
            // Stop the other buffers too: the recording can't be complete.
            stop.store(true, Ordering::Relaxed);
        }
    }
    // The producer found the buffer's shared state damaged: what it held
    // when that happened can't be vouched for, so the recording failed,
    // however cleanly the reading ended.
    if res.error.is_none() {
        if let Some(why) = relayfs::layout::corrupt_reason(res.stats.corrupt) {
            res.end = End::Error;
            res.error = Some(format!(
                "the producer found this buffer corrupt ({why}) and refused {} records since",
                res.stats.dropped_corrupt
            ));
        }
    }
    res
}

/// How long a channel that has appeared may take to show all its buffers
/// (the producer creates them one after another).
const SETTLE: Duration = Duration::from_secs(5);

/// Waits for the channel and all its buffers: as many as the buffers'
/// headers say the channel has, all of one channel. Once the channel exists
/// (its directory; with `--wait`, its first buffer file), waits at most
/// [`SETTLE`], then returns what is there with the rest in `bad`.
fn find_buffers(dir: &Path, a: &Args) -> Result<util::ChannelScan> {
    let mut seen: Option<Instant> = None;
    loop {
        if dir.is_dir() {
            let scan = util::scan_channel(dir, a.base.as_deref())?;
            if !scan.bufs.is_empty() && scan.bad.is_empty() {
                return Ok(scan);
            }
            if !a.wait || !scan.bufs.is_empty() || !scan.bad.is_empty() {
                let first = *seen.get_or_insert_with(Instant::now);
                if first.elapsed() >= SETTLE {
                    if scan.bufs.is_empty() && scan.bad.is_empty() {
                        bail!("no relay buffer files in {}", dir.display());
                    }
                    return Ok(scan);
                }
            }
        } else if !a.wait {
            bail!(
                "channel {} not found (is the producer running? --wait waits for it)",
                dir.display()
            );
        }
        if util::interrupted() {
            bail!("interrupted while waiting for {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The result of a buffer that could not be recorded at all.
fn failed(name: &str, error: String) -> BufResult {
    BufResult {
        name: name.to_string(),
        bytes: 0,
        abandoned: None,
        files: vec![],
        stats: BufferStats::default(),
        end: End::Error,
        error: Some(error),
    }
}

/// Runs `relayfs record`; returns the exit code.
pub fn run(a: &Args) -> Result<i32> {
    util::catch_interrupts();
    let dir = util::channel_dir(&a.channel);
    if dir.is_dir() && relayfs::kernel::is_kernel_fs(&dir).unwrap_or(false) {
        return super::kernel::record_dir(&dir, a);
    }
    let scan = find_buffers(&dir, a)?;
    let sink = is_sink(&a.out);
    if sink && a.max_size.is_some() {
        bail!(
            "--max-size needs an output directory, not {}",
            a.out.display()
        );
    }
    // Every buffer that can't be recorded is an error of its own.
    let mut unrecorded: Vec<BufResult> = scan
        .bad
        .iter()
        .map(|b| failed(&b.name, format!("{}: {}", b.path.display(), b.reason)))
        .collect();
    // Take every buffer's reader place before touching the output: a
    // recorder refused because another one reads the channel must leave
    // that one's output alone.
    let mut bufs = Vec::new();
    for b in &scan.bufs {
        match RelayFile::open(&b.path) {
            Ok(f) if f.header().channel_id != b.channel_id => unrecorded.push(failed(
                &b.name,
                format!(
                    "{}: replaced by another channel's buffer (id {:#x}) while the recorder started",
                    b.path.display(),
                    f.header().channel_id
                ),
            )),
            Ok(f) => bufs.push((b.clone(), f)),
            Err(relayfs::ReadError::Busy(p)) => bail!(
                "{}: another reader has this buffer (is another recorder running?); {} left untouched",
                p.display(),
                a.out.display()
            ),
            Err(e) => unrecorded.push(failed(&b.name, crate::util::error_chain(&e))),
        }
    }
    if !sink {
        std::fs::create_dir_all(&a.out)
            .with_context(|| format!("cannot create output directory {}", a.out.display()))?;
    }
    let memory = MemorySampler::start();
    let progress: Arc<Vec<Progress>> = Arc::new(bufs.iter().map(|_| Progress::default()).collect());
    let names: Vec<String> = bufs.iter().map(|(b, _)| b.name.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = bufs
        .into_iter()
        .enumerate()
        .map(|(i, (b, f))| {
            let (a, progress, stop) = (a.clone(), progress.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("record-{}", b.name))
                .spawn(move || record_buffer(&b, f, &a, &progress[i], &stop))
        })
        .collect::<std::io::Result<_>>()?;
    let timed_out = Arc::new(AtomicBool::new(false));
    if let Some(d) = a.duration {
        let (stop, timed_out) = (stop.clone(), timed_out.clone());
        let deadline = started + Duration::from_secs_f64(d.max(0.0));
        std::thread::spawn(move || {
            while Instant::now() < deadline {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            timed_out.store(true, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let status = (!a.quiet && !a.json && util::stderr_is_tty()).then(|| {
        let (progress, names, done) = (progress.clone(), names.clone(), stop.clone());
        std::thread::spawn(move || status_line(&progress, &names, &done, started))
    });
    let mut results: Vec<BufResult> = threads
        .into_iter()
        .zip(&names)
        .map(|(t, name)| {
            t.join()
                .unwrap_or_else(|_| failed(name, "reader thread panicked".into()))
        })
        .collect();
    results.append(&mut unrecorded);
    results.sort_by_key(|r| {
        let digits_at = r.name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        (
            r.name[..digits_at].to_string(),
            r.name[digits_at..].parse::<u64>().unwrap_or(u64::MAX),
            r.name.clone(),
        )
    });
    stop.store(true, Ordering::Relaxed);
    if timed_out.load(Ordering::Relaxed) {
        for r in results.iter_mut().filter(|r| r.end == End::Interrupted) {
            r.end = End::Stopped;
        }
    }
    if let Some(s) = status {
        let _ = s.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut summary = summarize(&dir, a, &scan, &results, elapsed);
    memory.finish(&mut summary);
    // The buffers' own errors first: the first of them is what went wrong.
    for r in &results {
        if let Some(e) = &r.error {
            crate::util::errln!("relayfs record: {}: {e}", r.name);
        }
    }
    let mut code = exit_code(&results);
    if let Err(e) = write_summary(&a.out, &summary) {
        crate::util::errln!("relayfs record: {e:#}");
        code = code.max(1);
    }
    if a.json {
        util::outln!("{summary}")?;
    } else if !a.quiet {
        print_summary(&dir, a, &results, elapsed);
    }
    Ok(code)
}

fn exit_code(results: &[BufResult]) -> i32 {
    if results.iter().any(|r| r.end == End::Error) {
        1
    } else if results.iter().any(|r| r.end == End::ProducerGone) {
        EXIT_PRODUCER_GONE
    } else {
        0
    }
}

fn status_line(progress: &[Progress], names: &[String], done: &AtomicBool, started: Instant) {
    let mut last = (Instant::now(), 0u64);
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        last = print_status(progress, names, started, last);
    }
    crate::util::err!("\r\x1b[K");
}

/// Draws the live status line once; `last` is the (time, total bytes) of
/// the previous one, and the new one is returned.
pub(crate) fn print_status(
    progress: &[Progress],
    names: &[String],
    started: Instant,
    last: (Instant, u64),
) -> (Instant, u64) {
    let total: u64 = progress
        .iter()
        .map(|p| p.bytes.load(Ordering::Relaxed))
        .sum();
    let lost: u64 = progress
        .iter()
        .map(|p| p.lost.load(Ordering::Relaxed))
        .sum();
    let dt = last.0.elapsed().as_secs_f64().max(1e-9);
    let rate = total.saturating_sub(last.1) as f64 / dt / 1e6;
    let per: Vec<String> = names
        .iter()
        .zip(progress)
        .map(|(n, p)| format!("{n} {}", util::human_bytes(p.bytes.load(Ordering::Relaxed))))
        .collect();
    crate::util::err!(
        "\r\x1b[K[{:>5.1}s] {} | {:.1} MB/s | {}",
        started.elapsed().as_secs_f64(),
        per.join("  "),
        rate,
        if lost == 0 {
            "dropped 0".to_string()
        } else {
            format!("\x1b[1;31mDROPPED {lost}\x1b[0m")
        }
    );
    (Instant::now(), total)
}

/// Writes OUT/relayfs-record.json (nothing for a device sink).
pub(crate) fn write_summary(out: &Path, summary: &serde_json::Value) -> Result<()> {
    if is_sink(out) {
        return Ok(());
    }
    crate::output::write_atomic(&out.join(SUMMARY_FILE), format!("{summary:#}\n").as_bytes())
}

/// The recorder's own memory, its mappings of the buffers aside: anonymous
/// resident memory (`RssAnon` in /proc/self/status), sampled every 100 ms,
/// and its peak.
pub(crate) struct MemorySampler {
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `RssAnon` of this process in KiB, if /proc says.
pub(crate) fn rss_anon_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

impl MemorySampler {
    pub(crate) fn start() -> MemorySampler {
        let peak = Arc::new(AtomicU64::new(rss_anon_kib().unwrap_or(0)));
        let done = Arc::new(AtomicBool::new(false));
        let (p, d) = (peak.clone(), done.clone());
        let thread = std::thread::Builder::new()
            .name("rss".into())
            .spawn(move || {
                while !d.load(Ordering::Relaxed) {
                    if let Some(k) = rss_anon_kib() {
                        p.fetch_max(k, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .ok();
        MemorySampler { peak, done, thread }
    }

    /// Stops sampling and adds `rss_anon_kib` (now) and
    /// `rss_anon_peak_kib` to the summary.
    pub(crate) fn finish(mut self, summary: &mut serde_json::Value) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let now = rss_anon_kib();
        if let Some(k) = now {
            self.peak.fetch_max(k, Ordering::Relaxed);
        }
        summary["rss_anon_kib"] = json!(now);
        summary["rss_anon_peak_kib"] = json!(self.peak.load(Ordering::Relaxed));
    }
}

/// Whether an output error is the output filesystem being full.
fn output_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
                || matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
        })
    })
}

/// Runs an output operation (creating, rotating, the state file); with
/// `--retry`, a full output filesystem makes it wait and try again until
/// the recording is stopped. Each operation can be repeated after a failure.
fn retrying<T>(
    a: &Args,
    stop: &AtomicBool,
    warned: &mut bool,
    mut op: impl FnMut() -> Result<T>,
) -> Result<T> {
    loop {
        match op() {
            Err(e)
                if a.retry
                    && output_full(&e)
                    && !stop.load(Ordering::Relaxed)
                    && !util::interrupted() =>
            {
                if !*warned {
                    crate::util::errln!(
                        "relayfs record: {e:#}; retrying (the producer counts what it drops meanwhile)"
                    );
                    *warned = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// Whether a reader error is the output filesystem being full.
pub(crate) fn out_of_space(e: &relayfs::ReadError) -> bool {
    matches!(e, relayfs::ReadError::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
}

fn summarize(
    dir: &Path,
    a: &Args,
    scan: &util::ChannelScan,
    results: &[BufResult],
    elapsed: f64,
) -> serde_json::Value {
    let total = relayfs::sum_stats(results.iter().map(|r| &r.stats));
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let end = results
        .iter()
        .map(|r| r.end)
        .max_by_key(|e| match e {
            End::Closed => 0,
            End::Interrupted | End::Stopped => 1,
            End::ProducerGone => 2,
            End::Error => 3,
        })
        .unwrap_or(End::Closed);
    json!({
        "channel": dir.display().to_string(),
        "channel_id": scan.channel_id,
        "n_buffers": scan.n_buffers,
        "out": a.out.display().to_string(),
        "max_files": a.max_files,
        "end": end.as_str(),
        "exit_code": exit_code(results),
        "elapsed_s": elapsed,
        "bytes": bytes,
        "mb_per_s": bytes as f64 / elapsed.max(1e-9) / 1e6,
        "records_written": total.records_written(),
        "records_delivered": total.records_consumed,
        "lost": total.lost(),
        "dropped_full": total.dropped_full,
        "dropped_toobig": total.dropped_toobig,
        "overwritten": total.overwritten_records,
        "discarded": total.discarded_records,
        "dropped_corrupt": total.dropped_corrupt,
        "unread_at_close": total.unread_at_close,
        "abandoned_bytes": results.iter().filter_map(|r| r.abandoned).map(|a| a.0).sum::<u64>(),
        "abandoned_records": results.iter().filter_map(|r| r.abandoned).map(|a| a.1).sum::<u64>(),
        "buffers": results.iter().map(|r| json!({
            "name": r.name,
            "end": r.end.as_str(),
            "bytes": r.bytes,
            "files": r.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "records_written": r.stats.records_written(),
            "records_delivered": r.stats.records_consumed,
            "dropped_full": r.stats.dropped_full,
            "dropped_toobig": r.stats.dropped_toobig,
            "overwritten": r.stats.overwritten_records,
            "discarded": r.stats.discarded_records,
            "padding_bytes": r.stats.padding_bytes,
            "abandoned_bytes": r.abandoned.map_or(0, |a| a.0),
            "abandoned_records": r.abandoned.map_or(0, |a| a.1),
            "error": r.error,
        })).collect::<Vec<_>>(),
    })
}

fn print_summary(dir: &Path, a: &Args, results: &[BufResult], elapsed: f64) {
    let total = relayfs::sum_stats(results.iter().map(|r| &r.stats));
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    crate::util::errln!("relayfs record: {} -> {}", dir.display(), a.out.display());
    crate::util::errln!(
        "  {:<8} {:>12} {:>12} {:>10} {:>10} {:>11} {:>10}  end",
        "buffer",
        "bytes",
        "records",
        "drop-full",
        "too-big",
        "overwritten",
        "discarded"
    );
    for r in results {
        let s = &r.stats;
        crate::util::errln!(
            "  {:<8} {:>12} {:>12} {:>10} {:>10} {:>11} {:>10}  {}",
            r.name,
            util::human_bytes(r.bytes),
            s.records_consumed,
            s.dropped_full,
            s.dropped_toobig,
            s.overwritten_records,
            s.discarded_records,
            r.end.as_str()
        );
    }
    crate::util::errln!(
        "  total    {} in {:.2} s ({:.1} MB/s), {} records",
        util::human_bytes(bytes),
        elapsed,
        bytes as f64 / elapsed.max(1e-9) / 1e6,
        total.records_consumed
    );
    if let Some(e) = results.iter().find_map(|r| r.error.as_ref()) {
        crate::util::errln!(
            "  recording INCOMPLETE: {e}; {} records lost so far (what the producer writes from now on is not recorded)",
            total.lost()
        );
    } else if total.lost() == 0 {
        crate::util::errln!("  nothing lost");
    } else {
        crate::util::errln!(
            "  LOST {} records (full {}, too big {}, overwritten {}, discarded {}, unread at close {}, corrupt buffer {}): the producer needs larger or more sub-buffers (ChannelBuilder::subbuf_size, n_subbufs; the demo's --subbuf-size, --n-subbufs) or a faster output",
            total.lost(),
            total.dropped_full,
            total.dropped_toobig,
            total.overwritten_records,
            total.discarded_records,
            total.unread_at_close,
            total.dropped_corrupt
        );
    }
    if results.iter().any(|r| r.end == End::ProducerGone) {
        crate::util::errln!(
            "  the producer died without closing the channel: every complete sub-buffer was saved"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: Args,
    }

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["record", "chan", "-o", "out"];
        v.extend_from_slice(extra);
        Cli::parse_from(v).a
    }

    /// An output operation that finds the filesystem full `fails` times,
    /// the way `tempfile` reports it (the kind kept, the OS code wrapped).
    fn full_then_ok(fails: u32) -> impl FnMut() -> Result<u32> {
        let mut n = 0;
        move || {
            n += 1;
            if n <= fails {
                let e = std::io::Error::new(std::io::ErrorKind::StorageFull, "at path x");
                Err(anyhow::Error::new(e).context("cannot write x"))
            } else {
                Ok(n)
            }
        }
    }

    #[test]
    fn output_setup_waits_for_room_with_retry_only() {
        let stop = AtomicBool::new(false);
        let mut warned = false;
        let r = retrying(&args(&["--retry"]), &stop, &mut warned, full_then_ok(2));
        assert_eq!(r.unwrap(), 3);
        assert!(warned);
        let mut warned = false;
        let e = retrying(&args(&[]), &stop, &mut warned, full_then_ok(2)).unwrap_err();
        assert!(output_full(&e), "{e:#}");
        let os = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(output_full(&os.context("writing")));
        let other = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(!output_full(&other));
        // Stopped: no more waiting.
        stop.store(true, Ordering::Relaxed);
        let r = retrying(&args(&["--retry"]), &stop, &mut warned, full_then_ok(2));
        assert!(r.is_err());
    }
}
