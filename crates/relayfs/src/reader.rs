//! The consumer's side: the relay file operations (`open`, `read`, `mmap`,
//! `sendfile`, `poll`, `close`) on a buffer file, from any process.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::buffer::{Avail, BufferStats, Mapped, Shared};
use crate::cursor::{self, Chunk, Cursor, Handoff, LostHandoff};
use crate::error::{FormatError, ReadError};
use crate::layout::{hdr, rdr, BufferHeader, LEFT_DIR, LEFT_FOR_READER, STATE_CLOSED};
use crate::notify::{Waiter, Wake};
use crate::shm::{self, ReaderMap};
use crate::sync::{fence, Ordering};

/// How often a sleeping reader checks that the producer is still alive.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(200);

/// What [`RelayFile::poll`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Data can be read (`POLLIN`).
    Readable,
    /// The timeout passed with nothing to read.
    Timeout,
    /// The channel was closed and everything is read (`POLLERR`/`POLLHUP`).
    Closed,
    /// The producer died without closing the channel, and every complete
    /// sub-buffer is read.
    ProducerGone,
}

/// A buffer seen from outside: see [`RelayFile::inspect`].
#[derive(Debug, Clone)]
pub struct BufferStatus {
    /// Header facts.
    pub header: BufferHeader,
    /// Counters.
    pub stats: BufferStats,
    /// `relay_close` was called.
    pub closed: bool,
    /// The producer process holds the buffer.
    pub producer_alive: bool,
    /// A reader holds the buffer.
    pub reader_attached: bool,
    /// Process id of the last reader that opened it (0: none yet).
    pub reader_pid: u64,
}

/// An open relay file: a reader of one channel buffer.
///
/// One reader per buffer at a time (a second `open` fails with
/// [`ReadError::Busy`]); the reader's position lives in the buffer file, so a
/// reader that is restarted resumes where the last one stopped.
///
/// ```no_run
/// use std::time::Duration;
/// let mut f = relayfs::RelayFile::open("/dev/shm/relayfs/demo/cpu0")?;
/// let mut buf = vec![0u8; 1 << 16];
/// loop {
///     match f.poll(Some(Duration::from_millis(500)))? {
///         relayfs::Ready::Readable => {
///             let n = f.read(&mut buf)?;
///             println!("{n} bytes");
///         }
///         relayfs::Ready::Timeout => continue,
///         relayfs::Ready::Closed | relayfs::Ready::ProducerGone => break,
///     }
/// }
/// # Ok::<(), relayfs::ReadError>(())
/// ```
pub struct RelayFile {
    path: PathBuf,
    file: File,
    /// Shared with the [`SubbufView`]s handed out, which keep it mapped.
    map: Arc<Mapped<ReaderMap>>,
    waiter: Option<Waiter>,
    header: BufferHeader,
    cur: Cursor,
    /// A hand-off its predecessor left in flight, counted lost at open.
    lost_handoff: Option<LostHandoff>,
    /// The sequence number of each view handed out, and whether it lives.
    views: Vec<(u64, Weak<()>)>,
    /// When `poll` last found the producer alive (its lock held), while the
    /// wakeup FIFO stayed open: a dying producer's FIFO hangs up at once,
    /// so the lock is looked at again only after `LIVENESS_INTERVAL` (for
    /// a FIFO another process holds open too, such as a forked child).
    alive_at: Option<Instant>,
}

impl std::fmt::Debug for RelayFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayFile")
            .field("path", &self.path)
            .field("cursor", &self.cur)
            .finish_non_exhaustive()
    }
}

impl RelayFile {
    /// Opens a relay file (`open(2)` on a relay file): validates its header,
    /// maps it and takes the reader's lock.
    ///
    /// # Errors
    /// [`ReadError::Format`] if it is not a valid buffer file,
    /// [`ReadError::Busy`] if another reader has it, [`ReadError::Io`]
    /// otherwise (e.g. permission denied).
    pub fn open(path: impl AsRef<Path>) -> Result<RelayFile, ReadError> {
        let path = path.as_ref().to_path_buf();
        let file = open_regular(&path, true)?;
        let (map, header) = ReaderMap::open(&file, &path, true)?;
        let map = Arc::new(Mapped::attach(map, &header));
        let s = &map.shared;
        // `relay_close` holds the reader lock for a moment while it counts
        // what no reader attached will read, and stores the state closed
        // before it lets go: then the lock is worth a few more tries.
        let mut tries = 0;
        while !shm::try_lock_byte(&file, shm::READER_LOCK_BYTE)
            .map_err(|e| ReadError::io("lock", &path, e))?
        {
            // SYNC POINT: Acquire pairs with relay_close's Release store of
            // STATE (made while it holds the lock).
            let closing = s.header_word(hdr::STATE).load(Ordering::Acquire) == STATE_CLOSED;
            if !closing || tries == 100 {
                return Err(ReadError::Busy(path));
            }
            tries += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        let waiter = Waiter::open(&crate::notify::wake_fifo_path(&path)).ok();
        // SYNC POINT: Relaxed: information for `stat`; it pairs with nothing.
        s.reader_word(rdr::READER_PID)
            .store(std::process::id() as u64, Ordering::Relaxed);
        let cur = Cursor::new(s);
        // A reader before us died between consuming and handing on.
        let lost_handoff = cursor::settle_handoff(s);
        Ok(RelayFile {
            path,
            file,
            map,
            waiter,
            header,
            cur,
            lost_handoff,
            views: Vec::new(),
            alive_at: None,
        })
    }

    /// Reads the producer pid of a buffer file's header without taking the
    /// reader's lock.
    ///
    /// # Errors
    /// If the file can't be read or is not a buffer file.
    pub fn peek_pid(path: &Path) -> Result<u64, ReadError> {
        Ok(Self::peek_header(path)?.producer_pid)
    }

    /// Reads and validates a buffer file's header without opening it for
    /// reading (for listings).
    ///
    /// # Errors
    /// If the file can't be read or is not a buffer file.
    pub fn peek_header(path: &Path) -> Result<BufferHeader, ReadError> {
        let file = open_regular(path, false)?;
        shm::read_header(&file, path)
    }

    /// Looks at a buffer without reading it or taking the reader's place:
    /// header, counters, and who holds it. Needs only read permission.
    ///
    /// # Errors
    /// As [`open`](Self::open), but never `Busy`.
    pub fn inspect(path: impl AsRef<Path>) -> Result<BufferStatus, ReadError> {
        let path = path.as_ref();
        let file = open_regular(path, false)?;
        let (map, header) = ReaderMap::open(&file, path, false)?;
        let map = Mapped::attach(map, &header);
        let s = &map.shared;
        let reader_attached = shm::byte_locked(&file, shm::READER_LOCK_BYTE)
            .map_err(|e| ReadError::io("lock", path, e))?;
        let mut stats = snapshot(s);
        // SYNC POINT: Acquire pairs with the Release store in relay_close.
        let closed = s.header_word(hdr::STATE).load(Ordering::Acquire) == STATE_CLOSED;
        let producer_alive = shm::byte_locked(&file, shm::PRODUCER_LOCK_BYTE)
            .map_err(|e| ReadError::io("lock", path, e))?;
        if !reader_attached {
            // Left by a reader that died handing them on: lost, as the next
            // reader will count them (`read_handoff`).
            if let Some((records, bytes)) = cursor::counted_in_flight(s) {
                stats.records_consumed = stats.records_consumed.saturating_sub(records);
                stats.bytes_consumed = stats.bytes_consumed.saturating_sub(bytes);
                stats.discarded_records += records;
            }
            // A sub-buffer a reader was killed holding: counted by the next
            // reader (see `Shared::drop_held`).
            if let Some(h) = s.held_pending() {
                stats.records_consumed += h.consumed;
                if h.discarded_subbuf {
                    stats.discarded_records += h.discarded;
                    stats.discarded_subbufs += 1;
                }
            }
            // What a reader read of a dead producer's tail: counted
            // consumed by the next reader, which finds the producer gone
            // (`cursor::count_dead_tail`), after a hand-off left in flight
            // in it is counted lost (`settle_handoff`).
            if !producer_alive && !closed {
                if let Some(t) = cursor::dead_tail(s) {
                    stats.records_consumed += t.consumed;
                    if let Some((records, bytes)) = t.in_flight {
                        stats.discarded_records += records;
                        stats.bytes_consumed = stats.bytes_consumed.saturating_sub(bytes);
                    }
                }
            }
        }
        Ok(BufferStatus {
            header,
            stats,
            closed,
            producer_alive,
            reader_attached,
            reader_pid: s.reader_word(rdr::READER_PID).load(Ordering::Relaxed),
        })
    }

    /// Whether a live producer holds the buffer file at `path`, and whether a
    /// reader does.
    ///
    /// # Errors
    /// If the file can't be opened, or is not a regular file.
    pub fn holders(path: &Path) -> io::Result<(bool, bool)> {
        let f = open_regular(path, false).map_err(|e| match e {
            ReadError::Io { source, .. } => source,
            e => io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        Ok((
            shm::byte_locked(&f, shm::PRODUCER_LOCK_BYTE)?,
            shm::byte_locked(&f, shm::READER_LOCK_BYTE)?,
        ))
    }
}

/// The counters of a buffer, the reader's read before the producer's: a
/// reader consumes only what was written, so `records_consumed` never
/// exceeds `records_written()` in it (nor `subbufs_consumed`
/// `subbufs_produced`, nor `bytes_consumed` the bytes written and pending),
/// where one pass reading them in field order can catch the producer's
/// before a completion and the reader's after it. Still a moment's view of
/// each side: with a writer and a reader active, written minus consumed is
/// at least what was waiting, counted a little late.
fn snapshot(s: &Shared) -> BufferStats {
    let reader = s.stats();
    // SYNC POINT: Acquire fence: the loads of the second pass stay after
    // those of the first. The producer's counts of a sub-buffer are stored
    // before its Release of the completion word, which the reader acquired
    // before counting it consumed; the reader's counters are Relaxed, so
    // this ordering is what the hardware gives (it holds on x86 and for
    // coherent single-word loads in practice), not one the model promises.
    fence(Ordering::Acquire);
    let mut st = s.stats();
    st.subbufs_consumed = reader.subbufs_consumed;
    st.records_consumed = reader.records_consumed;
    st.bytes_consumed = reader.bytes_consumed;
    st.discarded_records = reader.discarded_records;
    st.discarded_subbufs = reader.discarded_subbufs;
    st
}

/// Opens a buffer file without following a symbolic link (so that a reader,
/// root say, can't be pointed at another file through one), and refuses
/// anything but a regular file. `O_NONBLOCK` keeps a FIFO in its place
/// from blocking the open.
fn open_regular(path: &Path, write: bool) -> Result<File, ReadError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ReadError::NotRegular {
                path: path.to_path_buf(),
                kind: "a symbolic link",
            },
            _ => ReadError::io("open", path, e),
        })?;
    let t = file
        .metadata()
        .map_err(|e| ReadError::io("stat", path, e))?
        .file_type();
    if !t.is_file() {
        let kind = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(file)
}

impl RelayFile {
    fn shared(&self) -> &Shared {
        &self.map.shared
    }

    /// The buffer's header facts.
    pub fn header(&self) -> &BufferHeader {
        &self.header
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The buffer's counters.
    pub fn stats(&self) -> BufferStats {
        snapshot(self.shared())
    }

    /// Whether the producer called `relay_close`.
    pub fn is_closed(&self) -> bool {
        // SYNC POINT: Acquire pairs with the Release store in relay_close.
        self.shared()
            .header_word(hdr::STATE)
            .load(Ordering::Acquire)
            == STATE_CLOSED
    }

    /// Whether the producer process still holds the buffer.
    pub fn producer_alive(&self) -> bool {
        shm::byte_locked(&self.file, shm::PRODUCER_LOCK_BYTE).unwrap_or(false)
    }

    /// Fails if the file was truncated under us: touching the mapping past
    /// its end would fault (`SIGBUS`). Checked at every read, sendfile, poll
    /// and mapping call; a truncation racing the call itself can still fault,
    /// which only the file's owner can cause (see docs/DESIGN.md).
    fn check_size(&self) -> Result<(), ReadError> {
        let len = self
            .file
            .metadata()
            .map_err(|e| ReadError::io("stat", &self.path, e))?
            .len();
        let want = self.header.geometry.file_size;
        if len < want {
            return Err(ReadError::Format {
                path: self.path.clone(),
                source: FormatError::Truncated {
                    expected: want,
                    actual: len,
                },
            });
        }
        Ok(())
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>, ReadError> {
        let s = &self.map.shared;
        self.cur.next_chunk(s).map_err(|source| ReadError::Format {
            path: self.path.clone(),
            source,
        })
    }

    /// Bytes readable right now without waiting (`FIONREAD`-like; counts the
    /// current sub-buffer only).
    ///
    /// # Errors
    /// [`ReadError::Format`] if the shared state is corrupt.
    pub fn available(&mut self) -> Result<u64, ReadError> {
        Ok(self.next_chunk()?.map_or(0, |c| c.len()))
    }

    /// Consuming read (`read(2)` on a relay file): copies up to `buf.len()`
    /// bytes of committed data, padding removed, and consumes them. Returns 0
    /// when nothing is readable now (see [`poll`](Self::poll) and
    /// [`is_eof`](Self::is_eof)). Never returns a byte twice, nor a byte of a
    /// record not yet committed.
    ///
    /// In no-overwrite mode it also reads the sub-buffer being written, up
    /// to the point where every reservation is committed (as the kernel's
    /// read does). In overwrite mode it reads complete sub-buffers only,
    /// each copied and validated whole before any of it is returned.
    ///
    /// # Errors
    /// [`ReadError::Format`] if the shared state is corrupt.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        self.check_size()?;
        self.stop_before_views()?;
        let s = &self.map.shared;
        let r = self.cur.read(s, buf).map_err(|source| ReadError::Format {
            path: self.path.clone(),
            source,
        });
        self.cur.limit = None;
        r
    }

    /// Before a consuming read: stops the cursor before the oldest
    /// sub-buffer a live [`SubbufView`] shows (handing it back would let the
    /// producer rewrite the bytes under the view), and refuses the read if
    /// the cursor is on it already. The caller clears `cur.limit` after.
    fn stop_before_views(&mut self) -> Result<(), ReadError> {
        self.cur.limit = self.oldest_viewed();
        match self.cur.limit {
            Some(seq) if self.cur.ord() >= seq => {
                self.cur.limit = None;
                Err(ReadError::Viewed {
                    path: self.path.clone(),
                    seq,
                })
            }
            _ => Ok(()),
        }
    }

    /// A consuming read for a reader that hands the bytes on to someone
    /// else after consuming them (a filesystem's reply, a socket): as
    /// [`read`](Self::read), but at most one sub-buffer's readable run, and
    /// before consuming it marks the bytes (and their record count) in
    /// flight in the buffer's reader page. Call
    /// [`handoff_done`](Self::handoff_done) once they are handed on, or
    /// [`handoff_failed`](Self::handoff_failed) if handing them on failed.
    /// If the reader dies in between, the next one to open the buffer finds
    /// the mark and counts them lost ([`lost_handoff`](Self::lost_handoff)):
    /// their records move from `records_consumed` to `discarded_records`
    /// (so that `records_consumed + lost()` stays every record offered),
    /// their bytes off `bytes_consumed`.
    ///
    /// The record count is known when the read starts and ends where the
    /// records before it are known: the start or end of a sub-buffer, or the
    /// end of what was committed of the one being written, `buf` taking all
    /// that was ready (a reader asking for at least a sub-buffer). A read
    /// ending inside a record (a smaller `buf`) leaves it unknown
    /// ([`Handoff::records`] `None`): if such a hand-off is lost, only its
    /// bytes are counted. At most 2^30 - 1 bytes are moved at a time.
    ///
    /// # Errors
    /// [`ReadError::Format`] if the shared state is corrupt.
    pub fn read_handoff(&mut self, buf: &mut [u8]) -> Result<Handoff, ReadError> {
        self.check_size()?;
        self.stop_before_views()?;
        let s = &self.map.shared;
        let r = self
            .cur
            .read_handoff(s, buf)
            .map_err(|source| ReadError::Format {
                path: self.path.clone(),
                source,
            });
        self.cur.limit = None;
        r
    }

    /// As [`read_handoff`](Self::read_handoff) of at most `max` bytes, with
    /// no copy: the bytes are returned where they lie, in the buffer's
    /// mapping (in overwrite mode, in the reader's own validated copy of the
    /// sub-buffer, which `read` makes anyway), for the caller to hand on
    /// from there (a filesystem's reply). They are consumed and marked in
    /// flight before they are returned, as with `read_handoff`; a read that
    /// finishes a sub-buffer does not hand it back to the producer until
    /// [`handoff_done`](Self::handoff_done) (or
    /// [`handoff_failed`](Self::handoff_failed)), so no writer reuses the
    /// bytes while the caller holds them: call one of those two before
    /// anything else on this reader (a read or `poll` in between moves past
    /// the held sub-buffer with the mark still set). Returns 0 bytes and an
    /// empty slice when nothing is ready.
    ///
    /// # Errors
    /// As [`read_handoff`](Self::read_handoff).
    pub fn read_handoff_in_place(&mut self, max: usize) -> Result<(Handoff, &[u8]), ReadError> {
        self.check_size()?;
        self.stop_before_views()?;
        let s = &self.map.shared;
        let r = self
            .cur
            .read_handoff_in_place(s, max as u64)
            .map_err(|source| ReadError::Format {
                path: self.path.clone(),
                source,
            });
        self.cur.limit = None;
        let Some((h, chunk)) = r? else {
            return Ok((
                Handoff {
                    bytes: 0,
                    records: Some(0),
                },
                &[],
            ));
        };
        let n = h.bytes as u64;
        let bytes = match chunk {
            Chunk::Direct { slot, start, .. } => {
                let ptr = self.map.shared.slot_ptr(slot, start, n);
                // SAFETY: `ptr..ptr + n` is within the mapping (`slot_ptr`
                // checked the bounds), which `self.map` keeps mapped for as
                // long as the returned slice borrows `self`. The bytes are
                // committed data the cursor found readable: in a
                // no-overwrite buffer a writer reuses a sub-buffer only once
                // the reader handed it back (the position moved past it),
                // and this read left the position on it (`held`) until
                // `handoff_done`/`handoff_failed`, which take `&mut self`
                // and so come after the slice is gone; the bytes of a
                // sub-buffer being written that are committed are not
                // written again in it; in overwrite mode a `Direct` run is
                // only the tail of a dead producer, which writes nothing
                // more. So they don't change under the slice. (A hostile
                // writer of the file can change any byte, as for every
                // read of the mapping: wrong bytes, never an access out of
                // bounds; see the trust model in docs/DESIGN.md.)
                unsafe { std::slice::from_raw_parts(ptr, n as usize) }
            }
            Chunk::Bounce { start, .. } => &self.cur.bounce()[start as usize..(start + n) as usize],
        };
        Ok((h, bytes))
    }

    /// The bytes of the last [`read_handoff`](Self::read_handoff) (or
    /// [`read_handoff_in_place`](Self::read_handoff_in_place)) were handed
    /// on: clears their mark, then hands back the sub-buffer an in-place
    /// read finished.
    pub fn handoff_done(&mut self) {
        self.cur.handoff_done(&self.map.shared);
    }

    /// Handing on the bytes of the last [`read_handoff`](Self::read_handoff)
    /// failed: counts them lost now, as the next reader would had this one
    /// died. Returns what was counted (`None` if nothing was in flight).
    pub fn handoff_failed(&mut self) -> Option<LostHandoff> {
        // A `relay_reset` since zeroed the counters the mark speaks of:
        // then it is cleared, not counted.
        self.cur.check_epoch(&self.map.shared);
        let lost = cursor::settle_handoff(&self.map.shared);
        // A sub-buffer a hand-off in place held goes back now, its lost
        // records left out of its count (`settle_handoff` noted them).
        self.cur.release_held(&self.map.shared);
        lost
    }

    /// What this reader found, when it opened the buffer, of a hand-off its
    /// predecessor consumed and never handed on (and counted lost then).
    pub fn lost_handoff(&self) -> Option<LostHandoff> {
        self.lost_handoff
    }

    /// After [`Ready::ProducerGone`]: what had to be given up in the
    /// sub-buffer the producer was writing when it died, because a
    /// reservation in it was never committed and record boundaries can't be
    /// told apart: `(bytes, committed records)`, the records less those
    /// counted already (delivered before the reservation and counted
    /// consumed, or lost in a hand-off). `None` if nothing was.
    pub fn abandoned(&self) -> Option<(u64, u64)> {
        if self.producer_alive() || self.is_closed() {
            return None;
        }
        self.cur.abandoned(&self.map.shared).filter(|&(b, _)| b > 0)
    }

    /// Reads (and [`poll`](Self::poll)s for) complete sub-buffers only when
    /// `on`, leaving the one being written alone until it completes; off by
    /// default. A bulk recorder wants it on while the producer is busy: it
    /// then moves whole sub-buffers, one large write each, and never chases
    /// the producer's cache lines record by record. It turns it off to pick
    /// up the tail of a producer gone quiet (after a poll timeout) or ending.
    /// Once the producer is dead its partial tail is readable regardless.
    pub fn set_complete_only(&mut self, on: bool) {
        self.cur.complete_only = on;
    }

    /// Whether the reader is at the start of a sub-buffer (so that output
    /// split here never splits a record).
    pub fn at_subbuf_boundary(&self) -> bool {
        self.cur.at_boundary()
    }

    /// Moves up to `max` bytes to `out` (`sendfile(2)` from a relay file),
    /// padding removed, writing straight from the mapping (one copy, in the
    /// kernel) in no-overwrite mode. Consumes what was written and nothing
    /// more: on a write error nothing unwritten is consumed.
    ///
    /// # Errors
    /// [`ReadError::Io`] if writing fails (after consuming what was
    /// written), [`ReadError::Format`] if the shared state is corrupt.
    pub fn sendfile(&mut self, out: impl AsFd, max: u64) -> Result<u64, ReadError> {
        self.send(out.as_fd().as_raw_fd(), max, false)
    }

    /// As [`sendfile`](Self::sendfile), but stops at the end of the current
    /// sub-buffer (or of what is readable of it), so that the caller can
    /// switch output files between sub-buffers without splitting a record.
    ///
    /// # Errors
    /// As [`sendfile`](Self::sendfile).
    pub fn sendfile_subbuf(&mut self, out: impl AsFd) -> Result<u64, ReadError> {
        self.send(out.as_fd().as_raw_fd(), u64::MAX, true)
    }

    fn send(&mut self, fd: i32, max: u64, one_chunk: bool) -> Result<u64, ReadError> {
        self.check_size()?;
        self.stop_before_views()?;
        let r = self.send_chunks(fd, max, one_chunk);
        self.cur.limit = None;
        r
    }

    fn send_chunks(&mut self, fd: i32, max: u64, one_chunk: bool) -> Result<u64, ReadError> {
        let mut done = 0u64;
        let mut chunk_left = None::<u64>;
        while done < max && chunk_left != Some(0) {
            let Some(chunk) = self.next_chunk()? else {
                break;
            };
            let (ptr, len) = match chunk {
                Chunk::Direct { slot, start, end } => {
                    let len = (end - start).min(max - done);
                    (self.shared().slot_ptr(slot, start, len), len)
                }
                Chunk::Bounce { start, end } => {
                    let len = (end - start).min(max - done);
                    (
                        self.cur.bounce()[start as usize..(start + len) as usize].as_ptr(),
                        len,
                    )
                }
            };
            // SAFETY: `ptr..ptr+len` is within the mapping or the bounce
            // buffer (bounds checked by slot_ptr / above) and stays valid for
            // the call.
            let n = unsafe { libc::write(fd, ptr.cast(), len as usize) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if done > 0 {
                    break; // report what moved; the error comes back next call
                }
                return Err(ReadError::io("write", &self.path, e));
            }
            if n == 0 {
                break;
            }
            self.cur.consume(&self.map.shared, n as u64);
            done += n as u64;
            if one_chunk {
                chunk_left = Some(len - n as u64);
            }
        }
        Ok(done)
    }

    /// Whether the reader reached the end: the channel is closed (or its
    /// producer is gone) and nothing is left to read.
    ///
    /// # Errors
    /// [`ReadError::Format`] if the shared state is corrupt.
    pub fn is_eof(&mut self) -> Result<bool, ReadError> {
        // The end is looked at first, the data then: everything was flushed
        // before CLOSED was stored, and a dead producer writes nothing more,
        // so data seen missing after that is missing for good. (The other
        // way round, a producer that fills the buffer and closes between
        // the two looks would have its last sub-buffers taken for nothing.)
        let ended = self.is_closed() || !self.producer_alive();
        if ended && !self.is_closed() {
            // Its tail is readable, and counted once read (`poll`).
            self.cur.set_writers_gone();
        }
        let only = std::mem::replace(&mut self.cur.complete_only, false);
        let more = self.next_chunk();
        self.cur.complete_only = only;
        if more?.is_some() {
            return Ok(false);
        }
        Ok(ended)
    }

    /// Waits until data is readable, the channel ends, or `timeout` passes
    /// (`poll(2)` on a relay file; `None` waits forever). Readiness comes at
    /// sub-buffer boundaries (when a sub-buffer completes); a partly filled
    /// sub-buffer is readable in no-overwrite mode but does not wake a
    /// sleeping reader, so live readers use a timeout (or the producer a
    /// flush interval).
    ///
    /// # Errors
    /// [`ReadError::Io`] if `poll` fails, [`ReadError::Format`] if the
    /// shared state is corrupt.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<Ready, ReadError> {
        self.wait_until(timeout, |f| Ok(f.next_chunk()?.is_some()))
    }

    /// Whether something waits at the mapping reader's position: a complete
    /// sub-buffer, or a dead producer's tail not read yet.
    fn complete_ready(&mut self) -> Result<bool, ReadError> {
        let gone = self.cur.writers_gone();
        self.shared()
            .map_waiting(gone)
            .map_err(|source| ReadError::Format {
                path: self.path.clone(),
                source,
            })
    }

    /// The waiting loop of [`poll`](Self::poll) and [`Mapping::poll`], with
    /// `ready` saying whether there is something for the caller.
    fn wait_until(
        &mut self,
        timeout: Option<Duration>,
        mut ready: impl FnMut(&mut Self) -> Result<bool, ReadError>,
    ) -> Result<Ready, ReadError> {
        // A timeout too long to represent is no limit.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            self.check_size()?;
            if ready(self)? {
                return Ok(Ready::Readable);
            }
            if self.is_closed() {
                // Everything was flushed before CLOSED was stored.
                return Ok(if ready(self)? {
                    Ready::Readable
                } else {
                    Ready::Closed
                });
            }
            let now = Instant::now();
            let look = self.waiter.is_none()
                || self
                    .alive_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= LIVENESS_INTERVAL);
            if look {
                if !self.producer_alive() {
                    self.cur.set_writers_gone();
                    // What was read of its tail before it died, by this
                    // reader or one before, is counted now (a mapping
                    // reader's `ready` never gets to it again).
                    cursor::count_dead_tail(self.shared());
                    return Ok(if ready(self)? {
                        Ready::Readable
                    } else {
                        Ready::ProducerGone
                    });
                }
                self.alive_at = Some(now);
            }
            let s = self.shared();
            // SYNC POINT: Relaxed stores of WAITING, here and below: the
            // SeqCst fences do the ordering (Dekker with the completer,
            // buffer::complete: we store WAITING, fence, then look for data).
            s.reader_word(rdr::WAITING).store(1, Ordering::Relaxed);
            // SYNC POINT: Dekker with the completer (buffer::complete): we
            // store WAITING, fence, then look for data.
            fence(Ordering::SeqCst);
            if ready(self)? {
                self.shared()
                    .reader_word(rdr::WAITING)
                    .store(0, Ordering::Relaxed);
                return Ok(Ready::Readable);
            }
            let now = Instant::now();
            let left = match deadline {
                Some(d) if d <= now => {
                    // SYNC POINT: Relaxed, as the store of WAITING above.
                    self.shared()
                        .reader_word(rdr::WAITING)
                        .store(0, Ordering::Relaxed);
                    return Ok(Ready::Timeout);
                }
                Some(d) => (d - now).min(LIVENESS_INTERVAL),
                None => LIVENESS_INTERVAL,
            };
            let woke = match &self.waiter {
                Some(w) => w
                    .wait(Some(left))
                    .map_err(|e| ReadError::io("poll", &self.path, e))?,
                None => {
                    std::thread::sleep(left.min(Duration::from_millis(10)));
                    Wake::Timeout
                }
            };
            // SYNC POINT: Relaxed, as the store of WAITING above.
            self.shared()
                .reader_word(rdr::WAITING)
                .store(0, Ordering::Relaxed);
            if woke == Wake::Hangup {
                // Producer closed or died: the next pass tells which. Avoid
                // spinning on a FIFO that stays hung up.
                self.waiter = None;
            }
        }
    }

    /// The wakeup file descriptor, for `epoll`/mio/tokio: it becomes readable
    /// when a sub-buffer completes while [`prepare_wait`](Self::prepare_wait)
    /// is in effect, and reports `POLLHUP` when the producer is gone.
    pub fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.waiter.as_ref().map(|w| w.as_fd())
    }

    /// Asks for a wakeup on [`wake_fd`](Self::wake_fd) at the next completed
    /// sub-buffer, for callers running their own event loop. Returns `true` if
    /// data is readable already (then don't sleep).
    ///
    /// # Errors
    /// [`ReadError::Format`] if the shared state is corrupt.
    pub fn prepare_wait(&mut self) -> Result<bool, ReadError> {
        if let Some(w) = &self.waiter {
            w.drain();
        }
        // SYNC POINT: Relaxed, as in `poll`: the fence below orders it.
        self.shared()
            .reader_word(rdr::WAITING)
            .store(1, Ordering::Relaxed);
        // SYNC POINT: as in `poll`.
        fence(Ordering::SeqCst);
        Ok(self.next_chunk()?.is_some())
    }

    /// Maps the whole buffer for reading in place (`mmap(2)` on a relay
    /// file). The producer's `buf_mapped` callback hears of it.
    pub fn map(&mut self) -> Mapping<'_> {
        let s = self.shared();
        // SYNC POINT: Relaxed: counts for the producer's `buf_mapped`
        // callback (`check_map_events`); they publish nothing else.
        s.reader_word(rdr::MAPPED).fetch_add(1, Ordering::Relaxed);
        s.reader_word(rdr::MAP_EVENTS)
            .fetch_add(1, Ordering::Relaxed);
        Mapping {
            file: self,
            checked: Cell::new(None),
        }
    }
}

/// A read-only view of a whole buffer (`n_subbufs × subbuf_size` bytes), as
/// an `mmap` of a relay file gives, with what a reader needs to use it: which
/// sub-buffer is next and ready, its padding, and
/// [`consume`](Mapping::consume) (or
/// [`subbufs_consumed`](Mapping::subbufs_consumed)) to hand it back.
///
/// The protocol, in both modes: [`ready`](Mapping::ready) claims the next
/// complete sub-buffer for the reader; read it from the mapping; then
/// [`consume`](Mapping::consume) it, which says whether what was read is
/// good (overwrite mode: a writer may have reused the sub-buffer meanwhile)
/// and counts its records as consumed if so, as discarded if not. Each
/// record is counted once, as `read` counts it: consumed, discarded, or
/// overwritten (by the writer, for sub-buffers lapped before the reader
/// claimed them).
///
/// ```no_run
/// let mut f = relayfs::RelayFile::open("/dev/shm/relayfs/demo/cpu0")?;
/// let mut m = f.map();
/// while let Some(sb) = m.ready()? {
///     let data = m.copy_subbuf(&sb);
///     if m.consume(&sb)? {
///         println!("{} records in {} bytes", sb.records, data.len());
///     } // else: overwritten while copied, counted as discarded
/// }
/// # Ok::<(), relayfs::ReadError>(())
/// ```
#[derive(Debug)]
pub struct Mapping<'a> {
    file: &'a mut RelayFile,
    /// What [`still_valid`](Mapping::still_valid) found for the held
    /// sub-buffer: `(ordinal, good)`, false once any check failed.
    checked: Cell<Option<(u64, bool)>>,
}

/// A sub-buffer ready in the mapping: complete, or the partly written one a
/// dead producer left (see [`Mapping::ready`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadySubbuf {
    /// Its ordinal (sub-buffers produced before it).
    pub ordinal: u64,
    /// Its index in the buffer.
    pub index: u64,
    /// Data bytes (`subbuf_size - padding`).
    pub len: u64,
    /// Padding at its end.
    pub padding: u64,
    /// Records in it.
    pub records: u64,
}

impl Mapping<'_> {
    /// Waits until a complete sub-buffer is ready, the channel ends, or
    /// `timeout` passes: the kernel's `poll` on a mapped relay file, which
    /// wakes at sub-buffer boundaries only. A reader that consumes whole
    /// sub-buffers this way touches the producer's cache lines once per
    /// sub-buffer rather than chasing every record. Once it finds the
    /// producer dead, the sub-buffer it was writing counts as ready too (as
    /// far as every reservation in it is committed: nothing will complete
    /// it), and `ready` returns it; [`Ready::ProducerGone`] comes after.
    ///
    /// # Errors
    /// As [`RelayFile::poll`].
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<Ready, ReadError> {
        self.file.wait_until(timeout, |f| f.complete_ready())
    }

    /// The next complete sub-buffer the reader has not consumed, if any,
    /// claimed for the reader: until it is consumed, a writer that
    /// overwrites it (overwrite mode) leaves it to the reader to count.
    /// Asked again before consuming, it returns the same sub-buffer (or, if
    /// that was overwritten meanwhile, counts it as discarded and moves on).
    /// Sub-buffers overwritten before the reader got to them are skipped and
    /// counted by their writers. After [`poll`](Self::poll) found the
    /// producer dead, the partly written sub-buffer it left is returned too
    /// (`len` up to the last committed record; `records` committed in it,
    /// counted consumed by [`consume`](Self::consume), as `read` counts
    /// them: they stay in `records_pending` too, as nothing completes the
    /// sub-buffer), unless `read` already took some of it.
    ///
    /// # Errors
    /// [`ReadError::Format`] if the shared state is corrupt.
    pub fn ready(&mut self) -> Result<Option<ReadySubbuf>, ReadError> {
        let f = &mut *self.file;
        f.check_size()?;
        f.cur.check_epoch(&f.map.shared);
        let g = f.header.geometry;
        let s = &f.map.shared;
        let got = s
            .map_ready(f.cur.writers_gone())
            .map_err(|source| ReadError::Format {
                path: f.path.clone(),
                source,
            })?;
        let Some((ord, end, records)) = got else {
            return Ok(None);
        };
        if self.checked.get().is_some_and(|c| c.0 != ord) {
            self.checked.set(None);
        }
        Ok(Some(ReadySubbuf {
            ordinal: ord,
            index: ord % g.n_subbufs,
            len: end,
            padding: g.subbuf_size - end,
            records,
        }))
    }

    /// Copies the data of a ready sub-buffer. Then
    /// [`consume`](Self::consume) it, which says whether the copy is good.
    pub fn copy_subbuf(&self, sb: &ReadySubbuf) -> Vec<u8> {
        let mut v = vec![0u8; sb.len.min(self.file.header.geometry.subbuf_size) as usize];
        self.file.shared().copy_out(sb.index, 0, &mut v);
        v
    }

    /// Raw pointer to the start of the whole data area (`n_subbufs ×
    /// subbuf_size` bytes), as `mmap` returns it. Reading it is sound only
    /// for sub-buffers reported by [`ready`](Self::ready) and not yet
    /// consumed.
    pub fn as_ptr(&self) -> *const u8 {
        self.file.shared().slot_ptr(0, 0, 0)
    }

    /// Length of the data area.
    pub fn len(&self) -> u64 {
        self.file.header.geometry.data_len()
    }

    /// Always false: a buffer has at least one sub-buffer.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Overwrite mode: whether what was read of a ready sub-buffer before
    /// this call is good (the sub-buffer was not reused meanwhile); if not,
    /// discard it. Always true in no-overwrite mode. For the sub-buffer
    /// [`ready`](Self::ready) returned, the answer is remembered:
    /// [`subbufs_consumed`](Self::subbufs_consumed) then counts it as
    /// delivered or discarded accordingly.
    pub fn still_valid(&self, sb: &ReadySubbuf) -> bool {
        let s = self.file.shared();
        let good = s.still_valid(sb.ordinal);
        if s.holds(sb.ordinal) {
            let before = self.checked.get().filter(|c| c.0 == sb.ordinal);
            let good = before.map_or(good, |c| c.1 && good);
            self.checked.set(Some((sb.ordinal, good)));
        }
        good
    }

    /// Consumes the sub-buffer [`ready`](Self::ready) returned, after the
    /// reader read it from the mapping: returns whether what it read is good
    /// (overwrite mode: the sub-buffer was not reused while it was read;
    /// always true in no-overwrite mode). Good, its records count as
    /// consumed; torn, as discarded, and the reader must drop what it read.
    /// Call it right after reading: the check covers what was read before it.
    ///
    /// # Errors
    /// [`ReadError::NotReady`] if `sb` is not the sub-buffer `ready` last
    /// returned, or it was consumed already (nothing is consumed then).
    pub fn consume(&mut self, sb: &ReadySubbuf) -> Result<bool, ReadError> {
        let f = &mut *self.file;
        if let Some(seq) = f.oldest_viewed().filter(|&v| v <= sb.ordinal) {
            return Err(ReadError::Viewed {
                path: f.path.clone(),
                seq,
            });
        }
        let from = f.consumed_seq();
        let good = f.map.shared.consume_held(sb.ordinal, None);
        cursor::settle_sub_records(&f.map.shared, from);
        self.checked.set(None);
        good.ok_or_else(|| ReadError::NotReady {
            path: f.path.clone(),
            ordinal: sb.ordinal,
        })
    }

    /// Hands `n` sub-buffers back to the producer (`relay_subbufs_consumed`)
    /// and returns how many were.
    ///
    /// The sub-buffer [`ready`](Self::ready) returned is consumed as
    /// [`consume`](Self::consume) does, except that if
    /// [`still_valid`](Self::still_valid) was asked about it, its answer
    /// decides whether the records count as consumed or discarded. In
    /// no-overwrite mode, further complete sub-buffers are consumed by
    /// position, as the kernel does. In overwrite mode it consumes only the
    /// sub-buffer `ready` returned (a reader can't have read one it was
    /// never given, and a torn one must not count as delivered).
    ///
    /// # Errors
    /// [`ReadError::Format`] if the shared state is corrupt.
    pub fn subbufs_consumed(&mut self, n: u64) -> Result<u64, ReadError> {
        let f = &mut *self.file;
        let from = f.consumed_seq();
        if let Some(seq) = f
            .oldest_viewed()
            .filter(|&v| n > 0 && v < from.saturating_add(n))
        {
            return Err(ReadError::Viewed {
                path: f.path.clone(),
                seq,
            });
        }
        let s = &f.map.shared;
        let done = s
            .subbufs_consumed(n, s.is_overwrite(), self.checked.get())
            .map_err(|source| ReadError::Format {
                path: f.path.clone(),
                source,
            })?;
        cursor::settle_sub_records(s, from);
        self.checked.set(None);
        Ok(done)
    }
}

/// A complete sub-buffer copied out ahead of the reader's position by
/// [`RelayFile::peek_subbuf`], not consumed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeekedSubbuf {
    /// Its sequence number in the buffer: sub-buffers produced before it
    /// (monotonic for the life of the buffer, and the same for every reader,
    /// including one restarted).
    pub seq: u64,
    /// Its data, padding removed: whole records only. If `read` already
    /// took the start of it, that start is left out (see `offset`).
    pub data: Vec<u8>,
    /// Bytes of it consumed before the look-ahead started (by `read` or
    /// `sendfile` of an earlier reader); `data` starts there.
    pub offset: u64,
    /// Records in the sub-buffer (the whole of it).
    pub records: u64,
    /// The producer died while writing it: this is its committed part, and
    /// nothing more will come in this buffer.
    pub partial: bool,
}

/// Where a complete sub-buffer's data lies in the mapping.
struct Located {
    src: *const u8,
    len: usize,
    offset: u64,
    records: u64,
    partial: bool,
}

/// A complete sub-buffer's data in place in the buffer's mapping, not
/// copied and not consumed ([`RelayFile::peek_subbuf_view`]): the fields of
/// [`PeekedSubbuf`], and the data as `AsRef<[u8]>` (a `bytes::Bytes` can be
/// made of it with `Bytes::from_owner`). It keeps the mapping alive, and
/// the reader does not consume the sub-buffer while the view lives.
pub struct SubbufView {
    /// Keeps the mapping `src` points into.
    _map: Arc<Mapped<ReaderMap>>,
    src: *const u8,
    len: usize,
    /// Its liveness, watched by the reader (`RelayFile::views`).
    _live: Arc<()>,
    /// As [`PeekedSubbuf::seq`].
    pub seq: u64,
    /// As [`PeekedSubbuf::offset`].
    pub offset: u64,
    /// As [`PeekedSubbuf::records`].
    pub records: u64,
    /// As [`PeekedSubbuf::partial`].
    pub partial: bool,
}

// SAFETY: `src` points into `_map`'s read-only mapping, which the view owns
// a share of (`Mapped` is `Send + Sync`); the view only reads through it.
unsafe impl Send for SubbufView {}
// SAFETY: as for `Send`: shared references only read the mapping.
unsafe impl Sync for SubbufView {}

impl AsRef<[u8]> for SubbufView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `src..src + len` is within the mapping (`slot_ptr` checked
        // the bounds when the view was made), which `self._map` keeps mapped
        // for as long as `self` lives. The bytes are a complete sub-buffer
        // in a no-overwrite buffer (`locate` refuses overwrite mode) that
        // the reader does not consume while this view lives
        // (`consume_through` and the consuming reads stop before
        // `oldest_viewed`; another reader can't open the buffer while the
        // mapping holds the lock's open file description), so no writer
        // reuses them: they don't change under the slice. (A hostile writer
        // of the file can change any byte of it, as for every read of the
        // mapping: wrong bytes, never an access out of bounds; see the trust
        // model in docs/DESIGN.md.)
        unsafe { std::slice::from_raw_parts(self.src, self.len) }
    }
}

impl std::fmt::Debug for SubbufView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubbufView")
            .field("seq", &self.seq)
            .field("len", &self.len)
            .field("offset", &self.offset)
            .field("records", &self.records)
            .field("partial", &self.partial)
            .finish()
    }
}

impl RelayFile {
    /// The sequence number of the next sub-buffer to consume: the reader's
    /// position, kept in the buffer file, so that a reader closed (or
    /// killed) and opened again resumes here.
    pub fn consumed_seq(&self) -> u64 {
        // SYNC POINT: Acquire pairs with the Release store of CONSUMED by
        // the reader before us (`set_position`), as `Cursor::load`.
        self.shared()
            .reader_word(rdr::CONSUMED)
            .load(Ordering::Acquire)
    }

    /// Reads ahead without consuming: copies the complete sub-buffer `seq`
    /// (at or after [`consumed_seq`](Self::consumed_seq)) out, padding
    /// removed, or returns `None` if it is not complete yet. Nothing is
    /// consumed: the producer can't reuse the sub-buffer until
    /// [`consume_through`](Self::consume_through) hands it back, so a
    /// reader that must keep data until someone else acknowledges it (a
    /// network broker, say) copies sub-buffers out here, sends them, and
    /// consumes them once they are safe. Records the producer can't place
    /// meanwhile are dropped and counted (`dropped_full`), as with any slow
    /// reader. Once the producer is dead, the sub-buffer it was writing is
    /// returned too, as far as it is committed (`partial`).
    ///
    /// No-overwrite buffers only: in overwrite mode a writer may reuse any
    /// sub-buffer the reader has not claimed.
    ///
    /// # Errors
    /// [`ReadError::Overwrite`] for an overwrite-mode buffer,
    /// [`ReadError::NotReady`] if `seq` is consumed already,
    /// [`ReadError::Format`] if the shared state is corrupt.
    pub fn peek_subbuf(&mut self, seq: u64) -> Result<Option<PeekedSubbuf>, ReadError> {
        let mut p = PeekedSubbuf::default();
        Ok(self.peek_subbuf_into(seq, &mut p)?.then_some(p))
    }

    /// As [`peek_subbuf`](Self::peek_subbuf), into `out`, reusing the
    /// allocation of its `data` (a reader that ships megabyte sub-buffers
    /// one after the other then doesn't map, fault in and unmap fresh
    /// memory for each). Returns whether the sub-buffer was there; `out`
    /// is left as it was if not.
    ///
    /// # Errors
    /// As [`peek_subbuf`](Self::peek_subbuf).
    pub fn peek_subbuf_into(
        &mut self,
        seq: u64,
        out: &mut PeekedSubbuf,
    ) -> Result<bool, ReadError> {
        let Some(at) = self.locate(seq)? else {
            return Ok(false);
        };
        out.data.clear();
        out.data.reserve(at.len);
        // SAFETY: `at.src..at.src + at.len` is within the mapping
        // (`slot_ptr` checked the bounds) and is a complete sub-buffer not
        // consumed yet, which no writer touches in no-overwrite mode;
        // `out.data` has room for `len` bytes, all initialized by the copy
        // before `set_len`. (No zeroing first: at megabytes a sub-buffer, it
        // costs as much as the copy.)
        unsafe {
            std::ptr::copy_nonoverlapping(at.src, out.data.as_mut_ptr(), at.len);
            out.data.set_len(at.len);
        }
        out.seq = seq;
        out.offset = at.offset;
        out.records = at.records;
        out.partial = at.partial;
        Ok(true)
    }

    /// As [`peek_subbuf`](Self::peek_subbuf), without the copy: a view of
    /// the sub-buffer's data where it lies in the buffer's mapping (which
    /// the view keeps mapped, so it may outlive `self`), for a reader that
    /// hands the bytes to the kernel (a socket write) and wants no copy of
    /// its own. As long as a view of a sub-buffer lives,
    /// [`consume_through`](Self::consume_through) does not hand it (or
    /// anything after it) back to the producer, and in no-overwrite mode no
    /// writer touches a sub-buffer not handed back: its bytes stay as they
    /// were peeked. The other consuming calls (`read`, `read_handoff`,
    /// `sendfile`, the mapping reader's `consume`) stop before it as well,
    /// with [`ReadError::Viewed`] once they reach it. A view keeps the
    /// reader lock with the mapping: no other reader opens the buffer
    /// while one lives.
    ///
    /// # Errors
    /// As [`peek_subbuf`](Self::peek_subbuf).
    pub fn peek_subbuf_view(&mut self, seq: u64) -> Result<Option<SubbufView>, ReadError> {
        let Some(at) = self.locate(seq)? else {
            return Ok(None);
        };
        let live = Arc::new(());
        self.views.retain(|(_, w)| w.strong_count() > 0);
        self.views.push((seq, Arc::downgrade(&live)));
        Ok(Some(SubbufView {
            _map: self.map.clone(),
            src: at.src,
            len: at.len,
            _live: live,
            seq,
            offset: at.offset,
            records: at.records,
            partial: at.partial,
        }))
    }

    /// The oldest sub-buffer a live [`SubbufView`] shows, if any:
    /// [`consume_through`](Self::consume_through) stops before it.
    pub fn oldest_viewed(&mut self) -> Option<u64> {
        self.views.retain(|(_, w)| w.strong_count() > 0);
        self.views.iter().map(|&(seq, _)| seq).min()
    }

    /// Where the complete sub-buffer `seq` (at or after the reader's
    /// position) lies in the mapping, or `None` if it is not complete yet.
    fn locate(&mut self, seq: u64) -> Result<Option<Located>, ReadError> {
        self.check_size()?;
        self.cur.check_epoch(&self.map.shared);
        let s = &self.map.shared;
        if s.is_overwrite() {
            return Err(ReadError::Overwrite(self.path.clone()));
        }
        let consumed = self.consumed_seq();
        if seq < consumed {
            return Err(ReadError::NotReady {
                path: self.path.clone(),
                ordinal: seq,
            });
        }
        let g = self.header.geometry;
        let s = &self.map.shared;
        if seq > g.pos_ordinal(s.head()) {
            return Ok(None);
        }
        // SYNC POINT: Relaxed: the reader's own word, written before the
        // Release store of CONSUMED acquired above (as in `Cursor::load`).
        let read_pos = if seq == consumed {
            s.reader_word(rdr::READ_POS).load(Ordering::Relaxed)
        } else {
            0
        };
        let fmt = |source| ReadError::Format {
            path: self.path.clone(),
            source,
        };
        let (end, records, partial) = match s.available(seq, false).map_err(fmt)? {
            Avail::Complete { end, records } => (end, records, false),
            Avail::Partial { .. } | Avail::Nothing | Avail::Stuck { .. } => {
                if self.is_closed() || self.producer_alive() {
                    return Ok(None);
                }
                // A dead producer's tail: nothing will complete it.
                match s.available(seq, true).map_err(fmt)? {
                    Avail::Partial { end, records } => (end, records, true),
                    _ => return Ok(None),
                }
            }
            Avail::Lapped { .. } => {
                return Err(fmt(FormatError::Corrupt(
                    "a sub-buffer not consumed was reused in no-overwrite mode",
                )))
            }
        };
        if read_pos > end || (partial && read_pos == end) {
            return Ok(None);
        }
        let len = end - read_pos;
        Ok(Some(Located {
            src: s.slot_ptr(seq % g.n_subbufs, read_pos, len),
            len: len as usize,
            offset: read_pos,
            records,
            partial,
        }))
    }

    /// Consumes every sub-buffer up to and including `seq` (handed back
    /// to the producer, its records counted as consumed), after
    /// [`peek_subbuf`](Self::peek_subbuf) copies of them are safe
    /// elsewhere. A dead producer's partial sub-buffer is consumed as
    /// [`read`](Self::read) leaves it: the position stays at its end.
    /// Returns how many sub-buffers were consumed (0 if `seq` was already;
    /// fewer than asked if some were not complete, or if a live
    /// [`SubbufView`] shows one: consuming stops before the oldest viewed,
    /// see [`oldest_viewed`](Self::oldest_viewed)).
    ///
    /// # Errors
    /// [`ReadError::Overwrite`] for an overwrite-mode buffer,
    /// [`ReadError::Format`] if the shared state is corrupt.
    pub fn consume_through(&mut self, seq: u64) -> Result<u64, ReadError> {
        self.check_size()?;
        let viewed = self.oldest_viewed();
        let s = &self.map.shared;
        if s.is_overwrite() {
            return Err(ReadError::Overwrite(self.path.clone()));
        }
        let fmt = |source| ReadError::Format {
            path: self.path.clone(),
            source,
        };
        let consumed = self.consumed_seq();
        // Never what a live view shows, nor anything after it.
        let seq = match viewed {
            Some(v) if v <= seq => match v.checked_sub(1) {
                Some(before) if before >= consumed => before,
                _ => return Ok(0),
            },
            _ => seq,
        };
        let mut done = 0;
        if seq >= consumed {
            done = s
                // `seq` may be any number (u64::MAX, say): no overflow.
                .subbufs_consumed((seq - consumed).saturating_add(1), false, None)
                .map_err(fmt)?;
            cursor::settle_sub_records(s, consumed);
        }
        if self.consumed_seq() == seq && !self.is_closed() && !self.producer_alive() {
            // The dead producer's tail, peeked as `partial`.
            self.cur.set_writers_gone();
            let s = &self.map.shared;
            if let Some((ord, _, _)) = s.map_ready(true).map_err(fmt)? {
                if ord == seq && s.consume_held(ord, None).is_some() {
                    cursor::settle_sub_records(s, ord);
                    done += 1;
                }
            }
        }
        // `read` resumes at the new position.
        self.cur.load(&self.map.shared);
        Ok(done)
    }
}

impl Drop for RelayFile {
    /// Closes the relay file. A buffer that `relay_close` left for this
    /// reader (it was attached at the close) is removed once drained: its
    /// file, its wakeup FIFO and, if `relay_open` made it and it is empty
    /// now, the channel directory. One with data left stays for a later
    /// reader, which resumes where this one stopped.
    fn drop(&mut self) {
        let s = &self.map.shared;
        // SYNC POINT: Acquire pairs with relay_close's Release store of
        // STATE, made after it stored LEFT.
        if s.header_word(hdr::STATE).load(Ordering::Acquire) != STATE_CLOSED {
            return;
        }
        let left = s.header_word(hdr::LEFT).load(Ordering::Relaxed);
        if left & LEFT_FOR_READER == 0 || !matches!(self.is_eof(), Ok(true)) {
            return;
        }
        let s = &self.map.shared;
        let dir = (left & LEFT_DIR != 0).then(|| crate::dir::Ident {
            dev: s.header_word(hdr::DIR_DEV).load(Ordering::Relaxed),
            ino: s.header_word(hdr::DIR_INO).load(Ordering::Relaxed),
        });
        crate::dir::remove_left_for_reader(&self.path, &self.file, self.wake_fd(), dir);
    }
}

impl Drop for Mapping<'_> {
    fn drop(&mut self) {
        let f = &mut *self.file;
        let s = &f.map.shared;
        // SYNC POINT: Relaxed, as in `map`.
        s.reader_word(rdr::MAPPED).fetch_sub(1, Ordering::Relaxed);
        s.reader_word(rdr::MAP_EVENTS)
            .fetch_add(1, Ordering::Relaxed);
        // The mapping moved the position: `read` resumes there (a sub-buffer
        // still held is delivered or discarded by it, exactly once).
        f.cur.load(s);
    }
}

impl io::Read for RelayFile {
    /// A blocking read: waits for data, returns `Ok(0)` only at the end of
    /// the channel.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = RelayFile::read(self, buf).map_err(io::Error::other)?;
            if n > 0 {
                return Ok(n);
            }
            match self.poll(None).map_err(io::Error::other)? {
                Ready::Readable | Ready::Timeout => continue,
                Ready::Closed | Ready::ProducerGone => return Ok(0),
            }
        }
    }
}
