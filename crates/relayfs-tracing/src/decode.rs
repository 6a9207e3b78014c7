//! Decoding a recording: the `cpuN.out` files (and rotated `cpuN.out.K`)
//! that `relayfs record` writes, merged into one stream in timestamp order
//! and printed like `tracing-subscriber`'s `fmt` layer, or as JSON lines.
//!
//! * Each buffer's files are one stream of framed records
//!   ([`relayfs::Decoder`]); the streams are merged by timestamp (the
//!   layer's clock, one clock for every CPU: `CLOCK_MONOTONIC`, or the
//!   scaled TSC, whose timestamps are mapped to `CLOCK_MONOTONIC` between
//!   the anchor records around them before they are printed).
//! * Callsite records are collected as they come; an event whose callsite
//!   record has not been seen (it was lost, or it is in a buffer the merge
//!   has not reached) is shown as `unknown callsite N` with its values by
//!   position.
//! * Losses: a lost record (written by the layer before the next event on
//!   that CPU) is shown where it is, as `N events lost on cpuK`. Whatever the
//!   recorder's counters (`relayfs-record.json`) say a buffer lost beyond
//!   that is shown once every buffer's stream has ended (a lost record for
//!   a buffer can come after its own stream ended, in another buffer's), as
//!   `N records lost on cpuK`, saying that where is not known.
//! * Bad input (a corrupt or cut record, a payload that is not a valid
//!   tracing record) is a [`Problem`] naming the file and byte offset;
//!   decoding goes on after it. Nothing in the files can make it panic.
//! * `follow`: the recording may still be written. Files are read as they
//!   grow, new rotated files picked up, and the end is when the recorder's
//!   summary appears and everything is read. A record is printed once every
//!   buffer has a later one, or once it is older than `settle` on this
//!   machine's monotonic clock (a buffer with nothing new holds nothing
//!   older).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use relayfs::frame::{Decoder, FrameError};

use crate::wire::{self, Item, Value, Values, WireError};

/// The summary file `relayfs record` writes at the end of a recording.
pub const SUMMARY_FILE: &str = "relayfs-record.json";

/// The largest payload taken as a record: a tracing record is small, and a
/// corrupt header announcing more must not make the decoder wait for (and
/// allocate) up to a sub-buffer's gigabyte.
pub const MAX_PAYLOAD: u32 = 64 << 20;

/// How to decode.
#[derive(Debug, Clone)]
pub struct Options {
    /// JSON lines instead of text.
    pub json: bool,
    /// The recording may still be written: wait for more until the
    /// recorder's summary appears.
    pub follow: bool,
    /// How often to look for more data when following.
    pub poll: Duration,
    /// When following, how old a record must be before it is printed while
    /// some buffer has nothing newer.
    pub settle: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            json: false,
            follow: false,
            poll: Duration::from_millis(100),
            settle: Duration::from_secs(2),
        }
    }
}

/// What a decode found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Framed records decoded.
    pub records: u64,
    /// Events printed.
    pub events: u64,
    /// Events (and span records) the layer said it lost.
    pub lost_events: u64,
    /// Callsite records (each is written again) and anchor records the
    /// layer said it lost.
    pub lost_callsites: u64,
    /// Records the recorder's counters say were lost beyond those.
    pub lost_records: u64,
    /// Problems reported.
    pub problems: u64,
    /// Records printed with a timestamp lower than the one before (two
    /// writers on one CPU racing between reservation and clock read: the
    /// records keep their buffer's order).
    pub out_of_order: u64,
}

/// Something wrong in the input: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or stream name).
    pub file: String,
    /// Byte offset in that file, if known.
    pub offset: Option<u64>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.offset {
            Some(o) => write!(f, "{}: byte {}: {}", self.file, o, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Per-buffer counters from `relayfs-record.json` (only what is needed).
#[derive(Debug, serde::Deserialize)]
struct SummaryFile {
    buffers: Vec<SummaryBuffer>,
    /// How the recording ended (`closed`, `producer_gone`, `interrupted`,
    /// `stopped`, `error`).
    #[serde(default)]
    end: Option<String>,
    /// What stopped it, when `end` is `error`.
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct SummaryBuffer {
    name: String,
    #[serde(default)]
    dropped_full: u64,
    #[serde(default)]
    dropped_toobig: u64,
    #[serde(default)]
    overwritten: u64,
    #[serde(default)]
    discarded: u64,
    #[serde(default)]
    abandoned_records: u64,
}

impl SummaryBuffer {
    fn lost(&self) -> u64 {
        self.dropped_full
            .saturating_add(self.dropped_toobig)
            .saturating_add(self.overwritten)
            .saturating_add(self.discarded)
            .saturating_add(self.abandoned_records)
    }
}

/// Opens a file of a recording for reading: not through a symbolic link,
/// and only a regular file (`O_NONBLOCK`, so that a FIFO in its place
/// does not block the open). Whoever could write into the directory
/// could otherwise make the decoder read `/dev/zero` until memory runs
/// out, or wait forever on a FIFO.
fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(f)
}

/// Reads the summary's per-buffer loss counts; `Ok(None)` if there is no
/// summary. A summary that is there but can't be read is a problem
/// (`Err(())`, said through `problem`); so is a recording that ended on an
/// error (a full disk, say): what was written after it was neither
/// recorded nor, by the recorder, counted, so the counts are returned but
/// the decode does not look complete.
fn read_summary(
    dir: &Path,
    problem: &mut dyn FnMut(&Problem),
) -> Result<Option<HashMap<String, u64>>, ()> {
    match read_summary_file(dir) {
        Ok(Some(s)) => {
            if s.end.as_deref() == Some("error") {
                problem(&Problem {
                    file: SUMMARY_FILE.into(),
                    offset: None,
                    message: format!(
                        "the recording ended on an error ({}): what was written after it \
                         was not recorded, and may not be counted lost",
                        s.error.as_deref().unwrap_or("not said")
                    ),
                });
            }
            Ok(Some(
                s.buffers
                    .into_iter()
                    .map(|b| (b.name.clone(), b.lost()))
                    .collect(),
            ))
        }
        Ok(None) => Ok(None),
        Err(p) => {
            problem(&p);
            Err(())
        }
    }
}

/// The summary file, `Ok(None)` if there is none.
fn read_summary_file(dir: &Path) -> Result<Option<SummaryFile>, Problem> {
    let path = dir.join(SUMMARY_FILE);
    let text = match open_regular(&path).and_then(|mut f| {
        let mut t = Vec::new();
        f.read_to_end(&mut t).map(|_| t)
    }) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Problem {
                file: SUMMARY_FILE.into(),
                offset: None,
                message: format!("cannot read it: {e}"),
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| Problem {
            file: SUMMARY_FILE.into(),
            offset: None,
            message: format!("not a recording summary: {e}"),
        })
}

/// The `(buffer name, rotation index)` of an output file name: `cpu0.out`
/// is `("cpu0", None)`, `cpu0.out.3` is `("cpu0", Some(3))`.
fn parse_out_name(name: &str) -> Option<(&str, Option<u64>)> {
    if name.starts_with('.') {
        return None;
    }
    if let Some(base) = name.strip_suffix(".out") {
        return (!base.is_empty()).then_some((base, None));
    }
    let (head, k) = name.rsplit_once('.')?;
    let base = head.strip_suffix(".out")?;
    if base.is_empty() || k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base, Some(k.parse().ok()?)))
}

/// The output files of a recording directory, per buffer, in order.
fn list_outputs(dir: &Path) -> io::Result<Vec<(String, Vec<PathBuf>)>> {
    let mut by: HashMap<String, Vec<(u64, PathBuf)>> = HashMap::new();
    for ent in std::fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((base, k)) = parse_out_name(name) else {
            continue;
        };
        if !ent.file_type()?.is_file() {
            continue;
        }
        by.entry(base.to_string())
            .or_default()
            .push((k.unwrap_or(0), ent.path()));
    }
    let mut v: Vec<(String, Vec<PathBuf>)> = by
        .into_iter()
        .map(|(b, mut f)| {
            f.sort();
            (b, f.into_iter().map(|(_, p)| p).collect())
        })
        .collect();
    v.sort_by_key(|a| natural_key(&a.0));
    Ok(v)
}

/// Sorts `cpu2` before `cpu10`.
fn natural_key(s: &str) -> (String, u64) {
    let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (a, n) = s.split_at(s.len() - digits);
    (a.to_string(), n.parse().unwrap_or(0))
}

/// Where a buffer's bytes come from.
enum Input {
    /// A recording's files for one buffer, read one after the other.
    Files {
        dir: PathBuf,
        base: String,
        files: Vec<PathBuf>,
        /// Index in `files` of the open file.
        cur: usize,
        file: Option<File>,
        /// Stream offset where each opened file starts, and its name.
        starts: Vec<(u64, String)>,
        /// Stream offset read so far.
        pos: u64,
        /// Files removed before they could be opened (`--max-files`
        /// rotated them away), to be reported.
        gone: Vec<String>,
    },
    /// Any byte stream.
    Reader(Box<dyn Read>),
}

impl Input {
    /// Reads some bytes; `Ok(None)` when nothing is there now (more may
    /// come when following), `Ok(Some(0))` never.
    fn read(&mut self, buf: &mut [u8], follow: bool) -> io::Result<Option<usize>> {
        match self {
            Input::Reader(r) => loop {
                match r.read(buf) {
                    Ok(0) => return Ok(None),
                    Ok(n) => return Ok(Some(n)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
            Input::Files {
                dir,
                base,
                files,
                cur,
                file,
                starts,
                pos,
                gone,
            } => loop {
                if file.is_none() {
                    if *cur >= files.len() && follow {
                        if let Some((_, f)) =
                            list_outputs(dir)?.into_iter().find(|(b, _)| b == base)
                        {
                            for p in f {
                                if !files.contains(&p) {
                                    files.push(p);
                                }
                            }
                        }
                    }
                    let Some(p) = files.get(*cur) else {
                        return Ok(None);
                    };
                    let name = p
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                    match open_regular(p) {
                        Ok(f) => *file = Some(f),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            gone.push(name);
                            *cur += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    starts.push((*pos, name));
                }
                let f = file.as_mut().expect("opened above");
                match f.read(buf) {
                    Ok(0) => {
                        // The next file, if there is one (a following
                        // decode looks again next time).
                        let more = *cur + 1 < files.len()
                            || (follow
                                && list_outputs(dir)?
                                    .iter()
                                    .any(|(b, f)| b == base && f.len() > *cur + 1));
                        if !more {
                            return Ok(None);
                        }
                        *file = None;
                        *cur += 1;
                    }
                    Ok(n) => {
                        *pos += n as u64;
                        return Ok(Some(n));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
        }
    }

    /// The file holding stream offset `off`, and the offset in it.
    fn locate(&self, name: &str, off: u64) -> (String, u64) {
        match self {
            Input::Reader(_) => (name.to_string(), off),
            Input::Files { starts, .. } => match starts.iter().rev().find(|(s, _)| *s <= off) {
                Some((s, n)) => (n.clone(), off - s),
                None => (name.to_string(), off),
            },
        }
    }
}

/// One buffer's stream and its next record.
struct Source {
    name: String,
    /// The end of its events' JSON lines, made once:
    /// `,"buffer":"cpu0"}`.
    json_tail: String,
    input: Input,
    dec: Decoder,
    /// The next record: timestamp, stream offset, payload (in `payload`).
    head: Option<(u64, u64)>,
    payload: Vec<u8>,
    /// Timestamp of the last record (for records without one).
    last_ts: u64,
    ended: bool,
    /// Lost events reported in band for this buffer.
    lost_in_band: u64,
    /// Its end was dealt with (the recorder's count of its losses shown).
    closed: bool,
}

/// An open span, as the decoder knows it.
struct SpanState {
    callsite: u64,
    text: String,
    json: String,
}

/// A callsite's strings, owned.
struct Callsite {
    level: u8,
    name: String,
    target: String,
    fields: Vec<String>,
    /// The field names as text shows them after another field (` a=`),
    /// made once; `None` for the message, which is shown bare.
    text_fields: Vec<Option<String>>,
    /// Parts of JSON lines, made once: `,"level":"INFO","fields":{`, then
    /// `},"target":"app"`, and the field names (`"a":`).
    json_level: String,
    json_target: String,
    json_fields: Vec<String>,
    /// A JSON line's level and its first field's name
    /// (`,"level":"INFO","fields":{"a":`), and another field's name after a
    /// value (`,"a":`), by field, made once.
    json_first: Vec<String>,
    json_next: Vec<String>,
    /// What a text line without spans shows between its time and its
    /// message, made once: `  INFO app: `.
    text_head: String,
}

/// Callsites by id: a vector for the small ids a layer hands out, a map
/// for any other (a recording can say anything).
#[derive(Default)]
struct Callsites {
    small: Vec<Option<Callsite>>,
    big: HashMap<u64, Callsite>,
}

const SMALL_IDS: u64 = 1 << 12;

/// Bytes of output lines gathered before they are written.
const OUT_BATCH: usize = 64 << 10;

impl Callsites {
    #[inline]
    fn get(&self, id: &u64) -> Option<&Callsite> {
        if *id < SMALL_IDS {
            self.small.get(*id as usize).and_then(Option::as_ref)
        } else {
            self.big.get(id)
        }
    }

    fn insert(&mut self, id: u64, c: Callsite) {
        if id < SMALL_IDS {
            let i = id as usize;
            if self.small.len() <= i {
                self.small.resize_with(i + 1, || None);
            }
            self.small[i] = Some(c);
        } else {
            self.big.insert(id, c);
        }
    }
}

/// Reused buffers for one event's values.
#[derive(Default)]
struct Scratch {
    text: String,
    rest: String,
    json: String,
}

/// The wall clock's offset, and the formatted date and time of the last
/// second printed (it changes once a second, the microseconds every line).
#[derive(Default)]
struct TimeFmt {
    offset: Option<i128>,
    sec: Option<i64>,
    prefix: String,
    /// The start of a JSON line in that second, `{"timestamp":"` and the
    /// prefix.
    json_prefix: String,
    /// The monotonic timestamps of the second in `prefix`, `[start, end)`
    /// (`end` 0: none): a time in it needs no conversion, only its
    /// microseconds.
    mono: (u64, u64),
}

/// The state of a decode: what it knows of callsites, spans and threads,
/// and where it prints.
struct Printer<'o> {
    out: &'o mut dyn Write,
    json: bool,
    callsites: Callsites,
    spans: HashMap<u64, SpanState>,
    stacks: HashMap<u64, Vec<u64>>,
    /// Wall clock minus monotonic clock (from a clock record), and the
    /// formatting of times.
    tf: TimeFmt,
    line: String,
    scratch: Scratch,
    /// The last thread of a JSON line and its member, `,"threadId":N`,
    /// made once (a thread's events usually come in runs).
    thread_json: (u64, String),
    /// The end of the last JSON line without spans, and its callsite,
    /// thread and buffer (the address of its `json_tail`): target, thread
    /// and buffer in one piece.
    json_end: (Option<(u64, u64, usize)>, String),
    stats: Stats,
}

/// The recording in `dir`, merged and printed to `out`; problems in the
/// input go to `problem` as they are found (decoding goes on).
///
/// # Errors
/// Reading the directory or a file, or writing `out`, failed.
pub fn decode_dir(
    dir: &Path,
    opts: &Options,
    out: &mut dyn Write,
    problem: &mut dyn FnMut(&Problem),
) -> io::Result<Stats> {
    let mut summary = if opts.follow {
        None
    } else {
        read_summary(dir, problem).unwrap_or(None)
    };
    let mut outputs = if opts.follow {
        Vec::new()
    } else {
        list_outputs(dir)?
    };
    if opts.follow {
        // Wait for the recorder to make its directory and files.
        loop {
            match list_outputs(dir) {
                Ok(o) if !o.is_empty() => {
                    outputs = o;
                    break;
                }
                Ok(_) if dir.join(SUMMARY_FILE).exists() => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            std::thread::sleep(opts.poll);
        }
    } else if outputs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no <buffer>.out files in {}", dir.display()),
        ));
    }
    let sources = outputs
        .into_iter()
        .map(|(base, files)| {
            (
                base.clone(),
                Input::Files {
                    dir: dir.to_path_buf(),
                    base,
                    files,
                    cur: 0,
                    file: None,
                    starts: Vec::new(),
                    pos: 0,
                    gone: Vec::new(),
                },
            )
        })
        .collect();
    let done = |summary: &mut Option<HashMap<String, u64>>, problem: &mut dyn FnMut(&Problem)| {
        if summary.is_none() {
            *summary = read_summary(dir, problem).unwrap_or_else(|()| Some(HashMap::new()));
        }
        summary.is_some()
    };
    run(sources, opts, out, problem, &mut summary, &mut |s, p| {
        !opts.follow || done(s, p)
    })
}

/// Decodes and merges named byte streams (each one buffer's framed
/// records, e.g. `cpuN.out` files or what a relay file's reads return).
///
/// # Errors
/// Reading a stream or writing `out` failed.
pub fn decode_streams(
    streams: Vec<(String, Box<dyn Read>)>,
    json: bool,
    out: &mut dyn Write,
    problem: &mut dyn FnMut(&Problem),
) -> io::Result<Stats> {
    let opts = Options {
        json,
        ..Options::default()
    };
    let sources = streams
        .into_iter()
        .map(|(n, r)| (n, Input::Reader(r)))
        .collect();
    run(sources, &opts, out, problem, &mut None, &mut |_, _| true)
}

/// Records a source's stream offset-located problem.
fn frame_problem(src: &Source, e: &FrameError) -> Problem {
    let (off, msg) = match e {
        FrameError::Corrupt { offset, reason } => {
            (Some(*offset), format!("corrupt record: {reason}"))
        }
        FrameError::Truncated { offset, have, need } => (
            Some(*offset),
            format!("the stream ends inside a record ({have} of {need} bytes): skipped"),
        ),
        other => (None, other.to_string()),
    };
    match off {
        Some(o) => {
            let (file, o) = src.input.locate(&src.name, o);
            Problem {
                file,
                offset: Some(o),
                message: msg,
            }
        }
        None => Problem {
            file: src.name.clone(),
            offset: None,
            message: msg,
        },
    }
}

type Finished<'a> =
    dyn FnMut(&mut Option<HashMap<String, u64>>, &mut dyn FnMut(&Problem)) -> bool + 'a;

fn run(
    named: Vec<(String, Input)>,
    opts: &Options,
    out: &mut dyn Write,
    problem: &mut dyn FnMut(&Problem),
    summary: &mut Option<HashMap<String, u64>>,
    finished: &mut Finished<'_>,
) -> io::Result<Stats> {
    let mut srcs: Vec<Source> = named
        .into_iter()
        .map(|(name, input)| Source {
            json_tail: {
                let mut j = String::from(",\"buffer\":");
                json_str(&mut j, &name);
                j.push('}');
                j
            },
            name,
            input,
            dec: Decoder::with_max_payload(MAX_PAYLOAD),
            head: None,
            payload: Vec::new(),
            last_ts: 0,
            ended: false,
            lost_in_band: 0,
            closed: false,
        })
        .collect();
    let mut p = Printer {
        out,
        json: opts.json,
        callsites: Callsites::default(),
        spans: HashMap::new(),
        stacks: HashMap::new(),
        tf: TimeFmt::default(),
        line: String::with_capacity(OUT_BATCH + 1024),
        scratch: Scratch::default(),
        thread_json: (0, String::from(",\"threadId\":0")),
        json_end: (None, String::new()),
        stats: Stats::default(),
    };
    let mut chunk = vec![0u8; 64 << 10];
    let mut last_ts = 0u64;
    let mut held = Held::default();
    loop {
        // Whether the recording is over (when following: the summary is
        // there); asked before reading, so that what is read after it is
        // everything.
        let over = finished(summary, problem);
        let mut waiting = false;
        for s in &mut srcs {
            if s.head.is_some() || s.ended {
                continue;
            }
            fill(s, &mut chunk, opts.follow && !over, problem, &mut p.stats)?;
            if s.head.is_none() && !s.ended {
                waiting = true;
            }
        }
        // The smallest next record.
        let mut best: Option<usize> = None;
        for (i, s) in srcs.iter().enumerate() {
            if let Some((ts, _)) = s.head {
                if best.is_none_or(|b| ts < srcs[b].head.map_or(u64::MAX, |h| h.0)) {
                    best = Some(i);
                }
            }
        }
        let Some(i) = best else {
            if !waiting {
                break;
            }
            held.release_old(&mut p, &mut srcs, opts.settle, problem)?;
            p.flush()?;
            std::thread::sleep(opts.poll);
            continue;
        };
        let ts = srcs[i].head.map_or(0, |h| h.0);
        // Its age on this machine's CLOCK_MONOTONIC: the layer's clock
        // mapped by the last anchors (the scaled TSC may have drifted
        // from it by more than `settle` in a long run).
        if waiting
            && held
                .line()
                .map(ts)
                .saturating_add(opts.settle.as_nanos() as u64)
                > relayfs::frame::now()
        {
            held.release_old(&mut p, &mut srcs, opts.settle, problem)?;
            p.flush()?;
            std::thread::sleep(opts.poll);
            continue;
        }
        let (ts, offset) = srcs[i].head.take().expect("a head");
        if ts < last_ts {
            p.stats.out_of_order += 1;
        } else {
            last_ts = ts;
        }
        held.record(&mut p, &mut srcs, i, ts, offset, problem)?;
        fill(
            &mut srcs[i],
            &mut chunk,
            opts.follow && !over,
            problem,
            &mut p.stats,
        )?;
    }
    held.release(&mut p, &mut srcs, problem)?;
    // What the recorder counted beyond the lost records shown, per buffer,
    // once every stream has ended: a buffer's losses can be reported in
    // band after its own stream ended, by a thread on another CPU (a
    // buffer full to the end, `flush_lost` at close).
    let end = held.line().map(last_ts);
    for s in &mut srcs {
        if !s.closed {
            s.closed = true;
            end_of_source(&mut p, s, summary, end)?;
        }
    }
    p.flush()?;
    Ok(p.stats)
}

/// Records held until the next anchor, to map their timestamps to
/// `CLOCK_MONOTONIC` between it and the one before.
///
/// A layer on the TSC clock writes anchor records (its clock and
/// `CLOCK_MONOTONIC` read together) about once a second. From the first
/// anchor on, records (in merged order) wait here; the next anchor maps
/// them by linear interpolation between the two anchors and lets them go.
/// What waits when the stream ends, when following and waiting for more
/// once the oldest is older than `settle` and [`ANCHOR_WAIT`] (the writer
/// may be idle, and writes no anchor then), or when more than
/// [`HELD_RECORDS`] records or
/// [`HELD_BYTES`] bytes wait, is mapped by extrapolation from the last two
/// anchors (from the last one with the rate 1 if there is one only).
/// Records before the first anchor, and every record of a recording
/// without anchors (the layer on `CLOCK_MONOTONIC`, or older recordings),
/// keep their timestamps and are not held.
#[derive(Default)]
struct Held {
    /// The last two anchors (clock, monotonic), the older first.
    prev: Option<(u64, u64)>,
    last: Option<(u64, u64)>,
    /// The records that wait.
    queue: Vec<Waiting>,
    /// The payloads of the records in `queue`.
    bytes: Vec<u8>,
}

/// Records held at most, and payload bytes held at most, before those
/// held are mapped by extrapolation: a few megabytes, reused, rather than
/// a second of a fast recording (holding that much costs the decoder more
/// in cache misses than it does in work).
const HELD_RECORDS: usize = 1 << 16;
const HELD_BYTES: usize = 4 << 20;

/// How long past `settle` a follower waits for the next anchor before it
/// lets the records held for it go: the layer's longest gap between
/// anchors (a second of its clock).
const ANCHOR_WAIT: Duration = Duration::from_secs(1);

/// A record waiting for the next anchor; its payload is
/// the next `len` bytes held.
struct Waiting {
    ts: u64,
    offset: u64,
    src: u32,
    len: u32,
}

/// A linear map from the layer's clock to `CLOCK_MONOTONIC`: through
/// `(clock, mono)` with the slope `slope / 2^32`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Line {
    clock: u64,
    mono: u64,
    slope: i128,
}

impl Line {
    /// Through two anchors (`b` the later); the rate 1 through `b` if they
    /// do not both increase.
    pub(crate) fn through(a: Option<(u64, u64)>, b: (u64, u64)) -> Line {
        let slope = match a {
            Some(a) if b.0 > a.0 && b.1 >= a.1 => {
                (i128::from(b.1 - a.1) << 32) / i128::from(b.0 - a.0)
            }
            _ => 1 << 32,
        };
        Line {
            clock: b.0,
            mono: b.1,
            slope,
        }
    }

    /// The `CLOCK_MONOTONIC` time of clock time `t`.
    #[inline]
    pub(crate) fn map(&self, t: u64) -> u64 {
        let d = i128::from(t) - i128::from(self.clock);
        // Saturating: anchors in a damaged file can be anything.
        let m = i128::from(self.mono).saturating_add(d.saturating_mul(self.slope) >> 32);
        u64::try_from(m.max(0)).unwrap_or(u64::MAX)
    }
}

impl Held {
    /// Takes the record at the head of `srcs[i]`: prints it, or holds it
    /// until the next anchor; an anchor lets the held ones go first.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn record(
        &mut self,
        p: &mut Printer<'_>,
        srcs: &mut [Source],
        i: usize,
        ts: u64,
        offset: u64,
        problem: &mut dyn FnMut(&Problem),
    ) -> io::Result<()> {
        let kind = srcs[i].payload.first().copied();
        if self.last.is_some() && kind != Some(wire::KIND_ANCHOR) {
            // The usual case once there are anchors: held.
            return self.hold(p, srcs, i, ts, offset, problem);
        }
        let payload = std::mem::take(&mut srcs[i].payload);
        let r = self.record_payload(p, srcs, i, ts, offset, &payload, problem);
        srcs[i].payload = payload;
        r
    }

    /// Holds the record at the head of `srcs[i]` until the next anchor.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn hold(
        &mut self,
        p: &mut Printer<'_>,
        srcs: &mut [Source],
        i: usize,
        ts: u64,
        offset: u64,
        problem: &mut dyn FnMut(&Problem),
    ) -> io::Result<()> {
        let payload = &srcs[i].payload;
        self.bytes.extend_from_slice(payload);
        self.queue.push(Waiting {
            ts,
            offset,
            // Fewer buffers than 2^32, payloads below MAX_PAYLOAD.
            src: i as u32,
            len: payload.len() as u32,
        });
        if self.queue.len() >= HELD_RECORDS || self.bytes.len() >= HELD_BYTES {
            self.release(p, srcs, problem)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn record_payload(
        &mut self,
        p: &mut Printer<'_>,
        srcs: &mut [Source],
        i: usize,
        ts: u64,
        offset: u64,
        payload: &[u8],
        problem: &mut dyn FnMut(&Problem),
    ) -> io::Result<()> {
        if self.last.is_none() && payload.first() != Some(&wire::KIND_ANCHOR) {
            // No anchor yet: the timestamp is CLOCK_MONOTONIC's.
            return take(p, srcs, i, payload, ts, offset, problem);
        }
        if payload.first() == Some(&wire::KIND_ANCHOR) {
            if let Ok(Item::Anchor { clock, monotonic }) = wire::parse(payload) {
                let a = (clock, monotonic);
                let forward = |l: (u64, u64)| clock > l.0 && monotonic >= l.1;
                if clock > ts {
                    // The layer reads the pair before its record's
                    // timestamp, on the same clock: damaged. Used, it would
                    // make every later anchor look like it goes back.
                    let (file, off) = srcs[i].input.locate(&srcs[i].name, offset);
                    p.stats.problems += 1;
                    problem(&Problem {
                        file,
                        offset: Some(off),
                        message: format!(
                            "bad anchor record: its clock ({clock}) is later than its own \
                             timestamp ({ts}): not used"
                        ),
                    });
                } else if self.last.is_none_or(forward) {
                    let line = Line::through(self.last, a);
                    self.drain(p, srcs, line, problem)?;
                    self.prev = self.last;
                    self.last = Some(a);
                } else if self.prev.is_some_and(forward) {
                    // Forward from the one before the last but not from
                    // the last: the last was out of line (damaged, or two
                    // racing anchors a few nanoseconds apart); this one
                    // takes its place, so that one damaged anchor does not
                    // make every later one look like it goes back.
                    let line = Line::through(self.prev, a);
                    self.drain(p, srcs, line, problem)?;
                    self.last = Some(a);
                }
            }
        }
        let line = self.line();
        take(p, srcs, i, payload, line.map(ts), offset, problem)
    }

    /// The map of times after the last anchor: extrapolation from the last
    /// two.
    fn line(&self) -> Line {
        match self.last {
            Some(l) => Line::through(self.prev, l),
            None => Line {
                clock: 0,
                mono: 0,
                slope: 1 << 32,
            },
        }
    }

    /// When following and waiting for more: lets everything held go,
    /// mapped by extrapolation, once the oldest held record is older than
    /// `settle` and an anchor period on this machine's `CLOCK_MONOTONIC`
    /// (the next anchor is not coming soon: the writer may be idle).
    fn release_old(
        &mut self,
        p: &mut Printer<'_>,
        srcs: &mut [Source],
        settle: Duration,
        problem: &mut dyn FnMut(&Problem),
    ) -> io::Result<()> {
        let Some(first) = self.queue.first() else {
            return Ok(());
        };
        let wait = settle.saturating_add(ANCHOR_WAIT).as_nanos() as u64;
        if self.line().map(first.ts).saturating_add(wait) <= relayfs::frame::now() {
            self.release(p, srcs, problem)?;
        }
        Ok(())
    }

    /// Lets everything held go, mapped by extrapolation.
    fn release(
        &mut self,
        p: &mut Printer<'_>,
        srcs: &mut [Source],
        problem: &mut dyn FnMut(&Problem),
    ) -> io::Result<()> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let line = self.line();
        self.drain(p, srcs, line, problem)
    }

    /// Lets everything held go, mapped by `line`.
    fn drain(
        &mut self,
        p: &mut Printer<'_>,
        srcs: &mut [Source],
        line: Line,
        problem: &mut dyn FnMut(&Problem),
    ) -> io::Result<()> {
        let mut start = 0;
        for w in self.queue.drain(..) {
            let ts = line.map(w.ts);
            let end = start + w.len as usize;
            let payload = self.bytes.get(start..end).unwrap_or_default();
            start = end;
            take(p, srcs, w.src as usize, payload, ts, w.offset, problem)?;
        }
        self.bytes.clear();
        Ok(())
    }
}

/// Prints or takes in one record of `srcs[i]` (its payload, its timestamp
/// as `CLOCK_MONOTONIC`); a bad one is a problem.
#[inline(always)]
fn take(
    p: &mut Printer<'_>,
    srcs: &mut [Source],
    i: usize,
    payload: &[u8],
    ts: u64,
    offset: u64,
    problem: &mut dyn FnMut(&Problem),
) -> io::Result<()> {
    match p.record(payload, ts, i, srcs) {
        Ok(losses) => {
            for l in losses {
                let name = format!("cpu{}", l.buffer);
                if let Some(s) = srcs.iter_mut().find(|s| s.name == name) {
                    // Saturating: a damaged file can say anything.
                    s.lost_in_band = s
                        .lost_in_band
                        .saturating_add(l.events.saturating_add(l.callsites));
                }
            }
        }
        Err(e) => {
            let (file, off) = srcs[i].input.locate(&srcs[i].name, offset);
            p.stats.problems += 1;
            problem(&Problem {
                file,
                offset: Some(off),
                message: format!("bad tracing record: {e}"),
            });
        }
    }
    Ok(())
}

fn end_of_source(
    p: &mut Printer<'_>,
    s: &mut Source,
    summary: &Option<HashMap<String, u64>>,
    ts: u64,
) -> io::Result<()> {
    let Some(sum) = summary else { return Ok(()) };
    let Some(&lost) = sum.get(&s.name) else {
        return Ok(());
    };
    let extra = lost.saturating_sub(s.lost_in_band);
    if extra > 0 {
        p.stats.lost_records = p.stats.lost_records.saturating_add(extra);
        p.lost_line(ts, &s.name, extra, 0, false)?;
    }
    Ok(())
}

/// Makes `s.head` the next record if one can be had now; marks the end.
#[inline(always)]
fn fill(
    s: &mut Source,
    chunk: &mut [u8],
    follow: bool,
    problem: &mut dyn FnMut(&Problem),
    stats: &mut Stats,
) -> io::Result<()> {
    if s.head.is_none() && !s.ended {
        // The usual case, inlined: a whole record is in the decoder.
        match s.dec.next_record() {
            Some(Ok(r)) => {
                let ts = r.timestamp.unwrap_or(s.last_ts);
                s.last_ts = ts;
                s.payload.clear();
                s.payload.extend_from_slice(r.payload);
                s.head = Some((ts, r.offset));
                stats.records += 1;
                return Ok(());
            }
            Some(Err(e)) => {
                stats.problems += 1;
                problem(&frame_problem(s, &e));
            }
            None => {}
        }
    }
    fill_more(s, chunk, follow, problem, stats)
}

/// [`fill`] once the decoder had no record ready: reads more, reports
/// framing errors.
#[inline(never)]
fn fill_more(
    s: &mut Source,
    chunk: &mut [u8],
    follow: bool,
    problem: &mut dyn FnMut(&Problem),
    stats: &mut Stats,
) -> io::Result<()> {
    while s.head.is_none() && !s.ended {
        match s.dec.next_record() {
            Some(Ok(r)) => {
                let ts = r.timestamp.unwrap_or(s.last_ts);
                s.last_ts = ts;
                s.payload.clear();
                s.payload.extend_from_slice(r.payload);
                s.head = Some((ts, r.offset));
                stats.records += 1;
                continue;
            }
            Some(Err(e)) => {
                stats.problems += 1;
                problem(&frame_problem(s, &e));
                continue;
            }
            None => {}
        }
        let want = chunk.len();
        let spare = s.dec.spare(want);
        let n = spare.len().min(want);
        let r = s.input.read(&mut spare[..n], follow)?;
        if let Input::Files { gone, .. } = &mut s.input {
            for name in gone.drain(..) {
                stats.problems += 1;
                problem(&Problem {
                    file: name,
                    offset: None,
                    message:
                        "removed before it could be read (rotated away): its records are missing"
                            .into(),
                });
            }
        }
        match r {
            Some(n) => s.dec.filled(n),
            None if follow => return Ok(()),
            None => {
                if let Some(e) = s.dec.finish() {
                    stats.problems += 1;
                    problem(&frame_problem(s, &e));
                }
                s.ended = true;
            }
        }
    }
    Ok(())
}

/// [`CLASS`] bit: the byte is escaped in a JSON string (a control
/// character, a quote, a backslash).
const JSON_ESCAPE: u8 = 1;
/// [`CLASS`] bit: a text value with the byte is shown with Rust's `Debug`
/// escapes (not printable ASCII, a quote, a backslash).
const TEXT_QUOTE: u8 = 2;

/// What each byte needs in a string: one table lookup a byte instead of
/// three comparisons.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c < 0x20 || c == b'"' || c == b'\\' {
            t[b] |= JSON_ESCAPE;
        }
        if c < 0x20 || c >= 0x7f || c == b'"' || c == b'\\' {
            t[b] |= TEXT_QUOTE;
        }
        b += 1;
    }
    t
};

/// Writes `s` as a JSON string.
#[inline]
fn json_str(out: &mut String, s: &str) {
    if !s.bytes().any(|b| CLASS[usize::from(b)] & JSON_ESCAPE != 0) {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    json_str_escaped(out, s);
}

/// [`json_str`] of a string with characters to escape.
#[inline(never)]
fn json_str_escaped(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Writes timestamp `ts` (monotonic ns) as RFC 3339 UTC with microseconds
/// when the wall clock's offset is known, else as monotonic seconds.
fn fmt_time(line: &mut String, tf: &mut TimeFmt, ts: u64) {
    let (start, end) = tf.mono;
    if ts >= start && ts < end {
        // The usual case: the second of the line before.
        line.push_str(&tf.prefix);
        push_micros(line, (ts - start) / 1000);
        line.push('Z');
        return;
    }
    match tf.offset {
        Some(off) => {
            let t = i128::from(ts) + off;
            // 64-bit division where the time fits (until 2262), a 128-bit
            // one (a library call, several times slower) only beyond.
            let (secs, sub) = match i64::try_from(t) {
                Ok(t) => (
                    t.div_euclid(1_000_000_000),
                    t.rem_euclid(1_000_000_000) as u64,
                ),
                Err(_) => (
                    t.div_euclid(1_000_000_000) as i64,
                    t.rem_euclid(1_000_000_000) as u64,
                ),
            };
            if tf.sec != Some(secs) {
                let (y, mo, d) = civil(secs.div_euclid(86_400));
                let s = secs.rem_euclid(86_400);
                tf.prefix.clear();
                let _ = write!(
                    tf.prefix,
                    "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.",
                    s / 3600,
                    s / 60 % 60,
                    s % 60
                );
                tf.json_prefix.clear();
                tf.json_prefix.push_str("{\"timestamp\":\"");
                tf.json_prefix.push_str(&tf.prefix);
                tf.sec = Some(secs);
            }
            tf.mono = match ts.checked_sub(sub) {
                Some(start) => (start, start.checked_add(1_000_000_000).unwrap_or(0)),
                None => (0, 0),
            };
            line.push_str(&tf.prefix);
            push_micros(line, sub / 1000);
            line.push('Z');
        }
        None => {
            push_u64(line, ts / 1_000_000_000);
            line.push('.');
            push_padded(line, ts % 1_000_000_000, 9);
        }
    }
}

/// Appends `v` in decimal.
#[inline]
fn push_u64(out: &mut String, v: u64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// Appends `v` in decimal.
#[inline]
fn push_i64(out: &mut String, v: i64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// Appends `v` (below 10^6, the microseconds of a second) as six digits,
/// zero-padded: one digit at a time, cheaper here than a conversion and
/// two copies.
#[inline]
fn push_micros(out: &mut String, v: u64) {
    let v = v.min(999_999) as u32;
    // Two digits at a time: three divisions, not six.
    for pair in [v / 10_000, v / 100 % 100, v % 100] {
        out.push(char::from(b'0' + (pair / 10) as u8));
        out.push(char::from(b'0' + (pair % 10) as u8));
    }
}

/// Appends `v` (below `10^width`, `width` at most 19) in decimal,
/// zero-padded to `width` digits.
#[inline]
fn push_padded(out: &mut String, v: u64, width: usize) {
    const ZEROS: &str = "0000000000000000000";
    let mut b = itoa::Buffer::new();
    let digits = b.format(v);
    out.push_str(
        ZEROS
            .get(..width.saturating_sub(digits.len()))
            .unwrap_or(""),
    );
    out.push_str(digits);
}

impl Printer<'_> {
    fn time(&mut self, ts: u64) {
        fmt_time(&mut self.line, &mut self.tf, ts);
    }

    /// Ends the line. Lines are gathered in `line` and written to `out`
    /// [`OUT_BATCH`] bytes at a time: one call of `out` for hundreds of
    /// lines, not one a line.
    fn flush_line(&mut self) -> io::Result<()> {
        self.line.push('\n');
        if self.line.len() >= OUT_BATCH {
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes the lines gathered.
    fn write_out(&mut self) -> io::Result<()> {
        self.out.write_all(self.line.as_bytes())?;
        self.line.clear();
        Ok(())
    }

    /// Writes the lines gathered and flushes `out`.
    fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.out.flush()
    }

    fn lost_line(
        &mut self,
        ts: u64,
        buffer: &str,
        n: u64,
        callsites: u64,
        known: bool,
    ) -> io::Result<()> {
        if self.json {
            self.line.push_str("{\"timestamp\":\"");
            self.time(ts);
            self.line.push_str("\",\"time_ns\":");
            push_u64(&mut self.line, ts);
            self.line.push_str(",\"level\":\"LOST\",\"buffer\":");
            json_str(&mut self.line, buffer);
            self.line.push_str(",\"lost\":");
            push_u64(&mut self.line, n);
            if callsites > 0 {
                self.line.push_str(",\"lost_callsites\":");
                push_u64(&mut self.line, callsites);
            }
            let _ = write!(
                self.line,
                ",\"what\":\"{}\",\"where_known\":{known}}}",
                if known { "events" } else { "records" }
            );
        } else {
            self.time(ts);
            if known {
                let _ = write!(self.line, "  LOST {n} events lost on {buffer}");
                if callsites > 0 {
                    let _ = write!(self.line, " (and {callsites} callsite or anchor records)");
                }
            } else {
                let _ = write!(
                    self.line,
                    "  LOST {n} records lost on {buffer} (the recorder's counters; where is not known)"
                );
            }
        }
        self.flush_line()
    }

    /// Prints or takes in one record. Returns an in-band loss, to be
    /// counted against its buffer.
    fn record(
        &mut self,
        payload: &[u8],
        ts: u64,
        src: usize,
        srcs: &[Source],
    ) -> Result<Vec<wire::Loss>, WireError> {
        if payload.first() == Some(&wire::KIND_EVENT) {
            // Most records: parsed here, as `wire::parse` would, without
            // making and matching an `Item`.
            let mut c = wire::Cur::new(payload);
            c.byte()?;
            let callsite = c.varint()?;
            let thread = c.varint()?;
            self.stats.events += 1;
            self.event(ts, callsite, thread, Values(c), &srcs[src].json_tail)
                .map_err(|e| {
                    e.unwrap_or(WireError {
                        at: 0,
                        what: "output failed",
                    })
                })?;
            return Ok(Vec::new());
        }
        match wire::parse(payload)? {
            Item::Callsite(c) => {
                // A callsite record again (the same id) may say otherwise.
                self.json_end.0 = None;
                let mut cs = Callsite {
                    level: c.level,
                    name: c.name.to_string(),
                    target: c.target.to_string(),
                    fields: c.fields.iter().map(|s| s.to_string()).collect(),
                    text_fields: c
                        .fields
                        .iter()
                        .map(|f| (*f != "message").then(|| format!(" {f}=")))
                        .collect(),
                    json_level: format!(
                        ",\"level\":\"{}\",\"fields\":{{",
                        wire::LEVELS[usize::from(c.level).min(4)]
                    ),
                    json_target: {
                        let mut j = String::from("},\"target\":");
                        json_str(&mut j, c.target);
                        j
                    },
                    json_fields: c
                        .fields
                        .iter()
                        .map(|f| {
                            let mut j = String::new();
                            json_str(&mut j, f);
                            j.push(':');
                            j
                        })
                        .collect(),
                    json_first: Vec::new(),
                    json_next: Vec::new(),
                    text_head: {
                        let level = wire::LEVELS[usize::from(c.level).min(4)];
                        let pad = if level.len() == 4 { "  " } else { " " };
                        format!("{pad}{level} {}: ", c.target)
                    },
                };
                cs.json_first = cs
                    .json_fields
                    .iter()
                    .map(|f| format!("{}{f}", cs.json_level))
                    .collect();
                cs.json_next = cs.json_fields.iter().map(|f| format!(",{f}")).collect();
                self.callsites.insert(c.id, cs);
            }
            // Taken by the merge (`Held`), before the record is printed.
            Item::Anchor { .. } => {}
            Item::Clock {
                monotonic,
                realtime,
            } => {
                if self.tf.offset.is_none() {
                    self.tf.offset = Some(i128::from(realtime) - i128::from(monotonic));
                    self.tf.sec = None;
                    self.tf.mono = (0, 0);
                }
            }
            Item::Event {
                callsite,
                thread,
                values,
            } => {
                self.stats.events += 1;
                self.event(ts, callsite, thread, values, &srcs[src].json_tail)
                    .map_err(|e| {
                        e.unwrap_or(WireError {
                            at: 0,
                            what: "output failed",
                        })
                    })?;
            }
            Item::NewSpan {
                callsite,
                span,
                values,
                ..
            } => {
                render_fields(
                    self.callsites.get(&callsite),
                    self.json,
                    values,
                    &mut self.scratch,
                )?;
                let mut text = String::new();
                push_text(&mut text, &self.scratch);
                let json = self.scratch.json.clone();
                self.spans.insert(
                    span,
                    SpanState {
                        callsite,
                        text,
                        json,
                    },
                );
            }
            Item::Record { span, values, .. } => {
                if let Some(cs) = self.spans.get(&span).map(|s| s.callsite) {
                    render_fields(
                        self.callsites.get(&cs),
                        self.json,
                        values,
                        &mut self.scratch,
                    )?;
                    let mut text = String::new();
                    push_text(&mut text, &self.scratch);
                    let json = &self.scratch.json;
                    if let Some(s) = self.spans.get_mut(&span) {
                        if !text.is_empty() && !s.text.is_empty() {
                            s.text.push(' ');
                        }
                        s.text.push_str(&text);
                        if !json.is_empty() && !s.json.is_empty() {
                            s.json.push(',');
                        }
                        s.json.push_str(json);
                    }
                }
            }
            Item::Enter { thread, span } => self.stacks.entry(thread).or_default().push(span),
            Item::Exit { thread, span } => {
                if let Some(st) = self.stacks.get_mut(&thread) {
                    if let Some(p) = st.iter().rposition(|&s| s == span) {
                        st.remove(p);
                    }
                    if st.is_empty() {
                        self.stacks.remove(&thread);
                    }
                }
            }
            Item::Close { span, .. } => {
                self.spans.remove(&span);
            }
            Item::Lost { losses, then } => {
                for l in &losses {
                    // Saturating: a damaged file can say anything.
                    self.stats.lost_events = self.stats.lost_events.saturating_add(l.events);
                    self.stats.lost_callsites =
                        self.stats.lost_callsites.saturating_add(l.callsites);
                    let name = format!("cpu{}", l.buffer);
                    self.lost_line(ts, &name, l.events, l.callsites, true)
                        .map_err(|_| WireError {
                            at: 0,
                            what: "output failed",
                        })?;
                }
                if let Some(rest) = then {
                    // Parsing made sure it is no lost record itself.
                    self.record(rest, ts, src, srcs)?;
                }
                return Ok(losses);
            }
        }
        Ok(Vec::new())
    }

    #[inline(always)]
    fn event(
        &mut self,
        ts: u64,
        callsite: u64,
        thread: u64,
        values: Values<'_>,
        json_tail: &str,
    ) -> Result<(), Option<WireError>> {
        let start = self.line.len();
        let r = self.event_line(ts, callsite, thread, values, json_tail);
        if r.is_err() {
            // Not a line: what was written of it goes.
            self.line.truncate(start);
        }
        r.map_err(Some)?;
        self.flush_line().map_err(|_| None)
    }

    fn event_line(
        &mut self,
        ts: u64,
        callsite: u64,
        thread: u64,
        values: Values<'_>,
        json_tail: &str,
    ) -> Result<(), WireError> {
        let cs = self.callsites.get(&callsite);
        let level = cs.map_or("?????", |c| wire::LEVELS[usize::from(c.level).min(4)]);
        if self.json {
            let (start, end) = self.tf.mono;
            if ts >= start && ts < end {
                // The second of the line before (see `fmt_time`): the
                // line's start and the time's in one piece.
                self.line.push_str(&self.tf.json_prefix);
                push_micros(&mut self.line, (ts - start) / 1000);
                self.line.push_str("Z\",\"time_ns\":");
            } else {
                self.line.push_str("{\"timestamp\":\"");
                fmt_time(&mut self.line, &mut self.tf, ts);
                self.line.push_str("\",\"time_ns\":");
            }
            push_u64(&mut self.line, ts);
            match cs {
                // With the first field's name (`render_json`).
                Some(_) => {}
                None => {
                    self.line.push_str(",\"level\":\"");
                    self.line.push_str(level);
                    self.line.push_str("\",\"fields\":{");
                }
            }
            // Straight into the line: JSON members go in the order they come.
            render_json(cs, values, &mut self.line)?;
            if let Some(c) = cs.filter(|_| !self.stacks.contains_key(&thread)) {
                // No spans: the end of the line is the same for a run of
                // one callsite's events from one thread in one buffer.
                let key = (callsite, thread, json_tail.as_ptr() as usize);
                let end = &mut self.json_end;
                if end.0 != Some(key) {
                    end.0 = Some(key);
                    end.1.clear();
                    end.1.push_str(&c.json_target);
                    end.1.push_str(",\"threadId\":");
                    push_u64(&mut end.1, thread);
                    end.1.push_str(json_tail);
                }
                self.line.push_str(&end.1);
                return Ok(());
            }
            match cs {
                Some(c) => self.line.push_str(&c.json_target),
                None => {
                    let _ = write!(
                        self.line,
                        "}},\"target\":null,\"unknown_callsite\":{callsite}"
                    );
                }
            }
            if let Some(st) = self.stacks.get(&thread) {
                self.line.push_str(",\"spans\":[");
                for (k, id) in st.iter().enumerate() {
                    if k > 0 {
                        self.line.push(',');
                    }
                    self.line.push_str("{\"name\":");
                    match self
                        .spans
                        .get(id)
                        .and_then(|s| self.callsites.get(&s.callsite).map(|c| (s, c)))
                    {
                        Some((s, c)) => {
                            json_str(&mut self.line, &c.name);
                            if !s.json.is_empty() {
                                self.line.push(',');
                                self.line.push_str(&s.json);
                            }
                        }
                        None => {
                            let _ = write!(self.line, "null,\"id\":{id}");
                        }
                    }
                    self.line.push('}');
                }
                self.line.push(']');
            }
            if self.thread_json.0 != thread {
                let t = &mut self.thread_json;
                t.0 = thread;
                t.1.clear();
                t.1.push_str(",\"threadId\":");
                push_u64(&mut t.1, thread);
            }
            self.line.push_str(&self.thread_json.1);
            self.line.push_str(json_tail);
        } else {
            fmt_time(&mut self.line, &mut self.tf, ts);
            if let Some(c) = cs.filter(|_| !self.stacks.contains_key(&thread)) {
                // No spans: level and target in one piece.
                self.line.push_str(&c.text_head);
                return render_text(cs, values, &mut self.line);
            }
            self.line.push_str(match level.len() {
                4 => "  ",
                _ => " ",
            });
            self.line.push_str(level);
            self.line.push(' ');
            if let Some(st) = self.stacks.get(&thread) {
                for id in st {
                    match self.spans.get(id) {
                        Some(s) => {
                            let name = self
                                .callsites
                                .get(&s.callsite)
                                .map_or("?", |c| c.name.as_str());
                            self.line.push_str(name);
                            if !s.text.is_empty() {
                                self.line.push('{');
                                self.line.push_str(&s.text);
                                self.line.push('}');
                            }
                        }
                        None => {
                            let _ = write!(self.line, "<span {id}>");
                        }
                    }
                    self.line.push(':');
                }
                self.line.push(' ');
            }
            match cs {
                Some(c) => self.line.push_str(&c.target),
                None => {
                    let _ = write!(self.line, "<unknown callsite {callsite}>");
                }
            }
            self.line.push_str(": ");
            render_text(cs, values, &mut self.line)?;
        }
        Ok(())
    }
}

/// Renders values as text (the message bare into `sc.text`, the others as
/// `a=1 b="x"` into `sc.rest`) or as JSON members into `sc.json`.
fn render_fields(
    cs: Option<&Callsite>,
    json_mode: bool,
    values: Values<'_>,
    sc: &mut Scratch,
) -> Result<(), WireError> {
    sc.text.clear();
    sc.rest.clear();
    sc.json.clear();
    for v in values {
        let (idx, v) = v?;
        let known = cs.and_then(|c| c.fields.get(idx as usize));
        let unknown;
        let name: &str = match known {
            Some(n) => n,
            None => {
                unknown = format!("field{idx}");
                &unknown
            }
        };
        if json_mode {
            if !sc.json.is_empty() {
                sc.json.push(',');
            }
            match cs.and_then(|c| c.json_fields.get(idx as usize)) {
                Some(j) => sc.json.push_str(j),
                None => {
                    json_str(&mut sc.json, name);
                    sc.json.push(':');
                }
            }
            json_value(&mut sc.json, &v);
        } else {
            // `None`: the message; `Some("")`: a field the callsite does
            // not name.
            let prefix = match cs.and_then(|c| c.text_fields.get(idx as usize)) {
                Some(p) => p.as_deref(),
                None => Some(""),
            };
            match prefix {
                None => text_value(&mut sc.text, &v, true),
                Some(p) => {
                    if !sc.rest.is_empty() {
                        sc.rest.push(' ');
                    }
                    if p.is_empty() {
                        sc.rest.push_str(name);
                        sc.rest.push('=');
                    } else {
                        // Without its leading space, pushed above.
                        sc.rest.push_str(&p[1..]);
                    }
                    text_value(&mut sc.rest, &v, false);
                }
            }
        }
    }
    Ok(())
}

/// How many values besides the message [`render_text`] holds while it
/// writes the message; those beyond are parsed again.
const HELD: usize = 8;

/// Renders an event's values as text straight into `out`: the message
/// bare, then the others as `a=1 b="x"` (the message is usually the last
/// value recorded; the others are held, parsed and with their names
/// looked up, until it is written).
fn render_text(
    cs: Option<&Callsite>,
    values: Values<'_>,
    out: &mut String,
) -> Result<(), WireError> {
    // `None`: the message; `Some("")`: a field the callsite does not name.
    let prefix = |idx: u64| match cs.and_then(|c| c.text_fields.get(idx as usize)) {
        Some(p) => p.as_deref(),
        None => Some(""),
    };
    let mut held: [Option<(u64, &str, Value<'_>)>; HELD] = [None; HELD];
    let mut n = 0;
    let mut others = 0usize;
    let mut message = false;
    for v in values {
        let (idx, v) = v?;
        match prefix(idx) {
            None => {
                text_value(out, &v, true);
                message = true;
            }
            Some(p) => {
                if let Some(h) = held.get_mut(n) {
                    *h = Some((idx, p, v));
                    n += 1;
                }
                others += 1;
            }
        }
    }
    let mut first = !message;
    #[inline(always)]
    fn field(out: &mut String, first: &mut bool, idx: u64, p: &str, v: &Value<'_>) {
        if p.is_empty() {
            if !*first {
                out.push(' ');
            }
            out.push_str("field");
            push_u64(out, idx);
            out.push('=');
        } else if *first {
            // ` a=` without its space.
            out.push_str(&p[1..]);
        } else {
            out.push_str(p);
        }
        *first = false;
        text_value(out, v, false);
    }
    for (idx, p, v) in held.iter().take(n).flatten() {
        field(out, &mut first, *idx, p, v);
    }
    if others > n {
        // Parsed without error above.
        for (idx, p, v) in values
            .flatten()
            .filter_map(|(idx, v)| prefix(idx).map(|p| (idx, p, v)))
            .skip(n)
        {
            field(out, &mut first, idx, p, &v);
        }
    }
    Ok(())
}

/// Renders values as JSON members straight into `out`; for a known
/// callsite the line's level and the start of its fields first (made once
/// with the first field's name).
fn render_json(
    cs: Option<&Callsite>,
    values: Values<'_>,
    out: &mut String,
) -> Result<(), WireError> {
    let mut first = true;
    for v in values {
        let (idx, v) = v?;
        let names = cs.map(|c| if first { &c.json_first } else { &c.json_next });
        match names.and_then(|n| n.get(idx as usize)) {
            // The level too for the first; the comma for the others.
            Some(j) => out.push_str(j),
            None => {
                match (first, cs) {
                    (true, Some(c)) => out.push_str(&c.json_level),
                    (true, None) => {}
                    (false, _) => out.push(','),
                }
                json_str(out, &format!("field{idx}"));
                out.push(':');
            }
        }
        first = false;
        json_value(out, &v);
    }
    if first {
        // No values: the level alone.
        if let Some(c) = cs {
            out.push_str(&c.json_level);
        }
    }
    Ok(())
}

/// The message, a space, the other fields: what a span or an event shows.
fn push_text(out: &mut String, sc: &Scratch) {
    out.push_str(&sc.text);
    if !sc.text.is_empty() && !sc.rest.is_empty() {
        out.push(' ');
    }
    out.push_str(&sc.rest);
}

/// Appends a value as text: integers, the message and other plain
/// strings here, inlined; the rest in [`text_value_other`].
#[inline(always)]
fn text_value(out: &mut String, v: &Value<'_>, bare: bool) {
    match v {
        Value::I64(x) => push_i64(out, *x),
        Value::U64(x) => push_u64(out, *x),
        Value::Str(s) if bare => out.push_str(s),
        Value::Str(s) if !s.bytes().any(|b| CLASS[usize::from(b)] & TEXT_QUOTE != 0) => {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        Value::Debug(s) | Value::Error(s) => out.push_str(s),
        _ => text_value_other(out, v),
    }
}

/// The rest of [`text_value`]: wide integers, floats, booleans, strings
/// that need escapes.
#[inline(never)]
fn text_value_other(out: &mut String, v: &Value<'_>) {
    let _ = match v {
        Value::I64(x) => write!(out, "{x}"),
        Value::U64(x) => write!(out, "{x}"),
        Value::I128(x) => write!(out, "{x}"),
        Value::U128(x) => write!(out, "{x}"),
        Value::F64(x) => write!(out, "{x:?}"),
        Value::Bool(x) => write!(out, "{x}"),
        Value::Str(s) => write!(out, "{s:?}"),
        Value::Debug(s) | Value::Error(s) => {
            out.push_str(s);
            Ok(())
        }
    };
}

/// Appends a value as JSON: integers and strings here, inlined; the rest
/// in [`json_value_other`].
#[inline(always)]
fn json_value(out: &mut String, v: &Value<'_>) {
    match v {
        Value::I64(x) => push_i64(out, *x),
        Value::U64(x) => push_u64(out, *x),
        Value::Str(s) | Value::Debug(s) | Value::Error(s) => json_str(out, s),
        _ => json_value_other(out, v),
    }
}

/// The rest of [`json_value`]: wide integers, floats, booleans.
#[inline(never)]
fn json_value_other(out: &mut String, v: &Value<'_>) {
    let _ = match v {
        Value::I64(x) => write!(out, "{x}"),
        Value::U64(x) => write!(out, "{x}"),
        Value::I128(x) => write!(out, "{x}"),
        Value::U128(x) => write!(out, "{x}"),
        Value::F64(x) if x.is_finite() => write!(out, "{x:?}"),
        Value::F64(x) => {
            json_str(out, &format!("{x}"));
            Ok(())
        }
        Value::Bool(x) => write!(out, "{x}"),
        Value::Str(s) | Value::Debug(s) | Value::Error(s) => {
            json_str(out, s);
            Ok(())
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microseconds_are_six_digits() {
        for (v, want) in [
            (0, "000000"),
            (7, "000007"),
            (123_456, "123456"),
            (999_999, "999999"),
        ] {
            let mut s = String::new();
            push_micros(&mut s, v);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn padded_numbers() {
        let cases: [(u64, usize, &str); 7] = [
            (0, 6, "000000"),
            (123, 6, "000123"),
            (999_999, 6, "999999"),
            (5, 9, "000000005"),
            (1_234_567, 6, "1234567"),
            (9_999_999_999_999_999_999, 19, "9999999999999999999"),
            (42, 19, "0000000000000000042"),
        ];
        for (v, w, want) in cases {
            let mut s = String::from("x");
            push_padded(&mut s, v, w);
            assert_eq!(&s[1..], want, "{v} in {w} digits");
        }
    }

    #[test]
    fn output_file_names() {
        assert_eq!(parse_out_name("cpu0.out"), Some(("cpu0", None)));
        assert_eq!(parse_out_name("cpu12.out.3"), Some(("cpu12", Some(3))));
        assert_eq!(parse_out_name(".cpu0.out.state"), None);
        assert_eq!(parse_out_name("relayfs-record.json"), None);
        assert_eq!(parse_out_name("cpu0.out.x"), None);
        assert_eq!(parse_out_name(".out"), None);
    }

    /// The text of an event's values, written straight into the line, is
    /// what the span path (message, then the rest) makes of them, with more
    /// values than are held while the message is looked for, the message
    /// among them, and values the callsite does not name.
    #[test]
    fn event_text_is_message_then_fields() {
        let names: Vec<String> = (0..24)
            .map(|i| {
                if i == 9 {
                    "message".into()
                } else {
                    format!("f{i}")
                }
            })
            .collect();
        let cs = Callsite {
            level: 2,
            name: "n".into(),
            target: "t".into(),
            text_fields: names
                .iter()
                .map(|f| (f != "message").then(|| format!(" {f}=")))
                .collect(),
            json_level: String::new(),
            json_target: String::new(),
            json_fields: names.iter().map(|f| format!("\"{f}\":")).collect(),
            text_head: String::new(),
            json_first: Vec::new(),
            json_next: Vec::new(),
            fields: names,
        };
        for count in [0u64, 1, 5, 9, 10, 17, 24, 30] {
            let mut e = wire::Enc::default();
            for i in (0..count).rev() {
                e.varint(i);
                if i == 9 {
                    e.byte(wire::TAG_DEBUG);
                    e.str("the message");
                } else {
                    e.byte(wire::TAG_I64);
                    e.varint(wire::zigzag(i as i64 - 3));
                }
            }
            let values = Values(wire::Cur::new(&e.buf));
            for c in [Some(&cs), None] {
                let mut sc = Scratch::default();
                render_fields(c, false, values, &mut sc).unwrap();
                let mut want = String::new();
                push_text(&mut want, &sc);
                let mut got = String::new();
                render_text(c, values, &mut got).unwrap();
                assert_eq!(got, want, "{count} values");
                assert_eq!(
                    got.matches('=').count() as u64,
                    count - u64::from(count > 9 && c.is_some())
                );
            }
        }
    }

    #[test]
    fn times_of_one_second_reuse_its_prefix_and_match_a_fresh_conversion() {
        // Offsets that put the wall clock's seconds at various places of
        // the monotonic clock's, including before 1970.
        for off in [
            1_700_000_000_123_456_789i128,
            -5_000_000_001,
            999_999_999,
            0,
        ] {
            let mut kept = TimeFmt {
                offset: Some(off),
                ..TimeFmt::default()
            };
            let mut ts = 3_999_000_000u64;
            for step in [1, 999, 400_000_000, 600_000_000, 5, 2_000_000_000, 1_000] {
                // Backwards in time too: a buffer's records can be.
                for t in [ts, ts - 1, ts + 1] {
                    let mut fresh = TimeFmt {
                        offset: Some(off),
                        ..TimeFmt::default()
                    };
                    let (mut a, mut b) = (String::new(), String::new());
                    fmt_time(&mut a, &mut kept, t);
                    fmt_time(&mut b, &mut fresh, t);
                    assert_eq!(a, b, "offset {off}, time {t}");
                }
                ts += step;
            }
        }
    }

    /// A framed, timed record.
    fn framed(out: &mut Vec<u8>, ts: u64, payload: &[u8]) {
        let h = relayfs::frame::encode_header(payload.len() as u32, relayfs::frame::FLAG_TIMESTAMP);
        out.extend_from_slice(&h);
        out.extend_from_slice(&ts.to_le_bytes());
        out.extend_from_slice(payload);
    }

    #[test]
    fn json_lines_agree_with_text_lines_in_and_across_seconds() {
        let mut rec = Vec::new();
        let mut e = wire::Enc::default();
        e.byte(wire::KIND_CLOCK);
        e.varint(1_000);
        e.varint(1_700_000_000_999_999_000);
        framed(&mut rec, 1_000, &e.buf);
        for (id, target) in [(1, "app"), (2, "other::target")] {
            let mut e = wire::Enc::default();
            e.byte(wire::KIND_CALLSITE);
            e.varint(id);
            e.byte(wire::CALLSITE_EVENT);
            e.byte(2);
            e.varint(0);
            for s in ["ev", target, "", ""] {
                e.str(s);
            }
            e.varint(2);
            e.str("message");
            e.str("a");
            framed(&mut rec, 1_000, &e.buf);
        }
        let mut ts = 2_000u64;
        let mut n = 0;
        for step in [
            1u64,
            999,
            1_000,
            400_000_000,
            600_000_000,
            7,
            3_000_000_000,
            1,
        ] {
            ts += step;
            for (cs, thread) in [(1u64, 7u64), (1, 7), (2, 7), (2, 300_000), (1, 300_000)] {
                let mut e = wire::Enc::default();
                e.byte(wire::KIND_EVENT);
                e.varint(cs);
                e.varint(thread);
                e.varint(1);
                e.byte(wire::TAG_I64);
                e.varint(wire::zigzag(n));
                e.varint(0);
                e.byte(wire::TAG_DEBUG);
                e.str("hello");
                framed(&mut rec, ts, &e.buf);
                n += 1;
            }
        }
        let decode = |json: bool| {
            let mut out = Vec::new();
            let src: Box<dyn Read> = Box::new(std::io::Cursor::new(rec.clone()));
            let st = decode_streams(vec![("cpu0".into(), src)], json, &mut out, &mut |p| {
                panic!("{p}")
            })
            .unwrap();
            assert_eq!(st.events, n as u64);
            String::from_utf8(out).unwrap()
        };
        let (text, json) = (decode(false), decode(true));
        let (text, json): (Vec<&str>, Vec<&str>) = (text.lines().collect(), json.lines().collect());
        assert_eq!(text.len(), n as usize);
        assert_eq!(json.len(), text.len());
        for (k, (t, j)) in text.iter().zip(&json).enumerate() {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            let (time, rest) = t.split_once(' ').unwrap();
            assert_eq!(v["timestamp"], time, "{t} / {j}");
            let target = v["target"].as_str().unwrap();
            let want = format!(" INFO {target}: hello a={}", v["fields"]["a"]);
            assert_eq!(rest, want);
            assert_eq!(v["buffer"], "cpu0");
            let thread = if k % 5 < 3 { 7 } else { 300_000 };
            assert_eq!(v["threadId"], thread, "{j}");
            assert_eq!(
                target,
                if matches!(k % 5, 2 | 3) {
                    "other::target"
                } else {
                    "app"
                }
            );
        }
        // Wall-clock times from the clock record: the first event is
        // 1 001 ns after it, 1 ns into the next second.
        assert!(
            text[0].starts_with("2023-11-14T22:13:21.000000Z "),
            "{}",
            text[0]
        );
    }

    #[test]
    fn events_with_no_values_or_unnamed_fields_decode_alike_in_text_and_json() {
        let mut rec = Vec::new();
        let mut e = wire::Enc::default();
        e.byte(wire::KIND_CALLSITE);
        e.varint(1);
        e.byte(wire::CALLSITE_EVENT);
        e.byte(3);
        e.varint(0);
        for s in ["ev", "app", "", ""] {
            e.str(s);
        }
        e.varint(2);
        e.str("message");
        e.str("a");
        framed(&mut rec, 10, &e.buf);
        // No values; only a field the callsite does not name; the message
        // and one; a named field, then one it does not name.
        let values: [&[(u64, Option<&str>)]; 4] = [
            &[],
            &[(5, None)],
            &[(0, Some("hi")), (5, None)],
            &[(1, None), (7, None)],
        ];
        for (k, vals) in values.iter().enumerate() {
            let mut e = wire::Enc::default();
            e.byte(wire::KIND_EVENT);
            e.varint(1);
            e.varint(9);
            for (idx, msg) in vals.iter() {
                e.varint(*idx);
                match msg {
                    Some(m) => {
                        e.byte(wire::TAG_DEBUG);
                        e.str(m);
                    }
                    None => {
                        e.byte(wire::TAG_U64);
                        e.varint(*idx + 1);
                    }
                }
            }
            framed(&mut rec, 20 + k as u64, &e.buf);
        }
        let decode = |json: bool| {
            let mut out = Vec::new();
            let src: Box<dyn Read> = Box::new(std::io::Cursor::new(rec.clone()));
            decode_streams(vec![("cpu0".into(), src)], json, &mut out, &mut |p| {
                panic!("{p}")
            })
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        let text = decode(false);
        let rests: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(
            rests,
            [
                " WARN app: ",
                " WARN app: field5=6",
                " WARN app: hi field5=6",
                " WARN app: a=2 field7=8"
            ]
        );
        let json = decode(true);
        let fields: Vec<serde_json::Value> = json
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["level"], "WARN", "{l}");
                assert_eq!(v["target"], "app", "{l}");
                v["fields"].clone()
            })
            .collect();
        assert_eq!(
            fields,
            [
                serde_json::json!({}),
                serde_json::json!({"field5": 6}),
                serde_json::json!({"message": "hi", "field5": 6}),
                serde_json::json!({"a": 2, "field7": 8}),
            ]
        );
    }

    #[test]
    fn anchor_lines_interpolate_and_extrapolate() {
        // The clock runs 1 % fast against CLOCK_MONOTONIC from (1000, 500).
        let a = (1_000_000_000u64, 500_000_000u64);
        let b = (a.0 + 1_010_000_000, a.1 + 1_000_000_000);
        let l = Line::through(Some(a), b);
        assert_eq!(l.map(b.0), b.1);
        assert!(l.map(a.0).abs_diff(a.1) <= 1);
        // Halfway, and as far again past the later anchor.
        assert!(l.map(a.0 + 505_000_000).abs_diff(a.1 + 500_000_000) <= 1);
        assert!(l.map(b.0 + 1_010_000_000).abs_diff(b.1 + 1_000_000_000) <= 1);
        // One anchor, or anchors that do not increase: rate 1 through the
        // later one.
        for l in [Line::through(None, b), Line::through(Some(b), a)] {
            assert_eq!(l.map(l.clock + 7), l.mono + 7);
            assert_eq!(l.map(l.clock - 7), l.mono - 7);
        }
        // Never below zero.
        assert_eq!(Line::through(None, (10, 5)).map(0), 0);
        // Anchors of a damaged file: extreme slopes and times, no overflow.
        let steep = Line::through(Some((0, 0)), (1, u64::MAX));
        assert_eq!(steep.map(u64::MAX), u64::MAX);
        assert_eq!(steep.map(0), 0);
        let flat = Line::through(Some((0, 0)), (u64::MAX, 0));
        assert_eq!(flat.map(u64::MAX), 0);
        let late = Line::through(Some((u64::MAX - 1, 0)), (u64::MAX, u64::MAX));
        assert_eq!(late.map(0), 0);
    }

    /// Anchors with any values (a damaged or hostile file) between events
    /// with any timestamps: every event printed once, in the merge's order,
    /// never a panic; text and JSON alike.
    #[test]
    fn anchors_with_extreme_values_decode_without_a_panic() {
        let anchor = |rec: &mut Vec<u8>, ts: u64, clock: u64, mono: u64| {
            let mut e = wire::Enc::default();
            e.byte(wire::KIND_ANCHOR);
            e.varint(clock);
            e.varint(mono);
            framed(rec, ts, &e.buf);
        };
        let event = |rec: &mut Vec<u8>, ts: u64| {
            let mut e = wire::Enc::default();
            e.byte(wire::KIND_EVENT);
            e.varint(1);
            e.varint(7);
            framed(rec, ts, &e.buf);
        };
        let mut rec = Vec::new();
        let mut e = wire::Enc::default();
        e.byte(wire::KIND_CLOCK);
        e.varint(0);
        e.varint(u64::MAX);
        framed(&mut rec, 0, &e.buf);
        let mut n = 0;
        for (clock, mono) in [
            (0, 0),
            (1, u64::MAX),
            (2, 0),
            (3, u64::MAX),
            (u64::MAX, u64::MAX),
            (5, 5),
        ] {
            for ts in [0, 1, u64::MAX / 2, u64::MAX] {
                event(&mut rec, ts);
                n += 1;
            }
            anchor(&mut rec, clock, clock, mono);
        }
        event(&mut rec, u64::MAX);
        n += 1;
        // A truncated anchor at the end.
        let mut cut = Vec::new();
        anchor(&mut cut, 3, u64::MAX, u64::MAX);
        rec.extend_from_slice(&cut[..cut.len() - 2]);
        for json in [false, true] {
            let mut out = Vec::new();
            let mut problems = 0;
            let src: Box<dyn Read> = Box::new(std::io::Cursor::new(rec.clone()));
            let st = decode_streams(vec![("cpu0".into(), src)], json, &mut out, &mut |_| {
                problems += 1
            })
            .unwrap();
            assert_eq!(st.events, n);
            assert_eq!(String::from_utf8(out).unwrap().lines().count() as u64, n);
            assert_eq!(problems, 1);
        }
    }

    /// A buffer's losses reported in band after its stream ended, in a lost
    /// record another buffer carries (the layer's `flush_lost` at close,
    /// from a thread on another CPU, while cpu0 was full to the end): the
    /// recorder's count of that buffer's losses is not shown again as
    /// records lost "where is not known"; the decoder's counts add up to
    /// the recorder's, with and without anchors.
    #[test]
    fn losses_reported_after_a_buffer_ended_are_not_counted_twice() {
        for anchored in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let anchor = |rec: &mut Vec<u8>, ts: u64| {
                let mut e = wire::Enc::default();
                e.byte(wire::KIND_ANCHOR);
                e.varint(ts);
                e.varint(ts);
                framed(rec, ts, &e.buf);
            };
            let event = |rec: &mut Vec<u8>, ts: u64| {
                let mut e = wire::Enc::default();
                e.byte(wire::KIND_EVENT);
                e.varint(1);
                e.varint(7);
                framed(rec, ts, &e.buf);
            };
            let (mut cpu0, mut cpu1) = (Vec::new(), Vec::new());
            if anchored {
                anchor(&mut cpu1, 5);
            }
            event(&mut cpu0, 10);
            event(&mut cpu1, 20);
            // cpu0 was full from here on: 5 events refused there, reported
            // by a thread on cpu1.
            let mut e = wire::Enc::default();
            e.byte(wire::KIND_LOST);
            wire::encode_losses(
                &mut e,
                &[wire::Loss {
                    buffer: 0,
                    events: 5,
                    callsites: 0,
                }],
            );
            framed(&mut cpu1, 30, &e.buf);
            if anchored {
                anchor(&mut cpu1, 40);
            }
            std::fs::write(dir.path().join("cpu0.out"), &cpu0).unwrap();
            std::fs::write(dir.path().join("cpu1.out"), &cpu1).unwrap();
            std::fs::write(
                dir.path().join(SUMMARY_FILE),
                r#"{"buffers": [{"name": "cpu0", "dropped_full": 5}, {"name": "cpu1"}]}"#,
            )
            .unwrap();
            let mut out = Vec::new();
            let st = decode_dir(dir.path(), &Options::default(), &mut out, &mut |p| {
                panic!("{p}")
            })
            .unwrap();
            let text = String::from_utf8(out).unwrap();
            assert_eq!(st.events, 2, "{text}");
            assert_eq!(st.lost_events, 5, "{text}");
            assert_eq!(st.lost_records, 0, "anchored {anchored}: {text}");
            assert!(!text.contains("records lost"), "{text}");
        }
    }

    /// One damaged anchor among good ones (the layer's clock and
    /// CLOCK_MONOTONIC agree here, so every event's time is its raw
    /// timestamp): one whose clock is later than its own record's timestamp
    /// (which the layer reads after the pair, so a flipped bit) is a problem
    /// naming its offset and is not used; one whose CLOCK_MONOTONIC is hours
    /// off can throw off only the events up to it, not, by making every
    /// later anchor look like it goes back, the rest of the recording.
    #[test]
    fn one_damaged_anchor_does_not_throw_off_the_rest_of_the_recording() {
        const MS: u64 = 1_000_000;
        const HOURS: u64 = 3 * 3600 * 1_000_000_000;
        for damage in ["clock", "monotonic"] {
            let mut rec = Vec::new();
            let mut damaged_at = 0;
            let mut damaged_ts = 0;
            let mut events = Vec::new();
            for k in 0..20u64 {
                let ts = 1_000 * MS + k * 100 * MS;
                let (mut clock, mut mono) = (ts, ts);
                if k == 5 {
                    damaged_at = rec.len() as u64;
                    damaged_ts = ts;
                    if damage == "clock" {
                        clock += 1 << 40;
                    } else {
                        mono += HOURS;
                    }
                }
                let mut e = wire::Enc::default();
                e.byte(wire::KIND_ANCHOR);
                e.varint(clock);
                e.varint(mono);
                framed(&mut rec, ts + 100, &e.buf);
                for j in 1..10 {
                    let t = ts + j * 10 * MS;
                    let mut e = wire::Enc::default();
                    e.byte(wire::KIND_EVENT);
                    e.varint(1);
                    e.varint(7);
                    framed(&mut rec, t, &e.buf);
                    events.push(t);
                }
            }
            let mut out = Vec::new();
            let mut problems = Vec::new();
            let src: Box<dyn Read> = Box::new(std::io::Cursor::new(rec));
            let st = decode_streams(vec![("cpu0".into(), src)], true, &mut out, &mut |p| {
                problems.push(p.clone())
            })
            .unwrap();
            assert_eq!(st.events, events.len() as u64);
            let text = String::from_utf8(out).unwrap();
            let times: Vec<u64> = text
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["time_ns"]
                        .as_u64()
                        .unwrap()
                })
                .collect();
            for (&t, &raw) in times.iter().zip(&events) {
                if damage == "monotonic" && raw < damaged_ts {
                    continue;
                }
                assert!(
                    t.abs_diff(raw) < 1_000,
                    "{damage}: event at {raw} decoded at {t}"
                );
            }
            if damage == "clock" {
                assert_eq!(problems.len(), 1, "{problems:?}");
                assert_eq!(problems[0].offset, Some(damaged_at), "{}", problems[0]);
            }
        }
    }

    /// A summary planted in a recording's directory by whoever could write
    /// there: a FIFO (which would block the decoder forever) or a symbolic
    /// link (to `/dev/zero`, read until memory runs out; here to a regular
    /// file elsewhere) is a problem, not followed nor waited on; the events
    /// are decoded all the same.
    #[test]
    fn a_planted_summary_is_a_problem_not_a_hang() {
        let mut rec = Vec::new();
        let mut e = wire::Enc::default();
        e.byte(wire::KIND_EVENT);
        e.varint(1);
        e.varint(7);
        framed(&mut rec, 10, &e.buf);
        for planted in ["fifo", "symlink"] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("cpu0.out"), &rec).unwrap();
            let summary = dir.path().join(SUMMARY_FILE);
            if planted == "fifo" {
                let made = std::process::Command::new("mkfifo")
                    .arg(&summary)
                    .status()
                    .unwrap();
                assert!(made.success());
            } else {
                let elsewhere = dir.path().join("elsewhere.json");
                std::fs::write(
                    &elsewhere,
                    r#"{"buffers": [{"name": "cpu0", "dropped_full": 9}]}"#,
                )
                .unwrap();
                std::os::unix::fs::symlink(&elsewhere, &summary).unwrap();
            }
            let (tx, rx) = std::sync::mpsc::channel();
            let path = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut problems = Vec::new();
                let st = decode_dir(&path, &Options::default(), &mut out, &mut |p| {
                    problems.push(p.clone())
                });
                let _ = tx.send((st.map_err(|e| e.to_string()), problems));
            });
            let (st, problems) = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("{planted}: the decoder hangs"));
            let st = st.unwrap();
            assert_eq!(st.events, 1, "{planted}");
            assert_eq!(st.lost_records, 0, "{planted}: followed the link");
            assert_eq!(problems.len(), 1, "{planted}: {problems:?}");
            assert_eq!(problems[0].file, SUMMARY_FILE);
        }
    }

    /// A recording whose summary says it ended on an error (a full disk,
    /// say) decodes what it holds, with its counts, but is a problem: what
    /// was written after the error is missing. Ending any other way is not.
    #[test]
    fn a_recording_that_ended_on_an_error_is_a_problem() {
        let mut rec = Vec::new();
        let mut e = wire::Enc::default();
        e.byte(wire::KIND_EVENT);
        e.varint(1);
        e.varint(7);
        framed(&mut rec, 10, &e.buf);
        for (end, error, problem) in [
            ("error", "write cpu0.out: No space left on device", true),
            ("closed", "", false),
            ("interrupted", "", false),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("cpu0.out"), &rec).unwrap();
            let error = if error.is_empty() {
                "null".to_string()
            } else {
                format!("{error:?}")
            };
            std::fs::write(
                dir.path().join(SUMMARY_FILE),
                format!(
                    r#"{{"end": "{end}", "error": {error}, "buffers": [{{"name": "cpu0", "dropped_full": 3}}]}}"#
                ),
            )
            .unwrap();
            for follow in [false, true] {
                let opts = Options {
                    follow,
                    poll: Duration::from_millis(1),
                    settle: Duration::ZERO,
                    ..Options::default()
                };
                let mut out = Vec::new();
                let mut problems = Vec::new();
                let st = decode_dir(dir.path(), &opts, &mut out, &mut |p| {
                    problems.push(p.clone())
                })
                .unwrap();
                assert_eq!(st.events, 1, "{end}");
                assert_eq!(st.lost_records, 3, "{end}: the counts are still read");
                if problem {
                    assert_eq!(problems.len(), 1, "{end}, follow {follow}: {problems:?}");
                    assert_eq!(problems[0].file, SUMMARY_FILE);
                    assert!(
                        problems[0].message.contains("ended on an error")
                            && problems[0].message.contains("No space left"),
                        "{}",
                        problems[0]
                    );
                } else {
                    assert!(problems.is_empty(), "{end}, follow {follow}: {problems:?}");
                }
            }
        }
    }

    /// Lost records with absurd counts (a damaged or hostile file): summed
    /// without overflow (a panic where overflow is checked, as in tests and
    /// debug builds), in the stats and in a buffer's in-band count.
    #[test]
    fn lost_records_with_absurd_counts_do_not_overflow() {
        let mut rec = Vec::new();
        for (events, callsites) in [(u64::MAX, 1), (u64::MAX, u64::MAX), (7, 0)] {
            let mut e = wire::Enc::default();
            e.byte(wire::KIND_LOST);
            wire::encode_losses(
                &mut e,
                &[wire::Loss {
                    buffer: 0,
                    events,
                    callsites,
                }],
            );
            framed(&mut rec, 10, &e.buf);
        }
        for json in [false, true] {
            let mut out = Vec::new();
            let src: Box<dyn Read> = Box::new(std::io::Cursor::new(rec.clone()));
            let st = decode_streams(vec![("cpu0".into(), src)], json, &mut out, &mut |p| {
                panic!("{p}")
            })
            .unwrap();
            assert_eq!(st.lost_events, u64::MAX);
            assert_eq!(st.lost_callsites, u64::MAX);
            assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
        }
    }

    #[test]
    fn dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(-1), (1969, 12, 31));
        assert_eq!(civil(11_016), (2000, 2, 29));
    }
}
