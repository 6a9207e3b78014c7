//! Recording a relayfs channel (`relayfs record CHANNEL`): every buffer
//! the channel's headers name, each by a [`RelaySource`] in a thread of its
//! own, until the channel closes, the producer dies, `--duration` passes or
//! a signal comes; then the [`RecordSummary`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use relayfs::{BufferStats, RelayFile};

use super::config::{OutputConfig, RecordConfig};
use super::engine::{create_out_dir, file_names, pump, Failed, Moved, Readers};
use super::output::{FileOutput, Retry};
use super::report::{
    self, BufferSummary, End, Memory, MemorySampler, Progress, RecordSummary, Summary,
    EXIT_PRODUCER_GONE,
};
use super::source::{self, RelaySource};
use crate::util::{self, BufferFile, ChannelScan};

/// How one relayfs buffer's recording went.
#[derive(Debug)]
pub(crate) struct BufferResult {
    pub(crate) name: String,
    pub(crate) bytes: u64,
    /// Bytes and committed records given up in the sub-buffer a dead
    /// producer was writing.
    pub(crate) abandoned: Option<(u64, u64)>,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) stats: BufferStats,
    pub(crate) end: End,
    pub(crate) error: Option<String>,
}

impl Failed for BufferResult {
    fn failed(name: &str, error: String) -> BufferResult {
        BufferResult {
            name: name.to_string(),
            bytes: 0,
            abandoned: None,
            files: vec![],
            stats: BufferStats::default(),
            end: End::Error,
            error: Some(error),
        }
    }
}

/// Records one relayfs buffer into `OUT/<buffer>.out` (resuming what an
/// earlier recorder left) until the channel ends, the producer dies, or
/// `stop` is set; sets `stop` itself on an error, since the recording
/// can't be complete then.
pub(crate) fn record_relay_buffer(
    buf: &BufferFile,
    f: RelayFile,
    cfg: &OutputConfig,
    progress: &Progress,
    stop: &AtomicBool,
) -> BufferResult {
    let mut src = RelaySource::new(f, stop);
    let mut retry = Retry::new(cfg.retry, Some(stop), "the producer");
    let mut moved = Moved::default();
    let recorded = retry
        .run(|| {
            FileOutput::resume(
                &cfg.dir,
                &format!("{}.out", buf.name),
                cfg.max_size,
                cfg.max_files,
                src.f.header().channel_id,
                src.f.stats().bytes_consumed,
            )
        })
        .and_then(|mut out| pump(&mut src, &mut out, progress, &mut retry, &mut moved));
    let mut res = BufferResult {
        name: buf.name.clone(),
        bytes: moved.bytes,
        abandoned: src.abandoned,
        files: moved.files,
        // What was delivered before an error counts too.
        stats: src.f.stats(),
        end: End::Error,
        error: None,
    };
    match recorded {
        Ok(end) => res.end = end,
        Err(e) => {
            res.error = Some(format!("{e:#}"));
            // Stop the other buffers too: the recording can't be complete.
            // SYNC POINT: Relaxed; a stop flag carrying no data.
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

/// Records the relayfs channel in `dir`; returns the exit code.
pub(crate) fn record_channel(dir: &Path, cfg: &RecordConfig) -> Result<i32> {
    let scan = source::find_buffers(dir, cfg)?;
    let out = &cfg.output;
    // Every buffer that can't be recorded is an error of its own.
    let mut unrecorded: Vec<BufferResult> = scan
        .bad
        .iter()
        .map(|b| BufferResult::failed(&b.name, format!("{}: {}", b.path.display(), b.reason)))
        .collect();
    // Take every buffer's reader place before touching the output: a
    // recorder refused because another one reads the channel must leave
    // that one's output alone.
    let mut bufs = Vec::new();
    for b in &scan.bufs {
        match RelayFile::open(&b.path) {
            Ok(f) if f.header().channel_id != b.channel_id => {
                unrecorded.push(BufferResult::failed(
                    &b.name,
                    format!(
                    "{}: replaced by another channel's buffer (id {:#x}) while the recorder started",
                    b.path.display(),
                    f.header().channel_id
                ),
                ))
            }
            Ok(f) => bufs.push((b.clone(), f)),
            Err(relayfs::ReadError::Busy(p)) => bail!(
                "{}: another reader has this buffer (is another recorder running?); {} left untouched",
                p.display(),
                out.dir.display()
            ),
            Err(e) => unrecorded.push(BufferResult::failed(&b.name, util::error_chain(&e))),
        }
    }
    create_out_dir(out)?;
    let memory = MemorySampler::start();
    let progress: Arc<Vec<Progress>> = Arc::new(bufs.iter().map(|_| Progress::default()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut readers = Readers::new();
    for (i, (b, f)) in bufs.into_iter().enumerate() {
        let (out, progress, stop) = (out.clone(), progress.clone(), stop.clone());
        let name = b.name.clone();
        readers.spawn(&name, move || {
            record_relay_buffer(&b, f, &out, &progress[i], &stop)
        })?;
    }
    let names = readers.names();
    let timed_out = super::engine::stop_after(cfg.duration, started, &stop);
    let status = cfg.show.status_line().then(|| {
        let (progress, names, done) = (progress.clone(), names.clone(), stop.clone());
        std::thread::spawn(move || report::status_line(&progress, &names, &done, started))
    });
    let mut results = readers.join();
    results.append(&mut unrecorded);
    results.sort_by_key(|r| {
        let digits_at = r.name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        (
            r.name[..digits_at].to_string(),
            r.name[digits_at..].parse::<u64>().unwrap_or(u64::MAX),
            r.name.clone(),
        )
    });
    // SYNC POINT: Relaxed; the readers are joined, the timer only reads it.
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
    let summary = summarize(dir, out, &scan, &results, elapsed, memory.finish());
    // The buffers' own errors first: the first of them is what went wrong.
    for r in &results {
        if let Some(e) = &r.error {
            crate::util::errln!("relayfs record: {}: {e}", r.name);
        }
    }
    let mut code = summary.exit_code;
    if !report::emit("relayfs record", &summary, &out.dir, cfg.show, || {
        summary.print_text()
    })? {
        code = code.max(1);
    }
    Ok(code)
}

/// The exit code of a relayfs recording: 1 if a buffer failed, else 3 if
/// the producer died, else 0.
fn exit_code(results: &[BufferResult]) -> i32 {
    if results.iter().any(|r| r.end == End::Error) {
        1
    } else if results.iter().any(|r| r.end == End::ProducerGone) {
        EXIT_PRODUCER_GONE
    } else {
        0
    }
}

pub(crate) fn summarize(
    dir: &Path,
    out: &OutputConfig,
    scan: &ChannelScan,
    results: &[BufferResult],
    elapsed: f64,
    memory: Memory,
) -> RecordSummary {
    let total = relayfs::sum_stats(results.iter().map(|r| &r.stats));
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    RecordSummary {
        channel: dir.display().to_string(),
        channel_id: scan.channel_id,
        n_buffers: Some(scan.n_buffers),
        out: out.dir.display().to_string(),
        max_files: out.max_files,
        end: End::worst(results.iter().map(|r| r.end)),
        exit_code: exit_code(results),
        elapsed_s: elapsed,
        bytes,
        mb_per_s: report::mb_per_s(bytes, elapsed),
        abandoned_bytes: results
            .iter()
            .filter_map(|r| r.abandoned)
            .map(|a| a.0)
            .sum(),
        abandoned_records: results
            .iter()
            .filter_map(|r| r.abandoned)
            .map(|a| a.1)
            .sum(),
        buffers: results
            .iter()
            .map(|r| BufferSummary {
                name: r.name.clone(),
                end: r.end,
                bytes: r.bytes,
                files: file_names(&r.files),
                records_written: r.stats.records_written(),
                records_delivered: r.stats.records_consumed,
                dropped_full: r.stats.dropped_full,
                dropped_toobig: r.stats.dropped_toobig,
                overwritten: r.stats.overwritten_records,
                discarded: r.stats.discarded_records,
                padding_bytes: r.stats.padding_bytes,
                abandoned_bytes: r.abandoned.map_or(0, |a| a.0),
                abandoned_records: r.abandoned.map_or(0, |a| a.1),
                error: r.error.clone(),
            })
            .collect(),
        memory: Some(memory),
        ..RecordSummary::totals(&total)
    }
}
