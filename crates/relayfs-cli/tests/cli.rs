//! Runs the built `relayfs` binary end to end.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use relayfs::Channel;
use serde_json::Value;

mod common;
use common::*;

fn check_demo(v: &Value) {
    let (w, d, x) = (
        v["written"].as_u64().unwrap(),
        v["delivered"].as_u64().unwrap(),
        v["dropped"].as_u64().unwrap(),
    );
    assert_eq!(w, d + x, "written = delivered + dropped: {v}");
    assert_eq!(v["verified"], true, "{v}");
}

#[test]
fn demo_no_overwrite_fixed_size_drops_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (out, v) = run_json(relayfs(root.path()).args(["demo", "--json"]));
    assert!(out.status.success(), "{v}");
    check_demo(&v);
    assert_eq!(v["dropped"], 0, "default demo drops nothing: {v}");
    assert!(v["delivered"].as_u64().unwrap() > 0);
}

#[test]
fn demo_varied_sizes_and_overwrite_mode_verify() {
    let root = tempfile::tempdir().unwrap();
    let (out, v) = run_json(relayfs(root.path()).args([
        "demo",
        "--json",
        "--threads",
        "3",
        "--count",
        "20000",
        "--size",
        "24..3000",
        "--subbuf-size",
        "16K",
        "--n-subbufs",
        "4",
    ]));
    assert!(out.status.success(), "{v}");
    check_demo(&v);
    let (out, v) = run_json(relayfs(root.path()).args([
        "demo",
        "--json",
        "--overwrite",
        "--count",
        "50000",
        "--size",
        "100..300",
        "--subbuf-size",
        "4K",
        "--n-subbufs",
        "4",
    ]));
    assert!(out.status.success(), "{v}");
    check_demo(&v);
    assert!(
        v["overwritten"].as_u64().unwrap() > 0,
        "a small ring overwrites: {v}"
    );
}

#[test]
fn recorder_started_first_with_wait() {
    let root = tempfile::tempdir().unwrap();
    let rec_out = root.path().join("rec");
    let rec = relayfs(root.path())
        .args(["record", "early", "--wait", "--json", "-o"])
        .arg(&rec_out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (out, v) = run_json(relayfs(root.path()).args([
        "demo",
        "--json",
        "--name",
        "early",
        "--no-record",
        "--count",
        "30000",
    ]));
    assert!(out.status.success(), "{v}");
    let rec = rec.wait_with_output().unwrap();
    assert!(rec.status.success());
    let summary: Value = serde_json::from_slice(&rec.stdout).unwrap();
    assert_eq!(summary["end"], "closed");
    let written = v["written"].as_u64().unwrap();
    let delivered = summary["records_delivered"].as_u64().unwrap();
    assert_eq!(written, delivered + summary["lost"].as_u64().unwrap());
    let verify = relayfs(root.path())
        .arg("verify")
        .arg(&rec_out)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn ctrl_c_drains_what_is_ready_and_exits_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("live");
    std::fs::create_dir(&dir).unwrap();
    let chan = Channel::builder("live")
        .dir(&dir)
        .subbuf_size(4096)
        .n_subbufs(8)
        .open()
        .unwrap();
    let mut expect = Vec::new();
    for seq in 0..100 {
        let r = demo_record(0, seq, 40);
        chan.write_cpu(0, &r).unwrap();
        expect.extend(r);
    }
    chan.flush();
    let out = root.path().join("out");
    let rec = relayfs(root.path())
        .args(["record", "live", "--json", "-o"])
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("recorder wrote the data", || {
        std::fs::metadata(out.join("cpu0.out")).is_ok_and(|m| m.len() == expect.len() as u64)
    });
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    let rec = rec.wait_with_output().unwrap();
    assert!(rec.status.success());
    let summary: Value = serde_json::from_slice(&rec.stdout).unwrap();
    assert_eq!(summary["end"], "interrupted");
    assert_eq!(std::fs::read(out.join("cpu0.out")).unwrap(), expect);
    chan.close().unwrap();
}

#[test]
fn stat_ls_and_cat_on_a_live_channel() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("statme");
    std::fs::create_dir(&dir).unwrap();
    let chan = Channel::builder("statme")
        .dir(&dir)
        .subbuf_size(64)
        .n_subbufs(2)
        .open()
        .unwrap();
    for _ in 0..5 {
        let _ = chan.write_cpu(0, &[7u8; 40]);
    }
    let (out, v) = run_json(relayfs(root.path()).args(["stat", "statme", "--json"]));
    assert!(out.status.success());
    let b0 = &v["buffers"][0];
    assert_eq!(b0["buffer"], "cpu0");
    assert_eq!(b0["records_written"], 2);
    assert_eq!(b0["dropped_full"], 3);
    assert_eq!(b0["producer_alive"], true);
    let (out, v) = run_json(relayfs(root.path()).args(["ls", "--json"]));
    assert!(out.status.success());
    let c = &v["channels"][0];
    assert_eq!(c["name"], "statme");
    assert_eq!(c["producer"], "alive");
    assert_eq!(c["buffers"].as_u64().unwrap(), chan.n_buffers() as u64);
    let text = relayfs(root.path())
        .args(["stat", "statme"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("cpu0"));
    // cat drains cpu0 and ends when the channel closes.
    let cat = relayfs(root.path())
        .arg("cat")
        .arg(dir.join("cpu0"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("cat attached", || {
        relayfs::RelayFile::inspect(dir.join("cpu0")).is_ok_and(|s| s.reader_attached)
    });
    chan.close().unwrap();
    let cat = cat.wait_with_output().unwrap();
    assert!(cat.status.success());
    assert_eq!(cat.stdout, vec![7u8; 80]);
}

#[test]
fn verify_catches_every_kind_of_defect() {
    let root = tempfile::tempdir().unwrap();
    let good = root.path().join("good");
    std::fs::create_dir(&good).unwrap();
    let mut data = Vec::new();
    for seq in 0..50 {
        data.extend(demo_record(0, seq, 24 + (seq as usize % 40)));
    }
    std::fs::write(good.join("cpu0.out"), &data).unwrap();
    let verify = |dir: &Path, extra: &[&str]| {
        let o = relayfs(root.path())
            .arg("verify")
            .arg(dir)
            .args(extra)
            .arg("--json")
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        (o.status.success(), v)
    };
    let (ok, v) = verify(&good, &["--writers", "1", "--count", "50"]);
    assert!(ok, "{v}");
    let bad = |name: &str, mutate: &dyn Fn(&mut Vec<u8>), extra: &[&str]| {
        let d = root.path().join(name);
        std::fs::create_dir(&d).unwrap();
        let mut b = data.clone();
        mutate(&mut b);
        std::fs::write(d.join("cpu0.out"), &b).unwrap();
        let (ok, v) = verify(&d, extra);
        assert!(!ok, "{name} not caught: {v}");
        v
    };
    let v = bad("corrupt", &|b| b[100] ^= 0x40, &[]);
    assert!(
        v["defects"][0].as_str().unwrap().contains("corrupt")
            || v["defects"][0].as_str().unwrap().contains("magic"),
        "{v}"
    );
    let v = bad("truncated", &|b| b.truncate(b.len() - 5), &[]);
    assert!(
        v["defects"][0].as_str().unwrap().contains("truncated"),
        "{v}"
    );
    let first = demo_record(0, 0, 24);
    let v = bad("duplicate", &|b| b.extend_from_slice(&first), &[]);
    assert!(
        v["defects"][0].as_str().unwrap().contains("duplicate"),
        "{v}"
    );
    // The same record in two buffers' files.
    let d = root.path().join("dup-across");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("cpu0.out"), &data).unwrap();
    std::fs::write(d.join("cpu1.out"), demo_record(0, 7, 31)).unwrap();
    let (ok, v) = verify(&d, &[]);
    assert!(!ok, "{v}");
    assert!(
        v["defects"][0].as_str().unwrap().contains("more than once"),
        "{v}"
    );
    // Record seq 10 removed: a gap nobody counted.
    let start: usize = (0..10).map(|s| 24 + s % 40).sum();
    let v = bad(
        "missing",
        &|b| {
            b.drain(start..start + 34);
        },
        &[],
    );
    assert!(v["defects"][0].as_str().unwrap().contains("missing"), "{v}");
    // The same gap is fine when the producer counted one lost record.
    let d = root.path().join("missing");
    let (ok, v) = verify(&d, &["--lost", "1"]);
    assert!(ok, "{v}");
    // The producer's counters (as the demo prints them) tell a writer
    // missing altogether.
    let counters = root.path().join("counters.json");
    let write_counters = |threads: u64| {
        let c = serde_json::json!({ "threads": threads, "count": 50, "dropped": 0 });
        std::fs::write(&counters, c.to_string()).unwrap();
    };
    write_counters(1);
    let c = counters.to_str().unwrap();
    let (ok, v) = verify(&good, &["--counters", c]);
    assert!(ok, "{v}");
    write_counters(2);
    let (ok, v) = verify(&good, &["--counters", c]);
    assert!(!ok, "{v}");
    assert_eq!(v["missing"], 50, "{v}");
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["demo", "record", "verify", "cat", "stat", "ls", "bench"] {
        let o = Command::new(env!("CARGO_BIN_EXE_relayfs"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{sub} --help");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Usage"),
            "{sub}"
        );
    }
}

#[test]
fn record_rotates_files_at_subbuffer_boundaries() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("rot");
    let rec = relayfs(root.path())
        .args([
            "record",
            "rot",
            "--wait",
            "--quiet",
            "--max-size",
            "8K",
            "--max-files",
            "3",
            "-o",
        ])
        .arg(&out)
        .spawn()
        .unwrap();
    let (o, v) = run_json(relayfs(root.path()).args([
        "demo",
        "--json",
        "--name",
        "rot",
        "--no-record",
        "--threads",
        "1",
        "--count",
        "2000",
        "--size",
        "50",
        "--subbuf-size",
        "4K",
        "--n-subbufs",
        "64",
    ]));
    assert!(o.status.success(), "{v}");
    let rec = rec.wait_with_output().unwrap();
    assert!(rec.status.success());
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".out.") && !n.starts_with('.'))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    // Every buffer has its own set of files (cpuN.out.K), so the total
    // scales with the buffer count: at most 3 kept per buffer.
    let mut per_buffer = std::collections::BTreeMap::<&str, u64>::new();
    for f in &files {
        *per_buffer
            .entry(f.split(".out.").next().unwrap())
            .or_default() += 1;
    }
    for (b, n) in &per_buffer {
        assert!(*n <= 3, "at most 3 kept per buffer, {b} has {n}: {files:?}");
    }
    for f in &files {
        let len = std::fs::metadata(out.join(f)).unwrap().len();
        assert!(len <= 8192 + 4096, "{f}: {len}");
        // Each file holds whole records: verify parses it without defect.
    }
    let o = relayfs(root.path())
        .arg("verify")
        .arg(&out)
        .args(["--lost", "100000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        !text.contains("truncated") && !text.contains("magic"),
        "{text}"
    );
}

#[test]
fn bench_reports_and_verifies() {
    let root = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (out, v) = run_json(
        relayfs(root.path())
            .args([
                "bench",
                "--json",
                "--threads",
                "2",
                "--count",
                "20000",
                "--size",
                "64",
                "--out",
            ])
            .arg(dir.path()),
    );
    assert!(out.status.success(), "{v}");
    for k in [
        "ns_per_record",
        "records_per_sec",
        "written",
        "delivered",
        "dropped",
    ] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }
    assert_eq!(v["written"], 40000);
    assert_eq!(
        v["delivered"].as_u64().unwrap() + v["dropped"].as_u64().unwrap(),
        40000,
        "{v}"
    );
    assert_eq!(v["verified"], true, "{v}");
    // The filesystem baseline ran in the output directory and left nothing
    // there but the recording.
    for pass in ["cold", "warm"] {
        let fs = &v["fs_baseline"][pass];
        assert!(fs["bytes"].as_u64().unwrap() >= 64 << 20, "{v}");
        assert!(fs["bytes_per_sec"].as_f64().unwrap() > 0.0, "{v}");
        assert!(fs["cpus_for_offered"].as_f64().unwrap() > 0.0, "{v}");
    }
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.contains("fs-baseline"), "left behind: {name}");
    }
}

#[test]
fn find_lossless_reports_a_rate_with_nothing_dropped_and_the_filesystem_ceiling() {
    let root = tempfile::tempdir().unwrap();
    let (out, v) = run_json(relayfs(root.path()).args([
        "bench",
        "--json",
        "--threads",
        "1",
        "--duration",
        "0.2",
        "--find-lossless",
    ]));
    assert!(out.status.success(), "{v}");
    let rate = v["lossless_rate"].as_f64().unwrap();
    let top = &v["unthrottled"];
    assert!(top["written"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(top["verified"], true, "{v}");
    if top["dropped"] == 0 {
        // No drops even unthrottled: the rate found is the one achieved.
        assert_eq!(rate, top["records_per_sec"].as_f64().unwrap(), "{v}");
    } else {
        assert!(rate < top["records_per_sec"].as_f64().unwrap(), "{v}");
        if rate > 0.0 {
            let best = &v["at_that_rate"];
            assert_eq!(best["dropped"], 0, "{v}");
            assert_eq!(best["verified"], true, "{v}");
        }
    }
    assert!(top["fs_baseline"]["cold"]["cpu_s_per_gb"].as_f64().unwrap() > 0.0);

    let out = relayfs(root.path())
        .args([
            "bench",
            "--threads",
            "1",
            "--duration",
            "0.2",
            "--find-lossless",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("the filesystem alone, measured before the first run, stores at most"),
        "{text}"
    );
}

#[test]
fn recorder_into_dev_null_counts_everything_and_stays_small() {
    // The recorder alone (output to /dev/null): the counters still add up,
    // and its own memory, its mappings of the buffers aside, stays under
    // 16 MiB however much passes through it.
    let root = tempfile::tempdir().unwrap();
    let (out, v) = run_json(relayfs(root.path()).args([
        "bench",
        "--json",
        "--threads",
        "1",
        "--count",
        "30000",
        "--size",
        "4096",
        "--out",
        "/dev/null",
    ]));
    assert!(out.status.success(), "{v}");
    assert_eq!(v["written"], 30000);
    assert!(v["delivered"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["verified_records"], false, "{v}");
    assert!(v["fs_baseline"].is_null(), "no filesystem to measure: {v}");
    let rss = v["recorder_rss_anon_peak_kib"].as_u64().unwrap();
    assert!(
        rss > 0 && rss < 16 * 1024,
        "recorder anonymous memory {rss} KiB"
    );
}

/// A per-CPU channel `name` under `root` (as many buffers as possible CPUs).
fn per_cpu_channel(root: &Path, name: &str) -> Channel {
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    Channel::builder(name)
        .dir(&dir)
        .subbuf_size(4096)
        .n_subbufs(16)
        .open()
        .unwrap()
}

#[test]
fn recorder_takes_every_buffer_of_a_channel_still_being_opened() {
    let root = tempfile::tempdir().unwrap();
    let chan = per_cpu_channel(root.path(), "opening");
    // cpu0 appears only after the recorder started, as when the producer
    // is still creating its files.
    let cpu0 = chan.buffer_path(0).to_path_buf();
    let hidden = root.path().join("opening/.hidden");
    std::fs::rename(&cpu0, &hidden).unwrap();
    let out = root.path().join("out");
    let rec = relayfs(root.path())
        .args(["record", "opening", "--json", "-o"])
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::rename(&hidden, &cpu0).unwrap();
    for cpu in 0..chan.n_buffers() {
        wait_until("recorder attached", || reader_attached(&chan, cpu));
    }
    for seq in 0..100 {
        chan.write_cpu(0, &demo_record(0, seq, 64)).unwrap();
    }
    let n = chan.n_buffers() as u64;
    chan.close().unwrap();
    let o = rec.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["records_delivered"], 100);
    assert_eq!(s["n_buffers"].as_u64(), Some(n));
    assert_eq!(s["buffers"].as_array().unwrap().len() as u64, n);
    let v = relayfs(root.path())
        .arg("verify")
        .arg(&out)
        .args(["--writers", "1", "--count", "100"])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

/// Overwrites the magic of a buffer file, as a scribbler would.
fn spoil_magic(path: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"garbage!", 0).unwrap();
}

#[test]
fn a_bad_buffer_file_is_reported_by_stat_and_record() {
    let root = tempfile::tempdir().unwrap();
    let chan = per_cpu_channel(root.path(), "spoilt");
    let last = chan.n_buffers() - 1;
    let bad = chan.buffer_path(last).to_path_buf();
    let bad_name = bad.file_name().unwrap().to_string_lossy().into_owned();
    spoil_magic(&bad);
    let st = relayfs(root.path())
        .args(["stat", "spoilt"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&st.stdout).to_string() + &String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success(), "{text}");
    assert!(text.contains(&bad_name) && text.contains("magic"), "{text}");
    let st = relayfs(root.path())
        .args(["stat", "spoilt", "--json"])
        .output()
        .unwrap();
    assert!(!st.status.success());
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["errors"][0]["buffer"], bad_name.as_str(), "{v}");
    assert_eq!(v["buffers"].as_array().unwrap().len(), last, "{v}");
    let out = root.path().join("out");
    let rec = relayfs(root.path())
        .args(["record", "spoilt", "--json", "-o"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for cpu in 0..last {
        wait_until("recorder attached", || reader_attached(&chan, cpu));
    }
    chan.close().unwrap();
    let o = rec.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&bad_name) && err.contains("magic"), "{err}");
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    let failed: Vec<_> = s["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["end"] == "error")
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(failed, [bad_name]);
}

#[test]
fn verify_notices_a_buffer_missing_from_the_recording() {
    let root = tempfile::tempdir().unwrap();
    let chan = per_cpu_channel(root.path(), "whole");
    let out = root.path().join("out");
    let rec = relayfs(root.path())
        .args(["record", "whole", "--quiet", "-o"])
        .arg(&out)
        .spawn()
        .unwrap();
    for cpu in 0..chan.n_buffers() {
        wait_until("recorder attached", || reader_attached(&chan, cpu));
    }
    for seq in 0..100 {
        chan.write_cpu(0, &demo_record(0, seq, 64)).unwrap();
    }
    chan.close().unwrap();
    let mut rec = rec;
    assert!(rec.wait().unwrap().success());
    let verify = || {
        relayfs(root.path())
            .arg("verify")
            .arg(&out)
            .output()
            .unwrap()
    };
    assert!(verify().status.success());
    // Cut short at a record boundary: the records left are in order with
    // no gap, but fewer than the recorder delivered.
    let cpu0 = out.join("cpu0.out");
    let whole = std::fs::read(&cpu0).unwrap();
    std::fs::write(&cpu0, &whole[..50 * 64]).unwrap();
    let v = verify();
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(!v.status.success(), "{text}");
    assert!(
        text.contains("50 records") && text.contains("100"),
        "{text}"
    );
    std::fs::write(&cpu0, &whole).unwrap();
    assert!(verify().status.success());
    // The whole buffer that held writer 0 is gone.
    std::fs::remove_file(out.join("cpu0.out")).unwrap();
    let v = verify();
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(!v.status.success(), "{text}");
    assert!(text.contains("cpu0"), "{text}");
}

#[test]
fn a_refused_second_recorder_leaves_the_output_alone() {
    let root = tempfile::tempdir().unwrap();
    let chan = per_cpu_channel(root.path(), "twice");
    let out = root.path().join("out");
    let first = relayfs(root.path())
        .args(["record", "twice", "--quiet", "-o"])
        .arg(&out)
        .spawn()
        .unwrap();
    for cpu in 0..chan.n_buffers() {
        let name = chan.buffer_path(cpu).file_name().unwrap().to_string_lossy();
        let state = out.join(format!(".{name}.out.state"));
        wait_until("recorder started", || state.exists());
    }
    let listing = || {
        let mut v: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let before = listing();
    let second = relayfs(root.path())
        .args(["record", "twice", "--quiet", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(err.contains("another"), "{err}");
    assert_eq!(listing(), before, "nothing added or removed");
    assert!(!out.join("relayfs-record.json").exists());
    chan.close().unwrap();
    let mut first = first;
    assert!(first.wait().unwrap().success());
    let s: Value =
        serde_json::from_slice(&std::fs::read(out.join("relayfs-record.json")).unwrap()).unwrap();
    assert_eq!(s["exit_code"], 0);
}

#[test]
fn loss_advice_names_the_producer_settings() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("lossy");
    std::fs::create_dir(&dir).unwrap();
    let chan = Channel::builder("lossy")
        .dir(&dir)
        .global(true)
        .subbuf_size(4096)
        .n_subbufs(2)
        .open()
        .unwrap();
    for seq in 0..1000 {
        let _ = chan.write(&demo_record(0, seq, 64));
    }
    assert!(chan.stats(0).dropped_full > 0);
    let out = root.path().join("out");
    let rec = relayfs(root.path())
        .args(["record", "lossy", "-o"])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("recorder attached", || reader_attached(&chan, 0));
    chan.close().unwrap();
    let o = rec.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("LOST"), "{err}");
    assert!(err.contains("ChannelBuilder::subbuf_size"), "{err}");
    assert!(!err.contains("consider a larger --subbuf-size"), "{err}");
}

/// A recording in `dir/cpu0.out` of the records of each writer `w` from 0
/// to `offered[w]`, without the sequence numbers in `gaps[w]`.
fn synthetic_recording(dir: &Path, offered: &[u64], gaps: &[&[u64]]) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let mut data = Vec::new();
    let mut held = 0;
    for (w, &n) in offered.iter().enumerate() {
        for seq in (0..n).filter(|s| !gaps[w].contains(s)) {
            data.extend(demo_record(w as u32, seq, 24 + (seq as usize % 40)));
            held += 1;
        }
    }
    std::fs::write(dir.join("cpu0.out"), &data).unwrap();
    held
}

/// A recorder's summary for a one-buffer recording.
fn write_summary(dir: &Path, delivered: u64, producer_lost: u64, discarded: u64) {
    let s = serde_json::json!({
        "n_buffers": 1,
        "max_files": null,
        "bytes": 0,
        "records_delivered": delivered,
        "lost": producer_lost + discarded,
        "overwritten": producer_lost,
        "discarded": discarded,
        "buffers": [{ "name": "cpu0", "error": null }],
    });
    std::fs::write(dir.join("relayfs-record.json"), s.to_string()).unwrap();
}

fn verify_json(root: &Path, dir: &Path, extra: &[&str]) -> (bool, Value) {
    let o = relayfs(root)
        .arg("verify")
        .arg(dir)
        .args(extra)
        .arg("--json")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&o.stderr));
    });
    (o.status.success(), v)
}

#[test]
fn verify_counters_adds_the_readers_discards_to_the_producers_losses() {
    let root = tempfile::tempdir().unwrap();
    let rec = root.path().join("rec");
    // Writer 0 lost 5 records to overwriting (the producer counted them),
    // writer 1 lost 3 torn copies the reader discarded (the recorder
    // counted them): as with `demo --no-record --overwrite` and a recorder
    // started by hand.
    let held = synthetic_recording(&rec, &[100, 100], &[&[10, 11, 12, 13, 14], &[50, 51, 52]]);
    write_summary(&rec, held, 5, 3);
    let counters = root.path().join("counters.json");
    let c = counters.to_str().unwrap();
    let demo = |dropped: u64, discarded: u64| {
        serde_json::json!({
            "threads": 2, "count": 100, "written": 200, "interrupted": false,
            "dropped": dropped, "dropped_full": 0, "dropped_toobig": 0,
            "dropped_corrupt": 0, "overwritten": 5, "unread_at_close": 0,
            "discarded": discarded,
        })
    };
    // The demo without a recorder of its own knows of no discard.
    std::fs::write(&counters, demo(5, 0).to_string()).unwrap();
    let (ok, v) = verify_json(root.path(), &rec, &["--counters", c]);
    assert!(ok, "{v}");
    assert_eq!(
        (v["missing"].as_u64(), v["lost"].as_u64()),
        (Some(8), Some(8)),
        "{v}"
    );
    // The demo with its own recorder counts the same discards: not twice.
    std::fs::write(&counters, demo(8, 3).to_string()).unwrap();
    let (ok, v) = verify_json(root.path(), &rec, &["--counters", c]);
    assert!(ok, "{v}");
    assert_eq!(v["lost"], 8, "{v}");
    // Only the total: the producer's part is what is not discarded.
    let bare = serde_json::json!({ "threads": 2, "count": 100, "dropped": 5 });
    std::fs::write(&counters, bare.to_string()).unwrap();
    let (ok, v) = verify_json(root.path(), &rec, &["--counters", c]);
    assert!(ok, "{v}");
    // One more record missing than either side counted is still a defect.
    let rec2 = root.path().join("rec2");
    let held = synthetic_recording(
        &rec2,
        &[100, 100],
        &[&[10, 11, 12, 13, 14, 15], &[50, 51, 52]],
    );
    write_summary(&rec2, held, 5, 3);
    std::fs::write(&counters, demo(5, 0).to_string()).unwrap();
    let (ok, v) = verify_json(root.path(), &rec2, &["--counters", c]);
    assert!(!ok, "{v}");
    assert_eq!(
        (v["missing"].as_u64(), v["lost"].as_u64()),
        (Some(9), Some(8)),
        "{v}"
    );
}

#[test]
fn verify_refuses_a_summary_whose_lost_is_not_the_sum_of_its_counts() {
    let root = tempfile::tempdir().unwrap();
    let rec = root.path().join("rec");
    // 5 records really missing, and the summary's total says so, but none
    // of its counts does: a total nobody counted covers nothing.
    let held = synthetic_recording(&rec, &[100], &[&[10, 11, 12, 13, 14]]);
    write_summary(&rec, held, 5, 0);
    let (ok, v) = verify_json(root.path(), &rec, &[]);
    assert!(ok, "{v}");
    let path = rec.join("relayfs-record.json");
    let mut s: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    s["overwritten"] = 0.into();
    std::fs::write(&path, s.to_string()).unwrap();
    let (ok, v) = verify_json(root.path(), &rec, &[]);
    assert!(!ok, "{v}");
    assert!(v["defects"].to_string().contains("add up to 0"), "{v}");
}

#[test]
fn verify_counters_of_an_interrupted_demo_uses_what_was_offered() {
    let root = tempfile::tempdir().unwrap();
    let rec = root.path().join("rec");
    // Interrupted: writer 0 offered 100 records (2 dropped), writer 1 only 40.
    let held = synthetic_recording(&rec, &[100, 40], &[&[20, 21], &[]]);
    write_summary(&rec, held, 2, 0);
    let counters = root.path().join("counters.json");
    let c = counters.to_str().unwrap();
    let write = |extra: Value| {
        let mut j = serde_json::json!({
            "threads": 2, "count": 100, "written": 140, "interrupted": true,
            "dropped": 2, "dropped_full": 2, "dropped_toobig": 0,
            "dropped_corrupt": 0, "overwritten": 0, "unread_at_close": 0,
            "discarded": 0,
        });
        for (k, x) in extra.as_object().unwrap() {
            j[k] = x.clone();
        }
        std::fs::write(&counters, j.to_string()).unwrap();
    };
    // Each writer's count, as the demo prints it.
    write(serde_json::json!({ "offered_by_writer": [100, 40] }));
    let (ok, v) = verify_json(root.path(), &rec, &["--counters", c]);
    assert!(ok, "{v}");
    assert_eq!(v["missing"], 2, "{v}");
    // Only the total written.
    write(serde_json::json!({}));
    let (ok, v) = verify_json(root.path(), &rec, &["--counters", c]);
    assert!(ok, "{v}");
    assert_eq!(v["missing"], 2, "{v}");
    // A total that says more was offered than was delivered or counted.
    write(serde_json::json!({ "written": 150 }));
    let (ok, v) = verify_json(root.path(), &rec, &["--counters", c]);
    assert!(!ok, "{v}");
    assert_eq!(v["missing"], 12, "{v}");
    write(serde_json::json!({ "offered_by_writer": [100, 41] }));
    let (ok, v) = verify_json(root.path(), &rec, &["--counters", c]);
    assert!(!ok, "{v}");
}

#[test]
fn verify_refuses_a_summary_of_the_wrong_shape() {
    let root = tempfile::tempdir().unwrap();
    let rec = root.path().join("rec");
    let held = synthetic_recording(&rec, &[50], &[&[]]);
    write_summary(&rec, held, 0, 0);
    let (ok, v) = verify_json(root.path(), &rec, &[]);
    assert!(ok, "{v}");
    for bad in [
        r#"{"lost": -5}"#,
        "[]",
        r#"{"lost": 0, "records_delivered": 50, "discarded": 0, "buffers": {}}"#,
        r#"{"lost": 1.5, "records_delivered": 50, "discarded": 0, "buffers": []}"#,
        r#"{"lost": 0, "records_delivered": 50, "discarded": 0, "buffers": [{"name": 3}]}"#,
    ] {
        std::fs::write(rec.join("relayfs-record.json"), bad).unwrap();
        let (ok, v) = verify_json(root.path(), &rec, &[]);
        assert!(!ok, "{bad} accepted: {v}");
        let d = v["defects"].to_string();
        assert!(d.contains("not a recorder summary"), "{bad}: {v}");
    }
}

#[test]
fn verify_counts_a_dead_producers_last_records_as_either_delivered_or_missing() {
    // The producer died with its last sub-buffer partly written: the reader
    // took its records up to a reservation never committed (in the files,
    // not counted as delivered: relay doesn't frame records) and the rest
    // are behind it; the summary calls them all abandoned.
    let root = tempfile::tempdir().unwrap();
    let rec = root.path().join("rec");
    // 100 offered; the last 5 in the dead producer's sub-buffer, of which
    // the first 2 were read and the other 3 are missing.
    let held = synthetic_recording(&rec, &[100], &[&[97, 98, 99]]);
    assert_eq!(held, 97);
    let abandoned = |n: u64| {
        let mut s: Value =
            serde_json::from_slice(&std::fs::read(rec.join("relayfs-record.json")).unwrap())
                .unwrap();
        s["abandoned_records"] = n.into();
        std::fs::write(rec.join("relayfs-record.json"), s.to_string()).unwrap();
    };
    write_summary(&rec, 95, 0, 0);
    abandoned(5);
    let args = ["--writers", "1", "--count", "100"];
    let (ok, v) = verify_json(root.path(), &rec, &args);
    assert!(ok, "{v}");
    // Fewer abandoned than that can't explain the files or the gap.
    abandoned(1);
    let (ok, v) = verify_json(root.path(), &rec, &args);
    assert!(!ok, "{v}");
    abandoned(0);
    let (ok, v) = verify_json(root.path(), &rec, &args);
    assert!(!ok, "{v}");
    assert!(
        v["defects"].to_string().contains("the files hold 97"),
        "{v}"
    );
}
