//! DPRP messages and their versioned binary codec.
//!
//! Every message starts with the same 10-byte header:
//! `version u8 (=1) | type u8 | negotiation id u64`. All integers are
//! big-endian; every length and count is checked against its limit before
//! anything is read; a message must be consumed exactly (no trailing bytes).
//! The encoding is canonical: whatever [`Message::decode`] accepts,
//! [`Message::encode`] gives back byte for byte, so the transcript hashes that
//! the machines compute over re-encoded parts equal hashes over the received
//! bytes. docs/PROTOCOL.md has the layout of each message with a hex example.
//!
//! Each message is split into a *core* (what is hashed into the transcript
//! before its authenticator is computed) and its authenticators; the
//! `*_core` methods give the core bytes.

use std::fmt;

use crate::action::Action;
use crate::credential::{self, Credential, UnverifiedCredential};
use crate::decision::MAX_PATH_LEN;
use crate::dprp::option::{DprpOption, decode_options, encode_options};
use crate::flow::FlowId;
use crate::ge::{GeId, GroupId, MAX_GROUPS};
use crate::keys::{EPOCH_ID_LEN, KeyVersion, MAC_LEN, SIGNATURE_LEN};
use crate::wire::{Reader, Writer};
use crate::{Error, Result};

/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// Length of the common header.
pub const HEADER_LEN: usize = 10;
/// The most gateways a negotiation may pass.
pub const MAX_HOPS: usize = MAX_PATH_LEN - 2;
/// The longest message accepted or sent (fits one UDP datagram).
pub const MAX_MESSAGE_LEN: usize = 8192;
/// The most key claims one GE may make (one per group).
pub const MAX_CLAIMS: usize = MAX_GROUPS;
/// Length of the initiator's nonce.
pub const NONCE_LEN: usize = 16;
/// Length of an X25519 public share.
pub const SHARE_LEN: usize = 32;

/// Identifies one negotiation on every GE of its path (random, chosen by the initiator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NegotiationId(pub u64);

impl fmt::Display for NegotiationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Initiator -> destination: flow, credential, ephemeral share, nonce.
    Dde,
    /// Destination -> initiator: each GE's credential, proof and authenticator.
    Rgi,
    /// Initiator -> destination: the decision for every GE on the path.
    Mpit,
    /// Destination -> initiator: confirmation (or refusal) of the MPIT.
    Cdn,
    /// Any GE -> initiator: a signed refusal to continue.
    Nak,
    /// Responder -> initiator, direct path only: under load, a stateless
    /// cookie the initiator must echo in its DDE before the responder does
    /// any signature or X25519 work.
    Cookie,
    /// Opener -> flow destination: a new flow on a pair epoch, without a
    /// negotiation (docs/PROTOCOL.md, "Fast open").
    Fop,
    /// Receiving end -> opener: the fast-opened flow is installed.
    Fok,
    /// Either end of a pair epoch -> the other: flows this GE evicted from
    /// its full PIT, so the other end drops them too (docs/PROTOCOL.md,
    /// "Eviction notice").
    Evict,
}

impl MessageType {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            Self::Dde => 1,
            Self::Rgi => 2,
            Self::Mpit => 3,
            Self::Cdn => 4,
            Self::Nak => 5,
            Self::Cookie => 6,
            Self::Fop => 7,
            Self::Fok => 8,
            Self::Evict => 9,
        }
    }

    /// Parses the wire code.
    pub fn from_code(code: u8) -> Result<Self> {
        Ok(match code {
            1 => Self::Dde,
            2 => Self::Rgi,
            3 => Self::Mpit,
            4 => Self::Cdn,
            5 => Self::Nak,
            6 => Self::Cookie,
            7 => Self::Fop,
            8 => Self::Fok,
            9 => Self::Evict,
            other => return Err(Error::UnknownMessage(other)),
        })
    }

    /// Whether a gateway on the path takes this message in transit (a
    /// DDE to join the negotiation, a FOP to refuse it) rather than
    /// forwarding it: its kernel routes these into its TUN.
    pub const fn intercepted_in_transit(self) -> bool {
        matches!(self, Self::Dde | Self::Fop)
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Dde => "DDE",
            Self::Rgi => "RGI",
            Self::Mpit => "MPIT",
            Self::Cdn => "CDN",
            Self::Nak => "NAK",
            Self::Cookie => "COOKIE",
            Self::Fop => "FOP",
            Self::Fok => "FOK",
            Self::Evict => "EVICT",
        }
    }
}

/// Reads only the header: the cheap first check a node makes on a datagram
/// (for example to intercept DDEs in transit and forward everything else).
pub fn peek(datagram: &[u8]) -> Result<(MessageType, NegotiationId)> {
    read_header(&mut Reader::new(datagram))
}

/// FOP: opens a flow on a pair epoch (docs/PROTOCOL.md, "Fast open"). It
/// travels like a DDE, to the flow's destination, so a gateway on the
/// route sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fop {
    /// The fast open's id (drawn by the opener; the FOK and a NAK carry it).
    pub id: NegotiationId,
    /// The pair epoch.
    pub epoch: [u8; EPOCH_ID_LEN],
    /// The flow's index among the opener's flows of this epoch.
    pub index: u32,
    /// Milliseconds since the epoch began, by the opener's clock: the
    /// receiver refuses a FOP whose age differs from its own by more than
    /// a few seconds (one withheld and delivered late).
    pub age_ms: u32,
    /// The flow, in the direction of its first packet.
    pub flow: FlowId,
    /// MAC under the epoch's auth key (see [`crate::dprp`]'s epoch module).
    pub tag: [u8; MAC_LEN],
    /// The flow's first packet, if it rides inside (docs/PROTOCOL.md, "The
    /// first packet in its FOP"). Outside the tag: PCCOM authenticates the
    /// packet, and only the two ends can derive the flow's keys.
    pub first: Option<FirstPacket>,
}

/// The longest first packet a FOP carries.
pub const MAX_FIRST_PACKET: usize = 1500;

/// A flow's first packet inside its FOP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstPacket {
    /// The opener steers the flow's inbound native packets already, so the
    /// receiver may answer natively at once (the flags byte's bit 0).
    pub steered: bool,
    /// The packet, sealed under the flow's keys as it would travel as data
    /// (1 to [`MAX_FIRST_PACKET`] bytes).
    pub packet: Vec<u8>,
}

/// What a first packet adds to its FOP besides the packet itself: the
/// flags byte and the two-byte length.
pub const FIRST_PACKET_OVERHEAD: usize = 3;

/// The flags byte's bit for [`FirstPacket::steered`]; the others are 0.
const FIRST_STEERED: u8 = 0x01;

/// FOK: the receiving end installed a fast-opened flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fok {
    /// The FOP's id.
    pub id: NegotiationId,
    /// The pair epoch.
    pub epoch: [u8; EPOCH_ID_LEN],
    /// The FOP's index.
    pub index: u32,
    /// MAC under the epoch's auth key.
    pub tag: [u8; MAC_LEN],
}

/// The most flows one EVICT lists.
pub const MAX_EVICTED: usize = 64;

/// One flow an EVICT lists: the flow as keyed in the PIT and the id of
/// the negotiation or fast open that installed the entry evicted (so a
/// notice never removes an entry installed again since).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EvictedFlow {
    /// The negotiation or fast open whose entry was evicted.
    pub opening: NegotiationId,
    /// The flow, in the direction of its first packet.
    pub flow: FlowId,
}

/// EVICT: flows the sender evicted from its full PIT, all of them opened
/// with the receiver (docs/PROTOCOL.md, "Eviction notice"). Authenticated
/// under a pair epoch of the two GEs, like a FOP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evict {
    /// Drawn by the sender; names the notice in traces only.
    pub id: NegotiationId,
    /// The pair epoch whose auth key made the tag.
    pub epoch: [u8; EPOCH_ID_LEN],
    /// The flows, 1 to [`MAX_EVICTED`].
    pub flows: Vec<EvictedFlow>,
    /// MAC under the epoch's auth key, binding the sender.
    pub tag: [u8; MAC_LEN],
}

impl Evict {
    /// The bytes the tag covers: header, epoch, the flows. Fails when the
    /// list is empty or longer than [`MAX_EVICTED`].
    pub fn core(&self) -> Result<Vec<u8>> {
        if self.flows.is_empty() {
            return Err(Error::invalid("EVICT flows", "an empty list"));
        }
        check_count(self.flows.len(), MAX_EVICTED, "EVICT flows")?;
        let mut out = Vec::with_capacity(32 + 24 * self.flows.len());
        let mut w = Writer::new(&mut out);
        write_header(&mut w, MessageType::Evict, self.id);
        w.bytes(&self.epoch);
        w.u8(self.flows.len() as u8);
        for f in &self.flows {
            w.u64(f.opening.0);
            f.flow.encode(&mut w);
        }
        Ok(out)
    }

    fn decode_body(id: NegotiationId, r: &mut Reader<'_>) -> Result<Self> {
        let epoch = r.array("EVICT epoch")?;
        let n = usize::from(r.u8("EVICT count")?);
        if n == 0 {
            return Err(Error::invalid("EVICT flows", "an empty list"));
        }
        check_count(n, MAX_EVICTED, "EVICT flows")?;
        let mut flows = Vec::with_capacity(n);
        for _ in 0..n {
            flows.push(EvictedFlow {
                opening: NegotiationId(r.u64("EVICT opening")?),
                flow: FlowId::decode(r)?,
            });
        }
        Ok(Self {
            id,
            epoch,
            flows,
            tag: r.array("EVICT tag")?,
        })
    }
}

impl Fop {
    /// The bytes the tag covers: header, epoch, index, flow.
    pub fn core(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let mut w = Writer::new(&mut out);
        write_header(&mut w, MessageType::Fop, self.id);
        w.bytes(&self.epoch);
        w.u32(self.index);
        w.u32(self.age_ms);
        self.flow.encode(&mut w);
        out
    }
}

impl Fok {
    /// The bytes the tag covers: header, epoch, index.
    pub fn core(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        let mut w = Writer::new(&mut out);
        write_header(&mut w, MessageType::Fok, self.id);
        w.bytes(&self.epoch);
        w.u32(self.index);
        out
    }
}

/// A credential as carried on the wire: structurally valid, not yet verified.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialBytes(Vec<u8>);

impl CredentialBytes {
    /// Wraps encoded credential bytes after checking their structure.
    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        UnverifiedCredential::decode(&bytes)?;
        Ok(Self(bytes))
    }

    /// Encodes a credential.
    pub fn from_credential(c: &Credential) -> Result<Self> {
        Ok(Self(c.encode()?))
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Decodes the credential for verification.
    pub fn parse(&self) -> Result<UnverifiedCredential> {
        UnverifiedCredential::decode(&self.0)
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        w.long_bytes(&self.0, credential::MAX_LEN, "credential")
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self> {
        Self::new(r.long_bytes(credential::MAX_LEN, "credential")?.to_vec())
    }
}

impl fmt::Debug for CredentialBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialBytes({} bytes)", self.0.len())
    }
}

/// "I hold this version of this group's key."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claim {
    /// The group.
    pub group: GroupId,
    /// The key version held.
    pub version: KeyVersion,
}

/// DDE: starts a negotiation; gateways on the way append their GE id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dde {
    /// The negotiation.
    pub id: NegotiationId,
    /// The flow, in the direction of its first packet.
    pub flow: FlowId,
    /// Fresh per negotiation; makes every transcript unique.
    pub nonce: [u8; NONCE_LEN],
    /// The initiator's ephemeral X25519 public share.
    pub share: [u8; SHARE_LEN],
    /// The initiator end GE's credential.
    pub credential: CredentialBytes,
    /// The group key versions the initiator holds (ascending group numbers).
    pub claims: Vec<Claim>,
    /// Options (binding update, NAT-f).
    pub options: Vec<DprpOption>,
    /// GE ids of the gateways that passed the DDE on, in path order.
    pub hops: Vec<GeId>,
}

/// RGI: the destination's answer, with a hop appended by every gateway on the way back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgi {
    /// The negotiation.
    pub id: NegotiationId,
    /// The DDE's hop list as the responder received it.
    pub echo: Vec<GeId>,
    /// What the responder end states.
    pub responder: ResponderPart,
    /// Group proof over the responder's transcript hash, present iff a group was chosen.
    pub proof: Option<[u8; MAC_LEN]>,
    /// MAC under the two ends' pairwise key over the responder's transcript hash.
    pub tag: [u8; MAC_LEN],
    /// One per gateway, nearest to the responder first.
    pub hops: Vec<GatewayHop>,
}

/// The responder end's part of an RGI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponderPart {
    /// The responder end GE's credential.
    pub credential: CredentialBytes,
    /// The responder's ephemeral X25519 public share.
    pub share: [u8; SHARE_LEN],
    /// The group key versions the responder holds (ascending group numbers).
    pub claims: Vec<Claim>,
    /// The lowest group both ends hold a key for, and the version to use.
    pub chosen: Option<Claim>,
    /// Options.
    pub options: Vec<DprpOption>,
}

/// A gateway's RGI hop: who it is, and its signature over the transcript so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayHop {
    /// The gateway's credential.
    pub credential: CredentialBytes,
    /// Ed25519 signature by the gateway's node key.
    pub signature: [u8; SIGNATURE_LEN],
}

/// One GE's entry in an MPIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopDecision {
    /// The GE.
    pub ge: GeId,
    /// Its action.
    pub action: Action,
    /// The key version, present iff the action is `Protect`.
    pub key_version: Option<KeyVersion>,
}

/// MPIT: the initiator's decision for every GE on the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mpit {
    /// The negotiation.
    pub id: NegotiationId,
    /// One entry per GE, initiator end first, responder end last.
    pub decisions: Vec<HopDecision>,
    /// Options.
    pub options: Vec<DprpOption>,
    /// MAC under the two ends' pairwise key.
    pub tag: [u8; MAC_LEN],
    /// The initiator's group proof, present iff the flow is protected.
    pub proof: Option<[u8; MAC_LEN]>,
    /// The initiator's signature, present iff gateways are on the path.
    pub signature: Option<[u8; SIGNATURE_LEN]>,
}

/// Why a GE refuses to continue a negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefuseCode {
    /// The initiator's credential is expired or revoked.
    CredentialRejected,
    /// The MPIT does not follow the decision rules.
    DecisionMismatch,
    /// The refusing GE does not hold the key version the flow needs.
    KeyUnavailable,
    /// The initiator's group proof did not verify.
    BadProof,
    /// The path is longer than [`MAX_HOPS`] gateways, or loops.
    HopLimit,
    /// The flow's source is not covered by the initiator's credential (its
    /// overlay address or a prefix it names): the initiator spoke for an
    /// address it does not own.
    NotOwner,
    /// NAT-f: the host the DDE asks for is not one this gateway fronts, or
    /// its credential does not cover the host's address.
    UnknownHost,
    /// NAT-f: the initiator holds the key of none of the host's groups
    /// (the host is closed).
    NotInHostGroup,
    /// NAT-f: no port is free in the gateway's reservation range.
    NoPort,
    /// Fast open: a gateway sits between the two ends and was not part of
    /// the pair epoch's negotiation: the flow must be negotiated.
    GatewayOnPath,
    /// Fast open: the receiving end knows no such pair epoch (it restarted,
    /// or the epoch ended there): the flow must be negotiated.
    UnknownEpoch,
}

impl RefuseCode {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            Self::CredentialRejected => 1,
            Self::DecisionMismatch => 2,
            Self::KeyUnavailable => 3,
            Self::BadProof => 4,
            Self::HopLimit => 5,
            Self::NotOwner => 6,
            Self::UnknownHost => 7,
            Self::NotInHostGroup => 8,
            Self::NoPort => 9,
            Self::GatewayOnPath => 10,
            Self::UnknownEpoch => 11,
        }
    }

    /// Parses the wire code.
    pub fn from_code(code: u8) -> Result<Self> {
        Ok(match code {
            1 => Self::CredentialRejected,
            2 => Self::DecisionMismatch,
            3 => Self::KeyUnavailable,
            4 => Self::BadProof,
            5 => Self::HopLimit,
            6 => Self::NotOwner,
            7 => Self::UnknownHost,
            8 => Self::NotInHostGroup,
            9 => Self::NoPort,
            10 => Self::GatewayOnPath,
            11 => Self::UnknownEpoch,
            _ => return Err(Error::invalid("refusal code", "unknown")),
        })
    }
}

/// The outcome a CDN reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CdnStatus {
    /// The responder accepted the MPIT; entries are final.
    Confirmed,
    /// The responder refused the MPIT.
    Refused(RefuseCode),
}

/// CDN: the destination confirms (or refuses) the MPIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cdn {
    /// The negotiation.
    pub id: NegotiationId,
    /// Confirmed or refused.
    pub status: CdnStatus,
    /// Options.
    pub options: Vec<DprpOption>,
    /// MAC under the two ends' pairwise key.
    pub tag: [u8; MAC_LEN],
    /// The responder's signature, present iff gateways are on the path.
    pub signature: Option<[u8; SIGNATURE_LEN]>,
}

/// NAK: a GE on the path refuses the DDE, signed so the initiator can fail fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nak {
    /// The negotiation.
    pub id: NegotiationId,
    /// Why.
    pub code: RefuseCode,
    /// The refusing GE's credential.
    pub credential: CredentialBytes,
    /// Its signature over the DDE hash and this message's core.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Length of a cookie and of its binder.
pub const COOKIE_LEN: usize = 16;

/// COOKIE: a loaded responder asks the initiator to prove it receives at its
/// source address before any public-key work is spent on its DDE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookie {
    /// The negotiation (the DDE's id).
    pub id: NegotiationId,
    /// A MAC over the DDE's source address and id under the responder's
    /// rotating secret; the initiator echoes it in a DDE option.
    pub cookie: [u8; COOKIE_LEN],
    /// A MAC over the id and the cookie keyed by the DDE's nonce: only who
    /// saw the DDE can make a cookie its initiator accepts.
    pub binder: [u8; COOKIE_LEN],
}

/// Any DPRP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Dde`].
    Dde(Dde),
    /// See [`Rgi`].
    Rgi(Rgi),
    /// See [`Mpit`].
    Mpit(Mpit),
    /// See [`Cdn`].
    Cdn(Cdn),
    /// See [`Nak`].
    Nak(Nak),
    /// See [`Cookie`].
    Cookie(Cookie),
    /// See [`Fop`].
    Fop(Fop),
    /// See [`Fok`].
    Fok(Fok),
    /// See [`Evict`].
    Evict(Evict),
}

impl Message {
    /// Decodes one whole datagram. Never panics; every malformed input is an [`Error`].
    pub fn decode(buf: &[u8]) -> Result<Self> {
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(Error::TooLarge {
                what: "DPRP message",
                len: buf.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let mut r = Reader::new(buf);
        let (kind, id) = read_header(&mut r)?;
        let msg = match kind {
            MessageType::Dde => Self::Dde(Dde::decode_body(id, &mut r)?),
            MessageType::Rgi => Self::Rgi(Rgi::decode_body(id, &mut r)?),
            MessageType::Mpit => Self::Mpit(Mpit::decode_body(id, &mut r)?),
            MessageType::Cdn => Self::Cdn(Cdn::decode_body(id, &mut r)?),
            MessageType::Nak => Self::Nak(Nak::decode_body(id, &mut r)?),
            MessageType::Cookie => Self::Cookie(Cookie {
                id,
                cookie: r.array("COOKIE cookie")?,
                binder: r.array("COOKIE binder")?,
            }),
            MessageType::Fop => Self::Fop(Fop {
                id,
                epoch: r.array("FOP epoch")?,
                index: r.u32("FOP index")?,
                age_ms: r.u32("FOP age")?,
                flow: FlowId::decode(&mut r)?,
                tag: r.array("FOP tag")?,
                first: decode_first(&mut r)?,
            }),
            MessageType::Fok => Self::Fok(Fok {
                id,
                epoch: r.array("FOK epoch")?,
                index: r.u32("FOK index")?,
                tag: r.array("FOK tag")?,
            }),
            MessageType::Evict => Self::Evict(Evict::decode_body(id, &mut r)?),
        };
        r.finish(kind.name())?;
        Ok(msg)
    }

    /// Encodes the message; fails if a field breaks a limit or the result
    /// exceeds [`MAX_MESSAGE_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        match self {
            Self::Dde(m) => {
                m.encode_core(&mut out)?;
                encode_ids(&mut Writer::new(&mut out), &m.hops, "DDE hops")?;
            }
            Self::Rgi(m) => {
                m.encode_core(&mut out)?;
                let mut w = Writer::new(&mut out);
                if let Some(p) = &m.proof {
                    w.bytes(p);
                }
                w.bytes(&m.tag);
                check_count(m.hops.len(), MAX_HOPS, "RGI hops")?;
                w.u8(m.hops.len() as u8);
                for hop in &m.hops {
                    hop.credential.encode(&mut w)?;
                    w.bytes(&hop.signature);
                }
            }
            Self::Mpit(m) => {
                m.encode_core(&mut out)?;
                let mut w = Writer::new(&mut out);
                w.bytes(&m.tag);
                put_optional(&mut w, m.proof.as_ref().map(|p| &p[..]));
                put_optional(&mut w, m.signature.as_ref().map(|s| &s[..]));
            }
            Self::Cdn(m) => {
                m.encode_core(&mut out)?;
                let mut w = Writer::new(&mut out);
                w.bytes(&m.tag);
                put_optional(&mut w, m.signature.as_ref().map(|s| &s[..]));
            }
            Self::Nak(m) => {
                m.encode_core(&mut out)?;
                Writer::new(&mut out).bytes(&m.signature);
            }
            Self::Cookie(m) => {
                let mut w = Writer::new(&mut out);
                write_header(&mut w, MessageType::Cookie, m.id);
                w.bytes(&m.cookie);
                w.bytes(&m.binder);
            }
            Self::Fop(m) => {
                out = m.core();
                let mut w = Writer::new(&mut out);
                w.bytes(&m.tag);
                // Absent, not empty: a FOP without one is what an older
                // node sends and takes.
                if let Some(f) = &m.first {
                    if f.packet.is_empty() {
                        return Err(Error::invalid("FOP first packet", "empty"));
                    }
                    w.u8(if f.steered { FIRST_STEERED } else { 0 });
                    w.long_bytes(&f.packet, MAX_FIRST_PACKET, "FOP first packet")?;
                }
            }
            Self::Fok(m) => {
                out = m.core();
                Writer::new(&mut out).bytes(&m.tag);
            }
            Self::Evict(m) => {
                out = m.core()?;
                Writer::new(&mut out).bytes(&m.tag);
            }
        }
        if out.len() > MAX_MESSAGE_LEN {
            return Err(Error::TooLarge {
                what: "DPRP message",
                len: out.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        Ok(out)
    }

    /// The negotiation the message belongs to.
    pub fn id(&self) -> NegotiationId {
        match self {
            Self::Dde(m) => m.id,
            Self::Rgi(m) => m.id,
            Self::Mpit(m) => m.id,
            Self::Cdn(m) => m.id,
            Self::Nak(m) => m.id,
            Self::Cookie(m) => m.id,
            Self::Fop(m) => m.id,
            Self::Fok(m) => m.id,
            Self::Evict(m) => m.id,
        }
    }

    /// The message type.
    pub fn kind(&self) -> MessageType {
        match self {
            Self::Dde(_) => MessageType::Dde,
            Self::Rgi(_) => MessageType::Rgi,
            Self::Mpit(_) => MessageType::Mpit,
            Self::Cdn(_) => MessageType::Cdn,
            Self::Nak(_) => MessageType::Nak,
            Self::Cookie(_) => MessageType::Cookie,
            Self::Fop(_) => MessageType::Fop,
            Self::Fok(_) => MessageType::Fok,
            Self::Evict(_) => MessageType::Evict,
        }
    }
}

impl Dde {
    /// The bytes hashed into the transcript: everything but the hop list.
    pub fn core(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(256);
        self.encode_core(&mut out)?;
        Ok(out)
    }

    fn encode_core(&self, out: &mut Vec<u8>) -> Result<()> {
        let mut w = Writer::new(out);
        write_header(&mut w, MessageType::Dde, self.id);
        self.flow.encode(&mut w);
        w.bytes(&self.nonce);
        w.bytes(&self.share);
        self.credential.encode(&mut w)?;
        encode_claims(&mut w, &self.claims)?;
        encode_options(&mut w, &self.options)
    }

    fn decode_body(id: NegotiationId, r: &mut Reader<'_>) -> Result<Self> {
        Ok(Self {
            id,
            flow: FlowId::decode(r)?,
            nonce: r.array("DDE nonce")?,
            share: r.array("DDE share")?,
            credential: CredentialBytes::decode(r)?,
            claims: decode_claims(r)?,
            options: decode_options(r)?,
            hops: decode_ids(r, "DDE hops")?,
        })
    }
}

impl Rgi {
    /// The bytes hashed into the responder's transcript: header, echo, responder part.
    pub fn core(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        self.encode_core(&mut out)?;
        Ok(out)
    }

    fn encode_core(&self, out: &mut Vec<u8>) -> Result<()> {
        if self.proof.is_some() != self.responder.chosen.is_some() {
            return Err(Error::invalid(
                "RGI proof",
                "present exactly when a group is chosen",
            ));
        }
        let mut w = Writer::new(out);
        write_header(&mut w, MessageType::Rgi, self.id);
        encode_ids(&mut w, &self.echo, "RGI echo")?;
        let p = &self.responder;
        p.credential.encode(&mut w)?;
        w.bytes(&p.share);
        encode_claims(&mut w, &p.claims)?;
        match p.chosen {
            None => w.u8(0),
            Some(c) => {
                w.u8(1);
                w.u32(c.group.0);
                w.u32(c.version.0);
            }
        }
        encode_options(&mut w, &p.options)
    }

    fn decode_body(id: NegotiationId, r: &mut Reader<'_>) -> Result<Self> {
        let echo = decode_ids(r, "RGI echo")?;
        let credential = CredentialBytes::decode(r)?;
        let share = r.array("RGI share")?;
        let claims = decode_claims(r)?;
        let chosen = match r.u8("RGI chosen flag")? {
            0 => None,
            1 => Some(Claim {
                group: GroupId(r.u32("RGI chosen group")?),
                version: KeyVersion(r.u32("RGI chosen version")?),
            }),
            _ => return Err(Error::invalid("RGI chosen flag", "must be 0 or 1")),
        };
        let options = decode_options(r)?;
        let proof = match chosen {
            Some(_) => Some(r.array("RGI proof")?),
            None => None,
        };
        let tag = r.array("RGI tag")?;
        let n = usize::from(r.u8("RGI hop count")?);
        check_count(n, MAX_HOPS, "RGI hops")?;
        let mut hops = Vec::with_capacity(n);
        for _ in 0..n {
            hops.push(GatewayHop {
                credential: CredentialBytes::decode(r)?,
                signature: r.array("RGI hop signature")?,
            });
        }
        Ok(Self {
            id,
            echo,
            responder: ResponderPart {
                credential,
                share,
                claims,
                chosen,
                options,
            },
            proof,
            tag,
            hops,
        })
    }
}

impl Mpit {
    /// The bytes hashed into the transcript: header, decisions, options.
    pub fn core(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(128);
        self.encode_core(&mut out)?;
        Ok(out)
    }

    fn encode_core(&self, out: &mut Vec<u8>) -> Result<()> {
        let n = self.decisions.len();
        if !(2..=MAX_PATH_LEN).contains(&n) {
            return Err(Error::invalid("MPIT decisions", "need 2 to 10 entries"));
        }
        let mut w = Writer::new(out);
        write_header(&mut w, MessageType::Mpit, self.id);
        w.u8(n as u8);
        for d in &self.decisions {
            w.u32(d.ge.0);
            w.u8(d.action.code());
            match (d.action, d.key_version) {
                (Action::Protect(g), Some(v)) => {
                    w.u32(g.0);
                    w.u32(v.0);
                }
                (Action::Protect(_), None) | (_, Some(_)) => {
                    return Err(Error::invalid(
                        "MPIT key version",
                        "present exactly for protect",
                    ));
                }
                _ => {}
            }
        }
        encode_options(&mut w, &self.options)
    }

    fn decode_body(id: NegotiationId, r: &mut Reader<'_>) -> Result<Self> {
        let n = usize::from(r.u8("MPIT decision count")?);
        if !(2..=MAX_PATH_LEN).contains(&n) {
            return Err(Error::invalid("MPIT decisions", "need 2 to 10 entries"));
        }
        let mut decisions = Vec::with_capacity(n);
        for _ in 0..n {
            let ge = GeId(r.u32("MPIT GE id")?);
            let (action, key_version) = match r.u8("MPIT action")? {
                1 => {
                    let g = GroupId(r.u32("MPIT group")?);
                    let v = KeyVersion(r.u32("MPIT key version")?);
                    (Action::Protect(g), Some(v))
                }
                2 => (Action::Relay, None),
                3 => (Action::Pass, None),
                4 => (Action::Drop, None),
                _ => return Err(Error::invalid("MPIT action", "must be 1 to 4")),
            };
            decisions.push(HopDecision {
                ge,
                action,
                key_version,
            });
        }
        Ok(Self {
            id,
            decisions,
            options: decode_options(r)?,
            tag: r.array("MPIT tag")?,
            proof: take_optional(r, "MPIT proof")?,
            signature: take_optional(r, "MPIT signature")?,
        })
    }
}

impl Cdn {
    /// The bytes hashed into the transcript: header, status, options.
    pub fn core(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64);
        self.encode_core(&mut out)?;
        Ok(out)
    }

    fn encode_core(&self, out: &mut Vec<u8>) -> Result<()> {
        let mut w = Writer::new(out);
        write_header(&mut w, MessageType::Cdn, self.id);
        w.u8(match self.status {
            CdnStatus::Confirmed => 0,
            CdnStatus::Refused(c) => c.code(),
        });
        encode_options(&mut w, &self.options)
    }

    fn decode_body(id: NegotiationId, r: &mut Reader<'_>) -> Result<Self> {
        let status = match r.u8("CDN status")? {
            0 => CdnStatus::Confirmed,
            c => CdnStatus::Refused(RefuseCode::from_code(c)?),
        };
        Ok(Self {
            id,
            status,
            options: decode_options(r)?,
            tag: r.array("CDN tag")?,
            signature: take_optional(r, "CDN signature")?,
        })
    }
}

impl Nak {
    /// The bytes the signature covers (after the DDE hash): header, code, credential.
    pub fn core(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(256);
        self.encode_core(&mut out)?;
        Ok(out)
    }

    fn encode_core(&self, out: &mut Vec<u8>) -> Result<()> {
        let mut w = Writer::new(out);
        write_header(&mut w, MessageType::Nak, self.id);
        w.u8(self.code.code());
        self.credential.encode(&mut w)
    }

    fn decode_body(id: NegotiationId, r: &mut Reader<'_>) -> Result<Self> {
        Ok(Self {
            id,
            code: RefuseCode::from_code(r.u8("NAK code")?)?,
            credential: CredentialBytes::decode(r)?,
            signature: r.array("NAK signature")?,
        })
    }
}

fn write_header(w: &mut Writer<'_>, kind: MessageType, id: NegotiationId) {
    w.u8(VERSION);
    w.u8(kind.code());
    w.u64(id.0);
}

fn read_header(r: &mut Reader<'_>) -> Result<(MessageType, NegotiationId)> {
    let version = r.u8("DPRP version")?;
    if version != VERSION {
        return Err(Error::UnsupportedVersion {
            what: "DPRP",
            version,
        });
    }
    let kind = MessageType::from_code(r.u8("DPRP message type")?)?;
    let id = NegotiationId(r.u64("negotiation id")?);
    Ok((kind, id))
}

fn check_count(n: usize, max: usize, what: &'static str) -> Result<()> {
    if n > max {
        return Err(Error::TooLarge { what, len: n, max });
    }
    Ok(())
}

fn encode_ids(w: &mut Writer<'_>, ids: &[GeId], what: &'static str) -> Result<()> {
    check_count(ids.len(), MAX_HOPS, what)?;
    w.u8(ids.len() as u8);
    ids.iter().for_each(|id| w.u32(id.0));
    Ok(())
}

/// A FOP's first packet: nothing left (none), or a flags byte, a two-byte
/// length (not zero) and the packet.
fn decode_first(r: &mut Reader<'_>) -> Result<Option<FirstPacket>> {
    if r.remaining() == 0 {
        return Ok(None);
    }
    let flags = r.u8("FOP first packet flags")?;
    if flags & !FIRST_STEERED != 0 {
        return Err(Error::invalid("FOP first packet flags", "unknown bits set"));
    }
    let packet = r.long_bytes(MAX_FIRST_PACKET, "FOP first packet")?;
    if packet.is_empty() {
        return Err(Error::invalid(
            "FOP first packet",
            "empty (a FOP without one ends at its tag)",
        ));
    }
    Ok(Some(FirstPacket {
        steered: flags & FIRST_STEERED != 0,
        packet: packet.to_vec(),
    }))
}

fn decode_ids(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<GeId>> {
    let n = usize::from(r.u8(what)?);
    check_count(n, MAX_HOPS, what)?;
    (0..n).map(|_| Ok(GeId(r.u32(what)?))).collect()
}

fn encode_claims(w: &mut Writer<'_>, claims: &[Claim]) -> Result<()> {
    check_count(claims.len(), MAX_CLAIMS, "claims")?;
    if claims.windows(2).any(|p| p[0].group >= p[1].group) {
        return Err(Error::invalid(
            "claims",
            "groups must be strictly ascending",
        ));
    }
    w.u8(claims.len() as u8);
    for c in claims {
        w.u32(c.group.0);
        w.u32(c.version.0);
    }
    Ok(())
}

fn decode_claims(r: &mut Reader<'_>) -> Result<Vec<Claim>> {
    let n = usize::from(r.u8("claim count")?);
    check_count(n, MAX_CLAIMS, "claims")?;
    let mut out: Vec<Claim> = Vec::with_capacity(n);
    for _ in 0..n {
        let c = Claim {
            group: GroupId(r.u32("claim group")?),
            version: KeyVersion(r.u32("claim version")?),
        };
        // One canonical encoding: strictly ascending, no duplicates.
        if out.last().is_some_and(|l| l.group >= c.group) {
            return Err(Error::invalid(
                "claims",
                "groups must be strictly ascending",
            ));
        }
        out.push(c);
    }
    Ok(out)
}

fn put_optional(w: &mut Writer<'_>, v: Option<&[u8]>) {
    match v {
        None => w.u8(0),
        Some(b) => {
            w.u8(1);
            w.bytes(b);
        }
    }
}

fn take_optional<const N: usize>(
    r: &mut Reader<'_>,
    what: &'static str,
) -> Result<Option<[u8; N]>> {
    match r.u8(what)? {
        0 => Ok(None),
        1 => Ok(Some(r.array(what)?)),
        _ => Err(Error::invalid(what, "presence flag must be 0 or 1")),
    }
}
