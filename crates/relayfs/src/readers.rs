//! A whole channel on the reader's side: every buffer of a channel opened in
//! one call ([`Readers::open`], [`Channel::open_readers`]), and one `poll(2)`
//! over all of them.
//!
//! Publication (see docs/DESIGN.md) makes this simple and race-free: a
//! producer publishes its buffers from the highest CPU down to `cpu0`, each
//! whole with its wakeup FIFO, and every header carries the channel's buffer
//! count and id. So a reader waits for `cpu0`, reads the count from its
//! header, and opens `cpu0..count`, checking that all carry the same channel
//! id (a buffer left by an earlier producer, or a channel being replaced,
//! doesn't). No directory listing is involved.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::channel::Channel;
use crate::error::{OpenError, ReadError};
use crate::reader::{Ready, RelayFile};
use crate::BufferStats;

/// How often a sleeping reader looks at what no wakeup reports: the
/// producer's liveness, and a partly filled sub-buffer (readable in
/// no-overwrite mode, but completing no sub-buffer, it wakes nobody).
pub(crate) const LIVENESS_INTERVAL: Duration = Duration::from_millis(200);

/// How often a reader polls a buffer that has no usable wakeup FIFO (it is
/// missing, or hung up while the producer's end is not yet seen).
pub(crate) const NO_FIFO_INTERVAL: Duration = Duration::from_millis(10);

/// The longest sleep between two looks for a channel not published yet.
const OPEN_BACKOFF_MAX: Duration = Duration::from_millis(50);

/// Why a channel could not be opened for reading.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The channel directory, or the relay root holding it, is a symbolic
    /// link, belongs to another user or may be written by others (the
    /// checks `relay_open` makes), or can't be opened.
    #[error("cannot read the channel")] // the source names the directory
    Dir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        source: OpenError,
    },
    /// The channel's first buffer did not appear within the wait.
    #[error("no channel at {dir}: {first} did not appear within {waited:?} (is the producer running? RELAYFS_DIR must be the same for both)")]
    NotFound {
        /// The channel directory.
        dir: PathBuf,
        /// The buffer waited for (`cpu0`).
        first: PathBuf,
        /// How long it was waited for.
        waited: Duration,
    },
    /// A buffer the channel's header counts is missing (after the wait).
    #[error("{path} is missing: the channel has {n_buffers} buffers (a producer publishes cpu0 last, so this buffer was removed, or the channel is being replaced)")]
    Missing {
        /// The missing buffer file.
        path: PathBuf,
        /// The channel's buffer count.
        n_buffers: u64,
    },
    /// A buffer belongs to another channel than the first one (after the
    /// wait): left over from an earlier producer, or the channel was being
    /// replaced while it was opened.
    #[error("{path} belongs to another channel (id {found:#x}, buffer count {found_n}) than {first} (id {expected:#x}, buffer count {expected_n}): left over from an earlier producer, or the channel is being replaced")]
    Mixed {
        /// The buffer that doesn't match.
        path: PathBuf,
        /// Its channel id.
        found: u64,
        /// Its buffer count.
        found_n: u64,
        /// The first buffer.
        first: PathBuf,
        /// The first buffer's channel id.
        expected: u64,
        /// The first buffer's buffer count.
        expected_n: u64,
    },
    /// A buffer's header says it is another CPU's than its name.
    #[error("{path} says it is the buffer of CPU {cpu}, not {expected}")]
    WrongCpu {
        /// The buffer file.
        path: PathBuf,
        /// The CPU in its header.
        cpu: u64,
        /// The CPU its name says.
        expected: u64,
    },
    /// A buffer could not be opened or read (not a buffer file, another
    /// reader has it, no permission…).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Waiting on the buffers' wakeup FIFOs failed.
    #[error("poll on the wakeup FIFOs of {dir}")]
    Poll {
        /// The channel directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl ChannelError {
    /// Whether waiting longer may cure it (the channel is not published, or
    /// is being replaced).
    fn is_transient(&self) -> bool {
        match self {
            ChannelError::NotFound { .. }
            | ChannelError::Missing { .. }
            | ChannelError::Mixed { .. } => true,
            ChannelError::Dir { source, .. } => matches!(
                source,
                OpenError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound
            ),
            _ => false,
        }
    }
}

/// What [`Readers::poll`] found: buffer indexes (the CPU of a per-CPU
/// channel's buffer), in increasing order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Buffers with data to read now.
    pub readable: Vec<usize>,
    /// Buffers that ended: their producer closed the channel (or died) and
    /// everything is read. Every ended buffer is listed, not only the ones
    /// that ended during this call.
    pub ended: Vec<usize>,
}

/// What [`Readers::read_any_timeout`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAny {
    /// `len` bytes of buffer `index` were read.
    Data {
        /// Which buffer (its CPU in a per-CPU channel).
        index: usize,
        /// Bytes read.
        len: usize,
    },
    /// Nothing to read within the timeout.
    Timeout,
    /// Every buffer ended: the channel was closed (or its producer died)
    /// and everything is read.
    End,
}

/// One buffer's state, looked at without sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Data to read.
    Readable,
    /// The buffer ended ([`Ready::Closed`] or [`Ready::ProducerGone`]).
    Ended(Ready),
    /// Nothing yet: a wakeup was asked for on the wake FIFO
    /// ([`RelayFile::prepare_wait`]); sleep on it.
    Wait,
}

/// Looks at one buffer without sleeping, and arms its wakeup if there is
/// nothing to read, with the protocol of [`RelayFile::prepare_wait`]: the
/// FIFO is drained, the reader's *waiting* flag stored, then the data looked
/// at again, so a sub-buffer completed after this look wakes the FIFO and
/// one completed before it is seen here. A zero-timeout
/// [`RelayFile::poll`] first learns whether the producer closed or died (it
/// makes the dead producer's partial sub-buffer readable).
pub(crate) fn step(f: &mut RelayFile) -> Result<Step, ReadError> {
    Ok(match f.poll(Some(Duration::ZERO))? {
        Ready::Readable => Step::Readable,
        end @ (Ready::Closed | Ready::ProducerGone) => {
            // `is_eof` looks at the partly filled sub-buffer too, which
            // `poll` leaves alone in complete-only mode: the tail is due now.
            if f.is_eof()? {
                Step::Ended(end)
            } else {
                f.set_complete_only(false);
                Step::Readable
            }
        }
        Ready::Timeout => {
            if f.prepare_wait()? {
                Step::Readable
            } else {
                Step::Wait
            }
        }
    })
}

/// Every buffer of one channel, open for reading.
///
/// Buffer `i` is the relay file `<base>i`: for a per-CPU channel, CPU `i`'s
/// buffer; for a global one, the only buffer, 0.
///
/// ```no_run
/// let mut chan = relayfs::Readers::open("demo", Some(std::time::Duration::from_secs(5)))?;
/// let mut buf = vec![0u8; 1 << 16];
/// while let Some((cpu, n)) = chan.read_any(&mut buf)? {
///     println!("cpu{cpu}: {n} bytes");
/// }
/// # Ok::<(), relayfs::ChannelError>(())
/// ```
#[derive(Debug)]
pub struct Readers {
    dir: PathBuf,
    channel_id: u64,
    files: Vec<RelayFile>,
    ended: Vec<Option<Ready>>,
    /// The wakeup FIFO reported a hangup: the producer's end is closed, so
    /// it would report readiness forever; poll the buffer instead until it
    /// ends.
    hup: Vec<bool>,
    /// Where [`read_any`](Self::read_any) starts looking next (round robin).
    next: usize,
}

/// The channel directory: a bare name is under the relay root, anything
/// else (`a/b`, `/x`, `.`, `./x`) is a path.
fn channel_dir(name_or_dir: &Path) -> (PathBuf, bool) {
    let mut comps = name_or_dir.components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(_)), None) => (crate::channel::relay_dir().join(name_or_dir), true),
        _ => (name_or_dir.to_path_buf(), false),
    }
}

impl Readers {
    /// Opens every buffer of channel `name_or_dir` (buffer files `cpuN`): a
    /// bare name is looked for under the relay root
    /// ([`relay_dir`](crate::relay_dir): `$RELAYFS_DIR` or
    /// `/dev/shm/relayfs`), a path is the channel directory itself.
    ///
    /// `wait` is how long to wait for the channel to be published (`None`:
    /// not at all). The channel is there once `cpu0` is (it is published
    /// last); its header gives the buffer count, and every buffer must carry
    /// its channel id. While the channel is not there, or a buffer is
    /// missing or of another channel (a producer replacing the files of a
    /// dead one), it looks again after a short sleep (growing to 50 ms)
    /// until `wait` has passed.
    ///
    /// The directory (and, for a name, the relay root) is checked as
    /// `relay_open` checks it: not a symbolic link, ours or root's, not
    /// writable by others unless sticky. Buffer files are opened as
    /// [`RelayFile::open`] opens them (no symbolic link, regular files
    /// only, one reader per buffer).
    ///
    /// # Errors
    /// [`ChannelError::NotFound`], [`Missing`](ChannelError::Missing) or
    /// [`Mixed`](ChannelError::Mixed) if the channel was not whole and
    /// consistent within `wait`; [`ChannelError::Dir`] for a directory
    /// that fails the checks; [`ChannelError::Read`] for a buffer that
    /// can't be opened (not a buffer file, [`ReadError::Busy`]…).
    pub fn open(
        name_or_dir: impl AsRef<Path>,
        wait: Option<Duration>,
    ) -> Result<Readers, ChannelError> {
        Readers::open_base(name_or_dir, "cpu", wait)
    }

    /// As [`open`](Self::open), for buffer files named `<base>N` (see
    /// [`ChannelBuilder::base`](crate::ChannelBuilder::base)).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_base(
        name_or_dir: impl AsRef<Path>,
        base: &str,
        wait: Option<Duration>,
    ) -> Result<Readers, ChannelError> {
        let (dir, under_root) = channel_dir(name_or_dir.as_ref());
        Readers::open_in(dir, under_root, base, wait)
    }

    fn open_in(
        dir: PathBuf,
        under_root: bool,
        base: &str,
        wait: Option<Duration>,
    ) -> Result<Readers, ChannelError> {
        if base.is_empty() || base.contains('/') || base.contains('\0') {
            return Err(ChannelError::Dir {
                path: dir,
                source: OpenError::Name(base.to_string()),
            });
        }
        let wait = wait.unwrap_or(Duration::ZERO);
        // Too far to represent: no deadline.
        let deadline = Instant::now().checked_add(wait);
        let mut backoff = Duration::from_millis(1);
        loop {
            match Readers::try_open(&dir, under_root, base, wait) {
                Ok(r) => return Ok(r),
                Err(e) if e.is_transient() => {
                    let now = Instant::now();
                    let left =
                        deadline.map_or(OPEN_BACKOFF_MAX, |d| d.saturating_duration_since(now));
                    if left.is_zero() {
                        return Err(match e {
                            ChannelError::Dir { .. } => ChannelError::NotFound {
                                first: dir.join(format!("{base}0")),
                                dir,
                                waited: wait,
                            },
                            e => e,
                        });
                    }
                    std::thread::sleep(backoff.min(left));
                    backoff = (backoff * 2).min(OPEN_BACKOFF_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_open(
        dir: &Path,
        under_root: bool,
        base: &str,
        wait: Duration,
    ) -> Result<Readers, ChannelError> {
        let check = |path: &Path| {
            crate::dir::ChannelDir::open(path).map_err(|source| ChannelError::Dir {
                path: path.to_path_buf(),
                source,
            })
        };
        if under_root {
            if let Some(root) = dir.parent() {
                check(root)?;
            }
        }
        check(dir)?;
        let path_of = |i: u64| dir.join(format!("{base}{i}"));
        let first = path_of(0);
        // Headers first (no reader lock taken): all of one channel?
        let h0 = match RelayFile::peek_header(&first) {
            Ok(h) => h,
            Err(ReadError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(ChannelError::NotFound {
                    dir: dir.to_path_buf(),
                    first,
                    waited: wait,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let n = h0.n_buffers;
        let same = |path: &Path, i: u64, h: &crate::BufferHeader| {
            if h.channel_id != h0.channel_id || h.n_buffers != n {
                return Err(ChannelError::Mixed {
                    path: path.to_path_buf(),
                    found: h.channel_id,
                    found_n: h.n_buffers,
                    first: first.clone(),
                    expected: h0.channel_id,
                    expected_n: n,
                });
            }
            if h.cpu != i {
                return Err(ChannelError::WrongCpu {
                    path: path.to_path_buf(),
                    cpu: h.cpu,
                    expected: i,
                });
            }
            Ok(())
        };
        for i in 0..n {
            let path = path_of(i);
            let h = match RelayFile::peek_header(&path) {
                Ok(h) => h,
                Err(ReadError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Err(ChannelError::Missing { path, n_buffers: n })
                }
                Err(e) => return Err(e.into()),
            };
            same(&path, i, &h)?;
        }
        // Then take them; a file replaced in between is caught here.
        let mut files = Vec::with_capacity(n as usize);
        for i in 0..n {
            let path = path_of(i);
            let f = RelayFile::open(&path).map_err(|e| match e {
                ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    ChannelError::Missing {
                        path: path.clone(),
                        n_buffers: n,
                    }
                }
                e => e.into(),
            })?;
            same(&path, i, f.header())?;
            files.push(f);
        }
        let n = files.len();
        Ok(Readers {
            dir: dir.to_path_buf(),
            channel_id: h0.channel_id,
            files,
            ended: vec![None; n],
            hup: vec![false; n],
            next: 0,
        })
    }

    /// The channel directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The channel's id (random per `relay_open`), the same in every buffer.
    pub fn channel_id(&self) -> u64 {
        self.channel_id
    }

    /// Number of buffers.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Always false: a channel has at least one buffer.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Buffer `index` (CPU `index`'s in a per-CPU channel), if there is one.
    pub fn get(&self, index: usize) -> Option<&RelayFile> {
        self.files.get(index)
    }

    /// Buffer `index`, mutable (to read it, map it…).
    pub fn get_mut(&mut self, index: usize) -> Option<&mut RelayFile> {
        self.files.get_mut(index)
    }

    /// The buffers, in index order.
    pub fn iter(&self) -> std::slice::Iter<'_, RelayFile> {
        self.files.iter()
    }

    /// The buffers, mutable, in index order.
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, RelayFile> {
        self.files.iter_mut()
    }

    /// The relay files, one per buffer, in index order.
    pub fn into_inner(self) -> Vec<RelayFile> {
        self.files
    }

    /// The counters of every buffer, summed.
    pub fn stats(&self) -> BufferStats {
        let each: Vec<BufferStats> = self.files.iter().map(RelayFile::stats).collect();
        crate::sum_stats(&each)
    }

    /// How buffer `index` ended ([`Ready::Closed`] or
    /// [`Ready::ProducerGone`]), once [`poll`](Self::poll) or a read found
    /// it ended; `None` while it may have more.
    pub fn end(&self, index: usize) -> Option<Ready> {
        self.ended.get(index).copied().flatten()
    }

    /// Whether every buffer ended: the end of the channel.
    pub fn is_done(&self) -> bool {
        self.ended.iter().all(Option::is_some)
    }

    /// Waits until some buffer has data, every buffer ended, or `timeout`
    /// passes (`None`: no limit), with one `poll(2)` over the buffers'
    /// wakeup FIFOs. As with [`RelayFile::poll`], wakeups come when a
    /// sub-buffer completes; a partly filled sub-buffer (readable in
    /// no-overwrite mode) is noticed at the latest after 200 ms, as are a
    /// closed channel and a producer that died.
    ///
    /// Returns the buffers readable now and every buffer that ended; both
    /// empty means the timeout passed.
    ///
    /// # Errors
    /// [`ChannelError::Read`] if a buffer is corrupt or truncated,
    /// [`ChannelError::Poll`] if `poll(2)` fails.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<Readiness, ChannelError> {
        // A timeout too long to represent waits forever.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let mut readable = Vec::new();
            let mut waiting = Vec::new();
            let mut no_fifo = false;
            for i in 0..self.files.len() {
                if self.ended[i].is_some() {
                    continue;
                }
                match step(&mut self.files[i])? {
                    Step::Readable => readable.push(i),
                    Step::Ended(how) => self.ended[i] = Some(how),
                    Step::Wait => {
                        if !self.hup[i] && self.files[i].wake_fd().is_some() {
                            waiting.push(i);
                        } else {
                            no_fifo = true;
                        }
                    }
                }
            }
            if !readable.is_empty() || self.is_done() {
                return Ok(self.readiness(readable));
            }
            let now = Instant::now();
            let mut nap = if no_fifo {
                NO_FIFO_INTERVAL
            } else {
                LIVENESS_INTERVAL
            };
            if let Some(d) = deadline {
                if d <= now {
                    return Ok(self.readiness(readable));
                }
                nap = nap.min(d - now);
            }
            let mut fds: Vec<PollFd<'_>> = waiting
                .iter()
                .filter_map(|&i| self.files[i].wake_fd())
                .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
                .collect();
            let ts = Timespec::try_from(nap).unwrap_or(Timespec {
                tv_sec: 0,
                tv_nsec: 200_000_000,
            });
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(ChannelError::Poll {
                        dir: self.dir.clone(),
                        source: e.into(),
                    })
                }
            }
            let hung: Vec<bool> = fds
                .iter()
                .map(|p| {
                    let r = p.revents();
                    r.intersects(PollFlags::HUP | PollFlags::ERR) && !r.contains(PollFlags::IN)
                })
                .collect();
            drop(fds);
            for (&i, h) in waiting.iter().zip(hung) {
                // The producer's end is gone (closed or died): the next look
                // tells which; until then the FIFO would report at once.
                self.hup[i] |= h;
            }
        }
    }

    fn readiness(&self, readable: Vec<usize>) -> Readiness {
        Readiness {
            readable,
            ended: (0..self.files.len())
                .filter(|&i| self.ended[i].is_some())
                .collect(),
        }
    }

    /// Reads from whichever buffer has data, waiting as long as it takes:
    /// `Some((index, len))` for `len` bytes of buffer `index`, `None` at
    /// the end of the channel (every buffer's producer closed it, or died,
    /// and everything is read). Buffers take turns, so a busy one can't
    /// starve the others. A read never returns bytes of two buffers.
    ///
    /// # Errors
    /// As [`poll`](Self::poll).
    pub fn read_any(&mut self, buf: &mut [u8]) -> Result<Option<(usize, usize)>, ChannelError> {
        loop {
            match self.read_any_timeout(buf, None)? {
                ReadAny::Data { index, len } => return Ok(Some((index, len))),
                ReadAny::End => return Ok(None),
                ReadAny::Timeout => {}
            }
        }
    }

    /// As [`read_any`](Self::read_any), waiting at most `timeout`. An empty
    /// `buf` reads nothing: it returns the first buffer with data, `len` 0.
    ///
    /// # Errors
    /// As [`poll`](Self::poll).
    pub fn read_any_timeout(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<ReadAny, ChannelError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let n = self.files.len();
            for k in 0..n {
                let i = (self.next + k) % n;
                if self.ended[i].is_some() {
                    continue;
                }
                let len = self.files[i].read(buf)?;
                if len > 0 {
                    self.next = (i + 1) % n;
                    return Ok(ReadAny::Data { index: i, len });
                }
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let r = self.poll(left)?;
            if self.is_done() {
                return Ok(ReadAny::End);
            }
            if r.readable.is_empty() {
                return Ok(ReadAny::Timeout);
            }
            if buf.is_empty() {
                return Ok(ReadAny::Data {
                    index: r.readable[0],
                    len: 0,
                });
            }
        }
    }
}

impl std::ops::Index<usize> for Readers {
    type Output = RelayFile;
    /// Buffer `index`.
    ///
    /// # Panics
    /// If there is no such buffer (see [`Readers::get`]).
    fn index(&self, index: usize) -> &RelayFile {
        &self.files[index]
    }
}

impl std::ops::IndexMut<usize> for Readers {
    fn index_mut(&mut self, index: usize) -> &mut RelayFile {
        &mut self.files[index]
    }
}

impl IntoIterator for Readers {
    type Item = RelayFile;
    type IntoIter = std::vec::IntoIter<RelayFile>;
    fn into_iter(self) -> Self::IntoIter {
        self.files.into_iter()
    }
}

impl<'a> IntoIterator for &'a Readers {
    type Item = &'a RelayFile;
    type IntoIter = std::slice::Iter<'a, RelayFile>;
    fn into_iter(self) -> Self::IntoIter {
        self.files.iter()
    }
}

impl<'a> IntoIterator for &'a mut Readers {
    type Item = &'a mut RelayFile;
    type IntoIter = std::slice::IterMut<'a, RelayFile>;
    fn into_iter(self) -> Self::IntoIter {
        self.files.iter_mut()
    }
}

impl Channel {
    /// Opens every buffer of this channel for reading, in this process (a
    /// reader thread, a test): [`Readers::open`] on the channel's
    /// directory, with its buffer file names.
    ///
    /// # Errors
    /// As [`Readers::open`] (e.g. [`ReadError::Busy`] if a buffer has a
    /// reader already).
    pub fn open_readers(&self) -> Result<Readers, ChannelError> {
        let first = self.buffer_path(0);
        let name = first
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let base = name.trim_end_matches(|c: char| c.is_ascii_digit());
        Readers::open_in(self.dir().to_path_buf(), false, base, None)
    }
}
