//! A newcomer's application in miniature, written against the public API
//! only: a "web server" whose worker threads emit one framed, timestamped
//! event per request into a per-CPU channel, and a consumer in another
//! process that opens the whole channel in one call, decodes the events and
//! tallies them (per-status counts, latency percentiles).
//!
//! The check does not trust the library's counters for what arrived: the
//! consumer decodes every event's own worker and sequence number, so the
//! test counts what was delivered (and that nothing came twice or damaged)
//! itself, and then requires `delivered + lost == offered` exactly, where
//! `offered` is what the workers counted and `lost` what the channel counted
//! as dropped, overwritten, discarded or left unread. Both modes, with the
//! blocking and the async reader. (The test binary runs itself as the
//! consumer: `consumer`, active only when `RELAYFS_TEST_CONSUMER` is set.)

#![cfg(feature = "tokio")]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use relayfs::frame::ChannelRecords;
use relayfs::{AsyncChannelRecords, AsyncReaders, Channel, Mode, Readers};

const ROLE: &str = "RELAYFS_TEST_CONSUMER";
const WORKERS: u64 = 4;
const REQUESTS: u64 = 30_000;
const STATUSES: [u16; 4] = [200, 304, 404, 500];

/// Request `seq` of `worker`: worker (1 byte), seq (8), status (2), latency
/// in µs (4), then a path of 0 to 40 bytes derived from the rest.
fn event(worker: u64, seq: u64) -> Vec<u8> {
    let status = STATUSES[((seq * 7 + worker) % 4) as usize];
    let latency = ((seq * 2_654_435_761 + worker) % 100_000) as u32;
    let mut v = vec![worker as u8];
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&status.to_le_bytes());
    v.extend_from_slice(&latency.to_le_bytes());
    let path_len = ((seq + worker * 13) % 41) as usize;
    v.extend((0..path_len).map(|i| b'a' + ((seq as usize + i) % 26) as u8));
    v
}

/// What the consumer found, one line of `key value` pairs on stdout.
#[derive(Debug, Default)]
struct Tally {
    delivered: u64,
    damaged: u64,
    duplicates: u64,
    frame_errors: u64,
    /// Events whose timestamp is older than the previous one of the same
    /// worker on the same buffer.
    backwards: u64,
    discarded: u64,
    per_status: [u64; 4],
    p50_us: u64,
    p99_us: u64,
}

impl Tally {
    fn line(&self) -> String {
        format!(
            "delivered {} damaged {} duplicates {} frame_errors {} backwards {} discarded {} \
             s200 {} s304 {} s404 {} s500 {} p50_us {} p99_us {}",
            self.delivered,
            self.damaged,
            self.duplicates,
            self.frame_errors,
            self.backwards,
            self.discarded,
            self.per_status[0],
            self.per_status[1],
            self.per_status[2],
            self.per_status[3],
            self.p50_us,
            self.p99_us
        )
    }

    fn parse(line: &str) -> Tally {
        let words: Vec<&str> = line.split_whitespace().collect();
        let get = |k: &str| -> u64 {
            let at = words
                .iter()
                .position(|w| *w == k)
                .unwrap_or_else(|| panic!("no {k} in {line:?}"));
            words[at + 1].parse().unwrap()
        };
        Tally {
            delivered: get("delivered"),
            damaged: get("damaged"),
            duplicates: get("duplicates"),
            frame_errors: get("frame_errors"),
            backwards: get("backwards"),
            discarded: get("discarded"),
            per_status: [get("s200"), get("s304"), get("s404"), get("s500")],
            p50_us: get("p50_us"),
            p99_us: get("p99_us"),
        }
    }
}

/// The consumer's bookkeeping of one decoded event.
#[derive(Default)]
struct Seen {
    tally: Tally,
    ids: HashSet<(u64, u64)>,
    latencies: Vec<u32>,
    /// Last timestamp per (buffer, worker).
    last_ts: std::collections::HashMap<(usize, u64), u64>,
}

impl Seen {
    fn event(&mut self, buffer: usize, ts: Option<u64>, payload: &[u8]) {
        if payload.len() < 15 {
            self.tally.damaged += 1;
            return;
        }
        let worker = payload[0] as u64;
        let seq = u64::from_le_bytes(payload[1..9].try_into().unwrap());
        if worker >= WORKERS || seq >= REQUESTS || payload != event(worker, seq) {
            self.tally.damaged += 1;
            return;
        }
        if !self.ids.insert((worker, seq)) {
            self.tally.duplicates += 1;
            return;
        }
        self.tally.delivered += 1;
        let status = u16::from_le_bytes(payload[9..11].try_into().unwrap());
        let k = STATUSES.iter().position(|s| *s == status).unwrap();
        self.tally.per_status[k] += 1;
        self.latencies
            .push(u32::from_le_bytes(payload[11..15].try_into().unwrap()));
        match ts {
            None => self.tally.damaged += 1,
            Some(t) => {
                let last = self.last_ts.entry((buffer, worker)).or_insert(0);
                if t < *last {
                    self.tally.backwards += 1;
                }
                *last = t;
            }
        }
    }

    fn finish(mut self, discarded: u64) -> Tally {
        self.latencies.sort_unstable();
        let pct = |p: usize| {
            self.latencies
                .get((self.latencies.len() * p / 100).min(self.latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0) as u64
        };
        self.tally.p50_us = pct(50);
        self.tally.p99_us = pct(99);
        self.tally.discarded = discarded;
        self.tally
    }
}

/// The consumer process: opens the channel by name under `RELAYFS_DIR`,
/// decodes every event of every buffer until the server closes the
/// channel, and prints its tally.
#[test]
fn consumer() {
    let Ok(how) = std::env::var(ROLE) else {
        return;
    };
    let wait = Some(Duration::from_secs(20));
    let mut seen = Seen::default();
    let discarded = if how == "async" {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let readers = AsyncReaders::open("web", wait).unwrap();
            let mut records = AsyncChannelRecords::new(readers);
            while let Some((buffer, rec)) = records.next_record().await {
                match rec {
                    Ok(r) => seen.event(buffer, r.timestamp, r.payload),
                    Err(e) => {
                        eprintln!("buffer {buffer}: {e}");
                        seen.tally.frame_errors += 1;
                    }
                }
            }
            let readers = records.into_readers();
            (0..readers.len())
                .map(|i| readers.get(i).unwrap().stats().discarded_records)
                .sum()
        })
    } else {
        let readers = Readers::open("web", wait).unwrap();
        let mut records = ChannelRecords::new(readers);
        while let Some((buffer, rec)) = records.next_record() {
            match rec {
                Ok(r) => seen.event(buffer, r.timestamp, r.payload),
                Err(e) => {
                    eprintln!("buffer {buffer}: {e}");
                    seen.tally.frame_errors += 1;
                }
            }
        }
        records.readers().stats().discarded_records
    };
    println!("{}", seen.finish(discarded).line());
}

/// Runs the server in this process and the consumer (`how`: "blocking" or
/// "async") in a child, and checks that the counts add up.
fn serve(mode: Mode, how: &str) {
    let root = tempfile::tempdir().unwrap();
    let consumer = spawn_consumer(root.path(), how);
    // Small buffers, so that a burst outruns the consumer now and then:
    // records are then dropped (or overwritten) and must be counted.
    let chan = Arc::new(
        Channel::builder("web")
            .relay_dir(root.path())
            .subbuf_size(8 << 10)
            .n_subbufs(4)
            .mode(mode)
            .open()
            .unwrap(),
    );
    assert!(
        chan.wait_for_readers(Duration::from_secs(20)),
        "the consumer never attached"
    );
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let chan = chan.clone();
            std::thread::spawn(move || {
                let (mut ok, mut refused) = (0u64, 0u64);
                for seq in 0..REQUESTS {
                    match chan.write_record_timed(&event(w, seq)) {
                        Ok(()) => ok += 1,
                        Err(_) => refused += 1,
                    }
                    if seq % 4096 == 0 {
                        // A pause now and then, as a server between bursts.
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for w in workers {
        let (o, r) = w.join().unwrap();
        ok += o;
        refused += r;
    }
    let offered = WORKERS * REQUESTS;
    assert_eq!(ok + refused, offered);
    let stats = chan.close().unwrap();
    let out = consumer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The harness prints "test consumer ... " before the tally.
    let line = stdout
        .lines()
        .find_map(|l| l.find("delivered ").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no tally in {stdout:?}"));
    let t = Tally::parse(line);
    eprintln!("{mode:?}/{how}: offered {offered} accepted {ok} {stats:?}\n  {line}");

    // What arrived is whole, once, and in each writer's time order.
    assert_eq!(t.damaged, 0, "{line}");
    assert_eq!(t.duplicates, 0, "{line}");
    assert_eq!(t.frame_errors, 0, "{line}");
    assert_eq!(t.backwards, 0, "{line}");
    assert_eq!(t.per_status.iter().sum::<u64>(), t.delivered);
    // The channel accepted what the workers saw accepted, and refused (and
    // counted) the rest.
    assert_eq!(stats.records_written(), ok);
    let refused_counted =
        stats.dropped_full + stats.dropped_toobig + stats.dropped_corrupt + stats.dropped_closed;
    assert_eq!(refused_counted, refused);
    // Every accepted record was delivered, or overwritten before anyone
    // read it, or discarded by the reader that found it overwritten while
    // reading, or left unread: exactly, no more, no less.
    let lost_after_accept = stats.overwritten_records + t.discarded + stats.unread_at_close;
    assert_eq!(
        t.delivered + lost_after_accept,
        ok,
        "delivered {} + overwritten {} + discarded {} + unread {} != accepted {ok}",
        t.delivered,
        stats.overwritten_records,
        t.discarded,
        stats.unread_at_close
    );
    assert_eq!(t.delivered + refused_counted + lost_after_accept, offered);
    if mode == Mode::NoOverwrite {
        assert_eq!(stats.overwritten_records + t.discarded, 0);
    }
}

fn spawn_consumer(root: &Path, how: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["consumer", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, how)
        .env("RELAYFS_DIR", PathBuf::from(root))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_web_server_traced_with_framed_events_adds_up_no_overwrite() {
    serve(Mode::NoOverwrite, "blocking");
}

#[test]
fn a_web_server_traced_with_framed_events_adds_up_overwrite() {
    serve(Mode::Overwrite, "blocking");
}

#[test]
fn a_web_server_read_by_the_async_reader_adds_up_no_overwrite() {
    serve(Mode::NoOverwrite, "async");
}

#[test]
fn a_web_server_read_by_the_async_reader_adds_up_overwrite() {
    serve(Mode::Overwrite, "async");
}
