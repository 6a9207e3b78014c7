//! Recording a kernel relay channel (`relayfs record` on a debugfs
//! directory, and `relayfs blktrace`): one [`KernelSource`] per relay file,
//! each in a thread of its own, pinned to its CPU; a [`Gate`] to park them
//! while the kernel flushes; then the [`KernelSummary`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use relayfs::kernel::{self, Support};
use relayfs::KernelRelayFile;

use super::config::{OutputConfig, RecordConfig};
use super::engine::{create_out_dir, file_names, pump, Failed, Moved, Readers};
use super::output::{FileOutput, Output, Retry};
use super::report::{
    self, End, KernelBufferSummary, KernelSummary, MemorySampler, Progress, Summary,
};
use super::source::{self, Gate, KernelRelayBuffer, KernelSource};
use crate::util;

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
}
