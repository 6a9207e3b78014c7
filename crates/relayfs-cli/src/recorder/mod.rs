//! The recorder behind `relayfs record` and `relayfs blktrace`:
//!
//! ```text
//!   sources (Source)       engine                    outputs (Output)
//!   relayfs buffer  --\    one reader thread   --\   sink: a descriptor
//!   (RelaySource)      >-- per buffer running  >--   (Sink::Fd, sendfile
//!   kernel relay    --/    pump: whole sub-     --/  into it: FileOutput,
//!   file (KernelSource)    buffers, counters         rotating, resumable,
//!                              |                     a device) or whole
//!                              |                     units of bytes
//!                              |                     (Sink::Bytes); Retry
//!                              v                     on a full filesystem
//!                           report: typed summary (relayfs-record.json,
//!                           --json, text), memory, exit code
//! ```
//!
//! - [`config`]: the settings, checked once ([`config::RecordConfig`]);
//! - [`source`]: finding a channel's buffers, and the two kinds of source;
//! - [`output`]: where a buffer's data goes (what an output takes it as),
//!   and the full-filesystem policy;
//! - [`engine`]: the reader threads and the one loop, [`engine::pump`];
//! - [`relay`]: recording a relayfs channel (stops, summary);
//! - [`kernel`]: recording a kernel relay channel (also for blktrace);
//! - [`report`]: [`report::End`], the status line, the summaries.

pub(crate) mod config;
pub(crate) mod engine;
pub(crate) mod kernel;
pub(crate) mod nats;
pub(crate) mod output;
pub(crate) mod relay;
pub(crate) mod report;
pub(crate) mod source;
pub(crate) mod spool;
