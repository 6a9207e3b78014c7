//! The two kinds of source a recording reads, and how each buffer of one is
//! moved into its output (`output::Output`), whole sub-buffers at a time:
//!
//! - a relayfs buffer ([`RelayFile`]): found by [`find_buffers`], read as a
//!   [`RelaySource`] (poll, `sendfile` of one sub-buffer, the tail of a
//!   quiet producer, end of channel or a dead producer);
//! - a kernel relay file ([`KernelRelayFile`]): found by [`relay_files`],
//!   read as a [`KernelSource`] (timed poll, `sendfile` or the read+write
//!   fallback, `POLLERR` at close, a drain when told; [`Gate`] parks it
//!   while the kernel flushes).
//!
//! Both are a [`Source`], which the engine's one loop (`engine::pump`)
//! moves into an output.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relayfs::{KernelRelayFile, Ready, RelayFile};

use super::config::RecordConfig;
use super::report::End;
use crate::util::{self, ChannelScan};

/// How long a channel that has appeared may take to show all its buffers
/// (the producer creates them one after another).
const SETTLE: Duration = Duration::from_secs(5);

/// Waits for the channel and all its buffers: as many as the buffers'
/// headers say the channel has, all of one channel. Once the channel exists
/// (its directory; with `--wait`, its first buffer file), waits at most
/// [`SETTLE`], then returns what is there with the rest in `bad`.
///
/// With `--wait` and a duration (`-w`), a channel that has not appeared
/// when the duration is over ends the wait with an error: the recording
/// stops after the time it was given, channel or not.
pub(crate) fn find_buffers(dir: &Path, cfg: &RecordConfig) -> Result<ChannelScan> {
    let started = Instant::now();
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
        if let Some(d) = cfg.duration {
            if seen.is_none() && started.elapsed() >= d {
                bail!(
                    "channel {} did not appear within the recording's duration ({} s)",
                    dir.display(),
                    d.as_secs_f64()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a source does when nothing was ready to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idle {
    /// It waited (polled): try again.
    Again,
    /// The buffer's recording ended so.
    End(End),
}

/// What a failed write left of the data being moved, for the error to say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Undone {
    /// Bytes written of the sub-buffer being read that were cut off the
    /// output again.
    pub(crate) cut: u64,
    /// Bytes of the sub-buffer being read that stay in an output that
    /// can't be cut back.
    pub(crate) left: u64,
    /// Bytes read from the source (so consumed) that an output taking
    /// bytes did not take: lost.
    pub(crate) not_taken: u64,
}

/// A buffer to record, as the engine's loop (`engine::pump`) sees it.
pub(crate) trait Source {
    /// Moves what is ready next (one sub-buffer, or a chunk of a kernel
    /// relay file) into `out`; 0 if nothing was ready.
    fn move_into_fd(&mut self, out: &std::fs::File) -> Result<u64, relayfs::ReadError>;
    /// The most [`read_into`](Source::read_into) returns at once: the size
    /// of the buffer the loop reads into.
    fn unit(&self) -> usize;
    /// Reads what is ready next, the same unit as
    /// [`move_into_fd`](Source::move_into_fd) would move, into `buf` (of
    /// [`unit`](Source::unit) bytes), consuming it; 0 if nothing was ready.
    fn read_into(&mut self, buf: &mut [u8]) -> Result<usize, relayfs::ReadError>;
    /// After moving `n` bytes: whether the reader stands between records,
    /// where the output may switch files.
    fn at_boundary(&self, n: u64) -> bool;
    /// Whether a write that failed midway is undone by cutting the output
    /// back to the last boundary passed (see [`RelaySource`]).
    fn cuts_back(&self) -> bool;
    /// Nothing was ready: wait, or say how the recording ended.
    fn idle(&mut self) -> Result<Idle>;
    /// Records lost so far, for the status line, where the source knows.
    fn lost(&self) -> Option<u64>;
    /// Where a full output filesystem is reported (`path`: where the output
    /// puts the data, `Output::place`).
    fn full_place(&self, path: &str) -> String;
    /// The error for a failed write to `path` (`Output::place`), and what
    /// it left undone.
    fn write_error(&self, e: relayfs::ReadError, path: &str, undone: Undone) -> anyhow::Error;
}

/// A relayfs buffer being recorded.
pub(crate) struct RelaySource<'a> {
    pub(crate) f: RelayFile,
    stop: &'a AtomicBool,
    /// Whole sub-buffers only while the producer is busy: one large write
    /// each, and no chasing the producer record by record. The sub-buffer
    /// being written is taken too (`tail`) once a poll times out (the
    /// producer went quiet), when the channel ends, and before stopping.
    tail: bool,
    final_pass: bool,
    /// Bytes and records given up in a dead producer's last sub-buffer.
    pub(crate) abandoned: Option<(u64, u64)>,
}

impl<'a> RelaySource<'a> {
    /// `f`, read until its channel ends, its producer dies or `stop` is set.
    pub(crate) fn new(f: RelayFile, stop: &'a AtomicBool) -> RelaySource<'a> {
        RelaySource {
            f,
            stop,
            tail: false,
            final_pass: false,
            abandoned: None,
        }
    }
}

impl Source for RelaySource<'_> {
    fn move_into_fd(&mut self, out: &std::fs::File) -> Result<u64, relayfs::ReadError> {
        self.f.set_complete_only(!self.tail);
        // One sub-buffer at a time (one write each), so that the last
        // boundary passed is known when a write fails, and a rotation
        // never splits a record.
        let n = self.f.sendfile_subbuf(out)?;
        self.tail = false;
        Ok(n)
    }

    fn unit(&self) -> usize {
        usize::try_from(self.f.header().geometry.subbuf_size).unwrap_or(usize::MAX)
    }

    /// One sub-buffer (as `move_into_fd`): what `available` says is
    /// readable of the current sub-buffer, so that the read never runs on
    /// into the next one.
    fn read_into(&mut self, buf: &mut [u8]) -> Result<usize, relayfs::ReadError> {
        self.f.set_complete_only(!self.tail);
        // An empty read checks that the file was not truncated under the
        // reader before `available` looks into the mapping.
        self.f.read(&mut [])?;
        let want = usize::try_from(self.f.available()?).map_or(buf.len(), |a| a.min(buf.len()));
        let n = if want == 0 {
            0
        } else {
            self.f.read(&mut buf[..want])?
        };
        self.tail = false;
        Ok(n)
    }

    fn at_boundary(&self, _n: u64) -> bool {
        self.f.at_subbuf_boundary()
    }

    /// The buffer counts a sub-buffer's records when its reader finishes
    /// it, and one left half-read counts whole as unread at close; so on a
    /// write error the output is cut back to the last boundary, so that it
    /// holds exactly the records counted delivered.
    fn cuts_back(&self) -> bool {
        true
    }

    fn idle(&mut self) -> Result<Idle> {
        // SYNC POINT: Relaxed; a stop flag carrying no data.
        if self.stop.load(Ordering::Relaxed) || util::interrupted() {
            if !self.final_pass {
                self.final_pass = true;
                self.tail = true;
                return Ok(Idle::Again);
            }
            return Ok(Idle::End(End::Interrupted));
        }
        match self.f.poll(Some(Duration::from_millis(200)))? {
            Ready::Readable => {}
            Ready::Timeout => self.tail = true,
            // `is_eof` looks at the partial sub-buffer too.
            Ready::Closed => {
                if self.f.is_eof()? {
                    return Ok(Idle::End(End::Closed));
                }
                self.tail = true;
            }
            Ready::ProducerGone => {
                if self.f.is_eof()? {
                    self.abandoned = self.f.abandoned();
                    return Ok(Idle::End(End::ProducerGone));
                }
                self.tail = true;
            }
        }
        Ok(Idle::Again)
    }

    fn lost(&self) -> Option<u64> {
        Some(self.f.stats().lost())
    }

    fn full_place(&self, path: &str) -> String {
        path.to_string()
    }

    fn write_error(&self, e: relayfs::ReadError, path: &str, undone: Undone) -> anyhow::Error {
        // The library names the relay buffer it read from; the write that
        // failed was to the output.
        let cause = match e {
            relayfs::ReadError::Io { source, .. } => anyhow::Error::new(source),
            e => anyhow::Error::new(e),
        };
        let mut what = format!("cannot write {path}");
        if undone.cut > 0 {
            what += &format!(
                "; the {} bytes written of the sub-buffer being read were removed (the buffer counts that sub-buffer as not delivered)",
                undone.cut
            );
        }
        if undone.left > 0 {
            what += &format!(
                "; the {} bytes of the sub-buffer being read already in the output can't be removed (the buffer counts that sub-buffer as not delivered)",
                undone.left
            );
        }
        if undone.not_taken > 0 {
            // A read that finished its sub-buffer consumed it whole.
            what += &format!(
                "; the {} bytes read last were not taken and are lost ({})",
                undone.not_taken,
                if self.f.at_subbuf_boundary() {
                    "the buffer counts them delivered"
                } else {
                    "the buffer counts their sub-buffer as not delivered"
                }
            );
        }
        cause.context(what)
    }
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

/// A kernel relay file being recorded.
pub(crate) struct KernelSource<'a> {
    pub(crate) name: String,
    pub(crate) f: KernelRelayFile,
    drain: &'a AtomicBool,
    gate: &'a Gate,
    /// Polls in a row that found nothing while draining.
    empty_in_drain: u32,
    /// The kernel said the channel is closed (`POLLERR`).
    closed: bool,
}

impl<'a> KernelSource<'a> {
    /// Relay file `name`, read until the kernel closes the channel or, once
    /// `drain` is set, until nothing more comes; `gate` parks it for a flush.
    pub(crate) fn new(
        name: String,
        f: KernelRelayFile,
        drain: &'a AtomicBool,
        gate: &'a Gate,
    ) -> KernelSource<'a> {
        KernelSource {
            name,
            f,
            drain,
            gate,
            empty_in_drain: 0,
            closed: false,
        }
    }
}

impl Source for KernelSource<'_> {
    fn move_into_fd(&mut self, out: &std::fs::File) -> Result<u64, relayfs::ReadError> {
        self.gate.pass();
        let n = self.f.sendfile(out, CHUNK)?;
        if n > 0 {
            self.empty_in_drain = 0;
        }
        Ok(n)
    }

    fn unit(&self) -> usize {
        CHUNK as usize
    }

    fn read_into(&mut self, buf: &mut [u8]) -> Result<usize, relayfs::ReadError> {
        self.gate.pass();
        let n = self.f.read(buf)?;
        if n > 0 {
            self.empty_in_drain = 0;
        }
        Ok(n)
    }

    /// Caught up with the kernel (a read returned less than asked): a place
    /// between records, since record boundaries are the client's business.
    fn at_boundary(&self, n: u64) -> bool {
        n < CHUNK
    }

    /// The reader keeps what it read but could not write and writes that
    /// first next time (the kernel's read consumed it): nothing to cut.
    fn cuts_back(&self) -> bool {
        false
    }

    fn idle(&mut self) -> Result<Idle> {
        // SYNC POINT: Relaxed; a flag carrying no data (what the kernel
        // flushed is read through its own file).
        if self.drain.load(Ordering::Relaxed) {
            // Stopping: the producer side is flushed; read until two polls
            // in a row find nothing.
            self.empty_in_drain += 1;
            if self.empty_in_drain >= 2 {
                return Ok(Idle::End(End::Stopped));
            }
            self.f.poll(Some(DRAIN_POLL))?;
            return Ok(Idle::Again);
        }
        if self.closed {
            // Everything after POLLERR is read.
            return Ok(Idle::End(End::Closed));
        }
        match self.f.poll(Some(LIVE_POLL))? {
            // POLLERR: the channel was closed; read what is left.
            Ready::Closed => self.closed = true,
            Ready::Readable | Ready::Timeout | Ready::ProducerGone => {}
        }
        Ok(Idle::Again)
    }

    /// The kernel's losses are in the channel's `dropped` file, which the
    /// recording reads.
    fn lost(&self) -> Option<u64> {
        None
    }

    fn full_place(&self, _path: &str) -> String {
        self.name.clone()
    }

    fn write_error(&self, e: relayfs::ReadError, _path: &str, undone: Undone) -> anyhow::Error {
        anyhow::Error::new(e).context(if undone.not_taken > 0 {
            format!(
                "recording {} (the {} bytes read last were not taken by the output and are lost)",
                self.name, undone.not_taken
            )
        } else {
            format!(
                "recording {} (nothing read was lost before this error)",
                self.name
            )
        })
    }
}
