//! A reader populates its data mapping at open only when the file is
//! wholly allocated: on tmpfs a read fault of a hole allocates a page, so
//! populating a sparse buffer file (which `relay_open` never makes: it
//! allocates the whole file) would allocate all of it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use relayfs::{Channel, RelayFile};
use rustix::fs::FallocateFlags;

fn blocks(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks()
}

#[test]
fn opening_a_sparse_buffer_allocates_none_of_its_holes() {
    // tmpfs, where a read fault of a hole allocates.
    let dir = tempfile::Builder::new()
        .prefix("relayfs-sparse-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let c = Channel::builder("s")
        .dir(dir.path())
        .subbuf_size(1 << 16)
        .n_subbufs(64)
        .global(true)
        .open()
        .unwrap();
    let p = c.buffer_path(0);
    let g = RelayFile::peek_header(p).unwrap().geometry;
    let whole = blocks(p);
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    rustix::fs::fallocate(
        &f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        g.data_offset,
        g.file_size - g.data_offset,
    )
    .unwrap();
    drop(f);
    let sparse = blocks(p);
    assert!(
        (whole - sparse) * 512 >= (4 << 20),
        "the data area is a hole: {whole} -> {sparse} blocks"
    );
    let mut r = RelayFile::open(p).unwrap();
    assert_eq!(blocks(p), sparse, "the reader's open allocated pages");
    // Still a working buffer: what is written (allocating as it goes) is
    // read back.
    for i in 0u64..10 {
        c.write(&i.to_le_bytes()).unwrap();
    }
    c.flush();
    let mut buf = [0u8; 80];
    assert_eq!(r.read(&mut buf).unwrap(), 80);
    let got: Vec<u64> = buf
        .chunks(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    drop(r);
    let s = c.close().unwrap();
    assert_eq!(s.records_consumed, 10, "{s:?}");
}
