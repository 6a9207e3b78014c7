//! The TSC clock's anchor records: the decoder maps the layer's scaled-TSC
//! timestamps to `CLOCK_MONOTONIC` between them, so a wrong TSC rate does
//! not show in the decoded times; recordings without anchors decode as
//! they always did; anchors are never shown as events; a recording cut
//! inside an anchor is a clear problem.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use relayfs::frame::Records;
use relayfs::{Channel, RelayFile};
use relayfs_tracing::decode::{self, Problem};
use relayfs_tracing::wire::{self, Item};
use relayfs_tracing::RelayLayer;
use tracing_subscriber::prelude::*;

/// Whether this machine's kernel keeps time with an invariant TSC and the
/// `tsc` feature is on (where the layer's default clock is the TSC).
fn machine_has_tsc() -> bool {
    if !cfg!(feature = "tsc") {
        return false;
    }
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .is_ok_and(|s| s.trim() == "tsc");
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = flags.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    source
        && flags.split_whitespace().any(|f| f == "constant_tsc")
        && flags.split_whitespace().any(|f| f == "nonstop_tsc")
}

/// Says loudly that a test cannot run here (no TSC clock).
fn no_tsc(test: &str) {
    eprintln!(
        "*** {test}: the kernel's clocksource is not an invariant TSC here, \
         or the `tsc` feature is off: the layer uses CLOCK_MONOTONIC and writes \
         no anchors; not tested ***"
    );
}

fn channel(dir: &std::path::Path, global: bool) -> (Arc<Channel>, Vec<RelayFile>) {
    let chan = Arc::new(
        Channel::builder("anchors")
            .dir(dir)
            .subbuf_size(1 << 16)
            .n_subbufs(8)
            .global(global)
            .open()
            .unwrap(),
    );
    let readers = (0..chan.n_buffers())
        .map(|i| RelayFile::open(chan.buffer_path(i)).unwrap())
        .collect();
    (chan, readers)
}

fn close_and_read(chan: &Channel, readers: &mut [RelayFile]) -> Vec<(String, Vec<u8>)> {
    chan.close().unwrap();
    readers
        .iter_mut()
        .enumerate()
        .map(|(i, r)| {
            let mut b = Vec::new();
            r.read_to_end(&mut b).unwrap();
            (format!("cpu{i}"), b)
        })
        .collect()
}

fn decode(
    streams: &[(String, Vec<u8>)],
    json: bool,
) -> (String, Vec<Problem>, relayfs_tracing::decode::Stats) {
    let streams = streams
        .iter()
        .map(|(n, b)| {
            (
                n.clone(),
                Box::new(std::io::Cursor::new(b.clone())) as Box<dyn Read>,
            )
        })
        .collect();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let stats =
        decode::decode_streams(streams, json, &mut out, &mut |p| problems.push(p.clone())).unwrap();
    (String::from_utf8(out).unwrap(), problems, stats)
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Every record of the streams: (timestamp, item kind byte, payload).
fn records(streams: &[(String, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
    streams
        .iter()
        .flat_map(|(_, b)| Records::from_reader(&b[..]).map(|r| r.unwrap()))
        .map(|r| (r.timestamp.unwrap(), r.payload))
        .collect()
}

/// The TSC's rate made 10 % wrong: the raw timestamps part from
/// `CLOCK_MONOTONIC` by far more than the bound, and the decoded times stay
/// within it of `CLOCK_MONOTONIC` readings taken around each event (between
/// anchors, and after the last one).
#[test]
fn a_wrong_tsc_rate_is_corrected_by_the_anchors() {
    if !machine_has_tsc() {
        return no_tsc("a_wrong_tsc_rate_is_corrected_by_the_anchors");
    }
    let dir = tempfile::tempdir().unwrap();
    // One buffer: the raw records in the events' order.
    let (chan, mut readers) = channel(dir.path(), true);
    const SKEW_PPM: i64 = 100_000;
    let layer = RelayLayer::with_skewed_tsc(chan.clone(), SKEW_PPM, Duration::from_millis(20));
    assert_eq!(layer.clock(), "tsc");
    let d = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    // CLOCK_MONOTONIC just before and just after each event.
    let mut around = Vec::new();
    tracing::dispatcher::with_default(&d, || {
        for i in 0..40u64 {
            let before = relayfs::frame::now();
            tracing::info!(i, "tick");
            let after = relayfs::frame::now();
            around.push((before, after));
            std::thread::sleep(Duration::from_millis(4));
        }
    });
    let streams = close_and_read(&chan, &mut readers);

    // The raw timestamps are off: the skew is real.
    let recs = records(&streams);
    let anchors = recs
        .iter()
        .filter(|(_, p)| p.first() == Some(&wire::KIND_ANCHOR))
        .count();
    assert!(anchors >= 3, "{anchors} anchors in 160 ms or more");
    let raw: Vec<u64> = recs
        .iter()
        .filter(|(_, p)| p.first() == Some(&wire::KIND_EVENT))
        .map(|(ts, _)| *ts)
        .collect();
    assert_eq!(raw.len(), around.len());
    // Not a timing: the 10 % error over the 160 ms or more of sleeps.
    const BOUND: u64 = 2_000_000;
    let worst_raw = raw
        .iter()
        .zip(&around)
        .map(|(&t, &(a, b))| t.saturating_sub(b).max(a.saturating_sub(t)))
        .max()
        .unwrap();
    assert!(
        worst_raw > 4 * BOUND,
        "the skewed clock is only {worst_raw} ns off CLOCK_MONOTONIC"
    );

    // The decoded times are CLOCK_MONOTONIC's.
    let (text, problems, stats) = decode(&streams, true);
    assert!(problems.is_empty(), "{problems:?}");
    let lines = json_lines(&text);
    assert_eq!(stats.events, around.len() as u64);
    assert_eq!(lines.len(), around.len(), "{text}");
    let mut sorted = lines.clone();
    sorted.sort_by_key(|l| l["fields"]["i"].as_u64().unwrap());
    for (l, &(a, b)) in sorted.iter().zip(&around) {
        let t = l["time_ns"].as_u64().unwrap();
        assert!(
            t + BOUND >= a && t <= b + BOUND,
            "event {} decoded at {t}, CLOCK_MONOTONIC {a}..{b}",
            l["fields"]["i"]
        );
    }
}

/// The anchors of a recording on the TSC clock are taken in by the decoder
/// and never shown: text and JSON have one line an event, in the time order
/// the merge gives, on every buffer.
#[test]
fn anchors_never_show_as_events() {
    if !machine_has_tsc() {
        return no_tsc("anchors_never_show_as_events");
    }
    let dir = tempfile::tempdir().unwrap();
    let (chan, mut readers) = channel(dir.path(), false);
    let layer = RelayLayer::with_skewed_tsc(chan.clone(), 0, Duration::from_millis(1));
    let d = tracing::Dispatch::new(tracing_subscriber::registry().with(layer.clone()));
    const EACH: u64 = 200;
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let d = d.clone();
            s.spawn(move || {
                let _ = relayfs::cpu::pin_current_thread(t as usize);
                tracing::dispatcher::with_default(&d, || {
                    for i in 0..EACH {
                        tracing::info!(t, i, "tick");
                        if i % 20 == 0 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                })
            });
        }
    });
    layer.flush_lost();
    let streams = close_and_read(&chan, &mut readers);
    let anchors = records(&streams)
        .iter()
        .filter(|(_, p)| matches!(wire::parse(p), Ok(Item::Anchor { .. })))
        .count();
    assert!(anchors >= 2, "{anchors} anchors");
    let (json, problems, stats) = decode(&streams, true);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(stats.events, 2 * EACH);
    let lines = json_lines(&json);
    assert_eq!(lines.len() as u64, 2 * EACH);
    assert!(lines.iter().all(|l| l["fields"]["message"] == "tick"));
    // Time order across buffers; within one, two writers on one CPU (where
    // pinning failed) may race between reservation and clock read.
    let mut last = (0, String::new());
    for l in &lines {
        let t = l["time_ns"].as_u64().unwrap();
        let buffer = l["buffer"].as_str().unwrap().to_string();
        if t < last.0 {
            assert_eq!(buffer, last.1, "{t} after {}", last.0);
        } else {
            last = (t, buffer);
        }
    }
    let (text, problems, _) = decode(&streams, false);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(text.lines().count() as u64, 2 * EACH, "{text}");
    assert!(text.lines().all(|l| l.contains("tick")), "{text}");
}

/// A recording without anchors (the layer on `CLOCK_MONOTONIC`, as every
/// recording before anchors) decodes with its timestamps as they are.
#[test]
fn a_recording_without_anchors_keeps_its_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let (chan, mut readers) = channel(dir.path(), true);
    let layer = RelayLayer::with_monotonic_clock(chan.clone());
    let d = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&d, || {
        for i in 0..50u64 {
            tracing::info!(i, "tick");
        }
    });
    let streams = close_and_read(&chan, &mut readers);
    let recs = records(&streams);
    assert!(recs
        .iter()
        .all(|(_, p)| p.first() != Some(&wire::KIND_ANCHOR)));
    let raw: Vec<u64> = recs
        .iter()
        .filter(|(_, p)| p.first() == Some(&wire::KIND_EVENT))
        .map(|(ts, _)| *ts)
        .collect();
    let (json, problems, _) = decode(&streams, true);
    assert!(problems.is_empty(), "{problems:?}");
    let times: Vec<u64> = json_lines(&json)
        .iter()
        .map(|l| l["time_ns"].as_u64().unwrap())
        .collect();
    assert_eq!(times, raw);
}

/// `RELAYFS_TRACING_CLOCK=monotonic` in the environment forces the
/// monotonic clock (in a child process: the test harness is threaded).
#[test]
fn the_environment_can_force_the_monotonic_clock() {
    if let Ok(want) = std::env::var("ANCHORS_TEST_CHILD") {
        let dir = tempfile::tempdir().unwrap();
        let (chan, _readers) = channel(dir.path(), true);
        let layer = RelayLayer::new(chan.clone());
        assert_eq!(layer.clock(), want);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for (env, want) in [
        (Some("monotonic"), "monotonic"),
        (
            None,
            if machine_has_tsc() {
                "tsc"
            } else {
                "monotonic"
            },
        ),
    ] {
        let mut c = std::process::Command::new(&exe);
        c.args([
            "--exact",
            "the_environment_can_force_the_monotonic_clock",
            "--nocapture",
        ])
        .env("ANCHORS_TEST_CHILD", want)
        .env_remove("RELAYFS_TRACING_CLOCK");
        if let Some(v) = env {
            c.env("RELAYFS_TRACING_CLOCK", v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{env:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A recording cut inside an anchor record decodes up to the last whole
/// record, with a problem naming the offset where the cut record starts.
#[test]
fn a_recording_cut_inside_an_anchor_stops_at_the_last_whole_record() {
    if !machine_has_tsc() {
        return no_tsc("a_recording_cut_inside_an_anchor_stops_at_the_last_whole_record");
    }
    let dir = tempfile::tempdir().unwrap();
    let (chan, mut readers) = channel(dir.path(), true);
    let layer = RelayLayer::with_skewed_tsc(chan.clone(), 0, Duration::from_secs(3600));
    let d = tracing::Dispatch::new(tracing_subscriber::registry().with(layer.clone()));
    tracing::dispatcher::with_default(&d, || {
        for i in 0..10u64 {
            tracing::info!(i, "tick");
        }
    });
    // The last record: an anchor.
    layer.flush_lost();
    let streams = close_and_read(&chan, &mut readers);
    let bytes = &streams[0].1;
    let last = Records::from_reader(&bytes[..])
        .map(|r| r.unwrap())
        .last()
        .unwrap();
    assert_eq!(last.payload.first(), Some(&wire::KIND_ANCHOR));
    for cut in last.offset as usize + 1..bytes.len() {
        let (json, problems, stats) = decode(&[("cpu0".into(), bytes[..cut].to_vec())], true);
        assert_eq!(stats.events, 10, "cut at {cut}");
        assert_eq!(json_lines(&json).len(), 10);
        assert_eq!(problems.len(), 1, "cut at {cut}: {problems:?}");
        assert_eq!(problems[0].offset, Some(last.offset), "{}", problems[0]);
        assert!(
            problems[0].message.contains("ends inside a record"),
            "{}",
            problems[0]
        );
    }
}

/// More records between two anchors than the decoder holds: those held are
/// let go (extrapolated from the last anchors) and the rest follow, every
/// event once, in order, near `CLOCK_MONOTONIC`.
#[test]
fn more_records_than_the_decoder_holds_all_come_out_in_order() {
    if !machine_has_tsc() {
        return no_tsc("more_records_than_the_decoder_holds_all_come_out_in_order");
    }
    let dir = tempfile::tempdir().unwrap();
    let chan = Arc::new(
        Channel::builder("held")
            .dir(dir.path())
            .subbuf_size(1 << 20)
            .n_subbufs(8)
            .global(true)
            .open()
            .unwrap(),
    );
    let mut readers = vec![RelayFile::open(chan.buffer_path(0)).unwrap()];
    // Anchors at the start and at the end only.
    let layer = RelayLayer::with_skewed_tsc(chan.clone(), 0, Duration::from_secs(3600));
    let d = tracing::Dispatch::new(tracing_subscriber::registry().with(layer.clone()));
    const N: u64 = 150_000;
    let start = relayfs::frame::now();
    tracing::dispatcher::with_default(&d, || {
        for i in 0..N {
            tracing::info!(i, "tick");
        }
    });
    let end = relayfs::frame::now();
    layer.flush_lost();
    let streams = close_and_read(&chan, &mut readers);
    let (json, problems, stats) = decode(&streams, true);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(stats.events, N);
    let lines = json_lines(&json);
    assert_eq!(lines.len() as u64, N);
    // Not a timing: the calibrated rate's error over the recording, far
    // below a millisecond.
    const SLACK: u64 = 1_000_000;
    for (k, l) in lines.iter().enumerate() {
        assert_eq!(l["fields"]["i"], k as u64);
        let t = l["time_ns"].as_u64().unwrap();
        assert!(
            t + SLACK >= start && t <= end + SLACK,
            "{t} not in {start}..{end}"
        );
    }
}
