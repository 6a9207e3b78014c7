//! The reader's position in a buffer and the walk from one readable run of
//! bytes to the next: the part of the relay file operations that is pure
//! protocol (no files, no system calls), shared by [`RelayFile`] and the
//! loom model.
//!
//! [`RelayFile`]: crate::RelayFile

use crate::buffer::{Avail, Shared};
use crate::error::FormatError;
use crate::layout::{hdr, rdr};
use crate::sync::{fence, Ordering};

/// `rdr::SUB_RECORDS`: bit 63, the records before the position are known.
const SUB_KNOWN: u64 = 1 << 63;
/// 31-bit fields of `rdr::SUB_RECORDS`.
const M31: u64 = 0x7fff_ffff;
/// `rdr::HANDOFF`: a hand-off is in flight.
const HO_IN_FLIGHT: u64 = 1 << 63;
/// `rdr::HANDOFF`: its record count is known.
const HO_KNOWN: u64 = 1 << 62;
/// `rdr::HANDOFF`: it finished its sub-buffer, whose records were counted
/// consumed then.
const HO_COUNTED: u64 = 1 << 61;
/// 30-bit fields of `rdr::HANDOFF`, and the most one hand-off moves.
pub(crate) const M30: u64 = (1 << 30) - 1;

/// What a reader found of a hand-off its predecessor consumed but never
/// handed on (it died in between), or of one whose hand-off failed: counted
/// lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostHandoff {
    /// Records in it, counted in `discarded_records`; `None` if the reader
    /// could not tell (its read ended inside a record: see
    /// `RelayFile::read_handoff`).
    pub records: Option<u64>,
    /// Its bytes, taken off `bytes_consumed`.
    pub bytes: u64,
}

/// What one `read_handoff` moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    /// Bytes consumed (copied, or returned in place).
    pub bytes: usize,
    /// Records in them, if known.
    pub records: Option<u64>,
}

/// One contiguous run of readable bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Bytes `[start, end)` of `slot` in the buffer (no-overwrite mode:
    /// stable until consumed).
    Direct { slot: u64, start: u64, end: u64 },
    /// Bytes `[start, end)` of the cursor's bounce buffer (overwrite mode).
    Bounce { start: u64, end: u64 },
}

impl Chunk {
    pub(crate) fn len(&self) -> u64 {
        match *self {
            Chunk::Direct { start, end, .. } | Chunk::Bounce { start, end } => end - start,
        }
    }
}

/// A reader's position: which sub-buffer, how far into it, and (overwrite
/// mode) a validated copy of it. Mirrored in the reader page so that a new
/// reader resumes where the last one stopped.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    /// Ordinal of the sub-buffer the reader is on (mirrors `rdr::CONSUMED`).
    ord: u64,
    /// Bytes of it already delivered (mirrors `rdr::READ_POS`).
    pos: u64,
    /// Whether this cursor holds the claim on `ord` (`claim_for_read`), so
    /// it doesn't claim it again at every chunk.
    claimed: bool,
    /// The reset epoch the position belongs to (`hdr::EPOCH`): when the
    /// producer's differs, `relay_reset` zeroed the reader page, so reload.
    epoch: u64,
    /// Overwrite mode: the copy of the sub-buffer at `ord`, validated with
    /// `still_valid` before any of it is delivered.
    bounce: Vec<u8>,
    /// Data bytes in `bounce` (the sub-buffer's size less its padding).
    bounce_len: u64,
    /// Records in the sub-buffer copied into `bounce`, counted as consumed
    /// once its last byte is delivered.
    bounce_records: u64,
    /// `bounce` holds a validated copy of `ord` not yet wholly delivered.
    bounce_full: bool,
    /// The current sub-buffer is complete: its end and record count, so that
    /// consuming its last byte moves on at once.
    complete: Option<(u64, u64)>,
    /// The current sub-buffer is being written, and was readable up to this
    /// end, holding this many records: reading up to there records the
    /// count before the position (`rdr::SUB_RECORDS`).
    partial: Option<(u64, u64)>,
    /// The producer is dead: nothing changes any more.
    writers_gone: bool,
    /// Leave the sub-buffer being written alone: read complete ones only.
    pub(crate) complete_only: bool,
    /// Read nothing of this sub-buffer or any after it: a live
    /// `SubbufView` shows it, so it must not be handed back (set by the
    /// `RelayFile` around its consuming reads).
    pub(crate) limit: Option<u64>,
    /// A hand-off in place read to the end of this complete sub-buffer and
    /// did not hand it back yet (`read_handoff_in_place`): the epoch, its
    /// ordinal and its record count.
    held: Option<(u64, u64, u64)>,
}

impl Cursor {
    /// A cursor at the position recorded in the reader page.
    pub(crate) fn new(s: &Shared) -> Cursor {
        let mut c = Cursor {
            // SYNC POINT: Acquire pairs with `relay_reset`'s Release
            // increment of EPOCH: a reader that sees the new epoch sees the
            // reset state (`init_state`) stored before it.
            epoch: s.header_word(hdr::EPOCH).load(Ordering::Acquire),
            ..Cursor::default()
        };
        // SYNC POINT: Relaxed: the reader page's epoch was stored by the
        // reader before us, ordered before our lock by its release of it.
        if s.reader_word(rdr::EPOCH).load(Ordering::Relaxed) != c.epoch {
            // `relay_reset` since: the hand-off words speak of the old epoch.
            s.reader_word(rdr::SUB_RECORDS).store(0, Ordering::Relaxed);
            s.reader_word(rdr::HANDOFF).store(0, Ordering::Relaxed);
        }
        c.load(s);
        c
    }

    /// Records of the current sub-buffer before the position, if known.
    fn records_before(&self, s: &Shared) -> Option<u64> {
        if self.pos == 0 {
            return Some(0);
        }
        // SYNC POINT: Relaxed, the reader's own word (as in `advance`).
        let w = s.reader_word(rdr::SUB_RECORDS).load(Ordering::Relaxed);
        (w & SUB_KNOWN != 0).then_some((w >> 32) & M31)
    }

    /// One consuming read of at most one sub-buffer's readable run, for a
    /// reader that hands the bytes on after consuming them: before it
    /// consumes, it records them as in flight in the reader page
    /// (`rdr::HANDOFF`), with their record count when it is known (the
    /// read starts and ends where the records before are known: a
    /// sub-buffer's start or end, or where every reservation was committed,
    /// and `buf` holds all that is ready up to there). The caller clears the
    /// mark with `handoff_done` once the bytes are handed on, or counts them
    /// lost with `settle_handoff`.
    pub(crate) fn read_handoff(
        &mut self,
        s: &Shared,
        buf: &mut [u8],
    ) -> Result<Handoff, FormatError> {
        let Some(p) = self.handoff_pick(s, buf.len() as u64)? else {
            return Ok(Handoff {
                bytes: 0,
                records: Some(0),
            });
        };
        let out = &mut buf[..p.n as usize];
        match p.chunk {
            Chunk::Direct { slot, start, .. } => s.copy_out(slot, start, out),
            Chunk::Bounce { start, .. } => {
                out.copy_from_slice(&self.bounce[start as usize..(start + p.n) as usize])
            }
        }
        Ok(self.handoff_take(s, &p, false))
    }

    /// As `read_handoff`, without the copy: the bytes stay where the chunk
    /// says (the mapping, or in overwrite mode the bounce buffer, validated
    /// already), and the caller hands them on from there. A read that
    /// finishes a complete sub-buffer in the mapping consumes its bytes but
    /// does not hand the sub-buffer back to the producer (the position's
    /// move to the next one, which lets it be reused) until `handoff_done`
    /// (or `release_held` after `settle_handoff`): until then no writer
    /// touches the bytes. `None` if nothing is ready.
    pub(crate) fn read_handoff_in_place(
        &mut self,
        s: &Shared,
        max: u64,
    ) -> Result<Option<(Handoff, Chunk)>, FormatError> {
        let Some(p) = self.handoff_pick(s, max)? else {
            return Ok(None);
        };
        let h = self.handoff_take(s, &p, true);
        Ok(Some((h, p.chunk)))
    }

    /// The run a hand-off of at most `max` bytes moves, and the record
    /// count after it if known.
    fn handoff_pick(&mut self, s: &Shared, max: u64) -> Result<Option<Pick>, FormatError> {
        let max = max.min(M30);
        let mut tries = 0;
        loop {
            let Some(chunk) = self.next_chunk(s)? else {
                return Ok(None);
            };
            let (start, end) = match chunk {
                Chunk::Direct { start, end, .. } | Chunk::Bounce { start, end } => (start, end),
            };
            let n = (end - start).min(max);
            let after = if start + n < end {
                None
            } else {
                match chunk {
                    Chunk::Bounce { .. } => Some(self.bounce_records),
                    Chunk::Direct { .. } => match (self.complete, self.partial) {
                        (Some((e, r)), _) | (None, Some((e, r))) if e == end => Some(r),
                        _ => None,
                    },
                }
            };
            if after.is_none() && start + n == end && tries < 3 {
                // The producer reserved more between the two looks: look
                // again, from what is committed now.
                tries += 1;
                continue;
            }
            return Ok(Some(Pick { chunk, n, after }));
        }
    }

    /// Marks the picked run in flight and consumes it. With `hold`, a run
    /// that finishes a complete sub-buffer of the mapping leaves the
    /// position on that sub-buffer (its records not counted consumed yet,
    /// nor the mark saying so), to be moved on by `release_held`.
    fn handoff_take(&mut self, s: &Shared, p: &Pick, hold: bool) -> Handoff {
        let Pick { chunk, n, after } = *p;
        let (start, end) = match chunk {
            Chunk::Direct { start, end, .. } | Chunk::Bounce { start, end } => (start, end),
        };
        let records = self
            .records_before(s)
            .zip(after)
            .map(|(b, a)| a.saturating_sub(b));
        let ord = self.ord;
        // Reading to the end of a complete sub-buffer moves past it,
        // counting its records consumed (unless held).
        let finishes = start + n == end
            && (self.bounce_full || matches!(self.complete, Some((e, _)) if e == end));
        let held = hold && finishes && matches!(chunk, Chunk::Direct { .. });
        let mut mark = HO_IN_FLIGHT | n;
        if let Some(r) = records {
            mark |= HO_KNOWN | (r.min(M30) << 30);
        }
        if finishes && !held {
            mark |= HO_COUNTED;
        }
        if held {
            // `consume` then stops at the end; `release_held` moves on.
            if let Some((_, total)) = self.complete.take() {
                self.held = Some((self.epoch, ord, total));
            }
        }
        // SYNC POINT: Relaxed store, then a SeqCst fence: the mark must
        // be in the page before any store of the consume below, so that
        // whoever finds this reader dead finds the mark if any of the
        // bytes is consumed. The fence keeps compiler and CPU from
        // moving the consume's stores above it; nothing acquires it
        // (the next reader is ordered after us by the reader lock).
        s.reader_word(rdr::HANDOFF).store(mark, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.consume(s, n);
        if self.ord == ord {
            if let Some(a) = after {
                // SYNC POINT: Relaxed, the reader's own word (`advance`).
                let w = s.reader_word(rdr::SUB_RECORDS).load(Ordering::Relaxed);
                s.reader_word(rdr::SUB_RECORDS).store(
                    SUB_KNOWN | (a.min(M31) << 32) | (w & M31),
                    Ordering::Relaxed,
                );
            }
        }
        Handoff {
            bytes: n as usize,
            records,
        }
    }

    /// The last hand-off was handed on: clears its mark, then hands back
    /// the sub-buffer it held, if any.
    pub(crate) fn handoff_done(&mut self, s: &Shared) {
        // SYNC POINT: Relaxed, the reader's own word; then a SeqCst fence,
        // as in `handoff_take`: the mark is gone from the page before any
        // store of `release_held`'s move, so that a reader killed in
        // between leaves the position at the end of a sub-buffer with no
        // mark, which the next reader counts consumed as it moves on, and
        // never a mark (records not counted) beside a sub-buffer counted
        // consumed.
        s.reader_word(rdr::HANDOFF).store(0, Ordering::Relaxed);
        if self.held.is_some() {
            fence(Ordering::SeqCst);
            self.release_held(s);
        }
    }

    /// Hands back the sub-buffer a hand-off in place held (after its mark
    /// was cleared, or settled lost: `settle_handoff` left its records out
    /// of the count `advance` gives it), counting its records consumed.
    /// Nothing if the position moved meanwhile (a read moved on from the
    /// end, counting it; a `relay_reset`).
    pub(crate) fn release_held(&mut self, s: &Shared) {
        let Some((epoch, ord, records)) = self.held.take() else {
            return;
        };
        self.check_epoch(s);
        if self.epoch == epoch && self.ord == ord {
            self.advance(s, Some(records));
        }
    }
}

/// What a hand-off moves: one readable run, `n` bytes of it from its
/// start, and the count of records before its end if known.
#[derive(Debug, Clone, Copy)]
struct Pick {
    chunk: Chunk,
    n: u64,
    after: Option<u64>,
}

/// Counts a hand-off left in flight as lost: its records move from
/// consumed (or from the count its sub-buffer will get when consumed) to
/// `discarded_records`, its bytes off `bytes_consumed`; clears the mark.
/// Called by the reader holding the lock: at open, for what a dead
/// predecessor left, or when its own hand-off failed.
pub(crate) fn settle_handoff(s: &Shared) -> Option<LostHandoff> {
    // SYNC POINT: Relaxed, all of these: the reader's own words, ordered
    // after any earlier reader's by the reader lock; the producer reads
    // them as a snapshot.
    let w = s.reader_word(rdr::HANDOFF).load(Ordering::Relaxed);
    if w & HO_IN_FLIGHT == 0 {
        return None;
    }
    if !plausible_mark(s, w) {
        // Scribbled: no hand-off moves more than a sub-buffer, nor more
        // records than bytes. Counting it would take up to 2^30 off the
        // consumed counters.
        s.reader_word(rdr::HANDOFF).store(0, Ordering::Relaxed);
        return None;
    }
    let bytes = w & M30;
    let records = (w & HO_KNOWN != 0).then_some((w >> 30) & M30);
    let bc = s.reader_word(rdr::BYTES_CONSUMED);
    bc.store(
        bc.load(Ordering::Relaxed).saturating_sub(bytes),
        Ordering::Relaxed,
    );
    if let Some(r) = records {
        if w & HO_COUNTED != 0 {
            let rc = s.reader_word(rdr::RECORDS_CONSUMED);
            rc.store(
                rc.load(Ordering::Relaxed).saturating_sub(r),
                Ordering::Relaxed,
            );
        } else {
            // Its sub-buffer is still the reader's: leave them out when it
            // is counted consumed.
            let sub = s.reader_word(rdr::SUB_RECORDS).load(Ordering::Relaxed);
            let debt = ((sub & M31) + r).min(M31);
            s.reader_word(rdr::SUB_RECORDS)
                .store((sub & !M31) | debt, Ordering::Relaxed);
        }
        s.reader_word(rdr::DISCARDED_RECORDS)
            .fetch_add(r, Ordering::Relaxed);
    }
    s.reader_word(rdr::HANDOFF).store(0, Ordering::Relaxed);
    Some(LostHandoff { records, bytes })
}

/// After a reader that is not the cursor (a mapping reader's
/// `consume`/`subbufs_consumed`, `consume_through`) moved the position from
/// sub-buffer `from` on: the records a hand-off lost in `from` (counted
/// discarded already) come off the count it gave that sub-buffer, and what
/// was known of the position is forgotten.
/// For `relay_close` with no reader attached (it holds the reader lock, and
/// the files go, so no reader will come to count what a dead one left):
/// counts a hand-off left in flight lost, as the next reader would, and
/// returns the records of the sub-buffer at the position that hand-offs
/// lost (counted discarded already, so not to be counted unread too).
pub(crate) fn settle_at_close(s: &Shared) -> u64 {
    // SYNC POINT: Relaxed, all of these: the reader's words, ordered after
    // the last reader's by the reader lock the caller holds.
    let epoch = s.header_word(hdr::EPOCH).load(Ordering::Relaxed);
    if s.reader_word(rdr::EPOCH).load(Ordering::Relaxed) != epoch {
        // Words of an epoch before `relay_reset`, as in `Cursor::new`.
        s.reader_word(rdr::SUB_RECORDS).store(0, Ordering::Relaxed);
        s.reader_word(rdr::HANDOFF).store(0, Ordering::Relaxed);
        return 0;
    }
    settle_handoff(s);
    let sub = s.reader_word(rdr::SUB_RECORDS).load(Ordering::Relaxed);
    s.reader_word(rdr::SUB_RECORDS).store(0, Ordering::Relaxed);
    (sub & M31).min(s.geometry().subbuf_size)
}

/// Whether a hand-off mark `w` (in flight) could have been stored by
/// `read_handoff`: at most a sub-buffer's bytes, no more records than bytes
/// (a record has one byte at least), and none of the unused bits set.
fn plausible_mark(s: &Shared, w: u64) -> bool {
    let bytes = w & M30;
    let records = (w >> 30) & M30;
    let unused = !(HO_IN_FLIGHT | HO_KNOWN | HO_COUNTED | (M30 << 30) | M30);
    w & unused == 0 && bytes <= s.geometry().subbuf_size && (w & HO_KNOWN == 0 || records <= bytes)
}

/// Counts the held sub-buffer (`len` data bytes, `records` records) that
/// the reader leaves without delivering it now, and that the writer left to
/// the reader to count (`Shared::drop_held`). What the reader that held it
/// had delivered of it (`READ_POS`, which is this reader's or a killed
/// predecessor's: only the copy was lost, not what was delivered from it)
/// decides how:
///
/// - nothing: its records are discarded;
/// - all of it (killed after delivering the last byte, before counting the
///   sub-buffer): consumed, less what hand-offs lost of them (counted
///   discarded already);
/// - a part: the records before the position are consumed if known (a
///   hand-off reader keeps their number in `SUB_RECORDS`), the rest
///   discarded; if not known, all of them are counted discarded, so that
///   those delivered are counted twice rather than those lost not at all
///   (records are opaque: their boundaries in a copy that is gone can't be
///   found).
///
/// Clears what `SUB_RECORDS` knew of that sub-buffer.
pub(crate) fn count_held(s: &Shared, len: u64, records: u64) {
    let h = held_split(s, len, records);
    // SYNC POINT: Relaxed, all of these: the reader's own words (as in
    // `settle_handoff`).
    if h.consumed > 0 {
        s.reader_word(rdr::RECORDS_CONSUMED)
            .fetch_add(h.consumed, Ordering::Relaxed);
    }
    if h.discarded_subbuf {
        s.reader_word(rdr::DISCARDED_SUBBUFS)
            .fetch_add(1, Ordering::Relaxed);
        s.reader_word(rdr::DISCARDED_RECORDS)
            .fetch_add(h.discarded, Ordering::Relaxed);
    }
    if s.reader_word(rdr::SUB_RECORDS).load(Ordering::Relaxed) != 0 {
        s.reader_word(rdr::SUB_RECORDS).store(0, Ordering::Relaxed);
    }
}

/// How `count_held` counts a held sub-buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldSplit {
    pub(crate) consumed: u64,
    pub(crate) discarded: u64,
    pub(crate) discarded_subbuf: bool,
}

/// What `count_held` would count for the held sub-buffer, without counting
/// it (`RelayFile::inspect` shows it so).
pub(crate) fn held_split(s: &Shared, len: u64, records: u64) -> HeldSplit {
    // The held words are the reader page's, which a reader may have
    // scribbled: no more than a sub-buffer's bytes, and no more records
    // than bytes (a record has one byte at least).
    let len = len.min(s.geometry().subbuf_size);
    let records = records.min(len);
    // SYNC POINT: Relaxed, both: the reader's own words (as in
    // `settle_handoff`), or a snapshot of them (`inspect`).
    let pos = s.reader_word(rdr::READ_POS).load(Ordering::Relaxed);
    let sub = s.reader_word(rdr::SUB_RECORDS).load(Ordering::Relaxed);
    // No more than a sub-buffer holds, however the word was scribbled.
    let debt = (sub & M31).min(records);
    let before = if pos == 0 {
        0
    } else if pos >= len {
        records
    } else if sub & SUB_KNOWN != 0 {
        ((sub >> 32) & M31).min(records)
    } else {
        0
    };
    let discarded = records - before;
    HeldSplit {
        consumed: before.saturating_sub(debt),
        discarded,
        discarded_subbuf: discarded > 0 || before == 0,
    }
}

/// What a reader has delivered of the sub-buffer a dead producer was
/// writing, at the position the reader page records, and not counted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeadTail {
    /// Records delivered and not counted yet: to be counted consumed.
    pub(crate) consumed: u64,
    /// Records of a hand-off left in flight in it (its mark known and not
    /// counted), which the next reader counts discarded first
    /// (`settle_handoff`), and its bytes.
    pub(crate) in_flight: Option<(u64, u64)>,
}

/// The sub-buffer at the reader's position is the one a dead producer was
/// writing (the caller knows it is dead): nothing will complete it, so the
/// records the reader delivered of it are counted consumed here, not at its
/// completion. How many: all the commit word counts if the position is at
/// its committed bytes (every reservation below the position was committed
/// when it was read, and the bytes say nothing was committed beyond), else
/// the count before the position if a read recorded it (`SUB_RECORDS`:
/// read up to where every reservation was committed, then the producer
/// reserved more and died holding a reservation), else none (they stay in
/// `abandoned`: counted twice, in the output and there, rather than not at
/// all). The records counted go into `SUB_RECORDS`'s debt, the records of
/// this sub-buffer counted already (a lost hand-off's are in it too), so
/// that a second call, a later reader, or the sub-buffer's count if it were
/// ever completed, counts none of them again. Returns the records counted.
pub(crate) fn count_dead_tail(s: &Shared) -> u64 {
    // SYNC POINT: Relaxed, all of these: the reader's own words (as in
    // `settle_handoff`).
    if s.reader_word(rdr::HANDOFF).load(Ordering::Relaxed) & HO_IN_FLIGHT != 0 {
        // A hand-off not handed on yet: `handoff_done` or `handoff_failed`
        // first (the next reader settles it, then counts).
        return 0;
    }
    let Some(t) = dead_tail(s) else {
        return 0;
    };
    if t.consumed > 0 {
        s.reader_word(rdr::RECORDS_CONSUMED)
            .fetch_add(t.consumed, Ordering::Relaxed);
        let sub = s.reader_word(rdr::SUB_RECORDS).load(Ordering::Relaxed);
        let debt = ((sub & M31) + t.consumed).min(M31);
        s.reader_word(rdr::SUB_RECORDS)
            .store((sub & !M31) | debt, Ordering::Relaxed);
    }
    t.consumed
}

/// What `count_dead_tail` would count, after `settle_handoff`, for a look
/// at a buffer no reader holds and whose producer is dead
/// (`RelayFile::inspect`). `None` if the position is not in the dead
/// producer's sub-buffer, or nothing of it is known delivered.
pub(crate) fn dead_tail(s: &Shared) -> Option<DeadTail> {
    // SYNC POINT: Relaxed, all of these: the reader's own words, or a
    // snapshot of them (`inspect`).
    let ord = s.reader_word(rdr::CONSUMED).load(Ordering::Relaxed);
    let pos = s.reader_word(rdr::READ_POS).load(Ordering::Relaxed);
    if pos == 0 {
        return None;
    }
    let (bytes, records) = s.open_commit(ord)?;
    let sub = s.reader_word(rdr::SUB_RECORDS).load(Ordering::Relaxed);
    let before = if bytes == pos {
        records
    } else if sub & SUB_KNOWN != 0 {
        ((sub >> 32) & M31).min(records)
    } else {
        return None;
    };
    // No more records than bytes before the position (a record has one
    // byte at least), and no more than a sub-buffer holds, however the
    // commit word or the reader page was scribbled: the debt below is
    // clamped so too, so what was counted is never counted again.
    let before = before.min(pos).min(s.geometry().subbuf_size);
    let mark = s.reader_word(rdr::HANDOFF).load(Ordering::Relaxed);
    let in_flight = (mark & HO_IN_FLIGHT != 0
        && mark & HO_KNOWN != 0
        && mark & HO_COUNTED == 0
        && plausible_mark(s, mark))
    .then_some(((mark >> 30) & M30, mark & M30));
    // No more than a sub-buffer holds, however the word was scribbled.
    let debt = ((sub & M31) + in_flight.map_or(0, |f| f.0)).min(s.geometry().subbuf_size);
    Some(DeadTail {
        consumed: before.saturating_sub(debt),
        in_flight,
    })
}

/// Whether a hand-off is in flight (`rdr::HANDOFF`).
pub(crate) fn handoff_in_flight(s: &Shared) -> bool {
    // SYNC POINT: Relaxed, the reader's own word (as in `settle_handoff`).
    s.reader_word(rdr::HANDOFF).load(Ordering::Relaxed) & HO_IN_FLIGHT != 0
}

/// The sub-buffer `ord` at the reader's position is stuck: closed behind
/// the dead producer's head and never completed, a reservation in it never
/// committed (`Avail::Stuck`; its commit word's committed `bytes` and
/// `records`). Gives it up and moves the position to the start of the next
/// one. Records are not framed, so none beyond the reader's position can be
/// told apart from the hole; what was delivered before the position is
/// counted consumed if its count is known (as for a dead producer's tail,
/// `dead_tail`), and the rest of the committed records discarded (one
/// discarded sub-buffer), less what `SUB_RECORDS` says was counted already.
/// The position, moved past it, says it was given up: a later reader starts
/// after it and counts nothing again. `false`, and nothing done, if a
/// hand-off is in flight (`handoff_done` or `handoff_failed` first) or the
/// position is not at `ord`.
pub(crate) fn give_up_stuck(s: &Shared, ord: u64, bytes: u64, records: u64) -> bool {
    // SYNC POINT: Relaxed, all of these but the store of CONSUMED: the
    // reader's own words (as in `settle_handoff`).
    if handoff_in_flight(s) || s.reader_word(rdr::CONSUMED).load(Ordering::Relaxed) != ord {
        return false;
    }
    let size = s.geometry().subbuf_size;
    // No more records than bytes (one byte a record at least), and no more
    // than a sub-buffer holds, however the commit word was scribbled.
    let bytes = bytes.min(size);
    let records = records.min(bytes);
    let pos = s.reader_word(rdr::READ_POS).load(Ordering::Relaxed);
    let sub = s.reader_word(rdr::SUB_RECORDS).load(Ordering::Relaxed);
    let before = if pos == 0 {
        0
    } else if pos == bytes {
        // Nothing committed beyond what was read.
        records
    } else if sub & SUB_KNOWN != 0 {
        ((sub >> 32) & M31).min(records)
    } else {
        // Delivered, but how many records is not known: all are given up,
        // so that those delivered are counted twice rather than the others
        // not at all.
        0
    };
    let debt = (sub & M31).min(records);
    let consumed = before.saturating_sub(debt);
    let given_up = records - before.max(debt);
    if consumed > 0 {
        s.reader_word(rdr::RECORDS_CONSUMED)
            .fetch_add(consumed, Ordering::Relaxed);
    }
    if given_up > 0 {
        s.reader_word(rdr::DISCARDED_RECORDS)
            .fetch_add(given_up, Ordering::Relaxed);
        s.reader_word(rdr::DISCARDED_SUBBUFS)
            .fetch_add(1, Ordering::Relaxed);
    }
    // All of its records counted: a reader killed before the move below
    // leaves the next one nothing more to count of it.
    s.reader_word(rdr::SUB_RECORDS).store(
        SUB_KNOWN | (before << 32) | records.min(M31),
        Ordering::Relaxed,
    );
    s.reader_word(rdr::HELD).store(0, Ordering::Relaxed);
    s.reader_word(rdr::READ_POS).store(0, Ordering::Relaxed);
    s.reader_word(rdr::SUB_RECORDS).store(0, Ordering::Relaxed);
    // SYNC POINT: Release pairs with the opener's Acquire load of CONSUMED
    // (as in `Cursor::advance`): nothing reopens a slot whose sub-buffer
    // never completed, but the position's store orders the counters and
    // words above before it for the next reader, which acquires it.
    s.reader_word(rdr::CONSUMED)
        .store(ord + 1, Ordering::Release);
    true
}

pub(crate) fn settle_sub_records(s: &Shared, from: u64) {
    // SYNC POINT: Relaxed, all of these: the reader's own words (as in
    // `settle_handoff`).
    if s.reader_word(rdr::CONSUMED).load(Ordering::Relaxed) == from {
        return;
    }
    let sub = s.reader_word(rdr::SUB_RECORDS).load(Ordering::Relaxed);
    if sub == 0 {
        return;
    }
    // No more than a sub-buffer holds (one byte a record at least), however
    // the word was scribbled.
    let debt = (sub & M31).min(s.geometry().subbuf_size);
    let rc = s.reader_word(rdr::RECORDS_CONSUMED);
    rc.store(
        rc.load(Ordering::Relaxed).saturating_sub(debt),
        Ordering::Relaxed,
    );
    s.reader_word(rdr::SUB_RECORDS).store(0, Ordering::Relaxed);
}

/// What `settle_handoff` would count, for a look at the counters of a
/// buffer no reader holds (`RelayFile::inspect`): records consumed but
/// never handed on, if their sub-buffer was counted (`None` otherwise:
/// then its count, when it comes, or `relay_close`'s, has them right).
pub(crate) fn counted_in_flight(s: &Shared) -> Option<(u64, u64)> {
    // SYNC POINT: Relaxed: a snapshot, as `Shared::stats`.
    let w = s.reader_word(rdr::HANDOFF).load(Ordering::Relaxed);
    // A mark of an epoch before `relay_reset` (which leaves the hand-off
    // words to the next reader, who clears them: `Cursor::new`) counts
    // nothing: the counters it speaks of were zeroed.
    // SYNC POINT: Relaxed, both: a snapshot, as above.
    let epoch = s.header_word(hdr::EPOCH).load(Ordering::Relaxed);
    if s.reader_word(rdr::EPOCH).load(Ordering::Relaxed) != epoch {
        return None;
    }
    (w & HO_IN_FLIGHT != 0 && w & HO_KNOWN != 0 && w & HO_COUNTED != 0 && plausible_mark(s, w))
        .then_some(((w >> 30) & M30, w & M30))
}

impl Cursor {
    /// Reloads the position from the reader page.
    pub(crate) fn load(&mut self, s: &Shared) {
        // SYNC POINT: Relaxed: the reader page's EPOCH only tells the
        // producer (and `stat`) which epoch the reader is on; it pairs with
        // nothing.
        s.reader_word(rdr::EPOCH)
            .store(self.epoch, Ordering::Relaxed);
        // SYNC POINT: Acquire pairs with the Release store of CONSUMED by
        // the reader before us (`advance`, `set_position`; possibly another
        // process, which the reader lock orders before us too) or by
        // `count_unread_at_close`: its counters and position are in place.
        self.ord = s.reader_word(rdr::CONSUMED).load(Ordering::Acquire);
        // SYNC POINT: Relaxed: written by the reader before us before its
        // Release of CONSUMED, which we just acquired.
        self.pos = s.reader_word(rdr::READ_POS).load(Ordering::Relaxed);
        self.claimed = false;
        self.bounce_full = false;
        self.complete = None;
        self.partial = None;
    }

    /// Tells the cursor the producer is dead, so that the sub-buffer it was
    /// writing may be read as far as it is committed (in overwrite mode too:
    /// nothing can overwrite it any more).
    pub(crate) fn set_writers_gone(&mut self) {
        self.writers_gone = true;
    }

    /// Whether the producer is known to be dead (see `set_writers_gone`).
    pub(crate) fn writers_gone(&self) -> bool {
        self.writers_gone
    }

    /// Bytes and committed records left in an incomplete sub-buffer at the
    /// reader's position (see `Shared::abandoned`), less the records of it
    /// counted already (consumed as a dead producer's tail, or discarded by
    /// a lost hand-off: `rdr::SUB_RECORDS`'s debt).
    pub(crate) fn abandoned(&self, s: &Shared) -> Option<(u64, u64)> {
        // SYNC POINT: Relaxed, the reader's own word (as in `advance`).
        let debt = s.reader_word(rdr::SUB_RECORDS).load(Ordering::Relaxed) & M31;
        s.abandoned(self.ord, self.pos)
            .map(|(bytes, records)| (bytes, records.saturating_sub(debt)))
    }

    /// Ordinal of the sub-buffer the cursor is on.
    pub(crate) fn ord(&self) -> u64 {
        self.ord
    }

    /// At the start of a sub-buffer.
    pub(crate) fn at_boundary(&self) -> bool {
        self.pos == 0
    }

    /// The bounce buffer (overwrite mode).
    pub(crate) fn bounce(&self) -> &[u8] {
        &self.bounce
    }

    pub(crate) fn check_epoch(&mut self, s: &Shared) {
        // SYNC POINT: Acquire, as in `new`: pairs with `relay_reset`'s
        // Release increment of EPOCH.
        let e = s.header_word(hdr::EPOCH).load(Ordering::Acquire);
        if e != self.epoch {
            // relay_reset: the producer zeroed the reader page too (but for
            // the hand-off words, which speak of the old epoch).
            // SYNC POINT: Relaxed, the reader's own words (as in `advance`).
            s.reader_word(rdr::SUB_RECORDS).store(0, Ordering::Relaxed);
            s.reader_word(rdr::HANDOFF).store(0, Ordering::Relaxed);
            self.epoch = e;
            self.load(s);
        }
    }

    /// Moves to the next sub-buffer; records of the finished one are counted
    /// as consumed if we delivered them.
    fn advance(&mut self, s: &Shared, delivered_records: Option<u64>) {
        // SYNC POINT: Relaxed, the counter and the HELD and READ_POS stores:
        // the reader's own words, which the producer reads as a snapshot;
        // they pair with nothing, and the Release store of CONSUMED below
        // orders them before it for the next reader.
        // Records of this sub-buffer a hand-off lost (and counted) are not
        // consumed ones. SYNC POINT: Relaxed, the load and the store of
        // SUB_RECORDS: the reader's own word, as the counters above.
        let sub = s.reader_word(rdr::SUB_RECORDS).load(Ordering::Relaxed);
        if let Some(n) = delivered_records {
            s.reader_word(rdr::RECORDS_CONSUMED)
                .fetch_add(n.saturating_sub(sub & M31), Ordering::Relaxed);
        }
        if sub != 0 {
            s.reader_word(rdr::SUB_RECORDS).store(0, Ordering::Relaxed);
        }
        self.ord += 1;
        self.pos = 0;
        self.claimed = false;
        self.bounce_full = false;
        self.complete = None;
        self.partial = None;
        // Whatever a mapping reader held here is settled: delivered or
        // discarded by us, or counted by its writer.
        s.reader_word(rdr::HELD).store(0, Ordering::Relaxed);
        s.reader_word(rdr::READ_POS).store(0, Ordering::Relaxed);
        // SYNC POINT: Release pairs with the opener's Acquire load of
        // CONSUMED: our reads of the sub-buffer happen before its reuse.
        s.reader_word(rdr::CONSUMED)
            .store(self.ord, Ordering::Release);
    }

    /// Finds the next readable run of bytes, or `None` if there is nothing
    /// to read now.
    pub(crate) fn next_chunk(&mut self, s: &Shared) -> Result<Option<Chunk>, FormatError> {
        self.check_epoch(s);
        let g = *s.geometry();
        // Bounded: each pass either returns or moves to a later sub-buffer,
        // and only so many were produced.
        loop {
            if self.limit.is_some_and(|l| self.ord >= l) {
                return Ok(None);
            }
            if self.bounce_full {
                if self.pos < self.bounce_len {
                    return Ok(Some(Chunk::Bounce {
                        start: self.pos,
                        end: self.bounce_len,
                    }));
                }
                let n = self.bounce_records;
                self.advance(s, Some(n));
                continue;
            }
            let slot = self.ord % g.n_subbufs;
            match s.available(self.ord, self.writers_gone)? {
                Avail::Nothing => {
                    if self.writers_gone {
                        // Behind a reservation the dead producer never
                        // committed: what was read of it before is counted.
                        count_dead_tail(s);
                    }
                    return Ok(None);
                }
                Avail::Lapped { next } => {
                    if next <= self.ord {
                        return Err(FormatError::Corrupt(
                            "reader position ahead of the producer",
                        ));
                    }
                    // Skipped sub-buffers are counted by the writer that
                    // overwrote them (we never claimed them), except one a
                    // mapping reader held (`Shared::skip_lapped`).
                    s.skip_lapped(self.ord, next);
                    // SYNC POINT: Relaxed, the reader's own word (as in
                    // `advance`).
                    s.reader_word(rdr::SUB_RECORDS).store(0, Ordering::Relaxed);
                    self.ord = next;
                    self.pos = 0;
                    self.claimed = false;
                    self.bounce_full = false;
                    self.complete = None;
                    self.partial = None;
                }
                Avail::Stuck { bytes, records } => {
                    // Never completed, behind the dead producer's head:
                    // given up and counted, and the reader goes on.
                    if !give_up_stuck(s, self.ord, bytes, records) {
                        // A hand-off in flight in it: `handoff_done` or
                        // `handoff_failed` first.
                        return Ok(None);
                    }
                    self.load(s);
                }
                Avail::Complete { end, records } => {
                    self.partial = None;
                    if !self.claimed {
                        // Held before claimed: a reader killed from here on
                        // leaves the next one what it needs to count this
                        // sub-buffer once (`Shared::drop_held`).
                        if !s.claim_held(self.ord, end, records) {
                            // Overwritten and counted (by its writer, or by
                            // `claim_held` for a reader killed holding it).
                            self.advance(s, None);
                            continue;
                        }
                        self.claimed = true;
                    }
                    if self.pos > end {
                        return Err(FormatError::Corrupt(
                            "read position beyond the end of a sub-buffer",
                        ));
                    }
                    if s.is_overwrite() {
                        // Copy it whole, then check it was not reused meanwhile.
                        self.bounce.resize(g.subbuf_size as usize, 0);
                        s.copy_out(slot, 0, &mut self.bounce[..end as usize]);
                        if !s.still_valid(self.ord) {
                            // Torn: the writer that reopened the slot left
                            // it to us (we hold the claim), so it is counted
                            // here: discarded, or consumed as far as a
                            // reader killed before us delivered it.
                            s.drop_held(self.ord);
                            self.advance(s, None);
                            continue;
                        }
                        self.bounce_len = end;
                        self.bounce_records = records;
                        self.bounce_full = true;
                        continue;
                    }
                    if self.pos == end {
                        self.advance(s, Some(records));
                        continue;
                    }
                    self.complete = Some((end, records));
                    return Ok(Some(Chunk::Direct {
                        slot,
                        start: self.pos,
                        end,
                    }));
                }
                Avail::Partial { end, records } => {
                    // A dead producer's tail is read regardless: nothing
                    // will complete it.
                    if self.complete_only && !self.writers_gone {
                        return Ok(None);
                    }
                    self.partial = Some((end, records));
                    if !self.claimed {
                        if !s.claim_for_read(self.ord) {
                            return Err(FormatError::Corrupt(
                                "sub-buffer being written is claimed as overwritten",
                            ));
                        }
                        self.claimed = true;
                    }
                    if self.pos >= end {
                        if self.writers_gone {
                            // All of the dead producer's tail was read:
                            // nothing will complete it, so its records are
                            // counted now.
                            count_dead_tail(s);
                        }
                        return Ok(None);
                    }
                    return Ok(Some(Chunk::Direct {
                        slot,
                        start: self.pos,
                        end,
                    }));
                }
            }
        }
    }

    /// Records that `n` bytes of the last chunk were delivered.
    pub(crate) fn consume(&mut self, s: &Shared, n: u64) {
        // SYNC POINT: Relaxed, the reader's own word (as in `advance`).
        let sub = s.reader_word(rdr::SUB_RECORDS).load(Ordering::Relaxed);
        if sub & SUB_KNOWN != 0 {
            // Whoever moves the position records what is known after it.
            s.reader_word(rdr::SUB_RECORDS)
                .store(sub & M31, Ordering::Relaxed);
        }
        self.pos += n;
        // SYNC POINT: Relaxed: the reader's own counter and position; they
        // pair with nothing (the producer reads them as a snapshot).
        s.reader_word(rdr::BYTES_CONSUMED)
            .fetch_add(n, Ordering::Relaxed);
        s.reader_word(rdr::READ_POS)
            .store(self.pos, Ordering::Relaxed);
        if let Some((end, records)) = self.partial {
            if self.pos == end {
                // Read up to where every reservation was committed: the
                // records before the position are known, which counts them
                // if the producer dies before the sub-buffer completes
                // (`count_dead_tail`). SYNC POINT: Relaxed, the reader's
                // own word, as above.
                s.reader_word(rdr::SUB_RECORDS).store(
                    SUB_KNOWN | (records.min(M31) << 32) | (sub & M31),
                    Ordering::Relaxed,
                );
            }
        }
        // Hand a finished sub-buffer back at once.
        if self.bounce_full && self.pos >= self.bounce_len {
            let n = self.bounce_records;
            self.advance(s, Some(n));
        } else if let Some((end, records)) = self.complete {
            if self.pos >= end {
                self.advance(s, Some(records));
            }
        }
    }

    /// Copies up to `buf.len()` readable bytes into `buf` and consumes them.
    pub(crate) fn read(&mut self, s: &Shared, buf: &mut [u8]) -> Result<usize, FormatError> {
        let mut done = 0;
        while done < buf.len() {
            let Some(chunk) = self.next_chunk(s)? else {
                break;
            };
            let n = chunk.len().min((buf.len() - done) as u64);
            let out = &mut buf[done..done + n as usize];
            match chunk {
                Chunk::Direct { slot, start, .. } => s.copy_out(slot, start, out),
                Chunk::Bounce { start, .. } => {
                    out.copy_from_slice(&self.bounce[start as usize..(start + n) as usize])
                }
            }
            self.consume(s, n);
            done += n as usize;
        }
        Ok(done)
    }
}
