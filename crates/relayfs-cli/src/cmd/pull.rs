//! `relayfs pull nats://HOST:PORT --stream NAME -o OUTDIR`: gets recordings
//! that `relayfs record --to` put in a JetStream stream back into files,
//! `OUTDIR/<host>/<channel>/<buffer>.out`, as a local `relayfs record` of
//! the same channel writes them, each channel with its
//! `relayfs-record.json` (the recorders' counters carried through), and
//! says per host what was delivered, dropped, and any gap.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream;
use async_nats::jetstream::message::StreamMessage;
use bytes::Bytes;
use relayfs::BufferStats;
use serde::Serialize;

use crate::natsio::{self, EndInfo, NatsArgs, NatsUrl, WireStats};
use crate::recorder::nats::util_buffer_order;
use crate::recorder::report::{
    self, BufferSummary, End, Progress, RecordSummary, Show, Summary, SUMMARY_FILE,
};
use crate::util;

/// Arguments of `relayfs pull`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The broker: nats://HOST:PORT
    pub url: String,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Output directory: OUTDIR/<host>/<channel>/<buffer>.out
    #[arg(short, long)]
    pub out: PathBuf,
    /// Only this host's recordings
    #[arg(long)]
    pub host: Option<String>,
    /// Only this channel's recordings
    #[arg(long)]
    pub channel: Option<String>,
    /// Keep going: write what arrives until interrupted (SIGINT, SIGTERM)
    #[arg(long)]
    pub follow: bool,
    /// Print the summary as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    /// No summary (errors only)
    #[arg(short, long)]
    pub quiet: bool,
}

/// One buffer's recording being written back.
#[derive(Default)]
struct Buf {
    file: Option<File>,
    /// The next sub-buffer to write (None: nothing written yet, and the
    /// first is sub-buffer 0: a recording into the stream starts at the
    /// buffer's start, so what is missing before the first that came is
    /// a gap too: acknowledged and then lost by the broker, or removed by
    /// the stream's limits).
    next: Option<u64>,
    /// Complete sub-buffers that came before their turn.
    ahead: BTreeMap<u64, (Vec<Bytes>, u64)>,
    /// Parts of sub-buffers still arriving: parts, records.
    partial: HashMap<u64, (Vec<Option<Bytes>>, u64)>,
    bytes: u64,
    /// Records in the sub-buffers written.
    records: u64,
    messages: u64,
    gaps: u64,
    duplicates: u64,
    last_stats: WireStats,
    end: Option<EndInfo>,
    channel_id: u64,
    n_buffers: u64,
}

/// What was pulled, per host, then channel, then buffer.
type Tree = BTreeMap<String, BTreeMap<String, BTreeMap<String, Buf>>>;

/// A header as text.
fn header<'a>(m: &'a StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

fn number(m: &StreamMessage, name: &str) -> Result<u64> {
    header(m, name)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("message {}: no number in header {name}", m.sequence))
}

/// A name from a message that becomes a path component: a plain file name.
fn plain(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && name.len() <= 255;
    ok.then_some(name)
}

impl Buf {
    fn open(&mut self, path: &Path) -> Result<()> {
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            self.file = Some(f);
        }
        Ok(())
    }

    /// Writes a complete sub-buffer, and those held back behind it.
    fn complete(&mut self, seq: u64, parts: Vec<Bytes>, records: u64) -> Result<()> {
        let next = *self.next.get_or_insert(0);
        if seq < next || self.ahead.contains_key(&seq) {
            self.duplicates += 1;
            return Ok(());
        }
        self.ahead.insert(seq, (parts, records));
        self.drain(false)
    }

    /// Writes what is in turn; `all`: also past gaps (counted).
    fn drain(&mut self, all: bool) -> Result<()> {
        while let Some((&seq, _)) = self.ahead.first_key_value() {
            let next = self.next.unwrap_or(0);
            if seq != next {
                if !all {
                    break;
                }
                self.gaps += seq - next;
            }
            let (parts, records) = self.ahead.remove(&seq).expect("first");
            let f = self.file.as_mut().expect("opened");
            for p in &parts {
                f.write_all(p).context("write")?;
                self.bytes += p.len() as u64;
            }
            self.records += records;
            self.next = Some(seq + 1);
        }
        Ok(())
    }

    fn stats(&self) -> BufferStats {
        self.end
            .as_ref()
            .map_or(self.last_stats, |e| e.stats)
            .into()
    }
}

/// A message in the stream that is not (or not a well-formed) relayfs
/// message: skipped with a warning and counted, never the end of the pull
/// (one stray or forged publish must not stop a collector).
#[derive(Debug)]
struct NotOurs(String);

impl std::fmt::Display for NotOurs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotOurs {}

/// What a relayfs message says, checked before anything is written.
enum Kind {
    End(EndInfo),
    Data {
        seq: u64,
        part: u64,
        parts: u64,
        records: u64,
        stats: Option<WireStats>,
    },
}

/// Reads a message's names and kind, or says why it is not ours.
fn parse(m: &StreamMessage) -> Result<(&str, &str, &str, Kind), NotOurs> {
    let not_ours = |why: String| NotOurs(format!("message {} on {}: {why}", m.sequence, m.subject));
    let (Some(host), Some(chan), Some(buf)) = (
        header(m, natsio::H_HOST).and_then(plain),
        header(m, natsio::H_CHANNEL).and_then(plain),
        header(m, natsio::H_BUFFER).and_then(plain),
    ) else {
        return Err(not_ours(
            "not a relayfs message (host, channel or buffer header missing or not a plain name)"
                .into(),
        ));
    };
    let num = |name: &str| number(m, name).map_err(|e| not_ours(format!("{e:#}")));
    let kind = match header(m, natsio::H_KIND) {
        Some("end") => Kind::End(
            serde_json::from_slice(&m.payload)
                .map_err(|e| not_ours(format!("a bad end message ({e})")))?,
        ),
        Some("data") => {
            let (seq, part, parts, records) = (
                num(natsio::H_SEQ)?,
                num(natsio::H_PART)?,
                num(natsio::H_PARTS)?,
                num(natsio::H_RECORDS)?,
            );
            if parts == 0 || part >= parts || parts > 1 << 20 {
                return Err(not_ours(format!("part {part} of {parts}")));
            }
            if seq == u64::MAX {
                return Err(not_ours(format!("sequence number {seq}")));
            }
            let stats = header(m, natsio::H_STATS).and_then(|s| serde_json::from_str(s).ok());
            Kind::Data {
                seq,
                part,
                parts,
                records,
                stats,
            }
        }
        k => return Err(not_ours(format!("unknown kind {k:?}"))),
    };
    Ok((host, chan, buf, kind))
}

/// Takes one message into `tree`. A message that is not ours is a
/// [`NotOurs`] error, and changed nothing.
fn take(tree: &mut Tree, out: &Path, m: StreamMessage) -> Result<()> {
    let (host, chan, buf, kind) = parse(&m)?;
    if let Kind::Data { seq, parts, .. } = &kind {
        let known = tree
            .get(host)
            .and_then(|c| c.get(chan))
            .and_then(|b| b.get(buf))
            .and_then(|b| b.partial.get(seq));
        if known.is_some_and(|slot| slot.0.len() as u64 != *parts) {
            return Err(NotOurs(format!(
                "message {} on {}: parts disagree",
                m.sequence, m.subject
            ))
            .into());
        }
    }
    let dir = out.join(host).join(chan);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let b = tree
        .entry(host.to_string())
        .or_default()
        .entry(chan.to_string())
        .or_default()
        .entry(buf.to_string())
        .or_default();
    let channel_id = number(&m, natsio::H_CHANNEL_ID).unwrap_or(b.channel_id);
    if b.messages > 0 && channel_id != b.channel_id {
        // The channel was created again (a new id) and recorded again: its
        // sequence numbers start over, so the newer recording replaces the
        // earlier one in OUTDIR rather than being taken for duplicates of it.
        crate::util::errln!(
            "relayfs pull: {host}/{chan}/{buf}: a newer recording (channel id {channel_id:#x}) replaces the one before it (channel id {:#x})",
            b.channel_id
        );
        *b = Buf::default();
    }
    b.open(&dir.join(format!("{buf}.out")))?;
    b.messages += 1;
    b.channel_id = channel_id;
    b.n_buffers = number(&m, natsio::H_N_BUFFERS).unwrap_or(b.n_buffers);
    match kind {
        Kind::End(info) => b.end = Some(info),
        Kind::Data {
            seq,
            part,
            parts,
            records,
            stats,
        } => {
            if let Some(s) = stats {
                b.last_stats = s;
            }
            if parts == 1 {
                return b.complete(seq, vec![m.payload], records);
            }
            let slot = b
                .partial
                .entry(seq)
                .or_insert_with(|| (vec![None; parts as usize], records));
            if slot.0[part as usize].is_some() {
                b.duplicates += 1;
                return Ok(());
            }
            slot.0[part as usize] = Some(m.payload);
            if slot.0.iter().all(Option::is_some) {
                let (v, records) = b.partial.remove(&seq).expect("present");
                b.complete(seq, v.into_iter().flatten().collect(), records)?;
            }
        }
    }
    Ok(())
}

/// A host's totals, in the summary.
#[derive(Debug, Default, Serialize)]
struct HostSummary {
    host: String,
    channels: Vec<String>,
    bytes: u64,
    records_delivered: u64,
    lost: u64,
    gaps: u64,
    duplicates: u64,
    complete: bool,
    /// Record files in a channel's directory of buffers the stream does
    /// not have (an older pull's, say): not removed, since they are not
    /// this pull's, but reported, as `verify` would trip on them.
    stale_files: Vec<String>,
    #[serde(skip)]
    messages: u64,
}

#[derive(Debug, Serialize)]
struct PullSummary {
    url: String,
    stream: String,
    out: String,
    messages: u64,
    bytes: u64,
    gaps: u64,
    /// Messages skipped: not relayfs messages, or malformed ones.
    skipped: u64,
    exit_code: i32,
    hosts: Vec<HostSummary>,
}

/// Writes the `relayfs-record.json` of one channel pulled, and adds its
/// totals to `h`. `final_`: the pull is over, so sub-buffers held back
/// behind a gap are written and the gap counted for good.
fn channel_summary(
    a: &Args,
    host: &str,
    chan: &str,
    bufs: &mut BTreeMap<String, Buf>,
    elapsed: f64,
    final_: bool,
    h: &mut HostSummary,
) -> Result<()> {
    let mut list: Vec<(&String, &mut Buf)> = bufs.iter_mut().collect();
    list.sort_by_key(|(n, _)| util_buffer_order(n));
    let mut summaries = Vec::new();
    let mut stats = Vec::new();
    let (mut ends, mut channel_id, mut n_buffers) = (Vec::new(), 0, 0);
    let (mut abandoned_b, mut abandoned_r) = (0, 0);
    for (name, b) in list {
        // What never came is a gap: behind the end's position, or
        // between sub-buffers that came (final: written past, counted).
        let mut gaps = b.gaps;
        if final_ {
            b.drain(true)?;
            if let Some(e) = &b.end {
                b.gaps += e.next_seq.saturating_sub(b.next.unwrap_or(0));
            }
            gaps = b.gaps;
            if let Some(f) = &b.file {
                f.sync_all().ok();
            }
        } else if let Some(e) = &b.end {
            gaps += e.next_seq.saturating_sub(b.next.unwrap_or(0));
        }
        let s = b.stats();
        let end = b.end.as_ref().map_or(End::Interrupted, |e| e.end);
        let ab = b.end.as_ref().and_then(|e| e.abandoned).unwrap_or((0, 0));
        abandoned_b += ab.0;
        abandoned_r += ab.1;
        h.complete &= b.end.is_some();
        channel_id = b.channel_id;
        n_buffers = b.n_buffers;
        h.messages += b.messages;
        h.bytes += b.bytes;
        h.gaps += gaps;
        h.duplicates += b.duplicates;
        ends.push(end);
        let mut error = b.end.as_ref().and_then(|e| e.error.clone());
        if gaps > 0 {
            error.get_or_insert(format!("{gaps} sub-buffers missing from the stream"));
        }
        summaries.push(BufferSummary {
            name: name.clone(),
            end,
            bytes: b.bytes,
            files: vec![format!("{name}.out")],
            records_written: s.records_written(),
            records_delivered: s.records_consumed,
            dropped_full: s.dropped_full,
            dropped_toobig: s.dropped_toobig,
            overwritten: s.overwritten_records,
            discarded: s.discarded_records,
            padding_bytes: s.padding_bytes,
            abandoned_bytes: ab.0,
            abandoned_records: ab.1,
            error,
        });
        stats.push(s);
    }
    if final_ {
        let dir = a.out.join(host).join(chan);
        for f in crate::checker::recording_files(&dir)? {
            if !bufs.contains_key(&crate::checker::buffer_of(&f)) {
                h.stale_files.push(f.display().to_string());
            }
        }
    }
    let total = relayfs::sum_stats(stats.iter());
    h.records_delivered += total.records_consumed;
    h.lost += total.lost();
    let bytes: u64 = summaries.iter().map(|s| s.bytes).sum();
    let end = End::worst(ends.iter().copied());
    let rec = RecordSummary {
        channel: format!("{host}:{chan}"),
        channel_id: Some(channel_id),
        n_buffers: Some(n_buffers),
        out: a.out.join(host).join(chan).display().to_string(),
        max_files: None,
        end,
        exit_code: match end {
            End::Error => 1,
            End::ProducerGone => report::EXIT_PRODUCER_GONE,
            _ => 0,
        },
        elapsed_s: elapsed,
        bytes,
        mb_per_s: report::mb_per_s(bytes, elapsed),
        abandoned_bytes: abandoned_b,
        abandoned_records: abandoned_r,
        buffers: summaries,
        memory: None,
        ..RecordSummary::totals(&total)
    };
    let path = a.out.join(host).join(chan).join(SUMMARY_FILE);
    let text = format!("{:#}\n", serde_json::to_value(&rec)?);
    crate::recorder::output::write_atomic(&path, text.as_bytes())?;
    if final_ && !a.quiet && !a.json {
        rec.print_text();
    }
    Ok(())
}

/// Writes each channel's relayfs-record.json and returns the summary.
fn summarize(
    tree: &mut Tree,
    a: &Args,
    url: &str,
    elapsed: f64,
    skipped: u64,
) -> Result<PullSummary> {
    let mut hosts = Vec::new();
    let mut messages = 0;
    for (host, chans) in tree.iter_mut() {
        let mut h = HostSummary {
            host: host.clone(),
            channels: chans.keys().cloned().collect(),
            bytes: 0,
            records_delivered: 0,
            lost: 0,
            gaps: 0,
            duplicates: 0,
            complete: true,
            stale_files: Vec::new(),
            messages: 0,
        };
        for (chan, bufs) in chans.iter_mut() {
            channel_summary(a, host, chan, bufs, elapsed, true, &mut h)?;
        }
        messages += h.messages;
        hosts.push(h);
    }
    let gaps = hosts.iter().map(|h| h.gaps).sum();
    let stale = hosts.iter().any(|h| !h.stale_files.is_empty());
    Ok(PullSummary {
        url: url.to_string(),
        stream: a.nats.stream.clone(),
        out: a.out.display().to_string(),
        messages,
        bytes: hosts.iter().map(|h| h.bytes).sum(),
        gaps,
        skipped,
        exit_code: if gaps > 0 || skipped > 0 || stale {
            1
        } else {
            0
        },
        hosts,
    })
}

/// Runs `relayfs pull`; returns the exit code.
pub fn run(a: &Args) -> Result<i32> {
    util::catch_interrupts();
    let url = NatsUrl::parse(&a.url)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(pull(a, &url))
}

async fn pull(a: &Args, url: &NatsUrl) -> Result<i32> {
    let shown = format!("nats://{}", url.addr());
    let client = natsio::connect(url, &a.nats, "relayfs pull").await?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&a.nats.stream).await.map_err(|e| {
        anyhow::anyhow!(
            "{shown}: no stream {:?} ({e}): is it the stream `relayfs record --to` used?",
            a.nats.stream
        )
    })?;
    let filter = format!(
        "{}.{}.{}.*",
        a.nats.subject,
        a.host.as_deref().map_or("*".into(), natsio::token),
        a.channel.as_deref().map_or("*".into(), natsio::token)
    );
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let started = Instant::now();
    // The live status line, as the recorder's: bytes pulled, and what the
    // producers dropped as the counters pulled so far say.
    let progress = Arc::new(vec![Progress::default()]);
    let done = Arc::new(AtomicBool::new(false));
    let show = Show {
        json: a.json,
        quiet: a.quiet,
    };
    let status = show.status_line().then(|| {
        let (progress, done) = (progress.clone(), done.clone());
        std::thread::spawn(move || {
            report::status_line(&progress, &["pulled".to_string()], &done, started)
        })
    });
    let mut tree = Tree::new();
    let mut cursor = 1u64;
    let mut failures = 0;
    let mut skipped = 0;
    loop {
        if util::interrupted() {
            break;
        }
        let got = stream
            .raw_message_builder()
            .sequence(cursor)
            .next_by_subject(filter.clone())
            .send()
            .await;
        match got {
            Ok(m) => {
                failures = 0;
                cursor = m.sequence + 1;
                // The filter names the host and channel as subject tokens;
                // the headers have the names themselves.
                let keep = a
                    .host
                    .as_deref()
                    .is_none_or(|h| header(&m, natsio::H_HOST) == Some(h))
                    && a.channel
                        .as_deref()
                        .is_none_or(|c| header(&m, natsio::H_CHANNEL) == Some(c));
                if keep {
                    let n = m.payload.len() as u64;
                    // Following, a channel's summary is written at each end
                    // message (a recorder's final counters), not only when
                    // the pull stops.
                    let ended =
                        (a.follow && header(&m, natsio::H_KIND) == Some("end")).then(|| {
                            (
                                header(&m, natsio::H_HOST).unwrap_or_default().to_string(),
                                header(&m, natsio::H_CHANNEL)
                                    .unwrap_or_default()
                                    .to_string(),
                            )
                        });
                    let seq = m.sequence;
                    match take(&mut tree, &a.out, m) {
                        Ok(()) => {}
                        Err(e) if e.is::<NotOurs>() => {
                            skipped += 1;
                            crate::util::errln!("relayfs pull: skipped: {e}");
                            continue;
                        }
                        Err(e) => return Err(e.context(format!("message {seq}"))),
                    }
                    if let Some((h, c)) = ended {
                        if let Some(bufs) = tree.get_mut(&h).and_then(|x| x.get_mut(&c)) {
                            let elapsed = started.elapsed().as_secs_f64();
                            let mut totals = HostSummary::default();
                            channel_summary(a, &h, &c, bufs, elapsed, false, &mut totals)?;
                        }
                    }
                    // SYNC POINT: Relaxed; a counter only shown.
                    progress[0].bytes.fetch_add(n, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                if !a.follow {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                failures += 1;
                if !a.follow && failures > 50 {
                    bail!("{shown}: cannot read stream {:?}: {e}", a.nats.stream);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // SYNC POINT: Relaxed; a stop flag carrying no data.
    done.store(true, Ordering::Relaxed);
    if let Some(t) = status {
        let _ = t.join();
    }
    let s = summarize(
        &mut tree,
        a,
        &shown,
        started.elapsed().as_secs_f64(),
        skipped,
    )?;
    if a.json {
        util::outln!("{}", serde_json::to_value(&s)?)?;
    } else if !a.quiet {
        crate::util::errln!(
            "relayfs pull: {shown} stream {} -> {}: {} messages, {}",
            a.nats.stream,
            a.out.display(),
            s.messages,
            util::human_bytes(s.bytes)
        );
        if s.skipped > 0 {
            crate::util::errln!(
                "  skipped {} messages that are not well-formed relayfs messages",
                s.skipped
            );
        }
        for f in s.hosts.iter().flat_map(|h| &h.stale_files) {
            crate::util::errln!(
                "  {f}: a record file of a buffer this stream does not have (an older recording's?), left in place; remove it or pull into an empty directory"
            );
        }
        for h in &s.hosts {
            crate::util::errln!(
                "  host {:<20} delivered {:>10}  dropped {:>8}  gaps {}{}",
                h.host,
                h.records_delivered,
                h.lost,
                h.gaps,
                if h.complete {
                    ""
                } else {
                    "  (recording not ended)"
                }
            );
        }
    }
    Ok(s.exit_code)
}
