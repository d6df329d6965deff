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
//! One arena is taken only on a machine of at most two cores whose node
//! runs one async runtime thread and no TUN workers (the defaults there,
//! [`one_arena_fits`]), where it was measured and is uncontended: the
//! receive rings and stage threads allocate nothing per packet (the QUIC
//! carrier allocates per datagram, on the runtime's thread). With more
//! cores, or more runtime threads or TUN workers set by the configuration
//! or the environment, several threads may allocate at once and may send
//! over QUIC: one arena's lock could be contended there, not measured, so
//! their arenas stay (and the driver's keeps growing a page at a time).
//! Setting the top pad or the trim threshold also fixes glibc's mmap threshold at 128 KiB (it no longer
//! rises after large frees): the node's larger buffers are made once and
//! reused.

/// What the heap runs with, logged at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heap {
    /// At least one parameter taken.
    Tuned {
        /// Every thread allocates from one arena.
        one_arena: bool,
        /// The main arena grows by [`TOP_PAD`] (what the new flows' growth
        /// needs; [`TRIM_THRESHOLD`] is set beside it, and may have been
        /// taken alone).
        padded: bool,
    },
    /// glibc's defaults (`FPN_NODE_HEAP=glibc`, for comparisons, or glibc
    /// refused every parameter).
    Defaults,
    /// Not glibc: nothing to tune.
    Unsupported,
}

impl Heap {
    /// The name in the log.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tuned {
                one_arena: true,
                padded: true,
            } => "one arena, grown 4 MiB at a time",
            Self::Tuned {
                one_arena: true,
                padded: false,
            } => "one arena, grown as glibc does",
            Self::Tuned {
                one_arena: false,
                padded: true,
            } => "arenas per thread, the main one grown 4 MiB at a time",
            Self::Tuned {
                one_arena: false,
                padded: false,
            } => "arenas per thread, up to 32 MiB freed kept",
            Self::Defaults => "glibc defaults",
            Self::Unsupported => "the platform's",
        }
    }
}

/// Bytes the heap grows by beyond what an allocation needs.
pub const TOP_PAD: usize = 4 << 20;
/// Free bytes at the heap's top kept rather than given back.
pub const TRIM_THRESHOLD: usize = 32 << 20;
/// Most cores for which every thread shares one arena (see above).
pub const ONE_ARENA_CORES: usize = 2;

/// Whether every thread may share one arena: at most
/// [`ONE_ARENA_CORES`] cores, one async runtime thread and no TUN workers,
/// as the node will run (after its configuration and environment).
pub fn one_arena_fits(cores: usize, runtime_threads: usize, tun_workers: usize) -> bool {
    cores <= ONE_ARENA_CORES && runtime_threads <= 1 && tun_workers == 0
}

/// Sets the heap's growth policy, with every thread on one arena when
/// `one_arena` ([`one_arena_fits`]); call it before any thread starts (an
/// arena made before keeps serving its thread). `FPN_NODE_HEAP=glibc` in
/// the environment keeps glibc's defaults.
pub fn tune(one_arena: bool) -> Heap {
    if std::env::var("FPN_NODE_HEAP").is_ok_and(|v| v == "glibc") {
        return Heap::Defaults;
    }
    tune_glibc(one_arena)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_glibc(one_arena: bool) -> Heap {
    // SAFETY: mallopt only changes the allocator's parameters; it is
    // called before the daemon starts threads. Each is checked on its own:
    // one refused leaves the others set.
    let set = |param, value: usize| unsafe { libc::mallopt(param, value as libc::c_int) == 1 };
    let padded = set(libc::M_TOP_PAD, TOP_PAD);
    let kept = set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    let one_arena = one_arena && set(libc::M_ARENA_MAX, 1);
    if padded || kept || one_arena {
        Heap::Tuned { one_arena, padded }
    } else {
        Heap::Defaults
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_glibc(_one_arena: bool) -> Heap {
    Heap::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_parameters() {
        // The parameters are in range for this glibc (mallopt returns 1).
        assert_eq!(
            tune_glibc(true),
            Heap::Tuned {
                one_arena: true,
                padded: true
            }
        );
    }

    #[test]
    fn one_arena_only_for_one_busy_thread_on_two_cores() {
        assert!(one_arena_fits(2, 1, 0));
        assert!(one_arena_fits(1, 1, 0));
        assert!(!one_arena_fits(4, 1, 0));
        assert!(!one_arena_fits(2, 2, 0), "two runtime threads");
        assert!(!one_arena_fits(2, 1, 1), "a TUN worker");
    }

    #[test]
    fn the_names_say_what_was_taken() {
        let names = [
            Heap::Tuned {
                one_arena: true,
                padded: true,
            },
            Heap::Tuned {
                one_arena: true,
                padded: false,
            },
            Heap::Tuned {
                one_arena: false,
                padded: true,
            },
            Heap::Tuned {
                one_arena: false,
                padded: false,
            },
            Heap::Defaults,
            Heap::Unsupported,
        ]
        .map(Heap::name);
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
