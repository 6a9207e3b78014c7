//! A producer killed (SIGKILL) while the sub-buffer it was writing is
//! partly filled: nothing will complete that sub-buffer, so the records a
//! reader delivered of it are counted consumed when a reader finds the
//! producer gone, once, whichever reader API took the bytes, and also when
//! the reader that took them is gone before the producer and another one
//! comes later. Each test checks the counters against what it decoded from
//! the bytes it got: written = delivered + lost (+ what the dead producer's
//! uncommitted reservation took with it, `abandoned`).
//!
//! The test binary runs itself as the producer (`child_producer`, active
//! only when `RELAYFS_TEST_CHILD` is set).

use relayfs::{Channel, Ready, RelayFile};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;
use common::{parse, record};

const ROLE: &str = "RELAYFS_TEST_CHILD";

/// Record `seq`: 16 to 63 bytes, checked whole by `parse`.
fn rec(seq: u64) -> Vec<u8> {
    record(0, seq, 16 + (seq % 48) as usize)
}

/// The producer: writes `N1` records (a global buffer of 64 × 4 KiB, so
/// the last of them are in a partly filled sub-buffer), says `phase1`;
/// then, if `N2` or `RESERVE` is set, waits for `go`, writes `N2` more,
/// reserves 24 bytes and never commits them if `RESERVE`, says `phase2`;
/// then sleeps until killed. Nothing is flushed.
#[test]
fn child_producer() {
    let Ok(_) = std::env::var(ROLE) else {
        return;
    };
    let dir = PathBuf::from(std::env::var("RELAYFS_TEST_DIR").unwrap());
    let num = |k: &str| -> u64 { std::env::var(k).map_or(0, |v| v.parse().unwrap()) };
    let (n1, n2, reserve) = (num("N1"), num("N2"), num("RESERVE") != 0);
    let chan = Channel::builder("t")
        .base("t")
        .dir(&dir)
        .subbuf_size(4096)
        .n_subbufs(64)
        .global(true)
        .open()
        .unwrap();
    std::fs::write(dir.join("ready"), b"").unwrap();
    for i in 0..n1 {
        chan.write(&rec(i)).unwrap();
    }
    std::fs::write(dir.join("phase1"), b"").unwrap();
    let mut _held = None;
    if n2 > 0 || reserve {
        wait_for(&dir.join("go"));
        for i in n1..n1 + n2 {
            chan.write(&rec(i)).unwrap();
        }
        if reserve {
            _held = Some(chan.reserve(24).unwrap());
        }
        std::fs::write(dir.join("phase2"), b"").unwrap();
    }
    std::thread::sleep(Duration::from_secs(120));
}

fn wait_for(p: &Path) {
    let t = Instant::now();
    while !p.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {p:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A producer child writing `n1` records, then (after `go`) `n2` more and
/// a reservation if `reserve`.
struct Producer {
    dir: tempfile::TempDir,
    child: Child,
}

impl Producer {
    fn start(n1: u64, n2: u64, reserve: bool) -> Producer {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "child_producer",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, "1")
            .env("RELAYFS_TEST_DIR", dir.path())
            .env("N1", n1.to_string())
            .env("N2", n2.to_string())
            .env("RESERVE", u8::from(reserve).to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&dir.path().join("ready"));
        Producer { dir, child }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("t0")
    }

    fn wait(&self, what: &str) {
        wait_for(&self.dir.path().join(what));
    }

    fn go(&self) {
        std::fs::write(self.dir.path().join("go"), b"").unwrap();
        self.wait("phase2");
    }

    /// SIGKILL, and wait until it is gone.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads (`read`, 3000 bytes at a time) whatever is readable now, partial
/// sub-buffer included, without waiting.
fn read_now(f: &mut RelayFile, out: &mut Vec<u8>) {
    let mut buf = vec![0u8; 3000];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Reads until the producer is found gone.
fn read_to_end(f: &mut RelayFile, out: &mut Vec<u8>) {
    loop {
        read_now(f, out);
        match f.poll(Some(Duration::from_secs(20))).unwrap() {
            Ready::Readable => {}
            Ready::ProducerGone => return,
            other => panic!("{other:?} before the producer was found gone"),
        }
    }
}

/// The records in `stream`, checked whole and in order from 0.
fn delivered(stream: &[u8]) -> u64 {
    let seqs: Vec<u64> = parse(stream).into_iter().map(|(_, s)| s).collect();
    assert!(
        seqs.iter().enumerate().all(|(i, &s)| s == i as u64),
        "records in order from 0, none twice"
    );
    seqs.len() as u64
}

/// `RelayFile::inspect` once no reader holds the buffer's reader lock: a
/// reader just dropped can hold it a moment longer through a parallel
/// test's child process (see `common::open_reader`), and `inspect` shows
/// what the next reader will count only with no reader attached.
fn inspect_unattached(path: &Path) -> relayfs::BufferStatus {
    let t = Instant::now();
    loop {
        let st = RelayFile::inspect(path).unwrap();
        if !st.reader_attached || t.elapsed() > Duration::from_secs(10) {
            return st;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What the reader's counters say against what it got: every record
/// written is delivered (`records_consumed`, and exactly the records
/// decoded), lost, or given up behind the uncommitted reservation.
fn adds_up(f: &RelayFile, written: u64, got: u64) {
    let s = f.stats();
    let abandoned = f.abandoned().map_or(0, |a| a.1);
    assert_eq!(s.records_written(), written, "{s:?}");
    assert_eq!(s.records_consumed, got, "delivered: {s:?}");
    assert_eq!(s.lost(), 0, "{s:?}");
    assert_eq!(written, s.records_consumed + s.lost() + abandoned, "{s:?}");
    // `inspect` (no reader attached meanwhile: ours holds the lock) agrees.
    let st = RelayFile::inspect(f.path()).unwrap();
    assert!(!st.producer_alive);
    assert_eq!(st.stats.records_consumed, s.records_consumed);
}

/// `read` takes the partial sub-buffer while the producer is alive (after
/// two complete ones); the producer is killed; `poll` finds it gone.
#[test]
fn read_tail_then_producer_killed() {
    let mut p = Producer::start(300, 0, false);
    let mut f = common::open_reader(&p.path());
    p.wait("phase1");
    let mut out = Vec::new();
    read_now(&mut f, &mut out);
    assert_eq!(delivered(&out), 300, "the tail was readable");
    assert!(f.stats().records_consumed < 300, "the tail not counted yet");
    p.kill();
    read_to_end(&mut f, &mut out);
    assert_eq!(f.abandoned(), None);
    adds_up(&f, 300, delivered(&out));
    // Asking again counts nothing more.
    assert_eq!(f.poll(Some(Duration::ZERO)).unwrap(), Ready::ProducerGone);
    assert!(f.is_eof().unwrap());
    adds_up(&f, 300, delivered(&out));
}

/// `sendfile` into a file, the same way.
#[test]
fn sendfile_tail_then_producer_killed() {
    let mut p = Producer::start(300, 0, false);
    let mut f = common::open_reader(&p.path());
    p.wait("phase1");
    let mut sink = tempfile::tempfile().unwrap();
    while f.sendfile(&sink, u64::MAX).unwrap() > 0 {}
    p.kill();
    loop {
        while f.sendfile(&sink, 1000).unwrap() > 0 {}
        match f.poll(Some(Duration::from_secs(20))).unwrap() {
            Ready::Readable => {}
            Ready::ProducerGone => break,
            other => panic!("{other:?}"),
        }
    }
    let mut out = Vec::new();
    sink.rewind().unwrap();
    sink.read_to_end(&mut out).unwrap();
    assert_eq!(delivered(&out), 300);
    adds_up(&f, 300, 300);
}

/// `read_handoff` takes the tail (hand-offs done) while the producer is
/// alive; the producer is killed.
#[test]
fn read_handoff_tail_then_producer_killed() {
    let mut p = Producer::start(300, 0, false);
    let mut f = common::open_reader(&p.path());
    p.wait("phase1");
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut take = |f: &mut RelayFile, out: &mut Vec<u8>| loop {
        let h = f.read_handoff(&mut buf).unwrap();
        if h.bytes == 0 {
            return;
        }
        out.extend_from_slice(&buf[..h.bytes]);
        f.handoff_done();
    };
    take(&mut f, &mut out);
    p.kill();
    loop {
        take(&mut f, &mut out);
        match f.poll(Some(Duration::from_secs(20))).unwrap() {
            Ready::Readable => {}
            Ready::ProducerGone => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(delivered(&out), 300);
    adds_up(&f, 300, 300);
}

/// A hand-off of the tail that failed: its records are counted lost
/// (discarded), the rest of the tail consumed; both once.
#[test]
fn a_failed_handoff_of_the_tail_is_lost_and_the_rest_consumed() {
    let mut p = Producer::start(300, 0, false);
    let mut f = common::open_reader(&p.path());
    p.wait("phase1");
    let mut buf = vec![0u8; 1 << 16];
    let mut out = Vec::new();
    let mut failed = None;
    loop {
        let h = f.read_handoff(&mut buf).unwrap();
        if h.bytes == 0 {
            break;
        }
        if f.stats().subbufs_consumed == 2 && failed.is_none() {
            // The tail's hand-off fails: those records are gone.
            failed = f.handoff_failed();
            continue;
        }
        out.extend_from_slice(&buf[..h.bytes]);
        f.handoff_done();
    }
    let lost = failed.expect("a hand-off of the tail").records.unwrap();
    assert!(lost > 0);
    p.kill();
    assert_eq!(
        f.poll(Some(Duration::from_secs(20))).unwrap(),
        Ready::ProducerGone
    );
    let got = parse(&out).len() as u64;
    let s = f.stats();
    assert_eq!(got + lost, 300);
    assert_eq!(s.records_consumed, got, "{s:?}");
    assert_eq!(s.discarded_records, lost, "{s:?}");
    assert_eq!(s.records_consumed + s.lost(), s.records_written(), "{s:?}");
}

/// The mapping reader gets the dead producer's tail from `ready` once
/// `poll` found it dead; `consume` counts it.
#[test]
fn mapping_ready_tail_after_producer_killed() {
    let mut p = Producer::start(300, 0, false);
    let mut f = common::open_reader(&p.path());
    p.wait("phase1");
    p.kill();
    let mut out = Vec::new();
    {
        let mut m = f.map();
        loop {
            if let Some(sb) = m.ready().unwrap() {
                out.extend_from_slice(&m.copy_subbuf(&sb));
                assert!(m.consume(&sb).unwrap());
                continue;
            }
            match m.poll(Some(Duration::from_secs(20))).unwrap() {
                Ready::Readable => {}
                Ready::ProducerGone => break,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(delivered(&out), 300);
    adds_up(&f, 300, 300);
}

/// `read` took the tail while the producer lived; after the kill a mapping
/// reader finds nothing more (`ready` never gives it again), and its
/// `poll` counts what `read` delivered.
#[test]
fn tail_read_then_mapping_poll_after_producer_killed() {
    let mut p = Producer::start(300, 0, false);
    let mut f = common::open_reader(&p.path());
    p.wait("phase1");
    let mut out = Vec::new();
    read_now(&mut f, &mut out);
    p.kill();
    {
        let mut m = f.map();
        assert!(m.ready().unwrap().is_none());
        assert_eq!(
            m.poll(Some(Duration::from_secs(20))).unwrap(),
            Ready::ProducerGone
        );
        assert!(m.ready().unwrap().is_none());
    }
    assert_eq!(delivered(&out), 300);
    adds_up(&f, 300, 300);
}

/// The reader that read the tail is gone before the producer dies; a
/// second one comes after the kill and counts it (`inspect` shows it so
/// before then); a third counts nothing more, and nothing as lost.
#[test]
fn second_reader_after_the_kill_counts_the_tail_once() {
    let mut p = Producer::start(300, 0, false);
    let mut out = Vec::new();
    {
        let mut f = common::open_reader(&p.path());
        p.wait("phase1");
        read_now(&mut f, &mut out);
    }
    let got = delivered(&out);
    assert_eq!(got, 300);
    p.kill();
    let before = inspect_unattached(&p.path());
    assert_eq!(before.stats.records_consumed, got, "{:?}", before.stats);
    for _ in 0..2 {
        let mut f = common::open_reader(&p.path());
        let mut more = Vec::new();
        read_to_end(&mut f, &mut more);
        assert!(more.is_empty(), "nothing delivered twice");
        assert_eq!(f.abandoned(), None);
        adds_up(&f, 300, got);
    }
}

/// The reader counted the tail itself (it saw the producer die), then went;
/// a second reader counts nothing again.
#[test]
fn second_reader_after_the_count_counts_nothing_again() {
    let mut p = Producer::start(300, 0, false);
    let mut out = Vec::new();
    {
        let mut f = common::open_reader(&p.path());
        p.wait("phase1");
        read_now(&mut f, &mut out);
        p.kill();
        read_to_end(&mut f, &mut out);
        adds_up(&f, 300, 300);
    }
    assert_eq!(inspect_unattached(&p.path()).stats.records_consumed, 300);
    let mut f = common::open_reader(&p.path());
    let mut more = Vec::new();
    read_to_end(&mut f, &mut more);
    assert!(more.is_empty());
    adds_up(&f, 300, 300);
}

/// A reader that read only part of the tail (a small buffer, stopping in
/// the middle of a record) while the producer lived; the producer then
/// wrote more and died. The reader reads the rest after the kill: all of
/// the tail is counted, once.
#[test]
fn part_of_the_tail_read_then_more_written_then_killed() {
    let mut p = Producer::start(300, 10, false);
    let mut f = common::open_reader(&p.path());
    p.wait("phase1");
    let mut out = Vec::new();
    let mut small = [0u8; 1000];
    // Two complete sub-buffers, then a bit of the tail.
    while f.stats().subbufs_consumed < 2 {
        let n = f.read(&mut small).unwrap();
        assert!(n > 0);
        out.extend_from_slice(&small[..n]);
    }
    let n = f.read(&mut small[..100]).unwrap();
    out.extend_from_slice(&small[..n]);
    p.go();
    p.kill();
    read_to_end(&mut f, &mut out);
    assert_eq!(delivered(&out), 310);
    adds_up(&f, 310, 310);
}

/// The reader read the tail while the producer lived; the producer wrote
/// more and died holding a reservation in the same sub-buffer. The records
/// read before are counted consumed; those committed after, behind or
/// beside the reservation, can't be read (their boundaries are unknown)
/// and are what `abandoned` gives up.
#[test]
fn tail_read_then_killed_holding_a_reservation() {
    let mut p = Producer::start(300, 10, true);
    let mut f = common::open_reader(&p.path());
    p.wait("phase1");
    let mut out = Vec::new();
    read_now(&mut f, &mut out);
    p.go();
    p.kill();
    read_to_end(&mut f, &mut out);
    assert_eq!(delivered(&out), 300);
    let behind: u64 = (300..310).map(|i| rec(i).len() as u64).sum::<u64>() + 24;
    assert_eq!(f.abandoned(), Some((behind, 10)));
    adds_up(&f, 310, 300);
    // The next reader: the same.
    drop(f);
    let mut f = common::open_reader(&p.path());
    let mut more = Vec::new();
    read_to_end(&mut f, &mut more);
    assert!(more.is_empty());
    assert_eq!(f.abandoned(), Some((behind, 10)));
    adds_up(&f, 310, 300);
}

/// Killed holding a reservation, with nothing written after the tail was
/// read: what was read is counted from the commit word alone.
#[test]
fn tail_read_then_killed_reserving_at_once() {
    let mut p = Producer::start(300, 0, true);
    let mut f = common::open_reader(&p.path());
    p.wait("phase1");
    let mut out = Vec::new();
    read_now(&mut f, &mut out);
    p.go();
    p.kill();
    read_to_end(&mut f, &mut out);
    assert_eq!(delivered(&out), 300);
    assert_eq!(f.abandoned(), Some((24, 0)));
    adds_up(&f, 300, 300);
}

/// A reader gone with a hand-off of the tail in flight (dropped between
/// consuming and `handoff_done`, as a kill leaves it), then the producer
/// killed: `inspect` shows what the next reader counts, the hand-off lost
/// and the rest of the tail consumed, and the next reader counts that.
#[test]
fn a_handoff_of_the_tail_left_in_flight_then_producer_killed() {
    let mut p = Producer::start(300, 0, false);
    let mut out = Vec::new();
    let in_flight = {
        let mut f = common::open_reader(&p.path());
        p.wait("phase1");
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let past = f.stats().subbufs_consumed;
            let h = f.read_handoff(&mut buf).unwrap();
            assert!(h.bytes > 0, "the tail comes as a hand-off");
            if past == 2 {
                // Two complete sub-buffers went before: this is the tail.
                break h;
            }
            out.extend_from_slice(&buf[..h.bytes]);
            f.handoff_done();
        }
    };
    let got = delivered(&out);
    let lost = in_flight.records.unwrap();
    assert_eq!(got + lost, 300);
    p.kill();
    let seen = inspect_unattached(&p.path()).stats;
    assert_eq!(seen.records_consumed, got, "{seen:?}");
    assert_eq!(seen.discarded_records, lost, "{seen:?}");
    let mut f = common::open_reader(&p.path());
    assert_eq!(f.lost_handoff().and_then(|l| l.records), Some(lost));
    let mut more = Vec::new();
    read_to_end(&mut f, &mut more);
    assert!(more.is_empty(), "nothing delivered twice");
    let s = f.stats();
    assert_eq!(s.records_consumed, got, "{s:?}");
    assert_eq!(s.discarded_records, lost, "{s:?}");
    assert_eq!(s.bytes_consumed, seen.bytes_consumed, "{s:?}");
    assert_eq!(s.records_consumed + s.lost(), 300, "{s:?}");
}
