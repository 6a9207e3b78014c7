//! One relay buffer (the kernel's `struct rchan_buf`): the lock-free
//! reserve / commit / sub-buffer switch protocol, and the reader's side of it.
//!
//! # The protocol
//!
//! In the kernel a write disables preemption and touches only its CPU's
//! buffer, so it needs no atomics. In user space a thread can be preempted or
//! migrated in the middle of a write, so any number of writers can meet on one
//! buffer. The scheme is LTTng-UST's reserve/commit design reduced to what
//! relay needs:
//!
//! * **Reserve**: one compare-and-swap on the buffer's write position
//!   (`head`) claims `len` bytes in the current sub-buffer.
//! * **Commit**: one `fetch_add` on the sub-buffer's commit word adds the
//!   record's bytes and a record count of one (in a per-CPU buffer both the
//!   reservation's CAS and this add are restartable sequences on the
//!   buffer's CPU, with no lock prefix: `crate::rseq`). A sub-buffer is *complete* when
//!   its committed bytes (header reserve, records and padding) reach
//!   `subbuf_size`; the writer whose commit completes it stores the
//!   `COMPLETE | laps` tag that readers look for, and wakes a sleeping reader.
//! * **Switch**: a record that doesn't fit *closes* the sub-buffer (a CAS
//!   moving `head` to the next sub-buffer's start, then a commit of the
//!   padding) and *opens* the next one (a CAS moving `head` past the header
//!   reserve and the record). A sub-buffer may be opened only once every
//!   reservation of its previous lap is committed, and, in no-overwrite mode,
//!   once a reader has consumed it. A refused open drops the record and counts
//!   it; `head` stays at the start of the unopened sub-buffer so the next
//!   write tries again (the kernel's `offset = subbuf_size + 1`).
//!
//! So the fast path is two atomic read-modify-writes, a copy and no system
//! call; everything else happens once per sub-buffer.
//!
//! The memory orderings are explained where they are used; `docs/DESIGN.md`
//! has the full argument.
//!
//! # Overwrite mode and readers
//!
//! A writer that opens a sub-buffer a reader has not consumed overwrites it.
//! Ownership of the overwritten contents is settled by one claim word per
//! slot in the reader page, changed only by compare-and-swap by both sides: the
//! reader claims `READ(ord)` before copying a sub-buffer; an overwriting
//! writer marks `OVERWRITTEN(ord)` unless the reader holds it. Whoever wins
//! does the counting, so each record is counted exactly once: as delivered,
//! as overwritten (by the writer) or as discarded (by the reader, when its
//! copy turned out torn: the sub-buffer's generation changed under it, which
//! it checks seqlock-style after copying).

use crate::layout::{
    desc, hdr, rdr, Geometry, CORRUPT_COMMIT_WORD, CORRUPT_GENERATION, CORRUPT_HEAD,
    CORRUPT_RETRIES, FLAG_OVERWRITE,
};
pub(crate) use crate::stats::BufferStats;
#[cfg(loom)]
use crate::sync::DataCell;
use crate::sync::{fence, AtomicU64, Ordering};
use crate::WriteError;

/// Commit word flag: the sub-buffer's current lap is complete; the low bits
/// count the laps completed on this slot.
pub(crate) const COMPLETE: u64 = 1 << 63;
const BYTES_MASK: u64 = 0xffff_ffff;
const RECORD_ONE: u64 = 1 << 32;
const RECORDS_MASK: u64 = 0x7fff_ffff;

/// Bound on the retries of a writer's slow path (and of `flush`). Every retry
/// of a sound buffer means another writer made progress, so a writer that
/// fails this many times in a row is facing a shared state that something
/// outside the protocol keeps changing: it gives up, drops the record and
/// marks the buffer corrupt rather than spin. A writer never waits.
const MAX_RETRIES: u32 = 1 << 20;
/// Bound on the claim word CAS loops, which race the reader (whose page a
/// hostile reader may keep rewriting).
const MAX_CLAIM_RETRIES: u32 = 1 << 10;

const CLAIM_READ: u64 = 1;
const CLAIM_OVERWRITTEN: u64 = 2;

fn claim(ord: u64, tag: u64) -> u64 {
    ((ord + 1) << 2) | tag
}

/// What the producer's hooks are asked at a sub-buffer switch (implemented by
/// the channel around the user's [`Callbacks`](crate::Callbacks)).
pub(crate) trait Hooks {
    /// May the sub-buffer `info.ordinal` be opened? (`subbuf_start`)
    fn may_open(&self, info: &SwitchInfo) -> bool;
    /// Fill in the header reserve of a sub-buffer just opened.
    fn write_header(&self, info: &SwitchInfo, header: &mut [u8]);
    /// A reader is asleep and a sub-buffer became complete: wake it.
    fn wake_reader(&self);
    /// The producer noticed readers mapping or unmapping the buffer.
    fn map_changed(&self, mapped: u64);
    /// A sub-buffer became complete: its records are in `records_completed`
    /// and the SeqCst fence after that has been passed (what the channel's
    /// counting of commits after close pairs with). Only completions call
    /// it, not every commit.
    fn completed(&self) {}
    /// A sub-buffer switch begins: false if it must be refused because the
    /// channel is closing. Otherwise `end_open` follows once the switch
    /// has moved `head` (or given up): `close` waits for switches in
    /// between, which it can't see in `head` yet.
    fn begin_open(&self) -> bool {
        true
    }
    /// The switch `begin_open` let through is over.
    fn end_open(&self) {}
}

/// Calls `Hooks::end_open` when dropped.
struct Opening<'a>(&'a dyn Hooks);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.end_open();
    }
}

/// State of a buffer at a sub-buffer switch, as given to `subbuf_start`.
#[derive(Debug, Clone, Copy)]
pub struct SwitchInfo {
    /// Ordinal of the sub-buffer to open: how many were opened before it,
    /// which is also how many were produced (closed) so far.
    pub ordinal: u64,
    /// Its index in the buffer.
    pub slot: u64,
    /// Sub-buffers consumed by the reader so far.
    pub consumed: u64,
    /// Number of sub-buffers.
    pub n_subbufs: u64,
    /// Padding of the sub-buffer closed before this one (0 if none).
    pub prev_padding: u64,
    /// Whether opening it overwrites data no reader has consumed
    /// (`relay_buf_full`).
    pub full: bool,
    /// Whether the buffer is in overwrite mode.
    pub overwrite: bool,
}

/// A successful reservation: where the record goes and what its commit adds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reserved {
    /// Write position of the record's first byte.
    pub pos: u64,
    /// Bytes the commit adds (the record, plus the header if it opened the
    /// sub-buffer).
    pub commit_bytes: u64,
}

/// The panic of a failed bounds check on the write path, out of line: a
/// formatted `assert!` there made the fast path spill its arguments to the
/// stack ahead of the branch on every write. These checks never fire for
/// what the protocol hands out; they keep the safe accessors sound.
#[cold]
#[inline(never)]
#[track_caller]
fn beyond(what: &str, at: u64, extra: u64) -> ! {
    panic!("{what} {at:#x} (+{extra}) beyond its region")
}

/// The shared state of one buffer, wherever it lives (a mapped file, or the
/// heap under loom).
///
/// # Safety
///
/// The pointers are valid, aligned and live as long as this value (the owner
/// keeps the mapping alive), and each region is as long as the geometry says
/// (see `Shared::new`). The geometry is private and never changes, so the
/// bounds checks of the accessors (`header_word`, `descriptor`,
/// `reader_word`, `claim_word`, `data_ptr`, `copy_out`, `slot_ptr`) hold for
/// the value's whole life. Readers hold the header and descriptors read-only
/// and only ever load them.
pub(crate) struct Shared {
    /// Sub-buffer size and count, header reserve, region sizes: what every
    /// offset into the regions is checked against. Never changes.
    geometry: Geometry,
    /// The header page's words (`hdr::*` offsets / 8), `hdr::END` bytes:
    /// the producer's fields, `head`, the state, epoch and counters.
    hdr: *const AtomicU64,
    /// The descriptors, `desc::SIZE` bytes per sub-buffer: commit word,
    /// generation, padding and record count of its last lap.
    desc: *const AtomicU64,
    /// The reader page: the reader's position and counters (`rdr::*`
    /// offsets / 8) up to `rdr::CLAIMS`, then one claim word per sub-buffer.
    rdr: *const AtomicU64,
    /// The first data byte: `n_subbufs` sub-buffers of `subbuf_size` bytes,
    /// written by the writer holding each reservation.
    data: *mut u8,
    /// Overwrite mode (`FLAG_OVERWRITE` in the header), copied at creation
    /// since the fast path reads it.
    overwrite: bool,
    /// `geometry.data_len()`, and the mask that takes a position to its
    /// byte offset in the data region (slot and offset bits: `slot <<
    /// sb_shift | offset`), computed once for the fast path. An offset below
    /// `data_len` names a real slot.
    data_len: u64,
    pos_mask: u64,
    /// The loom build's data region (`data` is unused there): one
    /// `DataCell` per byte, so that loom checks the data's publication too.
    #[cfg(loom)]
    cells: *const DataCell,
    /// A producer's per-CPU buffer where restartable sequences are usable:
    /// `head` is then moved by a sequence on the buffer's CPU, or through
    /// the remote-access protocol (see `crate::rseq`), never by a plain CAS.
    #[cfg(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu",
        not(loom)
    ))]
    pin: Option<crate::rseq::Pin>,
}

// SAFETY: all access to the pointed-to memory is through atomics, or through
// the data region whose ownership the protocol hands out (one reservation per
// byte range); the pointers themselves are never changed.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// A buffer's shared state together with the mapping it points into, which
/// lives as long as it (fields drop in order: the state first).
pub(crate) struct Mapped<M> {
    pub shared: Shared,
    _map: M,
}

/// The shared state in `r`, of the buffer whose header is `header`.
///
/// # Safety
///
/// As [`Shared::new`]: `r` comes from a mapping of a file of `header`'s
/// geometry that outlives the returned value.
unsafe fn shared_in(r: crate::shm::Regions, header: &crate::layout::BufferHeader) -> Shared {
    let flags = header.flags();
    // SAFETY: the caller's promise.
    unsafe { Shared::new(header.geometry, r.hdr, r.desc, r.rdr, r.data, flags) }
}

impl Mapped<crate::shm::ProducerMap> {
    /// Initialises a new buffer in the producer's mapping (see
    /// [`Shared::init_new`]).
    pub(crate) fn create(
        map: crate::shm::ProducerMap,
        header: &crate::layout::BufferHeader,
    ) -> Self {
        // SAFETY: the regions come from `map`, mapped read-write with the
        // header's geometry and kept alive beside the state.
        let shared = unsafe { shared_in(map.regions(), header) };
        shared.init_new(header);
        Mapped { shared, _map: map }
    }
}

impl Mapped<crate::shm::ReaderMap> {
    /// A reader's view of an existing buffer whose header was validated as
    /// `header`.
    pub(crate) fn attach(map: crate::shm::ReaderMap, header: &crate::layout::BufferHeader) -> Self {
        // SAFETY: the regions come from `map`, mapped with the validated
        // geometry of `header` and kept alive beside the state; readers only
        // load from the read-only ones.
        let shared = unsafe { shared_in(map.regions(), header) };
        Mapped { shared, _map: map }
    }
}

/// What a reader finds at its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Avail {
    /// Nothing readable yet.
    Nothing,
    /// The sub-buffer is complete: bytes `[0, end)` hold data.
    Complete { end: u64, records: u64 },
    /// No-overwrite mode, the sub-buffer is still being written, and every
    /// reservation up to `end` is committed: `records` of them (the commit
    /// word's count when its bytes were `end`, so exactly those below it).
    Partial { end: u64, records: u64 },
    /// Overwrite mode: the sub-buffer was reused before the reader got to it;
    /// resume at `next`.
    Lapped { next: u64 },
    /// The producer is dead, and the sub-buffer was closed (the head moved
    /// past it) but never completed: a reservation in it was never
    /// committed. Its commit word's committed `bytes` and `records`.
    Stuck { bytes: u64, records: u64 },
}

impl Shared {
    /// # Safety
    ///
    /// For as long as the returned value is used, each pointer is valid for
    /// reads and writes (reads only, for the regions a reader maps read-only
    /// and only loads), 8-aligned, and spans its region as `g` sizes it:
    /// `hdr` at least `hdr::END` bytes, `desc` `g.n_subbufs * desc::SIZE`
    /// bytes, `rdr` `rdr::CLAIMS + 8 * g.n_subbufs` bytes, `data`
    /// `g.data_len()` bytes. The accessors check every offset against `g`
    /// and rely on nothing else.
    pub(crate) unsafe fn new(
        g: Geometry,
        hdr: *const AtomicU64,
        desc: *const AtomicU64,
        rdr: *const AtomicU64,
        data: *mut u8,
        flags: u64,
    ) -> Shared {
        Shared {
            geometry: g,
            hdr,
            desc,
            rdr,
            data,
            overwrite: flags & FLAG_OVERWRITE != 0,
            data_len: g.data_len(),
            pos_mask: u64::MAX
                .checked_shr(64 - (g.sb_shift + g.n_shift).min(64))
                .unwrap_or(0),
            #[cfg(loom)]
            cells: std::ptr::null(),
            #[cfg(all(
                target_arch = "x86_64",
                target_os = "linux",
                target_env = "gnu",
                not(loom)
            ))]
            pin: None,
        }
    }

    /// Initialises a new buffer: the header's fields, state *open*, epoch
    /// 0, the empty protocol state (`init_state`), and the magic last.
    /// Called once, on a file nobody else uses yet.
    fn init_new(&self, header: &crate::layout::BufferHeader) {
        for (off, v) in header.encode() {
            self.header_word(off).store(v, Ordering::Relaxed);
        }
        self.header_word(hdr::STATE)
            .store(crate::layout::STATE_OPEN, Ordering::Relaxed);
        self.header_word(hdr::EPOCH).store(0, Ordering::Relaxed);
        self.init_state();
        // The magic last, so that a file with a valid magic has a whole
        // header behind it.
        // SYNC POINT: the Release pairs with no Acquire: readers check the
        // header with `pread`, not atomic loads. What orders the header
        // before any reader's read is publication: the file gets its name
        // (`linkat` or `renameat2`, after these stores in program order)
        // only once it is whole, and a reader reads it only after finding
        // that name; the two system calls meet on the directory's locks, and
        // `pread` reads the same page cache the mapping writes. `relay_open`'s
        // check of a dead producer's file is ordered by that producer's
        // exit. The Release only keeps the magic after the header for
        // another mapping of the file (it costs nothing here).
        self.header_word(hdr::MAGIC)
            .store(crate::layout::MAGIC, Ordering::Release);
    }

    /// Gives the loom build its data region. Until then, in that build,
    /// `write_at` and `copy_out` panic.
    ///
    /// # Safety
    ///
    /// `cells` points to `geometry.data_len()` cells that live as long as
    /// this value.
    #[cfg(loom)]
    pub(crate) unsafe fn set_data_cells(&mut self, cells: *const DataCell) {
        self.cells = cells;
    }

    /// The loom build's data cells `[off, off + len)`.
    #[cfg(loom)]
    fn cells(&self, off: u64, len: usize) -> &[DataCell] {
        assert!(
            !self.cells.is_null()
                && off <= self.geometry.data_len()
                && len as u64 <= self.geometry.data_len() - off,
            "data cells {off}+{len}"
        );
        // SAFETY: the range lies within the data_len() cells (checked
        // above) that `set_data_cells`' contract keeps alive.
        unsafe { std::slice::from_raw_parts(self.cells.add(off as usize), len) }
    }

    /// The loom build's copy into the data region (see `DataCell`).
    #[cfg(loom)]
    fn cells_write(&self, off: u64, bytes: &[u8]) {
        for (c, &b) in self.cells(off, bytes.len()).iter().zip(bytes) {
            if self.overwrite {
                // SAFETY: loom runs one model thread at a time, so this is
                // never a concurrent access to the byte.
                unsafe { *c.racy.get() = b }
            } else {
                // SAFETY: loom checks that no other access to the byte is
                // concurrent with this one (it fails the model otherwise).
                c.checked.with_mut(|p| unsafe { *p = b });
            }
        }
    }

    /// The loom build's copy out of the data region (see `DataCell`).
    #[cfg(loom)]
    fn cells_read(&self, off: u64, out: &mut [u8]) {
        let len = out.len();
        for (c, o) in self.cells(off, len).iter().zip(out) {
            *o = if self.overwrite {
                // SAFETY: as in `cells_write`.
                unsafe { *c.racy.get() }
            } else {
                // SAFETY: as in `cells_write`.
                c.checked.with(|p| unsafe { *p })
            };
        }
    }

    /// The header word at byte offset `off` (one of the `hdr` offsets).
    ///
    /// # Panics
    /// If `off` is not an 8-aligned offset below `hdr::END`. Every caller
    /// passes a constant, so the check is decided at compile time and costs
    /// nothing; it is a real `assert` so that this safe function stays sound
    /// in release builds whatever it is given.
    #[inline(always)]
    pub(crate) fn header_word(&self, off: usize) -> &AtomicU64 {
        assert!(off < hdr::END && off % 8 == 0, "header offset {off}");
        // SAFETY: `off` is 8-aligned and below hdr::END (checked above), and
        // the header region holds hdr::END bytes of 8-aligned words (the
        // contract of `Shared::new`).
        unsafe { &*self.hdr.add(off / 8) }
    }

    /// The word at byte offset `field` (one of the `desc` offsets) of slot
    /// `slot`'s descriptor.
    ///
    /// # Panics
    /// If `slot >= n_subbufs` or `field` is not an 8-aligned offset below
    /// `desc::SIZE`. Every caller derives `slot` from a position or an
    /// ordinal reduced modulo `n_subbufs` (the fast path checks the slot of
    /// `head` before using it), so this never fires; `field` is a constant.
    #[inline(always)]
    fn descriptor(&self, slot: u64, field: usize) -> &AtomicU64 {
        if !(slot < self.geometry.n_subbufs && field < desc::SIZE && field % 8 == 0) {
            beyond("descriptor", slot, field as u64);
        }
        // SAFETY: slot < n_subbufs and field < desc::SIZE, 8-aligned (checked
        // above), so the word lies within the descriptor region of
        // `n_subbufs * desc::SIZE` bytes (the contract of `Shared::new`).
        unsafe { &*self.desc.add((slot as usize * desc::SIZE + field) / 8) }
    }

    /// The reader-page word at byte offset `off` (one of the `rdr` offsets
    /// below `rdr::CLAIMS`; the claim words have `claim_word`).
    ///
    /// # Panics
    /// If `off` is not an 8-aligned offset below `rdr::CLAIMS` (a constant
    /// at every call, as for `header_word`).
    #[inline(always)]
    pub(crate) fn reader_word(&self, off: usize) -> &AtomicU64 {
        assert!(
            off < rdr::CLAIMS && off % 8 == 0,
            "reader page offset {off}"
        );
        // SAFETY: `off` is 8-aligned and below rdr::CLAIMS (checked above),
        // and the reader region holds rdr::CLAIMS bytes before its claim
        // words (the contract of `Shared::new`).
        unsafe { &*self.rdr.add(off / 8) }
    }

    /// The claim word of slot `slot` in the reader page.
    ///
    /// # Panics
    /// If `slot >= n_subbufs` (never: as for `descriptor`).
    #[inline(always)]
    fn claim_word(&self, slot: u64) -> &AtomicU64 {
        if slot >= self.geometry.n_subbufs {
            beyond("claim word", slot, 0);
        }
        // SAFETY: slot < n_subbufs (checked above), and the reader region
        // holds n_subbufs claim words after rdr::CLAIMS (the contract of
        // `Shared::new`).
        unsafe { &*self.rdr.add(rdr::CLAIMS / 8 + slot as usize) }
    }

    /// The buffer's geometry (fixed for the value's life).
    #[inline(always)]
    pub(crate) fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    pub(crate) fn is_overwrite(&self) -> bool {
        self.overwrite
    }

    /// Sets the shared state to "empty": called on a new buffer and by
    /// `relay_reset`, with no writer active.
    pub(crate) fn init_state(&self) {
        // SYNC POINT: Relaxed, all of the stores below: no writer is active
        // (a new buffer, or `relay_reset`'s `&mut self`), and the Release
        // store of `head` at the end publishes them to whoever acquires
        // `head` next; the stores of this thread before it are ordered by it.
        for slot in 0..self.geometry.n_subbufs {
            self.descriptor(slot, desc::WORD)
                .store(COMPLETE, Ordering::Relaxed);
            self.descriptor(slot, desc::GEN).store(0, Ordering::Relaxed);
            self.descriptor(slot, desc::PAD).store(0, Ordering::Relaxed);
            self.descriptor(slot, desc::REC_LAST)
                .store(0, Ordering::Relaxed);
            self.claim_word(slot).store(0, Ordering::Relaxed);
        }
        for off in [
            hdr::RECORDS_WRITTEN,
            hdr::BYTES_WRITTEN,
            hdr::DROPPED_FULL,
            hdr::DROPPED_TOOBIG,
            hdr::OVERWRITTEN_RECORDS,
            hdr::OVERWRITTEN_SUBBUFS,
            hdr::PADDING_BYTES,
            hdr::LAST_TOOBIG,
            hdr::SUBBUFS_COMPLETED,
            hdr::DROPPED_CORRUPT,
            hdr::CORRUPT,
            hdr::UNREAD_AT_CLOSE,
            hdr::LEFT_TO_READER,
        ] {
            self.header_word(off).store(0, Ordering::Relaxed);
        }
        for off in [
            rdr::CONSUMED,
            rdr::READ_POS,
            rdr::RECORDS_CONSUMED,
            rdr::BYTES_CONSUMED,
            rdr::DISCARDED_SUBBUFS,
            rdr::DISCARDED_RECORDS,
            rdr::HELD,
            rdr::HELD_RECORDS,
            rdr::HELD_LEN,
        ] {
            self.reader_word(off).store(0, Ordering::Relaxed);
        }
        // SYNC POINT: Release publishes the reset state above to whoever
        // acquires the head next (writers' CAS, readers' loads).
        self.header_word(hdr::HEAD).store(0, Ordering::Release);
    }

    // ------------------------------------------------------------------
    // Producer: the fast path
    // ------------------------------------------------------------------

    /// Reserves `len` bytes (1 ≤ len ≤ max_record) for one record.
    /// Always inlined: with the sequence's code the compiler would otherwise
    /// keep it out of line, a call on every write.
    #[inline(always)]
    pub(crate) fn reserve(&self, len: u64, hooks: &dyn Hooks) -> Result<Reserved, WriteError> {
        match self.reserve_fast(len) {
            Some(r) => Ok(r),
            None => self.reserve_slow(
                self.header_word(hdr::HEAD).load(Ordering::Relaxed),
                len,
                hooks,
            ),
        }
    }

    /// The fast path of [`reserve`](Self::reserve) alone: a reservation in
    /// the open sub-buffer, or `None` where the slow path must decide (no
    /// room, a switch, a lost race, a scribbled `head`). A caller that
    /// keeps its own slow path out of line keeps the reservation in
    /// registers (`Channel::write`).
    #[inline(always)]
    pub(crate) fn reserve_fast(&self, len: u64) -> Option<Reserved> {
        let sb = self.geometry.subbuf_size;
        let head = self.header_word(hdr::HEAD);
        // SYNC POINT: Relaxed: only a guess of where to CAS; the CAS below
        // (Acquire) is what synchronizes with the opener, and a stale guess
        // just fails it.
        let h = head.load(Ordering::Relaxed);
        let off = self.geometry.pos_offset(h);
        // The slot test only matters for a head scribbled by someone else (a
        // sound head never names a slot >= n_subbufs): it keeps the copy and
        // the commit inside the buffer whatever the file holds.
        if off == 0 || off + len >= sb || self.data_offset(h) >= self.data_len {
            return None;
        }
        // SYNC POINT: Acquire pairs with the Release of the CAS that
        // opened this sub-buffer (and the release sequence of the CASes
        // after it), so our commit lands after the opener's reset of the
        // commit word, and in overwrite mode our data writes come after
        // its generation bump. Relaxed on failure: the slow path retries
        // (a bounded number of times, from a fresh look at `head`), so the
        // fast path has no loop.
        match self.move_head(h, h + len, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => Some(Reserved {
                pos: h,
                commit_bytes: len,
            }),
            Err(_) => None,
        }
    }

    /// Copies `bytes` to the reserved position. `pos..pos+bytes.len()` must be
    /// a reservation this thread holds.
    #[inline]
    pub(crate) fn write_at(&self, pos: u64, bytes: &[u8]) {
        let off = self.data_offset(pos);
        // One compare on the fast path, always true for a reservation: it
        // keeps this safe function sound in release builds whatever `pos`
        // and `bytes` are (no overflow: off < 2^63, a record < 2^30).
        if off + bytes.len() as u64 > self.data_len {
            beyond("write at position", pos, bytes.len() as u64);
        }
        #[cfg(loom)]
        return self.cells_write(off, bytes);
        // SAFETY: `[off, off + len)` lies within the data region (checked
        // above; `Shared::new`'s contract sizes it). The reservation `[pos,
        // pos + len)` lies within one sub-buffer (reserve never hands out a
        // range crossing its end) and belongs to this thread alone until
        // committed.
        #[cfg(not(loom))]
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data.add(off as usize), bytes.len())
        }
    }

    /// Copies `head` then `body` to the reserved position: `write_at(pos,
    /// head)` and `write_at(pos + head.len(), body)` with one bounds check
    /// (a reservation lies within one sub-buffer, so the two ranges are
    /// contiguous in the data region). `pos..pos+head.len()+body.len()`
    /// must be a reservation this thread holds.
    #[inline(always)]
    pub(crate) fn write_parts_at(&self, pos: u64, head: &[u8], body: &[u8]) {
        let off = self.data_offset(pos);
        let (h, b) = (head.len() as u64, body.len() as u64);
        // As in `write_at`: keeps this safe function sound whatever its
        // arguments (no overflow: off < 2^63, a record < 2^30).
        if off + h + b > self.data_len {
            beyond("write at position", pos, h + b);
        }
        #[cfg(loom)]
        {
            self.cells_write(off, head);
            self.cells_write(off + h, body);
        }
        // SAFETY: `[off, off + h + b)` lies within the data region (checked
        // above); the reservation is this thread's alone until committed
        // (as in `write_at`). The sources are the caller's slices, which
        // can't overlap the mapping's reserved, unpublished bytes.
        #[cfg(not(loom))]
        unsafe {
            let dst = self.data.add(off as usize);
            std::ptr::copy_nonoverlapping(head.as_ptr(), dst, head.len());
            std::ptr::copy_nonoverlapping(body.as_ptr(), dst.add(head.len()), body.len());
        }
    }

    /// The slot of write position `pos`: `data_offset` without the offset
    /// bits (one mask and one shift).
    #[inline(always)]
    fn slot_of(&self, pos: u64) -> u64 {
        self.data_offset(pos) >> self.geometry.sb_shift
    }

    /// Byte offset in the data region of write position `pos` (not checked:
    /// the callers check it before using it).
    #[inline(always)]
    fn data_offset(&self, pos: u64) -> u64 {
        pos & self.pos_mask
    }

    /// Pointer to the data byte at write position `pos`.
    ///
    /// # Panics
    /// If `pos` is outside the data region (never for a position the
    /// protocol hands out).
    #[inline(always)]
    pub(crate) fn data_ptr(&self, pos: u64) -> *mut u8 {
        let off = self.data_offset(pos);
        if off >= self.data_len {
            beyond("position", pos, 0);
        }
        // SAFETY: `off` is within the data region (checked above).
        unsafe { self.data.add(off as usize) }
    }

    /// Moves `head` from `h` to `new` if it is still at `h`
    /// (`compare_exchange`; `Err` holds the value found). Every change of
    /// `head` after `init_state` goes through here: in a buffer pinned to
    /// its CPU (`pin`) as a restartable sequence on that CPU, or as the
    /// remote-access protocol (`crate::rseq`), which stand in for an AcqRel
    /// CAS (Acquire on failure); otherwise a CAS with the given orderings.
    #[inline(always)]
    fn move_head(
        &self,
        h: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        let head = self.header_word(hdr::HEAD);
        #[cfg(all(
            target_arch = "x86_64",
            target_os = "linux",
            target_env = "gnu",
            not(loom)
        ))]
        if let Some(pin) = &self.pin {
            return pin.compare_exchange(head, h, new);
        }
        head.compare_exchange(h, new, success, failure)
    }

    /// `word.fetch_add(add, AcqRel)` on a commit word: in a buffer pinned
    /// to its CPU (`pin_to`) a restartable sequence on that CPU, or the
    /// remote-access protocol (`crate::rseq`); otherwise a locked add.
    /// Every commit goes through here, so a pinned buffer's commit words,
    /// like its `head`, are changed either by sequences of its CPU or by
    /// locked RMWs under the protocol, never by both at once. (The opener's
    /// reset and the completer's store of a commit word need no pin: no
    /// commit of the word can be in flight then, see `try_open` and
    /// `complete`.)
    #[inline(always)]
    fn add_to(&self, word: &AtomicU64, add: u64) -> u64 {
        #[cfg(all(
            target_arch = "x86_64",
            target_os = "linux",
            target_env = "gnu",
            not(loom)
        ))]
        if let Some(pin) = &self.pin {
            return pin.fetch_add(word, add);
        }
        // SYNC POINT: AcqRel: what the caller's comment says (`commit_bytes`).
        word.fetch_add(add, Ordering::AcqRel)
    }

    /// For a run of changes of this buffer's pinned words by a thread that
    /// may not run on the buffer's CPU (`flush`, a write into another CPU's
    /// buffer): one fence of that CPU for the whole run instead of one per
    /// change (`crate::rseq::Pin::hold`). `None` where the buffer is not
    /// pinned; the run is correct without it, only slower.
    #[cfg(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu",
        not(loom)
    ))]
    pub(crate) fn hold(&self) -> Option<crate::rseq::Held<'_>> {
        self.pin.as_ref().filter(|p| !p.shared()).map(|p| p.hold())
    }

    /// As above; nothing is pinned in this build.
    #[cfg(not(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu",
        not(loom)
    )))]
    pub(crate) fn hold(&self) -> Option<()> {
        None
    }

    /// Makes `head` move by restartable sequences on `cpu` (see
    /// `move_head`), where the process can use them. Only the producer moves
    /// `head`, and only a per-CPU buffer has a CPU whose writers can use the
    /// sequence; `&mut self`: no writer uses the buffer yet, and the mode
    /// never changes after, so `head` is never moved by an unmarked CAS
    /// and a sequence at once.
    #[cfg(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu",
        not(loom)
    ))]
    pub(crate) fn pin_to(&mut self, cpu: u64) {
        self.pin = crate::rseq::Pin::new(cpu);
    }

    /// Whether `head` is moved by restartable sequences (see `move_head`):
    /// false too once the buffer went through a `fork` (`crate::rseq`).
    pub(crate) fn pinned(&self) -> bool {
        #[cfg(all(
            target_arch = "x86_64",
            target_os = "linux",
            target_env = "gnu",
            not(loom)
        ))]
        {
            self.pin.as_ref().is_some_and(|p| !p.shared())
        }
        #[cfg(not(all(
            target_arch = "x86_64",
            target_os = "linux",
            target_env = "gnu",
            not(loom)
        )))]
        {
            false
        }
    }

    /// Commits a reservation: the record becomes part of its sub-buffer.
    #[inline(always)]
    pub(crate) fn commit(&self, r: Reserved, hooks: &dyn Hooks) {
        self.commit_bytes(self.slot_of(r.pos), RECORD_ONE | r.commit_bytes, hooks);
    }

    #[inline(always)]
    fn commit_bytes(&self, slot: u64, add: u64, hooks: &dyn Hooks) {
        // SYNC POINT: Release publishes this writer's data (and, for a
        // closer, the padding value) to whoever acquires the completed word;
        // Acquire lets the completer see every other writer's release (each
        // commit acquired the value it added to, so the completer is ordered
        // after every earlier commit of the lap: with locked adds through
        // their release sequence, with sequences through the chain of
        // synchronises-with edges, `crate::rseq`, "Orderings").
        let old = self.add_to(self.descriptor(slot, desc::WORD), add);
        // Wrapping: a scribbled word may be anywhere near u64::MAX.
        let now = old.wrapping_add(add);
        if now & BYTES_MASK == self.geometry.subbuf_size {
            self.complete(slot, now, hooks);
        }
    }

    // ------------------------------------------------------------------
    // Producer: the slow path (one sub-buffer switch)
    // ------------------------------------------------------------------

    #[cold]
    #[inline(never)]
    fn reserve_slow(
        &self,
        mut h: u64,
        len: u64,
        hooks: &dyn Hooks,
    ) -> Result<Reserved, WriteError> {
        // SYNC POINT: Relaxed: a sticky flag that publishes nothing (it
        // pairs with nothing); a writer that misses it for a moment finds the
        // corruption again (or writes to a buffer readers distrust).
        if self.header_word(hdr::CORRUPT).load(Ordering::Relaxed) != 0 {
            return Err(self.drop_corrupt());
        }
        let sb = self.geometry.subbuf_size;
        let head = self.header_word(hdr::HEAD);
        for _ in 0..MAX_RETRIES {
            if self.geometry.pos_slot(h) >= self.geometry.n_subbufs {
                return Err(self.corrupt_drop(CORRUPT_HEAD, hooks));
            }
            let off = self.geometry.pos_offset(h);
            if off != 0 {
                if off + len < sb {
                    // SYNC POINT: Acquire as in `reserve`: pairs with the
                    // opener's AcqRel CAS of `head` (through the release
                    // sequence of later CASes); Relaxed on failure, we retry
                    // with the value read.
                    match self.move_head(h, h + len, Ordering::Acquire, Ordering::Relaxed) {
                        Ok(_) => {
                            return Ok(Reserved {
                                pos: h,
                                commit_bytes: len,
                            })
                        }
                        Err(cur) => {
                            h = cur;
                            continue;
                        }
                    }
                }
                // The record ends exactly at the end of the sub-buffer (no
                // padding), or doesn't fit (close it with padding).
                let next = self.geometry.next_subbuf_pos(h);
                // SYNC POINT: Acquire, as any reservation (see `reserve`):
                // pairs with the opener's AcqRel CAS of `head` (through the
                // release sequence of later RMWs on it), so that our commit
                // of the record or of the padding lands after the opener's
                // reset of the commit word. No Release: nothing this writer
                // did before needs publishing through `head` (the padding
                // is stored after, and published by the commit), and later
                // RMWs continue the opener's release sequence whatever their
                // ordering. Relaxed on failure: we retry with the value read.
                match self.move_head(h, next, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) if off + len == sb => {
                        // We own [off, sb) and the close: padding 0.
                        // SYNC POINT: Relaxed: published by the Release of
                        // our commit (`commit_bytes`), which completes it.
                        self.descriptor(self.geometry.pos_slot(h), desc::PAD)
                            .store(0, Ordering::Relaxed);
                        return Ok(Reserved {
                            pos: h,
                            commit_bytes: len,
                        });
                    }
                    Ok(_) => {
                        self.close(h, sb - off, hooks);
                        h = next;
                    }
                    Err(cur) => {
                        h = cur;
                        continue;
                    }
                }
            }
            match self.try_open(h, len, hooks)? {
                Some(r) => return Ok(r),
                // SYNC POINT: Relaxed: a guess for the next CAS, as in
                // `reserve`.
                None => h = head.load(Ordering::Relaxed),
            }
        }
        Err(self.corrupt_drop(CORRUPT_RETRIES, hooks))
    }

    /// Marks the buffer corrupt (`reason`, one of `layout::CORRUPT_*`; the
    /// first reason found stays), closes the sub-buffer being filled so that
    /// what was committed in it is completed and counted, and leaves `head`
    /// at a sub-buffer start, so every later write takes the slow path,
    /// sees the flag and drops at once. Then drops the caller's record.
    #[cold]
    #[inline(never)]
    fn corrupt_drop(&self, reason: u64, hooks: &dyn Hooks) -> WriteError {
        self.set_corrupt(reason);
        self.flush(hooks);
        self.drop_corrupt()
    }

    /// Sets the corrupt flag, keeping the first reason.
    #[cold]
    fn set_corrupt(&self, reason: u64) {
        // SYNC POINT: Relaxed: a sticky flag read by the slow path and by
        // `stats`; it publishes nothing else, so it pairs with nothing.
        let _ = self.header_word(hdr::CORRUPT).compare_exchange(
            0,
            reason,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Counts a record dropped because the buffer is corrupt.
    #[cold]
    fn drop_corrupt(&self) -> WriteError {
        // SYNC POINT: Relaxed: a counter; it pairs with nothing (readers
        // take a snapshot, see `stats`).
        self.header_word(hdr::DROPPED_CORRUPT)
            .fetch_add(1, Ordering::Relaxed);
        WriteError::Corrupt
    }

    /// A writer at `h` (offset 0: the sub-buffer there is not open yet) found
    /// the slot's generation or commit word unexpected. If `head` is still at
    /// `h` the protocol bounds both, so a value out of those bounds was put
    /// there by something else: returns which (a `CORRUPT_*` reason). `None`:
    /// `head` moved (a stale view, retry) or the values are possible (a
    /// writer of the previous lap has not committed yet).
    #[cold]
    fn impossible_at(&self, h: u64) -> Option<u64> {
        let g = &self.geometry;
        let head = self.header_word(hdr::HEAD);
        // SYNC POINT: Acquire pairs with the release sequence on `head`
        // (every opener's AcqRel CAS heads one, and all later changes of
        // `head` are RMWs): having read `h`, we see everything done before
        // `head` got there, i.e. the previous lap's open of this slot (its
        // generation and word reset).
        if head.load(Ordering::Acquire) != h {
            return None;
        }
        let ord = g.pos_ordinal(h);
        let slot = g.pos_slot(h);
        let lap = g.pos_lap(h);
        // SYNC POINT: Acquire pairs with an opener's generation CAS and a
        // completer's Release store; a value written after `head` left `h`
        // makes the second `head` load below see that too (the writer of the
        // value moved `head` or acquired its move first: coherence), so the
        // check only trusts values that are contemporary with `head == h`.
        let gen = self.descriptor(slot, desc::GEN).load(Ordering::Acquire);
        let w = self.descriptor(slot, desc::WORD).load(Ordering::Acquire);
        // SYNC POINT: Acquire, as the first load: see above.
        if head.load(Ordering::Acquire) != h {
            return None;
        }
        // The previous lap's opener set `ord + 1 - n`; an opener of `ord`
        // (mid-open) sets `ord + 1`; nothing else can be there yet.
        if gen > ord + 1 || (ord >= g.n_subbufs && gen < ord + 1 - g.n_subbufs) {
            return Some(CORRUPT_GENERATION);
        }
        // Possible: `COMPLETE | lap` (previous lap complete), or a lap being
        // committed (at most subbuf_size bytes), or 0 (reset by an opener).
        let possible = if w & COMPLETE != 0 {
            w == COMPLETE | lap
        } else {
            w & BYTES_MASK <= g.subbuf_size
        };
        if possible {
            None
        } else {
            Some(CORRUPT_COMMIT_WORD)
        }
    }

    /// Closes the sub-buffer `pos` is in with `pad` bytes of padding; the
    /// caller won the CAS that moved `head` past it.
    fn close(&self, pos: u64, pad: u64, hooks: &dyn Hooks) {
        let slot = self.geometry.pos_slot(pos);
        // SYNC POINT: Relaxed: the padding is published by the Release of
        // the commit below (the completer's commit, or a reader's Acquire
        // load of the word, is ordered after it: `commit_bytes`); the
        // padding counter pairs with nothing.
        self.descriptor(slot, desc::PAD)
            .store(pad, Ordering::Relaxed);
        self.header_word(hdr::PADDING_BYTES)
            .fetch_add(pad, Ordering::Relaxed);
        self.commit_bytes(slot, pad, hooks);
    }

    /// Tries to open the sub-buffer starting at `h` (offset 0) with a record of
    /// `len` bytes. `Ok(None)`: `head` moved, retry.
    fn try_open(
        &self,
        h: u64,
        len: u64,
        hooks: &dyn Hooks,
    ) -> Result<Option<Reserved>, WriteError> {
        let g = &self.geometry;
        let ord = g.pos_ordinal(h);
        let slot = g.pos_slot(h);
        let lap = g.pos_lap(h);
        let gen = self.descriptor(slot, desc::GEN);
        let word = self.descriptor(slot, desc::WORD);
        // SYNC POINT: Acquire pairs with the completer's Release store of
        // `COMPLETE | laps` (and with a competing opener's generation CAS):
        // everything of the previous lap, its padding and record count, is
        // visible once we see it complete.
        let cur_gen = gen.load(Ordering::Acquire);
        if cur_gen > ord + 1 {
            // Head moved on long ago (retry), or the generation was
            // scribbled: retrying would then spin forever.
            return match self.impossible_at(h) {
                Some(reason) => Err(self.corrupt_drop(reason, hooks)),
                None => Ok(None),
            };
        }
        if cur_gen < ord + 1 && word.load(Ordering::Acquire) != COMPLETE | lap {
            // A writer of the previous lap has not committed yet, or the
            // word holds something the protocol never writes.
            return Err(match self.impossible_at(h) {
                Some(reason) => self.corrupt_drop(reason, hooks),
                None => self.drop_full(),
            });
        }
        self.check_map_events(hooks);
        // From the closed check to the move of `head`, `close` can't see
        // this switch in the buffer: it waits for it through the hooks.
        if !hooks.begin_open() {
            return Err(self.drop_full());
        }
        let _opening = Opening(hooks);
        // SYNC POINT: Acquire pairs with the reader's Release store of
        // `consumed` after it finished copying: in no-overwrite mode the slot
        // is reused only after the reader's reads are done.
        let consumed = self
            .reader_word(rdr::CONSUMED)
            .load(Ordering::Acquire)
            .min(ord);
        let full = ord - consumed >= g.n_subbufs;
        let prev_slot = if slot == 0 { g.n_subbufs - 1 } else { slot - 1 };
        let info = SwitchInfo {
            ordinal: ord,
            slot,
            consumed,
            n_subbufs: g.n_subbufs,
            prev_padding: if ord == 0 {
                0
            } else {
                // SYNC POINT: Relaxed: information for `subbuf_start` only;
                // the previous sub-buffer's closer stored it before moving
                // `head` to us, which we acquired, except when a later lap
                // overwrote it meanwhile (then it is that lap's, as in the
                // kernel's racy read of it).
                self.descriptor(prev_slot, desc::PAD)
                    .load(Ordering::Relaxed)
            },
            full,
            overwrite: self.overwrite,
        };
        if !hooks.may_open(&info) || (full && !self.overwrite) {
            return Err(self.drop_full());
        }
        if cur_gen < ord + 1 {
            // Claim the generation: stale openers (older ordinals) fail here
            // because the generation only grows.
            // SYNC POINT: AcqRel: the Release half makes a competing opener
            // (or a reader's Acquire load in `available`) that sees the new
            // generation also see the complete word we saw; the Acquire half
            // (and Acquire on failure) pairs with a competing opener's
            // release of the same, so the word CAS below sees that word.
            if let Err(g2) =
                gen.compare_exchange(cur_gen, ord + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                if g2 != ord + 1 {
                    return Ok(None);
                }
            }
        }
        // Reset the commit word for this lap. Whoever does it first wins;
        // the value `COMPLETE | lap` occurs once in the word's history, so a
        // late CAS can't succeed after writers started committing.
        // SYNC POINT: AcqRel: Acquire pairs with the completer's Release
        // store of `COMPLETE | lap` (the previous lap's data is done before
        // ours is written); Release makes the reset part of what our `head`
        // CAS below publishes, and pairs with a reader's reload of the word
        // in `available` (it sees the reset after our generation bump).
        let _ = word.compare_exchange(COMPLETE | lap, 0, Ordering::AcqRel, Ordering::Acquire);
        // Records of the previous lap: stable until this sub-buffer completes,
        // which can't happen before we open it.
        // SYNC POINT: Relaxed: the completer stored it before its Release
        // store of the word, which our Acquire load of the word acquired.
        let prev_records = self
            .descriptor(slot, desc::REC_LAST)
            .load(Ordering::Relaxed);
        let hdr_len = g.hdr_reserve;
        // SYNC POINT: Release publishes the word reset and the generation
        // bump to the writers that reserve in this sub-buffer (their Acquire
        // CAS); Acquire as for any reservation.
        if self
            .move_head(h, h + hdr_len + len, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Ok(None);
        }
        if ord >= g.n_subbufs {
            self.account_overwrite(slot, ord - g.n_subbufs, prev_records);
        }
        #[cfg(loom)]
        if hdr_len > 0 {
            let mut header = vec![0u8; hdr_len as usize];
            hooks.write_header(&info, &mut header);
            self.write_at(h, &header);
        }
        #[cfg(not(loom))]
        if hdr_len > 0 {
            let p = self.data_ptr(h);
            // SAFETY: the header reserve [h, h + hdr_len) of the sub-buffer we
            // just opened is ours alone (the CAS above handed it to us), and
            // lies within the sub-buffer (hdr_reserve < subbuf_size).
            let header = unsafe { std::slice::from_raw_parts_mut(p, hdr_len as usize) };
            hooks.write_header(&info, header);
        }
        Ok(Some(Reserved {
            pos: h + hdr_len,
            commit_bytes: hdr_len + len,
        }))
    }

    /// We opened a slot over the sub-buffer with ordinal `prev`; unless a
    /// reader claimed it (to read it, or because it read it already), its
    /// records are overwritten: count them. The reader's consumed position is
    /// no guide: a reader that finds a sub-buffer lapped skips it without
    /// claiming it, possibly before we get here. A claimed one is left to
    /// the reader, and that is said in `hdr::LEFT_TO_READER`: the claim word
    /// says it only until the slot's next lap, and a reader killed while it
    /// held the sub-buffer leaves it to the next reader, which may come
    /// laps later (`Shared::left_to_reader`).
    fn account_overwrite(&self, slot: u64, prev: u64, prev_records: u64) {
        let cw = self.claim_word(slot);
        // SYNC POINT: Relaxed: only the expected value for the CAS below,
        // which is what pairs with the reader's claim.
        let mut cur = cw.load(Ordering::Relaxed);
        // Bounded: only a reader rewriting its page without end makes this
        // fail again and again; then the records are counted here anyway.
        for _ in 0..MAX_CLAIM_RETRIES {
            if cur == claim(prev, CLAIM_READ) {
                // The reader has it: it delivers or discards it.
                // SYNC POINT: Release: a reader that finds a later lap's
                // word in this claim word loads LEFT_TO_READER after its
                // Acquire load of the claim word. That later word was
                // written by the opener of a lap after the one we are
                // opening, which could open only once our lap completed,
                // so after our first reservation's commit: our store here
                // happens before it through the commit word (our commit's
                // release, the completer's Release store of COMPLETE, the
                // next opener's AcqRel CAS of the word) and that opener's
                // AcqRel claim CAS. Release makes the pairing explicit for
                // a reader that reads this very value. A maximum, not a
                // store: openers of different slots may get here out of
                // order, and claimed ordinals only grow.
                self.header_word(hdr::LEFT_TO_READER)
                    .fetch_max(prev + 1, Ordering::Release);
                return;
            }
            // SYNC POINT: the claim word is only changed by CAS, by us and by
            // the reader (`claim_for_read`), so exactly one of us takes
            // ownership of `prev`; AcqRel pairs with the reader's AcqRel CAS
            // and with `count_unread_at_close`'s Acquire load. Relaxed on
            // failure: we look at the value read and retry.
            match cw.compare_exchange(
                cur,
                claim(prev, CLAIM_OVERWRITTEN),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
        // SYNC POINT: Relaxed: counters; they pair with nothing (snapshots).
        self.header_word(hdr::OVERWRITTEN_RECORDS)
            .fetch_add(prev_records, Ordering::Relaxed);
        self.header_word(hdr::OVERWRITTEN_SUBBUFS)
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The commit that brought `slot` to `subbuf_size` bytes: publish it.
    #[cold]
    #[inline(never)]
    fn complete(&self, slot: u64, word_now: u64, hooks: &dyn Hooks) {
        let records = (word_now >> 32) & RECORDS_MASK;
        // SYNC POINT: Relaxed loads of the padding and generation: the
        // closer's padding store was released by its commit and the opener's
        // generation by its CASes, and our commit read the value left by
        // every earlier commit of the lap (`commit_bytes`), so it acquired
        // both. The stores and counter updates after them are Relaxed: the
        // Release store of the word below publishes REC_LAST; the counters
        // pair with nothing (but the count of sub-buffers completed, below).
        let pad = self.descriptor(slot, desc::PAD).load(Ordering::Relaxed);
        // gen = ordinal + 1 of the opener; it can't have moved (the slot
        // can't be reopened before this store).
        let ord = self
            .descriptor(slot, desc::GEN)
            .load(Ordering::Relaxed)
            .wrapping_sub(1);
        let lap = ord / self.geometry.n_subbufs;
        self.descriptor(slot, desc::REC_LAST)
            .store(records, Ordering::Relaxed);
        self.header_word(hdr::RECORDS_WRITTEN)
            .fetch_add(records, Ordering::Relaxed);
        self.header_word(hdr::BYTES_WRITTEN).fetch_add(
            self.geometry.subbuf_size
                - self.geometry.hdr_reserve
                - pad.min(self.geometry.max_record()),
            Ordering::Relaxed,
        );
        // SYNC POINT: Release pairs with the Acquire loads of the word by
        // readers (`available`) and openers (`try_open`): the data, padding
        // and record count of this lap are visible to whoever sees it
        // complete.
        self.descriptor(slot, desc::WORD)
            .store(COMPLETE | lap.wrapping_add(1), Ordering::Release);
        // After the word: close's `settle` takes "as many completed as
        // produced" to mean every word is complete before it stores the
        // state closed, after which a reader stops at the first sub-buffer
        // it finds incomplete.
        // SYNC POINT: Release (the store of the word above comes before)
        // pairs with `settle`'s Acquire load of the counter.
        self.header_word(hdr::SUBBUFS_COMPLETED)
            .fetch_add(1, Ordering::Release);
        // SYNC POINT: Dekker with the reader's `prepare_wait`: it stores
        // WAITING then fences then looks for data; we store COMPLETE then
        // fence then look at WAITING. One of us sees the other's store, so a
        // reader never sleeps on a complete sub-buffer.
        fence(Ordering::SeqCst);
        // SYNC POINT: Relaxed load and store of WAITING: the SeqCst fences
        // on both sides do the ordering (above and in `prepare_wait`).
        if self.reader_word(rdr::WAITING).load(Ordering::Relaxed) != 0 {
            self.reader_word(rdr::WAITING).store(0, Ordering::Relaxed);
            hooks.wake_reader();
        }
        hooks.completed();
    }

    /// Counts a record dropped because the buffer is full.
    fn drop_full(&self) -> WriteError {
        // SYNC POINT: Relaxed: a counter; it pairs with nothing.
        self.header_word(hdr::DROPPED_FULL)
            .fetch_add(1, Ordering::Relaxed);
        WriteError::Full
    }

    /// Counts a record too big for any sub-buffer.
    #[cold]
    pub(crate) fn drop_toobig(&self, len: usize) -> WriteError {
        // SYNC POINT: Relaxed: counters; they pair with nothing.
        self.header_word(hdr::DROPPED_TOOBIG)
            .fetch_add(1, Ordering::Relaxed);
        self.header_word(hdr::LAST_TOOBIG)
            .store(len as u64, Ordering::Relaxed);
        WriteError::TooBig(len)
    }

    /// Closes the current sub-buffer, if it holds anything, so that readers
    /// can read it (`relay_flush`). Returns whether one was closed.
    pub(crate) fn flush(&self, hooks: &dyn Hooks) -> bool {
        let g = &self.geometry;
        let head = self.header_word(hdr::HEAD);
        // SYNC POINT: Acquire pairs with the opener's AcqRel CAS of `head`
        // (as in `impossible_at`); the CAS below is what decides.
        let mut h = head.load(Ordering::Acquire);
        // Taken once there is something to close: the move of `head` and
        // the padding's commit then fence the buffer's CPU once together.
        let mut _held = None;
        for _ in 0..MAX_RETRIES {
            if g.pos_slot(h) >= g.n_subbufs {
                // A scribbled head: put it at the start of a real sub-buffer
                // (slot 0 of the next lap) so no writer uses it.
                self.set_corrupt(CORRUPT_HEAD);
                let fixed = g
                    .pos_lap(h)
                    .wrapping_add(1)
                    .wrapping_shl(g.sb_shift + g.n_shift);
                // SYNC POINT: AcqRel as any move of `head`; a failure means
                // someone else moved it: the flag stops writers anyway.
                let _ = self.move_head(h, fixed, Ordering::AcqRel, Ordering::Relaxed);
                return false;
            }
            let off = g.pos_offset(h);
            if off == 0 {
                return false;
            }
            let next = g.next_subbuf_pos(h);
            if _held.is_none() {
                _held = Some(self.hold());
            }
            // SYNC POINT: AcqRel: Acquire as for a closing writer in
            // `reserve_slow` (our padding commit lands after the opener's
            // word reset); the Release half is not needed for that (see
            // there) and is kept on this once-per-flush path. Acquire on
            // failure, as the first load.
            match self.move_head(h, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.close(h, g.subbuf_size - off, hooks);
                    self.check_map_events(hooks);
                    return true;
                }
                Err(cur) => h = cur,
            }
        }
        self.set_corrupt(CORRUPT_RETRIES);
        false
    }

    /// Calls `buf_mapped`/`buf_unmapped` if readers mapped or unmapped the
    /// buffer since the last look (from the slow path only).
    fn check_map_events(&self, hooks: &dyn Hooks) {
        // SYNC POINT: Relaxed, all: event counts and a mapping count for the
        // `buf_mapped`/`buf_unmapped` callbacks; they publish no other
        // memory, so they pair with nothing. The CAS on the producer's
        // `MAP_EVENTS_SEEN` only makes one writer report each change.
        let ev = self.reader_word(rdr::MAP_EVENTS).load(Ordering::Relaxed);
        let seen = self.header_word(hdr::MAP_EVENTS_SEEN);
        let old = seen.load(Ordering::Relaxed);
        if ev != old
            && seen
                .compare_exchange(old, ev, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            hooks.map_changed(self.reader_word(rdr::MAPPED).load(Ordering::Relaxed));
        }
    }

    // ------------------------------------------------------------------
    // Reader
    // ------------------------------------------------------------------

    /// Current write position.
    pub(crate) fn head(&self) -> u64 {
        // SYNC POINT: Acquire pairs with the opener's AcqRel CAS of `head`
        // (and the release sequence of the RMWs after it): whoever sees a
        // position sees the generation bump and word reset of the sub-buffer
        // it is in.
        self.header_word(hdr::HEAD).load(Ordering::Acquire)
    }

    /// What can be read at ordinal `ord`. Never trusts a value read from
    /// shared memory without checking it against the geometry.
    /// `writers_gone`: the producer is dead, so nothing can change any more
    /// (overwrite mode may then read the open sub-buffer too).
    pub(crate) fn available(
        &self,
        ord: u64,
        writers_gone: bool,
    ) -> Result<Avail, crate::FormatError> {
        let g = &self.geometry;
        // The reader's position comes from the reader page: check it before
        // any arithmetic on it. A reader is never ahead of the producer.
        if ord > g.pos_ordinal(self.head()) {
            return Err(crate::FormatError::Corrupt(
                "reader position beyond the write position",
            ));
        }
        let slot = ord % g.n_subbufs;
        let lap = ord / g.n_subbufs;
        // SYNC POINT: Acquire pairs with the opener's generation CAS.
        let gen = self.descriptor(slot, desc::GEN).load(Ordering::Acquire);
        if gen < ord + 1 {
            return Ok(Avail::Nothing);
        }
        if gen > ord + 1 {
            let h = self.head();
            // An opener sets the generation just before moving the head, so
            // it can never be ahead of the sub-buffer being opened.
            if gen > g.pos_ordinal(h) + 1 {
                return Err(crate::FormatError::Corrupt(
                    "sub-buffer generation ahead of the write position",
                ));
            }
            // The oldest sub-buffer that can still be intact: the last
            // n_subbufs opened.
            let opened = g.pos_ordinal(h) + u64::from(g.pos_offset(h) != 0);
            let next = (ord + 1).max(opened.saturating_sub(g.n_subbufs));
            return Ok(Avail::Lapped { next });
        }
        // SYNC POINT: Acquire pairs with the completer's Release store.
        let w = self.descriptor(slot, desc::WORD).load(Ordering::Acquire);
        if w == COMPLETE | (lap + 1) {
            let pad = self.descriptor(slot, desc::PAD).load(Ordering::Relaxed);
            if pad > g.max_record() {
                return Err(crate::FormatError::Corrupt(
                    "padding larger than a sub-buffer",
                ));
            }
            let records = self
                .descriptor(slot, desc::REC_LAST)
                .load(Ordering::Relaxed);
            // The slot may have been reopened, and even completed again, since
            // we saw it complete: then the padding and record count may be a
            // later lap's, and counting them would be wrong. Look again: only
            // an opener changes a complete word, so if it changed, `ord` is
            // gone (the next look from `ord + 1` finds how far).
            // SYNC POINT: the Acquire fence keeps the two loads above before
            // the reload; the reload's Acquire pairs with the opener's word
            // reset (AcqRel, after its generation bump).
            fence(Ordering::Acquire);
            if self.descriptor(slot, desc::WORD).load(Ordering::Acquire) != w {
                return Ok(Avail::Lapped { next: ord + 1 });
            }
            return Ok(Avail::Complete {
                end: g.subbuf_size - pad,
                records,
            });
        }
        if w & COMPLETE != 0 {
            return if w & !COMPLETE > lap + 1 {
                Ok(Avail::Lapped { next: ord + 1 })
            } else {
                Ok(Avail::Nothing)
            };
        }
        if self.overwrite && !writers_gone {
            return Ok(Avail::Nothing);
        }
        let h1 = self.head();
        if writers_gone && g.pos_ordinal(h1) > ord && self.open_word(ord).is_none() {
            // Closed, and behind the head: not the sub-buffer the dead
            // producer was writing, yet never completed (it died holding a
            // reservation in it). Nothing will complete it.
            return Ok(Avail::Stuck {
                bytes: w & BYTES_MASK,
                records: (w >> 32) & RECORDS_MASK,
            });
        }
        // Still being written: readable up to the head if every reservation
        // before it is committed (committed bytes == reserved bytes, with no
        // reservation in between: the head didn't move).
        if g.pos_ordinal(h1) != ord || g.pos_offset(h1) == 0 {
            return Ok(Avail::Nothing);
        }
        // SYNC POINT: Acquire pairs with the writers' commits (AcqRel
        // adds, or sequences on a pinned buffer): each acquired the value
        // it added to (`commit_bytes`), so reading `w` synchronizes with
        // every commit counted in it, and the bytes below `pos_offset(h1)`
        // are visible when `w` covers them.
        let w = self.descriptor(slot, desc::WORD).load(Ordering::Acquire);
        let h2 = self.head();
        if h1 == h2 && w & COMPLETE == 0 && w & BYTES_MASK == g.pos_offset(h1) {
            Ok(Avail::Partial {
                end: g.pos_offset(h1),
                records: (w >> 32) & RECORDS_MASK,
            })
        } else {
            Ok(Avail::Nothing)
        }
    }

    /// What is stuck in the open sub-buffer `ord` behind a reservation that
    /// was never committed (the producer died holding it): bytes reserved
    /// from `from` on, and records committed in the sub-buffer. `None` if
    /// `ord` is not the open sub-buffer.
    pub(crate) fn abandoned(&self, ord: u64, from: u64) -> Option<(u64, u64)> {
        let (end, w) = self.open_word(ord)?;
        Some((end.saturating_sub(from), (w >> 32) & RECORDS_MASK))
    }

    /// The commit word of the open sub-buffer `ord`: its committed bytes
    /// and records. `None` if `ord` is not the open sub-buffer.
    pub(crate) fn open_commit(&self, ord: u64) -> Option<(u64, u64)> {
        let (_, w) = self.open_word(ord)?;
        Some((w & BYTES_MASK, (w >> 32) & RECORDS_MASK))
    }

    /// The sub-buffer `ord` is the open one (reserved in, not complete):
    /// how far it is reserved, and its commit word. The head is in it, or
    /// at the start of the next one when the last reservation ends exactly
    /// at its end (no padding: that reservation's commit completes it) and
    /// is not committed yet; the next one is not opened then, so the head
    /// stays there if the producer died holding that reservation. (One
    /// closed with padding, by a switch or a flush, while a reservation in
    /// it was not committed is not the open one: its records are pending
    /// (`closed_incomplete_records`) until it completes, and given up by a
    /// reader if the producer died (`Avail::Stuck`).)
    fn open_word(&self, ord: u64) -> Option<(u64, u64)> {
        let g = &self.geometry;
        let h = self.head();
        let slot = ord % g.n_subbufs;
        let end = if g.pos_ordinal(h) == ord && g.pos_offset(h) != 0 {
            g.pos_offset(h)
        } else if g.pos_ordinal(h) == ord.checked_add(1)?
            && g.pos_offset(h) == 0
            // SYNC POINT: Relaxed: the writer that reserved up to the end
            // stored 0 right after its move of `head`, which we acquired
            // (`head`); a closer stores the padding there instead.
            && self.descriptor(slot, desc::PAD).load(Ordering::Relaxed) == 0
        {
            g.subbuf_size
        } else {
            return None;
        };
        // SYNC POINT: Acquire, both: the generation as in `available`
        // (pairs with the opener's CAS), the word as the word load of the
        // partial read there (only counts are used here).
        if self.descriptor(slot, desc::GEN).load(Ordering::Acquire) != ord.wrapping_add(1) {
            return None;
        }
        let w = self.descriptor(slot, desc::WORD).load(Ordering::Acquire);
        (w & COMPLETE == 0).then_some((end, w))
    }

    /// Claims ordinal `ord` for reading. `false`: a writer overwrote it (and
    /// counted it).
    pub(crate) fn claim_for_read(&self, ord: u64) -> bool {
        let cw = self.claim_word(ord % self.geometry.n_subbufs);
        // SYNC POINT: Relaxed: only the expected value for the CAS below,
        // which pairs with the overwriting writer's CAS.
        let mut cur = cw.load(Ordering::Relaxed);
        // Bounded: a writer changes the word once per lap; only something
        // rewriting the page without end makes this fail again and again,
        // and then the sub-buffer is given up (as if overwritten).
        for _ in 0..MAX_CLAIM_RETRIES {
            if cur == claim(ord, CLAIM_OVERWRITTEN) {
                return false;
            }
            if cur == claim(ord, CLAIM_READ) {
                return true;
            }
            if cur >> 2 > ord + 1 {
                // The word speaks of a later lap of this slot: `ord` was
                // lapped at least twice since the reader found it complete.
                // The writer that opened the lap after `ord` settled `ord`'s
                // claim before that lap could complete (its own reservation
                // was pending), so before this later word was written: it
                // counted `ord` as overwritten (the reader, had it claimed
                // `ord`, would not be asking). Claiming now would count
                // those records a second time, as discarded.
                return false;
            }
            // SYNC POINT: pairs with the writer's CAS in `account_overwrite`.
            match cw.compare_exchange(
                cur,
                claim(ord, CLAIM_READ),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(c) => cur = c,
            }
        }
        false
    }

    /// Claims the complete sub-buffer `ord` (`end` data bytes, `records`
    /// records) for reading, recording it as *held* in the reader page
    /// first: `HELD_LEN`, `HELD_RECORDS`, then `HELD = ord + 1`, all before
    /// the claim CAS. A reader killed anywhere after these stores leaves
    /// enough for the next one to count the sub-buffer once (`drop_held`):
    /// if the claim was made, a writer that laps it leaves it to the reader
    /// (`account_overwrite`); if not, the writer counts it. `false`: a writer
    /// overwrote it before the claim and counted it (or, if a reader before
    /// us had claimed it, left it, and then it is counted here as that
    /// reader's); the held record is cleared.
    pub(crate) fn claim_held(&self, ord: u64, end: u64, records: u64) -> bool {
        // SYNC POINT: Relaxed stores: the reader's own words (see `holds`).
        // They are ordered before the claim CAS by its Release half (AcqRel
        // in `claim_for_read`), so that compiler and CPU make them first: a
        // reader killed after the CAS has made them. A `claim_for_read`
        // that finds the claim made already (by a reader before us) makes
        // no CAS; then that reader stored them before its own CAS, and the
        // reader lock orders us after it.
        self.reader_word(rdr::HELD_LEN)
            .store(end, Ordering::Relaxed);
        self.reader_word(rdr::HELD_RECORDS)
            .store(records, Ordering::Relaxed);
        self.reader_word(rdr::HELD)
            .store(ord + 1, Ordering::Relaxed);
        if self.claim_for_read(ord) {
            return true;
        }
        self.drop_held(ord);
        false
    }

    /// Whether the writer that lapped `ord`'s slot left `ord` to the reader
    /// (it found the claim `READ(ord)`) rather than counting it
    /// overwritten. Asked by the reader that holds `ord` (stored as held
    /// before any claim) once it found `ord` lapped or its copy torn: then
    /// a writer has opened the slot's next lap, and settled, or will
    /// settle, `ord`'s claim.
    ///
    /// - `READ(ord)`: the claim was made; the writer of the next lap leaves
    ///   it (nothing else changes that word before that writer has looked
    ///   at it: a later lap's writer comes only after that lap completed).
    /// - `OVERWRITTEN(ord)`: the writer counted it.
    /// - a word of a later lap: the writer of the next lap settled `ord`
    ///   before that later lap could complete, so before this word was
    ///   written; whether it left `ord` is in `hdr::LEFT_TO_READER`, which
    ///   it raised to `ord + 1` if so. Nothing raises it further while we
    ///   hold `ord`: only claimed sub-buffers raise it, and a reader claims
    ///   only at its position, which is `ord` until it is settled.
    /// - anything older: the claim was never made (the reader that held
    ///   `ord` died before its CAS): the writer counts it.
    pub(crate) fn left_to_reader(&self, ord: u64) -> bool {
        // SYNC POINT: Acquire pairs with the claim CASes (AcqRel) of the
        // writers: having read a later lap's word, we see what the writer
        // of `ord`'s next lap stored in LEFT_TO_READER before it (see
        // `account_overwrite`).
        let cw = self
            .claim_word(ord % self.geometry.n_subbufs)
            .load(Ordering::Acquire);
        if cw == claim(ord, CLAIM_READ) {
            return true;
        }
        if cw >> 2 > ord + 1 {
            // SYNC POINT: Acquire pairs with the writer's Release
            // `fetch_max` (and the happens-before through the claim word
            // above covers it in any case).
            return self
                .header_word(hdr::LEFT_TO_READER)
                .load(Ordering::Acquire)
                > ord;
        }
        false
    }

    /// The mapping reader's next sub-buffer: claims the complete sub-buffer at
    /// the reader's position (as `read` does before copying) and records it
    /// as held, so that it is counted exactly once however it ends: delivered
    /// or discarded when the reader consumes it (`consume_held`), discarded if
    /// it is overwritten under the claim (`drop_held`). Sub-buffers found
    /// lapped are skipped unclaimed (their writers count them), and one a
    /// writer overwrote before the claim is passed over (the writer counted
    /// it). Returns `(ordinal, data bytes, records)`.
    ///
    /// `writers_gone`: the producer is dead, so the sub-buffer it was
    /// writing is returned too, as far as every reservation in it is
    /// committed (as `read` reads it), if none of it was read yet.
    pub(crate) fn map_ready(
        &self,
        writers_gone: bool,
    ) -> Result<Option<(u64, u64, u64)>, crate::FormatError> {
        // Bounded: each pass returns or moves the position forward, and only
        // so many sub-buffers were produced (`available` checks the position).
        loop {
            // SYNC POINT: Acquire pairs with the Release stores of CONSUMED by
            // an earlier reader of this file (possibly another process).
            let ord = self.reader_word(rdr::CONSUMED).load(Ordering::Acquire);
            match self.available(ord, writers_gone)? {
                Avail::Partial { end, records } if writers_gone && self.read_pos() == 0 => {
                    if !self.claim_held(ord, end, records) {
                        return Err(crate::FormatError::Corrupt(
                            "sub-buffer being written is claimed as overwritten",
                        ));
                    }
                    return Ok(Some((ord, end, records)));
                }
                Avail::Complete { end, records } => {
                    if !self.claim_held(ord, end, records) {
                        // Overwritten before we claimed it, and counted by its
                        // writer (or by `claim_held`, if a reader before us
                        // claimed it and died).
                        self.set_position(ord + 1);
                        continue;
                    }
                    return Ok(Some((ord, end, records)));
                }
                Avail::Lapped { next } => self.skip_lapped(ord, next),
                Avail::Stuck { bytes, records } => {
                    // Given up, counted, and passed (`cursor::give_up_stuck`),
                    // unless a hand-off is in flight in it.
                    if !crate::cursor::give_up_stuck(self, ord, bytes, records) {
                        return Ok(None);
                    }
                }
                Avail::Nothing | Avail::Partial { .. } => return Ok(None),
            }
        }
    }

    /// Whether `map_ready` would find something at the reader's position
    /// (a lapped sub-buffer counts: there is news).
    pub(crate) fn map_waiting(&self, writers_gone: bool) -> Result<bool, crate::FormatError> {
        // SYNC POINT: Acquire as in `map_ready`.
        let ord = self.reader_word(rdr::CONSUMED).load(Ordering::Acquire);
        Ok(match self.available(ord, writers_gone)? {
            Avail::Complete { .. } | Avail::Lapped { .. } => true,
            Avail::Partial { .. } => writers_gone && self.read_pos() == 0,
            // `map_ready` gives it up and moves on.
            Avail::Stuck { .. } => !crate::cursor::handoff_in_flight(self),
            Avail::Nothing => false,
        })
    }

    fn read_pos(&self) -> u64 {
        // SYNC POINT: Relaxed, as in `holds`.
        self.reader_word(rdr::READ_POS).load(Ordering::Relaxed)
    }

    /// Whether the reader holds `ord` (recorded by `claim_held`, not yet
    /// counted).
    pub(crate) fn holds(&self, ord: u64) -> bool {
        // SYNC POINT: Relaxed: the reader page's position, held-sub-buffer
        // and counter words are written by the one attached reader only (the
        // reader lock serializes readers, and taking it orders a new
        // reader after the last); the producer only reads them as a
        // snapshot (`stats`). They pair with nothing; CONSUMED's Release
        // store (`set_position`) is what the producer relies on.
        let held = self.reader_word(rdr::HELD).load(Ordering::Relaxed);
        // `ord` may come from a scribbled reader page (the last ordinal):
        // no overflow, and no wrap to 0, "nothing held".
        ord.checked_add(1) == Some(held)
    }

    /// The reader leaves sub-buffer `ord` without delivering it (found
    /// lapped, its copy torn, or overwritten before the claim). If a reader
    /// (this one, or one killed before it) held it and the writer that
    /// overwrote it left it to the reader (`left_to_reader`), count it here,
    /// from the held fields: as discarded, or as consumed if that reader had
    /// delivered all of it (`cursor::count_held`). Otherwise its writer
    /// counted it. Idempotent.
    pub(crate) fn drop_held(&self, ord: u64) {
        if self.holds(ord) && self.left_to_reader(ord) {
            // SYNC POINT: Relaxed: the reader's own word (see `holds`).
            let records = self.reader_word(rdr::HELD_RECORDS).load(Ordering::Relaxed);
            let len = self.reader_word(rdr::HELD_LEN).load(Ordering::Relaxed);
            crate::cursor::count_held(self, len, records);
        }
        // SYNC POINT: Relaxed: the reader's own word (see `holds`).
        self.reader_word(rdr::HELD).store(0, Ordering::Relaxed);
    }

    /// For a look at a buffer no reader holds (`RelayFile::inspect`): what
    /// the next reader will count of the sub-buffer a killed reader held at
    /// its position, if it is lapped and was left to the reader, or if it
    /// was delivered whole and not counted (`drop_held`, `advance`).
    pub(crate) fn held_pending(&self) -> Option<crate::cursor::HeldSplit> {
        let g = &self.geometry;
        // SYNC POINT: Relaxed, the reader page's words and the descriptor
        // words: a snapshot, as `stats`.
        let ord = self.reader_word(rdr::CONSUMED).load(Ordering::Relaxed);
        if !self.holds(ord) {
            return None;
        }
        let len = self.reader_word(rdr::HELD_LEN).load(Ordering::Relaxed);
        let records = self.reader_word(rdr::HELD_RECORDS).load(Ordering::Relaxed);
        let slot = ord % g.n_subbufs;
        let intact = self.descriptor(slot, desc::GEN).load(Ordering::Relaxed) == ord + 1
            && self.descriptor(slot, desc::WORD).load(Ordering::Relaxed)
                == COMPLETE | (ord / g.n_subbufs + 1);
        let split = crate::cursor::held_split(self, len, records);
        let h = self.head();
        if g.pos_ordinal(h) == ord && g.pos_offset(h) != 0 {
            // The dead producer's tail (`map_ready`): the next reader reads
            // it from the position as far as it is committed, and counts its
            // records once it has read it all (`cursor::count_dead_tail`,
            // which `inspect` shows through `cursor::dead_tail`).
            return None;
        }
        if intact {
            // The next reader delivers it from the position and counts it
            // then: only one delivered whole is left to count (consumed).
            return (!split.discarded_subbuf).then_some(split);
        }
        self.left_to_reader(ord).then_some(split)
    }

    /// Moves the reader's position to the start of sub-buffer `ord`.
    fn set_position(&self, ord: u64) {
        // SYNC POINT: Relaxed: the reader's own word (see `holds`).
        self.reader_word(rdr::READ_POS).store(0, Ordering::Relaxed);
        // SYNC POINT: Release pairs with the opener's Acquire load of
        // CONSUMED: the reads of the sub-buffers before `ord` are done before
        // their slots are reused (no-overwrite mode).
        self.reader_word(rdr::CONSUMED)
            .store(ord, Ordering::Release);
    }

    /// Skips from `ord`, found lapped, to `next`: the skipped sub-buffers
    /// were never claimed, so their writers count them, except one the
    /// mapping reader held (see `drop_held`).
    pub(crate) fn skip_lapped(&self, ord: u64, next: u64) {
        self.drop_held(ord);
        self.set_position(next);
    }

    /// Consumes the sub-buffer `ord` the mapping reader holds, at its
    /// position: delivered if the reader's copy is good, discarded if not,
    /// and counted so. `checked`: what a check made after the reader's copy
    /// found (`Some(false)`: torn); `None`: check now. Returns whether it
    /// was good, or `None` if `ord` isn't the held sub-buffer at the position.
    pub(crate) fn consume_held(&self, ord: u64, checked: Option<bool>) -> Option<bool> {
        // SYNC POINT: Relaxed, this load of CONSUMED and every access to the
        // reader page below but `set_position`'s store: the reader's own
        // words (see `holds`); this thread wrote CONSUMED last.
        if self.reader_word(rdr::CONSUMED).load(Ordering::Relaxed) != ord || !self.holds(ord) {
            return None;
        }
        let h = self.head();
        if self.geometry.pos_ordinal(h) == ord && self.geometry.pos_offset(h) != 0 {
            // A dead producer's tail (`map_ready`): the position stays in it,
            // at its end, as `read` leaves it, and its records are counted
            // consumed as `read`'s are there (`cursor::count_dead_tail`: the
            // commit word says how many its bytes hold; they stay in
            // `records_pending` too, as nothing completes the sub-buffer).
            let end = self.reader_word(rdr::HELD_LEN).load(Ordering::Relaxed);
            self.reader_word(rdr::BYTES_CONSUMED)
                .fetch_add(end.saturating_sub(self.read_pos()), Ordering::Relaxed);
            self.reader_word(rdr::READ_POS)
                .store(end, Ordering::Relaxed);
            self.reader_word(rdr::HELD).store(0, Ordering::Relaxed);
            crate::cursor::count_dead_tail(self);
            return Some(true);
        }
        // No-overwrite mode: nothing reuses the slot before we consume it.
        let good = !self.overwrite || checked.unwrap_or_else(|| self.still_valid(ord));
        if good {
            let read_pos = self.read_pos();
            let end = self.reader_word(rdr::HELD_LEN).load(Ordering::Relaxed);
            let records = self.reader_word(rdr::HELD_RECORDS).load(Ordering::Relaxed);
            self.reader_word(rdr::RECORDS_CONSUMED)
                .fetch_add(records, Ordering::Relaxed);
            self.reader_word(rdr::BYTES_CONSUMED)
                .fetch_add(end.saturating_sub(read_pos), Ordering::Relaxed);
            self.reader_word(rdr::HELD).store(0, Ordering::Relaxed);
        } else {
            self.drop_held(ord);
        }
        self.set_position(ord + 1);
        Some(good)
    }

    /// After copying sub-buffer `ord` out: was it reused meanwhile?
    /// (seqlock-style validation)
    pub(crate) fn still_valid(&self, ord: u64) -> bool {
        // SYNC POINT: the Acquire fence orders our data reads before the
        // generation load; an opener bumps the generation before any writer
        // of the new lap writes data (its CAS releases the bump, their CAS
        // acquires it), so a copy that saw new data sees the new generation.
        fence(Ordering::Acquire);
        self.descriptor(ord % self.geometry.n_subbufs, desc::GEN)
            .load(Ordering::Relaxed)
            == ord + 1
    }

    /// Copies `out.len()` bytes at byte `off` of slot `slot`'s data.
    pub(crate) fn copy_out(&self, slot: u64, off: u64, out: &mut [u8]) {
        let g = &self.geometry;
        // Written so that no sum can wrap, whatever `off` is.
        assert!(
            slot < g.n_subbufs && off <= g.subbuf_size && out.len() as u64 <= g.subbuf_size - off,
            "copy of {} bytes at {off} of slot {slot}",
            out.len()
        );
        #[cfg(loom)]
        return self.cells_read(g.slot_data_offset(slot) + off, out);
        // SAFETY: bounds checked just above; the bytes may be written
        // concurrently by a writer of a later lap (overwrite mode), which the
        // caller detects with `still_valid` and then discards the copy.
        #[cfg(not(loom))]
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.data.add((g.slot_data_offset(slot) + off) as usize),
                out.as_mut_ptr(),
                out.len(),
            )
        }
    }

    /// The data bytes `[off, off + len)` of slot `slot`, as a raw pointer.
    pub(crate) fn slot_ptr(&self, slot: u64, off: u64, len: u64) -> *const u8 {
        // Written so that no sum can wrap, whatever `off` and `len` are.
        assert!(
            slot < self.geometry.n_subbufs
                && off <= self.geometry.subbuf_size
                && len <= self.geometry.subbuf_size - off,
            "{len} bytes at {off} of slot {slot}"
        );
        // SAFETY: bounds checked just above.
        unsafe {
            self.data
                .add((self.geometry.slot_data_offset(slot) + off) as usize)
        }
    }
}

impl Shared {
    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> BufferStats {
        // SYNC POINT: Relaxed, every counter load (and the commit word's
        // below): a snapshot of each counter, not of all; they pair with
        // nothing. `head()` is Acquire (see there).
        let h = |o| self.header_word(o).load(Ordering::Relaxed);
        let r = |o| self.reader_word(o).load(Ordering::Relaxed);
        let head = self.head();
        // The sub-buffer being filled: the head's, or the one before it if
        // its last reservation ended exactly at its end and is not
        // committed yet (`open_word`).
        let ord = self.geometry.pos_ordinal(head);
        let open = if self.geometry.pos_offset(head) != 0 {
            Some(ord)
        } else {
            ord.checked_sub(1)
        };
        let pending = open
            .and_then(|o| self.open_word(o))
            .map_or(0, |(_, w)| (w >> 32) & RECORDS_MASK)
            .saturating_add(self.closed_incomplete_records(open, ord, h(hdr::SUBBUFS_COMPLETED)));
        BufferStats {
            records_completed: h(hdr::RECORDS_WRITTEN),
            bytes_written: h(hdr::BYTES_WRITTEN),
            records_pending: pending,
            subbufs_produced: self.geometry.pos_ordinal(head),
            subbufs_completed: h(hdr::SUBBUFS_COMPLETED),
            subbufs_consumed: r(rdr::CONSUMED),
            records_consumed: r(rdr::RECORDS_CONSUMED),
            bytes_consumed: r(rdr::BYTES_CONSUMED),
            dropped_full: h(hdr::DROPPED_FULL),
            dropped_toobig: h(hdr::DROPPED_TOOBIG),
            overwritten_records: h(hdr::OVERWRITTEN_RECORDS),
            overwritten_subbufs: h(hdr::OVERWRITTEN_SUBBUFS),
            discarded_records: r(rdr::DISCARDED_RECORDS),
            discarded_subbufs: r(rdr::DISCARDED_SUBBUFS),
            padding_bytes: h(hdr::PADDING_BYTES),
            last_toobig: h(hdr::LAST_TOOBIG),
            dropped_corrupt: h(hdr::DROPPED_CORRUPT),
            dropped_closed: 0,
            corrupt: h(hdr::CORRUPT),
            unread_at_close: h(hdr::UNREAD_AT_CLOSE),
        }
    }

    /// Records committed to sub-buffers closed behind the head (`produced`,
    /// the head's ordinal) and not complete, other than the open one
    /// (`open`): a writer is still copying into them, or died holding a
    /// reservation there (see "A sub-buffer stuck behind the head" in
    /// DESIGN.md). Their records are written, not complete yet: pending.
    ///
    /// Every closed sub-buffer but those is complete, and counted in
    /// `completed` (`hdr::SUBBUFS_COMPLETED`, bumped after the completing
    /// store of the word): so nothing is looked at while `completed` is
    /// `produced`, the common case, and otherwise the slots are looked at
    /// from the newest closed one back (a writer still copying is just
    /// behind the head) until as many incomplete ones as `completed` falls
    /// short by were found, at most one look at each slot.
    fn closed_incomplete_records(&self, open: Option<u64>, produced: u64, completed: u64) -> u64 {
        let g = &self.geometry;
        let mut missing = produced.saturating_sub(completed);
        let oldest = produced.saturating_sub(g.n_subbufs);
        let mut sum = 0u64;
        let mut ord = produced;
        while missing > 0 && ord > oldest {
            ord -= 1;
            let slot = ord % g.n_subbufs;
            // SYNC POINT: Relaxed, both: a snapshot, as the counters in
            // `stats`; they pair with nothing. A word that completes
            // meanwhile only makes the look go further back.
            if self.descriptor(slot, desc::GEN).load(Ordering::Relaxed) != ord + 1 {
                // Reopened for a later lap, so complete.
                continue;
            }
            let w = self.descriptor(slot, desc::WORD).load(Ordering::Relaxed);
            if w & COMPLETE != 0 {
                continue;
            }
            missing -= 1;
            if Some(ord) != open {
                // No more records than bytes, however the word was scribbled.
                let records = ((w >> 32) & RECORDS_MASK).min(w & BYTES_MASK);
                sum = sum.saturating_add(records);
            }
        }
        sum
    }

    /// Records in complete sub-buffers that no reader consumed and no writer
    /// overwrote: what a reader would still get. Called by `relay_close`
    /// after the final flush, with no writer in flight and the reader lock
    /// held by the producer (so no reader is or can become attached), to
    /// count them in `unread_at_close`; then moves the reader's position
    /// past them (`subbufs_consumed` includes them from then on). The
    /// sub-buffer a reader had started
    /// counts whole: the reader counts a sub-buffer's records when it
    /// finishes it.
    pub(crate) fn count_unread_at_close(&self) -> u64 {
        // A hand-off a dead reader left in flight is lost; records of the
        // sub-buffer at the position that hand-offs lost are counted
        // discarded already, not unread.
        let lost_here = crate::cursor::settle_at_close(self);
        let g = &self.geometry;
        let h = self.head();
        // After the flush `head` is at the start of the next sub-buffer. If
        // it isn't (a corrupt buffer), the open one never completed, so its
        // records never reached `records_written`.
        let produced = g.pos_ordinal(h);
        // The reader page is the reader's: clamp what it says.
        // SYNC POINT: Acquire pairs with the reader's Release store of
        // CONSUMED (its counters were updated before it).
        let consumed = self
            .reader_word(rdr::CONSUMED)
            .load(Ordering::Acquire)
            .min(produced);
        // Older ones were overwritten, and counted by their overwriters.
        let mut start = consumed.max(produced.saturating_sub(g.n_subbufs));
        // A reader killed while it held the sub-buffer at the position
        // (overwrite mode): count it as the next reader would have.
        if self.holds(consumed) {
            let slot = consumed % g.n_subbufs;
            // SYNC POINT: Relaxed, these loads and stores: as in the loop
            // below for the descriptors; the reader's words are ordered
            // after the last reader's by the reader lock we hold.
            let intact = consumed >= start
                && self.descriptor(slot, desc::GEN).load(Ordering::Relaxed) == consumed + 1
                && self.descriptor(slot, desc::WORD).load(Ordering::Relaxed)
                    == COMPLETE | (consumed / g.n_subbufs + 1);
            let pos = self.reader_word(rdr::READ_POS).load(Ordering::Relaxed);
            let len = self.reader_word(rdr::HELD_LEN).load(Ordering::Relaxed);
            if !intact {
                // Lapped: counted by its writer, or left to the reader and
                // counted here (`settle_at_close` took the records hand-offs
                // lost of it: they are handed back for `count_held`).
                if lost_here > 0 {
                    self.reader_word(rdr::SUB_RECORDS)
                        .store(lost_here, Ordering::Relaxed);
                }
                self.drop_held(consumed);
                self.reader_word(rdr::SUB_RECORDS)
                    .store(0, Ordering::Relaxed);
            } else if pos > 0 && pos >= len {
                // Delivered whole, the reader killed before it counted it:
                // consumed, not unread.
                // No more records than bytes (as `cursor::count_held`).
                let records = self
                    .reader_word(rdr::HELD_RECORDS)
                    .load(Ordering::Relaxed)
                    .min(len.min(g.subbuf_size));
                self.reader_word(rdr::RECORDS_CONSUMED)
                    .fetch_add(records.saturating_sub(lost_here), Ordering::Relaxed);
                start = start.max(consumed + 1);
            }
            self.reader_word(rdr::HELD).store(0, Ordering::Relaxed);
        }
        let mut unread = 0u64;
        for ord in start..produced {
            let slot = ord % g.n_subbufs;
            let lap = ord / g.n_subbufs;
            // SYNC POINT: Relaxed, these two loads and REC_LAST's below: no
            // writer is in flight (close owns the channel) and this thread
            // made the last completions (the final flush) or acquired them
            // through `head` above.
            if self.descriptor(slot, desc::GEN).load(Ordering::Relaxed) != ord + 1
                || self.descriptor(slot, desc::WORD).load(Ordering::Relaxed) != COMPLETE | (lap + 1)
            {
                continue; // never completed: not in records_written
            }
            // SYNC POINT: Acquire pairs with the claim CASes (AcqRel); a
            // sub-buffer marked overwritten was counted by its overwriter.
            if self.claim_word(slot).load(Ordering::Acquire) == claim(ord, CLAIM_OVERWRITTEN) {
                continue;
            }
            let mut records = self
                .descriptor(slot, desc::REC_LAST)
                .load(Ordering::Relaxed);
            if ord == consumed {
                records = records.saturating_sub(lost_here);
            }
            unread = unread.saturating_add(records);
        }
        // SYNC POINT: Relaxed: a counter, it pairs with nothing.
        self.header_word(hdr::UNREAD_AT_CLOSE)
            .fetch_add(unread, Ordering::Relaxed);
        // None of it will be read: move the reader's position past it, so
        // that a reader attaching once the lock is released finds nothing
        // left rather than delivering what was just counted.
        // SYNC POINT: Relaxed: ordered for a later reader by the reader lock
        // we hold (a reader takes it before loading the page).
        self.reader_word(rdr::READ_POS).store(0, Ordering::Relaxed);
        // SYNC POINT: Release, as a reader's store of CONSUMED (nothing
        // acquires it after close but a later reader's load).
        self.reader_word(rdr::CONSUMED)
            .store(produced, Ordering::Release);
        unread
    }

    /// Marks `n` sub-buffers at the reader's position as consumed
    /// (`relay_subbufs_consumed`), for readers that use the mapping. Returns
    /// how many it consumed.
    ///
    /// The sub-buffer the mapping reader holds (`map_ready` returned it) is
    /// consumed as `consume_held` does, with `checked` the verdict of a
    /// check made after the reader's copy, if any (`(ordinal, good)`).
    /// Beyond it, with `held_only` it stops (an overwrite-mode mapping
    /// reader: a sub-buffer it was never given can't have been read, let
    /// alone validated); otherwise it consumes complete sub-buffers by
    /// position as the kernel does, claiming each and counting its records
    /// as consumed (overwritten ones were counted by their writer), skipping
    /// lapped ones without counting them against `n`, and stopping at the
    /// first that isn't complete.
    pub(crate) fn subbufs_consumed(
        &self,
        n: u64,
        held_only: bool,
        checked: Option<(u64, bool)>,
    ) -> Result<u64, crate::FormatError> {
        let mut done = 0;
        while done < n {
            // SYNC POINT: Relaxed: the caller is the reader (or the producer
            // told out of band), the last to store CONSUMED; as in `holds`.
            let ord = self.reader_word(rdr::CONSUMED).load(Ordering::Relaxed);
            if self.holds(ord) {
                let verdict = checked.filter(|c| c.0 == ord).map(|c| c.1);
                if self.consume_held(ord, verdict).is_some() {
                    done += 1;
                    continue;
                }
            }
            if held_only {
                break;
            }
            match self.available(ord, false)? {
                Avail::Complete { end, records } => {
                    // SYNC POINT: Relaxed, the reader's own words (`holds`).
                    let read_pos = self.reader_word(rdr::READ_POS).load(Ordering::Relaxed);
                    if self.claim_held(ord, end, records) {
                        self.reader_word(rdr::RECORDS_CONSUMED)
                            .fetch_add(records, Ordering::Relaxed);
                        self.reader_word(rdr::BYTES_CONSUMED)
                            .fetch_add(end.saturating_sub(read_pos), Ordering::Relaxed);
                        self.reader_word(rdr::HELD).store(0, Ordering::Relaxed);
                    }
                }
                Avail::Lapped { next } => {
                    self.skip_lapped(ord, next);
                    continue;
                }
                Avail::Nothing | Avail::Partial { .. } | Avail::Stuck { .. } => break,
            }
            self.set_position(ord + 1);
            done += 1;
        }
        Ok(done)
    }
}
