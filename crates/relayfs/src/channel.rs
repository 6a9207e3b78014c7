//! The producer's side: a channel (the kernel's `struct rchan`) of one buffer
//! per possible CPU, or one global buffer, and the client API that writes
//! into it: `relay_open`, `relay_write`, `relay_reserve`, `relay_flush`,
//! `relay_reset`, `relay_subbufs_consumed`, `relay_close`.

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::buffer::{BufferStats, Hooks, Mapped, Reserved, Shared, SwitchInfo};
use crate::callbacks::{BufferInfo, Callbacks, DefaultCallbacks, Mode};
use crate::dir::{ChannelDir, CreatedDir};
use crate::error::{OpenError, WriteError};
use crate::layout::{
    hdr, rdr, Geometry, LEFT_DIR, LEFT_FOR_READER, OPENING_CLOSING, OPENING_COUNT, STATE_CLOSED,
};
use crate::lifecycle::{self, BufferFiles, BufferSpec, DirSpec, NewBuffer};
pub use crate::lifecycle::{relay_dir, Stale, DEFAULT_RELAY_DIR, RELAYFS_DIR_ENV};
use crate::notify::Notifier;
use crate::shm::{self, ProducerMap};
use crate::sync::Ordering;

/// Default sub-buffer size: 1 MiB.
pub const DEFAULT_SUBBUF_SIZE: u64 = 1 << 20;
/// Default number of sub-buffers: 16 (16 MiB per CPU).
pub const DEFAULT_N_SUBBUFS: u64 = 16;

/// Builder for a [`Channel`] (the arguments of `relay_open`).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// use relayfs::Channel;
/// let chan = Channel::builder("example")
///     .dir(dir.path())
///     .subbuf_size(4096)
///     .n_subbufs(4)
///     .open()?;
/// chan.write(b"hello")?;
/// chan.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ChannelBuilder {
    name: String,
    base: String,
    dir: Option<PathBuf>,
    root: Option<PathBuf>,
    subbuf_size: u64,
    n_subbufs: u64,
    hdr_reserve: u64,
    mode: u32,
    stale: Stale,
    global: bool,
    flush_interval: Option<Duration>,
    callbacks: Arc<dyn Callbacks>,
    rseq: bool,
}

impl std::fmt::Debug for ChannelBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelBuilder")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("dir", &self.dir)
            .field("subbuf_size", &self.subbuf_size)
            .field("n_subbufs", &self.n_subbufs)
            .finish_non_exhaustive()
    }
}

impl ChannelBuilder {
    /// A channel called `name`: its buffers go to `<relay dir>/<name>/cpuN`.
    pub fn new(name: &str) -> ChannelBuilder {
        ChannelBuilder {
            name: name.to_string(),
            base: "cpu".to_string(),
            dir: None,
            root: None,
            subbuf_size: DEFAULT_SUBBUF_SIZE,
            n_subbufs: DEFAULT_N_SUBBUFS,
            hdr_reserve: 0,
            mode: 0o600,
            stale: Stale::Replace,
            global: false,
            flush_interval: None,
            callbacks: Arc::new(DefaultCallbacks),
            rseq: true,
        }
    }

    /// Base name of the buffer files (`base_filename`; default `cpu`, giving
    /// `cpu0`, `cpu1`, …).
    pub fn base(mut self, base: &str) -> Self {
        self.base = base.to_string();
        self
    }

    /// The directory to put the buffer files in (the kernel's `parent`),
    /// instead of `<relay dir>/<name>`. It must exist, must not be a
    /// symbolic link, must belong to us (or root) and, if others may write
    /// to it, be sticky. It is never removed.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// The relay directory to make the channel directory in, instead of
    /// [`relay_dir()`] (`$RELAYFS_DIR` or `/dev/shm/relayfs`).
    pub fn relay_dir(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// Sub-buffer size in bytes: a power of two from 64 bytes to 1 GiB
    /// (default 1 MiB).
    pub fn subbuf_size(mut self, size: u64) -> Self {
        self.subbuf_size = size;
        self
    }

    /// Number of sub-buffers per buffer (default 16).
    pub fn n_subbufs(mut self, n: u64) -> Self {
        self.n_subbufs = n;
        self
    }

    /// Bytes reserved at the start of every sub-buffer for a header that
    /// [`Callbacks::subbuf_header`] fills in (`subbuf_start_reserve`).
    pub fn subbuf_start_reserve(mut self, len: u64) -> Self {
        self.hdr_reserve = len;
        self
    }

    /// The client's callbacks (default [`DefaultCallbacks`]).
    pub fn callbacks(mut self, cb: impl Callbacks) -> Self {
        self.callbacks = Arc::new(cb);
        self
    }

    /// Shorthand for the ready-made callbacks of a mode.
    pub fn mode(self, mode: Mode) -> Self {
        match mode {
            Mode::NoOverwrite => self.callbacks(DefaultCallbacks),
            Mode::Overwrite => self.callbacks(crate::OverwriteCallbacks),
        }
    }

    /// File mode of the buffer files (default 0600; 0640 lets the file's
    /// group read, and gives the channel directory 0750). World-writable and
    /// execute bits are always cleared.
    pub fn file_mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o774;
        self
    }

    /// Whether writes may reserve with a restartable sequence on the
    /// writer's CPU instead of a locked compare-and-swap (default `true`;
    /// used only where the system supports it: see
    /// [`Channel::uses_rseq`]). `false` keeps the compare-and-swap, e.g. to
    /// compare the two in one process.
    pub fn rseq(mut self, rseq: bool) -> Self {
        self.rseq = rseq;
        self
    }

    /// One buffer for all CPUs (the kernel's `is_global`).
    pub fn global(mut self, global: bool) -> Self {
        self.global = global;
        self
    }

    /// What to do with files left by a producer that is gone.
    pub fn stale(mut self, stale: Stale) -> Self {
        self.stale = stale;
        self
    }

    /// Flush every buffer at this interval, so that a reader never waits
    /// longer than that for a partly filled sub-buffer (a background thread;
    /// writers are not involved).
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = Some(every);
        self
    }

    /// Creates the channel (`relay_open`).
    ///
    /// # Errors
    /// [`OpenError`]: a bad argument, a live producer on the same channel,
    /// stale files with [`Stale::Refuse`], no space, or a file system error.
    pub fn open(self) -> Result<Channel, OpenError> {
        lifecycle::check_name(&self.base)?;
        let g = Geometry::new(
            self.subbuf_size,
            self.n_subbufs,
            self.hdr_reserve,
            shm::page_size().max(4096),
        )?;
        let (dir, created) = lifecycle::open_dir(&DirSpec {
            dir: self.dir.as_deref(),
            root: self.root.as_deref(),
            name: &self.name,
            file_mode: self.mode,
        })?;
        let spec = BufferSpec {
            base: &self.base,
            geometry: g,
            file_mode: self.mode,
            stale: self.stale,
            global: self.global,
            callbacks: &*self.callbacks,
        };
        match lifecycle::create_buffers(&dir, &spec) {
            Ok(made) => {
                let inner = Arc::new(Inner {
                    bufs: made
                        .bufs
                        .into_iter()
                        .map(|b| Buffer::new(b, self.rseq, self.callbacks.clone()))
                        .collect(),
                    global: made.global,
                    ncpu: made.ncpu,
                    max_record: g.max_record(),
                    callbacks: self.callbacks.clone(),
                    dir,
                    created,
                    base: self.base.clone(),
                    geometry: g,
                    closed: AtomicBool::new(false),
                    flush_lock: Mutex::new(()),
                    pid: std::process::id(),
                    forks: forks_so_far(),
                });
                let flusher = self
                    .flush_interval
                    .map(|every| Flusher::start(inner.clone(), every));
                Ok(Channel {
                    inner,
                    flusher: Mutex::new(flusher),
                    closed_with: Mutex::new(None),
                })
            }
            Err(e) => {
                if let Some(c) = created {
                    c.remove();
                }
                Err(e)
            }
        }
    }
}

/// One buffer of a channel, producer side.
struct Buffer {
    map: Mapped<ProducerMap>,
    /// The channel's callbacks (the same for every buffer), kept here so
    /// that a buffer is its own `Hooks` and a write builds nothing to pass
    /// them.
    cb: Arc<dyn Callbacks>,
    /// Its names in the channel directory, removed at close.
    files: BufferFiles,
    info: BufferInfo,
    /// The producer's end of the wakeup FIFO; taken (closed) at close, so
    /// that readers see `POLLHUP`. Only `close` locks it: writers wake the
    /// reader through `wake_fd` under `wake_state`, without a lock, so a
    /// write never blocks (a signal handler's write that interrupted one of
    /// its thread's wakeups would otherwise deadlock on this lock).
    notifier: Mutex<Option<Notifier>>,
    /// The FIFO's descriptor, for writers: valid until `close` has seen
    /// `wake_state` with `WAKE_CLOSED` set and no wakeup in flight.
    wake_fd: std::os::fd::RawFd,
    /// Wakeups in flight (low bits), and `WAKE_CLOSED` once `close` began
    /// to let go of the FIFO: a wakeup that finds it set writes nothing.
    wake_state: StdAtomicU64,
    /// Last `MAPPED` count seen, to tell `buf_mapped` from `buf_unmapped`.
    mapped_seen: StdAtomicU64,
    /// Set by `close`: writes are refused from then on.
    closed: AtomicBool,
    /// Records refused because the channel was closed.
    dropped_closed: StdAtomicU64,
    /// Set by `close` once it has counted what no reader will read (no
    /// reader attached): from then on, a write that was still in flight
    /// (close waits for those only so long) and completes a sub-buffer
    /// counts that sub-buffer's records unread too.
    late: AtomicBool,
    /// `records_completed` when `close` began counting: only records
    /// completed after that can be counted late. Its lock serialises the
    /// late counting with `close`'s.
    late_base: Mutex<u64>,
}

/// `Buffer::wake_state`'s bit: `close` is letting go of the FIFO.
const WAKE_CLOSED: u64 = 1 << 63;

impl Buffer {
    /// Wakes the reader a last time and closes the producer's end of the
    /// FIFO (readers then see `POLLHUP`), once no writer's wakeup is in
    /// flight: a wakeup that began before must not write to a descriptor
    /// that was closed (and maybe reused for another file) meanwhile.
    /// Should one still be in flight after a second (a writer stopped in
    /// it, or this thread's own, interrupted by the signal handler that
    /// called `close`), the descriptor is left open rather than risk that.
    fn release_fifo(&self) {
        // SYNC POINT: SeqCst, the Dekker pair with `wake_reader`.
        self.wake_state.fetch_or(WAKE_CLOSED, StdOrdering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(1);
        // SYNC POINT: Acquire pairs with `wake_reader`'s Release decrement.
        while self.wake_state.load(StdOrdering::Acquire) & !WAKE_CLOSED != 0 {
            if Instant::now() >= deadline {
                if let Ok(mut n) = self.notifier.lock() {
                    if let Some(n) = n.take() {
                        n.wake();
                        std::mem::forget(n);
                    }
                }
                return;
            }
            std::thread::yield_now();
        }
        if let Ok(mut n) = self.notifier.lock() {
            if let Some(n) = n.take() {
                n.wake();
            } // dropping the FIFO: readers see POLLHUP
        }
    }

    fn new(b: NewBuffer, rseq: bool, cb: Arc<dyn Callbacks>) -> Buffer {
        #[allow(unused_mut)]
        let mut map = b.map;
        // Before any writer can use the buffer: from here on `head` is moved
        // by one mode only (see `Shared::pin_to`).
        #[cfg(all(
            target_arch = "x86_64",
            target_os = "linux",
            target_env = "gnu",
            not(loom)
        ))]
        if rseq && !b.info.global {
            map.shared.pin_to(b.info.cpu as u64);
        }
        #[cfg(not(all(
            target_arch = "x86_64",
            target_os = "linux",
            target_env = "gnu",
            not(loom)
        )))]
        let _ = rseq;
        Buffer {
            map,
            cb,
            files: b.files,
            info: b.info,
            wake_fd: b.notifier.raw_fd(),
            notifier: Mutex::new(Some(b.notifier)),
            wake_state: StdAtomicU64::new(0),
            mapped_seen: StdAtomicU64::new(0),
            closed: AtomicBool::new(false),
            dropped_closed: StdAtomicU64::new(0),
            late: AtomicBool::new(false),
            late_base: Mutex::new(0),
        }
    }

    #[inline(always)]
    fn shared(&self) -> &Shared {
        &self.map.shared
    }

    /// The count of switches in flight and the close bit (`hdr::OPENING`).
    fn opening_word(&self) -> &crate::sync::AtomicU64 {
        self.shared().header_word(hdr::OPENING)
    }

    /// Whether the producer's close has not begun, looked at again after
    /// `subbuf_start`, which may have taken long: a switch whose callback
    /// outlasted close's wait for it (a process stopped there) is refused
    /// rather than opening a sub-buffer close has stopped looking at.
    fn still_open(&self) -> bool {
        // SYNC POINT: Acquire pairs with close's `fetch_or` (SeqCst, so a
        // release): nothing is read on its strength; a switch that misses
        // the bit here is counted all the same, and close waits for it.
        self.opening_word().load(Ordering::Acquire) & OPENING_CLOSING == 0
    }

    /// Whether `close` began: then writes are refused.
    #[inline(always)]
    fn is_closed(&self) -> bool {
        // SYNC POINT: Relaxed: a hint that turns writes away early; nothing
        // is read on its strength. The writes that miss it are those racing
        // the close, which `Inner::settle` waits out (and `may_open` checks
        // it again at every sub-buffer switch).
        self.closed.load(StdOrdering::Relaxed)
    }

    /// Counts a record refused because the channel is closed.
    #[cold]
    fn drop_closed(&self) -> WriteError {
        // SYNC POINT: Relaxed: a counter; `close` and `stats` read it after
        // the writers it counts are done or as a snapshot.
        self.dropped_closed.fetch_add(1, StdOrdering::Relaxed);
        WriteError::Closed
    }

    /// After a commit: if `close` has already counted this buffer's unread
    /// records, no reader can ever read what this commit completed (close
    /// took the reader lock and moved the reader's position past it), so
    /// count it unread now; otherwise it would be written but neither read
    /// nor lost.
    #[inline(always)]
    /// Called (through `Hooks::completed`) by a commit that completed a
    /// sub-buffer, not by every commit: only a completion adds records that
    /// close may have to count late.
    fn after_commit(&self) {
        // SYNC POINT: Relaxed, a Dekker pair with `Inner::close`: a commit
        // that completes a sub-buffer adds to `records_completed`, then
        // passes the SeqCst fence in `Shared::complete`, then loads `late`;
        // close stores `late`, fences (SeqCst) and then loads the counters
        // in `count_late`. One of the two sees the other's store, so the
        // records are counted by one of them (by both is harmless:
        // `count_late` only brings the count up to what is missing).
        if self.late.load(StdOrdering::Relaxed) {
            self.count_late();
        }
    }

    /// Brings `unread_at_close` up to what the completed records are missing
    /// (no reader is attached or can attach any more, and nothing can be
    /// overwritten after close: every completed record not consumed,
    /// overwritten or discarded is unread), adding no more than the records
    /// completed since `close` began counting: the consumed and discarded
    /// counts are the reader page's, which a hostile reader may have
    /// scribbled, so they can't make the producer count more than that.
    #[cold]
    #[inline(never)]
    fn count_late(&self) {
        let base = self
            .late_base
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = self.shared().stats();
        let accounted = s
            .records_consumed
            .saturating_add(s.overwritten_records)
            .saturating_add(s.discarded_records)
            .saturating_add(s.unread_at_close);
        let missing = s
            .records_completed
            .saturating_sub(accounted)
            .min(s.records_completed.saturating_sub(*base));
        if missing > 0 {
            // SYNC POINT: Relaxed: a counter, as in `count_unread_at_close`;
            // its updates are serialised by `late_base`'s lock.
            self.shared()
                .header_word(hdr::UNREAD_AT_CLOSE)
                .fetch_add(missing, Ordering::Relaxed);
        }
    }

    /// The buffer's counters, with the producer's own count of records
    /// refused after close.
    fn stats(&self) -> BufferStats {
        let mut s = self.shared().stats();
        // SYNC POINT: Relaxed: a snapshot, like the shared counters.
        s.dropped_closed = self.dropped_closed.load(StdOrdering::Relaxed);
        s
    }
}

/// The hooks the buffer protocol calls, bound to one buffer.
impl Hooks for Buffer {
    fn may_open(&self, info: &SwitchInfo) -> bool {
        !self.is_closed() && self.cb.subbuf_start(&self.info, info) && self.still_open()
    }

    fn write_header(&self, info: &SwitchInfo, header: &mut [u8]) {
        self.cb.subbuf_header(&self.info, info, header)
    }

    fn wake_reader(&self) {
        // SYNC POINT: SeqCst, a Dekker pair with `Buffer::release_fifo`:
        // either our increment comes first in the single total order and
        // close waits for our decrement before it closes the descriptor,
        // or we see `WAKE_CLOSED` and write nothing. No lock: a write from
        // a signal handler may interrupt this very call.
        let before = self.wake_state.fetch_add(1, StdOrdering::SeqCst);
        if before & WAKE_CLOSED == 0 {
            crate::notify::wake_fd(self.wake_fd);
        }
        // SYNC POINT: Release pairs with `release_fifo`'s Acquire load: our
        // write is done before the descriptor is closed.
        self.wake_state.fetch_sub(1, StdOrdering::Release);
    }

    fn completed(&self) {
        self.after_commit();
    }

    fn begin_open(&self) -> bool {
        // The switches in flight are counted in the buffer's shared header
        // (`hdr::OPENING`), not in this process: a child forked from the
        // producer writes the same buffer with its own copy of everything
        // else, and its switch must be seen by the producer's close too.
        // SYNC POINT: SeqCst RMW (AcqRel would do), against close's
        // `fetch_or` of `OPENING_CLOSING` (`Inner::close`) on the same word:
        // the RMWs of one word are totally ordered. Either our increment
        // comes first, and close's loads of the word (`settle`) see us
        // counted until our decrement, after our move of `head` (then it
        // flushes what we opened and waits for our commit); or close's
        // comes first, and we see the bit here and refuse. Any process's
        // switch, the producer's threads' and forked children's alike.
        let before = self.opening_word().fetch_add(1, Ordering::SeqCst);
        if before & OPENING_CLOSING != 0 {
            self.end_open();
            // A forked child's copy of `closed` is its own, which the
            // producer's close never sets: from now on this process refuses
            // writes as closed too (`is_closed`), before they reserve.
            // SYNC POINT: Relaxed, a hint, as `is_closed` says.
            self.closed.store(true, StdOrdering::Relaxed);
            return false;
        }
        true
    }

    fn end_open(&self) {
        // SYNC POINT: Release pairs with `settle`'s Acquire load of the
        // word: our move of `head` comes before (settle then sees it and
        // flushes what we opened). A word scribbled meanwhile only makes
        // close's wait (bounded) shorter or longer.
        self.opening_word().fetch_sub(1, Ordering::Release);
    }

    fn map_changed(&self, mapped: u64) {
        // SYNC POINT: Relaxed: pairs with nothing. The value is only compared
        // with the next one seen (each swap reads the one before it, whatever
        // the ordering); the reader's mapping count itself is read by
        // `Shared::check_map_events`.
        let before = self.mapped_seen.swap(mapped, StdOrdering::Relaxed);
        if mapped > before {
            self.cb.buf_mapped(&self.info, mapped);
        } else if mapped < before {
            self.cb.buf_unmapped(&self.info, mapped);
        }
    }
}

/// What a channel is, shared between its handle and its flush thread.
struct Inner {
    /// One buffer per possible CPU (index = CPU), or the one global buffer.
    bufs: Vec<Buffer>,
    /// One buffer for all CPUs: every write goes to `bufs[0]`.
    global: bool,
    /// Possible CPUs when the channel was opened (`bufs.len()` unless
    /// global).
    ncpu: usize,
    /// Largest record: a sub-buffer less its header reserve.
    max_record: u64,
    /// The client's callbacks (`struct rchan_callbacks`).
    callbacks: Arc<dyn Callbacks>,
    /// The directory holding the buffer files, opened once; every file
    /// operation is relative to it.
    dir: ChannelDir,
    /// The channel directory, if this `relay_open` made it: removed at
    /// close if it is empty then.
    created: Option<CreatedDir>,
    /// Base name of the buffer files (`cpu` for `cpu0`, `cpu1`, …).
    base: String,
    /// The shape every buffer of the channel has.
    geometry: Geometry,
    /// Set by the first `close`: later ones (and `Drop`) do nothing.
    closed: AtomicBool,
    /// Serialises flushes (the flush thread, `flush`, `reset`, `close`):
    /// one closer of a sub-buffer at a time.
    flush_lock: Mutex<()>,
    /// The process that opened the channel: only it closes it. A child
    /// made by `fork` has a copy of this value and of every lock above as
    /// they were at the fork, held perhaps by a thread it does not have.
    pid: u32,
    /// `forks_so_far()` when the channel was opened: a pid alone can be the
    /// opener's in a child too (pid 1 of a new pid namespace, or a pid
    /// reused once the opener died).
    forks: u64,
}

/// Children made by `fork` in this process's line since the channel code
/// first ran: its copy in a child counts that child's own fork.
static FORKS: StdAtomicU64 = StdAtomicU64::new(0);

/// The `pthread_atfork` child handler: one more fork behind this process.
extern "C" fn count_fork() {
    // SYNC POINT: Relaxed: the child is single-threaded when it runs.
    FORKS.fetch_add(1, StdOrdering::Relaxed);
}

/// The forks behind this process so far (registering the handler that
/// counts them the first time, before any channel records the count).
fn forks_so_far() -> u64 {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `count_fork` is an `extern "C" fn()` that never unwinds
        // (one atomic add). Should registering fail, the pid still tells
        // forked children apart in every ordinary case.
        let _ = unsafe { libc::pthread_atfork(None, None, Some(count_fork)) };
    });
    // SYNC POINT: Relaxed: only this process's own (or its forking
    // ancestor's, copied) stores are ever compared.
    FORKS.load(StdOrdering::Relaxed)
}

thread_local! {
    /// The channels (`Inner` addresses) whose `flush_lock` this thread
    /// holds, innermost last.
    static FLUSHING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `Inner::flush_lock` held by this thread (`Inner::lock_flush`).
struct FlushGuard<'a> {
    _g: Option<std::sync::MutexGuard<'a, ()>>,
    me: usize,
}

impl Drop for FlushGuard<'_> {
    fn drop(&mut self) {
        if self._g.is_some() {
            FLUSHING.with(|f| {
                let mut f = f.borrow_mut();
                if let Some(i) = f.iter().rposition(|&p| p == self.me) {
                    f.remove(i);
                }
            });
        }
    }
}

impl Inner {
    /// Takes `flush_lock`, unless this thread holds it already: a callback
    /// run by a flush (`buf_mapped`, `buf_unmapped` from the switch path
    /// `flush` takes) that flushes the channel again goes on under the
    /// outer flush's hold of the lock instead of waiting for itself
    /// forever. A nested flush is just one more closer: the CAS of `head`
    /// decides who closes a sub-buffer, as it does against writers.
    fn lock_flush(&self) -> FlushGuard<'_> {
        let me = self as *const Inner as usize;
        // In a forked child the lock may be held by a thread that was not
        // copied (the flush thread, at the fork): waiting would be forever.
        // The lock is not needed for correctness (the CAS of `head`
        // decides who closes, as a nested flush relies on, and the
        // parent's flushes run beside the child's in any case), only to
        // keep one process's closers in line.
        if !self.in_creator() || FLUSHING.with(|f| f.borrow().contains(&me)) {
            return FlushGuard { _g: None, me };
        }
        let g = self
            .flush_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        FLUSHING.with(|f| f.borrow_mut().push(me));
        FlushGuard { _g: Some(g), me }
    }

    /// Whether this is the process that opened the channel (not a child
    /// forked from it).
    fn in_creator(&self) -> bool {
        // SYNC POINT: Relaxed, as in `forks_so_far`.
        std::process::id() == self.pid && FORKS.load(StdOrdering::Relaxed) == self.forks
    }

    fn flush(&self) {
        let _g = self.lock_flush();
        for b in &self.bufs {
            b.shared().flush(b);
        }
    }
}

/// The periodic flush thread (`flush_interval`).
struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    fn start(inner: Arc<Inner>, every: Duration) -> Flusher {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("relayfs-flush".into())
            .spawn(move || {
                let (lock, cv) = &*s2;
                let Ok(mut stopped) = lock.lock() else { return };
                while !*stopped {
                    match cv.wait_timeout(stopped, every) {
                        Ok((g, _)) => stopped = g,
                        Err(_) => return,
                    }
                    if !*stopped {
                        inner.flush();
                    }
                }
            })
            .ok();
        Flusher { stop, thread }
    }

    fn stop(&mut self) {
        if let Ok(mut s) = self.stop.0.lock() {
            *s = true;
        }
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A relay channel: one buffer per possible CPU (or one global buffer), each
/// a relay file that readers in other processes open with
/// [`RelayFile`](crate::RelayFile).
///
/// `Channel` is `Sync`: share it (`&Channel`, `Arc<Channel>`) between any
/// number of writer threads. A write goes to the buffer of the CPU the thread
/// runs on.
pub struct Channel {
    inner: Arc<Inner>,
    flusher: Mutex<Option<Flusher>>,
    /// What the first `close` returned: later calls return it again.
    closed_with: Mutex<Option<Result<BufferStats, (std::io::ErrorKind, String)>>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("dir", &self.inner.dir.path())
            .field("base", &self.inner.base)
            .field("buffers", &self.inner.bufs.len())
            .field("geometry", &self.inner.geometry)
            .finish()
    }
}

/// A slot reserved in a buffer (`relay_reserve`): fill it in place through
/// `Deref<Target = [u8]>`, then [`commit`](Reservation::commit) it or drop it
/// (which commits too). Readers see it only once committed.
///
/// The bytes start out as whatever the buffer held before: write all of them.
pub struct Reservation<'a> {
    buf: &'a Buffer,
    r: Reserved,
    len: usize,
}

impl std::fmt::Debug for Reservation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("cpu", &self.buf.info.cpu)
            .field("len", &self.len)
            .finish()
    }
}

impl Reservation<'_> {
    /// Commits the record: it becomes visible to readers once its whole
    /// sub-buffer is complete.
    #[inline]
    pub fn commit(self) {
        // Drop commits.
    }

    /// The CPU whose buffer holds the reservation.
    pub fn cpu(&self) -> usize {
        self.buf.info.cpu
    }
}

impl std::ops::Deref for Reservation<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: the reservation's `len` bytes at `r.pos` lie within one
        // sub-buffer, are handed to this reservation alone by the protocol,
        // and stay mapped while the channel (borrowed by `'a`) lives.
        unsafe { std::slice::from_raw_parts(self.buf.shared().data_ptr(self.r.pos), self.len) }
    }
}

impl std::ops::DerefMut for Reservation<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.buf.shared().data_ptr(self.r.pos), self.len) }
    }
}

impl Drop for Reservation<'_> {
    #[inline]
    fn drop(&mut self) {
        self.buf.shared().commit(self.r, self.buf);
    }
}

impl Channel {
    /// Starts building a channel called `name`.
    pub fn builder(name: &str) -> ChannelBuilder {
        ChannelBuilder::new(name)
    }

    #[inline(always)]
    fn current(&self) -> &Buffer {
        let inner = &*self.inner;
        if inner.global {
            return &inner.bufs[0];
        }
        let cpu = crate::cpu::current_cpu();
        // A CPU beyond the possible ones can't happen; if it does, wrap.
        inner
            .bufs
            .get(cpu)
            .unwrap_or_else(|| &inner.bufs[cpu % inner.bufs.len()])
    }

    /// Writes one record into the buffer of the current CPU (`relay_write`).
    /// An empty record is a no-op.
    ///
    /// # Errors
    /// [`WriteError::Full`] (no-overwrite mode, buffer full) or
    /// [`WriteError::TooBig`]; either way the record is counted as dropped.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let chan = relayfs::Channel::builder("w").dir(dir.path()).subbuf_size(4096).n_subbufs(2).open()?;
    /// chan.write(&[1, 2, 3])?;
    /// assert_eq!(chan.write(&[0; 5000]), Err(relayfs::WriteError::TooBig(5000)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn write(&self, data: &[u8]) -> Result<(), WriteError> {
        let buf = self.current();
        self.write_to(buf, data)
    }

    /// Writes one record into the buffer of `cpu` (`__relay_write` with an
    /// explicit buffer), e.g. for a writer that pins itself.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    ///
    /// # Panics
    /// If `cpu` is not a buffer of this channel.
    pub fn write_cpu(&self, cpu: usize, data: &[u8]) -> Result<(), WriteError> {
        let buf = &self.inner.bufs[cpu];
        if !buf.shared().pinned() || crate::cpu::current_cpu() == cpu {
            return self.write_to(buf, data);
        }
        // Another CPU's pinned buffer: the reservation and the commit are
        // both remote accesses; hold the buffer's mark across the two, so
        // that its CPU is fenced once (`crate::rseq::Pin::hold`).
        let _held = buf.shared().hold();
        self.write_to(buf, data)
    }

    #[inline(always)]
    fn write_to(&self, buf: &Buffer, data: &[u8]) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        self.write_parts(buf, data, || [0u8; 0])
    }

    /// Writes one record made of a head of `H` bytes, then `body`, into the
    /// buffer of the current CPU: one reservation, two copies, as cheap as
    /// [`write`](Self::write). `head` is called once the slot is reserved
    /// (a framed record's timestamp is taken there). For the framed records
    /// of [`crate::frame`].
    #[inline(always)]
    pub(crate) fn write_with_head<const H: usize>(
        &self,
        body: &[u8],
        head: impl FnOnce() -> [u8; H],
    ) -> Result<(), WriteError> {
        self.write_parts(self.current(), body, head)
    }

    #[inline(always)]
    fn write_parts<const H: usize>(
        &self,
        buf: &Buffer,
        body: &[u8],
        head: impl FnOnce() -> [u8; H],
    ) -> Result<(), WriteError> {
        let total = H + body.len();
        if buf.is_closed() {
            return Err(buf.drop_closed());
        }
        if total as u64 > self.inner.max_record {
            return Err(buf.shared().drop_toobig(total));
        }
        let Some(r) = buf.shared().reserve_fast(total as u64) else {
            return Self::write_parts_slow(buf, body, head);
        };
        Self::fill_and_commit(buf, r, body, head);
        Ok(())
    }

    /// `write_parts` where the fast path can't reserve (a sub-buffer
    /// switch, a full buffer, a lost race): out of line, so that the fast
    /// path keeps its reservation in registers.
    #[cold]
    #[inline(never)]
    fn write_parts_slow<const H: usize>(
        buf: &Buffer,
        body: &[u8],
        head: impl FnOnce() -> [u8; H],
    ) -> Result<(), WriteError> {
        let r = buf.shared().reserve((H + body.len()) as u64, buf)?;
        Self::fill_and_commit(buf, r, body, head);
        Ok(())
    }

    /// Copies the record into its reservation and commits it.
    #[inline(always)]
    fn fill_and_commit<const H: usize>(
        buf: &Buffer,
        r: crate::buffer::Reserved,
        body: &[u8],
        head: impl FnOnce() -> [u8; H],
    ) {
        if H > 0 {
            buf.shared().write_parts_at(r.pos, &head(), body);
        } else {
            buf.shared().write_at(r.pos, body);
        }
        buf.shared().commit(r, buf);
    }

    /// Reserves `len` bytes for one record in the current CPU's buffer
    /// (`relay_reserve`), to be filled in place.
    ///
    /// # Errors
    /// As [`write`](Self::write); `len == 0` is refused as `TooBig(0)`
    /// without being counted.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let chan = relayfs::Channel::builder("r").dir(dir.path()).subbuf_size(4096).n_subbufs(2).open()?;
    /// let mut slot = chan.reserve(8)?;
    /// slot.copy_from_slice(&42u64.to_le_bytes());
    /// slot.commit();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn reserve(&self, len: usize) -> Result<Reservation<'_>, WriteError> {
        let buf = self.current();
        if len == 0 {
            return Err(WriteError::TooBig(0));
        }
        if buf.is_closed() {
            return Err(buf.drop_closed());
        }
        if len as u64 > self.inner.max_record {
            return Err(buf.shared().drop_toobig(len));
        }
        let r = buf.shared().reserve(len as u64, buf)?;
        Ok(Reservation { buf, r, len })
    }

    /// Whether this channel's writes reserve with a restartable sequence on
    /// the writer's CPU instead of a locked compare-and-swap (see
    /// `docs/DESIGN.md`, "The write position as a restartable sequence").
    /// False for a global buffer, on other architectures than x86-64
    /// Linux with glibc, where glibc registered no rseq area (before 2.35,
    /// or `GLIBC_TUNABLES=glibc.pthread.rseq=0`), where the kernel lacks
    /// `membarrier`'s expedited rseq command, or with `RELAYFS_RSEQ=0` in
    /// the environment.
    pub fn uses_rseq(&self) -> bool {
        self.inner.bufs.iter().any(|b| b.shared().pinned())
    }

    /// Closes the current sub-buffer of every buffer so that readers can read
    /// it (`relay_flush`).
    pub fn flush(&self) {
        self.inner.flush();
    }

    /// Resets every buffer to its initial state without reallocating or
    /// unmapping (`relay_reset`). `&mut self` guarantees that no write or
    /// reservation is in progress; readers start over from the beginning.
    ///
    /// In a process forked from the one that opened the channel it does
    /// nothing: `&mut self` says nothing of the creator's writers, and the
    /// buffers (with their counters) are the creator's, as for `close`.
    ///
    /// After [`close`](Self::close) it does nothing either: the buffers are
    /// closed, their files removed or left to the reader attached at close
    /// (whose records a reset would wipe before it read them, neither
    /// delivered nor counted), and their counters are the final ones.
    pub fn reset(&mut self) {
        let inner = &*self.inner;
        // SYNC POINT: Relaxed: `&mut self` excludes a close in progress in
        // this process; one that is over happened before (it took `&self`).
        if !inner.in_creator() || inner.closed.load(StdOrdering::Relaxed) {
            return;
        }
        let _g = inner.lock_flush();
        for b in &inner.bufs {
            b.shared().init_state();
            // SYNC POINT: Release pairs with the reader's Acquire load of
            // EPOCH (`Cursor::new` and its check at every step): a reader
            // that sees the new epoch sees the reset state (and the head
            // stored by `init_state`) and starts over.
            b.shared()
                .header_word(hdr::EPOCH)
                .fetch_add(1, Ordering::Release);
        }
    }

    /// Tells the channel that the reader of `cpu`'s buffer consumed `n`
    /// sub-buffers (`relay_subbufs_consumed`), for readers that read through
    /// the mapping and report back through the producer. Returns how many
    /// were complete and so consumed. It works by position, as the kernel's
    /// does, in both modes: it claims each complete sub-buffer at the
    /// reader's position and counts its records as consumed (in overwrite
    /// mode it can't know whether the reader's copy was torn: a mapping
    /// reader in the reader's process uses `Mapping::consume`); sub-buffers
    /// found overwritten are skipped and counted by their writers.
    ///
    /// # Errors
    /// [`crate::FormatError::Corrupt`] if the buffer's shared state is.
    ///
    /// # Panics
    /// If `cpu` is not a buffer of this channel.
    pub fn subbufs_consumed(&self, cpu: usize, n: u64) -> Result<u64, crate::FormatError> {
        let s = self.inner.bufs[cpu].shared();
        // SYNC POINT: Relaxed: the reader's own word, read as the readers'
        // `consume_through` does before it consumes by position.
        let from = s.reader_word(rdr::CONSUMED).load(Ordering::Relaxed);
        let done = s.subbufs_consumed(n, false, None)?;
        // Records a lost hand-off took from the sub-buffer at `from` are
        // counted discarded already: not consumed too.
        crate::cursor::settle_sub_records(s, from);
        Ok(done)
    }

    /// The counters of `cpu`'s buffer.
    ///
    /// # Panics
    /// If `cpu` is not a buffer of this channel.
    pub fn stats(&self, cpu: usize) -> BufferStats {
        self.inner.bufs[cpu].stats()
    }

    /// The counters of all buffers, summed.
    pub fn total_stats(&self) -> BufferStats {
        self.inner.bufs.iter().map(Buffer::stats).sum()
    }

    /// How many of the channel's buffers have a reader attached now: a
    /// [`RelayFile`](crate::RelayFile) holds the buffer's reader lock (the
    /// lock byte a reader takes at open and the kernel drops when it closes
    /// the file or dies).
    pub fn readers_attached(&self) -> usize {
        self.inner
            .bufs
            .iter()
            .filter(|b| shm::byte_locked(b.files.file(), shm::READER_LOCK_BYTE).unwrap_or(false))
            .count()
    }

    /// Waits until every buffer has a reader attached
    /// ([`readers_attached`](Self::readers_attached) equals
    /// [`n_buffers`](Self::n_buffers)), looking every few milliseconds
    /// (one `fcntl` per buffer, no busy loop). Returns whether they all
    /// did within `timeout`: a producer that must not lose its first
    /// records in no-overwrite mode starts writing once its recorder is
    /// there. A timeout too long to represent (`Duration::MAX`) is no limit.
    pub fn wait_for_readers(&self, timeout: Duration) -> bool {
        // A timeout too long to represent is no limit.
        let deadline = Instant::now().checked_add(timeout);
        let mut pause = Duration::from_millis(1);
        loop {
            if self.readers_attached() == self.inner.bufs.len() {
                return true;
            }
            let now = Instant::now();
            let left = deadline.map_or(pause, |d| d.saturating_duration_since(now));
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Number of buffers (possible CPUs, or 1 for a global buffer).
    pub fn n_buffers(&self) -> usize {
        self.inner.bufs.len()
    }

    /// Number of possible CPUs.
    pub fn n_cpus(&self) -> usize {
        self.inner.ncpu
    }

    /// Whether the channel has one global buffer.
    pub fn is_global(&self) -> bool {
        self.inner.global
    }

    /// The channel directory.
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// Path of `cpu`'s relay file.
    ///
    /// # Panics
    /// If `cpu` is not a buffer of this channel.
    pub fn buffer_path(&self, cpu: usize) -> &Path {
        &self.inner.bufs[cpu].info.path
    }

    /// The buffer geometry.
    pub fn geometry(&self) -> Geometry {
        self.inner.geometry
    }

    /// Finalizes every buffer (`relay_close`): refuses writes from now on,
    /// flushes the last sub-buffers (waiting for writes in flight to commit),
    /// marks the channel closed, wakes readers and removes the files through
    /// `remove_buf_file`, and the channel directory if `relay_open` made it
    /// and it is empty now (never one passed with [`ChannelBuilder::dir`]).
    /// Readers that have the files open drain what is left
    /// and then see end of data. A buffer no reader is attached to at that
    /// moment can't be read any more: the producer takes its reader lock
    /// (so none can attach) and counts what was left unread in
    /// `unread_at_close`. Dropping a `Channel` does the same.
    ///
    /// It takes `&self`, so any holder of a shared channel (an
    /// `Arc<Channel>`, say) can close it while others still write: every
    /// write that starts after `close` began is refused with
    /// [`WriteError::Closed`] and counted in `dropped_closed`. Closing is
    /// done once: a second call (or one racing the first, which waits for
    /// it) returns what the first returned.
    ///
    /// Returns the final counters of all buffers, summed: with what attached
    /// readers still drain, `records_consumed` plus `lost()` covers every
    /// record offered (later refusals add to `dropped_closed` in
    /// [`total_stats`](Self::total_stats), not in this value, and so does
    /// a write still in flight when close stopped waiting for it after 2 s,
    /// such as a [`Reservation`] held across the close: with no reader
    /// attached, what its commit completes is counted in `unread_at_close`
    /// then).
    ///
    /// In a process forked from the one that opened the channel, `close`
    /// (and dropping the `Channel`) leaves the channel to its creator:
    /// nothing is refused, flushed, marked closed or removed, no lock the
    /// fork may have copied held is waited for, and the counters are
    /// returned as they stand. The child's records committed so far stay
    /// in the buffers for the parent's flushes and readers.
    ///
    /// # Errors
    /// The first error of `remove_buf_file`; every buffer is closed anyway.
    pub fn close(&self) -> std::io::Result<BufferStats> {
        if !self.inner.in_creator() {
            return Ok(self.total_stats());
        }
        let mut done = self
            .closed_with
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if done.is_none() {
            let flusher = self
                .flusher
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(mut f) = flusher {
                f.stop();
            }
            let r = self.inner.close();
            *done = Some(match r {
                Ok(()) => Ok(self.total_stats()),
                Err(e) => Err((e.kind(), e.to_string())),
            });
        }
        match done.as_ref() {
            Some(Ok(s)) => Ok(*s),
            Some(Err((kind, msg))) => Err(std::io::Error::new(*kind, msg.clone())),
            None => Ok(self.total_stats()),
        }
    }
}

impl Inner {
    /// How long `close` waits for writes in flight to commit.
    const SETTLE_LIMIT: Duration = Duration::from_secs(2);

    /// Flushes until every buffer is quiet: nothing left to close and every
    /// sub-buffer produced complete, so that a write that was in flight when
    /// `close` began is committed before what is left is counted. Gives up
    /// after [`SETTLE_LIMIT`](Self::SETTLE_LIMIT) (a writer stopped between
    /// reserve and commit, or a corrupt buffer).
    ///
    /// The flush may call the client's `buf_mapped`/`buf_unmapped`; should
    /// one panic, settling goes on and the first panic is returned, for
    /// `close` to resume once every buffer is closed.
    fn settle(&self) -> Option<Box<dyn std::any::Any + Send>> {
        let deadline = Instant::now() + Self::SETTLE_LIMIT;
        let mut panicked = None;
        loop {
            let _g = self.lock_flush();
            let mut quiet = true;
            for b in &self.bufs {
                let s = b.shared();
                // Before the flush: a switch that is over by now moved
                // `head` before its decrement, which this load acquires,
                // so the flush and the counts below see it; one still
                // going makes us look again.
                // Any process's switch: a forked child's too. One killed in
                // the middle of its switch never ends it: we wait for it
                // as long as for anything else here, no longer.
                // SYNC POINT: Acquire pairs with `end_open`'s Release
                // decrement; the word's order against `begin_open`'s
                // increment is `close`'s `fetch_or` (see `begin_open`).
                if b.opening_word().load(Ordering::Acquire) & OPENING_COUNT != 0 {
                    quiet = false;
                }
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.flush(b))) {
                    Ok(false) => {}
                    Ok(true) => quiet = false,
                    Err(p) => {
                        // The callback ran after the flush closed the
                        // sub-buffer: look again.
                        quiet = false;
                        panicked.get_or_insert(p);
                    }
                }
                let st = s.stats();
                // The count of sub-buffers completed is bumped after the
                // completer's store of the word: equal to the produced
                // count, every word is complete, and a reader that sees the
                // state closed (stored after this) sees them all complete.
                // Counted before the word, a reader could find the last
                // word incomplete after the state closed and stop short.
                // SYNC POINT: Acquire pairs with `Shared::complete`'s
                // Release increment, after its store of the word.
                let completed = s
                    .header_word(hdr::SUBBUFS_COMPLETED)
                    .load(Ordering::Acquire);
                if st.corrupt == 0 && completed < st.subbufs_produced {
                    quiet = false;
                }
            }
            drop(_g);
            if quiet || Instant::now() >= deadline {
                return panicked;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn close(&self) -> std::io::Result<()> {
        let inner = self;
        // SYNC POINT: AcqRel: only the first close goes on (closes are
        // serialised by `Channel::closed_with` anyway; this is the guard for
        // the flag's readers in `Drop`).
        if inner.closed.swap(true, StdOrdering::AcqRel) {
            return Ok(());
        }
        for b in &inner.bufs {
            // SYNC POINT: SeqCst (Relaxed would do): writers read it as a
            // hint (see `Buffer::is_closed`); what orders a switch against
            // close is the `fetch_or` below.
            b.closed.store(true, StdOrdering::SeqCst);
            // SYNC POINT: SeqCst RMW, against `begin_open`'s increment of
            // the same word, in any process: a switch counted before it is
            // waited for (`settle`), one after it sees the bit and refuses.
            b.opening_word().fetch_or(OPENING_CLOSING, Ordering::SeqCst);
        }
        let mut panicked = inner.settle();
        let mut result = Ok(());
        for b in &inner.bufs {
            // Nothing is written any more. If no reader holds the reader
            // lock, take it: then none is attached or can attach, so what is
            // unconsumed will never be read: count it, and move the reader's
            // position past it, so that a reader attaching after we let go
            // finds the buffer drained (and the end, once it is closed
            // below). The state is stored closed before the lock is let go,
            // so that a reader whose open found the lock taken sees why and
            // tries again (`RelayFile::open`).
            //
            // If a reader holds the lock, that reader drains it, and the file
            // stays until it has: the reader removes it then (the buffer
            // lives until its last user lets go). A reader that dies first
            // leaves it to a later one, which resumes where it stopped, so
            // nothing it had not read is lost uncounted.
            let lock =
                |f: &std::fs::File| shm::try_lock_byte(f, shm::READER_LOCK_BYTE).is_ok_and(|l| l);
            let mut held = lock(b.files.file());
            if !held {
                let mut left = LEFT_FOR_READER;
                if let Some(c) = &inner.created {
                    let id = c.ident();
                    // SYNC POINT: Relaxed: published by the Release store
                    // of STATE below, with LEFT.
                    b.shared()
                        .header_word(hdr::DIR_DEV)
                        .store(id.dev, Ordering::Relaxed);
                    b.shared()
                        .header_word(hdr::DIR_INO)
                        .store(id.ino, Ordering::Relaxed);
                    left |= LEFT_DIR;
                }
                // SYNC POINT: Relaxed: published by the Release store of
                // STATE below.
                b.shared()
                    .header_word(hdr::LEFT)
                    .store(left, Ordering::Relaxed);
                // SYNC POINT: Release pairs with the reader's Acquire load of
                // STATE (in its drop and its open): a reader that sees CLOSED
                // sees every sub-buffer flushed and the LEFT word.
                b.shared()
                    .header_word(hdr::STATE)
                    .store(STATE_CLOSED, Ordering::Release);
                // The reader may have let go meanwhile, having seen the state
                // still open: then nobody else would remove the file.
                held = lock(b.files.file());
            }
            if held {
                *b.late_base
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    b.shared().stats().records_completed;
                b.shared().count_unread_at_close();
                // A write `settle` gave up on may still complete a
                // sub-buffer: from now on it counts that itself
                // (`Buffer::after_commit`); one that completed since the
                // count above is counted here.
                // SYNC POINT: Relaxed store, then a SeqCst fence before
                // `count_late` loads the counters: the Dekker pair described
                // in `Buffer::after_commit`.
                b.late.store(true, StdOrdering::Relaxed);
                std::sync::atomic::fence(StdOrdering::SeqCst);
                b.count_late();
                // SYNC POINT: Relaxed: published by the Release store of
                // STATE below (no reader is attached: we hold its lock).
                b.shared()
                    .header_word(hdr::LEFT)
                    .store(0, Ordering::Relaxed);
                // SYNC POINT: Release, as above.
                b.shared()
                    .header_word(hdr::STATE)
                    .store(STATE_CLOSED, Ordering::Release);
                let _ = shm::unlock_byte(b.files.file(), shm::READER_LOCK_BYTE);
            }
            b.release_fifo();
            if !held {
                continue;
            }
            // `remove_buf_file` is the client's: should it panic, the
            // buffers after this one are still closed, counted and removed
            // (and the producer lock let go of) before the panic goes on.
            // A second close returns at once, so none would be otherwise.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                b.files.remove(&inner.dir, &*inner.callbacks)
            })) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
                Err(p) => {
                    panicked.get_or_insert(p);
                }
            }
        }
        if let Some(c) = &inner.created {
            c.remove();
        }
        // Let go of the buffers as dropping the channel would: a producer
        // may open the channel again while this value lives on (writes to it
        // are refused from now on).
        for b in &inner.bufs {
            let _ = shm::unlock_byte(b.files.file(), shm::PRODUCER_LOCK_BYTE);
        }
        if let Some(p) = panicked {
            std::panic::resume_unwind(p);
        }
        result
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if !self.inner.in_creator() {
            // A forked child: the flush thread is the parent's, and its
            // handle names a thread this process does not have (joining
            // it would wait forever, and dropping it would detach it):
            // forget it. `get_mut` does not look at the lock, which the
            // fork may have copied held.
            let f = self
                .flusher
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::forget(f.take());
        }
        let _ = self.close();
    }
}

/// Creates a channel with the kernel's argument list (`relay_open`): buffer
/// files `<parent>/<base_filename><cpu>`, or, with no `parent`,
/// `<relay dir>/<base_filename>/<base_filename><cpu>`. The client's private
/// data lives in the callbacks value.
///
/// # Errors
/// As [`ChannelBuilder::open`].
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let chan = relayfs::relay_open("cpu", Some(dir.path()), 4096, 4, relayfs::DefaultCallbacks)?;
/// assert!(dir.path().join("cpu0").exists());
/// chan.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn relay_open(
    base_filename: &str,
    parent: Option<&Path>,
    subbuf_size: u64,
    n_subbufs: u64,
    callbacks: impl Callbacks,
) -> Result<Channel, OpenError> {
    let mut b = ChannelBuilder::new(base_filename)
        .base(base_filename)
        .subbuf_size(subbuf_size)
        .n_subbufs(n_subbufs)
        .callbacks(callbacks);
    if let Some(p) = parent {
        b = b.dir(p);
    }
    b.open()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that found a sub-buffer complete and then lost the CPU
    /// while writers lapped the slot twice must not claim it: the writer of
    /// the next lap counted its records as overwritten, and a claim would
    /// count them again as discarded.
    #[test]
    fn a_sub_buffer_lapped_twice_is_not_claimed_by_a_late_reader() {
        let dir = tempfile::tempdir().unwrap();
        let chan = Channel::builder("lapped")
            .dir(dir.path())
            .subbuf_size(256)
            .n_subbufs(2)
            .global(true)
            .mode(Mode::Overwrite)
            .open()
            .unwrap();
        let rec = [7u8; 100];
        // Sub-buffers 0 and 1 (2 records each), then 2 (slot 0 again: it
        // overwrites 0) and 3, then 4 (slot 0 a third time: it overwrites
        // 2) and one record into it.
        for _ in 0..9 {
            chan.write(&rec).unwrap();
        }
        let s = chan.inner.bufs[0].shared();
        let st = s.stats();
        assert_eq!(st.overwritten_subbufs, 3, "{st:?}");
        assert!(
            !s.claim_for_read(0),
            "sub-buffer 0 was overwritten and counted; a claim counts it twice"
        );
        assert!(!s.claim_for_read(2));
        // The newest complete one is still the reader's to take.
        assert!(s.claim_for_read(3));
    }
}
