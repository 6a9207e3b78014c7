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
}
