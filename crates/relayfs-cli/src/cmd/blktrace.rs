//! `relayfs blktrace DEV -o OUT`: block-layer tracing through the kernel's
//! blktrace relay channel, recorded by the same engine as `relayfs record`,
//! into files Debian's `blkparse` reads (`OUT/<dev>.blktrace.<cpu>`).
//!
//! Tracing is set up with the `BLKTRACESETUP` / `BLKTRACESTART` ioctls and
//! always stopped and torn down again (`BLKTRACESTOP`, `BLKTRACETEARDOWN`),
//! on Ctrl-C and on errors too: a device left traced refuses the next
//! tracer with `EBUSY`.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::recorder::config::{BlktraceConfig, BlktraceFlags};
use crate::recorder::kernel::{self as kernel_recorder, KernelRecording};
use crate::recorder::report::{self, BlktraceSummary, End};
use crate::recorder::source::{self, KernelRelayBuffer};
use crate::util;
use anyhow::{anyhow, bail, Context, Result};
use relayfs::kernel::{self, DEBUGFS_DIR, DEBUGFS_MAGIC};
use relayfs::KernelRelayFile;

/// Arguments of `relayfs blktrace`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The block device to trace, e.g. /dev/sda
    pub device: PathBuf,
    /// Output directory (created if missing); files are named
    /// <dev>.blktrace.<cpu>, as blktrace names them, for blkparse
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C)
    #[arg(short = 'w', long, value_name = "SECONDS", value_parser = crate::args::seconds)]
    pub duration: Option<f64>,
    /// Size of each relay sub-buffer (blktrace's -b)
    #[arg(short = 'b', long, default_value = "512K", value_parser = crate::args::kernel_subbuf_size)]
    pub subbuf_size: u64,
    /// Number of sub-buffers per CPU (blktrace's -n)
    #[arg(short = 'n', long, default_value_t = 4, value_parser = crate::args::kernel_n_subbufs)]
    pub n_subbufs: u32,
    /// Where debugfs is mounted
    #[arg(long, default_value = DEBUGFS_DIR)]
    pub debugfs: PathBuf,
    /// Stop and tear down tracing left running on DEVICE (by --start, or by
    /// a tracer that was killed), then exit
    #[arg(short = 'k', long, conflicts_with = "start")]
    pub kill: bool,
    /// Set up and start tracing, print the channel directory and exit,
    /// leaving tracing running for another reader (such as `relayfs record
    /// DIR --base trace`); --kill stops it
    #[arg(long)]
    pub start: bool,
    /// When the output filesystem is full, wait and retry
    #[arg(long)]
    pub retry: bool,
    /// Print the summary as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    /// No status line and no summary (errors only)
    #[arg(short, long)]
    pub quiet: bool,
}

// The blktrace ioctls (include/uapi/linux/fs.h): _IOWR(0x12, 115, struct
// blk_user_trace_setup) and _IO(0x12, 116..118).
const BLKTRACESETUP: libc::c_ulong = 0xC048_1273;
const BLKTRACESTART: libc::c_ulong = 0x1274;
const BLKTRACESTOP: libc::c_ulong = 0x1275;
const BLKTRACETEARDOWN: libc::c_ulong = 0x1276;

/// `struct blk_user_trace_setup` (include/uapi/linux/blktrace_api.h).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct BlkUserTraceSetup {
    name: [u8; 32],
    act_mask: u16,
    buf_size: u32,
    buf_nr: u32,
    start_lba: u64,
    end_lba: u64,
    pid: u32,
}
const _: () = assert!(std::mem::size_of::<BlkUserTraceSetup>() == 72);

/// Size of `struct blk_io_trace`, the header of every event.
pub const EVENT_HEADER: usize = 48;
/// `BLK_IO_TRACE_MAGIC`; the low byte is the format version.
const EVENT_MAGIC: u32 = 0x6561_7400;

/// Tracing set up on a device; stopped and torn down when dropped.
struct Trace {
    dev: File,
    path: PathBuf,
    started: bool,
    set_up: bool,
}

impl Trace {
    fn ioctl(&self, req: libc::c_ulong, what: &str) -> io::Result<()> {
        // SAFETY: these requests take no argument; the fd is an open block
        // device.
        if unsafe { libc::ioctl(self.dev.as_raw_fd(), req as _) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        Ok(())
    }

    fn start(&mut self) -> io::Result<()> {
        self.ioctl(BLKTRACESTART, "BLKTRACESTART")?;
        self.started = true;
        Ok(())
    }

    /// Stops tracing; the kernel flushes every relay buffer, so what was
    /// traced becomes readable.
    fn stop(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.started) {
            self.ioctl(BLKTRACESTOP, "BLKTRACESTOP")?;
        }
        Ok(())
    }

    fn teardown(&mut self) -> io::Result<()> {
        self.stop()?;
        if std::mem::take(&mut self.set_up) {
            self.ioctl(BLKTRACETEARDOWN, "BLKTRACETEARDOWN")?;
        }
        Ok(())
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            crate::util::errln!(
                "relayfs blktrace: {}: could not tear tracing down: {e} (try relayfs blktrace --kill {})",
                self.path.display(),
                self.path.display()
            );
        }
    }
}

fn open_device(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => anyhow!("{}: no such device", path.display()),
        _ => anyhow!("{}: {e}", path.display()),
    })?;
    if !meta.file_type().is_block_device() {
        bail!("{} is not a block device", path.display());
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => anyhow!(
                "{}: {e}: block tracing needs root (CAP_SYS_ADMIN)",
                path.display()
            ),
            _ => anyhow!("cannot open {}: {e}", path.display()),
        })
}

fn check_debugfs(dir: &Path) -> Result<()> {
    let on_debugfs = kernel::fs_magic(dir).is_ok_and(|t| t == DEBUGFS_MAGIC);
    if !on_debugfs {
        bail!(
            "debugfs is not mounted at {}: blktrace's relay files live there; mount it with\n    mount -t debugfs debugfs {}",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

fn setup(dev: File, path: &Path, cfg: &BlktraceConfig) -> Result<(Trace, String)> {
    let mut buts = BlkUserTraceSetup {
        name: [0; 32],
        act_mask: 0, // every action (the kernel's default for 0)
        buf_size: cfg.subbuf_size,
        buf_nr: cfg.n_subbufs,
        start_lba: 0,
        end_lba: 0,
        pid: 0,
    };
    // SAFETY: BLKTRACESETUP reads and writes one `blk_user_trace_setup`,
    // which `buts` is (layout checked above).
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), BLKTRACESETUP as _, &mut buts) };
    if r < 0 {
        let e = io::Error::last_os_error();
        let d = path.display();
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) => anyhow!(
                "{d}: tracing is already running on this device (another blktrace?); stop that tracer, or clear it with: relayfs blktrace --kill {d}"
            ),
            Some(libc::EACCES) | Some(libc::EPERM) => {
                anyhow!("{d}: BLKTRACESETUP: {e}: block tracing needs root (CAP_SYS_ADMIN)")
            }
            Some(libc::ENOTTY) | Some(libc::EINVAL) => anyhow!(
                "{d}: BLKTRACESETUP: {e} (a partition or a device without a request queue? or sizes the kernel refuses)"
            ),
            _ => anyhow!("{d}: BLKTRACESETUP: {e}"),
        });
    }
    let len = buts.name.iter().position(|&b| b == 0).unwrap_or(32);
    let name = String::from_utf8_lossy(&buts.name[..len]).into_owned();
    Ok((
        Trace {
            dev,
            path: path.to_path_buf(),
            started: false,
            set_up: true,
        },
        name,
    ))
}

/// Events in a stream of blktrace records, checked as they are counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventCount {
    /// Well-formed events.
    pub events: u64,
    /// Bytes.
    pub bytes: u64,
    /// Bytes at the end that are not a whole event, or follow a bad magic.
    pub garbage: u64,
}

/// Counts the events in a file (or the concatenation of files) of
/// `struct blk_io_trace` records.
pub fn count_events(r: impl Read) -> io::Result<EventCount> {
    let mut r = BufReader::with_capacity(1 << 16, r);
    let mut c = EventCount::default();
    let mut hdr = [0u8; EVENT_HEADER];
    loop {
        let got = read_full(&mut r, &mut hdr)?;
        c.bytes += got as u64;
        if got == 0 {
            return Ok(c);
        }
        let magic = u32::from_ne_bytes(hdr[0..4].try_into().unwrap());
        if got < EVENT_HEADER || magic & 0xffff_ff00 != EVENT_MAGIC {
            let rest = io::copy(&mut r, &mut io::sink())?;
            c.bytes += rest;
            c.garbage += got as u64 + rest;
            return Ok(c);
        }
        let pdu = u16::from_ne_bytes(hdr[46..48].try_into().unwrap()) as u64;
        let skipped = io::copy(&mut (&mut r).take(pdu), &mut io::sink())?;
        c.bytes += skipped;
        if skipped < pdu {
            c.garbage += EVENT_HEADER as u64 + skipped;
            return Ok(c);
        }
        c.events += 1;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Args {
    /// The settings these flags ask for, checked.
    fn config(&self) -> Result<BlktraceConfig> {
        BlktraceConfig::check(BlktraceFlags {
            out: self.out.clone(),
            duration: self.duration,
            subbuf_size: self.subbuf_size,
            n_subbufs: self.n_subbufs,
            no_recording: self.kill || self.start,
            retry: self.retry,
            json: self.json,
            quiet: self.quiet,
        })
    }
}

/// Runs `relayfs blktrace`.
pub fn run(a: &Args) -> Result<i32> {
    let cfg = a.config()?;
    util::catch_interrupts();
    let dev = open_device(&a.device)?;
    if a.kill {
        let mut t = Trace {
            dev,
            path: a.device.clone(),
            started: true,
            set_up: true,
        };
        // Either may fail with EINVAL if nothing was running.
        let stop = t.stop();
        let down = t.teardown();
        match (stop, down) {
            (Ok(()), Ok(())) => crate::util::errln!(
                "relayfs blktrace: tracing on {} torn down",
                a.device.display()
            ),
            (_, Err(e)) => crate::util::errln!(
                "relayfs blktrace: {}: {e} (nothing was running?)",
                a.device.display()
            ),
            (Err(e), Ok(())) => {
                crate::util::errln!("relayfs blktrace: {}: {e}; torn down", a.device.display())
            }
        }
        return Ok(0);
    }
    check_debugfs(&a.debugfs)?;
    let (mut trace, name) = setup(dev, &a.device, &cfg)?;
    let dir = a.debugfs.join("block").join(&name);
    if a.start {
        trace
            .start()
            .with_context(|| format!("{}", a.device.display()))?;
        // Leave it running: forget the guard.
        trace.started = false;
        trace.set_up = false;
        util::outln!("{}", dir.display())?;
        return Ok(0);
    }

    // Checked: only --kill and --start go without.
    let Some(opts) = &cfg.output else {
        bail!("--out is required (the output directory)");
    };
    let out = opts.dir.clone();
    let files = source::relay_files(&dir, Some("trace"))?;
    let mut open = Vec::new();
    for (file, path, cpu) in files {
        let f = KernelRelayFile::open(&path)?;
        open.push((
            KernelRelayBuffer {
                name: file,
                out_name: format!("{name}.blktrace.{cpu}"),
                cpu: Some(cpu),
            },
            f,
        ));
    }
    let show = cfg.show;
    let status = show.status_line();
    let rec = KernelRecording::start(open, opts)?;
    let mmap = rec.mmap;
    trace
        .start()
        .with_context(|| format!("{}", a.device.display()))?;
    let why = rec.wait(cfg.duration, Some(&dir), status);
    // Stop first: the kernel flushes its buffers, then the readers drain.
    // No reader may be inside read(2) while the kernel flushes (it would
    // copy a sub-buffer that was never written): park them first.
    rec.quiesce();
    let stopped = trace.stop();
    let (results, elapsed) = rec.finish(status);
    let dropped = kernel::channel_dropped(&dir);
    let down = trace.teardown();
    drop(trace);
    stopped.with_context(|| format!("{}", a.device.display()))?;
    down.with_context(|| format!("{}", a.device.display()))?;

    let mut per_cpu = Vec::new();
    let mut damaged = Vec::new();
    for r in &results {
        let mut c = EventCount::default();
        for f in &r.files {
            let n = count_events(File::open(f)?)
                .with_context(|| format!("cannot read {}", f.display()))?;
            c.events += n.events;
            c.bytes += n.bytes;
            c.garbage += n.garbage;
            if n.garbage > 0 {
                damaged.push((f.clone(), n));
            }
        }
        per_cpu.push(c);
    }
    let events: u64 = per_cpu.iter().map(|c| c.events).sum();
    let garbage: u64 = per_cpu.iter().map(|c| c.garbage).sum();
    let cpu_s = util::cpu_seconds(libc::RUSAGE_SELF);
    let mut summary =
        kernel_recorder::kernel_summary(&dir, &out, why, &results, elapsed, dropped, mmap);
    summary.blktrace = Some(BlktraceSummary {
        device: a.device.display().to_string(),
        events,
        unparsed_bytes: garbage,
        events_per_cpu: per_cpu.iter().map(|c| c.events).collect(),
        cpu_s,
        subbuf_size: a.subbuf_size,
        n_subbufs: a.n_subbufs,
    });
    if !damaged.is_empty() {
        summary.end = End::Error;
        summary.exit_code = 1;
    }
    let written = report::emit("relayfs blktrace", &summary, &out, show, || {
        // blktrace's own summary, so that its users read it at a glance.
        crate::util::errln!("=== {name} ===");
        for (r, c) in results.iter().zip(&per_cpu) {
            let cpu = r.name.trim_start_matches("trace");
            crate::util::errln!(
                "  CPU{cpu:>3}: {:>20} events, {:>8} KiB data",
                c.events,
                r.bytes.div_ceil(1024)
            );
        }
        let bytes: u64 = results.iter().map(|r| r.bytes).sum();
        crate::util::errln!(
            "  Total:  {:>20} events (dropped {}), {:>8} KiB data",
            events,
            dropped.unwrap_or(0),
            bytes.div_ceil(1024)
        );
        crate::util::errln!(
            "  recorded in {elapsed:.2} s, {cpu_s:.3} CPU s; output in {}",
            out.display()
        );
    })?;
    // Output that doesn't parse from end to end is a failed recording,
    // whatever else went well.
    for (f, n) in &damaged {
        crate::util::errln!(
            "relayfs blktrace: {}: the last {} bytes (after {} whole events) are not whole blktrace events: this output is damaged",
            f.display(),
            n.garbage,
            n.events
        );
    }
    if let Some(d) = dropped.filter(|&d| d > 0) {
        crate::util::errln!(
            "You have {d} ({:.1}%) dropped events\nConsider using a larger sub-buffer size (--subbuf-size, now {}) and/or more sub-buffers (--n-subbufs, now {})",
            100.0 * d as f64 / (d + events).max(1) as f64,
            util::human_bytes(a.subbuf_size),
            a.n_subbufs
        );
    }
    let code = kernel_recorder::report_errors(&results);
    Ok(exit_code(why, code, !damaged.is_empty()).max(i32::from(!written)))
}

/// The exit status of a recording: the readers' (1 if one failed), and 1
/// too if the wait ended on an error or an output file doesn't parse from
/// end to end.
fn exit_code(why: End, readers: i32, damaged: bool) -> i32 {
    if readers != 0 {
        readers
    } else {
        i32::from(why == End::Error || damaged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pdu: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; EVENT_HEADER];
        e[0..4].copy_from_slice(&(EVENT_MAGIC | 7).to_ne_bytes());
        e[46..48].copy_from_slice(&(pdu.len() as u16).to_ne_bytes());
        e.extend_from_slice(pdu);
        e
    }

    #[test]
    fn counts_events_with_and_without_payload() {
        let mut s = event(b"");
        s.extend(event(b"kworker/0:1"));
        s.extend(event(&[1, 2, 3]));
        let c = count_events(&s[..]).unwrap();
        assert_eq!(c.events, 3);
        assert_eq!(c.bytes, s.len() as u64);
        assert_eq!(c.garbage, 0);
    }

    #[test]
    fn a_torn_or_foreign_tail_is_reported_not_counted() {
        let mut s = event(b"abc");
        s.extend(&event(b"defg")[..50]);
        let c = count_events(&s[..]).unwrap();
        assert_eq!((c.events, c.garbage), (1, 50));
        let mut s = event(b"");
        s.extend([0xffu8; 100]);
        let c = count_events(&s[..]).unwrap();
        assert_eq!((c.events, c.garbage), (1, 100));
        assert_eq!(count_events(&b"short"[..]).unwrap().garbage, 5);
    }

    #[test]
    fn output_that_does_not_parse_fails_the_recording() {
        // What a read racing the kernel's flush leaves: whole events, then
        // a sub-buffer that was never written.
        let mut s = event(b"");
        s.extend(event(b"kworker/0:1"));
        s.extend(vec![0u8; 4096]);
        let c = count_events(&s[..]).unwrap();
        assert_eq!((c.events, c.garbage), (2, 4096));
        assert_eq!(exit_code(End::Interrupted, 0, c.garbage > 0), 1);
        assert_eq!(exit_code(End::Interrupted, 0, false), 0);
        assert_eq!(exit_code(End::Stopped, 0, false), 0);
        assert_eq!(exit_code(End::Error, 0, false), 1);
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_encoding() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr
        let ioc = |dir: libc::c_ulong, nr: libc::c_ulong, size: libc::c_ulong| {
            dir << 30 | size << 16 | 0x12 << 8 | nr
        };
        assert_eq!(BLKTRACESETUP, ioc(3, 115, 72));
        assert_eq!(BLKTRACESTART, ioc(0, 116, 0));
        assert_eq!(BLKTRACESTOP, ioc(0, 117, 0));
        assert_eq!(BLKTRACETEARDOWN, ioc(0, 118, 0));
    }
}
