//! The native-path probe and its answer: one UDP datagram each, sent between
//! the two GEs' underlay addresses on the DPRP port (7717).
//!
//! ```text
//!  0  version u8 (= 1)          same first byte as DPRP
//!  1  type u8                   0x10 probe, 0x11 answer, 0x12 notice,
//!                               0x13 moved (Binding Update), 0x14 moved-ack
//!                               (DPRP uses 1..=6)
//!  2  sender GE u32
//!  6  receiver GE u32
//! 10  seq u64                   probe: the prober's sequence; answer: the probe's
//! 18  timestamp u64             probe: prober's clock (µs); answer: echoed
//!                               A notice is laid out as a probe; it tells
//!                               the peer the sender's native path failed
//!                               (sent over the QUIC carrier). A moved
//!                               message (a probe's layout, over the
//!                               carrier) says the sender's addresses
//!                               changed; its ack is laid out as an answer.
//! 26  rx_native u64             probe, notice: 0; answer: authenticated native data
//!                               packets the answerer took in from the prober
//! 34  to: family u8 (4|6), address (4|16), port u16
//!                               the address the sender sent this datagram to
//! ..  observed: family u8 (0|4|6), address, port u16
//!                               probe: family 0 and nothing else; answer: the
//!                               source address the probe arrived from (the
//!                               prober's reflexive address)
//! ..  tag [16]                  HMAC-SHA256(probe key, "fpn-path-probe/1" ||
//!                               every byte before the tag), first 16 bytes
//! ```
//!
//! Integers are big-endian. A datagram is 59..=88 bytes. [`ProbeView`] checks
//! the structure once (after which no accessor panics) and gives the
//! *unauthenticated* sender id the node needs to pick the peer's key;
//! [`ProbeRepr::parse`] checks the tag (in constant time) and gives the
//! validated fields; [`ProbeRepr::emit`] writes them with their tag.
//! Replay protection lives in the machine ([`super::PathMachine`]): probes
//! through a sliding window over `seq`, answers by matching an outstanding
//! probe once.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ring::hmac;
use subtle::ConstantTimeEq;

use crate::ge::GeId;
use crate::{Error, Result};

/// The first byte, shared with DPRP's version byte.
pub const VERSION: u8 = 1;
/// Type byte of a probe. DPRP message types are 1..=5 and DPRP refuses this
/// one (`UnknownMessage`), so the two can share port 7717.
pub const TYPE_PROBE: u8 = 0x10;
/// Type byte of an answer.
pub const TYPE_ANSWER: u8 = 0x11;
/// Type byte of a fallback notice.
pub const TYPE_NOTICE: u8 = 0x12;
/// Type byte of a moved message (Mobile PPC's Binding Update).
pub const TYPE_MOVED: u8 = 0x13;
/// Type byte of a moved message's acknowledgement.
pub const TYPE_MOVED_ACK: u8 = 0x14;
/// Length of the truncated HMAC-SHA256 tag.
pub const TAG_LEN: usize = 16;
/// Length of the fixed part before the addresses.
pub const FIXED_LEN: usize = 34;
/// The shortest valid datagram (a probe to an IPv4 address).
pub const MIN_LEN: usize = FIXED_LEN + 7 + 1 + TAG_LEN;
/// The longest valid datagram (an answer with two IPv6 addresses).
pub const MAX_LEN: usize = FIXED_LEN + 19 + 19 + TAG_LEN;

/// Domain separation for the MAC, so a probe key reused elsewhere by mistake
/// cannot make a probe tag verify as something else (or the reverse).
const MAC_CONTEXT: &[u8] = b"fpn-path-probe/1";

/// Probe or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// "Can you hear me on the native path?"
    Probe,
    /// The answer to a probe, sent to where the probe came from.
    Answer,
    /// "My native path to you just failed": the peer stops trusting its own
    /// (it may send too little to notice soon). Sent over QUIC.
    Notice,
    /// "My addresses just changed" (Mobile PPC's Binding Update): the peer
    /// probes again and acknowledges. Sent over the carrier.
    Moved,
    /// The acknowledgement of a [`ProbeKind::Moved`], laid out as an answer
    /// (`observed`: the address the moved message came from).
    MovedAck,
}

impl ProbeKind {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            Self::Probe => TYPE_PROBE,
            Self::Answer => TYPE_ANSWER,
            Self::Notice => TYPE_NOTICE,
            Self::Moved => TYPE_MOVED,
            Self::MovedAck => TYPE_MOVED_ACK,
        }
    }

    /// Laid out as an answer (an observed address, a count): answers and
    /// moved-acks.
    pub const fn is_answer_like(self) -> bool {
        matches!(self, Self::Answer | Self::MovedAck)
    }
}

/// True if `datagram` carries a path probe or answer (by its first two
/// bytes), so a node receiving on port 7717 can route it away from DPRP.
pub fn is_probe(datagram: &[u8]) -> bool {
    matches!(
        datagram,
        [
            VERSION,
            TYPE_PROBE | TYPE_ANSWER | TYPE_NOTICE | TYPE_MOVED | TYPE_MOVED_ACK,
            ..
        ]
    )
}

/// The per-peer probe key. The node derives it from the pairwise key the two
/// GEs share in DPRP; both directions use the same key (the GE ids in the
/// message tell the directions apart). Never printed.
#[derive(Clone)]
pub struct ProbeKey(hmac::Key);

impl ProbeKey {
    /// Wraps 32 key bytes.
    pub fn new(bytes: &[u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    fn tag(&self, authenticated: &[u8]) -> [u8; TAG_LEN] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(MAC_CONTEXT);
        ctx.update(authenticated);
        let full = ctx.sign();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }
}

impl fmt::Debug for ProbeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProbeKey(..)")
    }
}

/// A structurally valid probe or answer, not yet authenticated.
#[derive(Clone, Copy)]
pub struct ProbeView<'a> {
    buf: &'a [u8],
    /// Offset of the observed address's family byte.
    observed_at: usize,
    /// Offset of the tag.
    tag_at: usize,
}

impl<'a> ProbeView<'a> {
    /// Checks version, type, address families, the reserved field and the
    /// exact length. Every accessor is infallible afterwards.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        need(buf, FIXED_LEN + 1, "path probe header")?;
        if buf[0] != VERSION {
            return Err(Error::UnsupportedVersion {
                what: "path probe",
                version: buf[0],
            });
        }
        let kind = match buf[1] {
            TYPE_PROBE => ProbeKind::Probe,
            TYPE_ANSWER => ProbeKind::Answer,
            TYPE_NOTICE => ProbeKind::Notice,
            TYPE_MOVED => ProbeKind::Moved,
            TYPE_MOVED_ACK => ProbeKind::MovedAck,
            _ => return Err(Error::invalid("path probe type", "not 0x10..=0x14")),
        };
        if !kind.is_answer_like() && u64_at(buf, 26) != 0 {
            return Err(Error::invalid("path probe rx_native", "nonzero in a probe"));
        }
        let to_len = match addr_len(buf[FIXED_LEN])? {
            0 => return Err(Error::invalid("path probe to", "address family 0")),
            n => n,
        };
        let observed_at = FIXED_LEN + to_len;
        need(buf, observed_at + 1, "path probe observed address")?;
        let observed_len = addr_len(buf[observed_at])?;
        match (kind.is_answer_like(), observed_len) {
            (false, 0) | (true, 1..) => {}
            (false, _) => {
                return Err(Error::invalid("path probe observed", "present in a probe"));
            }
            (true, 0) => {
                return Err(Error::invalid(
                    "path probe observed",
                    "missing in an answer",
                ));
            }
        }
        let tag_at = observed_at + observed_len.max(1);
        need(buf, tag_at + TAG_LEN, "path probe tag")?;
        if buf.len() > tag_at + TAG_LEN {
            return Err(Error::TrailingBytes {
                what: "path probe",
                extra: buf.len() - tag_at - TAG_LEN,
            });
        }
        Ok(Self {
            buf,
            observed_at,
            tag_at,
        })
    }

    /// Probe or answer.
    pub fn kind(&self) -> ProbeKind {
        match self.buf[1] {
            TYPE_PROBE => ProbeKind::Probe,
            TYPE_NOTICE => ProbeKind::Notice,
            TYPE_MOVED => ProbeKind::Moved,
            TYPE_MOVED_ACK => ProbeKind::MovedAck,
            _ => ProbeKind::Answer,
        }
    }

    /// The sender GE as claimed (unauthenticated: use it to find the key).
    pub fn sender(&self) -> GeId {
        GeId(u32_at(self.buf, 2))
    }

    /// The receiver GE as claimed (unauthenticated).
    pub fn receiver(&self) -> GeId {
        GeId(u32_at(self.buf, 6))
    }

    /// The whole datagram.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    fn authenticated(&self) -> &'a [u8] {
        &self.buf[..self.tag_at]
    }

    fn tag(&self) -> &'a [u8] {
        &self.buf[self.tag_at..]
    }
}

impl fmt::Debug for ProbeView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeView")
            .field("kind", &self.kind())
            .field("len", &self.buf.len())
            .finish()
    }
}

/// The validated fields of a probe or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeRepr {
    /// Probe or answer.
    pub kind: ProbeKind,
    /// The GE that sent the datagram.
    pub sender: GeId,
    /// The GE it is for.
    pub receiver: GeId,
    /// Probe: the prober's sequence number; answer: the probe's.
    pub seq: u64,
    /// Probe: the prober's clock in µs; answer: the probe's, echoed.
    pub timestamp: u64,
    /// Answer: authenticated native data packets the answerer took in from
    /// the prober so far (cumulative). Always 0 in a probe.
    pub rx_native: u64,
    /// The address the sender sent the datagram to.
    pub to: SocketAddr,
    /// Answer: the source address the probe arrived from. `None` in a probe.
    pub observed: Option<SocketAddr>,
}

impl ProbeRepr {
    /// Checks the tag of a structurally valid datagram under `key` (constant
    /// time) and returns its fields.
    pub fn parse(view: &ProbeView<'_>, key: &ProbeKey) -> Result<Self> {
        let expected = key.tag(view.authenticated());
        if !bool::from(expected.ct_eq(view.tag())) {
            return Err(Error::BadMac("path probe"));
        }
        Ok(Self::fields(view))
    }

    /// The fields without checking the tag: for tests and fuzzing only,
    /// never for a decision.
    #[doc(hidden)]
    pub fn parse_unauthenticated(view: &ProbeView<'_>) -> Self {
        Self::fields(view)
    }

    fn fields(view: &ProbeView<'_>) -> Self {
        let b = view.buf;
        let observed = view
            .kind()
            .is_answer_like()
            .then(|| addr_at(b, view.observed_at));
        Self {
            kind: view.kind(),
            sender: view.sender(),
            receiver: view.receiver(),
            seq: u64_at(b, 10),
            timestamp: u64_at(b, 18),
            rx_native: u64_at(b, 26),
            to: addr_at(b, FIXED_LEN),
            observed,
        }
    }

    /// The length [`ProbeRepr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        let observed = self.observed.map_or(1, |a| sock_len(&a));
        FIXED_LEN + sock_len(&self.to) + observed + TAG_LEN
    }

    /// Writes the datagram with its tag into `buf`; returns its length.
    /// Fails if `buf` is too small, or if the fields break the format's
    /// rules (observed address in a probe or missing in an answer, rx_native
    /// in a probe).
    pub fn emit(&self, key: &ProbeKey, buf: &mut [u8]) -> Result<usize> {
        match (self.kind.is_answer_like(), self.observed) {
            (false, Some(_)) => {
                return Err(Error::invalid("path probe observed", "present in a probe"));
            }
            (true, None) => {
                return Err(Error::invalid(
                    "path probe observed",
                    "missing in an answer",
                ));
            }
            _ => {}
        }
        if !self.kind.is_answer_like() && self.rx_native != 0 {
            return Err(Error::invalid("path probe rx_native", "nonzero in a probe"));
        }
        let len = self.buffer_len();
        if buf.len() < len {
            return Err(Error::BufferTooSmall {
                needed: len,
                capacity: buf.len(),
            });
        }
        let out = &mut buf[..len];
        out[0] = VERSION;
        out[1] = self.kind.code();
        out[2..6].copy_from_slice(&self.sender.0.to_be_bytes());
        out[6..10].copy_from_slice(&self.receiver.0.to_be_bytes());
        out[10..18].copy_from_slice(&self.seq.to_be_bytes());
        out[18..26].copy_from_slice(&self.timestamp.to_be_bytes());
        out[26..34].copy_from_slice(&self.rx_native.to_be_bytes());
        let mut at = FIXED_LEN + put_addr(&mut out[FIXED_LEN..], &self.to);
        at += match &self.observed {
            Some(a) => put_addr(&mut out[at..], a),
            None => {
                out[at] = 0;
                1
            }
        };
        let tag = key.tag(&out[..at]);
        out[at..].copy_from_slice(&tag);
        Ok(len)
    }
}

fn need(buf: &[u8], n: usize, what: &'static str) -> Result<()> {
    if buf.len() < n {
        return Err(Error::Truncated {
            what,
            needed: n,
            available: buf.len(),
        });
    }
    Ok(())
}

/// Encoded length of an address by its family byte (0 = absent).
fn addr_len(family: u8) -> Result<usize> {
    match family {
        0 => Ok(0),
        4 => Ok(1 + 4 + 2),
        6 => Ok(1 + 16 + 2),
        _ => Err(Error::invalid("path probe address family", "not 4 or 6")),
    }
}

fn sock_len(a: &SocketAddr) -> usize {
    match a {
        SocketAddr::V4(_) => 7,
        SocketAddr::V6(_) => 19,
    }
}

/// Reads an address whose family byte `new_checked` validated.
fn addr_at(b: &[u8], at: usize) -> SocketAddr {
    let (ip, port_at) = if b[at] == 4 {
        let o: [u8; 4] = b[at + 1..at + 5].try_into().unwrap_or_default();
        (IpAddr::V4(Ipv4Addr::from(o)), at + 5)
    } else {
        let o: [u8; 16] = b[at + 1..at + 17].try_into().unwrap_or_default();
        (IpAddr::V6(Ipv6Addr::from(o)), at + 17)
    };
    SocketAddr::new(ip, u16::from_be_bytes([b[port_at], b[port_at + 1]]))
}

fn put_addr(out: &mut [u8], a: &SocketAddr) -> usize {
    let n = match a.ip() {
        IpAddr::V4(v4) => {
            out[0] = 4;
            out[1..5].copy_from_slice(&v4.octets());
            5
        }
        IpAddr::V6(v6) => {
            out[0] = 6;
            out[1..17].copy_from_slice(&v6.octets());
            17
        }
    };
    out[n..n + 2].copy_from_slice(&a.port().to_be_bytes());
    n + 2
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut o = [0u8; 8];
    o.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ProbeKey {
        ProbeKey::new(&[7; 32])
    }

    fn probe() -> ProbeRepr {
        ProbeRepr {
            kind: ProbeKind::Probe,
            sender: GeId(1),
            receiver: GeId(2),
            seq: 0x0102_0304_0506_0708,
            timestamp: 1234,
            rx_native: 0,
            to: "198.18.0.2:7717".parse().unwrap(),
            observed: None,
        }
    }

    fn answer() -> ProbeRepr {
        ProbeRepr {
            kind: ProbeKind::Answer,
            sender: GeId(2),
            receiver: GeId(1),
            rx_native: 99,
            to: "[2001:db8::1]:7717".parse().unwrap(),
            observed: Some("[2001:db8::1]:7717".parse().unwrap()),
            ..probe()
        }
    }

    fn encode(r: &ProbeRepr) -> Vec<u8> {
        let mut buf = [0u8; MAX_LEN];
        let n = r.emit(&key(), &mut buf).unwrap();
        assert_eq!(n, r.buffer_len());
        buf[..n].to_vec()
    }

    #[test]
    fn probe_and_answer_round_trip_v4_and_v6() {
        for r in [probe(), answer()] {
            let bytes = encode(&r);
            assert!(is_probe(&bytes));
            let view = ProbeView::new_checked(&bytes).unwrap();
            assert_eq!(view.sender(), r.sender);
            assert_eq!(ProbeRepr::parse(&view, &key()).unwrap(), r);
        }
        assert_eq!(encode(&probe()).len(), MIN_LEN);
        assert_eq!(encode(&answer()).len(), MAX_LEN);
    }

    #[test]
    fn wrong_key_and_every_bit_flip_are_refused() {
        let bytes = encode(&answer());
        let view = ProbeView::new_checked(&bytes).unwrap();
        assert_eq!(
            ProbeRepr::parse(&view, &ProbeKey::new(&[8; 32])),
            Err(Error::BadMac("path probe"))
        );
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            if let Ok(v) = ProbeView::new_checked(&b) {
                assert!(ProbeRepr::parse(&v, &key()).is_err(), "bit {i} accepted");
            }
        }
    }

    #[test]
    fn malformed_datagrams_get_typed_errors() {
        let bytes = encode(&probe());
        let err = |b: &[u8]| ProbeView::new_checked(b).unwrap_err();
        for n in 0..bytes.len() {
            assert!(
                matches!(err(&bytes[..n]), Error::Truncated { .. }),
                "len {n}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            err(&long),
            Error::TrailingBytes {
                what: "path probe",
                extra: 1
            }
        );
        let mut b = bytes.clone();
        b[0] = 2;
        assert!(matches!(
            err(&b),
            Error::UnsupportedVersion { version: 2, .. }
        ));
        b = bytes.clone();
        b[1] = 3;
        assert!(matches!(
            err(&b),
            Error::InvalidField {
                field: "path probe type",
                ..
            }
        ));
        b = bytes.clone();
        b[FIXED_LEN] = 5;
        assert!(matches!(err(&b), Error::InvalidField { .. }));
        b = bytes.clone();
        b[FIXED_LEN] = 0;
        assert!(matches!(
            err(&b),
            Error::InvalidField {
                field: "path probe to",
                ..
            }
        ));
        b = bytes.clone();
        b[30] = 1;
        assert!(matches!(
            err(&b),
            Error::InvalidField {
                field: "path probe rx_native",
                ..
            }
        ));
        // A probe's type byte on an answer's body: observed present in a probe.
        b = encode(&answer());
        b[1] = TYPE_PROBE;
        b[26..34].fill(0);
        assert!(matches!(
            err(&b),
            Error::InvalidField {
                field: "path probe observed",
                ..
            }
        ));
        // An answer without an observed address.
        b = bytes.clone();
        b[1] = TYPE_ANSWER;
        assert!(matches!(
            err(&b),
            Error::InvalidField {
                field: "path probe observed",
                ..
            }
        ));
    }

    #[test]
    fn emit_refuses_bad_fields_and_small_buffers() {
        let mut buf = [0u8; MAX_LEN];
        let bad = ProbeRepr {
            observed: Some(probe().to),
            ..probe()
        };
        assert!(bad.emit(&key(), &mut buf).is_err());
        let bad = ProbeRepr {
            observed: None,
            ..answer()
        };
        assert!(bad.emit(&key(), &mut buf).is_err());
        let bad = ProbeRepr {
            rx_native: 1,
            ..probe()
        };
        assert!(bad.emit(&key(), &mut buf).is_err());
        assert!(matches!(
            answer().emit(&key(), &mut buf[..MAX_LEN - 1]),
            Err(Error::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn dprp_refuses_probe_types_and_probes_are_not_dprp() {
        let bytes = encode(&probe());
        assert_eq!(
            crate::dprp::msg::peek(&bytes).unwrap_err(),
            Error::UnknownMessage(TYPE_PROBE)
        );
        for t in 1..=5u8 {
            assert!(!is_probe(&[VERSION, t, 0, 0]));
        }
    }

    /// The examples in docs/PROTOCOL.md ("Path probes"), key 32 x 0x03.
    #[test]
    fn protocol_md_examples() {
        let key = ProbeKey::new(&[3; 32]);
        let probe = ProbeRepr {
            kind: ProbeKind::Probe,
            sender: GeId(1),
            receiver: GeId(2),
            seq: 1_800_000_000 << 24,
            timestamp: 2_000_000,
            rx_native: 0,
            to: "198.18.0.2:7717".parse().unwrap(),
            observed: None,
        };
        let answer = ProbeRepr {
            kind: ProbeKind::Answer,
            sender: GeId(2),
            receiver: GeId(1),
            rx_native: 42,
            to: "198.18.0.1:7717".parse().unwrap(),
            observed: Some("198.18.0.1:7717".parse().unwrap()),
            ..probe
        };
        let mut buf = [0u8; MAX_LEN];
        let n = probe.emit(&key, &mut buf).unwrap();
        assert_eq!(
            hex::encode(&buf[..n]),
            "01100000000100000002006b49d20000000000000000001e848000000000000000000\
             4c61200021e2500f1977d84ba3844501d186ec51623c01c"
        );
        let n = answer.emit(&key, &mut buf).unwrap();
        assert_eq!(
            hex::encode(&buf[..n]),
            "01110000000200000001006b49d20000000000000000001e84800000000000000\
             02a04c61200011e2504c61200011e25d1a77484994642ef5ff40982c4ddc82c"
        );
    }

    #[test]
    fn key_debug_hides_the_key() {
        assert_eq!(format!("{:?}", key()), "ProbeKey(..)");
    }

    proptest::proptest! {
        /// The fuzz target's invariants on random bytes and on corrupted
        /// valid datagrams: no panic, canonical re-encoding, own tag verifies.
        #[test]
        fn arbitrary_bytes_parse_canonically_or_fail(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
            flips in proptest::collection::vec((0usize..MAX_LEN, proptest::prelude::any::<u8>()), 0..4),
            which in 0u8..3,
        ) {
            let mut data = match which {
                0 => raw,
                1 => encode(&probe()),
                _ => encode(&answer()),
            };
            for (at, x) in flips {
                if let Some(b) = data.get_mut(at) {
                    *b ^= x;
                }
            }
            if let Ok(view) = ProbeView::new_checked(&data) {
                let repr = ProbeRepr::parse_unauthenticated(&view);
                proptest::prop_assert_eq!(repr.buffer_len(), data.len());
                let mut buf = [0u8; MAX_LEN];
                let n = repr.emit(&key(), &mut buf).unwrap();
                proptest::prop_assert_eq!(&buf[..n - TAG_LEN], &data[..data.len() - TAG_LEN]);
                let signed = ProbeView::new_checked(&buf[..n]).unwrap();
                proptest::prop_assert_eq!(ProbeRepr::parse(&signed, &key()).unwrap(), repr);
            }
        }
    }
}
