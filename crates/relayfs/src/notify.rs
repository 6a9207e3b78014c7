//! Waking readers: one FIFO (named pipe) per buffer, beside the buffer file.
//!
//! The producer holds the FIFO open read-write and non-blocking; when a
//! sub-buffer completes and the reader has said it is about to sleep (the
//! `WAITING` word of the reader page), the completing writer writes one byte.
//! The reader polls the FIFO, so a relay file works with `poll`/`epoll` (and
//! so with mio and tokio). When the producer closes the channel, or dies, the
//! last writer of the FIFO is gone and the reader's poll reports `POLLHUP`.
//!
//! This is the one system call the write path can make, and only at a
//! sub-buffer boundary with a reader asleep (LTTng-UST wakes its consumer the
//! same way).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::OFlags;

use crate::dir::{ChannelDir, Ident};

/// Name of the wakeup FIFO of the buffer file called `buffer_name`:
/// `.<buffer_name>.wake`, beside it.
pub(crate) fn fifo_name(buffer_name: &str) -> String {
    format!(".{buffer_name}.wake")
}

/// Path of the wakeup FIFO beside a buffer file.
pub fn wake_fifo_path(buffer_path: &Path) -> PathBuf {
    let name = buffer_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    buffer_path.with_file_name(fifo_name(&name))
}

/// Opens `path` read-only and non-blocking, without following a symbolic
/// link, and makes sure it is a FIFO (a symbolic link or another kind of
/// file in its place is refused).
fn open_fifo(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.file_type().is_fifo() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a FIFO"));
    }
    Ok(f)
}

/// The producer's end of a buffer's wakeup FIFO.
#[derive(Debug)]
pub(crate) struct Notifier {
    fifo: File,
}

impl Notifier {
    /// Creates the FIFO `name` in `dir` with `mode` (less the umask), which
    /// must not exist yet, and opens it read-write and non-blocking. Returns
    /// it with the FIFO's identity (to remove it later only if it is still
    /// this one).
    pub(crate) fn create(dir: &ChannelDir, name: &str, mode: u32) -> io::Result<(Notifier, Ident)> {
        dir.mkfifo(name, mode)?;
        let made = (|| {
            let fifo = dir.open_at(name, OFlags::RDWR | OFlags::NONBLOCK)?;
            let meta = fifo.metadata()?;
            if !meta.file_type().is_fifo() {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a FIFO"));
            }
            Ok((Notifier { fifo }, Ident::of(&meta)))
        })();
        if made.is_err() {
            let _ = dir.unlink(name);
        }
        made
    }

    /// Writes one byte; a full pipe (`EAGAIN`) means a wakeup is pending
    /// already.
    pub(crate) fn wake(&self) {
        wake_fd(self.fifo.as_raw_fd());
    }

    /// The FIFO's descriptor, for `wake_fd` (valid while `self` lives).
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fifo.as_raw_fd()
    }
}

/// `Notifier::wake` by descriptor: one non-blocking `write(2)` of one byte,
/// async-signal-safe. The caller makes sure `fd` is still the FIFO's.
pub(crate) fn wake_fd(fd: std::os::fd::RawFd) {
    let b = [1u8];
    // SAFETY: writing one byte from a valid buffer; the caller guarantees
    // `fd` is the open FIFO (see `Channel`'s `wake_reader`).
    let _ = unsafe { libc::write(fd, b.as_ptr().cast(), 1) };
}

/// What a wait on the FIFO ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A byte arrived (or the wait was interrupted): look again.
    Woken,
    /// The timeout passed.
    Timeout,
    /// No writer holds the FIFO any more: the producer closed or died.
    Hangup,
}

/// The reader's end of a buffer's wakeup FIFO.
#[derive(Debug)]
pub(crate) struct Waiter {
    fifo: File,
}

impl Waiter {
    /// Opens the FIFO read-only and non-blocking; a symbolic link or a file
    /// that is not a FIFO is refused.
    pub(crate) fn open(path: &Path) -> io::Result<Waiter> {
        Ok(Waiter {
            fifo: open_fifo(path)?,
        })
    }

    /// Reads and discards every pending wakeup byte.
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: reading into a valid buffer of its length.
            let n =
                unsafe { libc::read(self.fifo.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            // A read of less than asked took all there was (a pipe hands
            // over what it holds): no second call to hear EAGAIN. A byte
            // written meanwhile stays for the next wait, which then returns
            // at once: a spurious wakeup, never a lost one.
            if n <= 0 || (n as usize) < buf.len() {
                break;
            }
        }
    }

    /// `poll(2)` for a wakeup byte, at most `timeout` (None: forever).
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> io::Result<Wake> {
        let mut pfd = libc::pollfd {
            fd: self.fifo.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.map_or(-1, poll_ms);
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Wake::Woken)
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(Wake::Timeout);
        }
        if pfd.revents & libc::POLLIN != 0 {
            self.drain();
            return Ok(Wake::Woken);
        }
        Ok(Wake::Hangup)
    }
}

impl AsFd for Waiter {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fifo.as_fd()
    }
}

/// `timeout` as `poll(2)`'s milliseconds, rounded up: rounded down, the
/// last fraction of a millisecond of every wait became `poll(.., 0)` calls
/// in a loop, a busy wait that burned about a tenth of a CPU in a reader
/// polling an idle buffer with a 10 ms timeout.
pub(crate) fn poll_ms(timeout: Duration) -> i32 {
    timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_shorter_than_a_millisecond_sleeps_rather_than_spins() {
        assert_eq!(poll_ms(Duration::ZERO), 0);
        assert_eq!(poll_ms(Duration::from_nanos(1)), 1);
        assert_eq!(poll_ms(Duration::from_micros(400)), 1);
        assert_eq!(poll_ms(Duration::from_millis(10)), 10);
        assert_eq!(poll_ms(Duration::from_micros(9_400)), 10);
        assert_eq!(poll_ms(Duration::MAX), i32::MAX);
    }

    #[test]
    fn wake_wait_and_hangup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".x.wake");
        let cd = ChannelDir::open(dir.path()).unwrap();
        let (n, _) = Notifier::create(&cd, ".x.wake", 0o600).unwrap();
        let w = Waiter::open(&p).unwrap();
        assert_eq!(
            w.wait(Some(Duration::from_millis(10))).unwrap(),
            Wake::Timeout
        );
        n.wake();
        n.wake();
        assert_eq!(w.wait(Some(Duration::from_secs(5))).unwrap(), Wake::Woken);
        // Both bytes were drained: nothing pending.
        assert_eq!(
            w.wait(Some(Duration::from_millis(10))).unwrap(),
            Wake::Timeout
        );
        drop(n);
        assert_eq!(w.wait(Some(Duration::from_secs(5))).unwrap(), Wake::Hangup);
    }

    #[test]
    fn the_reader_refuses_a_symlink_or_a_non_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let cd = ChannelDir::open(dir.path()).unwrap();
        let (_n, _) = Notifier::create(&cd, ".z.wake", 0o600).unwrap();
        let link = dir.path().join(".l.wake");
        std::os::unix::fs::symlink(dir.path().join(".z.wake"), &link).unwrap();
        assert!(Waiter::open(&link).is_err());
        let plain = dir.path().join(".p.wake");
        std::fs::write(&plain, b"").unwrap();
        assert!(Waiter::open(&plain).is_err());
        assert!(Waiter::open(&dir.path().join(".z.wake")).is_ok());
    }

    #[test]
    fn a_full_pipe_never_blocks_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let cd = ChannelDir::open(dir.path()).unwrap();
        let (n, _) = Notifier::create(&cd, ".y.wake", 0o600).unwrap();
        for _ in 0..200_000 {
            n.wake(); // far more than a pipe holds
        }
    }
}
