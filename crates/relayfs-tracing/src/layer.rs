//! The [`RelayLayer`]: events and spans into a relay channel.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use relayfs::Channel;
use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::subscriber::Interest;
use tracing_core::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::clock::Clock;
use crate::wire::{self, Enc};

/// Slots of the lock-free callsite table (a power of two). Callsites beyond
/// three quarters of it go to a map behind a lock.
const TABLE: usize = 4096;
/// Bit of a slot's word: the callsite record was written.
const WRITTEN: u64 = 1 << 63;

#[derive(Debug, Default)]
struct Slot {
    /// The callsite's metadata address; 0 for a free slot.
    key: AtomicUsize,
    /// The callsite id, with [`WRITTEN`].
    word: AtomicU64,
}

#[derive(Debug, Default)]
struct Overflow {
    next_id: u64,
    used: usize,
    /// Callsites that did not fit in the table: address to id word.
    map: HashMap<usize, u64>,
}

/// A counter on its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// Where a callsite's state is.
enum Found<'a> {
    Slot(&'a Slot),
    Map(u64),
}

/// The layer's state, shared by its clones.
#[derive(Debug)]
struct Inner {
    chan: Arc<Channel>,
    table: Box<[Slot]>,
    overflow: Mutex<Overflow>,
    lost: Box<[Padded]>,
    /// Callsite records refused, per buffer.
    lost_meta: Box<[Padded]>,
    /// The sum of `lost` and `lost_meta`: the one word the fast path reads.
    any_lost: Padded,
    global: bool,
    /// The clock of every record's timestamp.
    clock: Clock,
    /// The layer's clock time from which the next anchor record is due
    /// (`u64::MAX`: never, the clock is `CLOCK_MONOTONIC` itself).
    next_anchor: AtomicU64,
    /// The layer's clock time between anchor records, at most.
    anchor_every: u64,
    /// The time to the next anchor record: from [`FIRST_ANCHOR_GAP`],
    /// doubled after each up to `anchor_every`, so that a decoder has two
    /// anchors (a rate) early in a recording.
    anchor_gap: AtomicU64,
    /// This layer's serial number, for the threads' callsite caches.
    serial: u64,
}

/// What a thread keeps: its id and the buffer records are encoded in, one
/// thread-local (one access an event).
struct Local {
    /// The Linux thread id (as `ps -L` and `perf` show it), asked once;
    /// 0 until then.
    tid: Cell<u64>,
    /// The callsite of this thread's last event, once its callsite record
    /// is written: the layer's serial number and the metadata address (a
    /// loop's events skip the table)...
    last: Cell<(u64, usize)>,
    /// ... and its event record's head, kind, callsite id and thread id,
    /// encoded (`head_len` bytes of it): copied in one piece of constant
    /// size.
    head: Cell<[u8; HEAD]>,
    head_len: Cell<usize>,
    scratch: RefCell<Enc>,
}

/// Room for an event record's head: kind, callsite id and thread id
/// (varints of at most 10 bytes).
const HEAD: usize = 24;

/// The layer's clock time between anchor records, once the first few
/// (from [`FIRST_ANCHOR_GAP`], doubling) are written.
const ANCHOR_EVERY: u64 = 1_000_000_000;
/// The time from the first anchor record to the second.
const FIRST_ANCHOR_GAP: u64 = 10_000_000;

/// Serial numbers of layers (a layer's address can be reused by another).
static SERIAL: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static LOCAL: Local = const {
        Local {
            tid: Cell::new(0),
            last: Cell::new((0, 0)),
            head: Cell::new([0; HEAD]),
            head_len: Cell::new(0),
            scratch: RefCell::new(Enc { buf: Vec::new() }),
        }
    };
}

impl Local {
    /// The Linux thread id of the calling thread.
    #[inline]
    fn thread_id(&self) -> u64 {
        let v = self.tid.get();
        if v != 0 {
            return v;
        }
        let v = rustix::thread::gettid().as_raw_nonzero().get() as u64;
        self.tid.set(v);
        v
    }
}

fn level_byte(l: &Level) -> u8 {
    match *l {
        Level::TRACE => 0,
        Level::DEBUG => 1,
        Level::INFO => 2,
        Level::WARN => 3,
        Level::ERROR => 4,
    }
}

fn clock_ns(id: rustix::time::ClockId) -> u64 {
    let t = rustix::time::clock_gettime(id);
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

impl Inner {
    /// A layer writing into `chan`. It first writes a clock record (the
    /// monotonic clock of the records' timestamps and the wall clock, read
    /// together) so that a decoder can show wall-clock times.
    fn new(chan: Arc<Channel>, clock: Clock, first_gap: u64, anchor_every: u64) -> Inner {
        let n = chan.n_buffers().max(1);
        let layer = Inner {
            next_anchor: AtomicU64::new(if clock.anchored() { 0 } else { u64::MAX }),
            anchor_every,
            anchor_gap: AtomicU64::new(first_gap.min(anchor_every)),
            clock,
            // SYNC POINT: a counter alone; only its uniqueness matters.
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            global: chan.is_global(),
            chan,
            table: (0..TABLE).map(|_| Slot::default()).collect(),
            overflow: Mutex::new(Overflow {
                next_id: 1,
                ..Overflow::default()
            }),
            lost: (0..n).map(|_| Padded::default()).collect(),
            lost_meta: (0..n).map(|_| Padded::default()).collect(),
            any_lost: Padded::default(),
        };
        if !layer.anchor_now() {
            layer.refused(true);
        }
        layer.write_clock();
        layer
    }

    /// Writes a clock record: `CLOCK_MONOTONIC` and `CLOCK_REALTIME` read
    /// together (of a few tries, the monotonic reading with the shortest
    /// gap between the wall-clock readings around it, and the middle of
    /// that gap).
    fn write_clock(&self) {
        let mut best = (u64::MAX, 0, 0);
        for _ in 0..5 {
            let r0 = clock_ns(rustix::time::ClockId::Realtime);
            let m = relayfs::frame::now();
            let r1 = clock_ns(rustix::time::ClockId::Realtime);
            let gap = r1.wrapping_sub(r0);
            if gap < best.0 {
                best = (gap, m, r0.wrapping_add(gap / 2));
            }
        }
        let mut e = Enc::default();
        e.byte(wire::KIND_CLOCK);
        e.varint(best.1);
        e.varint(best.2);
        self.emit(&e.buf);
    }

    /// Writes one timed record, with the layer's clock; then, if an anchor
    /// record is due, the anchor.
    #[inline(always)]
    fn write(&self, payload: &[u8]) -> Result<(), relayfs::WriteError> {
        let mut ts = 0;
        let r = self.chan.write_record_timed_with(payload, || {
            ts = self.clock.now();
            ts
        });
        // SYNC POINT: a deadline read alone; the compare-exchange in
        // `anchor_due` decides which thread writes the anchor, and a stale
        // value here only delays the check to the next record.
        if ts >= self.next_anchor.load(Ordering::Relaxed) {
            self.anchor_due(ts);
        }
        r
    }

    /// An anchor is due: the thread that moves the deadline writes it.
    #[cold]
    #[inline(never)]
    fn anchor_due(&self, ts: u64) {
        // SYNC POINT: as in `write`; the deadline guards no other memory.
        let due = self.next_anchor.load(Ordering::Relaxed);
        if ts < due {
            return;
        }
        let gap = self.next_gap();
        if self
            .next_anchor
            // SYNC POINT: only one thread moves a given deadline on; it
            // orders nothing else.
            .compare_exchange(
                due,
                ts.saturating_add(gap),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
            && !self.write_anchor()
        {
            self.refused(true);
        }
    }

    /// The time to the next anchor, and the one after doubled (up to
    /// `anchor_every`).
    fn next_gap(&self) -> u64 {
        // SYNC POINT: a value read alone; a race only makes one gap
        // shorter or longer.
        let gap = self.anchor_gap.load(Ordering::Relaxed);
        if gap < self.anchor_every {
            // SYNC POINT: as above.
            self.anchor_gap.store(
                gap.saturating_mul(2).min(self.anchor_every),
                Ordering::Relaxed,
            );
        }
        gap
    }

    /// Writes an anchor record now (with a clock that needs them) and moves
    /// the deadline of the next one.
    fn anchor_now(&self) -> bool {
        if !self.clock.anchored() {
            return true;
        }
        // SYNC POINT: as in `anchor_due`; a race with it writes two
        // anchors, which the decoder takes both.
        self.next_anchor.store(
            self.clock.now().saturating_add(self.next_gap()),
            Ordering::Relaxed,
        );
        self.write_anchor()
    }

    /// Writes an anchor record: the layer's clock and `CLOCK_MONOTONIC`,
    /// read together. Whether the channel took it.
    fn write_anchor(&self) -> bool {
        let (clock, mono, _gap) = self.clock.pair();
        let mut e = Enc::default();
        e.byte(wire::KIND_ANCHOR);
        e.varint(clock);
        e.varint(mono);
        self.chan
            .write_record_timed_with(&e.buf, || self.clock.now())
            .is_ok()
    }

    /// Events refused by the channel and not reported in a lost record yet.
    fn lost_pending(&self) -> u64 {
        self.lost
            .iter()
            .chain(self.lost_meta.iter())
            // SYNC POINT: a counter read alone; no other memory depends on it.
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Writes a lost record for every buffer with refused writes not yet
    /// reported (e.g. before closing the channel). If it is refused too,
    /// they stay pending, and it is counted with them (as a record that is
    /// not an event), as the channel counts it.
    fn flush_lost(&self) {
        if !self.anchor_now() {
            self.refused(true);
        }
        let mut e = Enc::default();
        e.byte(wire::KIND_LOST);
        let taken = self.take_losses(&mut e);
        if taken.is_empty() {
            return;
        }
        if self.write(&e.buf).is_ok() {
            self.settle_losses(&taken);
        } else {
            self.give_back_losses(&taken);
            // Refused, and counted by the channel: counted here too (with
            // the records that are not events), so that the layer's counts
            // and the channel's add up.
            self.refused(true);
        }
    }

    /// Takes the pending losses off the counters and appends them to a lost
    /// record; returns them, to be settled once it is written or given back
    /// if it is refused. Taken, not read: two threads writing lost records
    /// at once each report their own share, never the same counts twice
    /// (subtracted twice, a counter would wrap and a later record report
    /// 2^64 - 1 events lost).
    fn take_losses(&self, e: &mut Enc) -> Vec<wire::Loss> {
        let take = |c: &Padded| {
            // SYNC POINT: counters alone: what one thread takes no other
            // can; refusals meanwhile stay for the next record. Nothing else
            // pairs with them. The load first keeps a clean line clean.
            if c.0.load(Ordering::Relaxed) == 0 {
                0
            } else {
                // SYNC POINT: as above.
                c.0.swap(0, Ordering::Relaxed)
            }
        };
        let losses: Vec<wire::Loss> = (0..self.lost.len())
            .filter_map(|b| {
                let l = wire::Loss {
                    buffer: b as u64,
                    events: take(&self.lost[b]),
                    callsites: take(&self.lost_meta[b]),
                };
                (l.events + l.callsites > 0).then_some(l)
            })
            .collect();
        wire::encode_losses(e, &losses);
        losses
    }

    /// Losses taken and written: off the sum of those not reported yet.
    #[cold]
    fn settle_losses(&self, losses: &[wire::Loss]) {
        for l in losses {
            // SYNC POINT: the sum, kept with the counters; a reader of it
            // only decides whether to look at them.
            self.any_lost
                .0
                .fetch_sub(l.events + l.callsites, Ordering::Relaxed);
        }
    }

    /// Losses taken for a lost record the channel refused: back on their
    /// counters, for the next one.
    #[cold]
    fn give_back_losses(&self, losses: &[wire::Loss]) {
        for l in losses {
            let b = l.buffer as usize;
            // SYNC POINT: counters alone (see take_losses).
            self.lost[b].0.fetch_add(l.events, Ordering::Relaxed);
            // SYNC POINT: as above.
            self.lost_meta[b]
                .0
                .fetch_add(l.callsites, Ordering::Relaxed);
        }
    }

    /// Counts a refused write against the buffer of the CPU the thread is
    /// on now.
    #[cold]
    fn refused(&self, callsite: bool) {
        let b = self.buffer_now();
        let counters = if callsite {
            &self.lost_meta
        } else {
            &self.lost
        };
        if let Some(c) = counters.get(b) {
            // SYNC POINT: counters alone (see take_losses); the counter
            // before the sum, so the sum is never the smaller for long.
            c.0.fetch_add(1, Ordering::Relaxed);
            // SYNC POINT: as above.
            self.any_lost.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The buffer a write from this thread goes to now.
    #[inline]
    fn buffer_now(&self) -> usize {
        if self.global {
            0
        } else {
            relayfs::cpu::current_cpu()
        }
    }

    /// Writes one record; a refusal is counted against the buffer of the
    /// CPU the thread is on. Refusals not yet reported, on any buffer, go
    /// in front of it, in the same reservation (a `KIND_LOST_THEN` record):
    /// the loss shows where it happened, whichever thread writes next, and
    /// a full buffer refuses one record per event, not two.
    #[inline(always)]
    fn emit(&self, payload: &[u8]) {
        // SYNC POINT: a counter alone (see take_losses); one shared line
        // that stays clean in every cache while nothing is refused.
        if self.any_lost.0.load(Ordering::Relaxed) != 0 {
            return self.emit_after_losses(payload);
        }
        if self.write(payload).is_err() {
            self.refused(false);
        }
    }

    #[cold]
    fn emit_after_losses(&self, payload: &[u8]) {
        let mut e = Enc::default();
        e.byte(wire::KIND_LOST_THEN);
        let taken = self.take_losses(&mut e);
        if taken.is_empty() {
            if self.write(payload).is_err() {
                self.refused(false);
            }
            return;
        }
        e.buf.extend_from_slice(payload);
        if self.write(&e.buf).is_ok() {
            self.settle_losses(&taken);
        } else {
            self.give_back_losses(&taken);
            self.refused(false);
        }
    }

    #[inline]
    fn slot_of(&self, addr: usize) -> usize {
        ((addr as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize & (TABLE - 1)
    }

    /// The callsite's state, registering it if it is new.
    #[inline]
    fn find(&self, meta: &'static Metadata<'static>) -> Found<'_> {
        let addr = meta as *const Metadata<'static> as usize;
        let mut i = self.slot_of(addr);
        for _ in 0..TABLE {
            let s = &self.table[i];
            // SYNC POINT: pairs with the Release store of `key` in
            // `register`: a key seen here has its id word stored before it.
            let k = s.key.load(Ordering::Acquire);
            if k == addr {
                return Found::Slot(s);
            }
            if k == 0 {
                break;
            }
            i = (i + 1) & (TABLE - 1);
        }
        self.register(addr)
    }

    #[cold]
    fn register(&self, addr: usize) -> Found<'_> {
        let mut o = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&w) = o.map.get(&addr) {
            return Found::Map(w);
        }
        let mut i = self.slot_of(addr);
        for _ in 0..TABLE {
            let s = &self.table[i];
            // SYNC POINT: keys are only stored under the lock held here, so
            // this sees every one; Relaxed is enough.
            let k = s.key.load(Ordering::Relaxed);
            if k == addr {
                return Found::Slot(s);
            }
            if k == 0 {
                break;
            }
            i = (i + 1) & (TABLE - 1);
        }
        let id = o.next_id;
        o.next_id += 1;
        if o.used < TABLE / 4 * 3 {
            o.used += 1;
            let s = &self.table[i];
            // SYNC POINT: the id word before the key; the key's Release
            // store pairs with the Acquire load in `find`.
            s.word.store(id, Ordering::Relaxed);
            // SYNC POINT: see above.
            s.key.store(addr, Ordering::Release);
            Found::Slot(s)
        } else {
            o.map.insert(addr, id);
            Found::Map(id)
        }
    }

    /// The callsite's id; writes its callsite record first if it has not
    /// been written yet (or was refused).
    #[inline]
    fn callsite_id(&self, meta: &'static Metadata<'static>) -> u64 {
        self.callsite(meta).0
    }

    /// The callsite's id, and whether its callsite record is written.
    #[inline]
    fn callsite(&self, meta: &'static Metadata<'static>) -> (u64, bool) {
        match self.find(meta) {
            Found::Slot(s) => {
                // SYNC POINT: only says whether the callsite record was
                // written; a race writes it twice, which a decoder accepts.
                let w = s.word.load(Ordering::Relaxed);
                let id = w & !WRITTEN;
                if w & WRITTEN != 0 {
                    return (id, true);
                }
                let ok = self.write_callsite(id, meta);
                if ok {
                    // SYNC POINT: as above.
                    s.word.fetch_or(WRITTEN, Ordering::Relaxed);
                }
                (id, ok)
            }
            Found::Map(w) => {
                let id = w & !WRITTEN;
                if w & WRITTEN != 0 {
                    return (id, true);
                }
                let ok = self.write_callsite(id, meta);
                if ok {
                    let addr = meta as *const Metadata<'static> as usize;
                    let mut o = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
                    o.map.insert(addr, id | WRITTEN);
                }
                (id, ok)
            }
        }
    }

    /// The head of an event record of this thread (kind, callsite id,
    /// thread id) appended to `buf`: from the thread's cache when its last
    /// event had the same callsite (its callsite record is written then),
    /// else made, with the id from [`callsite`](Inner::callsite).
    #[inline]
    fn event_head(&self, l: &Local, meta: &'static Metadata<'static>, buf: &mut Vec<u8>) {
        let addr = meta as *const Metadata<'static> as usize;
        if l.last.get() == (self.serial, addr) {
            // A copy of constant size, then the length cut back: no loop,
            // no call.
            let at = buf.len();
            buf.extend_from_slice(&l.head.get());
            buf.truncate(at + l.head_len.get());
            return;
        }
        self.new_event_head(l, meta, buf);
    }

    #[cold]
    fn new_event_head(&self, l: &Local, meta: &'static Metadata<'static>, buf: &mut Vec<u8>) {
        let (id, written) = self.callsite(meta);
        let mut e = Enc::default();
        e.byte(wire::KIND_EVENT);
        e.varint(id);
        e.varint(l.thread_id());
        buf.extend_from_slice(&e.buf);
        if written {
            let mut head = [0; HEAD];
            head[..e.buf.len()].copy_from_slice(&e.buf);
            l.head.set(head);
            l.head_len.set(e.buf.len());
            l.last
                .set((self.serial, meta as *const Metadata<'static> as usize));
        }
    }

    #[cold]
    fn write_callsite(&self, id: u64, meta: &'static Metadata<'static>) -> bool {
        let mut e = Enc::default();
        e.byte(wire::KIND_CALLSITE);
        e.varint(id);
        e.byte(if meta.is_span() {
            wire::CALLSITE_SPAN
        } else {
            wire::CALLSITE_EVENT
        });
        e.byte(level_byte(meta.level()));
        e.varint(meta.line().map_or(0, |l| u64::from(l) + 1));
        e.str(meta.name());
        e.str(meta.target());
        e.str(meta.module_path().unwrap_or(""));
        e.str(meta.file().unwrap_or(""));
        e.varint(meta.fields().len() as u64);
        for f in meta.fields() {
            e.str(f.name());
        }
        let ok = self.write(&e.buf).is_ok();
        if !ok {
            self.refused(true);
        }
        ok
    }

    /// Encodes with the thread's scratch buffer (a fresh one if it is in
    /// use: a value's `Debug` that logs) and writes; `f` is given the
    /// buffer and the thread's id.
    #[inline]
    fn with_scratch(&self, f: impl FnOnce(&mut Enc, u64)) {
        LOCAL.with(|l| self.encode(l, f))
    }

    /// Encodes with the thread's scratch buffer (see `with_scratch`).
    #[inline]
    fn encode(&self, l: &Local, f: impl FnOnce(&mut Enc, u64)) {
        let tid = l.thread_id();
        match l.scratch.try_borrow_mut() {
            Ok(mut e) => {
                e.buf.clear();
                f(&mut e, tid);
                self.emit(&e.buf);
            }
            Err(_) => {
                let mut e = Enc::default();
                f(&mut e, tid);
                self.emit(&e.buf);
            }
        }
    }

    fn span_op(&self, kind: u8, id: &Id) {
        self.with_scratch(|e, tid| {
            e.byte(kind);
            e.varint(tid);
            e.varint(id.into_u64());
        });
    }
}

/// A [`Layer`] that writes every event, and every span's creation, values,
/// enter, exit and close, as one framed, timestamped record
/// (the layer's clock, see [`clock`](RelayLayer::clock)) into a relay channel; the
/// strings of a callsite (level, target, file, line, name, field names) go
/// into the channel once, in a callsite record, and events refer to the
/// callsite by a small id. The record format is in the crate documentation.
///
/// A write refused by the channel (a full buffer in no-overwrite mode, a
/// closed channel) is counted by the channel as usual and by the layer per
/// buffer; the next record the layer writes (from any thread, on any CPU)
/// carries the counts in front of it ([`Lost`](wire::Item::Lost)), so a
/// decoder shows the loss where it happened. [`flush_lost`](RelayLayer::flush_lost) writes
/// what is still pending.
///
/// Clones share one state (callsite ids, loss counts): keep one to call
/// [`flush_lost`](RelayLayer::flush_lost) before closing the channel.
#[derive(Debug, Clone)]
pub struct RelayLayer(Arc<Inner>);

impl RelayLayer {
    /// A layer writing into `chan`. It first writes a clock record (the
    /// monotonic clock of the records' timestamps and the wall clock, read
    /// together) so that a decoder can show wall-clock times.
    ///
    /// Timestamps are the TSC scaled to nanoseconds (anchored to
    /// `CLOCK_MONOTONIC` by anchor records, which the decoder interpolates
    /// between) where the kernel's clocksource is the TSC, the CPU's TSC is
    /// invariant and the `tsc` feature is on (it is by default), unless
    /// `RELAYFS_TRACING_CLOCK=monotonic` is in the environment; else
    /// `CLOCK_MONOTONIC` itself; see [`clock`](RelayLayer::clock). The
    /// first layer of a process with the TSC calibrates its rate, a few
    /// milliseconds (at most 200).
    pub fn new(chan: Arc<Channel>) -> RelayLayer {
        RelayLayer(Arc::new(Inner::new(
            chan,
            Clock::choose(),
            FIRST_ANCHOR_GAP,
            ANCHOR_EVERY,
        )))
    }

    /// As [`new`](RelayLayer::new) with the TSC clock (where the machine
    /// has it), its rate made wrong by `skew_ppm` parts per million, and an
    /// anchor record every `anchor_every` of its time (from the first; no
    /// shorter gaps at the start): a test that
    /// the decoder's anchors correct such a clock. Not for use.
    #[doc(hidden)]
    pub fn with_skewed_tsc(
        chan: Arc<Channel>,
        skew_ppm: i64,
        anchor_every: std::time::Duration,
    ) -> RelayLayer {
        let every = u64::try_from(anchor_every.as_nanos()).unwrap_or(u64::MAX);
        RelayLayer(Arc::new(Inner::new(
            chan,
            Clock::tsc(skew_ppm),
            every,
            every,
        )))
    }

    /// As [`new`](RelayLayer::new), with timestamps always read from
    /// `CLOCK_MONOTONIC` ([`relayfs::frame::now`], what
    /// [`Channel::write_record_timed`] takes): for a channel shared with
    /// other timed writers, whose records then compare with the layer's to
    /// the nanosecond.
    pub fn with_monotonic_clock(chan: Arc<Channel>) -> RelayLayer {
        RelayLayer(Arc::new(Inner::new(
            chan,
            Clock::Monotonic,
            FIRST_ANCHOR_GAP,
            ANCHOR_EVERY,
        )))
    }

    /// The clock of the timestamps: `"tsc"` (the TSC, scaled to
    /// nanoseconds against `CLOCK_MONOTONIC` once a process, and anchored)
    /// or `"monotonic"`.
    pub fn clock(&self) -> &'static str {
        self.0.clock.name()
    }

    /// The layer's clock now: what a record written now would carry, in
    /// nanoseconds (`CLOCK_MONOTONIC`'s, or the scaled TSC's, which differ
    /// by its drift since the calibration).
    pub fn now(&self) -> u64 {
        self.0.clock.now()
    }

    /// The channel.
    pub fn channel(&self) -> &Arc<Channel> {
        &self.0.chan
    }

    /// Writes a clock record: `CLOCK_MONOTONIC` and `CLOCK_REALTIME`, read
    /// one after the other (e.g. again after the wall clock was set).
    pub fn write_clock(&self) {
        self.0.write_clock();
    }

    /// Writes refused by the channel and not reported in a lost record yet.
    pub fn lost_pending(&self) -> u64 {
        self.0.lost_pending()
    }

    /// Writes an anchor record (with the TSC clock), then a lost record for
    /// every buffer with refused writes not yet reported (e.g. before
    /// closing the channel: the decoder then interpolates up to the end).
    /// Those whose record is refused too stay pending.
    pub fn flush_lost(&self) {
        self.0.flush_lost();
    }
}

/// Encodes field values: `field index, tag, value`.
struct Fields<'a>(&'a mut Enc);

impl Fields<'_> {
    #[inline(always)]
    fn head(&mut self, f: &Field, tag: u8) {
        let i = f.index();
        if i < 0x80 {
            // The usual one-byte index: one capacity check for both bytes.
            self.0.buf.extend_from_slice(&[i as u8, tag]);
        } else {
            self.0.varint(i as u64);
            self.0.byte(tag);
        }
    }

    /// Index, tag and an integer's varint; small ones in one copy.
    #[inline(always)]
    fn int(&mut self, f: &Field, tag: u8, v: u64) {
        let i = f.index();
        if i < 0x80 && v < 0x80 {
            self.0.buf.extend_from_slice(&[i as u8, tag, v as u8]);
        } else {
            self.head(f, tag);
            self.0.varint(v);
        }
    }

    /// Appends a length-prefixed text written by `w`, formatted straight
    /// into the record: one byte is kept for the length, and the text moved
    /// up if its length needs a longer varint.
    #[inline]
    fn text(&mut self, w: impl FnOnce(&mut VecWriter<'_>)) {
        let buf = &mut self.0.buf;
        let at = buf.len();
        buf.push(0);
        w(&mut VecWriter(buf));
        let len = (buf.len() - at - 1) as u64;
        if len < 0x80 {
            buf[at] = len as u8;
        } else {
            let mut v = Enc::default();
            v.varint(len);
            buf.splice(at..at + 1, v.buf);
        }
    }
}

/// `fmt::Write` into a byte vector (what `fmt` writes is UTF-8).
struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    #[inline]
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.head(f, wire::TAG_F64);
        self.0.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.int(f, wire::TAG_I64, wire::zigzag(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.int(f, wire::TAG_U64, v);
    }
    fn record_i128(&mut self, f: &Field, v: i128) {
        self.head(f, wire::TAG_I128);
        self.0.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn record_u128(&mut self, f: &Field, v: u128) {
        self.head(f, wire::TAG_U128);
        self.0.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.head(f, if v { wire::TAG_TRUE } else { wire::TAG_FALSE });
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        let i = f.index();
        if i < 0x80 && v.len() < 0x80 {
            // Index, tag and length in one copy.
            let buf = &mut self.0.buf;
            buf.extend_from_slice(&[i as u8, wire::TAG_STR, v.len() as u8]);
            buf.extend_from_slice(v.as_bytes());
        } else {
            self.head(f, wire::TAG_STR);
            self.0.str(v);
        }
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.head(f, wire::TAG_ERROR);
        self.text(|s| {
            let _ = write!(s, "{v}");
            let mut src = v.source();
            while let Some(e) = src {
                let _ = write!(s, ": {e}");
                src = e.source();
            }
        });
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.head(f, wire::TAG_DEBUG);
        self.text(|s| {
            let _ = write!(s, "{v:?}");
        });
    }
}

impl<S: Subscriber> Layer<S> for RelayLayer {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        self.0.callsite_id(meta);
        Interest::always()
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let inner = &*self.0;
        LOCAL.with(|l| {
            inner.encode(l, |e, _| {
                inner.event_head(l, event.metadata(), &mut e.buf);
                event.record(&mut Fields(e));
            })
        });
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let cs = self.0.callsite_id(attrs.metadata());
        let parent = if attrs.is_root() {
            0
        } else if let Some(p) = attrs.parent() {
            p.into_u64()
        } else {
            ctx.current_span().id().map_or(0, Id::into_u64)
        };
        self.0.with_scratch(|e, tid| {
            e.byte(wire::KIND_NEW_SPAN);
            e.varint(cs);
            e.varint(tid);
            e.varint(id.into_u64());
            e.varint(parent);
            attrs.record(&mut Fields(e));
        });
    }

    fn on_record(&self, span: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        self.0.with_scratch(|e, tid| {
            e.byte(wire::KIND_RECORD);
            e.varint(tid);
            e.varint(span.into_u64());
            values.record(&mut Fields(e));
        });
    }

    fn on_enter(&self, id: &Id, _ctx: Context<'_, S>) {
        self.0.span_op(wire::KIND_ENTER, id);
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        self.0.span_op(wire::KIND_EXIT, id);
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        self.0.span_op(wire::KIND_CLOSE, &id);
    }
}
