//! The file format of a relay buffer file: where every field lives, and the
//! checks a reader makes before it trusts any of them.
//!
//! A buffer file is three page-aligned regions (see `docs/DESIGN.md` for the
//! picture):
//!
//! ```text
//! +--------------------------------+------------------+--------------------------+
//! | producer page(s):              | reader page(s)   | data: n_subbufs x        |
//! | header (640 B), then the       | (reader writes)  | subbuf_size bytes        |
//! | sub-buffer descriptors, 32 B x n | 128 B + 8 B x n  |                          |
//! +--------------------------------+------------------+--------------------------+
//! ```
//!
//! The header and the descriptors share their first page, so a buffer of up
//! to 108 sub-buffers costs two pages besides its data: the producer's page,
//! which readers map read-only, and the reader's page, the only one they may
//! write (protection is per page, so the two can't share one).
//!
//! All integers are native-endian `u64` (the format is only shared between
//! processes of one machine). This module is plain arithmetic: it computes and
//! validates offsets and never touches memory.

use crate::error::FormatError;

/// `b"RELAYFS\x01"` read as a little-endian `u64`: the first 8 bytes of every
/// buffer file.
pub const MAGIC: u64 = u64::from_le_bytes(*b"RELAYFS\x01");
/// Version of the buffer file format; bumped on any incompatible change
/// (the kernel's `RELAYFS_CHANNEL_VERSION`).
pub const VERSION: u64 = 2;
/// `hdr::LEFT`: the producer left the file for its reader to remove once
/// drained.
pub(crate) const LEFT_FOR_READER: u64 = 1;
/// `hdr::LEFT`: the channel directory was made by `relay_open`; the reader
/// that removes the last file removes it too (if empty).
pub(crate) const LEFT_DIR: u64 = 2;
/// Most buffers a channel can have: one per possible CPU, and the kernel
/// allows at most 8192 of those; anything above this in a header is damage.
pub const MAX_BUFFERS: u64 = 1 << 16;

/// Smallest sub-buffer size accepted.
pub const MIN_SUBBUF_SIZE: u64 = 64;
/// Largest sub-buffer size accepted (1 GiB): offsets within a sub-buffer and
/// the per-generation byte and record counts fit in 32 bits.
pub const MAX_SUBBUF_SIZE: u64 = 1 << 30;
/// Largest number of sub-buffers per buffer.
pub const MAX_SUBBUFS: u64 = 1 << 20;
/// Largest buffer (all sub-buffers together): 64 GiB.
pub const MAX_BUFFER_SIZE: u64 = 1 << 36;

/// Byte offsets of the fields of the header page (all `u64`).
pub(crate) mod hdr {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const PAGE_SIZE: usize = 16;
    pub const SUBBUF_SIZE: usize = 24;
    pub const N_SUBBUFS: usize = 32;
    pub const HDR_RESERVE: usize = 40;
    pub const FLAGS: usize = 48;
    pub const CPU: usize = 56;
    pub const PRODUCER_PID: usize = 64;
    pub const CHANNEL_ID: usize = 72;
    pub const DESC_OFFSET: usize = 80;
    pub const READER_OFFSET: usize = 88;
    pub const DATA_OFFSET: usize = 96;
    pub const FILE_SIZE: usize = 104;
    pub const CREATED_NS: usize = 112;
    pub const N_BUFFERS: usize = 120;
    /// The write position: on a cache line of its own (128 bytes, as
    /// crossbeam's `CachePadded` on x86_64, because of the adjacent-line
    /// prefetcher).
    pub const HEAD: usize = 256;
    /// `STATE_OPEN` or `STATE_CLOSED`.
    pub const STATE: usize = 384;
    /// Bumped by `relay_reset`, so that readers start over.
    pub const EPOCH: usize = 392;
    /// Ordinal + 1 of the latest sub-buffer an overwriting writer left to
    /// the reader because the reader had claimed it (`READ(ordinal)` in its
    /// claim word), kept as a maximum; 0: none (and in files made before
    /// this word existed). A reader that finds the sub-buffer it held
    /// lapped, its claim word already rewritten by a later lap, learns
    /// here whether the writer counted it or left it to be counted by the
    /// reader. On a 64-byte line away from `head` and the counters (shared
    /// with `OPENING` only): written once per lap of a claimed slot, never
    /// read on the write path.
    pub const LEFT_TO_READER: usize = 448;
    /// Sub-buffer switches in flight in any process writing the buffer
    /// (the producer and the children it forked), in the low 32 bits, from
    /// before a switch's closed check to after its move of `head`; and
    /// `OPENING_CLOSING`, set by the producer's `relay_close`. 0 in files
    /// made before this word existed. Changed by RMWs only, once per
    /// sub-buffer switch and at close: never on the per-record path.
    pub const OPENING: usize = 464;
    // Counters: updated on the slow path only (sub-buffer completion, drops).
    pub const RECORDS_WRITTEN: usize = 512;
    pub const BYTES_WRITTEN: usize = 520;
    pub const DROPPED_FULL: usize = 528;
    pub const DROPPED_TOOBIG: usize = 536;
    pub const OVERWRITTEN_RECORDS: usize = 544;
    pub const OVERWRITTEN_SUBBUFS: usize = 552;
    pub const PADDING_BYTES: usize = 560;
    pub const LAST_TOOBIG: usize = 568;
    pub const SUBBUFS_COMPLETED: usize = 576;
    pub const MAP_EVENTS_SEEN: usize = 584;
    /// Records dropped because the buffer's shared state was found corrupt
    /// (or a retry loop hit its bound), and every record offered after that.
    pub const DROPPED_CORRUPT: usize = 592;
    /// Non-zero once the producer found this buffer's shared state corrupt:
    /// one of the `CORRUPT_*` reasons. Writes then drop (counted in
    /// `DROPPED_CORRUPT`) until `relay_reset`.
    pub const CORRUPT: usize = 600;
    /// Records no reader consumed, counted by `relay_close` when no reader
    /// was attached (so none could read them any more).
    pub const UNREAD_AT_CLOSE: usize = 608;
    /// Set by `relay_close` when a reader was attached: `LEFT_FOR_READER`,
    /// plus `LEFT_DIR` if the channel directory was made by `relay_open`
    /// (its device and inode follow). The file then stays until that reader,
    /// or a later one, has drained it, and the reader removes it.
    pub const LEFT: usize = 616;
    pub const DIR_DEV: usize = 624;
    pub const DIR_INO: usize = 632;
    /// Bytes of the header page in use.
    pub const END: usize = 640;
}

/// Byte offsets of the fields of the reader page (all `u64`): the only part
/// of a buffer file a reader writes.
pub(crate) mod rdr {
    /// Ordinal of the sub-buffer the reader is on (= sub-buffers consumed).
    pub const CONSUMED: usize = 0;
    /// Bytes of that sub-buffer already delivered.
    pub const READ_POS: usize = 8;
    /// Non-zero while the reader sleeps in poll: asks for a wakeup.
    pub const WAITING: usize = 16;
    pub const READER_PID: usize = 24;
    pub const RECORDS_CONSUMED: usize = 32;
    pub const BYTES_CONSUMED: usize = 40;
    pub const DISCARDED_SUBBUFS: usize = 48;
    pub const DISCARDED_RECORDS: usize = 56;
    /// Number of live read-only mappings of the data (`buf_mapped`).
    pub const MAPPED: usize = 64;
    /// Bumped at every map and unmap, so the producer can call its callbacks.
    pub const MAP_EVENTS: usize = 72;
    /// Epoch (see `hdr::EPOCH`) this reader state belongs to.
    pub const EPOCH: usize = 80;
    /// Ordinal + 1 of the complete sub-buffer at `CONSUMED` that a reader
    /// claims or claimed (stored before the claim CAS, by every path that
    /// claims one: `read`, `sendfile`, `Mapping::ready`, ...) and has not
    /// counted yet; 0: none. If it is overwritten under the claim, the writer
    /// leaves it to the reader, who counts it from these fields, after a
    /// restart too (`Shared::drop_held`).
    pub const HELD: usize = 88;
    /// Records in the held sub-buffer.
    pub const HELD_RECORDS: usize = 96;
    /// Data bytes (padding excluded) of the held sub-buffer.
    pub const HELD_LEN: usize = 104;
    /// What a hand-off reader (`RelayFile::read_handoff`) knows of the
    /// sub-buffer it is in: bit 63 set if bits 62..32 hold the records of
    /// that sub-buffer before `READ_POS`; bits 30..0: records of it counted
    /// lost in a hand-off, to be left out when it is counted consumed. 0
    /// when nothing is known (the other readers never set it).
    pub const SUB_RECORDS: usize = 112;
    /// A hand-off in flight: bytes a reader consumed but had not handed on
    /// yet (`RelayFile::read_handoff` to `handoff_done`). Bit 63: in flight;
    /// bit 62: the record count is known; bit 61: the hand-off finished its
    /// sub-buffer (its records are in `RECORDS_CONSUMED`); bits 59..30:
    /// records; bits 29..0: bytes. A reader that opens the buffer and finds
    /// it set counts them lost (`discarded_records`). 0: none.
    pub const HANDOFF: usize = 120;
    /// One claim word per sub-buffer (see `buffer`).
    pub const CLAIMS: usize = 128;
}

/// Byte offsets within one sub-buffer descriptor (32 bytes each).
pub(crate) mod desc {
    /// Commit word: while the sub-buffer is being filled, records << 32 |
    /// bytes committed; once complete, `COMPLETE | laps completed`.
    pub const WORD: usize = 0;
    /// Ordinal of the sub-buffer that last opened this slot.
    pub const GEN: usize = 8;
    /// Padding of the last closed generation.
    pub const PAD: usize = 16;
    /// Records in the last completed generation.
    pub const REC_LAST: usize = 24;
    pub const SIZE: usize = 32;
}

/// Header flag: overwrite ("flight recorder") mode.
pub const FLAG_OVERWRITE: u64 = 1;
/// Header flag: one global buffer for all CPUs.
pub const FLAG_GLOBAL: u64 = 2;

/// `hdr::CORRUPT`: a sub-buffer generation is ahead of the write position.
pub const CORRUPT_GENERATION: u64 = 1;
/// `hdr::CORRUPT`: a commit word holds a value the protocol never produces.
pub const CORRUPT_COMMIT_WORD: u64 = 2;
/// `hdr::CORRUPT`: the write position names a sub-buffer that doesn't exist.
pub const CORRUPT_HEAD: u64 = 3;
/// `hdr::CORRUPT`: a retry loop of the writer hit its bound (the shared state
/// keeps changing under it).
pub const CORRUPT_RETRIES: u64 = 4;

/// What a `hdr::CORRUPT` value means.
pub fn corrupt_reason(code: u64) -> Option<&'static str> {
    match code {
        0 => None,
        CORRUPT_GENERATION => Some("a sub-buffer generation is ahead of the write position"),
        CORRUPT_COMMIT_WORD => Some("a sub-buffer commit word holds an impossible value"),
        CORRUPT_HEAD => Some("the write position names a sub-buffer that does not exist"),
        CORRUPT_RETRIES => {
            Some("the write position or a descriptor kept changing under the writer")
        }
        _ => Some("unknown reason"),
    }
}

/// `hdr::OPENING`: the switches in flight.
pub const OPENING_COUNT: u64 = 0xffff_ffff;
/// `hdr::OPENING`: the producer's `relay_close` began; a switch that finds
/// it set is refused.
pub const OPENING_CLOSING: u64 = 1 << 63;

/// Producer state: writing.
pub const STATE_OPEN: u64 = 1;
/// Producer state: `relay_close` done, nothing more will be written.
pub const STATE_CLOSED: u64 = 2;

/// Static facts about a buffer, from its header: what the producer writes
/// once at creation and a reader validates before it trusts anything (one
/// encoder and one decoder, both here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferHeader {
    /// Sizes and offsets.
    pub geometry: Geometry,
    /// CPU of the buffer.
    pub cpu: u64,
    /// Process id of the producer that created it.
    pub producer_pid: u64,
    /// Random id of the `relay_open` that created it.
    pub channel_id: u64,
    /// Overwrite mode.
    pub overwrite: bool,
    /// The channel's one global buffer.
    pub global: bool,
    /// Buffers in the channel.
    pub n_buffers: u64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_ns: u64,
}

impl BufferHeader {
    /// The header's flags word (`FLAG_OVERWRITE`, `FLAG_GLOBAL`).
    pub fn flags(&self) -> u64 {
        (if self.overwrite { FLAG_OVERWRITE } else { 0 })
            | if self.global { FLAG_GLOBAL } else { 0 }
    }

    /// The fields the producer writes at creation, as (byte offset, value):
    /// everything but the magic, which goes last (see `buffer::Shared::create`),
    /// and the running state (state, epoch, head, counters).
    pub(crate) fn encode(&self) -> [(usize, u64); 15] {
        let g = &self.geometry;
        [
            (hdr::VERSION, VERSION),
            (hdr::PAGE_SIZE, g.page_size),
            (hdr::SUBBUF_SIZE, g.subbuf_size),
            (hdr::N_SUBBUFS, g.n_subbufs),
            (hdr::HDR_RESERVE, g.hdr_reserve),
            (hdr::FLAGS, self.flags()),
            (hdr::CPU, self.cpu),
            (hdr::PRODUCER_PID, self.producer_pid),
            (hdr::CHANNEL_ID, self.channel_id),
            (hdr::DESC_OFFSET, g.desc_offset),
            (hdr::READER_OFFSET, g.reader_offset),
            (hdr::DATA_OFFSET, g.data_offset),
            (hdr::FILE_SIZE, g.file_size),
            (hdr::CREATED_NS, self.created_ns),
            (hdr::N_BUFFERS, self.n_buffers),
        ]
    }

    /// Decodes and validates a header page (the first [`hdr::END`] bytes of
    /// a buffer file; a shorter slice reads as zeros beyond its end) of a
    /// file that is `file_len` bytes long, for a reader whose page size is
    /// `sys_page`.
    ///
    /// # Errors
    /// A [`FormatError`] for a wrong magic or version, or any size or offset
    /// that disagrees with what the sizes imply (see
    /// [`Geometry::from_header`]).
    pub(crate) fn decode(
        page: &[u8],
        file_len: u64,
        sys_page: u64,
    ) -> Result<BufferHeader, FormatError> {
        let field = |off: usize| {
            page.get(off..off + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_ne_bytes)
        };
        let geometry = Geometry::from_header(field, file_len, sys_page)?;
        let flags = field(hdr::FLAGS);
        Ok(BufferHeader {
            geometry,
            cpu: field(hdr::CPU),
            producer_pid: field(hdr::PRODUCER_PID),
            channel_id: field(hdr::CHANNEL_ID),
            overwrite: flags & FLAG_OVERWRITE != 0,
            global: flags & FLAG_GLOBAL != 0,
            n_buffers: field(hdr::N_BUFFERS),
            created_ns: field(hdr::CREATED_NS),
        })
    }
}

/// The shape of a buffer: sizes and the offsets of its regions, computed
/// from the sub-buffer size, the sub-buffer count and the page size, and
/// validated (every derived offset fits, every size is in range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Size of one sub-buffer in bytes (a power of two).
    pub subbuf_size: u64,
    /// Number of sub-buffers.
    pub n_subbufs: u64,
    /// Bytes reserved at the start of every sub-buffer for a header
    /// (`subbuf_start_reserve`).
    pub hdr_reserve: u64,
    /// Page size the regions are aligned to.
    pub page_size: u64,
    /// log2(subbuf_size).
    pub sb_shift: u32,
    /// log2 of `n_subbufs` rounded up to a power of two.
    pub n_shift: u32,
    /// Offset of the descriptor array.
    pub desc_offset: u64,
    /// Offset of the reader page.
    pub reader_offset: u64,
    /// Size of the reader region (page multiple).
    pub reader_len: u64,
    /// Offset of the data.
    pub data_offset: u64,
    /// Total file size.
    pub file_size: u64,
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    Some(v.checked_add(a - 1)? & !(a - 1))
}

impl Geometry {
    /// Computes the geometry of a buffer, checking every argument.
    ///
    /// # Errors
    /// [`FormatError`] naming the argument that is out of range.
    pub fn new(
        subbuf_size: u64,
        n_subbufs: u64,
        hdr_reserve: u64,
        page_size: u64,
    ) -> Result<Geometry, FormatError> {
        if !subbuf_size.is_power_of_two()
            || !(MIN_SUBBUF_SIZE..=MAX_SUBBUF_SIZE).contains(&subbuf_size)
        {
            return Err(FormatError::SubbufSize(subbuf_size));
        }
        if n_subbufs == 0 || n_subbufs > MAX_SUBBUFS {
            return Err(FormatError::SubbufCount(n_subbufs));
        }
        let data_len = subbuf_size
            .checked_mul(n_subbufs)
            .filter(|&l| l <= MAX_BUFFER_SIZE)
            .ok_or(FormatError::BufferSize(subbuf_size, n_subbufs))?;
        if hdr_reserve >= subbuf_size {
            return Err(FormatError::HeaderReserve(hdr_reserve, subbuf_size));
        }
        if !page_size.is_power_of_two() || !(4096..=1 << 21).contains(&page_size) {
            return Err(FormatError::PageSize(page_size));
        }
        let bad = || FormatError::BufferSize(subbuf_size, n_subbufs);
        // The descriptors follow the header in its page (hdr::END is a
        // multiple of 128, so they start on a fresh pair of cache lines).
        let desc_offset = hdr::END as u64;
        let reader_offset =
            align_up(desc_offset + n_subbufs * desc::SIZE as u64, page_size).ok_or_else(bad)?;
        let reader_len = align_up(rdr::CLAIMS as u64 + n_subbufs * 8, page_size).ok_or_else(bad)?;
        let data_offset = reader_offset + reader_len;
        let file_size = data_offset
            .checked_add(align_up(data_len, page_size).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        Ok(Geometry {
            subbuf_size,
            n_subbufs,
            hdr_reserve,
            page_size,
            sb_shift: subbuf_size.trailing_zeros(),
            n_shift: n_subbufs.next_power_of_two().trailing_zeros(),
            desc_offset,
            reader_offset,
            reader_len,
            data_offset,
            file_size,
        })
    }

    /// Bytes of data: `n_subbufs * subbuf_size`.
    pub fn data_len(&self) -> u64 {
        self.subbuf_size * self.n_subbufs
    }

    /// Largest record that fits in a sub-buffer.
    pub fn max_record(&self) -> u64 {
        self.subbuf_size - self.hdr_reserve
    }

    /// Reads and validates the geometry recorded in a header page.
    ///
    /// `field(off)` returns the `u64` at byte `off` of the header. `actual_len`
    /// is the file's real size, `sys_page` the reader's page size.
    ///
    /// # Errors
    /// A [`FormatError`] for a wrong magic or version, or any size or offset
    /// that disagrees with what the sizes imply.
    pub(crate) fn from_header(
        field: impl Fn(usize) -> u64,
        actual_len: u64,
        sys_page: u64,
    ) -> Result<Geometry, FormatError> {
        if actual_len < hdr::END as u64 {
            return Err(FormatError::Truncated {
                expected: hdr::END as u64,
                actual: actual_len,
            });
        }
        let magic = field(hdr::MAGIC);
        if magic != MAGIC {
            return Err(FormatError::Magic(magic));
        }
        let version = field(hdr::VERSION);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let page = field(hdr::PAGE_SIZE);
        let g = Geometry::new(
            field(hdr::SUBBUF_SIZE),
            field(hdr::N_SUBBUFS),
            field(hdr::HDR_RESERVE),
            page,
        )?;
        if page % sys_page != 0 {
            return Err(FormatError::PageSize(page));
        }
        let recorded = [
            ("descriptor offset", field(hdr::DESC_OFFSET), g.desc_offset),
            ("reader offset", field(hdr::READER_OFFSET), g.reader_offset),
            ("data offset", field(hdr::DATA_OFFSET), g.data_offset),
            ("file size", field(hdr::FILE_SIZE), g.file_size),
        ];
        for (what, got, want) in recorded {
            if got != want {
                return Err(FormatError::Inconsistent { what, got, want });
            }
        }
        if actual_len < g.file_size {
            return Err(FormatError::Truncated {
                expected: g.file_size,
                actual: actual_len,
            });
        }
        // Readers size per-buffer work by the count (a recorder waits for
        // every buffer, `stat` lists them), so it is checked like a size.
        let n_buffers = field(hdr::N_BUFFERS);
        if n_buffers == 0 || n_buffers > MAX_BUFFERS {
            return Err(FormatError::BufferCount(n_buffers));
        }
        let cpu = field(hdr::CPU);
        if cpu >= n_buffers {
            return Err(FormatError::BufferCpu { cpu, n_buffers });
        }
        Ok(g)
    }

    // --- Positions -------------------------------------------------------
    //
    // The write position ("head") is a u64 laid out as
    //     lap << (sb_shift + n_shift) | slot << sb_shift | offset
    // so that the fast path finds the slot and the offset with a shift and a
    // mask, never a division. The ordinal of a sub-buffer (how many were
    // opened before it) is lap * n_subbufs + slot.

    /// Offset within the sub-buffer.
    #[inline(always)]
    pub fn pos_offset(&self, pos: u64) -> u64 {
        pos & (self.subbuf_size - 1)
    }

    /// Slot (sub-buffer index in the buffer).
    #[inline(always)]
    pub fn pos_slot(&self, pos: u64) -> u64 {
        (pos >> self.sb_shift) & ((1 << self.n_shift) - 1)
    }

    /// Lap (how many times the ring wrapped).
    #[inline(always)]
    pub fn pos_lap(&self, pos: u64) -> u64 {
        pos >> (self.sb_shift + self.n_shift)
    }

    /// Ordinal of the sub-buffer a position is in.
    #[inline]
    pub fn pos_ordinal(&self, pos: u64) -> u64 {
        self.pos_lap(pos) * self.n_subbufs + self.pos_slot(pos)
    }

    /// Position of the start of the sub-buffer with this ordinal.
    #[inline]
    pub fn ordinal_pos(&self, ord: u64) -> u64 {
        let lap = ord / self.n_subbufs;
        let slot = ord % self.n_subbufs;
        (lap << (self.sb_shift + self.n_shift)) | (slot << self.sb_shift)
    }

    /// Start of the sub-buffer after the one `pos` is in.
    #[inline]
    pub fn next_subbuf_pos(&self, pos: u64) -> u64 {
        let base = pos & !(self.subbuf_size - 1);
        if self.pos_slot(pos) + 1 == self.n_subbufs {
            (self.pos_lap(pos) + 1) << (self.sb_shift + self.n_shift)
        } else {
            base + self.subbuf_size
        }
    }

    /// Byte offset of a slot's data within the data region.
    #[inline(always)]
    pub fn slot_data_offset(&self, slot: u64) -> u64 {
        slot << self.sb_shift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_regions_are_page_aligned_and_disjoint() {
        // Header and descriptors share the first page, then the reader page.
        let g = Geometry::new(4096, 8, 0, 4096).unwrap();
        assert_eq!(g.desc_offset, hdr::END as u64);
        assert_eq!(g.reader_offset, 4096);
        assert_eq!(g.data_offset, 8192);
        assert_eq!(g.file_size, 8192 + 8 * 4096);
        // The most descriptors that fit beside the header: still two pages.
        let g = Geometry::new(4096, 108, 0, 4096).unwrap();
        assert_eq!(g.data_offset, 8192);
        let g = Geometry::new(4096, 109, 0, 4096).unwrap();
        assert_eq!(g.data_offset, 12288);
        let g = Geometry::new(64, 1000, 8, 4096).unwrap();
        assert_eq!(g.reader_offset % 4096, 0);
        assert!(g.reader_offset >= g.desc_offset + 1000 * 32);
        assert!(g.data_offset >= g.reader_offset + 128 + 8000);
        assert_eq!(g.data_offset % 4096, 0);
        assert!(g.file_size >= g.data_offset + 64000);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert_eq!(
            Geometry::new(0, 4, 0, 4096),
            Err(FormatError::SubbufSize(0))
        );
        assert_eq!(
            Geometry::new(1000, 4, 0, 4096),
            Err(FormatError::SubbufSize(1000))
        );
        assert_eq!(
            Geometry::new(4096, 0, 0, 4096),
            Err(FormatError::SubbufCount(0))
        );
        assert!(matches!(
            Geometry::new(1 << 30, 1 << 20, 0, 4096),
            Err(FormatError::BufferSize(..))
        ));
        assert!(matches!(
            Geometry::new(4096, 4, 4096, 4096),
            Err(FormatError::HeaderReserve(..))
        ));
        assert!(matches!(
            Geometry::new(4096, 4, 0, 100),
            Err(FormatError::PageSize(100))
        ));
    }

    fn encoded(h: &BufferHeader) -> Vec<u8> {
        let mut page = vec![0u8; hdr::END];
        page[hdr::MAGIC..hdr::MAGIC + 8].copy_from_slice(&MAGIC.to_ne_bytes());
        for (off, v) in h.encode() {
            page[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        }
        page
    }

    #[test]
    fn header_decodes_what_it_encodes_and_refuses_damage() {
        let h = BufferHeader {
            geometry: Geometry::new(4096, 8, 16, 4096).unwrap(),
            cpu: 3,
            producer_pid: 1234,
            channel_id: 0xfeed_f00d,
            overwrite: true,
            global: false,
            n_buffers: 4,
            created_ns: 42,
        };
        let len = h.geometry.file_size;
        let page = encoded(&h);
        assert_eq!(BufferHeader::decode(&page, len, 4096), Ok(h.clone()));
        // Every check of the geometry applies.
        assert!(matches!(
            BufferHeader::decode(&page, len - 1, 4096),
            Err(FormatError::Truncated { .. })
        ));
        let mut bad = page.clone();
        bad[hdr::MAGIC] ^= 1;
        assert!(matches!(
            BufferHeader::decode(&bad, len, 4096),
            Err(FormatError::Magic(_))
        ));
        let mut bad = page.clone();
        bad[hdr::DATA_OFFSET] ^= 8;
        assert!(matches!(
            BufferHeader::decode(&bad, len, 4096),
            Err(FormatError::Inconsistent { .. })
        ));
        let cpu_out_of_range = BufferHeader {
            cpu: 4,
            ..h.clone()
        };
        assert!(matches!(
            BufferHeader::decode(&encoded(&cpu_out_of_range), len, 4096),
            Err(FormatError::BufferCpu { .. })
        ));
        // A short page is no panic: what is missing reads as zeros.
        assert!(BufferHeader::decode(&page[..100], len, 4096).is_err());
    }

    #[test]
    fn positions_walk_the_ring_in_order() {
        let g = Geometry::new(64, 3, 0, 4096).unwrap();
        let mut pos = 0;
        for ord in 0..20 {
            assert_eq!(g.pos_ordinal(pos), ord);
            assert_eq!(g.ordinal_pos(ord), pos);
            assert_eq!(g.pos_slot(pos), ord % 3);
            assert_eq!(g.pos_lap(pos), ord / 3);
            assert_eq!(g.pos_offset(pos + 17), 17);
            assert_eq!(g.pos_ordinal(pos + 63), ord);
            pos = g.next_subbuf_pos(pos + 5);
        }
    }
}
