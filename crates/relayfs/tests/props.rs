//! Property tests: the layout arithmetic, the read path against a model of
//! what it must return, and reading buffer files with scribbled state.

use proptest::prelude::*;
use relayfs::layout::Geometry;
use relayfs::{Channel, Mode, RelayFile, WriteError};
use std::io::{Seek, SeekFrom, Write};

mod common;
use common::chain;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any arguments: a clear Ok or Err, never a panic; an Ok geometry has
    /// disjoint, page-aligned regions inside the file.
    #[test]
    fn geometry_is_total(sb in any::<u64>(), n in any::<u64>(), hdr in any::<u64>(), page in prop::sample::select(vec![0u64, 100, 4096, 8192, 1 << 21, 1 << 22])) {
        if let Ok(g) = Geometry::new(sb, n, hdr, page) {
            // The descriptors follow the 640-byte header; the reader page is
            // a page of its own, after them.
            prop_assert!(g.desc_offset >= 640);
            prop_assert!(g.reader_offset >= g.desc_offset + n * 32);
            prop_assert!(g.data_offset >= g.reader_offset + 128 + 8 * n);
            prop_assert!(g.file_size >= g.data_offset + sb * n);
            for off in [g.reader_offset, g.data_offset, g.file_size] {
                prop_assert_eq!(off % page, 0);
            }
        }
    }

    /// Positions walk the ring: ordinal <-> position round-trips.
    #[test]
    fn positions_roundtrip(shift in 6u32..20, n in 1u64..100, ord in 0u64..1_000_000, off in 0u64..64) {
        let g = Geometry::new(1 << shift, n, 0, 4096).unwrap();
        let pos = g.ordinal_pos(ord);
        prop_assert_eq!(g.pos_ordinal(pos + off), ord);
        prop_assert_eq!(g.pos_offset(pos + off), off);
        prop_assert_eq!(g.pos_ordinal(g.next_subbuf_pos(pos + off)), ord + 1);
    }

    /// A single writer and a reader interleaved arbitrarily: the reader gets
    /// exactly the accepted records, in order, padding removed; refused
    /// records are exactly the counted ones.
    #[test]
    fn read_path_matches_model(ops in prop::collection::vec(prop_oneof![
        (1usize..200).prop_map(Op::Write),
        (1usize..300).prop_map(Op::Read),
        Just(Op::Flush),
    ], 1..200), n in 1u64..5) {
        let dir = tempfile::tempdir().unwrap();
        let chan = Channel::builder("p").dir(dir.path()).subbuf_size(256).n_subbufs(n).global(true).open().unwrap();
        let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
        let mut accepted = Vec::new();
        let mut got = Vec::new();
        let (mut full, mut toobig) = (0, 0);
        let mut seq = 0u8;
        for op in &ops {
            match *op {
                Op::Write(len) => {
                    seq = seq.wrapping_add(1);
                    let rec = vec![seq; len];
                    match chan.write(&rec) {
                        Ok(()) => accepted.extend_from_slice(&rec),
                        Err(WriteError::Full) => full += 1,
                        Err(WriteError::TooBig(_)) => toobig += 1,
                        Err(WriteError::Corrupt) => {
                            prop_assert!(false, "a sound buffer was found corrupt")
                        }
                        Err(WriteError::Closed) => prop_assert!(false, "the channel is open"),
                    }
                }
                Op::Read(max) => {
                    let mut buf = vec![0u8; max];
                    let k = r.read(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..k]);
                }
                Op::Flush => chan.flush(),
            }
            prop_assert!(accepted.starts_with(&got), "reader returned bytes never accepted");
        }
        chan.flush();
        let mut buf = vec![0u8; 4096];
        loop {
            let k = r.read(&mut buf).unwrap();
            if k == 0 { break; }
            got.extend_from_slice(&buf[..k]);
        }
        prop_assert_eq!(&got, &accepted);
        let s = r.stats();
        prop_assert_eq!(s.dropped_full, full);
        prop_assert_eq!(s.dropped_toobig, toobig);
        prop_assert_eq!(s.records_completed, s.records_consumed);
    }

    /// Scribbling over the shared state (descriptors, reader page, counters)
    /// of a buffer: opening and reading it returns data or an error, never a
    /// panic, an out-of-bounds read or an endless loop.
    #[test]
    fn scribbled_buffer_never_breaks_the_reader(
        writes in prop::collection::vec((0u64..20_000, any::<u64>()), 1..40),
        mode in prop::sample::select(vec![Mode::NoOverwrite, Mode::Overwrite]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let chan = Channel::builder("s").dir(dir.path()).subbuf_size(512).n_subbufs(4).mode(mode).global(true).open().unwrap();
        for i in 0..30u8 {
            let _ = chan.write(&[i; 100]);
        }
        let path = chan.buffer_path(0).to_path_buf();
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let len = f.metadata().unwrap().len();
        for (off, val) in writes {
            let off = (off % (len / 8)) * 8;
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(&val.to_ne_bytes()).unwrap();
        }
        drop(f);
        if let Ok(mut r) = RelayFile::open(&path) {
            let mut buf = vec![0u8; 1000];
            for _ in 0..100 {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = r.stats();
            let _ = r.is_eof();
        }
        let _ = RelayFile::inspect(&path);
        std::mem::forget(chan); // its state is garbage now; don't flush into it
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize),
    Read(usize),
    Flush,
}

#[test]
fn bad_headers_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cpu0");
    std::fs::write(&p, b"short").unwrap();
    let e = chain(&RelayFile::open(&p).unwrap_err());
    assert!(e.contains("truncated"), "{e}");
    std::fs::write(&p, vec![0u8; 8192]).unwrap();
    let e = chain(&RelayFile::open(&p).unwrap_err());
    assert!(e.contains("not a relay buffer"), "{e}");
    let chan = Channel::builder("h")
        .dir(dir.path())
        .base("b")
        .subbuf_size(4096)
        .n_subbufs(2)
        .global(true)
        .open()
        .unwrap();
    let good = std::fs::read(chan.buffer_path(0)).unwrap();
    let mut v = good.clone();
    v[8] = 9; // version
    std::fs::write(&p, &v).unwrap();
    let e = chain(&RelayFile::open(&p).unwrap_err());
    assert!(e.contains("version 9"), "{e}");
    let mut v = good.clone();
    v[96] ^= 0x10; // data offset
    std::fs::write(&p, &v).unwrap();
    let e = chain(&RelayFile::open(&p).unwrap_err());
    assert!(e.contains("inconsistent"), "{e}");
    std::fs::write(&p, &good[..good.len() - 4096]).unwrap();
    let e = chain(&RelayFile::open(&p).unwrap_err());
    assert!(e.contains("truncated"), "{e}");
    // A buffer count no channel has (readers size per-buffer work by it),
    // and a CPU outside the channel.
    for (off, value, says) in [
        (120, 0u64, "buffer count 0"),
        (120, 1 << 30, "buffer count 1073741824"),
        (120, u64::MAX, "buffer count"),
        (56, 1, "CPU 1 in a channel of 1"),
    ] {
        let mut v = good.clone();
        v[off..off + 8].copy_from_slice(&value.to_ne_bytes());
        std::fs::write(&p, &v).unwrap();
        let e = chain(&RelayFile::open(&p).unwrap_err());
        assert!(e.contains(says), "{e}");
        let e = chain(&RelayFile::peek_header(&p).unwrap_err());
        assert!(e.contains(says), "{e}");
        let e = chain(&RelayFile::inspect(&p).unwrap_err());
        assert!(e.contains(says), "{e}");
    }
}

#[test]
fn bad_open_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let open = |b: relayfs::ChannelBuilder| chain(&b.dir(dir.path()).open().unwrap_err());
    assert!(open(Channel::builder("a").subbuf_size(0)).contains("power of two"));
    assert!(open(Channel::builder("a").subbuf_size(3000)).contains("power of two"));
    assert!(open(Channel::builder("a").n_subbufs(0)).contains("sub-buffer count"));
    assert!(open(
        Channel::builder("a")
            .subbuf_size(1 << 30)
            .n_subbufs(1 << 20)
    )
    .contains("larger than"));
    assert!(open(Channel::builder("a").base("x/y")).contains("invalid name"));
    assert!(open(Channel::builder("a").base("..")).contains("invalid name"));
    let e = Channel::builder("a")
        .dir(dir.path().join("nope"))
        .open()
        .unwrap_err();
    let e = chain(&e);
    assert!(e.contains("channel directory"), "{e}");
    let e = chain(&Channel::builder("../evil").open().unwrap_err());
    assert!(e.contains("invalid name"), "{e}");
    // A name over the limit says so, not just "invalid".
    let long = "n".repeat(300);
    let e = chain(&Channel::builder(&long).open().unwrap_err());
    assert!(e.contains("too long") && e.contains("300"), "{e}");
    let e = open(Channel::builder("a").base(&long));
    assert!(e.contains("too long"), "{e}");
}

#[test]
fn error_messages_say_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let e = Channel::builder("a").dir(&file).open().unwrap_err();
    let text = chain(&e);
    // Each part of the chain is said once: the cause is the source, not
    // repeated in the message.
    let parts: Vec<&str> = text.split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "{p:?} repeated in {text:?}");
    }
    assert!(
        text.contains("Not a directory") || text.contains("not a directory"),
        "{text}"
    );
    let e = RelayFile::open(&file).unwrap_err();
    let text = chain(&e);
    assert_eq!(text.matches("truncated").count(), 1, "{text}");
}
