//! `relayfs verify DIR`: checks a recording of demo records.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::checker::{verify_dir, Expect, Offered, ProducerLost};

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
    /// The producer's counters: a JSON object with `threads`, `count` (or,
    /// interrupted, `offered_by_writer` or `written`) and `dropped`, as
    /// `relayfs demo --json` prints (instead of --writers, --count and
    /// --lost); the records the reader discarded are taken from the
    /// recorder's summary in DIR when there is one
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
    let bad = |k: &str| {
        anyhow::anyhow!(
            "{}: {k:?} is not a count (expected the output of relayfs demo --json)",
            path.display()
        )
    };
    // An optional counter: absent (None), or a count.
    let opt = |k: &str| match &v[k] {
        serde_json::Value::Null => Ok(None),
        x => x.as_u64().map(Some).ok_or_else(|| bad(k)),
    };
    let threads = field("threads")?;
    let writers = u32::try_from(threads)
        .ok()
        .filter(|&t| t <= crate::args::MAX_THREADS)
        .with_context(|| format!("{}: too many threads ({threads})", path.display()))?;
    let interrupted = match &v["interrupted"] {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        _ => return Err(bad("interrupted")),
    };
    // What was offered: each writer's count when the summary has it, else
    // --count each, or (interrupted: each writer stopped early) only the
    // total the summary says was written.
    let offered = match &v["offered_by_writer"] {
        serde_json::Value::Null if interrupted => Offered::Total {
            writers,
            records: field("written")?,
        },
        serde_json::Value::Null => Offered::each(writers, field("count")?),
        serde_json::Value::Array(a) if a.len() == writers as usize => Offered::PerWriter(
            a.iter()
                .map(|c| c.as_u64().ok_or_else(|| bad("offered_by_writer")))
                .collect::<Result<_>>()?,
        ),
        _ => bail!(
            "{}: \"offered_by_writer\" is not a list of {writers} counts",
            path.display()
        ),
    };
    // The producer's losses are its own counters; the reader's discards
    // come from the recorder's summary if the recording has one.
    let dropped = field("dropped")?;
    let discarded = opt("discarded")?.unwrap_or(0);
    let parts = [
        "dropped_full",
        "dropped_toobig",
        "dropped_corrupt",
        "overwritten",
        "unread_at_close",
    ]
    .iter()
    .map(|k| opt(k))
    .collect::<Result<Vec<Option<u64>>>>()?
    .into_iter()
    .collect::<Option<Vec<u64>>>();
    let producer = match parts {
        Some(p) => p.iter().sum(),
        None => dropped.checked_sub(discarded).with_context(|| {
            format!(
                "{}: \"discarded\" ({discarded}) is more than \"dropped\" ({dropped})",
                path.display()
            )
        })?,
    };
    Ok(Expect {
        offered: Some(offered),
        lost: None,
        producer_lost: Some(ProducerLost {
            producer,
            discarded,
        }),
    })
}

/// Runs `relayfs verify`; the exit code is 0 only with no defect.
pub fn run(a: &Args) -> Result<i32> {
    let expect = match &a.counters {
        Some(path) => counters(path)?,
        None => Expect {
            offered: a.writers.zip(a.count).map(|(w, c)| Offered::each(w, c)),
            lost: a.lost,
            producer_lost: None,
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
