//! Which CPU a thread runs on, and which CPUs there can be.

use std::io;

/// The CPU the calling thread runs on now. Where glibc registered a
/// restartable-sequences area for the thread (glibc 2.35 and later, kernel
/// 4.18 and later), this reads its `cpu_id` field, which the kernel keeps
/// current: one load, no call. Otherwise `sched_getcpu(3)`. The thread may
/// migrate right after; the write protocol doesn't depend on it staying.
#[inline(always)]
pub fn current_cpu() -> usize {
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    {
        if let Some(cpu) = rseq::cpu_id() {
            return cpu;
        }
    }
    sched_getcpu()
}

/// Keeps the calling thread on `cpu` from now on (`sched_setaffinity(2)`).
///
/// Readers of per-CPU kernel relay files want this: a client such as
/// blktrace reserves an event and then fills it with interrupts off on its
/// CPU, so a reader running on that CPU can never copy an event half
/// filled, while a reader on another CPU can (see `docs/DESIGN.md`).
///
/// # Errors
/// `EINVAL` if `cpu` is out of range or not allowed for this thread (e.g.
/// offline, or outside its cpuset).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: an all-zero cpu_set_t is an empty set; CPU_SET stays in its
    // bounds (checked above); sched_setaffinity(0, ..) applies to the calling
    // thread and only reads the set.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cold]
fn sched_getcpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        0
    } else {
        cpu as usize
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod rseq {
    use std::sync::atomic::{AtomicIsize, Ordering};

    extern "C" {
        /// Offset of the thread's `struct rseq` from the thread pointer
        /// (glibc 2.35+).
        static __rseq_offset: isize;
        /// Size of the registered area; 0 if glibc did not register one.
        static __rseq_size: u32;
    }

    const UNKNOWN: isize = isize::MIN;
    const NONE: isize = isize::MIN + 1;
    /// `__rseq_offset`, or NONE where rseq is not registered.
    static OFFSET: AtomicIsize = AtomicIsize::new(UNKNOWN);

    #[cold]
    fn init() -> isize {
        // SAFETY: plain reads of two constants glibc sets before main.
        let (off, size) = unsafe { (__rseq_offset, __rseq_size) };
        let v = if size >= 8 { off } else { NONE };
        OFFSET.store(v, Ordering::Relaxed);
        v
    }

    /// `cpu_id` of the calling thread's rseq area, if there is one and the
    /// kernel filled it in.
    #[inline(always)]
    pub(super) fn cpu_id() -> Option<usize> {
        // Relaxed: a constant once set; racing initialisations store the
        // same value.
        let mut off = OFFSET.load(Ordering::Relaxed);
        if off == UNKNOWN {
            off = init();
        }
        if off == NONE {
            return None;
        }
        let tp: usize;
        // SAFETY: on x86_64 Linux the first word of the thread control block
        // (at %fs:0) is the thread pointer itself; reading it has no side
        // effects.
        unsafe {
            std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags));
        }
        let p = tp.wrapping_add_signed(off).wrapping_add(4) as *const u32;
        // SAFETY: glibc registered a struct rseq of at least `__rseq_size`
        // (>= 8) bytes at thread pointer + __rseq_offset for every thread;
        // `cpu_id` is the u32 at offset 4, written by the kernel, hence the
        // volatile read.
        let cpu = unsafe { p.read_volatile() };
        // (u32)-1: not registered yet, (u32)-2: registration failed.
        (cpu < 0x8000_0000).then_some(cpu as usize)
    }
}

/// Parses a kernel CPU list such as `0-3,8,10-11` and returns the highest
/// CPU number plus one.
///
/// # Errors
/// `InvalidData` if the list is empty or malformed.
pub fn parse_cpu_list(list: &str) -> io::Result<usize> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad CPU list {list:?}"));
    let mut max = None;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let last = match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if b < a {
                    return Err(bad());
                }
                b
            }
            None => part.trim().parse().map_err(|_| bad())?,
        };
        max = Some(max.map_or(last, |m: usize| m.max(last)));
    }
    max.map(|m| m + 1).ok_or_else(bad)
}

/// Number of *possible* CPUs (`/sys/devices/system/cpu/possible`), so that a
/// CPU brought online later already has a buffer. Falls back to the number
/// of CPUs configured (`sysconf(_SC_NPROCESSORS_CONF)`).
pub fn possible_cpus() -> usize {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/possible") {
        if let Ok(n) = parse_cpu_list(&s) {
            return n;
        }
    }
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    if n > 0 {
        n as usize
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n").unwrap(), 2);
        assert_eq!(parse_cpu_list("0").unwrap(), 1);
        assert_eq!(parse_cpu_list("0-3,8,10-11").unwrap(), 12);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a-b").is_err());
    }

    #[test]
    fn current_cpu_is_possible() {
        assert!(current_cpu() < possible_cpus());
    }

    #[test]
    fn rseq_agrees_with_sched_getcpu() {
        // Both read the same kernel-maintained value; the thread could
        // migrate between the two reads, so allow a few tries.
        let agree = (0..100).any(|_| current_cpu() == sched_getcpu());
        assert!(agree);
    }
}
