//! What a recording tells: how each buffer's recording ended ([`End`]), the
//! live counters and status line, the recorder's own memory, and the typed
//! summaries both recorders write to `OUT/relayfs-record.json` and print
//! ([`RecordSummary`] for relayfs channels, [`KernelSummary`] for kernel
//! relay channels and blktrace).
//!
//! The summaries are written through `serde_json::Value`, whose objects keep
//! their keys sorted: the file and `--json` list the keys in that order.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use relayfs::kernel::Support;
use serde::{Deserialize, Serialize};

use super::output::{is_sink, write_atomic};
use crate::util;

/// Summary file the recorder leaves in OUTDIR (read by `relayfs verify`).
pub(crate) const SUMMARY_FILE: &str = "relayfs-record.json";

/// Exit status when the producer died without closing the channel.
pub(crate) const EXIT_PRODUCER_GONE: i32 = 3;

/// How a buffer's recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum End {
    /// The producer closed the channel and everything was drained.
    Closed,
    /// The producer died; every complete sub-buffer was drained.
    ProducerGone,
    /// SIGINT, SIGTERM or SIGHUP: what was ready was drained.
    Interrupted,
    /// `--duration` passed: what was ready was drained.
    Stopped,
    /// An error stopped it. Also what a summary that doesn't say how it
    /// ended is read as: never taken for a clean end.
    #[default]
    Error,
}

impl End {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ProducerGone => "producer_gone",
            End::Interrupted => "interrupted",
            End::Stopped => "stopped",
            End::Error => "error",
        }
    }

    /// How bad an end is, for the channel's end (the worst of its buffers').
    fn severity(self) -> u8 {
        match self {
            End::Closed => 0,
            End::Interrupted | End::Stopped => 1,
            End::ProducerGone => 2,
            End::Error => 3,
        }
    }

    /// The worst of `ends` (`Closed` for none).
    pub(crate) fn worst(ends: impl IntoIterator<Item = End>) -> End {
        ends.into_iter()
            .max_by_key(|e| e.severity())
            .unwrap_or(End::Closed)
    }
}

/// Live counters of one buffer, for the status line.
#[derive(Default)]
pub(crate) struct Progress {
    pub(crate) bytes: AtomicU64,
    pub(crate) lost: AtomicU64,
}

/// Redraws the status line every 500 ms until `done`, then clears it.
pub(crate) fn status_line(
    progress: &[Progress],
    names: &[String],
    done: &AtomicBool,
    started: Instant,
) {
    let mut last = (Instant::now(), 0u64);
    // SYNC POINT: Relaxed; a stop flag carrying no data (the counters shown
    // are Relaxed too: a status line may be a moment behind).
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        last = print_status(progress, names, started, last);
    }
    crate::util::err!("\r\x1b[K");
}

/// Draws the live status line once; `last` is the (time, total bytes) of
/// the previous one, and the new one is returned.
pub(crate) fn print_status(
    progress: &[Progress],
    names: &[String],
    started: Instant,
    last: (Instant, u64),
) -> (Instant, u64) {
    // SYNC POINT: Relaxed loads of counters only shown, never acted on.
    let total: u64 = progress
        .iter()
        .map(|p| p.bytes.load(Ordering::Relaxed))
        .sum();
    let lost: u64 = progress
        .iter()
        .map(|p| p.lost.load(Ordering::Relaxed))
        .sum();
    let dt = last.0.elapsed().as_secs_f64().max(1e-9);
    let rate = total.saturating_sub(last.1) as f64 / dt / 1e6;
    let per: Vec<String> = names
        .iter()
        .zip(progress)
        .map(|(n, p)| format!("{n} {}", util::human_bytes(p.bytes.load(Ordering::Relaxed))))
        .collect();
    crate::util::err!(
        "\r\x1b[K[{:>5.1}s] {} | {:.1} MB/s | {}",
        started.elapsed().as_secs_f64(),
        per.join("  "),
        rate,
        if lost == 0 {
            "dropped 0".to_string()
        } else {
            format!("\x1b[1;31mDROPPED {lost}\x1b[0m")
        }
    );
    (Instant::now(), total)
}

/// The recorder's own memory, its mappings of the buffers aside: anonymous
/// resident memory (`RssAnon` in /proc/self/status), sampled every 100 ms,
/// and its peak.
pub(crate) struct MemorySampler {
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `RssAnon` of this process in KiB, if /proc says.
pub(crate) fn rss_anon_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The recorder's memory in a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Memory {
    /// `RssAnon` at the end, in KiB (null if /proc didn't say).
    pub(crate) rss_anon_kib: Option<u64>,
    /// The highest `RssAnon` seen, in KiB.
    pub(crate) rss_anon_peak_kib: u64,
}

impl MemorySampler {
    pub(crate) fn start() -> MemorySampler {
        let peak = Arc::new(AtomicU64::new(rss_anon_kib().unwrap_or(0)));
        let done = Arc::new(AtomicBool::new(false));
        let (p, d) = (peak.clone(), done.clone());
        let thread = std::thread::Builder::new()
            .name("rss".into())
            .spawn(move || {
                // SYNC POINT: Relaxed; a stop flag, and a maximum read
                // after `join` (which orders everything before it).
                while !d.load(Ordering::Relaxed) {
                    if let Some(k) = rss_anon_kib() {
                        p.fetch_max(k, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .ok();
        MemorySampler { peak, done, thread }
    }

    /// Stops sampling; returns the memory now and its peak.
    pub(crate) fn finish(mut self) -> Memory {
        // SYNC POINT: Relaxed; the join below is what orders the sampler's
        // last `fetch_max` before the load.
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let now = rss_anon_kib();
        // SYNC POINT: Relaxed; after the join, this thread is the only one.
        if let Some(k) = now {
            self.peak.fetch_max(k, Ordering::Relaxed);
        }
        Memory {
            rss_anon_kib: now,
            rss_anon_peak_kib: self.peak.load(Ordering::Relaxed),
        }
    }
}

/// `relayfs record`'s summary of a relayfs channel: what `relayfs verify`
/// (and `demo`, `bench`) read back. Fields a hand-written or older summary
/// may lack default; the counters `verify` relies on are required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RecordSummary {
    #[serde(default)]
    pub(crate) channel: String,
    #[serde(default)]
    pub(crate) channel_id: Option<u64>,
    /// Buffers the channel has, as its headers say.
    #[serde(default)]
    pub(crate) n_buffers: Option<u64>,
    #[serde(default)]
    pub(crate) out: String,
    /// `--max-files`: files may have been removed on purpose.
    #[serde(default)]
    pub(crate) max_files: Option<u64>,
    #[serde(default)]
    pub(crate) end: End,
    #[serde(default)]
    pub(crate) exit_code: i32,
    #[serde(default)]
    pub(crate) elapsed_s: f64,
    pub(crate) bytes: u64,
    #[serde(default)]
    pub(crate) mb_per_s: f64,
    #[serde(default)]
    pub(crate) records_written: u64,
    pub(crate) records_delivered: u64,
    pub(crate) lost: u64,
    #[serde(default)]
    pub(crate) dropped_full: u64,
    #[serde(default)]
    pub(crate) dropped_toobig: u64,
    #[serde(default)]
    pub(crate) overwritten: u64,
    pub(crate) discarded: u64,
    #[serde(default)]
    pub(crate) dropped_corrupt: u64,
    #[serde(default)]
    pub(crate) unread_at_close: u64,
    #[serde(default)]
    pub(crate) abandoned_bytes: u64,
    #[serde(default)]
    pub(crate) abandoned_records: u64,
    pub(crate) buffers: Vec<BufferSummary>,
    #[serde(flatten)]
    pub(crate) memory: Option<Memory>,
}

impl RecordSummary {
    /// A summary holding only the channel's record counts, from its
    /// buffers' summed counters (the rest default): the base every
    /// recorder's summary is completed from, so that `lost` and its parts
    /// are taken from the counters in one place.
    pub(crate) fn totals(total: &relayfs::BufferStats) -> RecordSummary {
        RecordSummary {
            records_written: total.records_written(),
            records_delivered: total.records_consumed,
            lost: total.lost(),
            dropped_full: total.dropped_full,
            dropped_toobig: total.dropped_toobig,
            overwritten: total.overwritten_records,
            discarded: total.discarded_records,
            dropped_corrupt: total.dropped_corrupt,
            unread_at_close: total.unread_at_close,
            ..RecordSummary::default()
        }
    }
}

/// One buffer in a [`RecordSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BufferSummary {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) end: End,
    #[serde(default)]
    pub(crate) bytes: u64,
    #[serde(default)]
    pub(crate) files: Vec<String>,
    #[serde(default)]
    pub(crate) records_written: u64,
    #[serde(default)]
    pub(crate) records_delivered: u64,
    #[serde(default)]
    pub(crate) dropped_full: u64,
    #[serde(default)]
    pub(crate) dropped_toobig: u64,
    #[serde(default)]
    pub(crate) overwritten: u64,
    #[serde(default)]
    pub(crate) discarded: u64,
    #[serde(default)]
    pub(crate) padding_bytes: u64,
    #[serde(default)]
    pub(crate) abandoned_bytes: u64,
    #[serde(default)]
    pub(crate) abandoned_records: u64,
    /// What stopped this buffer's recording, if an error did.
    #[serde(default)]
    pub(crate) error: Option<String>,
}

/// The summary of a kernel relay channel's recording (`relayfs record` on
/// a debugfs directory, `relayfs blktrace`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct KernelSummary {
    pub(crate) channel: String,
    /// Always `"kernel"`.
    pub(crate) kind: String,
    pub(crate) out: String,
    pub(crate) end: End,
    pub(crate) exit_code: i32,
    pub(crate) elapsed_s: f64,
    pub(crate) bytes: u64,
    pub(crate) mb_per_s: f64,
    /// The kernel client's `dropped` count (null: the channel has none).
    pub(crate) dropped: Option<u64>,
    /// What `mmap` on the first relay file answered.
    pub(crate) mmap: String,
    pub(crate) buffers: Vec<KernelBufferSummary>,
    #[serde(flatten)]
    pub(crate) memory: Option<Memory>,
    #[serde(flatten)]
    pub(crate) blktrace: Option<BlktraceSummary>,
}

/// One relay file in a [`KernelSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KernelBufferSummary {
    pub(crate) name: String,
    pub(crate) end: End,
    pub(crate) bytes: u64,
    pub(crate) files: Vec<String>,
    /// Whether the kernel let `sendfile` read this file.
    pub(crate) sendfile: String,
    /// Wakeups with nothing to read.
    pub(crate) empty_wakeups: u64,
    pub(crate) error: Option<String>,
}

/// What `relayfs blktrace` adds to a [`KernelSummary`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BlktraceSummary {
    pub(crate) device: String,
    /// Whole blktrace events in the output files.
    pub(crate) events: u64,
    /// Bytes at the end of output files that are not whole events.
    pub(crate) unparsed_bytes: u64,
    pub(crate) events_per_cpu: Vec<u64>,
    pub(crate) cpu_s: f64,
    pub(crate) subbuf_size: u64,
    pub(crate) n_subbufs: u32,
}

/// What `mmap` or `sendfile` answered, in a summary's words.
pub(crate) fn support_str(s: Support) -> String {
    match s {
        Support::Unknown => "untried".into(),
        Support::Yes => "yes".into(),
        Support::No(code) => format!("no ({})", std::io::Error::from_raw_os_error(code)),
    }
}

/// Megabytes (10^6) per second.
pub(crate) fn mb_per_s(bytes: u64, elapsed: f64) -> f64 {
    bytes as f64 / elapsed.max(1e-9) / 1e6
}

/// A summary both recorders write and print the same way.
pub(crate) trait Summary: Serialize {
    /// The summary for people, on standard error.
    fn print_text(&self);
}

/// How a command shows its summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Show {
    /// One JSON object on standard output.
    pub(crate) json: bool,
    /// Nothing (errors only).
    pub(crate) quiet: bool,
}

impl Show {
    /// Whether a live status line is drawn (on a terminal, unless told
    /// otherwise).
    pub(crate) fn status_line(self) -> bool {
        !self.quiet && !self.json && util::stderr_is_tty()
    }
}

/// Writes `summary` to OUT/relayfs-record.json (nothing for a device sink)
/// and shows it as `show` says, the text by `text`. A summary file that
/// can't be written is said (prefixed `who`) and returned as `false`: the
/// recording then exits 1, but its summary is still shown.
pub(crate) fn emit<S: Serialize>(
    who: &str,
    summary: &S,
    out: &Path,
    show: Show,
    text: impl FnOnce(),
) -> Result<bool> {
    let value = serde_json::to_value(summary)?;
    let written = match write_summary(out, &value) {
        Ok(()) => true,
        Err(e) => {
            crate::util::errln!("{who}: {e:#}");
            false
        }
    };
    if show.json {
        util::outln!("{value}")?;
    } else if !show.quiet {
        text();
    }
    Ok(written)
}

/// Writes OUT/relayfs-record.json (nothing for a device sink).
fn write_summary(out: &Path, summary: &serde_json::Value) -> Result<()> {
    if is_sink(out) {
        return Ok(());
    }
    write_atomic(&out.join(SUMMARY_FILE), format!("{summary:#}\n").as_bytes())
}

impl Summary for RecordSummary {
    fn print_text(&self) {
        crate::util::errln!("relayfs record: {} -> {}", self.channel, self.out);
        crate::util::errln!(
            "  {:<8} {:>12} {:>12} {:>10} {:>10} {:>11} {:>10}  end",
            "buffer",
            "bytes",
            "records",
            "drop-full",
            "too-big",
            "overwritten",
            "discarded"
        );
        for b in &self.buffers {
            crate::util::errln!(
                "  {:<8} {:>12} {:>12} {:>10} {:>10} {:>11} {:>10}  {}",
                b.name,
                util::human_bytes(b.bytes),
                b.records_delivered,
                b.dropped_full,
                b.dropped_toobig,
                b.overwritten,
                b.discarded,
                b.end.as_str()
            );
        }
        crate::util::errln!(
            "  total    {} in {:.2} s ({:.1} MB/s), {} records",
            util::human_bytes(self.bytes),
            self.elapsed_s,
            self.mb_per_s,
            self.records_delivered
        );
        if let Some(e) = self.buffers.iter().find_map(|b| b.error.as_ref()) {
            crate::util::errln!(
                "  recording INCOMPLETE: {e}; {} records lost so far (what the producer writes from now on is not recorded)",
                self.lost
            );
        } else if self.lost == 0 {
            crate::util::errln!("  nothing lost");
        } else {
            crate::util::errln!(
                "  LOST {} records (full {}, too big {}, overwritten {}, discarded {}, unread at close {}, corrupt buffer {}): the producer needs larger or more sub-buffers (ChannelBuilder::subbuf_size, n_subbufs; the demo's --subbuf-size, --n-subbufs) or a faster output",
                self.lost,
                self.dropped_full,
                self.dropped_toobig,
                self.overwritten,
                self.discarded,
                self.unread_at_close,
                self.dropped_corrupt
            );
        }
        if self.buffers.iter().any(|b| b.end == End::ProducerGone) {
            crate::util::errln!(
                "  the producer died without closing the channel: every complete sub-buffer was saved"
            );
        }
    }
}

impl Summary for KernelSummary {
    fn print_text(&self) {
        crate::util::errln!(
            "relayfs record: {} (kernel relay channel) -> {}",
            self.channel,
            self.out
        );
        for b in &self.buffers {
            crate::util::errln!(
                "  {:<10} {:>12}  {}",
                b.name,
                util::human_bytes(b.bytes),
                b.end.as_str()
            );
        }
        crate::util::errln!(
            "  total      {} in {:.2} s ({:.1} MB/s); sendfile: {}, mmap: {}",
            util::human_bytes(self.bytes),
            self.elapsed_s,
            self.mb_per_s,
            self.buffers
                .first()
                .map_or("untried", |b| b.sendfile.as_str()),
            self.mmap
        );
        match self.dropped {
            Some(0) => crate::util::errln!("  the kernel dropped nothing"),
            Some(d) => crate::util::errln!("  the kernel DROPPED {d}"),
            None => crate::util::errln!(
                "  (the channel has no dropped file: the kernel's losses are not known)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(name: &str, end: End) -> BufferSummary {
        BufferSummary {
            name: name.into(),
            end,
            bytes: 10,
            files: vec![format!("{name}.out")],
            records_written: 3,
            records_delivered: 2,
            dropped_full: 1,
            dropped_toobig: 0,
            overwritten: 0,
            discarded: 0,
            padding_bytes: 4,
            abandoned_bytes: 0,
            abandoned_records: 0,
            error: None,
        }
    }

    #[test]
    fn a_record_summary_reads_back_as_written_with_the_keys_verify_reads() {
        let s = RecordSummary {
            channel: "c".into(),
            channel_id: Some(7),
            n_buffers: Some(2),
            out: "o".into(),
            max_files: None,
            end: End::ProducerGone,
            exit_code: EXIT_PRODUCER_GONE,
            elapsed_s: 1.5,
            bytes: 20,
            mb_per_s: mb_per_s(20, 1.5),
            records_written: 6,
            records_delivered: 4,
            lost: 2,
            dropped_full: 2,
            dropped_toobig: 0,
            overwritten: 0,
            discarded: 0,
            dropped_corrupt: 0,
            unread_at_close: 0,
            abandoned_bytes: 0,
            abandoned_records: 0,
            buffers: vec![
                buffer("cpu0", End::Closed),
                buffer("cpu1", End::ProducerGone),
            ],
            memory: Some(Memory {
                rss_anon_kib: None,
                rss_anon_peak_kib: 9,
            }),
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["end"], "producer_gone");
        assert_eq!(v["buffers"][1]["end"], "producer_gone");
        assert_eq!(v["max_files"], serde_json::Value::Null);
        assert_eq!(v["rss_anon_kib"], serde_json::Value::Null);
        assert_eq!(v["rss_anon_peak_kib"], 9);
        assert_eq!(v["buffers"][0]["error"], serde_json::Value::Null);
        let back: RecordSummary = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn a_summary_needs_its_counters_as_counts() {
        let ok = r#"{"bytes": 0, "lost": 0, "records_delivered": 5, "discarded": 0, "buffers": [{"name": "cpu0"}]}"#;
        let s: RecordSummary = serde_json::from_str(ok).unwrap();
        assert_eq!(s.buffers[0].end, End::Error, "an unsaid end is not clean");
        assert_eq!(s.memory, None);
        for bad in [
            r#"{"bytes": 0, "records_delivered": 5, "discarded": 0, "buffers": []}"#,
            r#"{"bytes": 0, "lost": -1, "records_delivered": 5, "discarded": 0, "buffers": []}"#,
            r#"{"bytes": 0, "lost": 1.5, "records_delivered": 5, "discarded": 0, "buffers": []}"#,
            r#"{"bytes": 0, "lost": 0, "records_delivered": 5, "discarded": 0, "buffers": {}}"#,
            r#"{"bytes": 0, "lost": 0, "records_delivered": 5, "discarded": 0, "buffers": [{"name": 3}]}"#,
            r#"{"bytes": 0, "lost": 0, "records_delivered": 5, "discarded": 0, "buffers": [{"name": "a", "error": 1}]}"#,
            r#"{"bytes": 0, "lost": 0, "records_delivered": 5, "discarded": 0, "n_buffers": "2", "buffers": []}"#,
            r#"{"lost": 0, "records_delivered": 5, "discarded": 0, "buffers": []}"#,
        ] {
            assert!(serde_json::from_str::<RecordSummary>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_worst_end_is_the_channels() {
        assert_eq!(End::worst([]), End::Closed);
        assert_eq!(
            End::worst([End::Closed, End::Stopped, End::Closed]),
            End::Stopped
        );
        assert_eq!(
            End::worst([End::ProducerGone, End::Interrupted]),
            End::ProducerGone
        );
        assert_eq!(End::worst([End::Error, End::ProducerGone]), End::Error);
    }

    /// The kernel recorders' summary has the keys and values the JSON
    /// built by hand had (`record` on debugfs, and blktrace's additions).
    #[test]
    fn a_kernel_summary_is_what_it_was() {
        let buffer = KernelBufferSummary {
            name: "trace0".into(),
            end: End::Stopped,
            bytes: 4096,
            files: vec!["o/sda.blktrace.0".into()],
            sendfile: support_str(Support::No(libc::EINVAL)),
            empty_wakeups: 2,
            error: None,
        };
        let mut s = KernelSummary {
            channel: "/sys/kernel/debug/block/sda".into(),
            kind: "kernel".into(),
            out: "o".into(),
            end: End::Stopped,
            exit_code: 0,
            elapsed_s: 2.0,
            bytes: 4096,
            mb_per_s: mb_per_s(4096, 2.0),
            dropped: None,
            mmap: support_str(Support::Unknown),
            buffers: vec![buffer],
            memory: Some(Memory {
                rss_anon_kib: Some(100),
                rss_anon_peak_kib: 120,
            }),
            blktrace: None,
        };
        let old_buffer = serde_json::json!({
            "name": "trace0",
            "end": "stopped",
            "bytes": 4096,
            "files": ["o/sda.blktrace.0"],
            "sendfile": format!("no ({})", std::io::Error::from_raw_os_error(libc::EINVAL)),
            "empty_wakeups": 2,
            "error": null,
        });
        let mut old = serde_json::json!({
            "channel": "/sys/kernel/debug/block/sda",
            "kind": "kernel",
            "out": "o",
            "end": "stopped",
            "exit_code": 0,
            "elapsed_s": 2.0,
            "bytes": 4096,
            "mb_per_s": 4096.0 / 2.0 / 1e6,
            "dropped": null,
            "mmap": "untried",
            "buffers": [old_buffer],
            "rss_anon_kib": 100,
            "rss_anon_peak_kib": 120,
        });
        assert_eq!(serde_json::to_value(&s).unwrap(), old);
        // blktrace: no memory, its own counts.
        s.memory = None;
        s.blktrace = Some(BlktraceSummary {
            device: "/dev/sda".into(),
            events: 7,
            unparsed_bytes: 0,
            events_per_cpu: vec![7],
            cpu_s: 0.5,
            subbuf_size: 512 << 10,
            n_subbufs: 4,
        });
        let o = old.as_object_mut().unwrap();
        o.remove("rss_anon_kib");
        o.remove("rss_anon_peak_kib");
        o.insert("device".into(), "/dev/sda".into());
        o.insert("events".into(), 7.into());
        o.insert("unparsed_bytes".into(), 0.into());
        o.insert("events_per_cpu".into(), serde_json::json!([7]));
        o.insert("cpu_s".into(), 0.5.into());
        o.insert("subbuf_size".into(), (512u64 << 10).into());
        o.insert("n_subbufs".into(), 4.into());
        assert_eq!(serde_json::to_value(&s).unwrap(), old);
        let back: KernelSummary = serde_json::from_value(old).unwrap();
        assert_eq!(back, s);
    }
}
