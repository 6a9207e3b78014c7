//! A per-CPU channel that goes through `fork` while it is written (a
//! pre-fork server): the parent's threads and the forked children write
//! into the same buffers at once, migrating and writing into other CPUs'
//! buffers, while the parent's flusher closes sub-buffers. The fork handler
//! (`docs/DESIGN.md`, "The write position as a restartable sequence", "Fork")
//! must turn every live pinned buffer into the plain compare-and-swap in both
//! processes, so that every record is delivered exactly once, whole and in
//! order per writer, or counted as lost, and the counters add up. Channels
//! opened after the fork, in the parent or the child, keep the sequences.
//!
//! Each scenario runs in a child process of its own (the test binary run
//! again with `RELAYFS_RSEQ_FORK_CHILD` set, one test, one test thread), so
//! that the forks happen in a process whose threads are all known: the
//! forked children only write with the library, report through a pipe and
//! `_exit`.

mod common;
use common::{drain_to_close, gather, record_into, HDR};
use relayfs::{Channel, Mode, RelayFile, WriteError};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MAX_LEN: usize = HDR + 200;
const CHILD: &str = "RELAYFS_RSEQ_FORK_CHILD";

/// Writer `writer`'s record `seq`, into `out` (no allocation: the forked
/// children use it); returns its length.
fn record_of(writer: u32, seq: u64, out: &mut [u8; MAX_LEN]) -> usize {
    let len = HDR + ((seq * 7 + writer as u64 * 13) % 200) as usize;
    record_into(writer, seq, &mut out[..len]);
    len
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is an empty set; the call fills it in.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Whether this process should get the rseq path (as in `tests/rseq.rs`).
fn rseq_expected() -> bool {
    // SAFETY: MEMBARRIER_CMD_QUERY (0) only returns the supported commands.
    let cmds = unsafe { libc::syscall(libc::SYS_membarrier, 0, 0u32, 0i32) };
    let need = (1 << 7) | (1 << 8);
    relayfs::cpu::uses_rseq()
        && cmds >= 0
        && cmds & need == need
        && std::env::var_os("RELAYFS_RSEQ").is_none_or(|v| v != "0")
}

/// Writes `n` records as `writer`, migrating every 16 records (`cpus`
/// is a copy made before any fork), every sixth into some other buffer
/// (`write_cpu`: the remote path), and every third a reservation held
/// across a migration; calls `between` every 32 records, outside any call
/// into the library. Allocates nothing and takes no lock of its own, so a
/// forked child of a multi-threaded process can run it. Returns (accepted,
/// refused), or the first error other than `Full`.
fn write_all(
    chan: &Channel,
    writer: u32,
    n: u64,
    cpus: &[usize],
    between: &dyn Fn(),
) -> Result<(u64, u64), WriteError> {
    let n_bufs = chan.n_buffers();
    let (mut ok, mut refused) = (0u64, 0u64);
    let mut flip = writer as usize;
    let mut rec = [0u8; MAX_LEN];
    for seq in 0..n {
        if seq % 32 == 0 {
            between();
        }
        if seq % 16 == 0 {
            flip += 1;
            let _ = relayfs::cpu::pin_current_thread(cpus[flip % cpus.len()]);
        }
        let len = record_of(writer, seq, &mut rec);
        let res = match seq % 6 {
            0 => chan.write_cpu((seq as usize / 6 + writer as usize) % n_bufs, &rec[..len]),
            1 | 4 => chan.reserve(len).map(|mut slot| {
                slot.copy_from_slice(&rec[..len]);
                if seq % 4 == 1 {
                    flip += 1;
                    let _ = relayfs::cpu::pin_current_thread(cpus[flip % cpus.len()]);
                }
            }),
            _ => chan.write(&rec[..len]),
        };
        match res {
            Ok(()) => ok += 1,
            Err(WriteError::Full) => refused += 1,
            Err(e) => return Err(e),
        }
    }
    Ok((ok, refused))
}

/// A forked child: writes, reports (accepted, refused) through `fd` and
/// leaves with `_exit` (no destructor, no atexit handler, no flush of the
/// parent's stdio buffers).
fn child_writes(chan: &Channel, writer: u32, n: u64, cpus: &[usize], fd: libc::c_int) -> ! {
    let code = match write_all(chan, writer, n, cpus, &|| {}) {
        Ok((ok, refused)) => {
            let mut msg = [0u8; 16];
            msg[..8].copy_from_slice(&ok.to_le_bytes());
            msg[8..].copy_from_slice(&refused.to_le_bytes());
            // SAFETY: writes a local buffer of its own length to our pipe.
            let w = unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
            if w == 16 {
                0
            } else {
                4
            }
        }
        Err(_) => 3,
    };
    // SAFETY: ends the forked child at once.
    unsafe { libc::_exit(code) }
}

/// Forks a child that runs `child_writes`; returns its pid and the read end
/// of its pipe.
fn fork_writer(chan: &Channel, writer: u32, n: u64, cpus: &[usize]) -> (libc::pid_t, libc::c_int) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child only runs `child_writes`, which allocates nothing,
    // takes no lock the other threads could hold and ends with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        child_writes(chan, writer, n, cpus, fds[1]);
    }
    // SAFETY: our copy of the write end; the child has its own.
    unsafe { libc::close(fds[1]) };
    (pid, fds[0])
}

/// Waits for a forked writer and reads its (accepted, refused).
fn reap(pid: libc::pid_t, fd: libc::c_int) -> (u64, u64) {
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "forked writer {pid} failed: status {status:#x}"
    );
    let mut msg = [0u8; 16];
    // SAFETY: reads into a local buffer of its own length.
    let r = unsafe { libc::read(fd, msg.as_mut_ptr().cast(), msg.len()) };
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
    assert_eq!(r, 16, "report of forked writer {pid}");
    (
        u64::from_le_bytes(msg[..8].try_into().unwrap()),
        u64::from_le_bytes(msg[8..].try_into().unwrap()),
    )
}

/// Makes the parent's writing threads park, outside any call into the
/// library, around each fork (the gated scenarios): then no thread that the
/// child does not get is inside the library at the fork. A write takes no
/// lock (the reader's wakeup neither), so the ungated scenarios fork
/// anywhere; the child only must not flush (the flush lock).
struct Gate {
    closed: AtomicBool,
    parked: AtomicU64,
}

impl Gate {
    /// Called by a writing thread between records.
    fn pass(&self) {
        // SYNC POINT: Acquire/Release pairs with `fork_while_parked`: the
        // thread parks after its last library call and leaves after the
        // fork.
        if self.closed.load(Ordering::Acquire) {
            self.parked.fetch_add(1, Ordering::AcqRel);
            while self.closed.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            self.parked.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Waits until `threads` threads are parked, forks, lets them go.
    fn fork_while_parked<T>(&self, threads: u64, fork: impl FnOnce() -> T) -> T {
        // SYNC POINT: as in `pass`.
        self.closed.store(true, Ordering::Release);
        while self.parked.load(Ordering::Acquire) < threads {
            std::thread::yield_now();
        }
        let r = fork();
        self.closed.store(false, Ordering::Release);
        r
    }
}

/// Counts a writing thread as parked for good when it ends, however it ends
/// (a panic included, which `join` then reports): later forks need not wait
/// for it.
struct ParkOnExit(Arc<Gate>);

impl Drop for ParkOnExit {
    fn drop(&mut self) {
        // SYNC POINT: as in `Gate::pass`.
        self.0.parked.fetch_add(1, Ordering::AcqRel);
    }
}

/// Two writer threads and a flusher in the parent, and three children
/// forked one after the other while the earlier children write (the
/// parent's threads park only around each `fork` call, see `Gate`); one
/// reader per buffer in the parent. Asserts the accounting.
///
/// Ungated (`gated` false), the forks fall anywhere: in a parent writer's
/// sequence, its hold of another CPU's mark (`write_cpu`), between its
/// reservation and commit, or in the flusher's hold; a write takes no lock
/// (the reader's wakeup included), so the children can still write.
fn pre_fork_server(mode: Mode, gated: bool) {
    const PARENT_WRITERS: u32 = 2;
    const CHILDREN: u32 = 3;
    const PER_WRITER: u64 = 40_000;
    let cpus = allowed_cpus();
    let dir = tempfile::tempdir().unwrap();
    let chan = Arc::new(
        Channel::builder("forked")
            .dir(dir.path())
            .subbuf_size(1024)
            .n_subbufs(4)
            .mode(mode)
            .open()
            .unwrap(),
    );
    let expected = rseq_expected();
    assert_eq!(chan.uses_rseq(), expected);
    if !expected {
        eprintln!("NOTE: no rseq here: this run checked the compare-and-swap path only");
    }
    let readers = drain_to_close(&chan, 700, Duration::from_millis(20));
    let gate = Arc::new(Gate {
        closed: AtomicBool::new(false),
        parked: AtomicU64::new(0),
    });
    let progress = Arc::new(AtomicU64::new(0));
    let writers_done = Arc::new(AtomicBool::new(false));
    let parents: Vec<_> = (0..PARENT_WRITERS)
        .map(|w| {
            let (chan, cpus, progress) = (chan.clone(), cpus.clone(), progress.clone());
            let gate = gate.clone();
            std::thread::spawn(move || {
                let _parked = ParkOnExit(gate.clone());
                // In rounds (a new writer id each), so that the forks fall
                // among the writes.
                let (mut ok, mut refused) = (0, 0);
                let rounds = 8;
                for r in 0..rounds {
                    let n = PER_WRITER / rounds as u64;
                    let (o, f) = write_all(&chan, w + 100 * r, n, &cpus, &|| gate.pass())
                        .unwrap_or_else(|e| panic!("writer {w}: {e}"));
                    ok += o;
                    refused += f;
                    progress.fetch_add(1, Ordering::Release);
                }
                (ok, refused)
            })
        })
        .collect();
    // Closes sub-buffers from wherever it runs (the remote path).
    let flusher = {
        let (chan, gate, done) = (chan.clone(), gate.clone(), writers_done.clone());
        std::thread::spawn(move || {
            let _parked = ParkOnExit(gate.clone());
            while !done.load(Ordering::Acquire) {
                gate.pass();
                chan.flush();
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let mut children = Vec::new();
    for c in 0..CHILDREN {
        // Fork while the parent's writers are in full swing (or at once if
        // one of them failed: `join` below reports it).
        while progress.load(Ordering::Acquire) < (c as u64 + 1) * 2
            && !parents.iter().any(|h| h.is_finished())
        {
            std::thread::yield_now();
        }
        children.push(if gated {
            gate.fork_while_parked(PARENT_WRITERS as u64 + 1, || {
                fork_writer(&chan, 1000 + c, PER_WRITER, &cpus)
            })
        } else {
            fork_writer(&chan, 1000 + c, PER_WRITER, &cpus)
        });
    }
    // The fork handler took the buffers off the sequences for good.
    assert!(
        !chan.uses_rseq(),
        "a channel that went through a fork uses rseq"
    );
    let (mut written_ok, mut refused) = (0, 0);
    for h in parents {
        let (o, r) = h.join().unwrap();
        written_ok += o;
        refused += r;
    }
    for (pid, fd) in children {
        let (o, r) = reap(pid, fd);
        written_ok += o;
        refused += r;
    }
    writers_done.store(true, Ordering::Release);
    flusher.join().unwrap();
    let chan = Arc::try_unwrap(chan).ok().unwrap();
    chan.close().unwrap();
    let (seen, s) = gather(readers, true);
    let delivered = seen.len() as u64;
    let offered = (PARENT_WRITERS + CHILDREN) as u64 * PER_WRITER;
    assert_eq!(written_ok + refused, offered);
    assert_eq!(s.corrupt, 0, "{s:?}");
    assert_eq!(s.dropped_full, refused, "refusals counted: {s:?}");
    assert_eq!(
        s.records_completed, written_ok,
        "every accepted record completes: {s:?}"
    );
    assert_eq!(s.records_consumed, delivered, "reader's count: {s:?}");
    assert_eq!(
        delivered + s.overwritten_records + s.discarded_records + s.dropped_full,
        offered,
        "delivered + lost = offered: {s:?}"
    );
}

/// A channel that went through a fork stops using the sequences in both
/// processes; channels opened after it, in either, use them where the
/// system has them.
fn opened_after_fork() {
    let expected = rseq_expected();
    let base = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        let d = base.path().join(name);
        std::fs::create_dir(&d).unwrap();
        Channel::builder(name)
            .dir(d)
            .subbuf_size(4096)
            .n_subbufs(2)
            .open()
            .unwrap()
    };
    let before = open("before");
    assert_eq!(before.uses_rseq(), expected);
    // The name is made before the fork: the child allocates only in
    // `Channel::open`.
    let child_dir = base.path().join("child");
    std::fs::create_dir(&child_dir).unwrap();
    // SAFETY: the child opens a channel (glibc's malloc is usable after
    // fork; this process's other threads hold no lock the open takes: the
    // test harness's threads wait, the channels have no flusher) and ends
    // with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = match Channel::builder("child")
            .dir(&child_dir)
            .subbuf_size(4096)
            .n_subbufs(2)
            .open()
        {
            Ok(c) if c.uses_rseq() != expected => 2,
            Ok(_) if before.uses_rseq() => 3,
            Ok(c) => match (before.write(b"from the child"), c.write(b"new")) {
                (Ok(()), Ok(())) => 0,
                _ => 4,
            },
            Err(_) => 5,
        };
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child: status {status:#x}"
    );
    assert!(
        !before.uses_rseq(),
        "the parent's channel went through a fork"
    );
    assert_eq!(open("after").uses_rseq(), expected);
    before.write(b"from the parent").unwrap();
    before.flush();
    let mut all = Vec::new();
    for i in 0..before.n_buffers() {
        let mut f = RelayFile::open(before.buffer_path(i)).unwrap();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("from the child") && text.contains("from the parent"));
}

/// Runs `name` in a child process (this binary, `CHILD` set), or the
/// scenario itself if we are that child.
fn in_child(name: &str, scenario: fn()) {
    if std::env::var_os(CHILD).is_some() {
        scenario();
        println!("scenario done");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("scenario done"),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn forked_writers_beside_the_parent_no_overwrite() {
    in_child("forked_writers_beside_the_parent_no_overwrite", || {
        pre_fork_server(Mode::NoOverwrite, true)
    });
}

#[test]
fn forked_writers_beside_the_parent_overwrite() {
    in_child("forked_writers_beside_the_parent_overwrite", || {
        pre_fork_server(Mode::Overwrite, true)
    });
}

#[test]
fn channels_opened_after_a_fork_keep_rseq() {
    in_child("channels_opened_after_a_fork_keep_rseq", opened_after_fork);
}

#[test]
fn forked_anywhere_beside_the_parent_no_overwrite() {
    in_child("forked_anywhere_beside_the_parent_no_overwrite", || {
        pre_fork_server(Mode::NoOverwrite, false)
    });
}

#[test]
fn forked_anywhere_beside_the_parent_overwrite() {
    in_child("forked_anywhere_beside_the_parent_overwrite", || {
        pre_fork_server(Mode::Overwrite, false)
    });
}
