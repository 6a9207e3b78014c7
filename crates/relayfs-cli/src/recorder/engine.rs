//! The engine: one reader thread per buffer ([`Readers`]), each moving
//! whole sub-buffers from its [`Source`] to its [`Output`] by the one loop
//! [`pump`] and counting them, the stop
//! conditions (channel closed, `--duration`, a signal, an error), the status
//! line, and the summary at the end. [`record_channel`] records a relayfs
//! channel; [`KernelRecording`] a kernel relay channel (used by
//! [`record_kernel_channel`] and by `relayfs blktrace`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relayfs::kernel::{self, Support};
use relayfs::{BufferStats, KernelRelayFile, RelayFile};

use super::config::{OutputConfig, RecordConfig};
use super::output::{is_sink, AfterFull, FileOutput, Output, Retry};
use super::report::{
    self, BufferSummary, End, KernelBufferSummary, KernelSummary, Memory, MemorySampler, Progress,
    RecordSummary, Summary, EXIT_PRODUCER_GONE,
};
use super::source::{self, Gate, Idle, KernelRelayBuffer, KernelSource, RelaySource, Source};
use crate::util::{self, BufferFile, ChannelScan};

/// Reader threads, one per buffer, each named `record-<buffer>`.
pub(crate) struct Readers<T> {
    threads: Vec<(String, JoinHandle<T>)>,
}

impl<T: Failed + Send + 'static> Readers<T> {
    pub(crate) fn new() -> Readers<T> {
        Readers {
            threads: Vec::new(),
        }
    }

    /// Starts `work` for buffer `name` in a thread of its own.
    pub(crate) fn spawn(
        &mut self,
        name: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<()> {
        let t = std::thread::Builder::new()
            .name(format!("record-{name}"))
            .spawn(work)?;
        self.threads.push((name.to_string(), t));
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether every reader has ended.
    pub(crate) fn all_finished(&self) -> bool {
        self.threads.iter().all(|(_, t)| t.is_finished())
    }

    /// The buffers' names, in the order started.
    pub(crate) fn names(&self) -> Vec<String> {
        self.threads.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Waits for every reader; one that panicked is a failed buffer.
    pub(crate) fn join(self) -> Vec<T> {
        self.threads
            .into_iter()
            .map(|(name, t)| {
                t.join()
                    .unwrap_or_else(|_| T::failed(&name, "reader thread panicked".into()))
            })
            .collect()
    }
}

/// What happens to a buffer whose reader thread panicked.
pub(crate) trait Failed {
    /// The result of a buffer that could not be recorded: `error` says why.
    fn failed(name: &str, error: String) -> Self;
}

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

/// How one kernel relay file's recording went.
#[derive(Debug)]
pub(crate) struct KernelFileResult {
    /// Relay file name.
    pub(crate) name: String,
    /// Bytes recorded.
    pub(crate) bytes: u64,
    /// Output files.
    pub(crate) files: Vec<PathBuf>,
    /// How it ended.
    pub(crate) end: End,
    /// What stopped it, if an error did.
    pub(crate) error: Option<String>,
    /// Whether the kernel let `sendfile` read this file.
    pub(crate) sendfile: Support,
    /// Wakeups with nothing to read (see `KernelRelayFile::empty_wakeups`).
    pub(crate) empty_wakeups: u64,
}

impl Failed for KernelFileResult {
    fn failed(name: &str, error: String) -> KernelFileResult {
        KernelFileResult {
            name: name.to_string(),
            bytes: 0,
            files: vec![],
            end: End::Error,
            error: Some(error),
            sendfile: Support::Unknown,
            empty_wakeups: 0,
        }
    }
}

/// What [`pump`] moved.
#[derive(Debug, Default)]
pub(crate) struct Moved {
    /// Bytes in the output (what a cut-back removed not counted).
    pub(crate) bytes: u64,
    /// The output's files, kept up to date so that a recording stopped by
    /// an error lists them too.
    pub(crate) files: Vec<PathBuf>,
}

/// Moves `src` into `out` until the source says its recording ended: the
/// one loop of both recorders. Counts what it moves in `moved` and
/// `progress`; waits out a full filesystem as `retry` says; on a failed
/// write, cuts the output back to the last boundary if the source asks.
pub(crate) fn pump(
    src: &mut dyn Source,
    out: &mut dyn Output,
    progress: &Progress,
    retry: &mut Retry<'_>,
    moved: &mut Moved,
) -> Result<End> {
    moved.files = out.files().to_vec();
    // Size of the current output file when the reader last stood at a
    // boundary (`None`: it started in the middle of a sub-buffer, or the
    // source doesn't cut back).
    let mut kept = (src.cuts_back() && src.at_boundary(0)).then_some(out.size());
    let end = loop {
        let n = match src.move_into(out.file()) {
            Ok(n) => n,
            Err(e) => {
                let path = out
                    .files()
                    .last()
                    .map_or(String::new(), |p| p.display().to_string());
                match retry.write_failed(&src.full_place(&path), &e) {
                    Some(AfterFull::Again) => continue,
                    Some(AfterFull::Stopped) => break End::Interrupted,
                    None => {}
                }
                let cut = match kept {
                    Some(k) => out.cut_back(k)?,
                    None => 0,
                };
                moved.bytes -= cut;
                // SYNC POINT: Relaxed; a counter only shown.
                progress.bytes.fetch_sub(cut, Ordering::Relaxed);
                return Err(src.write_error(e, &path, cut));
            }
        };
        out.wrote(n);
        if src.at_boundary(n) {
            if retry.run(|| out.boundary())? {
                moved.files = out.files().to_vec();
            }
            if src.cuts_back() {
                kept = Some(out.size());
            }
        }
        moved.bytes += n;
        // SYNC POINT: Relaxed; a counter only shown.
        progress.bytes.fetch_add(n, Ordering::Relaxed);
        if n > 0 {
            continue;
        }
        if let Some(lost) = src.lost() {
            // SYNC POINT: Relaxed; a counter only shown.
            progress.lost.store(lost, Ordering::Relaxed);
        }
        if let Idle::End(end) = src.idle()? {
            break end;
        }
    };
    out.finish()?;
    moved.files = out.files().to_vec();
    Ok(end)
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

/// What a kernel relay file's reader shares with the recording.
pub(crate) struct KernelShared<'a> {
    pub(crate) progress: &'a Progress,
    /// Set when the producer side is stopped and flushed: read what is
    /// left and end.
    pub(crate) drain: &'a AtomicBool,
    /// Set by a reader that failed, so that the recording stops.
    pub(crate) failed: &'a AtomicBool,
    pub(crate) gate: &'a Gate,
}

/// Records one kernel relay file into `out` until the kernel closes the
/// channel (`POLLERR`) or, once `drain` is set, until nothing more comes.
pub(crate) fn record_kernel_file(
    b: KernelRelayBuffer,
    f: KernelRelayFile,
    mut out: FileOutput,
    shared: KernelShared<'_>,
    retry: bool,
) -> KernelFileResult {
    let KernelShared {
        progress,
        drain,
        failed,
        gate,
    } = shared;
    // The kernel's SIGINT is the recording's stop: no other stop flag.
    let mut retry = Retry::new(retry, None, "the kernel");
    if let Some(cpu) = b.cpu {
        // On its own CPU a reader can't copy an event the kernel is still
        // filling (see relayfs::cpu::pin_current_thread).
        if let Err(e) = relayfs::cpu::pin_current_thread(cpu as usize) {
            crate::util::errln!(
                "relayfs: {}: cannot run on CPU {cpu} ({e}); reading it from another CPU may copy an event the kernel is still filling",
                b.name
            );
        }
    }
    let mut src = KernelSource::new(b.name, f, drain, gate);
    let mut moved = Moved::default();
    let (end, error) = match pump(&mut src, &mut out, progress, &mut retry, &mut moved) {
        Ok(end) => (end, None),
        Err(e) => {
            // SYNC POINT: Relaxed; a flag the waiting thread polls.
            failed.store(true, Ordering::Relaxed);
            (End::Error, Some(format!("{e:#}")))
        }
    };
    KernelFileResult {
        sendfile: src.f.sendfile_support(),
        empty_wakeups: src.f.empty_wakeups(),
        name: src.name,
        bytes: moved.bytes,
        files: out.files().to_vec(),
        end,
        error,
    }
}

/// Creates the output directory (nothing for a device sink).
fn create_out_dir(out: &OutputConfig) -> Result<()> {
    if !is_sink(&out.dir) {
        std::fs::create_dir_all(&out.dir)
            .with_context(|| format!("cannot create output directory {}", out.dir.display()))?;
    }
    Ok(())
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
    let timed_out = Arc::new(AtomicBool::new(false));
    if let Some(d) = cfg.duration {
        let (stop, timed_out) = (stop.clone(), timed_out.clone());
        let deadline = started + d;
        std::thread::spawn(move || {
            // SYNC POINT: Relaxed; stop flags carrying no data (the
            // results come back through `join`).
            while Instant::now() < deadline {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // SYNC POINT: Relaxed, both: `timed_out` is read after the
            // readers are joined, which orders this store before it.
            timed_out.store(true, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
        });
    }
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

fn file_names(files: &[std::path::PathBuf]) -> Vec<String> {
    files.iter().map(|f| f.display().to_string()).collect()
}

fn summarize(
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
        records_written: total.records_written + total.records_pending,
        records_delivered: total.records_consumed,
        lost: total.lost(),
        dropped_full: total.dropped_full,
        dropped_toobig: total.dropped_toobig,
        overwritten: total.overwritten_records,
        discarded: total.discarded_records,
        dropped_corrupt: total.dropped_corrupt,
        unread_at_close: total.unread_at_close,
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
                records_written: r.stats.records_written + r.stats.records_pending,
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
    }
}

/// A recording of a kernel relay channel in progress: one reader thread per
/// relay file.
pub(crate) struct KernelRecording {
    readers: Readers<KernelFileResult>,
    /// Bytes per relay file, for the status line.
    pub(crate) progress: Arc<Vec<Progress>>,
    names: Vec<String>,
    drain: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    gate: Arc<Gate>,
    started: Instant,
    /// What `mmap` on the first relay file answered.
    pub(crate) mmap: Support,
}

impl KernelRecording {
    /// Starts one reader thread per relay file, on files already open (so
    /// that open errors come before any tracing is started).
    pub(crate) fn start(
        files: Vec<(KernelRelayBuffer, KernelRelayFile)>,
        opts: &OutputConfig,
    ) -> Result<KernelRecording> {
        create_out_dir(opts)?;
        let mmap = files
            .first()
            .map_or(Support::Unknown, |(_, f)| f.probe_mmap());
        let progress: Arc<Vec<Progress>> =
            Arc::new(files.iter().map(|_| Progress::default()).collect());
        let drain = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Gate::default());
        let mut readers = Readers::new();
        for (i, (b, f)) in files.into_iter().enumerate() {
            let out = FileOutput::create(&opts.dir, &b.out_name, opts.max_size, opts.max_files)?;
            let (progress, drain, failed, gate, retry) = (
                progress.clone(),
                drain.clone(),
                failed.clone(),
                gate.clone(),
                opts.retry,
            );
            let name = b.name.clone();
            readers.spawn(&name, move || {
                // Counts the thread out of the gate however it ends.
                struct Leave(Arc<Gate>);
                impl Drop for Leave {
                    fn drop(&mut self) {
                        self.0.leave();
                    }
                }
                let _leave = Leave(gate.clone());
                let shared = KernelShared {
                    progress: &progress[i],
                    drain: &drain,
                    failed: &failed,
                    gate: &gate,
                };
                record_kernel_file(b, f, out, shared, retry)
            })?;
        }
        Ok(KernelRecording {
            names: readers.names(),
            readers,
            progress,
            drain,
            failed,
            gate,
            started: Instant::now(),
            mmap,
        })
    }

    /// Waits until `duration` passes, SIGINT, SIGTERM or SIGHUP arrives, a reader
    /// fails, or every relay file is closed by the kernel; shows a status
    /// line on a terminal (with the kernel's count of dropped events, read
    /// from `dropped_dir/dropped`). Returns why it stopped.
    pub(crate) fn wait(
        &self,
        duration: Option<Duration>,
        dropped_dir: Option<&Path>,
        status: bool,
    ) -> End {
        let mut last = (Instant::now(), 0u64);
        let mut next_status = Instant::now() + Duration::from_millis(500);
        loop {
            if util::interrupted() {
                break End::Interrupted;
            }
            // SYNC POINT: Relaxed; a flag carrying no data (results come
            // back through `join`).
            if self.failed.load(Ordering::Relaxed) {
                break End::Error;
            }
            if duration.is_some_and(|d| self.started.elapsed() >= d) {
                break End::Stopped;
            }
            if self.readers.all_finished() {
                break End::Closed;
            }
            if status && Instant::now() >= next_status {
                next_status += Duration::from_millis(500);
                let dropped = dropped_dir.and_then(kernel::channel_dropped).unwrap_or(0);
                if let Some(p) = self.progress.first() {
                    // SYNC POINT: Relaxed; a counter only shown.
                    p.lost.store(dropped, Ordering::Relaxed);
                }
                last = report::print_status(&self.progress, &self.names, self.started, last);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Parks every reader between two reads and returns once none is
    /// inside `read(2)`: call before making the kernel flush the channel
    /// (`BLKTRACESTOP`), which it does without a lock against readers (see
    /// [`Gate`]). [`finish`](Self::finish) lets them go again.
    pub(crate) fn quiesce(&self) {
        self.gate.close(self.readers.len());
    }

    /// Tells every reader to drain what is left and stop; returns their
    /// results and the seconds since the start. Call after the producer
    /// side is stopped and flushed (for blktrace: after `BLKTRACESTOP`), so
    /// that nothing is left behind.
    pub(crate) fn finish(self, status: bool) -> (Vec<KernelFileResult>, f64) {
        // SYNC POINT: Relaxed; a flag carrying no data (results come back
        // through `join`).
        self.drain.store(true, Ordering::Relaxed);
        self.gate.open();
        let results = self.readers.join();
        if status {
            crate::util::err!("\r\x1b[K");
        }
        (results, self.started.elapsed().as_secs_f64())
    }
}

/// `relayfs record` on a kernel channel directory; returns the exit code.
pub(crate) fn record_kernel_channel(dir: &Path, cfg: &RecordConfig) -> Result<i32> {
    let files = source::relay_files(dir, cfg.base.as_deref())?;
    let mut open = Vec::new();
    for (name, path, cpu) in files {
        let f = KernelRelayFile::open(&path)?;
        open.push((
            KernelRelayBuffer {
                out_name: format!("{name}.out"),
                cpu: Some(cpu),
                name,
            },
            f,
        ));
    }
    let status = cfg.show.status_line();
    let memory = MemorySampler::start();
    let rec = KernelRecording::start(open, &cfg.output)?;
    let mmap = rec.mmap;
    let why = rec.wait(cfg.duration, Some(dir), status);
    let (results, elapsed) = rec.finish(status);
    let dropped = kernel::channel_dropped(dir);
    let mut summary = kernel_summary(dir, &cfg.output.dir, why, &results, elapsed, dropped, mmap);
    summary.memory = Some(memory.finish());
    let written = report::emit(
        "relayfs record",
        &summary,
        &cfg.output.dir,
        cfg.show,
        || {
            summary.print_text();
            if let Some(d) = dropped.filter(|&d| d > 0) {
                crate::util::errln!(
                "  the kernel dropped {d} events: the channel's sub-buffers are too small or too few"
            );
            }
        },
    )?;
    Ok(report_errors(&results).max(i32::from(!written)))
}

/// Prints each reader's error; returns the exit code (1 if any failed).
pub(crate) fn report_errors(results: &[KernelFileResult]) -> i32 {
    let mut code = 0;
    for r in results {
        if let Some(e) = &r.error {
            crate::util::errln!("relayfs: {}: {e}", r.name);
            code = 1;
        }
    }
    code
}

/// The summary of a kernel recording.
pub(crate) fn kernel_summary(
    dir: &Path,
    out: &Path,
    why: End,
    results: &[KernelFileResult],
    elapsed: f64,
    dropped: Option<u64>,
    mmap: Support,
) -> KernelSummary {
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let end = if results.iter().any(|r| r.end == End::Error) {
        End::Error
    } else {
        why
    };
    KernelSummary {
        channel: dir.display().to_string(),
        kind: "kernel".into(),
        out: out.display().to_string(),
        end,
        exit_code: i32::from(end == End::Error),
        elapsed_s: elapsed,
        bytes,
        mb_per_s: report::mb_per_s(bytes, elapsed),
        dropped,
        mmap: report::support_str(mmap),
        buffers: results
            .iter()
            .map(|r| KernelBufferSummary {
                name: r.name.clone(),
                end: r.end,
                bytes: r.bytes,
                files: file_names(&r.files),
                sendfile: report::support_str(r.sendfile),
                empty_wakeups: r.empty_wakeups,
                error: r.error.clone(),
            })
            .collect(),
        memory: None,
        blktrace: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;

    /// A FIFO stands in for a kernel relay file: reads consume, `poll`
    /// reports data, and the test decides when data comes.
    #[test]
    fn quiesced_readers_stay_out_of_read_until_finish() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("trace0");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let f = KernelRelayFile::open(&fifo).unwrap();
        let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let out = dir.path().join("out");
        let b = KernelRelayBuffer {
            name: "trace0".into(),
            out_name: "trace0.out".into(),
            cpu: None,
        };
        let opts = OutputConfig {
            dir: out.clone(),
            max_size: None,
            max_files: None,
            retry: false,
        };
        let rec = KernelRecording::start(vec![(b, f)], &opts).unwrap();
        let read = |rec: &KernelRecording| rec.progress[0].bytes.load(Ordering::Relaxed);
        w.write_all(b"before ").unwrap();
        let t = Instant::now();
        while read(&rec) < 7 {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the reader never read"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        rec.quiesce();
        w.write_all(b"the flush").unwrap();
        // Longer than a live poll: an unparked reader would have read.
        std::thread::sleep(source::LIVE_POLL + Duration::from_millis(300));
        assert_eq!(read(&rec), 7, "a reader read while quiesced");
        let (results, _) = rec.finish(false);
        assert_eq!(results[0].error, None);
        assert_eq!(
            std::fs::read(out.join("trace0.out")).unwrap(),
            b"before the flush"
        );
    }

    #[derive(Debug, PartialEq)]
    struct Outcome(String, Option<String>);

    impl Failed for Outcome {
        fn failed(name: &str, error: String) -> Outcome {
            Outcome(name.into(), Some(error))
        }
    }

    #[test]
    fn a_reader_that_panics_is_a_failed_buffer_and_the_others_count() {
        let mut r = Readers::new();
        r.spawn("cpu0", || Outcome("cpu0".into(), None)).unwrap();
        r.spawn("cpu1", || -> Outcome { panic!("a bug") }).unwrap();
        assert_eq!(r.names(), ["cpu0", "cpu1"]);
        let results = r.join();
        assert_eq!(results[0], Outcome("cpu0".into(), None));
        assert_eq!(
            results[1],
            Outcome("cpu1".into(), Some("reader thread panicked".into()))
        );
    }

    /// What a scripted source does next.
    enum Step {
        /// Moves these bytes; the reader then stands at a boundary or not.
        Move(&'static [u8], bool),
        /// The write fails with this OS error.
        Fail(i32),
        /// Nothing ready, and the recording ends so.
        End(End),
    }

    /// A source that follows a script, writing to the output as a
    /// `sendfile` would.
    struct Scripted {
        steps: std::collections::VecDeque<Step>,
        boundary: bool,
        idle: Option<End>,
    }

    impl Scripted {
        fn new(steps: Vec<Step>) -> Scripted {
            Scripted {
                steps: steps.into(),
                boundary: true,
                idle: None,
            }
        }
    }

    impl Source for Scripted {
        fn move_into(&mut self, mut out: &std::fs::File) -> Result<u64, relayfs::ReadError> {
            match self.steps.pop_front() {
                Some(Step::Move(b, boundary)) => {
                    out.write_all(b).unwrap();
                    self.boundary = boundary;
                    Ok(b.len() as u64)
                }
                Some(Step::Fail(code)) => Err(relayfs::ReadError::Io {
                    what: "sendfile",
                    path: PathBuf::from("cpu0"),
                    source: std::io::Error::from_raw_os_error(code),
                }),
                Some(Step::End(end)) => {
                    self.idle = Some(end);
                    Ok(0)
                }
                None => panic!("the loop went on after the script ended"),
            }
        }
        fn at_boundary(&self, _n: u64) -> bool {
            self.boundary
        }
        fn cuts_back(&self) -> bool {
            true
        }
        fn idle(&mut self) -> Result<Idle> {
            Ok(self.idle.take().map_or(Idle::Again, Idle::End))
        }
        fn lost(&self) -> Option<u64> {
            Some(0)
        }
        fn full_place(&self, path: &str) -> String {
            path.into()
        }
        fn write_error(&self, e: relayfs::ReadError, path: &str, cut: u64) -> anyhow::Error {
            anyhow::Error::new(e).context(format!("cannot write {path}; cut {cut}"))
        }
    }

    fn run(steps: Vec<Step>, retry: bool) -> (Result<End>, Moved, u64, Vec<u8>) {
        let d = tempfile::tempdir().unwrap();
        let mut out = FileOutput::create(d.path(), "cpu0.out", None, None).unwrap();
        let progress = Progress::default();
        let stop = AtomicBool::new(false);
        let mut retry = Retry::new(retry, Some(&stop), "the producer");
        let mut moved = Moved::default();
        let mut src = Scripted::new(steps);
        let r = pump(&mut src, &mut out, &progress, &mut retry, &mut moved);
        let shown = progress.bytes.load(Ordering::Relaxed);
        let held = std::fs::read(d.path().join("cpu0.out")).unwrap();
        (r, moved, shown, held)
    }

    #[test]
    fn a_failed_write_cuts_the_output_back_to_the_last_boundary() {
        let (r, moved, shown, held) = run(
            vec![
                Step::Move(b"0123456789", true),
                Step::Move(b"abcde", false),
                Step::Fail(libc::EIO),
            ],
            true,
        );
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("cut 5"), "{e}");
        assert_eq!(held, b"0123456789");
        assert_eq!(moved.bytes, 10);
        assert_eq!(shown, 10);
        assert_eq!(moved.files.len(), 1);
    }

    #[test]
    fn a_full_filesystem_is_waited_out_with_retry_and_nothing_is_doubled() {
        let steps = || {
            vec![
                Step::Move(b"0123456789", true),
                Step::Fail(libc::ENOSPC),
                Step::Move(b"abc", true),
                Step::End(End::Closed),
            ]
        };
        let (r, moved, shown, held) = run(steps(), true);
        assert_eq!(r.unwrap(), End::Closed);
        assert_eq!(held, b"0123456789abc");
        assert_eq!((moved.bytes, shown), (13, 13));
        // Without --retry the same is an error, and what was whole stays.
        let (r, moved, _, held) = run(steps(), false);
        assert!(r.is_err());
        assert_eq!(held, b"0123456789");
        assert_eq!(moved.bytes, 10);
    }
}
