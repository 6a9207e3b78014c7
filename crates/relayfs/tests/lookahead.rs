//! Reading ahead without consuming (`RelayFile::peek_subbuf`) and consuming
//! on acknowledgement (`RelayFile::consume_through`): what a recorder that
//! ships sub-buffers to a broker relies on.

use relayfs::{Channel, Mode, ReadError, RelayFile};

mod common;

/// A record of `len` bytes whose bytes say `seq`.
fn record(seq: u64, len: usize) -> Vec<u8> {
    let mut r = seq.to_le_bytes().to_vec();
    r.resize(len, (seq % 251) as u8);
    r
}

fn channel(dir: &std::path::Path, mode: Mode) -> Channel {
    Channel::builder("ahead")
        .dir(dir)
        .global(true)
        .subbuf_size(256)
        .n_subbufs(4)
        .mode(mode)
        .open()
        .unwrap()
}

#[test]
fn peeking_copies_complete_subbufs_without_consuming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let chan = channel(tmp.path(), Mode::NoOverwrite);
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    assert_eq!(f.consumed_seq(), 0);
    assert_eq!(f.peek_subbuf(0).unwrap(), None, "nothing complete yet");
    // 100-byte records: two fit a 256-byte sub-buffer, 56 bytes of padding.
    let mut sent = 0u64;
    while chan.write_cpu(0, &record(sent, 100)).is_ok() {
        sent += 1;
    }
    // Four sub-buffers of two records fill the buffer; the reader consumed
    // nothing, so the fifth record on is dropped and counted.
    assert_eq!(sent, 8);
    assert_eq!(chan.stats(0).dropped_full, 1);
    let mut peeked = Vec::new();
    for seq in 0..4 {
        let p = f.peek_subbuf(seq).unwrap().expect("complete");
        assert_eq!((p.seq, p.records, p.offset, p.partial), (seq, 2, 0, false));
        let mut want = record(2 * seq, 100);
        want.extend(record(2 * seq + 1, 100));
        assert_eq!(p.data, want, "sub-buffer {seq}, padding removed");
        peeked.push(p);
    }
    assert_eq!(f.peek_subbuf(4).unwrap(), None);
    // Peeking again gives the same, and consumed nothing.
    assert_eq!(f.peek_subbuf(2).unwrap().as_ref(), Some(&peeked[2]));
    assert_eq!(f.consumed_seq(), 0);
    assert_eq!(f.stats().records_consumed, 0);
    // Acknowledged: the first two go back to the producer, which can write
    // again.
    assert_eq!(f.consume_through(1).unwrap(), 2);
    assert_eq!(f.consumed_seq(), 2);
    assert_eq!(f.stats().records_consumed, 4);
    assert_eq!(f.stats().bytes_consumed, 400);
    assert!(matches!(
        f.peek_subbuf(1),
        Err(ReadError::NotReady { ordinal: 1, .. })
    ));
    assert_eq!(
        f.consume_through(1).unwrap(),
        0,
        "consumed once, never twice"
    );
    for seq in sent..sent + 4 {
        chan.write_cpu(0, &record(seq, 100)).unwrap();
    }
    let p = f
        .peek_subbuf(4)
        .unwrap()
        .expect("written after the consume");
    assert_eq!(&p.data[..8], &8u64.to_le_bytes());
    // Sub-buffers still held are untouched by the new writes.
    assert_eq!(f.peek_subbuf(3).unwrap().as_ref(), Some(&peeked[3]));
    chan.close().unwrap();
    assert_eq!(f.consume_through(5).unwrap(), 4);
    let st = f.stats();
    // Every record placed was consumed, the one refused is counted.
    assert_eq!(st.records_consumed, st.records_written(), "{st:?}");
    assert_eq!((st.records_consumed, st.dropped_full), (12, 1), "{st:?}");
}

#[test]
fn a_reopened_reader_resumes_at_the_consumed_position() {
    let tmp = tempfile::tempdir().unwrap();
    let chan = channel(tmp.path(), Mode::NoOverwrite);
    for seq in 0..6 {
        chan.write_cpu(0, &record(seq, 100)).unwrap();
    }
    {
        let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
        assert!(f.peek_subbuf(1).unwrap().is_some());
        assert!(f.peek_subbuf(2).unwrap().is_none(), "still being written");
        f.consume_through(0).unwrap();
        // Sub-buffer 1 was peeked (sent, say) but never acknowledged: the
        // reader goes away before that.
    }
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    assert_eq!(f.consumed_seq(), 1, "kept in the buffer file");
    let p = f.peek_subbuf(1).unwrap().unwrap();
    assert_eq!(&p.data[..8], &2u64.to_le_bytes(), "no gap, no duplicate");
    f.consume_through(1).unwrap();
    // `read` carries on from there.
    let mut buf = vec![0u8; 4096];
    chan.flush();
    let n = f.read(&mut buf).unwrap();
    assert_eq!(n, 200);
    assert_eq!(&buf[..8], &4u64.to_le_bytes());
    chan.close().unwrap();
}

#[test]
fn a_partly_read_subbuf_is_peeked_from_where_read_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let chan = channel(tmp.path(), Mode::NoOverwrite);
    chan.write_cpu(0, &record(0, 100)).unwrap();
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(f.read(&mut buf).unwrap(), 100);
    chan.write_cpu(0, &record(1, 100)).unwrap();
    chan.write_cpu(0, &record(2, 100)).unwrap();
    let p = f.peek_subbuf(0).unwrap().unwrap();
    assert_eq!(p.offset, 100);
    assert_eq!(p.data, record(1, 100), "what read took is left out");
    f.consume_through(0).unwrap();
    assert_eq!(f.stats().bytes_consumed, 200, "each byte counted once");
    chan.close().unwrap();
}

#[test]
fn a_dead_producers_tail_is_peeked_and_consumed_once() {
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("chan");
    // The producer is a child process that writes three records and dies
    // without closing the channel.
    let exe = std::env::current_exe().unwrap();
    let status = Command::new(exe)
        .args(["--exact", "producer_that_dies", "--nocapture", "--ignored"])
        .env("LOOKAHEAD_DIR", &dir)
        .status()
        .unwrap();
    assert!(status.success());
    let path = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("cpu"))
        .unwrap();
    let mut f = RelayFile::open(&path).unwrap();
    assert!(!f.producer_alive());
    let p0 = f.peek_subbuf(0).unwrap().unwrap();
    assert!(!p0.partial);
    let p1 = f.peek_subbuf(1).unwrap().expect("the tail");
    assert!(p1.partial);
    assert_eq!(p1.data, record(2, 100));
    assert_eq!(f.consume_through(1).unwrap(), 2);
    assert_eq!(f.peek_subbuf(1).unwrap(), None, "the tail only once");
    assert!(f.is_eof().unwrap());
}

#[test]
#[ignore = "run by a_dead_producers_tail_is_peeked_and_consumed_once"]
fn producer_that_dies() {
    let Some(dir) = std::env::var_os("LOOKAHEAD_DIR") else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    let chan = channel(std::path::Path::new(&dir), Mode::NoOverwrite);
    for seq in 0..3 {
        chan.write_cpu(0, &record(seq, 100)).unwrap();
    }
    // Gone without relay_close.
    std::process::exit(0);
}

#[test]
fn overwrite_buffers_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let chan = channel(tmp.path(), Mode::Overwrite);
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    let e = f.peek_subbuf(0).unwrap_err();
    assert!(matches!(e, ReadError::Overwrite(_)));
    assert!(common::chain(&e).contains("overwrite mode"), "{e}");
    assert!(matches!(f.consume_through(0), Err(ReadError::Overwrite(_))));
    chan.close().unwrap();
}

#[test]
fn peeking_into_a_scratch_reuses_its_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let chan = channel(tmp.path(), Mode::NoOverwrite);
    for seq in 0..5 {
        chan.write_cpu(0, &record(seq, 100)).unwrap();
    }
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    let mut p = relayfs::PeekedSubbuf::default();
    assert!(f.peek_subbuf_into(0, &mut p).unwrap());
    let at = p.data.as_ptr();
    assert!(f.peek_subbuf_into(1, &mut p).unwrap());
    assert_eq!(p.data.as_ptr(), at, "the same allocation");
    assert_eq!(p.seq, 1);
    assert_eq!(&p.data[..8], &2u64.to_le_bytes());
    assert_eq!(Some(&p), f.peek_subbuf(1).unwrap().as_ref());
    // Not there yet: left as it was.
    assert!(!f.peek_subbuf_into(2, &mut p).unwrap());
    assert_eq!(p.seq, 1);
    chan.close().unwrap();
}

#[test]
fn consuming_through_a_far_sequence_number_is_no_panic() {
    // A caller's bad or forged sequence number (u64::MAX, say) is bad
    // input: whatever is complete is consumed, nothing overflows.
    let tmp = tempfile::tempdir().unwrap();
    let chan = channel(tmp.path(), Mode::NoOverwrite);
    for seq in 0..5 {
        chan.write_cpu(0, &record(seq, 100)).unwrap();
    }
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    assert_eq!(f.peek_subbuf(u64::MAX).unwrap(), None);
    assert_eq!(f.consume_through(u64::MAX).unwrap(), 2, "the complete ones");
    assert_eq!(f.consumed_seq(), 2);
    assert_eq!(f.stats().records_consumed, 4);
    assert_eq!(f.consume_through(u64::MAX).unwrap(), 0);
    chan.close().unwrap();
    assert_eq!(f.consume_through(u64::MAX).unwrap(), 1, "the last, closed");
    assert_eq!(f.stats().records_consumed, 5);
}

#[test]
fn a_view_shows_the_subbuf_in_place_and_holds_it_until_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let chan = channel(tmp.path(), Mode::NoOverwrite);
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    assert!(f.peek_subbuf_view(0).unwrap().is_none(), "nothing complete");
    let mut sent = 0u64;
    while chan.write_cpu(0, &record(sent, 100)).is_ok() {
        sent += 1;
    }
    assert_eq!(sent, 8);
    let views: Vec<_> = (0..4)
        .map(|seq| f.peek_subbuf_view(seq).unwrap().expect("complete"))
        .collect();
    for (seq, v) in views.iter().enumerate() {
        let p = f.peek_subbuf(seq as u64).unwrap().unwrap();
        assert_eq!(v.as_ref(), &p.data[..], "the copy's bytes, in place");
        assert_eq!(
            (v.seq, v.records, v.offset, v.partial),
            (p.seq, 2, 0, false)
        );
    }
    assert_eq!(f.oldest_viewed(), Some(0));
    // While sub-buffer 1 is viewed, consuming stops before it.
    let [v0, v1, v2, v3] = <[_; 4]>::try_from(views).unwrap();
    drop(v0);
    assert_eq!(f.oldest_viewed(), Some(1));
    assert_eq!(f.consume_through(3).unwrap(), 1, "only sub-buffer 0");
    assert_eq!(f.consumed_seq(), 1);
    assert_eq!(f.consume_through(3).unwrap(), 0, "1 is still viewed");
    // The producer can reuse only the slot handed back: one sub-buffer's
    // worth of records, then it drops again; the views don't change.
    let before = v1.as_ref().to_vec();
    let mut more = 0;
    while chan.write_cpu(0, &record(100 + more, 100)).is_ok() {
        more += 1;
    }
    assert_eq!(more, 2);
    assert_eq!(v1.as_ref(), &before[..]);
    drop((v1, v2));
    assert_eq!(f.oldest_viewed(), Some(3));
    assert_eq!(
        f.consume_through(3).unwrap(),
        2,
        "up to the one still viewed"
    );
    assert_eq!(f.consumed_seq(), 3);
    // A view outlives its reader: the mapping stays.
    let want = record(6, 100);
    drop(f);
    assert_eq!(&v3.as_ref()[..100], &want[..]);
    drop(v3);
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    assert_eq!(f.consume_through(3).unwrap(), 1);
    assert_eq!(f.stats().records_consumed, 8);
}

#[test]
fn views_of_overwrite_buffers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let chan = channel(tmp.path(), Mode::Overwrite);
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    assert!(matches!(
        f.peek_subbuf_view(0),
        Err(ReadError::Overwrite(_))
    ));
}

#[test]
fn consuming_reads_stop_before_a_viewed_subbuf() {
    // `read`, `read_handoff`, `sendfile` and the mapping reader consume too:
    // had they handed back a sub-buffer a live view shows, the producer
    // would rewrite the bytes under its `&[u8]`.
    let tmp = tempfile::tempdir().unwrap();
    let chan = channel(tmp.path(), Mode::NoOverwrite);
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    let mut sent = 0u64;
    while chan.write_cpu(0, &record(sent, 100)).is_ok() {
        sent += 1;
    }
    assert_eq!(sent, 8);
    let v1 = f.peek_subbuf_view(1).unwrap().expect("complete");
    let before = v1.as_ref().to_vec();
    let mut buf = vec![0u8; 4096];
    assert_eq!(f.read(&mut buf).unwrap(), 200, "sub-buffer 0 only");
    assert_eq!(f.consumed_seq(), 1);
    let viewed = |r: Result<_, ReadError>| matches!(r, Err(ReadError::Viewed { seq: 1, .. }));
    assert!(viewed(f.read(&mut buf).map(|_| ())));
    assert!(viewed(f.read_handoff(&mut buf).map(|_| ())));
    let null = std::fs::File::create("/dev/null").unwrap();
    assert!(viewed(f.sendfile(&null, u64::MAX).map(|_| ())));
    assert!(viewed(f.sendfile_subbuf(&null).map(|_| ())));
    {
        let mut m = f.map();
        let sb = m.ready().unwrap().expect("sub-buffer 1 is complete");
        assert!(viewed(m.consume(&sb).map(|_| ())));
        assert!(viewed(m.subbufs_consumed(1).map(|_| ())));
    }
    assert_eq!(f.consumed_seq(), 1, "nothing consumed");
    // Only the slot of sub-buffer 0 is free again.
    let mut more = 0;
    while chan.write_cpu(0, &record(100 + more, 100)).is_ok() {
        more += 1;
    }
    assert_eq!(more, 2);
    assert_eq!(v1.as_ref(), &before[..], "the view's bytes stay");
    // Nor can another reader consume it once this one is closed: the
    // view's mapping holds the open file description, and with it the
    // reader lock.
    drop(f);
    assert!(matches!(
        RelayFile::open(chan.buffer_path(0)),
        Err(ReadError::Busy(_))
    ));
    drop(v1);
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    assert_eq!(f.read(&mut buf).unwrap(), 800, "sub-buffers 1 to 4");
    drop(f);
    let s = chan.close().unwrap();
    assert_eq!((s.records_consumed, s.discarded_records), (10, 0), "{s:?}");
}
