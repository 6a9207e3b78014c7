//! Overwrite mode: a reader killed while it holds a sub-buffer, at each
//! point of its protocol (held recorded in the reader page, then the claim
//! word CASed to `READ(ordinal)`, then the copy delivered, then the
//! sub-buffer counted), while the writers lap the slot zero, one or more
//! times before the next reader comes (or before the channel is closed with
//! no reader). Every record must be delivered once or counted once
//! (overwritten by the writer, discarded by a reader, unread at close).
//!
//! The killed reader is made by writing the reader page's words as it
//! leaves them, with no reader attached, as SIGKILL would leave them; what
//! it delivered is read from the buffer file's data, not from the library.

mod common;
use common::{record, HDR};
use relayfs::{BufferStats, Channel, Mode, Ready, RelayFile};
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Offsets in the reader page (`rdr::*`).
const READ_POS: u64 = 8;
const BYTES_CONSUMED: u64 = 40;
const HELD: u64 = 88;
const HELD_RECORDS: u64 = 96;
const HELD_LEN: u64 = 104;
const CLAIMS: u64 = 128;

const SUBBUF: u64 = 4096;
const N_SUBBUFS: u64 = 4;
const LEN: usize = HDR + 40;
const PER_SUBBUF: u64 = SUBBUF / LEN as u64;

/// How far the killed reader got with the sub-buffer it held.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Death {
    /// Recorded it as held, then killed before the claim CAS.
    BeforeClaim,
    /// Claimed it (`READ(ordinal)`), killed before it delivered any of it.
    AfterClaim,
    /// Delivered all of it, killed before it counted it consumed.
    AfterDelivery,
    /// Delivered its first `PART` records (a read smaller than the
    /// sub-buffer), then killed.
    AfterPart,
}

const PART: u64 = 10;

/// Who comes after the killed reader.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Then {
    /// A reader that drains the buffer, then the channel closes.
    Reader,
    /// The channel closes with no reader attached.
    Close,
}

fn word(f: &File, at: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_le_bytes(b)
}

fn put(f: &File, at: u64, v: u64) {
    f.write_all_at(&v.to_le_bytes(), at).unwrap();
}

/// Sub-buffer `held` is the killed reader's (an earlier reader consumed
/// those before it, so their slots' claim words hold its old claims); the
/// writers then reopen its slot `laps` times. Returns the stats, the
/// records delivered (by the killed reader and the next one, checked whole
/// and never twice), what the producer offered, and the records the killed
/// reader delivered; and, with a next reader, what `RelayFile::inspect`
/// showed before it came and how many records it delivered.
fn scenario(held: u64, death: Death, laps: u64, then: Then) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let chan = common::global_channel(dir.path(), "deadclaim", SUBBUF, N_SUBBUFS, Mode::Overwrite);
    let mut seq = 0;
    let mut write_to = |chan: &Channel, n: u64| {
        while seq < n {
            chan.write(&record(0, seq, LEN)).unwrap();
            seq += 1;
        }
    };
    let mut delivered = BTreeSet::new();
    // An earlier reader consumes every sub-buffer before `held`.
    if held > 0 {
        write_to(&chan, held * PER_SUBBUF + 3);
        let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
        let mut buf = vec![0u8; (SUBBUF * (held + 1)) as usize];
        let n = r.read(&mut buf).unwrap();
        deliver(&mut delivered, common::parse(&buf[..n]));
        assert_eq!(r.stats().subbufs_consumed, held);
    }
    // Sub-buffer `held` complete, the next one begun.
    write_to(&chan, (held + 1) * PER_SUBBUF + 3);

    // The killed reader: what it stored before it died.
    let g = chan.geometry();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(chan.buffer_path(0))
        .unwrap();
    let page = g.reader_offset;
    assert_eq!(word(&f, page), held, "the reader's position");
    let slot = held % N_SUBBUFS;
    let end = PER_SUBBUF * LEN as u64;
    put(&f, page + HELD_LEN, end);
    put(&f, page + HELD_RECORDS, PER_SUBBUF);
    put(&f, page + HELD, held + 1);
    if death != Death::BeforeClaim {
        put(&f, page + CLAIMS + 8 * slot, ((held + 1) << 2) | 1);
    }
    let shown = match death {
        Death::AfterDelivery => PER_SUBBUF,
        Death::AfterPart => PART,
        _ => 0,
    };
    let mut dead_delivered = 0;
    if shown > 0 {
        // What it delivered, read from the buffer file as it was then.
        let mut data = vec![0u8; (shown * LEN as u64) as usize];
        f.read_exact_at(&mut data, g.data_offset + slot * SUBBUF)
            .unwrap();
        let recs = common::parse(&data);
        assert_eq!(recs.first(), Some(&(0, held * PER_SUBBUF)));
        dead_delivered = recs.len() as u64;
        deliver(&mut delivered, recs);
        put(&f, page + READ_POS, data.len() as u64);
        let bc = word(&f, page + BYTES_CONSUMED);
        put(&f, page + BYTES_CONSUMED, bc + data.len() as u64);
    }
    drop(f);

    // The writers reopen the slot `laps` times (and begin the sub-buffer
    // after the last reopened one).
    write_to(&chan, (held + laps * N_SUBBUFS + 1) * PER_SUBBUF + 3);

    let mut inspected = None;
    let before_next = delivered.len() as u64;
    let s = match then {
        Then::Reader => {
            inspected = Some(RelayFile::inspect(chan.buffer_path(0)).unwrap().stats);
            let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
            chan.close().unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = r.read(&mut buf).unwrap();
                deliver(&mut delivered, common::parse(&buf[..n]));
                if n == 0 {
                    match r.poll(Some(Duration::from_millis(50))).unwrap() {
                        Ready::Closed => break,
                        Ready::ProducerGone => panic!("producer gone"),
                        _ => {}
                    }
                }
            }
            r.stats()
        }
        Then::Close => {
            chan.close().unwrap();
            chan.total_stats()
        }
    };
    Outcome {
        stats: s,
        delivered: delivered.len() as u64,
        offered: seq,
        dead: dead_delivered,
        inspected,
        next_delivered: delivered.len() as u64 - before_next,
    }
}

struct Outcome {
    stats: BufferStats,
    delivered: u64,
    offered: u64,
    dead: u64,
    inspected: Option<BufferStats>,
    next_delivered: u64,
}

/// Adds records delivered to `set`, none twice.
fn deliver(set: &mut BTreeSet<u64>, recs: Vec<(u32, u64)>) {
    for (w, s) in recs {
        assert_eq!(w, 0);
        assert!(set.insert(s), "record {s} delivered twice");
    }
}

/// Every record delivered once or counted once.
fn check(held: u64, death: Death, laps: u64, then: Then) {
    let what = format!("held {held}, {death:?}, {laps} laps, then {then:?}");
    let o = scenario(held, death, laps, then);
    let (s, delivered, offered, dead) = (o.stats, o.delivered, o.offered, o.dead);
    assert_eq!(s.records_written(), offered, "{what}: {s:?}");
    let counted = delivered
        + s.overwritten_records
        + s.discarded_records
        + s.unread_at_close
        + s.dropped_full;
    // A part of a sub-buffer was delivered, and the rest of it can't be
    // (it was lapped, or the channel closed with no reader): its records
    // can't be split (their boundaries are in the copy that was lost, and a
    // sub-buffer a reader began counts whole at close), so all of them are
    // counted lost, those delivered too.
    let twice = if death == Death::AfterPart && (laps > 0 || then == Then::Close) {
        dead
    } else {
        0
    };
    assert_eq!(counted, offered + twice, "{what}: {s:?}");
    // What was delivered is what is counted consumed: the killed reader's
    // sub-buffer is counted by whoever comes next.
    assert_eq!(s.records_consumed + twice, delivered, "{what}: {s:?}");
    // `inspect`, with no reader attached, showed the killed reader's
    // sub-buffer counted as the next reader counted it: discarded, or
    // consumed if delivered whole. (One not lapped and delivered in part
    // is delivered by the next reader from the position and counted whole
    // then, the part the killed reader delivered too.)
    if let Some(i) = o.inspected {
        assert_eq!(i.discarded_records, s.discarded_records, "{what}: {i:?}");
        let again = if death == Death::AfterPart && laps == 0 {
            dead
        } else {
            0
        };
        assert_eq!(
            i.records_consumed + again,
            s.records_consumed - o.next_delivered,
            "{what}: {i:?}"
        );
    }
}

/// `check` of a reader killed at `death`, with and without earlier claims
/// in the other slots, the slot lapped 0, 1 and 3 times, and a reader or
/// `relay_close` next.
fn check_every_case(death: Death) {
    for held in [0, N_SUBBUFS] {
        for laps in [0, 1, 3] {
            for then in [Then::Reader, Then::Close] {
                check(held, death, laps, then);
            }
        }
    }
}

#[test]
fn killed_before_its_claim() {
    check_every_case(Death::BeforeClaim);
}

#[test]
fn killed_after_its_claim_before_delivering() {
    check_every_case(Death::AfterClaim);
}

#[test]
fn killed_after_delivering_before_counting() {
    check_every_case(Death::AfterDelivery);
}

#[test]
fn killed_after_delivering_part() {
    check_every_case(Death::AfterPart);
}

/// The claim word alone, as a reader that records no held sub-buffer
/// before it claims leaves it: the next reader can't count it then, and
/// nothing is counted twice.
#[test]
fn a_bare_claim_is_never_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let chan = common::global_channel(dir.path(), "bareclaim", SUBBUF, N_SUBBUFS, Mode::Overwrite);
    let mut seq = 0;
    while seq < PER_SUBBUF + 3 {
        chan.write(&record(0, seq, LEN)).unwrap();
        seq += 1;
    }
    let g = chan.geometry();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(chan.buffer_path(0))
        .unwrap();
    put(&f, g.reader_offset + CLAIMS, (1 << 2) | 1);
    drop(f);
    while seq < 10 * PER_SUBBUF {
        chan.write(&record(0, seq, LEN)).unwrap();
        seq += 1;
    }
    let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
    chan.close().unwrap();
    let mut delivered = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).unwrap();
        delivered += common::parse(&buf[..n]).len() as u64;
        if n == 0 && r.poll(Some(Duration::from_millis(50))).unwrap() == Ready::Closed {
            break;
        }
    }
    let s = r.stats();
    assert_eq!(s.records_consumed, delivered, "{s:?}");
    assert_eq!(s.records_written(), seq, "{s:?}");
    let counted = delivered + s.overwritten_records + s.discarded_records;
    assert!(
        counted <= seq && seq - counted <= PER_SUBBUF,
        "{counted} of {seq}: {s:?}"
    );
}

/// A reader page scribbled with an absurd position (the last ordinal) and
/// held sub-buffer: `inspect`, the readers and the producer's
/// `subbufs_consumed` say the buffer is corrupt or count nothing of it, and
/// never panic (an overflow check on `position + 1`).
#[test]
fn an_absurd_position_with_a_held_sub_buffer_never_panics() {
    for mode in [Mode::Overwrite, Mode::NoOverwrite] {
        for held in [0, 1, u64::MAX] {
            let dir = tempfile::tempdir().unwrap();
            let chan = common::global_channel(dir.path(), "absurd", SUBBUF, N_SUBBUFS, mode);
            for seq in 0..2 * PER_SUBBUF + 3 {
                chan.write(&record(0, seq, LEN)).unwrap();
            }
            let g = chan.geometry();
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(chan.buffer_path(0))
                .unwrap();
            let page = g.reader_offset;
            put(&f, page, u64::MAX);
            put(&f, page + HELD, held);
            put(&f, page + HELD_LEN, u64::MAX);
            put(&f, page + HELD_RECORDS, u64::MAX);
            for slot in 0..N_SUBBUFS {
                put(&f, page + CLAIMS + 8 * slot, 1);
            }
            let before = RelayFile::inspect(chan.buffer_path(0)).unwrap().stats;
            assert_eq!(before.discarded_records, 0, "{mode:?} {held}: {before:?}");
            assert_eq!(before.records_consumed, 0, "{mode:?} {held}: {before:?}");
            let _ = chan.subbufs_consumed(0, 1);
            let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
            let mut buf = vec![0u8; SUBBUF as usize];
            assert!(r.read(&mut buf).is_err(), "{mode:?} {held}");
            {
                let mut m = r.map();
                assert!(m.ready().is_err(), "{mode:?} {held}");
                let _ = m.subbufs_consumed(1);
            }
            drop(r);
            chan.close().unwrap();
        }
    }
}

/// A file whose producer predates `LEFT_TO_READER` (the word stays 0): a
/// reader killed after its claim, the slot lapped three times. The next
/// reader can't tell that the writer left the sub-buffer to it, so it
/// counts nothing for it (the old behaviour: one sub-buffer uncounted),
/// and never counts it twice.
#[test]
fn an_older_producer_leaves_a_twice_lapped_claim_uncounted_never_twice() {
    const LEFT_TO_READER: u64 = 448;
    for then in [Then::Reader, Then::Close] {
        let dir = tempfile::tempdir().unwrap();
        let chan = common::global_channel(dir.path(), "older", SUBBUF, N_SUBBUFS, Mode::Overwrite);
        let mut seq = 0;
        let mut write_to = |n: u64| {
            while seq < n {
                chan.write(&record(0, seq, LEN)).unwrap();
                seq += 1;
            }
            seq
        };
        write_to(PER_SUBBUF + 3);
        let g = chan.geometry();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(chan.buffer_path(0))
            .unwrap();
        let page = g.reader_offset;
        put(&f, page + HELD_LEN, PER_SUBBUF * LEN as u64);
        put(&f, page + HELD_RECORDS, PER_SUBBUF);
        put(&f, page + HELD, 1);
        put(&f, page + CLAIMS, (1 << 2) | 1);
        let offered = write_to((3 * N_SUBBUFS + 1) * PER_SUBBUF + 3);
        assert_eq!(word(&f, LEFT_TO_READER), 1, "this producer raised it");
        put(&f, LEFT_TO_READER, 0); // as an older producer leaves it
        drop(f);
        let mut delivered = BTreeSet::new();
        let s = match then {
            Then::Reader => {
                let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
                chan.close().unwrap();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = r.read(&mut buf).unwrap();
                    deliver(&mut delivered, common::parse(&buf[..n]));
                    if n == 0 && r.poll(Some(Duration::from_millis(50))).unwrap() == Ready::Closed {
                        break;
                    }
                }
                r.stats()
            }
            Then::Close => {
                chan.close().unwrap();
                chan.total_stats()
            }
        };
        let counted =
            s.records_consumed + s.overwritten_records + s.discarded_records + s.unread_at_close;
        assert_eq!(
            s.records_consumed,
            delivered.len() as u64,
            "{then:?}: {s:?}"
        );
        assert_eq!(counted + PER_SUBBUF, offered, "{then:?}: {s:?}");
    }
}

/// A mapping reader killed inside `Mapping::consume`, after it counted the
/// sub-buffer consumed and before it moved its position past it (and
/// cleared its held record): the next reader, or `relay_close` with none,
/// counts the sub-buffer again (delivered again, or unread). A random
/// SIGKILL of a mapping reader hits this window about once in a few
/// hundred kills (`tests/claim_kill.rs`, no-overwrite, then close).
#[test]
#[ignore = "known, DESIGN.md \"What is left\": a reader killed between counting a sub-buffer and moving past it counts it twice"]
fn killed_between_counting_and_moving_past_counts_once() {
    const RECORDS_CONSUMED: u64 = 32;
    for mode in [Mode::NoOverwrite, Mode::Overwrite] {
        for then in [Then::Reader, Then::Close] {
            for held_cleared in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let chan = common::global_channel(dir.path(), "countmove", SUBBUF, N_SUBBUFS, mode);
                let mut seq = 0;
                while seq < PER_SUBBUF + 3 {
                    chan.write(&record(0, seq, LEN)).unwrap();
                    seq += 1;
                }
                // The mapping reader: ready() gave sub-buffer 0, it was read,
                // and consume() counted it, then the reader was killed.
                {
                    let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
                    let mut m = r.map();
                    let sb = m.ready().unwrap().unwrap();
                    assert_eq!((sb.ordinal, sb.records), (0, PER_SUBBUF));
                }
                let g = chan.geometry();
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(chan.buffer_path(0))
                    .unwrap();
                let page = g.reader_offset;
                assert_eq!(word(&f, page + HELD), 1);
                put(&f, page + RECORDS_CONSUMED, PER_SUBBUF);
                if held_cleared {
                    put(&f, page + HELD, 0);
                }
                drop(f);
                let offered = seq;
                let mut delivered = BTreeSet::new();
                let s = match then {
                    Then::Reader => {
                        let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
                        chan.close().unwrap();
                        let mut buf = vec![0u8; 1 << 16];
                        loop {
                            let n = r.read(&mut buf).unwrap();
                            for (_, s) in common::parse(&buf[..n]) {
                                delivered.insert(s);
                            }
                            if n == 0
                                && r.poll(Some(Duration::from_millis(50))).unwrap() == Ready::Closed
                            {
                                break;
                            }
                        }
                        r.stats()
                    }
                    Then::Close => {
                        chan.close().unwrap();
                        chan.total_stats()
                    }
                };
                let counted = s.records_consumed
                    + s.overwritten_records
                    + s.discarded_records
                    + s.unread_at_close;
                assert_eq!(
                    counted, offered,
                    "{mode:?}, then {then:?}, held cleared {held_cleared}: {s:?}"
                );
            }
        }
    }
}
