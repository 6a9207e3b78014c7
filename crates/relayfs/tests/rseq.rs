//! The write position as a restartable sequence (`docs/DESIGN.md`, "The
//! write position as a restartable sequence"), under the conditions that
//! abort sequences or make the two paths meet on one word: writers that
//! migrate constantly (`sched_setaffinity` flipping between the CPUs they
//! may use), signals at a high rate, reservations held across a migration,
//! writes into other CPUs' buffers (the remote path) and a flusher thread
//! closing sub-buffers from wherever it runs. In both modes every record
//! must be delivered exactly once, whole and in order per writer and
//! buffer, or counted as lost, and the counters must add up.
//!
//! The same run is made in a child process without rseq
//! (`GLIBC_TUNABLES=glibc.pthread.rseq=0`, and `RELAYFS_RSEQ=0`), where
//! the channel must say it uses the compare-and-swap and account the same.

mod common;
use common::{drain_to_close, gather, record, HDR};
use relayfs::{Channel, Mode, WriteError};
use std::os::unix::thread::JoinHandleExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CHILD: &str = "RELAYFS_RSEQ_TEST_CHILD";

static SIGNALS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

fn install_handler() {
    // SAFETY: a handler that only increments an atomic is async-signal-safe;
    // the sigaction struct is zeroed (empty mask) and only read by the call.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
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

fn move_to(cpu: usize) {
    relayfs::cpu::pin_current_thread(cpu).unwrap();
}

struct Outcome {
    uses_rseq: bool,
    signals_sent: u64,
    migrations: u64,
}

/// Writers that migrate and get signals, one reader per buffer; asserts the
/// accounting and returns what happened.
fn chaos(mode: Mode, writers: u32, per_writer: u64) -> Outcome {
    install_handler();
    let cpus = allowed_cpus();
    let dir = tempfile::tempdir().unwrap();
    let chan = Arc::new(
        Channel::builder("chaos")
            .dir(dir.path())
            .subbuf_size(1024)
            .n_subbufs(4)
            .mode(mode)
            .flush_interval(Duration::from_millis(1))
            .open()
            .unwrap(),
    );
    let uses_rseq = chan.uses_rseq();
    let n_bufs = chan.n_buffers();
    let readers = drain_to_close(&chan, 700, Duration::from_millis(20));
    let finished = Arc::new(AtomicUsize::new(0));
    let signals_stopped = Arc::new(AtomicBool::new(false));
    let migrations = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let chan = chan.clone();
            let cpus = cpus.clone();
            let (finished, stopped) = (finished.clone(), signals_stopped.clone());
            let migrations = migrations.clone();
            std::thread::spawn(move || {
                let (mut ok, mut refused) = (0u64, 0u64);
                let mut flip = w as usize;
                for seq in 0..per_writer {
                    if seq % 16 == 0 {
                        flip += 1;
                        move_to(cpus[flip % cpus.len()]);
                        migrations.fetch_add(1, Ordering::Relaxed);
                    }
                    let len = HDR + ((seq * 7 + w as u64 * 13) % 200) as usize;
                    let rec = record(w, seq, len);
                    let res = match seq % 6 {
                        // Into some buffer, usually another CPU's: the
                        // remote path.
                        0 => chan.write_cpu((seq as usize / 6 + w as usize) % n_bufs, &rec),
                        // A reservation held across a migration: committed
                        // from another CPU than it was made on.
                        1 | 4 => chan.reserve(len).map(|mut slot| {
                            slot.copy_from_slice(&rec);
                            if seq % 4 == 1 {
                                flip += 1;
                                move_to(cpus[flip % cpus.len()]);
                                migrations.fetch_add(1, Ordering::Relaxed);
                            }
                        }),
                        _ => chan.write(&rec),
                    };
                    match res {
                        Ok(()) => ok += 1,
                        Err(WriteError::Full) => refused += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                finished.fetch_add(1, Ordering::Release);
                // Stay alive until no more signals are sent to us.
                while !stopped.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                (ok, refused)
            })
        })
        .collect();
    let threads: Vec<libc::pthread_t> = handles.iter().map(|h| h.as_pthread_t()).collect();
    let mut signals_sent = 0u64;
    // A writer that panicked is finished without saying so: stop then too.
    while finished.load(Ordering::Acquire) < writers as usize
        && !handles.iter().any(|h| h.is_finished())
    {
        for &t in &threads {
            // SAFETY: the thread is not joined yet (it waits for
            // `signals_stopped` before returning, set only after this loop,
            // and is joined after that), so its id is valid; a thread that
            // panicked meanwhile gets ESRCH.
            if unsafe { libc::pthread_kill(t, libc::SIGUSR1) } == 0 {
                signals_sent += 1;
            }
        }
        std::thread::yield_now();
    }
    signals_stopped.store(true, Ordering::Release);
    let (mut written_ok, mut refused) = (0, 0);
    for h in handles {
        let (o, r) = h.join().unwrap();
        written_ok += o;
        refused += r;
    }
    let chan = Arc::try_unwrap(chan).ok().unwrap();
    chan.close().unwrap();
    let (seen, s) = gather(readers, true);
    let delivered = seen.len() as u64;
    let offered = writers as u64 * per_writer;
    assert_eq!(written_ok + refused, offered);
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
    assert_eq!(s.corrupt, 0, "{s:?}");
    Outcome {
        uses_rseq,
        signals_sent,
        migrations: migrations.load(Ordering::Relaxed),
    }
}

/// Whether this process should get the rseq path: glibc registered an area,
/// the kernel has membarrier's expedited rseq commands, and it is not turned
/// off.
fn rseq_expected() -> bool {
    // SAFETY: MEMBARRIER_CMD_QUERY (0) only returns the supported commands.
    let cmds = unsafe { libc::syscall(libc::SYS_membarrier, 0, 0u32, 0i32) };
    let need = (1 << 7) | (1 << 8);
    relayfs::cpu::uses_rseq()
        && cmds >= 0
        && cmds & need == need
        && std::env::var_os("RELAYFS_RSEQ").is_none_or(|v| v != "0")
}

fn check_chaos(mode: Mode) {
    let o = chaos(mode, 4, 60_000);
    assert_eq!(o.uses_rseq, rseq_expected());
    if !o.uses_rseq {
        eprintln!("NOTE: no rseq here: this run checked the compare-and-swap path only");
    }
    assert!(o.migrations > 0 && o.signals_sent > 0);
    assert!(
        SIGNALS.load(Ordering::Relaxed) > 0,
        "signals were delivered"
    );
}

#[test]
fn migrating_signalled_writers_no_overwrite() {
    check_chaos(Mode::NoOverwrite);
}

#[test]
fn migrating_signalled_writers_overwrite() {
    check_chaos(Mode::Overwrite);
}

/// The run above in a child process whose environment turns rseq off: the
/// channel must fall back to the compare-and-swap and account the same.
#[test]
fn without_rseq_the_cas_path_accounts_exactly() {
    if std::env::var_os(CHILD).is_some() {
        for mode in [Mode::NoOverwrite, Mode::Overwrite] {
            let o = chaos(mode, 4, 4_000);
            assert!(!o.uses_rseq, "rseq used although turned off");
        }
        println!("child checked the fallback");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for (var, val) in [
        ("GLIBC_TUNABLES", "glibc.pthread.rseq=0"),
        ("RELAYFS_RSEQ", "0"),
    ] {
        let out = Command::new(&exe)
            .args([
                "--exact",
                "without_rseq_the_cas_path_accounts_exactly",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(var, val)
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("child checked the fallback"),
            "{var}={val}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A global buffer has no CPU, and `rseq(false)` opts a channel out: both
/// keep the compare-and-swap; a per-CPU channel gets the sequences exactly
/// where the system has them.
#[test]
fn which_channels_use_rseq() {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str, global: bool, rseq: bool| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        Channel::builder(name)
            .dir(d)
            .subbuf_size(4096)
            .n_subbufs(2)
            .global(global)
            .rseq(rseq)
            .open()
            .unwrap()
    };
    assert_eq!(open("percpu", false, true).uses_rseq(), rseq_expected());
    assert!(!open("global", true, true).uses_rseq());
    assert!(!open("optout", false, false).uses_rseq());
}
