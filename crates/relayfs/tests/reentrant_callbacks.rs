//! Callbacks that use the channel they are called for. `buf_mapped` and
//! `buf_unmapped` run from the switch path and from `flush` (the kernel's
//! run from the reader's `mmap`, outside every relay lock); one that
//! writes to the channel or flushes it must not deadlock, and what it
//! writes must be accounted.

use relayfs::{BufferInfo, Callbacks, Channel, RelayFile};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

#[derive(Default)]
struct State {
    chan: OnceLock<Weak<Channel>>,
    calls: AtomicU64,
}

struct Reentrant(Arc<State>);

impl std::ops::Deref for Reentrant {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl Callbacks for Reentrant {
    fn buf_mapped(&self, b: &BufferInfo, _n: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.chan.get().and_then(Weak::upgrade) {
            c.write_cpu(b.cpu, b"mapped").unwrap();
            c.flush();
        }
    }
    fn buf_unmapped(&self, b: &BufferInfo, _n: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.chan.get().and_then(Weak::upgrade) {
            c.write_cpu(b.cpu, b"unmapped").unwrap();
            c.flush();
        }
    }
}

#[test]
fn a_callback_that_flushes_the_channel_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let cb = Arc::new(State::default());
    let chan = Arc::new(
        Channel::builder("re")
            .dir(dir.path())
            .subbuf_size(256)
            .n_subbufs(8)
            .callbacks(Reentrant(cb.clone()))
            .open()
            .unwrap(),
    );
    cb.chan.set(Arc::downgrade(&chan)).ok().unwrap();
    // A sub-buffer open before the reader maps: the flush below is what
    // notices the mapping.
    chan.write_cpu(0, b"x").unwrap();
    let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
    let m = r.map();
    let (tx, rx) = std::sync::mpsc::channel();
    let c2 = chan.clone();
    std::thread::spawn(move || {
        c2.flush(); // notices the mapping: buf_mapped, which flushes
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("flush from inside buf_mapped deadlocked");
    assert!(cb.calls.load(Ordering::Relaxed) >= 1);
    drop(m);
    drop(r);
}

/// The same from the flush thread (`flush_interval`): it must not hang, or
/// `close`, which stops it, would hang too. What the callbacks wrote is
/// delivered or counted.
#[test]
fn a_callback_that_flushes_from_the_flush_thread_lets_close_finish() {
    let dir = tempfile::tempdir().unwrap();
    let cb = Arc::new(State::default());
    let chan = Arc::new(
        Channel::builder("re")
            .dir(dir.path())
            .subbuf_size(256)
            .n_subbufs(8)
            .callbacks(Reentrant(cb.clone()))
            .flush_interval(Duration::from_millis(1))
            .open()
            .unwrap(),
    );
    cb.chan.set(Arc::downgrade(&chan)).ok().unwrap();
    let n = chan.n_buffers();
    for cpu in 0..n {
        chan.write_cpu(cpu, b"before").unwrap();
    }
    let mut files: Vec<_> = (0..n)
        .map(|i| RelayFile::open(chan.buffer_path(i)).unwrap())
        .collect();
    // Each buffer has an open sub-buffer: the flush thread closes it and
    // then notices the mapping.
    let maps: Vec<_> = files.iter_mut().map(|f| f.map()).collect();
    std::thread::sleep(Duration::from_millis(100));
    drop(maps);
    let (tx, rx) = std::sync::mpsc::channel();
    let c2 = chan.clone();
    std::thread::spawn(move || {
        tx.send(c2.close().unwrap()).unwrap();
    });
    let closed = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("close hung: the flush thread deadlocked in a callback");
    assert!(cb.calls.load(Ordering::Relaxed) >= n as u64);
    let mut bytes = Vec::new();
    for mut f in files {
        let mut buf = vec![0u8; 4096];
        loop {
            let k = f.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..k]);
        }
    }
    let s = chan.total_stats();
    assert_eq!(s.lost(), 0, "{s:?} {closed:?}");
    assert_eq!(
        s.records_completed,
        n as u64 + cb.calls.load(Ordering::Relaxed),
        "{s:?}"
    );
    assert_eq!(s.records_consumed, s.records_completed, "{s:?}");
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(text.matches("before").count(), n);
    assert!(text.contains("mapped"));
}

/// `subbuf_header` (run once the switch is won, inside a writer's hold of
/// another CPU's mark when it came from `write_cpu`) writing into the
/// channel, into the buffer being opened and into every other, from
/// migrating writers: every record delivered once or counted.
#[test]
fn a_header_callback_that_writes_into_the_channel_accounts_exactly() {
    struct Hdr(Arc<State>);
    impl Callbacks for Hdr {
        fn subbuf_header(&self, b: &BufferInfo, i: &relayfs::SwitchInfo, header: &mut [u8]) {
            header.fill(0);
            let n = self.0.calls.fetch_add(1, Ordering::Relaxed);
            if let Some(c) = self.0.chan.get().and_then(Weak::upgrade) {
                let target = if n % 2 == 0 {
                    b.cpu
                } else {
                    (b.cpu + 1) % c.n_buffers()
                };
                let rec = format!("H{:08}.{:08}.", n, i.ordinal);
                let _ = c.write_cpu(target, rec.as_bytes());
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let st = Arc::new(State::default());
    let chan = Arc::new(
        Channel::builder("hdr")
            .dir(dir.path())
            .subbuf_size(256)
            .n_subbufs(4)
            .subbuf_start_reserve(8)
            .callbacks(Hdr(st.clone()))
            .flush_interval(Duration::from_millis(1))
            .open()
            .unwrap(),
    );
    st.chan.set(Arc::downgrade(&chan)).ok().unwrap();
    let n = chan.n_buffers();
    let readers: Vec<_> = (0..n)
        .map(|i| {
            let mut f = RelayFile::open(chan.buffer_path(i)).unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                loop {
                    let k = f.read(&mut buf).unwrap();
                    if k == 0
                        && f.poll(Some(Duration::from_millis(10))).unwrap()
                            == relayfs::Ready::Closed
                    {
                        break;
                    }
                }
                f.stats()
            })
        })
        .collect();
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (ok, refused) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2usize)
            .map(|w| {
                let chan = &chan;
                s.spawn(move || {
                    let (mut ok, mut refused) = (0u64, 0u64);
                    for i in 0..20_000usize {
                        if i % 50 == 0 {
                            let _ = relayfs::cpu::pin_current_thread((i / 50 + w) % ncpu);
                        }
                        let r = if i % 2 == 0 {
                            chan.write_cpu((i / 2) % n, &[w as u8; 30])
                        } else {
                            chan.write(&[w as u8; 30])
                        };
                        match r {
                            Ok(()) => ok += 1,
                            Err(relayfs::WriteError::Full) => refused += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    (ok, refused)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    let chan = Arc::try_unwrap(chan).ok().unwrap();
    chan.close().unwrap();
    let s: relayfs::BufferStats = readers.into_iter().map(|r| r.join().unwrap()).sum();
    let offered_by_callback = st.calls.load(Ordering::Relaxed);
    assert_eq!(s.corrupt, 0, "{s:?}");
    assert_eq!(s.records_pending, 0, "{s:?}");
    assert_eq!(
        s.records_consumed + s.lost(),
        ok + refused + offered_by_callback,
        "{s:?} ok {ok} refused {refused} callback {offered_by_callback}"
    );
}

/// A `subbuf_header` callback that panics (once; the writer's caller
/// catches it, as a server's per-request `catch_unwind` does). The switch
/// has moved `head` past the header and the record when the callback runs,
/// and the unwinding drops that reservation without committing it: its
/// sub-buffer never completes. The reader stops there for good, the
/// records accepted into that sub-buffer and every later one are neither
/// delivered nor counted, close waits its 2 s for the sub-buffer, and once
/// the writers come round to its slot again every write is refused as
/// full, for ever.
#[test]
#[ignore = "defect: a panicking subbuf_header leaves its switch's reservation uncommitted; \
            records accepted after it are lost uncounted and the slot is never reopened"]
fn a_panicking_header_callback_loses_no_record_and_wedges_nothing() {
    struct PanicOnce(std::sync::atomic::AtomicBool);
    impl Callbacks for PanicOnce {
        fn subbuf_header(&self, _: &BufferInfo, i: &relayfs::SwitchInfo, header: &mut [u8]) {
            if self.0.swap(false, Ordering::SeqCst) {
                panic!("subbuf_header fails once");
            }
            // A header the test's parser skips: 16 bytes, "H" + ordinal.
            header.fill(0);
            header[0] = b'H';
            header[8..16].copy_from_slice(&i.ordinal.to_le_bytes());
        }
    }
    let st = Arc::new(PanicOnce(std::sync::atomic::AtomicBool::new(false)));
    struct Shared(Arc<PanicOnce>);
    impl Callbacks for Shared {
        fn subbuf_header(&self, b: &BufferInfo, i: &relayfs::SwitchInfo, h: &mut [u8]) {
            self.0.subbuf_header(b, i, h)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("hdrpanic")
        .dir(dir.path())
        .subbuf_size(256)
        .n_subbufs(4)
        .global(true)
        .subbuf_start_reserve(16)
        .callbacks(Shared(st.clone()))
        .open()
        .unwrap();
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    let mut stream = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut drain = |f: &mut RelayFile, stream: &mut Vec<u8>| loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        stream.extend_from_slice(&buf[..k]);
    };
    let (mut ok, mut full, mut panicked) = (0u64, 0u64, 0u64);
    for seq in 0..400u64 {
        if seq == 100 {
            st.0.store(true, Ordering::SeqCst);
        }
        let rec = seq.to_le_bytes();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| chan.write(&rec))) {
            Ok(Ok(())) => ok += 1,
            Ok(Err(relayfs::WriteError::Full)) => full += 1,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panicked += 1,
        }
        if seq % 8 == 0 {
            drain(&mut f, &mut stream);
        }
    }
    let t0 = std::time::Instant::now();
    let closed = chan.close().unwrap();
    let took = t0.elapsed();
    while !f.is_eof().unwrap() {
        drain(&mut f, &mut stream);
    }
    // Records are 8 bytes (their sequence number); headers 16, starting
    // with "H".
    let sb = 256;
    let mut delivered = 0u64;
    for sub in stream.chunks(sb) {
        // A chunk is a sub-buffer without its padding, the header first.
        delivered += (sub.len().saturating_sub(16) / 8) as u64;
    }
    let s = f.stats();
    let what = format!(
        "accepted {ok}, refused {full}, panicked {panicked}, close took {took:?}\n\
         closed {closed:?}\nreader {s:?}"
    );
    assert_eq!(panicked, 1, "{what}");
    assert_eq!(s.records_consumed, delivered, "{what}");
    assert_eq!(
        ok,
        s.records_consumed + s.unread_at_close + s.overwritten_records + s.discarded_records,
        "{what}: a record accepted was neither delivered nor counted"
    );
    assert!(full < 100, "{what}: the channel refuses every write");
    assert!(took < Duration::from_secs(1), "{what}");
}
