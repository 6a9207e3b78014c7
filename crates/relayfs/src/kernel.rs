//! Kernel relay files: the same reader operations on the relay channels the
//! kernel itself publishes (blktrace's `/sys/kernel/debug/block/<dev>/traceN`,
//! SystemTap, the i915 GuC log, ath spectral scan, ...).
//!
//! Only what the kernel offers is used, and every capability is found out at
//! run time rather than assumed: `read(2)` (consuming, padding removed) and
//! `poll(2)` always; `sendfile(2)` is tried once and, where the kernel
//! refuses it (debugfs files on 6.x kernels have no `splice_read`: `EINVAL`),
//! replaced by `read` + `write`; [`KernelRelayFile::probe_mmap`] says whether
//! `mmap(2)` would work (debugfs on 6.x answers `ENODEV`).
//!
//! Two quirks of the kernel's relay file are handled here: `poll` reports
//! `POLLIN` only for complete sub-buffers (a partly filled one is readable
//! but wakes no one, so readers poll with a timeout and read after it, as
//! blktrace and staprun do), and `poll` can report `POLLIN` when `read` then
//! returns nothing (a zero read means "nothing for now", never end of file;
//! the end is `POLLERR`, when the channel is closed).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::ReadError;
use crate::reader::{Ready, RelayFile};

/// `f_type` of debugfs (`DEBUGFS_MAGIC` in `include/uapi/linux/magic.h`).
pub const DEBUGFS_MAGIC: i64 = 0x6462_6720;
/// `f_type` of tracefs (`TRACEFS_MAGIC`).
pub const TRACEFS_MAGIC: i64 = 0x7472_6163;

/// Where the default debugfs mount is.
pub const DEBUGFS_DIR: &str = "/sys/kernel/debug";

/// Size of the staging buffer of the `read` + `write` fallback of
/// [`KernelRelayFile::sendfile`].
const STAGING: usize = 256 << 10;

/// The two kinds of relay file the reader API opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    /// A buffer file of a channel of this library (shared memory).
    Shm,
    /// A relay file published by the kernel (debugfs, tracefs).
    Kernel,
}

/// Whether an operation works on a kernel relay file, found out at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Not tried yet.
    Unknown,
    /// The kernel accepts it.
    Yes,
    /// The kernel refused it with this errno; a fallback is used instead.
    No(i32),
}

/// Whether the file at `path` lives on a kernel filesystem that publishes
/// relay files (debugfs or tracefs).
pub fn is_kernel_fs(path: &Path) -> io::Result<bool> {
    let t = fs_magic(path)?;
    Ok(t == DEBUGFS_MAGIC || t == TRACEFS_MAGIC)
}

/// The `f_type` of the filesystem `path` is on (`statfs(2)`).
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: all-zero is a valid `statfs`.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    Ok(st.f_type as i64)
}

/// The value of a kernel channel's `dropped` file (blktrace keeps one beside
/// its relay files), if the directory has one.
pub fn channel_dropped(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("dropped"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The kernel's lockdown mode, from securityfs, if it can be read:
/// `"none"`, `"integrity"` or `"confidentiality"`.
pub fn lockdown_mode() -> Option<String> {
    let t = std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    let start = t.find('[')? + 1;
    let end = start + t[start..].find(']')?;
    Some(t[start..end].to_string())
}

/// An open kernel relay file: a consuming reader of one buffer of a kernel
/// relay channel.
///
/// The kernel allows any number of readers, but they share one read
/// position: two readers each get part of the data.
#[derive(Debug)]
pub struct KernelRelayFile {
    path: PathBuf,
    file: File,
    sendfile: Support,
    /// Staging buffer of the `sendfile` fallback (allocated on first use).
    /// `stage[staged_at..staged_end]` was read from the kernel (so consumed
    /// there) and not yet written out: it is kept until it is.
    stage: Vec<u8>,
    staged_at: usize,
    staged_end: usize,
    /// The last `poll` reported `POLLIN`.
    polled_readable: bool,
    /// ... and the read after it found nothing.
    spurious: bool,
    /// `poll` reported `POLLERR`: the channel is closed.
    closed: bool,
    /// Times `poll` reported `POLLIN` and the read after it found nothing.
    empty_wakeups: u64,
    bytes: u64,
}

impl KernelRelayFile {
    /// Opens a kernel relay file for reading (non-blocking).
    ///
    /// # Errors
    /// [`ReadError::Lockdown`] when kernel lockdown forbids debugfs relay
    /// files, [`ReadError::Io`] otherwise (with a hint for `EACCES`).
    pub fn open(path: impl AsRef<Path>) -> Result<KernelRelayFile, ReadError> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| open_error(&path, e))?;
        Ok(KernelRelayFile {
            path,
            file,
            sendfile: Support::Unknown,
            stage: Vec::new(),
            staged_at: 0,
            staged_end: 0,
            polled_readable: false,
            spurious: false,
            empty_wakeups: 0,
            closed: false,
            bytes: 0,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes delivered so far (read, or written out by `sendfile`).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether `sendfile(2)` from this file works, as far as tried.
    pub fn sendfile_support(&self) -> Support {
        self.sendfile
    }

    /// Whether the kernel reported the channel closed (`POLLERR`).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Consuming read (`read(2)`), padding removed by the kernel. `Ok(0)`
    /// means nothing is readable now, not the end: the end is
    /// [`Ready::Closed`] from [`poll`](Self::poll).
    ///
    /// # Errors
    /// [`ReadError::Io`] if the read fails.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        // Data staged by a failed sendfile goes first, in order.
        if self.staged_at < self.staged_end {
            let n = (self.staged_end - self.staged_at).min(buf.len());
            buf[..n].copy_from_slice(&self.stage[self.staged_at..self.staged_at + n]);
            self.staged_at += n;
            self.bytes += n as u64;
            return Ok(n);
        }
        let n = self.raw_read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn raw_read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        loop {
            match self.file.read(buf) {
                Ok(n) => {
                    self.after_read(n == 0 && !buf.is_empty());
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.after_read(true);
                    return Ok(0);
                }
                Err(e) => return Err(ReadError::io("read", &self.path, e)),
            }
        }
    }

    /// Notes whether a read found nothing right after `poll` said there was
    /// something (the kernel does that; `poll` then must not spin).
    fn after_read(&mut self, empty: bool) {
        self.spurious = empty && self.polled_readable;
        self.empty_wakeups += u64::from(self.spurious);
        self.polled_readable = false;
    }

    /// How often `poll` reported data and the read after it found none (a
    /// quirk of the kernel's relay files).
    pub fn empty_wakeups(&self) -> u64 {
        self.empty_wakeups
    }

    /// Moves up to `max` bytes to `out`: `sendfile(2)` where the kernel
    /// supports it for this file, otherwise `read` into a staging buffer
    /// and `write`. Nothing read is lost on a write error: what was not
    /// written is kept and goes out first on the next call.
    ///
    /// # Errors
    /// [`ReadError::Io`] if reading or writing fails.
    pub fn sendfile(&mut self, out: impl AsFd, max: u64) -> Result<u64, ReadError> {
        let out = out.as_fd().as_raw_fd();
        let mut done = self.flush_staged(out, max)?;
        if done == max || self.staged_at < self.staged_end {
            return Ok(done);
        }
        if !matches!(self.sendfile, Support::No(_)) {
            while done < max {
                let want = (max - done).min(1 << 30) as usize;
                // SAFETY: both are open fds; a null offset uses (and
                // advances) the input file's position, as a read would.
                let n = unsafe {
                    libc::sendfile(out, self.file.as_raw_fd(), std::ptr::null_mut(), want)
                };
                if n > 0 {
                    self.sendfile = Support::Yes;
                    self.after_read(false);
                    done += n as u64;
                    self.bytes += n as u64;
                    continue;
                }
                if n == 0 {
                    self.after_read(done == 0);
                    return Ok(done);
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => {
                        self.after_read(done == 0);
                        return Ok(done);
                    }
                    // The kernel can't splice from this file: fall back.
                    Some(code @ (libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP))
                        if self.sendfile == Support::Unknown =>
                    {
                        self.sendfile = Support::No(code);
                        break;
                    }
                    _ if done > 0 => return Ok(done),
                    _ => return Err(ReadError::io("sendfile", &self.path, e)),
                }
            }
            if self.sendfile == Support::Yes {
                return Ok(done);
            }
        }
        // Fallback: read, then write; keep what could not be written.
        if self.stage.is_empty() {
            self.stage = vec![0; STAGING];
        }
        while done < max {
            let want = ((max - done) as usize).min(STAGING);
            let mut stage = std::mem::take(&mut self.stage);
            let got = self.raw_read(&mut stage[..want]);
            self.stage = stage;
            let got = match got {
                Ok(0) => break,
                Ok(g) => g,
                // What moved is reported; the error comes back next call.
                Err(_) if done > 0 => break,
                Err(e) => return Err(e),
            };
            self.staged_at = 0;
            self.staged_end = got;
            match self.flush_staged(out, max - done) {
                Ok(n) => done += n,
                Err(e) if done == 0 => return Err(e),
                Err(_) => return Ok(done),
            }
            if self.staged_at < self.staged_end {
                break;
            }
        }
        Ok(done)
    }

    /// Writes staged bytes to `out`; returns how many went.
    fn flush_staged(&mut self, out: i32, max: u64) -> Result<u64, ReadError> {
        let mut done = 0u64;
        while self.staged_at < self.staged_end && done < max {
            let left = &self.stage[self.staged_at..self.staged_end];
            let len = left.len().min((max - done) as usize);
            // SAFETY: `left[..len]` is initialized memory we own.
            let n = unsafe { libc::write(out, left.as_ptr().cast(), len) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if done > 0 {
                    return Ok(done);
                }
                return Err(ReadError::io("write", &self.path, e));
            }
            if n == 0 {
                break;
            }
            self.staged_at += n as usize;
            done += n as u64;
            self.bytes += n as u64;
        }
        if self.staged_at == self.staged_end {
            self.staged_at = 0;
            self.staged_end = 0;
        }
        Ok(done)
    }

    /// Waits for data (`poll(2)`), at most `timeout` (`None`: forever).
    ///
    /// [`Ready::Readable`] when the kernel reports a complete sub-buffer,
    /// [`Ready::Timeout`] when the time passed (read anyway: a partly filled
    /// sub-buffer may be waiting), [`Ready::Closed`] when the channel is
    /// closed (`POLLERR`). If the kernel reported `POLLIN` last time and the
    /// read found nothing, this waits out the timeout instead of spinning.
    ///
    /// # Errors
    /// [`ReadError::Io`] if `poll` fails.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<Ready, ReadError> {
        if self.staged_at < self.staged_end {
            return Ok(Ready::Readable);
        }
        // A timeout too long to represent is no limit.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let was_spurious = std::mem::take(&mut self.spurious);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ms = match left {
                None => -1,
                Some(l) => crate::notify::poll_ms(l),
            };
            let mut p = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ReadError::io("poll", &self.path, e));
            }
            if r == 0 {
                return Ok(Ready::Timeout);
            }
            if p.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                self.closed = true;
                return Ok(Ready::Closed);
            }
            if p.revents & libc::POLLNVAL != 0 {
                return Err(ReadError::io(
                    "poll",
                    &self.path,
                    io::Error::from_raw_os_error(libc::EBADF),
                ));
            }
            if was_spurious {
                // POLLIN again right after a read that found nothing: sleep
                // out the timeout (bounded) rather than spin, then let the
                // caller read.
                let nap = left.unwrap_or(Duration::from_millis(200));
                std::thread::sleep(nap.min(Duration::from_millis(200)));
                return Ok(Ready::Timeout);
            }
            self.polled_readable = true;
            return Ok(Ready::Readable);
        }
    }

    /// Whether `mmap(2)` of this file works, found by trying it (a relay
    /// file maps only whole, so a one-page attempt that fails with `EINVAL`
    /// still means mapping is supported). Debugfs relay files on 6.x
    /// kernels answer `ENODEV`.
    pub fn probe_mmap(&self) -> Support {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        // SAFETY: a fresh read-only shared mapping of our own fd at a
        // kernel-chosen address; it is unmapped at once and never read.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                0,
            )
        };
        if p != libc::MAP_FAILED {
            // SAFETY: `p` is the mapping made just above, of `page` bytes.
            unsafe { libc::munmap(p, page) };
            return Support::Yes;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINVAL) => Support::Yes,
            Some(code) => Support::No(code),
            None => Support::No(0),
        }
    }
}

fn open_error(path: &Path, e: io::Error) -> ReadError {
    match e.raw_os_error() {
        Some(libc::EPERM) => match lockdown_mode() {
            Some(m) if m != "none" => ReadError::Lockdown {
                path: path.to_path_buf(),
                mode: m,
            },
            Some(_) => ReadError::io("open", path, e),
            None => ReadError::Io {
                what: "open (if the kernel logged \"debugfs access is restricted\", kernel lockdown forbids relay files in debugfs)",
                path: path.to_path_buf(),
                source: e,
            },
        },
        Some(libc::EACCES) => ReadError::Io {
            what: "open (kernel relay files are readable by root only)",
            path: path.to_path_buf(),
            source: e,
        },
        _ => ReadError::io("open", path, e),
    }
}

/// A relay file of either kind behind one interface: [`AnyRelayFile::open`]
/// tells a kernel relay file (on debugfs or tracefs) from a buffer file of
/// this library and opens it with the matching reader.
#[derive(Debug)]
pub enum AnyRelayFile {
    /// A buffer file of this library.
    Shm(Box<RelayFile>),
    /// A kernel relay file.
    Kernel(KernelRelayFile),
}

impl AnyRelayFile {
    /// Opens a relay file of either kind.
    ///
    /// # Errors
    /// As [`RelayFile::open`] or [`KernelRelayFile::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<AnyRelayFile, ReadError> {
        let path = path.as_ref();
        let kernel = is_kernel_fs(path).map_err(|e| ReadError::io("statfs", path, e))?;
        Ok(if kernel {
            AnyRelayFile::Kernel(KernelRelayFile::open(path)?)
        } else {
            AnyRelayFile::Shm(Box::new(RelayFile::open(path)?))
        })
    }

    /// Which kind of relay file this is.
    pub fn kind(&self) -> RelayKind {
        match self {
            AnyRelayFile::Shm(_) => RelayKind::Shm,
            AnyRelayFile::Kernel(_) => RelayKind::Kernel,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        match self {
            AnyRelayFile::Shm(f) => f.path(),
            AnyRelayFile::Kernel(f) => f.path(),
        }
    }

    /// Consuming read, padding removed; `Ok(0)`: nothing readable now.
    ///
    /// # Errors
    /// As the kind's `read`.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        match self {
            AnyRelayFile::Shm(f) => RelayFile::read(f, buf),
            AnyRelayFile::Kernel(f) => f.read(buf),
        }
    }

    /// Moves up to `max` bytes to `out`, consuming only what was written.
    ///
    /// # Errors
    /// As the kind's `sendfile`.
    pub fn sendfile(&mut self, out: impl AsFd, max: u64) -> Result<u64, ReadError> {
        match self {
            AnyRelayFile::Shm(f) => f.sendfile(out, max),
            AnyRelayFile::Kernel(f) => f.sendfile(out, max),
        }
    }

    /// Waits for data, the end, or the timeout.
    ///
    /// # Errors
    /// As the kind's `poll`.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<Ready, ReadError> {
        match self {
            AnyRelayFile::Shm(f) => f.poll(timeout),
            AnyRelayFile::Kernel(f) => f.poll(timeout),
        }
    }
}
