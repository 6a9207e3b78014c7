//! A recording's settings, checked once: the commands turn their flags
//! (each number already refused by `crate::args` if out of range) into a
//! [`RecordConfig`] through [`RecordConfig::check`], and the engine takes
//! only that.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use super::output::is_sink;
use super::report::Show;
use crate::args;

/// Where and how each buffer's output is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutputConfig {
    /// Output directory, or a character device that takes every buffer's
    /// output (a sink).
    pub(crate) dir: PathBuf,
    /// Rotate a buffer's output file when it reaches this size.
    pub(crate) max_size: Option<u64>,
    /// With `max_size`, keep this many files per buffer.
    pub(crate) max_files: Option<u64>,
    /// Wait and retry when the output filesystem is full.
    pub(crate) retry: bool,
}

/// The flags of a recording, as given.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordFlags {
    pub(crate) out: PathBuf,
    pub(crate) wait: bool,
    pub(crate) base: Option<String>,
    pub(crate) max_size: Option<u64>,
    pub(crate) max_files: Option<u64>,
    pub(crate) retry: bool,
    /// Seconds.
    pub(crate) duration: Option<f64>,
    pub(crate) json: bool,
    pub(crate) quiet: bool,
}

/// A recording's settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordConfig {
    pub(crate) output: OutputConfig,
    /// Wait for the channel to appear.
    pub(crate) wait: bool,
    /// Base name of the buffer files, if one was chosen.
    pub(crate) base: Option<String>,
    /// Stop after this long.
    pub(crate) duration: Option<Duration>,
    pub(crate) show: Show,
}

/// A duration of `secs` seconds: finite, more than 0, at most a year
/// (`args::seconds`).
pub(crate) fn duration(secs: f64) -> Result<Duration> {
    if !secs.is_finite() || secs <= 0.0 || secs > args::MAX_SECONDS {
        bail!(
            "{secs} s: need a number of seconds more than 0 and at most {}",
            args::MAX_SECONDS
        );
    }
    Ok(Duration::from_secs_f64(secs))
}

impl RecordConfig {
    /// Checks `flags` together: what each value parser can't see alone.
    pub(crate) fn check(flags: RecordFlags) -> Result<RecordConfig> {
        let sink = is_sink(&flags.out);
        if sink && flags.max_size.is_some() {
            bail!(
                "--max-size needs an output directory, not {}",
                flags.out.display()
            );
        }
        if flags.max_files.is_some() && flags.max_size.is_none() {
            bail!("--max-files goes with --max-size");
        }
        if flags.max_size == Some(0) || flags.max_files == Some(0) {
            bail!("--max-size and --max-files take a number more than 0");
        }
        Ok(RecordConfig {
            output: OutputConfig {
                dir: flags.out,
                max_size: flags.max_size,
                max_files: flags.max_files,
                retry: flags.retry,
            },
            wait: flags.wait,
            base: flags.base,
            duration: flags.duration.map(duration).transpose()?,
            show: Show {
                json: flags.json,
                quiet: flags.quiet,
            },
        })
    }
}

/// The flags of `relayfs blktrace`, as given.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BlktraceFlags {
    pub(crate) out: Option<PathBuf>,
    /// Seconds.
    pub(crate) duration: Option<f64>,
    pub(crate) subbuf_size: u64,
    pub(crate) n_subbufs: u32,
    /// `--kill` or `--start`: no recording, so no output directory.
    pub(crate) no_recording: bool,
    pub(crate) retry: bool,
    pub(crate) json: bool,
    pub(crate) quiet: bool,
}

/// `relayfs blktrace`'s settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlktraceConfig {
    /// Where the recording goes (None with `--kill` or `--start`).
    pub(crate) output: Option<OutputConfig>,
    pub(crate) duration: Option<Duration>,
    /// The kernel's sub-buffer size: fits its 32-bit field.
    pub(crate) subbuf_size: u32,
    pub(crate) n_subbufs: u32,
    pub(crate) show: Show,
}

impl BlktraceConfig {
    /// Checks `flags` together, as the kernel's `relay_open` would.
    pub(crate) fn check(flags: BlktraceFlags) -> Result<BlktraceConfig> {
        args::kernel_buffer(flags.subbuf_size, flags.n_subbufs).map_err(anyhow::Error::msg)?;
        let subbuf_size = u32::try_from(flags.subbuf_size)
            .ok()
            .filter(|&b| b > 0 && flags.n_subbufs > 0);
        let Some(subbuf_size) = subbuf_size else {
            bail!("--subbuf-size must be between 1 byte and 4 GiB and --n-subbufs at least 1");
        };
        let output = match (flags.out, flags.no_recording) {
            (Some(dir), _) => Some(OutputConfig {
                dir,
                max_size: None,
                max_files: None,
                retry: flags.retry,
            }),
            (None, true) => None,
            (None, false) => bail!("--out is required (the output directory)"),
        };
        Ok(BlktraceConfig {
            output,
            duration: flags.duration.map(duration).transpose()?,
            subbuf_size,
            n_subbufs: flags.n_subbufs,
            show: Show {
                json: flags.json,
                quiet: flags.quiet,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> RecordFlags {
        RecordFlags {
            out: PathBuf::from("out"),
            wait: false,
            base: None,
            max_size: None,
            max_files: None,
            retry: false,
            duration: None,
            json: false,
            quiet: false,
        }
    }

    #[test]
    fn a_valid_recording_keeps_its_values() {
        let c = RecordConfig::check(RecordFlags {
            max_size: Some(100),
            max_files: Some(3),
            duration: Some(1.5),
            retry: true,
            json: true,
            ..flags()
        })
        .unwrap();
        assert_eq!(c.output.max_size, Some(100));
        assert_eq!(c.output.max_files, Some(3));
        assert!(c.output.retry);
        assert_eq!(c.duration, Some(Duration::from_millis(1500)));
        assert!(c.show.json && !c.show.quiet);
        assert!(!c.show.status_line(), "no status line with --json");
    }

    #[test]
    fn what_the_flags_cannot_mean_is_refused() {
        let e = RecordConfig::check(RecordFlags {
            out: PathBuf::from("/dev/null"),
            max_size: Some(100),
            ..flags()
        })
        .unwrap_err();
        assert!(format!("{e}").contains("--max-size needs an output directory"));
        // A device takes the output without rotation.
        assert!(RecordConfig::check(RecordFlags {
            out: PathBuf::from("/dev/null"),
            ..flags()
        })
        .is_ok());
        assert!(RecordConfig::check(RecordFlags {
            max_files: Some(2),
            ..flags()
        })
        .is_err());
        assert!(RecordConfig::check(RecordFlags {
            max_size: Some(0),
            ..flags()
        })
        .is_err());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e30] {
            let r = RecordConfig::check(RecordFlags {
                duration: Some(bad),
                ..flags()
            });
            assert!(r.is_err(), "{bad}");
        }
    }

    fn blktrace() -> BlktraceFlags {
        BlktraceFlags {
            out: Some(PathBuf::from("out")),
            duration: None,
            subbuf_size: 512 << 10,
            n_subbufs: 4,
            no_recording: false,
            retry: false,
            json: false,
            quiet: true,
        }
    }

    #[test]
    fn blktrace_buffers_are_held_to_what_the_kernel_takes() {
        let c = BlktraceConfig::check(blktrace()).unwrap();
        assert_eq!((c.subbuf_size, c.n_subbufs), (512 << 10, 4));
        assert_eq!(c.output.unwrap().dir, PathBuf::from("out"));
        for (b, n) in [(1 << 30, 8), (0, 4), (4096, 0), (1 << 32, 1)] {
            let r = BlktraceConfig::check(BlktraceFlags {
                subbuf_size: b,
                n_subbufs: n,
                ..blktrace()
            });
            assert!(r.is_err(), "-b {b} -n {n}");
        }
        // Recording needs a directory; --kill and --start don't.
        let r = BlktraceConfig::check(BlktraceFlags {
            out: None,
            ..blktrace()
        });
        assert!(format!("{}", r.unwrap_err()).contains("--out is required"));
        let c = BlktraceConfig::check(BlktraceFlags {
            out: None,
            no_recording: true,
            ..blktrace()
        })
        .unwrap();
        assert_eq!(c.output, None);
    }
}
