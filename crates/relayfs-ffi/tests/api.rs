//! The C functions' contracts, called through the C ABI from Rust: the error
//! each bad argument gets, callbacks, reservations, counters.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::path::Path;
use std::ptr::{null, null_mut};

use relayfs_ffi::*;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn cstr(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

fn last_error() -> String {
    let p = relay_last_error();
    assert!(!p.is_null(), "an error message");
    // SAFETY: a NUL-terminated string the library keeps for this thread.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A channel in `dir` with small sub-buffers.
fn open(dir: &Path, cb: Option<&rchan_callbacks>, private: *mut c_void) -> *mut rchan {
    let parent = cstr(dir);
    let cb = cb.map_or(null(), |c| c as *const _);
    // SAFETY: valid strings and callbacks.
    let c = unsafe { relay_open(c"cpu".as_ptr(), parent.as_ptr(), 4096, 2, cb, private) };
    assert!(!c.is_null(), "relay_open: {}", last_error());
    c
}

fn stats(c: *mut rchan, cpu: i64) -> relay_stats {
    let mut s = relay_stats::default();
    // SAFETY: a live channel, a writable struct.
    assert_eq!(unsafe { relay_stats(c, cpu as _, &mut s) }, 0);
    s
}

const EINVAL: c_int = libc::EINVAL;

#[test]
fn null_and_garbage_handles_get_einval() {
    let junk = Box::new([0x5a5a_5a5a_5a5a_5a5au64; 8]);
    let junk_chan = junk.as_ptr() as *mut rchan;
    let junk_file = junk.as_ptr() as *mut relay_file;
    let odd = (junk.as_ptr() as usize + 1) as *mut rchan;
    let mut s = relay_stats::default();
    let mut b = [0u8; 16];
    for c in [null_mut(), junk_chan, odd] {
        // SAFETY: NULL or readable memory that is not a handle: the contract
        // says these are refused.
        unsafe {
            assert_eq!(relay_write(c, b.as_ptr().cast(), 4), -EINVAL);
            assert_eq!(__relay_write(c, b.as_ptr().cast(), 4), -EINVAL);
            assert_eq!(relay_write_cpu(c, 0, b.as_ptr().cast(), 4), -EINVAL);
            assert!(relay_reserve(c, 8).is_null());
            assert_eq!(errno(), libc::EINVAL);
            assert_eq!(relay_commit(c, b.as_mut_ptr().cast()), -EINVAL);
            assert_eq!(relay_flush(c), -EINVAL);
            assert_eq!(relay_reset(c), -EINVAL);
            assert_eq!(relay_subbufs_consumed(c, 0, 1), -EINVAL as _);
            assert_eq!(relay_stats(c, -1, &mut s), -EINVAL);
            assert_eq!(relay_n_buffers(c), -EINVAL as _);
            assert!(relay_buffer_path(c, 0).is_null());
            assert_eq!(relay_wait_for_readers(c, 0), -EINVAL);
            assert_eq!(relay_close(c), -EINVAL);
            assert_eq!(relay_close_stats(c, &mut s), -EINVAL);
        }
    }
    for f in [null_mut(), junk_file] {
        // SAFETY: as above.
        unsafe {
            assert_eq!(
                relay_file_read(f, b.as_mut_ptr().cast(), 16),
                -EINVAL as isize
            );
            assert_eq!(relay_file_sendfile(f, 1, 16), -EINVAL as isize);
            assert_eq!(relay_file_poll(f, 0), -EINVAL);
            assert_eq!(relay_file_poll_fd(f), -EINVAL);
            assert_eq!(relay_file_prepare_wait(f), -EINVAL);
            assert_eq!(relay_file_eof(f), -EINVAL);
            assert_eq!(relay_file_n_buffers(f), -EINVAL as _);
            assert_eq!(relay_file_stats(f, &mut s), -EINVAL);
            assert_eq!(relay_file_close(f), -EINVAL);
        }
    }
    // SAFETY: NULL and a non-buffer are refused.
    unsafe {
        assert_eq!(relay_buf_full(null()), -EINVAL);
        assert_eq!(relay_buf_full(junk.as_ptr().cast()), -EINVAL);
    }
}

#[test]
fn bad_open_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let parent = cstr(dir.path());
    let missing = cstr(&dir.path().join("missing"));
    // (base, parent, subbuf_size, n_subbufs, errno)
    let cases: [(*const c_char, *const c_char, usize, usize, c_int); 6] = [
        (null(), parent.as_ptr(), 4096, 2, libc::EINVAL),
        (c"cpu".as_ptr(), parent.as_ptr(), 100, 2, libc::EINVAL),
        (c"cpu".as_ptr(), parent.as_ptr(), 4096, 0, libc::EINVAL),
        (c"cpu".as_ptr(), parent.as_ptr(), 1 << 40, 2, libc::EINVAL),
        (c"a/b".as_ptr(), parent.as_ptr(), 4096, 2, libc::EINVAL),
        (c"cpu".as_ptr(), missing.as_ptr(), 4096, 2, libc::ENOENT),
    ];
    for (i, (base, par, size, n, want)) in cases.into_iter().enumerate() {
        // SAFETY: NULL or valid strings.
        let c = unsafe { relay_open(base, par, size, n, null(), null_mut()) };
        assert!(c.is_null(), "case {i}");
        assert_eq!(errno(), want, "case {i}: {}", last_error());
        assert!(last_error().starts_with("relay_open"), "case {i}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing made"
    );
}

#[test]
fn a_closed_channel_handle_stays_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), None, null_mut());
    // SAFETY: a live channel, then a closed one (whose shell stays).
    unsafe {
        assert_eq!(relay_write(c, b"abcd".as_ptr().cast(), 4), 0);
        let mut s = relay_stats::default();
        assert_eq!(relay_close_stats(c, &mut s), 0);
        assert_eq!(s.records_written, 1);
        assert_eq!(s.unread_at_close, 1, "no reader: counted unread");
        assert_eq!(relay_write(c, b"abcd".as_ptr().cast(), 4), -EINVAL);
        assert!(relay_reserve(c, 4).is_null());
        assert_eq!(relay_flush(c), -EINVAL);
        assert_eq!(relay_close(c), -EINVAL);
    }
    assert!(!dir.path().join("cpu0").exists(), "files removed");
}

#[test]
fn write_errors_are_negative_errno_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), None, null_mut());
    let big = vec![7u8; 5000];
    let rec = [1u8; 1000];
    // SAFETY: a live channel; valid buffers.
    unsafe {
        assert_eq!(
            relay_write_cpu(c, 0, big.as_ptr().cast(), big.len()),
            -libc::EMSGSIZE
        );
        assert_eq!(relay_write_cpu(c, 0, null(), 5), -EINVAL);
        assert_eq!(relay_write_cpu(c, 0, null(), 0), 0, "empty: nothing");
        assert_eq!(relay_write(c, rec.as_ptr().cast(), usize::MAX), -EINVAL);
        let n = relay_n_buffers(c);
        assert!(n >= 1);
        assert_eq!(
            relay_write_cpu(c, n as usize, rec.as_ptr().cast(), 4),
            -EINVAL
        );
        // No reader, no overwrite: the ring of 2 x 4096 fills up.
        let (mut ok, mut full) = (0u64, 0u64);
        for _ in 0..20 {
            match relay_write_cpu(c, 0, rec.as_ptr().cast(), rec.len()) {
                0 => ok += 1,
                e if e == -libc::ENOBUFS => full += 1,
                e => panic!("unexpected {e}"),
            }
        }
        assert!(ok > 0 && full > 0, "ok {ok}, full {full}");
        let s = stats(c, 0);
        assert_eq!(s.records_written, ok);
        assert_eq!(s.dropped_full, full);
        assert_eq!(s.dropped_toobig, 1);
        assert_eq!(relay_stats(c, n, &mut relay_stats::default()), -EINVAL);
        assert_eq!(relay_stats(c, 0, null_mut()), -EINVAL);
        assert_eq!(relay_close(c), 0);
    }
}

#[test]
fn reservations_are_committed_once_by_their_thread() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), None, null_mut());
    // SAFETY: a live channel; reservations filled within their length.
    unsafe {
        assert!(relay_reserve(c, 0).is_null());
        assert_eq!(errno(), libc::EINVAL);
        assert!(relay_reserve(c, 5000).is_null());
        assert_eq!(errno(), libc::EMSGSIZE);
        let p = relay_reserve(c, 8);
        assert!(!p.is_null());
        p.cast::<u8>().copy_from(b"reserved".as_ptr(), 8);
        assert_eq!(relay_reset(c), -libc::EBUSY, "a reservation is pending");
        // Another thread can't commit it.
        let (ca, pa) = (c as usize, p as usize);
        let other = std::thread::spawn(move || relay_commit(ca as *mut rchan, pa as *mut c_void))
            .join()
            .unwrap();
        assert_eq!(other, -EINVAL);
        assert_eq!(relay_commit(c, p), 0);
        assert_eq!(relay_commit(c, p), -EINVAL, "committed once");
        assert_eq!(relay_commit(c, b"x".as_ptr() as *mut c_void), -EINVAL);
        assert_eq!(stats(c, -1).records_written, 1);
        assert_eq!(relay_reset(c), 0);
        assert_eq!(stats(c, -1).records_written, 0, "reset");
        assert_eq!(relay_close(c), 0);
    }
}

#[test]
fn a_reader_reads_what_the_producer_wrote_and_sees_the_close() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), None, null_mut());
    // SAFETY: live handles, valid buffers.
    unsafe {
        let path = relay_buffer_path(c, 0);
        assert!(!path.is_null());
        let f = relay_file_open(path);
        assert!(!f.is_null(), "{}", last_error());
        assert!(relay_file_open(path).is_null(), "one reader per buffer");
        assert_eq!(errno(), libc::EBUSY);
        assert_eq!(relay_file_n_buffers(f), relay_n_buffers(c));
        assert_eq!(relay_file_poll(f, 0), RELAY_POLL_TIMEOUT);
        assert_eq!(relay_write_cpu(c, 0, b"hello".as_ptr().cast(), 5), 0);
        assert_eq!(relay_flush(c), 0);
        assert_eq!(relay_file_poll(f, 1000), RELAY_POLL_READABLE);
        let mut buf = [0u8; 64];
        assert_eq!(relay_file_read(f, buf.as_mut_ptr().cast(), 64), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(relay_file_read(f, buf.as_mut_ptr().cast(), 64), 0);
        assert_eq!(relay_file_eof(f), 0);
        assert!(relay_file_poll_fd(f) >= 0);
        assert_eq!(relay_file_prepare_wait(f), 0, "nothing readable");
        assert_eq!(relay_file_sendfile(f, -1, 10), -libc::EBADF as isize);
        let mut s = relay_stats::default();
        assert_eq!(relay_file_stats(f, &mut s), 0);
        assert_eq!(s.records_consumed, 1);
        assert_eq!(relay_close(c), 0);
        assert_eq!(relay_file_poll(f, 1000), RELAY_POLL_CLOSED);
        assert_eq!(relay_file_eof(f), 1);
        assert_eq!(relay_file_close(f), 0);
        assert_eq!(relay_file_close(f), -EINVAL, "closed once");
        assert_eq!(relay_file_poll(f, 0), -EINVAL);
    }
}

#[test]
fn relay_file_open_refuses_what_is_not_a_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, vec![0u8; 8192]).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&plain, &link).unwrap();
    for (p, want) in [
        (dir.path().join("missing"), libc::ENOENT),
        (plain, libc::EBADMSG),
        (link, libc::ELOOP),
    ] {
        let cp = cstr(&p);
        // SAFETY: a valid string.
        assert!(unsafe { relay_file_open(cp.as_ptr()) }.is_null());
        assert_eq!(errno(), want, "{}: {}", p.display(), last_error());
    }
    // SAFETY: NULL is refused.
    assert!(unsafe { relay_file_open(null()) }.is_null());
    assert_eq!(errno(), libc::EINVAL);
}

/// What the test callbacks saw, through `private_data`.
#[derive(Default)]
struct Seen {
    created: std::sync::Mutex<Vec<String>>,
    removed: std::sync::Mutex<Vec<String>>,
    headers: std::sync::atomic::AtomicU64,
}

unsafe extern "C" fn create_hook(
    filename: *const c_char,
    _parent: *const c_char,
    mode: *mut c_uint,
    _is_global: *mut c_int,
    private_data: *mut c_void,
) -> c_int {
    // SAFETY: the library passes a name and our `Seen`.
    let (name, seen) = unsafe { (CStr::from_ptr(filename), &*(private_data as *const Seen)) };
    seen.created
        .lock()
        .unwrap()
        .push(name.to_string_lossy().into_owned());
    // SAFETY: a valid pointer for the call.
    unsafe { *mode = 0o666 }; // world-writable: the library clears it
    0
}

unsafe extern "C" fn refusing_create_hook(
    _: *const c_char,
    _: *const c_char,
    _: *mut c_uint,
    _: *mut c_int,
    _: *mut c_void,
) -> c_int {
    -libc::EACCES
}

unsafe extern "C" fn remove_hook(
    filename: *const c_char,
    _parent: *const c_char,
    private_data: *mut c_void,
) -> c_int {
    // SAFETY: as in `create_hook`.
    let (name, seen) = unsafe { (CStr::from_ptr(filename), &*(private_data as *const Seen)) };
    seen.removed
        .lock()
        .unwrap()
        .push(name.to_string_lossy().into_owned());
    1 // keep the file
}

/// Only the first sub-buffer of a buffer may be opened.
unsafe extern "C" fn first_only(buf: *mut rchan_buf, info: *const relay_switch_info) -> c_int {
    // SAFETY: valid for the call.
    let (b, i) = unsafe { (&*buf, &*info) };
    // SAFETY: the callback's own buffer.
    assert_eq!(unsafe { relay_buf_full(buf) }, b.full);
    (i.ordinal == 0) as c_int
}

unsafe extern "C" fn header_hook(
    buf: *mut rchan_buf,
    info: *const relay_switch_info,
    header: *mut c_void,
    len: usize,
) {
    // SAFETY: valid for the call; `header` has `len` bytes.
    let (b, i) = unsafe { (&*buf, &*info) };
    assert_eq!(len, 8);
    // SAFETY: as above.
    unsafe {
        header
            .cast::<u8>()
            .copy_from(i.ordinal.to_le_bytes().as_ptr(), 8)
    };
    // SAFETY: our `Seen`.
    let seen = unsafe { &*(b.private_data as *const Seen) };
    seen.headers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn c_callbacks_decide_fill_headers_and_see_the_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let seen = Seen::default();
    let cb = rchan_callbacks {
        subbuf_start: Some(first_only),
        subbuf_header: Some(header_hook),
        create_buf_file: Some(create_hook),
        remove_buf_file: Some(remove_hook),
        subbuf_start_reserve: 8,
        ..Default::default()
    };
    let c = open(dir.path(), Some(&cb), &seen as *const Seen as *mut c_void);
    // SAFETY: a live channel; valid buffers.
    unsafe {
        let n = relay_n_buffers(c) as usize;
        assert_eq!(seen.created.lock().unwrap().len(), n);
        let mode = std::fs::metadata(dir.path().join("cpu0"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o664, "not world-writable");
        let rec = [3u8; 1000];
        let mut ok = 0;
        for _ in 0..10 {
            if relay_write_cpu(c, 0, rec.as_ptr().cast(), rec.len()) == 0 {
                ok += 1;
            }
        }
        // 4096 - 8 header bytes hold 4 records; the next sub-buffer is refused.
        assert_eq!(ok, 4);
        assert_eq!(stats(c, 0).dropped_full, 6);
        assert_eq!(seen.headers.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(
            relay_write_cpu(c, 0, rec.as_ptr().cast(), 4089),
            -libc::EMSGSIZE
        );
        assert_eq!(relay_close(c), 0);
    }
    assert_eq!(
        seen.removed.lock().unwrap().len(),
        seen.created.lock().unwrap().len()
    );
    assert!(dir.path().join("cpu0").exists(), "remove_buf_file kept it");

    let cb = rchan_callbacks {
        create_buf_file: Some(refusing_create_hook),
        ..Default::default()
    };
    let parent = cstr(&dir.path().join("sub"));
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    // SAFETY: valid strings and callbacks.
    let c = unsafe { relay_open(c"cpu".as_ptr(), parent.as_ptr(), 4096, 2, &cb, null_mut()) };
    assert!(c.is_null());
    assert_eq!(errno(), libc::EACCES, "{}", last_error());
    assert_eq!(
        std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
        0
    );
}

#[test]
fn writers_on_many_threads_are_all_counted() {
    let dir = tempfile::tempdir().unwrap();
    let parent = cstr(dir.path());
    // SAFETY: valid strings.
    let c = unsafe {
        relay_open(
            c"cpu".as_ptr(),
            parent.as_ptr(),
            4096,
            4,
            null(),
            null_mut(),
        )
    };
    assert!(!c.is_null());
    let threads = 4;
    let per = 2000u64;
    let addr = c as usize;
    let refused: u64 = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let c = addr as *mut rchan;
                let mut refused = 0;
                for i in 0..per {
                    let rec = [t as u8; 48];
                    // SAFETY: a live channel (closed after the joins).
                    let rc = if i % 2 == 0 {
                        unsafe { relay_write(c, rec.as_ptr().cast(), rec.len()) }
                    } else {
                        // SAFETY: as above; the slot has 48 bytes.
                        unsafe {
                            let p = relay_reserve(c, rec.len());
                            if p.is_null() {
                                -errno()
                            } else {
                                p.cast::<u8>().copy_from(rec.as_ptr(), rec.len());
                                relay_commit(c, p)
                            }
                        }
                    };
                    match rc {
                        0 => {}
                        e if e == -libc::ENOBUFS => refused += 1,
                        e => panic!("unexpected {e}"),
                    }
                }
                refused
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .sum();
    let mut s = relay_stats::default();
    // SAFETY: every writer is joined.
    assert_eq!(unsafe { relay_close_stats(c, &mut s) }, 0);
    assert_eq!(s.dropped_full, refused);
    assert_eq!(s.records_written + s.dropped_full, threads as u64 * per);
    assert_eq!(s.lost, s.dropped_full + s.unread_at_close);
}

#[test]
fn a_thread_holds_at_most_relay_max_pending_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let parent = cstr(dir.path());
    // SAFETY: valid strings.
    let c = unsafe {
        relay_open(
            c"cpu".as_ptr(),
            parent.as_ptr(),
            4096,
            4,
            null(),
            null_mut(),
        )
    };
    assert!(!c.is_null());
    // SAFETY: a live channel; each slot gets its 16 bytes.
    unsafe {
        let held: Vec<*mut c_void> = (0..RELAY_MAX_PENDING)
            .map(|i| {
                let p = relay_reserve(c, 16);
                assert!(!p.is_null(), "reservation {i}");
                p.cast::<u8>().write_bytes(i as u8, 16);
                p
            })
            .collect();
        assert!(relay_reserve(c, 16).is_null());
        assert_eq!(errno(), libc::EBUSY);
        // Committed in any order; each once.
        for &p in held.iter().rev().step_by(2).chain(held.iter().step_by(2)) {
            assert_eq!(relay_commit(c, p), 0);
        }
        assert_eq!(relay_commit(c, held[0]), -EINVAL);
        let s = stats(c, -1);
        assert_eq!(
            s.records_written, RELAY_MAX_PENDING as u64,
            "only what was reserved"
        );
        assert_eq!(s.lost, 0);
        assert_eq!(relay_close(c), 0);
    }
}

#[test]
fn overwrite_mode_never_refuses_and_counts_what_it_overwrote() {
    let dir = tempfile::tempdir().unwrap();
    let cb = rchan_callbacks {
        overwrite: 1,
        ..Default::default()
    };
    let c = open(dir.path(), Some(&cb), null_mut());
    let rec = [9u8; 1000];
    // SAFETY: a live channel; valid buffers.
    unsafe {
        for i in 0..40 {
            assert_eq!(
                relay_write_cpu(c, 0, rec.as_ptr().cast(), rec.len()),
                0,
                "write {i}"
            );
        }
        let s = stats(c, 0);
        assert_eq!(s.dropped_full, 0);
        assert!(s.overwritten_records > 0, "{s:?}");
        assert_eq!(s.records_written, 40);
        assert_eq!(relay_close(c), 0);
    }
}

#[test]
fn relay_subbufs_consumed_counts_complete_sub_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), None, null_mut());
    let rec = [5u8; 1000];
    // SAFETY: a live channel; valid buffers.
    unsafe {
        assert_eq!(relay_subbufs_consumed(c, 0, 1), 0, "nothing complete yet");
        for _ in 0..5 {
            assert_eq!(relay_write_cpu(c, 0, rec.as_ptr().cast(), rec.len()), 0);
        }
        // 4 records fill the first sub-buffer, the fifth opened the second.
        assert_eq!(relay_subbufs_consumed(c, 0, 2), 1);
        let n = relay_n_buffers(c);
        assert_eq!(relay_subbufs_consumed(c, n as c_uint, 1), -EINVAL as _);
        let s = stats(c, 0);
        assert_eq!(s.subbufs_consumed, 1);
        assert_eq!(s.records_consumed, 4);
        assert_eq!(relay_close(c), 0);
    }
}

#[test]
fn relay_close_in_a_forked_child_leaves_the_channel_to_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path(), None, null_mut());
    let rec = [7u8; 16];
    // SAFETY: a live channel; `rec` is readable.
    unsafe {
        assert_eq!(relay_write_cpu(c, 0, rec.as_ptr().cast(), rec.len()), 0);
    }
    // SAFETY: the child only calls the library on its copy of the handle
    // and ends with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: plain calls on the child's copy of a live handle; a hang
        // ends the child with SIGALRM.
        let code = unsafe {
            libc::alarm(5);
            let w = relay_write_cpu(c, 0, rec.as_ptr().cast(), rec.len());
            let r = relay_reset(c);
            let mut s = relay_stats::default();
            let first = relay_close_stats(c, &mut s);
            let second = relay_close(c);
            if w == 0 && r == 0 && first == 0 && second == -EINVAL && s.records_written >= 2 {
                0
            } else {
                1
            }
        };
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: our child; `status` is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    assert!(
        dir.path().join("cpu0").exists(),
        "the child removed the files"
    );
    let mut s = relay_stats::default();
    // SAFETY: the parent's handle is still open.
    unsafe {
        assert_eq!(relay_write_cpu(c, 0, rec.as_ptr().cast(), rec.len()), 0);
        assert_eq!(relay_close_stats(c, &mut s), 0);
    }
    assert_eq!(s.records_written, 3);
    assert_eq!(s.unread_at_close, 3);
}
