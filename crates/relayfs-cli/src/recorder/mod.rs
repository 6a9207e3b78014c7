//! The recorder behind `relayfs record` and `relayfs blktrace`:
//!
//! ```text
//!   sources                engine                    outputs
//!   relayfs buffer  --\    one reader thread   --\   file / rotating files
//!   (RelayFile)        >-- per buffer: whole    >--  (exact resume) / device
//!   kernel relay    --/    sub-buffers, stops   --/  (Output trait; Retry on
//!   file (debugfs)         status line               a full filesystem)
//!                              |
//!                              v
//!                           report: typed summary (relayfs-record.json,
//!                           --json, text), memory, exit code
//! ```
//!
//! - [`config`]: the settings, checked once ([`config::RecordConfig`]);
//! - [`source`]: finding a channel's buffers and moving each into its output;
//! - [`output`]: where a buffer's data goes, and the full-filesystem policy;
//! - [`engine`]: the threads, the stop conditions, the summary;
//! - [`report`]: [`report::End`], the status line, the summaries.

pub(crate) mod config;
pub(crate) mod engine;
pub(crate) mod output;
pub(crate) mod report;
pub(crate) mod source;
