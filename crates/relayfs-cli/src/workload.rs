//! What `relayfs demo` and `relayfs bench` share: the channel's shape as
//! they take it, the record size spec and the seeded generator of lengths,
//! and starting `relayfs record` in another process on a channel and
//! reading its summary back.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relayfs::{Channel, Mode, RelayFile};

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

/// Waits for a recorder started by [`start_recorder`] and returns its
/// summary.
pub fn finish_recorder(mut child: std::process::Child) -> Result<serde_json::Value> {
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
}
