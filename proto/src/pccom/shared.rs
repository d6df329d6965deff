//! A flow's cipher state shared between the PIT and the node's data-path
//! workers (docs/DESIGN-NOTES.md note 67).
//!
//! Each direction has its own lock: the sealer's counter must never be used
//! twice, whichever thread seals (the kernel may move a flow's packets
//! between workers), and the opener's replay window must see every counter
//! once. Uncontended, a lock costs far less than the AES-GCM of a packet;
//! the two directions never wait for each other.
//!
//! Whether the state may still be used is one atomic ([`CryptoState`]),
//! changed only by the PIT (under both locks, so once the change returns no
//! packet is sealed or opened against it). Workers count what they carry
//! under the side's lock and mark the flow used, with the time they were
//! given to the millisecond ([`SharedCrypto::seal_at`],
//! [`SharedCrypto::take_used_at`]), which the PIT's ageing and eviction
//! read instead of a per-packet clock of their own; the rekey limit is a flag anyone reads without a lock
//! ([`SharedCrypto::rekey_due`]).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use super::{FlowCrypto, Opener, PacketAead, RingAesGcm, Sealer};
use crate::{Error, Result};

/// What a [`SharedCrypto`] may still do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CryptoState {
    /// The flow's current keys: seals and opens.
    Current = 0,
    /// Replaced by a renegotiation and kept for its grace: opens only, and
    /// only through the PIT (which tries both keys); workers leave it alone.
    Previous = 1,
    /// The entry is gone (aged out, removed, revoked, its key erased):
    /// nothing.
    Retired = 2,
}

/// Packets and plain bytes a worker carried with a [`SharedCrypto`] (the
/// PIT's own packets are counted in its entry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    /// Sealed (sent) packets.
    pub packets_out: u64,
    /// Their plain bytes.
    pub bytes_out: u64,
    /// Opened (received) packets.
    pub packets_in: u64,
    /// Their plain bytes.
    pub bytes_in: u64,
    /// Packets a worker could not seal or open (authentication, replay,
    /// counter exhausted).
    pub rejected: u64,
}

struct SealSide<A: PacketAead> {
    sealer: Sealer<A>,
    packets: u64,
    bytes: u64,
    rejected: u64,
}

struct OpenSide<A: PacketAead> {
    opener: Opener<A>,
    packets: u64,
    bytes: u64,
    rejected: u64,
}

/// One flow's cipher state, shareable (`Arc`) between the PIT and workers.
pub struct SharedCrypto<A: PacketAead = RingAesGcm> {
    // Not padded to cache lines of their own: 64-byte alignment cost 336
    // bytes a flow (flow_scale bench) before any worker exists to share a
    // line with; the sides' hot words lie hundreds of bytes apart anyway
    // (each holds an expanded AES key).
    seal: Mutex<SealSide<A>>,
    open: Mutex<OpenSide<A>>,
    /// Read on every packet, written a few times in the flow's life.
    state: AtomicU8,
    /// Set once the send counter reached the rekey limit.
    rekey_due: AtomicBool,
    /// 0: not used since taken; [`USED_UNTIMED`]: used, time not given;
    /// otherwise milliseconds after `base`, plus one.
    used: AtomicU64,
    /// The first time a use was stamped with.
    base: OnceLock<Instant>,
}

/// A use without a time ([`SharedCrypto::seal`], [`SharedCrypto::open`]):
/// taken as "now" by whoever takes it.
const USED_UNTIMED: u64 = u64::MAX;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while sealing leaves nothing half-done that matters: the
    // counter is burnt before the seal.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<A: PacketAead> SharedCrypto<A> {
    /// Shares `crypto`, current.
    pub fn new(crypto: FlowCrypto<A>) -> Self {
        let (sealer, opener) = crypto.into_halves();
        Self {
            seal: Mutex::new(SealSide {
                sealer,
                packets: 0,
                bytes: 0,
                rejected: 0,
            }),
            open: Mutex::new(OpenSide {
                opener,
                packets: 0,
                bytes: 0,
                rejected: 0,
            }),
            state: AtomicU8::new(CryptoState::Current as u8),
            rekey_due: AtomicBool::new(false),
            used: AtomicU64::new(0),
            base: OnceLock::new(),
        }
    }

    /// What it may still do.
    pub fn state(&self) -> CryptoState {
        match self.state.load(Ordering::Acquire) {
            0 => CryptoState::Current,
            1 => CryptoState::Previous,
            _ => CryptoState::Retired,
        }
    }

    /// True while it is the flow's current state.
    pub fn is_current(&self) -> bool {
        self.state() == CryptoState::Current
    }

    /// Moves it on (never back: a retired state stays retired). Takes both
    /// locks, so no seal or open is under way against the old state when
    /// this returns. Only the PIT moves it.
    pub(crate) fn set_state(&self, to: CryptoState) {
        let _s = lock(&self.seal);
        let _o = lock(&self.open);
        self.state.fetch_max(to as u8, Ordering::AcqRel);
    }

    // ---- The PIT's side (its entry counts these packets itself) ----

    /// [`FlowCrypto::protect`], for the PIT (its entry counts the packet):
    /// only while current.
    pub(crate) fn protect(&self, buf: &mut [u8], len: usize) -> Result<usize> {
        let mut s = lock(&self.seal);
        if self.state.load(Ordering::Acquire) != CryptoState::Current as u8 {
            return Err(Error::CryptoRetired);
        }
        let n = s.sealer.protect(buf, len)?;
        self.note_rekey(&s.sealer);
        Ok(n)
    }

    /// [`FlowCrypto::unprotect`], for the PIT: while current or previous.
    pub(crate) fn unprotect(&self, buf: &mut [u8]) -> Result<usize> {
        let mut o = lock(&self.open);
        if self.state.load(Ordering::Acquire) == CryptoState::Retired as u8 {
            return Err(Error::CryptoRetired);
        }
        o.opener.unprotect(buf)
    }

    /// True once the send counter reached [`super::Limits::rekey_after`]
    /// ([`FlowCrypto::should_rekey`]), whoever sealed; no lock.
    pub fn rekey_due(&self) -> bool {
        self.rekey_due.load(Ordering::Relaxed)
    }

    fn note_rekey(&self, sealer: &Sealer<A>) {
        if sealer.should_rekey() && !self.rekey_due.load(Ordering::Relaxed) {
            self.rekey_due.store(true, Ordering::Relaxed);
        }
    }

    /// Packets sealed so far, by anyone (the next counter value).
    pub fn packets_sent(&self) -> u64 {
        lock(&self.seal).sealer.packets_sent()
    }

    /// The highest counter opened so far, if any.
    pub fn highest_received(&self) -> Option<u64> {
        lock(&self.open).opener.replay_window().highest()
    }

    // ---- A worker's side ----

    /// Seals `buf[..len]` (plain length `len`) as [`FlowCrypto::protect`]
    /// does, only while current; counts it and marks the flow used.
    /// Returns the protected length and whether the flow is due for a
    /// rekey: the worker then gives the flow's next packets to the core,
    /// whose PIT starts the renegotiation.
    ///
    /// [`Error::CryptoRetired`] leaves `buf` untouched: give the packet to
    /// the core. After any other error the buffer's contents are
    /// unspecified and the packet must be dropped.
    pub fn seal(&self, buf: &mut [u8], len: usize) -> Result<(usize, bool)> {
        let r = self.seal_inner(buf, len)?;
        self.touch();
        Ok(r)
    }

    /// [`SharedCrypto::seal`] by a worker that knows the time: the flow
    /// counts as used at `now` (design note 79), so ageing and eviction see
    /// when it was last used, not only that it was.
    pub fn seal_at(&self, buf: &mut [u8], len: usize, now: Instant) -> Result<(usize, bool)> {
        let r = self.seal_inner(buf, len)?;
        self.touch_at(now);
        Ok(r)
    }

    fn seal_inner(&self, buf: &mut [u8], len: usize) -> Result<(usize, bool)> {
        let mut s = lock(&self.seal);
        if self.state.load(Ordering::Acquire) != CryptoState::Current as u8 {
            return Err(Error::CryptoRetired);
        }
        let n = match s.sealer.protect(buf, len) {
            Ok(n) => n,
            Err(e) => {
                s.rejected += 1;
                return Err(e);
            }
        };
        s.packets += 1;
        s.bytes += len as u64;
        self.note_rekey(&s.sealer);
        drop(s);
        Ok((n, self.rekey_due()))
    }

    /// Opens the packet at the start of `buf` as [`FlowCrypto::unprotect`]
    /// does, only while current; counts it and marks the flow used.
    /// [`Error::CryptoRetired`] leaves `buf` untouched (give the packet to
    /// the core, which may hold older keys for it); after any other error
    /// the packet must be dropped.
    pub fn open(&self, buf: &mut [u8]) -> Result<usize> {
        let n = self.open_inner(buf)?;
        self.touch();
        Ok(n)
    }

    /// [`SharedCrypto::open`] by a worker that knows the time (as
    /// [`SharedCrypto::seal_at`]).
    pub fn open_at(&self, buf: &mut [u8], now: Instant) -> Result<usize> {
        let n = self.open_inner(buf)?;
        self.touch_at(now);
        Ok(n)
    }

    fn open_inner(&self, buf: &mut [u8]) -> Result<usize> {
        let mut o = lock(&self.open);
        if self.state.load(Ordering::Acquire) != CryptoState::Current as u8 {
            return Err(Error::CryptoRetired);
        }
        let n = match o.opener.unprotect(buf) {
            Ok(n) => n,
            Err(e) => {
                o.rejected += 1;
                return Err(e);
            }
        };
        o.packets += 1;
        o.bytes += n as u64;
        drop(o);
        Ok(n)
    }

    fn touch(&self) {
        // Read first: a busy flow's line stays shared between the two
        // directions' workers instead of bouncing on every packet. An
        // untimed use counts as "now", so it wins over any time.
        if self.used.load(Ordering::Relaxed) != USED_UNTIMED {
            self.used.store(USED_UNTIMED, Ordering::Relaxed);
        }
    }

    fn touch_at(&self, now: Instant) {
        let base = *self.base.get_or_init(|| now);
        let ms = now.saturating_duration_since(base).as_millis();
        let t = u64::try_from(ms)
            .unwrap_or(u64::MAX)
            .saturating_add(1)
            .min(USED_UNTIMED - 1);
        // Written at most once a millisecond: a busy flow's line stays
        // shared between the two directions' workers. The write is a
        // maximum, so two workers racing (a flow's seal and open sides)
        // keep the later time, and an untimed use (the largest value)
        // stays.
        if self.used.load(Ordering::Relaxed) < t {
            self.used.fetch_max(t, Ordering::Relaxed);
        }
    }

    /// Whether a worker carried a packet since the last call, and when
    /// last (to the millisecond) if it said: `Some(None)` for a use
    /// without a time.
    pub fn take_used_at(&self) -> Option<Option<Instant>> {
        match self.used.swap(0, Ordering::Relaxed) {
            0 => None,
            USED_UNTIMED => Some(None),
            t => Some(
                self.base
                    .get()
                    .map(|b| *b + std::time::Duration::from_millis(t - 1)),
            ),
        }
    }

    /// What workers carried with it.
    pub fn worker_counts(&self) -> WorkerCounts {
        let (packets_out, bytes_out, rejected_out) = {
            let s = lock(&self.seal);
            (s.packets, s.bytes, s.rejected)
        };
        let o = lock(&self.open);
        WorkerCounts {
            packets_out,
            bytes_out,
            packets_in: o.packets,
            bytes_in: o.bytes,
            rejected: rejected_out + o.rejected,
        }
    }
}

impl<A: PacketAead> std::fmt::Debug for SharedCrypto<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCrypto")
            .field("backend", &A::NAME)
            .field("state", &self.state())
            .field("packets_sent", &self.packets_sent())
            .field("highest_received", &self.highest_received())
            .finish()
    }
}
