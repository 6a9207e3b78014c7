//! `relayfs bench`: end to end across processes. N producer threads write
//! demo records as fast as they can (or at `--rate`) into a fresh channel
//! while `relayfs record`, in another process, drains it; then the recording
//! is verified. Prints the producer's cost per record (median and p99 over
//! batches), records/s and bytes/s, the recorder's bytes/s and CPU seconds
//! per GB, and written / delivered / dropped. Beside the recorder it measures,
//! in the same run, the output filesystem alone: `write(2)` of the same
//! volume into the same directory, so that a recorder limited by the
//! filesystem shows as such.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::checker as verify;
use crate::util;
use crate::workload::{self, ChannelArgs, Rng, SizeSpec, BATCH};

/// Arguments of `relayfs bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Producer threads (default: one per CPU)
    #[arg(long, value_parser = crate::args::threads)]
    pub threads: Option<u32>,
    /// Record length S, or MIN..MAX
    #[arg(long, default_value = "64", value_parser = workload::parse_size_spec)]
    pub size: SizeSpec,
    /// Records per thread (default: run for --duration)
    #[arg(long, value_parser = crate::args::count)]
    pub count: Option<u64>,
    /// Seconds to run when no --count is given
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS", value_parser = crate::args::seconds)]
    pub duration: f64,
    /// Total producer rate in records per second (default: as fast as possible)
    #[arg(long, value_parser = crate::args::rate)]
    pub rate: Option<f64>,
    #[command(flatten)]
    pub chan: ChannelArgs,
    /// Record into DIR (default: a temporary directory on tmpfs), or into a
    /// device such as /dev/null to measure the recorder alone (the counters
    /// are then checked, not the records)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Produce with no reader at all (the producer's cost alone)
    #[arg(long)]
    pub no_reader: bool,
    /// Run the standard matrix (16/64/1024/4096 B x 1 thread / one per CPU x
    /// both modes, --duration each) and print a table
    #[arg(long)]
    pub sweep: bool,
    /// Search for the highest --rate with zero drops over --duration
    #[arg(long)]
    pub find_lossless: bool,
    /// Print the result as one JSON object
    #[arg(long)]
    pub json: bool,
    /// Skip the filesystem baseline (write(2) alone of the expected volume
    /// into the output directory, twice, measured before the run)
    #[arg(long)]
    pub no_fs_baseline: bool,
}

/// One run's summary (`--json` prints it as one object).
#[derive(Debug, Serialize)]
struct Run {
    /// Producer threads.
    threads: u32,
    /// `--size`, as `S` or `MIN..MAX`.
    size: String,
    /// "overwrite" or "no-overwrite".
    mode: &'static str,
    /// `--rate`: total records per second asked for.
    rate: Option<f64>,
    /// A recorder ran.
    reader: bool,
    /// Median over the batches of nanoseconds per record.
    ns_per_record: f64,
    /// 99th percentile of the same.
    ns_per_record_p99: f64,
    /// Records offered per second of the producers' wall time.
    records_per_sec: f64,
    /// Bytes accepted per second of the same.
    bytes_per_sec: f64,
    /// Bytes offered per second (at the accepted records' mean size).
    offered_bytes_per_sec: f64,
    /// The producers' wall time.
    seconds: f64,
    /// Records offered.
    written: u64,
    /// Records the channel accepted.
    accepted: u64,
    /// Records in the recording (or that the recorder counted, into a
    /// device).
    delivered: u64,
    /// Every record lost, whatever the reason.
    dropped: u64,
    dropped_full: u64,
    overwritten: u64,
    recorder_bytes: u64,
    recorder_bytes_per_sec: f64,
    recorder_cpu_s_per_gb: f64,
    /// The recording (or, into a device, the counters) checked out; `None`
    /// with no reader.
    verified: Option<bool>,
    /// The records themselves were checked, not only the counters.
    verified_records: bool,
    recorder_rss_anon_peak_kib: Option<u64>,
    fs_baseline: Option<FsBaseline>,
}

/// The output filesystem alone, both passes (see [`fs_baseline`]).
#[derive(Debug, Serialize)]
struct FsBaseline {
    cold: FsPass,
    warm: FsPass,
}

/// One pass of the filesystem baseline.
#[derive(Debug, Serialize)]
struct FsPass {
    bytes: u64,
    bytes_per_sec: f64,
    cpu_s_per_gb: f64,
    /// CPUs this pass's cost would take to store what the producers
    /// offered.
    cpus_for_offered: f64,
}

/// `--sweep --json`.
#[derive(Serialize)]
struct Sweep {
    sweep: Vec<Run>,
}

/// `--find-lossless --json` when even the unthrottled run dropped nothing.
#[derive(Serialize)]
struct NoDrops {
    lossless_rate: f64,
    unthrottled: Run,
}

/// `--find-lossless --json` after a search.
#[derive(Serialize)]
struct Lossless {
    lossless_rate: f64,
    /// The run at `lossless_rate` (`None` if no rate tried was lossless).
    at_that_rate: Option<Run>,
    unthrottled: Run,
}

/// Prints `v` as one line of JSON, keys sorted (through a `Value`: the
/// order they have always had).
fn print_json(v: &impl Serialize) -> Result<()> {
    util::outln!("{}", serde_json::to_value(v)?)?;
    Ok(())
}

/// `x`, unless it is not a finite number (which JSON shows as null).
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The output filesystem alone, in the same run: `total` bytes written with
/// `write(2)`, `chunk` bytes per call (a sub-buffer, as the recorder writes
/// them), from a ring of `ring` bytes (the size of a buffer, as the
/// recorder's source is), into a new file in `dir`,
/// which is removed after. Done twice, and both passes are reported: the
/// first (`cold`) gets memory the system has not used lately, which in a
/// virtual machine whose host takes freed memory back costs as much as the
/// copy; the second (`warm`) reuses the pages the first freed, and shows the
/// filesystem's own cost. A recorder writing gigabytes lands between them.
fn fs_baseline(dir: &Path, total: u64, ring: usize, chunk: usize) -> Result<FsBaseline> {
    let cold = fs_write(dir, total, ring, chunk)?;
    let warm = fs_write(dir, total, ring, chunk)?;
    Ok(FsBaseline { cold, warm })
}

fn fs_write(dir: &Path, total: u64, ring: usize, chunk: usize) -> Result<FsPass> {
    let chunk = chunk.clamp(4096, ring.max(4096));
    let ring = ring.max(chunk);
    let mut src = vec![0u8; ring];
    let mut rng = Rng::new(0x5eed);
    for b in src.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        b.copy_from_slice(&v[..b.len()]);
    }
    let mut f = tempfile::Builder::new()
        .prefix(".relayfs-fs-baseline-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let (t0, c0) = (Instant::now(), util::cpu_seconds(libc::RUSAGE_THREAD));
    let mut done = 0u64;
    let mut at = 0usize;
    while done < total && !util::interrupted() {
        let n = chunk.min((total - done) as usize).min(ring - at);
        f.write_all(&src[at..at + n])
            .with_context(|| format!("filesystem baseline: writing into {}", dir.display()))?;
        done += n as u64;
        at = (at + n) % ring;
    }
    let (secs, cpu) = (
        t0.elapsed().as_secs_f64(),
        util::cpu_seconds(libc::RUSAGE_THREAD) - c0,
    );
    drop(f);
    Ok(FsPass {
        bytes: done,
        bytes_per_sec: done as f64 / secs.max(1e-9),
        cpu_s_per_gb: if done > 0 {
            cpu / (done as f64 / 1e9)
        } else {
            0.0
        },
        cpus_for_offered: 0.0,
    })
}

/// Volume of the filesystem baseline: what the producers are expected to
/// offer at `--rate` over `--duration` (1 GiB per second when unthrottled),
/// within 64 MiB and 4 GiB (more than the caches, short enough to repeat).
fn fs_baseline_bytes(a: &Args, threads: u32) -> u64 {
    let mean = (a.size.min as f64 + a.size.max as f64) / 2.0;
    let expected = match (a.rate, a.count) {
        (_, Some(c)) => c as f64 * threads as f64 * mean,
        (Some(r), None) => r * a.duration * mean,
        (None, None) => a.duration * (1u64 << 30) as f64,
    };
    (expected as u64).clamp(64 << 20, 4 << 30)
}

/// One run; returns its summary.
fn run_once(a: &Args) -> Result<Run> {
    let threads = a.threads.unwrap_or_else(workload::default_threads);
    let name = format!("bench-{}", std::process::id());
    let chan = Arc::new(
        a.chan
            .builder(&name)
            .open()
            .with_context(|| format!("cannot open channel {name}"))?,
    );
    let tmp;
    let out = match &a.out {
        Some(o) => o.clone(),
        None => {
            tmp = workload::tmpfs_out_dir()?;
            tmp.path().to_path_buf()
        }
    };
    let fs = if !a.no_reader && !crate::recorder::output::is_sink(&out) && !a.no_fs_baseline {
        std::fs::create_dir_all(&out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        let g = chan.geometry();
        Some(fs_baseline(
            &out,
            fs_baseline_bytes(a, threads),
            g.data_len() as usize,
            g.subbuf_size as usize,
        )?)
    } else {
        None
    };
    let cpu_before = util::cpu_seconds(libc::RUSAGE_CHILDREN);
    let recorder = if a.no_reader {
        None
    } else {
        Some(workload::start_recorder(&chan, &out)?)
    };
    let written = workload::write(
        &chan,
        workload::Load {
            threads,
            size: a.size,
            seed: 1,
            until: match a.count {
                Some(c) => workload::Until::Count(c),
                None => workload::Until::Elapsed(Duration::from_secs_f64(a.duration)),
            },
            rate: a.rate,
        },
    )?;
    let wall = written.wall;
    let offered_per_writer = written.offered_by_writer();
    // The final counts, with what no reader was left to read.
    let pstats = chan.close()?;
    let rec = match recorder {
        Some(c) => Some(workload::finish_recorder(c)?),
        None => None,
    };
    let rec_secs = written.started.elapsed().as_secs_f64();
    let rec_cpu = util::cpu_seconds(libc::RUSAGE_CHILDREN) - cpu_before;
    let offered = written.offered();
    let accepted = written.accepted();
    let bytes = written.bytes();
    let dropped = workload::dropped(&pstats, rec.as_ref());
    let sink = crate::recorder::output::is_sink(&out);
    let report = if rec.is_some() && !sink {
        // Writers ran for a duration: each offered its own count.
        let same = offered_per_writer
            .iter()
            .all(|&c| c == offered_per_writer[0]);
        let writers_count = same.then(|| (threads, offered_per_writer[0]));
        Some(verify::verify_dir(
            &out,
            &verify::Expect {
                offered: writers_count.map(|(w, c)| verify::Offered::each(w, c)),
                lost: Some(dropped),
                producer_lost: None,
            },
        )?)
    } else {
        None
    };
    let delivered = match (&report, &rec) {
        (Some(r), _) => r.records,
        (None, Some(rec)) => rec.records_delivered,
        (None, None) => 0,
    };
    let verified = match (&report, &rec) {
        (Some(r), _) => Some(r.ok() && delivered + dropped == offered),
        // Into a device: the counters must still add up.
        (None, Some(_)) => Some(delivered + dropped == offered),
        (None, None) => None,
    };
    let batch = written.batch_ns_sorted();
    let rec_bytes = rec.as_ref().map_or(0, |r| r.bytes);
    let offered_bytes_per_sec = if accepted > 0 {
        offered as f64 / wall * (bytes as f64 / accepted as f64)
    } else {
        0.0
    };
    let fs = fs.map(|mut fs| {
        // CPUs the filesystem alone would need to store everything the
        // producers offered, at the cost of each pass.
        for pass in [&mut fs.cold, &mut fs.warm] {
            pass.cpus_for_offered = pass.cpu_s_per_gb * offered_bytes_per_sec / 1e9;
        }
        fs
    });
    Ok(Run {
        threads,
        size: a.size.to_string(),
        mode: a.chan.mode_name(),
        rate: a.rate,
        reader: !a.no_reader,
        ns_per_record: percentile(&batch, 0.5),
        ns_per_record_p99: percentile(&batch, 0.99),
        records_per_sec: offered as f64 / wall,
        bytes_per_sec: bytes as f64 / wall,
        offered_bytes_per_sec,
        seconds: wall,
        written: offered,
        accepted,
        delivered,
        dropped,
        dropped_full: pstats.dropped_full,
        overwritten: pstats.overwritten_records,
        recorder_bytes: rec_bytes,
        recorder_bytes_per_sec: rec_bytes as f64 / rec_secs,
        recorder_cpu_s_per_gb: if rec_bytes > 0 {
            rec_cpu / (rec_bytes as f64 / 1e9)
        } else {
            0.0
        },
        verified,
        verified_records: report.is_some(),
        recorder_rss_anon_peak_kib: rec
            .as_ref()
            .and_then(|r| r.memory.map(|m| m.rss_anon_peak_kib)),
        fs_baseline: fs,
    })
}

fn print_run(v: &Run) -> Result<()> {
    util::outln!(
        "relayfs bench: {} threads x {} B records, {} mode{}",
        v.threads,
        v.size,
        v.mode,
        v.rate.map_or(String::new(), |r| format!(", rate {r:.0}/s"))
    )?;
    util::outln!(
        "  producer   {:.1} ns/record median, {:.1} p99 (over batches of up to {BATCH} records); {:.2} M records/s, {:.0} MB/s",
        v.ns_per_record,
        v.ns_per_record_p99,
        v.records_per_sec / 1e6,
        v.bytes_per_sec / 1e6
    )?;
    if v.reader {
        util::outln!(
            "  recorder   {:.0} MB/s, {:.2} CPU s per GB, {} KiB anonymous memory at most",
            v.recorder_bytes_per_sec / 1e6,
            v.recorder_cpu_s_per_gb,
            v.recorder_rss_anon_peak_kib.unwrap_or(0)
        )?;
    }
    if let Some(fs) = &v.fs_baseline {
        util::outln!(
            "  filesystem write(2) alone of {} into the same directory before the run, twice: \
             {:.0} MB/s at {:.2} CPU s per GB into memory not used lately, {:.0} MB/s at {:.2} reusing it",
            util::human_bytes(fs.warm.bytes),
            fs.cold.bytes_per_sec / 1e6,
            fs.cold.cpu_s_per_gb,
            fs.warm.bytes_per_sec / 1e6,
            fs.warm.cpu_s_per_gb,
        )?;
        if v.rate.is_some() {
            util::outln!(
                "             storing the {:.0} MB/s offered would take the filesystem alone {:.2} CPUs ({:.2} warm)",
                v.offered_bytes_per_sec / 1e6,
                fs.cold.cpus_for_offered,
                fs.warm.cpus_for_offered,
            )?;
        }
    }
    util::outln!(
        "  written {}  delivered {}  dropped {}  verified {}",
        v.written,
        v.delivered,
        v.dropped,
        match v.verified {
            Some(true) if !v.verified_records => "OK (counters only)",
            Some(true) => "OK",
            Some(false) => "FAILED",
            None => "-",
        }
    )
}

/// Runs `relayfs bench`.
pub fn run(a: &Args) -> Result<i32> {
    a.chan.check()?;
    util::catch_interrupts();
    if a.sweep {
        return sweep(a);
    }
    if a.find_lossless {
        return find_lossless(a);
    }
    let v = run_once(a)?;
    if a.json {
        print_json(&v)?;
    } else {
        print_run(&v)?;
    }
    Ok(if v.verified == Some(false) { 1 } else { 0 })
}

fn sweep(a: &Args) -> Result<i32> {
    let ncpu = workload::default_threads();
    let mut rows = Vec::new();
    let mut bad = false;
    if !a.json {
        util::outln!(
            "{:>6} {:>7} {:<13} {:>10} {:>10} {:>12} {:>10} {:>12} {:>10}  verified",
            "size",
            "threads",
            "mode",
            "ns/rec",
            "p99",
            "Mrec/s",
            "MB/s",
            "rec MB/s",
            "dropped%"
        )?;
    }
    for size in [16u32, 64, 1024, 4096] {
        for threads in [1, ncpu] {
            for overwrite in [false, true] {
                if util::interrupted() {
                    break;
                }
                let mut run = a.clone();
                run.size = SizeSpec {
                    min: size.max(24),
                    max: size.max(24),
                };
                run.threads = Some(threads);
                run.chan.overwrite = overwrite;
                run.no_fs_baseline = true;
                let v = run_once(&run)?;
                bad |= v.verified == Some(false);
                if !a.json {
                    util::outln!(
                        "{:>6} {:>7} {:<13} {:>10.1} {:>10.1} {:>12.2} {:>10.0} {:>12.0} {:>9.1}%  {}",
                        size.max(24),
                        threads,
                        v.mode,
                        v.ns_per_record,
                        v.ns_per_record_p99,
                        v.records_per_sec / 1e6,
                        v.bytes_per_sec / 1e6,
                        v.recorder_bytes_per_sec / 1e6,
                        100.0 * v.dropped as f64 / (v.written as f64).max(1.0),
                        if v.verified == Some(true) { "OK" } else { "FAILED" }
                    )?;
                }
                rows.push(v);
            }
        }
    }
    if a.json {
        print_json(&Sweep { sweep: rows })?;
    }
    Ok(if bad { 1 } else { 0 })
}

fn find_lossless(a: &Args) -> Result<i32> {
    // Unthrottled first: the ceiling.
    let mut run = a.clone();
    run.rate = None;
    let top = run_once(&run)?;
    let mut hi = finite(top.records_per_sec).unwrap_or(1e6);
    if top.dropped == 0 {
        if a.json {
            print_json(&NoDrops {
                lossless_rate: hi,
                unthrottled: top,
            })?;
        } else {
            util::outln!("no drops even unthrottled: {:.2} M records/s", hi / 1e6)?;
            if let Some(line) = fs_ceiling(&top) {
                util::outln!("{line}")?;
            }
        }
        return Ok(0);
    }
    let mut lo = 0.0f64;
    let mut best = None;
    for _ in 0..7 {
        if util::interrupted() {
            break;
        }
        let mid = if lo == 0.0 { hi / 2.0 } else { (lo + hi) / 2.0 };
        run.rate = Some(mid);
        run.no_fs_baseline = true;
        let v = run_once(&run)?;
        let ok = v.dropped == 0 && v.verified != Some(false);
        if !a.json {
            util::outln!(
                "  rate {:>8.2} M/s: achieved {:.2} M/s, dropped {}, {:.1} ns/record",
                mid / 1e6,
                v.records_per_sec / 1e6,
                v.dropped,
                v.ns_per_record
            )?;
        }
        if ok {
            lo = mid;
            best = Some(v);
        } else {
            hi = mid;
        }
    }
    if a.json {
        print_json(&Lossless {
            lossless_rate: lo,
            at_that_rate: best,
            unthrottled: top,
        })?;
    } else {
        util::outln!(
            "highest rate with zero drops found: {:.2} M records/s",
            lo / 1e6
        )?;
        if let Some(line) = fs_ceiling(&top) {
            util::outln!("{line}")?;
        }
    }
    Ok(0)
}

/// What the filesystem baseline of `v` (a run's summary) says about the
/// rates a recorder could store at all: records per second of the run's
/// mean size that one whole CPU writes into the filesystem alone.
fn fs_ceiling(v: &Run) -> Option<String> {
    let fs = v.fs_baseline.as_ref()?;
    let mean = finite(v.offered_bytes_per_sec)? / finite(v.records_per_sec)?;
    let per_cpu = |pass: &FsPass| {
        let per_gb = pass.cpu_s_per_gb;
        if per_gb > 0.0 && mean > 0.0 {
            1e9 / per_gb / mean
        } else {
            0.0
        }
    };
    Some(format!(
        "the filesystem alone, measured before the first run, stores at most {:.2} M records/s \
         of {mean:.0} B with a whole CPU, into memory not used lately ({:.2} M/s reusing it)",
        per_cpu(&fs.cold) / 1e6,
        per_cpu(&fs.warm) / 1e6,
    ))
}
