//! `relayfs verify DIR`: checks a recording of demo records.

use std::collections::{BTreeMap, HashSet};
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

/// Lost records reported in a recorder summary in `dir`, if there is one.
fn summary_lost(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(super::record::SUMMARY_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("lost")?.as_u64()
}

/// Verifies every record file in `dir`.
pub fn verify_dir(dir: &Path, expect: &Expect) -> Result<Report> {
    let mut rep = Report {
        files: recording_files(dir)?,
        ..Report::default()
    };
    if rep.files.is_empty() {
        rep.defects
            .push(format!("no *.out files in {}", dir.display()));
    }
    let mut seen: HashSet<(u32, u64)> = HashSet::new();
    for path in rep.files.clone() {
        let data =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        rep.bytes += data.len() as u64;
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        let mut at = 0usize;
        while at < data.len() {
            match demofmt::check(&data[at..]) {
                Ok(h) => {
                    if !seen.insert((h.writer, h.seq)) {
                        rep.defects.push(format!(
                            "{name} @{at}: duplicate record writer {} seq {}",
                            h.writer, h.seq
                        ));
                    }
                    if let Some(&prev) = last.get(&h.writer) {
                        if h.seq <= prev {
                            rep.defects.push(format!(
                                "{name} @{at}: writer {} seq {} after seq {prev}",
                                h.writer, h.seq
                            ));
                        }
                    }
                    last.insert(h.writer, h.seq);
                    let w = rep.writers.entry(h.writer).or_default();
                    w.records += 1;
                    w.max_seq = w.max_seq.max(h.seq);
                    rep.records += 1;
                    at += h.len as usize;
                }
                Err((h, defect)) => {
                    let who = h.map_or(String::new(), |h| {
                        format!(" (writer {} seq {})", h.writer, h.seq)
                    });
                    rep.defects.push(format!("{name} @{at}: {defect}{who}"));
                    // Can't find the next record boundary reliably: stop here.
                    break;
                }
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
    rep.lost = expect.lost.or_else(|| summary_lost(dir)).unwrap_or(0);
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
    #[arg(long, requires = "count")]
    pub writers: Option<u32>,
    /// Records each writer offered (with --writers)
    #[arg(long, requires = "writers")]
    pub count: Option<u64>,
    /// Print the result as one JSON object
    #[arg(long)]
    pub json: bool,
}

/// Runs `relayfs verify`; the exit code is 0 only with no defect.
pub fn run(a: &Args) -> Result<i32> {
    let expect = Expect {
        writers_count: a.writers.zip(a.count),
        lost: a.lost,
    };
    let rep = verify_dir(&a.dir, &expect)?;
    if a.json {
        println!("{}", rep.json());
    } else {
        println!(
            "{} files, {} records, {} bytes, {} writers; {} missing, {} counted as lost",
            rep.files.len(),
            rep.records,
            rep.bytes,
            rep.writers.len(),
            rep.missing,
            rep.lost
        );
        for d in rep.defects.iter().take(20) {
            println!("DEFECT: {d}");
        }
        if rep.defects.len() > 20 {
            println!("... and {} more defects", rep.defects.len() - 20);
        }
        println!("{}", if rep.ok() { "OK" } else { "FAILED" });
    }
    Ok(if rep.ok() { 0 } else { 1 })
}
