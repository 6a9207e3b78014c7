//! Error types, one per operation.
//!
//! An error's message says what failed; the error that caused it (an
//! `io::Error`, a [`FormatError`]) is its [`source`](std::error::Error::source),
//! not repeated in the message, so a chain printer (`anyhow`'s `{:#}`, or
//! walking `source()`) prints each cause once.

use std::io;
use std::path::PathBuf;

/// Something in a buffer file, or a requested buffer shape, is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The sub-buffer size is not a power of two in the accepted range.
    #[error("sub-buffer size {0} is not a power of two between 64 bytes and 1 GiB")]
    SubbufSize(u64),
    /// The sub-buffer count is zero or too large.
    #[error("sub-buffer count {0} is not between 1 and 1048576")]
    SubbufCount(u64),
    /// The buffer (size times count) is larger than 64 GiB or overflows.
    #[error("{1} sub-buffers of {0} bytes make a buffer larger than 64 GiB")]
    BufferSize(u64, u64),
    /// The header reserve does not leave room for a record.
    #[error("a {0}-byte sub-buffer header leaves no room in a {1}-byte sub-buffer")]
    HeaderReserve(u64, u64),
    /// The page size is not usable.
    #[error("page size {0} is not supported")]
    PageSize(u64),
    /// The file does not start with the relay buffer magic.
    #[error("not a relay buffer file (magic {0:#018x})")]
    Magic(u64),
    /// The file has a format version this library does not read.
    #[error(
        "relay buffer format version {0} is not supported (this library reads version {ours})",
        ours = crate::layout::VERSION
    )]
    Version(u64),
    /// The file is shorter than its header says.
    #[error("relay buffer file truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// Size the header calls for.
        expected: u64,
        /// Size of the file.
        actual: u64,
    },
    /// A recorded offset disagrees with the sizes.
    #[error("relay buffer header is inconsistent: {what} is {got}, expected {want}")]
    Inconsistent {
        /// Which field.
        what: &'static str,
        /// Its value.
        got: u64,
        /// What the sizes imply.
        want: u64,
    },
    /// Shared state read while reading points outside the buffer.
    #[error("relay buffer state is corrupt: {0}")]
    Corrupt(&'static str),
    /// The channel's buffer count is zero or more than
    /// [`MAX_BUFFERS`](crate::layout::MAX_BUFFERS).
    #[error("buffer count {0} is not between 1 and {max}", max = crate::layout::MAX_BUFFERS)]
    BufferCount(u64),
    /// The buffer's CPU is not one of the channel's buffers.
    #[error("buffer of CPU {cpu} in a channel of {n_buffers} buffers")]
    BufferCpu {
        /// The CPU the header names.
        cpu: u64,
        /// The channel's buffer count.
        n_buffers: u64,
    },
}

/// Error from [`relay_open`](crate::relay_open) / [`ChannelBuilder::open`](crate::ChannelBuilder::open).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// An argument is out of range.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The channel or base file name is not a plain file name.
    #[error("invalid name {0:?}: it must be a non-empty file name without '/' or NUL, and not '.' or '..'")]
    Name(String),
    /// The channel or base file name is longer than the limit.
    #[error("name {name:?} is too long: {len} bytes, at most {max}")]
    NameTooLong {
        /// The name.
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The longest name accepted.
        max: usize,
    },
    /// A live producer already has this channel open.
    #[error("channel {path} is already open by a live producer (pid {pid})")]
    Busy {
        /// Channel directory.
        path: PathBuf,
        /// Its producer.
        pid: u64,
    },
    /// The channel directory holds files of a producer that died, and the
    /// caller asked to refuse rather than replace them.
    #[error("channel {0} holds buffers left by a producer that is gone; open with Stale::Replace to replace them")]
    Stale(PathBuf),
    /// A directory to use is a symbolic link (directories in shared places
    /// are opened without following them).
    #[error("{0} is a symbolic link; relay directories are opened without following symbolic links: use the directory itself")]
    Symlink(PathBuf),
    /// A directory to use belongs to another user (not root): its owner
    /// could swap the files in it.
    #[error("{path} belongs to uid {owner}, not to you (uid {euid}) nor root, so it is refused: set RELAYFS_DIR (or ChannelBuilder::dir) to a directory of your own")]
    ForeignOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        euid: u32,
    },
    /// A directory to use is writable by group or others and not sticky:
    /// they could replace the files in it.
    #[error("{path} is writable by group or others without the sticky bit (mode {mode:o}), so anyone could replace files in it: chmod go-w (or +t) it, or set RELAYFS_DIR (or ChannelBuilder::dir) to a directory of your own")]
    Insecure {
        /// The directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Something with the name of a buffer file (or its wakeup FIFO) is not
    /// one of our relay buffers; it is left alone.
    #[error("{path} is not a relay buffer of ours ({reason}); it was left alone: remove it yourself, or use another channel name or directory")]
    NotOurs {
        /// The file.
        path: PathBuf,
        /// Why it is not ours.
        reason: String,
    },
    /// The buffer space could not be allocated (e.g. /dev/shm is full).
    #[error("cannot allocate {size} bytes for {path} (is the filesystem full?)")]
    NoSpace {
        /// The buffer file.
        path: PathBuf,
        /// Bytes asked for.
        size: u64,
        /// The error.
        source: io::Error,
    },
    /// A file system call failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Why a record was not written. Every such record is counted in the
/// buffer's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The record needed a sub-buffer switch that was refused: counted in
    /// `dropped_full`. In no-overwrite mode, because every sub-buffer is
    /// full (the reader hasn't consumed the oldest), or the `subbuf_start`
    /// callback refused. In **both** modes, because the sub-buffer to reuse
    /// still has a reservation of its previous lap that is not committed: a
    /// writer was preempted (or migrated) between reserve and commit while
    /// the ring came all the way round. Overwrite mode never overwrites
    /// bytes a writer may still be copying, so it refuses until that writer
    /// commits. Small rings and more writer threads than CPUs make this
    /// frequent (see `docs/PERFORMANCE.md`).
    #[error("buffer full: record dropped")]
    Full,
    /// The record is longer than a sub-buffer less its header reserve:
    /// counted in `dropped_toobig`.
    #[error("record of {0} bytes is larger than a sub-buffer")]
    TooBig(usize),
    /// The buffer's shared state was found corrupt (something other than
    /// the protocol wrote its head or descriptors, e.g. a process with write
    /// access to the file): the buffer is marked corrupt and every write to
    /// it is refused at once, counted in `dropped_corrupt`, until
    /// [`Channel::reset`](crate::Channel::reset).
    #[error("buffer state corrupt: record dropped")]
    Corrupt,
    /// The channel was closed ([`Channel::close`](crate::Channel::close)):
    /// the record is refused, counted in `dropped_closed`.
    #[error("channel closed: record dropped")]
    Closed,
}

/// Error from the reader side.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file is not a valid relay buffer, or its state is corrupt.
    #[error("bad relay buffer file {path}")]
    Format {
        /// The buffer file.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
    /// The path is not a regular file (a symbolic link, a FIFO, a
    /// directory…). Relay buffer files are opened without following
    /// symbolic links; the message says so only for a link.
    #[error("{path} is {kind}, not a regular file{}", symlink_note(kind))]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Another reader holds this buffer.
    #[error("{0}: another reader has this buffer open (one reader per buffer)")]
    Busy(PathBuf),
    /// A system call failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `Mapping::consume` was given a sub-buffer that is not the one
    /// `Mapping::ready` last returned, or one already consumed.
    #[error("{path}: sub-buffer {ordinal} is not the one the mapping reader holds (call Mapping::ready, and consume each sub-buffer once)")]
    NotReady {
        /// The buffer file.
        path: PathBuf,
        /// Ordinal of the sub-buffer given.
        ordinal: u64,
    },
    /// Look-ahead reading ([`RelayFile::peek_subbuf`](crate::RelayFile::peek_subbuf))
    /// was asked of an overwrite-mode buffer, where a writer may reuse a
    /// sub-buffer that is not consumed yet.
    #[error("{0}: the buffer is in overwrite mode; reading ahead of the consumed position needs a no-overwrite buffer")]
    Overwrite(PathBuf),
    /// A consuming read would hand back a sub-buffer that a live
    /// [`SubbufView`](crate::SubbufView) of this reader shows, and the
    /// producer could then rewrite the bytes under the view.
    #[error("{path}: sub-buffer {seq} is shown by a live SubbufView; drop the view before reading or consuming it")]
    Viewed {
        /// The buffer file.
        path: PathBuf,
        /// The oldest sub-buffer a live view shows.
        seq: u64,
    },
    /// Kernel lockdown forbids opening debugfs relay files.
    #[error("{path}: the kernel is in lockdown ({mode}), which forbids opening debugfs relay files (the kernel logs \"debugfs access is restricted\"); boot with lockdown=none where policy allows, or read the data another way")]
    Lockdown {
        /// The relay file.
        path: PathBuf,
        /// The lockdown mode (`integrity` or `confidentiality`).
        mode: String,
    },
}

impl ReadError {
    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        ReadError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Why a symbolic link is refused, said only for one.
fn symlink_note(kind: &str) -> &'static str {
    if kind == "a symbolic link" {
        ": relay buffer files are opened without following symbolic links"
    } else {
        ""
    }
}
