//! The recorder against the faults it is used to investigate: a producer
//! killed mid-stream, the recorder itself killed and restarted or stopped,
//! and a full output filesystem.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relayfs::Channel;
use serde_json::Value;

mod common;
use common::*;

const ROLE: &str = "RELAYFS_CLI_TEST_PRODUCER";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Producer process: writes N demo records to channel `chan` under
/// RELAYFS_DIR, then (mode "hang") holds a reservation open and sleeps until
/// killed.
#[test]
fn child_producer() {
    let Ok(mode) = std::env::var(ROLE) else {
        return;
    };
    let n: u64 = std::env::var("N").unwrap().parse().unwrap();
    let chan = Channel::builder("victim")
        .subbuf_size(4096)
        .n_subbufs(64)
        .global(true)
        .open()
        .unwrap();
    let root = PathBuf::from(std::env::var("RELAYFS_DIR").unwrap());
    // Wait for the recorder to attach.
    while !reader_attached(&chan, 0) {
        std::thread::sleep(Duration::from_millis(5));
    }
    for seq in 0..n {
        chan.write(&demo_record(0, seq, 48)).unwrap();
    }
    if mode == "idle" {
        // Nothing held, nothing flushed: the producer goes quiet (the
        // recorder takes the partial sub-buffer after its poll timeout) and
        // is killed so.
        std::fs::write(root.join("written"), b"").unwrap();
        std::thread::sleep(Duration::from_secs(120));
    }
    chan.flush();
    assert_eq!(mode, "hang");
    chan.write(&demo_record(0, n, 48)).unwrap();
    let _held = chan.reserve(48).unwrap();
    std::fs::write(root.join("written"), b"").unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn producer_killed_mid_stream() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let rec = relayfs(root.path())
        .args(["record", "victim", "--wait", "--json", "-o"])
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut producer = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_producer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "hang")
        .env("N", "5000")
        .env("RELAYFS_DIR", root.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("producer wrote", || root.path().join("written").exists());
    producer.kill().unwrap();
    producer.wait().unwrap();
    let t = Instant::now();
    let rec = rec.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "noticed without waiting forever"
    );
    assert_eq!(
        rec.status.code(),
        Some(3),
        "the documented producer-gone status"
    );
    let s: Value = serde_json::from_slice(&rec.stdout).unwrap();
    assert_eq!(s["end"], "producer_gone");
    assert_eq!(s["records_delivered"], 5000);
    // One committed record and one reserved one were given up: counted.
    assert_eq!(s["abandoned_records"], 1);
    assert_eq!(s["abandoned_bytes"], 96);
    let v = relayfs(root.path())
        .arg("verify")
        .arg(&out)
        .args(["--writers", "1", "--count", "5000", "--lost", "0"])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // The buffer file stays readable.
    assert!(root.path().join("victim/cpu0").exists());
    let st = relayfs::RelayFile::inspect(root.path().join("victim/cpu0")).unwrap();
    assert!(!st.producer_alive && !st.closed);
}

/// A producer killed while idle, after the recorder took its partial
/// sub-buffer (the 200 ms poll timeout): those records are in the files,
/// and the summary must count them as delivered, so that delivered plus
/// lost is every record written.
#[test]
fn producer_killed_while_idle_after_its_tail_was_read() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let rec = relayfs(root.path())
        .args(["record", "victim", "--wait", "--json", "-o"])
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut producer = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_producer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "idle")
        .env("N", "20")
        .env("RELAYFS_DIR", root.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("producer wrote", || root.path().join("written").exists());
    // The recorder's poll timeout passes: it reads the partial sub-buffer.
    wait_until("the recorder took the tail", || {
        std::fs::metadata(out.join("cpu0.out")).is_ok_and(|m| m.len() >= 20 * 48)
    });
    producer.kill().unwrap();
    producer.wait().unwrap();
    let rec = rec.wait_with_output().unwrap();
    assert_eq!(rec.status.code(), Some(3));
    let s: Value = serde_json::from_slice(&rec.stdout).unwrap();
    assert_eq!(s["end"], "producer_gone");
    assert_eq!(s["lost"], 0);
    assert_eq!(s["records_written"], 20);
    assert_eq!(s["records_delivered"], 20, "{s}");
}

/// Writes `count` demo records from one thread at a modest pace.
fn paced_producer(chan: &Channel, count: u64) -> u64 {
    let mut dropped = 0;
    for seq in 0..count {
        if chan.write_cpu(0, &demo_record(0, seq, 64)).is_err() {
            dropped += 1;
        }
        if seq % 100 == 0 {
            std::thread::sleep(Duration::from_micros(300));
        }
    }
    dropped
}

#[test]
fn recorder_killed_and_restarted_resumes_without_duplicate_or_gap() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("resume");
    std::fs::create_dir(&dir).unwrap();
    let chan = Channel::builder("resume")
        .dir(&dir)
        .subbuf_size(4096)
        .n_subbufs(256)
        .open()
        .unwrap();
    let out = root.path().join("out");
    let start = || {
        relayfs(root.path())
            .args(["record", "resume", "--quiet", "-o"])
            .arg(&out)
            .spawn()
            .unwrap()
    };
    let count = 60_000;
    let (rec, dropped) = std::thread::scope(|s| {
        let producer = s.spawn(|| paced_producer(&chan, count));
        for _ in 0..3 {
            let mut rec = start();
            wait_until("recorder attached", || reader_attached(&chan, 0));
            std::thread::sleep(Duration::from_millis(40));
            rec.kill().unwrap(); // SIGKILL, mid-stream
            rec.wait().unwrap();
        }
        let rec = start();
        // Attached before the channel closes (which removes its files).
        wait_until("recorder attached", || reader_attached(&chan, 0));
        (rec, producer.join().unwrap())
    });
    let lost = chan.stats(0).lost();
    assert_eq!(lost, dropped, "every drop counted");
    chan.close().unwrap();
    let o = rec.wait_with_output().unwrap();
    assert!(o.status.success());
    let v = relayfs(root.path())
        .arg("verify")
        .arg(&out)
        .args([
            "--writers",
            "1",
            "--count",
            &count.to_string(),
            "--lost",
            &lost.to_string(),
        ])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn recorder_killed_after_the_close_leaves_the_rest_to_its_restart() {
    // The recorder is attached when the producer closes, then dies before it
    // drained the channel: the files stay for the next recorder, which takes
    // the rest (nothing lost uncounted), and removes them once drained.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("late");
    std::fs::create_dir(&dir).unwrap();
    let chan = Channel::builder("late")
        .dir(&dir)
        .subbuf_size(4096)
        .n_subbufs(64)
        .open()
        .unwrap();
    let out = root.path().join("out");
    let start = || {
        relayfs(root.path())
            .args(["record", "late", "--quiet", "-o"])
            .arg(&out)
            .spawn()
            .unwrap()
    };
    let mut rec = start();
    wait_until("recorder attached", || {
        (0..chan.n_buffers()).all(|i| reader_attached(&chan, i))
    });
    signal(&rec, libc::SIGSTOP);
    let count = 20_000;
    let dropped = paced_producer(&chan, count);
    let lost = chan.stats(0).lost();
    assert_eq!(lost, dropped, "every drop counted");
    let path = chan.buffer_path(0).to_path_buf();
    let s = chan.close().unwrap();
    assert_eq!(s.unread_at_close, 0, "a reader was attached");
    rec.kill().unwrap(); // SIGKILL, before it drained anything more
    rec.wait().unwrap();
    assert!(path.exists(), "left for a reader, with what it holds");
    let o = start().wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(!path.exists(), "drained, and removed by its reader");
    let v = relayfs(root.path())
        .arg("verify")
        .arg(&out)
        .args([
            "--writers",
            "1",
            "--count",
            &count.to_string(),
            "--lost",
            &lost.to_string(),
        ])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn a_buffer_the_producer_found_corrupt_fails_the_recording() {
    use std::os::unix::fs::FileExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("hurt");
    std::fs::create_dir(&dir).unwrap();
    let chan = Channel::builder("hurt")
        .dir(&dir)
        .subbuf_size(4096)
        .n_subbufs(3)
        .global(true)
        .open()
        .unwrap();
    let out = root.path().join("out");
    let rec = relayfs(root.path())
        .args(["record", "hurt", "--json", "-o"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("recorder attached", || reader_attached(&chan, 0));
    for seq in 0..100 {
        chan.write(&demo_record(0, seq, 64)).unwrap();
    }
    // Someone with write access to the file points the write position at
    // sub-buffer 3 of 3 (slot bits start at bit 12 for 4 KiB sub-buffers).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(chan.buffer_path(0))
        .unwrap();
    f.write_at(&((3u64 << 12) | 16).to_ne_bytes(), 256).unwrap();
    assert!(chan.write(&demo_record(0, 100, 64)).is_err());
    assert!(chan.stats(0).corrupt != 0);
    let _ = chan.close();
    let o = rec.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("corrupt"), "{err}");
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["buffers"][0]["end"], "error", "{s}");
}

#[test]
fn stopped_recorder_never_slows_the_producer() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("stopme");
    std::fs::create_dir(&dir).unwrap();
    let chan = Channel::builder("stopme")
        .dir(&dir)
        .subbuf_size(4096)
        .n_subbufs(8)
        .open()
        .unwrap();
    let out = root.path().join("out");
    let rec = relayfs(root.path())
        .args(["record", "stopme", "--json", "-o"])
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Every buffer, however many CPUs there are: a buffer the recorder had
    // not opened yet when stopped would be gone (closed) when it resumed.
    wait_until("recorder attached", || {
        (0..chan.n_buffers()).all(|i| reader_attached(&chan, i))
    });
    signal(&rec, libc::SIGSTOP);
    wait_until("recorder stopped", || {
        std::fs::read_to_string(format!("/proc/{}/stat", rec.id())).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T'))
        })
    });
    // With the reader stopped, 200 000 writes complete (nothing blocks) and
    // all but what fits in 32 KiB are dropped and counted.
    let (mut ok, mut full) = (0u64, 0u64);
    for seq in 0..200_000 {
        match chan.write_cpu(0, &demo_record(0, seq, 64)) {
            Ok(()) => ok += 1,
            Err(_) => full += 1,
        }
    }
    assert!(ok <= 8 * 4096 / 64, "{ok}");
    assert_eq!(chan.stats(0).dropped_full, full);
    signal(&rec, libc::SIGCONT);
    chan.close().unwrap();
    let o = rec.wait_with_output().unwrap();
    assert!(o.status.success());
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["records_delivered"].as_u64().unwrap(), ok);
    assert_eq!(s["dropped_full"].as_u64().unwrap(), full);
}

#[test]
fn full_output_filesystem() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount tmpfs here");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(out.clone());
    let run = |name: &str, retry: bool| {
        let dir = root.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        // One buffer, so that the room the recorder's own files take
        // (a page each) does not grow with the number of CPUs.
        let chan = Channel::builder(name)
            .dir(&dir)
            .global(true)
            // Sub-buffers larger than the room left, so the output fills
            // up in the middle of one.
            .subbuf_size(16 << 10)
            .n_subbufs(16)
            .open()
            .unwrap();
        let sub = out.join(name);
        std::fs::create_dir(&sub).unwrap();
        // Fill most of the filesystem so the recording runs out of room.
        let filler = out.join(format!("{name}.filler"));
        let mut args = vec!["record", name, "--json", "-o"];
        if retry {
            args.insert(2, "--retry");
        }
        let rec = relayfs(root.path())
            .args(&args)
            .arg(&sub)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("recorder attached", || reader_attached(&chan, 0));
        std::fs::write(&filler, vec![0u8; 40 << 10]).unwrap();
        // 600 x 64 B: more than the 24 KiB left, less than the whole 64 KiB.
        let (mut ok, mut full) = (0u64, 0u64);
        for seq in 0..600 {
            match chan.write_cpu(0, &demo_record(0, seq, 64)) {
                Ok(()) => ok += 1,
                Err(_) => full += 1,
            }
        }
        chan.flush();
        (chan, rec, filler, ok, full, sub)
    };
    // Without --retry: a clear error, a non-zero exit; the producer went on.
    let (chan, rec, filler, ok, full, _sub) = run("nospace", false);
    let o = rec.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    // The first error said is the buffer's, naming the output file it could
    // not write (not the relay buffer it read).
    let first = err.lines().next().unwrap_or_default();
    let out_file = out.join("nospace").join("cpu0.out");
    assert!(
        first.contains(&*out_file.to_string_lossy())
            && first.contains("No space left on device")
            && !first.contains(&*chan.buffer_path(0).to_string_lossy()),
        "{err}"
    );
    let rec: Value = serde_json::from_slice(&o.stdout).unwrap();
    // The summary is whole or absent, never a torn or empty file.
    let summary = out.join("nospace").join("relayfs-record.json");
    if summary.exists() {
        let s: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap())
            .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {err}"));
        assert_eq!(s["exit_code"], 1);
    }
    assert_eq!(ok + full, 600);
    // Nothing that failed to be written was consumed.
    let bytes = std::fs::read(&out_file).unwrap();
    assert!(chan.stats(0).bytes_consumed >= bytes.len() as u64);
    // The file holds whole records, each once, in order: exactly the ones
    // the recorder says it delivered, and the ones the buffer counts
    // delivered once the producer has closed (a sub-buffer left half-read
    // counts whole as unread, so its part must not be in the file).
    assert_eq!(bytes.len() % 64, 0, "a torn record");
    let mut next = 0u64;
    for r in bytes.chunks(64) {
        let seq = u64::from_le_bytes(r[16..24].try_into().unwrap());
        assert!(seq >= next, "record {seq} duplicated or out of order");
        assert_eq!(r, demo_record(0, seq, 64), "record {seq} damaged");
        next = seq + 1;
    }
    let in_file = (bytes.len() / 64) as u64;
    assert!(in_file > 0, "{err}");
    assert_eq!(rec["records_delivered"].as_u64(), Some(in_file), "{err}");
    assert_eq!(
        rec["buffers"][0]["files"][0].as_str(),
        Some(&*out_file.to_string_lossy()),
        "{rec}"
    );
    let st = chan.close().unwrap();
    assert_eq!(st.records_consumed, in_file, "{st:?}");
    assert_eq!(st.records_consumed + st.lost(), ok, "{st:?}");
    std::fs::remove_file(filler).unwrap();
    std::fs::remove_dir_all(out.join("nospace")).unwrap();

    // With --retry: it waits, and finishes once there is room again.
    let (chan, rec, filler, ok, _full, sub) = run("retry", true);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(filler).unwrap();
    let lost = chan.stats(0).lost();
    chan.close().unwrap();
    let o = rec.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["records_delivered"].as_u64().unwrap(), ok);
    let v = relayfs(root.path())
        .arg("verify")
        .arg(&sub)
        .args([
            "--writers",
            "1",
            "--count",
            "600",
            "--lost",
            &lost.to_string(),
        ])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

/// The rotated output files of `buffer` in `out`, by index.
fn rotated_files(out: &std::path::Path, buffer: &str) -> Vec<(u64, PathBuf)> {
    let prefix = format!("{buffer}.out.");
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let i = e
                .file_name()
                .to_string_lossy()
                .strip_prefix(&prefix)?
                .parse()
                .ok()?;
            Some((i, e.path()))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn recorder_killed_and_restarted_with_rotation_resumes_exactly() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("resumerot");
    std::fs::create_dir(&dir).unwrap();
    let chan = Channel::builder("resumerot")
        .dir(&dir)
        .subbuf_size(4096)
        .n_subbufs(256)
        .open()
        .unwrap();
    let out = root.path().join("out");
    let start = || {
        relayfs(root.path())
            .args(["record", "resumerot", "--quiet", "--max-size", "16K", "-o"])
            .arg(&out)
            .spawn()
            .unwrap()
    };
    let count = 60_000;
    let (rec, dropped) = std::thread::scope(|s| {
        let producer = s.spawn(|| paced_producer(&chan, count));
        for round in 0..3 {
            let mut rec = start();
            wait_until("recorder attached", || reader_attached(&chan, 0));
            std::thread::sleep(Duration::from_millis(40));
            rec.kill().unwrap(); // SIGKILL, mid-stream
            rec.wait().unwrap();
            // A recorder killed in the middle of writing a sub-buffer out
            // leaves a piece of it behind, which the buffer (that did not
            // count it as consumed) delivers again: model that piece.
            if round == 2 {
                let files = rotated_files(&out, "cpu0");
                let (_, newest) = files.last().expect("rotated output files");
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(newest)
                    .unwrap();
                std::io::Write::write_all(&mut f, &demo_record(0, 0, 64)[..16]).unwrap();
            }
        }
        let rec = start();
        // Attached before the channel closes (which removes its files).
        wait_until("recorder attached", || reader_attached(&chan, 0));
        (rec, producer.join().unwrap())
    });
    let lost = chan.stats(0).lost();
    assert_eq!(lost, dropped, "every drop counted");
    chan.close().unwrap();
    let o = rec.wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(
        rotated_files(&out, "cpu0").len() > 3,
        "the output rotated: {:?}",
        rotated_files(&out, "cpu0")
    );
    let v = relayfs(root.path())
        .arg("verify")
        .arg(&out)
        .args([
            "--writers",
            "1",
            "--count",
            &count.to_string(),
            "--lost",
            &lost.to_string(),
        ])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

/// A FIFO where an output file goes: the recorder says so and stops (it used
/// to block in `open(2)`, deaf to SIGINT), and its summary says the
/// recording is incomplete rather than "nothing lost".
#[test]
fn a_fifo_in_the_output_directory_is_refused_not_waited_on() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("fifo");
    std::fs::create_dir(&dir).unwrap();
    let chan = Channel::builder("fifo")
        .dir(&dir)
        .global(true)
        .subbuf_size(4096)
        .n_subbufs(4)
        .open()
        .unwrap();
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let fifo = out.join("cpu0.out");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut rec = relayfs(root.path())
        .args(["record", "fifo", "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut interrupted = false;
    while rec.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(2) && !interrupted {
            signal(&rec, libc::SIGINT);
            interrupted = true;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = rec.kill();
            let _ = rec.wait();
            panic!("the recorder hangs on a FIFO, even after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = rec.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!interrupted, "needed SIGINT to stop: {err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains(&*fifo.to_string_lossy()) && first.contains("not a regular file"),
        "{err}"
    );
    assert!(err.contains("INCOMPLETE"), "{err}");
    assert!(!err.contains("nothing lost"), "{err}");
    chan.close().unwrap();
}

/// As `recorder_killed_and_restarted_resumes_without_duplicate_or_gap`, in
/// overwrite mode with a producer fast enough to lap the recorder: every
/// record must still be delivered once or counted (overwritten, discarded).
///
/// A recorder killed while it holds a sub-buffer (claimed, copied, written
/// out, not yet counted) leaves it recorded as held in the reader page;
/// when the producer laps it before the next recorder comes, that one counts
/// it from there (see "Overwrite mode and readers" in `docs/DESIGN.md`).
#[test]
fn recorder_killed_and_restarted_in_overwrite_mode_accounts_every_record() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("owresume");
    std::fs::create_dir(&dir).unwrap();
    let chan = Channel::builder("owresume")
        .dir(&dir)
        .subbuf_size(16384)
        .n_subbufs(8)
        .mode(relayfs::Mode::Overwrite)
        .open()
        .unwrap();
    let out = root.path().join("out");
    let start = || {
        relayfs(root.path())
            .args(["record", "owresume", "--quiet", "-o"])
            .arg(&out)
            .spawn()
            .unwrap()
    };
    let count = 3_000_000u64;
    let (rec, dropped) = std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let mut dropped = 0;
            for seq in 0..count {
                let len = 24 + (seq * 7919 % 177) as usize;
                if chan.write_cpu(0, &demo_record(0, seq, len)).is_err() {
                    dropped += 1;
                }
            }
            dropped
        });
        for i in 0..6 {
            let mut rec = start();
            wait_until("recorder attached", || reader_attached(&chan, 0));
            std::thread::sleep(Duration::from_millis(20 + 17 * i));
            rec.kill().unwrap(); // SIGKILL, mid-stream
            rec.wait().unwrap();
        }
        let rec = start();
        wait_until("recorder attached", || reader_attached(&chan, 0));
        (rec, producer.join().unwrap())
    });
    chan.close().unwrap();
    let o = rec.wait_with_output().unwrap();
    assert!(o.status.success());
    // The counters once the recorder drained the buffer to its end.
    let s = chan.total_stats();
    assert_eq!(s.dropped_full + s.dropped_toobig, dropped, "{s:?}");
    let lost = s.lost();
    let v = relayfs(root.path())
        .arg("verify")
        .arg(&out)
        .args([
            "--writers",
            "1",
            "--count",
            &count.to_string(),
            "--lost",
            &lost.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "{}\n{s:?}",
        String::from_utf8_lossy(&v.stdout)
    );
}
