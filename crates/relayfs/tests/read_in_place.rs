//! `RelayFile::read_in_place`: the consuming read without a copy, as the
//! mount uses it.

use relayfs::{Channel, Mode, RelayFile};

fn chan(dir: &std::path::Path, mode: Mode) -> Channel {
    Channel::builder("t")
        .dir(dir)
        .subbuf_size(1024)
        .n_subbufs(8)
        .mode(mode)
        .global(true)
        .open()
        .unwrap()
}

/// Drains `r` with `read_in_place`, each call taking at most `take` bytes
/// of what it is shown (less than the piece, sometimes), and checks that a
/// piece never exceeds `max`.
fn drain(r: &mut RelayFile, max: usize, take: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let n = r
            .read_in_place(max, |piece| {
                assert!(!piece.is_empty() && piece.len() <= max);
                let n = piece.len().min(take);
                out.extend_from_slice(&piece[..n]);
                n
            })
            .unwrap();
        if n == 0 {
            return out;
        }
    }
}

#[test]
fn pieces_are_the_records_in_order_and_only_what_was_taken_is_consumed() {
    for mode in [Mode::NoOverwrite, Mode::Overwrite] {
        let dir = tempfile::tempdir().unwrap();
        let c = chan(dir.path(), mode);
        let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
        let mut want = Vec::new();
        let mut got = Vec::new();
        for i in 0..30u8 {
            let rec = vec![i; 10 + i as usize * 3];
            c.write(&rec).unwrap();
            want.extend_from_slice(&rec);
            if i % 5 == 4 {
                c.flush();
            }
            if i % 10 == 9 {
                // Taking less than shown leaves the rest for the next call.
                got.extend(drain(&mut r, 100, 7));
            }
        }
        c.flush();
        got.extend(drain(&mut r, 1 << 20, usize::MAX));
        assert!(got == want, "{mode:?}: every byte once, in order");
        // Nothing readable: 0, and the closure is not called.
        let n = r.read_in_place(100, |_| panic!("called")).unwrap();
        assert_eq!(n, 0);
        let s = r.stats();
        assert_eq!(s.records_consumed + s.lost(), s.records_written(), "{s:?}");
    }
}

#[test]
fn taking_nothing_consumes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = chan(dir.path(), Mode::NoOverwrite);
    let mut r = RelayFile::open(c.buffer_path(0)).unwrap();
    c.write(&[5u8; 40]).unwrap();
    c.flush();
    assert_eq!(r.read_in_place(100, |_| 0).unwrap(), 0);
    assert_eq!(r.stats().bytes_consumed, 0);
    let mut buf = [0u8; 100];
    assert_eq!(r.read(&mut buf).unwrap(), 40);
}
