//! The layer's records, read back from the channel's buffers and decoded.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use relayfs::frame::Records;
use relayfs::{Channel, RelayFile};
use relayfs_tracing::decode::{self, Problem};
use relayfs_tracing::wire::{self, Item, Value};
use relayfs_tracing::RelayLayer;
use tracing_subscriber::prelude::*;

/// A channel in a temporary directory, its readers, and a dispatcher with
/// the layer.
struct Rig {
    _dir: tempfile::TempDir,
    chan: Arc<Channel>,
    readers: Vec<RelayFile>,
    dispatch: tracing::Dispatch,
    layer_lost: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// The layer's clock, `"tsc"` or `"monotonic"`.
    clock: &'static str,
    layer: RelayLayer,
}

fn rig(global: bool, subbuf: u64, n: u64, readers: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let chan = Arc::new(
        Channel::builder("trace")
            .dir(dir.path())
            .subbuf_size(subbuf)
            .n_subbufs(n)
            .global(global)
            .open()
            .unwrap(),
    );
    let readers = if readers {
        (0..chan.n_buffers())
            .map(|i| RelayFile::open(chan.buffer_path(i)).unwrap())
            .collect()
    } else {
        Vec::new()
    };
    let layer = RelayLayer::new(chan.clone());
    let clock = layer.clock();
    let l2 = layer.clone();
    let layer_kept = layer.clone();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    Rig {
        _dir: dir,
        chan,
        readers,
        dispatch,
        layer_lost: Arc::new(move || l2.lost_pending()),
        clock,
        layer: layer_kept,
    }
}

/// Everything a reader reads from a buffer until the channel's end.
fn drain(r: &mut RelayFile) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Everything a reader reads from a live buffer, until its channel is
/// closed (or its producer gone) and everything is read.
fn drain_live(r: &mut RelayFile) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n > 0 {
            out.extend_from_slice(&buf[..n]);
            continue;
        }
        match r.poll(Some(std::time::Duration::from_millis(100))).unwrap() {
            relayfs::Ready::Readable | relayfs::Ready::Timeout => {}
            _ => {
                out.append(&mut drain(r));
                return out;
            }
        }
    }
}

fn close_and_read(rig: &mut Rig) -> Vec<(String, Vec<u8>)> {
    rig.chan.close().unwrap();
    rig.readers
        .iter_mut()
        .enumerate()
        .map(|(i, r)| (format!("cpu{i}"), drain(r)))
        .collect()
}

fn decode_json(
    streams: Vec<(String, Vec<u8>)>,
) -> (Vec<serde_json::Value>, Vec<Problem>, decode::Stats) {
    let streams = streams
        .into_iter()
        .map(|(n, b)| (n, Box::new(std::io::Cursor::new(b)) as Box<dyn Read>))
        .collect();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let stats =
        decode::decode_streams(streams, true, &mut out, &mut |p| problems.push(p.clone())).unwrap();
    let lines = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (lines, problems, stats)
}

#[derive(Debug)]
struct TestError(&'static str, Option<Box<TestError>>);
impl std::fmt::Display for TestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
impl std::error::Error for TestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.1.as_deref().map(|e| e as _)
    }
}

#[test]
fn every_field_type_round_trips() {
    let mut rig = rig(true, 4096, 4, true);
    let err = TestError("outer", Some(Box::new(TestError("inner", None))));
    let values: Vec<i64> = vec![i64::MIN, -1, 0, 1, 300, i64::MAX];
    // A string whose length takes a two-byte varint, once i is 300.
    let long = |i: i64| "é".repeat(i.clamp(0, 300) as usize);
    tracing::dispatcher::with_default(&rig.dispatch, || {
        for &i in &values {
            let l = long(i);
            tracing::warn!(
                target: "types",
                i,
                u = i.unsigned_abs(),
                big = i128::from(i) * i128::from(i64::MAX),
                ubig = u128::from(i.unsigned_abs()) << 64 | 5,
                f = i as f64 / 3.0,
                yes = i >= 0,
                s = "a \"quoted\"\nstring",
                l = l.as_str(),
                d = ?vec![i, 2],
                e = &err as &(dyn std::error::Error + 'static),
                "message {}",
                i
            );
        }
    });
    let layer_clock = rig.clock;
    let streams = close_and_read(&mut rig);
    assert_eq!(streams.len(), 1);

    // Straight from the records.
    // Callsites of other tests' events may be registered with this
    // dispatcher too: only those of the events are checked.
    let mut names: HashMap<u64, Vec<String>> = HashMap::new();
    let mut targets: HashMap<u64, String> = HashMap::new();
    let mut seen = 0;
    for r in Records::from_reader(&streams[0].1[..]) {
        let r = r.unwrap();
        assert!(r.timestamp.is_some());
        match wire::parse(&r.payload).unwrap() {
            Item::Callsite(c) => {
                if c.target == "types" {
                    assert_eq!(wire::LEVELS[c.level as usize], "WARN");
                    assert!(c.file.ends_with("layer.rs"));
                    assert!(c.line.is_some());
                }
                targets.insert(c.id, c.target.to_string());
                names.insert(c.id, c.fields.iter().map(|s| s.to_string()).collect());
            }
            Item::Event {
                callsite,
                values: vals,
                thread,
            } => {
                assert!(thread > 0);
                assert_eq!(targets[&callsite], "types");
                let names = &names[&callsite];
                let got: HashMap<&str, Value<'_>> = vals
                    .map(|v| v.unwrap())
                    .map(|(k, v)| (names[k as usize].as_str(), v))
                    .collect();
                let i = values[seen];
                assert_eq!(got["i"], Value::I64(i));
                assert_eq!(got["u"], Value::U64(i.unsigned_abs()));
                assert_eq!(
                    got["big"],
                    Value::I128(i128::from(i) * i128::from(i64::MAX))
                );
                assert_eq!(
                    got["ubig"],
                    Value::U128(u128::from(i.unsigned_abs()) << 64 | 5)
                );
                assert_eq!(got["f"], Value::F64(i as f64 / 3.0));
                assert_eq!(got["yes"], Value::Bool(i >= 0));
                assert_eq!(got["s"], Value::Str("a \"quoted\"\nstring"));
                assert_eq!(got["l"], Value::Str(&long(i)));
                assert_eq!(got["d"], Value::Debug(&format!("{:?}", vec![i, 2])));
                assert_eq!(got["e"], Value::Error("outer: inner"));
                assert_eq!(got["message"], Value::Debug(&format!("message {i}")));
                seen += 1;
            }
            Item::Clock {
                monotonic,
                realtime,
            } => {
                assert!(monotonic > 0 && realtime > monotonic);
            }
            // The layer on the TSC clock anchors it.
            Item::Anchor { clock, monotonic } => {
                assert_eq!(layer_clock, "tsc");
                assert!(clock > 0 && monotonic > 0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, values.len());

    // Through the decoder's JSON lines.
    let (lines, problems, stats) = decode_json(streams);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(stats.events, values.len() as u64);
    assert_eq!(lines.len(), values.len());
    for (l, &i) in lines.iter().zip(&values) {
        let f = &l["fields"];
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["target"], "types");
        assert_eq!(f["i"], i);
        assert_eq!(f["u"], i.unsigned_abs());
        assert_eq!(f["yes"], i >= 0);
        assert_eq!(f["s"], "a \"quoted\"\nstring");
        assert_eq!(f["l"], long(i));
        assert_eq!(f["e"], "outer: inner");
        assert_eq!(f["message"], format!("message {i}"));
        assert_eq!(f["f"].as_f64(), Some(i as f64 / 3.0));
    }
}

#[test]
fn spans_show_in_the_events_inside_them() {
    let mut rig = rig(true, 4096, 4, true);
    tracing::dispatcher::with_default(&rig.dispatch, || {
        let outer = tracing::info_span!("outer", job = 7);
        let _g = outer.enter();
        let inner = tracing::debug_span!("inner", step = tracing::field::Empty);
        inner.record("step", "two");
        inner.in_scope(|| tracing::info!("inside"));
        drop(inner);
        tracing::info!("outside inner");
    });
    let streams = close_and_read(&mut rig);
    let (lines, problems, _) = decode_json(streams.clone());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(lines.len(), 2);
    let spans = lines[0]["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0]["name"], "outer");
    assert_eq!(spans[0]["job"], 7);
    assert_eq!(spans[1]["name"], "inner");
    assert_eq!(spans[1]["step"], "two");
    assert_eq!(lines[1]["spans"].as_array().unwrap().len(), 1);

    // Text like fmt's.
    let mut out = Vec::new();
    let s = streams
        .into_iter()
        .map(|(n, b)| (n, Box::new(std::io::Cursor::new(b)) as Box<dyn Read>))
        .collect();
    decode::decode_streams(s, false, &mut out, &mut |p| panic!("{p}")).unwrap();
    let text = String::from_utf8(out).unwrap();
    let first = text.lines().next().unwrap();
    assert!(
        first.contains("  INFO outer{job=7}:inner{step=\"two\"}: layer: inside"),
        "{first}"
    );
}

#[test]
fn events_of_several_threads_come_out_in_time_order() {
    let mut rig = rig(false, 1 << 16, 8, true);
    const THREADS: u64 = 4;
    const EACH: u64 = 2000;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let d = rig.dispatch.clone();
            s.spawn(move || {
                // Spread over two CPUs where there are two; where there are
                // not, the threads share what there is.
                let _ = relayfs::cpu::pin_current_thread(t as usize % 2);
                tracing::dispatcher::with_default(&d, || {
                    for i in 0..EACH {
                        tracing::info!(t, i, "tick");
                        if i % 256 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            });
        }
    });
    assert_eq!((rig.layer_lost)(), 0);
    let clock = rig.clock;
    let streams = close_and_read(&mut rig);
    // On the TSC clock (the default where the kernel keeps time with it)
    // the streams carry anchors, which the decoder maps the times with.
    let anchors = streams
        .iter()
        .flat_map(|(_, b)| Records::from_reader(&b[..]).map(|r| r.unwrap()))
        .filter(|r| r.payload.first() == Some(&wire::KIND_ANCHOR))
        .count();
    assert_eq!(
        anchors > 0,
        clock == "tsc",
        "{anchors} anchors, {clock} clock"
    );
    eprintln!("time order checked on the {clock} clock");
    let (lines, problems, stats) = decode_json(streams);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(stats.events, THREADS * EACH);
    let mut next = vec![0u64; THREADS as usize];
    let mut tids: HashMap<usize, u64> = HashMap::new();
    let mut last = (0u64, String::new());
    let mut back = 0;
    for l in &lines {
        let ts = l["time_ns"].as_u64().unwrap();
        let buffer = l["buffer"].as_str().unwrap().to_string();
        // Time order across buffers always; within one buffer a record can
        // hold a slightly later time than the next (two writers on one CPU
        // racing between reservation and clock read): counted.
        if ts < last.0 {
            assert_eq!(
                buffer, last.1,
                "time goes back across buffers: {ts} after {}",
                last.0
            );
            back += 1;
        } else {
            last = (ts, buffer);
        }
        let t = l["fields"]["t"].as_u64().unwrap() as usize;
        // Each thread's events carry its own id, whichever thread's came
        // before.
        let id = l["threadId"].as_u64().unwrap();
        assert_eq!(*tids.entry(t).or_insert(id), id, "{l}");
        // Each thread's events in its own order, none missing or doubled.
        assert_eq!(l["fields"]["i"].as_u64().unwrap(), next[t]);
        next[t] += 1;
    }
    assert!(next.iter().all(|&n| n == EACH));
    let mut ids: Vec<u64> = tids.values().copied().collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), THREADS as usize, "{tids:?}");
    // The decoder counts every record that goes back, the callsite and
    // clock records (not lines) too: one of those can race an event.
    let not_events = stats.records - stats.events;
    assert!(
        back <= stats.out_of_order && stats.out_of_order <= back + not_events,
        "{} out of order, {back} events going back, {not_events} other records",
        stats.out_of_order
    );
}

#[test]
fn drops_show_up_where_they_happened() {
    // A tiny buffer, no reader yet, no overwrite: the first events fill it
    // and the rest are refused.
    let mut rig = rig(true, 256, 2, false);
    let before: u64 = 200;
    tracing::dispatcher::with_default(&rig.dispatch, || {
        for i in 0..before {
            tracing::info!(i, "before");
        }
    });
    let refused = (rig.layer_lost)();
    assert!(refused > 0 && refused < before, "refused {refused}");
    // One refused record per event lost: the counts the layer carries are
    // not written (and refused) on their own before each event. Another
    // test's thread may meet a new callsite meanwhile, whose record this
    // full channel refuses too, so the channel's count can only be ahead.
    assert!(rig.chan.total_stats().dropped_full >= refused);
    // A reader comes and drains the buffer, which makes room.
    let mut r = RelayFile::open(rig.chan.buffer_path(0)).unwrap();
    let mut first = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        first.extend_from_slice(&buf[..n]);
    }
    tracing::dispatcher::with_default(&rig.dispatch, || tracing::info!("after"));
    assert_eq!((rig.layer_lost)(), 0, "the lost record went in");
    // Every refusal, counted by the channel and not by the layer: the
    // decoder must find each of them in the loss records it reads.
    let refused = rig.chan.total_stats().dropped_full;
    rig.readers.push(r);
    let mut rest = close_and_read(&mut rig);
    first.append(&mut rest[0].1);
    let (lines, problems, stats) = decode_json(vec![("cpu0".into(), first)]);
    assert!(problems.is_empty(), "{problems:?}");
    // The callsite registry is the process's: a callsite another test's
    // thread meets meanwhile is registered with this layer too, whose
    // record of it this full channel refuses, counted as a lost callsite
    // (not an event). Every refusal is one or the other.
    assert_eq!(stats.lost_events + stats.lost_callsites, refused);
    assert!(stats.lost_events > 0);
    let kept = before - stats.lost_events;
    // The kept events in order, then the loss, then the event after it.
    for (k, l) in lines[..kept as usize].iter().enumerate() {
        assert_eq!(l["fields"]["i"], k as u64, "{l}");
    }
    let lost = &lines[kept as usize];
    assert_eq!(lost["lost"], stats.lost_events, "{lost}");
    assert_eq!(lost["buffer"], "cpu0");
    assert_eq!(lines[kept as usize + 1]["fields"]["message"], "after");
    assert_eq!(lines.len() as u64, kept + 2);
}

/// `flush_lost` on a channel full to the end (no reader ever came): its
/// lost record (and, on the TSC clock, its anchor) is refused too, and
/// counted by the channel; the layer must count it as well, so that what
/// it says is pending is every write the channel refused.
#[test]
fn a_refused_flush_is_counted_by_the_layer_as_by_the_channel() {
    let rig = rig(true, 256, 2, false);
    tracing::dispatcher::with_default(&rig.dispatch, || {
        for i in 0..100u64 {
            tracing::info!(i, "fill");
        }
    });
    let layer_pending = || (rig.layer_lost)();
    assert!(layer_pending() > 0);
    for _ in 0..3 {
        rig.layer.flush_lost();
    }
    assert_eq!(
        rig.chan.total_stats().dropped_full,
        layer_pending(),
        "every refused write counted by the layer too"
    );
}

/// Several threads writing into a buffer that a reader drains but that
/// keeps filling: when two threads take the same pending losses at once,
/// each must report its own share, never both the same counts (reported
/// twice, then the counter wraps and a later record says 2^64 - 1 events
/// were lost). Every loss line is a plausible count, and they add up to
/// the channel's.
#[test]
fn losses_taken_by_two_threads_at_once_are_reported_once() {
    for round in 0..5 {
        let mut rig = rig(true, 1024, 2, true);
        let mut r = rig.readers.pop().unwrap();
        let reader = std::thread::spawn(move || drain_live(&mut r));
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let d = rig.dispatch.clone();
                s.spawn(move || {
                    let _ = relayfs::cpu::pin_current_thread(t as usize % 2);
                    tracing::dispatcher::with_default(&d, || {
                        for i in 0..20_000u64 {
                            tracing::info!(t, i, "x");
                        }
                    })
                });
            }
        });
        rig.layer.flush_lost();
        let dropped = rig.chan.total_stats().dropped_full;
        let pending = (rig.layer_lost)();
        rig.chan.close().unwrap();
        let bytes = reader.join().unwrap();
        let (lines, problems, stats) = decode_json(vec![("cpu0".into(), bytes)]);
        assert!(problems.is_empty(), "{problems:?}");
        for l in &lines {
            if let Some(n) = l["lost"].as_u64() {
                assert!(n <= dropped, "round {round}: {n} lost of {dropped}: {l}");
            }
        }
        assert_eq!(
            stats.lost_events + stats.lost_callsites + pending,
            dropped,
            "round {round}"
        );
    }
}

#[test]
fn garbage_and_cut_records_are_problems_with_offsets() {
    let mut rig = rig(true, 4096, 4, true);
    tracing::dispatcher::with_default(&rig.dispatch, || {
        for i in 0..10 {
            tracing::info!(i, "x");
        }
    });
    let streams = close_and_read(&mut rig);
    let good = streams[0].1.clone();
    // Every cut and every flipped byte: problems maybe, never a panic.
    for cut in 0..good.len() {
        let (_, problems, _) = decode_json(vec![("cpu0".into(), good[..cut].to_vec())]);
        for p in &problems {
            assert!(p.offset.is_some(), "{p}");
        }
    }
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x5a;
        let _ = decode_json(vec![("cpu0".into(), bad)]);
    }
    let (lines, problems, _) = decode_json(vec![("cpu0".into(), good[..good.len() - 3].to_vec())]);
    assert_eq!(lines.len(), 9);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].message.contains("ends inside a record"),
        "{}",
        problems[0]
    );
}

/// The example application, run as a user would, recorded by a reader in
/// this process.
#[test]
fn the_example_application_traces_into_its_channel() {
    // Examples are built next to the test binaries' directory (`cargo test
    // -p relayfs-tracing` builds them; a filter such as `--test layer` does not).
    let exe = std::env::current_exe().unwrap();
    let app = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("examples").join("traced_app"))
        .unwrap();
    assert!(app.exists(), "{} is not built", app.display());
    let root = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(&app)
        .args(["app", "3", "60"])
        .env("RELAYFS_DIR", root.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for its channel, then read every buffer it has.
    let chan_dir = root.path().join("app");
    let t = std::time::Instant::now();
    while !chan_dir.join("cpu0").exists() {
        assert!(t.elapsed().as_secs() < 60, "no channel");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let first = RelayFile::open(chan_dir.join("cpu0")).unwrap();
    let n = first.header().n_buffers as usize;
    let mut readers = vec![first];
    for i in 1..n {
        readers.push(RelayFile::open(chan_dir.join(format!("cpu{i}"))).unwrap());
    }
    let streams: Vec<(String, Vec<u8>)> = readers
        .iter_mut()
        .enumerate()
        .map(|(i, r)| (format!("cpu{i}"), drain_live(r)))
        .collect();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (lines, problems, stats) = decode_json(streams);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(stats.lost_events + stats.lost_records, 0);
    // 3 workers x 60 jobs, a warning every 50 jobs, a last word each, and
    // the first and last lines.
    assert_eq!(stats.events, 3 * 60 + 3 + 3 + 2);
    assert_eq!(lines.first().unwrap()["fields"]["message"], "starting");
    assert_eq!(lines.last().unwrap()["fields"]["message"], "finished");
    let working = lines
        .iter()
        .find(|l| l["fields"]["message"] == "working")
        .unwrap();
    let spans = working["spans"].as_array().unwrap();
    assert_eq!(spans[0]["name"], "worker");
    assert_eq!(spans[1]["name"], "job");
    assert_eq!(working["level"], "DEBUG");
    let done = lines
        .iter()
        .find(|l| l["fields"]["message"] == "worker done")
        .unwrap();
    assert_eq!(done["fields"]["error"], "disk on fire");
}

/// A ring in overwrite mode reuses its oldest sub-buffers: the callsite
/// record (and the clock record) written first are gone by the time the
/// reader comes. The events still decode, as an unknown callsite with their
/// values by position.
#[test]
fn events_whose_callsite_record_was_overwritten_still_decode() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Arc::new(
        Channel::builder("ow")
            .dir(dir.path())
            .subbuf_size(512)
            .n_subbufs(2)
            .global(true)
            .callbacks(relayfs::OverwriteCallbacks)
            .open()
            .unwrap(),
    );
    let d =
        tracing::Dispatch::new(tracing_subscriber::registry().with(RelayLayer::new(chan.clone())));
    const N: u64 = 500;
    tracing::dispatcher::with_default(&d, || {
        for i in 0..N {
            tracing::info!(i, "wrapping");
        }
    });
    assert!(chan.total_stats().overwritten_records > 0);
    let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
    chan.close().unwrap();
    let bytes = drain(&mut r);
    let (lines, problems, stats) = decode_json(vec![("cpu0".into(), bytes)]);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(stats.events > 0 && stats.events < N);
    let mut last = None;
    for l in &lines {
        assert!(l["unknown_callsite"].as_u64().is_some(), "{l}");
        assert_eq!(l["target"], serde_json::Value::Null);
        // The values by position: 0 is the message, 1 is `i`.
        assert_eq!(l["fields"]["field0"], "wrapping");
        let i = l["fields"]["field1"].as_i64().unwrap();
        assert!(last.is_none_or(|p| i == p + 1), "{i} after {last:?}");
        last = Some(i);
    }
    assert_eq!(last, Some(N as i64 - 1));
}

/// The layer's timestamps are `CLOCK_MONOTONIC` nanoseconds whichever
/// clock it reads (the TSC is scaled and based on `CLOCK_MONOTONIC`), so
/// they compare with other timed writers' and with the decoder's clock.
#[test]
fn the_layers_clock_counts_monotonic_nanoseconds() {
    let rig = rig(true, 4096, 4, false);
    let layer = RelayLayer::new(rig.chan.clone());
    assert!(
        ["tsc", "monotonic"].contains(&layer.clock()),
        "{}",
        layer.clock()
    );
    // Not a timing: how far two clocks may disagree, the TSC's rate being
    // calibrated, and its error growing with the time since the layer was
    // made.
    const SLACK: u64 = 100_000_000;
    for _ in 0..1000 {
        let a = relayfs::frame::now();
        let t = layer.now();
        let b = relayfs::frame::now();
        assert!(
            t + SLACK >= a && t <= b + SLACK,
            "{} clock at {t}, CLOCK_MONOTONIC {a}..{b}",
            layer.clock()
        );
    }
    let mono = RelayLayer::with_monotonic_clock(rig.chan.clone());
    assert_eq!(mono.clock(), "monotonic");
    let a = relayfs::frame::now();
    let t = mono.now();
    let b = relayfs::frame::now();
    assert!(a <= t && t <= b, "{t} not in {a}..{b}");
}

/// Two layers (two channels, each with its own callsite ids) used in turn
/// by one thread: each event comes out of its own channel with its own
/// callsite's fields, the thread's cache of its last callsite
/// notwithstanding.
#[test]
fn two_layers_in_turn_keep_their_own_callsite_ids() {
    fn p(n: u64) {
        tracing::info!(p = n, "first");
    }
    fn q(n: u64) {
        tracing::warn!(q = n, "second");
    }
    fn r(n: u64) {
        tracing::error!(r = n, "third");
    }
    let mut a = rig(true, 1 << 16, 4, true);
    // The first layer sees its callsites before the second is made, so
    // their ids differ from the second's (which registers every callsite
    // of the process when it is made).
    tracing::dispatcher::with_default(&a.dispatch, || {
        r(0);
        q(0);
    });
    let mut b = rig(true, 1 << 16, 4, true);
    const N: u64 = 50;
    for i in 1..=N {
        // The same callsite in both, one after the other.
        for d in [&a.dispatch, &b.dispatch, &a.dispatch] {
            tracing::dispatcher::with_default(d, || match i % 3 {
                0 => p(i),
                1 => q(i),
                _ => r(i),
            });
        }
    }
    for (rig, per_round) in [(&mut a, 2), (&mut b, 1)] {
        let (lines, problems, stats) = decode_json(close_and_read(rig));
        assert!(problems.is_empty(), "{problems:?}");
        let events: Vec<_> = lines.iter().filter(|l| l["level"] != "LOST").collect();
        assert_eq!(stats.events, events.len() as u64);
        assert!(events.len() as u64 >= per_round * N);
        for l in events {
            let f = &l["fields"];
            let (field, level) = match f["message"].as_str().unwrap() {
                "first" => ("p", "INFO"),
                "second" => ("q", "WARN"),
                "third" => ("r", "ERROR"),
                m => panic!("message {m}: {l}"),
            };
            assert!(f[field].is_u64(), "{l}");
            assert_eq!(l["level"], level, "{l}");
        }
    }
}
