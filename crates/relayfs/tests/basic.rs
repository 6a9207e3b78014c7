//! Single-process behaviour of a channel and its relay files.

use relayfs::{Channel, Mode, Ready, RelayFile, WriteError};
use std::time::Duration;

fn chan(dir: &std::path::Path, sb: u64, n: u64, mode: Mode) -> Channel {
    Channel::builder("t")
        .dir(dir)
        .subbuf_size(sb)
        .n_subbufs(n)
        .mode(mode)
        .global(true)
        .open()
        .unwrap()
}

fn drain(r: &mut RelayFile) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1000];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn records_come_back_in_order_without_padding() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 4, Mode::NoOverwrite);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    let mut expect = Vec::new();
    for i in 0..20u8 {
        let rec = vec![i; 1 + (i as usize * 7) % 100];
        c.write(&rec).unwrap();
        expect.extend_from_slice(&rec);
        // Drain as we go so the buffer never fills.
        let got = drain(&mut r);
        expect.drain(..got.len());
    }
    c.flush();
    let got = drain(&mut r);
    assert_eq!(got, expect);
    let s = r.stats();
    assert_eq!(s.records_completed, 20);
    assert_eq!(s.records_consumed, 20);
    assert!(s.padding_bytes > 0);
    assert_eq!(s.lost(), 0);
}

#[test]
fn partial_subbuffer_is_readable_without_flush() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 4096, 2, Mode::NoOverwrite);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    c.write(b"abc").unwrap();
    c.write(b"def").unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(r.read(&mut buf).unwrap(), 4);
    assert_eq!(&buf, b"abcd");
    assert_eq!(r.read(&mut buf).unwrap(), 2);
    assert_eq!(&buf[..2], b"ef");
    assert_eq!(r.read(&mut buf).unwrap(), 0);
    c.write(b"gh").unwrap();
    assert_eq!(r.read(&mut buf).unwrap(), 2);
    assert_eq!(&buf[..2], b"gh");
}

#[test]
fn uncommitted_reservation_hides_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 4096, 2, Mode::NoOverwrite);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    c.write(b"one").unwrap();
    let mut slot = c.reserve(3).unwrap();
    c.write(b"three").unwrap();
    let mut buf = [0u8; 64];
    // Only what precedes the open reservation would be safe, but the reader
    // can't tell where it starts: it waits for it.
    assert_eq!(r.read(&mut buf).unwrap(), 0);
    slot.copy_from_slice(b"two");
    slot.commit();
    let n = r.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"onetwothree");
}

#[test]
fn full_buffer_drops_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 64, 2, Mode::NoOverwrite);
    let mut ok = 0;
    let mut full = 0;
    for _ in 0..10 {
        match c.write(&[7u8; 40]) {
            Ok(()) => ok += 1,
            Err(WriteError::Full) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(full, 8);
    assert_eq!(c.write(&[0u8; 65]), Err(WriteError::TooBig(65)));
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    c.flush();
    let got = drain(&mut r);
    assert_eq!(got, vec![7u8; 80]);
    let s = r.stats();
    assert_eq!(s.dropped_full, 8);
    assert_eq!(s.dropped_toobig, 1);
    assert_eq!(s.records_completed, 2);
    // Space is free again.
    c.write(&[9u8; 40]).unwrap();
    c.flush();
    assert_eq!(drain(&mut r), vec![9u8; 40]);
}

#[test]
fn overwrite_mode_keeps_the_newest_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 64, 4, Mode::Overwrite);
    for i in 0..40u8 {
        c.write(&[i; 30]).unwrap(); // two records per sub-buffer
    }
    c.flush();
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    let got = drain(&mut r);
    // 20 sub-buffers were filled; the last 4 survive: records 32..40.
    let expect: Vec<u8> = (32..40u8).flat_map(|i| [i; 30]).collect();
    assert_eq!(got, expect);
    let s = r.stats();
    assert_eq!(s.records_completed, 40);
    assert_eq!(s.overwritten_records, 32);
    assert_eq!(s.records_consumed, 8);
    assert_eq!(s.records_consumed + s.lost(), s.records_completed);
}

#[test]
fn header_reserve_is_filled_by_the_callback() {
    struct Hdr;
    impl relayfs::Callbacks for Hdr {
        fn subbuf_header(
            &self,
            _b: &relayfs::BufferInfo,
            info: &relayfs::SwitchInfo,
            header: &mut [u8],
        ) {
            header.copy_from_slice(&(info.ordinal as u32).to_le_bytes());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let c = Channel::builder("h")
        .dir(dir.path())
        .subbuf_size(64)
        .n_subbufs(4)
        .subbuf_start_reserve(4)
        .callbacks(Hdr)
        .global(true)
        .open()
        .unwrap();
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    c.write(&[1u8; 50]).unwrap();
    c.write(&[2u8; 50]).unwrap();
    c.flush();
    let got = drain(&mut r);
    let mut expect = 0u32.to_le_bytes().to_vec();
    expect.extend([1u8; 50]);
    expect.extend(1u32.to_le_bytes());
    expect.extend([2u8; 50]);
    assert_eq!(got, expect);
    assert_eq!(c.write(&[0u8; 61]), Err(WriteError::TooBig(61)));
}

#[test]
fn close_wakes_reader_and_ends_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 4096, 4, Mode::NoOverwrite);
    let path = c.buffer_path(0).to_path_buf();
    let mut r = RelayFile::open(&path).unwrap();
    c.write(b"last words").unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        c.close().unwrap();
    });
    let mut got = Vec::new();
    loop {
        match r.poll(Some(Duration::from_secs(10))).unwrap() {
            Ready::Readable => got.extend(drain(&mut r)),
            Ready::Closed => break,
            other => panic!("{other:?}"),
        }
    }
    t.join().unwrap();
    assert_eq!(got, b"last words");
    assert!(r.is_eof().unwrap());
    // relay_close left the file to the reader attached to it, which
    // removes it once it has drained it and lets go.
    assert!(path.exists(), "left for the attached reader");
    drop(r);
    assert!(!path.exists(), "removed by its drained reader");
    assert!(!relayfs::wake_fifo_path(&path).exists());
}

#[test]
fn second_reader_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 4096, 4, Mode::NoOverwrite);
    let _r = RelayFile::open(c.buffer_path(0)).unwrap();
    match RelayFile::open(c.buffer_path(0)) {
        Err(relayfs::ReadError::Busy(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn reset_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = chan(dir.path(), 64, 2, Mode::NoOverwrite);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    c.write(&[1u8; 60]).unwrap();
    c.write(&[2u8; 60]).unwrap();
    assert_eq!(c.write(&[3u8; 60]), Err(WriteError::Full));
    c.reset();
    assert_eq!(c.total_stats().dropped_full, 0);
    c.write(&[4u8; 10]).unwrap();
    c.flush();
    assert_eq!(drain(&mut r), vec![4u8; 10]);
}

#[test]
fn mapping_reports_ready_subbuffers_and_consumes() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 64, 2, Mode::NoOverwrite);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    c.write(&[5u8; 50]).unwrap();
    c.write(&[6u8; 50]).unwrap();
    assert_eq!(c.write(&[7u8; 50]), Err(WriteError::Full));
    let mut m = r.map();
    let sb = m.ready().unwrap().unwrap();
    assert_eq!((sb.ordinal, sb.len, sb.padding, sb.records), (0, 50, 14, 1));
    assert_eq!(m.copy_subbuf(&sb), vec![5u8; 50]);
    assert_eq!(m.len(), 128);
    assert_eq!(m.subbufs_consumed(1).unwrap(), 1);
    drop(m);
    c.write(&[7u8; 50]).unwrap();
    assert_eq!(c.stats(0).subbufs_consumed, 1);
}

#[test]
fn flush_interval_makes_partial_subbuffers_readable_in_overwrite_mode() {
    // Overwrite mode reads complete sub-buffers only: without a flush, a
    // lone record would wait for its sub-buffer to fill.
    let dir = tempfile::tempdir().unwrap();
    let c = Channel::builder("f")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(4)
        .mode(Mode::Overwrite)
        .global(true)
        .flush_interval(Duration::from_millis(20))
        .open()
        .unwrap();
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    c.write(b"tick").unwrap();
    let t = std::time::Instant::now();
    let mut got = Vec::new();
    while got.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "never flushed");
        if r.poll(Some(Duration::from_millis(100))).unwrap() == Ready::Readable {
            got = drain(&mut r);
        }
    }
    assert_eq!(got, b"tick");
}

#[test]
fn map_and_unmap_reach_the_callbacks() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    struct Count(Arc<AtomicU64>, Arc<AtomicU64>);
    impl relayfs::Callbacks for Count {
        fn buf_mapped(&self, _b: &relayfs::BufferInfo, _n: u64) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn buf_unmapped(&self, _b: &relayfs::BufferInfo, _n: u64) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }
    let (mapped, unmapped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let dir = tempfile::tempdir().unwrap();
    let c = Channel::builder("m")
        .dir(dir.path())
        .subbuf_size(64)
        .n_subbufs(4)
        .callbacks(Count(mapped.clone(), unmapped.clone()))
        .global(true)
        .open()
        .unwrap();
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    let m = r.map();
    c.flush(); // the producer notices at its next switch or flush
    c.write(&[1u8; 10]).unwrap();
    c.flush();
    assert_eq!(mapped.load(Ordering::Relaxed), 1);
    drop(m);
    c.write(&[1u8; 10]).unwrap();
    c.flush();
    assert_eq!(unmapped.load(Ordering::Relaxed), 1);
}

#[test]
fn subbufs_consumed_from_the_producer_side() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 64, 2, Mode::NoOverwrite);
    c.write(&[1u8; 60]).unwrap();
    c.write(&[2u8; 60]).unwrap();
    assert_eq!(c.write(&[3u8; 60]), Err(WriteError::Full));
    // An mmap reader told us (out of band) it is done with one sub-buffer.
    assert_eq!(c.subbufs_consumed(0, 1).unwrap(), 1);
    c.write(&[3u8; 60]).unwrap();
    let s = c.stats(0);
    assert_eq!((s.subbufs_consumed, s.records_consumed), (1, 1));
    // Asking for more than is complete consumes only what is.
    assert_eq!(c.subbufs_consumed(0, 5).unwrap(), 1);
}

#[test]
fn epoll_style_wakeup_through_the_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 64, 4, Mode::NoOverwrite);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    assert!(!r.prepare_wait().unwrap(), "nothing to read yet");
    c.write(&[1u8; 60]).unwrap();
    c.write(&[2u8; 60]).unwrap(); // completes the first sub-buffer: wakeup
    let fd = r.wake_fd().unwrap();
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(n, 1, "the FIFO became readable");
    assert!(pfd.revents & libc::POLLIN != 0);
    assert!(r.available().unwrap() > 0);
    // Once the channel is closed the FIFO hangs up (POLLHUP).
    drop(c);
    let fd = r.wake_fd().unwrap();
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        events: libc::POLLIN,
        revents: 0,
    };
    r.prepare_wait().unwrap(); // drains the pending wakeup bytes
                               // SAFETY: as above.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(n, 1);
    assert!(
        pfd.revents & libc::POLLHUP != 0,
        "revents {:#x}",
        pfd.revents
    );
}

#[test]
fn mapping_poll_wakes_for_complete_subbuffers_only() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("mpoll")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(4)
        .open()
        .unwrap();
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    let mut m = f.map();
    // A partly filled sub-buffer: readable by `read`, but not a wakeup here.
    chan.write_cpu(0, &[1u8; 100]).unwrap();
    assert_eq!(
        m.poll(Some(Duration::from_millis(30))).unwrap(),
        Ready::Timeout
    );
    assert!(m.ready().unwrap().is_none());
    // A writer on another thread completes it while the reader sleeps.
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            for _ in 0..50 {
                chan.write_cpu(0, &[2u8; 100]).unwrap();
            }
        });
        assert_eq!(
            m.poll(Some(Duration::from_secs(10))).unwrap(),
            Ready::Readable
        );
    });
    let sb = m.ready().unwrap().expect("a complete sub-buffer");
    assert_eq!(sb.records, 40);
    assert_eq!(m.subbufs_consumed(1).unwrap(), 1);
    drop(m);
    chan.close().unwrap();
    let mut m = f.map();
    // close flushed the rest into a complete sub-buffer.
    assert_eq!(
        m.poll(Some(Duration::from_secs(1))).unwrap(),
        Ready::Readable
    );
    assert_eq!(m.ready().unwrap().unwrap().records, 11);
    m.subbufs_consumed(1).unwrap();
    assert_eq!(m.poll(Some(Duration::from_secs(1))).unwrap(), Ready::Closed);
}

#[test]
fn complete_only_reader_leaves_the_subbuffer_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), 256, 4, Mode::NoOverwrite);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    r.set_complete_only(true);
    // 100 bytes in the first sub-buffer: neither readable nor ready.
    c.write(&[1; 100]).unwrap();
    assert_eq!(r.available().unwrap(), 0);
    assert_eq!(drain(&mut r), Vec::<u8>::new());
    assert!(!r.is_eof().unwrap());
    assert_eq!(
        r.poll(Some(Duration::from_millis(20))).unwrap(),
        Ready::Timeout
    );
    // A record that doesn't fit completes it (padding 56) and opens the
    // next: the first is readable whole, the second stays put.
    c.write(&[2; 200]).unwrap();
    assert_eq!(
        r.poll(Some(Duration::from_millis(20))).unwrap(),
        Ready::Readable
    );
    assert_eq!(drain(&mut r), vec![1; 100]);
    assert_eq!(r.available().unwrap(), 0);
    // Turned off, the reader takes the part written so far.
    r.set_complete_only(false);
    assert_eq!(drain(&mut r), vec![2; 200]);
    // Nothing was read twice or skipped: on close, what follows comes out.
    r.set_complete_only(true);
    c.write(&[3; 10]).unwrap();
    c.close().unwrap();
    assert_eq!(drain(&mut r), vec![3; 10]);
    assert!(r.is_eof().unwrap());
    let s = r.stats();
    assert_eq!(s.records_consumed, 3);
}

/// Overwrite mode, two 64-byte sub-buffers, one 40-byte record each: the
/// writer laps sub-buffer 0 while the mapping reader holds it.
fn lapped_under_the_mapping_reader(dir: &std::path::Path) -> (Channel, RelayFile) {
    let c = chan(dir, 64, 2, Mode::Overwrite);
    let r = RelayFile::open(c.buffer_path(0)).unwrap();
    c.write(&[0u8; 40]).unwrap();
    c.write(&[1u8; 40]).unwrap(); // sub-buffer 0 complete
    (c, r)
}

fn accounted(c: &Channel) -> u64 {
    let s = c.stats(0);
    s.records_consumed + s.overwritten_records + s.discarded_records + s.dropped_full
}

#[test]
fn mapping_consume_counts_a_subbuffer_overwritten_under_it_as_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let (c, mut r) = lapped_under_the_mapping_reader(dir.path());
    let mut m = r.map();
    let sb = m.ready().unwrap().unwrap();
    assert_eq!((sb.ordinal, sb.records), (0, 1));
    assert_eq!(m.ready().unwrap(), Some(sb), "asked again: the same one");
    let copy = m.copy_subbuf(&sb);
    assert_eq!(copy, vec![0u8; 40]);
    c.write(&[2u8; 40]).unwrap(); // reopens slot 0 under the reader
    c.write(&[3u8; 40]).unwrap(); // overwrites sub-buffer 1, never claimed
    assert!(!m.consume(&sb).unwrap(), "the copy may be torn");
    assert!(matches!(
        m.consume(&sb),
        Err(relayfs::ReadError::NotReady { ordinal: 0, .. })
    ));
    // Sub-buffer 1 was overwritten before anyone claimed it: skipped.
    let sb2 = m.ready().unwrap().unwrap();
    assert_eq!(sb2.ordinal, 2);
    assert_eq!(m.copy_subbuf(&sb2), vec![2u8; 40]);
    assert!(m.consume(&sb2).unwrap());
    drop(m);
    c.flush();
    assert_eq!(drain(&mut r), vec![3u8; 40]);
    let s = c.stats(0);
    assert_eq!(
        (
            s.records_consumed,
            s.discarded_records,
            s.overwritten_records
        ),
        (2, 1, 1)
    );
    assert_eq!(s.records_completed, 4);
    assert_eq!(accounted(&c), 4);
}

#[test]
fn mapping_kernel_sequence_counts_a_torn_subbuffer_as_discarded_and_nothing_else() {
    // ready, read, still_valid, subbufs_consumed(1): the documented path.
    let dir = tempfile::tempdir().unwrap();
    let (c, mut r) = lapped_under_the_mapping_reader(dir.path());
    let mut m = r.map();
    let sb = m.ready().unwrap().unwrap();
    c.write(&[2u8; 40]).unwrap();
    c.write(&[3u8; 40]).unwrap();
    assert!(!m.still_valid(&sb));
    assert_eq!(m.subbufs_consumed(1).unwrap(), 1);
    let s = c.stats(0);
    assert_eq!((s.records_consumed, s.discarded_records), (0, 1));
    // A sub-buffer ready() never returned is not consumed in its place.
    assert_eq!(m.subbufs_consumed(1).unwrap(), 0);
    assert_eq!(c.stats(0).records_consumed, 0);
    let sb2 = m.ready().unwrap().unwrap();
    assert_eq!(sb2.ordinal, 2);
    assert!(m.still_valid(&sb2));
    assert_eq!(m.subbufs_consumed(1).unwrap(), 1);
    drop(m);
    c.flush();
    assert_eq!(drain(&mut r), vec![3u8; 40]);
    assert_eq!(c.stats(0).records_consumed, 2);
    assert_eq!(accounted(&c), 4);
}

#[test]
fn a_held_subbuffer_lapped_later_is_counted_once_by_whoever_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    // Found by `ready` asked again, and by `read` after the mapping is gone
    // (the hold is in the buffer file, so a restarted reader finds it too).
    for by_read in [false, true] {
        let (c, mut r) = lapped_under_the_mapping_reader(dir.path());
        let mut m = r.map();
        let sb = m.ready().unwrap().unwrap();
        assert_eq!(sb.ordinal, 0);
        // Two more laps: the claim word of slot 0 moves on meanwhile.
        for i in 2..6u8 {
            c.write(&[i; 40]).unwrap();
        }
        let got = if by_read {
            drop(m);
            drop(r);
            let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
            drain(&mut r)
        } else {
            let mut got = Vec::new();
            while let Some(sb) = m.ready().unwrap() {
                let copy = m.copy_subbuf(&sb);
                if m.consume(&sb).unwrap() {
                    got.extend_from_slice(&copy);
                }
            }
            got
        };
        assert_eq!(got, [[4u8; 40]].concat(), "by_read {by_read}");
        let s = c.stats(0);
        assert_eq!(s.discarded_records, 1, "by_read {by_read}: {s:?}");
        assert_eq!(s.records_completed, 5);
        assert_eq!(accounted(&c), 5, "by_read {by_read}: {s:?}");
        c.close().unwrap();
    }
}
