//! The client callbacks (the kernel's `struct rchan_callbacks`), as a trait
//! with default methods.

use std::io;
use std::path::PathBuf;

use crate::dir::{ChannelDir, UnpublishedFile};

pub use crate::buffer::SwitchInfo;

/// What happens when a writer needs a new sub-buffer and the reader has not
/// consumed it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The switch is refused and the record dropped and counted (the
    /// kernel's default `subbuf_start`).
    #[default]
    NoOverwrite,
    /// The switch happens and the oldest sub-buffer is reused ("flight
    /// recorder"); what no reader saw is counted as overwritten. Except when
    /// that sub-buffer still holds an uncommitted reservation of its
    /// previous lap (a writer preempted between reserve and commit while the
    /// ring came round): then the switch is refused and the record dropped,
    /// counted in `dropped_full` ([`WriteError::Full`](crate::WriteError::Full)),
    /// until that writer commits.
    Overwrite,
}

/// The buffer a callback is about.
#[derive(Debug, Clone)]
pub struct BufferInfo {
    /// CPU of the buffer (0 for a global buffer).
    pub cpu: usize,
    /// Path of its relay file.
    pub path: PathBuf,
    /// Whether it is the channel's one global buffer.
    pub global: bool,
}

/// The client's callbacks (`struct rchan_callbacks`). Every method has a
/// default; [`DefaultCallbacks`] and [`OverwriteCallbacks`] are the two
/// ready-made sets.
///
/// Callbacks run on the producer's side: `subbuf_start` and `subbuf_header`
/// in the writing thread at a sub-buffer switch, the others from
/// `relay_open`, the switch path and `relay_close`.
pub trait Callbacks: Send + Sync + 'static {
    /// The channel's mode. Readers need it to know whether a sub-buffer can
    /// change under them, so it is fixed at `relay_open`.
    fn mode(&self) -> Mode {
        Mode::NoOverwrite
    }

    /// Whether a new sub-buffer may be started (the kernel's `subbuf_start`
    /// return value). Return `false` to refuse the switch: the record that
    /// asked for it is dropped and counted in `dropped_full`.
    ///
    /// Unlike the kernel's, this callback decides before the switch is won
    /// (in user space two writers can race for it), so it may be called more
    /// than once for one switch and must not have side effects. In
    /// no-overwrite mode a full buffer is refused whatever it returns, so
    /// that a reader never sees a sub-buffer change under it.
    ///
    /// The default is the kernel's: refuse when the buffer is full
    /// (`relay_buf_full`), unless in overwrite mode.
    fn subbuf_start(&self, buf: &BufferInfo, info: &SwitchInfo) -> bool {
        let _ = buf;
        info.overwrite || !info.full
    }

    /// Fills in the header reserved at the start of a new sub-buffer
    /// (`subbuf_start_reserve` bytes), once the switch is won. Called
    /// exactly once per sub-buffer opened.
    fn subbuf_header(&self, buf: &BufferInfo, info: &SwitchInfo, header: &mut [u8]) {
        let _ = (buf, info, header);
    }

    /// A reader mapped the buffer (`buf_mapped`); `mapped` is the number of
    /// live mappings. Noticed by the producer at its next sub-buffer switch or
    /// flush.
    fn buf_mapped(&self, buf: &BufferInfo, mapped: u64) {
        let _ = (buf, mapped);
    }

    /// A reader unmapped the buffer (`buf_unmapped`).
    fn buf_unmapped(&self, buf: &BufferInfo, mapped: u64) {
        let _ = (buf, mapped);
    }

    /// Creates the relay file `filename` in the channel directory `dir`
    /// (`create_buf_file`), not yet visible under its name: the channel
    /// sizes it, writes its header and then publishes it as `filename` in
    /// one step (a reader never sees a half-made buffer). Set `*is_global`
    /// to ask for one buffer shared by all CPUs; it is asked for the first
    /// buffer only.
    ///
    /// The default is [`ChannelDir::create_unpublished`] with `mode` (0600
    /// unless the channel says otherwise). A custom hook calls it too (with
    /// its own mode, say) and may do more with the file before returning it.
    ///
    /// # Errors
    /// Any I/O error fails `relay_open`.
    fn create_buf_file(
        &self,
        dir: &ChannelDir,
        filename: &str,
        mode: u32,
        is_global: &mut bool,
    ) -> io::Result<UnpublishedFile> {
        let _ = is_global;
        dir.create_unpublished(filename, mode)
    }

    /// Removes the relay file `filename` from the channel directory `dir`
    /// at `relay_close` (`remove_buf_file`). The channel has checked that
    /// the name still is its buffer. Readers that have it open keep reading
    /// it; its memory goes with the last of them.
    ///
    /// # Errors
    /// Reported by `relay_close`.
    fn remove_buf_file(&self, dir: &ChannelDir, filename: &str) -> io::Result<()> {
        dir.unlink(filename)
    }
}

/// The kernel's default callbacks: no-overwrite mode, files removed at close.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultCallbacks;

impl Callbacks for DefaultCallbacks {}

/// Overwrite ("flight recorder") mode: the oldest sub-buffer is reused when
/// the buffer is full.
#[derive(Debug, Clone, Copy, Default)]
pub struct OverwriteCallbacks;

impl Callbacks for OverwriteCallbacks {
    fn mode(&self) -> Mode {
        Mode::Overwrite
    }
}
