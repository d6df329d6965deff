//! PCCOM: per-flow packet protection that keeps the packet format.
//!
//! The protected packet keeps its IP header and its TCP/UDP/ICMP header; only
//! the transport payload is encrypted (AES-256-GCM under the flow's traffic
//! key for that direction) and a [`TRAILER_LEN`]-byte trailer follows it:
//!
//! ```text
//! | IP header | L4 header | ciphertext | counter: u64 BE | GCM tag: 16 bytes |
//! ```
//!
//! [`FlowCrypto::protect`] grows the packet by the trailer and fixes the IPv4
//! total length and header checksum, the IPv6 payload length, the UDP length
//! and the transport checksum, so the result is an ordinary valid IP packet
//! that NATs, firewalls and NIC offloads accept. On SYN and SYN-ACK it lowers
//! the MSS option by [`TRAILER_LEN`] so the peer's protected segments still
//! fit the path MTU. [`FlowCrypto::unprotect`] checks the counter against the
//! replay window, verifies and decrypts, shrinks the packet back and fixes the
//! same fields. Every packet of a protected flow carries a trailer, pure ACKs
//! and SYNs included, so header-only packets (RST injection) authenticate too.
//!
//! - Nonce: `0u32 || counter` (big-endian). Keys are unique per flow and
//!   direction and the counter never repeats under a key, so nonces never
//!   repeat. Sending stops at [`Limits::reject_after`] with
//!   [`Error::CounterExhausted`]; [`FlowCrypto::should_rekey`] turns true at
//!   [`Limits::rekey_after`] so the flow is renegotiated well before.
//! - Associated data: 8 bytes binding the frame version, the transport
//!   protocol and the transport fields no middlebox rewrites (TCP SYN/FIN/
//!   RST/ACK flags, ICMP type/code/echo sequence). The per-flow key binds the
//!   flow itself; GCM binds the payload length. Which header fields are in and
//!   out, and why, is listed on the `aad` function and in docs/PROTOCOL.md.
//! - Replay: [`ReplayWindow`], [`REPLAY_WINDOW`] counters wide, checked before
//!   decryption and updated only after authentication.
//!
//! Nothing here allocates per packet: the AAD and nonce live on the stack,
//! the packet is modified in the caller's buffer. On any error the buffer's
//! contents are unspecified and the packet must be dropped.

mod aead;
mod frame;
mod replay;
mod shared;

use std::fmt;

pub use aead::{NONCE_LEN, PacketAead, RingAesGcm, RustCryptoAesGcm, TAG_LEN};
pub use replay::{REPLAY_WINDOW, ReplayWindow};
pub use shared::{CryptoState, SharedCrypto, WorkerCounts};

use crate::keys::FlowKeys;
use crate::{Error, Result};

/// Length of the packet counter in the trailer.
pub const COUNTER_LEN: usize = 8;
/// Bytes PCCOM adds to a packet: counter and GCM tag.
pub const TRAILER_LEN: usize = COUNTER_LEN + TAG_LEN;

/// Packets after which a flow direction should be renegotiated (2^29).
pub const REKEY_AFTER_PACKETS: u64 = 1 << 29;
/// Packets after which a flow direction refuses to send (2^30). With
/// 1400-byte packets that is about 2^36.5 AES blocks under one key, which
/// keeps the AES-GCM distinguishing advantage near 2^-55 (as TLS 1.3's limits
/// aim for); at 1 Mpps it is reached after 18 minutes, at 2^29 packets the
/// renegotiation has nine minutes to finish.
pub const REJECT_AFTER_PACKETS: u64 = 1 << 30;

/// Per-direction packet limits of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From this many sent packets on, [`FlowCrypto::should_rekey`] is true.
    pub rekey_after: u64,
    /// Sending packet number `reject_after` fails with [`Error::CounterExhausted`].
    pub reject_after: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rekey_after: REKEY_AFTER_PACKETS,
            reject_after: REJECT_AFTER_PACKETS,
        }
    }
}

/// The sending half of a flow's cipher state: this end's direction's AEAD
/// key, the send counter and the limits. [`FlowCrypto`] holds one next to
/// an [`Opener`]; [`SharedCrypto`] puts each half behind its own lock, so
/// the two directions of a flow never wait for each other.
pub struct Sealer<A: PacketAead = RingAesGcm> {
    aead: A,
    next: u64,
    limits: Limits,
}

impl<A: PacketAead> Sealer<A> {
    fn new(keys: &FlowKeys, limits: Limits) -> Self {
        Self {
            aead: A::new(&keys.tx),
            next: 0,
            limits,
        }
    }

    /// Protects the packet in `buf[..len]` in place; the rest of `buf` is
    /// room, of which [`TRAILER_LEN`] bytes are needed
    /// ([`Error::BufferTooSmall`] otherwise). Returns the protected length.
    pub fn protect(&mut self, buf: &mut [u8], len: usize) -> Result<usize> {
        let counter = self.next;
        if counter >= self.limits.reject_after {
            return Err(Error::CounterExhausted);
        }
        // Burn the counter before any ciphertext exists: even a failure below
        // can never lead to a second seal with the same nonce.
        self.next += 1;
        frame::seal(&self.aead, counter, buf, len)
    }

    /// True once the send counter reached [`Limits::rekey_after`].
    pub fn should_rekey(&self) -> bool {
        self.next >= self.limits.rekey_after
    }

    /// Packets protected so far (the next counter value).
    pub fn packets_sent(&self) -> u64 {
        self.next
    }
}

/// The receiving half of a flow's cipher state: the peer's direction's
/// AEAD key and the replay window.
pub struct Opener<A: PacketAead = RingAesGcm> {
    aead: A,
    window: ReplayWindow,
}

impl<A: PacketAead> Opener<A> {
    fn new(keys: &FlowKeys) -> Self {
        Self {
            aead: A::new(&keys.rx),
            window: ReplayWindow::new(),
        }
    }

    /// Verifies and decrypts the protected packet at the start of `buf` in
    /// place; see [`FlowCrypto::unprotect`].
    pub fn unprotect(&mut self, buf: &mut [u8]) -> Result<usize> {
        frame::open(&self.aead, &mut self.window, buf)
    }

    /// The receive replay window.
    pub fn replay_window(&self) -> &ReplayWindow {
        &self.window
    }
}

/// The cipher state of one flow at one end: both directions' AEAD keys, the
/// send counter and the receive replay window.
///
/// Built from the [`FlowKeys`] a negotiation derived; `A` is the AEAD backend
/// (ring by default, see [`PacketAead`]).
pub struct FlowCrypto<A: PacketAead = RingAesGcm> {
    sealer: Sealer<A>,
    opener: Opener<A>,
}

impl FlowCrypto<RingAesGcm> {
    /// Cipher state with the default (ring) backend.
    pub fn new(keys: &FlowKeys) -> Self {
        Self::with_backend(keys)
    }
}

impl<A: PacketAead> FlowCrypto<A> {
    /// Cipher state with backend `A`.
    pub fn with_backend(keys: &FlowKeys) -> Self {
        Self {
            sealer: Sealer::new(keys, Limits::default()),
            opener: Opener::new(keys),
        }
    }

    /// Lowers the packet limits (tests, simulations, cautious deployments).
    /// Limits above the defaults are capped at the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.sealer.limits = capped(limits);
        self
    }

    /// Protects the packet in `buf[..len]` in place; the rest of `buf` is
    /// room, of which [`TRAILER_LEN`] bytes are needed
    /// ([`Error::BufferTooSmall`] otherwise). Returns the protected length.
    pub fn protect(&mut self, buf: &mut [u8], len: usize) -> Result<usize> {
        self.sealer.protect(buf, len)
    }

    /// Verifies and decrypts the protected packet at the start of `buf` in
    /// place (the packet ends where its IP header says). Returns the plain
    /// length. Fails with [`Error::Replay`] for a duplicate or too old
    /// counter and [`Error::PacketAuth`] for anything altered or forged.
    pub fn unprotect(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.opener.unprotect(buf)
    }

    /// True once the send counter reached [`Limits::rekey_after`]: start a
    /// renegotiation of the flow.
    pub fn should_rekey(&self) -> bool {
        self.sealer.should_rekey()
    }

    /// Packets protected so far (the next counter value).
    pub fn packets_sent(&self) -> u64 {
        self.sealer.packets_sent()
    }

    /// The receive replay window.
    pub fn replay_window(&self) -> &ReplayWindow {
        self.opener.replay_window()
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.sealer.limits
    }

    /// The two halves, to be shared ([`SharedCrypto`]).
    pub fn into_halves(self) -> (Sealer<A>, Opener<A>) {
        (self.sealer, self.opener)
    }
}

/// `limits` capped at the defaults, `rekey_after` at `reject_after`.
fn capped(limits: Limits) -> Limits {
    let reject_after = limits.reject_after.min(REJECT_AFTER_PACKETS);
    Limits {
        reject_after,
        rekey_after: limits
            .rekey_after
            .min(REKEY_AFTER_PACKETS)
            .min(reject_after),
    }
}

impl<A: PacketAead> fmt::Debug for FlowCrypto<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowCrypto")
            .field("backend", &A::NAME)
            .field("packets_sent", &self.sealer.next)
            .field("highest_received", &self.opener.window.highest())
            .finish()
    }
}
