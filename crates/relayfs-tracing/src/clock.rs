//! The clock of the layer's timestamps: the TSC scaled to nanoseconds where
//! the kernel itself keeps time with it, else `CLOCK_MONOTONIC`.
//!
//! The scaled TSC counts the nanoseconds of `CLOCK_MONOTONIC`
//! ([`relayfs::frame::now`]) as they were when it was calibrated: the TSC
//! reading is scaled by a rate calibrated against `CLOCK_MONOTONIC`
//! (`quanta`'s calibration) and added to a `CLOCK_MONOTONIC` reading taken
//! with a TSC reading, both once a process. So timestamps of every buffer
//! (and of every layer of the process) are on one clock and merge.
//!
//! It does not follow NTP's slewing of `CLOCK_MONOTONIC` after the
//! calibration, nor an error of the calibrated rate: the layer writes
//! anchor records (a scaled-TSC reading and a `CLOCK_MONOTONIC` reading
//! taken together, [`Clock::pair`]) about once a second, and the decoder
//! maps timestamps to `CLOCK_MONOTONIC` between them.
//!
//! The TSC is used only where the kernel's clocksource is `tsc`
//! (`/sys/devices/system/clocksource/clocksource0/current_clocksource`):
//! the kernel chose it only after finding it invariant and synchronised
//! across CPUs, and it watches it, which a program cannot do portably; and
//! only where the CPU says its TSC is invariant (`constant_tsc` and
//! `nonstop_tsc` in `/proc/cpuinfo`). `RELAYFS_TRACING_CLOCK=monotonic` in
//! the environment forces `CLOCK_MONOTONIC`.

/// Where the kernel names its current clocksource.
const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";

/// The environment variable that can force `CLOCK_MONOTONIC`.
pub(crate) const CLOCK_ENV: &str = "RELAYFS_TRACING_CLOCK";

/// The layer's clock.
#[derive(Debug, Clone)]
pub(crate) enum Clock {
    /// `CLOCK_MONOTONIC` through the vDSO.
    Monotonic,
    /// The TSC, scaled to `CLOCK_MONOTONIC` nanoseconds.
    #[cfg(feature = "tsc")]
    Tsc(Tsc),
}

/// The scaled TSC: `base_ns + (raw - base_raw) * mult / 2^32`.
#[cfg(feature = "tsc")]
#[derive(Debug, Clone)]
pub(crate) struct Tsc {
    clock: quanta::Clock,
    /// A TSC reading and the `CLOCK_MONOTONIC` time read with it.
    base_raw: u64,
    base_ns: u64,
    /// Nanoseconds of 2^32 ticks: the rate, as a 32.32 fixed-point factor.
    mult: u64,
}

#[cfg(feature = "tsc")]
impl Tsc {
    /// The process's calibration: one rate and one base for every layer.
    fn process() -> &'static Tsc {
        static TSC: std::sync::OnceLock<Tsc> = std::sync::OnceLock::new();
        TSC.get_or_init(|| {
            // Calibrates on the first call in the process (a few
            // milliseconds, at most 200).
            let clock = quanta::Clock::new();
            let mult = clock.delta_as_nanos(0, 1 << 32);
            // The two readings as close together as the machine allows: the
            // pair with the shortest `CLOCK_MONOTONIC` gap of a few tries.
            let mut best: Option<(u64, u64, u64)> = None;
            for _ in 0..8 {
                let t0 = relayfs::frame::now();
                let raw = clock.raw();
                let t1 = relayfs::frame::now();
                let gap = t1.saturating_sub(t0);
                if best.is_none_or(|(g, _, _)| gap < g) {
                    best = Some((gap, raw, t0 + gap / 2));
                }
            }
            let (_, base_raw, base_ns) = best.unwrap_or((0, clock.raw(), relayfs::frame::now()));
            Tsc {
                clock,
                base_raw,
                base_ns,
                mult,
            }
        })
    }

    #[inline(always)]
    fn now(&self) -> u64 {
        let ticks = self.clock.raw().saturating_sub(self.base_raw);
        self.base_ns
            .wrapping_add(((u128::from(ticks) * u128::from(self.mult)) >> 32) as u64)
    }
}

impl Clock {
    /// The TSC where the kernel keeps time with it (and the `tsc` feature
    /// is on, as it is by default), else `CLOCK_MONOTONIC`.
    pub(crate) fn choose() -> Clock {
        if std::env::var(CLOCK_ENV).is_ok_and(|v| v.trim() == "monotonic") {
            return Clock::Monotonic;
        }
        if tsc_is_the_kernels() {
            Clock::tsc(0)
        } else {
            Clock::Monotonic
        }
    }

    /// The scaled TSC with its rate off by `skew_ppm` parts per million (0:
    /// as calibrated): a test of the anchors. `CLOCK_MONOTONIC` where the
    /// TSC is not available.
    #[cfg(feature = "tsc")]
    pub(crate) fn tsc(skew_ppm: i64) -> Clock {
        let mut t = Tsc::process().clone();
        if skew_ppm != 0 {
            let m = i128::from(t.mult) * (1_000_000 + i128::from(skew_ppm)) / 1_000_000;
            t.mult = u64::try_from(m.max(1)).unwrap_or(u64::MAX);
        }
        Clock::Tsc(t)
    }

    #[cfg(not(feature = "tsc"))]
    pub(crate) fn tsc(_skew_ppm: i64) -> Clock {
        Clock::Monotonic
    }

    /// What the clock is: `"tsc"` or `"monotonic"`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Clock::Monotonic => "monotonic",
            #[cfg(feature = "tsc")]
            Clock::Tsc(_) => "tsc",
        }
    }

    /// Whether timestamps need anchors (they are not `CLOCK_MONOTONIC`
    /// itself).
    pub(crate) fn anchored(&self) -> bool {
        !matches!(self, Clock::Monotonic)
    }

    /// Now, in nanoseconds: `CLOCK_MONOTONIC`, or the scaled TSC.
    #[inline(always)]
    pub(crate) fn now(&self) -> u64 {
        match self {
            Clock::Monotonic => relayfs::frame::now(),
            #[cfg(feature = "tsc")]
            Clock::Tsc(t) => t.now(),
        }
    }

    /// This clock and `CLOCK_MONOTONIC` read together: of a few tries, the
    /// clock's reading with the shortest `CLOCK_MONOTONIC` gap around it,
    /// and the middle of that gap. Returns the gap too (the error bound of
    /// the pair).
    pub(crate) fn pair(&self) -> (u64, u64, u64) {
        let mut best = (u64::MAX, 0, 0);
        for _ in 0..5 {
            let t0 = relayfs::frame::now();
            let c = self.now();
            let t1 = relayfs::frame::now();
            let gap = t1.saturating_sub(t0);
            if gap < best.0 {
                best = (gap, c, t0 + gap / 2);
            }
        }
        (best.1, best.2, best.0)
    }
}

/// Whether the kernel's clocksource is the TSC and the CPU says its TSC is
/// invariant.
fn tsc_is_the_kernels() -> bool {
    let source = std::fs::read_to_string(CLOCKSOURCE).is_ok_and(|s| s.trim() == "tsc");
    source
        && std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|s| {
            s.lines().find(|l| l.starts_with("flags")).is_some_and(|l| {
                let mut f = l.split_whitespace();
                let has = |f: &mut std::str::SplitWhitespace<'_>, w| f.any(|x| x == w);
                has(&mut f.clone(), "constant_tsc") && has(&mut f, "nonstop_tsc")
            })
        })
}
