//! `relayfs record --to nats://` and `relayfs pull` against real
//! `nats-server -js` processes on free loopback ports, each with a store
//! directory of its own, stopped when the test ends.
//!
//! Without `nats-server` these tests fail under `CI=true` and are skipped,
//! loudly, elsewhere.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use relayfs::{Channel, Stale};
use serde_json::Value;

mod common;
use common::*;

/// `nats-server`, or `None` (skip, loudly) outside CI; under `CI=true` a
/// missing server fails the test (`.ci/run` installs it).
fn nats_server() -> Option<PathBuf> {
    let found = which("nats-server");
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("no nats-server found, and CI=true: install it (.ci/run does: apt-get install nats-server)");
        }
        eprintln!("\n*** skipped: no nats-server on PATH: recording into NATS is NOT tested ***\n");
    }
    found
}

fn free_port() -> u16 {
    // Never the same port twice in this process: the tests run at once, and
    // the kernel may hand a port let go by one test's probe to another's.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let p = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
}

/// A `nats-server -js` child, killed (and waited for) when dropped.
struct Server {
    bin: PathBuf,
    child: Option<Child>,
    port: u16,
    /// Arguments after the port (store directory, or a config file).
    args: Vec<String>,
    log: PathBuf,
}

impl Server {
    /// Starts a single JetStream server storing in `store`, on a free port
    /// (another one if that one was taken meanwhile).
    fn start(bin: &Path, store: &Path, extra: &[&str]) -> Server {
        let mut args = vec!["-js".to_string(), "-sd".into(), store.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::start_args(bin, args, &store.with_extension("log"))
    }

    fn start_args(bin: &Path, args: Vec<String>, log: &Path) -> Server {
        for _ in 0..10 {
            let mut s = Server {
                bin: bin.to_path_buf(),
                child: None,
                port: free_port(),
                args: args.clone(),
                log: log.to_path_buf(),
            };
            if s.spawn() {
                return s;
            }
        }
        panic!(
            "nats-server did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// Starts the server (again) on its port; false if it exited.
    fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(&self.log).unwrap();
        let mut child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            // Ours is up once it says so in its own log and still runs: a
            // connection alone could reach another process's server that
            // took the port first (ours then exits).
            if std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains("Server is ready"))
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && child.try_wait().unwrap().is_none()
            {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Starts it again on the same port and store, retrying while the port
    /// is still being let go.
    fn restart(&mut self) {
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "nats-server did not restart: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// `kill -9`.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `relayfs record CHANNEL --to URL --host HOST --json` for the relay
/// directory `root`, started.
fn recorder(root: &Path, channel: &str, url: &str, host: &str, extra: &[&str]) -> Child {
    relayfs(root)
        .args([
            "record", channel, "--wait", "--json", "--to", url, "--host", host,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: Child) -> (Output, Value) {
    let out = c.wait_with_output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, v)
}

fn pull(root: &Path, url: &str, out: &Path, extra: &[&str]) -> (Output, Value) {
    run_json(
        relayfs(root)
            .args(["pull", url, "--json", "-o"])
            .arg(out)
            .args(extra),
    )
}

/// `relayfs verify DIR` with more arguments; passes or shows why not.
fn verify(root: &Path, dir: &Path, extra: &[&str]) {
    let v = relayfs(root)
        .arg("verify")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "verify {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

fn summary(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("relayfs-record.json")).unwrap()).unwrap()
}

#[test]
fn three_hosts_record_into_one_stream_and_pull_gets_each_back_verified() {
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&bin, &tmp.path().join("store"), &[]);
    let url = server.url();
    let hosts = ["alpha", "beta", "gamma"];
    let mut recs = Vec::new();
    for h in hosts {
        let root = tmp.path().join(h);
        std::fs::create_dir(&root).unwrap();
        recs.push(recorder(&root, "demo", &url, h, &[]));
    }
    // The producers: separate processes, one per "host", each its own
    // relay directory, each with its own seed and sizes.
    let producers: Vec<Child> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            relayfs(&tmp.path().join(h))
                .args([
                    "demo",
                    "--no-record",
                    "--name",
                    "demo",
                    "--json",
                    "--threads",
                    "2",
                ])
                .args([
                    "--count",
                    "20000",
                    "--size",
                    "24..600",
                    "--subbuf-size",
                    "16K",
                ])
                .args(["--seed", &(i + 1).to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut demos = Vec::new();
    for (p, h) in producers.into_iter().zip(hosts) {
        let (out, v) = finish(p);
        assert!(out.status.success(), "{h}: {v}");
        let counters = tmp.path().join(format!("{h}.json"));
        std::fs::write(&counters, v.to_string()).unwrap();
        demos.push((v, counters));
    }
    let mut recorded = Vec::new();
    for (r, h) in recs.into_iter().zip(hosts) {
        let (out, v) = finish(r);
        assert!(out.status.success(), "{h}: {v}");
        assert_eq!(v["end"], "closed", "{h}: {v}");
        recorded.push(v);
    }
    let out = tmp.path().join("pulled");
    let (po, pv) = pull(tmp.path(), &url, &out, &["--stream", "relayfs"]);
    assert!(po.status.success(), "{pv}");
    assert_eq!(pv["gaps"], 0, "{pv}");
    assert_eq!(pv["hosts"].as_array().unwrap().len(), 3, "{pv}");
    for (i, h) in hosts.iter().enumerate() {
        let dir = out.join(h).join("demo");
        let (demo, counters) = &demos[i];
        // verify holds the files to the producer's exact counters.
        verify(
            tmp.path(),
            &dir,
            &["--counters", counters.to_str().unwrap()],
        );
        let s = summary(&dir);
        let rec = &recorded[i];
        for k in [
            "records_delivered",
            "lost",
            "dropped_full",
            "bytes",
            "records_written",
        ] {
            assert_eq!(s[k], rec[k], "{h}: {k}: pulled {s} recorded {rec}");
        }
        let written = demo["written"].as_u64().unwrap();
        assert_eq!(
            s["records_delivered"].as_u64().unwrap() + s["lost"].as_u64().unwrap(),
            written,
            "{h}: every record offered is delivered or counted lost"
        );
        let host = pv["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["host"] == *h)
            .unwrap();
        assert_eq!(host["records_delivered"], s["records_delivered"]);
        assert_eq!(host["duplicates"], 0);
    }
    // --host picks one host only.
    let one = tmp.path().join("one");
    let (po, pv) = pull(tmp.path(), &url, &one, &["--host", "beta"]);
    assert!(po.status.success(), "{pv}");
    assert_eq!(pv["hosts"].as_array().unwrap().len(), 1, "{pv}");
    assert!(one.join("beta/demo/cpu0.out").exists());
    assert!(!one.join("alpha").exists());
}

/// A producer in this process: `n` demo records (writer 0) of 200 bytes
/// into channel `name` under `root`, in batches with pauses, calling
/// `at(batch)` between batches. Returns what the channel counted.
fn produce(
    root: &Path,
    name: &str,
    batches: u64,
    per: u64,
    mut at: impl FnMut(u64, &Channel),
) -> relayfs::BufferStats {
    let chan = Channel::builder(name)
        .relay_dir(root)
        .global(true)
        .subbuf_size(16 << 10)
        .n_subbufs(8)
        .stale(Stale::Replace)
        .open()
        .unwrap();
    wait_until("the recorder attached", || reader_attached(&chan, 0));
    let mut seq = 0;
    for b in 0..batches {
        for _ in 0..per {
            // A full buffer drops the record and counts it.
            let _ = chan.write_cpu(0, &demo_record(0, seq, 200));
            seq += 1;
        }
        at(b, &chan);
        std::thread::sleep(Duration::from_millis(5));
    }
    chan.close().unwrap()
}

#[test]
fn a_recorder_killed_and_restarted_leaves_no_gap_and_no_duplicate() {
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&bin, &tmp.path().join("store"), &[]);
    let url = server.url();
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let mut rec = Some(recorder(&root, "restart", &url, "h", &[]));
    let (batches, per) = (120, 100);
    let stats = produce(&root, "restart", batches, per, |b, chan| {
        if b == 40 {
            // Mid-stream: once the recorder has handed back some
            // sub-buffers, kill it.
            wait_until("some sub-buffers consumed", || {
                chan.stats(0).subbufs_consumed > 2
            });
            let mut r = rec.take().unwrap();
            let _ = r.kill();
            let _ = r.wait();
        }
        if b == 60 {
            rec = Some(recorder(&root, "restart", &url, "h", &[]));
            wait_until("the new recorder attached", || reader_attached(chan, 0));
        }
    });
    let (out, v) = finish(rec.take().unwrap());
    assert!(out.status.success(), "{v}");
    let dir = tmp.path().join("pulled");
    let (po, pv) = pull(tmp.path(), &url, &dir, &[]);
    assert!(po.status.success(), "{pv}");
    assert_eq!(pv["gaps"], 0, "{pv}");
    assert_eq!(pv["hosts"][0]["duplicates"], 0, "{pv}");
    let dir = dir.join("h/restart");
    let s = summary(&dir);
    // The counters carried through are the buffer's own: what the producer
    // placed and dropped (final at its close), and what the recorders
    // delivered after it; they add up to every record offered.
    assert_eq!(s["records_written"], stats.records_written(), "{s}");
    assert_eq!(s["dropped_full"], stats.dropped_full, "{s}");
    assert_eq!(s["records_delivered"], stats.records_written(), "{s}");
    assert_eq!(
        s["records_delivered"].as_u64().unwrap() + s["lost"].as_u64().unwrap(),
        batches * per,
        "{s}"
    );
    verify(
        tmp.path(),
        &dir,
        &["--writers", "1", "--count", &(batches * per).to_string()],
    );
}

#[test]
fn the_broker_killed_and_restarted_loses_nothing_acknowledged() {
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(&bin, &tmp.path().join("store"), &[]);
    let url = server.url();
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let rec = recorder(&root, "outage", &url, "h", &[]);
    let (batches, per) = (120, 100);
    let mut dropped_before = 0;
    let stats = produce(&root, "outage", batches, per, |b, chan| {
        if b == 40 {
            wait_until("some sub-buffers consumed", || {
                chan.stats(0).subbufs_consumed > 2
            });
            server.kill9();
            dropped_before = chan.stats(0).dropped_full;
        }
        if b == 80 {
            server.restart();
        }
    });
    let (out, v) = finish(rec);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["end"], "closed", "{v}");
    assert!(
        stats.dropped_full > dropped_before,
        "the producer ran on during the outage, dropping and counting: {stats:?}"
    );
    let dir = tmp.path().join("pulled");
    let (po, pv) = pull(tmp.path(), &url, &dir, &[]);
    assert!(po.status.success(), "{pv}");
    assert_eq!(pv["gaps"], 0, "{pv}");
    assert_eq!(pv["hosts"][0]["duplicates"], 0, "{pv}");
    let dir = dir.join("h/outage");
    let s = summary(&dir);
    // The counters carried through are the buffer's own: what the producer
    // placed and dropped (final at its close), and what the recorders
    // delivered after it; they add up to every record offered.
    assert_eq!(s["records_written"], stats.records_written(), "{s}");
    assert_eq!(s["dropped_full"], stats.dropped_full, "{s}");
    assert_eq!(s["records_delivered"], stats.records_written(), "{s}");
    assert_eq!(
        s["records_delivered"].as_u64().unwrap() + s["lost"].as_u64().unwrap(),
        batches * per,
        "{s}"
    );
    verify(
        tmp.path(),
        &dir,
        &["--writers", "1", "--count", &(batches * per).to_string()],
    );
}

#[test]
fn with_a_spool_an_outage_fills_the_disk_not_the_buffer() {
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(&bin, &tmp.path().join("store"), &[]);
    let url = server.url();
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let spool = tmp.path().join("spool");
    let rec = recorder(
        &root,
        "spooled",
        &url,
        "h",
        &["--spool", spool.to_str().unwrap(), "--spool-max", "64M"],
    );
    let spooled = || std::fs::read_dir(spool.join("h/spooled/cpu0")).map_or(0, |d| d.count());
    let (batches, per) = (120, 100);
    let mut seen_spooled = 0;
    let stats = produce(&root, "spooled", batches, per, |b, chan| {
        if b == 40 {
            wait_until("some sub-buffers consumed", || {
                chan.stats(0).subbufs_consumed > 2
            });
            server.kill9();
        }
        if b == 79 {
            // The outage's data went to the spool: the recorder kept
            // consuming while the broker was away.
            wait_until("sub-buffers in the spool", || spooled() > 0);
            seen_spooled = spooled();
        }
        if b == 80 {
            server.restart();
        }
    });
    let (out, v) = finish(rec);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["end"], "closed", "{v}");
    assert!(seen_spooled > 0);
    assert_eq!(
        std::fs::read_dir(spool.join("h/spooled/cpu0"))
            .unwrap()
            .count(),
        0,
        "everything spooled was sent and removed"
    );
    let dir = tmp.path().join("pulled");
    let (po, pv) = pull(tmp.path(), &url, &dir, &[]);
    assert!(po.status.success(), "{pv}");
    assert_eq!(pv["gaps"], 0, "{pv}");
    assert_eq!(pv["hosts"][0]["duplicates"], 0, "{pv}");
    let dir = dir.join("h/spooled");
    let s = summary(&dir);
    assert_eq!(s["records_written"], stats.records_written(), "{s}");
    assert_eq!(s["dropped_full"], stats.dropped_full, "{s}");
    assert_eq!(s["records_delivered"], stats.records_written(), "{s}");
    verify(
        tmp.path(),
        &dir,
        &["--writers", "1", "--count", &(batches * per).to_string()],
    );
}

#[test]
fn pull_follow_writes_what_arrives_until_interrupted() {
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&bin, &tmp.path().join("store"), &[]);
    let url = server.url();
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let out = tmp.path().join("followed");
    // Started before anything is recorded: the stream is made by the
    // recorder, so wait for it.
    let rec = recorder(&root, "live", &url, "h", &[]);
    let (batches, per) = (20, 100);
    let mut follower = None;
    let stats = produce(&root, "live", batches, per, |b, chan| {
        if b == 0 {
            wait_until("some sub-buffers consumed", || {
                chan.stats(0).subbufs_consumed > 0
            });
            follower = Some(
                relayfs(tmp.path())
                    .args(["pull", &url, "--follow", "--json", "-o"])
                    .arg(&out)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
        }
    });
    let (o, v) = finish(rec);
    assert!(o.status.success(), "{v}");
    let follower = follower.unwrap();
    // Everything delivered reaches the files while it follows.
    let file = out.join("h/live/cpu0.out");
    let want = v["bytes"].as_u64().unwrap();
    wait_until("the follower wrote everything", || {
        std::fs::metadata(&file).is_ok_and(|m| m.len() == want)
    });
    // And, at the recorder's end message, the channel's summary.
    let summary_file = out.join("h/live/relayfs-record.json");
    wait_until("the follower wrote the summary", || {
        std::fs::read(&summary_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v["end"] == "closed")
    });
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(follower.id() as i32, libc::SIGINT) };
    let (po, pv) = finish(follower);
    assert!(po.status.success(), "{pv}");
    assert_eq!(pv["gaps"], 0, "{pv}");
    let dir = out.join("h/live");
    let s = summary(&dir);
    assert_eq!(s["records_delivered"], stats.records_written(), "{s}");
    verify(
        tmp.path(),
        &dir,
        &["--writers", "1", "--count", &(batches * per).to_string()],
    );
}

/// Runs `relayfs record` against a channel that exists, expecting an
/// error that says `what`.
fn refused(root: &Path, args: &[&str], what: &str) {
    let out = relayfs(root)
        .args(["record", "bad"])
        .args(args)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(what), "{args:?}: expected {what:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_urls_refused_connections_and_failed_logins_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let _chan = Channel::builder("bad").relay_dir(root).open().unwrap();
    refused(root, &["--to", "http://127.0.0.1:4222"], "bad NATS URL");
    refused(root, &["--to", "nats://127.0.0.1:notaport"], "bad NATS URL");
    let port = free_port();
    refused(
        root,
        &["--to", &format!("nats://127.0.0.1:{port}")],
        "cannot connect",
    );
    let Some(bin) = nats_server() else { return };
    // User and password.
    let s = Server::start(
        &bin,
        &tmp.path().join("s1"),
        &["--user", "u", "--pass", "secret"],
    );
    refused(root, &["--to", &s.url()], "authentication failed");
    refused(
        root,
        &["--to", &s.url(), "--user", "u", "--password", "wrong"],
        "authentication failed with --user and --password",
    );
    // A token.
    let t = Server::start(&bin, &tmp.path().join("s2"), &["--auth", "tok"]);
    refused(
        root,
        &["--to", &t.url(), "--token", "nope"],
        "authentication failed with --token",
    );
    // A credentials file that is not one.
    let creds = tmp.path().join("x.creds");
    std::fs::write(&creds, "not a credentials file").unwrap();
    refused(
        root,
        &["--to", &t.url(), "--creds", creds.to_str().unwrap()],
        "credentials file",
    );
}

#[test]
fn an_incompatible_stream_and_a_tiny_max_payload_are_clear_errors() {
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let chan = Channel::builder("bad").relay_dir(&root).open().unwrap();
    let s = Server::start(&bin, &tmp.path().join("s1"), &[]);
    // A stream made for another subject prefix.
    let first = relayfs(&root)
        .args([
            "record",
            "bad",
            "--quiet",
            "--duration",
            "0.2",
            "--to",
            &s.url(),
        ])
        .args(["--stream", "other", "--subject", "elsewhere"])
        .output()
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    refused(
        &root,
        &["--to", &s.url(), "--stream", "other"],
        "incompatible settings",
    );
    // pull: a stream that isn't there, a bad URL.
    let out = tmp.path().join("pulled");
    let url = s.url();
    for (args, what) in [
        (
            vec!["pull", url.as_str(), "--stream", "missing"],
            "no stream \"missing\"",
        ),
        (vec!["pull", "nats//x"], "bad NATS URL"),
    ] {
        let o = relayfs(&root)
            .args(&args)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(what), "{args:?}: expected {what:?} in: {err}");
    }
    // A server whose max_payload can't carry a message.
    let conf = tmp.path().join("tiny.conf");
    std::fs::write(&conf, "max_payload: 512\n").unwrap();
    let t = Server::start(
        &bin,
        &tmp.path().join("s2"),
        &["-c", conf.to_str().unwrap()],
    );
    refused(&root, &["--to", &t.url()], "max_payload");
    chan.close().unwrap();
}

#[test]
fn a_three_node_cluster_loses_nothing_when_a_node_dies() {
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let route_list = routes
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut nodes: Vec<Server> = (0..3)
        .map(|i| {
            let conf = tmp.path().join(format!("n{i}.conf"));
            let store = tmp.path().join(format!("n{i}"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\njetstream {{ store_dir: \"{}\" }}\ncluster {{\n  name: relay\n  listen: 127.0.0.1:{}\n  routes: [{route_list}]\n}}\n",
                    store.display(),
                    routes[i]
                ),
            )
            .unwrap();
            Server::start_args(
                &bin,
                vec!["-c".into(), conf.display().to_string()],
                &tmp.path().join(format!("n{i}.log")),
            )
        })
        .collect();
    let url = nodes[0].url();
    // The cluster has formed once one node is its JetStream metadata
    // leader; on a loaded machine that can take longer than the recorder
    // waits for a stream it can create.
    wait_until("a JetStream metadata leader", || {
        (0..3).any(|i| {
            std::fs::read_to_string(tmp.path().join(format!("n{i}.log")))
                .is_ok_and(|l| l.contains("metadata leader"))
        })
    });
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let rec = recorder(&root, "replicated", &url, "h", &["--replicas", "3"]);
    let (batches, per) = (120, 100);
    let stats = produce(&root, "replicated", batches, per, |b, chan| {
        if b == 40 {
            wait_until("some sub-buffers consumed", || {
                chan.stats(0).subbufs_consumed > 2
            });
            nodes[2].kill9();
        }
    });
    let (out, v) = finish(rec);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["end"], "closed", "{v}");
    // From a surviving node other than the recorder's.
    let dir = tmp.path().join("pulled");
    let (po, pv) = pull(tmp.path(), &nodes[1].url(), &dir, &[]);
    assert!(po.status.success(), "{pv}");
    assert_eq!(pv["gaps"], 0, "{pv}");
    assert_eq!(pv["hosts"][0]["duplicates"], 0, "{pv}");
    let dir = dir.join("h/replicated");
    let s = summary(&dir);
    assert_eq!(s["records_written"], stats.records_written(), "{s}");
    assert_eq!(s["dropped_full"], stats.dropped_full, "{s}");
    assert_eq!(s["records_delivered"], stats.records_written(), "{s}");
    verify(
        tmp.path(),
        &dir,
        &["--writers", "1", "--count", &(batches * per).to_string()],
    );
}

/// One producer thread writing `len`-byte demo records into `chan` as fast
/// as it can for `secs`; returns the median over batches of nanoseconds per
/// record offered.
fn hammer(chan: &Channel, len: usize, secs: f64, polite: bool) -> f64 {
    let mut per = Vec::new();
    let rec = demo_record(0, 0, len);
    let t = Instant::now();
    let mut seq = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        let b = Instant::now();
        let mut full = false;
        for _ in 0..1000 {
            full |= chan.write_cpu(0, &rec).is_err();
            seq += 1;
        }
        per.push(b.elapsed().as_nanos() as f64 / 1000.0);
        if full && polite {
            // The buffer is full: leave the CPU to the recorder and the
            // broker for a moment (a producer at a rate, not spinning).
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    std::hint::black_box(seq);
    median(&mut per)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The ceiling: the async-nats client publishing `msg`-byte messages with
/// acknowledgements, `window` in flight, for `secs`, on `url`'s server;
/// MB/s and the client's CPU seconds per GB.
fn client_ceiling(url: &str, msg: usize, window: usize, secs: f64) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url.trim_start_matches("nats://"))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "ceiling".into(),
            subjects: vec!["ceiling.>".into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
        let payload = bytes::Bytes::from(vec![7u8; msg]);
        let cpu0 = thread_cpu_s();
        let mut inflight = std::collections::VecDeque::new();
        let (t, mut sent, mut n) = (Instant::now(), 0u64, 0u64);
        while t.elapsed().as_secs_f64() < secs {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("c/{n}"));
            n += 1;
            let ack = js
                .publish_with_headers("ceiling.x", h, payload.clone())
                .await
                .unwrap();
            inflight.push_back(ack);
            if inflight.len() >= window {
                inflight.pop_front().unwrap().await.unwrap();
                sent += msg as u64;
            }
        }
        while let Some(a) = inflight.pop_front() {
            a.await.unwrap();
            sent += msg as u64;
        }
        let mb = sent as f64 / t.elapsed().as_secs_f64() / 1e6;
        let cpu = (thread_cpu_s() - cpu0) / (sent as f64 / 1e9);
        // Each run starts on an empty store (gigabytes on tmpfs otherwise).
        js.delete_stream("ceiling").await.unwrap();
        (mb, cpu)
    })
}

/// CPU seconds (user and system) of the process `pid` so far, from
/// `/proc/PID/stat` (in clock ticks).
fn proc_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which may hold spaces), from the
    // third: utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz as f64
}

/// CPU seconds (user and system) of the calling thread (the client's
/// single-threaded runtime).
fn thread_cpu_s() -> f64 {
    // SAFETY: all-zero is a valid rusage, which getrusage fills in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to write.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Deletes the stream `name` (after a benchmark run, so that the next run
/// starts on an empty store).
fn delete_stream(url: &str, name: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url.trim_start_matches("nats://"))
            .await
            .unwrap();
        async_nats::jetstream::new(client)
            .delete_stream(name)
            .await
            .unwrap();
    })
}

/// CPU seconds (user and system) of this process's children waited for.
fn children_cpu_s() -> f64 {
    // SAFETY: all-zero is a valid rusage, which getrusage fills in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to write.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// One relayfs run: a producer thread hammering a channel of 1 MiB
/// sub-buffers for `secs` while `relayfs record --to` ships it (or with no
/// reader), the `relayfs` binary `bin` if given; returns (MB/s delivered,
/// producer ns per record, the recorder's CPU seconds per GB delivered).
fn relayfs_run(
    root: &Path,
    url: Option<&str>,
    len: usize,
    secs: f64,
    i: usize,
    polite: bool,
    bin: Option<&Path>,
) -> (f64, f64, f64) {
    let name = format!("bench{i}");
    let window = bench_window().to_string();
    let rec = url.map(|u| {
        let mut c = relayfs(root);
        if let Some(b) = bin {
            c = Command::new(b);
            c.env("RELAYFS_DIR", root);
        }
        c.args([
            "record", &name, "--wait", "--json", "--to", u, "--host", "bench", "--quiet",
            "--window", &window,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    });
    let chan = Channel::builder(&name)
        .relay_dir(root)
        .global(true)
        .subbuf_size(1 << 20)
        .n_subbufs(16)
        .stale(Stale::Replace)
        .open()
        .unwrap();
    if rec.is_some() {
        wait_until("the recorder attached", || reader_attached(&chan, 0));
    }
    let t = Instant::now();
    let ns = hammer(&chan, len, secs, polite);
    let stats = chan.close().unwrap();
    let Some(rec) = rec else {
        return (0.0, ns, 0.0);
    };
    let cpu = children_cpu_s();
    let (out, v) = finish(rec);
    let cpu = children_cpu_s() - cpu;
    assert!(out.status.success(), "{v}");
    let said = String::from_utf8_lossy(&out.stderr);
    if !said.trim().is_empty() {
        // A retry, a stream recreated: what a slow run was doing.
        eprintln!("{name}: the recorder said: {}", said.trim());
    }
    let bytes = v["bytes"].as_u64().unwrap() as f64;
    let mb = bytes / t.elapsed().as_secs_f64() / 1e6;
    assert_eq!(
        v["records_delivered"].as_u64().unwrap() + v["lost"].as_u64().unwrap(),
        stats.records_written() + stats.dropped_full,
        "{v}"
    );
    delete_stream(url.unwrap(), "relayfs");
    (mb, ns, cpu / (bytes / 1e9))
}

/// Messages in flight, the recorder's `--window` and the client's
/// (`BENCH_WINDOW`, default the recorder's default).
fn bench_window() -> usize {
    std::env::var("BENCH_WINDOW")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// The benchmark of docs/PERFORMANCE.md ("Into NATS JetStream"): MB/s from
/// a relayfs channel (1 MiB sub-buffers) into a single-node JetStream whose
/// store is on tmpfs, against the async-nats client publishing 1 MiB
/// messages with acknowledgements on the same server in the same run; and
/// the producer's cost per record against no reader at all. Run with
///
/// ```text
/// cargo test --release -p relayfs-cli --test nats -- --ignored --nocapture jetstream_throughput
/// ```
#[test]
#[ignore = "a benchmark: run by hand (see its doc comment)"]
fn jetstream_throughput() {
    let Some(bin) = nats_server() else { return };
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    // A max_payload that takes a 1 MiB sub-buffer in one message (the
    // default, 1 MiB, would make it two parts).
    let conf = shm.path().join("bench.conf");
    std::fs::write(&conf, "max_payload: 8MB\n").unwrap();
    let server = Server::start(
        &bin,
        &shm.path().join("store"),
        &["-c", conf.to_str().unwrap()],
    );
    let url = server.url();
    let root = shm.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let len = 4096;
    // Another `relayfs` binary (an older build, say) measured beside this
    // one in the same run.
    let base: Option<PathBuf> = std::env::var_os("BENCH_BASELINE_RELAYFS").map(PathBuf::from);
    let (mut ceiling, mut shipped, mut paced) = (vec![], vec![], vec![]);
    let (mut ns_nats, mut ns_none, mut cpu) = (vec![], vec![], vec![]);
    let mut client_cpu = vec![];
    let (mut base_mb, mut base_cpu) = (vec![], vec![]);
    // The broker's CPUs busy (CPU seconds a second) while the client
    // publishes, and while `record --to` ships.
    let (mut broker_client, mut broker_record) = (vec![], vec![]);
    let broker = server.child.as_ref().unwrap().id();
    let busy = |f: &mut dyn FnMut()| {
        let (c, t) = (proc_cpu_s(broker), Instant::now());
        f();
        (proc_cpu_s(broker) - c) / t.elapsed().as_secs_f64()
    };
    for i in 0..3 {
        let (mut mb, mut c) = (0.0, 0.0);
        broker_client.push(busy(&mut || {
            (mb, c) = client_ceiling(&url, 1 << 20, bench_window(), secs)
        }));
        ceiling.push(mb);
        client_cpu.push(c);
        let (mut mb, mut ns, mut c) = (0.0, 0.0, 0.0);
        broker_record.push(busy(&mut || {
            (mb, ns, c) = relayfs_run(&root, Some(&url), len, secs, i, false, None)
        }));
        shipped.push(mb);
        ns_nats.push(ns);
        cpu.push(c);
        paced.push(relayfs_run(&root, Some(&url), len, secs, 20 + i, true, None).0);
        ns_none.push(relayfs_run(&root, None, len, secs, 10 + i, false, None).1);
        eprintln!(
            "round {i}: client {:.0} MB/s ({:.2} CPU s/GB, broker {:.2} CPUs), record --to {:.0} MB/s ({:.2} CPU s/GB, broker {:.2} CPUs), paced {:.0} MB/s",
            ceiling[i], client_cpu[i], broker_client[i], shipped[i], cpu[i], broker_record[i], paced[i]
        );
        if let Some(b) = &base {
            let (mb, _, c) = relayfs_run(&root, Some(&url), len, secs, 30 + i, false, Some(b));
            base_mb.push(mb);
            base_cpu.push(c);
            eprintln!("round {i}: baseline binary {mb:.0} MB/s ({c:.2} CPU s/GB)");
        }
    }
    // The client again, with a producer thread spinning beside it on a
    // channel no one reads (the same loop, the same CPU, as in the record
    // --to runs): on a machine of few CPUs, the producer's CPU is the
    // broker's loss in both.
    let mut ceiling_busy = vec![];
    for i in 0..3 {
        let chan = Channel::builder(&format!("busy{i}"))
            .relay_dir(&root)
            .global(true)
            .subbuf_size(1 << 20)
            .n_subbufs(16)
            .stale(Stale::Replace)
            .open()
            .unwrap();
        let mb = std::thread::scope(|sc| {
            let h = sc.spawn(|| hammer(&chan, len, secs, false));
            let mb = client_ceiling(&url, 1 << 20, bench_window(), secs).0;
            h.join().unwrap();
            mb
        });
        chan.close().unwrap();
        eprintln!("round {i}: client beside a spinning producer {mb:.0} MB/s");
        ceiling_busy.push(mb);
    }
    let cb = median(&mut ceiling_busy);
    let baseline = (!base_mb.is_empty()).then(|| {
        serde_json::json!({
            "binary": base.as_ref().map(|b| b.display().to_string()),
            "record_to_nats_mb_per_s": median(&mut base_mb),
            "recorder_cpu_s_per_gb": median(&mut base_cpu),
        })
    });
    let (c, s, p) = (
        median(&mut ceiling),
        median(&mut shipped),
        median(&mut paced),
    );
    let (a, b) = (median(&mut ns_nats), median(&mut ns_none));
    println!(
        "{}",
        serde_json::json!({
            "client_ceiling_mb_per_s": c,
            "record_to_nats_mb_per_s": s,
            "ratio_to_ceiling": s / c,
            "client_beside_spinning_producer_mb_per_s": cb,
            "ratio_to_client_beside_producer": s / cb,
            "record_to_nats_paced_producer_mb_per_s": p,
            "paced_ratio_to_ceiling": p / c,
            "producer_ns_per_record_with_nats_recorder": a,
            "producer_ns_per_record_no_reader": b,
            "producer_cost_ratio": a / b,
            "recorder_cpu_s_per_gb": median(&mut cpu),
            "client_cpu_s_per_gb": median(&mut client_cpu),
            "broker_cpus_busy_with_client": median(&mut broker_client),
            "broker_cpus_busy_with_record_to": median(&mut broker_record),
            "baseline": baseline,
            "record_bytes": len,
            "subbuf_size": 1 << 20,
            "runs": 3,
            "seconds_each": secs,
            "window": bench_window(),
        })
    );
}

#[test]
fn a_channel_created_again_and_recorded_again_is_not_taken_for_duplicates() {
    // Run a traced program, record it, run it again a minute later: the
    // channel is made anew (a new channel id) and its sequence numbers
    // start over at 0. Its sub-buffers are not the earlier ones: JetStream
    // must not drop them as duplicates within its duplicate window, and
    // pull must write the newer recording, not mix the two.
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&bin, &tmp.path().join("store"), &[]);
    let url = server.url();
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let mut last = None;
    for (batches, per) in [(20, 100), (40, 100)] {
        let rec = recorder(&root, "again", &url, "h", &[]);
        let stats = produce(&root, "again", batches, per, |_, _| {});
        let (out, v) = finish(rec);
        assert!(out.status.success(), "{v}");
        assert_eq!(v["end"], "closed", "{v}");
        last = Some((stats, batches * per));
    }
    let (stats, offered) = last.unwrap();
    let dir = tmp.path().join("pulled");
    let (po, pv) = pull(tmp.path(), &url, &dir, &[]);
    assert!(po.status.success(), "{pv}");
    assert_eq!(pv["gaps"], 0, "{pv}");
    assert_eq!(pv["hosts"][0]["duplicates"], 0, "{pv}");
    let dir = dir.join("h/again");
    let s = summary(&dir);
    assert_eq!(s["records_delivered"], stats.records_written(), "{s}");
    verify(
        tmp.path(),
        &dir,
        &["--writers", "1", "--count", &offered.to_string()],
    );
}

/// Publishes `payload` on `subject` with `headers` into the stream that
/// takes it, waiting for its acknowledgement.
fn publish_raw(url: &str, subject: &str, headers: &[(&str, &str)], payload: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url.trim_start_matches("nats://"))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        js.publish_with_headers(subject.to_string(), h, payload.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    });
}

#[test]
fn foreign_and_forged_messages_in_the_stream_are_skipped_not_the_end_of_the_pull() {
    // The stream takes relayfs.>: another program's message there, or a
    // forged one, must not stop a pull (or a collector's pull --follow)
    // of every recording in it.
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&bin, &tmp.path().join("store"), &[]);
    let url = server.url();
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let rec = recorder(&root, "mixed", &url, "h", &[]);
    let (batches, per) = (20, 100);
    let stats = produce(&root, "mixed", batches, per, |b, _| {
        if b == 10 {
            publish_raw(&url, "relayfs.x.y.z", &[], b"hello");
        }
    });
    let (out, v) = finish(rec);
    assert!(out.status.success(), "{v}");
    let data = |seq: &'static str, part: &'static str, parts: &'static str| {
        vec![
            ("Relayfs-Kind", "data"),
            ("Relayfs-Host", "h"),
            ("Relayfs-Channel", "mixed"),
            ("Relayfs-Buffer", "cpu0"),
            ("Relayfs-Seq", seq),
            ("Relayfs-Part", part),
            ("Relayfs-Parts", parts),
            ("Relayfs-Records", "1"),
        ]
    };
    let subject = "relayfs.h.mixed.cpu0";
    // A forged sequence number that has no successor; an absurd part
    // count; an end message that is no JSON; a kind we don't know.
    publish_raw(&url, subject, &data("18446744073709551615", "0", "1"), b"x");
    publish_raw(&url, subject, &data("5", "7", "3"), b"x");
    let mut end = data("0", "0", "1");
    end[0] = ("Relayfs-Kind", "end");
    publish_raw(&url, subject, &end, b"not json");
    let mut odd = data("0", "0", "1");
    odd[0] = ("Relayfs-Kind", "odd");
    publish_raw(&url, subject, &odd, b"x");
    let dir = tmp.path().join("pulled");
    let (po, pv) = pull(tmp.path(), &url, &dir, &[]);
    assert_eq!(po.status.code(), Some(1), "something was skipped: {pv}");
    assert_eq!(pv["skipped"], 5, "{pv}");
    assert_eq!(pv["gaps"], 0, "{pv}");
    let stderr = String::from_utf8_lossy(&po.stderr);
    assert!(stderr.contains("skipped: message"), "{stderr}");
    // The recording itself came through whole.
    let dir = dir.join("h/mixed");
    let s = summary(&dir);
    assert_eq!(s["records_delivered"], stats.records_written(), "{s}");
    verify(
        tmp.path(),
        &dir,
        &["--writers", "1", "--count", &(batches * per).to_string()],
    );
}

#[test]
fn a_broker_that_lost_its_store_is_a_gap_in_pull_not_a_clean_recording() {
    // The broker dies and comes back with an empty store (a disk replaced,
    // a volume not mounted): sub-buffers it acknowledged are gone. pull
    // must say so, not write a shorter file under the full counters.
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mut server = Server::start(&bin, &store, &[]);
    let url = server.url();
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let rec = recorder(&root, "wiped", &url, "h", &[]);
    let (batches, per) = (60, 100);
    produce(&root, "wiped", batches, per, |b, chan| {
        if b == 20 {
            wait_until("some sub-buffers consumed", || {
                chan.stats(0).subbufs_consumed > 2
            });
            server.kill9();
            std::fs::remove_dir_all(&store).unwrap();
            server.restart();
        }
    });
    let t = Instant::now();
    let mut rec = rec;
    while rec.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = rec.try_wait().unwrap().is_some();
    if !ended {
        let _ = rec.kill();
    }
    let (out, v) = finish(rec);
    assert!(
        ended,
        "the recorder ended after the channel closed: {v} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tmp.path().join("pulled");
    let (po, pv) = pull(tmp.path(), &url, &dir, &[]);
    assert_eq!(po.status.code(), Some(1), "sub-buffers are missing: {pv}");
    assert!(pv["gaps"].as_u64().unwrap() > 0, "{pv}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("created again"), "{stderr}");
}

#[test]
fn a_stream_that_refuses_messages_says_why() {
    // A stream made by hand with discard new and room for 5 messages: the
    // sixth is refused ("maximum messages exceeded") for ever. The recorder
    // retries, as for an outage, but must tell the user what the broker
    // answers, not only, at the end, that the end message was refused.
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&bin, &tmp.path().join("store"), &[]);
    let url = server.url();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = async_nats::connect(url.trim_start_matches("nats://"))
                .await
                .unwrap();
            let js = async_nats::jetstream::new(client);
            js.create_stream(async_nats::jetstream::stream::Config {
                name: "relayfs".into(),
                subjects: vec!["relayfs.>".into()],
                storage: async_nats::jetstream::stream::StorageType::File,
                discard: async_nats::jetstream::stream::DiscardPolicy::New,
                max_messages: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        });
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let rec = recorder(&root, "full", &url, "h", &["--duration", "5"]);
    produce(&root, "full", 40, 100, |_, _| {});
    let out = rec.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("maximum messages"), "{stderr}");
}

#[test]
fn pull_into_an_outdir_with_older_files_reports_them() {
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&bin, &tmp.path().join("store"), &[]);
    let url = server.url();
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let rec = recorder(&root, "older", &url, "h", &[]);
    let (batches, per) = (10, 100);
    produce(&root, "older", batches, per, |_, _| {});
    let (out, v) = finish(rec);
    assert!(out.status.success(), "{v}");
    let dir = tmp.path().join("pulled");
    let chan = dir.join("h/older");
    std::fs::create_dir_all(&chan).unwrap();
    // An earlier pull's file of a buffer this recording does not have.
    std::fs::write(chan.join("cpu7.out"), vec![0x5a; 4096]).unwrap();
    let (po, pv) = pull(tmp.path(), &url, &dir, &[]);
    // The file is not this pull's to remove: it stays, and the pull says
    // so and fails, rather than leave a directory that only looks whole.
    assert!(!po.status.success(), "{pv}");
    let stale = pv["hosts"][0]["stale_files"].to_string();
    assert!(stale.contains("cpu7.out"), "{pv}");
    assert_eq!(
        std::fs::read(chan.join("cpu7.out")).unwrap(),
        vec![0x5a; 4096]
    );
    // Without it, the pulled directory is the recording.
    std::fs::remove_file(chan.join("cpu7.out")).unwrap();
    verify(
        tmp.path(),
        &chan,
        &["--writers", "1", "--count", &(batches * per).to_string()],
    );
}

/// A signed NATS JWT (version 2 claims) of `kind` ("operator", "account",
/// "user") for `subject`, issued by `issuer`, with `nats` the kind's
/// fields.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, kind: &str, mut nats: Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    nats["type"] = kind.into();
    nats["version"] = 2.into();
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let claims = serde_json::json!({
        // Unique per token; the server does not check how it was made.
        "jti": format!("RELAYFSTEST{}{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        "iat": 1_700_000_000u64,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let head = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{head}.{body}");
    let sig = URL_SAFE_NO_PAD.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{sig}")
}

/// A credentials file as `nsc` writes it: the user's JWT and seed.
fn creds_file(path: &Path, user_jwt: &str, seed: &str) {
    std::fs::write(
        path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .unwrap();
}

/// Records a small demo channel `name` with the login `auth` and pulls it
/// back with the same login; asserts every record came through, verified;
/// returns the recorder's output.
fn record_and_pull_with(root: &Path, url: &str, name: &str, auth: &[&str]) -> Output {
    let rec = recorder(root, name, url, "h", auth);
    let (batches, per) = (10, 50);
    let stats = produce(root, name, batches, per, |_, _| {});
    let (out, v) = finish(rec);
    assert!(out.status.success(), "{v}");
    let dir = root.join(format!("pulled-{name}"));
    let mut args = vec!["--channel", name];
    args.extend_from_slice(auth);
    let (po, pv) = pull(root, url, &dir, &args);
    assert!(po.status.success(), "{pv}");
    let dir = dir.join("h").join(name);
    let s = summary(&dir);
    assert_eq!(s["records_delivered"], stats.records_written(), "{s}");
    assert_eq!(
        s["records_delivered"].as_u64().unwrap() + s["lost"].as_u64().unwrap(),
        batches * per,
        "{s}"
    );
    verify(
        root,
        &dir,
        &["--writers", "1", "--count", &(batches * per).to_string()],
    );
    out
}

#[test]
fn sub_buffers_larger_than_max_payload_go_in_parts_and_come_back_whole() {
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let conf = tmp.path().join("small.conf");
    std::fs::write(&conf, "max_payload: 4096\n").unwrap();
    let s = Server::start(&bin, &tmp.path().join("s"), &["-c", conf.to_str().unwrap()]);
    // 16 KiB sub-buffers (`produce`), 3 KiB of data a message: 6 parts.
    let out = record_and_pull_with(&root, &s.url(), "parts", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sub-buffers of 16384 bytes are more than a message holds")
            && err.contains("goes as 6 messages"),
        "{err}"
    );
}

#[test]
fn an_nkey_login_records_and_a_wrong_nkey_is_refused() {
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    let user = nkeys::KeyPair::new_user();
    let conf = tmp.path().join("nkey.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let s = Server::start(&bin, &tmp.path().join("s"), &["-c", conf.to_str().unwrap()]);
    let seed = tmp.path().join("user.nk");
    std::fs::write(&seed, format!("{}\n", user.seed().unwrap())).unwrap();
    let _ = record_and_pull_with(&root, &s.url(), "nk", &["--nkey", seed.to_str().unwrap()]);

    let _chan = Channel::builder("bad").relay_dir(&root).open().unwrap();
    // Another user's seed: the server does not know its key.
    let other = tmp.path().join("other.nk");
    std::fs::write(&other, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    refused(
        &root,
        &["--to", &s.url(), "--nkey", other.to_str().unwrap()],
        "authentication failed with --nkey",
    );
    // No login at all.
    refused(
        &root,
        &["--to", &s.url()],
        "authentication failed with no credentials",
    );
    // A file that holds no seed.
    let junk = tmp.path().join("junk.nk");
    std::fs::write(&junk, "UABCDEF is a public key, not a seed\n").unwrap();
    refused(
        &root,
        &["--to", &s.url(), "--nkey", junk.to_str().unwrap()],
        "not an NKey seed file",
    );
}

#[test]
fn a_jwt_creds_login_records_and_an_untrusted_one_is_refused() {
    let Some(bin) = nats_server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("relay");
    std::fs::create_dir(&root).unwrap();
    // Operator mode: operator -> account (JetStream allowed) -> user.
    let op = nkeys::KeyPair::new_operator();
    let acc = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    // JetStream needs the server's system account.
    let sys = nkeys::KeyPair::new_account();
    let op_jwt = jwt(
        &op,
        &op.public_key(),
        "op",
        "operator",
        serde_json::json!({ "system_account": sys.public_key() }),
    );
    let sys_jwt = jwt(
        &op,
        &sys.public_key(),
        "SYS",
        "account",
        serde_json::json!({}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    // The operator issues the account, the account its user.
    let acc_jwt = jwt(
        &op,
        &acc.public_key(),
        "acc",
        "account",
        serde_json::json!({ "limits": unlimited }),
    );
    let user_fields =
        serde_json::json!({ "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1 });
    let user_jwt = jwt(&acc, &user.public_key(), "u", "user", user_fields.clone());
    let conf = tmp.path().join("op.conf");
    std::fs::write(
        &conf,
        format!(
            "operator: \"{op_jwt}\"\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: \"{acc_jwt}\"\n  {}: \"{sys_jwt}\"\n}}\n",
            sys.public_key(),
            acc.public_key(),
            sys.public_key()
        ),
    )
    .unwrap();
    let s = Server::start(&bin, &tmp.path().join("s"), &["-c", conf.to_str().unwrap()]);
    let good = tmp.path().join("good.creds");
    creds_file(&good, &user_jwt, &user.seed().unwrap());
    let _ = record_and_pull_with(&root, &s.url(), "jwt", &["--creds", good.to_str().unwrap()]);

    let _chan = Channel::builder("bad").relay_dir(&root).open().unwrap();
    // A user issued by an account the operator never signed.
    let rogue = nkeys::KeyPair::new_account();
    let stranger = nkeys::KeyPair::new_user();
    let bad = tmp.path().join("untrusted.creds");
    creds_file(
        &bad,
        &jwt(
            &rogue,
            &stranger.public_key(),
            "x",
            "user",
            user_fields.clone(),
        ),
        &stranger.seed().unwrap(),
    );
    refused(
        &root,
        &["--to", &s.url(), "--creds", bad.to_str().unwrap()],
        "authentication failed with --creds",
    );
    // The right JWT with another key's seed: the nonce's signature fails.
    let forged = tmp.path().join("forged.creds");
    creds_file(&forged, &user_jwt, &stranger.seed().unwrap());
    refused(
        &root,
        &["--to", &s.url(), "--creds", forged.to_str().unwrap()],
        "authentication failed with --creds",
    );
}
