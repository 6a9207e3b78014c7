//! Which CPU a thread runs on, and which CPUs there can be.

use std::io;

/// The CPU the calling thread runs on now. Where glibc registered a
/// restartable-sequences area for the thread (glibc 2.35 and later, kernel
/// 4.18 and later), this reads its `cpu_id` field, which the kernel keeps
/// current: one load, no call. Otherwise `sched_getcpu(3)`. Whether glibc
/// has one is looked up once at run time (`dlsym` of `__rseq_offset` and
/// `__rseq_size`), so the same binary runs on older glibc too. The thread may
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

/// Whether [`current_cpu`] reads the CPU number from the thread's
/// restartable-sequences area (glibc 2.35 or later registered one), rather
/// than calling `sched_getcpu(3)`.
pub fn uses_rseq() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    {
        rseq::registered()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

// glibc's `__rseq_offset` and the calling thread's `struct rseq` at it:
// what `crate::rseq` runs its critical sections against.
#[cfg(all(
    target_arch = "x86_64",
    target_os = "linux",
    target_env = "gnu",
    not(loom)
))]
pub(crate) use rseq::{area_at as rseq_area_at, offset as rseq_offset};

#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod rseq {
    use std::sync::atomic::{AtomicIsize, Ordering};

    const UNKNOWN: isize = isize::MIN;
    const NONE: isize = isize::MIN + 1;
    /// glibc's `__rseq_offset`, or NONE where glibc registers no rseq area
    /// (older than 2.35, registration disabled by the `glibc.pthread.rseq`
    /// tunable, or a kernel without rseq), or UNKNOWN before the first look.
    static OFFSET: AtomicIsize = AtomicIsize::new(UNKNOWN);

    /// Looks glibc's rseq registration up, once. The two symbols are
    /// looked up at run time (`dlsym`), not linked: linking them would make
    /// the binary refuse to start on a glibc older than 2.35 (the dynamic
    /// loader checks every versioned symbol before `main`).
    #[cold]
    #[inline(never)]
    fn init() -> isize {
        let v = lookup().unwrap_or(NONE);
        // SYNC POINT: Relaxed; pairs with the Relaxed loads in `cpu_id`.
        // The value is a constant of the process: threads racing here store
        // the same one, and a thread that still sees UNKNOWN only looks it
        // up again. Nothing else is published through it.
        OFFSET.store(v, Ordering::Relaxed);
        v
    }

    fn lookup() -> Option<isize> {
        // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names only
        // searches the symbol tables of the objects already loaded.
        let (off, size) = unsafe {
            (
                libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()),
                libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()),
            )
        };
        if off.is_null() || size.is_null() {
            return None;
        }
        // SAFETY: where glibc exports them, `__rseq_offset` is a `const
        // ptrdiff_t` and `__rseq_size` a `const unsigned int`, both set by
        // the dynamic loader before any user code runs and never changed
        // after; dlsym returned their addresses.
        let (off, size) = unsafe { (off.cast::<isize>().read(), size.cast::<u32>().read()) };
        // `cpu_id` is the u32 at offset 4, `rseq_cs` (for `crate::rseq`)
        // the u64 at offset 8: the area must cover 16 bytes (every kernel
        // and glibc that has rseq registers at least 20).
        (size >= 16 && off != UNKNOWN && off != NONE).then_some(off)
    }

    /// Whether glibc registered an rseq area (looked up on first use).
    pub(super) fn registered() -> bool {
        // SYNC POINT: Relaxed, as in `known_offset`.
        let mut off = OFFSET.load(Ordering::Relaxed);
        if off == UNKNOWN {
            off = init();
        }
        off != NONE
    }

    /// glibc's `__rseq_offset`: where the calling thread's `struct rseq`
    /// lies from its thread pointer, the same for every thread of the
    /// process; `None` where glibc registered none.
    #[cfg(not(loom))]
    pub(crate) fn offset() -> Option<isize> {
        // SYNC POINT: Relaxed, as in `known_offset` (`registered` stored it if
        // this thread looked it up first).
        registered().then(|| OFFSET.load(Ordering::Relaxed))
    }

    /// The calling thread's rseq area, given `offset()`'s value: thread
    /// pointer + `__rseq_offset` (no lookup, for a caller that kept the
    /// offset). The thread's own registration may still be missing
    /// (`cpu_id` then reads as not registered, which no CPU number
    /// matches).
    #[inline(always)]
    pub(crate) fn area_at(off: isize) -> *mut u8 {
        let tp: usize;
        // SAFETY: on x86_64 Linux the first word of the thread control
        // block (at %fs:0) is the thread pointer itself; reading it has no
        // side effects.
        unsafe {
            std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags));
        }
        tp.wrapping_add_signed(off) as *mut u8
    }

    /// `__rseq_offset` (looked up on first use), or `None` where glibc
    /// registered no area.
    #[inline(always)]
    fn known_offset() -> Option<isize> {
        // SYNC POINT: Relaxed; pairs with the Relaxed store in `init`. A
        // constant once set (see there), so the fast path is one plain load
        // of the cached offset.
        let mut off = OFFSET.load(Ordering::Relaxed);
        if off == UNKNOWN {
            off = init();
        }
        (off != NONE).then_some(off)
    }

    /// `cpu_id` of the calling thread's rseq area, if there is one and the
    /// kernel filled it in.
    #[inline(always)]
    pub(super) fn cpu_id() -> Option<usize> {
        let p = area_at(known_offset()?).wrapping_add(4) as *const u32;
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

    /// glibc 2.35 and later register an rseq area for every thread unless
    /// told not to (`glibc.pthread.rseq=0`) or the kernel lacks the system
    /// call; older glibc never does. The lookup must find it exactly then.
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    #[test]
    fn rseq_is_used_exactly_where_glibc_registers_it() {
        // SAFETY: gnu_get_libc_version returns a static NUL-terminated
        // string.
        let v = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        let v = v.to_str().unwrap();
        let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let glibc = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        let disabled = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("rseq=0"));
        // SAFETY: an rseq call with a null area registers nothing: it fails
        // with EINVAL where the kernel has the call, ENOSYS where not.
        let r = unsafe { libc::syscall(libc::SYS_rseq, 0usize, 0u32, 0i32, 0u32) };
        let kernel_has_it =
            !(r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS));
        let expected = glibc >= (2, 35) && !disabled && kernel_has_it;
        assert_eq!(
            uses_rseq(),
            expected,
            "glibc {v}, tunables disable rseq: {disabled}, kernel has rseq: {kernel_has_it}"
        );
    }

    #[test]
    fn rseq_agrees_with_sched_getcpu() {
        // Both read the same kernel-maintained value; the thread could
        // migrate between the two reads, so allow a few tries.
        let agree = (0..100).any(|_| current_cpu() == sched_getcpu());
        assert!(agree);
    }
}
