//! The checker of a recording of demo records (`demofmt`): every record
//! whole, once, in each writer's order, and what is missing accounted for by
//! the counters. `relayfs verify` runs it on a directory; `demo` and `bench`
//! run it on what they recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

use crate::demofmt;
use crate::recorder::report::{RecordSummary, SUMMARY_FILE};

/// What the writers offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// Records offered by each writer (index: the writer).
    PerWriter(Vec<u64>),
    /// Only how many writers there were and what they offered together (an
    /// interrupted run whose writers each stopped at a different record).
    Total {
        /// Writer threads.
        writers: u32,
        /// Records offered by all of them.
        records: u64,
    },
}

impl Offered {
    /// `writers` writers that offered `count` records each.
    pub fn each(writers: u32, count: u64) -> Offered {
        Offered::PerWriter(vec![count; writers as usize])
    }
}

/// Records lost, as the two sides count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerLost {
    /// What the producer lost: dropped (buffer full, too big, corrupt
    /// buffer), overwritten, left unread at close.
    pub producer: u64,
    /// What the producer's summary says the reader discarded (torn copies),
    /// used only when the recording has no recorder's summary: the
    /// recorder that read the channel owns that counter.
    pub discarded: u64,
}

/// What to hold the recording to.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// What the writers offered (the demo's `--threads`, `--count`).
    pub offered: Option<Offered>,
    /// Records lost in all; missing records beyond these are defects.
    /// None: `producer_lost`, else taken from the recorder's summary, else 0.
    pub lost: Option<u64>,
    /// The producer's own losses (its counters), to which the reader's
    /// discards are added from the recorder's summary.
    pub producer_lost: Option<ProducerLost>,
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
/// can't be read, or is not a recorder's summary (a counter missing,
/// negative or fractional is refused, never read as 0).
fn summary(dir: &Path) -> Result<Option<RecordSummary>, String> {
    let path = dir.join(SUMMARY_FILE);
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
pub(crate) fn buffer_of(file: &Path) -> String {
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
fn check_summary(rep: &mut Report, dir: &Path, s: &RecordSummary) {
    // The losses the missing records are held to must be the recorder's
    // own counts, not a number written beside them.
    let parts = [
        s.dropped_full,
        s.dropped_toobig,
        s.dropped_corrupt,
        s.overwritten,
        s.discarded,
        s.unread_at_close,
    ]
    .iter()
    .try_fold(0u64, |sum, &n| sum.checked_add(n));
    if parts != Some(s.lost) {
        rep.defect(format!(
            "the recorder's summary says {} records were lost, but its counts of them \
             (dropped full, too big or corrupt, overwritten, discarded, unread at close) add up to {}",
            s.lost,
            parts.map_or_else(|| "more than 2^64".to_string(), |p| p.to_string())
        ));
    }
    if let Some(n) = s.n_buffers {
        if (s.buffers.len() as u64) < n {
            rep.defect(format!(
                "the channel has {n} buffers, the recorder's summary lists {}",
                s.buffers.len()
            ));
        }
        let have: std::collections::BTreeSet<String> =
            rep.files.iter().map(|f| buffer_of(f)).collect();
        for b in &s.buffers {
            let name = &b.name;
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
    if s.n_buffers.is_some() && s.max_files.is_none() {
        let delivered = s.records_delivered;
        let held: u64 = rep.writers.values().map(|w| w.records).sum();
        // A dead producer's last sub-buffer: its records up to a
        // reservation it never committed are in the files but not
        // counted as delivered (relay does not frame records, so the
        // reader can't count them); the rest are behind that hole.
        let abandoned = s.abandoned_records;
        if held < delivered || held > delivered.saturating_add(abandoned) {
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
    for b in &s.buffers {
        if let Some(e) = &b.error {
            rep.defect(format!("buffer {}: the recorder failed: {e}", b.name));
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
    match &expect.offered {
        Some(Offered::PerWriter(counts)) => {
            for w in 0..counts.len() as u32 {
                rep.writers.entry(w).or_default();
            }
            for (&w, wr) in rep.writers.iter_mut() {
                let Some(&count) = counts.get(w as usize) else {
                    rep.defects
                        .push(format!("records from unexpected writer {w}"));
                    continue;
                };
                if wr.max_seq >= count && wr.records > 0 {
                    rep.defects.push(format!(
                        "writer {w}: seq {} beyond the {count} written",
                        wr.max_seq
                    ));
                }
                wr.missing = count.saturating_sub(wr.records);
            }
            rep.missing = rep.writers.values().map(|w| w.missing).sum();
        }
        Some(Offered::Total { writers, records }) => {
            let (writers, records) = (*writers, *records);
            // Each writer's gaps are known, its tail is not: the total
            // tells what is missing in all.
            for w in 0..writers {
                rep.writers.entry(w).or_default();
            }
            let mut held = 0u64;
            for (&w, wr) in rep.writers.iter_mut() {
                if w >= writers {
                    rep.defects
                        .push(format!("records from unexpected writer {w}"));
                }
                if wr.records > 0 {
                    wr.missing = (wr.max_seq + 1).saturating_sub(wr.records);
                }
                held += wr.records;
            }
            if held > records {
                rep.defects.push(format!(
                    "{held} records found, but only {records} were written"
                ));
            }
            rep.missing = records.saturating_sub(held);
        }
        None => {
            for wr in rep.writers.values_mut() {
                wr.missing = (wr.max_seq + 1).saturating_sub(wr.records);
            }
            rep.missing = rep.writers.values().map(|w| w.missing).sum();
        }
    }
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
    rep.lost = match (expect.lost, expect.producer_lost) {
        (Some(lost), _) => lost,
        // The producer owns its drops, overwrites and what was left unread
        // at close; the reader owns its discards: each is counted once.
        (None, Some(p)) => p.producer + summary.as_ref().map_or(p.discarded, |s| s.discarded),
        (None, None) => summary.as_ref().map_or(0, |s| s.lost),
    };
    // Records of a dead producer's last sub-buffer (see `check_summary`):
    // each is either in the files or missing, and counted in neither.
    let abandoned = summary.as_ref().map_or(0, |s| s.abandoned_records);
    if rep.missing > rep.lost.saturating_add(abandoned) {
        rep.defects.push(format!(
            "{} records missing, but only {} counted as lost{}",
            rep.missing,
            rep.lost,
            if abandoned > 0 {
                format!(" and {abandoned} abandoned by the dead producer")
            } else {
                String::new()
            }
        ));
    } else if expect.offered.is_some() && rep.missing < rep.lost {
        rep.defects.push(format!(
            "{} records counted as lost, but only {} missing: the counters don't add up",
            rep.lost, rep.missing
        ));
    }
    Ok(rep)
}
