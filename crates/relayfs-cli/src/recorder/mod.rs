//! The recorder behind `relayfs record` and `relayfs blktrace`:
//!
//! ```text
//!   sources (Source)       engine                    outputs (Output)
//!   relayfs buffer  --\    one reader thread   --\   file / rotating files
//!   (RelaySource)      >-- per buffer running  >--   (exact resume) / device
//!   kernel relay    --/    pump: whole sub-     --/  (FileOutput); Retry on
//!   file (KernelSource)    buffers, counters         a full filesystem
//!                              |
//!                              v
//!                           report: typed summary (relayfs-record.json,
//!                           --json, text), memory, exit code
//! ```
//!
//! - [`config`]: the settings, checked once ([`config::RecordConfig`]);
//! - [`source`]: finding a channel's buffers, and the two kinds of source;
//! - [`output`]: where a buffer's data goes, and the full-filesystem policy;
//! - [`engine`]: the reader threads and the one loop, [`engine::pump`];
//! - [`relay`]: recording a relayfs channel (stops, summary);
//! - [`kernel`]: recording a kernel relay channel (also for blktrace);
//! - [`report`]: [`report::End`], the status line, the summaries.

pub(crate) mod config;
pub(crate) mod engine;
pub(crate) mod kernel;
pub(crate) mod output;
pub(crate) mod relay;
pub(crate) mod report;
pub(crate) mod source;
