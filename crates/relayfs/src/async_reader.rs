//! Async readers (feature `tokio`): [`AsyncRelayFile`] for one buffer and
//! [`AsyncReaders`] for a whole channel, woken through tokio's reactor.
//!
//! A buffer's wakeup FIFO ([`RelayFile::wake_fd`]) is registered with the
//! reactor (a [`pipe::Receiver`] over a duplicate of the descriptor).
//! Before sleeping, a reader arms the wakeup with the protocol of
//! [`RelayFile::prepare_wait`] (drain the FIFO, store the *waiting* flag,
//! fence, look for data again). After waking it reads the FIFO through the
//! reactor until it would block, which clears the reactor's readiness:
//! that comes before the next arming, never after, so a wakeup byte written
//! after the arming's drain is a new readiness event and no wakeup is lost. As the
//! blocking readers do, it also looks again every 200 ms, for what no
//! wakeup reports (a partly filled sub-buffer, a producer that died).
//!
//! The runtime needs its I/O and time drivers (`Runtime::new`,
//! `#[tokio::main]`, or a builder with `enable_all`).

use std::future::poll_fn;
use std::path::Path;
use std::task::Poll;
use std::time::Duration;

use tokio::net::unix::pipe;

use crate::error::ReadError;
use crate::reader::{Ready, RelayFile};
use crate::readers::{step, ChannelError, Readers, Step, LIVENESS_INTERVAL, NO_FIFO_INTERVAL};
use crate::BufferStats;

/// One buffer and its registration with the reactor.
#[derive(Debug)]
struct Waitable {
    file: RelayFile,
    /// The wake FIFO (a duplicate of the file's descriptor), registered on
    /// first use, inside the runtime.
    fd: Option<pipe::Receiver>,
    /// The FIFO hung up (the producer's end is gone): it would be ready
    /// forever, so the buffer is looked at on a timer until it ends.
    hup: bool,
    /// How the buffer ended, once it did.
    ended: Option<Ready>,
}

impl Waitable {
    fn new(file: RelayFile) -> Waitable {
        Waitable {
            file,
            fd: None,
            hup: false,
            ended: None,
        }
    }

    /// Looks without sleeping; arms the wakeup if nothing is there.
    fn step(&mut self) -> Result<Step, ReadError> {
        if let Some(end) = self.ended {
            return Ok(Step::Ended(end));
        }
        let s = step(&mut self.file)?;
        if let Step::Ended(end) = s {
            self.ended = Some(end);
        }
        Ok(s)
    }

    /// Whether the reactor can wake this buffer's reader; registers the
    /// FIFO the first time. Without it, the reader looks on a short timer.
    fn registered(&mut self) -> bool {
        if self.hup {
            return false;
        }
        if self.fd.is_none() {
            let dup = self
                .file
                .wake_fd()
                .and_then(|fd| fd.try_clone_to_owned().ok());
            self.fd = dup.and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok());
        }
        self.fd.is_some()
    }
}

/// Sleeps until one of `ws` (indexes `armed`, whose wakeups are armed) is
/// woken, or `nap` passes. Then empties their FIFOs through the reactor
/// (clearing its readiness), and marks a FIFO that hung up.
async fn sleep_on(ws: &mut [Waitable], armed: &[usize], nap: Duration) {
    let woke = poll_fn(|cx| {
        let mut any = false;
        for &i in armed {
            if let Some(fd) = &ws[i].fd {
                any |= fd.poll_read_ready(cx).is_ready();
            }
        }
        if any {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    let _ = tokio::time::timeout(nap, woke).await;
    let mut bytes = [0u8; 64];
    for &i in armed {
        let w = &mut ws[i];
        let Some(fd) = &w.fd else { continue };
        let hup = loop {
            match fd.try_read(&mut bytes) {
                Ok(0) => break true, // the producer's end is gone
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break true, // look on a timer instead
            }
        };
        if hup {
            w.hup = true;
            w.fd = None;
        }
    }
}

/// Looks at every buffer of `ws` from `start` on (round robin) and reads
/// the first with data into `buf`; sleeps when none has any. Returns
/// `Some((index, len))`, or `None` once every buffer ended.
async fn read_any(
    ws: &mut [Waitable],
    start: &mut usize,
    buf: &mut [u8],
) -> Result<Option<(usize, usize)>, ReadError> {
    let n = ws.len();
    loop {
        for k in 0..n {
            let i = (*start + k) % n;
            if ws[i].ended.is_some() {
                continue;
            }
            let len = ws[i].file.read(buf)?;
            if len > 0 {
                *start = (i + 1) % n;
                return Ok(Some((i, len)));
            }
        }
        let mut armed = Vec::new();
        let mut readable = None;
        let mut nap = LIVENESS_INTERVAL;
        for (i, w) in ws.iter_mut().enumerate() {
            match w.step()? {
                Step::Readable => {
                    readable.get_or_insert(i);
                }
                Step::Ended(_) => {}
                Step::Wait => {
                    if w.registered() {
                        armed.push(i);
                    } else {
                        nap = NO_FIFO_INTERVAL;
                    }
                }
            }
        }
        if ws.iter().all(|w| w.ended.is_some()) {
            return Ok(None);
        }
        if let Some(i) = readable {
            if buf.is_empty() {
                return Ok(Some((i, 0)));
            }
            continue;
        }
        sleep_on(ws, &armed, nap).await;
    }
}

/// A relay file read asynchronously: [`read`](Self::read) waits for data
/// without blocking the runtime's thread.
///
/// ```no_run
/// # async fn f() -> Result<(), relayfs::ReadError> {
/// let mut f = relayfs::AsyncRelayFile::open("/dev/shm/relayfs/demo/cpu0")?;
/// while let Some(chunk) = f.next_chunk().await? {
///     println!("{} bytes", chunk.len());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncRelayFile {
    w: [Waitable; 1],
    start: usize,
}

impl AsyncRelayFile {
    /// Opens a relay file ([`RelayFile::open`]).
    ///
    /// # Errors
    /// As [`RelayFile::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<AsyncRelayFile, ReadError> {
        Ok(AsyncRelayFile::new(RelayFile::open(path)?))
    }

    /// Wraps an open relay file.
    pub fn new(file: RelayFile) -> AsyncRelayFile {
        AsyncRelayFile {
            w: [Waitable::new(file)],
            start: 0,
        }
    }

    /// Reads what is readable into `buf` (as [`RelayFile::read`]), waiting
    /// for data if there is none: at least one byte, or 0 at the end (the
    /// channel was closed, or its producer died, and everything is read; see
    /// [`end`](Self::end)). An empty `buf` returns 0 once data is readable.
    ///
    /// # Errors
    /// As [`RelayFile::read`].
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        Ok(read_any(&mut self.w, &mut self.start, buf)
            .await?
            .map_or(0, |(_, n)| n))
    }

    /// The next chunk of data, at most a sub-buffer long, or `None` at the
    /// end. A record decoder can be fed these chunks.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        let size = self.w[0].file.header().geometry.subbuf_size as usize;
        let mut buf = vec![0u8; size];
        let n = self.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some(buf))
    }

    /// How the buffer ended, once a read returned its end.
    pub fn end(&self) -> Option<Ready> {
        self.w[0].ended
    }

    /// The relay file.
    pub fn get_ref(&self) -> &RelayFile {
        &self.w[0].file
    }

    /// The relay file, mutable.
    pub fn get_mut(&mut self) -> &mut RelayFile {
        &mut self.w[0].file
    }

    /// The relay file back.
    pub fn into_inner(self) -> RelayFile {
        let [w] = self.w;
        w.file
    }
}

/// Every buffer of a channel, read asynchronously: data from whichever
/// buffer has some, as it comes.
///
/// ```no_run
/// # async fn f() -> Result<(), relayfs::ChannelError> {
/// use std::time::Duration;
/// let mut chan = relayfs::AsyncReaders::open("demo", Some(Duration::from_secs(5)))?;
/// while let Some((cpu, chunk)) = chan.next_chunk().await? {
///     println!("cpu{cpu}: {} bytes", chunk.len());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncReaders {
    w: Vec<Waitable>,
    start: usize,
}

impl AsyncReaders {
    /// Opens every buffer of a channel, as [`Readers::open`] does. It
    /// waits for the channel in the calling thread (sleeping up to 50 ms at
    /// a time): call it before entering the runtime, or through
    /// `spawn_blocking`, if `wait` is long.
    ///
    /// # Errors
    /// As [`Readers::open`].
    pub fn open(
        name_or_dir: impl AsRef<Path>,
        wait: Option<Duration>,
    ) -> Result<AsyncReaders, ChannelError> {
        Ok(AsyncReaders::new(Readers::open(name_or_dir, wait)?))
    }

    /// Wraps a channel's readers.
    pub fn new(readers: Readers) -> AsyncReaders {
        AsyncReaders {
            w: readers
                .into_inner()
                .into_iter()
                .map(Waitable::new)
                .collect(),
            start: 0,
        }
    }

    /// Number of buffers.
    pub fn len(&self) -> usize {
        self.w.len()
    }

    /// Always false: a channel has at least one buffer.
    pub fn is_empty(&self) -> bool {
        self.w.is_empty()
    }

    /// Reads from whichever buffer has data, waiting for some:
    /// `Some((index, len))`, or `None` at the end of the channel (every
    /// buffer closed or its producer gone, and everything read). Buffers
    /// take turns.
    ///
    /// # Errors
    /// As [`RelayFile::read`].
    pub async fn read_any(&mut self, buf: &mut [u8]) -> Result<Option<(usize, usize)>, ReadError> {
        read_any(&mut self.w, &mut self.start, buf).await
    }

    /// The next chunk of data of any buffer, at most a sub-buffer long,
    /// with the buffer's index, or `None` at the end of the channel. A
    /// record decoder per buffer can be fed these chunks.
    ///
    /// # Errors
    /// As [`RelayFile::read`].
    pub async fn next_chunk(&mut self) -> Result<Option<(usize, Vec<u8>)>, ReadError> {
        let size = self
            .w
            .iter()
            .map(|w| w.file.header().geometry.subbuf_size)
            .max()
            .unwrap_or(0) as usize;
        let mut buf = vec![0u8; size];
        Ok(self.read_any(&mut buf).await?.map(|(i, n)| {
            buf.truncate(n);
            (i, buf)
        }))
    }

    /// How buffer `index` ended, once it did.
    pub fn end(&self, index: usize) -> Option<Ready> {
        self.w.get(index).and_then(|w| w.ended)
    }

    /// Buffer `index`'s relay file.
    pub fn get(&self, index: usize) -> Option<&RelayFile> {
        self.w.get(index).map(|w| &w.file)
    }

    /// The counters of every buffer, summed.
    pub fn stats(&self) -> BufferStats {
        let each: Vec<BufferStats> = self.w.iter().map(|w| w.file.stats()).collect();
        crate::sum_stats(&each)
    }

    /// The relay files, one per buffer, in index order.
    pub fn into_inner(self) -> Vec<RelayFile> {
        self.w.into_iter().map(|w| w.file).collect()
    }
}

/// Whole framed records (see [`crate::frame`]) from every buffer of a
/// channel, woken through tokio: the async form of
/// [`ChannelRecords`](crate::frame::ChannelRecords), with the same items in
/// the same order for the same bytes.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let readers = relayfs::AsyncReaders::open("web", Some(std::time::Duration::from_secs(5)))?;
/// let mut records = relayfs::AsyncChannelRecords::new(readers);
/// while let Some((cpu, rec)) = records.next_record().await {
///     println!("cpu{cpu}: {} bytes", rec?.payload.len());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncChannelRecords {
    readers: AsyncReaders,
    set: crate::frame::DecoderSet,
    /// What `read_any` reads into: one sub-buffer.
    scratch: Vec<u8>,
    /// Every buffer ended (or reading failed).
    ended: bool,
}

impl AsyncChannelRecords {
    /// The records of every buffer of `readers`.
    pub fn new(readers: AsyncReaders) -> AsyncChannelRecords {
        let set = crate::frame::DecoderSet::new((0..readers.len()).filter_map(|i| readers.get(i)));
        AsyncChannelRecords {
            scratch: set.read_buffer(),
            readers,
            set,
            ended: false,
        }
    }

    /// The next record (borrowed) or error item, with the index of its
    /// buffer; `None` at the end of the channel. A failed read is reported
    /// once (with index 0) and ends the stream after what was read is
    /// decoded.
    pub async fn next_record(
        &mut self,
    ) -> Option<(usize, Result<crate::frame::Record<'_>, crate::FrameError>)> {
        loop {
            if let Some((i, step)) = self.set.pop() {
                return Some((i, self.set.take(i, step)));
            }
            if self.ended {
                return self.set.finish().map(|(i, e)| (i, Err(e)));
            }
            match self.readers.read_any(&mut self.scratch).await {
                Ok(Some((i, len))) => self.set.feed(i, &self.scratch[..len]),
                Ok(None) => self.ended = true,
                Err(e) => {
                    self.ended = true;
                    return Some((0, Err(crate::FrameError::Read(e))));
                }
            }
        }
    }

    /// The decoder of buffer `index`: its counts of records, skipped bytes
    /// and errors.
    pub fn decoder(&self, index: usize) -> Option<&crate::Decoder> {
        self.set.get(index)
    }

    /// The readers back.
    pub fn into_readers(self) -> AsyncReaders {
        self.readers
    }
}
