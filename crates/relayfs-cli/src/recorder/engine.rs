//! The engine: one reader thread per buffer ([`Readers`]), each moving
//! whole sub-buffers from its source to its output (see `source`), the stop
//! conditions (channel closed, `--duration`, a signal, an error), the status
//! line, and the summary at the end. [`record_channel`] records a relayfs
//! channel; [`KernelRecording`] a kernel relay channel (used by
//! [`record_kernel_channel`] and by `relayfs blktrace`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relayfs::kernel::{self, Support};
use relayfs::{KernelRelayFile, RelayFile};

use super::config::{OutputConfig, RecordConfig};
use super::output::{is_sink, FileOutput};
use super::report::{
    self, BufferSummary, End, KernelBufferSummary, KernelSummary, Memory, MemorySampler, Progress,
    RecordSummary, Summary, EXIT_PRODUCER_GONE,
};
use super::source::{
    self, BufferResult, Failed, Gate, KernelFileResult, KernelRelayBuffer, KernelShared,
};
use crate::util::{self, ChannelScan};

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
            source::record_relay_buffer(&b, f, &out, &progress[i], &stop)
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
                source::record_kernel_file(b, f, out, shared, retry)
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
}
