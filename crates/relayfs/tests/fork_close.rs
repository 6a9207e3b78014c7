//! A child forked from the producer (a pre-fork server's worker) writes and
//! then closes, or drops, its copy of the channel, while the parent writes
//! and its flush thread closes sub-buffers every millisecond. The child must
//! neither hang (its copy of the flush thread's handle names a thread it
//! does not have, and the fork may copy the flush lock held) nor close the
//! parent's channel: the parent goes on writing, its files stay, and every
//! record of every process is delivered once or counted.

mod common;
use common::{drain_to_close, gather, record_into, HDR};
use relayfs::{Channel, Mode, RelayFile, WriteError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records each child writes.
const PER_CHILD: u64 = 2000;
/// Children forked, one after the other.
const CHILDREN: u32 = 24;

/// Writes `n` records of `writer`; returns (accepted, refused as full).
fn write_n(chan: &Channel, writer: u32, n: u64) -> (u64, u64) {
    let (mut ok, mut full) = (0, 0);
    let mut buf = [0u8; 96];
    for seq in 0..n {
        let len = HDR + (seq % 64) as usize;
        record_into(writer, seq, &mut buf[..len]);
        match chan.write(&buf[..len]) {
            Ok(()) => ok += 1,
            Err(WriteError::Full) => full += 1,
            Err(_) => return (ok, u64::MAX),
        }
    }
    (ok, full)
}

/// The forked child: writes, then closes (odd `writer`) or just drops its
/// channel, reports (accepted, refused, close's record count) through `fd`
/// and leaves with `_exit`.
fn child(chan: Channel, writer: u32, fd: libc::c_int) -> ! {
    let (ok, full) = write_n(&chan, writer, PER_CHILD);
    let mut code = 0;
    if writer % 2 == 1 {
        match chan.close() {
            Ok(s) if s.records_written() >= ok => {}
            Ok(_) => code = 5,
            Err(_) => code = 6,
        }
    }
    drop(chan);
    let mut msg = [0u8; 16];
    msg[..8].copy_from_slice(&ok.to_le_bytes());
    msg[8..].copy_from_slice(&full.to_le_bytes());
    // SAFETY: writes a local buffer of its own length to our pipe.
    if unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) } != 16 {
        code = 4;
    }
    // SAFETY: ends the forked child at once (no atexit handler, no flush of
    // the parent's stdio buffers).
    unsafe { libc::_exit(code) }
}

/// Waits up to 20 s for child `pid`, then reads its report.
fn reap(pid: libc::pid_t, fd: libc::c_int) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = 0;
    loop {
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: our child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: as above.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            panic!("forked child {pid} hung in close or drop for 20 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "forked child {pid} failed: status {status:#x}"
    );
    let mut msg = [0u8; 16];
    // SAFETY: reads into a local buffer of its own length.
    let r = unsafe { libc::read(fd, msg.as_mut_ptr().cast(), msg.len()) };
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
    assert_eq!(r, 16, "report of forked child {pid}");
    (
        u64::from_le_bytes(msg[..8].try_into().unwrap()),
        u64::from_le_bytes(msg[8..].try_into().unwrap()),
    )
}

#[test]
fn a_forked_child_that_closes_or_drops_the_channel_leaves_it_to_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Arc::new(
        Channel::builder("forkclose")
            .dir(dir.path())
            .subbuf_size(4096)
            .n_subbufs(64)
            .flush_interval(Duration::from_millis(1))
            .open()
            .unwrap(),
    );
    let readers = drain_to_close(&chan, 1 << 16, Duration::from_millis(50));
    // The parent writes all along (writer 0).
    let stop = Arc::new(AtomicBool::new(false));
    let parent = {
        let (chan, stop) = (chan.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut ok, mut full, mut seq) = (0u64, 0u64, 0u64);
            let mut buf = [0u8; 96];
            while !stop.load(Ordering::Relaxed) {
                let len = HDR + (seq % 64) as usize;
                record_into(0, seq, &mut buf[..len]);
                match chan.write(&buf[..len]) {
                    Ok(()) => ok += 1,
                    Err(WriteError::Full) => full += 1,
                    Err(e) => panic!("the parent's write after a child left: {e}"),
                }
                seq += 1;
                if seq % 256 == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            (ok, full)
        })
    };
    let (mut ok, mut full) = (0u64, 0u64);
    let mut per_child = Vec::new();
    for c in 1..=CHILDREN {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child only writes with the library, closes or drops
        // its channel, reports through the pipe and ends with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: in the child, which ends with `_exit` (in `child`):
            // the `Arc`'s copy of the channel is never used or dropped
            // again after this read, so the channel is dropped once, by
            // `child`, as the last handle of a child's own would be.
            let ch: Channel = unsafe { std::ptr::read(&*chan) };
            // A panic must not unwind into the test harness's copy in the
            // child (which would report and exit as if all went well).
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child(ch, c, fds[1])));
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(7) }
        }
        // SAFETY: our copy of the write end; the child has its own.
        unsafe { libc::close(fds[1]) };
        let (o, f) = reap(pid, fds[0]);
        assert_ne!(f, u64::MAX, "child {c}: a write was refused as closed");
        per_child.push(o);
        ok += o;
        full += f;
        // The parent's channel is still open and whole.
        for i in 0..chan.n_buffers() {
            assert!(
                chan.buffer_path(i).exists(),
                "child {c} removed a buffer file"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (p_ok, p_full) = parent.join().unwrap();
    assert!(p_ok > 0);
    let chan = Arc::try_unwrap(chan).ok().unwrap();
    let closed = chan.close().unwrap();
    let (seen, s) = gather(readers, true);
    assert_eq!(s.dropped_full, full + p_full, "{s:?}");
    assert_eq!(s.records_completed, ok + p_ok, "{s:?}");
    assert_eq!(s.records_consumed, seen.len() as u64, "{s:?}");
    assert_eq!(seen.len() as u64, ok + p_ok, "{s:?}");
    assert_eq!(closed.records_written(), ok + p_ok);
    // Each child's accepted records, all delivered (a child whose every
    // write found the buffers full, as happens on a loaded machine, has
    // none to deliver).
    for (c, &o) in (1..=CHILDREN).zip(&per_child) {
        let n = seen.iter().filter(|(w, _)| *w == c).count() as u64;
        assert_eq!(n, o, "child {c}'s records delivered");
    }
    assert!(
        per_child.iter().any(|&o| o > 0),
        "no child's write accepted"
    );
}

/// The parent closes its channel while a forked child still holds its copy
/// and writes to it afterwards (a pre-fork server's worker that outlives
/// the master's shutdown). The parent's close counted what was left and
/// removed the files: a record the child writes after that can be neither
/// read nor counted by anyone, so it must be refused and counted, not
/// accepted and lost (it was: the child's copy of the closed flag is its
/// own, and its writes reused the sub-buffers close had counted unread).
#[test]
fn a_forked_child_writing_after_the_parent_closed_is_refused_and_counted() {
    for mode in [Mode::NoOverwrite, Mode::Overwrite] {
        for before in [0, 1, 100, 2000] {
            late_child(mode, before);
        }
    }
}

/// The parent writes `before` records, forks, closes; then the child writes.
fn late_child(mode: Mode, before: u64) {
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("forklate")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(8)
        .mode(mode)
        .open()
        .unwrap();
    let (p_ok, _) = write_n(&chan, 0, before);
    // `go`: parent to child, "the channel is closed"; `rep`: the report.
    let mut go = [0 as libc::c_int; 2];
    let mut rep = [0 as libc::c_int; 2];
    // SAFETY: each array has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::pipe2(rep.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child waits on a pipe, writes with the library, reports
    // through a pipe and ends with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut b = [0u8; 1];
            // SAFETY: reads into a local buffer of its own length.
            unsafe { libc::read(go[0], b.as_mut_ptr().cast(), 1) };
            let mut n = [0u64; 3]; // accepted, refused as closed, as full
            let mut buf = [0u8; 96];
            for seq in 0..PER_CHILD {
                let len = HDR + (seq % 64) as usize;
                record_into(1, seq, &mut buf[..len]);
                match chan.write(&buf[..len]) {
                    Ok(()) => n[0] += 1,
                    Err(WriteError::Closed) => n[1] += 1,
                    Err(_) => n[2] += 1,
                }
            }
            chan.flush();
            let s = chan.close().unwrap();
            let mut msg = [0u8; 32];
            for (i, v) in n.iter().chain([s.dropped_closed].iter()).enumerate() {
                msg[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
            // SAFETY: writes a local buffer of its own length to our pipe.
            unsafe { libc::write(rep[1], msg.as_ptr().cast(), msg.len()) };
            std::mem::forget(chan);
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(0) }
        }));
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(7) }
    }
    // SAFETY: our copies of the child's ends.
    unsafe {
        libc::close(go[0]);
        libc::close(rep[1]);
    }
    let closed = chan.close().unwrap();
    assert_eq!(
        closed.unread_at_close + closed.overwritten_records,
        p_ok,
        "{closed:?}"
    );
    // SAFETY: writes one byte from a local buffer.
    assert_eq!(unsafe { libc::write(go[1], [1u8].as_ptr().cast(), 1) }, 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = 0;
    loop {
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: our child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("forked child hung");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let mut msg = [0u8; 32];
    // SAFETY: reads into a local buffer of its own length.
    assert_eq!(
        unsafe { libc::read(rep[0], msg.as_mut_ptr().cast(), 32) },
        32
    );
    let v = |i: usize| u64::from_le_bytes(msg[i * 8..i * 8 + 8].try_into().unwrap());
    let (ok, refused, full, counted) = (v(0), v(1), v(2), v(3));
    // SAFETY: our descriptors, closed once.
    unsafe {
        libc::close(go[1]);
        libc::close(rep[0]);
    }
    // The shared counters, as the parent's mapping sees them now.
    let s = chan.total_stats();
    let what = format!("{mode:?}, {before} before: {s:?}");
    assert_eq!(
        ok, 0,
        "the child's writes after the close were accepted: {what}"
    );
    assert_eq!(refused, counted, "{what}");
    assert_eq!(refused + full, PER_CHILD, "{what}");
    assert_eq!(s.dropped_full, closed.dropped_full + full, "{what}");
    assert_eq!(s.records_written(), p_ok, "{what}");
    assert_eq!(
        s.records_consumed + s.unread_at_close + s.overwritten_records + s.discarded_records,
        p_ok,
        "{what}"
    );
}

/// A forked child that resets its copy of the channel (`reset` takes
/// `&mut self`, which promises no write in progress in *this* process)
/// must not reset the parent's buffers under the parent's writers and
/// readers: reset leaves the channel to its creator, as close does.
#[test]
fn a_forked_childs_reset_leaves_the_parents_buffers_alone() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("forkreset")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(64)
        .global(true)
        .open()
        .unwrap();
    let mut f = RelayFile::open(chan.buffer_path(0)).unwrap();
    let (a_ok, a_full) = write_n(&chan, 0, 500);
    assert_eq!((a_ok, a_full), (500, 0));
    chan.flush();
    let mut stream = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let n = f.read(&mut buf).unwrap();
    stream.extend_from_slice(&buf[..n]);
    let (b_ok, _) = write_n(&chan, 1, 300);
    // SAFETY: the child only resets its copy of the channel and ends with
    // `_exit` (its copy is never dropped).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: this process's own copy, never used by anyone else
            // here (the parent's `chan` is in another address space).
            let mut mine: Channel = unsafe { std::ptr::read(&chan) };
            mine.reset();
            std::mem::forget(mine);
        }));
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(0) }
    }
    let mut status = 0;
    // SAFETY: our child; `status` is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let (c_ok, _) = write_n(&chan, 2, 300);
    let closed = chan.close().unwrap();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        stream.extend_from_slice(&buf[..n]);
    }
    let seen = common::parse(&stream);
    let s = f.stats();
    assert_eq!(
        seen.len() as u64,
        a_ok + b_ok + c_ok,
        "{closed:?}\n{s:?}\nwriters seen: {:?}",
        [0, 1, 2].map(|w| seen.iter().filter(|(x, _)| *x == w).count())
    );
    assert_eq!(s.records_consumed, seen.len() as u64, "{s:?}");
}

/// A busier child: flushes between its writes (beside the parent's flush
/// thread, in another process), writes into every CPU's buffer, and holds
/// a reservation across its own close, then commits it. Reports as `child`.
fn busy_child(chan: Channel, writer: u32, fd: libc::c_int) -> ! {
    let (mut ok, mut full) = (0u64, 0u64);
    let mut buf = [0u8; 96];
    for seq in 0..PER_CHILD - 1 {
        let len = HDR + (seq % 64) as usize;
        record_into(writer, seq, &mut buf[..len]);
        let r = if seq % 3 == 0 {
            chan.write_cpu(seq as usize % chan.n_buffers(), &buf[..len])
        } else {
            chan.write(&buf[..len])
        };
        match r {
            Ok(()) => ok += 1,
            Err(WriteError::Full) => full += 1,
            Err(_) => full = u64::MAX / 2,
        }
        if seq % 100 == 0 {
            chan.flush();
        }
    }
    let mut code = 0;
    let len = HDR + 8;
    match chan.reserve(len) {
        Ok(mut slot) => {
            record_into(writer, PER_CHILD - 1, &mut slot);
            if chan.close().is_err() || chan.close().is_err() {
                code = 6;
            }
            slot.commit();
            ok += 1;
        }
        Err(WriteError::Full) => full += 1,
        Err(_) => code = 8,
    }
    chan.flush();
    drop(chan);
    let mut msg = [0u8; 16];
    msg[..8].copy_from_slice(&ok.to_le_bytes());
    msg[8..].copy_from_slice(&full.to_le_bytes());
    // SAFETY: writes a local buffer of its own length to our pipe.
    if unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) } != 16 {
        code = 4;
    }
    // SAFETY: ends the forked child at once.
    unsafe { libc::_exit(code) }
}

#[test]
fn busy_forked_children_flushing_and_holding_reservations_across_close_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Arc::new(
        Channel::builder("forkbusy")
            .dir(dir.path())
            .subbuf_size(4096)
            .n_subbufs(64)
            .flush_interval(Duration::from_millis(1))
            .open()
            .unwrap(),
    );
    let readers = drain_to_close(&chan, 1 << 16, Duration::from_millis(50));
    let (mut ok, mut full) = (0u64, 0u64);
    for c in 1..=8 {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: as in the test above.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: as in the test above.
            let ch: Channel = unsafe { std::ptr::read(&*chan) };
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                busy_child(ch, c, fds[1])
            }));
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(7) }
        }
        // SAFETY: our copy of the write end.
        unsafe { libc::close(fds[1]) };
        let (o, f) = reap(pid, fds[0]);
        assert!(f < u64::MAX / 4, "child {c}: a write was refused as closed");
        ok += o;
        full += f;
    }
    let chan = Arc::try_unwrap(chan).ok().unwrap();
    chan.close().unwrap();
    let (seen, s) = gather(readers, true);
    assert_eq!(s.dropped_full, full, "{s:?}");
    assert_eq!(s.records_completed, ok, "{s:?}");
    assert_eq!(seen.len() as u64, ok, "{s:?}");
}

/// The pid of the process that runs the tests (set before any fork).
static TEST_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// Callbacks whose `subbuf_start` in a forked child says through `in_switch`
/// that its switch has begun (past the closed checks), takes `sleep`, and
/// says through `done` that it is over, so that the parent closes while
/// the child's switch is under way. The parent's switches go through.
struct SlowChildSwitch {
    sleep: Duration,
    in_switch: libc::c_int,
    done: libc::c_int,
}

impl relayfs::Callbacks for SlowChildSwitch {
    fn subbuf_start(&self, _: &relayfs::BufferInfo, info: &relayfs::SwitchInfo) -> bool {
        if std::process::id() != TEST_PID.load(Ordering::Relaxed) {
            // SAFETY: writes one byte from a local buffer to our pipe.
            unsafe { libc::write(self.in_switch, [1u8].as_ptr().cast(), 1) };
            std::thread::sleep(self.sleep);
            // SAFETY: as above.
            unsafe { libc::write(self.done, [1u8].as_ptr().cast(), 1) };
        }
        !info.full
    }
}

/// A forked child writes one record, its switch's `subbuf_start` taking
/// `sleep`; the parent closes once the switch has begun. Returns whether
/// the child's write was accepted, and whether the child's callback was
/// over when the parent's close returned; checks that the counters add up.
fn child_switch_racing_close(sleep: Duration) -> (bool, bool) {
    TEST_PID.store(std::process::id(), Ordering::Relaxed);
    let mut sw = [0 as libc::c_int; 2];
    let mut done = [0 as libc::c_int; 2];
    // SAFETY: room for the two descriptors, in each array.
    assert_eq!(unsafe { libc::pipe2(sw.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::pipe2(done.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
        0
    );
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("forkrace")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(8)
        .global(true)
        .callbacks(SlowChildSwitch {
            sleep,
            in_switch: sw[1],
            done: done[1],
        })
        .open()
        .unwrap();
    // SAFETY: the child writes one record and ends with `_exit`, its exit
    // code saying whether the write was accepted (0) or refused (1).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = match chan.write(&common::record(1, 0, HDR + 8)) {
            Ok(()) => 0,
            Err(_) => 1,
        };
        std::mem::forget(chan);
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(code) }
    }
    let mut b = [0u8; 1];
    // SAFETY: reads one byte into a local buffer.
    assert_eq!(unsafe { libc::read(sw[0], b.as_mut_ptr().cast(), 1) }, 1);
    let closed = chan.close().unwrap();
    // SAFETY: reads one byte into a local buffer (the pipe does not block).
    let over = unsafe { libc::read(done[0], b.as_mut_ptr().cast(), 1) } == 1;
    let mut status = 0;
    // SAFETY: our child; `status` is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    // SAFETY: our descriptors, each closed once.
    unsafe {
        for fd in [sw[0], sw[1], done[0], done[1]] {
            libc::close(fd);
        }
    }
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    let accepted = libc::WEXITSTATUS(status) == 0;
    let s = chan.total_stats();
    let accounted =
        s.records_consumed + s.unread_at_close + s.overwritten_records + s.discarded_records;
    let what = format!("child's record accepted: {accepted}\nclose: {closed:?}\nnow: {s:?}");
    assert_eq!(s.records_written(), accounted, "{what}");
    assert_eq!(s.records_written(), u64::from(accepted), "{what}");
    assert_eq!(s.dropped_full, u64::from(!accepted), "{what}");
    (accepted, over)
}

/// A child's switch that began before the parent closed (and so passed the
/// closed checks) and ends after the parent counted what was left: it used
/// to open a sub-buffer and have its record accepted, staying pending in a
/// sub-buffer nobody would complete or count, because close waited only for
/// its own process's switches in flight. Now they are counted in the
/// buffer's header: close waits for the child's switch to end (the child
/// counted itself before it said it was in its switch, so before close
/// began: the child's callback is over when close returns), and the
/// switch is either waited for or refused.
#[test]
fn a_forked_childs_switch_racing_the_parents_close_is_counted() {
    let (_, over) = child_switch_racing_close(Duration::from_millis(300));
    assert!(over, "close returned before the child's switch was over");
}

/// A child's switch whose `subbuf_start` outlasts the time close waits for
/// switches in flight (2 s): close gives up on it and counts; the switch
/// must then not open a sub-buffer close no longer looks at (it looks at
/// the header again after its callback, and is refused). A record accepted
/// from a switch close did not wait for is one nobody counts.
#[test]
fn a_forked_childs_switch_outlasting_the_parents_close_is_refused() {
    let (accepted, over) = child_switch_racing_close(Duration::from_millis(2500));
    assert!(
        !accepted || over,
        "a record accepted from a switch close had stopped waiting for"
    );
}

/// A fork while another thread of the parent is inside `close` (waiting,
/// for up to 2 s, for a reservation held across it, with `closed_with`
/// and the flush lock taken in turn): the child's writes are refused as
/// closed, and its close and drop return at once, whatever locks the fork
/// copied held.
#[test]
fn a_fork_while_the_parent_closes_leaves_a_child_that_neither_hangs_nor_writes() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("forkclosing")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(8)
        .global(true)
        .flush_interval(Duration::from_millis(1))
        .open()
        .unwrap();
    let (ok, _) = write_n(&chan, 0, 50);
    let slot = chan.reserve(HDR + 8).unwrap();
    std::thread::scope(|sc| {
        let closer = sc.spawn(|| chan.close().unwrap());
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: the child writes, closes, drops, and ends with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: this process's own copy of the channel.
                let mine: Channel = unsafe { std::ptr::read(&chan) };
                // SAFETY: a plain system call: a hang ends us with SIGALRM.
                unsafe { libc::alarm(5) };
                let refused = (0..100)
                    .filter(|_| matches!(mine.write(b"late"), Err(WriteError::Closed)))
                    .count();
                let _ = mine.close();
                drop(mine);
                if refused == 100 {
                    0
                } else {
                    2
                }
            }))
            .unwrap_or(99);
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
        drop(slot);
        let s = closer.join().unwrap();
        let now = chan.total_stats();
        assert_eq!(now.records_written(), ok + 1, "{s:?} {now:?}");
        assert_eq!(now.unread_at_close, ok + 1, "{s:?} {now:?}");
    });
}

/// A channel a forked child opens itself is the child's: its close works
/// as in any process (flushes, counts, removes the files), whatever the
/// parent's channels do, and a grandchild's drop of it leaves it alone.
#[test]
fn a_channel_opened_in_a_forked_child_is_closed_by_that_child() {
    let dir = tempfile::tempdir().unwrap();
    let parents = Channel::builder("forkparent")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(8)
        .flush_interval(Duration::from_millis(1))
        .open()
        .unwrap();
    let other = tempfile::tempdir().unwrap();
    let path = other.path().to_path_buf();
    // SAFETY: the child uses the library and ends with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: a plain system call: a hang ends us with SIGALRM.
            unsafe { libc::alarm(10) };
            let mine = Channel::builder("forkchild")
                .dir(&path)
                .subbuf_size(4096)
                .n_subbufs(8)
                .flush_interval(Duration::from_millis(1))
                .open()
                .unwrap();
            let (ok, _) = write_n(&mine, 1, 100);
            // A grandchild drops its copy: the channel stays the child's.
            // SAFETY: the grandchild only drops its copy and ends with
            // `_exit`.
            let g = unsafe { libc::fork() };
            if g == 0 {
                // SAFETY: the grandchild's own copy.
                drop(unsafe { std::ptr::read(&mine) });
                // SAFETY: ends the grandchild at once.
                unsafe { libc::_exit(0) }
            }
            let mut st = 0;
            // SAFETY: our child; `st` is a valid out-pointer.
            unsafe { libc::waitpid(g, &mut st, 0) };
            if !mine.buffer_path(0).exists() {
                return 2;
            }
            let s = mine.close().unwrap();
            if s.records_written() != ok || s.unread_at_close != ok {
                return 3;
            }
            if mine.buffer_path(0).exists() || mine.write(b"late").is_ok() {
                return 4;
            }
            std::mem::forget(parents);
            0
        }))
        .unwrap_or(99);
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
    assert!(parents.buffer_path(0).exists());
    let (ok, _) = write_n(&parents, 0, 10);
    let s = parents.close().unwrap();
    assert_eq!(s.records_written(), ok);
}

/// The write end of a pipe through which a forked child, stopped in its
/// switch, reports what it wrote so far (for the test below only).
static STUCK_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
/// In a forked child: its records accepted and refused as full so far, and
/// the sub-buffer switches it began.
static CHILD_OK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static CHILD_FULL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static CHILD_SWITCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// The switch (1-based) at which a forked child stops for good.
const STUCK_AT: u64 = 3;

/// Callbacks whose `subbuf_start` in a forked child lets `STUCK_AT - 1`
/// switches through and stops in the next one for good, after reporting
/// through `STUCK_FD` (accepted, refused) of the writes before it: the
/// write in flight is neither, and the parent kills the child there.
struct StuckChildSwitch;

impl relayfs::Callbacks for StuckChildSwitch {
    fn subbuf_start(&self, _: &relayfs::BufferInfo, info: &relayfs::SwitchInfo) -> bool {
        if std::process::id() != TEST_PID.load(Ordering::Relaxed)
            && CHILD_SWITCHES.fetch_add(1, Ordering::Relaxed) + 1 == STUCK_AT
        {
            let mut msg = [0u8; 16];
            msg[..8].copy_from_slice(&CHILD_OK.load(Ordering::Relaxed).to_le_bytes());
            msg[8..].copy_from_slice(&CHILD_FULL.load(Ordering::Relaxed).to_le_bytes());
            let fd = STUCK_FD.load(Ordering::Relaxed);
            // SAFETY: writes a local buffer of its own length to our pipe.
            unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        !info.full
    }
}

/// A forked child killed (`SIGKILL`) in the middle of a sub-buffer switch
/// never ends it: the parent's close must not wait for it for ever, and
/// every record any process was told was accepted must still be delivered
/// or counted. The child is killed before the parent closes, or while
/// close waits for its switch; with and without a reader attached.
#[test]
fn a_forked_child_killed_in_its_switch_does_not_hang_the_parents_close() {
    TEST_PID.store(std::process::id(), Ordering::Relaxed);
    for with_reader in [false, true] {
        for kill_during_close in [false, true] {
            killed_in_switch(with_reader, kill_during_close);
        }
    }
}

fn killed_in_switch(with_reader: bool, kill_during_close: bool) {
    let what = format!("reader {with_reader}, killed during close {kill_during_close}");
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("forkkilled")
        .dir(dir.path())
        .subbuf_size(1024)
        .n_subbufs(8)
        .global(true)
        .callbacks(StuckChildSwitch)
        .open()
        .unwrap();
    let readers = with_reader.then(|| drain_to_close(&chan, 1 << 16, Duration::from_millis(20)));
    let (p_ok, p_full) = write_n(&chan, 0, 10);
    let mut rep = [0 as libc::c_int; 2];
    // SAFETY: room for the two descriptors.
    assert_eq!(unsafe { libc::pipe2(rep.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    STUCK_FD.store(rep[1], Ordering::Relaxed);
    // SAFETY: the child writes with the library until its callback stops it
    // for good (it reports through the pipe first); it never returns from
    // there, and ends with `_exit` should its writes all go through.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut buf = [0u8; 96];
            for seq in 0..PER_CHILD {
                let len = HDR + (seq % 64) as usize;
                record_into(1, seq, &mut buf[..len]);
                match chan.write(&buf[..len]) {
                    Ok(()) => CHILD_OK.fetch_add(1, Ordering::Relaxed),
                    Err(_) => CHILD_FULL.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
        // SAFETY: ends the forked child at once (it was never stopped: the
        // parent finds no report and fails).
        unsafe { libc::_exit(7) }
    }
    // SAFETY: our copy of the write end; the child has its own.
    unsafe { libc::close(rep[1]) };
    let mut msg = [0u8; 16];
    // SAFETY: reads into a local buffer of its own length (blocks until the
    // child is stopped in its switch, or gone).
    let r = unsafe { libc::read(rep[0], msg.as_mut_ptr().cast(), msg.len()) };
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(rep[0]) };
    let kill = || {
        // SAFETY: our child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let mut status = 0;
        // SAFETY: our child; `status` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
            "{what}: child status {status:#x}"
        );
    };
    if r != 16 {
        kill();
        panic!("{what}: the child was never stopped in its switch ({r})");
    }
    let c_ok = u64::from_le_bytes(msg[..8].try_into().unwrap());
    let c_full = u64::from_le_bytes(msg[8..].try_into().unwrap());
    assert!(c_ok > 0, "{what}: no record of the child accepted");
    // The parent's records accepted and refused after the child was stopped.
    let (mut p2_ok, mut p2_full) = (0, 0);
    if kill_during_close {
        std::thread::scope(|sc| {
            let closer = sc.spawn(|| chan.close().unwrap());
            std::thread::sleep(Duration::from_millis(100));
            kill();
            closer.join().unwrap();
        });
    } else {
        kill();
        // The parent's own switches go on beside the dead child's.
        (p2_ok, p2_full) = write_n(&chan, 2, 200);
        assert_eq!(p2_ok + p2_full, 200, "{what}");
        chan.close().unwrap();
    }
    // What the processes were told, against what the buffer counted: the
    // write the child was killed in was neither accepted nor refused.
    let s = chan.total_stats();
    let written = s.records_written();
    assert_eq!(written, p_ok + c_ok + p2_ok, "{what}: {s:?}");
    assert_eq!(s.dropped_full, p_full + c_full + p2_full, "{what}: {s:?}");
    assert_eq!(s.records_pending, 0, "{what}: {s:?}");
    match readers {
        None => {
            assert_eq!(s.records_consumed, 0, "{what}: {s:?}");
            assert_eq!(
                s.unread_at_close + s.overwritten_records + s.discarded_records,
                written,
                "{what}: {s:?}"
            );
        }
        Some(readers) => {
            let (seen, rs) = gather(readers, true);
            assert_eq!(rs.records_consumed, seen.len() as u64, "{what}: {rs:?}");
            assert_eq!(seen.len() as u64, written, "{what}: {rs:?}");
            let child = seen.iter().filter(|(w, _)| *w == 1).count() as u64;
            assert_eq!(child, c_ok, "{what}: the child's records delivered");
        }
    }
}

/// Forked children switching sub-buffers without pause (a few records per
/// sub-buffer) while the parent closes, with a reader draining to the end:
/// some child's switch or completion is always near the close. Each child
/// writes until refused as closed; every record a child was told was
/// accepted must be delivered, once, and the counters add up. Two defects
/// made it fail within a few hundred rounds: a child's switch that close
/// did not wait for (its sub-buffer completed after the reader had seen
/// the end), and a completion counted before its commit word was stored
/// complete (close then stored the state closed, and the reader stopped
/// at that sub-buffer).
#[test]
fn forked_children_switching_while_the_parent_closes_add_up() {
    const KIDS: u32 = 3;
    for round in 0..200 {
        let dir = tempfile::tempdir().unwrap();
        let chan = Channel::builder("forkswitch")
            .dir(dir.path())
            .subbuf_size(256)
            .n_subbufs(64)
            .global(true)
            .open()
            .unwrap();
        let readers = drain_to_close(&chan, 1 << 16, Duration::from_millis(5));
        let mut kids = Vec::new();
        for c in 1..=KIDS {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: `fds` has room for the two descriptors.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            // SAFETY: the child only writes with the library, reports
            // through the pipe and ends with `_exit`.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    // SAFETY: a plain system call: a hang ends us with SIGALRM.
                    unsafe { libc::alarm(30) };
                    let (mut ok, mut full) = (0u64, 0u64);
                    let mut buf = [0u8; 96];
                    for seq in 0..u64::MAX {
                        let len = HDR + (seq % 48) as usize;
                        record_into(c, seq, &mut buf[..len]);
                        match chan.write(&buf[..len]) {
                            Ok(()) => ok += 1,
                            Err(WriteError::Full) => full += 1,
                            Err(_) => break,
                        }
                    }
                    let mut msg = [0u8; 16];
                    msg[..8].copy_from_slice(&ok.to_le_bytes());
                    msg[8..].copy_from_slice(&full.to_le_bytes());
                    // SAFETY: writes a local buffer of its own length.
                    unsafe { libc::write(fds[1], msg.as_ptr().cast(), msg.len()) };
                    std::mem::forget(chan);
                    // SAFETY: ends the forked child at once.
                    unsafe { libc::_exit(0) }
                }));
                // SAFETY: ends the forked child at once.
                unsafe { libc::_exit(7) }
            }
            // SAFETY: our copy of the write end.
            unsafe { libc::close(fds[1]) };
            kids.push((c, pid, fds[0]));
        }
        // Let the children get going, then close under them.
        while chan.total_stats().records_written() < 2000 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let closed = chan.close().unwrap();
        let (mut ok, mut full) = (0u64, 0u64);
        let mut per_kid = Vec::new();
        for (c, pid, fd) in kids {
            let (o, f) = reap(pid, fd);
            per_kid.push((c, o));
            ok += o;
            full += f;
        }
        let (seen, rs) = gather(readers, true);
        let s = chan.total_stats();
        let what = format!("round {round}: {s:?}\nreaders {rs:?}\nclose returned {closed:?}");
        assert_eq!(s.records_pending, 0, "{what}");
        assert_eq!(s.records_written(), ok, "{what}");
        assert_eq!(s.dropped_full, full, "{what}");
        assert_eq!(rs.records_consumed, seen.len() as u64, "{what}");
        for (c, o) in per_kid {
            let n = seen.iter().filter(|(w, _)| *w == c).count() as u64;
            assert_eq!(n, o, "{what}: child {c}'s records delivered");
        }
    }
}
