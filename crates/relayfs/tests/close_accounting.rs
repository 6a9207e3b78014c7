//! `relay_close` accounts for every record: what no attached reader is left
//! to read is counted in `unread_at_close`, so that
//! `records_consumed + lost() == offered` exactly.

use relayfs::{BufferStats, Channel, Mode, RelayFile, WriteError};

struct Offered {
    offered: u64,
    ok: u64,
    refused: u64,
}

fn write_n(chan: &Channel, n: u64, o: &mut Offered) {
    for i in 0..n {
        o.offered += 1;
        match chan.write(&i.to_le_bytes()) {
            Ok(()) => o.ok += 1,
            Err(WriteError::Full) => o.refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
}

fn open(dir: &std::path::Path, mode: Mode) -> Channel {
    Channel::builder("c")
        .dir(dir)
        .subbuf_size(256)
        .n_subbufs(8)
        .mode(mode)
        .global(true)
        .open()
        .unwrap()
}

fn check_adds_up(what: &str, s: &BufferStats, o: &Offered) {
    assert_eq!(s.dropped_full, o.refused, "{what} {s:?}");
    assert_eq!(
        s.records_completed,
        s.records_consumed + s.overwritten_records + s.discarded_records + s.unread_at_close,
        "{what}: written = consumed + overwritten + discarded + unread {s:?}"
    );
    assert_eq!(
        s.records_consumed + s.lost(),
        o.offered,
        "{what}: consumed + lost = offered {s:?}"
    );
    assert_eq!(s.records_pending, 0, "{what}: everything flushed {s:?}");
}

#[test]
fn records_left_unread_at_close_are_counted() {
    // Overwrite mode: the reader stops at sub-buffer ends. One that leaves
    // in the middle of a sub-buffer keeps its claim on it, and a writer
    // that laps it then leaves the counting to that reader, which is gone:
    // a reader-side hole that `relay_close` can't see any more.
    for (mode, sizes) in [
        (Mode::NoOverwrite, &[0usize, 100, 256 * 2 + 16, 256 * 3][..]),
        (Mode::Overwrite, &[0usize, 256, 256 * 3][..]),
    ] {
        for &read_bytes in sizes {
            let dir = tempfile::tempdir().unwrap();
            let chan = open(dir.path(), mode);
            let mut o = Offered {
                offered: 0,
                ok: 0,
                refused: 0,
            };
            write_n(&chan, 100, &mut o);
            chan.flush();
            {
                // A reader reads part, then goes away (its lock released).
                let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
                let mut buf = vec![0u8; read_bytes];
                let mut got = 0;
                while got < read_bytes {
                    let k = r.read(&mut buf[got..]).unwrap();
                    if k == 0 {
                        break;
                    }
                    got += k;
                }
            }
            // More writes after it left (no-overwrite: fills and drops).
            write_n(&chan, 1000, &mut o);
            let what = format!("{mode:?} read {read_bytes}");
            let s = chan.close().unwrap();
            assert!(s.unread_at_close > 0, "{what}: records were left {s:?}");
            assert_eq!(s.records_completed, o.ok, "{what}");
            check_adds_up(&what, &s, &o);
        }
    }
}

#[test]
fn a_reader_attached_at_close_drains_and_nothing_is_counted_unread() {
    for mode in [Mode::NoOverwrite, Mode::Overwrite] {
        let dir = tempfile::tempdir().unwrap();
        let chan = open(dir.path(), mode);
        let mut o = Offered {
            offered: 0,
            ok: 0,
            refused: 0,
        };
        let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
        write_n(&chan, 1000, &mut o);
        let mut buf = vec![0u8; 100];
        assert!(r.read(&mut buf).unwrap() > 0);
        let s = chan.close().unwrap();
        assert_eq!(s.unread_at_close, 0, "{mode:?}: the reader drains {s:?}");
        let mut buf = vec![0u8; 4096];
        while !r.is_eof().unwrap() {
            r.read(&mut buf).unwrap();
        }
        check_adds_up(&format!("{mode:?} drained"), &r.stats(), &o);
    }
}

#[test]
fn nothing_read_nothing_lost_when_closed_empty() {
    let dir = tempfile::tempdir().unwrap();
    let chan = open(dir.path(), Mode::NoOverwrite);
    let s = chan.close().unwrap();
    assert_eq!(s.unread_at_close, 0);
    assert_eq!(s.lost(), 0);
}

/// Callbacks that keep the files at close, so a reader can come after.
struct KeepFiles(Mode);

impl relayfs::Callbacks for KeepFiles {
    fn mode(&self) -> Mode {
        self.0
    }
    fn remove_buf_file(&self, _dir: &relayfs::ChannelDir, _name: &str) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_reader_attaching_after_close_gets_the_end_not_what_was_counted_unread() {
    for mode in [Mode::NoOverwrite, Mode::Overwrite] {
        let dir = tempfile::tempdir().unwrap();
        let chan = Channel::builder("k")
            .dir(dir.path())
            .subbuf_size(256)
            .n_subbufs(8)
            .callbacks(KeepFiles(mode))
            .global(true)
            .open()
            .unwrap();
        let path = chan.buffer_path(0).to_path_buf();
        let mut o = Offered {
            offered: 0,
            ok: 0,
            refused: 0,
        };
        write_n(&chan, 1000, &mut o);
        let s = chan.close().unwrap();
        assert!(s.unread_at_close > 0, "{mode:?} {s:?}");
        // Not Busy: the producer let go of the reader lock.
        let mut r = RelayFile::open(&path).unwrap();
        let mut buf = vec![0u8; 4096];
        assert_eq!(r.read(&mut buf).unwrap(), 0, "{mode:?}: already counted");
        assert!(r.is_eof().unwrap(), "{mode:?}");
        check_adds_up(&format!("{mode:?} late reader"), &r.stats(), &o);
    }
}

/// Takes an open-file-description lock on the reader's byte of `path`, as
/// `relay_close` does for a moment while it counts what is unread.
fn hold_reader_lock(path: &std::path::Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 1;
    fl.l_len = 1;
    // SAFETY: F_OFD_SETLK with a valid flock struct on an open fd.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    f
}

#[test]
fn a_reader_opening_while_close_holds_the_reader_lock_waits_instead_of_busy() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("k")
        .dir(dir.path())
        .subbuf_size(256)
        .n_subbufs(8)
        .callbacks(KeepFiles(Mode::NoOverwrite))
        .global(true)
        .open()
        .unwrap();
    let path = chan.buffer_path(0).to_path_buf();
    chan.write(b"x").unwrap();
    chan.close().unwrap();
    // The closed buffer's reader lock held briefly, as close holds it.
    let held = hold_reader_lock(&path);
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(held);
    });
    let r = RelayFile::open(&path);
    release.join().unwrap();
    let mut r = r.expect("a closing buffer's lock is waited for, not Busy");
    assert!(r.is_eof().unwrap());
    drop(r);
    // A lock that stays taken is still Busy, after the few tries.
    let _held = hold_reader_lock(&path);
    match RelayFile::open(&path) {
        Err(relayfs::ReadError::Busy(_)) => {}
        other => panic!("expected Busy, got {other:?}"),
    }
}

#[test]
fn a_reader_attached_at_close_that_leaves_early_leaves_the_rest_to_the_next() {
    for mode in [Mode::NoOverwrite, Mode::Overwrite] {
        let root = tempfile::tempdir().unwrap();
        let chan = Channel::builder("left")
            .relay_dir(root.path())
            .subbuf_size(256)
            .n_subbufs(8)
            .mode(mode)
            .global(true)
            .open()
            .unwrap();
        let path = chan.buffer_path(0).to_path_buf();
        let chan_dir = chan.dir().to_path_buf();
        let mut o = Offered {
            offered: 0,
            ok: 0,
            refused: 0,
        };
        write_n(&chan, 1000, &mut o);
        let mut got = 0u64;
        let mut buf = vec![0u8; 4096];
        let mut first = RelayFile::open(&path).unwrap();
        // Part of it, then the producer closes with this reader attached.
        got += first.read(&mut buf[..256]).unwrap() as u64;
        let s = chan.close().unwrap();
        assert_eq!(s.unread_at_close, 0, "{mode:?}: a reader is attached");
        // The reader goes away (as if killed) before it drained the buffer:
        // the file stays for the next one.
        drop(first);
        assert!(path.exists(), "{mode:?}: left for a reader");
        let mut next = RelayFile::open(&path).unwrap();
        loop {
            let n = next.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        assert!(next.is_eof().unwrap(), "{mode:?}");
        let st = next.stats();
        check_adds_up(&format!("{mode:?} second reader"), &st, &o);
        // What the two readers got is what was delivered, whole records.
        assert_eq!(got % 8, 0, "{mode:?}");
        assert_eq!(
            got / 8 + st.overwritten_records + st.discarded_records,
            o.ok,
            "{mode:?}: every accepted record read once or counted {st:?}"
        );
        // Drained: the last reader removes what was left for it.
        drop(next);
        assert!(!path.exists(), "{mode:?}");
        assert!(
            !chan_dir.exists(),
            "{mode:?}: the directory relay_open made"
        );
    }
}

#[test]
fn a_reader_of_a_left_buffer_never_removes_the_next_producers_files() {
    let root = tempfile::tempdir().unwrap();
    let open = || {
        Channel::builder("again")
            .relay_dir(root.path())
            .subbuf_size(256)
            .n_subbufs(8)
            .global(true)
            .open()
            .unwrap()
    };
    let first = open();
    let path = first.buffer_path(0).to_path_buf();
    first.write(b"old").unwrap();
    let mut old = RelayFile::open(&path).unwrap();
    first.close().unwrap();
    // The channel is opened again while the old reader still drains the
    // file left for it: the stale name is replaced by a new buffer.
    let second = open();
    let mut buf = [0u8; 64];
    assert_eq!(old.read(&mut buf).unwrap(), 3);
    assert!(old.is_eof().unwrap());
    drop(old);
    assert!(path.exists(), "the new producer's buffer stays");
    assert!(relayfs::wake_fifo_path(&path).exists(), "and its FIFO");
    second.write(b"new").unwrap();
    let mut r = RelayFile::open(&path).unwrap();
    second.flush();
    assert_eq!(r.read(&mut buf).unwrap(), 3);
    assert_eq!(&buf[..3], b"new");
    drop(r);
    second.close().unwrap();
    assert!(!path.exists());
}

/// `close` takes `&self`, so the `Channel` lives on after it, and `reset`
/// (`&mut self`) can still be called. It used to reset the closed buffers:
/// the records left for a reader attached at close were wiped before it
/// read them (neither delivered nor counted), and the counters close had
/// returned went back to 0. After close there is nothing to start over:
/// reset leaves the buffers alone.
#[test]
fn a_reset_after_close_leaves_the_closed_buffers_alone() {
    for mode in [Mode::NoOverwrite, Mode::Overwrite] {
        for reader in [false, true] {
            let what = format!("{mode:?}, reader {reader}");
            let dir = tempfile::tempdir().unwrap();
            let mut chan = open(dir.path(), mode);
            let mut o = Offered {
                offered: 0,
                ok: 0,
                refused: 0,
            };
            let mut r = reader.then(|| RelayFile::open(chan.buffer_path(0)).unwrap());
            write_n(&chan, 100, &mut o);
            if let Some(r) = &mut r {
                let mut buf = vec![0u8; 100];
                assert!(r.read(&mut buf).unwrap() > 0, "{what}");
            }
            let closed = chan.close().unwrap();
            chan.reset();
            assert_eq!(chan.total_stats(), closed, "{what}: counters after reset");
            assert!(
                matches!(chan.write(b"late"), Err(WriteError::Closed)),
                "{what}: a write after reset"
            );
            let s = match &mut r {
                Some(r) => {
                    let mut buf = vec![0u8; 4096];
                    while !r.is_eof().unwrap() {
                        r.read(&mut buf).unwrap();
                    }
                    r.stats()
                }
                None => chan.total_stats(),
            };
            o.offered += 1; // the write after reset, refused as closed
            let mut s = s;
            s.dropped_closed = chan.total_stats().dropped_closed;
            check_adds_up(&what, &s, &o);
        }
    }
}

/// The channel directory `relay_open` made is removed once empty by
/// whoever lets go last: the producer that made it at close, or the reader
/// a buffer was left for once it has drained it. Not when the channel was
/// opened again meanwhile: the second producer did not make the directory
/// (it found it), so its close leaves it; the old reader, once drained,
/// leaves it while the second producer's files are in it, and, when the
/// second producer has closed first, gives up at once because its file's
/// name is gone (`remove_left_for_reader` returns when `unlink_if_same`
/// finds no file), before it looks at the directory. Either way an empty
/// channel directory stays in the relay directory for good.
#[test]
#[ignore = "defect: an empty channel directory is left behind when the channel was \
            reopened while a reader drained the buffer left for it"]
fn a_channel_directory_reopened_while_a_reader_drains_is_not_left_behind() {
    for reader_last in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let open = || {
            Channel::builder("again")
                .relay_dir(root.path())
                .subbuf_size(256)
                .n_subbufs(8)
                .global(true)
                .open()
                .unwrap()
        };
        let first = open();
        let path = first.buffer_path(0).to_path_buf();
        first.write(b"old").unwrap();
        let mut old = RelayFile::open(&path).unwrap();
        first.close().unwrap();
        let second = open();
        let mut buf = [0u8; 64];
        assert_eq!(old.read(&mut buf).unwrap(), 3);
        assert!(old.is_eof().unwrap());
        if reader_last {
            second.close().unwrap();
            drop(old);
        } else {
            drop(old);
            second.close().unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.is_empty(),
            "reader last {reader_last}: left in the relay directory: {left:?}"
        );
    }
}

/// Callbacks whose `remove_buf_file` panics for the first buffer.
struct PanicOnFirstRemove;

impl relayfs::Callbacks for PanicOnFirstRemove {
    fn remove_buf_file(&self, dir: &relayfs::ChannelDir, name: &str) -> std::io::Result<()> {
        if name == "cpu0" {
            panic!("remove_buf_file of {name} fails");
        }
        dir.unlink(name)
    }
}

/// A `remove_buf_file` that panics at close (the client's callback, under
/// the client's `catch_unwind`). close calls it for each buffer once that
/// buffer is counted; the panic used to leave every later buffer as it
/// was: not counted unread, not marked closed, its files and the producer
/// lock kept, while a second close said all was done. Now close finishes
/// every buffer, then the panic goes on: the counters add up and only the
/// panicking callback's file is left.
#[test]
fn a_panicking_remove_buf_file_leaves_no_buffer_unclosed() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("p")
        .dir(dir.path())
        .subbuf_size(256)
        .n_subbufs(8)
        .callbacks(PanicOnFirstRemove)
        .open()
        .unwrap();
    let n = chan.n_buffers();
    if n < 2 {
        eprintln!("skipped: one possible CPU, one buffer");
        return;
    }
    let mut o = Offered {
        offered: 0,
        ok: 0,
        refused: 0,
    };
    for i in 0..n {
        for _ in 0..10 {
            o.offered += 1;
            chan.write_cpu(i, b"0123456789").unwrap();
            o.ok += 1;
        }
    }
    let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| chan.close()));
    assert!(first.is_err(), "the callback's panic goes on");
    let s = chan.close().unwrap();
    check_adds_up("after a panicking remove_buf_file", &s, &o);
    assert_eq!(s.unread_at_close, o.ok, "{s:?}");
    for i in 1..n {
        let p = chan.buffer_path(i);
        assert!(!p.exists(), "{} left", p.display());
        assert!(!relayfs::wake_fifo_path(p).exists(), "its FIFO left");
    }
    // The later buffers are closed, not a dead producer's.
    let mut r = RelayFile::open(chan.buffer_path(0)).unwrap();
    assert!(r.is_eof().unwrap());
    assert_eq!(r.read(&mut [0u8; 64]).unwrap(), 0);
}

/// Callbacks whose `buf_mapped` panics.
struct PanicOnMap;

impl relayfs::Callbacks for PanicOnMap {
    fn buf_mapped(&self, _: &relayfs::BufferInfo, _: u64) {
        panic!("buf_mapped fails");
    }
}

/// A `buf_mapped` that panics in close's own flush (a reader mapped the
/// buffer since the producer last looked, and close's flush of the open
/// sub-buffer is the first to notice). The panic used to end close before
/// anything was marked closed, and a second close returned at once: the
/// attached reader waited for an end that never came (the producer lock
/// held as long as the `Channel` lived), its records written but neither
/// read nor counted. Now close goes on, and the panic goes on after it.
#[test]
fn a_panicking_buf_mapped_in_closes_flush_leaves_no_buffer_unclosed() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("m")
        .dir(dir.path())
        .subbuf_size(256)
        .n_subbufs(8)
        .global(true)
        .callbacks(PanicOnMap)
        .open()
        .unwrap();
    let path = chan.buffer_path(0).to_path_buf();
    let mut o = Offered {
        offered: 0,
        ok: 0,
        refused: 0,
    };
    write_n(&chan, 10, &mut o);
    let mut r = RelayFile::open(&path).unwrap();
    let m = r.map();
    let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| chan.close()));
    assert!(first.is_err(), "the callback's panic goes on");
    chan.close().unwrap();
    drop(m);
    // The reader drains to the end, which close marked.
    let mut buf = vec![0u8; 4096];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !r.is_eof().unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "no end: {:?}",
            r.stats()
        );
        r.read(&mut buf).unwrap();
    }
    check_adds_up("a panicking buf_mapped", &r.stats(), &o);
}
