//! The per-CPU write position and commit words changed without a lock
//! prefix: restartable sequences (rseq) on the thread's current CPU, a
//! compare-and-store (`Pin::compare_exchange`, for `head`) and an add
//! (`Pin::fetch_add`, for the commit words), and the remote-access
//! protocol that keeps every other change of the same words from meeting
//! them. One `Pin` (one mark) covers all of a buffer's words.
//!
//! # What a restartable sequence gives
//!
//! glibc (2.35 and later) registers a `struct rseq` for every thread; see
//! `cpu` for how it is found. A thread that stores the address of a
//! *critical-section descriptor* (`start_ip`, `post_commit_offset`,
//! `abort_ip`) in the area's `rseq_cs` field and then runs the code between
//! `start_ip` and `start_ip + post_commit_offset` gets this promise from the
//! kernel: if the thread is preempted, migrated, or gets a signal while its
//! instruction pointer is in that range, it resumes at `abort_ip` instead
//! (after checking that the four bytes before `abort_ip` are the signature
//! given at registration, `0x53053053` on x86-64). So a section whose last
//! instruction is a single store (the *commit*) either ran entirely on one
//! CPU with nothing else of that CPU in between, or its store never happened.
//! Measured against every other thread that runs on the same CPU, that
//! section is atomic, without a `lock` prefix.
//!
//! The section here begins *at* the store of `rseq_cs`, not after it (the
//! kernel's description puts the store just before `start_ip`). A signal
//! handler that runs its own sequences leaves `rseq_cs` pointing at its
//! descriptor, or the kernel clears it on an abort; a thread interrupted
//! between its store and the section's start would then run its section
//! under the wrong descriptor, unprotected. With the store as the first
//! instruction of the section there is no such gap: interrupted before the
//! store, the thread is either aborted (the field still names this section)
//! or resumes at the store (it names something else); after the store the
//! field is this section's. Restarting costs nothing: nothing was stored
//! yet.
//!
//! # What it does not give, and the remote-access mark
//!
//! A plain store in a sequence on CPU A is atomic only against code that runs
//! on CPU A. A locked compare-and-swap executed on CPU B on the same word can
//! fall between the sequence's load and its store, and the store then undoes
//! it. So every change of a pinned word that does not come from a sequence on
//! its own CPU (a thread that reserves in another CPU's buffer, `flush` and
//! `close` from any thread, a thread that was migrated mid-switch, a thread
//! without an rseq area) is a *remote access* and follows librseq's per-CPU
//! pattern:
//!
//! 1. it adds one to the word's `mark` with a locked RMW (SeqCst: a full
//!    barrier; the mark is visible everywhere before step 2 starts);
//! 2. it calls `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
//!    MEMBARRIER_CMD_FLAG_CPU, cpu)`: the kernel interrupts the word's CPU
//!    (if it runs a thread of this process) and any sequence in flight
//!    there is aborted before it returns to it; the interrupt is a full
//!    barrier on that CPU, so every sequence that starts there afterwards
//!    loads the mark as non-zero;
//! 3. it does its compare-and-swap (any locked RMW);
//! 4. it subtracts one from the mark (Release: a sequence that sees the
//!    mark back at 0 sees the CAS too, x86 loads being ordered).
//!
//! Every sequence loads the mark inside the section, before it loads the
//! word, and gives up (the caller takes the remote path) if it is not 0. So
//! between steps 2 and 4 no sequence on the word's CPU can commit: one in
//! flight at step 2 was aborted, one started later sees the mark. Sequences
//! on other CPUs never touch the word: each first checks that the thread's
//! `cpu_id` is the word's CPU. Two remote accesses are two locked RMWs and
//! need nothing more. Hence the two paths never corrupt each other on one
//! word: at any moment the word is changed either only by sequences of one
//! CPU (which the kernel serialises) or only by locked RMWs.
//!
//! # Fork
//!
//! The mark lives in the producer's memory and the membarrier reaches only
//! the calling process. A child made by `fork` shares the buffer files (and
//! so the words) but has its own copy of every mark, and its membarrier
//! does not abort the parent's sequences, nor the parent's the child's: the
//! protocol above would not keep the two processes' moves of one word
//! apart. So every mark has a permanent bit, `SHARED`, and a
//! `pthread_atfork` prepare handler (`prepare_fork`, registered when the
//! first pin is made) runs in the forking thread before the child exists:
//!
//! 1. it sets `SHARED` in the mark of every live pin (SeqCst, a locked
//!    RMW, as the remote path's increment);
//! 2. it calls `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0)`
//!    once, on every CPU: a sequence of this process in flight anywhere is
//!    aborted (or had committed) when it returns, and every later one loads
//!    the mark as non-zero and gives way;
//! 3. it sets a second bit, `FENCED` (SeqCst, a Release at least), in the
//!    same marks.
//!
//! The child's memory is copied after the handler returns, so its marks
//! have both bits. From then on no sequence stores to such a word again,
//! in either process, and the remote path, seeing `FENCED` (Acquire),
//! makes a plain locked CAS, with no membarrier: locked RMWs on a shared
//! mapping are atomic across processes. Between steps 1 and 3 a remote
//! access of the parent must still take the whole protocol: a sequence
//! that loaded the mark before step 1 may still commit until the
//! membarrier has returned. A count left in a mark by a thread that the
//! child did not get is ignored. The bits are never cleared while the pin
//! lives, and [`Pin::shared`] reports them (`Channel::uses_rseq` turns
//! false).
//!
//! The handler must not deadlock whatever the other threads hold, so it
//! takes no lock and allocates nothing: the marks live in a static table of
//! `SLOTS` cache-line slots (a pin takes a free one; a buffer that finds
//! none keeps the plain CAS), and the handler walks the slots taken so far
//! (`HIGH`). A pin taken while a fork begins is caught by a Dekker pair:
//! `take_slot` reads the fork counter `FORKS`, takes and resets its slot,
//! and reads `FORKS` again; the handler increments `FORKS` before it walks
//! the slots. All SeqCst, so either the second read comes first in the
//! single total order and the handler sees the slot after the reset, or it
//! sees the increment and the pin sets `SHARED` itself. A pin made after
//! the handler's walk but before the child's memory is copied is caught by
//! `FORKING`, counted from the prepare handler to the parent and child
//! handlers (`after_fork`): while it is not 0 a new pin is shared at once.
//! Pins made after the fork, in either process, get a slot reset to 0 and
//! use the sequences.
//!
//! A remote access costs a system call and an interrupt of one CPU (some
//! microseconds). The write path takes it only where the fast path can't
//! apply; see `docs/DESIGN.md`, "The write position as a restartable
//! sequence".
//!
//! # Orderings
//!
//! On x86-64 a plain load is an Acquire load and a plain store a Release
//! store (TSO), and the `asm!` block is a compiler barrier (it may read and
//! write memory). So a sequence's load of the word acquires what the last
//! writer of it released, and its store releases what this thread did
//! before, exactly as the `AcqRel` CAS it replaces. Where the old argument
//! relied on the *release sequence* of the opener's CAS (every later change
//! of `head` being an RMW), the new one uses the chain of synchronises-with
//! edges instead: each successful sequence acquired the value it replaced,
//! so whoever acquires its value is ordered after every earlier writer.
//!
//! Only x86-64 Linux with glibc is supported; elsewhere [`Pin::new`] returns
//! `None` and the buffer keeps its compare-and-swap.

#![cfg(all(
    target_arch = "x86_64",
    target_os = "linux",
    target_env = "gnu",
    not(loom)
))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// `membarrier(2)` commands and flags (`linux/membarrier.h`).
const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 7;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 8;
const MEMBARRIER_CMD_FLAG_CPU: libc::c_uint = 1;

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;
/// Whether this process can use pinned words: glibc registered an rseq area
/// and the kernel accepted the membarrier registration. Decided once.
static USABLE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Environment variable that turns the restartable sequences off for the
/// process (`RELAYFS_RSEQ=0`): every write then takes the compare-and-swap,
/// as on a system without rseq.
const ENV_OFF: &str = "RELAYFS_RSEQ";

/// Whether pinned words can be used in this process (looked up once).
pub(crate) fn usable() -> bool {
    // SYNC POINT: Relaxed: a constant of the process once decided; racing
    // threads compute the same answer (registration is idempotent), and the
    // registration itself is ordered by the system call, not by this flag.
    match USABLE.load(Ordering::Relaxed) {
        YES => true,
        NO => false,
        _ => {
            let ok = decide();
            // SYNC POINT: Relaxed, as the load above.
            USABLE.store(if ok { YES } else { NO }, Ordering::Relaxed);
            ok
        }
    }
}

#[cold]
fn decide() -> bool {
    if std::env::var_os(ENV_OFF).is_some_and(|v| v == "0") {
        return false;
    }
    if crate::cpu::rseq_offset().is_none() {
        return false;
    }
    // SAFETY: membarrier with MEMBARRIER_CMD_QUERY only returns the
    // supported commands.
    let cmds = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0u32, 0i32) };
    let need = (MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ
        | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ) as libc::c_long;
    if cmds < 0 || cmds & need != need {
        return false;
    }
    // SAFETY: registers this process for expedited rseq membarriers; it has
    // no other effect (and is idempotent).
    let r = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ,
            0u32,
            0i32,
        )
    };
    r == 0
}

/// The mark's permanent bit: the word is (or may be) shared with another
/// process since a `fork`; no sequence stores to it any more, in either
/// process, and every move of it is a plain locked CAS. Never cleared while
/// the pin lives. The low bits count remote accesses in progress.
const SHARED: u64 = 1 << 63;
/// The second permanent bit, set with `SHARED` once the fork handler's
/// membarrier has returned: from then on no sequence can commit to the
/// word, and only then may the remote path skip the protocol. Between the
/// two, `SHARED` alone keeps sequences out but one already in flight may
/// still commit, so a remote access must still fence the word's CPU.
const FENCED: u64 = 1 << 62;

/// The marks of the pinned words alive in the process, one per cache line
/// (a remote access writing one buffer's mark does not disturb the
/// sequences of another), in static memory so that the fork handler finds
/// them without a lock or a pointer. A buffer that finds every slot taken
/// keeps the compare-and-swap.
#[repr(align(64))]
struct Slot {
    /// Remote accesses in progress, and `SHARED` (module documentation).
    mark: AtomicU64,
    /// Held by a live `Pin`.
    used: AtomicBool,
}

/// How many words can be pinned at once in one process.
const SLOTS: usize = 4096;

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    mark: AtomicU64::new(0),
    used: AtomicBool::new(false),
};
static MARKS: [Slot; SLOTS] = [FREE; SLOTS];
/// One more than the highest slot ever taken: how far the fork handler
/// looks.
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// Forks begun (fork handlers run) in this process; `Pin::new` compares it
/// before and after resetting its mark, to catch a fork that ran meanwhile.
static FORKS: AtomicU64 = AtomicU64::new(0);
/// Forks in progress: from the prepare handler's start to the end of the
/// fork call (`after_fork`, in the parent and in the child). A pin made
/// meanwhile, after the handler walked the slots but before the child's
/// memory is copied, could end up in the child: it is made shared at once.
static FORKING: AtomicU64 = AtomicU64::new(0);

/// Takes a free slot with its mark at 0, or `None` if all are taken.
fn take_slot() -> Option<&'static Slot> {
    // SYNC POINT: SeqCst, all of this function's accesses, against the fork
    // handler's (`prepare_fork`): a Dekker pair. Either our second load of
    // FORKS comes before the handler's increment in the single total order,
    // and then our `used`, `HIGH` and mark stores all come before the
    // handler's loads and its `fetch_or` (it sees the slot and sets SHARED
    // after our reset), or it comes after and we see the increment and set
    // SHARED ourselves. Either way a pin made while a fork begins is shared.
    let forks = FORKS.load(Ordering::SeqCst);
    let (i, slot) = MARKS.iter().enumerate().find(|(_, s)| {
        // SYNC POINT: SeqCst, as above (the Dekker pair); on success it also
        // acquires the slot from the `Pin` that released it (`drop`).
        !s.used.load(Ordering::Relaxed)
            && s.used
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
    })?;
    // SYNC POINT: SeqCst, the Dekker pair above.
    HIGH.fetch_max(i + 1, Ordering::SeqCst);
    // SYNC POINT: SeqCst, the Dekker pair above. A reset: the last owner's
    // SHARED bit, or a count left by a thread that did not survive a fork,
    // goes with it (no one else uses the slot).
    slot.mark.store(0, Ordering::SeqCst);
    // SYNC POINT: SeqCst, the Dekker pair above (FORKING is incremented
    // with FORKS, before the walk).
    if FORKS.load(Ordering::SeqCst) != forks || FORKING.load(Ordering::SeqCst) != 0 {
        // SYNC POINT: SeqCst, as the handler's own `fetch_or`. No sequence
        // uses the word yet, so it needs no fence: FENCED at once.
        slot.mark.fetch_or(SHARED | FENCED, Ordering::SeqCst);
    }
    Some(slot)
}

/// The `pthread_atfork` prepare handler, run in the forking thread before
/// the child is made: marks every live pinned word SHARED, then makes sure
/// no sequence in flight in this process can still commit (a membarrier on
/// every CPU). The child's copy of each mark has the bit, since the child's
/// memory is copied after this returns. Takes no lock and allocates
/// nothing, so it can't deadlock whatever the other threads hold.
extern "C" fn prepare_fork() {
    // SYNC POINT: SeqCst: the Dekker pair with `take_slot`.
    FORKING.fetch_add(1, Ordering::SeqCst);
    // SYNC POINT: SeqCst: the Dekker pair with `take_slot`.
    FORKS.fetch_add(1, Ordering::SeqCst);
    // SYNC POINT: SeqCst: the Dekker pair with `take_slot`.
    let high = HIGH.load(Ordering::SeqCst).min(SLOTS);
    let mut any = false;
    for slot in &MARKS[..high] {
        // SYNC POINT: SeqCst: the Dekker pair with `take_slot`. A slot
        // freed meanwhile and marked anyway is harmless: `take_slot` resets
        // it.
        if slot.used.load(Ordering::SeqCst) {
            // SYNC POINT: SeqCst (a locked RMW, a full barrier), as the
            // remote path's increment: visible everywhere before the
            // membarrier below, which pairs with the sequences' load of the
            // mark. Commutes with the remote paths' increments and
            // decrements of the low bits.
            slot.mark.fetch_or(SHARED, Ordering::SeqCst);
            any = true;
        }
    }
    if any {
        fence_all();
        for slot in &MARKS[..high] {
            // SYNC POINT: SeqCst, as above. A slot taken again meanwhile by a
            // new pin gets both bits too: it then never uses the sequences
            // (correct, only slower), and says so (`Pin::shared`).
            if slot.used.load(Ordering::SeqCst) {
                // SYNC POINT: SeqCst (a Release at least): pairs with the
                // remote path's Acquire load of FENCED; the membarrier above
                // came first.
                slot.mark.fetch_or(SHARED | FENCED, Ordering::SeqCst);
            }
        }
    }
}

/// The `pthread_atfork` parent and child handler: the fork is over (in the
/// child, its copy of `FORKING` counted it too).
extern "C" fn after_fork() {
    // SYNC POINT: SeqCst: a pin made after this (in this process) is not in
    // the other one; see `take_slot`.
    FORKING.fetch_sub(1, Ordering::SeqCst);
}

/// Registers `prepare_fork` and `after_fork` once in the process.
fn register_fork_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `prepare_fork` and `after_fork` are `extern "C" fn()`s
        // that never unwind (atomics and system calls only).
        let r =
            unsafe { libc::pthread_atfork(Some(prepare_fork), Some(after_fork), Some(after_fork)) };
        if r != 0 {
            // Without the handler a fork would go unnoticed: no pins.
            // SYNC POINT: Relaxed, as in `usable`.
            USABLE.store(NO, Ordering::Relaxed);
        }
    });
}

/// A buffer's words (its write position and its commit words) that the
/// sequences of one CPU change with a plain store, and everyone else through
/// the remote-access protocol.
pub(crate) struct Pin {
    /// `__rseq_offset` (`cpu::rseq_offset`), known to be registered: each
    /// sequence finds the thread's area from it and the thread pointer.
    rseq_offset: isize,
    /// The CPU whose sequences may store to the word.
    cpu: u32,
    /// The word's mark: remote accesses in progress, and `SHARED` (see the
    /// module's documentation).
    slot: &'static Slot,
}

impl Drop for Pin {
    fn drop(&mut self) {
        // SYNC POINT: Release pairs with `take_slot`'s CAS: the next owner's
        // reset of the mark comes after everything done with it here.
        self.slot.used.store(false, Ordering::Release);
    }
}

/// What a sequence did.
enum Seq {
    /// The word held the expected value; the new one is stored.
    Stored,
    /// The word held this other value; nothing was stored.
    Differs(u64),
    /// Not on the word's CPU, or a remote access is in progress: the caller
    /// must take the remote path.
    Elsewhere,
    /// Preempted, migrated or interrupted by a signal: nothing was stored.
    Aborted,
}

/// Retries of an aborted sequence before the remote path is taken instead
/// (an abort is rare: a preemption or signal in a few instructions).
const MAX_ABORTS: u32 = 4;

impl Pin {
    /// A pin of a word to `cpu`, if this process can use them.
    pub(crate) fn new(cpu: u64) -> Option<Pin> {
        if !usable() || cpu >= u32::MAX as u64 / 2 {
            return None;
        }
        register_fork_handler();
        if !usable() {
            return None;
        }
        Some(Pin {
            rseq_offset: crate::cpu::rseq_offset()?,
            cpu: cpu as u32,
            slot: take_slot()?,
        })
    }

    /// Whether the word went through a fork: no sequence moves it any more.
    pub(crate) fn shared(&self) -> bool {
        // SYNC POINT: Relaxed: a report; the bit, once set, stays.
        self.slot.mark.load(Ordering::Relaxed) & (SHARED | FENCED) != 0
    }

    /// `word.compare_exchange(expect, new, AcqRel, Acquire)` for a pinned
    /// word: a sequence on the word's CPU where the thread runs there, the
    /// remote-access protocol otherwise. Every change of the word must come
    /// through here.
    #[inline(always)]
    pub(crate) fn compare_exchange(
        &self,
        word: &AtomicU64,
        expect: u64,
        new: u64,
    ) -> Result<u64, u64> {
        match self.sequence(word, expect, new) {
            Seq::Stored => Ok(expect),
            Seq::Differs(cur) => Err(cur),
            Seq::Elsewhere => self.remote(word, expect, new),
            Seq::Aborted => self.compare_exchange_again(word, expect, new),
        }
    }

    /// `compare_exchange` after an aborted sequence: a few more tries, then
    /// the remote path (out of line, as `fetch_add_again`).
    #[cold]
    #[inline(never)]
    fn compare_exchange_again(&self, word: &AtomicU64, expect: u64, new: u64) -> Result<u64, u64> {
        for _ in 1..MAX_ABORTS {
            match self.sequence(word, expect, new) {
                Seq::Stored => return Ok(expect),
                Seq::Differs(cur) => return Err(cur),
                Seq::Elsewhere => break,
                Seq::Aborted => continue,
            }
        }
        self.remote(word, expect, new)
    }

    /// `word.fetch_add(add, AcqRel)` for a pinned word: a sequence on the
    /// word's CPU (load, add, store) where the thread runs there, the
    /// remote-access protocol otherwise. Returns the value before the add.
    /// Every change of the word must come through here (or through
    /// `compare_exchange` on the same pin).
    #[inline(always)]
    pub(crate) fn fetch_add(&self, word: &AtomicU64, add: u64) -> u64 {
        match self.add_sequence(word, add) {
            Added::Stored(old) => old,
            Added::Elsewhere => self.remote_add(word, add),
            Added::Aborted => self.fetch_add_again(word, add),
        }
    }

    /// `fetch_add` after an aborted sequence: a few more tries, then the
    /// remote path. Out of line, so that the inlined fast path stays one
    /// sequence long.
    #[cold]
    #[inline(never)]
    fn fetch_add_again(&self, word: &AtomicU64, add: u64) -> u64 {
        for _ in 1..MAX_ABORTS {
            match self.add_sequence(word, add) {
                Added::Stored(old) => return old,
                Added::Elsewhere => break,
                Added::Aborted => continue,
            }
        }
        self.remote_add(word, add)
    }

    /// The remote path of `fetch_add`: steps 1–4 of the module's
    /// documentation, with a locked add as step 3.
    #[cold]
    #[inline(never)]
    fn remote_add(&self, word: &AtomicU64, add: u64) -> u64 {
        // SYNC POINT: AcqRel, as the add the sequence stands in for (the
        // callers in `buffer` say what it pairs with); the protocol's own
        // orderings are `remote_step`'s.
        self.remote_step(|| word.fetch_add(add, Ordering::AcqRel))
    }

    /// Runs `step` (one locked RMW of the pinned word) as step 3 of the
    /// remote-access protocol: with the mark raised and the word's CPU
    /// fenced, or at once where the word went through a fork (`FENCED`) or
    /// the thread holds the pin's mark already (`hold`).
    #[inline(always)]
    fn remote_step<T>(&self, step: impl FnOnce() -> T) -> T {
        let mark = &self.slot.mark;
        // SYNC POINT: Acquire pairs with the fork handler's setting of
        // FENCED, which it does after its membarrier on every CPU: from
        // then on no sequence stores to the word, in either process (the
        // bits are never cleared; the child copied them), so a plain RMW
        // meets only other locked RMWs. A load that misses the bit takes the
        // full protocol below, which is correct in any case.
        if mark.load(Ordering::Acquire) & FENCED != 0 || self.held() {
            return step();
        }
        // SYNC POINT: SeqCst (a locked RMW, a full barrier): the mark is
        // visible to every CPU before the membarrier's interrupt, which
        // pairs with the sequences' load of it (module documentation).
        mark.fetch_add(1, Ordering::SeqCst);
        fence_cpu(self.cpu);
        let r = step();
        // SYNC POINT: Release pairs with the sequences' load of the mark: one
        // that sees it back at 0 sees our RMW when it loads the word.
        mark.fetch_sub(1, Ordering::Release);
        r
    }

    /// Raises the pin's mark and fences its CPU once, for a run of remote
    /// accesses by this thread (`flush`, `close`, a write into another
    /// CPU's buffer): until the returned guard drops, this thread's remote
    /// accesses to the pin's words are plain locked RMWs, and every
    /// sequence on the pin's CPU gives way (it sees the mark), exactly as
    /// during one remote access. Costs one `membarrier` call instead of one
    /// per access.
    pub(crate) fn hold(&self) -> Held<'_> {
        // SYNC POINT: SeqCst, as in `remote_step`: the raised mark is
        // visible before the membarrier.
        self.slot.mark.fetch_add(1, Ordering::SeqCst);
        fence_cpu(self.cpu);
        let prev = HELD.with(|h| h.replace(self.slot as *const Slot as usize));
        Held {
            pin: self,
            prev,
            _not_send: std::marker::PhantomData,
        }
    }

    /// Whether this thread holds the pin's mark (`hold`).
    #[inline]
    fn held(&self) -> bool {
        HELD.with(|h| h.get()) == self.slot as *const Slot as usize
    }

    /// The remote path: steps 1–4 of the module's documentation.
    #[cold]
    #[inline(never)]
    fn remote(&self, word: &AtomicU64, expect: u64, new: u64) -> Result<u64, u64> {
        // SYNC POINT: AcqRel, as the CAS the sequence stands in for (see the
        // callers in `buffer`); Acquire on failure, the value read is used.
        // The protocol's own orderings are `remote_step`'s.
        self.remote_step(|| word.compare_exchange(expect, new, Ordering::AcqRel, Ordering::Acquire))
    }

    /// One attempt at the critical section: check the CPU and the mark, load
    /// the word, compare, store.
    #[inline(always)]
    fn sequence(&self, word: &AtomicU64, expect: u64, new: u64) -> Seq {
        let area = crate::cpu::rseq_area_at(self.rseq_offset);
        let res: u64;
        let cur: u64;
        // SAFETY: `area` is the calling thread's registered `struct rseq`
        // (`cpu::rseq_area_at` with the process's `__rseq_offset`, which a
        // `Pin` exists only with: every thread's area is at that offset
        // from its thread pointer; one whose registration failed has
        // `cpu_id` RSEQ_CPU_ID_REGISTRATION_FAILED, so the check below
        // sends it to the remote path): `cpu_id` is the u32 at offset 4, `rseq_cs` the
        // u64 at offset 8, which the thread may set to a descriptor of its
        // own. The descriptor (in section `__rseq_cs`, 32-aligned, static)
        // names the critical section [2, 3) and its abort handler 4, preceded
        // by the signature glibc registered (RSEQ_SIG 0x53053053, inside a
        // `ud1` so the bytes decode as one instruction). `word` and the mark
        // are valid, aligned u64s (references). The section's only store to
        // shared memory is its last instruction (the commit), so an abort
        // anywhere before it leaves no trace; the abort handler and the
        // early exits are outside the section. Registers: all operands are
        // declared; flags are clobbered (no `preserves_flags`); the stack is
        // not used.
        unsafe {
            std::arch::asm!(
                "leaq 5f(%rip), {tmp}",
                "2:",
                "movq {tmp}, 8({area})",
                "cmpl {cpu:e}, 4({area})",
                "jne 6f",
                "cmpq $0, ({mark})",
                "jne 6f",
                "movq ({word}), {cur}",
                "cmpq {cur}, {expect}",
                "jne 7f",
                "movq {new}, ({word})",
                "3:",
                "xorl {res:e}, {res:e}",
                "jmp 8f",
                ".byte 0x0f, 0xb9, 0x3d",
                ".long 0x53053053",
                "4:",
                "movl $3, {res:e}",
                "jmp 8f",
                "6:",
                "movl $2, {res:e}",
                "jmp 8f",
                "7:",
                "movl $1, {res:e}",
                "8:",
                ".pushsection __rseq_cs, \"aw\"",
                ".balign 32",
                "5:",
                ".long 0, 0",
                ".quad 2b, 3b - 2b, 4b",
                ".popsection",
                area = in(reg) area,
                cpu = in(reg) self.cpu,
                mark = in(reg) &self.slot.mark,
                word = in(reg) word,
                expect = in(reg) expect,
                new = in(reg) new,
                tmp = out(reg) _,
                cur = out(reg) cur,
                res = out(reg) res,
                options(att_syntax, nostack),
            );
        }
        match res {
            0 => Seq::Stored,
            1 => Seq::Differs(cur),
            2 => Seq::Elsewhere,
            _ => Seq::Aborted,
        }
    }
}

impl Pin {
    /// One attempt at the adding critical section: check the CPU and the
    /// mark, load the word, add, store.
    #[inline(always)]
    fn add_sequence(&self, word: &AtomicU64, add: u64) -> Added {
        let area = crate::cpu::rseq_area_at(self.rseq_offset);
        let res: u64;
        let old: u64;
        // SAFETY: as in `sequence`: `area` is the calling thread's registered
        // `struct rseq` (`cpu_id` at offset 4, `rseq_cs` at offset 8); the
        // static descriptor (section `__rseq_cs`, 32-aligned) names the
        // critical section [2, 3) and the abort handler 4, preceded by the
        // registered signature. `word` and the mark are valid, aligned u64s
        // (references). The section's only store to shared memory is its
        // last instruction (the commit), so an abort anywhere before it
        // leaves no trace. All operands are declared; flags are clobbered;
        // the stack is not used.
        unsafe {
            std::arch::asm!(
                "leaq 5f(%rip), {tmp}",
                "2:",
                "movq {tmp}, 8({area})",
                "cmpl {cpu:e}, 4({area})",
                "jne 6f",
                "cmpq $0, ({mark})",
                "jne 6f",
                "movq ({word}), {old}",
                "leaq ({old}, {add}), {tmp}",
                "movq {tmp}, ({word})",
                "3:",
                "xorl {res:e}, {res:e}",
                "jmp 8f",
                ".byte 0x0f, 0xb9, 0x3d",
                ".long 0x53053053",
                "4:",
                "movl $3, {res:e}",
                "jmp 8f",
                "6:",
                "movl $2, {res:e}",
                "8:",
                ".pushsection __rseq_cs, \"aw\"",
                ".balign 32",
                "5:",
                ".long 0, 0",
                ".quad 2b, 3b - 2b, 4b",
                ".popsection",
                area = in(reg) area,
                cpu = in(reg) self.cpu,
                mark = in(reg) &self.slot.mark,
                word = in(reg) word,
                add = in(reg) add,
                tmp = out(reg) _,
                old = out(reg) old,
                res = out(reg) res,
                options(att_syntax, nostack),
            );
        }
        match res {
            0 => Added::Stored(old),
            2 => Added::Elsewhere,
            _ => Added::Aborted,
        }
    }
}

/// What an adding sequence did.
enum Added {
    /// The sum is stored; the word held this value before.
    Stored(u64),
    /// Not on the word's CPU, or a remote access is in progress: the caller
    /// must take the remote path.
    Elsewhere,
    /// Preempted, migrated or interrupted by a signal: nothing was stored.
    Aborted,
}

thread_local! {
    /// The slot (its address) whose mark this thread holds (`Pin::hold`),
    /// or 0.
    static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A raised mark and a fenced CPU, held by one thread for a run of remote
/// accesses (`Pin::hold`). Not `Send`: the hold is the thread's.
pub(crate) struct Held<'a> {
    pin: &'a Pin,
    /// The slot held before (a hold of another pin, or 0), restored on drop.
    prev: usize,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        HELD.with(|h| h.set(self.prev));
        // SYNC POINT: Release pairs with the sequences' load of the mark, as
        // in `remote_step`: one that sees it back at 0 sees every RMW this
        // thread made while holding it.
        self.pin.slot.mark.fetch_sub(1, Ordering::Release);
    }
}

/// Step 2 of the remote path: no sequence that began before this call is
/// still running on `cpu` afterwards, and every later one sees what this
/// thread stored before.
#[cold]
fn fence_cpu(cpu: u32) {
    // SAFETY: membarrier only interrupts the threads of this process; the
    // process registered for this command in `decide` (`usable` was true
    // for the `Pin` to exist).
    let r = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
            MEMBARRIER_CMD_FLAG_CPU,
            cpu as libc::c_int,
        )
    };
    if r == 0 {
        return;
    }
    // Targeting one CPU can't fail for a registered process (an offline or
    // absent CPU is a no-op). Should the kernel still say the process is
    // not registered (EPERM), register again (idempotent), then try every
    // CPU.
    fence_all();
}

/// No sequence of this process that began before this call is still
/// running on any CPU afterwards, and every later one sees what this thread
/// stored before. Registers again first if the kernel says the process is
/// not registered.
#[cold]
fn fence_all() {
    for _ in 0..1000 {
        // SAFETY: membarrier only interrupts the threads of this process;
        // without the CPU flag, on every CPU.
        let r = unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
                0u32,
                0i32,
            )
        };
        if r == 0 {
            return;
        }
        // SAFETY: as in `decide`.
        let _ = unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ,
                0u32,
                0i32,
            )
        };
        std::thread::yield_now();
    }
    // Going on without the barrier could let a sequence undo a write. This
    // may run in a fork handler: no lock (such as stderr's) is taken.
    const MSG: &[u8] = b"relayfs: membarrier(PRIVATE_EXPEDITED_RSEQ) keeps failing; aborting\n";
    // SAFETY: writes a static buffer of its own length to fd 2.
    let _ = unsafe { libc::write(2, MSG.as_ptr().cast(), MSG.len()) };
    std::process::abort();
}
