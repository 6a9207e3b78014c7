//! A forked child must never take itself for the process that opened the
//! channel, even where its pid is the opener's: a child in a new pid
//! namespace is pid 1 there, as the opener is in its own (a container's
//! init that opens a channel and runs a sandboxed worker; the same happens
//! when a pid is reused after the opener died). Were it taken for the
//! opener, its drop would join a flush thread it does not have (forever)
//! and then close the opener's channel and remove its files.
//!
//! Needs CAP_SYS_ADMIN for `unshare(CLONE_NEWPID)`; passes (saying so)
//! where that is refused. In a file of its own: it forks from a process
//! whose only other thread is the harness's main thread.

use relayfs::Channel;
use std::time::Duration;

/// `fork`, then in the child `f` (which must not return), in the parent the
/// child's exit code (or 100 + signal).
fn run_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `f` and ends with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(99);
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: our child; `status` is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        100 + libc::WTERMSIG(status)
    }
}

/// `unshare(CLONE_NEWPID)`, then a child that is pid 1 in the new
/// namespace runs `f`. Returns None where the unshare is refused.
fn in_new_pid_ns(f: impl FnOnce() -> i32) -> Option<i32> {
    // SAFETY: a plain system call on this (single-threaded) process.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return None;
    }
    Some(run_child(f))
}

#[test]
fn a_child_whose_pid_is_the_openers_leaves_the_channel_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let code = run_child(|| {
        in_new_pid_ns(|| {
            // Pid 1 in its namespace: the opener.
            assert_eq!(std::process::id(), 1);
            let chan = Channel::builder("pidns")
                .dir(&path)
                .subbuf_size(4096)
                .n_subbufs(8)
                .flush_interval(Duration::from_millis(1))
                .open()
                .unwrap();
            chan.write(b"before the fork").unwrap();
            let child = run_child(|| {
                in_new_pid_ns(|| {
                    // Pid 1 as well, in another namespace: not the opener.
                    assert_eq!(std::process::id(), 1);
                    // SAFETY: this process's own copy of the channel.
                    let mine: Channel = unsafe { std::ptr::read(&chan) };
                    // A hang in the drop ends the child with SIGALRM.
                    // SAFETY: a plain system call.
                    unsafe { libc::alarm(5) };
                    drop(mine);
                    0
                })
                .unwrap_or(98)
            });
            if child != 0 {
                return 10 + child.min(200);
            }
            // The opener's channel is still open and whole.
            if !chan.buffer_path(0).exists() {
                return 2;
            }
            if chan.write(b"after the child left").is_err() {
                return 3;
            }
            let s = chan.close().unwrap();
            if s.records_written() != 2 {
                return 4;
            }
            0
        })
        .unwrap_or(98)
    });
    if code == 98 {
        eprintln!("unshare(CLONE_NEWPID) refused: not tested");
        return;
    }
    assert_eq!(
        code, 0,
        "10 + 100 + 14: the child's drop hung (SIGALRM); 2: it removed the \
         opener's files; 3: the opener's write was refused; 4: counts"
    );
}
