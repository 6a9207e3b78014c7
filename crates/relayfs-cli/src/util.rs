//! Helpers shared by the subcommands: finding channels and buffers, sizes,
//! signals, formatting.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

/// An error and every cause under it, `: `-separated (what anyhow's `{:#}`
/// prints): the library's errors say each cause once, in `source()`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

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
    /// Channel id in its header when it was looked at (0 if it was not
    /// valid then).
    pub channel_id: u64,
}

/// The valid buffer files `<base><N>` of a channel directory, in CPU order.
/// With `base` None, every file whose header is a valid relay buffer.
pub fn buffer_files(dir: &Path, base: Option<&str>) -> Result<Vec<BufferFile>> {
    Ok(scan_channel(dir, base)?.bufs)
}

/// A buffer of a channel that can't be recorded: what it is called and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBuffer {
    /// File name, e.g. `cpu1`.
    pub name: String,
    /// Full path.
    pub path: PathBuf,
    /// Why, in words.
    pub reason: String,
}

/// What a channel directory holds: the buffers that belong to the channel,
/// and every one that should be there but isn't usable.
#[derive(Debug, Clone, Default)]
pub struct ChannelScan {
    /// Valid buffer files of the channel, in CPU order.
    pub bufs: Vec<BufferFile>,
    /// Files that fail validation, belong to another channel, or are
    /// missing (the headers say how many buffers the channel has).
    pub bad: Vec<BadBuffer>,
    /// Buffers the channel has, as its headers say (summed over the
    /// channels in the directory when there are several base names).
    pub n_buffers: u64,
    /// The channel id (of the first channel, with several base names).
    pub channel_id: Option<u64>,
}

/// Looks at every buffer file `<base><N>` of a channel directory (regular
/// files only: a symlink is never followed). With `base` None, the base
/// names that have at least one valid buffer file (or, when none has,
/// every `<name><N>` file, so that a channel whose files are all bad is
/// reported rather than missed).
///
/// For each base name the channel is the one of its newest valid file; its
/// header's buffer count says which buffers must be there. A file that fails
/// validation, a file of another channel (another channel id: the leftover
/// of an earlier producer), and a buffer that is not there at all are each
/// listed in `bad` with the reason.
pub fn scan_channel(dir: &Path, base: Option<&str>) -> Result<ChannelScan> {
    use std::collections::BTreeMap;
    type Candidate = (BufferFile, Result<relayfs::BufferHeader, String>);
    let mut groups: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    // Entries named like a buffer that are not regular files (never
    // followed or opened): what they are, to say so where the buffer is
    // missing.
    let mut not_regular: BTreeMap<String, &'static str> = BTreeMap::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read channel directory {}", dir.display()))?;
    for ent in entries {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let kind = ent.file_type()?;
        if !kind.is_file() {
            not_regular.insert(name, file_kind(&kind));
            continue;
        }
        let digits_at = name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        if digits_at == name.len() {
            continue;
        }
        let prefix = &name[..digits_at];
        if base.is_some_and(|b| b != prefix) {
            continue;
        }
        let header = relayfs::RelayFile::peek_header(&ent.path()).map_err(|e| error_chain(&e));
        let cpu = name[digits_at..].parse().unwrap_or(u64::MAX);
        groups.entry(prefix.to_string()).or_default().push((
            BufferFile {
                name: name.clone(),
                path: ent.path(),
                cpu,
                channel_id: header.as_ref().map_or(0, |h| h.channel_id),
            },
            header,
        ));
    }
    if base.is_none() && groups.values().flatten().any(|(_, h)| h.is_ok()) {
        groups.retain(|_, g| g.iter().any(|(_, h)| h.is_ok()));
    }
    let mut scan = ChannelScan::default();
    for (prefix, group) in groups {
        // The channel: that of the newest valid file.
        let chan = group
            .iter()
            .filter_map(|(_, h)| h.as_ref().ok())
            .max_by_key(|h| h.created_ns)
            .cloned();
        if let Some(h) = &chan {
            scan.n_buffers += h.n_buffers;
            scan.channel_id.get_or_insert(h.channel_id);
        }
        let files = group.len() as u64;
        let mut names = std::collections::BTreeSet::new();
        for (b, h) in group {
            names.insert(b.name.clone());
            let reason = match (&h, &chan) {
                (Err(e), _) => Some(e.clone()),
                (Ok(h), Some(c)) if h.channel_id != c.channel_id => Some(format!(
                    "belongs to another channel (id {:#x}, not {:#x}): left over from an earlier producer?",
                    h.channel_id, c.channel_id
                )),
                _ => None,
            };
            match reason {
                Some(reason) => scan.bad.push(BadBuffer {
                    name: b.name,
                    path: b.path,
                    reason,
                }),
                None => scan.bufs.push(b),
            }
        }
        if let Some(c) = &chan {
            // Buffers are numbered by CPU; name the missing ones among the
            // first n_buffers numbers, or count them if those are all there.
            // (A bad file stands for its buffer: it is reported above.)
            let mut missing = c.n_buffers.saturating_sub(files);
            for i in 0..c.n_buffers {
                if missing == 0 {
                    break;
                }
                let name = format!("{prefix}{i}");
                if !names.contains(&name) {
                    missing -= 1;
                    let reason = match not_regular.get(&name) {
                            Some(kind) => format!(
                                "not a buffer: {} is a {kind}, not a regular file (not followed or opened)",
                                dir.join(&name).display()
                            ),
                            None => format!(
                                "missing: the channel has {} buffers, and this one is not in {}",
                                c.n_buffers,
                                dir.display()
                            ),
                    };
                    scan.bad.push(BadBuffer {
                        path: dir.join(&name),
                        name,
                        reason,
                    });
                }
            }
            if missing > 0 {
                scan.bad.push(BadBuffer {
                    name: format!("{prefix}*"),
                    path: dir.to_path_buf(),
                    reason: format!(
                        "{missing} of the channel's {} buffers are missing",
                        c.n_buffers
                    ),
                });
            }
        }
    }
    scan.bufs
        .sort_by(|a, b| (a.cpu, &a.name).cmp(&(b.cpu, &b.name)));
    scan.bad.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(scan)
}

/// What a directory entry that is not a regular file is, in words.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_symlink() {
        "symbolic link"
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "special file"
    }
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

    /// A global (one-buffer) channel's buffer file, copied to `to`.
    fn copy_of_a_buffer(to: &Path) {
        let d = tempfile::tempdir().unwrap();
        let chan = relayfs::Channel::builder("c")
            .dir(d.path())
            .global(true)
            .subbuf_size(4096)
            .n_subbufs(2)
            .open()
            .unwrap();
        std::fs::copy(chan.buffer_path(0), to).unwrap();
        chan.close().unwrap();
    }

    #[test]
    fn scan_reports_foreign_and_invalid_buffer_files() {
        let d = tempfile::tempdir().unwrap();
        copy_of_a_buffer(&d.path().join("cpu0"));
        std::thread::sleep(std::time::Duration::from_millis(2));
        copy_of_a_buffer(&d.path().join("cpu1"));
        std::fs::write(d.path().join("cpu2"), b"not a buffer").unwrap();
        std::fs::write(d.path().join("notes1"), b"someone else's").unwrap();
        let scan = scan_channel(d.path(), None).unwrap();
        // The newest channel is the one; the other's file is a leftover.
        let names: Vec<_> = scan.bufs.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["cpu1"]);
        let bad: Vec<_> = scan.bad.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(bad, ["cpu0", "cpu2"], "{:?}", scan.bad);
        assert!(
            scan.bad[0].reason.contains("another channel"),
            "{:?}",
            scan.bad
        );
        assert_eq!(scan.n_buffers, 1);
        // With every file bad, each is still reported.
        std::fs::remove_file(d.path().join("cpu0")).unwrap();
        std::fs::remove_file(d.path().join("cpu1")).unwrap();
        let scan = scan_channel(d.path(), None).unwrap();
        assert!(scan.bufs.is_empty());
        assert_eq!(scan.bad.len(), 2, "{:?}", scan.bad);
    }

    #[test]
    fn scan_names_what_stands_where_a_buffer_should_be() {
        let d = tempfile::tempdir().unwrap();
        let chan = relayfs::Channel::builder("c")
            .dir(d.path())
            .subbuf_size(4096)
            .n_subbufs(2)
            .open()
            .unwrap();
        let dir = chan.buffer_path(0).parent().unwrap().to_path_buf();
        let n = chan.n_buffers();
        let last = chan.buffer_path(n - 1);
        let name = last.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::remove_file(last).unwrap();
        let c = std::ffi::CString::new(last.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let scan = scan_channel(&dir, None).unwrap();
        assert_eq!(scan.bufs.len(), n - 1, "{:?}", scan.bufs);
        if n > 1 {
            // The others' headers say the channel has n buffers: the FIFO
            // is named for what it is, not called missing.
            let bad = scan.bad.iter().find(|b| b.name == name).unwrap();
            assert!(bad.reason.contains("is a FIFO"), "{bad:?}");
            // Gone altogether, it is missing.
            std::fs::remove_file(last).unwrap();
            let scan = scan_channel(&dir, None).unwrap();
            let bad = scan.bad.iter().find(|b| b.name == name).unwrap();
            assert!(bad.reason.starts_with("missing"), "{bad:?}");
        }
        chan.close().unwrap();
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
