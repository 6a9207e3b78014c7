use relayfs::{Channel, Mode, RelayFile};
#[test]
fn full_then_close() {
    for pre in [0usize, 1, 5, 7, 8, 9, 13] {
        for flush_before in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let chan = Channel::builder("c")
                .dir(dir.path())
                .subbuf_size(256)
                .n_subbufs(8)
                .mode(Mode::NoOverwrite)
                .global(true)
                .open()
                .unwrap();
            let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
            let mut buf = vec![0u8; 4096];
            // cycle some sub-buffers through first
            for _ in 0..pre {
                for _ in 0..7 {
                    chan.write(&[1u8; 32]).unwrap();
                }
                chan.flush();
                while r.read(&mut buf).unwrap() > 0 {}
            }
            let mut ok = 0;
            let mut full = 0;
            for _ in 0..200 {
                match chan.write(&[2u8; 32]) {
                    Ok(()) => ok += 1,
                    Err(_) => full += 1,
                }
            }
            if flush_before {
                chan.flush();
            }
            chan.close().unwrap();
            let mut reads = 0;
            while !r.is_eof().unwrap() {
                r.read(&mut buf).unwrap();
                reads += 1;
                if reads > 10000 {
                    panic!("loop")
                }
            }
            let s = r.stats();
            eprintln!("pre {pre} flush {flush_before}: ok {ok} full {full} reads {reads} written {} consumed {} prod {} cons {}", s.records_written(), s.records_consumed, s.subbufs_produced, s.subbufs_consumed);
        }
    }
}
