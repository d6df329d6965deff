//! How the daemon's C heap grows (design note 79).
//!
//! Every new flow allocates its cipher state, PIT entry and translation on
//! the driver's thread. With glibc's defaults that thread allocates from an
//! arena of its own, and such an arena grows by exactly what the
//! allocation lacks, rounded to a page: one `mprotect` per page or two of
//! new flows, about 20 us each on an idle VM, in front of a new flow's
//! first packet at both ends while the node's flow count rises (`perf` of
//! lone new flows: memory growth 5 % of the drivers' time, the largest
//! single item). One arena that grows by [`TOP_PAD`] at a time takes a
//! `brk` per thousands of flows instead, and keeps what flows free for the
//! next ones rather than giving it back and growing again.
//!
//! The packet path allocates nothing per packet (the data-path threads
//! would otherwise contend for the one arena's lock).

/// What the heap runs with, logged at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heap {
    /// One arena, grown by [`TOP_PAD`], trimmed only past [`TRIM_THRESHOLD`].
    Tuned,
    /// glibc's defaults (`FPN_NODE_HEAP=glibc`, for comparisons).
    Defaults,
    /// Not glibc: nothing to tune.
    Unsupported,
}

impl Heap {
    /// The name in the log.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tuned => "one arena, grown 4 MiB at a time",
            Self::Defaults => "glibc defaults",
            Self::Unsupported => "the platform's",
        }
    }
}

/// Bytes the heap grows by beyond what an allocation needs.
pub const TOP_PAD: usize = 4 << 20;
/// Free bytes at the heap's top kept rather than given back.
pub const TRIM_THRESHOLD: usize = 32 << 20;

/// Sets the heap's growth policy; call it before any thread starts
/// (an arena made before keeps serving its thread). `FPN_NODE_HEAP=glibc`
/// in the environment keeps glibc's defaults.
pub fn tune() -> Heap {
    if std::env::var("FPN_NODE_HEAP").is_ok_and(|v| v == "glibc") {
        return Heap::Defaults;
    }
    tune_glibc()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_glibc() -> Heap {
    // SAFETY: mallopt only changes the allocator's parameters; it is
    // called before the daemon starts threads.
    let ok = unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1) == 1
            && libc::mallopt(libc::M_TOP_PAD, TOP_PAD as libc::c_int) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
    };
    if ok { Heap::Tuned } else { Heap::Defaults }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_glibc() -> Heap {
    Heap::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_parameters() {
        // The parameters are in range for this glibc (mallopt returns 1).
        assert_eq!(tune_glibc(), Heap::Tuned);
    }

    #[test]
    fn the_names_differ() {
        assert_ne!(Heap::Tuned.name(), Heap::Defaults.name());
    }
}
