//! The command line's edges: bad numbers refused before anything starts,
//! hang-ups ending a run as cleanly as Ctrl-C, a closed standard output,
//! and `ls` on odd names and unreadable directories.

use std::os::fd::FromRawFd;
use std::path::Path;
use std::process::{Output, Stdio};

mod common;
use common::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether anything at all exists under `p`.
fn anything_under(p: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            found.push(e.path().display().to_string());
            found.extend(anything_under(&e.path()));
        }
    }
    found
}

#[test]
fn every_bad_number_is_refused_before_anything_starts() {
    // (subcommand and its other arguments, the bad flag, the bad values)
    let table: &[(&[&str], &str, &[&str])] = &[
        (
            &["bench"],
            "--duration",
            &["-1", "0", "nan", "inf", "1e300", "x"],
        ),
        (&["bench"], "--rate", &["0", "-5", "nan", "inf", "1e300"]),
        (&["bench"], "--threads", &["0", "-1", "100000"]),
        (&["bench"], "--count", &["0", "-1", "18446744073709551615"]),
        (&["bench"], "--size", &["0", "10", "100..50", "8G"]),
        (&["bench"], "--subbuf-size", &["0", "3000", "32", "2G"]),
        (&["bench"], "--n-subbufs", &["0", "-1", "99999999"]),
        (&["bench", "--sweep"], "--duration", &["-1", "nan"]),
        (&["demo"], "--count", &["0", "-3", "18446744073709551615"]),
        (&["demo"], "--threads", &["0", "-1", "100000"]),
        (&["demo"], "--size", &["0", "23", "64..32"]),
        (&["demo"], "--subbuf-size", &["0", "100", "1T"]),
        (&["demo"], "--n-subbufs", &["0", "2000000"]),
        (
            &["demo", "--no-record"],
            "--attach-timeout",
            &["-1", "0", "nan", "1e300"],
        ),
        (
            &["record", "chan", "-o", "OUT"],
            "--duration",
            &["-1", "0", "nan", "inf"],
        ),
        (
            &["record", "chan", "-o", "OUT"],
            "--max-size",
            &["0", "-1", "1Q"],
        ),
        (
            &["record", "chan", "-o", "OUT", "--max-size", "1M"],
            "--max-files",
            &["0", "-1"],
        ),
        (
            &["blktrace", "/dev/null", "-o", "OUT"],
            "--duration",
            &["-1", "0", "nan", "inf"],
        ),
        (
            &["blktrace", "/dev/null", "-o", "OUT"],
            "--subbuf-size",
            &["0", "5G"],
        ),
        (
            &["blktrace", "/dev/null", "-o", "OUT"],
            "--n-subbufs",
            &["0", "-1"],
        ),
        (&["stat", "chan"], "--watch", &["0", "-1", "nan", "inf"]),
        (
            &["verify", "OUT", "--count", "10"],
            "--writers",
            &["0", "-1", "4000000000"],
        ),
        (
            &["verify", "OUT", "--writers", "1"],
            "--count",
            &["0", "-1"],
        ),
    ];
    // Sizes good alone but not together, and what the error names.
    let combos: &[(&[&str], &str)] = &[
        (
            &["demo", "--subbuf-size", "1G", "--n-subbufs", "1024"],
            "--subbuf-size",
        ),
        (
            &["bench", "--subbuf-size", "1G", "--n-subbufs", "128"],
            "--subbuf-size",
        ),
        (
            &["blktrace", "/dev/null", "-o", "OUT", "-b", "1G", "-n", "8"],
            "-n 8",
        ),
    ];
    let mut cases: Vec<(Vec<String>, &str)> = Vec::new();
    for (cmd, flag, bad) in table {
        for v in *bad {
            let mut c: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
            c.push(format!("{flag}={v}"));
            cases.push((c, flag));
        }
    }
    for (c, names) in combos {
        cases.push((c.iter().map(|s| s.to_string()).collect(), names));
    }
    for (case, names) in cases {
        let root = tempfile::tempdir().unwrap();
        let relay = root.path().join("relay");
        let out_dir = root.path().join("out");
        let args: Vec<String> = case
            .iter()
            .map(|a| {
                if a == "OUT" {
                    out_dir.display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        let out = relayfs(&relay)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = stderr(&out);
        let code = out.status.code();
        assert!(
            matches!(code, Some(1) | Some(2)),
            "{case:?}: refused with a usage error, got {:?}: {err}",
            out.status
        );
        assert!(!err.contains("panicked"), "{case:?}: {err}");
        assert!(
            err.contains("error") && err.contains(names),
            "{case:?}: says what is wrong, naming {names}: {err}"
        );
        let made = anything_under(root.path());
        assert!(made.is_empty(), "{case:?}: started something: {made:?}");
    }
}

/// A standard output whose reader has already gone: every write to it
/// fails with `EPIPE`, whenever it comes.
fn closed_stdout() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: `fds` is an array of two ints, as pipe(2) wants.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just made by pipe(2) and are ours alone;
    // the read end is closed here and never used again.
    let w = unsafe {
        libc::close(fds[0]);
        std::os::fd::OwnedFd::from_raw_fd(fds[1])
    };
    Stdio::from(w)
}

#[test]
fn a_closed_stdout_is_an_ordinary_ending() {
    let root = tempfile::tempdir().unwrap();
    let relay = root.path().join("relay");
    std::fs::create_dir(&relay).unwrap();
    let dir = relay.join("piped");
    std::fs::create_dir(&dir).unwrap();
    let chan = relayfs::Channel::builder("piped")
        .dir(&dir)
        .subbuf_size(4096)
        .n_subbufs(4)
        .open()
        .unwrap();
    for seq in 0..10 {
        chan.write_cpu(0, &demo_record(0, seq, 40)).unwrap();
    }
    chan.flush();
    // A recording to verify.
    let rec_dir = root.path().join("rec");
    std::fs::create_dir(&rec_dir).unwrap();
    let mut rec = Vec::new();
    for seq in 0..10 {
        rec.extend(demo_record(0, seq, 40));
    }
    std::fs::write(rec_dir.join("cpu0.out"), rec).unwrap();
    let d = dir.display().to_string();
    let r = rec_dir.display().to_string();
    let cpu0 = dir.join("cpu0").display().to_string();
    let cases: &[&[&str]] = &[
        &["ls"],
        &["ls", "--json"],
        &["stat", &d],
        &["stat", &d, "--json"],
        &["stat", &d, "--watch", "0.05"],
        &["verify", &r],
        &["verify", &r, "--json"],
        &["cat", "--no-follow", &cpu0],
        &["demo", "--json", "--threads", "1", "--count", "1000"],
        &["demo", "--threads", "1", "--count", "1000"],
        &[
            "bench",
            "--json",
            "--threads",
            "1",
            "--count",
            "1000",
            "--no-fs-baseline",
        ],
    ];
    let rec2 = root.path().join("rec2");
    let rec2s = rec2.display().to_string();
    let record: &[&str] = &["record", &d, "-o", &rec2s, "--json", "--duration", "0.2"];
    for case in cases.iter().chain([&record]) {
        let out = relayfs(&relay)
            .args(*case)
            .stdin(Stdio::null())
            .stdout(closed_stdout())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{case:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{case:?}: {err}");
    }
    // The recorder finished its work all the same.
    assert!(rec2.join("relayfs-record.json").is_file());
    assert_eq!(
        std::fs::metadata(rec2.join("cpu0.out")).unwrap().len(),
        400,
        "the recorder drained the buffer"
    );
    // Any other failure to write is an error, said so.
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = relayfs(&relay)
        .args(["ls", "--json"])
        .stdout(full)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("standard output"), "{err}");
    chan.close().unwrap();
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// Waits for `child` to end; kills it (and fails) if it is still running
/// after a minute, so that a signal it ignores can't hang the suite.
fn end_of(child: std::process::Child, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            signal(pid, libc::SIGKILL);
            panic!("{what}: still running a minute after the signal");
        }
    }
}

const ENDING_SIGNALS: [(i32, &str); 3] = [
    (libc::SIGINT, "SIGINT"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGHUP, "SIGHUP"),
];

#[test]
fn record_ends_on_a_hang_up_as_on_ctrl_c() {
    for (sig, name) in ENDING_SIGNALS {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("live");
        std::fs::create_dir(&dir).unwrap();
        let chan = relayfs::Channel::builder("live")
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
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("recorder wrote the data", || {
            std::fs::metadata(out.join("cpu0.out")).is_ok_and(|m| m.len() == expect.len() as u64)
        });
        signal(rec.id(), sig);
        let rec = end_of(rec, name);
        assert_eq!(rec.status.code(), Some(0), "{name}: {}", stderr(&rec));
        let summary: serde_json::Value = serde_json::from_slice(&rec.stdout).unwrap();
        assert_eq!(summary["end"], "interrupted", "{name}");
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("relayfs-record.json")).unwrap())
                .unwrap();
        assert_eq!(on_disk["end"], "interrupted", "{name}: summary written");
        assert_eq!(
            std::fs::read(out.join("cpu0.out")).unwrap(),
            expect,
            "{name}"
        );
        chan.close().unwrap();
    }
}

#[test]
fn demo_ends_on_a_hang_up_as_on_ctrl_c() {
    for (sig, name) in ENDING_SIGNALS {
        let root = tempfile::tempdir().unwrap();
        let relay = root.path().join("relay");
        // More records than could ever be written before the signal.
        let demo = relayfs(&relay)
            .args([
                "demo",
                "--json",
                "--name",
                "hup",
                "--out",
                &root.path().join("out").display().to_string(),
                "--threads",
                "2",
                "--count",
                "1000000000000",
                "--subbuf-size",
                "16K",
                "--n-subbufs",
                "4",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let cpu0 = relay.join("hup").join("cpu0");
        wait_until("the recorder attached", || {
            relayfs::RelayFile::inspect(&cpu0).is_ok_and(|s| s.reader_attached)
        });
        signal(demo.id(), sig);
        let demo = end_of(demo, name);
        let err = stderr(&demo);
        assert_eq!(demo.status.code(), Some(0), "{name}: {err}");
        let v: serde_json::Value = serde_json::from_slice(&demo.stdout)
            .unwrap_or_else(|e| panic!("{name}: no summary ({e}): {err}"));
        assert_eq!(v["interrupted"], true, "{name}: {v}");
        assert_eq!(v["verified"], true, "{name}: {v}");
        let (w, d, x) = (
            v["written"].as_u64().unwrap(),
            v["delivered"].as_u64().unwrap(),
            v["dropped"].as_u64().unwrap(),
        );
        assert!(w < 2 * 1_000_000_000_000, "{name}: stopped early: {v}");
        assert_eq!(w, d + x, "{name}: nothing lost uncounted: {v}");
        // The recorder drained the channel to its close and was waited for.
        let pid = v["recorder_pid"].as_u64().unwrap();
        assert!(pid > 0);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name}: recorder {pid} still running"
        );
        assert!(!cpu0.exists(), "{name}: channel closed");
        // The summary holds the recording to what the writers offered
        // before they stopped.
        let counters = root.path().join("demo.json");
        std::fs::write(&counters, &demo.stdout).unwrap();
        let verify = relayfs(&relay)
            .arg("verify")
            .arg("--counters")
            .arg(&counters)
            .arg(root.path().join("out"))
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
    }
}

#[test]
fn bench_ends_on_a_hang_up() {
    let root = tempfile::tempdir().unwrap();
    let relay = root.path().join("relay");
    let bench = relayfs(&relay)
        .args([
            "bench",
            "--json",
            "--out",
            &root.path().join("out").display().to_string(),
            "--threads",
            "2",
            "--duration",
            "600",
            "--subbuf-size",
            "16K",
            "--n-subbufs",
            "4",
            "--no-fs-baseline",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cpu0 = relay.join(format!("bench-{}", bench.id())).join("cpu0");
    wait_until("the recorder attached", || {
        relayfs::RelayFile::inspect(&cpu0).is_ok_and(|s| s.reader_attached)
    });
    signal(bench.id(), libc::SIGHUP);
    let bench = end_of(bench, "bench");
    let err = stderr(&bench);
    assert_eq!(bench.status.code(), Some(0), "{err}");
    let v: serde_json::Value =
        serde_json::from_slice(&bench.stdout).unwrap_or_else(|e| panic!("no summary ({e}): {err}"));
    assert_eq!(v["verified"], true, "{v}");
    assert!(v["seconds"].as_f64().unwrap() < 600.0, "{v}");
    assert!(!cpu0.exists(), "channel closed");
}

#[test]
fn ls_escapes_names_and_reports_an_unreadable_relay_dir() {
    let root = tempfile::tempdir().unwrap();
    let relay = root.path().join("relay");
    std::fs::create_dir(&relay).unwrap();
    // A name that would print as a row of its own, and a terminal escape.
    let evil = "evil\nforged        1     16x4.0 KiB no-overwrite  alive (pid 1)       0";
    let mut chans = Vec::new();
    for name in [evil, "esc\x1b[2Jape", "plain"] {
        let dir = relay.join(name);
        std::fs::create_dir(&dir).unwrap();
        chans.push(
            relayfs::Channel::builder("c")
                .dir(&dir)
                .subbuf_size(4096)
                .n_subbufs(4)
                .open()
                .unwrap(),
        );
    }
    let out = relayfs(&relay).arg("ls").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "a header and one row per channel:\n{text}");
    assert!(!text.contains('\x1b'), "{text:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("evil\\nforged")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("esc\\x1b[2Jape")),
        "{text}"
    );
    // JSON keeps the name itself (JSON escapes it).
    let (out, v) = run_json(relayfs(&relay).args(["ls", "--json"]));
    assert!(out.status.success());
    let names: Vec<&str> = v["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&evil), "{v}");
    drop(chans);

    // No relay directory at all: no channels.
    let missing = root.path().join("missing");
    let out = relayfs(&missing).arg("ls").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no channels"));
    // One that can't be read: an error, not "no channels".
    let file = root.path().join("file");
    std::fs::write(&file, b"").unwrap();
    for bad in [file.clone(), file.join("sub")] {
        for json in [false, true] {
            let mut cmd = relayfs(&bad);
            cmd.arg("ls");
            if json {
                cmd.arg("--json");
            }
            let out = cmd.output().unwrap();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{bad:?}: {err}");
            assert!(err.contains("cannot read"), "{err}");
            assert!(out.stdout.is_empty(), "{bad:?}");
        }
    }
}

#[test]
fn demo_records_to_a_temporary_directory_it_removes_and_makes_none_without_a_recorder() {
    let root = tempfile::tempdir().unwrap();
    let relay = root.path().join("relay");
    let tmp = root.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let entries = || std::fs::read_dir(&tmp).unwrap().count();
    // With its recorder: the recording goes to $TMPDIR while it runs and is
    // gone when the demo ends (here on Ctrl-C).
    let demo = relayfs(&relay)
        .env("TMPDIR", &tmp)
        .args(["demo", "--json", "--name", "tmp", "--threads", "1"])
        .args(["--count", "1000000000000", "--subbuf-size", "16K"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cpu0 = relay.join("tmp").join("cpu0");
    wait_until("the recorder attached", || {
        relayfs::RelayFile::inspect(&cpu0).is_ok_and(|s| s.reader_attached)
    });
    assert_eq!(entries(), 1, "the recording is in $TMPDIR");
    signal(demo.id(), libc::SIGINT);
    let demo = end_of(demo, "demo");
    assert_eq!(demo.status.code(), Some(0), "{}", stderr(&demo));
    assert_eq!(entries(), 0, "the temporary recording is removed");
    // Without a recorder: nothing is made, so nothing is left even by a
    // demo that is killed.
    let demo = relayfs(&relay)
        .env("TMPDIR", &tmp)
        .args([
            "demo",
            "--no-record",
            "--name",
            "bare",
            "--attach-timeout",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cpu0 = relay.join("bare").join("cpu0");
    wait_until("the channel is open", || cpu0.exists());
    signal(demo.id(), libc::SIGKILL);
    end_of(demo, "demo --no-record");
    assert_eq!(entries(), 0, "demo --no-record made a directory");
}

#[test]
fn stat_shows_control_characters_in_names_escaped() {
    let root = tempfile::tempdir().unwrap();
    let name = "x\x1b]0;pwned\x07";
    // Missing channel: the error names it escaped.
    let out = relayfs(root.path()).args(["stat", name]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    assert!(err.contains("x\\x1b]0;pwned\\x07"), "{err:?}");
    // An existing channel: its path heads the table, escaped.
    let chan = relayfs::Channel::builder(name)
        .relay_dir(root.path())
        .subbuf_size(4096)
        .n_subbufs(4)
        .open()
        .unwrap();
    let out = relayfs(root.path()).args(["stat", name]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", stderr(&out));
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    assert!(text.contains("x\\x1b]0;pwned\\x07"), "{text:?}");
    chan.close().unwrap();
}

#[test]
fn stat_watch_ends_when_the_channel_closes_and_clears_only_a_terminal() {
    let root = tempfile::tempdir().unwrap();
    let chan = relayfs::Channel::builder("watched")
        .relay_dir(root.path())
        .subbuf_size(4096)
        .n_subbufs(4)
        .open()
        .unwrap();
    let out_file = root.path().join("watch.txt");
    let watch = relayfs(root.path())
        .args(["stat", "watched", "--watch", "0.05"])
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("stat looked at the channel", || {
        std::fs::read_to_string(&out_file).is_ok_and(|t| t.contains("cpu0"))
    });
    let dir = chan.dir().to_path_buf();
    chan.close().unwrap();
    assert!(!dir.exists(), "the channel directory is removed at close");
    let watch = end_of(watch, "stat --watch");
    let text = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(watch.status.code(), Some(0), "{text} {}", stderr(&watch));
    assert!(text.contains("closed"), "{text}");
    assert!(!text.contains('\x1b'), "screen cleared in a file: {text:?}");
}

#[test]
fn cat_on_a_fifo_or_a_link_says_what_it_is() {
    let root = tempfile::tempdir().unwrap();
    let fifo = root.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let out = relayfs(root.path()).arg("cat").arg(&fifo).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("is a FIFO, not a regular file"), "{err}");
    assert!(!err.contains("symbolic link"), "{err}");
    let link = root.path().join("link");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let out = relayfs(root.path()).arg("cat").arg(&link).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("is a symbolic link"), "{err}");
    assert!(err.contains("without following symbolic links"), "{err}");
}

/// `record --wait -w SECONDS` stops after the time it was given even when
/// the channel never appears: an error that says so, not a wait for ever.
#[test]
fn record_waiting_for_a_channel_that_never_comes_stops_after_its_duration() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("rec");
    let mut child = relayfs(root.path())
        .args([
            "record",
            "never-there",
            "--wait",
            "-w",
            "0.5",
            "--quiet",
            "-o",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("record --wait -w 0.5 still waiting after a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not appear within the recording's duration"),
        "{}",
        stderr(&out)
    );
}
