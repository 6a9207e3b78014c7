//! Recording kernel relay channels (relay files in debugfs): the engine
//! behind `relayfs record` on a kernel channel directory and behind
//! `relayfs blktrace`.
//!
//! One thread per relay file, as blktrace and staprun have: `sendfile` (or
//! the reader's read+write fallback) while data comes, a timed `poll` when
//! it doesn't (the kernel signals only complete sub-buffers, so the timeout
//! is what picks up a partly filled one). When told to stop, each thread
//! drains what is left and ends.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relayfs::kernel::{self, Support};
use relayfs::{KernelRelayFile, Ready};
use serde_json::json;

use super::record::{self, End, Output, Progress};
use crate::util;

/// Bytes moved per `sendfile` call.
const CHUNK: u64 = 8 << 20;
/// Poll timeout while live: how late a partly filled sub-buffer may be
/// picked up (blktrace uses 500 ms, staprun 200 ms).
const LIVE_POLL: Duration = Duration::from_millis(200);
/// Poll timeout while draining at the end.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// A relay file of a kernel channel and the name of its output.
#[derive(Debug, Clone)]
pub struct KBuffer {
    /// Relay file name, e.g. `trace0`.
    pub name: String,
    /// Output file name, e.g. `trace0.out` or `sda.blktrace.0`.
    pub out_name: String,
    /// The CPU whose buffer this is: the reader thread runs there, as
    /// blktrace's do, so that the kernel's wakeup stays on that CPU.
    pub cpu: Option<u64>,
}

/// Output options.
#[derive(Debug, Clone)]
pub struct OutOpts {
    /// Output directory.
    pub dir: PathBuf,
    /// Rotate at this size.
    pub max_size: Option<u64>,
    /// Keep this many rotated files.
    pub max_files: Option<u64>,
    /// Wait and retry when the output filesystem is full.
    pub retry: bool,
}

/// How one relay file's recording went.
#[derive(Debug)]
pub struct KResult {
    /// Relay file name.
    pub name: String,
    /// Bytes recorded.
    pub bytes: u64,
    /// Output files.
    pub files: Vec<PathBuf>,
    /// How it ended.
    pub end: End,
    /// What stopped it, if an error did.
    pub error: Option<String>,
    /// Whether the kernel let `sendfile` read this file.
    pub sendfile: Support,
    /// Wakeups with nothing to read (see `KernelRelayFile::empty_wakeups`).
    pub empty_wakeups: u64,
}

/// The relay files `<base><N>` of a kernel channel directory, in CPU order.
/// Without `base`, the directory must hold exactly one such set.
pub fn relay_files(dir: &Path, base: Option<&str>) -> Result<Vec<(String, PathBuf, u64)>> {
    let mut sets: std::collections::BTreeMap<String, Vec<(String, PathBuf, u64)>> =
        Default::default();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read kernel channel directory {}", dir.display()))?;
    for ent in entries {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if !ent.file_type()?.is_file() {
            continue;
        }
        let at = name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        if at == name.len() || at == 0 {
            continue;
        }
        let Ok(cpu) = name[at..].parse::<u64>() else {
            continue;
        };
        sets.entry(name[..at].to_string())
            .or_default()
            .push((name.clone(), ent.path(), cpu));
    }
    let mut files = match base {
        Some(b) => sets.remove(b).with_context(|| {
            format!(
                "no relay files {b}0, {b}1, ... in {}{}",
                dir.display(),
                if sets.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (there are: {})",
                        sets.keys()
                            .map(|k| format!("{k}N"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )
        })?,
        None => {
            if sets.len() > 1 {
                bail!(
                    "{} holds several sets of numbered files ({}): choose one with --base",
                    dir.display(),
                    sets.keys()
                        .map(|k| format!("{k}N"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            match sets.into_values().next() {
                Some(v) => v,
                None => bail!(
                    "no relay files (<base>0, <base>1, ...) in {}",
                    dir.display()
                ),
            }
        }
    };
    files.sort_by_key(|f| f.2);
    Ok(files)
}

/// A recording in progress.
pub struct Recording {
    threads: Vec<JoinHandle<KResult>>,
    /// Bytes per relay file, for the status line.
    pub progress: Arc<Vec<Progress>>,
    names: Vec<String>,
    drain: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    gate: Arc<Gate>,
    started: Instant,
    /// What `mmap` on the first relay file answered.
    pub mmap: Support,
}

/// Holds reader threads out of `read(2)` while the kernel flushes.
///
/// The kernel's relay read path (`relay_file_read_avail`,
/// `relay_file_read_start_pos`, `relay_file_read_subbuf_avail`) takes no
/// lock against `relay_switch_subbuf`. The writer of a buffer runs on the
/// buffer's CPU, where the pinned reader can't be in the middle of a read,
/// but `relay_flush` (`BLKTRACESTOP`) switches every CPU's buffer from the
/// CPU it is called on. A read racing it can see the new produced count
/// with the old write position and copy the next, never written, sub-buffer
/// as data: up to a whole sub-buffer of zeros after the last event. So the
/// readers are parked at a place between two reads before the flush and let
/// go after it.
#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    state: Mutex<GateState>,
    cv: Condvar,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    /// Reader threads waiting at the gate.
    parked: usize,
    /// Reader threads that ended (they read no more).
    gone: usize,
}

impl Gate {
    /// Called by a reader before each read: waits while the gate is closed.
    fn pass(&self) {
        // SYNC POINT: Relaxed; only a hint that spares the lock while the
        // gate is open. The decision is taken under the mutex, which
        // `close` holds when it sets both.
        if !self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.closed {
            return;
        }
        s.parked += 1;
        self.cv.notify_all();
        while s.closed {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.parked -= 1;
    }

    /// Called by a reader thread as it ends.
    fn leave(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.gone += 1;
        self.cv.notify_all();
    }

    /// Closes the gate and waits until each of `readers` threads is parked
    /// at it or gone. A reader in `poll` gets there when its poll returns
    /// (at most its timeout).
    fn close(&self, readers: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.closed = true;
        // SYNC POINT: Relaxed; pairs with the hint load in `pass`. A reader
        // that still reads `false` goes on to one more read, but `close`
        // only returns once every reader is counted parked (under the
        // mutex) or gone, so no read is in flight when it returns.
        self.closed.store(true, Ordering::Relaxed);
        while s.parked + s.gone < readers {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Opens the gate again.
    fn open(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.closed = false;
        // SYNC POINT: Relaxed, under the mutex as in `close`.
        self.closed.store(false, Ordering::Relaxed);
        self.cv.notify_all();
    }
}

impl Recording {
    /// Starts one reader thread per relay file, on files already open (so
    /// that open errors come before any tracing is started).
    pub fn start(files: Vec<(KBuffer, KernelRelayFile)>, opts: &OutOpts) -> Result<Recording> {
        if !record::is_sink(&opts.dir) {
            std::fs::create_dir_all(&opts.dir).with_context(|| {
                format!("cannot create output directory {}", opts.dir.display())
            })?;
        }
        let mmap = files
            .first()
            .map_or(Support::Unknown, |(_, f)| f.probe_mmap());
        let progress: Arc<Vec<Progress>> =
            Arc::new(files.iter().map(|_| Progress::default()).collect());
        let drain = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Gate::default());
        let names = files.iter().map(|(b, _)| b.name.clone()).collect();
        let mut threads = Vec::new();
        for (i, (b, f)) in files.into_iter().enumerate() {
            let out = Output::create(&opts.dir, &b.out_name, opts.max_size, opts.max_files)?;
            let (progress, drain, failed, gate, retry) = (
                progress.clone(),
                drain.clone(),
                failed.clone(),
                gate.clone(),
                opts.retry,
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("record-{}", b.name))
                    .spawn(move || {
                        // Counts the thread out of the gate however it ends.
                        struct Leave(Arc<Gate>);
                        impl Drop for Leave {
                            fn drop(&mut self) {
                                self.0.leave();
                            }
                        }
                        let _leave = Leave(gate.clone());
                        record_file(b, f, out, &progress[i], &drain, &failed, &gate, retry)
                    })?,
            );
        }
        Ok(Recording {
            threads,
            progress,
            names,
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
    pub fn wait(
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
            if self.failed.load(Ordering::Relaxed) {
                break End::Error;
            }
            if duration.is_some_and(|d| self.started.elapsed() >= d) {
                break End::Stopped;
            }
            if self.threads.iter().all(|t| t.is_finished()) {
                break End::Closed;
            }
            if status && Instant::now() >= next_status {
                next_status += Duration::from_millis(500);
                let dropped = dropped_dir.and_then(kernel::channel_dropped).unwrap_or(0);
                if let Some(p) = self.progress.first() {
                    p.lost.store(dropped, Ordering::Relaxed);
                }
                last = record::print_status(&self.progress, &self.names, self.started, last);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Parks every reader between two reads and returns once none is
    /// inside `read(2)`: call before making the kernel flush the channel
    /// (`BLKTRACESTOP`), which it does without a lock against readers (see
    /// [`Gate`]). [`finish`](Self::finish) lets them go again.
    pub fn quiesce(&self) {
        self.gate.close(self.threads.len());
    }

    /// Tells every reader to drain what is left and stop; returns their
    /// results. Call after the producer side is stopped and flushed (for
    /// blktrace: after `BLKTRACESTOP`), so that nothing is left behind.
    pub fn finish(self, status: bool) -> (Vec<KResult>, f64) {
        self.drain.store(true, Ordering::Relaxed);
        self.gate.open();
        let results = self
            .threads
            .into_iter()
            .zip(&self.names)
            .map(|(t, name)| {
                t.join().unwrap_or_else(|_| KResult {
                    name: name.clone(),
                    bytes: 0,
                    files: vec![],
                    end: End::Error,
                    error: Some("reader thread panicked".into()),
                    sendfile: Support::Unknown,
                    empty_wakeups: 0,
                })
            })
            .collect();
        if status {
            crate::util::err!("\r\x1b[K");
        }
        (results, self.started.elapsed().as_secs_f64())
    }
}

#[allow(clippy::too_many_arguments)]
fn record_file(
    b: KBuffer,
    mut f: KernelRelayFile,
    mut out: Output,
    progress: &Progress,
    drain: &AtomicBool,
    failed: &AtomicBool,
    gate: &Gate,
    retry: bool,
) -> KResult {
    let mut bytes = 0u64;
    let mut warned = false;
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
    let mut go = || -> Result<End> {
        let mut empty_in_drain = 0;
        let mut closed = false;
        loop {
            gate.pass();
            let n = match f.sendfile(&out.file, CHUNK) {
                Ok(n) => n,
                Err(e) if retry && record::out_of_space(&e) => {
                    if !warned {
                        crate::util::errln!(
                            "relayfs record: {}: {}; retrying (the kernel counts what it drops meanwhile)",
                            b.name,
                            crate::util::error_chain(&e),
                        );
                        warned = true;
                    }
                    if util::interrupted() {
                        return Ok(End::Interrupted);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "recording {} (nothing read was lost before this error)",
                        b.name
                    )))
                }
            };
            if n > 0 {
                bytes += n;
                out.size += n;
                progress.bytes.fetch_add(n, Ordering::Relaxed);
                empty_in_drain = 0;
                if n < CHUNK {
                    // Caught up with the kernel: a place between records.
                    out.maybe_rotate()?;
                }
                continue;
            }
            if drain.load(Ordering::Relaxed) {
                // Stopping: the producer side is flushed; read until two
                // polls in a row find nothing.
                empty_in_drain += 1;
                if empty_in_drain >= 2 {
                    return Ok(End::Stopped);
                }
                f.poll(Some(DRAIN_POLL))?;
                continue;
            }
            if closed {
                // Everything after POLLERR is read.
                return Ok(End::Closed);
            }
            match f.poll(Some(LIVE_POLL))? {
                // POLLERR: the channel was closed; read what is left.
                Ready::Closed => closed = true,
                Ready::Readable | Ready::Timeout | Ready::ProducerGone => {}
            }
        }
    };
    let (end, error) = match go() {
        Ok(end) => (end, None),
        Err(e) => {
            failed.store(true, Ordering::Relaxed);
            (End::Error, Some(format!("{e:#}")))
        }
    };
    KResult {
        name: b.name,
        bytes,
        files: out.files.clone(),
        end,
        error,
        sendfile: f.sendfile_support(),
        empty_wakeups: f.empty_wakeups(),
    }
}

/// `relayfs record` on a kernel channel directory.
pub fn record_dir(dir: &Path, a: &record::Args) -> Result<i32> {
    let files = relay_files(dir, a.base.as_deref())?;
    let mut open = Vec::new();
    for (name, path, cpu) in files {
        let f = KernelRelayFile::open(&path)?;
        open.push((
            KBuffer {
                out_name: format!("{name}.out"),
                cpu: Some(cpu),
                name,
            },
            f,
        ));
    }
    let opts = OutOpts {
        dir: a.out.clone(),
        max_size: a.max_size,
        max_files: a.max_files,
        retry: a.retry,
    };
    let status = !a.quiet && !a.json && util::stderr_is_tty();
    let memory = record::MemorySampler::start();
    let rec = Recording::start(open, &opts)?;
    let mmap = rec.mmap;
    let why = rec.wait(a.duration.map(Duration::from_secs_f64), Some(dir), status);
    let (results, elapsed) = rec.finish(status);
    let dropped = kernel::channel_dropped(dir);
    let mut summary = summary_json(dir, &a.out, why, &results, elapsed, dropped, mmap);
    memory.finish(&mut summary);
    record::write_summary(&a.out, &summary)?;
    if a.json {
        util::outln!("{summary}")?;
    } else if !a.quiet {
        print_summary(dir, &a.out, &results, elapsed, dropped, mmap);
        if dropped.unwrap_or(0) > 0 {
            crate::util::errln!(
                "  the kernel dropped {} events: the channel's sub-buffers are too small or too few",
                dropped.unwrap_or(0)
            );
        }
    }
    Ok(report_errors(&results))
}

/// Prints each reader's error; returns the exit code (1 if any failed).
pub fn report_errors(results: &[KResult]) -> i32 {
    let mut code = 0;
    for r in results {
        if let Some(e) = &r.error {
            crate::util::errln!("relayfs: {}: {e}", r.name);
            code = 1;
        }
    }
    code
}

fn support_str(s: Support) -> String {
    match s {
        Support::Unknown => "untried".into(),
        Support::Yes => "yes".into(),
        Support::No(code) => format!("no ({})", std::io::Error::from_raw_os_error(code)),
    }
}

/// The summary of a kernel recording as JSON.
pub fn summary_json(
    dir: &Path,
    out: &Path,
    why: End,
    results: &[KResult],
    elapsed: f64,
    dropped: Option<u64>,
    mmap: Support,
) -> serde_json::Value {
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let end = if results.iter().any(|r| r.end == End::Error) {
        End::Error
    } else {
        why
    };
    json!({
        "channel": dir.display().to_string(),
        "kind": "kernel",
        "out": out.display().to_string(),
        "end": end.as_str(),
        "exit_code": i32::from(end == End::Error),
        "elapsed_s": elapsed,
        "bytes": bytes,
        "mb_per_s": bytes as f64 / elapsed.max(1e-9) / 1e6,
        "dropped": dropped,
        "mmap": support_str(mmap),
        "buffers": results.iter().map(|r| json!({
            "name": r.name,
            "end": r.end.as_str(),
            "bytes": r.bytes,
            "files": r.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "sendfile": support_str(r.sendfile),
            "empty_wakeups": r.empty_wakeups,
            "error": r.error,
        })).collect::<Vec<_>>(),
    })
}

fn print_summary(
    dir: &Path,
    out: &Path,
    results: &[KResult],
    elapsed: f64,
    dropped: Option<u64>,
    mmap: Support,
) {
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    crate::util::errln!(
        "relayfs record: {} (kernel relay channel) -> {}",
        dir.display(),
        out.display()
    );
    for r in results {
        crate::util::errln!(
            "  {:<10} {:>12}  {}",
            r.name,
            util::human_bytes(r.bytes),
            r.end.as_str()
        );
    }
    crate::util::errln!(
        "  total      {} in {:.2} s ({:.1} MB/s); sendfile: {}, mmap: {}",
        util::human_bytes(bytes),
        elapsed,
        bytes as f64 / elapsed.max(1e-9) / 1e6,
        results
            .first()
            .map_or("untried".into(), |r| support_str(r.sendfile)),
        support_str(mmap)
    );
    match dropped {
        Some(0) => crate::util::errln!("  the kernel dropped nothing"),
        Some(d) => crate::util::errln!("  the kernel DROPPED {d}"),
        None => crate::util::errln!(
            "  (the channel has no dropped file: the kernel's losses are not known)"
        ),
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
        let b = KBuffer {
            name: "trace0".into(),
            out_name: "trace0.out".into(),
            cpu: None,
        };
        let opts = OutOpts {
            dir: out.clone(),
            max_size: None,
            max_files: None,
            retry: false,
        };
        let rec = Recording::start(vec![(b, f)], &opts).unwrap();
        let read = |rec: &Recording| rec.progress[0].bytes.load(Ordering::Relaxed);
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
        std::thread::sleep(LIVE_POLL + Duration::from_millis(300));
        assert_eq!(read(&rec), 7, "a reader read while quiesced");
        let (results, _) = rec.finish(false);
        assert_eq!(results[0].error, None);
        assert_eq!(
            std::fs::read(out.join("trace0.out")).unwrap(),
            b"before the flush"
        );
    }
}
