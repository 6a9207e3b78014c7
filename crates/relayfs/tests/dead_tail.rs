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
/// reserves 24 bytes (`RESERVE` 1) or the rest of the sub-buffer (`FILL`)
/// and never commits them, says `phase2`;
/// then sleeps until killed. Nothing is flushed.
#[test]
fn child_producer() {
    let Ok(_) = std::env::var(ROLE) else {
        return;
    };
    let dir = PathBuf::from(std::env::var("RELAYFS_TEST_DIR").unwrap());
    let num = |k: &str| -> u64 { std::env::var(k).map_or(0, |v| v.parse().unwrap()) };
    let (n1, n2, reserve) = (num("N1"), num("N2"), num("RESERVE"));
    let chan = Channel::builder("t")
        .base("t")
        .dir(&dir)
        .subbuf_size(4096)
        .n_subbufs(if num("OVERWRITE") != 0 { 8 } else { 64 })
        .global(true)
        .mode(if num("OVERWRITE") != 0 {
            relayfs::Mode::Overwrite
        } else {
            relayfs::Mode::NoOverwrite
        })
        .open()
        .unwrap();
    std::fs::write(dir.join("ready"), b"").unwrap();
    for i in 0..n1 {
        chan.write(&rec(i)).unwrap();
    }
    std::fs::write(dir.join("phase1"), b"").unwrap();
    let mut _held = None;
    let row = num("ROW");
    if row > 0 {
        // `ROW` reservations, each held while records close its
        // sub-buffer: that many sub-buffers stuck in a row behind the
        // head; then `N2` records more. Says how many it wrote.
        wait_for(&dir.join("go"));
        let mut held = Vec::new();
        let mut i = n1;
        for _ in 0..row {
            held.push(chan.reserve(24).unwrap());
            let p0 = chan.total_stats().subbufs_produced;
            while chan.total_stats().subbufs_produced == p0 {
                chan.write(&rec(i)).unwrap();
                i += 1;
            }
        }
        for _ in 0..n2 {
            // Overwrite mode refuses the writes that come round to the
            // stuck slot (`Full`): counted in `dropped_full`.
            let _ = chan.write(&rec(i));
            i += 1;
        }
        std::fs::write(dir.join("written"), i.to_string()).unwrap();
        std::fs::write(dir.join("phase2"), b"").unwrap();
        std::thread::sleep(Duration::from_secs(120));
    }
    if n2 > 0 || reserve != 0 {
        wait_for(&dir.join("go"));
        if reserve == EARLY {
            _held = Some(chan.reserve(24).unwrap());
        }
        for i in n1..n1 + n2 {
            chan.write(&rec(i)).unwrap();
        }
        if reserve == FILL {
            // Up to the end of the sub-buffer exactly: the head moves to
            // the start of the next one, which is not opened.
            _held = Some(chan.reserve(4096 - offset_after(n1 + n2) as usize).unwrap());
        } else if reserve != 0 && reserve != EARLY {
            _held = Some(chan.reserve(24).unwrap());
        }
        if num("CLOSE") != 0 {
            // `close` waits for the held reservation (2 s), gives up, and
            // the process exits without committing it.
            chan.close().unwrap();
            std::fs::write(dir.join("phase2"), b"").unwrap();
            std::process::exit(0);
        }
        std::fs::write(dir.join("phase2"), b"").unwrap();
    }
    std::thread::sleep(Duration::from_secs(120));
}

/// `RESERVE` value for a reservation that fills the rest of the
/// sub-buffer exactly.
const FILL: u64 = 2;

/// Where the head is in its 4 KiB sub-buffer after records `0..n` (0: at
/// the start of one not opened yet).
/// `RESERVE` value for a reservation made before the `N2` records, which
/// then fill the rest of its sub-buffer and more: it is left behind the
/// head, never completed.
const EARLY: u64 = 3;

fn offset_after(n: u64) -> u64 {
    let mut off = 0;
    for i in 0..n {
        let len = rec(i).len() as u64;
        off = if off == 0 || off + len > 4096 {
            len
        } else {
            (off + len) % 4096
        };
    }
    off
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

thread_local! {
    /// `ROW` for the next `Producer::start` on this thread.
    static ROW_OF: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// `OVERWRITE` (8 sub-buffers, overwrite mode) for the next start.
    static OVERWRITE_OF: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A producer child writing `n1` records, then (after `go`) `n2` more and
/// a reservation if `reserve`.
struct Producer {
    dir: tempfile::TempDir,
    child: Child,
}

impl Producer {
    fn start(n1: u64, n2: u64, reserve: impl Into<u64>) -> Producer {
        Self::start_with(n1, n2, reserve, false)
    }

    /// As `start`; `close`: the producer closes the channel after the `N2`
    /// records with its reservation held, then exits.
    fn start_with(n1: u64, n2: u64, reserve: impl Into<u64>, close: bool) -> Producer {
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
            .env("RESERVE", reserve.into().to_string())
            .env("CLOSE", u64::from(close).to_string())
            .env("ROW", ROW_OF.with(|r| r.get()).to_string())
            .env("OVERWRITE", OVERWRITE_OF.with(|r| r.get()).to_string())
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

/// The common course of the tests below: a reader opens once the producer
/// wrote its first records and reads what is there, tail included; the
/// producer goes on to its second phase and is killed; the reader reads
/// until it finds it gone. Returns the reader and what it got.
fn read_tail_go_kill(p: &mut Producer) -> (RelayFile, Vec<u8>) {
    let mut f = common::open_reader(&p.path());
    p.wait("phase1");
    let mut out = Vec::new();
    read_now(&mut f, &mut out);
    p.go();
    p.kill();
    read_to_end(&mut f, &mut out);
    (f, out)
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
    let (f, out) = read_tail_go_kill(&mut p);
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
    let (f, out) = read_tail_go_kill(&mut p);
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

/// The reader read the tail while the producer lived; the producer wrote
/// more and died holding a reservation that ends exactly at the end of the
/// sub-buffer (so the head is at the start of the next one, not opened):
/// the records read before are counted consumed, the rest given up, as for
/// a reservation anywhere else in it.
#[test]
fn tail_read_then_killed_holding_a_reservation_to_the_end() {
    // The ten more records stay in the tail's sub-buffer.
    assert!(offset_after(310) > offset_after(300));
    let mut p = Producer::start(300, 10, FILL);
    let (f, out) = read_tail_go_kill(&mut p);
    assert_eq!(delivered(&out), 300);
    let behind = 4096 - offset_after(300);
    assert_eq!(f.abandoned(), Some((behind, 10)));
    adds_up(&f, 310, 300);
    drop(f);
    let st = RelayFile::inspect(p.path()).unwrap().stats;
    assert_eq!(st.records_consumed, 300, "{st:?}");
    let mut f = common::open_reader(&p.path());
    let mut more = Vec::new();
    read_to_end(&mut f, &mut more);
    assert!(more.is_empty());
    assert_eq!(f.abandoned(), Some((behind, 10)));
    adds_up(&f, 310, 300);
}

/// Killed holding a reservation to the end of the sub-buffer, with
/// nothing written after the tail was read: what was read is counted.
#[test]
fn tail_read_then_killed_reserving_to_the_end_at_once() {
    let mut p = Producer::start(300, 0, FILL);
    let (f, out) = read_tail_go_kill(&mut p);
    assert_eq!(delivered(&out), 300);
    assert_eq!(f.abandoned(), Some((4096 - offset_after(300), 0)));
    adds_up(&f, 300, 300);
}

/// The producer died holding a reservation in a sub-buffer it had moved
/// on from (its other writers filled that one and went on to later ones):
/// that sub-buffer never completes. The reader must not stay behind it for
/// good: the complete sub-buffers after it are read, and what it can't
/// tell of the stuck one is counted (given up), so that every record
/// written is delivered or counted.
#[test]
fn killed_holding_a_reservation_behind_the_head() {
    let mut p = Producer::start(300, 400, EARLY);
    let (f, out) = read_tail_go_kill(&mut p);
    let s = f.stats();
    let abandoned = f.abandoned().map_or(0, |a| a.1);
    let got = parse(&out).len() as u64;
    assert_eq!(s.records_written(), 700, "{s:?}");
    assert!(
        s.subbufs_consumed >= s.subbufs_completed,
        "every complete sub-buffer read: {s:?}"
    );
    assert_eq!(s.records_consumed, got, "{s:?}");
    assert!(
        got + s.lost() + abandoned >= 700,
        "every record delivered or counted: got {got}, abandoned {abandoned}, {s:?}"
    );
}

/// The records in `stream`, checked whole, in order and none twice, with
/// those missing from `0..written` one run: `(delivered, first missing,
/// how many missing)`.
fn delivered_but_one_run(stream: &[u8], written: u64) -> (u64, u64, u64) {
    let seqs: Vec<u64> = parse(stream).into_iter().map(|(_, s)| s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
    assert!(seqs.last().is_none_or(|&l| l < written));
    let first = (0..)
        .zip(&seqs)
        .find(|(i, s)| *i != **s)
        .map_or(seqs.len() as u64, |p| p.0);
    let missing = written - seqs.len() as u64;
    assert!(
        seqs[first as usize..]
            .iter()
            .zip(first + missing..)
            .all(|(&s, i)| s == i),
        "the records missing are one run from {first}"
    );
    (seqs.len() as u64, first, missing)
}

/// What the first reader of a buffer left stuck behind the head (killed
/// holding a reservation made before records 300..700) counts, against
/// what it decoded: records `first..first + missing` are missing, all of
/// them counted given up (discarded, one sub-buffer), the rest consumed,
/// none abandoned; `inspect` agrees.
fn stuck_counted(f: &RelayFile, got: u64, missing: u64) {
    let s = f.stats();
    assert_eq!(s.records_written(), 700, "{s:?}");
    assert_eq!(s.records_consumed, got, "{s:?}");
    assert!(missing > 0, "records after the hole were given up");
    assert_eq!(s.discarded_records, missing, "{s:?}");
    assert_eq!(s.discarded_subbufs, 1, "{s:?}");
    assert_eq!(s.lost(), missing, "{s:?}");
    assert_eq!(f.abandoned(), None);
    assert_eq!(s.records_consumed + s.lost(), 700, "{s:?}");
    let st = RelayFile::inspect(f.path()).unwrap().stats;
    assert_eq!(st.records_consumed, s.records_consumed, "{st:?}");
    assert_eq!(st.discarded_records, s.discarded_records, "{st:?}");
    assert_eq!(st.records_written(), 700, "{st:?}");
}

/// The reader that gave the stuck sub-buffer up, and counted it, goes; a
/// second reader finds nothing more to read and counts nothing again
/// (the position is past it), and `inspect` in between agrees.
#[test]
fn a_second_reader_after_the_stuck_subbuf_was_given_up_counts_nothing_again() {
    let mut p = Producer::start(300, 400, EARLY);
    let mut out = Vec::new();
    let first = {
        let mut f = common::open_reader(&p.path());
        p.wait("phase1");
        read_now(&mut f, &mut out);
        assert_eq!(delivered(&out), 300);
        p.go();
        p.kill();
        read_to_end(&mut f, &mut out);
        let (got, from, missing) = delivered_but_one_run(&out, 700);
        // Read before the reservation: delivered and counted consumed.
        assert_eq!(from, 300, "the records before the hole were read");
        stuck_counted(&f, got, missing);
        (f.stats(), got, missing)
    };
    let (before, got, missing) = first;
    let seen = inspect_unattached(&p.path()).stats;
    assert_eq!(seen.records_consumed, before.records_consumed, "{seen:?}");
    assert_eq!(seen.discarded_records, before.discarded_records, "{seen:?}");
    assert_eq!(seen.subbufs_consumed, before.subbufs_consumed, "{seen:?}");
    let mut f = common::open_reader(&p.path());
    let mut more = Vec::new();
    read_to_end(&mut f, &mut more);
    assert!(more.is_empty(), "nothing delivered twice");
    stuck_counted(&f, got, missing);
    let s = f.stats();
    assert_eq!(s.subbufs_consumed, before.subbufs_consumed, "{s:?}");
    assert_eq!(s.discarded_subbufs, before.discarded_subbufs, "{s:?}");
}

/// The reader read a part of the stuck sub-buffer that ends inside a
/// record (a small buffer) while the producer lived: how many records that
/// part holds is not known, so all the stuck sub-buffer's committed records
/// are given up, those delivered among them included (counted twice rather
/// than any not at all); the sub-buffers after it are read and counted.
#[test]
fn a_stuck_subbuf_read_partly_inside_a_record_is_given_up_whole() {
    let mut p = Producer::start(300, 400, EARLY);
    let mut f = common::open_reader(&p.path());
    p.wait("phase1");
    let mut before = Vec::new();
    // The two complete sub-buffers first, one at a time.
    let mut buf = vec![0u8; 1 << 16];
    while f.stats().subbufs_consumed < 2 {
        let h = f.read_handoff(&mut buf).unwrap();
        assert!(h.bytes > 0);
        before.extend_from_slice(&buf[..h.bytes]);
        f.handoff_done();
    }
    let n = f.read(&mut buf[..100]).unwrap();
    assert_eq!(n, 100, "the tail holds more than 100 bytes");
    p.go();
    p.kill();
    let mut rest = Vec::new();
    read_to_end(&mut f, &mut rest);
    let k = delivered(&before);
    let after: Vec<u64> = parse(&rest).into_iter().map(|(_, s)| s).collect();
    assert!(after.first().is_some_and(|&s| s > 300), "{after:?}");
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1) && after.last() == Some(&699),
        "the records after the stuck sub-buffer, all of them, in order"
    );
    let s = f.stats();
    assert_eq!(s.records_written(), 700, "{s:?}");
    assert_eq!(s.records_consumed, k + after.len() as u64, "{s:?}");
    // Every record of the stuck sub-buffer, those in the 100 bytes read
    // included.
    assert_eq!(s.discarded_records, after[0] - k, "{s:?}");
    assert_eq!(s.discarded_subbufs, 1, "{s:?}");
    assert_eq!(s.records_consumed + s.lost(), 700, "{s:?}");
}

/// A mapping reader (nothing read before the kill): `ready` gives the
/// complete sub-buffers before the stuck one, gives that one up (none of
/// it was read, so all its committed records are counted given up), then
/// the complete ones after it and the dead producer's tail; `consume`
/// counts them.
#[test]
fn a_mapping_reader_gives_up_the_stuck_subbuf_and_reads_on() {
    let mut p = Producer::start(300, 400, EARLY);
    let mut f = common::open_reader(&p.path());
    p.wait("phase1");
    p.go();
    p.kill();
    let mut out = Vec::new();
    let mut subbufs = 0;
    {
        let mut m = f.map();
        loop {
            if let Some(sb) = m.ready().unwrap() {
                out.extend_from_slice(&m.copy_subbuf(&sb));
                assert!(m.consume(&sb).unwrap());
                subbufs += 1;
                continue;
            }
            match m.poll(Some(Duration::from_secs(20))).unwrap() {
                Ready::Readable => {}
                Ready::ProducerGone => break,
                other => panic!("{other:?}"),
            }
        }
    }
    let (got, from, missing) = delivered_but_one_run(&out, 700);
    // The stuck sub-buffer is the third: the two before it were read, and
    // its records from its first on are missing.
    assert!(from > 0 && from < 300, "{from}");
    assert!(
        from + missing > 300,
        "records after the hole are missing too"
    );
    assert!(subbufs > 3, "sub-buffers after the stuck one were read");
    stuck_counted(&f, got, missing);
    // Every closed sub-buffer passed, the stuck one (the only one not
    // complete) too; the position stays in the dead producer's tail.
    let s = f.stats();
    assert_eq!(s.subbufs_consumed, s.subbufs_produced, "{s:?}");
    assert_eq!(s.subbufs_completed + 1, s.subbufs_produced, "{s:?}");
    // `read` finds nothing more, and nothing is counted again.
    let mut more = Vec::new();
    read_to_end(&mut f, &mut more);
    assert!(more.is_empty());
    stuck_counted(&f, got, missing);
}

/// The tail's commit word scribbled (by the file's owner) to count far more
/// records than its bytes can hold: a miscount, but a bounded one, made
/// once. Every `poll` that finds the producer gone used to count the tail
/// again (the debt it stored was clamped one way, the count it compared it
/// with another), adding some 2^31 records to `records_consumed` each time.
#[test]
fn a_scribbled_commit_word_of_the_tail_is_counted_once_and_bounded() {
    use std::os::unix::fs::FileExt;
    let mut p = Producer::start(300, 0, false);
    p.wait("phase1");
    p.kill();
    {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p.path())
            .unwrap();
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, 80).unwrap();
        // The tail is the third sub-buffer: its commit word.
        let at = u64::from_ne_bytes(b) + 2 * 32;
        file.read_exact_at(&mut b, at).unwrap();
        let w = u64::from_ne_bytes(b);
        assert_eq!(w >> 63, 0, "the tail is not complete");
        let w = (w & 0xffff_ffff) | (0x7fff_ffff << 32);
        file.write_all_at(&w.to_ne_bytes(), at).unwrap();
    }
    let mut f = RelayFile::open(p.path()).unwrap();
    let mut out = Vec::new();
    read_to_end(&mut f, &mut out);
    assert_eq!(delivered(&out), 300);
    let once = f.stats().records_consumed;
    assert!(once <= 300 + 4096, "bounded: {:?}", f.stats());
    for _ in 0..3 {
        assert_eq!(f.poll(Some(Duration::ZERO)).unwrap(), Ready::ProducerGone);
        assert!(f.is_eof().unwrap());
    }
    assert_eq!(f.stats().records_consumed, once, "counted once");
    drop(f);
    let st = RelayFile::inspect(p.path()).unwrap().stats;
    assert_eq!(st.records_consumed, once, "{st:?}");
    let f = common::open_reader(&p.path());
    drop(f);
    let mut f = common::open_reader(&p.path());
    assert_eq!(f.poll(Some(Duration::ZERO)).unwrap(), Ready::ProducerGone);
    assert_eq!(f.stats().records_consumed, once, "counted once");
}

/// While the producer lives, a sub-buffer closed behind a reservation not
/// committed yet (a writer still copying) has its committed records in
/// `records_pending`, so `records_written()` counts every record written
/// at every moment; once the reservation is committed they are in
/// `records_completed` instead, counted once.
#[test]
fn a_subbuf_closed_behind_a_held_reservation_is_pending_until_it_completes() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("t")
        .base("t")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(8)
        .global(true)
        .open()
        .unwrap();
    chan.write(&rec(0)).unwrap();
    let held = chan.reserve(24).unwrap();
    // Enough to close the held reservation's sub-buffer and fill the next
    // one partly.
    let n = 200;
    for i in 1..=n {
        chan.write(&rec(i)).unwrap();
    }
    let s = chan.total_stats();
    assert_eq!(s.subbufs_produced, 1, "{s:?}");
    assert_eq!(s.subbufs_completed, 0, "{s:?}");
    assert_eq!(s.records_written(), n + 1, "{s:?}");
    drop(held);
    let s = chan.total_stats();
    assert_eq!(s.subbufs_completed, 1, "{s:?}");
    // The reservation is a record too.
    assert_eq!(s.records_written(), n + 2, "{s:?}");
    assert!(s.records_completed > 0 && s.records_pending > 0, "{s:?}");
}

/// A producer closes its channel while one of its writers holds a
/// reservation behind the head (`close` waits 2 s for it, then gives up),
/// and its process then ends without committing it. The sub-buffer never
/// completes, and the complete ones after it are there to read: a reader
/// attached throughout must deliver them or count them, so that written =
/// delivered + lost. (DESIGN.md, "What is left at close": "a writer killed
/// there is" covered.)
#[test]
#[ignore = "defect: on a closed channel the stuck sub-buffer is never given up (is_eof/poll set writers_gone only when not closed): the complete sub-buffers after it are neither delivered nor counted"]
fn closed_then_exited_holding_a_reservation_behind_the_head() {
    let mut p = Producer::start_with(300, 400, EARLY, true);
    let mut f = RelayFile::open(p.path()).unwrap();
    p.wait("phase1");
    let mut out = Vec::new();
    read_now(&mut f, &mut out);
    p.go();
    let _ = p.child.wait();
    loop {
        read_now(&mut f, &mut out);
        match f.poll(Some(Duration::from_secs(5))).unwrap() {
            Ready::Readable => {}
            Ready::Closed | Ready::ProducerGone => break,
            other => panic!("{other:?}"),
        }
    }
    read_now(&mut f, &mut out);
    assert!(f.is_eof().unwrap());
    let seqs: Vec<u64> = parse(&out).into_iter().map(|(_, s)| s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
    let got = seqs.len() as u64;
    let s = f.stats();
    let abandoned = f.abandoned().map_or(0, |a| a.1);
    assert_eq!(s.records_written(), 700, "{s:?}");
    assert_eq!(
        got + s.lost() + abandoned,
        700,
        "every record delivered or counted once: got {got} (last {:?}), {s:?}",
        seqs.last()
    );
    assert_eq!(s.records_consumed, got, "{s:?}");
}

/// The `peek_subbuf`/`consume_through` reader (the NATS recorder's loop)
/// after the producer was killed holding a reservation behind the head:
/// the complete sub-buffers after the stuck one are peeked and consumed,
/// and every record is delivered or counted.
#[test]
#[ignore = "defect: peek_subbuf never passes a stuck sub-buffer; is_eof gives it up and moves the position past the caller's seq, so the next peek_subbuf(seq) fails NotReady (relayfs record --to nats fails)"]
fn peek_and_consume_past_a_stuck_subbuf_after_the_producer_was_killed() {
    let mut p = Producer::start(300, 400, EARLY);
    let mut f = RelayFile::open(p.path()).unwrap();
    p.wait("phase1");
    p.go();
    p.kill();
    let mut out = Vec::new();
    let mut seq = f.consumed_seq();
    let t = Instant::now();
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "stuck at {seq}: {:?}",
            f.stats()
        );
        match f.peek_subbuf(seq).unwrap() {
            Some(sb) => {
                out.extend_from_slice(&sb.data);
                f.consume_through(seq).unwrap();
                seq += 1;
            }
            None => {
                // As `relayfs record --to nats://` (recorder/nats.rs) does:
                // its own `next`, and `is_eof` once the producer is gone.
                if !f.producer_alive() && f.is_eof().unwrap() {
                    break;
                }
            }
        }
    }
    let seqs: Vec<u64> = parse(&out).into_iter().map(|(_, s)| s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
    let got = seqs.len() as u64;
    let s = f.stats();
    let abandoned = f.abandoned().map_or(0, |a| a.1);
    assert_eq!(s.records_written(), 700, "{s:?}");
    assert_eq!(got + s.lost() + abandoned, 700, "got {got}, {s:?}");
    assert_eq!(s.records_consumed, got, "{s:?}");
}

/// A producer killed with `row` sub-buffers stuck in a row behind its head
/// (a reservation held in each), `n2` records after them: returns it and
/// how many records it wrote.
fn start_row(row: u64, n1: u64, n2: u64) -> (Producer, u64) {
    ROW_OF.with(|r| r.set(row));
    let mut p = Producer::start(n1, n2, 0u64);
    ROW_OF.with(|r| r.set(0));
    p.wait("phase1");
    p.go();
    let written: u64 = std::fs::read_to_string(p.dir.path().join("written"))
        .unwrap()
        .parse()
        .unwrap();
    p.kill();
    (p, written)
}

/// Records decoded from `out`: none twice, in order; delivered = consumed,
/// and written = delivered + lost (nothing abandoned: no open sub-buffer
/// holds a reservation); `inspect` and a second reader agree.
fn row_adds_up(f: RelayFile, out: &[u8], written: u64, row: u64) {
    let seqs: Vec<u64> = parse(out).into_iter().map(|(_, s)| s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
    let got = seqs.len() as u64;
    let s = f.stats();
    let abandoned = f.abandoned().map_or(0, |a| a.1);
    assert_eq!(s.records_written(), written, "{s:?}");
    assert_eq!(s.records_consumed, got, "{s:?}");
    assert_eq!(got + s.lost() + abandoned, written, "got {got}: {s:?}");
    assert_eq!(s.discarded_subbufs, row, "{s:?}");
    assert_eq!(
        seqs.last().copied(),
        Some(written - 1),
        "read on to the end"
    );
    let path = f.path().to_path_buf();
    drop(f);
    let mut g = common::open_reader(&path);
    assert_eq!(g.poll(Some(Duration::ZERO)).unwrap(), Ready::ProducerGone);
    let t = g.stats();
    assert_eq!(t.records_consumed, s.records_consumed, "{t:?}");
    assert_eq!(t.discarded_records, s.discarded_records, "{t:?}");
}

#[test]
fn three_stuck_in_a_row_read() {
    let (p, written) = start_row(3, 150, 300);
    let mut f = common::open_reader(&p.path());
    let mut out = Vec::new();
    read_to_end(&mut f, &mut out);
    row_adds_up(f, &out, written, 3);
}

#[test]
fn three_stuck_in_a_row_sendfile() {
    let (p, written) = start_row(3, 150, 300);
    let mut f = common::open_reader(&p.path());
    let mut sink = tempfile::tempfile().unwrap();
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
    row_adds_up(f, &out, written, 3);
}

#[test]
fn three_stuck_in_a_row_read_handoff() {
    let (p, written) = start_row(3, 150, 300);
    let mut f = common::open_reader(&p.path());
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        loop {
            let h = f.read_handoff(&mut buf).unwrap();
            if h.bytes == 0 {
                break;
            }
            out.extend_from_slice(&buf[..h.bytes]);
            f.handoff_done();
        }
        match f.poll(Some(Duration::from_secs(20))).unwrap() {
            Ready::Readable => {}
            Ready::ProducerGone => break,
            other => panic!("{other:?}"),
        }
    }
    row_adds_up(f, &out, written, 3);
}

#[test]
fn three_stuck_in_a_row_mapping() {
    let (p, written) = start_row(3, 150, 300);
    let mut f = common::open_reader(&p.path());
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
    row_adds_up(f, &out, written, 3);
}

/// The reader that read the first stuck sub-buffer partly while the
/// producer lived (`read_now` before the kill).
#[test]
fn three_stuck_in_a_row_read_partly_before_the_kill() {
    ROW_OF.with(|r| r.set(3));
    let mut p = Producer::start(150, 300, 0u64);
    ROW_OF.with(|r| r.set(0));
    let mut f = common::open_reader(&p.path());
    p.wait("phase1");
    let mut out = Vec::new();
    read_now(&mut f, &mut out);
    p.go();
    read_now(&mut f, &mut out);
    let written: u64 = std::fs::read_to_string(p.dir.path().join("written"))
        .unwrap()
        .parse()
        .unwrap();
    // Alive: nothing counted lost while a reservation is held.
    assert_eq!(f.stats().lost(), 0);
    assert_eq!(f.stats().records_written(), written);
    p.kill();
    read_to_end(&mut f, &mut out);
    row_adds_up(f, &out, written, 3);
}

/// Overwrite mode (8 sub-buffers): two sub-buffers stuck in a row, then
/// the producer comes round to them (its writes there refused, counted in
/// `dropped_full`) and is killed. The flight-recorder reader gives them up
/// and reads what is left; written = delivered + lost, none twice.
#[test]
fn overwrite_mode_stuck_subbufs_lapped_then_killed() {
    OVERWRITE_OF.with(|r| r.set(1));
    let (p, offered) = start_row(2, 150, 3000);
    OVERWRITE_OF.with(|r| r.set(0));
    let mut f = common::open_reader(&p.path());
    let mut out = Vec::new();
    read_to_end(&mut f, &mut out);
    let seqs: Vec<u64> = parse(&out).into_iter().map(|(_, s)| s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
    let got = seqs.len() as u64;
    let s = f.stats();
    let abandoned = f.abandoned().map_or(0, |a| a.1);
    assert!(
        s.dropped_full > 0,
        "the ring came round to the stuck ones: {s:?}"
    );
    assert_eq!(s.records_written() + s.dropped_full, offered, "{s:?}");
    assert_eq!(s.records_consumed, got, "{s:?}");
    assert_eq!(
        got + s.lost() + abandoned,
        offered,
        "got {got} (last {:?}): {s:?}",
        seqs.last()
    );
    let path = f.path().to_path_buf();
    drop(f);
    let mut g = common::open_reader(&path);
    let mut more = Vec::new();
    read_to_end(&mut g, &mut more);
    assert!(more.is_empty());
    let t = g.stats();
    assert_eq!(t.records_consumed, s.records_consumed, "{t:?}");
    assert_eq!(t.discarded_records, s.discarded_records, "{t:?}");
}

/// Every closed sub-buffer's commit word scribbled to "not complete, the
/// most records and bytes" after the producer was killed: each looks stuck
/// and is given up. No panic, no hang, the counts bounded (a sub-buffer's
/// bytes at most), counted once by a second reader and `inspect`.
#[test]
fn scribbled_commit_words_make_every_subbuf_look_stuck_bounded_and_once() {
    use std::os::unix::fs::FileExt;
    let mut p = Producer::start(700, 0, false);
    p.wait("phase1");
    p.kill();
    {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p.path())
            .unwrap();
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, 80).unwrap();
        let desc = u64::from_ne_bytes(b);
        for slot in 0..64 {
            file.write_all_at(&0x7fff_ffff_ffff_ffffu64.to_ne_bytes(), desc + slot * 32)
                .unwrap();
        }
    }
    let mut f = RelayFile::open(p.path()).unwrap();
    let mut out = Vec::new();
    let t = Instant::now();
    read_to_end(&mut f, &mut out);
    assert!(t.elapsed() < Duration::from_secs(10));
    let s = f.stats();
    let produced = s.subbufs_produced + 1;
    assert!(
        s.discarded_records + s.records_consumed <= 700 + produced * 4096,
        "bounded: {s:?}"
    );
    assert!(s.discarded_subbufs <= produced, "{s:?}");
    for _ in 0..3 {
        assert_eq!(f.poll(Some(Duration::ZERO)).unwrap(), Ready::ProducerGone);
        assert!(f.is_eof().unwrap());
    }
    assert_eq!(f.stats().discarded_records, s.discarded_records);
    drop(f);
    let st = inspect_unattached(&p.path()).stats;
    assert_eq!(st.discarded_records, s.discarded_records, "{st:?}");
    let mut g = common::open_reader(&p.path());
    assert_eq!(g.poll(Some(Duration::ZERO)).unwrap(), Ready::ProducerGone);
    let mut more = Vec::new();
    read_to_end(&mut g, &mut more);
    assert!(more.is_empty());
    assert_eq!(g.stats().discarded_records, s.discarded_records);
    assert_eq!(g.stats().records_consumed, s.records_consumed);
}

/// A sub-buffer closed behind a held reservation by a switch that was then
/// refused (the ring full, no reader): the head waits at the start of the
/// next sub-buffer, not opened. `stats` takes the closed one for the open
/// one (`open` = the head's ordinal - 1), and `closed_incomplete_records`
/// leaves it out for that: its committed records are in neither
/// `records_completed` nor `records_pending`. Once the producer dies a
/// reader gives them up, counting them discarded: consumed + lost then
/// exceeds written. (Seen under `relayfs record` with 16 demo threads
/// killed at random: a buffer with discarded 34, delivered = written.)
#[test]
#[ignore = "defect: records of a stuck/held sub-buffer just behind a head left at offset 0 by a refused switch are missing from records_pending (stats takes it for the open one)"]
fn a_held_subbuf_closed_by_a_refused_switch_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("t")
        .base("t")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(4)
        .global(true)
        .open()
        .unwrap();
    let mut accepted = 0u64;
    let mut i = 0u64;
    // Sub-buffers 0, 1 and 2 complete, nothing consumed.
    while chan.total_stats().subbufs_produced < 3 {
        chan.write(&rec(i)).unwrap();
        accepted += 1;
        i += 1;
    }
    chan.write(&rec(i)).unwrap();
    accepted += 1;
    i += 1;
    let held = chan.reserve(24).unwrap();
    // Close sub-buffer 3 (a record that doesn't fit), whose switch to the
    // next is refused: ordinal 0 is not consumed.
    while chan.total_stats().dropped_full == 0 {
        if chan.write(&rec(i)).is_ok() {
            accepted += 1;
        }
        i += 1;
    }
    let s = chan.total_stats();
    assert_eq!(s.subbufs_produced, 4, "{s:?}");
    assert_eq!(s.subbufs_completed, 3, "{s:?}");
    assert_eq!(
        s.records_written(),
        accepted,
        "every record committed is written (completed or pending): {s:?}"
    );
    drop(held);
}
