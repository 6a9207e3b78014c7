//! Producer and reader in different processes: the test binary runs itself
//! as the producer (`child_producer`, active only when RELAYFS_TEST_CHILD is
//! set).

use relayfs::{Channel, Ready, RelayFile};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const ROLE: &str = "RELAYFS_TEST_CHILD";

fn rec(i: u64) -> Vec<u8> {
    let len = 8 + (i % 50) as usize;
    let mut v = i.to_le_bytes().to_vec();
    v.extend((0..len - 8).map(|j| (i as usize + j) as u8));
    v
}

fn expected(n: u64) -> Vec<u8> {
    (0..n).flat_map(rec).collect()
}

/// The producer process. Modes: "burst" writes N records and closes;
/// "wait" writes N, flushes, waits for `<dir>/go`, then closes; "hang"
/// writes N, flushes and sleeps (to be killed).
#[test]
fn child_producer() {
    let Ok(mode) = std::env::var(ROLE) else {
        return;
    };
    let dir = PathBuf::from(std::env::var("RELAYFS_TEST_DIR").unwrap());
    let n: u64 = std::env::var("RELAYFS_TEST_N").unwrap().parse().unwrap();
    let overwrite = mode.starts_with("overwrite");
    let chan = Channel::builder("x")
        .base("x")
        .dir(&dir)
        .subbuf_size(4096)
        .n_subbufs(if overwrite { 4 } else { 64 })
        .mode(if overwrite {
            relayfs::Mode::Overwrite
        } else {
            relayfs::Mode::NoOverwrite
        })
        .global(true)
        .open()
        .unwrap();
    std::fs::write(dir.join("ready"), b"").unwrap();
    if mode == "burst" {
        // Give the reader time to attach.
        wait_for(&dir.join("attached"));
    }
    for i in 0..n {
        chan.write(&rec(i)).unwrap();
    }
    if !mode.ends_with("noflush") {
        chan.flush();
    }
    match mode.as_str() {
        "wait" => wait_for(&dir.join("go")),
        "hang" | "overwrite-hang" | "overwrite-hang-noflush" => {
            std::fs::write(dir.join("written"), b"").unwrap();
            std::thread::sleep(Duration::from_secs(60))
        }
        "hang-reserved" => {
            // Ten more records, then one reserved and never committed, then
            // five after it: all in the open sub-buffer.
            for i in n..n + 10 {
                chan.write(&rec(i)).unwrap();
            }
            let slot = chan.reserve(20).unwrap();
            for i in n + 10..n + 15 {
                chan.write(&rec(i)).unwrap();
            }
            std::fs::write(dir.join("written"), b"").unwrap();
            std::thread::sleep(Duration::from_secs(60));
            drop(slot);
        }
        _ => {}
    }
    chan.close().unwrap();
}

fn wait_for(p: &Path) {
    let t = Instant::now();
    while !p.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {p:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn spawn(mode: &str, dir: &Path, n: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "child_producer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, mode)
        .env("RELAYFS_TEST_DIR", dir)
        .env("RELAYFS_TEST_N", n.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn read_to_end(f: &mut RelayFile) -> (Vec<u8>, Ready) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 3000];
    loop {
        let n = f.read(&mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
        if n == 0 {
            match f.poll(Some(Duration::from_secs(20))).unwrap() {
                Ready::Readable => {}
                Ready::Timeout => panic!("no data for 20 s"),
                end => return (out, end),
            }
        }
    }
}

#[test]
fn reader_follows_a_producer_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn("burst", dir.path(), 5000);
    wait_for(&dir.path().join("ready"));
    let mut f = RelayFile::open(dir.path().join("x0")).unwrap();
    std::fs::write(dir.path().join("attached"), b"").unwrap();
    let (data, end) = read_to_end(&mut f);
    assert!(child.wait().unwrap().success());
    assert_eq!(end, Ready::Closed);
    assert_eq!(data, expected(5000));
    let s = f.stats();
    assert_eq!(
        (s.records_completed, s.records_consumed, s.lost()),
        (5000, 5000, 0)
    );
}

#[test]
fn late_reader_gets_everything_still_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn("wait", dir.path(), 2000);
    wait_for(&dir.path().join("ready"));
    // Let the producer write everything before we open.
    let path = dir.path().join("x0");
    let t = Instant::now();
    loop {
        let h = RelayFile::peek_header(&path).unwrap();
        let _ = h;
        let mut probe = RelayFile::open(&path).unwrap();
        if probe.stats().records_completed == 2000 || t.elapsed() > Duration::from_secs(20) {
            drop(probe);
            break;
        }
        let _ = probe.available();
        drop(probe);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut f = RelayFile::open(&path).unwrap();
    std::fs::write(dir.path().join("go"), b"").unwrap();
    let (data, end) = read_to_end(&mut f);
    assert!(child.wait().unwrap().success());
    assert_eq!(end, Ready::Closed);
    assert_eq!(data, expected(2000));
}

#[test]
fn reader_keeps_the_buffer_past_relay_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn("wait", dir.path(), 1000);
    wait_for(&dir.path().join("ready"));
    let path = dir.path().join("x0");
    let mut f = RelayFile::open(&path).unwrap();
    std::fs::write(dir.path().join("go"), b"").unwrap();
    assert!(child.wait().unwrap().success());
    // The producer closed the channel and exited: we still hold the buffer
    // and drain it. The file was left to us, the attached reader, and goes
    // once we have drained it and let go.
    assert!(path.exists());
    let (data, end) = read_to_end(&mut f);
    assert_eq!(end, Ready::Closed);
    assert_eq!(data, expected(1000));
    drop(f);
    assert!(!path.exists());
}

#[test]
fn killed_producer_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn("hang", dir.path(), 300);
    wait_for(&dir.path().join("ready"));
    let path = dir.path().join("x0");
    let mut f = RelayFile::open(&path).unwrap();
    let t = Instant::now();
    while f.stats().records_completed < 300 {
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(f.producer_alive());
    child.kill().unwrap();
    child.wait().unwrap();
    let (data, end) = read_to_end(&mut f);
    assert_eq!(end, Ready::ProducerGone);
    assert_eq!(data, expected(300));
    assert_eq!(f.abandoned(), None, "everything was committed");
    assert!(path.exists(), "a dead producer's files stay readable");
    // A new producer replaces the stale files rather than mixing with them.
    drop(f);
    let c = Channel::builder("x")
        .base("x")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(4)
        .stale(relayfs::Stale::Refuse)
        .global(true)
        .open();
    assert!(matches!(c, Err(relayfs::OpenError::Stale(_))));
    let c = Channel::builder("x")
        .base("x")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(4)
        .global(true)
        .open()
        .unwrap();
    assert_eq!(c.total_stats().records_completed, 0);
}

#[test]
fn producer_killed_holding_a_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn("hang-reserved", dir.path(), 300);
    wait_for(&dir.path().join("ready"));
    let mut f = RelayFile::open(dir.path().join("x0")).unwrap();
    wait_for(&dir.path().join("written"));
    child.kill().unwrap();
    child.wait().unwrap();
    let (data, end) = read_to_end(&mut f);
    assert_eq!(end, Ready::ProducerGone);
    // Everything flushed before the reservation arrives, whole; nothing
    // after it (its bytes can't be told from the records around it).
    assert_eq!(data, expected(300));
    let behind: u64 = (300..315).map(|i| rec(i).len() as u64).sum::<u64>() + 20;
    assert_eq!(f.abandoned(), Some((behind, 15)));
}

#[test]
fn flight_recorder_rescue_after_the_producer_died() {
    rescue("overwrite-hang", false);
    // Died without a flush: the last, partly filled sub-buffer is read too,
    // as nothing can change it any more.
    rescue("overwrite-hang-noflush", false);
}

#[test]
fn flight_recorder_rescue_through_the_mapping() {
    rescue("overwrite-hang", true);
    // The mapping reader gets the dead producer's partly filled sub-buffer
    // as `read` does: `Mapping::poll` says it is there, `ready` returns it.
    rescue("overwrite-hang-noflush", true);
}

/// Reads a buffer through the mapping (`ready`, copy, `consume`) until the
/// channel ends.
fn map_to_end(f: &mut RelayFile) -> (Vec<u8>, Ready) {
    let mut out = Vec::new();
    let mut m = f.map();
    loop {
        if let Some(sb) = m.ready().unwrap() {
            let copy = m.copy_subbuf(&sb);
            if m.consume(&sb).unwrap() {
                out.extend_from_slice(&copy);
            }
            continue;
        }
        match m.poll(Some(Duration::from_secs(20))).unwrap() {
            Ready::Readable => {}
            Ready::Timeout => panic!("no data for 20 s"),
            end => return (out, end),
        }
    }
}

fn rescue(mode: &str, by_mapping: bool) {
    let dir = tempfile::tempdir().unwrap();
    // Overwrite mode, 4 sub-buffers of 4 KiB: 3000 records lap it many times.
    let mut child = spawn(mode, dir.path(), 3000);
    wait_for(&dir.path().join("written"));
    child.kill().unwrap();
    child.wait().unwrap();
    let mut f = RelayFile::open(dir.path().join("x0")).unwrap();
    let (data, end) = if by_mapping {
        map_to_end(&mut f)
    } else {
        read_to_end(&mut f)
    };
    assert_eq!(end, Ready::ProducerGone);
    // What is left is the newest records, oldest first, ending with the
    // last one written (the flushed sub-buffer), each whole.
    let mut at = 0;
    let mut seqs = Vec::new();
    while at < data.len() {
        let i = u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
        let r = rec(i);
        assert_eq!(&data[at..at + r.len()], &r[..], "record {i} whole");
        seqs.push(i);
        at += r.len();
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous, oldest first"
    );
    assert_eq!(seqs.last(), Some(&2999));
    assert!(
        seqs.len() > 100 && seqs.len() < 3000,
        "{} records kept",
        seqs.len()
    );
    let s = f.stats();
    assert_eq!(s.records_written(), 3000);
    // The records of the partly filled sub-buffer, read whole, are counted
    // consumed though nothing completed it: every record is delivered or
    // overwritten, once.
    assert_eq!(s.records_consumed, seqs.len() as u64, "{s:?}");
    assert_eq!(s.records_consumed + s.overwritten_records, 3000, "{s:?}");
}

#[test]
fn two_live_producers_on_one_channel_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn("hang", dir.path(), 10);
    wait_for(&dir.path().join("ready"));
    let second = Channel::builder("x")
        .base("x")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(4)
        .global(true)
        .open();
    child.kill().unwrap();
    child.wait().unwrap();
    match second {
        Err(relayfs::OpenError::Busy { pid, .. }) => assert_eq!(pid, child.id() as u64),
        other => panic!("{other:?}"),
    }
}

/// A mapping reader that `ready` gave the dead producer's partly filled
/// sub-buffer, gone before it consumed it (killed): its records are still
/// committed and pending, and a reader after it reads them as `read` does,
/// and counts them consumed. `inspect` must not count them as discarded
/// while they wait, nor a second time once read: the counters add up to
/// what was written.
#[test]
fn inspect_of_a_dead_producers_tail_held_by_a_gone_mapping_reader() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn("overwrite-hang-noflush", dir.path(), 3000);
    wait_for(&dir.path().join("written"));
    child.kill().unwrap();
    child.wait().unwrap();
    let path = dir.path().join("x0");
    // `waiting`: the tail's records, pending and not delivered yet.
    let adds_up = |what: &str, waiting: bool| {
        let s = RelayFile::inspect(&path).unwrap().stats;
        let waiting = if waiting { s.records_pending } else { 0 };
        assert_eq!(
            s.records_consumed + waiting + s.overwritten_records + s.discarded_records,
            3000,
            "{what}: {s:?}"
        );
    };
    {
        let mut f = RelayFile::open(&path).unwrap();
        let mut m = f.map();
        let tail = loop {
            // The complete sub-buffers: consumed.
            if let Some(sb) = m.ready().unwrap() {
                m.consume(&sb).unwrap();
                continue;
            }
            match m.poll(Some(Duration::from_secs(20))).unwrap() {
                Ready::Readable => {
                    // Once the producer is found dead, its tail is ready.
                    if let Some(sb) = m.ready().unwrap() {
                        break sb;
                    }
                }
                Ready::Timeout => panic!("no data for 20 s"),
                end => panic!("{end:?} before the tail"),
            }
        };
        assert!(tail.records > 0 && tail.len < 4096, "{tail:?}");
        // Gone holding it, as SIGKILL leaves it.
    }
    adds_up("the tail held by a gone mapping reader", true);
    let mut f = RelayFile::open(&path).unwrap();
    let (_, end) = read_to_end(&mut f);
    assert_eq!(end, Ready::ProducerGone);
    drop(f);
    adds_up("the tail read by the next reader", false);
}
