//! Overwrite mode: readers in child processes killed with SIGKILL at random
//! moments while the writer laps them, then a last reader (or `relay_close`
//! with none). Every record offered must be delivered or counted, once:
//! records consumed + overwritten + discarded + unread at close + dropped
//! == offered, and no record counted consumed that no reader delivered.
//!
//! A reader child writes what it reads straight into a shared mapping of
//! its output file, so that what it delivered is there even when it is
//! killed right after. A kill between counting a sub-buffer and moving
//! past it counts it twice (DESIGN.md, "What is left";
//! `dead_reader_claim.rs` `killed_between_counting_and_moving_past_counts_once`):
//! a run now and then fails on it, by one sub-buffer too many. Long: `cargo test --release --test claim_kill --
//! --ignored`; `CK_ITERS`, `CK_SEED` and `CK_KINDS` (read, map, sendfile,
//! handoff) choose how much.

mod common;
use common::record_into;
use relayfs::{BufferStats, Channel, Mode, ReadError, Ready, RelayFile};
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const LEN: usize = 64;
const SUBBUF: u64 = 4096;
const N_SUBBUFS: u64 = 4;
const OUT_SIZE: u64 = 256 << 20;

/// Tiny xorshift: the kill times.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn open_retry(path: &Path) -> RelayFile {
    loop {
        match RelayFile::open(path) {
            Ok(f) => return f,
            Err(ReadError::Busy(_)) => std::thread::sleep(Duration::from_micros(200)),
            Err(e) => panic!("open: {e}"),
        }
    }
}

/// The child: reads the buffer at `CK_PATH` into `CK_OUT` until the channel
/// closes (or it is killed).
fn child(kind: &str) -> ! {
    let path = std::env::var("CK_PATH").unwrap();
    let out = std::env::var("CK_OUT").unwrap();
    let mut f = open_retry(Path::new(&path));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&out)
        .unwrap();
    // SAFETY: our own file, nobody else maps it while we live.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file).unwrap() };
    let mut off = 0usize;
    let chunk = LEN * 13;
    match kind {
        "read" => loop {
            let n = f.read(&mut map[off..off + chunk]).unwrap();
            off += n;
            if n == 0 && f.poll(Some(Duration::from_millis(5))).unwrap() == Ready::Closed {
                break;
            }
        },
        "handoff" => loop {
            let h = f
                .read_handoff(&mut map[off..off + SUBBUF as usize])
                .unwrap();
            let n = h.bytes;
            off += n;
            f.handoff_done();
            if n == 0 && f.poll(Some(Duration::from_millis(5))).unwrap() == Ready::Closed {
                break;
            }
        },
        "sendfile" => {
            use std::io::{Seek, SeekFrom};
            let mut o = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
            drop(map);
            o.seek(SeekFrom::Start(0)).unwrap();
            loop {
                let n = f.sendfile(&o, chunk as u64).unwrap();
                if n == 0 && f.poll(Some(Duration::from_millis(5))).unwrap() == Ready::Closed {
                    break;
                }
            }
        }
        "map" => {
            let mut m = f.map();
            loop {
                match m.ready().unwrap() {
                    Some(sb) => {
                        let data = m.copy_subbuf(&sb);
                        if m.consume(&sb).unwrap() {
                            map[off..off + data.len()].copy_from_slice(&data);
                            off += data.len();
                        }
                    }
                    None => {
                        if m.poll(Some(Duration::from_millis(5))).unwrap() == Ready::Closed {
                            break;
                        }
                    }
                }
            }
        }
        k => panic!("kind {k}"),
    }
    std::process::exit(0)
}

/// Every whole record in `out` (64-byte slots; garbage and zeros skipped).
fn delivered(out: &Path, seen: &mut HashSet<u64>) {
    let data = std::fs::read(out).unwrap();
    let mut want = [0u8; LEN];
    for slot in data.chunks_exact(LEN) {
        if slot[..4] != (LEN as u32).to_le_bytes() {
            continue;
        }
        let seq = u64::from_le_bytes(slot[8..16].try_into().unwrap());
        record_into(0, seq, &mut want);
        if slot == want {
            seen.insert(seq);
        }
    }
}

fn spawn(kind: &str, path: &Path, out: &Path) -> std::process::Child {
    std::fs::File::create(out)
        .unwrap()
        .set_len(OUT_SIZE)
        .unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_loop_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CK_ROLE", kind)
        .env("CK_PATH", path)
        .env("CK_OUT", out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kill_loop_child() {
    if let Ok(k) = std::env::var("CK_ROLE") {
        child(&k);
    }
}

struct Run {
    offered: u64,
    dropped: u64,
    seen: usize,
    stats: BufferStats,
}

fn run(kind: &str, mode: Mode, kills: u32, slow: bool, last_reader: bool, seed: u64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let chan = common::global_channel(dir.path(), "ck", SUBBUF, N_SUBBUFS, mode);
    let path = chan.buffer_path(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut rng = Rng(seed | 1);
    let mut outs = Vec::new();
    let (offered, dropped, last) = std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let mut rec = [0u8; LEN];
            let mut seq = 0u64;
            let mut dropped = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                record_into(0, seq, &mut rec);
                if chan.write(&rec).is_err() {
                    dropped += 1;
                }
                seq += 1;
                if slow && seq % 16 == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            (seq, dropped)
        });
        for i in 0..kills {
            let out = dir.path().join(format!("out{i}"));
            let mut c = spawn(kind, path, &out);
            outs.push(out);
            // Kill at a random moment, sometimes before it even attached.
            std::thread::sleep(Duration::from_micros(rng.next() % 30_000));
            c.kill().unwrap();
            c.wait().unwrap();
        }
        let last = if last_reader {
            let out = dir.path().join("last");
            let c = spawn(kind, path, &out);
            outs.push(out);
            let t = Instant::now();
            while !chan_reader_attached(&chan) {
                assert!(t.elapsed() < Duration::from_secs(20), "no reader");
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(5));
            Some(c)
        } else {
            None
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (o, d) = producer.join().unwrap();
        (o, d, last)
    });
    chan.close().unwrap();
    if let Some(mut c) = last {
        assert!(c.wait().unwrap().success());
    }
    let mut seen = HashSet::new();
    for o in &outs {
        delivered(o, &mut seen);
    }
    let stats = chan.total_stats();
    Run {
        offered,
        dropped,
        seen: seen.len(),
        stats,
    }
}

fn chan_reader_attached(chan: &Channel) -> bool {
    chan.readers_attached() == 1
}

fn check(kind: &str, mode: Mode, kills: u32, slow: bool, last: bool, seed: u64) {
    let r = run(kind, mode, kills, slow, last, seed);
    let s = &r.stats;
    let counted = s.records_consumed
        + s.overwritten_records
        + s.discarded_records
        + s.unread_at_close
        + s.dropped_full
        + s.dropped_toobig
        + s.dropped_corrupt;
    let lost_counted = counted - s.records_consumed;
    let msg = format!(
        "{kind} {mode:?} slow={slow} last={last} seed={seed}: offered {} seen {} counted {counted} \
         (consumed {} overwritten {} discarded {} unread {} dropped {}+{}) producer dropped {}",
        r.offered,
        r.seen,
        s.records_consumed,
        s.overwritten_records,
        s.discarded_records,
        s.unread_at_close,
        s.dropped_full,
        s.dropped_corrupt,
        r.dropped
    );
    eprintln!("{msg}");
    assert_eq!(counted, r.offered, "{msg}");
    // Not delivered and not counted lost: none (the mapping child may die
    // between consuming and writing out what it read).
    if kind != "map" {
        assert!(
            r.seen as u64 + lost_counted >= r.offered,
            "uncounted: {msg}"
        );
    }
}

fn seeds() -> u64 {
    std::env::var("CK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

fn iters() -> u32 {
    std::env::var("CK_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

#[test]
#[ignore = "long: kills reader processes at random"]
fn kill_readers_overwrite() {
    let kinds = std::env::var("CK_KINDS").unwrap_or("read,map,sendfile,handoff".into());
    let base = seeds();
    for it in 0..iters() {
        for kind in kinds.split(',') {
            for slow in [false, true] {
                for last in [true, false] {
                    check(kind, Mode::Overwrite, 12, slow, last, base + u64::from(it));
                }
            }
        }
    }
}

#[test]
#[ignore = "long: kills reader processes at random"]
fn kill_readers_no_overwrite() {
    let kinds = std::env::var("CK_KINDS").unwrap_or("read,map,sendfile,handoff".into());
    let base = seeds();
    for it in 0..iters() {
        for kind in kinds.split(',') {
            for last in [true, false] {
                check(
                    kind,
                    Mode::NoOverwrite,
                    12,
                    false,
                    last,
                    base + u64::from(it),
                );
            }
        }
    }
}

/// Reader page scribbled with absurd held, position, hand-off and claim
/// values after a reader was killed, while the writer laps: `inspect`, the
/// next reader and `relay_close` never panic (run it with overflow checks
/// too), and the producer's own counters stay exact.
#[test]
#[ignore = "long"]
fn scribbled_held_words() {
    use std::os::unix::fs::FileExt;
    let mut rng = Rng(seeds() | 1);
    let n = iters() * 200;
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let mode = if i % 2 == 0 {
            Mode::Overwrite
        } else {
            Mode::NoOverwrite
        };
        let chan = common::global_channel(dir.path(), "sc", SUBBUF, N_SUBBUFS, mode);
        let mut rec = [0u8; LEN];
        let mut seq = 0u64;
        let mut write = |k: u64, seq: &mut u64| {
            for _ in 0..k {
                record_into(0, *seq, &mut rec);
                let _ = chan.write(&rec);
                *seq += 1;
            }
        };
        write(rng.next() % 500, &mut seq);
        // A reader reads some, and is "killed".
        {
            let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
            let mut buf = vec![0u8; (rng.next() % 9000) as usize];
            let _ = r.read(&mut buf);
        }
        let g = chan.geometry();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(chan.buffer_path(0))
            .unwrap();
        let page = g.reader_offset;
        let pick = |rng: &mut Rng, near: u64| match rng.next() % 6 {
            0 => 0,
            1 => u64::MAX,
            2 => near,
            3 => near + 1,
            4 => rng.next() % 8192,
            _ => rng.next(),
        };
        let consumed = {
            let mut b = [0u8; 8];
            f.read_exact_at(&mut b, page).unwrap();
            u64::from_ne_bytes(b)
        };
        for _ in 0..(1 + rng.next() % 4) {
            let (off, near) = match rng.next() % 7 {
                0 => (8, 64),                         // READ_POS
                1 => (88, consumed + 1),              // HELD
                2 => (96, 64),                        // HELD_RECORDS
                3 => (104, 4096),                     // HELD_LEN
                4 => (112 + 8 * (rng.next() % 2), 0), // hand-off words
                5 => (
                    128 + 8 * (rng.next() % N_SUBBUFS),
                    ((consumed + 1) << 2) | 1,
                ),
                _ => (0, consumed), // CONSUMED
            };
            let v = pick(&mut rng, near);
            f.write_all_at(&v.to_ne_bytes(), page + off).unwrap();
        }
        write(rng.next() % 700, &mut seq);
        let _ = RelayFile::inspect(chan.buffer_path(0)).unwrap();
        let drain = rng.next() % 2 == 0;
        let mut r = if drain {
            Some(RelayFile::open(chan.buffer_path(0)).unwrap())
        } else {
            None
        };
        if let Some(r) = r.as_mut() {
            let mut buf = vec![0u8; 5000];
            for _ in 0..50 {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        drop(r);
        chan.close().unwrap();
        let s = chan.total_stats();
        // The scribbled words are the reader's: what it counts for itself
        // (consumed, discarded) may be anything it wrote; the producer's
        // counters must stay exact.
        assert_eq!(
            s.records_completed + s.records_pending + s.dropped_full,
            seq,
            "{i}: {s:?}"
        );
        assert!(
            s.unread_at_close + s.overwritten_records <= s.records_completed,
            "{i}: {s:?}"
        );
    }
}

/// After a reader child is killed at a random moment (the producer paused,
/// not closed), `inspect` shows what the next reader then counts: the
/// discarded records exactly, and the consumed ones less what the next
/// reader delivers itself (and the part of a sub-buffer the killed one
/// delivered, which the next counts whole).
#[test]
#[ignore = "long: kills reader processes at random"]
fn inspect_shows_what_the_next_reader_counts() {
    let kinds = std::env::var("CK_KINDS").unwrap_or("read,map,sendfile,handoff".into());
    let kinds: Vec<&str> = kinds.split(',').collect();
    let mut rng = Rng(seeds() | 1);
    for round in 0..iters() * 20 {
        let kind = kinds[round as usize % kinds.len()];
        let dir = tempfile::tempdir().unwrap();
        let chan = common::global_channel(dir.path(), "ins", SUBBUF, N_SUBBUFS, Mode::Overwrite);
        let path = chan.buffer_path(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let out = dir.path().join("out");
        let pos_before;
        std::thread::scope(|s| {
            let p = s.spawn(|| {
                let mut rec = [0u8; LEN];
                let mut seq = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    record_into(0, seq, &mut rec);
                    let _ = chan.write(&rec);
                    seq += 1;
                    if round % 2 == 1 && seq % 64 == 0 {
                        std::thread::sleep(Duration::from_micros(rng_sleep(seq)));
                    }
                }
            });
            let mut c = spawn(kind, path, &out);
            std::thread::sleep(Duration::from_micros(2000 + rng.next() % 20_000));
            c.kill().unwrap();
            c.wait().unwrap();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            p.join().unwrap();
        });
        let i = RelayFile::inspect(path).unwrap().stats;
        {
            let f = std::fs::File::open(path).unwrap();
            let g = chan.geometry();
            let mut b = [0u8; 8];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, g.reader_offset + 8).unwrap();
            pos_before = u64::from_ne_bytes(b);
        }
        let mut r = RelayFile::open(path).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut next = 0u64;
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            next += (n / LEN) as u64;
        }
        let s = r.stats();
        // Records of the held sub-buffer the killed reader delivered and the
        // next one counts again (it delivers from the position on).
        let again = s.records_consumed - next - i.records_consumed;
        let what = format!("{kind} round {round}: pos {pos_before}\n{i:?}\n{s:?}");
        if std::env::var_os("CK_VERBOSE").is_some() {
            eprintln!(
                "{kind} pos {pos_before} consumed {} discarded {} again {again} next {next}",
                i.records_consumed, i.discarded_records
            );
        }
        assert_eq!(i.discarded_records, s.discarded_records, "{what}");
        assert!(
            again == 0 || (pos_before > 0 && again == pos_before / LEN as u64),
            "{what}"
        );
        drop(r);
        chan.close().unwrap();
    }
}

fn rng_sleep(seq: u64) -> u64 {
    (seq / 64 * 2654435761) % 300
}

/// `relay_reset` after a reader was killed holding a sub-buffer (and
/// readers killed after it): what is counted after the reset adds up to
/// what was offered after it.
#[test]
#[ignore = "long: kills reader processes at random"]
fn reset_after_killed_readers() {
    let mut rng = Rng(seeds() | 1);
    for round in 0..iters() * 4 {
        let kind = ["read", "map", "sendfile", "handoff"][round as usize % 4];
        let dir = tempfile::tempdir().unwrap();
        let mut chan =
            common::global_channel(dir.path(), "rst", SUBBUF, N_SUBBUFS, Mode::Overwrite);
        let path = chan.buffer_path(0).to_path_buf();
        let mut offered = 0;
        for phase in 0..2 {
            if phase == 1 {
                chan.reset();
            }
            let stop = std::sync::atomic::AtomicBool::new(false);
            let chan = &chan;
            offered = std::thread::scope(|s| {
                let p = s.spawn(|| {
                    let mut rec = [0u8; LEN];
                    let mut seq = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        record_into(0, seq, &mut rec);
                        let _ = chan.write(&rec);
                        seq += 1;
                    }
                    seq
                });
                for k in 0..4 {
                    let out = dir.path().join(format!("out{phase}.{k}"));
                    let mut c = spawn(kind, &path, &out);
                    std::thread::sleep(Duration::from_micros(3000 + rng.next() % 20_000));
                    c.kill().unwrap();
                    c.wait().unwrap();
                }
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                p.join().unwrap()
            });
        }
        chan.close().unwrap();
        let s = chan.total_stats();
        let counted = s.records_consumed
            + s.overwritten_records
            + s.discarded_records
            + s.unread_at_close
            + s.dropped_full;
        assert_eq!(counted, offered, "{kind} round {round}: {s:?}");
    }
}
