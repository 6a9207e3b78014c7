//! Helpers shared by the subcommands: finding channels and buffers, sizes,
//! signals, formatting.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

/// Resolves CHANNEL: a path (anything with a `/`, or an existing directory
/// given as `.`-relative) or a name under the relay directory.
pub fn channel_dir(channel: &str) -> PathBuf {
    let p = Path::new(channel);
    if channel.contains('/') || channel == "." || channel == ".." {
        p.to_path_buf()
    } else {
        relayfs::relay_dir().join(channel)
    }
}

/// A buffer file of a channel.
#[derive(Debug, Clone)]
pub struct BufferFile {
    /// File name, e.g. `cpu0`.
    pub name: String,
    /// Full path.
    pub path: PathBuf,
    /// CPU number parsed from the name.
    pub cpu: u64,
}

/// The buffer files `<base><N>` of a channel directory, in CPU order. With
/// `base` None, every file whose header is a valid relay buffer.
pub fn buffer_files(dir: &Path, base: Option<&str>) -> Result<Vec<BufferFile>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read channel directory {}", dir.display()))?;
    for ent in entries {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !ent.file_type()?.is_file() {
            continue;
        }
        let digits_at = name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        if digits_at == name.len() {
            continue;
        }
        if let Some(b) = base {
            if &name[..digits_at] != b {
                continue;
            }
        } else if relayfs::RelayFile::peek_header(&ent.path()).is_err() {
            continue;
        }
        let cpu = name[digits_at..].parse().unwrap_or(u64::MAX);
        out.push(BufferFile {
            name,
            path: ent.path(),
            cpu,
        });
    }
    out.sort_by(|a, b| (a.cpu, &a.name).cmp(&(b.cpu, &b.name)));
    Ok(out)
}

/// Parses a size such as `4096`, `64K`, `1M`, `2G`, `512KiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size unit in {s:?} (use K, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes to standard output, for [`outln!`] and [`out!`]. A reader that
/// went away (`EPIPE`: `relayfs ls | head -1`) is an ordinary ending, not
/// an error: that write and every later one are dropped quietly and the
/// command goes on to its normal end and exit status (see
/// [`stdout_closed`]), so a recorder still finishes its output files and
/// reports its errors on stderr. Any other failure (a full disk behind a
/// redirection) is an error.
pub fn write_stdout(args: std::fmt::Arguments) -> Result<()> {
    use std::io::Write;
    // SYNC POINT: a flag this process sets and reads for itself; nothing
    // else is published with it, so relaxed is enough.
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut o = std::io::stdout().lock();
    match o.write_fmt(args).and_then(|()| o.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            // SYNC POINT: as above, only this process reads it.
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to standard output")),
    }
}

/// Whether standard output's reader has gone (a write met `EPIPE`): a
/// command that would go on printing (`stat --watch`) stops.
pub fn stdout_closed() -> bool {
    // SYNC POINT: see `write_stdout`.
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// `println!` that treats a closed standard output as an ordinary ending
/// (see [`write_stdout`]); evaluates to `anyhow::Result<()>`.
macro_rules! outln {
    () => {
        $crate::util::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::util::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` with [`outln!`]'s handling of a closed standard output.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::util::write_stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: a message to a terminal that has gone
/// (`EIO` after a hang-up) or a closed pipe is dropped, so that a command
/// ending on SIGHUP still gets to finish its work.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics (see [`errln!`]).
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

pub(crate) use {err, errln, out, outln};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP set a flag instead of killing the
/// process, so that a long-running command ends the same clean way on each
/// (stops, drains, tears down, writes its summary): Ctrl-C, `kill`, or its
/// terminal or SSH session going away (blktrace catches the same three).
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installing a handler that only stores to an atomic, which
        // is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Whether SIGINT, SIGTERM or SIGHUP arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A name as a table shows it: a newline, tab, other control character or
/// bidirectional override in a channel's name (anyone who can create a
/// directory under the relay directory names it) is written as an escape
/// (`\n`, `\t`, `\x1b`, `\u{202e}`), and a backslash as `\\`, so that
/// no name can start a line of its own or disguise itself.
pub fn escape_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\r' => s.push_str("\\r"),
            c if c.is_ascii_control() => s.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                s.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => s.push(c),
        }
    }
    s
}

/// Whether stderr is a terminal.
pub fn stderr_is_tty() -> bool {
    // SAFETY: isatty on a valid fd number has no other preconditions.
    unsafe { libc::isatty(2) == 1 }
}

/// `12.3 MiB`-style sizes.
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// User plus system CPU time, in seconds, of `who`: `libc::RUSAGE_SELF`
/// (this process), `libc::RUSAGE_CHILDREN` (its waited-for children) or
/// `libc::RUSAGE_THREAD` (the calling thread).
pub fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer; an unknown `who` only makes it fail,
    // leaving zeros.
    unsafe { libc::getrusage(who, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn names_cannot_forge_a_row() {
        assert_eq!(escape_name("plain-name.1"), "plain-name.1");
        assert_eq!(escape_name("a\nb"), "a\\nb");
        assert_eq!(escape_name("t\tr\r"), "t\\tr\\r");
        assert_eq!(escape_name("esc\x1b[2J"), "esc\\x1b[2J");
        assert_eq!(escape_name("back\\n"), "back\\\\n");
        assert_eq!(escape_name("\u{202e}x\u{85}"), "\\u{202e}x\\u{85}");
        assert_eq!(escape_name("caf\u{e9}"), "caf\u{e9}");
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
