//! Model-checks the remote-access protocol that lets restartable sequences
//! and locked compare-and-swaps share a buffer's write position
//! (`crate::rseq`, `docs/DESIGN.md` "The write position as a restartable
//! sequence").
//!
//! What the kernel gives is modelled, not emulated: a sequence on a CPU is
//! atomic against everything else that runs on that CPU (another thread
//! preempting it, a signal handler, a migration: each would abort it, and an
//! aborted sequence has no effect and retries, which is the same as having
//! run later), so the sequences of one CPU hold that CPU's lock for their
//! few instructions; they are *not* atomic against other CPUs, so the load
//! and the store are separate operations that loom interleaves with the
//! other threads. `membarrier(.., MEMBARRIER_CMD_FLAG_CPU, cpu)` returns
//! once every sequence in flight on `cpu` has finished or been aborted, and
//! every later one sees what the caller stored before it: taking and
//! releasing that CPU's lock.
//!
//! Each model has threads reserving on one word through sequences (two
//! threads of the word's CPU) and one thread reserving through the remote
//! path (another CPU's thread, `flush`, `close`); every reservation must get
//! its own position and none may be lost. Two control models remove the
//! mark check or the membarrier and must fail.
//!
//! The fork models add the permanent `SHARED` bit (`crate::rseq`, "Fork"):
//! a thread runs the fork handler (sets the bit, then a membarrier on every
//! CPU, modelled as taking and releasing the CPU's lock) and then goes on
//! as the forked child: its mark is a copy taken after the handler, its
//! membarrier reaches only its own process (nothing here), and with the bit
//! set its remote path is a plain CAS. Meanwhile the parent's sequences and
//! a parent remote thread go on. Two controls drop the bit or the handler's
//! membarrier and must fail.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p
//! relayfs --release --test loom_rseq` (`.ci/loom` does; the fork models,
//! with four threads, take a minute or two).
#![cfg(loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

struct Word {
    /// The write position.
    head: AtomicU64,
    /// Remote accesses in progress.
    mark: AtomicU64,
    /// The word's CPU: held for the length of one sequence, or one
    /// membarrier interrupt.
    cpu: Mutex<()>,
    /// The protocol as built (true) or with a part removed (control models).
    check_mark: bool,
    membarrier: bool,
}

/// The mark's permanent bits: the word went through a fork (sequences give
/// way), and the fork handler's membarrier has returned (the remote path
/// may be a plain CAS).
const SHARED: u64 = 1 << 63;
const FENCED: u64 = 1 << 62;

enum Seq {
    Stored,
    Differs(u64),
    Elsewhere,
}

impl Word {
    fn new(check_mark: bool, membarrier: bool) -> Word {
        Word {
            head: AtomicU64::new(0),
            mark: AtomicU64::new(0),
            cpu: Mutex::new(()),
            check_mark,
            membarrier,
        }
    }

    /// One sequence on the word's CPU: the mark, the load, the compare, the
    /// store (x86: plain loads are Acquire, plain stores Release).
    fn sequence(&self, expect: u64, new: u64) -> Seq {
        let _on_cpu = self.cpu.lock().unwrap();
        if self.check_mark && self.mark.load(Ordering::Acquire) != 0 {
            return Seq::Elsewhere;
        }
        let cur = self.head.load(Ordering::Acquire);
        if cur != expect {
            return Seq::Differs(cur);
        }
        self.head.store(new, Ordering::Release);
        Seq::Stored
    }

    /// The remote path: mark, membarrier, CAS, unmark; a plain CAS once
    /// the word went through a fork.
    fn remote(&self, expect: u64, new: u64) -> Result<u64, u64> {
        if self.mark.load(Ordering::Acquire) & FENCED != 0 {
            return self
                .head
                .compare_exchange(expect, new, Ordering::AcqRel, Ordering::Acquire);
        }
        self.mark.fetch_add(1, Ordering::SeqCst);
        if self.membarrier {
            drop(self.cpu.lock().unwrap());
        }
        let r = self
            .head
            .compare_exchange(expect, new, Ordering::AcqRel, Ordering::Acquire);
        self.mark.fetch_sub(1, Ordering::Release);
        r
    }

    /// `Pin::compare_exchange` for a thread of the word's CPU.
    fn local_cas(&self, expect: u64, new: u64) -> Result<u64, u64> {
        match self.sequence(expect, new) {
            Seq::Stored => Ok(expect),
            Seq::Differs(cur) => Err(cur),
            Seq::Elsewhere => self.remote(expect, new),
        }
    }

    /// A reservation of one position, as `reserve` makes it: a guess, then
    /// the compare-and-store, retried with the value found.
    fn reserve(&self, local: bool) -> u64 {
        let mut h = self.head.load(Ordering::Relaxed);
        loop {
            let r = if local {
                self.local_cas(h, h + 1)
            } else {
                self.remote(h, h + 1)
            };
            match r {
                Ok(_) => return h,
                Err(cur) => h = cur,
            }
        }
    }
}

fn run(check_mark: bool, membarrier: bool) {
    loom::model(move || {
        let w = Arc::new(Word::new(check_mark, membarrier));
        let spawn = |local: bool, n: usize| {
            let w = w.clone();
            thread::spawn(move || (0..n).map(|_| w.reserve(local)).collect::<Vec<_>>())
        };
        let threads = [spawn(true, 2), spawn(true, 1), spawn(false, 1)];
        let mut got: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3], "positions handed out twice");
        assert_eq!(w.head.load(Ordering::Relaxed), 4, "a reservation lost");
        assert_eq!(w.mark.load(Ordering::Relaxed), 0);
    });
}

impl Word {
    /// The fork handler: SHARED (unless `set_bit` is false), a membarrier
    /// on every CPU (unless `fence` is false), FENCED.
    fn prepare_fork(&self, set_bit: bool, fence: bool) {
        if set_bit {
            self.mark.fetch_or(SHARED, Ordering::SeqCst);
        }
        if fence {
            drop(self.cpu.lock().unwrap());
        }
        if set_bit {
            self.mark.fetch_or(SHARED | FENCED, Ordering::SeqCst);
        }
    }

    /// A reservation by the forked child: its own copy of the mark (`mark`,
    /// taken after the handler) and a membarrier that reaches only its own
    /// process, so it can't keep the parent's sequences out.
    fn child_reserve(&self, mark: &AtomicU64) -> u64 {
        let mut h = self.head.load(Ordering::Relaxed);
        loop {
            let r = if mark.load(Ordering::Relaxed) & FENCED != 0 {
                self.head
                    .compare_exchange(h, h + 1, Ordering::AcqRel, Ordering::Acquire)
            } else {
                mark.fetch_add(1, Ordering::SeqCst);
                let r = self
                    .head
                    .compare_exchange(h, h + 1, Ordering::AcqRel, Ordering::Acquire);
                mark.fetch_sub(1, Ordering::Release);
                r
            };
            match r {
                Ok(_) => return h,
                Err(cur) => h = cur,
            }
        }
    }
}

fn run_fork(set_bit: bool, fence: bool) {
    loom::model(move || {
        let w = Arc::new(Word::new(true, true));
        let parent = {
            let w = w.clone();
            thread::spawn(move || vec![w.reserve(true), w.reserve(true)])
        };
        let remote = {
            let w = w.clone();
            thread::spawn(move || vec![w.reserve(false)])
        };
        let forker = {
            let w = w.clone();
            thread::spawn(move || {
                w.prepare_fork(set_bit, fence);
                // The child: a copy of the mark as the handler left it.
                let mark = AtomicU64::new(w.mark.load(Ordering::Relaxed));
                vec![w.child_reserve(&mark)]
            })
        };
        let mut got: Vec<u64> = [parent, remote, forker]
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3], "positions handed out twice");
        assert_eq!(w.head.load(Ordering::Relaxed), 4, "a reservation lost");
        assert_eq!(w.mark.load(Ordering::Relaxed) & !(SHARED | FENCED), 0);
    });
}

#[test]
fn a_forked_child_and_the_parent_share_the_word() {
    run_fork(true, true);
}

#[test]
#[should_panic(expected = "handed out twice")]
fn control_fork_without_the_shared_bit_loses_reservations() {
    run_fork(false, true);
}

#[test]
#[should_panic(expected = "handed out twice")]
fn control_fork_without_the_handlers_membarrier_loses_reservations() {
    run_fork(true, false);
}

#[test]
fn sequences_and_remote_cas_share_the_word() {
    run(true, true);
}

#[test]
#[should_panic(expected = "handed out twice")]
fn control_without_the_mark_check_loses_reservations() {
    run(false, true);
}

#[test]
#[should_panic(expected = "handed out twice")]
fn control_without_the_membarrier_loses_reservations() {
    run(true, false);
}

/// The commit word of one sub-buffer of `SB` units, beside the write
/// position it is reserved from: the commit protocol as `buffer::commit_bytes`
/// runs it on a pinned buffer (`crate::rseq::Pin::fetch_add`), with the
/// switch (a close that moves `head` past the sub-buffer and commits the
/// padding).
const SB: u64 = 3;

struct SubBuffer {
    pos: Word,
    /// Committed units: adds by sequences of the CPU, or locked adds under
    /// the remote protocol (sharing `pos`'s mark, as a buffer's words share
    /// its pin).
    commit: AtomicU64,
    /// The padding the closer stored before committing it.
    pad: AtomicU64,
    /// Commits that brought `commit` to `SB`.
    completions: AtomicU64,
    /// The records' bytes: one cell per unit, written by the unit's
    /// reserver before its commit, read by the completer after it.
    data: [loom::cell::UnsafeCell<u64>; SB as usize],
}

impl SubBuffer {
    fn new(check_mark: bool, membarrier: bool) -> SubBuffer {
        SubBuffer {
            pos: Word::new(check_mark, membarrier),
            commit: AtomicU64::new(0),
            pad: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            data: std::array::from_fn(|_| loom::cell::UnsafeCell::new(0)),
        }
    }

    /// The adding sequence: the mark, the load, the store of the sum, all
    /// on the CPU (x86: plain loads are Acquire, plain stores Release).
    fn add_sequence(&self, add: u64) -> Option<u64> {
        let _on_cpu = self.pos.cpu.lock().unwrap();
        if self.pos.check_mark && self.pos.mark.load(Ordering::Acquire) != 0 {
            return None;
        }
        let old = self.commit.load(Ordering::Acquire);
        self.commit.store(old + add, Ordering::Release);
        Some(old)
    }

    /// The remote add: mark, membarrier, locked add, unmark (or the locked
    /// add alone for a thread that holds the mark already).
    fn remote_add(&self, add: u64, held: bool) -> u64 {
        if held {
            return self.commit.fetch_add(add, Ordering::AcqRel);
        }
        self.pos.mark.fetch_add(1, Ordering::SeqCst);
        if self.pos.membarrier {
            drop(self.pos.cpu.lock().unwrap());
        }
        let old = self.commit.fetch_add(add, Ordering::AcqRel);
        self.pos.mark.fetch_sub(1, Ordering::Release);
        old
    }

    /// A commit of `add` units, from the CPU (`local`) or from elsewhere;
    /// the one that completes the sub-buffer reads every record's bytes, as
    /// `complete` publishes them to readers.
    fn commit(&self, add: u64, local: bool, held: bool) {
        let old = match local.then(|| self.add_sequence(add)).flatten() {
            Some(old) => old,
            None => self.remote_add(add, held),
        };
        if old + add == SB {
            self.completions.fetch_add(1, Ordering::Relaxed);
            let pad = self.pad.load(Ordering::Relaxed);
            for cell in &self.data[..(SB - pad) as usize] {
                // A unit of a record whose writer's commit is not ordered
                // before ours is a causality violation (loom panics).
                cell.with(|v| assert_ne!(unsafe { *v }, 0, "a record's bytes not there"));
            }
        }
    }

    /// A writer of one unit: reserve it (if it still fits), write it,
    /// commit it from the CPU or, migrated meanwhile, from elsewhere.
    fn write(&self, id: u64, commit_local: bool) {
        let mut h = self.pos.head.load(Ordering::Relaxed);
        loop {
            if h + 1 > SB {
                return; // closed: dropped (counted, in the real buffer)
            }
            match self.pos.local_cas(h, h + 1) {
                Ok(_) => break,
                Err(cur) => h = cur,
            }
        }
        self.data[h as usize].with_mut(|v| unsafe { *v = id });
        self.commit(1, commit_local, false);
    }

    /// `flush` from another CPU: close the sub-buffer if it holds anything,
    /// holding the mark across the move of `head` and the padding's commit
    /// (`Pin::hold`).
    fn flush(&self) {
        self.pos.mark.fetch_add(1, Ordering::SeqCst);
        if self.pos.membarrier {
            drop(self.pos.cpu.lock().unwrap());
        }
        let mut h = self.pos.head.load(Ordering::Acquire);
        while h != 0 && h < SB {
            match self
                .pos
                .head
                .compare_exchange(h, SB, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.pad.store(SB - h, Ordering::Relaxed);
                    self.commit(SB - h, false, true);
                    break;
                }
                Err(cur) => h = cur,
            }
        }
        self.pos.mark.fetch_sub(1, Ordering::Release);
    }
}

fn run_commit(check_mark: bool, membarrier: bool) {
    loom::model(move || {
        let sb = Arc::new(SubBuffer::new(check_mark, membarrier));
        let spawn = |f: fn(&SubBuffer)| {
            let sb = sb.clone();
            thread::spawn(move || f(&sb))
        };
        let threads = [
            // A writer of the CPU, and one migrated between its reservation
            // and its commit (which is then a remote access).
            spawn(|sb| sb.write(1, true)),
            spawn(|sb| sb.write(2, false)),
            spawn(|sb| sb.flush()),
        ];
        for t in threads {
            t.join().unwrap();
        }
        let head = sb.pos.head.load(Ordering::Relaxed);
        let committed = sb.commit.load(Ordering::Relaxed);
        assert_eq!(committed, head, "a commit lost");
        let done = sb.completions.load(Ordering::Relaxed);
        assert_eq!(done, u64::from(committed == SB), "completed {done} times");
        assert_eq!(sb.pos.mark.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn sequences_and_remote_adds_share_the_commit_word_through_a_switch() {
    run_commit(true, true);
}

#[test]
#[should_panic(expected = "a commit lost")]
fn control_commit_without_the_mark_check_loses_commits() {
    run_commit(false, true);
}

#[test]
#[should_panic(expected = "a commit lost")]
fn control_commit_without_the_membarrier_loses_commits() {
    run_commit(true, false);
}
