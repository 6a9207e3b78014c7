//! Recording a relayfs channel into a NATS JetStream stream
//! (`relayfs record CHANNEL --to nats://HOST:PORT`).
//!
//! Each buffer is read ahead without consuming ([`RelayFile::peek_subbuf`]):
//! every complete sub-buffer becomes a message (or a few parts), published
//! with a `Nats-Msg-Id` made of host, channel (and its id), buffer and
//! sequence, up to a window of messages not acknowledged yet. A sub-buffer is consumed
//! ([`RelayFile::consume_through`]) only once JetStream acknowledged every
//! part of it, so a sub-buffer is never lost once handed back to the
//! producer; a message whose acknowledgement fails (broker down, slow,
//! failing over) is sent again with the same id, which JetStream stores
//! once. Meanwhile the buffer fills and the producer drops and counts, as
//! with any slow reader. A recorder killed and started again resumes at the
//! position the buffer keeps.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use super::spool::{BufSpool, Sub};
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
    /// Where sub-buffers wait while the broker is away, and how many bytes
    /// at most.
    pub(crate) spool: Option<PathBuf>,
    pub(crate) spool_max: u64,
}

/// Bytes in the spool, every buffer's.
static SPOOL_USED: AtomicU64 = AtomicU64::new(0);

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
    /// The stream's name and subject prefix, to create it again if it is
    /// gone; the largest message and the replicas, as at the start.
    nats: &'a NatsArgs,
    max_msg: usize,
    replicas: usize,
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

/// A sub-buffer's copy, shared by the messages made of it.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// An acknowledgement to come.
type Ack = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
            > + Send,
    >,
>;

/// How often a task waiting for an acknowledgement looks up (to spool, to
/// see a stop).
const TICK: Duration = Duration::from_millis(10);

/// With `--spool`: how long the oldest message may wait for its
/// acknowledgement before what is ready goes to the spool.
const SPOOL_AFTER: Duration = Duration::from_millis(200);

/// A sub-buffer sent and not yet acknowledged.
struct Inflight {
    sub: Sub,
    /// The memory `sub.data` lives in, to use again once acknowledged.
    keep: Option<Arc<Vec<u8>>>,
    stats: WireStats,
    msgs: Vec<(HeaderMap, Bytes)>,
    /// One per message; `None` once acknowledged (or failed, see `failed`).
    acks: Vec<Option<Ack>>,
    /// An acknowledgement failed: send again.
    failed: bool,
    /// It failed because no stream takes the subject (deleted, or the
    /// broker lost its store): create it again before sending again.
    no_stream: bool,
    /// Why the acknowledgement failed, as the client or broker says.
    error: Option<String>,
    /// It is in the spool (so consumed from the relay buffer already).
    spooled: bool,
    since: Instant,
}

/// Waits for the acknowledgements of one sub-buffer in flight; `false` if
/// one failed. Cancelled (by a timeout), it keeps what it got.
async fn settle(e: &mut Inflight) -> bool {
    for a in e.acks.iter_mut() {
        let Some(fut) = a.as_mut() else { continue };
        let res = fut.await;
        *a = None;
        if let Err(err) = res {
            e.failed = true;
            e.no_stream = err.kind() == jetstream::context::PublishErrorKind::StreamNotFound;
            e.error = Some(err.to_string());
            return false;
        }
    }
    true
}

impl Ship<'_> {
    fn stopping(&self) -> bool {
        // SYNC POINT: Relaxed; a stop flag carrying no data.
        self.stop.load(Ordering::Relaxed) || util::interrupted()
    }

    /// What every message id of this buffer starts with: host, channel,
    /// the channel's id and buffer. The channel id (random, made when the
    /// channel is created) tells a channel created again under the same
    /// name apart: its sub-buffer 0 is not the earlier one's, and JetStream
    /// would take it for a duplicate within the duplicate window and drop it.
    fn id_prefix(&self) -> String {
        format!(
            "{}/{}/{:016x}/{}",
            self.host, self.channel, self.channel_id, self.buffer
        )
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

    /// The messages of a peeked sub-buffer: its data cut into as few parts
    /// of at most `chunk` bytes as can be, of even size (one, possibly
    /// empty, at least).
    fn messages(&self, p: &Sub, stats: WireStats) -> Vec<(HeaderMap, Bytes)> {
        let data = p.data.clone();
        let len = data.len();
        let parts = len.div_ceil(self.chunk).max(1);
        // Parts of even size (no small last one).
        let each = len.div_ceil(parts).max(1);
        let stats = serde_json::to_string(&stats).unwrap_or_default();
        (0..parts)
            .map(|i| {
                let id = if parts == 1 {
                    format!("{}/{}", self.id_prefix(), p.seq)
                } else {
                    format!("{}/{}/{i}", self.id_prefix(), p.seq)
                };
                let mut h = self.headers("data", id);
                h.insert(natsio::H_SEQ, p.seq.to_string());
                h.insert(natsio::H_PART, i.to_string());
                h.insert(natsio::H_PARTS, parts.to_string());
                h.insert(natsio::H_BYTES, len.to_string());
                h.insert(natsio::H_RECORDS, p.records.to_string());
                h.insert(natsio::H_STATS, stats.as_str());
                let from = (i * each).min(len);
                let to = ((i + 1) * each).min(len);
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

    /// Sends every message of `e` (again: same ids, JetStream keeps one
    /// copy).
    async fn send(&self, e: &mut Inflight) {
        e.failed = false;
        e.since = Instant::now();
        for (i, (h, d)) in e.msgs.iter().enumerate() {
            e.acks[i] = match self.publish(h, d).await {
                Some(a) => Some(a.into_future()),
                None => {
                    e.failed = true;
                    None
                }
            };
        }
    }

    /// A peeked (or spooled) sub-buffer, sent.
    async fn launch(
        &self,
        sub: Sub,
        keep: Option<Arc<Vec<u8>>>,
        stats: WireStats,
        spooled: bool,
    ) -> Inflight {
        let msgs = self.messages(&sub, stats);
        let mut e = Inflight {
            keep,
            acks: msgs.iter().map(|_| None).collect(),
            sub,
            stats,
            msgs,
            failed: false,
            no_stream: false,
            error: None,
            spooled,
            since: Instant::now(),
        };
        self.send(&mut e).await;
        e
    }

    /// With `--spool`: moves what is in flight and what is ready in the
    /// relay buffer to the spool, consuming it there, until the spool is
    /// full or nothing more is ready. Sub-buffers spooled and not in flight
    /// join `queued`.
    fn spool_ahead(
        &self,
        f: &mut RelayFile,
        sp: &BufSpool,
        inflight: &mut VecDeque<Inflight>,
        next: &mut u64,
        queued: &mut VecDeque<u64>,
    ) -> Result<()> {
        // In order: consuming a sub-buffer consumes those before it.
        for e in inflight.iter_mut().filter(|e| !e.spooled) {
            if !sp.write(&e.sub, e.stats)? {
                return Ok(());
            }
            f.consume_through(e.sub.seq)?;
            e.spooled = true;
        }
        while let Some(p) = f.peek_subbuf(*next)? {
            let p = Sub::from(p);
            if !sp.write(&p, f.stats().into())? {
                break;
            }
            f.consume_through(p.seq)?;
            queued.push_back(p.seq);
            *next += 1;
            if p.partial {
                break;
            }
        }
        Ok(())
    }

    /// Ships one buffer until it ends or the recording stops.
    async fn run(
        &self,
        f: &mut RelayFile,
        res: &mut BufferResult,
        spool: Option<&BufSpool>,
    ) -> Result<End> {
        let mut inflight: VecDeque<Inflight> = VecDeque::new();
        // Spooled sub-buffers not in flight (some may be left by an earlier
        // recorder): they go first.
        let mut queued: VecDeque<u64> = match spool {
            Some(sp) => sp.list()?.into(),
            None => VecDeque::new(),
        };
        let mut next = f.consumed_seq();
        let mut idle = Duration::from_millis(1);
        let mut backoff = Duration::from_millis(50);
        let mut tail = false;
        // The last failure said, said again only when it changes (a
        // stream refusing messages for ever is not an outage to wait out
        // in silence).
        let mut said: Option<String> = None;
        // Sub-buffer copies' memory, used again.
        let mut pool: Vec<Vec<u8>> = Vec::new();
        // Acknowledged through this sequence number, not consumed yet (a
        // view of it was still held).
        let mut owed: Option<u64> = None;
        loop {
            settle_owed(f, &mut owed)?;
            // Fill the window, oldest first: the spool, then the relay
            // buffer's complete sub-buffers.
            while inflight.len() < self.window && !self.stopping() {
                if let (Some(sp), Some(&seq)) = (spool, queued.front()) {
                    let (sub, stats) = sp.load(seq)?;
                    queued.pop_front();
                    let e = self.launch(sub, None, stats, true).await;
                    inflight.push_back(e);
                    continue;
                }
                if tail {
                    break;
                }
                if spool.is_none() {
                    // No copy: the message's payload is the sub-buffer
                    // where it lies in the mapping, which the library won't
                    // hand back to the producer while the view lives (the
                    // client lets go of it once written to the socket).
                    let Some(v) = f.peek_subbuf_view(next)? else {
                        break;
                    };
                    tail = v.partial;
                    next += 1;
                    let stats = f.stats().into();
                    let sub = Sub {
                        seq: v.seq,
                        records: v.records,
                        offset: v.offset,
                        partial: v.partial,
                        data: Bytes::from_owner(v),
                    };
                    let e = self.launch(sub, None, stats, false).await;
                    inflight.push_back(e);
                    continue;
                }
                // With a spool, copies: a sub-buffer in flight may go to
                // the spool and be consumed before it is acknowledged.
                let mut p = PeekedSubbuf {
                    data: pool.pop().unwrap_or_default(),
                    ..Default::default()
                };
                if !f.peek_subbuf_into(next, &mut p)? {
                    pool.push(p.data);
                    break;
                }
                tail = p.partial;
                next += 1;
                let stats = f.stats().into();
                let keep = Arc::new(std::mem::take(&mut p.data));
                let sub = Sub {
                    data: Bytes::from_owner(Shared(keep.clone())),
                    ..Sub::from(p)
                };
                let e = self.launch(sub, Some(keep), stats, false).await;
                inflight.push_back(e);
            }
            // SYNC POINT: Relaxed; counters only shown.
            self.progress
                .lost
                .store(f.stats().lost(), Ordering::Relaxed);
            if let Some(front) = inflight.front_mut() {
                let acked = !front.failed
                    && tokio::time::timeout(TICK, settle(front))
                        .await
                        .unwrap_or(false);
                if acked {
                    let done = inflight.pop_front().expect("in flight");
                    let (seq, spooled) = (done.sub.seq, done.spooled);
                    let bytes = done.sub.data.len() as u64;
                    let Inflight {
                        sub, msgs, keep, ..
                    } = done;
                    // Our views of it go first: consuming waits for them.
                    drop((sub, msgs));
                    match spool {
                        Some(sp) if spooled => sp.remove(seq)?,
                        _ => owed = Some(seq),
                    }
                    settle_owed(f, &mut owed)?;
                    // The client let go of the data once it was written.
                    if let Some(v) = keep.and_then(|k| Arc::try_unwrap(k).ok()) {
                        if pool.len() <= self.window {
                            pool.push(v);
                        }
                    }
                    res.bytes += bytes;
                    // SYNC POINT: Relaxed; a counter only shown.
                    self.progress.bytes.fetch_add(bytes, Ordering::Relaxed);
                    backoff = Duration::from_millis(50);
                    idle = Duration::from_millis(1);
                    said = None;
                    continue;
                }
                // Not yet, or failed: the broker is slow or away.
                let failed = front.failed;
                let waited = front.since.elapsed();
                if let Some(err) = front.error.take() {
                    if said.as_ref() != Some(&err) {
                        crate::util::errln!(
                            "relayfs record: {}: sub-buffer {} not stored: {err} (sending again until it is)",
                            self.buffer,
                            front.sub.seq
                        );
                        said = Some(err);
                    }
                }
                if let Some(sp) = spool {
                    if failed || waited >= SPOOL_AFTER {
                        self.spool_ahead(f, sp, &mut inflight, &mut next, &mut queued)?;
                    }
                }
                if self.stopping() {
                    // What is in flight stays in the buffer (or the spool)
                    // for the next recorder.
                    settle_owed(f, &mut owed)?;
                    return Ok(End::Interrupted);
                }
                if failed && waited >= backoff {
                    if inflight.iter().any(|e| e.no_stream) {
                        // The stream is gone (deleted, or the broker came
                        // back without its store): nothing would ever be
                        // stored again. Create it again, as at the start;
                        // what the broker lost is a gap `pull` reports.
                        match natsio::ensure_stream(
                            self.js,
                            self.nats,
                            &self.subject,
                            self.max_msg,
                            self.replicas,
                        )
                        .await
                        {
                            Ok(_) => crate::util::errln!(
                                "relayfs record: {}: the stream {:?} was gone: created again",
                                self.buffer,
                                self.nats.stream
                            ),
                            Err(e) => crate::util::errln!(
                                "relayfs record: {}: the stream {:?} is gone: {e:#}",
                                self.buffer,
                                self.nats.stream
                            ),
                        }
                        for e in inflight.iter_mut() {
                            e.no_stream = false;
                        }
                    }
                    for e in inflight.iter_mut() {
                        self.send(e).await;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                } else if failed {
                    tokio::time::sleep(TICK).await;
                }
                continue;
            }
            if self.stopping() {
                settle_owed(f, &mut owed)?;
                return Ok(End::Interrupted);
            }
            if owed.is_some() {
                // A view still held (by the client, for a moment): not at
                // the end yet.
                tokio::time::sleep(TICK).await;
                continue;
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
            "{}/end/{}/{}/{}",
            self.id_prefix(),
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
                bail!(
                    "the broker did not acknowledge the buffer's end message (its final counters)"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Consumes what was acknowledged through `owed`, as far as no view of it
/// is held any more; `owed` is cleared once all of it is consumed.
fn settle_owed(f: &mut RelayFile, owed: &mut Option<u64>) -> Result<()> {
    if let Some(seq) = *owed {
        f.consume_through(seq)?;
        if f.oldest_viewed().is_none_or(|v| v > seq) {
            *owed = None;
        }
    }
    Ok(())
}

/// Ships one buffer and says how it went.
async fn ship_buffer(ship: Ship<'_>, mut f: RelayFile, spool: Option<BufSpool>) -> BufferResult {
    let mut res = BufferResult::failed(&ship.buffer, String::new());
    res.error = None;
    match ship.run(&mut f, &mut res, spool.as_ref()).await {
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
    natsio::check_name("channel", &channel)?;
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
            Ok(f) => {
                natsio::check_name("buffer", &b.name)?;
                let spool = match &t.spool {
                    Some(root) => Some(BufSpool::open(
                        root,
                        &t.host,
                        &channel,
                        &b.name,
                        t.spool_max,
                        &SPOOL_USED,
                    )?),
                    None => None,
                };
                bufs.push((b.clone(), f, spool))
            }
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
    if let Some(big) = bufs
        .iter()
        .map(|(_, f, _)| f.header().geometry.subbuf_size)
        .filter(|&size| size as usize > chunk)
        .max()
    {
        if !cfg.show.quiet {
            // Not an error (the parts are joined by `pull`), but twice the
            // messages, acknowledgements and headers for the same data.
            crate::util::errln!(
                "relayfs record: note: sub-buffers of {big} bytes are more than a message holds on this server (max_payload {max_payload} less {} bytes for headers): a full one goes as {} messages; sub-buffers of at most {chunk} bytes, or a larger max_payload, avoid that",
                natsio::HEADER_ROOM,
                (big as usize).div_ceil(chunk)
            );
        }
    }
    let memory = MemorySampler::start();
    let progress: Arc<Vec<Progress>> = Arc::new(bufs.iter().map(|_| Progress::default()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let names: Vec<String> = bufs.iter().map(|(b, _, _)| b.name.clone()).collect();
    let timed_out = super::engine::stop_after(cfg.duration, started, &stop);
    let done = Arc::new(AtomicBool::new(false));
    let status = cfg.show.status_line().then(|| {
        let (progress, names, done) = (progress.clone(), names.clone(), done.clone());
        std::thread::spawn(move || report::status_line(&progress, &names, &done, started))
    });
    let ships = bufs.into_iter().enumerate().map(|(i, (b, f, spool))| {
        let ship = Ship {
            js: &js,
            nats: &t.nats,
            max_msg: max_payload,
            replicas: t.replicas,
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
        ship_buffer(ship, f, spool)
    });
    let mut results = futures_util::future::join_all(ships).await;
    results.append(&mut unrecorded);
    results.sort_by_key(|r| util_buffer_order(&r.name));
    // SYNC POINT: Relaxed, these three: flags carrying no data (the status
    // thread and the timer only stop on them; the timer stored `timed_out`
    // before the stop that ended the shipping, and a late `true` only names
    // the end "stopped").
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
