//! The control protocol between nodes and the GMS (carried on QUIC streams).
//!
//! Every message is one frame:
//!
//! ```text
//! version u8 (=1) | type u8 | length u32 | body [length]      (big-endian)
//! ```
//!
//! A body is at most [`MAX_BODY`] bytes; a receiver refuses a larger length
//! before reading it, and refuses unknown versions, unknown types, truncated
//! or over-long bodies and out-of-range counts with a typed error. Client
//! messages have types below 0x80, server messages 0x80 and above. The field
//! layouts are documented on each type and in docs/GMS.md.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use fpn_proto::credential;
use fpn_proto::ge::{GeId, GroupId, MAX_GROUPS, MAX_NAME_LEN};
use fpn_proto::keys::{GroupKey, KeyVersion};
use fpn_proto::wire::{Reader, Writer};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Version byte of every frame.
pub const FRAME_VERSION: u8 = 1;
/// Bytes of the frame header.
pub const HEADER_LEN: usize = 6;
/// Largest body a frame may carry.
pub const MAX_BODY: usize = 256 * 1024;
/// Largest body an enrollment stream may carry: the enrollment request
/// (token id 16, secret 32, node key 32, proof 64 bytes). The stream is
/// unauthenticated, so the server reads no more than that.
pub const MAX_ENROLL_BODY: usize = 16 + 32 + 32 + 64;
/// Most addresses a node may report.
pub const MAX_ADDRS: usize = 16;
/// Longest software version a node may send in its hello.
pub const MAX_VERSION_LEN: usize = 64;
/// Most key versions per group in one message (current and previous, with room).
pub const MAX_KEYS_PER_GROUP: usize = 4;
/// Most revoked serials in one message.
pub const MAX_REVOKED: usize = 30_000;
/// Largest certificate carried.
pub const MAX_CERT: usize = 8 * 1024;
/// Longest refusal reason.
pub const MAX_REASON: usize = 255;
/// Most GEs in one directory listing page (a page with every GE at
/// [`MAX_ADDRS`] addresses stays below [`MAX_BODY`]).
pub const MAX_LISTING: usize = 512;
/// Most GEs one [`ClientMsg::DirectoryForget`] names.
pub const MAX_FORGET: usize = 128;

/// Most hosts behind gateways a network may define: the whole list goes
/// in one [`ServerMsg::Hosts`] frame, which stays below [`MAX_BODY`] even
/// with every host at its limits (checked by a test).
pub const MAX_HOSTS: usize = 256;
/// Most LAN addresses of one host behind a gateway.
pub const MAX_HOST_LAN: usize = 8;

/// QUIC application close codes the GMS uses.
pub mod close {
    /// Normal end of a connection (enrollment done, client leaving).
    pub const NORMAL: u32 = 0;
    /// The certificate is unknown, revoked or superseded: do not retry.
    pub const REFUSED: u32 = 1;
    /// A malformed or oversized message was received.
    pub const PROTOCOL: u32 = 2;
    /// A newer session of the same GE replaced this one.
    pub const SUPERSEDED: u32 = 3;
    /// The GE was revoked or removed while connected: do not retry.
    pub const REVOKED: u32 = 4;
    /// The node did not read its pushes fast enough; reconnecting gets full state.
    pub const SLOW: u32 = 5;
    /// The GMS is shutting down. The reason may end with
    /// `(reconnect spread N ms)` ([`shutdown_reason`]): a node then comes
    /// back at a random moment within N ms, so that a large fleet does not
    /// reconnect all at once when the GMS restarts.
    pub const SHUTDOWN: u32 = 6;
    /// The peer took too long.
    pub const TIMEOUT: u32 = 7;
}

/// Reconnections per second a GMS takes in comfortably (a session's
/// handshake and first requests cost it about 1.6 ms of CPU on the
/// 2-core reference machine, docs/BENCHMARKS.md): the spread of a
/// restart is the sessions divided by this.
pub const RECONNECTS_PER_SEC: u64 = 1_000;

/// The longest reconnect spread a GMS asks for.
pub const MAX_RECONNECT_SPREAD_MS: u64 = 30_000;

/// The close reason of [`close::SHUTDOWN`] for a GMS with `sessions` live
/// sessions: their reconnections spread over `sessions /`
/// [`RECONNECTS_PER_SEC`] seconds, at most [`MAX_RECONNECT_SPREAD_MS`].
pub fn shutdown_reason(sessions: usize) -> String {
    let ms = (sessions as u64).saturating_mul(1_000) / RECONNECTS_PER_SEC;
    format!(
        "GMS shutting down (reconnect spread {} ms)",
        ms.min(MAX_RECONNECT_SPREAD_MS)
    )
}

/// The reconnect spread a [`close::SHUTDOWN`] reason asks for (none in a
/// reason without it, e.g. from an older GMS; never more than
/// [`MAX_RECONNECT_SPREAD_MS`], whatever the reason says).
pub fn shutdown_spread(reason: &[u8]) -> Option<std::time::Duration> {
    let text = std::str::from_utf8(reason).ok()?;
    let rest = text.rsplit_once("(reconnect spread ")?.1;
    let ms: u64 = rest.strip_suffix(" ms)")?.parse().ok()?;
    Some(std::time::Duration::from_millis(
        ms.min(MAX_RECONNECT_SPREAD_MS),
    ))
}

/// Why the GMS refused a request (the `code` of [`ServerMsg::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum RefusalCode {
    /// The token id is unknown or the secret does not match.
    InvalidToken = 1,
    /// The token was used before.
    TokenUsed = 2,
    /// The token expired.
    TokenExpired = 3,
    /// The node's proof of possession of its key did not verify.
    BadProof = 4,
    /// The GE does not exist (any more).
    UnknownGe = 5,
    /// The GE is revoked.
    Revoked = 6,
    /// The request was malformed.
    Protocol = 7,
    /// The GMS failed internally (store error); retry later.
    Internal = 8,
}

impl RefusalCode {
    /// The code for a wire value (unknown values map to `Internal`).
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::InvalidToken,
            2 => Self::TokenUsed,
            3 => Self::TokenExpired,
            4 => Self::BadProof,
            5 => Self::UnknownGe,
            6 => Self::Revoked,
            7 => Self::Protocol,
            _ => Self::Internal,
        }
    }
}

/// Enrollment: the node proves the token and its key.
///
/// `token id [16] | secret [32] | node key [32] | proof [64]`, where proof is
/// the node key's Ed25519 signature over [`enroll_transcript`].
#[derive(Clone)]
pub struct EnrollRequest {
    /// The token's id.
    pub token_id: [u8; 16],
    /// The token's secret.
    pub secret: Zeroizing<[u8; 32]>,
    /// The node's Ed25519 public key.
    pub node_key: [u8; 32],
    /// Proof of possession of the node key.
    pub proof: [u8; 64],
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token_id", &hex::encode(self.token_id))
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What the node key signs at enrollment: binds the key to this token.
pub fn enroll_transcript(token_id: &[u8; 16], node_key: &[u8; 32]) -> Vec<u8> {
    let mut t = b"fpn v1 enroll\0".to_vec();
    t.extend_from_slice(token_id);
    t.extend_from_slice(node_key);
    t
}

/// Messages a node sends.
#[derive(Debug, Clone)]
pub enum ClientMsg {
    /// 0x01: enroll with a token (on a connection without client certificate).
    Enroll(EnrollRequest),
    /// 0x02: opens a session: `n u8 | n x address` (the node's local
    /// addresses), then optionally `len u8 | version` (the node's software
    /// version, shown by `ge list` and the web admin; a hello without it,
    /// from a node before it, is still a hello).
    Hello {
        /// Addresses the node reports for itself.
        reported: Vec<SocketAddr>,
        /// The node's software version ([`crate::VERSION`] of its build).
        version: Option<String>,
    },
    /// 0x03: the node's addresses changed: `n u8 | n x address`.
    ReportAddresses(Vec<SocketAddr>),
    /// 0x04: where is GE `name`: `len u8 | name`.
    DirectoryQuery(String),
    /// 0x05: list the enrolled GEs whose names sort after `after`
    /// (empty: from the start): `len u8 | after`. Answered with
    /// [`ServerMsg::DirectoryListing`]; lets a node fill its DNS stub.
    DirectoryList {
        /// The last name of the previous page.
        after: String,
    },
    /// 0x07: [`ClientMsg::DirectoryList`] that subscribes to nothing (a
    /// session on [`crate::tls::ALPN_V3`] only): the node follows only the
    /// GEs it asks about with [`ClientMsg::DirectoryQuery`]. `len u8 | after`.
    DirectoryPage {
        /// The last name of the previous page.
        after: String,
    },
    /// 0x08: the listing's digest (empty body; [`crate::tls::ALPN_V3`]).
    /// Answered with [`ServerMsg::DirectoryDigest`]: a node whose last
    /// listing had the same digest need not list again.
    DirectoryDigest,
    /// 0x09: stop telling this node about these GEs' changes
    /// (`n u8 | n x ge u32`, at most [`MAX_FORGET`];
    /// [`crate::tls::ALPN_V3`]). Answered with [`ServerMsg::Ack`].
    DirectoryForget(Vec<GeId>),
    /// 0x06: renew this node's certificate and credential (empty body).
    /// Answered with [`ServerMsg::Renewed`], or [`ServerMsg::Refused`] when
    /// the GE may not renew (revoked, removed).
    Renew,
    /// 0x20: which address does this session come from (empty body)?
    /// Answered with [`ServerMsg::Observed`]. The node runs its session on
    /// its carrier's socket, so the answer is the carrier's reflexive
    /// address (the public side of a NAT).
    Observe,
    /// 0x21: tell GE `ge u32` to connect to this node now (hole punching):
    /// the GMS pushes [`ServerMsg::ConnectNow`] with this node's candidates
    /// to `ge`'s session, at most once per [`CONNECT_NOW_INTERVAL_SECS`]
    /// per ordered pair. Answered with [`ServerMsg::ConnectNowSent`].
    ConnectNow(GeId),
}

/// The shortest interval between two [`ServerMsg::ConnectNow`] pushes the
/// GMS sends on behalf of the same asker to the same target.
pub const CONNECT_NOW_INTERVAL_SECS: u64 = 1;

/// What the GMS did with a [`ClientMsg::ConnectNow`] (`outcome u8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectNowOutcome {
    /// 0: the push was queued to the target's session.
    Sent = 0,
    /// 1: the target has no session.
    Offline = 1,
    /// 2: a push for the same pair went out less than
    /// [`CONNECT_NOW_INTERVAL_SECS`] ago.
    RateLimited = 2,
    /// 3: no such active GE (or the asker itself).
    Unknown = 3,
}

impl ConnectNowOutcome {
    fn from_u8(v: u8) -> Result<Self> {
        Ok(match v {
            0 => Self::Sent,
            1 => Self::Offline,
            2 => Self::RateLimited,
            3 => Self::Unknown,
            _ => {
                return Err(
                    fpn_proto::Error::invalid("connect-now outcome", "must be 0..=3").into(),
                );
            }
        })
    }
}

/// One GE in a directory listing:
/// `name | ge u32 | overlay [4] | online u8 | seen (0, or 1 + address) | reported addrs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGe {
    /// The GE's name (a label of the zone).
    pub name: String,
    /// Its id.
    pub ge: GeId,
    /// Its overlay address.
    pub overlay: std::net::Ipv4Addr,
    /// True while it has a session.
    pub online: bool,
    /// The address the GMS sees its session come from.
    pub seen: Option<SocketAddr>,
    /// The addresses it reports.
    pub reported: Vec<SocketAddr>,
}

/// Enrollment result: `zone | CA public key [32] | CA cert | cert | credential`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// The network's zone.
    pub zone: String,
    /// The CA's Ed25519 public key (verifies credentials).
    pub ca_public: [u8; 32],
    /// The CA certificate, DER.
    pub ca_cert: Vec<u8>,
    /// The node's certificate, DER.
    pub cert: Vec<u8>,
    /// The node's credential (binary form; holds its GE info).
    pub credential: Vec<u8>,
}

/// A renewal: `server time u64 | cert | credential`: a fresh certificate and
/// credential for the same node key and GE info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The GMS's clock at issue, unix seconds (the node times its next
    /// renewal from it, whatever its own clock says).
    pub server_time: u64,
    /// The node's new certificate, DER.
    pub cert: Vec<u8>,
    /// The node's new credential (binary form).
    pub credential: Vec<u8>,
}

/// All valid versions of one group's key: `group u32 | n u8 | n x (version u32 | expires u64 (0 = current) | key [32])`.
///
/// A node replaces everything it holds for the group with this set.
#[derive(Debug, Clone)]
pub struct GroupKeys {
    /// The group.
    pub group: GroupId,
    /// The valid versions, newest first.
    pub keys: Vec<WireKey>,
}

/// One key version on the wire.
#[derive(Debug, Clone)]
pub struct WireKey {
    /// The version.
    pub version: KeyVersion,
    /// `None` for the current version, else the end of its grace (unix seconds).
    pub expires_at: Option<u64>,
    /// The key.
    pub key: GroupKey,
}

/// Session start: `server time u64 | credential | n u8 | n x GroupKeys | m u16 | m x serial u64`.
#[derive(Debug, Clone)]
pub struct SessionInit {
    /// The GMS's clock, unix seconds (nodes can spot skew).
    pub server_time: u64,
    /// The node's current credential (holds its GE info).
    pub credential: Vec<u8>,
    /// Keys of each of its groups.
    pub groups: Vec<GroupKeys>,
    /// Revoked certificate and credential serials.
    pub revoked: Vec<u64>,
}

/// Where a GE can be reached: `credential | online u8 | seen (0 | 1 address) | n u8 | n x address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// The GE's credential (its info, verifiable with the CA key); empty when not enrolled.
    pub credential: Vec<u8>,
    /// True while it has a session.
    pub online: bool,
    /// The address the GMS sees its session come from.
    pub seen: Option<SocketAddr>,
    /// The addresses it reports.
    pub reported: Vec<SocketAddr>,
}

/// A host behind a gateway as the directory gives it to nodes:
/// `name | via u32 | via name | n u8 | n x ip | m u8 | m x group u32`.
///
/// The node's DNS stub answers `name` and reaches the host through the
/// gateway GE `via` (NAT-f), which negotiates for it with its own keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// The host's name (a label of the zone).
    pub name: String,
    /// The gateway's GE id.
    pub via: GeId,
    /// The gateway's name.
    pub via_name: String,
    /// The host's addresses on the gateway's LAN.
    pub lan: Vec<IpAddr>,
    /// The groups whose members may reach it.
    pub groups: Vec<GroupId>,
}

/// Longest relay address (`host:port`) in [`ServerMsg::Relay`].
pub const MAX_RELAY_ADDR: usize = 255;

/// Messages the GMS sends.
#[derive(Debug, Clone)]
pub enum ServerMsg {
    /// 0x81: enrollment succeeded.
    Enrolled(Enrolled),
    /// 0x82: `code u16 | reason len u8 + UTF-8`.
    Refused {
        /// Machine-readable reason.
        code: RefusalCode,
        /// Text for the operator.
        reason: String,
    },
    /// 0x83: session start.
    SessionInit(SessionInit),
    /// 0x84: a group's valid keys changed (rotation, grace end, joined the group).
    GroupKeys(GroupKeys),
    /// 0x85: the node's GE info changed: its new credential (`len u16 + bytes`).
    GeInfo(Vec<u8>),
    /// 0x86: serials revoked: `ge u32 | n u16 | n x serial u64`.
    Revoked {
        /// The GE they belonged to.
        ge: GeId,
        /// The serials.
        serials: Vec<u64>,
    },
    /// 0x87: a GE the node asked about changed: `name | present u8 | entry`.
    DirectoryChanged {
        /// The GE's name.
        name: String,
        /// Its new entry; `None` when it was removed or revoked.
        entry: Option<DirectoryEntry>,
    },
    /// 0x88: answer to a directory query: `present u8 | entry`.
    DirectoryAnswer(Option<DirectoryEntry>),
    /// 0x89: a report was recorded.
    Ack,
    /// 0x90: where the network's relay is, sent after `SessionInit` (and
    /// again when it changes): `len u8 + "host:port"` (UTF-8), empty when
    /// the network has no relay.
    Relay(String),
    /// 0x8a: a page of the directory: `more u8 | n u16 | n x listed GE`
    /// (sorted by name; `more` = 1 when another page follows).
    DirectoryListing {
        /// The GEs of this page.
        entries: Vec<ListedGe>,
        /// True when names after the last one remain.
        more: bool,
    },
    /// 0x8e: answer to [`ClientMsg::DirectoryDigest`]: 16 bytes that
    /// change whenever a listing would (a GE added, removed, revoked,
    /// renamed or given another overlay address), and only then. Presence
    /// (online, addresses) is not part of it.
    DirectoryDigest([u8; 16]),
    /// 0x8b: answer to [`ClientMsg::Renew`].
    Renewed(Renewed),
    /// 0x8c: every host behind a gateway: `n u16 | n x host` (sorted by
    /// name). Sent after [`ServerMsg::Relay`], and only on a session whose
    /// TLS handshake chose [`crate::tls::ALPN_V2`] or a later version (a
    /// node that offered it), so a node that knows nothing of hosts never
    /// sees it.
    Hosts(Vec<HostEntry>),
    /// 0x8d: a host was added, changed or removed (or its gateway was
    /// revoked): `name | present u8 | host`. Same condition as 0x8c.
    HostChanged {
        /// The host's name.
        name: String,
        /// Its new entry; `None` when it is gone.
        entry: Option<HostEntry>,
    },
    /// 0xa0: answer to [`ClientMsg::Observe`]: `address`, where the GMS sees
    /// the session come from.
    Observed(SocketAddr),
    /// 0xa1: answer to [`ClientMsg::ConnectNow`]: `outcome u8`.
    ConnectNowSent(ConnectNowOutcome),
    /// 0xa2: GE `ge` wants a connection with this node; connect to its
    /// candidates now so both NATs open: `ge u32 | seen (0 | 1 address) |
    /// n u8 | n x address` (its reflexive address, then its local ones).
    ConnectNow(Candidates),
}

/// Where a GE may be reached, typed: what [`ServerMsg::ConnectNow`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidates {
    /// The GE.
    pub ge: GeId,
    /// Its reflexive address: where the GMS sees its session (its carrier's
    /// socket) come from.
    pub reflexive: Option<SocketAddr>,
    /// The local addresses it reports.
    pub local: Vec<SocketAddr>,
}

/// Checks a frame header; returns the message type and body length.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(u8, usize)> {
    if h[0] != FRAME_VERSION {
        return Err(Error::Protocol(format!(
            "unsupported frame version {}",
            h[0]
        )));
    }
    let len = u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize;
    if len > MAX_BODY {
        return Err(Error::Protocol(format!(
            "frame of {len} bytes exceeds the limit of {MAX_BODY}"
        )));
    }
    Ok((h[1], len))
}

fn frame(ty: u8, body: &[u8]) -> Result<Vec<u8>> {
    if body.len() > MAX_BODY {
        return Err(Error::Protocol(format!(
            "message of {} bytes exceeds the limit of {MAX_BODY}",
            body.len()
        )));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(FRAME_VERSION);
    out.push(ty);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

impl ClientMsg {
    /// The whole frame.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut b = Zeroizing::new(Vec::new());
        let mut w = Writer::new(&mut b);
        let ty = match self {
            Self::Enroll(e) => {
                w.bytes(&e.token_id);
                w.bytes(e.secret.as_ref());
                w.bytes(&e.node_key);
                w.bytes(&e.proof);
                0x01
            }
            Self::Hello { reported, version } => {
                put_addrs(&mut w, reported)?;
                if let Some(v) = version {
                    w.short_bytes(v.as_bytes(), MAX_VERSION_LEN, "version")?;
                }
                0x02
            }
            Self::ReportAddresses(a) => {
                put_addrs(&mut w, a)?;
                0x03
            }
            Self::DirectoryQuery(name) => {
                w.short_bytes(name.as_bytes(), MAX_NAME_LEN, "GE name")?;
                0x04
            }
            Self::DirectoryList { after } => {
                w.short_bytes(after.as_bytes(), MAX_NAME_LEN, "GE name")?;
                0x05
            }
            Self::Renew => 0x06,
            Self::DirectoryPage { after } => {
                w.short_bytes(after.as_bytes(), MAX_NAME_LEN, "GE name")?;
                0x07
            }
            Self::DirectoryDigest => 0x08,
            Self::DirectoryForget(ges) => {
                put_count(&mut w, ges.len(), MAX_FORGET, "GE count")?;
                for g in ges {
                    w.u32(g.0);
                }
                0x09
            }
            Self::Observe => 0x20,
            Self::ConnectNow(ge) => {
                w.u32(ge.0);
                0x21
            }
        };
        frame(ty, &b)
    }

    /// Decodes a body of type `ty`.
    pub fn decode(ty: u8, body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body);
        let m = match ty {
            0x01 => Self::Enroll(EnrollRequest {
                token_id: r.array("token id")?,
                secret: Zeroizing::new(r.array("token secret")?),
                node_key: r.array("node key")?,
                proof: r.array("proof")?,
            }),
            0x02 => Self::Hello {
                reported: get_addrs(&mut r)?,
                version: if r.remaining() > 0 {
                    Some(get_str(&mut r, MAX_VERSION_LEN, "version")?)
                } else {
                    None
                },
            },
            0x03 => Self::ReportAddresses(get_addrs(&mut r)?),
            0x04 => Self::DirectoryQuery(get_str(&mut r, MAX_NAME_LEN, "GE name")?),
            0x05 => Self::DirectoryList {
                after: get_str(&mut r, MAX_NAME_LEN, "GE name")?,
            },
            0x06 => Self::Renew,
            0x07 => Self::DirectoryPage {
                after: get_str(&mut r, MAX_NAME_LEN, "GE name")?,
            },
            0x08 => Self::DirectoryDigest,
            0x09 => {
                let n = get_count(&mut r, MAX_FORGET, "GE count")?;
                Self::DirectoryForget(
                    (0..n)
                        .map(|_| r.u32("GE id").map(GeId))
                        .collect::<std::result::Result<_, _>>()?,
                )
            }
            0x20 => Self::Observe,
            0x21 => Self::ConnectNow(GeId(r.u32("GE id")?)),
            t => {
                return Err(Error::Protocol(format!(
                    "unknown client message type {t:#04x}"
                )));
            }
        };
        r.finish("client message")?;
        Ok(m)
    }
}

impl ServerMsg {
    /// The whole frame.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut b = Zeroizing::new(Vec::new());
        let mut w = Writer::new(&mut b);
        let ty = match self {
            Self::Enrolled(e) => {
                w.short_bytes(e.zone.as_bytes(), 255, "zone")?;
                w.bytes(&e.ca_public);
                w.long_bytes(&e.ca_cert, MAX_CERT, "CA certificate")?;
                w.long_bytes(&e.cert, MAX_CERT, "certificate")?;
                w.long_bytes(&e.credential, credential::MAX_LEN, "credential")?;
                0x81
            }
            Self::Refused { code, reason } => {
                w.u16(*code as u16);
                put_str(&mut w, reason, MAX_REASON);
                0x82
            }
            Self::SessionInit(s) => {
                w.u64(s.server_time);
                w.long_bytes(&s.credential, credential::MAX_LEN, "credential")?;
                put_count(&mut w, s.groups.len(), MAX_GROUPS, "group count")?;
                for g in &s.groups {
                    put_group_keys(&mut w, g)?;
                }
                put_serials(&mut w, &s.revoked)?;
                0x83
            }
            Self::GroupKeys(g) => {
                put_group_keys(&mut w, g)?;
                0x84
            }
            Self::GeInfo(c) => {
                w.long_bytes(c, credential::MAX_LEN, "credential")?;
                0x85
            }
            Self::Revoked { ge, serials } => {
                w.u32(ge.0);
                put_serials(&mut w, serials)?;
                0x86
            }
            Self::DirectoryChanged { name, entry } => {
                w.short_bytes(name.as_bytes(), MAX_NAME_LEN, "GE name")?;
                put_entry(&mut w, entry.as_ref())?;
                0x87
            }
            Self::DirectoryAnswer(entry) => {
                put_entry(&mut w, entry.as_ref())?;
                0x88
            }
            Self::Ack => 0x89,
            Self::DirectoryDigest(d) => {
                w.bytes(d);
                0x8e
            }
            Self::DirectoryListing { entries, more } => {
                if entries.len() > MAX_LISTING {
                    return Err(fpn_proto::Error::TooLarge {
                        what: "directory listing",
                        len: entries.len(),
                        max: MAX_LISTING,
                    }
                    .into());
                }
                w.u8(u8::from(*more));
                w.u16(entries.len() as u16);
                for e in entries {
                    w.short_bytes(e.name.as_bytes(), MAX_NAME_LEN, "GE name")?;
                    w.u32(e.ge.0);
                    w.bytes(&e.overlay.octets());
                    w.u8(u8::from(e.online));
                    match &e.seen {
                        Some(a) => {
                            w.u8(1);
                            put_addr(&mut w, a);
                        }
                        None => w.u8(0),
                    }
                    put_addrs(&mut w, &e.reported)?;
                }
                0x8a
            }
            Self::Renewed(n) => {
                w.u64(n.server_time);
                w.long_bytes(&n.cert, MAX_CERT, "certificate")?;
                w.long_bytes(&n.credential, credential::MAX_LEN, "credential")?;
                0x8b
            }
            Self::Hosts(hosts) => {
                if hosts.len() > MAX_HOSTS {
                    return Err(fpn_proto::Error::TooLarge {
                        what: "host list",
                        len: hosts.len(),
                        max: MAX_HOSTS,
                    }
                    .into());
                }
                w.u16(hosts.len() as u16);
                for h in hosts {
                    put_host(&mut w, h)?;
                }
                0x8c
            }
            Self::HostChanged { name, entry } => {
                w.short_bytes(name.as_bytes(), MAX_NAME_LEN, "host name")?;
                match entry {
                    Some(h) => {
                        w.u8(1);
                        put_host(&mut w, h)?;
                    }
                    None => w.u8(0),
                }
                0x8d
            }
            Self::Observed(a) => {
                put_addr(&mut w, a);
                0xa0
            }
            Self::ConnectNowSent(o) => {
                w.u8(*o as u8);
                0xa1
            }
            Self::ConnectNow(c) => {
                w.u32(c.ge.0);
                match &c.reflexive {
                    Some(a) => {
                        w.u8(1);
                        put_addr(&mut w, a);
                    }
                    None => w.u8(0),
                }
                put_addrs(&mut w, &c.local)?;
                0xa2
            }
            Self::Relay(addr) => {
                w.short_bytes(addr.as_bytes(), MAX_RELAY_ADDR, "relay address")?;
                0x90
            }
        };
        frame(ty, &b)
    }

    /// Decodes a body of type `ty`.
    pub fn decode(ty: u8, body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body);
        let m = match ty {
            0x81 => Self::Enrolled(Enrolled {
                zone: get_str(&mut r, 255, "zone")?,
                ca_public: r.array("CA public key")?,
                ca_cert: r.long_bytes(MAX_CERT, "CA certificate")?.to_vec(),
                cert: r.long_bytes(MAX_CERT, "certificate")?.to_vec(),
                credential: r.long_bytes(credential::MAX_LEN, "credential")?.to_vec(),
            }),
            0x82 => Self::Refused {
                code: RefusalCode::from_u16(r.u16("refusal code")?),
                reason: get_str(&mut r, MAX_REASON, "reason")?,
            },
            0x83 => {
                let server_time = r.u64("server time")?;
                let credential = r.long_bytes(credential::MAX_LEN, "credential")?.to_vec();
                let n = get_count(&mut r, MAX_GROUPS, "group count")?;
                let groups = (0..n)
                    .map(|_| get_group_keys(&mut r))
                    .collect::<Result<Vec<_>>>()?;
                let revoked = get_serials(&mut r)?;
                Self::SessionInit(SessionInit {
                    server_time,
                    credential,
                    groups,
                    revoked,
                })
            }
            0x84 => Self::GroupKeys(get_group_keys(&mut r)?),
            0x85 => Self::GeInfo(r.long_bytes(credential::MAX_LEN, "credential")?.to_vec()),
            0x86 => Self::Revoked {
                ge: GeId(r.u32("GE id")?),
                serials: get_serials(&mut r)?,
            },
            0x87 => Self::DirectoryChanged {
                name: get_str(&mut r, MAX_NAME_LEN, "GE name")?,
                entry: get_entry(&mut r)?,
            },
            0x88 => Self::DirectoryAnswer(get_entry(&mut r)?),
            0x89 => Self::Ack,
            0x8e => Self::DirectoryDigest(r.array("directory digest")?),
            0x8a => {
                let more = get_flag(&mut r, "more")?;
                let n = usize::from(r.u16("listing count")?);
                if n > MAX_LISTING {
                    return Err(fpn_proto::Error::TooLarge {
                        what: "directory listing",
                        len: n,
                        max: MAX_LISTING,
                    }
                    .into());
                }
                let entries = (0..n)
                    .map(|_| {
                        Ok(ListedGe {
                            name: get_str(&mut r, MAX_NAME_LEN, "GE name")?,
                            ge: GeId(r.u32("GE id")?),
                            overlay: std::net::Ipv4Addr::from(r.array::<4>("overlay")?),
                            online: get_flag(&mut r, "online")?,
                            seen: match get_flag(&mut r, "seen present")? {
                                true => Some(get_addr(&mut r)?),
                                false => None,
                            },
                            reported: get_addrs(&mut r)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Self::DirectoryListing { entries, more }
            }
            0x8b => Self::Renewed(Renewed {
                server_time: r.u64("server time")?,
                cert: r.long_bytes(MAX_CERT, "certificate")?.to_vec(),
                credential: r.long_bytes(credential::MAX_LEN, "credential")?.to_vec(),
            }),
            0x8c => {
                let n = usize::from(r.u16("host count")?);
                if n > MAX_HOSTS {
                    return Err(fpn_proto::Error::TooLarge {
                        what: "host list",
                        len: n,
                        max: MAX_HOSTS,
                    }
                    .into());
                }
                Self::Hosts((0..n).map(|_| get_host(&mut r)).collect::<Result<_>>()?)
            }
            0x8d => Self::HostChanged {
                name: get_str(&mut r, MAX_NAME_LEN, "host name")?,
                entry: match get_flag(&mut r, "host present")? {
                    true => Some(get_host(&mut r)?),
                    false => None,
                },
            },
            0xa0 => Self::Observed(get_addr(&mut r)?),
            0xa1 => Self::ConnectNowSent(ConnectNowOutcome::from_u8(r.u8("outcome")?)?),
            0xa2 => Self::ConnectNow(Candidates {
                ge: GeId(r.u32("GE id")?),
                reflexive: match get_flag(&mut r, "reflexive present")? {
                    true => Some(get_addr(&mut r)?),
                    false => None,
                },
                local: get_addrs(&mut r)?,
            }),
            0x90 => Self::Relay(get_str(&mut r, MAX_RELAY_ADDR, "relay address")?),
            t => {
                return Err(Error::Protocol(format!(
                    "unknown server message type {t:#04x}"
                )));
            }
        };
        r.finish("server message")?;
        Ok(m)
    }
}

fn get_flag(r: &mut Reader<'_>, what: &'static str) -> Result<bool> {
    match r.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(fpn_proto::Error::invalid(what, "must be 0 or 1").into()),
    }
}

fn put_count(w: &mut Writer<'_>, n: usize, max: usize, what: &'static str) -> Result<()> {
    if n > max || n > usize::from(u8::MAX) {
        return Err(fpn_proto::Error::TooLarge { what, len: n, max }.into());
    }
    w.u8(n as u8);
    Ok(())
}

fn get_count(r: &mut Reader<'_>, max: usize, what: &'static str) -> Result<usize> {
    let n = usize::from(r.u8(what)?);
    if n > max {
        return Err(fpn_proto::Error::TooLarge { what, len: n, max }.into());
    }
    Ok(n)
}

fn put_str(w: &mut Writer<'_>, s: &str, max: usize) {
    // Truncate on a character boundary rather than fail: reasons are text for people.
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let _ = w.short_bytes(&s.as_bytes()[..end], max, "text");
}

fn get_str(r: &mut Reader<'_>, max: usize, what: &'static str) -> Result<String> {
    let b = r.short_bytes(max, what)?;
    Ok(std::str::from_utf8(b)
        .map_err(|_| fpn_proto::Error::invalid(what, "not UTF-8"))?
        .to_owned())
}

fn put_addrs(w: &mut Writer<'_>, addrs: &[SocketAddr]) -> Result<()> {
    put_count(w, addrs.len(), MAX_ADDRS, "address count")?;
    for a in addrs {
        put_addr(w, a);
    }
    Ok(())
}

fn put_addr(w: &mut Writer<'_>, a: &SocketAddr) {
    w.ip_addr(a.ip());
    w.u16(a.port());
}

fn get_addr(r: &mut Reader<'_>) -> Result<SocketAddr> {
    let ip = r.ip_addr("address")?;
    Ok(SocketAddr::new(ip, r.u16("port")?))
}

fn get_addrs(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>> {
    let n = get_count(r, MAX_ADDRS, "address count")?;
    (0..n).map(|_| get_addr(r)).collect()
}

fn put_group_keys(w: &mut Writer<'_>, g: &GroupKeys) -> Result<()> {
    w.u32(g.group.0);
    put_count(w, g.keys.len(), MAX_KEYS_PER_GROUP, "key count")?;
    for k in &g.keys {
        w.u32(k.version.0);
        w.u64(k.expires_at.unwrap_or(0));
        w.bytes(k.key.expose_secret());
    }
    Ok(())
}

fn get_group_keys(r: &mut Reader<'_>) -> Result<GroupKeys> {
    let group = GroupId(r.u32("group")?);
    let n = get_count(r, MAX_KEYS_PER_GROUP, "key count")?;
    let keys = (0..n)
        .map(|_| {
            let version = KeyVersion(r.u32("key version")?);
            let exp = r.u64("key expiry")?;
            let key = GroupKey::from_bytes(r.array("group key")?);
            Ok(WireKey {
                version,
                expires_at: (exp != 0).then_some(exp),
                key,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GroupKeys { group, keys })
}

fn put_serials(w: &mut Writer<'_>, s: &[u64]) -> Result<()> {
    if s.len() > MAX_REVOKED {
        return Err(fpn_proto::Error::TooLarge {
            what: "revocation list",
            len: s.len(),
            max: MAX_REVOKED,
        }
        .into());
    }
    w.u16(s.len() as u16);
    for x in s {
        w.u64(*x);
    }
    Ok(())
}

fn get_serials(r: &mut Reader<'_>) -> Result<Vec<u64>> {
    let n = usize::from(r.u16("revocation count")?);
    if n > MAX_REVOKED {
        return Err(fpn_proto::Error::TooLarge {
            what: "revocation list",
            len: n,
            max: MAX_REVOKED,
        }
        .into());
    }
    // Check the length once so a lying count cannot make us allocate.
    if r.remaining() < n * 8 {
        return Err(fpn_proto::Error::Truncated {
            what: "revocation list",
            needed: n * 8,
            available: r.remaining(),
        }
        .into());
    }
    (0..n).map(|_| Ok(r.u64("serial")?)).collect()
}

fn put_host(w: &mut Writer<'_>, h: &HostEntry) -> Result<()> {
    w.short_bytes(h.name.as_bytes(), MAX_NAME_LEN, "host name")?;
    w.u32(h.via.0);
    w.short_bytes(h.via_name.as_bytes(), MAX_NAME_LEN, "GE name")?;
    put_count(w, h.lan.len(), MAX_HOST_LAN, "LAN address count")?;
    for ip in &h.lan {
        w.ip_addr(*ip);
    }
    put_count(w, h.groups.len(), MAX_GROUPS, "group count")?;
    for g in &h.groups {
        w.u32(g.0);
    }
    Ok(())
}

fn get_host(r: &mut Reader<'_>) -> Result<HostEntry> {
    let name = get_str(r, MAX_NAME_LEN, "host name")?;
    let via = GeId(r.u32("GE id")?);
    let via_name = get_str(r, MAX_NAME_LEN, "GE name")?;
    let n = get_count(r, MAX_HOST_LAN, "LAN address count")?;
    let lan = (0..n)
        .map(|_| Ok(r.ip_addr("LAN address")?))
        .collect::<Result<_>>()?;
    let m = get_count(r, MAX_GROUPS, "group count")?;
    let groups = (0..m)
        .map(|_| Ok(GroupId(r.u32("group")?)))
        .collect::<Result<_>>()?;
    Ok(HostEntry {
        name,
        via,
        via_name,
        lan,
        groups,
    })
}

fn put_entry(w: &mut Writer<'_>, e: Option<&DirectoryEntry>) -> Result<()> {
    let Some(e) = e else {
        w.u8(0);
        return Ok(());
    };
    w.u8(1);
    w.long_bytes(&e.credential, credential::MAX_LEN, "credential")?;
    w.u8(u8::from(e.online));
    match &e.seen {
        Some(a) => {
            w.u8(1);
            put_addr(w, a);
        }
        None => w.u8(0),
    }
    put_addrs(w, &e.reported)
}

fn get_entry(r: &mut Reader<'_>) -> Result<Option<DirectoryEntry>> {
    match r.u8("entry present")? {
        0 => return Ok(None),
        1 => {}
        _ => return Err(fpn_proto::Error::invalid("entry present", "must be 0 or 1").into()),
    }
    let credential = r.long_bytes(credential::MAX_LEN, "credential")?.to_vec();
    let online = match r.u8("online")? {
        0 => false,
        1 => true,
        _ => return Err(fpn_proto::Error::invalid("online", "must be 0 or 1").into()),
    };
    let seen = match r.u8("seen present")? {
        0 => None,
        1 => Some(get_addr(r)?),
        _ => return Err(fpn_proto::Error::invalid("seen present", "must be 0 or 1").into()),
    };
    Ok(Some(DirectoryEntry {
        credential,
        online,
        seen,
        reported: get_addrs(r)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enrollment_request_is_exactly_the_enrollment_stream_bound() {
        let f = ClientMsg::Enroll(EnrollRequest {
            token_id: [1; 16],
            secret: Zeroizing::new([2; 32]),
            node_key: [3; 32],
            proof: [4; 64],
        })
        .encode()
        .unwrap();
        assert_eq!(f.len() - HEADER_LEN, MAX_ENROLL_BODY);
    }

    fn split(frame: &[u8]) -> (u8, &[u8]) {
        let h: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
        let (ty, len) = parse_header(&h).unwrap();
        assert_eq!(len, frame.len() - HEADER_LEN);
        (ty, &frame[HEADER_LEN..])
    }

    fn server_samples() -> Vec<ServerMsg> {
        let entry = DirectoryEntry {
            credential: vec![1; 100],
            online: true,
            seen: Some("198.18.0.5:4000".parse().unwrap()),
            reported: vec![
                "192.168.1.2:4433".parse().unwrap(),
                "[fd00::1]:1".parse().unwrap(),
            ],
        };
        let gk = GroupKeys {
            group: GroupId(2),
            keys: vec![
                WireKey {
                    version: KeyVersion(3),
                    expires_at: None,
                    key: GroupKey::from_bytes([9; 32]),
                },
                WireKey {
                    version: KeyVersion(2),
                    expires_at: Some(1000),
                    key: GroupKey::from_bytes([8; 32]),
                },
            ],
        };
        vec![
            ServerMsg::Enrolled(Enrolled {
                zone: "home.fpn.".into(),
                ca_public: [4; 32],
                ca_cert: vec![5; 300],
                cert: vec![6; 400],
                credential: vec![7; 150],
            }),
            ServerMsg::Refused {
                code: RefusalCode::TokenUsed,
                reason: "enrollment token already used".into(),
            },
            ServerMsg::SessionInit(SessionInit {
                server_time: 77,
                credential: vec![7; 150],
                groups: vec![gk.clone()],
                revoked: vec![1, 2, 3],
            }),
            ServerMsg::GroupKeys(gk),
            ServerMsg::GeInfo(vec![3; 150]),
            ServerMsg::Revoked {
                ge: GeId(4),
                serials: vec![10, 11],
            },
            ServerMsg::DirectoryChanged {
                name: "nas".into(),
                entry: Some(entry.clone()),
            },
            ServerMsg::DirectoryChanged {
                name: "nas".into(),
                entry: None,
            },
            ServerMsg::DirectoryAnswer(Some(entry)),
            ServerMsg::DirectoryAnswer(None),
            ServerMsg::Ack,
            ServerMsg::DirectoryDigest([7; 16]),
            ServerMsg::Relay("198.18.1.10:7720".into()),
            ServerMsg::Relay(String::new()),
            ServerMsg::DirectoryListing {
                entries: vec![
                    ListedGe {
                        name: "a".into(),
                        ge: GeId(1),
                        overlay: "100.64.0.1".parse().unwrap(),
                        online: true,
                        seen: Some("198.18.0.5:4000".parse().unwrap()),
                        reported: vec!["198.18.0.5:7718".parse().unwrap()],
                    },
                    ListedGe {
                        name: "nas".into(),
                        ge: GeId(9),
                        overlay: "100.64.0.9".parse().unwrap(),
                        online: false,
                        seen: None,
                        reported: vec![],
                    },
                ],
                more: true,
            },
            ServerMsg::DirectoryListing {
                entries: vec![],
                more: false,
            },
            ServerMsg::Renewed(Renewed {
                server_time: 1_800_000_000,
                cert: vec![6; 400],
                credential: vec![7; 150],
            }),
            ServerMsg::Hosts(vec![host("nas"), host("printer")]),
            ServerMsg::Hosts(vec![]),
            ServerMsg::HostChanged {
                name: "nas".into(),
                entry: Some(host("nas")),
            },
            ServerMsg::HostChanged {
                name: "nas".into(),
                entry: None,
            },
            ServerMsg::Observed("198.18.2.2:7718".parse().unwrap()),
            ServerMsg::ConnectNowSent(ConnectNowOutcome::RateLimited),
            ServerMsg::ConnectNow(Candidates {
                ge: GeId(7),
                reflexive: Some("198.18.2.2:7718".parse().unwrap()),
                local: vec!["192.168.1.10:7718".parse().unwrap()],
            }),
            ServerMsg::ConnectNow(Candidates {
                ge: GeId(8),
                reflexive: None,
                local: vec![],
            }),
        ]
    }

    fn host(name: &str) -> HostEntry {
        HostEntry {
            name: name.into(),
            via: GeId(3),
            via_name: "gw".into(),
            lan: vec![
                "192.168.1.10".parse().unwrap(),
                "fd00:1::10".parse().unwrap(),
            ],
            groups: vec![GroupId(1), GroupId(2)],
        }
    }

    #[test]
    fn the_largest_host_list_fits_one_frame_and_bad_host_lists_are_refused() {
        let big = |i: usize| HostEntry {
            name: format!("{i:0>63}"),
            via: GeId(u32::MAX),
            via_name: "g".repeat(63),
            lan: vec!["fd00::1".parse().unwrap(); MAX_HOST_LAN],
            groups: (0..MAX_GROUPS as u32).map(GroupId).collect(),
        };
        let all = ServerMsg::Hosts((0..MAX_HOSTS).map(big).collect());
        let f = all.encode().unwrap();
        assert!(f.len() - HEADER_LEN <= MAX_BODY);
        assert!(
            ServerMsg::Hosts((0..=MAX_HOSTS).map(big).collect())
                .encode()
                .is_err()
        );
        // One host more than the limit, each well-formed, is refused.
        let one = ServerMsg::Hosts(vec![host("nas")]).encode().unwrap();
        let mut over = (MAX_HOSTS as u16 + 1).to_be_bytes().to_vec();
        for _ in 0..=MAX_HOSTS {
            over.extend_from_slice(&one[HEADER_LEN + 2..]);
        }
        assert!(ServerMsg::decode(0x8c, &over).is_err());
        let at = (over.len() - 2) / (MAX_HOSTS + 1);
        over.truncate(over.len() - at);
        over[..2].copy_from_slice(&(MAX_HOSTS as u16).to_be_bytes());
        assert!(ServerMsg::decode(0x8c, &over).is_ok(), "exactly the limit");
        // Too many LAN addresses, a bad family, a bad presence flag.
        let mut h = host("nas");
        h.lan = vec!["10.0.0.1".parse().unwrap(); MAX_HOST_LAN + 1];
        assert!(ServerMsg::Hosts(vec![h]).encode().is_err());
        let good = ServerMsg::Hosts(vec![host("nas")]).encode().unwrap();
        let (ty, body) = split(&good);
        let mut bad = body.to_vec();
        // count u16, name len+3, via u32, via name len+2, n: first family.
        let fam = 2 + 4 + 4 + 3 + 1;
        assert_eq!(bad[fam], 4);
        bad[fam] = 5;
        assert!(ServerMsg::decode(ty, &bad).is_err());
        // The presence flag is 0 or 1, also with a whole host after it.
        let f = ServerMsg::HostChanged {
            name: "nas".into(),
            entry: Some(host("nas")),
        }
        .encode()
        .unwrap();
        let (ty, body) = split(&f);
        let mut flag = body.to_vec();
        assert_eq!(flag[4], 1, "after the name's length byte and 3 bytes");
        flag[4] = 2;
        assert!(ServerMsg::decode(ty, &flag).is_err());
    }

    #[test]
    fn server_messages_round_trip_and_truncations_fail() {
        for m in server_samples() {
            let f = m.encode().unwrap();
            let (ty, body) = split(&f);
            let back = ServerMsg::decode(ty, body).unwrap();
            assert_eq!(back.encode().unwrap(), f, "{m:?}");
            for len in 0..body.len() {
                assert!(
                    ServerMsg::decode(ty, &body[..len]).is_err(),
                    "{m:?} at {len}"
                );
            }
            let mut long = body.to_vec();
            long.push(0);
            assert!(ServerMsg::decode(ty, &long).is_err());
        }
    }

    #[test]
    fn client_messages_round_trip_and_truncations_fail() {
        let msgs = [
            ClientMsg::Enroll(EnrollRequest {
                token_id: [1; 16],
                secret: Zeroizing::new([2; 32]),
                node_key: [3; 32],
                proof: [4; 64],
            }),
            ClientMsg::Hello {
                reported: vec!["10.0.0.1:4433".parse().unwrap()],
                version: None,
            },
            ClientMsg::ReportAddresses(vec![]),
            ClientMsg::DirectoryQuery("laptop".into()),
            ClientMsg::Renew,
            ClientMsg::DirectoryList {
                after: "laptop".into(),
            },
            ClientMsg::DirectoryList { after: "".into() },
            ClientMsg::DirectoryPage {
                after: "laptop".into(),
            },
            ClientMsg::DirectoryDigest,
            ClientMsg::DirectoryForget(vec![GeId(1), GeId(70_000)]),
            ClientMsg::DirectoryForget(vec![]),
            ClientMsg::Observe,
            ClientMsg::ConnectNow(GeId(3)),
        ];
        for m in msgs {
            let f = m.encode().unwrap();
            let (ty, body) = split(&f);
            let back = ClientMsg::decode(ty, body).unwrap();
            assert_eq!(back.encode().unwrap(), f);
            for len in 0..body.len() {
                assert!(ClientMsg::decode(ty, &body[..len]).is_err());
            }
        }
        // A hello with the version: every truncation fails but the one
        // that ends after the addresses, which is a hello without it.
        let with = ClientMsg::Hello {
            reported: vec!["10.0.0.1:4433".parse().unwrap()],
            version: Some("0.1.0".into()),
        };
        let f = with.encode().unwrap();
        let (ty, body) = split(&f);
        let back = ClientMsg::decode(ty, body).unwrap();
        assert!(matches!(&back, ClientMsg::Hello { version: Some(v), .. } if v == "0.1.0"));
        assert_eq!(back.encode().unwrap(), f);
        let addrs_end = body.len() - 1 - "0.1.0".len();
        for len in 0..body.len() {
            let r = ClientMsg::decode(ty, &body[..len]);
            if len == addrs_end {
                assert!(matches!(r, Ok(ClientMsg::Hello { version: None, .. })));
            } else {
                assert!(r.is_err(), "a hello cut at {len}");
            }
        }
        let long = ClientMsg::Hello {
            reported: vec![],
            version: Some("9".repeat(MAX_VERSION_LEN + 1)),
        };
        assert!(long.encode().is_err(), "an over-long version is refused");
        let dbg = format!(
            "{:?}",
            ClientMsg::Enroll(EnrollRequest {
                token_id: [1; 16],
                secret: Zeroizing::new([0xee; 32]),
                node_key: [3; 32],
                proof: [4; 64],
            })
        );
        assert!(!dbg.contains("238") && !dbg.contains("eeee"), "{dbg}");
    }

    #[test]
    fn bad_headers_and_counts_are_refused() {
        assert!(parse_header(&[2, 1, 0, 0, 0, 0]).is_err());
        let big = (MAX_BODY as u32 + 1).to_be_bytes();
        assert!(parse_header(&[1, 1, big[0], big[1], big[2], big[3]]).is_err());
        assert!(ClientMsg::decode(0x7f, &[]).is_err());
        assert!(ServerMsg::decode(0x01, &[]).is_err());
        // 17 addresses is one too many.
        assert!(ClientMsg::decode(0x02, &[17]).is_err());
        // A revocation count that the body cannot hold.
        assert!(ServerMsg::decode(0x86, &[0, 0, 0, 1, 0xff, 0xff]).is_err());
        // Names are bounded.
        let long = ClientMsg::DirectoryQuery("x".repeat(64));
        assert!(long.encode().is_err());
    }

    #[test]
    fn a_shutdown_reason_carries_a_bounded_reconnect_spread() {
        use std::time::Duration;
        let r = shutdown_reason(10_000);
        assert_eq!(r, "GMS shutting down (reconnect spread 10000 ms)");
        assert_eq!(shutdown_spread(r.as_bytes()), Some(Duration::from_secs(10)));
        assert_eq!(
            shutdown_spread(shutdown_reason(10_000_000).as_bytes()),
            Some(Duration::from_millis(MAX_RECONNECT_SPREAD_MS))
        );
        assert_eq!(
            shutdown_spread(shutdown_reason(0).as_bytes()),
            Some(Duration::ZERO)
        );
        // An older GMS's reason, and nonsense: no spread, or a bounded one.
        assert_eq!(shutdown_spread(b"GMS shutting down"), None);
        assert_eq!(shutdown_spread(b"(reconnect spread x ms)"), None);
        assert_eq!(shutdown_spread(&[0xff, 0xfe]), None);
        assert_eq!(
            shutdown_spread(b"(reconnect spread 99999999999 ms)"),
            Some(Duration::from_millis(MAX_RECONNECT_SPREAD_MS))
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Peer bytes never panic: every decoder returns a value or an error.
        #[test]
        fn decoders_never_panic(ty in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = ClientMsg::decode(ty, &body);
            let _ = ServerMsg::decode(ty, &body);
            let _ = crate::KeyCache::decode(&body);
            let _ = crate::token::Token::parse(&String::from_utf8_lossy(&body));
            if let Some(d) = shutdown_spread(&body) {
                prop_assert!(d.as_millis() <= u128::from(MAX_RECONNECT_SPREAD_MS));
            }
            if body.len() >= HEADER_LEN {
                let h: [u8; HEADER_LEN] = body[..HEADER_LEN].try_into().unwrap();
                let _ = parse_header(&h);
            }
        }

        /// A decoded message encodes back to the same frame (one canonical form).
        #[test]
        fn decoded_messages_are_canonical(ty in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(m) = ClientMsg::decode(ty, &body) {
                prop_assert_eq!(&m.encode().unwrap()[HEADER_LEN..], &body[..]);
            }
            // Refusal codes a newer GMS may add decode as Internal (the
            // reason text still reaches the operator), so 0x82 is exempt.
            if let Some(m) = ServerMsg::decode(ty, &body).ok().filter(|_| ty != 0x82) {
                prop_assert_eq!(&m.encode().unwrap()[HEADER_LEN..], &body[..]);
            }
        }
    }
}
