//! A look at a buffer's counters while a producer writes and a reader
//! reads never shows more consumed than written.

use relayfs::{Channel, Mode, RelayFile};
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn consumed_never_exceeds_written_in_a_look_at_a_busy_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let c = Channel::builder("s")
        .dir(dir.path())
        .subbuf_size(64)
        .n_subbufs(2)
        .mode(Mode::NoOverwrite)
        .global(true)
        .open()
        .unwrap();
    let path = c.buffer_path(0).to_path_buf();
    let stop = &AtomicBool::new(false);
    let c = &c;
    std::thread::scope(|sc| {
        sc.spawn(move || {
            for _ in 0..400_000 {
                let _ = c.write(&[7u8; 16]);
            }
            stop.store(true, Ordering::SeqCst);
        });
        let mut r = RelayFile::open(&path).unwrap();
        sc.spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::SeqCst) {
                let _ = r.read(&mut buf).unwrap();
            }
        });
        let mut looks = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let s = RelayFile::inspect(&path).unwrap().stats;
            assert!(s.records_consumed <= s.records_written(), "{s:?}");
            assert!(s.subbufs_consumed <= s.subbufs_produced, "{s:?}");
            looks += 1;
        }
        assert!(looks > 0);
    });
    c.close().unwrap();
}
