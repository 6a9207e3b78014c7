//! The kernel relay file reader on stand-ins this machine has: a FIFO behaves
//! like a kernel relay file in the ways that matter here (consuming reads,
//! `poll`, no `splice_read` for `sendfile`, so the fallback path runs).
//! The real thing, a blktrace channel on a real kernel, is tested in a
//! virtual machine by `relayfs-cli`'s `kernel_vm` test.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use relayfs::kernel::Support;
use relayfs::{AnyRelayFile, Channel, KernelRelayFile, Ready, RelayKind};

mod common;
use common::chain;

fn fifo(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("trace0");
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    p
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: valid out array of two ints.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just created and are owned here.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

#[test]
fn zero_read_means_nothing_for_now_and_poll_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let p = fifo(dir.path());
    let mut f = KernelRelayFile::open(&p).unwrap();
    let mut w = OpenOptions::new().write(true).open(&p).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(f.read(&mut buf).unwrap(), 0);
    assert_eq!(
        f.poll(Some(Duration::from_millis(20))).unwrap(),
        Ready::Timeout
    );
    w.write_all(b"hello").unwrap();
    assert_eq!(
        f.poll(Some(Duration::from_secs(5))).unwrap(),
        Ready::Readable
    );
    assert_eq!(f.read(&mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(f.bytes(), 5);
}

#[test]
fn sendfile_falls_back_to_read_and_write_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = fifo(dir.path());
    let mut f = KernelRelayFile::open(&p).unwrap();
    let mut w = OpenOptions::new().write(true).open(&p).unwrap();
    let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let out_path = dir.path().join("trace0.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut sent = 0;
    for chunk in data.chunks(8192) {
        w.write_all(chunk).unwrap();
        sent += f.sendfile(&out, u64::MAX).unwrap();
    }
    assert_eq!(sent, data.len() as u64);
    // A pipe has no splice_read: the kernel refuses and the fallback runs.
    assert_eq!(f.sendfile_support(), Support::No(libc::EINVAL));
    assert_eq!(std::fs::read(&out_path).unwrap(), data);
}

#[test]
fn a_failed_write_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = fifo(dir.path());
    let mut f = KernelRelayFile::open(&p).unwrap();
    let mut w = OpenOptions::new().write(true).open(&p).unwrap();
    // Establish the fallback first (sendfile itself would fail on the
    // broken output before touching the input).
    w.write_all(b"x").unwrap();
    assert_eq!(f.sendfile(tempfile::tempfile().unwrap(), 64).unwrap(), 1);
    w.write_all(b"0123456789").unwrap();
    // Output: a pipe whose read end is closed, so every write fails (EPIPE;
    // the test harness ignores SIGPIPE).
    let (r, wr) = pipe();
    drop(r);
    let e = f.sendfile(&wr, u64::MAX).unwrap_err();
    assert!(chain(&e).contains("Broken pipe"), "{e}");
    // The ten bytes were consumed from the file but are kept: a read gets
    // them, in order, before anything newer.
    w.write_all(b"abc").unwrap();
    assert_eq!(f.poll(Some(Duration::ZERO)).unwrap(), Ready::Readable);
    let mut buf = [0u8; 4];
    assert_eq!(f.read(&mut buf).unwrap(), 4);
    assert_eq!(&buf, b"0123");
    let mut rest = [0u8; 64];
    assert_eq!(f.read(&mut rest).unwrap(), 6);
    assert_eq!(&rest[..6], b"456789");
    assert_eq!(f.read(&mut rest).unwrap(), 3);
    assert_eq!(&rest[..3], b"abc");
    assert_eq!(f.bytes(), 14);
}

#[test]
fn a_partial_write_keeps_the_rest_for_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let p = fifo(dir.path());
    let mut f = KernelRelayFile::open(&p).unwrap();
    let mut w = OpenOptions::new().write(true).open(&p).unwrap();
    w.write_all(&[7u8; 1000]).unwrap();
    let out = tempfile::tempfile().unwrap();
    assert_eq!(f.sendfile(&out, 300).unwrap(), 300);
    assert_eq!(f.sendfile(&out, u64::MAX).unwrap(), 700);
    assert_eq!(out.metadata().unwrap().len(), 1000);
    assert_eq!(f.sendfile(&out, u64::MAX).unwrap(), 0);
}

#[test]
fn mmap_probe_reports_what_the_kernel_says() {
    let dir = tempfile::tempdir().unwrap();
    let p = fifo(dir.path());
    let f = KernelRelayFile::open(&p).unwrap();
    // A FIFO can't be mapped: ENODEV, as debugfs relay files on 6.x.
    assert_eq!(f.probe_mmap(), Support::No(libc::ENODEV));
}

#[test]
fn any_relay_file_opens_our_buffers_as_shm() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("any")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(2)
        .open()
        .unwrap();
    let mut f = AnyRelayFile::open(chan.buffer_path(0)).unwrap();
    assert_eq!(f.kind(), RelayKind::Shm);
    chan.write_cpu(0, b"record").unwrap();
    chan.flush();
    let mut buf = [0u8; 16];
    assert_eq!(f.read(&mut buf).unwrap(), 6);
    chan.close().unwrap();
    assert_eq!(f.poll(Some(Duration::from_secs(1))).unwrap(), Ready::Closed);
    // A plain file elsewhere is not a kernel relay file: the relay buffer
    // format check says what is wrong.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a relay file").unwrap();
    let e = AnyRelayFile::open(&junk).unwrap_err();
    assert!(e.to_string().contains(junk.to_str().unwrap()), "{e}");
}
