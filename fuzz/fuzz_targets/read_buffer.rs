//! Fuzzes the reader's view of a buffer file: whatever the bytes of the
//! file, `open`, `read`, `map`, `inspect` and `stats` return data or an
//! error, never a panic, an out-of-bounds access or an endless loop.
//!
//! The input is laid over a valid, freshly written buffer file (so that the
//! fuzzer gets past the header checks): the first bytes choose where, the
//! rest are written there.
#![no_main]

use std::io::{Seek, SeekFrom, Write};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A valid buffer file with some data in it, made once.
fn template() -> &'static Vec<u8> {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("relayfs-fuzz-template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let chan = relayfs::Channel::builder("f")
            .dir(&dir)
            .subbuf_size(256)
            .n_subbufs(4)
            .global(true)
            .open()
            .unwrap();
        for i in 0..9u8 {
            let _ = chan.write(&[i; 100]);
        }
        let bytes = std::fs::read(chan.buffer_path(0)).unwrap();
        drop(chan);
        bytes
    })
}

fuzz_target!(|data: &[u8]| {
    let t = template();
    let path = std::env::temp_dir().join(format!("relayfs-fuzz-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(t).unwrap();
    // Patches: (u16 offset / 8, u64 value) pairs; a last odd byte truncates.
    let mut chunks = data.chunks_exact(10);
    for c in &mut chunks {
        let off = u16::from_le_bytes([c[0], c[1]]) as u64 * 8 % t.len() as u64;
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&c[2..10]).unwrap();
    }
    if let [n, ..] = chunks.remainder() {
        f.set_len(t.len() as u64 * *n as u64 / 256).unwrap();
    }
    drop(f);
    if let Ok(mut r) = relayfs::RelayFile::open(&path) {
        let mut buf = [0u8; 512];
        for _ in 0..64 {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = r.stats();
        let _ = r.is_eof();
        let mut m = r.map();
        if let Ok(Some(sb)) = m.ready() {
            let _ = m.copy_subbuf(&sb);
            let _ = m.subbufs_consumed(1);
        }
    }
    let _ = relayfs::RelayFile::inspect(&path);
    let _ = relayfs::RelayFile::peek_header(&path);
});
