//! The one error type of fpn-proto.
//!
//! Every decoder and every cryptographic check returns one of these variants,
//! never a panic. Variants say what failed; none carries key material or
//! payload bytes, so an error can always be logged.

use std::net::IpAddr;

/// Everything that can fail in fpn-proto.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- generic codec errors (wire.rs, credential.rs, ge.rs) ----
    /// The input ended before a field that had to be there.
    #[error("truncated input: {what} needs {needed} bytes, {available} available")]
    Truncated {
        /// The field or structure being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// Bytes were left over after a complete structure.
    #[error("{what}: {extra} trailing bytes after the end")]
    TrailingBytes {
        /// The structure that was decoded.
        what: &'static str,
        /// Number of bytes left over.
        extra: usize,
    },
    /// A field holds a value outside its allowed set.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A structure announces a format version this code does not speak.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// The versioned structure.
        what: &'static str,
        /// The version found on the wire.
        version: u8,
    },
    /// A length or count exceeds the limit the format allows.
    #[error("{what} too large: {len} exceeds the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The announced or actual size.
        len: usize,
        /// The limit.
        max: usize,
    },

    // ---- identity and credentials (keys.rs, credential.rs) ----
    /// A signature did not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// A MAC (group proof, handshake MAC) did not verify.
    #[error("bad MAC on {0}")]
    BadMac(&'static str),
    /// A key could not be loaded (malformed PKCS#8, wrong length, ...).
    #[error("invalid key material: {0}")]
    InvalidKey(&'static str),
    /// A credential is outside its validity period.
    #[error("credential of GE {ge} is not valid at {now} (valid {not_before}..{not_after})")]
    CredentialExpired {
        /// The GE the credential names.
        ge: u32,
        /// The time of the check, unix seconds.
        now: u64,
        /// Start of validity, unix seconds.
        not_before: u64,
        /// End of validity, unix seconds.
        not_after: u64,
    },
    /// A credential or GE has been revoked.
    #[error("GE {0} is revoked")]
    Revoked(u32),
    /// This GE has not heard from the GMS for longer than its bound, so it
    /// may have missed revocations: credentials issued before it last heard
    /// from the GMS are refused until it does again.
    #[error(
        "credential of GE {ge} was issued at {not_before}, before this node lost the GMS at {floor}: refused until the GMS is back"
    )]
    CredentialStale {
        /// The GE the credential names.
        ge: u32,
        /// When the credential became valid, unix seconds.
        not_before: u64,
        /// When this node last heard from the GMS, unix seconds.
        floor: u64,
    },
    /// A prefix (in a credential, or given for one) is malformed.
    #[error("bad prefix: {0}")]
    Prefix(#[from] PrefixError),
    /// A GE's verified credential does not cover an address it spoke for:
    /// neither its overlay address nor a prefix its credential names.
    #[error("GE {ge} does not own {addr}: its credential does not cover it")]
    NotOwner {
        /// The GE.
        ge: u32,
        /// The address it claimed (a flow's source or destination).
        addr: IpAddr,
    },
    /// A NAK came from a GE that may not refuse this negotiation: neither
    /// the GE it was addressed to nor one whose credential covers the
    /// destination. Dropped (the genuine answer may still come).
    #[error("NAK from GE {0}, which does not speak for the destination")]
    NakFromStranger(u32),
    /// The ends' credentials share a group but one end holds no key for
    /// it: the flow would fall back to plain (or drop) instead of being
    /// protected, so the negotiation fails instead.
    #[error("the ends share group {group} but one holds no key for it: refusing to downgrade")]
    GroupKeyMissing {
        /// The lowest group both credentials name.
        group: u32,
    },
    /// The operating system's random source failed.
    #[error("the system random source failed")]
    Entropy,

    // ---- packets (packet/) ----
    /// The IP version nibble is neither 4 nor 6.
    #[error("unsupported IP version {0}")]
    IpVersion(u8),
    /// A packet header is malformed in a way the message describes.
    #[error("malformed packet: {0}")]
    MalformedPacket(&'static str),
    /// The packet carries a transport protocol the operation does not handle.
    #[error("unsupported transport protocol {0}")]
    UnsupportedProtocol(u8),
    /// The caller's buffer has no room for what the operation must add.
    #[error("buffer too small: need {needed} bytes, capacity {capacity}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },

    /// The packet is an IP fragment. A non-first fragment has no transport
    /// header; fpn handles whole datagrams only (reassemble first).
    #[error("IP fragment (first: {first}): reassemble before processing")]
    Fragment {
        /// True for the first fragment (offset 0, more fragments follow).
        first: bool,
    },

    // ---- PCCOM (pccom/) ----
    /// Authentication of a protected packet failed (wrong key, altered bytes).
    #[error("packet authentication failed")]
    PacketAuth,
    /// The packet counter was seen before or is older than the replay window.
    #[error("replayed or too old packet (counter {counter})")]
    Replay {
        /// The counter carried by the packet.
        counter: u64,
    },
    /// The send counter of a flow direction is exhausted; the flow must rekey.
    #[error("packet counter exhausted: the flow must be renegotiated")]
    CounterExhausted,
    /// The flow's cipher state is no longer the flow's current one (its PIT
    /// entry was removed or renegotiated): a data-path worker hands the
    /// packet to the node's core instead.
    #[error("the flow's cipher state was retired")]
    CryptoRetired,

    // ---- PIT (pit.rs) ----
    /// The PIT holds its maximum number of entries.
    #[error("PIT full: {capacity} entries")]
    PitFull {
        /// The configured maximum.
        capacity: usize,
    },
    /// A PCCOM operation was asked of a PIT entry whose action is not protect
    /// (or that is still tentative).
    #[error("flow has no traffic keys")]
    NotProtected,

    // ---- DPRP (dprp/) ----
    /// A DPRP message type byte is unknown.
    #[error("unknown DPRP message type {0}")]
    UnknownMessage(u8),
    /// A DPRP message does not fit the negotiation's state.
    #[error("unexpected DPRP message: {0}")]
    UnexpectedMessage(&'static str),
    /// A DPRP message belongs to no negotiation this machine knows.
    #[error("unknown negotiation")]
    UnknownNegotiation,
    /// A FOP or FOK names a pair epoch this GE does not hold (never had,
    /// expired, or ended by a rotation, a revocation or a restart).
    #[error("unknown pair epoch")]
    UnknownEpoch,
    /// The peer named a group this GE holds no key for.
    #[error("unknown group {0}")]
    UnknownGroup(u32),
    /// The peer used a key version this GE does not hold (expired or not yet received).
    #[error("unknown key version {version} of group {group}")]
    UnknownKeyVersion {
        /// The group.
        group: u32,
        /// The key version.
        version: u32,
    },
    /// A negotiation was answered by another GE than the directory names.
    #[error("expected GE {expected} to answer, GE {found} did")]
    UnexpectedPeer {
        /// The GE the directory names for the destination.
        expected: u32,
        /// The GE that answered.
        found: u32,
    },
    /// NAT-f: the gateway's authentic answer to a DDE that asked for a
    /// mapping carries none that fits (no NAT-f option, another host,
    /// port 0, or an unprotected flow).
    #[error("the gateway's NAT-f answer is unusable: {0}")]
    BadNatfAnswer(&'static str),
    /// NAT-f: this gateway refused a DDE's mapping request with a signed
    /// NAK of this code (unknown host, no shared host group, no free port).
    #[error("NAT-f request refused: {0:?}")]
    NatfRefused(crate::dprp::RefuseCode),
    /// A bounded table is full; the input was dropped.
    #[error("{0} table is full")]
    TableFull(&'static str),
    /// A budget (token bucket) is spent; the input was dropped before any
    /// cryptographic work.
    #[error("rate limited: {0}")]
    RateLimited(&'static str),
    /// The credential failed verification recently and is remembered as
    /// bad; it was refused without checking its signature again.
    #[error("credential refused: it failed verification recently")]
    KnownBadCredential,
    /// The address does not belong to a GE this machine knows.
    #[error("no route to {0}")]
    NoRoute(IpAddr),
    /// Two flows would share one five-tuple on the wire.
    #[error("wire five-tuple {wire} is already used by flow {owner}")]
    TranslationConflict {
        /// The wire five-tuple asked for.
        wire: crate::flow::FlowId,
        /// The overlay flow that has it.
        owner: crate::flow::FlowId,
    },

    // ---- path probes (path/) ----
    /// A path probe or answer names other GEs than the two this machine
    /// serves (misdirected, or a probe reflected back at its sender).
    #[error("path probe from GE {sender} to GE {receiver} is not for this peer pair")]
    ProbePeerMismatch {
        /// The sender GE the message names.
        sender: u32,
        /// The receiver GE the message names.
        receiver: u32,
    },
    /// A path probe was seen before or is too old (its sequence number is
    /// outside the replay window), or a probe answer answers a probe that
    /// was already answered.
    #[error("replayed path probe or answer (sequence {seq})")]
    ProbeReplay {
        /// The sequence number carried.
        seq: u64,
    },
    /// A probe answer answers no probe this machine has outstanding (never
    /// sent, or so old that it left the table).
    #[error("probe answer for unknown probe (sequence {seq})")]
    UnsolicitedAnswer {
        /// The sequence number carried.
        seq: u64,
    },
}

/// Why a prefix was refused (a small error of its own: the GMS matches it
/// to explain an operator's mistake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    /// Not of the form `ADDRESS/LENGTH`.
    #[error("not of the form ADDRESS/LENGTH")]
    Syntax,
    /// The address family code is neither 4 nor 6.
    #[error("unknown address family {0}")]
    Family(u8),
    /// The length exceeds the address width (32 or 128).
    #[error("length {len} exceeds the address width")]
    TooLong {
        /// The length found.
        len: u8,
    },
    /// A `/0` prefix: it would let a gateway speak for every address.
    #[error("a /0 prefix would cover every address")]
    Everything,
    /// Bits below the prefix length are set (write the network address).
    #[error("host bits are set below the prefix length")]
    HostBits,
    /// The list is not strictly ascending (unsorted or duplicated).
    #[error("prefixes must be sorted and unique")]
    NotAscending,
    /// More prefixes than a credential may name.
    #[error("{len} prefixes exceed the limit of {max}")]
    TooMany {
        /// The number given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A GES speaks only for its own overlay address and its host's real
    /// addresses (single hosts); only a gateway (GEN, GEA) may name a subnet.
    #[error(
        "only a gateway (GEN or GEA) may name a protected subnet; a GES names single host addresses"
    )]
    NotAGateway,
}

impl Error {
    /// Shorthand for [`Error::InvalidField`].
    pub const fn invalid(field: &'static str, reason: &'static str) -> Self {
        Self::InvalidField { field, reason }
    }
}
