//! The clock of the layer's timestamps: the TSC scaled to nanoseconds where
//! the kernel itself keeps time with it, else `CLOCK_MONOTONIC`.
//!
//! Both count the nanoseconds of `CLOCK_MONOTONIC` ([`relayfs::frame::now`]):
//! the TSC reading is scaled by a rate calibrated against `CLOCK_MONOTONIC`
//! (`quanta`'s calibration, once a process) and added to a
//! `CLOCK_MONOTONIC` reading taken with a TSC reading when the clock is
//! made. So timestamps of every buffer can be merged, and the decoder's
//! clock record holds the same clock as the records.
//!
//! The TSC is used only where the kernel's clocksource is `tsc`
//! (`/sys/devices/system/clocksource/clocksource0/current_clocksource`):
//! the kernel chose it only after finding it invariant and synchronised
//! across CPUs, and it watches it, which a program cannot do portably.
//! `quanta` also checks the CPU's invariant-TSC flag, and falls back to
//! `CLOCK_MONOTONIC` itself.
//!
//! The scaled TSC does not follow NTP's slewing of `CLOCK_MONOTONIC` after
//! the calibration, so over a long run the two part by the difference in
//! rate; and `quanta` reads the TSC without a fence, so a reading can be
//! taken a little before the reservation it follows completes (the race of
//! two writers between reservation and clock read that the decoder already
//! counts). Hence the `tsc` feature is off by default.

/// Where the kernel names its current clocksource.
const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";

/// The layer's clock.
#[derive(Debug, Clone)]
pub(crate) enum Clock {
    /// `CLOCK_MONOTONIC` through the vDSO.
    Monotonic,
    /// The TSC, scaled to `CLOCK_MONOTONIC` nanoseconds.
    #[cfg(feature = "tsc")]
    Tsc {
        clock: quanta::Clock,
        /// A TSC reading and the `CLOCK_MONOTONIC` time read with it.
        base_raw: u64,
        base_ns: u64,
    },
}

impl Clock {
    /// The TSC where the kernel keeps time with it (and the `tsc` feature
    /// is on), else `CLOCK_MONOTONIC`.
    pub(crate) fn choose() -> Clock {
        let tsc = std::fs::read_to_string(CLOCKSOURCE).is_ok_and(|s| s.trim() == "tsc");
        if tsc {
            Clock::tsc()
        } else {
            Clock::Monotonic
        }
    }

    #[cfg(feature = "tsc")]
    fn tsc() -> Clock {
        // Calibrates on the first call in the process (a few milliseconds,
        // at most 200).
        let clock = quanta::Clock::new();
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
        Clock::Tsc {
            clock,
            base_raw,
            base_ns,
        }
    }

    #[cfg(not(feature = "tsc"))]
    fn tsc() -> Clock {
        Clock::Monotonic
    }

    /// What the clock is: `"tsc"` or `"monotonic"`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Clock::Monotonic => "monotonic",
            #[cfg(feature = "tsc")]
            Clock::Tsc { .. } => "tsc",
        }
    }

    /// Now, in `CLOCK_MONOTONIC` nanoseconds.
    #[inline(always)]
    pub(crate) fn now(&self) -> u64 {
        match self {
            Clock::Monotonic => relayfs::frame::now(),
            #[cfg(feature = "tsc")]
            Clock::Tsc {
                clock,
                base_raw,
                base_ns,
            } => base_ns.wrapping_add(clock.delta_as_nanos(*base_raw, clock.raw())),
        }
    }
}
