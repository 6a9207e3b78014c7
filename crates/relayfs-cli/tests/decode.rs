//! `relayfs decode` on recordings of `relayfs-tracing` events made with
//! `relayfs record`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{reader_attached, relayfs, wait_until};
use relayfs::Channel;
use relayfs_tracing::RelayLayer;
use serde_json::Value;
use tracing_subscriber::prelude::*;

/// The environment variable that makes this test binary the traced child
/// process of `a_recording_of_a_process_killed_mid_run_decodes_to_its_last_record`.
const CHILD_ENV: &str = "RELAYFS_DECODE_TEST_CHILD";

fn dispatch(chan: &Arc<Channel>) -> tracing::Dispatch {
    tracing::Dispatch::new(tracing_subscriber::registry().with(RelayLayer::new(chan.clone())))
}

fn start_record(root: &Path, chan: &str, out: &Path) -> Child {
    relayfs(root)
        .args(["record", chan, "--quiet", "-o"])
        .arg(out)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (at most a minute) for a child process to end.
fn wait_child(c: &mut Child) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "child did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn decode_json(root: &Path, out: &Path) -> (std::process::Output, Vec<Value>) {
    let o = relayfs(root)
        .args(["decode", "--json"])
        .arg(out)
        .output()
        .unwrap();
    let lines = String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (o, lines)
}

#[test]
fn decode_prints_a_recording_in_order_and_marks_the_recorders_losses() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("rec");
    // A small ring, no overwrite, and no reader at first: the first events
    // fill it and the rest are dropped.
    let chan = Arc::new(
        Channel::builder("traced")
            .relay_dir(root.path())
            .subbuf_size(512)
            .n_subbufs(2)
            .global(true)
            .open()
            .unwrap(),
    );
    let d = dispatch(&chan);
    let offered = 300u64;
    tracing::dispatcher::with_default(&d, || {
        let span = tracing::info_span!("job", id = 3);
        let _g = span.enter();
        for i in 0..offered {
            tracing::info!(i, "filling");
        }
    });
    let dropped = chan.total_stats().dropped_full;
    assert!(dropped > 0);

    // A follower started before the recorder, and the recorder.
    let follow = relayfs(root.path())
        .args(["decode", "--json", "--follow"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rec = start_record(root.path(), "traced", &out);
    wait_until("the recorder attaches", || reader_attached(&chan, 0));
    chan.close().unwrap();
    assert!(wait_child(&mut rec).success());

    let (o, lines) = decode_json(root.path(), &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let events: Vec<&Value> = lines.iter().filter(|l| l.get("fields").is_some()).collect();
    let kept = events.len() as u64;
    assert!(kept > 0 && kept < offered);
    for (k, e) in events.iter().enumerate() {
        assert_eq!(e["fields"]["i"], k as u64, "{e}");
        assert_eq!(e["spans"][0]["name"], "job");
        assert_eq!(e["spans"][0]["id"], 3);
    }
    // The loss is the last line: it happened once the ring was full, after
    // the last event kept; the layer never got to report it in band, so it
    // comes from the recorder's counters, which count records.
    let last = lines.last().unwrap();
    assert_eq!(last["lost"], dropped, "{last}");
    assert_eq!(last["where_known"], false);
    assert_eq!(last["buffer"], "cpu0");
    assert_eq!(lines.len() as u64, kept + 1);

    // The follower saw the same, and ended by itself with the recording.
    let f = follow.wait_with_output().unwrap();
    assert!(f.status.success(), "{}", String::from_utf8_lossy(&f.stderr));
    let (fl, ol) = (
        String::from_utf8(f.stdout).unwrap(),
        String::from_utf8(o.stdout.clone()).unwrap(),
    );
    for (k, (a, b)) in fl.lines().zip(ol.lines()).enumerate() {
        assert_eq!(a, b, "line {k} of --follow's output");
    }
    assert_eq!(
        fl.lines().count(),
        ol.lines().count(),
        "--follow's output: {}",
        fl.lines().last().unwrap_or("")
    );

    // Text, like fmt's.
    let t = relayfs(root.path())
        .arg("decode")
        .arg(&out)
        .output()
        .unwrap();
    assert!(t.status.success());
    let text = String::from_utf8(t.stdout).unwrap();
    let first = text.lines().next().unwrap();
    assert!(
        first.contains("  INFO job{id=3}: decode: filling i=0"),
        "{first}"
    );
    assert!(text
        .lines()
        .last()
        .unwrap()
        .contains(&format!("LOST {dropped} records lost on cpu0")));
}

#[test]
fn bad_input_is_an_error_with_its_offset() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("rec");
    std::fs::create_dir(&out).unwrap();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&relayfs::frame::encode_header(3, 0));
    bytes.extend_from_slice(&[2, 1, 1]); // an event of callsite 1, thread 1
    bytes.extend_from_slice(&relayfs::frame::encode_header(2, 0));
    bytes.extend_from_slice(&[77, 0]); // an unknown record kind
    bytes.extend_from_slice(&[0xE7, 0x1F, 0, 0]); // a header cut short
    std::fs::write(out.join("cpu0.out"), &bytes).unwrap();
    let o = relayfs(root.path())
        .arg("decode")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.contains("cpu0.out: byte 11: bad tracing record: unknown record kind"),
        "{err}"
    );
    assert!(err.contains("cpu0.out: byte 21: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("<unknown callsite 1>"), "{text}");

    // No recording at all.
    let o = relayfs(root.path())
        .arg("decode")
        .arg(root.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

/// The traced child: emits numbered events until killed.
#[test]
fn traced_child() {
    let Ok(name) = std::env::var(CHILD_ENV) else {
        return;
    };
    let chan = Arc::new(
        Channel::builder(&name)
            .subbuf_size(16 << 10)
            .open()
            .unwrap(),
    );
    let d = dispatch(&chan);
    tracing::dispatcher::with_default(&d, || {
        for seq in 0u64.. {
            tracing::info!(seq, pad = "some text to make it longer", "tick");
            if seq % 64 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });
}

#[test]
fn a_recording_of_a_process_killed_mid_run_decodes_to_its_last_record() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("rec");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "traced_child", "--nocapture", "--test-threads=1"])
        .env("RELAYFS_DIR", root.path())
        .env(CHILD_ENV, "killed")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the child's channel", || {
        root.path().join("killed").join("cpu0").exists()
    });
    let mut rec = start_record(root.path(), "killed", &out);
    wait_until("a recording under way", || {
        std::fs::read_dir(&out).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>()
                > 256 << 10
        })
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The recorder sees the producer gone and exits 3.
    assert_eq!(wait_child(&mut rec).code(), Some(3));

    let (o, lines) = decode_json(root.path(), &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    let mut last: Option<u64> = None;
    let mut events = 0u64;
    let mut gaps = 0u64;
    let mut lost = 0u64;
    for l in &lines {
        if let Some(n) = l.get("lost") {
            lost += n.as_u64().unwrap();
            continue;
        }
        let seq = l["fields"]["seq"].as_u64().unwrap();
        events += 1;
        if let Some(p) = last {
            assert!(seq > p, "{seq} after {p}");
            gaps += seq - p - 1;
        } else {
            assert_eq!(seq, 0);
        }
        last = Some(seq);
    }
    assert!(events > 1000, "{events} events");
    assert!(gaps <= lost, "{gaps} events missing, {lost} said lost");
    // Whatever the files hold decodes: at most the cut tail of the last
    // record, said with its offset.
    assert!(
        o.status.success() || err.contains("ends inside a record"),
        "{err}"
    );
}

#[test]
fn a_rotated_recording_decodes_across_its_files() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("rec");
    let chan = Arc::new(
        Channel::builder("rotated")
            .relay_dir(root.path())
            .subbuf_size(4096)
            .n_subbufs(8)
            .global(true)
            .open()
            .unwrap(),
    );
    let mut rec = relayfs(root.path())
        .args(["record", "rotated", "--quiet", "--max-size", "16K", "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the recorder attaches", || reader_attached(&chan, 0));
    let layer = RelayLayer::new(chan.clone());
    let d = tracing::Dispatch::new(tracing_subscriber::registry().with(layer.clone()));
    const N: u64 = 3000;
    tracing::dispatcher::with_default(&d, || {
        for seq in 0..N {
            tracing::info!(seq, "rotating");
            if seq % 32 == 0 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
    });
    layer.flush_lost();
    chan.close().unwrap();
    assert!(wait_child(&mut rec).success());
    let files = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("cpu0.out.")
        })
        .count();
    // Rotated at least once (fewer bytes if the recorder fell behind and
    // events were dropped).
    assert!(files >= 2, "{files} files");

    let (o, lines) = decode_json(root.path(), &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut next = 0;
    let mut lost = 0;
    for l in &lines {
        if let Some(n) = l.get("lost") {
            lost += n.as_u64().unwrap();
            continue;
        }
        let seq = l["fields"]["seq"].as_u64().unwrap();
        assert!(seq >= next, "{seq} after {next}");
        lost -= (seq - next).min(lost);
        next = seq + 1;
    }
    // Every event is there or said lost before the next one.
    let said: Vec<&Value> = lines.iter().filter(|l| l.get("lost").is_some()).collect();
    let summary = std::fs::read_to_string(out.join("relayfs-record.json")).unwrap();
    assert_eq!(next + lost, N, "{said:?} {summary}");
}
