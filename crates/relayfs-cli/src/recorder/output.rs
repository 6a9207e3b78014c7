//! Where one buffer's recording goes: a single file `<buffer>.out`, a
//! rotating set `<buffer>.out.0`, `.1`, ... (`--max-size`, `--max-files`),
//! or a character device such as `/dev/null` shared by every buffer
//! ([`FileOutput`]); the [`Output`] trait the recording loops write through,
//! with what an output takes the data as ([`Sink`]: a descriptor, or whole
//! units of bytes for a [`ByteSink`]); and [`Retry`], the one policy for a
//! full output filesystem (`--retry`).
//!
//! An output can be *resumable*: it then keeps, beside its files, a small
//! state file `.<buffer>.out.state` saying which buffer (channel id) it
//! records, which file is the current one and at which offset of the
//! buffer's consumed stream (`bytes_consumed`) that file starts. The state is
//! replaced atomically (temporary file, then rename) right after each new
//! file is created, so whenever a recorder is killed the state names the
//! file being written and where it starts (a newer, still empty file is
//! removed on resume). A recorder that takes over the same buffer then
//! knows how many of the bytes the buffer says were consumed belong in that
//! file and cuts it back to exactly that: a recorder killed between writing
//! a chunk and marking it consumed leaves a tail the buffer delivers again.
//! Files removed by `--max-files` don't matter: the current file's start is
//! recorded, not derived from the sizes of the files before it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::util;

/// First word of a state file, and its format version.
const STATE_MAGIC: &str = "relayfs-output";
const STATE_VERSION: u64 = 1;

/// Whether OUT is a character device (such as `/dev/null`) that takes every
/// buffer's output, rather than a directory.
pub(crate) fn is_sink(out: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(out).is_ok_and(|m| m.file_type().is_char_device())
}

/// What a resumable output's state file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    channel_id: u64,
    rotate: bool,
    /// Index of the current file (0 without rotation).
    index: u64,
    /// Offset in the buffer's consumed stream where the current file starts.
    start: u64,
}

impl State {
    fn parse(text: &str) -> Option<State> {
        let mut w = text.split_whitespace();
        if w.next()? != STATE_MAGIC || w.next()?.parse::<u64>().ok()? != STATE_VERSION {
            return None;
        }
        let mut num = || w.next()?.parse::<u64>().ok();
        let (channel_id, rotate, index, start) = (num()?, num()?, num()?, num()?);
        Some(State {
            channel_id,
            rotate: rotate != 0,
            index,
            start,
        })
    }

    fn text(&self) -> String {
        format!(
            "{STATE_MAGIC} {STATE_VERSION} {} {} {} {}\n",
            self.channel_id,
            u64::from(self.rotate),
            self.index,
            self.start
        )
    }
}

/// What an output takes a buffer's data as (see [`Output::sink`]).
pub(crate) enum Sink<'a> {
    /// A descriptor the source moves data into itself (`sendfile(2)`, or
    /// the reader's read+write fallback): no copy through the recorder.
    Fd(&'a File),
    /// Whole units of data (a sub-buffer, or a chunk of a kernel relay
    /// file) as bytes: for an output that is not a descriptor, such as a
    /// message stream. (Every output of the command line is a file or a
    /// device so far; the engine's tests record through one that is not.)
    #[cfg_attr(not(test), allow(dead_code))]
    Bytes(&'a mut dyn ByteSink),
}

/// An output that takes data as bytes, one whole unit at a time.
///
/// A unit from a relayfs buffer holds whole records: a whole sub-buffer
/// (padding removed), or, once the producer went quiet or the recording
/// ends, the committed part of the one being written, whose rest then
/// comes as a later unit. From a kernel relay file it is what one `read(2)`
/// returned (up to 8 MiB), where record boundaries are the client's.
pub(crate) trait ByteSink {
    /// Takes `unit` whole, or not at all: on `Ok` all of it is the output's
    /// (written, published and acknowledged, ...), on `Err` none of it is,
    /// and the same unit may be offered again. An error of the output
    /// system (such as a full filesystem) is an `io::Error` with its OS
    /// code, so that `--retry` can tell it; anything else can be wrapped
    /// with `io::Error::other`.
    fn accept(&mut self, unit: &[u8]) -> std::io::Result<()>;
}

/// Where the recording loops put a buffer's data.
///
/// The loop (`engine::pump`) asks the output for its [`sink`](Output::sink)
/// each time. Into a descriptor ([`Sink::Fd`]) the source moves whole
/// sub-buffers with `sendfile(2)` (or the reader's read+write fallback);
/// to a [`ByteSink`] the loop hands whole units read into a buffer of its
/// own. Then it says how much the output took ([`wrote`](Output::wrote));
/// between sub-buffers (a place between records) it calls
/// [`boundary`](Output::boundary), where an output may switch files. A
/// descriptor write that failed midway leaves part of a sub-buffer in the
/// output: an output that [`cuts_back`](Output::cuts_back) is cut back to
/// the last boundary ([`cut_back`](Output::cut_back)), so that it holds
/// exactly what the buffer counts delivered. A byte sink never holds part
/// of a unit, so it needs no cutting back (and a message already published
/// can't be taken back anyway).
pub(crate) trait Output: Send {
    /// What the output takes the data as.
    fn sink(&mut self) -> Sink<'_>;
    /// Counts `n` bytes just taken by the sink.
    fn wrote(&mut self, n: u64);
    /// Whether part of a sub-buffer written can be removed again
    /// ([`size`](Output::size), [`cut_back`](Output::cut_back)).
    fn cuts_back(&self) -> bool {
        false
    }
    /// Bytes in the current file (what [`cut_back`](Output::cut_back)
    /// takes); only asked of an output that cuts back.
    fn size(&self) -> u64 {
        0
    }
    /// Called between sub-buffers: may switch to the next file (then
    /// returns true).
    fn boundary(&mut self) -> Result<bool> {
        Ok(false)
    }
    /// Cuts the current file back to `len` bytes; returns how many went.
    /// Only called on an output that cuts back.
    fn cut_back(&mut self, _len: u64) -> Result<u64> {
        Ok(0)
    }
    /// The files written that exist, oldest first (the device for a sink;
    /// none for an output that is not files).
    fn files(&self) -> &[PathBuf];
    /// Where the data goes, as an error names it: the current file, or
    /// e.g. a URL.
    fn place(&self) -> String {
        self.files()
            .last()
            .map_or(String::new(), |p| p.display().to_string())
    }
    /// Flushes what is written.
    fn finish(&mut self) -> Result<()>;
}

/// Output files of one buffer, with rotation.
#[derive(Debug)]
pub(crate) struct FileOutput {
    dir: PathBuf,
    /// File name without the rotation index, e.g. `cpu0.out`.
    base: String,
    max_size: Option<u64>,
    max_files: Option<u64>,
    index: u64,
    /// Channel id and the stream offset where the current file starts, for a
    /// resumable output.
    resume: Option<(u64, u64)>,
    /// The current file.
    pub(crate) file: File,
    /// Bytes in the current file.
    pub(crate) size: u64,
    /// The buffer's files that exist, oldest first (the device for a sink).
    pub(crate) files: Vec<PathBuf>,
}

/// Opens `path` in the output directory with `opts`, refusing anything but
/// a regular file: not following a symlink, and without blocking (a FIFO
/// someone put there would block `open(2)` until a writer or reader came,
/// out of reach of the signals that stop the recorder). `O_NONBLOCK` stays
/// set: on a regular file it changes nothing.
fn open_regular(path: &Path, opts: &mut OpenOptions, what: &str) -> Result<File> {
    let not_regular = |kind| {
        anyhow::anyhow!(
            "{} is not a regular file (a {}): remove it, or record into another directory",
            path.display(),
            file_kind(kind)
        )
    };
    let file = match opts
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            // ELOOP (a symlink), ENXIO (a FIFO without a reader), EISDIR,
            // ...: say what is in the way if that is why.
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if !m.file_type().is_file() {
                    return Err(not_regular(m.file_type()));
                }
            }
            return Err(e).with_context(|| format!("cannot {what} {}", path.display()));
        }
    };
    let kind = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .file_type();
    if !kind.is_file() {
        return Err(not_regular(kind));
    }
    Ok(file)
}

/// What a file type is, in words.
fn file_kind(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "FIFO"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_dir() {
        "directory"
    } else if kind.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Opens (creating) an output file for appending, without following a
/// symlink or blocking, refusing anything but a regular file; emptied if
/// `truncate`.
fn open_file(path: &Path, truncate: bool) -> Result<File> {
    let file = open_regular(path, OpenOptions::new().append(true).create(true), "create")?;
    if truncate {
        file.set_len(0)
            .with_context(|| format!("cannot truncate {}", path.display()))?;
    }
    Ok(file)
}

impl FileOutput {
    fn path(dir: &Path, base: &str, rotate: bool, index: u64) -> PathBuf {
        if rotate {
            dir.join(format!("{base}.{index}"))
        } else {
            dir.join(base)
        }
    }

    fn state_path(dir: &Path, base: &str) -> PathBuf {
        dir.join(format!(".{base}.state"))
    }

    /// Every buffer's output goes to the character device `dev` (e.g.
    /// `/dev/null`, to measure the recorder alone).
    fn device(dev: &Path) -> Result<FileOutput> {
        let file = OpenOptions::new()
            .write(true)
            .open(dev)
            .with_context(|| format!("cannot open {}", dev.display()))?;
        Ok(FileOutput {
            dir: dev.to_path_buf(),
            base: String::new(),
            max_size: None,
            max_files: None,
            index: 0,
            resume: None,
            file,
            size: 0,
            files: vec![dev.to_path_buf()],
        })
    }

    /// Creates an empty output `dir/base` (`base.0` with rotation),
    /// replacing what was there; not resumable.
    pub(crate) fn create(
        dir: &Path,
        base: &str,
        max_size: Option<u64>,
        max_files: Option<u64>,
    ) -> Result<FileOutput> {
        if is_sink(dir) {
            return Self::device(dir);
        }
        let path = Self::path(dir, base, max_size.is_some(), 0);
        let file = open_file(&path, true)?;
        Ok(FileOutput {
            dir: dir.to_path_buf(),
            base: base.to_string(),
            max_size,
            max_files,
            index: 0,
            resume: None,
            file,
            size: 0,
            files: vec![path],
        })
    }

    /// The rotated files `base.K` in `dir` (regular files only), by index.
    fn rotated(dir: &Path, base: &str) -> Result<Vec<(u64, PathBuf)>> {
        let prefix = format!("{base}.");
        let mut found = Vec::new();
        for ent in
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let ent = ent?;
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some(idx) = name.strip_prefix(&prefix) else {
                continue;
            };
            if idx.is_empty() || !idx.bytes().all(|c| c.is_ascii_digit()) {
                continue;
            }
            if let (Ok(i), true) = (idx.parse::<u64>(), ent.file_type()?.is_file()) {
                found.push((i, ent.path()));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Opens the resumable output of the buffer with channel id `channel_id`
    /// whose readers have consumed `consumed` bytes so far.
    ///
    /// With `consumed` 0 the recording starts afresh: earlier files of this
    /// output are replaced. Otherwise a previous recorder stopped or was
    /// killed, and this one appends: to the file its state names, cut back
    /// to the bytes of the consumed stream that belong in it (files the
    /// state says came later are removed). With no state for this channel,
    /// it appends to the newest file and keeps all of it.
    pub(crate) fn resume(
        dir: &Path,
        base: &str,
        max_size: Option<u64>,
        max_files: Option<u64>,
        channel_id: u64,
        consumed: u64,
    ) -> Result<FileOutput> {
        if is_sink(dir) {
            return Self::device(dir);
        }
        let rotate = max_size.is_some();
        let state_path = Self::state_path(dir, base);
        let state = match Self::read_state(&state_path)? {
            Some(t) => State::parse(&t),
            None => None,
        }
        .filter(|s| s.channel_id == channel_id && consumed > 0);
        if let Some(s) = state {
            if s.rotate != rotate {
                bail!(
                    "{} was recorded {} --max-size: resume with the same option, or record into another directory",
                    dir.join(base).display(),
                    if s.rotate { "with" } else { "without" }
                );
            }
            if s.start > consumed {
                bail!(
                    "{}: the output starts at byte {} of the buffer's stream, but the buffer says only {consumed} were consumed",
                    state_path.display(),
                    s.start
                );
            }
        }
        let existing = if rotate {
            Self::rotated(dir, base)?
        } else {
            Vec::new()
        };
        let (index, start, truncate_to) = match state {
            Some(s) => (s.index, s.start, Some(consumed - s.start)),
            None if consumed == 0 => (0, 0, Some(0)),
            // Resuming without a state for this channel: the newest file.
            None => (existing.last().map_or(0, |e| e.0), 0, None),
        };
        // Files that are not part of this recording: later than the current
        // one, or all of them when starting afresh.
        for (i, p) in &existing {
            if *i > index || (consumed == 0 && *i != index) {
                std::fs::remove_file(p)
                    .with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
        let path = Self::path(dir, base, rotate, index);
        let file = open_file(&path, false)?;
        let mut size = file.metadata()?.len();
        if let Some(want) = truncate_to {
            if size > want {
                file.set_len(want)
                    .with_context(|| format!("cannot truncate {}", path.display()))?;
                size = want;
            } else if size < want {
                crate::util::errln!(
                    "relayfs record: {}: {} bytes the buffer says were consumed are not in the file",
                    path.display(),
                    want - size
                );
            }
        }
        let start = match truncate_to {
            Some(_) => start,
            None => consumed.saturating_sub(size),
        };
        let mut files: Vec<PathBuf> = existing
            .into_iter()
            .filter(|(i, _)| *i < index && consumed > 0)
            .map(|(_, p)| p)
            .collect();
        files.push(path);
        let out = FileOutput {
            dir: dir.to_path_buf(),
            base: base.to_string(),
            max_size,
            max_files,
            index,
            resume: Some((channel_id, start)),
            file,
            size,
            files,
        };
        out.save_state(index, start)?;
        Ok(out)
    }

    /// The text of the state file at `path`, `None` if there is none; an
    /// error if it is not a regular file. A state file is one short line:
    /// anything much longer is not one (and is not read whole).
    fn read_state(path: &Path) -> Result<Option<String>> {
        let file = match open_regular(path, OpenOptions::new().read(true), "read") {
            Ok(f) => f,
            Err(e)
                if e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, 4096), &mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Replaces the state file atomically: a new temporary file (`O_EXCL`),
    /// then rename.
    fn save_state(&self, index: u64, start: u64) -> Result<()> {
        let Some((channel_id, _)) = self.resume else {
            return Ok(());
        };
        let state = State {
            channel_id,
            rotate: self.max_size.is_some(),
            index,
            start,
        };
        let path = Self::state_path(&self.dir, &self.base);
        write_atomic(&path, state.text().as_bytes())
    }

    /// Counts `n` bytes just written to the current file.
    pub(crate) fn wrote(&mut self, n: u64) {
        self.size += n;
    }

    /// Switches to the next file if this one is full (called between
    /// sub-buffers only); returns whether it did.
    pub(crate) fn maybe_rotate(&mut self) -> Result<bool> {
        let Some(max) = self.max_size else {
            return Ok(false);
        };
        if self.size < max {
            return Ok(false);
        }
        let index = self.index + 1;
        // The new file first, then the state naming it: a recorder killed
        // in between leaves the state naming the full file, and the empty
        // new one is removed when the next recorder resumes.
        let path = Self::path(&self.dir, &self.base, true, index);
        let file = open_file(&path, true)?;
        if let Some((id, start)) = self.resume {
            let start = start + self.size;
            self.save_state(index, start)?;
            self.resume = Some((id, start));
        }
        self.file = file;
        self.index = index;
        self.size = 0;
        self.files.push(path);
        if let Some(keep) = self.max_files {
            while self.files.len() as u64 > keep.max(1) {
                let old = self.files.remove(0);
                std::fs::remove_file(&old)
                    .with_context(|| format!("cannot remove {}", old.display()))?;
            }
        }
        Ok(true)
    }
}

impl Output for FileOutput {
    fn sink(&mut self) -> Sink<'_> {
        Sink::Fd(&self.file)
    }

    fn wrote(&mut self, n: u64) {
        FileOutput::wrote(self, n);
    }

    fn cuts_back(&self) -> bool {
        true
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn boundary(&mut self) -> Result<bool> {
        self.maybe_rotate()
    }

    fn cut_back(&mut self, len: u64) -> Result<u64> {
        if self.size <= len {
            return Ok(0);
        }
        let cut = self.size - len;
        self.file.set_len(len).with_context(|| {
            format!(
                "cannot cut {} back to its last whole sub-buffer",
                self.files
                    .last()
                    .map_or(String::new(), |p| p.display().to_string())
            )
        })?;
        self.size = len;
        Ok(cut)
    }

    fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn finish(&mut self) -> Result<()> {
        self.file.flush()?;
        Ok(())
    }
}

/// Whether an output error is the output filesystem being full.
pub(crate) fn output_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
                || matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
        })
    })
}

/// Whether a reader error is the output filesystem being full (the write
/// half of a `sendfile` or of the read+write fallback failed).
pub(crate) fn out_of_space(e: &relayfs::ReadError) -> bool {
    matches!(e, relayfs::ReadError::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
}

/// What to do about a full output filesystem (`ENOSPC`, `EDQUOT`): with
/// `--retry`, wait and try again (saying so once) until the recording is
/// stopped; without it, fail. The one place both recorders decide this.
pub(crate) struct Retry<'a> {
    enabled: bool,
    /// Set when the recording is told to stop (no more waiting then);
    /// SIGINT, SIGTERM and SIGHUP stop the waiting too.
    stop: Option<&'a AtomicBool>,
    /// Who counts what is dropped meanwhile ("the producer", "the kernel").
    counter: &'static str,
    warned: bool,
}

/// After a failed write: whether to try it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFull {
    /// Waited a moment: try again.
    Again,
    /// The recording was stopped meanwhile: give up the write.
    Stopped,
}

impl<'a> Retry<'a> {
    /// Time between two tries.
    const PAUSE: Duration = Duration::from_millis(100);

    pub(crate) fn new(
        enabled: bool,
        stop: Option<&'a AtomicBool>,
        counter: &'static str,
    ) -> Retry<'a> {
        Retry {
            enabled,
            stop,
            counter,
            warned: false,
        }
    }

    /// Whether the warning was given (the filesystem was found full).
    #[cfg(test)]
    pub(crate) fn warned(&self) -> bool {
        self.warned
    }

    fn stopped(&self) -> bool {
        // SYNC POINT: Relaxed; a flag polled between writes, carrying no
        // data (the buffers' own counters are read under their protocol).
        self.stop.is_some_and(|s| s.load(Ordering::Relaxed)) || util::interrupted()
    }

    fn warn(&mut self, what: std::fmt::Arguments) {
        if !self.warned {
            crate::util::errln!(
                "relayfs record: {what}; retrying ({} counts what it drops meanwhile)",
                self.counter
            );
            self.warned = true;
        }
    }

    /// A write of data (`sendfile`) to `place` failed with `e`: `None` if
    /// that is not a full filesystem to wait out (the caller fails), else
    /// whether to try again (after a pause) or stop.
    pub(crate) fn write_failed(
        &mut self,
        place: &str,
        e: &relayfs::ReadError,
    ) -> Option<AfterFull> {
        if !self.enabled || !out_of_space(e) {
            return None;
        }
        self.warn(format_args!("{place}: {}", util::error_chain(e)));
        if self.stopped() {
            return Some(AfterFull::Stopped);
        }
        std::thread::sleep(Self::PAUSE);
        Some(AfterFull::Again)
    }

    /// Runs an output operation (creating, rotating, the state file), waiting
    /// out a full filesystem as above. Each operation can be repeated after
    /// a failure.
    pub(crate) fn run<T>(&mut self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        loop {
            match op() {
                Err(e) if self.enabled && output_full(&e) && !self.stopped() => {
                    self.warn(format_args!("{e:#}"));
                    std::thread::sleep(Self::PAUSE);
                }
                r => return r,
            }
        }
    }
}

/// Writes `path` atomically: the bytes go to a new temporary file in the same
/// directory (created with `O_EXCL`), which then replaces `path` by rename.
/// A failure (e.g. `ENOSPC`) leaves `path` as it was.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.flush())
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The persist error's own message repeats its source: keep the source.
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: u64 = 0xfeed;

    /// Writes `n` bytes of the stream starting at `at` (byte i of the stream
    /// is `i as u8`), as the recorder does with one sub-buffer.
    fn put(o: &mut FileOutput, at: u64, n: u64) {
        let bytes: Vec<u8> = (at..at + n).map(|i| i as u8).collect();
        o.file.write_all(&bytes).unwrap();
        o.wrote(n);
    }

    /// The files of `base` in `dir`, concatenated, and their names.
    fn contents(dir: &Path, base: &str) -> (Vec<u8>, Vec<String>) {
        let mut names: Vec<(u64, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|n| {
                if n == base {
                    Some((0, n))
                } else {
                    let i = n.strip_prefix(&format!("{base}."))?.parse().ok()?;
                    Some((i, n))
                }
            })
            .collect();
        names.sort();
        let mut all = Vec::new();
        for (_, n) in &names {
            all.extend(std::fs::read(dir.join(n)).unwrap());
        }
        (all, names.into_iter().map(|n| n.1).collect())
    }

    fn stream(from: u64, to: u64) -> Vec<u8> {
        (from..to).map(|i| i as u8).collect()
    }

    #[test]
    fn rotates_at_the_size_and_keeps_the_newest_files() {
        let d = tempfile::tempdir().unwrap();
        let mut o = FileOutput::resume(d.path(), "cpu0.out", Some(100), Some(2), ID, 0).unwrap();
        let mut at = 0;
        for _ in 0..7 {
            put(&mut o, at, 60);
            at += 60;
            o.maybe_rotate().unwrap();
        }
        // 60 B per "sub-buffer", rotating at 100: 120 B per file.
        let (all, names) = contents(d.path(), "cpu0.out");
        assert_eq!(names, ["cpu0.out.2", "cpu0.out.3"]);
        assert_eq!(all, stream(240, 420));
        assert_eq!(o.files.len(), 2);
        assert_eq!(o.size, 60);
    }

    #[test]
    fn without_rotation_a_restart_cuts_back_to_what_was_consumed() {
        let d = tempfile::tempdir().unwrap();
        let mut o = FileOutput::resume(d.path(), "cpu0.out", None, None, ID, 0).unwrap();
        put(&mut o, 0, 500);
        drop(o); // killed after writing 500 bytes, having consumed 300
        let mut o = FileOutput::resume(d.path(), "cpu0.out", None, None, ID, 300).unwrap();
        assert_eq!(o.size, 300);
        put(&mut o, 300, 200);
        assert_eq!(contents(d.path(), "cpu0.out").0, stream(0, 500));
    }

    #[test]
    fn resume_with_rotation_cuts_the_newest_file_back() {
        let d = tempfile::tempdir().unwrap();
        let mut o = FileOutput::resume(d.path(), "cpu0.out", Some(100), Some(3), ID, 0).unwrap();
        let mut at = 0;
        for _ in 0..9 {
            put(&mut o, at, 60);
            at += 60;
            o.maybe_rotate().unwrap();
        }
        // Written 540 (files .0-.4 made, .0 and .1 removed); killed with
        // the last 60 written but not consumed.
        put(&mut o, at, 60);
        drop(o);
        let consumed = at;
        let mut o =
            FileOutput::resume(d.path(), "cpu0.out", Some(100), Some(3), ID, consumed).unwrap();
        put(&mut o, consumed, 60);
        o.maybe_rotate().unwrap();
        put(&mut o, consumed + 60, 60);
        let (all, names) = contents(d.path(), "cpu0.out");
        assert_eq!(names, ["cpu0.out.3", "cpu0.out.4", "cpu0.out.5"]);
        // No torn piece, no duplicate, no gap: the stream from the first
        // byte of the oldest file kept.
        assert_eq!(all, stream(360, consumed + 120));
    }

    #[test]
    fn killed_between_the_new_file_and_the_state() {
        let d = tempfile::tempdir().unwrap();
        let mut o = FileOutput::resume(d.path(), "cpu0.out", Some(100), None, ID, 0).unwrap();
        put(&mut o, 0, 120);
        drop(o);
        // The next file was created, the state still names .0.
        std::fs::write(d.path().join("cpu0.out.1"), b"").unwrap();
        let mut o = FileOutput::resume(d.path(), "cpu0.out", Some(100), None, ID, 120).unwrap();
        assert_eq!(o.size, 120);
        assert!(!d.path().join("cpu0.out.1").exists());
        o.maybe_rotate().unwrap();
        put(&mut o, 120, 30);
        let (all, names) = contents(d.path(), "cpu0.out");
        assert_eq!(names, ["cpu0.out.0", "cpu0.out.1"]);
        assert_eq!(all, stream(0, 150));
    }

    #[test]
    fn a_state_naming_a_file_that_is_not_there_starts_it_empty() {
        let d = tempfile::tempdir().unwrap();
        let mut o = FileOutput::resume(d.path(), "cpu0.out", Some(100), None, ID, 0).unwrap();
        put(&mut o, 0, 120);
        o.maybe_rotate().unwrap();
        drop(o);
        std::fs::remove_file(d.path().join("cpu0.out.1")).unwrap();
        let mut o = FileOutput::resume(d.path(), "cpu0.out", Some(100), None, ID, 120).unwrap();
        assert_eq!(o.size, 0);
        put(&mut o, 120, 30);
        assert_eq!(contents(d.path(), "cpu0.out").0, stream(0, 150));
    }

    #[test]
    fn a_fresh_recording_replaces_the_old_files_and_another_channel_keeps_them() {
        let d = tempfile::tempdir().unwrap();
        let mut o = FileOutput::resume(d.path(), "cpu0.out", Some(100), None, ID, 0).unwrap();
        for i in 0..3 {
            put(&mut o, i * 120, 120);
            o.maybe_rotate().unwrap();
        }
        drop(o);
        let mut o = FileOutput::resume(d.path(), "cpu0.out", Some(100), None, ID + 1, 0).unwrap();
        put(&mut o, 0, 10);
        let (all, names) = contents(d.path(), "cpu0.out");
        assert_eq!(names, ["cpu0.out.0"]);
        assert_eq!(all, stream(0, 10));
        drop(o);
        // A channel with no state of its own that has consumed something
        // appends to the newest file and keeps it all.
        let o = FileOutput::resume(d.path(), "cpu0.out", Some(100), None, ID + 2, 50).unwrap();
        assert_eq!(o.size, 10);
    }

    #[test]
    fn resuming_with_other_rotation_options_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let mut o = FileOutput::resume(d.path(), "cpu0.out", None, None, ID, 0).unwrap();
        put(&mut o, 0, 10);
        drop(o);
        let e = FileOutput::resume(d.path(), "cpu0.out", Some(100), None, ID, 10).unwrap_err();
        assert!(format!("{e:#}").contains("--max-size"), "{e:#}");
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("cpu0.out")).unwrap();
        assert!(FileOutput::resume(d.path(), "cpu0.out", None, None, ID, 0).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    fn mkfifo(path: &Path) {
        let ok = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// `FileOutput::resume` in another thread, given 10 s: a FIFO must not
    /// block it.
    fn resume_in_time(dir: &Path, consumed: u64) -> Result<FileOutput> {
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(FileOutput::resume(
                &dir, "cpu0.out", None, None, ID, consumed,
            ));
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("blocked opening a FIFO")
    }

    #[test]
    fn a_fifo_as_the_output_file_is_a_clear_error_not_a_hang() {
        for consumed in [0, 100] {
            let d = tempfile::tempdir().unwrap();
            let fifo = d.path().join("cpu0.out");
            mkfifo(&fifo);
            let e = resume_in_time(d.path(), consumed).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(&*fifo.to_string_lossy()), "{msg}");
            assert!(msg.contains("not a regular file"), "{msg}");
            assert!(msg.contains("FIFO"), "{msg}");
        }
    }

    #[test]
    fn a_fifo_as_the_state_file_is_a_clear_error_not_a_hang() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join(".cpu0.out.state");
        mkfifo(&state);
        let e = resume_in_time(d.path(), 100).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains(&*state.to_string_lossy()), "{msg}");
        assert!(msg.contains("not a regular file"), "{msg}");
        // A regular state file still works.
        std::fs::remove_file(&state).unwrap();
        let mut o = FileOutput::resume(d.path(), "cpu0.out", None, None, ID, 0).unwrap();
        put(&mut o, 0, 100);
        drop(o);
        assert_eq!(resume_in_time(d.path(), 100).unwrap().size, 100);
    }

    #[test]
    fn a_directory_as_the_output_file_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("cpu0.out.0")).unwrap();
        let e = FileOutput::resume(d.path(), "cpu0.out", Some(100), None, ID, 0).unwrap_err();
        assert!(format!("{e:#}").contains("cpu0.out.0"), "{e:#}");
    }

    #[test]
    fn atomic_write_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_write_over_a_directory_says_why_once_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        std::fs::create_dir(&p).unwrap();
        let e = format!("{:#}", write_atomic(&p, b"one").unwrap_err());
        let why = std::io::Error::from_raw_os_error(libc::EISDIR).to_string();
        assert_eq!(e.matches(&why).count(), 1, "{e}");
        assert!(
            e.starts_with(&format!("cannot write {}", p.display())),
            "{e}"
        );
        assert!(p.is_dir());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "{e}");
    }

    /// An output operation that finds the filesystem full `fails` times,
    /// the way `tempfile` reports it (the kind kept, the OS code wrapped).
    fn full_then_ok(fails: u32) -> impl FnMut() -> Result<u32> {
        let mut n = 0;
        move || {
            n += 1;
            if n <= fails {
                let e = std::io::Error::new(std::io::ErrorKind::StorageFull, "at path x");
                Err(anyhow::Error::new(e).context("cannot write x"))
            } else {
                Ok(n)
            }
        }
    }

    #[test]
    fn output_setup_waits_for_room_with_retry_only() {
        let stop = AtomicBool::new(false);
        let mut retry = Retry::new(true, Some(&stop), "the producer");
        assert_eq!(retry.run(full_then_ok(2)).unwrap(), 3);
        assert!(retry.warned());
        let mut no_retry = Retry::new(false, Some(&stop), "the producer");
        let e = no_retry.run(full_then_ok(2)).unwrap_err();
        assert!(output_full(&e), "{e:#}");
        assert!(!no_retry.warned());
        let os = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(output_full(&os.context("writing")));
        let other = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(!output_full(&other));
        // Stopped: no more waiting.
        stop.store(true, Ordering::Relaxed);
        let mut retry = Retry::new(true, Some(&stop), "the producer");
        assert!(retry.run(full_then_ok(2)).is_err());
    }

    fn read_error(code: i32) -> relayfs::ReadError {
        relayfs::ReadError::Io {
            what: "writing",
            path: PathBuf::from("cpu0"),
            source: std::io::Error::from_raw_os_error(code),
        }
    }

    #[test]
    fn a_full_filesystem_is_waited_out_only_with_retry_and_until_stopped() {
        let stop = AtomicBool::new(false);
        let mut retry = Retry::new(true, Some(&stop), "the kernel");
        assert_eq!(
            retry.write_failed("x", &read_error(libc::ENOSPC)),
            Some(AfterFull::Again)
        );
        assert_eq!(
            retry.write_failed("x", &read_error(libc::EDQUOT)),
            Some(AfterFull::Again)
        );
        // Any other error is the caller's to fail on.
        assert_eq!(retry.write_failed("x", &read_error(libc::EIO)), None);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            retry.write_failed("x", &read_error(libc::ENOSPC)),
            Some(AfterFull::Stopped)
        );
        let mut no_retry = Retry::new(false, None, "the kernel");
        assert_eq!(no_retry.write_failed("x", &read_error(libc::ENOSPC)), None);
    }

    #[test]
    fn cut_back_leaves_the_last_whole_sub_buffer_and_resume_agrees() {
        let d = tempfile::tempdir().unwrap();
        let mut o = FileOutput::resume(d.path(), "cpu0.out", Some(100), None, ID, 0).unwrap();
        put(&mut o, 0, 60);
        let kept = Output::size(&o);
        // Half a sub-buffer written when the write failed.
        put(&mut o, 60, 25);
        assert_eq!(Output::cut_back(&mut o, kept).unwrap(), 25);
        assert_eq!(Output::cut_back(&mut o, kept).unwrap(), 0);
        Output::finish(&mut o).unwrap();
        let (bytes, names) = contents(d.path(), "cpu0.out");
        assert_eq!(bytes, (0..60u64).map(|i| i as u8).collect::<Vec<_>>());
        assert_eq!(names, ["cpu0.out.0"]);
        drop(o);
        // The next recorder takes the stream up at byte 60: nothing doubled.
        let mut o = FileOutput::resume(d.path(), "cpu0.out", Some(100), None, ID, 60).unwrap();
        put(&mut o, 60, 50);
        Output::boundary(&mut o).unwrap();
        put(&mut o, 110, 10);
        let (bytes, names) = contents(d.path(), "cpu0.out");
        assert_eq!(bytes, (0..120u64).map(|i| i as u8).collect::<Vec<_>>());
        assert_eq!(names, ["cpu0.out.0", "cpu0.out.1"]);
        assert_eq!(Output::files(&o).len(), 2);
    }
}
