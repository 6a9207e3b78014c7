//! Writes from signal handlers. `relay_write` promises that a write never
//! blocks or waits for anything (no lock), so a handler that writes to the
//! channel, interrupting a write of its own thread at any point, must not
//! deadlock, and every record, the handler's too, must be delivered once
//! or counted.
//!
//! The dangerous moment is a write that completes a sub-buffer and wakes a
//! sleeping reader: the signal is delivered when the wakeup's system call
//! returns, and the handler's own writes complete sub-buffers and want to
//! wake the reader again.

mod common;
use common::{drain_to_close, gather, record_into, HDR};
use relayfs::{Channel, WriteError};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static CHAN: AtomicPtr<Channel> = AtomicPtr::new(std::ptr::null_mut());
static HANDLER_SEQ: AtomicU64 = AtomicU64::new(0);
static HANDLER_OK: AtomicU64 = AtomicU64::new(0);
static HANDLER_FULL: AtomicU64 = AtomicU64::new(0);
/// Records the writer thread offered so far (its own, not the handler's).
static WRITER_SEQ: AtomicU64 = AtomicU64::new(0);

/// The handler's writer id.
const IN_HANDLER: u32 = 7;

extern "C" fn on_signal(_: libc::c_int) {
    let p = CHAN.load(Ordering::Acquire);
    if p.is_null() {
        return;
    }
    // SAFETY: the channel outlives the signals (CHAN is cleared, and the
    // sender stopped, before it is closed).
    let chan = unsafe { &*p };
    let mut buf = [0u8; 96];
    for _ in 0..8 {
        let seq = HANDLER_SEQ.fetch_add(1, Ordering::Relaxed);
        let len = HDR + (seq % 80) as usize;
        record_into(IN_HANDLER, seq, &mut buf[..len]);
        // Every other one into some CPU's buffer: a hold of its mark, maybe
        // nested in the interrupted thread's own.
        let res = if seq % 2 == 0 {
            chan.write(&buf[..len])
        } else {
            chan.write_cpu((seq / 2) as usize % chan.n_buffers(), &buf[..len])
        };
        match res {
            Ok(()) => HANDLER_OK.fetch_add(1, Ordering::Relaxed),
            Err(WriteError::Full) => HANDLER_FULL.fetch_add(1, Ordering::Relaxed),
            Err(_) => std::process::abort(),
        };
    }
}

#[test]
fn a_signal_handler_that_writes_never_deadlocks() {
    // SAFETY: the handler only uses atomics, a stack buffer and
    // `Channel::write`, which promises not to block.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    let dir = tempfile::tempdir().unwrap();
    let chan = Arc::new(
        Channel::builder("sig")
            .dir(dir.path())
            .subbuf_size(512)
            .n_subbufs(64)
            .flush_interval(Duration::from_millis(1))
            .open()
            .unwrap(),
    );
    CHAN.store(Arc::as_ptr(&chan) as *mut Channel, Ordering::Release);
    let readers = drain_to_close(&chan, 4096, Duration::from_millis(50));
    let done = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    const PER_WRITER: u64 = 200_000;
    const HANDLER_RECORDS: u64 = 100_000;
    let writer = {
        let (chan, done, stop) = (chan.clone(), done.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut ok, mut full) = (0u64, 0u64);
            let mut buf = [0u8; 96];
            let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
            // At least PER_WRITER records, and on until the handler has run
            // often enough to have met the wakeup many times.
            let mut seq = 0;
            while seq < PER_WRITER || HANDLER_SEQ.load(Ordering::Relaxed) < HANDLER_RECORDS {
                if seq % 1000 == 0 {
                    // Migrate now and then: sequences aborted, commits remote.
                    let _ = relayfs::cpu::pin_current_thread((seq / 1000) as usize % ncpu);
                }
                let len = HDR + (seq % 80) as usize;
                record_into(0, seq, &mut buf[..len]);
                // Every third record into some CPU's buffer (a hold of its
                // mark, or its own CPU's sequence).
                let res = if seq % 3 == 0 {
                    chan.write_cpu((seq / 3) as usize % chan.n_buffers(), &buf[..len])
                } else {
                    chan.write(&buf[..len])
                };
                match res {
                    Ok(()) => ok += 1,
                    Err(WriteError::Full) => full += 1,
                    Err(e) => panic!("{e}"),
                }
                seq += 1;
                WRITER_SEQ.store(seq, Ordering::Relaxed);
            }
            done.store(true, Ordering::Release);
            while !stop.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            (ok, full)
        })
    };
    let t = writer.as_pthread_t();
    // One signal at a time, and the next only once the handler ran and the
    // writer made progress of its own since: signals land anywhere in the
    // writer's writes, but never so densely that the writer spends all its
    // time in the handler (the test's length would then depend on how the
    // scheduler places the two threads).
    let stalled = |what: &str, since: Instant| {
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "{what} made no progress for 20 s: a write from the signal \
             handler blocks (deadlock)"
        );
    };
    while !done.load(Ordering::Acquire) {
        let (h0, w0) = (
            HANDLER_SEQ.load(Ordering::Relaxed),
            WRITER_SEQ.load(Ordering::Relaxed),
        );
        // SAFETY: the writer is not joined before `stop` is set (below).
        unsafe { libc::pthread_kill(t, libc::SIGUSR2) };
        let sent = Instant::now();
        while HANDLER_SEQ.load(Ordering::Relaxed) == h0 {
            stalled("the signal handler", sent);
            std::thread::yield_now();
        }
        while WRITER_SEQ.load(Ordering::Relaxed) == w0 && !done.load(Ordering::Acquire) {
            stalled("the writer", sent);
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::Release);
    let (ok, full) = writer.join().unwrap();
    CHAN.store(std::ptr::null_mut(), Ordering::Release);
    let chan = Arc::try_unwrap(chan).ok().unwrap();
    chan.close().unwrap();
    let (seen, s) = gather(readers, false);
    let (h_ok, h_full) = (
        HANDLER_OK.load(Ordering::Relaxed),
        HANDLER_FULL.load(Ordering::Relaxed),
    );
    assert_eq!(s.dropped_full, full + h_full, "{s:?}");
    assert_eq!(s.records_completed, ok + h_ok, "{s:?}");
    assert_eq!(s.records_consumed, seen.len() as u64, "{s:?}");
    assert_eq!(seen.len() as u64, ok + h_ok, "{s:?}");
}
