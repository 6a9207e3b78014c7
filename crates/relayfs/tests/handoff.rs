//! Hand-off reads (`RelayFile::read_handoff`): bytes consumed and marked in
//! flight until the reader says they were handed on. A reader that dies in
//! between (here: drops the `RelayFile` without `handoff_done`, which leaves
//! the mark as a killed process would) has them counted lost by the next.

use relayfs::{Channel, Mode, RelayFile};

fn chan(dir: &std::path::Path, sb: u64, n: u64, mode: Mode) -> Channel {
    Channel::builder("h")
        .dir(dir)
        .subbuf_size(sb)
        .n_subbufs(n)
        .mode(mode)
        .global(true)
        .open()
        .unwrap()
}

/// Writes records `from..to` of 16 bytes, numbered.
fn write(c: &Channel, from: u64, to: u64) {
    for i in from..to {
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&i.to_le_bytes());
        c.write(&r).unwrap();
    }
}

/// The numbers of the 16-byte records in `bytes`.
fn numbers(bytes: &[u8]) -> Vec<u64> {
    assert_eq!(bytes.len() % 16, 0);
    bytes
        .chunks(16)
        .map(|r| u64::from_le_bytes(r[..8].try_into().unwrap()))
        .collect()
}

/// Reads everything there is with hand-offs, each handed on.
fn drain(r: &mut RelayFile) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let h = r.read_handoff(&mut buf).unwrap();
        if h.bytes == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..h.bytes]);
        r.handoff_done();
    }
}

#[test]
fn a_whole_subbuf_left_in_flight_is_counted_lost_by_the_next_reader() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    write(&c, 0, 48); // three full sub-buffers of 16 records
    let mut buf = vec![0u8; 4096];
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.lost_handoff(), None);
    let h = r.read_handoff(&mut buf).unwrap();
    assert_eq!(
        (h.bytes, h.records),
        (256, Some(16)),
        "one sub-buffer at most"
    );
    assert_eq!(numbers(&buf[..256]), (0..16).collect::<Vec<_>>());
    r.handoff_done();
    let h = r.read_handoff(&mut buf).unwrap();
    assert_eq!((h.bytes, h.records), (256, Some(16)));
    drop(r); // dies before handing records 16..32 on
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    let lost = r.lost_handoff().expect("found in flight");
    assert_eq!((lost.records, lost.bytes), (Some(16), 256));
    let s = r.stats();
    assert_eq!((s.records_consumed, s.discarded_records), (16, 16), "{s:?}");
    assert_eq!(s.bytes_consumed, 256);
    assert_eq!(numbers(&drain(&mut r)), (32..48).collect::<Vec<_>>());
    drop(r);
    let r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.lost_handoff(), None, "counted once");
    let s = c.close().unwrap();
    assert_eq!(s.records_consumed, 32);
    assert_eq!(s.records_consumed + s.lost(), 48, "{s:?}");
    drop(r);
}

#[test]
fn part_of_a_subbuf_being_written_left_in_flight_is_counted_once_it_completes() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    let mut buf = vec![0u8; 4096];
    write(&c, 0, 5);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    let h = r.read_handoff(&mut buf).unwrap();
    assert_eq!((h.bytes, h.records), (80, Some(5)), "what is committed");
    r.handoff_done();
    write(&c, 5, 9);
    let h = r.read_handoff(&mut buf).unwrap();
    assert_eq!((h.bytes, h.records), (64, Some(4)), "records 5..9");
    drop(r); // dies with 5..9 in flight
    write(&c, 9, 40);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(
        r.lost_handoff().map(|l| (l.records, l.bytes)),
        Some((Some(4), 64))
    );
    let got = numbers(&drain(&mut r));
    assert_eq!(got, (9..40).collect::<Vec<_>>(), "the rest, nothing twice");
    c.flush(); // completes the third sub-buffer, read already
    assert!(drain(&mut r).is_empty());
    let s = r.stats();
    // 5 + 31 delivered, 4 lost; the first sub-buffer's 16 counted consumed
    // less the 4 lost.
    assert_eq!(s.discarded_records, 4, "{s:?}");
    assert_eq!(s.records_consumed + s.lost(), s.records_written(), "{s:?}");
    assert_eq!(s.records_consumed, 36, "{s:?}");
    assert_eq!(s.bytes_consumed, 36 * 16, "{s:?}");
    drop(r);
    c.close().unwrap();
}

#[test]
fn a_failed_hand_off_is_counted_at_once_and_a_done_one_never() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    write(&c, 0, 32);
    let mut buf = vec![0u8; 4096];
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    r.read_handoff(&mut buf).unwrap();
    let l = r.handoff_failed().expect("in flight");
    assert_eq!((l.records, l.bytes), (Some(16), 256));
    assert_eq!(r.handoff_failed(), None, "once");
    r.read_handoff(&mut buf).unwrap();
    r.handoff_done();
    assert_eq!(r.handoff_failed(), None, "handed on");
    let s = r.stats();
    assert_eq!((s.records_consumed, s.discarded_records), (16, 16), "{s:?}");
    drop(r);
    let r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.lost_handoff(), None);
    drop(r);
    c.close().unwrap();
}

#[test]
fn a_read_ending_inside_a_record_has_no_record_count_and_loses_only_bytes_counted() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    write(&c, 0, 16);
    let mut buf = [0u8; 40];
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    let h = r.read_handoff(&mut buf).unwrap();
    assert_eq!((h.bytes, h.records), (40, None));
    r.handoff_done();
    let mut big = vec![0u8; 4096];
    let h = r.read_handoff(&mut big).unwrap();
    assert_eq!((h.bytes, h.records), (216, None), "its start is not known");
    r.handoff_done();
}

#[test]
fn inspect_counts_a_dead_readers_hand_off_lost_and_the_live_reader_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    write(&c, 0, 32);
    let mut buf = vec![0u8; 4096];
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    r.read_handoff(&mut buf).unwrap();
    // In flight, the reader alive: consumed, as far as anyone knows.
    let s = RelayFile::inspect(c.buffer_path(0)).unwrap().stats;
    assert_eq!((s.records_consumed, s.discarded_records), (16, 0), "{s:?}");
    drop(r);
    let s = RelayFile::inspect(c.buffer_path(0)).unwrap().stats;
    assert_eq!((s.records_consumed, s.discarded_records), (0, 16), "{s:?}");
    assert_eq!(s.bytes_consumed, 0);
    c.close().unwrap();
}

#[test]
fn the_next_reader_knows_the_records_before_a_position_inside_a_subbuf() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    let mut buf = vec![0u8; 4096];
    write(&c, 0, 3);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.read_handoff(&mut buf).unwrap().records, Some(3));
    r.handoff_done();
    drop(r);
    write(&c, 3, 16);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    let h = r.read_handoff(&mut buf).unwrap();
    assert_eq!((h.bytes, h.records), (13 * 16, Some(13)));
    r.handoff_done();
    // A plain read in between: what is before the position is not known
    // any more.
    write(&c, 16, 20);
    let mut small = [0u8; 16];
    assert_eq!(r.read(&mut small).unwrap(), 16);
    let h = r.read_handoff(&mut buf).unwrap();
    assert_eq!((h.bytes, h.records), (48, None));
    r.handoff_done();
    drop(r);
    c.close().unwrap();
}

#[test]
fn a_reader_consuming_by_sub_buffer_after_a_lost_hand_off_counts_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    let mut buf = vec![0u8; 4096];
    write(&c, 0, 6);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.read_handoff(&mut buf).unwrap().records, Some(6));
    drop(r); // records 0..6 of the first sub-buffer lost in flight
    write(&c, 6, 40);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.lost_handoff().and_then(|l| l.records), Some(6));
    // The rest of the first two sub-buffers, consumed by position.
    assert_eq!(r.consume_through(1).unwrap(), 2);
    let s = r.stats();
    assert_eq!(s.discarded_records, 6, "{s:?}");
    assert_eq!(s.records_consumed, 26, "16 - 6 + 16: {s:?}");
    drop(r);
    c.close().unwrap();
}

#[test]
fn a_mark_left_before_relay_reset_counts_nothing_in_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    write(&c, 0, 32);
    let mut buf = vec![0u8; 4096];
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    r.read_handoff(&mut buf).unwrap();
    drop(r); // dies with records 0..16 in flight
    c.reset(); // zeroes the counters the mark speaks of
    let s = RelayFile::inspect(c.buffer_path(0)).unwrap().stats;
    assert_eq!(
        (s.records_written(), s.discarded_records, s.lost()),
        (0, 0, 0),
        "{s:?}"
    );
    write(&c, 0, 20);
    let s = RelayFile::inspect(c.buffer_path(0)).unwrap().stats;
    assert_eq!(s.discarded_records, 0, "{s:?}");
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.lost_handoff(), None);
    c.flush();
    assert_eq!(numbers(&drain(&mut r)), (0..20).collect::<Vec<_>>());
    drop(r);
    let s = c.close().unwrap();
    assert_eq!((s.records_consumed, s.lost()), (20, 0), "{s:?}");
}

#[test]
fn scribbled_hand_off_words_never_take_counters_back_beyond_a_subbuf() {
    use std::io::{Seek, SeekFrom, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    write(&c, 0, 32);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(drain(&mut r).len(), 512);
    drop(r);
    let g = RelayFile::peek_header(c.buffer_path(0)).unwrap().geometry;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.buffer_path(0))
        .unwrap();
    // Every bit set in both words: a mark of 2^30 - 1 bytes and records,
    // and a debt of 2^31 - 1 records.
    for off in [112, 120] {
        f.seek(SeekFrom::Start(g.reader_offset + off)).unwrap();
        f.write_all(&u64::MAX.to_ne_bytes()).unwrap();
    }
    drop(f);
    let s = RelayFile::inspect(c.buffer_path(0)).unwrap().stats;
    assert_eq!((s.records_consumed, s.discarded_records), (32, 0), "{s:?}");
    let r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.lost_handoff(), None, "not a mark read_handoff makes");
    let s = r.stats();
    assert_eq!((s.records_consumed, s.discarded_records), (32, 0), "{s:?}");
    assert_eq!(s.bytes_consumed, 512);
    drop(r);
    c.close().unwrap();
}

#[test]
fn the_producers_subbufs_consumed_after_a_lost_hand_off_counts_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    let mut buf = vec![0u8; 4096];
    write(&c, 0, 5);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.read_handoff(&mut buf).unwrap().records, Some(5));
    drop(r); // records 0..5 lost in flight
    let r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.lost_handoff().and_then(|l| l.records), Some(5));
    drop(r);
    write(&c, 5, 32);
    // relay_subbufs_consumed, for a reader reading through the mapping.
    assert_eq!(c.subbufs_consumed(0, 1).unwrap(), 1);
    let s = c.stats(0);
    assert_eq!((s.records_consumed, s.discarded_records), (11, 5), "{s:?}");
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(numbers(&drain(&mut r)), (16..32).collect::<Vec<_>>());
    drop(r);
    let s = c.close().unwrap();
    assert_eq!((s.records_consumed, s.lost()), (27, 5), "{s:?}");
}

#[test]
fn relay_close_with_no_reader_counts_a_dead_readers_hand_off_lost() {
    // A finished sub-buffer's hand-off: its records were counted consumed
    // when the reader finished it, and nobody will come to settle the mark
    // (the files go): close counts them lost.
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    write(&c, 0, 32);
    let mut buf = vec![0u8; 4096];
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.read_handoff(&mut buf).unwrap().records, Some(16));
    drop(r); // dies with records 0..16 in flight
    let s = c.close().unwrap();
    assert_eq!((s.records_consumed, s.lost()), (0, 32), "{s:?}");
    assert_eq!((s.discarded_records, s.unread_at_close), (16, 16), "{s:?}");
}

#[test]
fn relay_close_with_no_reader_counts_a_lost_part_of_a_subbuf_once() {
    for settled in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
        write(&c, 0, 5);
        let mut buf = vec![0u8; 4096];
        let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
        assert_eq!(r.read_handoff(&mut buf).unwrap().records, Some(5));
        drop(r); // records 0..5 of an unfinished sub-buffer in flight
        if settled {
            // A reader counted them lost, then went away too.
            let r = RelayFile::open(c.buffer_path(0)).unwrap();
            assert_eq!(r.lost_handoff().and_then(|l| l.records), Some(5));
        }
        write(&c, 5, 20);
        let s = c.close().unwrap();
        // 5 discarded, the other 15 unread: not 5 + 20.
        assert_eq!((s.discarded_records, s.unread_at_close), (5, 15), "{s:?}");
        assert_eq!(
            s.records_consumed + s.lost(),
            20,
            "settled {settled}: {s:?}"
        );
    }
}

#[test]
#[ignore = "known defect: a reader killed between storing the mark and consuming has records counted lost that the next reader delivers (consumed + lost exceeds what was offered); the mark has no room to say where the position was"]
fn a_reader_killed_between_marking_and_consuming_counts_nothing_twice() {
    use std::io::{Seek, SeekFrom, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    write(&c, 0, 32);
    // What a reader killed right after storing the mark of sub-buffer 0 (256
    // bytes, 16 records, finishing it) and before consuming any of it
    // leaves: the mark, and the position still at 0.
    let g = RelayFile::peek_header(c.buffer_path(0)).unwrap().geometry;
    let mark: u64 = (1 << 63) | (1 << 62) | (1 << 61) | (16 << 30) | 256;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.buffer_path(0))
        .unwrap();
    f.seek(SeekFrom::Start(g.reader_offset + 120)).unwrap();
    f.write_all(&mark.to_ne_bytes()).unwrap();
    drop(f);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(numbers(&drain(&mut r)), (0..32).collect::<Vec<_>>());
    drop(r);
    let s = c.close().unwrap();
    assert_eq!(s.records_consumed + s.lost(), 32, "{s:?}");
}

#[test]
fn a_hand_off_failing_after_relay_reset_counts_nothing_in_the_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    write(&c, 0, 32);
    let mut buf = vec![0u8; 4096];
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.read_handoff(&mut buf).unwrap().records, Some(16));
    c.reset(); // while the hand-off is in flight
    write(&c, 0, 20);
    // The counters it speaks of are gone: nothing to count.
    assert_eq!(r.handoff_failed(), None);
    let s = r.stats();
    assert_eq!((s.records_consumed, s.discarded_records), (0, 0), "{s:?}");
    c.flush();
    assert_eq!(numbers(&drain(&mut r)), (0..20).collect::<Vec<_>>());
    drop(r);
    let s = c.close().unwrap();
    assert_eq!((s.records_consumed, s.lost()), (20, 0), "{s:?}");
}

/// Reads everything there is with hand-offs in place, each handed on.
fn drain_in_place(r: &mut RelayFile) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let (h, bytes) = r.read_handoff_in_place(1 << 16).unwrap();
        assert_eq!(h.bytes, bytes.len());
        if h.bytes == 0 {
            return out;
        }
        out.extend_from_slice(bytes);
        r.handoff_done();
    }
}

/// Writes records `from..to` as `write` does, and returns how many the
/// channel refused as full.
fn write_counting_full(c: &Channel, from: u64, to: u64) -> u64 {
    let mut full = 0;
    for i in from..to {
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&i.to_le_bytes());
        match c.write(&r) {
            Ok(()) => {}
            Err(relayfs::WriteError::Full) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    full
}

#[test]
fn an_in_place_hand_off_holds_its_subbuf_from_the_producer_until_done() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 2, Mode::NoOverwrite);
    write(&c, 0, 32); // both sub-buffers full
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    let (h, bytes) = r.read_handoff_in_place(1 << 20).unwrap();
    assert_eq!((h.bytes, h.records), (256, Some(16)), "one sub-buffer");
    // Consumed, but not handed back: the producer can't reuse the bytes
    // the slice shows.
    assert_eq!(write_counting_full(&c, 100, 104), 4);
    assert_eq!(numbers(bytes), (0..16).collect::<Vec<_>>());
    let s = c.stats(0);
    assert_eq!(s.bytes_consumed, 256, "{s:?}");
    assert_eq!(s.records_consumed, 0, "counted when handed back: {s:?}");
    r.handoff_done();
    assert_eq!(r.handoff_failed(), None, "handed on");
    assert_eq!(write_counting_full(&c, 32, 48), 0, "handed back");
    assert_eq!(
        numbers(&drain_in_place(&mut r)),
        (16..48).collect::<Vec<_>>()
    );
    // A part of the sub-buffer being written, then the rest of it.
    write(&c, 48, 53);
    let (h, bytes) = r.read_handoff_in_place(1 << 20).unwrap();
    assert_eq!((h.records, numbers(bytes)), (Some(5), (48..53).collect()));
    r.handoff_done();
    write(&c, 53, 64);
    assert_eq!(
        numbers(&drain_in_place(&mut r)),
        (53..64).collect::<Vec<_>>()
    );
    drop(r);
    let s = c.close().unwrap();
    assert_eq!((s.records_consumed, s.lost()), (64, 4), "{s:?}");
}

#[test]
fn an_in_place_hand_off_left_in_flight_is_counted_lost_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    write(&c, 0, 48);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    let (_, bytes) = r.read_handoff_in_place(1 << 20).unwrap();
    assert_eq!(numbers(bytes), (0..16).collect::<Vec<_>>());
    r.handoff_done();
    let (h, _) = r.read_handoff_in_place(1 << 20).unwrap();
    assert_eq!((h.bytes, h.records), (256, Some(16)));
    drop(r); // dies before handing records 16..32 on
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    let lost = r.lost_handoff().expect("found in flight");
    assert_eq!((lost.records, lost.bytes), (Some(16), 256));
    assert_eq!(
        numbers(&drain_in_place(&mut r)),
        (32..48).collect::<Vec<_>>()
    );
    let s = r.stats();
    assert_eq!((s.records_consumed, s.discarded_records), (32, 16), "{s:?}");
    assert_eq!(s.bytes_consumed, 512, "{s:?}");
    drop(r);
    let r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.lost_handoff(), None, "counted once");
    drop(r);
    let s = c.close().unwrap();
    assert_eq!((s.records_consumed, s.lost()), (32, 16), "{s:?}");
}

#[test]
fn an_in_place_reader_killed_after_clearing_its_mark_has_its_subbuf_counted_delivered() {
    use std::io::{Seek, SeekFrom, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    write(&c, 0, 48);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    let (_, bytes) = r.read_handoff_in_place(1 << 20).unwrap();
    assert_eq!(numbers(bytes), (0..16).collect::<Vec<_>>());
    drop(r);
    // What a reader killed in `handoff_done` after clearing the mark and
    // before handing the sub-buffer back leaves: the position at the end
    // of sub-buffer 0, no mark.
    let g = RelayFile::peek_header(c.buffer_path(0)).unwrap().geometry;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.buffer_path(0))
        .unwrap();
    f.seek(SeekFrom::Start(g.reader_offset + 120)).unwrap();
    f.write_all(&0u64.to_ne_bytes()).unwrap();
    drop(f);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.lost_handoff(), None);
    assert_eq!(
        numbers(&drain_in_place(&mut r)),
        (16..48).collect::<Vec<_>>()
    );
    drop(r);
    let s = c.close().unwrap();
    assert_eq!((s.records_consumed, s.lost()), (48, 0), "{s:?}");
}

#[test]
fn a_failed_in_place_hand_off_is_counted_at_once_and_hands_its_subbuf_back() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 2, Mode::NoOverwrite);
    write(&c, 0, 32);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    r.read_handoff_in_place(1 << 20).unwrap();
    let l = r.handoff_failed().expect("in flight");
    assert_eq!((l.records, l.bytes), (Some(16), 256));
    assert_eq!(r.handoff_failed(), None, "once");
    assert_eq!(write_counting_full(&c, 32, 48), 0, "handed back");
    assert_eq!(
        numbers(&drain_in_place(&mut r)),
        (16..48).collect::<Vec<_>>()
    );
    drop(r);
    let r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert_eq!(r.lost_handoff(), None);
    drop(r);
    let s = c.close().unwrap();
    assert_eq!((s.records_consumed, s.discarded_records), (32, 16), "{s:?}");
    assert_eq!(s.records_consumed + s.lost(), 48, "{s:?}");
}

#[test]
fn relay_close_with_no_reader_counts_a_dead_in_place_readers_hand_off_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 8, Mode::NoOverwrite);
    write(&c, 0, 40);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    r.read_handoff_in_place(1 << 20).unwrap();
    drop(r); // dies holding sub-buffer 0, its mark set
    let s = c.close().unwrap();
    // 16 lost in flight, 24 unread; nothing counted twice.
    assert_eq!(s.records_consumed, 0, "{s:?}");
    assert_eq!(s.records_consumed + s.lost(), 40, "{s:?}");
    assert_eq!(s.discarded_records, 16, "{s:?}");
}

#[test]
fn in_place_reads_of_an_overwrite_buffer_come_from_the_validated_copy() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 4, Mode::Overwrite);
    write(&c, 0, 40);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    let (h, bytes) = r.read_handoff_in_place(1 << 20).unwrap();
    assert_eq!((h.bytes, h.records), (256, Some(16)));
    // The producer laps the buffer meanwhile: the copy does not change.
    write(&c, 40, 200);
    assert_eq!(numbers(bytes), (0..16).collect::<Vec<_>>());
    r.handoff_done();
    let got = numbers(&drain_in_place(&mut r));
    assert!(
        !got.is_empty() && got.windows(2).all(|w| w[0] < w[1]),
        "{got:?}"
    );
    assert!(got[0] >= 16, "nothing twice: {got:?}");
    drop(r);
    let s = c.close().unwrap();
    assert_eq!(s.records_consumed + s.lost(), 200, "{s:?}");
}
