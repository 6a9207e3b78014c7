//! `relayfs mount`: relay files that any program reads. Each test mounts its
//! own relay directory on its own mount point, and unmounts it whatever
//! happens (`fusermount3 -u -z` in a guard's `Drop`).
//!
//! Without FUSE (`/dev/fuse`, `fusermount3`), a C compiler or Python, the
//! tests that need them fail under `CI=true` (`.ci/run` installs fuse3) and
//! are skipped, loudly, elsewhere.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use relayfs::Channel;
use serde_json::Value;

mod common;
use common::*;

const HERE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mount");

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `name` from `PATH`, or `None` (skip, said loudly) outside CI; under
/// `CI=true` a missing tool fails the test.
fn tool(name: &str, what: &str) -> Option<PathBuf> {
    let found = which(name);
    if found.is_none() {
        if in_ci() {
            panic!("no {what} ({name}) found, and CI=true: install it (.ci/run does)");
        }
        eprintln!("\n*** skipped: no {what} ({name}) on PATH: this part is NOT tested ***\n");
    }
    found
}

/// Whether FUSE can be used here: `/dev/fuse` and `fusermount3`.
fn fuse() -> bool {
    if !Path::new("/dev/fuse").exists() {
        if in_ci() {
            panic!("no /dev/fuse, and CI=true: the mount must be tested");
        }
        eprintln!("\n*** skipped: no /dev/fuse: relayfs mount is NOT tested ***\n");
        return false;
    }
    tool("fusermount3", "FUSE mount helper (Debian: fuse3)").is_some()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The mount table's type for `mp`, if it is a mount point.
fn mount_type(mp: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mp.to_str().unwrap();
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let dash = f.iter().position(|x| *x == "-")?;
        (f[4] == want).then(|| f[dash + 1].to_string())
    })
}

/// A running `relayfs mount`, unmounted when dropped.
struct Mount {
    mp: PathBuf,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Mount {
    /// Mounts relay directory `root` on a new mount point with `args`.
    fn start(root: &Path, args: &[&str]) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let mp = dir.path().join("mnt").canonicalize().unwrap();
        let mut m = Mount::start_at(root, &mp, args);
        m._dir = Some(dir);
        m
    }

    /// Mounts relay directory `root` on `mp` with `args`.
    fn start_at(root: &Path, mp: &Path, args: &[&str]) -> Mount {
        let mp = mp.to_path_buf();
        let mut child = relayfs(root)
            .arg("mount")
            .arg(&mp)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut m = Mount {
            mp,
            child: None,
            _dir: None,
        };
        wait_until("the mount", || {
            if let Some(st) = child.try_wait().unwrap() {
                let mut e = String::new();
                child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
                panic!("relayfs mount exited ({st}): {e}");
            }
            mount_type(&m.mp).is_some_and(|t| t.starts_with("fuse"))
        });
        m.child = Some(child);
        m
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mp.join(rel)
    }

    /// Kills the mount process with `sig` and waits for it.
    fn kill(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, sig) };
        c.wait().unwrap()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mp)
            .stderr(Stdio::null())
            .status();
    }
}

/// Starts `relayfs demo --no-record` on channel `name` (it waits for a
/// reader on every buffer), its summary going to `json`.
fn demo(root: &Path, name: &str, json: &Path, extra: &[&str]) -> Child {
    relayfs(root)
        .args(["demo", "--no-record", "--json", "--name", name])
        .args(["--attach-timeout", "120"])
        .args(extra)
        .stdout(std::fs::File::create(json).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a child, failing with its stderr if it failed.
fn finish(mut c: Child, what: &str) {
    let st = c.wait().unwrap();
    let mut e = String::new();
    if let Some(mut s) = c.stderr.take() {
        s.read_to_string(&mut e).unwrap();
    }
    assert!(st.success(), "{what}: {st}: {e}");
}

/// `relayfs verify OUT --counters JSON --json`: whether it passed, and its
/// summary.
fn verify(root: &Path, out: &Path, counters: &Path) -> (bool, Value) {
    let (o, v) = run_json(
        relayfs(root)
            .arg("verify")
            .arg(out)
            .arg("--counters")
            .arg(counters)
            .arg("--json"),
    );
    (o.status.success(), v)
}

/// Checks a recording against the demo's exact counters: every record the
/// producer wrote is in it once, or counted dropped.
fn check_recording(root: &Path, out: &Path, counters: &Path) {
    let demo: Value = serde_json::from_slice(&std::fs::read(counters).unwrap()).unwrap();
    let (ok, v) = verify(root, out, counters);
    assert!(ok, "verify: {v}\ndemo: {demo}");
    let written = demo["written"].as_u64().unwrap();
    let dropped = demo["dropped"].as_u64().unwrap();
    assert!(written > 0, "{demo}");
    assert_eq!(
        v["records"].as_u64().unwrap() + dropped,
        written,
        "delivered + dropped = written: {v}\ndemo: {demo}"
    );
}

/// The buffer files of channel directory `dir` (in a mount), in CPU order.
fn buffer_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| {
            n.strip_prefix("cpu")
                .is_some_and(|d| d.parse::<u32>().is_ok())
        })
        .collect();
    v.sort_by_key(|n| n[3..].parse::<u32>().unwrap());
    v
}

#[test]
fn python_reader_records_a_demo_with_exact_counters() {
    if !fuse() {
        return;
    }
    let Some(py) = tool("python3", "Python") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let m = Mount::start(root.path(), &[]);
    let json = root.path().join("demo.json");
    let d = demo(
        root.path(),
        "py",
        &json,
        &["--threads", "2", "--count", "100000", "--size", "24..200"],
    );
    let chan = m.path("py");
    wait_until("the channel in the mount", || chan.join("cpu0").exists());
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = Command::new(py)
        .arg(Path::new(HERE).join("reader.py"))
        .arg(&chan)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "reader.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    finish(d, "demo");
    assert!(r["bytes"].as_u64().unwrap() > 0, "{r}");
    check_recording(root.path(), &out, &json);
}

#[test]
fn c_reader_with_poll_and_sendfile_records_a_demo_with_exact_counters() {
    if !fuse() {
        return;
    }
    let Some(cc) = tool("cc", "C compiler") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let exe = root.path().join("reader");
    let o = Command::new(cc)
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(Path::new(HERE).join("reader.c"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let m = Mount::start(root.path(), &[]);
    let json = root.path().join("demo.json");
    let d = demo(
        root.path(),
        "c",
        &json,
        &[
            "--threads",
            "3",
            "--count",
            "100000",
            "--size",
            "24..3000",
            "--subbuf-size",
            "64K",
            "--n-subbufs",
            "64",
        ],
    );
    let chan = m.path("c");
    wait_until("the channel in the mount", || chan.join("cpu0").exists());
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = Command::new(&exe).arg(&chan).arg(&out).output().unwrap();
    assert!(
        o.status.success(),
        "reader: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    finish(d, "demo");
    // sendfile(2) from the buffer files works: no fallback was needed.
    assert!(r["sendfile_bytes"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["read_bytes"], 0, "{r}");
    eprintln!("C reader: {r}");
    // A shared mapping is refused as debugfs relay files refuse it.
    assert_eq!(r["mmap_errno"], libc::ENODEV, "{r}");
    check_recording(root.path(), &out, &json);
}

#[test]
fn cat_and_dd_follow_a_live_demo_to_its_end() {
    if !fuse() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let m = Mount::start(root.path(), &["--follow"]);
    let json = root.path().join("demo.json");
    let d = demo(
        root.path(),
        "live",
        &json,
        &["--threads", "2", "--count", "200000"],
    );
    let chan = m.path("live");
    wait_until("the channel in the mount", || chan.join("cpu0").exists());
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // cat for cpu0, dd for the others: each runs until the channel ends.
    let readers: Vec<Child> = buffer_names(&chan)
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let f = std::fs::File::create(out.join(format!("{b}.out"))).unwrap();
            let mut c = if i == 0 {
                let mut c = Command::new("cat");
                c.arg(chan.join(b));
                c
            } else {
                let mut c = Command::new("dd");
                c.arg(format!("if={}", chan.join(b).display()))
                    .arg("bs=1M")
                    .arg("status=none");
                c
            };
            c.stdout(f).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for r in readers {
        finish(r, "cat/dd");
    }
    finish(d, "demo");
    check_recording(root.path(), &out, &json);
}

/// poll(2) on one file descriptor with a timeout in ms: its revents.
fn poll1(fd: i32, ms: i32) -> i16 {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    p.revents
}

fn open_ro(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(p)
}

#[test]
fn poll_reports_complete_and_flushed_subbufs_then_pollerr_at_close_and_ebusy_for_a_second_reader() {
    if !fuse() {
        return;
    }
    use std::os::fd::AsRawFd;
    let root = tempfile::tempdir().unwrap();
    let m = Mount::start(root.path(), &[]);
    let chan = Channel::builder("p")
        .relay_dir(root.path())
        .global(true)
        .subbuf_size(4096)
        .n_subbufs(4)
        .open()
        .unwrap();
    let name = chan.buffer_path(0).file_name().unwrap().to_str().unwrap();
    let file = m.path("p").join(name);
    let mut f = open_ro(&file).unwrap();
    // A second reader is refused, and the first one is not disturbed.
    let e = open_ro(&file).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY), "{e}");
    // Nothing yet: no event, and read returns 0 (the kernel's behaviour).
    assert_eq!(poll1(f.as_raw_fd(), 0), 0);
    let mut buf = vec![0u8; 1 << 16];
    assert_eq!(f.read(&mut buf).unwrap(), 0);
    // A sub-buffer completes: the producer's wakeup makes it readable.
    let rec = [7u8; 100];
    for _ in 0..41 {
        chan.write(&rec).unwrap();
    }
    let ev = poll1(f.as_raw_fd(), 60_000);
    assert_eq!(ev & libc::POLLIN, libc::POLLIN, "{ev:#x}");
    assert_eq!(ev & (libc::POLLERR | libc::POLLHUP), 0, "{ev:#x}");
    let mut got = 0;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|&b| b == 7));
        got += n;
    }
    assert_eq!(got, 4100, "every committed record, once, padding removed");
    // A partly filled sub-buffer is not reported (the kernel's rule)...
    chan.write(&rec).unwrap();
    assert_eq!(poll1(f.as_raw_fd(), 0) & libc::POLLIN, 0);
    // ...until the producer flushes it.
    chan.flush();
    let ev = poll1(f.as_raw_fd(), 60_000);
    assert_eq!(ev & libc::POLLIN, libc::POLLIN, "{ev:#x}");
    assert_eq!(f.read(&mut buf).unwrap(), 100);
    // Closed: POLLERR|POLLHUP, and read returns 0 for good.
    chan.write(&rec).unwrap();
    chan.close().unwrap();
    let ev = poll1(f.as_raw_fd(), 60_000);
    assert_eq!(
        ev & (libc::POLLERR | libc::POLLHUP),
        libc::POLLERR | libc::POLLHUP,
        "{ev:#x}"
    );
    let n = f.read(&mut buf).unwrap();
    assert_eq!(n, 100, "the last record, flushed by the close");
    assert_eq!(f.read(&mut buf).unwrap(), 0);
    drop(f);
    drop(m);
}

#[test]
fn pollerr_when_the_producer_dies() {
    if !fuse() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let m = Mount::start(root.path(), &[]);
    let json = root.path().join("demo.json");
    let mut d = demo(
        root.path(),
        "dies",
        &json,
        &["--threads", "1", "--count", "1000000000000", "--size", "64"],
    );
    let chan = m.path("dies");
    wait_until("the channel in the mount", || chan.join("cpu0").exists());
    let files: Vec<std::fs::File> = buffer_names(&chan)
        .iter()
        .map(|b| open_ro(&chan.join(b)).unwrap())
        .collect();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    // Read until something arrived, then kill the producer.
    use std::os::fd::AsRawFd;
    while bytes == 0 {
        for mut f in &files {
            poll1(f.as_raw_fd(), 10);
            bytes += f.read(&mut buf).unwrap() as u64;
        }
    }
    d.kill().unwrap();
    d.wait().unwrap();
    for mut f in &files {
        loop {
            let ev = poll1(f.as_raw_fd(), 60_000);
            while f.read(&mut buf).unwrap() > 0 {}
            if ev & (libc::POLLERR | libc::POLLHUP) != 0 {
                assert_eq!(
                    ev & (libc::POLLERR | libc::POLLHUP),
                    libc::POLLERR | libc::POLLHUP
                );
                break;
            }
        }
    }
    drop(m);
}

#[test]
fn a_channel_made_after_the_mount_appears_and_goes() {
    if !fuse() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let m = Mount::start(root.path(), &[]);
    assert!(!m.path("late").exists());
    let chan = Channel::builder("late")
        .relay_dir(root.path())
        .subbuf_size(8192)
        .n_subbufs(2)
        .file_mode(0o640)
        .open()
        .unwrap();
    let dir = m.path("late");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for k in ["dropped", "stats", "subbuf_size", "n_subbufs"] {
        assert!(names.iter().any(|n| n == k), "{k} in {names:?}");
    }
    assert_eq!(buffer_names(&dir).len(), chan.n_buffers(), "{names:?}");
    // Geometry and counters, as text.
    assert_eq!(
        std::fs::read_to_string(dir.join("subbuf_size")).unwrap(),
        "8192\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("n_subbufs")).unwrap(),
        "2\n"
    );
    for _ in 0..100 {
        let _ = chan.write_cpu(0, &[1u8; 3000]);
    }
    let lost = chan.total_stats().lost();
    assert!(lost > 0, "a 16 KiB buffer with no reader drops");
    assert_eq!(
        std::fs::read_to_string(dir.join("dropped")).unwrap(),
        format!("{lost}\n")
    );
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("stats")).unwrap()).unwrap();
    let bufs = stats["buffers"].as_array().unwrap();
    assert_eq!(bufs.len(), chan.n_buffers(), "{stats}");
    assert_eq!(
        bufs[0]["dropped_full"],
        chan.stats(0).dropped_full,
        "{stats}"
    );
    assert_eq!(stats["subbuf_size"], 8192, "{stats}");
    // Owner and mode mirror the channel's files (read bits: the mount is
    // read-only).
    let real = std::fs::metadata(chan.buffer_path(0)).unwrap();
    let shown = std::fs::metadata(dir.join(buffer_names(&dir)[0].as_str())).unwrap();
    assert_eq!((shown.uid(), shown.gid()), (real.uid(), real.gid()));
    assert_eq!(shown.mode() & 0o777, 0o440, "{:o}", shown.mode());
    chan.close().unwrap();
    drop(chan);
    wait_until("the closed channel to go", || !dir.exists());
    drop(m);
}

/// Reads `f` until `read` returns 0.
fn read_all(f: &mut std::fs::File) -> Vec<u8> {
    let mut v = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            return v;
        }
        v.extend_from_slice(&buf[..k]);
    }
}

/// Reads `f` until `n` bytes came or `read` returns 0.
fn read_upto(f: &mut std::fs::File, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let k = f.read(&mut v[got..]).unwrap();
        if k == 0 {
            break;
        }
        got += k;
    }
    v.truncate(got);
    v
}

#[test]
fn a_killed_mount_remounted_resumes_without_gap_or_duplicate() {
    if !fuse() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut m = Mount::start(root.path(), &[]);
    let chan = Channel::builder("resume")
        .relay_dir(root.path())
        .global(true)
        .subbuf_size(4096)
        .n_subbufs(64)
        .open()
        .unwrap();
    // 2000 records of 100 bytes, numbered: the stream the reader must see.
    let mut want = Vec::new();
    for i in 0..2000u32 {
        let mut r = [0u8; 100];
        r[..4].copy_from_slice(&i.to_le_bytes());
        r[4..].fill((i % 251) as u8);
        chan.write(&r).unwrap();
        want.extend_from_slice(&r);
    }
    chan.flush();
    let name = chan
        .buffer_path(0)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut f = open_ro(&m.path("resume").join(&name)).unwrap();
    let mut got = read_upto(&mut f, 77_777);
    assert_eq!(got.len(), 77_777);
    // The mount dies: its reader gets ENOTCONN, the channel runs on.
    assert!(!m.kill(libc::SIGKILL).success());
    let mut buf = [0u8; 4096];
    let e = f.read(&mut buf).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    drop(f);
    // A new mount on the same point, after cleaning up the dead one.
    let o = relayfs(root.path())
        .arg("umount")
        .arg(&m.mp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m2 = Mount::start_at(root.path(), &m.mp, &[]);
    let mut f = open_ro(&m2.path("resume").join(&name)).unwrap();
    got.extend(read_all(&mut f));
    assert_eq!(got.len(), want.len(), "no gap, no duplicate");
    assert!(got == want, "the same bytes in the same order");
    drop(f);
    chan.close().unwrap();
    drop(m2);
    drop(m);
}

#[test]
fn another_user_is_refused() {
    if !fuse() {
        return;
    }
    if !is_root() {
        eprintln!("skipped: needs root (to mount with allow_other and run as another user)");
        return;
    }
    use std::os::unix::process::CommandExt;
    let root = tempfile::tempdir().unwrap();
    // The relay directory itself is open to everyone; the channel's files
    // are not (0600, the directory 0700).
    let mut p = std::fs::metadata(root.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
    std::fs::set_permissions(root.path(), p).unwrap();
    let m = Mount::start(root.path(), &["--allow-other"]);
    let chan = Channel::builder("private")
        .relay_dir(root.path())
        .subbuf_size(4096)
        .n_subbufs(2)
        .open()
        .unwrap();
    let file = m.path("private").join("cpu0");
    let nobody = |args: &[&Path]| {
        Command::new("cat")
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let o = nobody(&[&file]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Even with the directory opened up, the file's own mode refuses.
    chan.close().unwrap();
    drop(chan);
    let chan = Channel::builder("shared")
        .relay_dir(root.path())
        .subbuf_size(4096)
        .n_subbufs(2)
        .open()
        .unwrap();
    let mut p = std::fs::metadata(chan.dir()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
    std::fs::set_permissions(chan.dir(), p).unwrap();
    let o = nobody(&[&m.path("shared").join("cpu0")]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Nothing was consumed or held on their behalf.
    assert!(!reader_attached(&chan, 0));
    chan.close().unwrap();
    drop(m);
}

#[test]
fn bad_mount_points_are_clear_errors() {
    if !fuse() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let o = relayfs(root.path())
        .arg("mount")
        .arg(root.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("does not exist"), "{e}");
    let m = Mount::start(root.path(), &[]);
    let o = relayfs(root.path())
        .arg("mount")
        .arg(&m.mp)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("busy"), "{e}");
    // Still mounted and working.
    assert!(std::fs::read_dir(&m.mp).is_ok());
    drop(m);
}

#[test]
fn sigterm_unmounts_and_daemon_mode_unmounts_with_umount() {
    if !fuse() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut m = Mount::start(root.path(), &[]);
    let st = m.kill(libc::SIGTERM);
    assert!(st.success(), "{st}");
    assert_eq!(mount_type(&m.mp), None, "unmounted on SIGTERM");
    let mut m2 = Mount::start(root.path(), &[]);
    let st = m2.kill(libc::SIGINT);
    assert!(st.success(), "{st}");
    assert_eq!(mount_type(&m2.mp), None, "unmounted on SIGINT");

    let o = relayfs(root.path())
        .arg("mount")
        .arg("--daemon")
        .arg(&m.mp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert!(mount_type(&m.mp).is_some_and(|t| t.starts_with("fuse")));
    let o = relayfs(root.path())
        .arg("umount")
        .arg(&m.mp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mount_type(&m.mp), None);
    // The daemon ends once unmounted.
    wait_until("the daemon to exit", || {
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        !alive || zombie
    });
}

#[test]
fn an_interrupted_follow_read_ends() {
    if !fuse() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let m = Mount::start(root.path(), &["--follow"]);
    let chan = Channel::builder("idle")
        .relay_dir(root.path())
        .global(true)
        .subbuf_size(4096)
        .n_subbufs(2)
        .open()
        .unwrap();
    let mut cat = Command::new("cat")
        .arg(m.path("idle").join("cpu0"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("cat to attach", || reader_attached(&chan, 0));
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(cat.id() as i32, libc::SIGINT) };
    let st = cat.wait().unwrap();
    assert!(!st.success());
    wait_until("the reader to let go", || !reader_attached(&chan, 0));
    chan.close().unwrap();
    drop(m);
}

#[test]
fn sendfile_works_on_an_o_direct_open_and_is_refused_otherwise() {
    if !fuse() {
        return;
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let root = tempfile::tempdir().unwrap();
    let m = Mount::start(root.path(), &[]);
    let chan = Channel::builder("sf")
        .relay_dir(root.path())
        .global(true)
        .subbuf_size(4096)
        .n_subbufs(8)
        .open()
        .unwrap();
    let mut want = Vec::new();
    for i in 0..200u32 {
        let r = [(i % 251) as u8; 100];
        chan.write(&r).unwrap();
        want.extend_from_slice(&r);
    }
    chan.flush();
    let name = chan
        .buffer_path(0)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let file = m.path("sf").join(&name);
    let out_path = root.path().join("out");
    let out = std::fs::File::create(&out_path).unwrap();
    // Without O_DIRECT the kernel would look in the page cache: refused,
    // never a false end of file, and nothing consumed.
    let f = std::fs::File::open(&file).unwrap();
    // SAFETY: two valid descriptors, no offset pointer.
    let n = unsafe {
        libc::sendfile(
            out.as_raw_fd(),
            f.as_raw_fd(),
            std::ptr::null_mut(),
            1 << 20,
        )
    };
    let e = std::io::Error::last_os_error();
    assert_eq!((n, e.raw_os_error()), (-1, Some(libc::EINVAL)), "{e}");
    drop(f);
    // With O_DIRECT, sendfile moves the records.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&file)
        .unwrap();
    let mut moved = 0;
    loop {
        // SAFETY: as above.
        let n = unsafe {
            libc::sendfile(
                out.as_raw_fd(),
                f.as_raw_fd(),
                std::ptr::null_mut(),
                1 << 20,
            )
        };
        assert!(n >= 0, "{}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
        moved += n as usize;
    }
    assert_eq!(moved, want.len());
    assert!(std::fs::read(&out_path).unwrap() == want);
    drop(f);
    chan.close().unwrap();
    drop(m);
}

#[test]
fn links_and_other_users_directories_are_not_shown() {
    if !fuse() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let m = Mount::start(root.path(), &[]);
    let chan = Channel::builder("real")
        .relay_dir(root.path())
        .subbuf_size(4096)
        .n_subbufs(2)
        .open()
        .unwrap();
    std::os::unix::fs::symlink(chan.dir(), root.path().join("link")).unwrap();
    std::fs::create_dir(root.path().join("open")).unwrap();
    let mut p = std::fs::metadata(root.path().join("open"))
        .unwrap()
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o777);
    std::fs::set_permissions(root.path().join("open"), p).unwrap();
    if is_root() {
        let d = root.path().join("foreign");
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
    }
    let names: Vec<String> = std::fs::read_dir(&m.mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        ["real"],
        "a link, a world-writable directory or another user's is not a channel"
    );
    for n in ["link", "open", "foreign"] {
        assert!(!m.path(n).exists(), "{n}");
    }
    chan.close().unwrap();
    drop(m);
}

/// A `--follow` read waiting for data, whose reader is killed by a signal
/// (Ctrl-C on `cat`: SIGINT's default action) just as data comes: the
/// watcher must not consume that data for a reader that is dying (the
/// kernel throws the reply away with the process), or it is lost without
/// being counted. Nothing is consumed for a reader with a signal waiting:
/// it gets `EINTR`, and the data stays for the next reader.
#[test]
fn a_follow_reader_killed_as_data_comes_loses_nothing() {
    if !fuse() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let m = Mount::start(root.path(), &["--follow"]);
    for round in 0..5u32 {
        // A channel of its own each time: the next `cat` would read (and
        // rightly consume) what the last one left.
        let name = format!("dying{round}");
        let chan = Channel::builder(&name)
            .relay_dir(root.path())
            .global(true)
            .subbuf_size(4096)
            .n_subbufs(4)
            .open()
            .unwrap();
        let mut cat = Command::new("cat")
            .arg(m.path(&name).join("cpu0"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("cat to attach", || reader_attached(&chan, 0));
        // Its read waits in the mount (nothing to read).
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(cat.id() as i32, libc::SIGINT) };
        // The data comes at once: the producer's wakeup reaches the
        // watcher long before its 200 ms look notices the signal.
        for i in 0..10u32 {
            chan.write(&[(round * 10 + i) as u8; 100]).unwrap();
        }
        chan.flush();
        assert!(!cat.wait().unwrap().success());
        wait_until("the reader to let go", || !reader_attached(&chan, 0));
        let s = chan.stats(0);
        assert_eq!(
            s.bytes_consumed, 0,
            "round {round}: bytes consumed for a reader that was dying, and lost: {s:?}"
        );
        // Everything is still there for the next reader.
        let mut f = relayfs::RelayFile::open(chan.buffer_path(0)).unwrap();
        let mut buf = vec![0u8; 65536];
        assert_eq!(f.read(&mut buf).unwrap(), 10 * 100, "round {round}");
        drop(f);
        chan.close().unwrap();
    }
    drop(m);
}

/// A mount point inside the relay directory (or one that holds it) is
/// refused: the mount would stat its own mount point while listing, and
/// its one filesystem thread wait for itself, hanging it and, unkillably,
/// every reader (`ls` in state D).
#[test]
fn a_mount_point_inside_the_relay_directory_is_refused() {
    if !fuse() {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let top_path = top.path().canonicalize().unwrap();
    let relay = top_path.join("relay");
    std::fs::create_dir_all(relay.join("view")).unwrap();
    for mp in [relay.join("view"), top_path.clone()] {
        let mut c = relayfs(&relay)
            .arg("mount")
            .arg(&mp)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        let st = loop {
            if let Some(st) = c.try_wait().unwrap() {
                break Some(st);
            }
            if t.elapsed() > Duration::from_secs(5) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let Some(st) = st else {
            // Mounted: never look inside (that hangs); take it down.
            let _ = c.kill();
            let _ = c.wait();
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&mp)
                .status();
            panic!("relayfs mount {mp:?} over relay directory {relay:?} was not refused");
        };
        let mut e = String::new();
        c.stderr.take().unwrap().read_to_string(&mut e).unwrap();
        assert_eq!(st.code(), Some(1), "{mp:?}: {e}");
        assert!(e.contains("overlap"), "{mp:?}: {e}");
        assert!(mount_type(&mp).is_none(), "{mp:?}");
    }
}

/// A small xorshift generator seeded from the clock: kill moments that
/// differ from run to run (the seed is printed, to replay a failure).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("RELAYFS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("kill moments: RELAYFS_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn mounts_killed_at_random_moments_lose_nothing_uncounted_and_deliver_nothing_twice() {
    if !fuse() {
        return;
    }
    const REC: usize = 64;
    const RECORDS: u64 = 150_000;
    const KILLS: usize = 25;
    let root = tempfile::tempdir().unwrap();
    let chan = Channel::builder("killed")
        .relay_dir(root.path())
        .global(true)
        .subbuf_size(4096)
        .n_subbufs(64)
        .open()
        .unwrap();
    let name = chan
        .buffer_path(0)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut rng = Rng::new();
    let mut got = Vec::new();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        // The producer: numbered records, paced so that the reader often
        // finds a sub-buffer half written (reads end where it is committed).
        let w = sc.spawn(|| {
            for i in 0..RECORDS {
                let mut r = [0u8; REC];
                r[..8].copy_from_slice(&i.to_le_bytes());
                r[8..].fill((i % 251) as u8);
                let _ = chan.write(&r); // a refusal is counted by the channel
                if i % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            chan.flush();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut m = Mount::start(root.path(), &[]);
        let mp = m.mp.clone();
        let mut buf = vec![0u8; 1 << 20];
        for it in 0..KILLS {
            let path = m.path("killed").join(&name);
            let mut f = open_ro(&path).unwrap_or_else(|e| {
                let ls = std::fs::read_dir(m.path("killed"))
                    .map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>());
                panic!("kill {it}: {}: {e}; {ls:?}", path.display())
            });
            let pid = m.child.as_ref().unwrap().id() as i32;
            let delay = Duration::from_micros(500 + rng.below(20_000));
            let killer = sc.spawn(move || {
                std::thread::sleep(delay);
                // SAFETY: kill(2) on our own child's pid (not waited for yet).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            });
            loop {
                match f.read(&mut buf) {
                    Ok(0) => std::thread::sleep(Duration::from_micros(100)),
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                    Err(e) => {
                        // ECONNABORTED for a read in flight at the kill.
                        let dead = [libc::ENOTCONN, libc::ECONNABORTED];
                        assert!(dead.contains(&e.raw_os_error().unwrap_or(0)), "{e}");
                        break;
                    }
                }
            }
            killer.join().unwrap();
            m.child.take().unwrap().wait().unwrap();
            drop(f);
            // A process another test is starting may hold a copy of `f`
            // for a moment (between its fork and its exec, which closes
            // it): the unmount is then refused as busy. Try again.
            let mut tries = 0;
            let o = loop {
                let o = relayfs(root.path())
                    .arg("umount")
                    .arg(&mp)
                    .output()
                    .unwrap();
                let busy = String::from_utf8_lossy(&o.stderr).contains("is busy");
                if o.status.success() || !busy || tries == 100 {
                    break o;
                }
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            // The dead mount's guard must not unmount its successor.
            let dir = m._dir.take();
            m.mp = PathBuf::new();
            m = Mount::start_at(root.path(), &mp, &[]);
            m._dir = dir;
        }
        // The last mount reads to the end.
        let mut f = open_ro(&m.path("killed").join(&name)).unwrap();
        loop {
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            let k = f.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..k]);
            if k == 0 {
                if finished {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        w.join().unwrap();
        drop(f);
        drop(m);
    });
    // Decode: whole records only (every read ends on a record boundary
    // here), each intact, none twice.
    assert_eq!(got.len() % REC, 0, "whole records");
    let mut seen = vec![false; RECORDS as usize];
    for r in got.chunks(REC) {
        let i = u64::from_le_bytes(r[..8].try_into().unwrap());
        assert!(i < RECORDS, "record number {i}");
        assert!(
            r[8..].iter().all(|&b| b == (i % 251) as u8),
            "record {i} intact"
        );
        assert!(!seen[i as usize], "record {i} delivered twice");
        seen[i as usize] = true;
    }
    let delivered = got.len() as u64 / REC as u64;
    let st = chan.stats(0);
    chan.close().unwrap();
    eprintln!(
        "{KILLS} kills: {delivered} records delivered, {} counted lost in a hand-off ({} of them delivered), {} dropped (buffer full)",
        st.discarded_records,
        delivered.saturating_sub(st.records_consumed),
        st.dropped_full
    );
    // The counters add up: every record offered is consumed or counted
    // lost.
    assert_eq!(st.records_consumed + st.lost(), RECORDS, "{st:?}");
    // Nothing is lost uncounted: every record the reader did not get is
    // counted lost. A mount killed while it wrote a reply dies when the
    // write returns, the reply made: those records are delivered but
    // counted lost (never the other way round), and exactly those.
    let missing = RECORDS - delivered;
    assert!(st.lost() >= missing, "{missing} missing: {st:?}");
    assert!(delivered >= st.records_consumed, "{st:?}");
    assert_eq!(
        st.lost() - missing,
        delivered - st.records_consumed,
        "counted lost though delivered: {st:?}"
    );
    assert!(st.bytes_consumed <= got.len() as u64, "{st:?}");
    assert_eq!(
        (got.len() as u64 - st.bytes_consumed) / REC as u64,
        delivered - st.records_consumed,
        "{st:?}"
    );
}

#[test]
fn sigterm_ends_a_follow_read_and_the_mount_with_it() {
    if !fuse() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut m = Mount::start(root.path(), &["--follow"]);
    let chan = Channel::builder("quiet")
        .relay_dir(root.path())
        .global(true)
        .subbuf_size(4096)
        .n_subbufs(2)
        .open()
        .unwrap();
    chan.write(b"one record").unwrap();
    chan.flush();
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut cat = Command::new("cat")
        .arg(m.path("quiet").join("cpu0"))
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // cat got the record and waits in read for more.
    wait_until("cat to read", || {
        std::fs::metadata(out.path()).unwrap().len() == 10
    });
    // The mount stops: the waiting read ends with an error, cat exits,
    // the mount unmounts and exits 0, and the channel is untouched.
    let mut c = m.child.take().unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let st = cat.wait().unwrap();
    assert!(
        !st.success(),
        "the read ended with an error, not a false end: {st}"
    );
    let st = c.wait().unwrap();
    assert!(st.success(), "{st}");
    assert_eq!(mount_type(&m.mp), None, "unmounted");
    assert!(!reader_attached(&chan, 0));
    let s = chan.close().unwrap();
    assert_eq!((s.records_consumed, s.lost()), (1, 0), "{s:?}");
}

#[test]
fn an_overwrite_channel_read_through_the_mount_gives_its_latest_records_intact() {
    if !fuse() {
        return;
    }
    const REC: usize = 64;
    let root = tempfile::tempdir().unwrap();
    let chan = Channel::builder("ow")
        .relay_dir(root.path())
        .global(true)
        .subbuf_size(4096)
        .n_subbufs(4)
        .mode(relayfs::Mode::Overwrite)
        .open()
        .unwrap();
    let name = chan.buffer_path(0).file_name().unwrap().to_owned();
    let write = |from: u64, to: u64| {
        for i in from..to {
            let mut r = [0u8; REC];
            r[..8].copy_from_slice(&i.to_le_bytes());
            r[8..].fill((i % 251) as u8);
            chan.write(&r).unwrap();
        }
        chan.flush();
    };
    let m = Mount::start(root.path(), &[]);
    let mut f = open_ro(&m.path("ow").join(&name)).unwrap();
    let mut delivered = Vec::new();
    // Twice: the producer laps the buffer many times, then the reader
    // takes what is left (replied from its validated copy of each
    // sub-buffer).
    for (from, to) in [(0, 1000), (1000, 2000)] {
        write(from, to);
        let got = read_all(&mut f);
        assert_eq!(got.len() % REC, 0, "whole records");
        let nums: Vec<u64> = got
            .chunks(REC)
            .map(|r| {
                let i = u64::from_le_bytes(r[..8].try_into().unwrap());
                assert!(
                    r[8..].iter().all(|&b| b == (i % 251) as u8),
                    "record {i} intact"
                );
                i
            })
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
        assert_eq!(nums.last(), Some(&(to - 1)), "the latest ones");
        assert!(nums[0] >= from, "nothing of before: {nums:?}");
        delivered.extend(nums);
    }
    drop(f);
    let st = chan.close().unwrap();
    assert_eq!(st.records_consumed, delivered.len() as u64, "{st:?}");
    assert_eq!(st.records_consumed + st.lost(), 2000, "{st:?}");
    drop(m);
}

/// The producer of `a_stuck_subbuf_does_not_end_a_plain_read`, run as a
/// child of the test binary (only with `RELAYFS_MOUNT_STUCK` set): writes
/// 300 records, reserves 24 bytes and holds them while 400 more close
/// that sub-buffer (it is stuck behind the head once the process dies),
/// says so, and sleeps until killed.
#[test]
fn child_stuck_producer() {
    let Ok(root) = std::env::var("RELAYFS_MOUNT_STUCK") else {
        return;
    };
    let root = PathBuf::from(root);
    let chan = Channel::builder("stuck")
        .relay_dir(&root)
        .subbuf_size(4096)
        .n_subbufs(64)
        .global(true)
        .open()
        .unwrap();
    let rec = |i: u64| demo_record(0, i, 64);
    for i in 0..300 {
        chan.write(&rec(i)).unwrap();
    }
    let _held = chan.reserve(24).unwrap();
    for i in 300..700 {
        chan.write(&rec(i)).unwrap();
    }
    std::fs::write(root.join("phase2"), b"").unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

/// A producer killed holding a reservation behind its head: through the
/// mount without `--follow`, `read` (as `cat` does it) stops for good at
/// the stuck sub-buffer though complete ones wait after it, neither
/// delivered nor counted, until something calls `poll`.
#[test]
#[ignore = "defect: the mount's plain read never gives a stuck sub-buffer up (only poll does): cat of a dead channel stops early, the rest neither delivered nor counted"]
fn a_stuck_subbuf_does_not_end_a_plain_read() {
    if !fuse() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_stuck_producer", "--exact", "--test-threads=1"])
        .env("RELAYFS_MOUNT_STUCK", root.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the producer", || root.path().join("phase2").exists());
    child.kill().unwrap();
    child.wait().unwrap();
    let m = Mount::start(root.path(), &[]);
    let names = buffer_names(&m.path("stuck"));
    let mut f = open_ro(&m.path("stuck").join(&names[0])).unwrap();
    let got = read_all(&mut f);
    let again = read_all(&mut f);
    let n = (got.len() + again.len()) / 64;
    let st = std::fs::read_to_string(m.path("stuck/stats")).unwrap();
    let st: Value = serde_json::from_str(&st).unwrap();
    let b = &st["buffers"][0];
    let written = b["records_written"].as_u64().unwrap();
    let lost = b["lost"].as_u64().unwrap();
    assert_eq!(written, 700, "{st}");
    assert_eq!(
        n as u64 + lost,
        written,
        "read to 0 twice: {n} records delivered, {lost} lost: {st}"
    );
    drop(f);
    drop(m);
}
