//! # relayfs: the Linux relay interface in user space
//!
//! Relay moves large, bursty streams of data from a producer that must never
//! be slowed down to readers in other processes, without caring what the data
//! is. This crate is the kernel's relay interface (`kernel/relay.c`,
//! `Documentation/filesystems/relay.rst`) rebuilt over shared memory:
//!
//! * A [`Channel`] has one buffer per possible CPU (or one global buffer);
//!   each buffer is a ring of sub-buffers in a regular file, by default
//!   `/dev/shm/relayfs/<channel>/cpuN`.
//! * Producers write records with [`Channel::write`] (`relay_write`) or
//!   [`Channel::reserve`] (`relay_reserve`) into the buffer of the CPU they
//!   run on. A record never spans two sub-buffers; the unused tail of a
//!   sub-buffer is padding.
//! * Readers [`RelayFile::open`] a buffer file from any process and
//!   [`read`](RelayFile::read), [`map`](RelayFile::map),
//!   [`sendfile`](RelayFile::sendfile) and [`poll`](RelayFile::poll) it, as
//!   they would a kernel relay file.
//! * No-overwrite mode (the default) drops and counts records when a buffer
//!   is full; overwrite mode ([`OverwriteCallbacks`]) reuses the oldest
//!   sub-buffer. Every record offered is delivered once or counted as lost
//!   ([`BufferStats`]).
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! use relayfs::{Channel, RelayFile};
//!
//! let chan = Channel::builder("example").dir(dir.path()).subbuf_size(4096).n_subbufs(4).open()?;
//! let mut reader = RelayFile::open(chan.buffer_path(0))?;
//! chan.write_cpu(0, b"hello, relay")?;
//! chan.flush();
//! let mut buf = [0u8; 64];
//! let n = reader.read(&mut buf)?;
//! assert_eq!(&buf[..n], b"hello, relay");
//! chan.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The file format and the lock-free protocol are described in
//! `docs/DESIGN.md`.

#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "tokio")]
mod async_reader;
mod buffer;
mod callbacks;
mod channel;
pub mod cpu;
mod cursor;
mod dir;
mod error;
pub mod frame;
pub mod kernel;
pub mod layout;
mod lifecycle;
mod notify;
mod reader;
mod readers;
mod rseq;
mod shm;
mod stats;
mod sync;

#[cfg(feature = "tokio")]
pub use async_reader::{AsyncChannelRecords, AsyncReaders, AsyncRelayFile};
pub use buffer::SwitchInfo;
pub use callbacks::{BufferInfo, Callbacks, DefaultCallbacks, Mode, OverwriteCallbacks};
pub use channel::{
    relay_dir, relay_open, Channel, ChannelBuilder, Reservation, Stale, DEFAULT_N_SUBBUFS,
    DEFAULT_RELAY_DIR, DEFAULT_SUBBUF_SIZE, RELAYFS_DIR_ENV,
};
pub use cursor::{Handoff, LostHandoff};
pub use dir::{ChannelDir, UnpublishedFile};
pub use error::{FormatError, OpenError, ReadError, WriteError};
pub use frame::{
    ChannelRecords, Decoder, FrameError, Merge, OwnedRecord, Record, RecordReservation, Records,
};
pub use kernel::{AnyRelayFile, KernelRelayFile, RelayKind};
pub use layout::{BufferHeader, Geometry};
pub use notify::wake_fifo_path;
pub use reader::{BufferStatus, Mapping, PeekedSubbuf, Ready, ReadySubbuf, RelayFile, SubbufView};
pub use readers::{ChannelError, ReadAny, Readers, Readiness};
pub use stats::BufferStats;

/// Sums the counters of several buffers (the same as `.sum()` over them:
/// [`BufferStats`] is [`Sum`](std::iter::Sum)).
pub fn sum_stats<'a>(stats: impl IntoIterator<Item = &'a BufferStats>) -> BufferStats {
    stats.into_iter().sum()
}

#[cfg(loom)]
#[doc(hidden)]
pub mod loom_support;
