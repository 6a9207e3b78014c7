//! A timeout too long to represent as an instant (`Duration::MAX`, say, for
//! "wait as long as it takes") means no limit: never a panic.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use relayfs::{Channel, KernelRelayFile, Ready, RelayFile};

fn channel(dir: &std::path::Path) -> Channel {
    Channel::builder("t")
        .dir(dir)
        .subbuf_size(4096)
        .n_subbufs(4)
        .open()
        .unwrap()
}

#[test]
fn wait_for_readers_with_no_limit() {
    let dir = tempfile::tempdir().unwrap();
    let chan = channel(dir.path());
    let _readers: Vec<RelayFile> = (0..chan.n_buffers())
        .map(|i| RelayFile::open(chan.buffer_path(i)).unwrap())
        .collect();
    assert!(chan.wait_for_readers(Duration::MAX));
}

#[test]
fn relay_file_poll_with_no_limit() {
    let dir = tempfile::tempdir().unwrap();
    let chan = channel(dir.path());
    let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
    chan.write_cpu(0, b"x").unwrap();
    chan.flush();
    assert_eq!(r.poll(Some(Duration::MAX)).unwrap(), Ready::Readable);
    let mut buf = [0u8; 16];
    assert_eq!(r.read(&mut buf).unwrap(), 1);
    chan.close().unwrap();
    assert_eq!(r.poll(Some(Duration::MAX)).unwrap(), Ready::Closed);
}

#[test]
fn kernel_relay_file_poll_with_no_limit() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("trace0");
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut f = KernelRelayFile::open(&p).unwrap();
    let mut w = OpenOptions::new().write(true).open(&p).unwrap();
    w.write_all(b"hello").unwrap();
    assert_eq!(f.poll(Some(Duration::MAX)).unwrap(), Ready::Readable);
}
