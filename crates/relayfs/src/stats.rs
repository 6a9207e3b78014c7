//! The counters of a buffer ([`BufferStats`]) and their arithmetic: summed
//! over buffers with `+=` or [`Sum`](std::iter::Sum).

use std::iter::Sum;
use std::ops::AddAssign;

/// The counters of one buffer, read by either side.
///
/// They add up: once the channel is closed (and a reader that was attached
/// then drained it), [`records_written()`](Self::records_written) equals the
/// sum of `records_consumed`, `overwritten_records`, `discarded_records` and
/// `unread_at_close`; and every record ever offered to `write`/`reserve` is
/// in `records_written()`, `dropped_full`, `dropped_toobig`,
/// `dropped_corrupt` or `dropped_closed`. So
/// `records_consumed + lost()` is every record offered. A producer that
/// died instead leaves its last sub-buffer incomplete: once a reader has
/// read it, `records_consumed + lost()` plus what
/// [`RelayFile::abandoned`](crate::RelayFile::abandoned) gave up behind an
/// uncommitted reservation is every record offered. While writers are
/// active, the counters are a moment's snapshot of each, not of all. A buffer
/// whose descriptors were overwritten from outside (`corrupt != 0`) keeps
/// every refusal counted, but the record counts of its damaged sub-buffers
/// are whatever the damaged words said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// Records in sub-buffers completed so far (the header's "records
    /// written"); with `records_pending`, [`records_written()`](Self::records_written).
    pub records_completed: u64,
    /// Record bytes (header reserves and padding excluded) in completed
    /// sub-buffers.
    pub bytes_written: u64,
    /// Records committed to the sub-buffer being filled (not yet complete),
    /// and to any closed behind it and not complete yet (a writer still
    /// copying into it, or one that died holding a reservation there).
    pub records_pending: u64,
    /// Sub-buffers closed by the producer (`subbufs_produced`).
    pub subbufs_produced: u64,
    /// Sub-buffers complete (every reservation committed).
    pub subbufs_completed: u64,
    /// Sub-buffers consumed by the reader (`subbufs_consumed`).
    pub subbufs_consumed: u64,
    /// Records in the sub-buffers the reader consumed, and those it
    /// delivered of the partly filled one a dead producer left (which stay
    /// in `records_pending` too: nothing completes that sub-buffer).
    pub records_consumed: u64,
    /// Bytes the reader consumed (header reserves included).
    pub bytes_consumed: u64,
    /// Records dropped because a sub-buffer switch was refused: the buffer
    /// was full (no-overwrite mode), `subbuf_start` refused, or (both modes)
    /// the sub-buffer to reuse still held an uncommitted reservation of its
    /// previous lap ([`WriteError::Full`](crate::WriteError::Full)).
    pub dropped_full: u64,
    /// Records dropped because they were larger than a sub-buffer.
    pub dropped_toobig: u64,
    /// Records overwritten before any reader saw them (overwrite mode).
    pub overwritten_records: u64,
    /// Sub-buffers overwritten before any reader saw them.
    pub overwritten_subbufs: u64,
    /// Records the reader copied but found overwritten under it, and
    /// discarded (overwrite mode); also those a lost hand-off took, and
    /// those of a sub-buffer a dead producer left stuck behind its head
    /// (never completed) that the reader gave up.
    pub discarded_records: u64,
    /// Sub-buffers the reader discarded that way.
    pub discarded_subbufs: u64,
    /// Padding bytes at the ends of closed sub-buffers.
    pub padding_bytes: u64,
    /// Length of the last record refused as too big.
    pub last_toobig: u64,
    /// Records dropped because the buffer's shared state was found corrupt
    /// ([`WriteError::Corrupt`](crate::WriteError::Corrupt)).
    pub dropped_corrupt: u64,
    /// Records offered after the channel was closed
    /// ([`WriteError::Closed`](crate::WriteError::Closed)). They never reach
    /// the buffer, so only the producer's own counters
    /// ([`Channel::stats`](crate::Channel::stats) and the like) have them: 0
    /// in a reader's view.
    pub dropped_closed: u64,
    /// Why the producer marked the buffer corrupt (a `layout::CORRUPT_*`
    /// code, see [`layout::corrupt_reason`](crate::layout::corrupt_reason));
    /// 0 if it didn't. Summed over buffers, non-zero if any is.
    pub corrupt: u64,
    /// Records no reader consumed, counted by `relay_close` when no reader
    /// was attached to the buffer (none can read them any more).
    pub unread_at_close: u64,
}

impl BufferStats {
    /// Records accepted by the channel: those in completed sub-buffers and
    /// those committed to the sub-buffer being filled
    /// (`records_completed + records_pending`).
    pub fn records_written(&self) -> u64 {
        self.records_completed + self.records_pending
    }

    /// Records lost in any way: dropped (full, too big, corrupt buffer,
    /// channel closed),
    /// overwritten, discarded by the reader, or left unread at close.
    pub fn lost(&self) -> u64 {
        self.dropped_full
            + self.dropped_toobig
            + self.dropped_corrupt
            + self.dropped_closed
            + self.overwritten_records
            + self.discarded_records
            + self.unread_at_close
    }
}

impl AddAssign<&BufferStats> for BufferStats {
    /// Adds another buffer's counters: every count adds; `last_toobig` and
    /// `corrupt` (a length and a reason, not counts) keep the larger.
    fn add_assign(&mut self, s: &BufferStats) {
        self.records_completed += s.records_completed;
        self.bytes_written += s.bytes_written;
        self.records_pending += s.records_pending;
        self.subbufs_produced += s.subbufs_produced;
        self.subbufs_completed += s.subbufs_completed;
        self.subbufs_consumed += s.subbufs_consumed;
        self.records_consumed += s.records_consumed;
        self.bytes_consumed += s.bytes_consumed;
        self.dropped_full += s.dropped_full;
        self.dropped_toobig += s.dropped_toobig;
        self.overwritten_records += s.overwritten_records;
        self.overwritten_subbufs += s.overwritten_subbufs;
        self.discarded_records += s.discarded_records;
        self.discarded_subbufs += s.discarded_subbufs;
        self.padding_bytes += s.padding_bytes;
        self.last_toobig = self.last_toobig.max(s.last_toobig);
        self.dropped_corrupt += s.dropped_corrupt;
        self.dropped_closed += s.dropped_closed;
        self.corrupt = self.corrupt.max(s.corrupt);
        self.unread_at_close += s.unread_at_close;
    }
}

impl AddAssign for BufferStats {
    fn add_assign(&mut self, s: BufferStats) {
        *self += &s;
    }
}

impl<'a> Sum<&'a BufferStats> for BufferStats {
    fn sum<I: Iterator<Item = &'a BufferStats>>(iter: I) -> BufferStats {
        let mut t = BufferStats::default();
        for s in iter {
            t += s;
        }
        t
    }
}

impl Sum for BufferStats {
    fn sum<I: Iterator<Item = BufferStats>>(iter: I) -> BufferStats {
        let mut t = BufferStats::default();
        for s in iter {
            t += &s;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_add_every_count_and_keep_the_largest_length_and_reason() {
        let a = BufferStats {
            records_completed: 3,
            records_pending: 1,
            dropped_full: 2,
            last_toobig: 900,
            corrupt: 0,
            unread_at_close: 4,
            ..BufferStats::default()
        };
        let b = BufferStats {
            records_completed: 5,
            records_pending: 2,
            dropped_toobig: 1,
            last_toobig: 100,
            corrupt: 2,
            overwritten_records: 7,
            ..BufferStats::default()
        };
        let by_ref: BufferStats = [a, b].iter().sum();
        let owned: BufferStats = [a, b].into_iter().sum();
        let mut plus = a;
        plus += b;
        assert_eq!(by_ref, owned);
        assert_eq!(by_ref, plus);
        assert_eq!(by_ref.records_completed, 8);
        assert_eq!(by_ref.records_written(), 11);
        assert_eq!(by_ref.lost(), 2 + 1 + 7 + 4);
        assert_eq!(by_ref.last_toobig, 900);
        assert_eq!(by_ref.corrupt, 2);
        let none: BufferStats = std::iter::empty::<BufferStats>().sum();
        assert_eq!(none, BufferStats::default());
    }
}
