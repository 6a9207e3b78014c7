//! Checks of the command line's numbers: every duration, rate, size and
//! count a subcommand takes goes through one of these `clap` value parsers,
//! so that a bad value is refused (clap's usage error, exit 2) before
//! anything starts, never found later as a panic or a half-made channel.

use relayfs::layout::{MAX_SUBBUFS, MAX_SUBBUF_SIZE, MIN_SUBBUF_SIZE};

use crate::util;

/// Longest duration or interval accepted, in seconds (a year).
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;
/// Most producer threads `demo` and `bench` start.
pub const MAX_THREADS: u32 = 4096;
/// Most records per writer (so that threads x count fits in 64 bits).
pub const MAX_COUNT: u64 = 1 << 40;
/// Highest total producer rate, in records per second.
pub const MAX_RATE: f64 = 1e12;

/// A number of seconds: finite, more than 0, at most [`MAX_SECONDS`].
pub fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 || v > MAX_SECONDS {
        return Err(format!(
            "{s:?}: need a number of seconds more than 0 and at most {MAX_SECONDS}"
        ));
    }
    Ok(v)
}

/// A rate in records per second: finite, at least 1, at most [`MAX_RATE`].
pub fn rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (records per second)"))?;
    if !v.is_finite() || !(1.0..=MAX_RATE).contains(&v) {
        return Err(format!(
            "{s:?}: need a rate of at least 1 and at most {MAX_RATE:e} records per second"
        ));
    }
    Ok(v)
}

fn integer(s: &str, what: &str, max: u64) -> Result<u64, String> {
    let v: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number ({what})"))?;
    if v == 0 || v > max {
        return Err(format!("{s:?}: need {what} from 1 to {max}"));
    }
    Ok(v)
}

/// A number of threads: 1 to [`MAX_THREADS`].
pub fn threads(s: &str) -> Result<u32, String> {
    integer(s, "threads", MAX_THREADS.into()).map(|v| v as u32)
}

/// A count of records: 1 to [`MAX_COUNT`].
pub fn count(s: &str) -> Result<u64, String> {
    integer(s, "a count", MAX_COUNT)
}

/// A number of files: 1 or more.
pub fn files(s: &str) -> Result<u64, String> {
    integer(s, "a number of files", u64::MAX)
}

/// A size with an optional unit (see [`util::parse_size`]), more than 0.
pub fn nonzero_size(s: &str) -> Result<u64, String> {
    match util::parse_size(s)? {
        0 => Err(format!("{s:?}: need a size more than 0")),
        v => Ok(v),
    }
}

/// A relay sub-buffer size: a power of two the library accepts.
pub fn subbuf_size(s: &str) -> Result<u64, String> {
    let v = util::parse_size(s)?;
    if !v.is_power_of_two() || !(MIN_SUBBUF_SIZE..=MAX_SUBBUF_SIZE).contains(&v) {
        return Err(format!(
            "{s:?}: a sub-buffer size is a power of two from {MIN_SUBBUF_SIZE} to {} (1G)",
            MAX_SUBBUF_SIZE
        ));
    }
    Ok(v)
}

/// A number of sub-buffers per buffer: 1 to the library's largest.
pub fn n_subbufs(s: &str) -> Result<u64, String> {
    integer(s, "sub-buffers", MAX_SUBBUFS)
}

/// The kernel's relay sub-buffer size (blktrace's `-b`): more than 0 and
/// fitting its 32-bit field once rounded up to whole pages.
pub fn kernel_subbuf_size(s: &str) -> Result<u64, String> {
    let v = util::parse_size(s)?;
    if v == 0 || v > KERNEL_MAX_BYTES {
        return Err(format!(
            "{s:?}: need a sub-buffer size more than 0 and at most {KERNEL_MAX_BYTES}"
        ));
    }
    Ok(v)
}

/// The kernel's relay sub-buffer count (blktrace's `-n`).
pub fn kernel_n_subbufs(s: &str) -> Result<u32, String> {
    integer(s, "sub-buffers", u32::MAX.into()).map(|v| v as u32)
}

/// The kernel refuses a relay channel whose sub-buffers, each rounded up to
/// whole pages, take more than 32 bits (`relay_open`); pages of 4 KiB.
const KERNEL_MAX_BYTES: u64 = u32::MAX as u64 & !4095;

/// Checks blktrace's `-b` and `-n` together, as `relay_open` does.
pub fn kernel_buffer(subbuf_size: u64, n_subbufs: u32) -> Result<(), String> {
    let pages = subbuf_size.div_ceil(4096) * 4096;
    if pages.saturating_mul(n_subbufs.into()) > KERNEL_MAX_BYTES {
        return Err(format!(
            "-b {subbuf_size} x -n {n_subbufs}: the kernel takes at most {KERNEL_MAX_BYTES} bytes per buffer"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_refuse_what_a_timer_cannot_take() {
        assert_eq!(seconds("1.5"), Ok(1.5));
        for bad in ["-1", "0", "nan", "inf", "-inf", "1e30", "", "x"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_and_sizes() {
        assert_eq!(threads("3"), Ok(3));
        assert!(threads("0").is_err());
        assert!(threads("-1").is_err());
        assert!(count("0").is_err());
        assert_eq!(subbuf_size("4K"), Ok(4096));
        assert!(subbuf_size("3000").is_err());
        assert!(subbuf_size("32").is_err());
        assert!(subbuf_size("2G").is_err());
        assert!(n_subbufs("0").is_err());
        assert!(rate("0").is_err());
        assert!(rate("nan").is_err());
        assert!(nonzero_size("0").is_err());
        assert!(kernel_subbuf_size("0").is_err());
        assert!(kernel_subbuf_size("4G").is_err());
        assert!(kernel_buffer(512 << 10, 4).is_ok());
        assert!(kernel_buffer(1 << 30, 8).is_err());
    }
}
