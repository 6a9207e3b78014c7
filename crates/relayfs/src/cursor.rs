//! The reader's position in a buffer and the walk from one readable run of
//! bytes to the next: the part of the relay file operations that is pure
//! protocol (no files, no system calls), shared by [`RelayFile`] and the
//! loom model.
//!
//! [`RelayFile`]: crate::RelayFile

use crate::buffer::{Avail, Shared};
use crate::error::FormatError;
use crate::layout::{hdr, rdr};
use crate::sync::Ordering;

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
    /// The producer is dead: nothing changes any more.
    writers_gone: bool,
    /// Leave the sub-buffer being written alone: read complete ones only.
    pub(crate) complete_only: bool,
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
        c.load(s);
        c
    }

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
    /// reader's position (see `Shared::abandoned`).
    pub(crate) fn abandoned(&self, s: &Shared) -> Option<(u64, u64)> {
        s.abandoned(self.ord, self.pos)
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
            // relay_reset: the producer zeroed the reader page too.
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
        if let Some(n) = delivered_records {
            s.reader_word(rdr::RECORDS_CONSUMED)
                .fetch_add(n, Ordering::Relaxed);
        }
        self.ord += 1;
        self.pos = 0;
        self.claimed = false;
        self.bounce_full = false;
        self.complete = None;
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
                Avail::Nothing => return Ok(None),
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
                    self.ord = next;
                    self.pos = 0;
                    self.claimed = false;
                    self.bounce_full = false;
                    self.complete = None;
                }
                Avail::Complete { end, records } => {
                    if !self.claimed {
                        if !s.claim_for_read(self.ord) {
                            self.advance(s, None); // overwritten and counted
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
                            // SYNC POINT: Relaxed: the reader's own
                            // counters; they pair with nothing.
                            s.reader_word(rdr::DISCARDED_SUBBUFS)
                                .fetch_add(1, Ordering::Relaxed);
                            s.reader_word(rdr::DISCARDED_RECORDS)
                                .fetch_add(records, Ordering::Relaxed);
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
                Avail::Partial { end } => {
                    // A dead producer's tail is read regardless: nothing
                    // will complete it.
                    if self.complete_only && !self.writers_gone {
                        return Ok(None);
                    }
                    if !self.claimed {
                        if !s.claim_for_read(self.ord) {
                            return Err(FormatError::Corrupt(
                                "sub-buffer being written is claimed as overwritten",
                            ));
                        }
                        self.claimed = true;
                    }
                    if self.pos >= end {
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
        self.pos += n;
        // SYNC POINT: Relaxed: the reader's own counter and position; they
        // pair with nothing (the producer reads them as a snapshot).
        s.reader_word(rdr::BYTES_CONSUMED)
            .fetch_add(n, Ordering::Relaxed);
        s.reader_word(rdr::READ_POS)
            .store(self.pos, Ordering::Relaxed);
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
