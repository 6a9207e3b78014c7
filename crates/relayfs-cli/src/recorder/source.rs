//! The two kinds of source a recording reads, and how each buffer of one is
//! moved into its [`Output`], whole sub-buffers at a time:
//!
//! - a relayfs buffer ([`RelayFile`]): found by [`find_buffers`], read by
//!   [`record_relay_buffer`] (poll, `sendfile` of one sub-buffer, the tail
//!   of a quiet producer, end of channel or a dead producer);
//! - a kernel relay file ([`KernelRelayFile`]): found by [`relay_files`],
//!   read by [`record_kernel_file`] (timed poll, `sendfile` or the read+write
//!   fallback, `POLLERR` at close, a drain when told).
//!
//! Each gives back what happened to its buffer ([`BufferResult`],
//! [`KernelFileResult`]); the engine runs one per thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relayfs::kernel::Support;
use relayfs::{BufferStats, KernelRelayFile, Ready, RelayFile};

use super::config::{OutputConfig, RecordConfig};
use super::output::{AfterFull, FileOutput, Output, Retry};
use super::report::{End, Progress};
use crate::util::{self, BufferFile, ChannelScan};

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

/// How long a channel that has appeared may take to show all its buffers
/// (the producer creates them one after another).
const SETTLE: Duration = Duration::from_secs(5);

/// Waits for the channel and all its buffers: as many as the buffers'
/// headers say the channel has, all of one channel. Once the channel exists
/// (its directory; with `--wait`, its first buffer file), waits at most
/// [`SETTLE`], then returns what is there with the rest in `bad`.
pub(crate) fn find_buffers(dir: &Path, cfg: &RecordConfig) -> Result<ChannelScan> {
    let mut seen: Option<Instant> = None;
    loop {
        if dir.is_dir() {
            let scan = util::scan_channel(dir, cfg.base.as_deref())?;
            if !scan.bufs.is_empty() && scan.bad.is_empty() {
                return Ok(scan);
            }
            if !cfg.wait || !scan.bufs.is_empty() || !scan.bad.is_empty() {
                let first = *seen.get_or_insert_with(Instant::now);
                if first.elapsed() >= SETTLE {
                    if scan.bufs.is_empty() && scan.bad.is_empty() {
                        bail!("no relay buffer files in {}", dir.display());
                    }
                    return Ok(scan);
                }
            }
        } else if !cfg.wait {
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

/// Records one relayfs buffer into `OUT/<buffer>.out` (resuming what an
/// earlier recorder left) until the channel ends, the producer dies, or
/// `stop` is set; sets `stop` itself on an error, since the recording
/// can't be complete then.
pub(crate) fn record_relay_buffer(
    buf: &BufferFile,
    mut f: RelayFile,
    cfg: &OutputConfig,
    progress: &Progress,
    stop: &AtomicBool,
) -> BufferResult {
    let mut res = BufferResult {
        name: buf.name.clone(),
        bytes: 0,
        abandoned: None,
        files: Vec::new(),
        stats: BufferStats::default(),
        end: End::Error,
        error: None,
    };
    let mut retry = Retry::new(cfg.retry, Some(stop), "the producer");
    let mut go = |res: &mut BufferResult| -> Result<End> {
        let mut out = retry.run(|| {
            FileOutput::resume(
                &cfg.dir,
                &format!("{}.out", buf.name),
                cfg.max_size,
                cfg.max_files,
                f.header().channel_id,
                f.stats().bytes_consumed,
            )
        })?;
        let out: &mut dyn Output = &mut out;
        let rotate = cfg.max_size.is_some();
        // Kept up to date, so that a recording stopped by an error lists
        // its files too.
        res.files = out.files().to_vec();
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
        let mut kept = f.at_subbuf_boundary().then_some(out.size());
        let end = loop {
            f.set_complete_only(!tail);
            // One sub-buffer at a time (one write each), so that the last
            // boundary passed is known when a write fails (`kept`), and a
            // rotation never splits a record.
            let n = match f.sendfile_subbuf(out.file()) {
                Ok(n) => n,
                Err(e) => {
                    let path = out
                        .files()
                        .last()
                        .map_or(String::new(), |p| p.display().to_string());
                    match retry.write_failed(&path, &e) {
                        Some(AfterFull::Again) => continue,
                        Some(AfterFull::Stopped) => break End::Interrupted,
                        None => {}
                    }
                    // The library names the relay buffer it read from; the
                    // write that failed was to the output file.
                    let cause = match e {
                        relayfs::ReadError::Io { source, .. } => anyhow::Error::new(source),
                        e => anyhow::Error::new(e),
                    };
                    let cut = match kept {
                        Some(k) => out.cut_back(k)?,
                        None => 0,
                    };
                    res.bytes -= cut;
                    // SYNC POINT: Relaxed; a counter only shown.
                    progress.bytes.fetch_sub(cut, Ordering::Relaxed);
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
                if rotate {
                    retry.run(|| out.boundary())?;
                    res.files = out.files().to_vec();
                }
                kept = Some(out.size());
            }
            res.bytes += n;
            // SYNC POINT: Relaxed; a counter only shown.
            progress.bytes.fetch_add(n, Ordering::Relaxed);
            tail = false;
            if n > 0 {
                continue;
            }
            progress.lost.store(f.stats().lost(), Ordering::Relaxed);
            // SYNC POINT: Relaxed; a stop flag carrying no data.
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
        out.finish()?;
        res.files = out.files().to_vec();
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

/// A relay file of a kernel channel and the name of its output.
#[derive(Debug, Clone)]
pub(crate) struct KernelRelayBuffer {
    /// Relay file name, e.g. `trace0`.
    pub(crate) name: String,
    /// Output file name, e.g. `trace0.out` or `sda.blktrace.0`.
    pub(crate) out_name: String,
    /// The CPU whose buffer this is: the reader thread runs there, as
    /// blktrace's do, so that the kernel's wakeup stays on that CPU.
    pub(crate) cpu: Option<u64>,
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

/// The relay files `<base><N>` of a kernel channel directory, in CPU order,
/// as (name, path, CPU). Without `base`, the directory must hold exactly
/// one such set.
pub(crate) fn relay_files(dir: &Path, base: Option<&str>) -> Result<Vec<(String, PathBuf, u64)>> {
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
    let set_names = |sets: &std::collections::BTreeMap<String, _>| {
        sets.keys()
            .map(|k| format!("{k}N"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut files = match base {
        Some(b) => sets.remove(b).with_context(|| {
            format!(
                "no relay files {b}0, {b}1, ... in {}{}",
                dir.display(),
                if sets.is_empty() {
                    String::new()
                } else {
                    format!(" (there are: {})", set_names(&sets))
                }
            )
        })?,
        None => {
            if sets.len() > 1 {
                bail!(
                    "{} holds several sets of numbered files ({}): choose one with --base",
                    dir.display(),
                    set_names(&sets)
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

/// Bytes moved per `sendfile` call from a kernel relay file.
pub(crate) const CHUNK: u64 = 8 << 20;
/// Poll timeout while live: how late a partly filled sub-buffer may be
/// picked up (blktrace uses 500 ms, staprun 200 ms).
pub(crate) const LIVE_POLL: Duration = Duration::from_millis(200);
/// Poll timeout while draining at the end.
const DRAIN_POLL: Duration = Duration::from_millis(50);

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
pub(crate) struct Gate {
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
    pub(crate) fn leave(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.gone += 1;
        self.cv.notify_all();
    }

    /// Closes the gate and waits until each of `readers` threads is parked
    /// at it or gone. A reader in `poll` gets there when its poll returns
    /// (at most its timeout).
    pub(crate) fn close(&self, readers: usize) {
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
    pub(crate) fn open(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.closed = false;
        // SYNC POINT: Relaxed, under the mutex as in `close`.
        self.closed.store(false, Ordering::Relaxed);
        self.cv.notify_all();
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
    mut f: KernelRelayFile,
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
    let mut bytes = 0u64;
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
    let out: &mut dyn Output = &mut out;
    let mut go = || -> Result<End> {
        let mut empty_in_drain = 0;
        let mut closed = false;
        loop {
            gate.pass();
            let n = match f.sendfile(out.file(), CHUNK) {
                Ok(n) => n,
                Err(e) => match retry.write_failed(&b.name, &e) {
                    Some(AfterFull::Again) => continue,
                    Some(AfterFull::Stopped) => return Ok(End::Interrupted),
                    None => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "recording {} (nothing read was lost before this error)",
                            b.name
                        )))
                    }
                },
            };
            if n > 0 {
                bytes += n;
                out.wrote(n);
                // SYNC POINT: Relaxed; a counter only shown.
                progress.bytes.fetch_add(n, Ordering::Relaxed);
                empty_in_drain = 0;
                if n < CHUNK {
                    // Caught up with the kernel: a place between records.
                    out.boundary()?;
                }
                continue;
            }
            // SYNC POINT: Relaxed; a flag carrying no data (what the kernel
            // flushed is read through its own file).
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
            // SYNC POINT: Relaxed; a flag the waiting thread polls.
            failed.store(true, Ordering::Relaxed);
            (End::Error, Some(format!("{e:#}")))
        }
    };
    KernelFileResult {
        name: b.name,
        bytes,
        files: out.files().to_vec(),
        end,
        error,
        sendfile: f.sendfile_support(),
        empty_wakeups: f.empty_wakeups(),
    }
}
