//! Recording a relayfs channel into a NATS JetStream stream
//! (`relayfs record CHANNEL --to nats://HOST:PORT`).
//!
//! Each buffer is read ahead without consuming ([`RelayFile::peek_subbuf`]):
//! every complete sub-buffer becomes a message (or a few parts), published
//! with a `Nats-Msg-Id` made of host, channel, buffer and sequence, up to a
//! window of messages not acknowledged yet. A sub-buffer is consumed
//! ([`RelayFile::consume_through`]) only once JetStream acknowledged every
//! part of it, so a sub-buffer is never lost once handed back to the
//! producer; a message whose acknowledgement fails (broker down, slow,
//! failing over) is sent again with the same id, which JetStream stores
//! once. Meanwhile the buffer fills and the producer drops and counts, as
//! with any slow reader. A recorder killed and started again resumes at the
//! position the buffer keeps.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::HeaderMap;
use bytes::Bytes;
use relayfs::{PeekedSubbuf, RelayFile};

use super::config::{OutputConfig, RecordConfig};
use super::engine::Failed;
use super::relay::{summarize, BufferResult};
use super::report::{self, End, MemorySampler, Progress, Summary};
use super::source;
use crate::natsio::{self, EndInfo, NatsArgs, NatsUrl, WireStats};
use crate::util;

/// Where `record --to` sends a channel.
#[derive(Debug, Clone)]
pub(crate) struct NatsTarget {
    pub(crate) url: NatsUrl,
    /// The URL as given, without its password (for the summary).
    pub(crate) shown: String,
    pub(crate) nats: NatsArgs,
    /// The host name the recording is filed under.
    pub(crate) host: String,
    /// Messages sent and not yet acknowledged, per buffer, at most.
    pub(crate) window: usize,
    /// Stream replicas, if the stream is created.
    pub(crate) replicas: usize,
}

/// This machine's host name.
pub(crate) fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// What one buffer's shipping needs to know.
struct Ship<'a> {
    js: &'a jetstream::Context,
    subject: String,
    host: &'a str,
    channel: &'a str,
    buffer: String,
    channel_id: u64,
    n_buffers: u64,
    window: usize,
    /// Data bytes per message.
    chunk: usize,
    progress: &'a Progress,
    stop: &'a AtomicBool,
}

/// A sub-buffer sent and not yet acknowledged.
struct Inflight {
    seq: u64,
    bytes: u64,
    msgs: Vec<(HeaderMap, Bytes)>,
    acks: Vec<Option<PublishAckFuture>>,
}

impl Ship<'_> {
    fn stopping(&self) -> bool {
        // SYNC POINT: Relaxed; a stop flag carrying no data.
        self.stop.load(Ordering::Relaxed) || util::interrupted()
    }

    fn headers(&self, kind: &str, id: String) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(natsio::H_MSG_ID, id);
        h.insert(natsio::H_KIND, kind);
        h.insert(natsio::H_HOST, self.host);
        h.insert(natsio::H_CHANNEL, self.channel);
        h.insert(natsio::H_BUFFER, self.buffer.as_str());
        h.insert(natsio::H_CHANNEL_ID, self.channel_id.to_string());
        h.insert(natsio::H_N_BUFFERS, self.n_buffers.to_string());
        h
    }

    /// The messages of a peeked sub-buffer: its data cut into parts of at
    /// most `chunk` bytes (one, possibly empty, at least).
    fn messages(&self, p: PeekedSubbuf, stats: WireStats) -> Vec<(HeaderMap, Bytes)> {
        let data = Bytes::from(p.data);
        let len = data.len();
        let parts = len.div_ceil(self.chunk).max(1);
        let stats = serde_json::to_string(&stats).unwrap_or_default();
        (0..parts)
            .map(|i| {
                let id = if parts == 1 {
                    format!("{}/{}/{}/{}", self.host, self.channel, self.buffer, p.seq)
                } else {
                    format!(
                        "{}/{}/{}/{}/{i}",
                        self.host, self.channel, self.buffer, p.seq
                    )
                };
                let mut h = self.headers("data", id);
                h.insert(natsio::H_SEQ, p.seq.to_string());
                h.insert(natsio::H_PART, i.to_string());
                h.insert(natsio::H_PARTS, parts.to_string());
                h.insert(natsio::H_BYTES, len.to_string());
                h.insert(natsio::H_RECORDS, p.records.to_string());
                h.insert(natsio::H_STATS, stats.as_str());
                let from = (i * self.chunk).min(len);
                let to = ((i + 1) * self.chunk).min(len);
                (h, data.slice(from..to))
            })
            .collect()
    }

    async fn publish(&self, h: &HeaderMap, data: &Bytes) -> Option<PublishAckFuture> {
        self.js
            .publish_with_headers(self.subject.clone(), h.clone(), data.clone())
            .await
            .ok()
    }

    /// Sends every message of `inflight` again (same ids: JetStream keeps
    /// one copy).
    async fn resend(&self, inflight: &mut VecDeque<Inflight>) {
        for e in inflight.iter_mut() {
            for (i, (h, d)) in e.msgs.iter().enumerate() {
                e.acks[i] = self.publish(h, d).await;
            }
        }
    }

    /// Waits until every part of the oldest sub-buffer in flight is
    /// acknowledged, sending what is in flight again after a failure, until
    /// it is or the recording stops (`false`).
    async fn acknowledged(&self, inflight: &mut VecDeque<Inflight>) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(front) = inflight.front_mut() else {
                return true;
            };
            let mut ok = true;
            for a in front.acks.iter_mut() {
                let good = match a.take() {
                    Some(fut) => fut.await.is_ok(),
                    None => false,
                };
                if !good {
                    ok = false;
                    break;
                }
            }
            if ok {
                return true;
            }
            if self.stopping() {
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            self.resend(inflight).await;
        }
    }

    /// Ships one buffer until it ends or the recording stops.
    async fn run(&self, f: &mut RelayFile, res: &mut BufferResult) -> Result<End> {
        let mut inflight: VecDeque<Inflight> = VecDeque::new();
        let mut next = f.consumed_seq();
        let mut idle = Duration::from_millis(1);
        loop {
            // Fill the window with complete sub-buffers, oldest first.
            let mut tail = false;
            while inflight.len() < self.window && !tail && !self.stopping() {
                let Some(p) = f.peek_subbuf(next)? else {
                    break;
                };
                tail = p.partial;
                let (seq, bytes) = (p.seq, p.data.len() as u64);
                let msgs = self.messages(p, f.stats().into());
                let mut acks = Vec::with_capacity(msgs.len());
                for (h, d) in &msgs {
                    acks.push(self.publish(h, d).await);
                }
                inflight.push_back(Inflight {
                    seq,
                    bytes,
                    msgs,
                    acks,
                });
                next += 1;
            }
            // SYNC POINT: Relaxed; counters only shown.
            self.progress
                .lost
                .store(f.stats().lost(), Ordering::Relaxed);
            if !inflight.is_empty() {
                if !self.acknowledged(&mut inflight).await {
                    // Stopped during an outage: what is in flight stays in
                    // the buffer, for the next recorder.
                    return Ok(End::Interrupted);
                }
                let done = inflight.pop_front().expect("in flight");
                f.consume_through(done.seq)?;
                res.bytes += done.bytes;
                self.progress
                    .bytes
                    .fetch_add(done.bytes, Ordering::Relaxed);
                idle = Duration::from_millis(1);
                continue;
            }
            if self.stopping() {
                return Ok(End::Interrupted);
            }
            if f.is_closed() && f.is_eof()? {
                return Ok(End::Closed);
            }
            if !f.producer_alive() && f.is_eof()? {
                res.abandoned = f.abandoned();
                return Ok(End::ProducerGone);
            }
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(Duration::from_millis(20));
        }
    }

    /// Sends the buffer's end message (its final counters), trying for a
    /// few seconds.
    async fn send_end(&self, f: &RelayFile, res: &BufferResult) -> Result<()> {
        let stats = f.stats();
        let info = EndInfo {
            end: res.end,
            next_seq: f.consumed_seq(),
            stats: stats.into(),
            abandoned: res.abandoned,
            channel_id: self.channel_id,
            n_buffers: self.n_buffers,
            error: res.error.clone(),
        };
        let id = format!(
            "{}/{}/{}/end/{}/{}/{}",
            self.host,
            self.channel,
            self.buffer,
            info.next_seq,
            stats.records_consumed,
            stats.lost()
        );
        let h = self.headers("end", id);
        let body = Bytes::from(serde_json::to_vec(&info)?);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = self.publish(&h, &body).await {
                if a.await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("the broker did not acknowledge the buffer's end message (its final counters)");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Ships one buffer and says how it went.
async fn ship_buffer(ship: Ship<'_>, mut f: RelayFile) -> BufferResult {
    let mut res = BufferResult::failed(&ship.buffer, String::new());
    res.error = None;
    match ship.run(&mut f, &mut res).await {
        Ok(end) => res.end = end,
        Err(e) => {
            res.end = End::Error;
            res.error = Some(format!("{e:#}"));
            // SYNC POINT: Relaxed; a stop flag carrying no data.
            ship.stop.store(true, Ordering::Relaxed);
        }
    }
    if let Err(e) = ship.send_end(&f, &res).await {
        res.end = End::Error;
        res.error.get_or_insert(format!("{e:#}"));
    }
    res.stats = f.stats();
    res
}

/// Records the relayfs channel in `dir` into JetStream; returns the exit
/// code.
pub(crate) fn record_channel(dir: &Path, cfg: &RecordConfig, t: &NatsTarget) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(record_async(dir, cfg, t))
}

async fn record_async(dir: &Path, cfg: &RecordConfig, t: &NatsTarget) -> Result<i32> {
    let channel = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let client = natsio::connect(&t.url, &t.nats, "relayfs record").await?;
    let max_payload = client.server_info().max_payload;
    if max_payload < natsio::MIN_PAYLOAD {
        bail!(
            "nats://{}: the server's max_payload ({max_payload} bytes) is too small for relay data: a message needs {} bytes of headers and room for records (raise max_payload in the server's configuration to {} or more)",
            t.url.addr(),
            natsio::HEADER_ROOM,
            natsio::MIN_PAYLOAD
        );
    }
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    let prefix = &t.nats.subject;
    let (host_tok, chan_tok) = (natsio::token(&t.host), natsio::token(&channel));
    let sample = format!("{prefix}.{host_tok}.{chan_tok}.cpu0");
    natsio::ensure_stream(&js, &t.nats, &sample, max_payload, t.replicas).await?;
    let chunk = max_payload - natsio::HEADER_ROOM;

    // Waiting for the channel (--wait) blocks: beside the runtime, so that
    // the connection is served meanwhile.
    let scan = {
        let (dir, cfg) = (dir.to_path_buf(), cfg.clone());
        tokio::task::spawn_blocking(move || source::find_buffers(&dir, &cfg))
            .await
            .context("waiting for the channel")??
    };
    let mut unrecorded = Vec::new();
    let mut bufs = Vec::new();
    for b in &scan.bufs {
        match RelayFile::open(&b.path) {
            Ok(f) if f.header().overwrite => bail!(
                "{}: the channel is in overwrite mode; recording into NATS needs a no-overwrite channel (a sub-buffer is kept until the broker acknowledges it)",
                b.path.display()
            ),
            Ok(f) => bufs.push((b.clone(), f)),
            Err(relayfs::ReadError::Busy(p)) => bail!(
                "{}: another reader has this buffer (is another recorder running?)",
                p.display()
            ),
            Err(e) => unrecorded.push(BufferResult::failed(&b.name, util::error_chain(&e))),
        }
    }
    for b in &scan.bad {
        unrecorded.push(BufferResult::failed(
            &b.name,
            format!("{}: {}", b.path.display(), b.reason),
        ));
    }
    let memory = MemorySampler::start();
    let progress: Arc<Vec<Progress>> = Arc::new(bufs.iter().map(|_| Progress::default()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let names: Vec<String> = bufs.iter().map(|(b, _)| b.name.clone()).collect();
    let timed_out = Arc::new(AtomicBool::new(false));
    if let Some(d) = cfg.duration {
        let (stop, timed_out) = (stop.clone(), timed_out.clone());
        let deadline = started + d;
        std::thread::spawn(move || {
            // SYNC POINT: Relaxed; stop flags carrying no data.
            while Instant::now() < deadline {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            timed_out.store(true, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let done = Arc::new(AtomicBool::new(false));
    let status = cfg.show.status_line().then(|| {
        let (progress, names, done) = (progress.clone(), names.clone(), done.clone());
        std::thread::spawn(move || report::status_line(&progress, &names, &done, started))
    });
    let ships = bufs.into_iter().enumerate().map(|(i, (b, f))| {
        let ship = Ship {
            js: &js,
            subject: format!("{prefix}.{host_tok}.{chan_tok}.{}", natsio::token(&b.name)),
            host: &t.host,
            channel: &channel,
            buffer: b.name.clone(),
            channel_id: f.header().channel_id,
            n_buffers: scan.n_buffers,
            window: t.window,
            chunk,
            progress: &progress[i],
            stop: &stop,
        };
        ship_buffer(ship, f)
    });
    let mut results = futures_util::future::join_all(ships).await;
    results.append(&mut unrecorded);
    results.sort_by(|a, b| util_buffer_order(&a.name).cmp(&util_buffer_order(&b.name)));
    // SYNC POINT: Relaxed; the status thread only stops on it.
    done.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    if timed_out.load(Ordering::Relaxed) {
        for r in results.iter_mut().filter(|r| r.end == End::Interrupted) {
            r.end = End::Stopped;
        }
    }
    if let Some(s) = status {
        let _ = s.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let out = OutputConfig {
        dir: t.shown.clone().into(),
        max_size: None,
        max_files: None,
        retry: false,
    };
    let summary = summarize(dir, &out, &scan, &results, elapsed, memory.finish());
    for r in &results {
        if let Some(e) = &r.error {
            crate::util::errln!("relayfs record: {}: {e}", r.name);
        }
    }
    if cfg.show.json {
        util::outln!("{}", serde_json::to_value(&summary)?)?;
    } else if !cfg.show.quiet {
        summary.print_text();
    }
    Ok(summary.exit_code)
}

/// Buffers in their natural order: cpu2 before cpu10.
pub(crate) fn util_buffer_order(name: &str) -> (String, u64, String) {
    let digits_at = name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    (
        name[..digits_at].to_string(),
        name[digits_at..].parse::<u64>().unwrap_or(u64::MAX),
        name.to_string(),
    )
}
