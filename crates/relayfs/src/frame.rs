//! Framed records: a small header before each record, so that a reader can
//! cut the byte stream of a buffer back into the records that were written.
//!
//! Relay itself does not frame: [`Channel::write`] puts the bytes in as
//! they are, and a `read` of a relay file returns bytes, not records (a
//! 64 KiB read starts mid-record). This module is the library's one framing
//! format, documented byte by byte in `docs/DESIGN.md` ("Framed records"):
//!
//! ```text
//!  off  size
//!  0    2    magic 0xE7 0x1F
//!  2    1    flags: bit 0 = a timestamp follows the header; bits 1-7 zero
//!  3    1    check: top byte of (len | flags << 32) * 0x9E3779B97F4A7C15
//!  4    4    payload length, little-endian u32
//!  8    8    timestamp (only with flag bit 0): CLOCK_MONOTONIC in ns, LE u64
//!  8/16 len  payload
//! ```
//!
//! * Writing: [`Channel::write_record`], [`Channel::write_record_timed`],
//!   [`Channel::reserve_record`] and [`Channel::reserve_record_timed`]. The
//!   header is built in the reserved slot: one reservation, no extra copy.
//! * Decoding: [`Decoder`] is the core, bytes in and records out, whatever
//!   the bytes come from; [`Records`] drives it from a [`ByteSource`]: any
//!   [`std::io::Read`] ([`Records::from_reader`], e.g. a `cpuN.out` file)
//!   or a live [`RelayFile`] ([`Records::live`]). Corruption is reported
//!   with its offset in the stream, and the decoder resynchronises.
//! * [`Merge`] merges the records of several buffers in timestamp order.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! use relayfs::{frame::Records, Channel, RelayFile};
//!
//! let chan = Channel::builder("framed").dir(dir.path()).subbuf_size(4096).n_subbufs(4).global(true).open()?;
//! let reader = RelayFile::open(chan.buffer_path(0))?;
//! chan.write_record(b"first")?;
//! chan.write_record_timed(b"second")?;
//! chan.close()?;
//! let got: Vec<_> = Records::live(reader).collect::<Result<_, _>>()?;
//! assert_eq!(got[0].payload, b"first");
//! assert_eq!(got[0].timestamp, None);
//! assert_eq!(got[1].payload, b"second");
//! assert!(got[1].timestamp.is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;

use crate::{Channel, ReadError, Ready, RelayFile, Reservation, WriteError};

/// Length of the record header.
pub const HEADER_LEN: usize = 8;
/// Length of the timestamp that follows the header when
/// [`FLAG_TIMESTAMP`] is set.
pub const TIMESTAMP_LEN: usize = 8;
/// The two bytes a record starts with.
pub const MAGIC: [u8; 2] = [0xE7, 0x1F];
/// Flag bit: an 8-byte timestamp follows the header.
pub const FLAG_TIMESTAMP: u8 = 1;
/// The flag bits this version knows; a header with another bit set is
/// refused as corrupt.
pub const KNOWN_FLAGS: u8 = FLAG_TIMESTAMP;
/// Default largest payload a [`Decoder`] accepts: a sub-buffer is at most
/// 1 GiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 30;

/// The least room [`Decoder::spare`] makes for the rest of a record cut
/// short (more as more of it arrives).
pub const SPARE_STEP: usize = 64 << 10;

const CHECK_MUL: u64 = 0x9E37_79B9_7F4A_7C15;
const MAGIC_WORD: u64 = MAGIC[0] as u64 | (MAGIC[1] as u64) << 8;

/// The check byte of a header with payload length `len` and `flags`.
#[inline(always)]
pub const fn check_byte(len: u32, flags: u8) -> u8 {
    ((len as u64 | (flags as u64) << 32).wrapping_mul(CHECK_MUL) >> 56) as u8
}

/// The 8 header bytes of a record with a payload of `len` bytes.
#[inline(always)]
pub const fn encode_header(len: u32, flags: u8) -> [u8; HEADER_LEN] {
    let w = MAGIC_WORD
        | (flags as u64) << 16
        | (check_byte(len, flags) as u64) << 24
        | (len as u64) << 32;
    w.to_le_bytes()
}

/// The framed length (header, timestamp and payload) of a record.
pub const fn framed_len(payload_len: usize, timed: bool) -> usize {
    HEADER_LEN
        .saturating_add(if timed { TIMESTAMP_LEN } else { 0 })
        .saturating_add(payload_len)
}

/// A parsed, valid record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The flag bits.
    pub flags: u8,
    /// The payload length.
    pub len: u32,
}

impl Header {
    /// Parses and checks 8 header bytes.
    ///
    /// # Errors
    /// What is wrong with them (the order of the checks: magic, check byte,
    /// flags).
    pub fn parse(b: [u8; HEADER_LEN]) -> Result<Header, Corruption> {
        if b[0] != MAGIC[0] || b[1] != MAGIC[1] {
            return Err(Corruption::Magic);
        }
        let flags = b[2];
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if b[3] != check_byte(len, flags) {
            return Err(Corruption::Check);
        }
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Corruption::Flags(flags));
        }
        Ok(Header { flags, len })
    }

    /// Whether a timestamp follows.
    pub fn timed(&self) -> bool {
        self.flags & FLAG_TIMESTAMP != 0
    }

    /// Header, timestamp and payload.
    pub fn framed_len(&self) -> usize {
        framed_len(self.len as usize, self.timed())
    }
}

/// The clock of framed records' timestamps: `CLOCK_MONOTONIC` in
/// nanoseconds (the vDSO's `clock_gettime`, no system call). One clock for
/// every CPU and every process of the machine, never going backwards, so the
/// timestamps of different buffers can be compared (see [`Merge`]).
#[inline]
pub fn now() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// A framed record reserved in a buffer ([`Channel::reserve_record`]):
/// fill the payload in place through `DerefMut<Target = [u8]>`, then
/// [`commit`](RecordReservation::commit) it or drop it (which commits too).
/// The header is already written.
#[derive(Debug)]
pub struct RecordReservation<'a> {
    slot: Reservation<'a>,
    skip: usize,
    timestamp: Option<u64>,
}

impl RecordReservation<'_> {
    /// Commits the record (as [`Reservation::commit`]).
    pub fn commit(self) {
        // Drop commits.
    }

    /// The CPU whose buffer holds the record.
    pub fn cpu(&self) -> usize {
        self.slot.cpu()
    }

    /// The record's timestamp, if it has one: taken when the slot was
    /// reserved.
    pub fn timestamp(&self) -> Option<u64> {
        self.timestamp
    }
}

impl std::ops::Deref for RecordReservation<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.slot[self.skip..]
    }
}

impl std::ops::DerefMut for RecordReservation<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.slot[self.skip..]
    }
}

/// Reserves a framed slot and writes its header (and timestamp).
#[inline(always)]
fn reserve_framed(
    chan: &Channel,
    payload_len: usize,
    timed: bool,
) -> Result<(Reservation<'_>, Option<u64>), WriteError> {
    let total = framed_len(payload_len, timed);
    // Counts a record too big for a sub-buffer (`dropped_toobig`, with its
    // framed length) or a full buffer, as `write` does.
    let mut slot = chan.reserve(total)?;
    // The reservation succeeded, so `total` fits in a sub-buffer (at most
    // 1 GiB) and the payload length in a u32.
    let len = payload_len as u32;
    if timed {
        // Taken once the slot is reserved: see "Framed records" in
        // docs/DESIGN.md for the order this gives within a buffer.
        let ts = now();
        let s = &mut slot[..HEADER_LEN + TIMESTAMP_LEN];
        s[..HEADER_LEN].copy_from_slice(&encode_header(len, FLAG_TIMESTAMP));
        s[HEADER_LEN..].copy_from_slice(&ts.to_le_bytes());
        Ok((slot, Some(ts)))
    } else {
        slot[..HEADER_LEN].copy_from_slice(&encode_header(len, 0));
        Ok((slot, None))
    }
}

impl Channel {
    /// Writes one framed record (header, then `payload`) into the buffer of
    /// the current CPU, in one reservation. An empty payload is a record
    /// too.
    ///
    /// # Errors
    /// As [`write`](Channel::write): [`WriteError::Full`],
    /// [`WriteError::TooBig`] (with the framed length, header included, as
    /// counted in `dropped_toobig`) or [`WriteError::Corrupt`]; the record
    /// is counted as dropped.
    #[inline]
    pub fn write_record(&self, payload: &[u8]) -> Result<(), WriteError> {
        // Checked before the cast: a payload of 4 GiB or more is too big
        // for any sub-buffer, and is refused and counted as such.
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        // One reservation and two copies, as `write` does: the header is
        // built in registers and copied in with the payload.
        self.write_with_head(payload, || encode_header(len, 0))
    }

    /// As [`write_record`](Channel::write_record), with a timestamp
    /// ([`now`]) taken once the slot is reserved.
    ///
    /// # Errors
    /// As [`write_record`](Channel::write_record).
    #[inline]
    pub fn write_record_timed(&self, payload: &[u8]) -> Result<(), WriteError> {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.write_with_head(payload, || {
            // Taken once the slot is reserved: see "Framed records" in
            // docs/DESIGN.md for the order this gives within a buffer.
            let mut h = [0u8; HEADER_LEN + TIMESTAMP_LEN];
            h[..HEADER_LEN].copy_from_slice(&encode_header(len, FLAG_TIMESTAMP));
            h[HEADER_LEN..].copy_from_slice(&now().to_le_bytes());
            h
        })
    }

    /// As [`write_record_timed`](Channel::write_record_timed), with the
    /// timestamp read from `clock` (once the slot is reserved) instead of
    /// [`now`]: for a writer with a cheaper clock that counts the same
    /// nanoseconds as [`now`] (say the TSC, scaled against
    /// `CLOCK_MONOTONIC`). [`Merge`] compares the timestamps of every
    /// buffer, so all the timed writers of a channel should use one clock.
    ///
    /// # Errors
    /// As [`write_record`](Channel::write_record).
    #[inline]
    pub fn write_record_timed_with(
        &self,
        payload: &[u8],
        clock: impl FnOnce() -> u64,
    ) -> Result<(), WriteError> {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.write_with_head(payload, || {
            let mut h = [0u8; HEADER_LEN + TIMESTAMP_LEN];
            h[..HEADER_LEN].copy_from_slice(&encode_header(len, FLAG_TIMESTAMP));
            h[HEADER_LEN..].copy_from_slice(&clock().to_le_bytes());
            h
        })
    }

    /// Reserves a framed record with a payload of `len` bytes, to be filled
    /// in place; the header is written. Readers see it once committed.
    ///
    /// # Errors
    /// As [`write_record`](Channel::write_record).
    #[inline]
    pub fn reserve_record(&self, len: usize) -> Result<RecordReservation<'_>, WriteError> {
        let (slot, timestamp) = reserve_framed(self, len, false)?;
        Ok(RecordReservation {
            slot,
            skip: HEADER_LEN,
            timestamp,
        })
    }

    /// As [`reserve_record`](Channel::reserve_record), with a timestamp
    /// taken once the slot is reserved.
    ///
    /// # Errors
    /// As [`write_record`](Channel::write_record).
    #[inline]
    pub fn reserve_record_timed(&self, len: usize) -> Result<RecordReservation<'_>, WriteError> {
        let (slot, timestamp) = reserve_framed(self, len, true)?;
        Ok(RecordReservation {
            slot,
            skip: HEADER_LEN + TIMESTAMP_LEN,
            timestamp,
        })
    }
}

/// Why bytes are not a valid record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The first two bytes are not [`MAGIC`].
    Magic,
    /// The check byte does not match the length and flags.
    Check,
    /// A flag bit this version does not know is set.
    Flags(u8),
    /// The payload length is larger than the decoder accepts (a sub-buffer).
    Length(u32),
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Corruption::Magic => write!(f, "no record header (bad magic)"),
            Corruption::Check => write!(f, "record header check byte does not match"),
            Corruption::Flags(x) => write!(f, "record header has unknown flags {x:#04x}"),
            Corruption::Length(n) => write!(f, "record length {n} is impossible"),
        }
    }
}

/// An error item of a record stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The bytes at `offset` (from the start of the stream) are not a
    /// record. The decoder skips forward to the next valid header; the
    /// bytes skipped are counted in [`Decoder::skipped_bytes`].
    #[error("corrupt record stream at byte {offset}: {reason}")]
    Corrupt {
        /// Stream offset of the first bad byte.
        offset: u64,
        /// What was wrong.
        reason: Corruption,
    },
    /// The stream ended inside a record (or inside a header): `have` of the
    /// `need` bytes it announced. The bytes are counted as skipped.
    #[error("record stream ends inside a record at byte {offset} ({have} of {need} bytes)")]
    Truncated {
        /// Stream offset of the record.
        offset: u64,
        /// Bytes there are.
        have: u64,
        /// Bytes the record needs (8 when the header itself is cut).
        need: u64,
    },
    /// Reading the source failed.
    #[error("reading the record stream failed")]
    Io(#[from] io::Error),
    /// Reading the relay file failed.
    #[error("reading the relay file failed")]
    Read(#[from] ReadError),
    /// Reading a channel's buffers failed.
    #[error("reading the channel failed")]
    Channel(#[from] crate::ChannelError),
}

/// A decoded record, borrowed from the decoder's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Stream offset of its header.
    pub offset: u64,
    /// Its timestamp, if it was written with one.
    pub timestamp: Option<u64>,
    /// The payload.
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> OwnedRecord {
        OwnedRecord {
            offset: self.offset,
            timestamp: self.timestamp,
            payload: self.payload.to_vec(),
        }
    }
}

/// A decoded record that owns its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    /// Stream offset of its header.
    pub offset: u64,
    /// Its timestamp, if it was written with one.
    pub timestamp: Option<u64>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// What one decoding step found, as positions (so that the borrow of the
/// buffer is made after the decoder's state is updated).
pub(crate) enum Step {
    Record {
        at: usize,
        offset: u64,
        timestamp: Option<u64>,
        len: usize,
    },
    Error(FrameError),
    NeedMore,
}

/// The push-style core decoder: feed it bytes of a record stream (in pieces
/// cut anywhere), take whole records out. Records are borrowed from its
/// buffer: a source can read straight into it ([`Decoder::spare`],
/// [`Decoder::filled`]), so a record is copied once, from the source into
/// the buffer, and the part of a record cut by a read waits there for the
/// rest.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream offset of `buf[start]`.
    pos: u64,
    max_payload: u32,
    /// Inside a run of bad bytes (already reported).
    skipping: bool,
    skipped: u64,
    records: u64,
    errors: u64,
    /// Bytes the next item needs in the buffer from `start`.
    want: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder accepting payloads up to [`DEFAULT_MAX_PAYLOAD`].
    pub fn new() -> Decoder {
        Decoder::with_max_payload(DEFAULT_MAX_PAYLOAD)
    }

    /// A decoder that refuses, as corrupt, a header announcing more than
    /// `max` payload bytes: for a relay buffer, a sub-buffer less its header
    /// reserve and the record header ([`max_payload_for`]).
    pub fn with_max_payload(max: u32) -> Decoder {
        Decoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            pos: 0,
            max_payload: max,
            skipping: false,
            skipped: 0,
            records: 0,
            errors: 0,
            want: HEADER_LEN,
        }
    }

    /// Copies `data` in.
    pub fn feed(&mut self, data: &[u8]) {
        self.spare(data.len())[..data.len()].copy_from_slice(data);
        self.filled(data.len());
    }

    /// Room for at least `min` more bytes (and toward what the record
    /// being assembled still needs), to read into; then call
    /// [`filled`](Self::filled).
    ///
    /// The room for a record cut short grows with the bytes of it that
    /// came (at least doubling what is buffered each time, from
    /// [`SPARE_STEP`]), never ahead of them: a header announcing a huge
    /// payload costs no memory until the payload's bytes arrive.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        let have = self.end - self.start;
        let still = self.want.saturating_sub(have);
        let need = min.max(still.min(have.max(SPARE_STEP)));
        if self.buf.len() - self.end < need {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < need {
                let size = (self.end + need).max(self.buf.len() * 2);
                self.buf.resize(size, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of [`spare`](Self::spare) as filled.
    ///
    /// # Panics
    /// If `n` is more than the spare room.
    pub fn filled(&mut self, n: usize) {
        assert!(n <= self.buf.len() - self.end, "filled past the spare room");
        self.end += n;
    }

    /// Bytes fed and not yet decoded (a record cut short waits here).
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Stream offset of the next byte to decode.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// Bytes skipped so far: corrupt runs, and a cut tail at [`finish`](Self::finish).
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    /// Records decoded so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Errors reported so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    #[inline]
    fn skip(&mut self, n: usize) {
        self.start += n;
        self.pos += n as u64;
        self.skipped += n as u64;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    #[inline]
    fn step(&mut self) -> Step {
        loop {
            let avail = &self.buf[self.start..self.end];
            if avail.len() < HEADER_LEN {
                if self.skipping {
                    // Bytes that can't start a header can go now.
                    let n = avail
                        .iter()
                        .position(|&b| b == MAGIC[0])
                        .unwrap_or(avail.len());
                    self.skip(n);
                }
                self.want = HEADER_LEN;
                return Step::NeedMore;
            }
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&avail[..HEADER_LEN]);
            let bad = match Header::parse(h) {
                Ok(h) if h.len > self.max_payload => Corruption::Length(h.len),
                Ok(h) => {
                    let total = h.framed_len();
                    if avail.len() < total {
                        self.want = total;
                        return Step::NeedMore;
                    }
                    let timestamp = h.timed().then(|| {
                        let mut t = [0u8; TIMESTAMP_LEN];
                        t.copy_from_slice(&avail[HEADER_LEN..HEADER_LEN + TIMESTAMP_LEN]);
                        u64::from_le_bytes(t)
                    });
                    let at = self.start + total - h.len as usize;
                    let offset = self.pos;
                    self.start += total;
                    self.pos += total as u64;
                    self.skipping = false;
                    self.records += 1;
                    self.want = HEADER_LEN;
                    return Step::Record {
                        at,
                        offset,
                        timestamp,
                        len: h.len as usize,
                    };
                }
                Err(c) => c,
            };
            // Not a record: skip to the next byte that could start one.
            let offset = self.pos;
            let n = 1 + avail[1..]
                .iter()
                .position(|&b| b == MAGIC[0])
                .unwrap_or(avail.len() - 1);
            let first = !self.skipping;
            self.skipping = true;
            self.skip(n);
            if first {
                self.errors += 1;
                return Step::Error(FrameError::Corrupt {
                    offset,
                    reason: bad,
                });
            }
        }
    }

    /// The next whole record fed, or an error item; `None` when it needs
    /// more bytes.
    #[inline]
    pub fn next_record(&mut self) -> Option<Result<Record<'_>, FrameError>> {
        match self.step() {
            Step::NeedMore => None,
            Step::Error(e) => Some(Err(e)),
            Step::Record {
                at,
                offset,
                timestamp,
                len,
            } => Some(Ok(Record {
                offset,
                timestamp,
                payload: &self.buf[at..at + len],
            })),
        }
    }

    /// The stream has ended: what is left (a record or header cut short) is
    /// skipped and, unless it is the tail of a corrupt run already reported,
    /// reported as [`FrameError::Truncated`]. Call after
    /// [`next_record`](Self::next_record) returned `None`.
    pub fn finish(&mut self) -> Option<FrameError> {
        let have = self.end - self.start;
        if have == 0 {
            return None;
        }
        let offset = self.pos;
        let need = self.want.max(HEADER_LEN) as u64;
        let reported = self.skipping;
        // Fewer than 8 bytes that don't start like a header are garbage,
        // not a header cut short.
        let prefix = have.min(MAGIC.len());
        let garbage = self.buf[self.start..self.start + prefix] != MAGIC[..prefix];
        self.skip(have);
        self.skipping = false;
        self.want = HEADER_LEN;
        if reported {
            return None;
        }
        self.errors += 1;
        Some(if garbage {
            FrameError::Corrupt {
                offset,
                reason: Corruption::Magic,
            }
        } else {
            FrameError::Truncated {
                offset,
                have: have as u64,
                need,
            }
        })
    }
}

/// The largest payload a framed record can have in a buffer of geometry
/// `g` (what a [`Decoder`] for it should accept).
pub fn max_payload_for(g: &crate::Geometry) -> u32 {
    let m = g.max_record().saturating_sub(HEADER_LEN as u64);
    m.min(u32::MAX as u64) as u32
}

/// Where a [`Records`] gets its bytes.
pub trait ByteSource {
    /// Reads some bytes into `buf`, waiting if the source is live and has
    /// none yet; `Ok(0)` means the stream has ended.
    ///
    /// # Errors
    /// The source's error.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, FrameError>;

    /// The largest payload this source can hold, if it knows.
    fn max_payload(&self) -> Option<u32> {
        None
    }
}

/// A [`ByteSource`] over any [`io::Read`] (a `cpuN.out` file, a pipe, a
/// slice): it ends at end of file.
#[derive(Debug)]
pub struct ReadSource<R>(pub R);

impl<R: io::Read> ByteSource for ReadSource<R> {
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, FrameError> {
        loop {
            match self.0.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A [`ByteSource`] over a live [`RelayFile`]: it reads what is committed,
/// and when nothing is, waits ([`RelayFile::poll`]) until something is or
/// the channel's end: closed, or the producer gone, and everything read.
#[derive(Debug)]
pub struct RelaySource {
    file: RelayFile,
    end: Option<Ready>,
}

impl RelaySource {
    /// Reads `file`.
    pub fn new(file: RelayFile) -> RelaySource {
        RelaySource { file, end: None }
    }

    /// How the stream ended: [`Ready::Closed`] or [`Ready::ProducerGone`]
    /// (then see [`RelayFile::abandoned`]); `None` while it goes on.
    pub fn end(&self) -> Option<Ready> {
        self.end
    }

    /// The relay file.
    pub fn file(&self) -> &RelayFile {
        &self.file
    }

    /// The relay file, to read its counters or take it back.
    pub fn into_file(self) -> RelayFile {
        self.file
    }
}

impl ByteSource for RelaySource {
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, FrameError> {
        if self.end.is_some() {
            return Ok(0);
        }
        loop {
            let n = self.file.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            match self.file.poll(None)? {
                Ready::Readable | Ready::Timeout => continue,
                end => {
                    // `poll` says the end only once everything is read.
                    self.end = Some(end);
                    return Ok(0);
                }
            }
        }
    }

    fn max_payload(&self) -> Option<u32> {
        Some(max_payload_for(&self.file.header().geometry))
    }
}

/// Bytes read from a source at a time.
const READ_CHUNK: usize = 64 << 10;

/// A stream of records from a [`ByteSource`]: a [`Decoder`] driven by
/// reads. [`next_record`](Records::next_record) lends each record from the
/// decoder's buffer; as an [`Iterator`] it yields owned copies. Errors are
/// items: after a corrupt run, decoding goes on; after an error of the
/// source, what it gave is decoded and the stream ends.
#[derive(Debug)]
pub struct Records<S> {
    source: S,
    dec: Decoder,
    ended: bool,
}

impl<R: io::Read> Records<ReadSource<R>> {
    /// The records of a byte stream, e.g. a `cpuN.out` file `relayfs
    /// record` wrote (a relay file's `read` stream, padding removed).
    pub fn from_reader(r: R) -> Self {
        Records::new(ReadSource(r))
    }
}

impl Records<RelaySource> {
    /// The records of a live relay file, until the channel is closed (or
    /// its producer is gone) and everything is read.
    pub fn live(file: RelayFile) -> Self {
        Records::new(RelaySource::new(file))
    }
}

impl<S: ByteSource> Records<S> {
    /// The records of `source`.
    pub fn new(source: S) -> Self {
        let dec = match source.max_payload() {
            Some(m) => Decoder::with_max_payload(m),
            None => Decoder::new(),
        };
        Records {
            source,
            dec,
            ended: false,
        }
    }

    /// The next record (borrowed) or error item; `None` at the end of the
    /// stream.
    pub fn next_record(&mut self) -> Option<Result<Record<'_>, FrameError>> {
        loop {
            if self.dec.buffered() >= HEADER_LEN {
                match self.dec.step() {
                    Step::NeedMore => {}
                    Step::Error(e) => return Some(Err(e)),
                    Step::Record {
                        at,
                        offset,
                        timestamp,
                        len,
                    } => {
                        return Some(Ok(Record {
                            offset,
                            timestamp,
                            payload: &self.dec.buf[at..at + len],
                        }))
                    }
                }
            }
            if self.ended {
                return self.dec.finish().map(Err);
            }
            let spare = self.dec.spare(READ_CHUNK);
            match self.source.read_some(spare) {
                Ok(0) => self.ended = true,
                Ok(n) => self.dec.filled(n),
                Err(e) => {
                    // A failed source is not read again (its error could
                    // repeat for ever): what it gave is decoded, then the
                    // stream ends.
                    self.ended = true;
                    return Some(Err(e));
                }
            }
        }
    }

    /// The decoder (counters: records, errors, skipped bytes).
    pub fn decoder(&self) -> &Decoder {
        &self.dec
    }

    /// The source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The source, taken back.
    pub fn into_source(self) -> S {
        self.source
    }
}

impl<S: ByteSource> Iterator for Records<S> {
    type Item = Result<OwnedRecord, FrameError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().map(|r| r.map(|r| r.to_owned()))
    }
}

/// One source's next record, in the merge's heap: ordered by timestamp,
/// then source, then the order within the source.
type HeapKey = Reverse<(u64, usize, u64)>;

/// A merge of several record sources (one per buffer) into one stream in
/// timestamp order: a binary heap over the sources' next records.
///
/// Each item is `(source index, record or error)`. The merge is in order
/// when every source is: it takes the smallest timestamp among the
/// sources' next records, so it must have the next record of every source
/// that has not ended (a live source makes it wait). A record without a
/// timestamp keeps its place in its source: it takes the timestamp of the
/// record before it in that source (0 at the start). Ties go to the lower
/// source index. Errors are passed on as they come. A source's own records
/// can be out of timestamp order (two writers on one CPU racing between
/// reservation and clock read, see docs/DESIGN.md "Framed records"); such
/// records come out in their source's order, and every record emitted with a
/// timestamp lower than the one before it is counted in
/// [`out_of_order`](Merge::out_of_order).
#[derive(Debug)]
pub struct Merge<I> {
    sources: Vec<I>,
    heads: Vec<Option<OwnedRecord>>,
    last_ts: Vec<u64>,
    seq: Vec<u64>,
    heap: BinaryHeap<HeapKey>,
    /// Sources whose next record is not in the heap yet (and that have not
    /// ended).
    need: Vec<usize>,
    last_out: Option<u64>,
    out_of_order: u64,
}

impl<I: Iterator<Item = Result<OwnedRecord, FrameError>>> Merge<I> {
    /// Merges `sources`; item `(i, ..)` comes from the `i`th.
    pub fn new(sources: impl IntoIterator<Item = I>) -> Self {
        let sources: Vec<I> = sources.into_iter().collect();
        let n = sources.len();
        Merge {
            heads: (0..n).map(|_| None).collect(),
            last_ts: vec![0; n],
            seq: vec![0; n],
            heap: BinaryHeap::with_capacity(n),
            need: (0..n).rev().collect(),
            sources,
            last_out: None,
            out_of_order: 0,
        }
    }

    /// Records emitted with a timestamp lower than that of a record emitted
    /// before them.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// The sources.
    pub fn sources(&self) -> &[I] {
        &self.sources
    }
}

impl<I: Iterator<Item = Result<OwnedRecord, FrameError>>> Iterator for Merge<I> {
    type Item = (usize, Result<OwnedRecord, FrameError>);

    fn next(&mut self) -> Option<Self::Item> {
        // Every source that has not ended has its next record in the heap
        // before the smallest is taken.
        while let Some(i) = self.need.pop() {
            match self.sources[i].next() {
                None => {}
                Some(Ok(r)) => {
                    let ts = r.timestamp.unwrap_or(self.last_ts[i]);
                    self.last_ts[i] = ts;
                    self.seq[i] += 1;
                    self.heap.push(Reverse((ts, i, self.seq[i])));
                    self.heads[i] = Some(r);
                }
                Some(Err(e)) => {
                    self.need.push(i);
                    return Some((i, Err(e)));
                }
            }
        }
        let Reverse((ts, i, _)) = self.heap.pop()?;
        let r = self.heads[i].take()?;
        match self.last_out {
            Some(last) if ts < last => self.out_of_order += 1,
            _ => self.last_out = Some(ts),
        }
        self.need.push(i);
        Some((i, Ok(r)))
    }
}

/// One [`Decoder`] per buffer of a channel, for the readers that read a whole
/// channel ([`ChannelRecords`], and the async reader's records): bytes of
/// buffer `i` go to decoder `i`, records come out with their buffer's index.
#[derive(Debug)]
pub(crate) struct DecoderSet {
    decoders: Vec<Decoder>,
    /// The decoder looked at first: the one that gave the last record, so a
    /// buffer's records come out together and every decoder is drained in
    /// turn.
    next: usize,
    /// The most one read of these files gives: their largest sub-buffer
    /// (within 4 KiB..4 MiB), the size of the caller's read buffer.
    chunk: usize,
}

impl DecoderSet {
    /// A decoder per file, each bounding payloads by its file's geometry.
    pub(crate) fn new<'a>(files: impl Iterator<Item = &'a RelayFile>) -> DecoderSet {
        let mut chunk = 0;
        let decoders = files
            .map(|f| {
                let g = &f.header().geometry;
                chunk = chunk.max(g.subbuf_size);
                Decoder::with_max_payload(max_payload_for(g))
            })
            .collect();
        DecoderSet {
            decoders,
            next: 0,
            chunk: chunk.clamp(4096, 4 << 20) as usize,
        }
    }

    /// A read buffer for these files: one sub-buffer, the most one read
    /// gives.
    pub(crate) fn read_buffer(&self) -> Vec<u8> {
        vec![0; self.chunk]
    }

    /// Bytes read from buffer `index`.
    pub(crate) fn feed(&mut self, index: usize, data: &[u8]) {
        self.decoders[index].feed(data);
    }

    /// Decodes the next whole record (or error item) any decoder holds:
    /// its buffer's index and where it lies, for [`take`](Self::take);
    /// `None` when every decoder needs more bytes. (Two calls, not one that
    /// returns the record, so that a caller's loop can feed the decoders
    /// again when this gives `None`.)
    pub(crate) fn pop(&mut self) -> Option<(usize, Step)> {
        let n = self.decoders.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.decoders[i].buffered() < HEADER_LEN {
                continue;
            }
            match self.decoders[i].step() {
                Step::NeedMore => {}
                step => {
                    self.next = i;
                    return Some((i, step));
                }
            }
        }
        None
    }

    /// The record or error `pop` found in decoder `index`.
    pub(crate) fn take(&self, index: usize, step: Step) -> Result<Record<'_>, FrameError> {
        match step {
            Step::Record {
                at,
                offset,
                timestamp,
                len,
            } => Ok(Record {
                offset,
                timestamp,
                payload: &self.decoders[index].buf[at..at + len],
            }),
            Step::Error(e) => Err(e),
            // `pop` never gives it.
            Step::NeedMore => unreachable!("pop gave no record"),
        }
    }

    /// At the end of the channel: the first decoder left holding part of a
    /// record reports it (then the next call the next one); `None` once all
    /// are empty.
    pub(crate) fn finish(&mut self) -> Option<(usize, FrameError)> {
        self.decoders
            .iter_mut()
            .enumerate()
            .find_map(|(i, d)| d.finish().map(|e| (i, e)))
    }

    /// Decoder `index` (its counts: records, skipped bytes, errors).
    pub(crate) fn get(&self, index: usize) -> Option<&Decoder> {
        self.decoders.get(index)
    }
}

/// Whole records from every buffer of a channel, as they arrive: the
/// framed-record reader of a [`Readers`](crate::Readers) set. Each buffer's
/// stream is decoded on its own (a record never spans buffers), so records
/// come out with the index of their buffer, in each buffer's order; across
/// buffers in arrival order (use [`Merge`] over one [`Records::live`] per
/// buffer for time order). It blocks in one `poll(2)` over the whole
/// channel while nothing is ready, and ends once every buffer's producer
/// closed (or died) and everything is read and decoded; a buffer's stream
/// cut inside a record (a writer killed mid-record) gives a
/// [`FrameError::Truncated`] item at the end.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use relayfs::frame::ChannelRecords;
/// let readers = relayfs::Readers::open("web", Some(std::time::Duration::from_secs(5)))?;
/// let mut records = ChannelRecords::new(readers);
/// while let Some((cpu, rec)) = records.next_record() {
///     match rec {
///         Ok(r) => println!("cpu{cpu}: {} bytes", r.payload.len()),
///         Err(e) => eprintln!("cpu{cpu}: {e}"),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ChannelRecords {
    readers: crate::Readers,
    set: DecoderSet,
    /// What `read_any` reads into: one sub-buffer, the most one read gives.
    scratch: Vec<u8>,
    /// Every buffer ended (or reading failed): only what the decoders hold
    /// is left.
    ended: bool,
}

impl ChannelRecords {
    /// The records of every buffer of `readers`.
    pub fn new(readers: crate::Readers) -> ChannelRecords {
        let set = DecoderSet::new(readers.iter());
        ChannelRecords {
            scratch: set.read_buffer(),
            readers,
            set,
            ended: false,
        }
    }

    /// The next record (borrowed) or error item, with the index of its
    /// buffer; `None` at the end of the channel. A failed read is reported
    /// once (with index 0 when no one buffer is to blame) and ends the
    /// stream after what was already read is decoded.
    pub fn next_record(&mut self) -> Option<(usize, Result<Record<'_>, FrameError>)> {
        loop {
            if let Some((i, step)) = self.set.pop() {
                return Some((i, self.set.take(i, step)));
            }
            if self.ended {
                return self.set.finish().map(|(i, e)| (i, Err(e)));
            }
            match self.readers.read_any(&mut self.scratch) {
                Ok(Some((i, len))) => self.set.feed(i, &self.scratch[..len]),
                Ok(None) => self.ended = true,
                Err(e) => {
                    self.ended = true;
                    return Some((0, Err(FrameError::Channel(e))));
                }
            }
        }
    }

    /// The readers (their counters, their ends).
    pub fn readers(&self) -> &crate::Readers {
        &self.readers
    }

    /// The decoder of buffer `index`: its counts of records, skipped bytes
    /// and errors.
    pub fn decoder(&self, index: usize) -> Option<&Decoder> {
        self.set.get(index)
    }

    /// The readers back.
    pub fn into_readers(self) -> crate::Readers {
        self.readers
    }
}

impl Iterator for ChannelRecords {
    type Item = (usize, Result<OwnedRecord, FrameError>);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record()
            .map(|(i, r)| (i, r.map(|r| r.to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(lens: &[usize]) -> (Vec<u8>, Vec<OwnedRecord>) {
        let mut s = Vec::new();
        let mut recs = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let timed = i % 2 == 1;
            let payload: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
            let offset = s.len() as u64;
            let flags = if timed { FLAG_TIMESTAMP } else { 0 };
            s.extend_from_slice(&encode_header(len as u32, flags));
            let timestamp = timed.then_some(1000 + i as u64);
            if let Some(t) = timestamp {
                s.extend_from_slice(&t.to_le_bytes());
            }
            s.extend_from_slice(&payload);
            recs.push(OwnedRecord {
                offset,
                timestamp,
                payload,
            });
        }
        (s, recs)
    }

    fn drain(d: &mut Decoder, out: &mut Vec<OwnedRecord>) {
        while let Some(r) = d.next_record() {
            out.push(r.expect("no corruption in a valid stream").to_owned());
        }
    }

    #[test]
    fn header_round_trips_and_each_field_is_checked() {
        for len in [0u32, 1, 255, 256, 65535, 1 << 20, DEFAULT_MAX_PAYLOAD] {
            for flags in [0, FLAG_TIMESTAMP] {
                let h = encode_header(len, flags);
                assert_eq!(h[..2], MAGIC);
                assert_eq!(Header::parse(h), Ok(Header { flags, len }));
                let mut bad = h;
                bad[0] ^= 1;
                assert_eq!(Header::parse(bad), Err(Corruption::Magic));
                let mut bad = h;
                bad[4] ^= 1;
                assert_eq!(Header::parse(bad), Err(Corruption::Check));
                // A well-formed header with a flag this version doesn't know.
                let unknown = flags | 0x80;
                let mut bad = h;
                bad[2] = unknown;
                bad[3] = check_byte(len, unknown);
                assert_eq!(Header::parse(bad), Err(Corruption::Flags(unknown)));
            }
        }
        // Zeros (padding, unwritten memory) are never a header.
        assert_eq!(Header::parse([0; 8]), Err(Corruption::Magic));
    }

    #[test]
    fn every_one_bit_change_of_a_header_is_detected() {
        let lens = (0..1u32 << 16)
            .step_by(7)
            .chain((16..31).map(|k| (1u32 << k) - 1))
            .chain([DEFAULT_MAX_PAYLOAD]);
        for len in lens {
            for flags in [0, FLAG_TIMESTAMP] {
                let h = encode_header(len, flags);
                for i in 0..HEADER_LEN {
                    for bit in 0..8 {
                        let mut b = h;
                        b[i] ^= 1 << bit;
                        assert!(Header::parse(b).is_err(), "len {len} byte {i} bit {bit}");
                    }
                }
            }
        }
    }

    #[test]
    fn pieces_of_every_size_decode_the_same() {
        let (s, want) = stream(&[0, 1, 5, 64, 3, 200, 0, 17]);
        for piece in 1..=s.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for c in s.chunks(piece) {
                d.feed(c);
                drain(&mut d, &mut got);
            }
            assert!(d.finish().is_none());
            assert_eq!(got, want, "pieces of {piece}");
            assert_eq!(d.records(), want.len() as u64);
            assert_eq!(d.skipped_bytes(), 0);
        }
    }

    #[test]
    fn a_cut_tail_is_reported_truncated_and_counted() {
        let (s, want) = stream(&[10, 20]);
        let cut = s.len() - 5;
        let mut d = Decoder::new();
        d.feed(&s[..cut]);
        let mut got = Vec::new();
        drain(&mut d, &mut got);
        assert_eq!(got, want[..1]);
        match d.finish() {
            Some(FrameError::Truncated { offset, have, need }) => {
                assert_eq!(offset, want[1].offset);
                assert_eq!(have, cut as u64 - offset);
                assert_eq!(need, s.len() as u64 - offset);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.offset(), cut as u64);
        assert_eq!(d.skipped_bytes(), cut as u64 - want[1].offset);
    }

    #[test]
    fn too_long_for_the_decoder_is_corrupt() {
        let mut d = Decoder::with_max_payload(100);
        d.feed(&encode_header(101, 0));
        d.feed(&[0; 101]);
        match d.next_record() {
            Some(Err(FrameError::Corrupt { offset: 0, reason })) => {
                assert_eq!(reason, Corruption::Length(101))
            }
            other => panic!("{other:?}"),
        }
        assert!(d.next_record().is_none());
        assert!(d.finish().is_none(), "the run was reported already");
        assert_eq!(d.skipped_bytes(), 8 + 101);
    }
}
