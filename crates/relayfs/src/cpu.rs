//! Which CPU a thread runs on, and which CPUs there can be.

use std::io;

/// The CPU the calling thread runs on now (`sched_getcpu(3)`; glibc reads it
/// from the thread's rseq area, without a system call, where the kernel
/// supports rseq). The thread may migrate right after; the write protocol
/// doesn't depend on it staying.
#[inline(always)]
pub fn current_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        0
    } else {
        cpu as usize
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
}
