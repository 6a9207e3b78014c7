//! What `relayfs demo` and `relayfs bench` share: the channel's shape as
//! they take it, the record size spec and the seeded generator of lengths,
//! the writer threads (demo records, optionally paced, each outcome of a
//! write counted), and starting `relayfs record` in another process on a
//! channel and reading its summary back.

use std::io::Read;
use std::num::NonZeroU64;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relayfs::{Channel, Mode, WriteError};

use crate::{demofmt, util};

/// A record length, or a range to draw lengths from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeSpec {
    /// Smallest length.
    pub min: u32,
    /// Largest length.
    pub max: u32,
}

impl std::fmt::Display for SizeSpec {
    /// `S`, or `MIN..MAX`: as the summaries show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

/// Parses `S` or `MIN..MAX`.
pub fn parse_size_spec(s: &str) -> Result<SizeSpec, String> {
    let (min, max) = match s.split_once("..") {
        Some((a, b)) => (util::parse_size(a)?, util::parse_size(b)?),
        None => {
            let v = util::parse_size(s)?;
            (v, v)
        }
    };
    if min < demofmt::HEADER as u64 || max < min || max > u32::MAX as u64 {
        return Err(format!(
            "record size {s:?}: need {} <= MIN <= MAX (a demo record has a {}-byte header)",
            demofmt::HEADER,
            demofmt::HEADER
        ));
    }
    Ok(SizeSpec {
        min: min as u32,
        max: max as u32,
    })
}

/// xorshift64*: a small seeded generator (record lengths, filler bytes).
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A record length within `s` (bounds included).
    pub fn len(&mut self, s: SizeSpec) -> usize {
        if s.min == s.max {
            s.min as usize
        } else {
            (s.min as u64 + self.next() % (s.max - s.min + 1) as u64) as usize
        }
    }
}

/// The channel's shape, as `demo` and `bench` take it.
#[derive(Debug, Clone, clap::Args)]
pub struct ChannelArgs {
    /// Sub-buffer size (a power of two; default 1M)
    #[arg(long, value_parser = crate::args::subbuf_size)]
    pub subbuf_size: Option<u64>,
    /// Sub-buffers per buffer (default 16)
    #[arg(long, value_parser = crate::args::n_subbufs)]
    pub n_subbufs: Option<u64>,
    /// Overwrite ("flight recorder") mode
    #[arg(long)]
    pub overwrite: bool,
}

impl ChannelArgs {
    /// Checks the sizes together (each was checked alone when parsed), so
    /// that a channel the library would refuse is refused before anything
    /// starts.
    pub fn check(&self) -> Result<()> {
        relayfs::Geometry::new(
            self.subbuf_size.unwrap_or(relayfs::DEFAULT_SUBBUF_SIZE),
            self.n_subbufs.unwrap_or(relayfs::DEFAULT_N_SUBBUFS),
            0,
            4096,
        )
        .context("--subbuf-size and --n-subbufs")?;
        Ok(())
    }

    /// A builder for channel `name` with these settings.
    pub fn builder(&self, name: &str) -> relayfs::ChannelBuilder {
        let mut b = Channel::builder(name);
        if let Some(s) = self.subbuf_size {
            b = b.subbuf_size(s);
        }
        if let Some(n) = self.n_subbufs {
            b = b.n_subbufs(n);
        }
        if self.overwrite {
            b = b.mode(Mode::Overwrite);
        }
        b
    }

    /// "overwrite" or "no-overwrite".
    pub fn mode_name(&self) -> &'static str {
        if self.overwrite {
            "overwrite"
        } else {
            "no-overwrite"
        }
    }
}

/// Records per timed batch (and between two looks at the signals, the
/// clock and the count).
pub const BATCH: u64 = 1024;

/// The longest a paced writer sleeps between two looks at the signals and
/// the clock.
const PACE_SLICE: Duration = Duration::from_millis(50);

/// When the writers stop (or earlier, on SIGINT, SIGTERM or SIGHUP).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Until {
    /// After this many records each.
    Count(u64),
    /// After this long (checked between batches).
    Elapsed(Duration),
}

/// What the writer threads write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Writer threads.
    pub threads: u32,
    /// Record lengths.
    pub size: SizeSpec,
    /// Seed of the lengths: writer `w` draws from `Rng::new(seed + w·7919)`.
    pub seed: u64,
    /// When to stop.
    pub until: Until,
    /// Total rate in records per second, shared evenly by the threads
    /// (`None`: as fast as they can).
    pub rate: Option<f64>,
}

/// What one writer thread did. `offered = ok + full + toobig + corrupt`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WriterCounts {
    /// Records offered to the channel (the next one's `seq`).
    pub offered: u64,
    /// Accepted (reserved, written, committed).
    pub ok: u64,
    /// Refused: `WriteError::Full`.
    pub full: u64,
    /// Refused: `WriteError::TooBig`.
    pub toobig: u64,
    /// Refused: `WriteError::Corrupt`.
    pub corrupt: u64,
    /// Bytes of the accepted records.
    pub bytes: u64,
    /// Seconds from the start to the last record.
    pub secs: f64,
    /// Nanoseconds per record of each batch of up to [`BATCH`] records.
    pub batch_ns: Vec<f64>,
}

impl WriterCounts {
    /// Offers demo record `seq` of writer `writer`, `len` bytes long, to
    /// `chan`, and counts what became of it.
    #[inline]
    pub fn offer(&mut self, chan: &Channel, writer: u32, seq: u64, len: usize) {
        self.offered += 1;
        match chan.reserve(len) {
            Ok(mut slot) => {
                let cpu = slot.cpu() as u32;
                demofmt::encode(&mut slot, writer, cpu, seq);
                slot.commit();
                self.ok += 1;
                self.bytes += len as u64;
            }
            Err(WriteError::Full) => self.full += 1,
            Err(WriteError::TooBig(_)) => self.toobig += 1,
            Err(WriteError::Corrupt) => self.corrupt += 1,
            Err(e @ WriteError::Closed) => unreachable!("{e}: closed after the writers"),
        }
    }
}

/// What all the writer threads did.
#[derive(Debug, Clone)]
pub struct Written {
    /// One per thread, by writer index.
    pub writers: Vec<WriterCounts>,
    /// When the threads were let go, together.
    pub started: Instant,
    /// Seconds from `started` until the last thread ended.
    pub wall: f64,
}

impl Written {
    /// Records offered by each writer.
    pub fn offered_by_writer(&self) -> Vec<u64> {
        self.writers.iter().map(|w| w.offered).collect()
    }

    /// Records offered in all.
    pub fn offered(&self) -> u64 {
        self.writers.iter().map(|w| w.offered).sum()
    }

    /// Records accepted in all.
    pub fn accepted(&self) -> u64 {
        self.writers.iter().map(|w| w.ok).sum()
    }

    /// Bytes accepted in all.
    pub fn bytes(&self) -> u64 {
        self.writers.iter().map(|w| w.bytes).sum()
    }

    /// Every batch's nanoseconds per record, sorted.
    pub fn batch_ns_sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .writers
            .iter()
            .flat_map(|w| w.batch_ns.iter().copied())
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }
}

/// Runs `load.threads` writer threads on `chan`, started together, and
/// waits for them all. Writer `w` writes demo records `w`, seq 0, 1, …
pub fn write(chan: &Arc<Channel>, load: Load) -> Result<Written> {
    let barrier = Arc::new(Barrier::new(load.threads as usize + 1));
    let handles: Vec<_> = (0..load.threads)
        .map(|w| {
            let (chan, barrier) = (chan.clone(), barrier.clone());
            std::thread::spawn(move || writer(&chan, w, load, &barrier))
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut writers = Vec::with_capacity(handles.len());
    for h in handles {
        writers.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("a producer thread panicked"))?,
        );
    }
    Ok(Written {
        writers,
        started,
        wall: started.elapsed().as_secs_f64(),
    })
}

/// Writer thread `w` of `load`.
fn writer(chan: &Channel, w: u32, load: Load, barrier: &Barrier) -> WriterCounts {
    let mut rng = Rng::new(load.seed.wrapping_add(w as u64 * 7919));
    let mut c = WriterCounts::default();
    let per_thread_rate = load.rate.map(|r| r / load.threads as f64);
    if per_thread_rate.is_some() {
        // A short sleep should be short (see the pacing below); without
        // it, pacing is only coarser.
        let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(1));
    }
    // A paced writer's batch is what it writes in about 10 ms (at least
    // one record), not BATCH: at a low rate a whole BATCH would go out at
    // once and the writer would then sleep for BATCH / rate seconds.
    let batch = per_thread_rate.map_or(BATCH, |r| ((r / 100.0) as u64).clamp(1, BATCH));
    barrier.wait();
    let start = Instant::now();
    loop {
        let seq = c.offered;
        let n = match load.until {
            Until::Count(count) if seq >= count => break,
            Until::Count(count) => batch.min(count - seq),
            Until::Elapsed(d) if start.elapsed() >= d => break,
            Until::Elapsed(_) => batch,
        };
        // Stop early on SIGINT, SIGTERM or SIGHUP (checked once a batch,
        // off the write itself).
        if util::interrupted() {
            break;
        }
        let bt = Instant::now();
        for _ in 0..n {
            let len = rng.len(load.size);
            let seq = c.offered;
            c.offer(chan, w, seq, len);
        }
        c.batch_ns.push(bt.elapsed().as_nanos() as f64 / n as f64);
        if let Some(r) = per_thread_rate {
            // Pace: wait until this many records are due. Sleep through
            // most of any wait longer than a few microseconds rather than
            // spin: a producer at a set rate shouldn't take a whole CPU from
            // the recorder on a machine with two. (The timer slack is cut to
            // 1 ns above, so a short sleep is a short sleep.)
            // The sleep is cut into slices of at most 50 ms, between which
            // the signals and the end of the run are looked at: a long wait
            // neither outlasts the run nor ignores SIGINT.
            let due = Duration::from_secs_f64(c.offered as f64 / r);
            let stop = |now: Duration| {
                util::interrupted() || matches!(load.until, Until::Elapsed(d) if now >= d)
            };
            loop {
                let now = start.elapsed();
                let ahead = due.saturating_sub(now);
                if ahead <= Duration::from_micros(20) || stop(now) {
                    break;
                }
                std::thread::sleep((ahead - Duration::from_micros(10)).min(PACE_SLICE));
            }
            while start.elapsed() < due && !stop(start.elapsed()) {
                std::hint::spin_loop();
            }
        }
    }
    c.secs = start.elapsed().as_secs_f64();
    c
}

/// Writer threads: one per CPU.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as u32
}

/// Waits until every buffer of `chan` has a reader attached: `Ok(true)`;
/// `Ok(false)` after `timeout` or on SIGINT, SIGTERM or SIGHUP; an error if
/// `child` (the recorder, when given) exits first.
pub fn wait_for_readers(
    chan: &Channel,
    timeout: Duration,
    child: Option<&mut std::process::Child>,
) -> Result<bool> {
    let t = Instant::now();
    let mut child = child;
    loop {
        if chan.readers_attached() == chan.n_buffers() {
            return Ok(true);
        }
        if let Some(c) = child.as_deref_mut() {
            if let Some(st) = c.try_wait()? {
                bail!("the recorder exited before attaching ({st})");
            }
        }
        if t.elapsed() > timeout || util::interrupted() {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `relayfs record` on `chan` into `out` (JSON summary on its stdout)
/// and waits until it holds every buffer.
///
/// The recorder gets a process group of its own, so that Ctrl-C or a
/// hang-up of the terminal reaches only this process: it stops the writers
/// and closes the channel, and the recorder then drains everything and
/// ends as on any close. (Were the recorder signalled too, it would stop
/// while the writers still wrote, and what they wrote after would be
/// neither delivered nor counted.) Should this process die, the recorder
/// sees its producer gone and ends too.
pub fn start_recorder(chan: &Channel, out: &Path) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("record")
        .arg(chan.dir())
        .arg("-o")
        .arg(out)
        .args(["--json", "--quiet"])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("cannot start the recorder")?;
    let attached = wait_for_readers(chan, Duration::from_secs(30), Some(&mut child));
    if !matches!(attached, Ok(true)) {
        let _ = child.kill();
        let _ = child.wait();
        attached?;
        if util::interrupted() {
            bail!("interrupted before the recorder attached");
        }
        bail!("the recorder did not attach within 30 s");
    }
    Ok(child)
}

/// What `relayfs record --json` prints: the recorder's own summary type.
pub(crate) use crate::recorder::report::RecordSummary as RecorderSummary;

/// Parses the recorder's `--json` output; a summary without a counter
/// `demo` and `bench` read is an error, never a silent 0.
pub(crate) fn parse_recorder_summary(s: &str) -> Result<RecorderSummary> {
    serde_json::from_str(s.trim()).context("reading the recorder's summary")
}

/// Waits for a recorder started by [`start_recorder`] and returns its
/// summary.
pub(crate) fn finish_recorder(mut child: std::process::Child) -> Result<RecorderSummary> {
    let mut s = String::new();
    if let Some(mut so) = child.stdout.take() {
        so.read_to_string(&mut s)?;
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("the recorder failed ({st})");
    }
    parse_recorder_summary(&s)
}

/// Every record lost, whatever the reason: what the producer counted at
/// close (`pstats`: refused as full, too big, for a corrupt buffer or a
/// closed channel, overwritten, left unread) and what the recorder, if any, discarded.
pub(crate) fn dropped(pstats: &relayfs::BufferStats, rec: Option<&RecorderSummary>) -> u64 {
    // The library's own sum of every way to lose a record, with the
    // reader's discards taken from the recorder, which read to the end,
    // rather than from the producer's snapshot at close.
    pstats.lost() - pstats.discarded_records + rec.map_or(0, |r| r.discarded)
}

/// A temporary directory for a recording, on tmpfs (`/dev/shm`) where there
/// is one, else in `$TMPDIR`; removed when dropped.
pub fn tmpfs_out_dir() -> Result<tempfile::TempDir> {
    let base = Path::new("/dev/shm");
    let b = tempfile::Builder::new()
        .prefix("relayfs-demo-out-")
        .tempdir_in(if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        });
    b.context("cannot create a temporary output directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_spec_parses_one_length_or_a_range() {
        assert_eq!(
            parse_size_spec("64").unwrap(),
            SizeSpec { min: 64, max: 64 }
        );
        assert_eq!(
            parse_size_spec("24..1K").unwrap(),
            SizeSpec { min: 24, max: 1024 }
        );
        // Over u32::MAX.
        assert!(parse_size_spec("4G").unwrap_err().contains("MIN <= MAX"));
        for bad in ["23", "100..50", "0", "", "..", "x", "24..", "64..1Q"] {
            assert!(parse_size_spec(bad).is_err(), "{bad:?} accepted");
        }
        // The header is the floor: a record must hold it.
        let e = parse_size_spec("10..100").unwrap_err();
        assert!(e.contains(&demofmt::HEADER.to_string()), "{e}");
    }

    #[test]
    fn size_spec_displays_as_parsed() {
        for s in ["64", "24..200"] {
            assert_eq!(parse_size_spec(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn rng_is_determined_by_its_seed() {
        let take = |seed| {
            let mut r = Rng::new(seed);
            (0..64).map(|_| r.next()).collect::<Vec<_>>()
        };
        assert_eq!(take(7), take(7));
        assert_ne!(take(7), take(8));
        // Seed 0 is as good as any: the state never starts at 0.
        assert!(take(0).iter().any(|&v| v != 0));
        assert_ne!(take(0), take(1));
    }

    #[test]
    fn rng_lengths_stay_within_the_spec_and_cover_it() {
        let s = SizeSpec { min: 24, max: 31 };
        let mut r = Rng::new(3);
        let mut seen = [false; 8];
        for _ in 0..10_000 {
            let l = r.len(s);
            assert!((24..=31).contains(&l), "{l}");
            seen[l - 24] = true;
        }
        assert!(seen.iter().all(|&x| x), "{seen:?}");
        let one = SizeSpec { min: 40, max: 40 };
        assert!((0..100).all(|_| r.len(one) == 40));
    }

    /// A global channel (one buffer, whatever the CPUs) of two 64-byte
    /// sub-buffers in `dir`, no reader.
    fn tiny(dir: &Path, name: &str) -> Channel {
        Channel::builder(name)
            .relay_dir(dir)
            .global(true)
            .subbuf_size(64)
            .n_subbufs(2)
            .open()
            .unwrap()
    }

    /// Offers `n` records of `len` bytes to a [`tiny`] channel from one
    /// thread; returns the writer's counts and the channel's at close.
    fn offer_tiny(n: u64, len: usize) -> (WriterCounts, relayfs::BufferStats) {
        let tmp = tempfile::tempdir().unwrap();
        let chan = tiny(tmp.path(), "offered");
        let mut c = WriterCounts::default();
        for seq in 0..n {
            c.offer(&chan, 0, seq, len);
        }
        (c, chan.close().unwrap())
    }

    #[test]
    fn a_record_larger_than_a_subbuffer_counts_as_too_big_not_full() {
        let (c, st) = offer_tiny(10, 100);
        assert_eq!(
            (c.offered, c.ok, c.full, c.toobig, c.corrupt, c.bytes),
            (10, 0, 0, 10, 0, 0)
        );
        assert_eq!((st.dropped_toobig, st.dropped_full), (10, 0));
    }

    #[test]
    fn a_full_buffer_counts_as_full() {
        let (c, st) = offer_tiny(100, 24);
        // No reader: the ring fills, then every write is refused.
        assert!(c.ok > 0 && c.full > 0, "{c:?}");
        assert_eq!(
            (c.offered, c.ok + c.full, c.toobig, c.corrupt),
            (100, 100, 0, 0)
        );
        assert_eq!(c.bytes, c.ok * 24);
        assert_eq!((st.dropped_full, st.dropped_toobig), (c.full, 0));
        assert_eq!(st.records_written(), c.ok);
    }

    #[test]
    fn writers_count_every_record_offered_once() {
        let tmp = tempfile::tempdir().unwrap();
        let chan = Arc::new(tiny(tmp.path(), "mixed"));
        // 24..100 on 64-byte sub-buffers: some fit, some are too big, and
        // with no reader the ring fills.
        let load = Load {
            threads: 3,
            size: SizeSpec { min: 24, max: 100 },
            seed: 9,
            until: Until::Count(2 * BATCH + 5),
            rate: None,
        };
        let w = write(&chan, load).unwrap();
        assert_eq!(w.offered_by_writer(), vec![2 * BATCH + 5; 3]);
        for c in &w.writers {
            assert_eq!(c.ok + c.full + c.toobig + c.corrupt, c.offered, "{c:?}");
            assert!(c.toobig > 0 && c.full > 0, "{c:?}");
            assert_eq!(c.batch_ns.len(), 3);
        }
        let sum = |f: fn(&WriterCounts) -> u64| w.writers.iter().map(f).sum::<u64>();
        let st = chan.close().unwrap();
        assert_eq!(st.dropped_toobig, sum(|c| c.toobig));
        assert_eq!(st.dropped_full, sum(|c| c.full));
        assert_eq!(st.records_written(), w.accepted());
    }

    /// At a low rate a writer paces record by record, not a whole batch at
    /// once followed by a sleep of `BATCH / rate` seconds that outlasted
    /// the run (and SIGINT).
    #[test]
    fn a_low_rate_is_paced_record_by_record() {
        let tmp = tempfile::tempdir().unwrap();
        let chan = Arc::new(tiny(tmp.path(), "paced"));
        let load = Load {
            threads: 1,
            size: SizeSpec { min: 24, max: 24 },
            seed: 1,
            until: Until::Elapsed(Duration::from_millis(200)),
            rate: Some(10.0),
        };
        let w = write(&chan, load).unwrap();
        let c = &w.writers[0];
        // 10 records a second for 0.2 s (plus the one due at the start and
        // slack for a slow machine), never a batch of BATCH.
        assert!(c.offered >= 1 && c.offered < 20, "{c:?}");
        assert_eq!(c.batch_ns.len() as u64, c.offered, "one record a batch");
    }

    #[test]
    fn writers_draw_lengths_from_their_seed() {
        let lengths = |seed| {
            let tmp = tempfile::tempdir().unwrap();
            let chan = Arc::new(tiny(tmp.path(), "seeded"));
            let load = Load {
                threads: 2,
                size: SizeSpec { min: 24, max: 100 },
                seed,
                until: Until::Count(50),
                rate: None,
            };
            let w = write(&chan, load).unwrap();
            // What fits is a matter of timing; what is too big is not.
            w.writers.iter().map(|c| c.toobig).collect::<Vec<_>>()
        };
        let mut want = Vec::new();
        for w in 0..2u64 {
            let mut r = Rng::new(4u64.wrapping_add(w * 7919));
            let s = SizeSpec { min: 24, max: 100 };
            want.push((0..50).filter(|_| r.len(s) > 64).count() as u64);
        }
        assert_eq!(lengths(4), want);
    }

    #[test]
    fn recorder_summary_needs_its_fields_and_ignores_others() {
        let full = r#"{"bytes": 10, "records_delivered": 2, "discarded": 1, "lost": 0,
                       "buffers": [], "rss_anon_kib": 600, "rss_anon_peak_kib": 608,
                       "end": "closed", "not_a_field": 3}"#;
        let r = parse_recorder_summary(full).unwrap();
        assert_eq!((r.bytes, r.records_delivered, r.discarded), (10, 2, 1));
        assert_eq!(r.memory.map(|m| m.rss_anon_peak_kib), Some(608));
        for missing in ["bytes", "records_delivered", "discarded"] {
            let mut v: serde_json::Value = serde_json::from_str(full).unwrap();
            v.as_object_mut().unwrap().remove(missing);
            let e = parse_recorder_summary(&v.to_string()).unwrap_err();
            assert!(format!("{e:#}").contains(missing), "{e:#}");
        }
        // A misspelt key is a missing one.
        let typo = full.replace("\"discarded\"", "\"discard\"");
        assert!(parse_recorder_summary(&typo).is_err());
        assert!(parse_recorder_summary(&full.replace("10", "-1")).is_err());
        assert!(parse_recorder_summary("").is_err());
    }

    #[test]
    fn dropped_adds_every_way_to_lose_a_record_once() {
        let pstats = relayfs::BufferStats {
            dropped_full: 1,
            dropped_toobig: 2,
            dropped_corrupt: 4,
            overwritten_records: 8,
            unread_at_close: 16,
            dropped_closed: 64,
            // Delivered or not records at all: not losses.
            records_completed: 1000,
            records_consumed: 900,
            padding_bytes: 64,
            ..Default::default()
        };
        assert_eq!(dropped(&pstats, None), 95);
        let rec = parse_recorder_summary(
            r#"{"bytes": 1, "records_delivered": 900, "discarded": 32, "lost": 0, "buffers": []}"#,
        )
        .unwrap();
        assert_eq!(dropped(&pstats, Some(&rec)), 127);
    }
}
