//! # relayfs-tracing: `tracing` events into a relay channel
//!
//! [`RelayLayer`] is a [`tracing_subscriber::Layer`] that writes every event,
//! and every span's creation, later values, enter, exit and close, as one
//! compact binary record into a relayfs channel, on the emitting thread: no
//! formatting of numbers, no queue, no worker thread. A reader in another
//! process (`relayfs record CHANNEL OUT`) saves the buffers, and
//! `relayfs decode OUT` (this crate's [`decode`] module) merges them into
//! one time-ordered stream printed like `tracing-subscriber`'s `fmt` layer,
//! or as JSON lines.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tracing_subscriber::prelude::*;
//!
//! let chan = Arc::new(relayfs::Channel::builder("myapp").open()?);
//! tracing_subscriber::registry()
//!     .with(relayfs_tracing::RelayLayer::new(chan.clone()))
//!     .init();
//! // tracing::info!(a = 1, b = "x", "message");
//! chan.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Records
//!
//! Each record is one framed record of the library ([`relayfs::frame`]:
//! 8-byte header, then an 8-byte `CLOCK_MONOTONIC` timestamp in ns, then
//! the payload below), written with [`relayfs::Channel::write_record_timed_with`]
//! into the buffer of the CPU the thread runs on. Integers marked *varint*
//! are LEB128 (7 bits a byte, low first, at most 10 bytes); *str* is a
//! varint length and that many UTF-8 bytes. The payload's first byte is its
//! kind:
//!
//! | kind | record | then |
//! |---|---|---|
//! | 1 | callsite | id varint, kind u8 (0 event, 1 span), level u8 (0 TRACE … 4 ERROR), line+1 varint (0: none), name str, target str, module path str, file str, field count varint, each field name str |
//! | 2 | event | callsite id varint, thread id varint, values |
//! | 3 | new span | callsite id varint, thread id varint, span id varint, parent span id varint (0: none), values |
//! | 4, 5, 6 | enter, exit, close | thread id varint, span id varint |
//! | 7 | span values recorded later | thread id varint, span id varint, values |
//! | 8 | lost | losses: count varint, then for each: buffer (CPU) varint, events (and span records) refused there varint, callsite (and anchor) records refused there varint |
//! | 9 | clock | `CLOCK_MONOTONIC` ns varint, `CLOCK_REALTIME` ns varint |
//! | 10 | lost, then a record | losses as in 8, then a whole record of another kind (its kind byte first) |
//! | 11 | anchor | the layer's clock ns varint, `CLOCK_MONOTONIC` ns varint, read together |
//!
//! *Values* run to the end of the payload, each a field index varint (its
//! place in the callsite's field names), a tag byte and the value: 0 `i64`
//! (zigzag varint), 1 `u64` (varint), 2 `i128` and 3 `u128` (16 bytes LE),
//! 4 `f64` (8 bytes LE), 5 `false`, 6 `true` (nothing), 7 string (str),
//! 8 a value's `Debug` text (str; the message is one), 9 an error's
//! `Display` text with its sources' after `": "` (str).
//!
//! `info!(a = 1, b = "x", "message")` is thus 8 + 8 bytes of framing and
//! a 22-byte payload: kind, callsite id, a thread id of up to 3 bytes, and
//! `message` (2 + 1 + 7), `a` (3), `b` (4).
//!
//! **Callsites.** The strings that never change for a callsite (level,
//! target, name, file, line, field names) are written once per channel, in
//! a callsite record, when the callsite is registered, and events refer to
//! it by its id (ids count from 1 in the order callsites are first seen).
//! A callsite record the channel refuses is written again before the next
//! event of that callsite. The callsite record is written by the same
//! thread before any event that uses it, so its timestamp is earlier and
//! the time-ordered merge meets it first, whichever buffer each is in. If
//! it was lost all the same (overwritten, or the decoder starts in the
//! middle of a rotated recording), the decoder prints `unknown callsite N`
//! and the values by position. The message is the one string written with
//! every event: `tracing` hands it over as `format_args!`, a value whose
//! format string a layer cannot see.
//!
//! **Threads.** The Linux thread id (`gettid`, asked once per thread and
//! kept in a thread-local), the id `ps -L`, `top -H` and `perf` show.
//!
//! **Losses.** A write the channel refuses (a full buffer in no-overwrite
//! mode, a closed channel) is counted by the channel in its counters, and
//! by the layer against the buffer of the CPU the thread is on just after.
//! The next record the layer writes, from any thread (one load of a shared
//! counter on the fast path), carries the counts in front of it, in the
//! same reservation (kind 10), so the decoder shows `N events lost on cpuK`
//! at the place they were lost, and a full buffer refuses one record per
//! event, not a lost record and then the event. Refused callsite records
//! are counted apart (they are written again). [`RelayLayer::flush_lost`] writes
//! the ones still pending.
//!
//! **The clock.** Where the kernel keeps time with the TSC (its
//! clocksource is `tsc`: it found the TSC invariant and synchronised across
//! CPUs) and the CPU says its TSC is invariant, timestamps are the TSC
//! scaled to nanoseconds by a rate calibrated against `CLOCK_MONOTONIC`
//! (`quanta`, once a process, a few milliseconds) from a `CLOCK_MONOTONIC`
//! reading taken with a TSC reading then: every buffer and every layer of
//! the process on one clock, so the buffers merge in its order. Elsewhere,
//! with `RELAYFS_TRACING_CLOCK=monotonic` in the environment, without the
//! `tsc` feature (on by default), or with
//! [`RelayLayer::with_monotonic_clock`] (for a channel shared with other
//! timed writers), they are `CLOCK_MONOTONIC` itself, read through the
//! vDSO. The scaled TSC drifts from `CLOCK_MONOTONIC` (NTP slews the one,
//! not the other; the calibrated rate has an error), so the layer writes
//! anchor records (kind 11: its clock and `CLOCK_MONOTONIC` read together,
//! the closest pair of five tries) when it is made, then 10 ms later,
//! the gap doubling up to a second, then every second of its clock
//! (checked after each write: one relaxed load and a compare), and in
//! [`RelayLayer::flush_lost`]. The decoder maps each timestamp to
//! `CLOCK_MONOTONIC` by linear interpolation between the anchors around
//! it (extrapolating from the last two after the last one) before it
//! prints it. A recording without anchors keeps its timestamps. The clock
//! record (kind 9, `CLOCK_MONOTONIC` and `CLOCK_REALTIME` read together)
//! lets the decoder print wall-clock times.
//!
//! ## Cost
//!
//! The `emit` benchmark measures the emitting thread's cost of
//! `info!(a = 1, b = "x", "message")` with this layer, with
//! `tracing-appender`'s non-blocking writer and `fmt`, and with `fmt` into
//! a file; see `docs/DESIGN.md` ("Tracing records") for the numbers and
//! what the time goes to.

#![deny(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]

mod clock;
#[cfg(feature = "decode")]
pub mod decode;
mod layer;
pub mod wire;

pub use layer::RelayLayer;
