//! `relayfs verify DIR`: checks a recording of demo records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

use crate::demofmt;

/// What to hold the recording to.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Writers and records offered by each (the demo's `--threads`, `--count`).
    pub writers_count: Option<(u32, u64)>,
    /// Records the producer counted as lost; missing records beyond these are
    /// defects. None: taken from the recorder's summary, else 0.
    pub lost: Option<u64>,
}

/// Per-writer findings.
#[derive(Debug, Default, Clone)]
pub struct WriterReport {
    /// Records found.
    pub records: u64,
    /// Highest sequence number seen.
    pub max_seq: u64,
    /// Records missing (gaps, and the tail if the count is known).
    pub missing: u64,
}

/// The result of a verification.
#[derive(Debug, Default)]
pub struct Report {
    /// Files read.
    pub files: Vec<PathBuf>,
    /// Valid records.
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Per writer.
    pub writers: BTreeMap<u32, WriterReport>,
    /// Records missing in all.
    pub missing: u64,
    /// Records the producer counted as lost.
    pub lost: u64,
    /// Everything wrong, in words.
    pub defects: Vec<String>,
}

impl Report {
    /// No defect.
    pub fn ok(&self) -> bool {
        self.defects.is_empty()
    }

    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "verified": self.ok(),
            "files": self.files.len(),
            "records": self.records,
            "bytes": self.bytes,
            "writers": self.writers.len(),
            "missing": self.missing,
            "lost": self.lost,
            "defects": self.defects,
        })
    }
}

/// The recording's files: `*.out` and rotated `*.out.N`, by buffer then index.
pub fn recording_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for ent in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().into_owned();
        let key = if let Some(stem) = name.strip_suffix(".out") {
            (stem.to_string(), 0u64)
        } else if let Some((stem, idx)) = name.rsplit_once(".out.") {
            match idx.parse::<u64>() {
                Ok(i) => (stem.to_string(), i),
                Err(_) => continue,
            }
        } else {
            continue;
        };
        if ent.file_type()?.is_file() {
            files.push((key, ent.path()));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// The recorder's summary in `dir`: None if there is none, an error if it
/// can't be read or parsed.
fn summary(dir: &Path) -> Result<Option<serde_json::Value>, String> {
    let path = dir.join(super::record::SUMMARY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: not a recorder summary: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The buffer a recording file belongs to: `cpu0` for `cpu0.out` and
/// `cpu0.out.3`.
fn buffer_of(file: &Path) -> String {
    let name = file
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    match name.rsplit_once(".out") {
        Some((stem, _)) => stem.to_string(),
        None => name,
    }
}

/// Holds the recording to the recorder's summary: every buffer of the
/// channel (`n_buffers`, from the buffers' headers) was recorded without
/// error and has its files.
fn check_summary(rep: &mut Report, dir: &Path, s: &serde_json::Value) {
    let buffers = s["buffers"].as_array().cloned().unwrap_or_default();
    if let Some(n) = s["n_buffers"].as_u64() {
        if (buffers.len() as u64) < n {
            rep.defect(format!(
                "the channel has {n} buffers, the recorder's summary lists {}",
                buffers.len()
            ));
        }
        let have: std::collections::BTreeSet<String> =
            rep.files.iter().map(|f| buffer_of(f)).collect();
        for b in &buffers {
            let name = b["name"].as_str().unwrap_or("?");
            if !have.contains(name) {
                rep.defect(format!(
                    "buffer {name}: no {name}.out file in {} (the recording is incomplete)",
                    dir.display()
                ));
            }
        }
    }
    // The files hold what the buffers say was delivered, unless --max-files
    // removed some on purpose.
    if s["n_buffers"].is_u64() && s["max_files"].is_null() {
        if let Some(delivered) = s["records_delivered"].as_u64() {
            let held: u64 = rep.writers.values().map(|w| w.records).sum();
            if held != delivered {
                rep.defect(format!(
                    "the files hold {held} records, the recorder's summary says {delivered} were delivered{}",
                    if held < delivered {
                        " (files missing or cut short)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    for b in &buffers {
        if let Some(e) = b["error"].as_str() {
            rep.defect(format!(
                "buffer {}: the recorder failed: {e}",
                b["name"].as_str().unwrap_or("?")
            ));
        }
    }
}

/// Defect messages kept in a report; more are counted, not kept.
const MAX_DEFECTS: usize = 50;

/// Read window of the streaming check; grows for a record larger than it.
const WINDOW: usize = 4 << 20;

impl Report {
    fn defect(&mut self, msg: String) {
        if self.defects.len() < MAX_DEFECTS {
            self.defects.push(msg);
        } else if self.defects.len() == MAX_DEFECTS {
            self.defects.push("... (further defects not listed)".into());
        }
    }
}

/// Verifies every record file in `dir`, reading each as a stream: memory
/// stays bounded by the read window and by the runs of consecutive
/// sequence numbers per writer, not by the size of the recording.
pub fn verify_dir(dir: &Path, expect: &Expect) -> Result<Report> {
    let mut rep = Report {
        files: recording_files(dir)?,
        ..Report::default()
    };
    if rep.files.is_empty() {
        rep.defects
            .push(format!("no *.out files in {}", dir.display()));
    }
    // Per writer, the runs of consecutive sequence numbers found, per file
    // (within a file a writer's records must be in increasing order).
    let mut runs: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for path in rep.files.clone() {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut f = std::fs::File::open(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut buf = vec![0u8; WINDOW];
        let (mut start, mut end, mut eof) = (0usize, 0usize, false);
        let mut file_at = 0u64; // file offset of buf[start]
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        let mut file_runs: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        loop {
            // Make sure a whole record (as far as its header says) is in
            // the window, unless the file ends.
            let avail = end - start;
            let need = if avail >= demofmt::HEADER {
                let len = u32::from_le_bytes(buf[start + 4..start + 8].try_into().unwrap());
                (len as usize).max(demofmt::HEADER)
            } else {
                demofmt::HEADER
            };
            if avail < need && !eof {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                if buf.len() < need {
                    buf.resize(need.next_power_of_two(), 0);
                }
                let n = std::io::Read::read(&mut f, &mut buf[end..])
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if n == 0 {
                    eof = true;
                }
                end += n;
                rep.bytes += n as u64;
                continue;
            }
            if avail == 0 {
                break;
            }
            match demofmt::check(&buf[start..end]) {
                Ok(h) => {
                    if let Some(&prev) = last.get(&h.writer) {
                        if h.seq <= prev {
                            rep.defect(format!(
                                "{name} @{file_at}: writer {} seq {} after seq {prev} (out of order, or a duplicate)",
                                h.writer, h.seq
                            ));
                        }
                    }
                    last.insert(h.writer, h.seq);
                    let r = file_runs.entry(h.writer).or_default();
                    match r.last_mut() {
                        Some(run) if run.1 + 1 == h.seq => run.1 = h.seq,
                        _ => r.push((h.seq, h.seq)),
                    }
                    let w = rep.writers.entry(h.writer).or_default();
                    w.records += 1;
                    w.max_seq = w.max_seq.max(h.seq);
                    rep.records += 1;
                    start += h.len as usize;
                    file_at += u64::from(h.len);
                }
                Err((h, defect)) => {
                    let who = h.map_or(String::new(), |h| {
                        format!(" (writer {} seq {})", h.writer, h.seq)
                    });
                    rep.defect(format!("{name} @{file_at}: {defect}{who}"));
                    // Can't find the next record boundary reliably: stop here.
                    break;
                }
            }
        }
        for (w, r) in file_runs {
            runs.entry(w).or_default().extend(r);
        }
    }
    // The same record in two files: overlapping runs of one writer.
    for (&w, r) in runs.iter_mut() {
        r.sort_unstable();
        let mut reach: Option<u64> = None;
        let mut dups = 0u64;
        for &(a, b) in r.iter() {
            if let Some(e) = reach {
                if a <= e {
                    dups += e.min(b) - a + 1;
                }
            }
            reach = Some(reach.map_or(b, |e| e.max(b)));
        }
        if dups > 0 {
            rep.defect(format!(
                "writer {w}: {dups} records delivered more than once"
            ));
            if let Some(wr) = rep.writers.get_mut(&w) {
                wr.records -= dups.min(wr.records);
            }
        }
    }
    // Missing records, per writer.
    if let Some((writers, count)) = expect.writers_count {
        for w in 0..writers {
            rep.writers.entry(w).or_default();
        }
        for (&w, wr) in rep.writers.iter_mut() {
            if w >= writers {
                rep.defects
                    .push(format!("records from unexpected writer {w}"));
            } else if wr.max_seq >= count && wr.records > 0 {
                rep.defects.push(format!(
                    "writer {w}: seq {} beyond the {count} written",
                    wr.max_seq
                ));
            }
            wr.missing = count.saturating_sub(wr.records);
        }
    } else {
        for wr in rep.writers.values_mut() {
            wr.missing = (wr.max_seq + 1).saturating_sub(wr.records);
        }
    }
    rep.missing = rep.writers.values().map(|w| w.missing).sum();
    let summary = match summary(dir) {
        Ok(s) => s,
        Err(e) => {
            rep.defect(e);
            None
        }
    };
    if let Some(s) = &summary {
        check_summary(&mut rep, dir, s);
    }
    rep.lost = expect
        .lost
        .or_else(|| summary.as_ref().and_then(|s| s["lost"].as_u64()))
        .unwrap_or(0);
    if rep.missing > rep.lost {
        rep.defects.push(format!(
            "{} records missing, but only {} counted as lost",
            rep.missing, rep.lost
        ));
    } else if expect.writers_count.is_some() && rep.missing < rep.lost {
        rep.defects.push(format!(
            "{} records counted as lost, but only {} missing: the counters don't add up",
            rep.lost, rep.missing
        ));
    }
    Ok(rep)
}

/// Arguments of `relayfs verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory holding cpuN.out files (from `relayfs record` or `demo --out`)
    pub dir: PathBuf,
    /// Records the producer counted as lost (default: from the recorder's
    /// summary file in DIR, else 0)
    #[arg(long)]
    pub lost: Option<u64>,
    /// Number of writer threads that wrote the recording (with --count)
    #[arg(long, requires = "count", value_parser = crate::args::threads)]
    pub writers: Option<u32>,
    /// Records each writer offered (with --writers)
    #[arg(long, requires = "writers", value_parser = crate::args::count)]
    pub count: Option<u64>,
    /// The producer's counters: a JSON object with `threads`, `count` and
    /// `dropped`, as `relayfs demo --json` prints (instead of --writers,
    /// --count and --lost)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["writers", "count", "lost"])]
    pub counters: Option<PathBuf>,
    /// Print the result as one JSON object
    #[arg(long)]
    pub json: bool,
}

/// What the producer's counters in `path` (the demo's `--json` summary)
/// hold the recording to.
fn counters(path: &Path) -> Result<Expect> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a JSON object", path.display()))?;
    let field = |k: &str| {
        v[k].as_u64().with_context(|| {
            format!(
                "{}: no counter {k:?} (expected the output of relayfs demo --json)",
                path.display()
            )
        })
    };
    let writers = u32::try_from(field("threads")?)
        .with_context(|| format!("{}: too many threads", path.display()))?;
    Ok(Expect {
        writers_count: Some((writers, field("count")?)),
        lost: Some(field("dropped")?),
    })
}

/// Runs `relayfs verify`; the exit code is 0 only with no defect.
pub fn run(a: &Args) -> Result<i32> {
    let expect = match &a.counters {
        Some(path) => counters(path)?,
        None => Expect {
            writers_count: a.writers.zip(a.count),
            lost: a.lost,
        },
    };
    let rep = verify_dir(&a.dir, &expect)?;
    if a.json {
        crate::util::outln!("{}", rep.json())?;
    } else {
        crate::util::outln!(
            "{} files, {} records, {} bytes, {} writers; {} missing, {} counted as lost",
            rep.files.len(),
            rep.records,
            rep.bytes,
            rep.writers.len(),
            rep.missing,
            rep.lost
        )?;
        for d in rep.defects.iter().take(20) {
            crate::util::outln!("DEFECT: {d}")?;
        }
        if rep.defects.len() > 20 {
            crate::util::outln!("... and {} more defects", rep.defects.len() - 20)?;
        }
        crate::util::outln!("{}", if rep.ok() { "OK" } else { "FAILED" })?;
    }
    Ok(if rep.ok() { 0 } else { 1 })
}
