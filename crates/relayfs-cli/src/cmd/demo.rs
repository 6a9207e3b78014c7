//! `relayfs demo`: relay end to end in a few seconds. Opens a fresh channel,
//! starts `relayfs record` on it as a separate process, writes demo records
//! from T threads, closes the channel, waits for the recorder, verifies the
//! recording and prints a summary.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relayfs::{Channel, Mode, RelayFile, WriteError};
use serde_json::json;

use super::verify;
use crate::{demofmt, util};

/// A record length, or a range to draw lengths from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeSpec {
    /// Smallest length.
    pub min: u32,
    /// Largest length.
    pub max: u32,
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

/// Arguments of `relayfs demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Channel name (default: demo-<pid>)
    #[arg(long)]
    pub name: Option<String>,
    /// Writer threads (default: one per CPU)
    #[arg(long, value_parser = crate::args::threads)]
    pub threads: Option<u32>,
    /// Records per writer
    #[arg(long, default_value_t = 100_000, value_parser = crate::args::count)]
    pub count: u64,
    /// Record length S, or MIN..MAX for lengths drawn from a seeded generator
    #[arg(long, default_value = "64", value_parser = parse_size_spec)]
    pub size: SizeSpec,
    /// Seed of the length generator
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub chan: ChannelArgs,
    /// Keep the recorded files in DIR (default: a temporary directory in
    /// $TMPDIR, removed at the end; none with --no-record)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Produce only, for a `relayfs record` started by hand (waits up to
    /// --attach-timeout seconds for it to attach)
    #[arg(long)]
    pub no_record: bool,
    /// With --no-record: how long to wait for readers to attach
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS", value_parser = crate::args::seconds)]
    pub attach_timeout: f64,
    /// Print the summary as one JSON object
    #[arg(long)]
    pub json: bool,
}

/// xorshift64*: a small seeded generator (record lengths, filler bytes).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn len(&mut self, s: SizeSpec) -> usize {
        if s.min == s.max {
            s.min as usize
        } else {
            (s.min as u64 + self.next() % (s.max - s.min + 1) as u64) as usize
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct WriterResult {
    /// Records offered: `--count`, or fewer when interrupted.
    offered: u64,
    ok: u64,
    full: u64,
    toobig: u64,
    corrupt: u64,
    bytes: u64,
    secs: f64,
}

fn wait_for_readers(
    chan: &Channel,
    timeout: Duration,
    child: Option<&mut std::process::Child>,
) -> Result<bool> {
    let t = Instant::now();
    let mut child = child;
    loop {
        let attached = (0..chan.n_buffers())
            .all(|i| RelayFile::inspect(chan.buffer_path(i)).is_ok_and(|s| s.reader_attached));
        if attached {
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

fn produce(chan: &Arc<Channel>, a: &Args, threads: u32) -> (Vec<WriterResult>, f64) {
    let barrier = Arc::new(Barrier::new(threads as usize + 1));
    let handles: Vec<_> = (0..threads)
        .map(|w| {
            let (chan, barrier) = (chan.clone(), barrier.clone());
            let (count, size, seed) = (a.count, a.size, a.seed);
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed.wrapping_add(w as u64 * 7919));
                let mut r = WriterResult::default();
                barrier.wait();
                let t = Instant::now();
                for seq in 0..count {
                    // Stop early on SIGINT, SIGTERM or SIGHUP (checked
                    // once in a while, off the write itself).
                    if seq % 1024 == 0 && util::interrupted() {
                        break;
                    }
                    r.offered += 1;
                    let len = rng.len(size);
                    match chan.reserve(len) {
                        Ok(mut slot) => {
                            let cpu = slot.cpu() as u32;
                            demofmt::encode(&mut slot, w, cpu, seq);
                            slot.commit();
                            r.ok += 1;
                            r.bytes += len as u64;
                        }
                        Err(WriteError::Full) => r.full += 1,
                        Err(WriteError::TooBig(_)) => r.toobig += 1,
                        Err(WriteError::Corrupt) => r.corrupt += 1,
                        Err(e @ WriteError::Closed) => {
                            unreachable!("{e}: closed after the writers")
                        }
                    }
                }
                r.secs = t.elapsed().as_secs_f64();
                r
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    let results = handles
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect();
    (results, t.elapsed().as_secs_f64())
}

/// Runs `relayfs demo`; returns the exit code.
pub fn run(a: &Args) -> Result<i32> {
    a.chan.check()?;
    util::catch_interrupts();
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let threads = a.threads.unwrap_or(ncpu);
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| format!("demo-{}", std::process::id()));
    let chan = Arc::new(
        a.chan
            .builder(&name)
            .open()
            .with_context(|| format!("cannot open channel {name}"))?,
    );
    let g = chan.geometry();
    let nbuf = chan.n_buffers();
    // Without --out, the recording goes to a temporary directory (in
    // $TMPDIR), removed when `tmp` is dropped: on every return, error or
    // panic of this function (a SIGINT, SIGTERM or SIGHUP ends it normally).
    // With --no-record there is nothing to record: none is made.
    let mut tmp = None;
    let out: PathBuf = match &a.out {
        Some(o) => o.clone(),
        None if a.no_record => PathBuf::new(),
        None => {
            let t = tempfile::Builder::new()
                .prefix("relayfs-demo-out-")
                .tempdir()
                .context("cannot create a temporary output directory")?;
            tmp.insert(t).path().to_path_buf()
        }
    };
    let mut recorder = None;
    let mut rec_pid = 0;
    if a.no_record {
        if !a.json {
            crate::util::errln!(
                "relayfs demo: channel {} is open; start `relayfs record {name} -o DIR` (waiting up to {} s)",
                chan.dir().display(),
                a.attach_timeout
            );
        }
        wait_for_readers(&chan, Duration::from_secs_f64(a.attach_timeout), None)?;
    } else {
        let child = start_recorder(&chan, &out)?;
        rec_pid = child.id();
        recorder = Some(child);
    }
    let (writers, wall) = produce(&chan, a, threads);
    let chan = Arc::try_unwrap(chan).map_err(|_| anyhow::anyhow!("channel still shared"))?;
    // The final counts, with what no reader was left to read.
    let pstats = chan.close().context("closing the channel")?;

    let rec_json = match recorder {
        Some(child) => finish_recorder(child)?,
        None => serde_json::Value::Null,
    };
    let offered: u64 = writers.iter().map(|w| w.offered).sum();
    let interrupted = writers.iter().any(|w| w.offered < a.count);
    // Interrupted, the writers may each have offered a different number.
    let offered_by_writer: Vec<u64> = writers.iter().map(|w| w.offered).collect();
    let written: u64 = writers.iter().map(|w| w.ok).sum();
    let bytes: u64 = writers.iter().map(|w| w.bytes).sum();
    let producer_lost = pstats.dropped_full
        + pstats.dropped_toobig
        + pstats.dropped_corrupt
        + pstats.overwritten_records
        + pstats.unread_at_close;
    let discarded = rec_json["discarded"].as_u64().unwrap_or(0);
    let dropped = producer_lost + discarded;
    let verified = if a.no_record {
        None
    } else {
        Some(verify::verify_dir(
            &out,
            &verify::Expect {
                offered: Some(verify::Offered::PerWriter(offered_by_writer.clone())),
                lost: Some(dropped),
                producer_lost: None,
            },
        )?)
    };
    let delivered = verified.as_ref().map_or(0, |r| r.records);
    let ok =
        verified.as_ref().is_none_or(|r| r.ok()) && (a.no_record || delivered + dropped == offered);
    let ns_per_record = {
        let mut v: Vec<f64> = writers
            .iter()
            .map(|w| w.secs * 1e9 / w.offered.max(1) as f64)
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mb_per_s = bytes as f64 / wall.max(1e-9) / 1e6;
    let summary = json!({
        "channel": name,
        "mode": a.chan.mode_name(),
        "buffers": nbuf,
        "threads": threads,
        "count": a.count,
        "interrupted": interrupted,
        "size": if a.size.min == a.size.max { format!("{}", a.size.min) } else { format!("{}..{}", a.size.min, a.size.max) },
        "subbuf_size": g.subbuf_size,
        "n_subbufs": g.n_subbufs,
        "written": offered,
        "offered_by_writer": offered_by_writer,
        "accepted": written,
        "delivered": delivered,
        "dropped": dropped,
        "dropped_full": pstats.dropped_full,
        "dropped_toobig": pstats.dropped_toobig,
        "dropped_corrupt": pstats.dropped_corrupt,
        "unread_at_close": pstats.unread_at_close,
        "overwritten": pstats.overwritten_records,
        "discarded": discarded,
        "verified": ok,
        "ns_per_record": ns_per_record,
        "cpu_id": if relayfs::cpu::uses_rseq() { "rseq" } else { "sched_getcpu" },
        "producer_mb_per_s": mb_per_s,
        "recorder_pid": rec_pid,
        "recorded_bytes": rec_json["bytes"].as_u64().unwrap_or(0),
        "out": a.out.as_ref().map(|p| p.display().to_string()),
        "defects": verified.as_ref().map(|r| r.defects.clone()),
    });
    if a.json {
        util::outln!("{summary}")?;
    } else {
        print_summary(&summary, a.no_record)?;
    }
    Ok(if ok { 0 } else { 1 })
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
pub(crate) fn start_recorder(chan: &Channel, out: &Path) -> Result<std::process::Child> {
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

/// Waits for a recorder started by `start_recorder` and returns its summary.
pub(crate) fn finish_recorder(mut child: std::process::Child) -> Result<serde_json::Value> {
    let mut s = String::new();
    if let Some(mut so) = child.stdout.take() {
        so.read_to_string(&mut s)?;
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("the recorder failed ({st})");
    }
    serde_json::from_str(s.trim()).context("reading the recorder's summary")
}

pub(crate) fn tempfile_dir() -> Result<tempfile::TempDir> {
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

fn print_summary(s: &serde_json::Value, no_record: bool) -> Result<()> {
    let u = |k: &str| s[k].as_u64().unwrap_or(0);
    let text = |k: &str| s[k].as_str().unwrap_or("").to_string();
    util::outln!("relayfs demo: channel {}", text("channel"))?;
    util::outln!(
        "  channel    {} buffers x {} sub-buffers x {}, {} mode",
        u("buffers"),
        u("n_subbufs"),
        util::human_bytes(u("subbuf_size")),
        text("mode")
    )?;
    util::outln!(
        "  producer   {} threads x {} records of {} B: {:.1} ns/record (median thread), {:.0} MB/s",
        u("threads"),
        u("count"),
        text("size"),
        s["ns_per_record"].as_f64().unwrap_or(0.0),
        s["producer_mb_per_s"].as_f64().unwrap_or(0.0)
    )?;
    if !no_record {
        util::outln!(
            "  recorder   relayfs record (pid {}) wrote {} to {}",
            u("recorder_pid"),
            util::human_bytes(u("recorded_bytes")),
            s["out"].as_str().unwrap_or("a temporary directory")
        )?;
    }
    util::outln!(
        "  written    {}{}",
        u("written"),
        if s["interrupted"] == true {
            " (interrupted: the writers stopped early)"
        } else {
            ""
        }
    )?;
    if !no_record {
        util::outln!("  delivered  {}", u("delivered"))?;
    }
    util::outln!(
        "  dropped    {} (buffer full {}, too big {}, overwritten {}, discarded by the reader {}, unread at close {}, corrupt buffer {})",
        u("dropped"),
        u("dropped_full"),
        u("dropped_toobig"),
        u("overwritten"),
        u("discarded"),
        u("unread_at_close"),
        u("dropped_corrupt")
    )?;
    if no_record {
        return Ok(());
    }
    let defects: Vec<&str> = s["defects"]
        .as_array()
        .map(|d| d.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    if s["verified"] == true {
        util::outln!(
            "  verified   OK: every record whole and in order, no duplicate; written = delivered + dropped"
        )?;
    } else {
        util::outln!("  verified   FAILED")?;
        for d in defects.iter().take(10) {
            util::outln!("    {d}")?;
        }
        if defects.is_empty() {
            util::outln!(
                "    the counters don't add up: {} written != {} delivered + {} dropped",
                u("written"),
                u("delivered"),
                u("dropped")
            )?;
        }
    }
    Ok(())
}
