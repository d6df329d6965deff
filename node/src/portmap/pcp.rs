//! PCP (Port Control Protocol, RFC 6887, version 2) MAP messages: the
//! client's request and the server's answer. Pure codec: no sockets, no
//! clock, no randomness (the mapping nonce comes in). Answers come from
//! the network (anything on the LAN can send to the client's port), so
//! [`Response::parse`] checks every length and field and never panics; a
//! fuzz target (node/fuzz, `pcp_parse`) holds it to that.
//!
//! Only MAP (opcode 1) is spoken: the client asks the gateway to forward an
//! external port to its carrier port. No PCP options are sent; options in
//! an answer are skipped (RFC 6887 section 7.3 lets a client ignore the
//! optional-to-process ones, and we send none that a server must echo).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// UDP port a PCP server listens on (the same as NAT-PMP's, RFC 6887
/// section 19.1).
pub const SERVER_PORT: u16 = 5351;
/// The PCP version this client speaks (RFC 6887; version 0 is NAT-PMP,
/// version 1 a pre-RFC draft).
pub const VERSION: u8 = 2;
/// Size of a MAP request and of a MAP answer without options: the 24-byte
/// common header and the 36-byte MAP body (RFC 6887 sections 7.1, 7.2,
/// 11.1).
pub const MAP_LEN: usize = HEADER_LEN + 36;
/// Size of the common header alone (an error answer may stop there).
pub const HEADER_LEN: usize = 24;
/// Largest PCP message (RFC 6887 section 7).
pub const MAX_LEN: usize = 1100;

/// Opcode of MAP.
const OP_MAP: u8 = 1;
/// The R bit: set in answers, clear in requests.
const REPLY: u8 = 0x80;

/// Why an answer was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than the part that must be there (the header, or the MAP
    /// body of a success).
    #[error("PCP answer of {got} bytes, {want} expected")]
    Short {
        /// The length received.
        got: usize,
        /// The length needed.
        want: usize,
    },
    /// Longer than RFC 6887's 1100-byte maximum.
    #[error("PCP answer of {0} bytes, over the 1100-byte maximum")]
    Long(usize),
    /// Not a multiple of 4 bytes (every PCP message is).
    #[error("PCP answer of {0} bytes, not a multiple of 4")]
    Unaligned(usize),
    /// Not version 2. A NAT-PMP gateway answers a PCP request in its own
    /// version 0 with "unsupported version" (RFC 6886 section 3.5, RFC 6887
    /// section 9): the client falls back to NAT-PMP at once.
    #[error("PCP version {0} in the answer (this client speaks 2)")]
    Version(u8),
    /// The R bit is clear: a request, not an answer.
    #[error("PCP request (opcode {0}) where an answer was expected")]
    NotAReply(u8),
    /// An answer to an opcode this client never sends (ANNOUNCE, PEER).
    #[error("PCP answer to opcode {0}, not MAP")]
    Opcode(u8),
}

/// Why an answer gives no mapping for a request ([`MapRequest::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// Not the answer to this request: its nonce, protocol or internal
    /// port differ (RFC 6887 section 11.4: such answers are ignored; an
    /// off-path sender does not know the nonce).
    #[error("PCP answer to another request (nonce, protocol or port differ)")]
    NotOurs,
    /// The gateway refused; `lifetime` is how long it says the error holds.
    #[error("PCP gateway refused: {result:?} (for {lifetime} s)")]
    Refused {
        /// Why.
        result: ResultCode,
        /// Seconds the error is expected to last (0: long-lived).
        lifetime: u32,
    },
    /// A success that maps nothing: external port 0, an unspecified
    /// external address or lifetime 0 in answer to a request for a mapping.
    #[error("PCP success without a usable mapping")]
    Empty,
}

/// The 96-bit mapping nonce (RFC 6887 section 11.1): random, kept for the
/// mapping's life. The gateway ties the mapping to it, so renewals and the
/// delete must carry the same one (miniupnpd refuses a delete with another
/// nonce with NOT_AUTHORIZED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; 12]);

/// Transport of a mapping (IANA protocol numbers on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// UDP, 17 (the carrier's).
    Udp,
    /// TCP, 6.
    Tcp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Self::Udp => 17,
            Self::Tcp => 6,
        }
    }
}

/// A MAP request (RFC 6887 section 11.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRequest {
    /// The mapping's nonce: a fresh random one for a new mapping, the
    /// mapping's own for a renewal or the delete.
    pub nonce: Nonce,
    /// UDP or TCP.
    pub protocol: Protocol,
    /// This host's address as the gateway sees it: the source address of
    /// the request (the server answers ADDRESS_MISMATCH otherwise).
    pub client: IpAddr,
    /// The port on this host.
    pub internal_port: u16,
    /// The external address and port asked for: the previous mapping's on
    /// a renewal (RFC 6887 section 11.2.1), `None` for any.
    pub suggested: Option<SocketAddr>,
    /// Seconds; 0 deletes the mapping.
    pub lifetime: u32,
}

impl MapRequest {
    /// The request's 60 wire bytes.
    pub fn emit(&self) -> [u8; MAP_LEN] {
        let mut b = [0u8; MAP_LEN];
        b[0] = VERSION;
        b[1] = OP_MAP;
        b[4..8].copy_from_slice(&self.lifetime.to_be_bytes());
        b[8..24].copy_from_slice(&v6(self.client).octets());
        b[24..36].copy_from_slice(&self.nonce.0);
        b[36] = self.protocol.number();
        b[40..42].copy_from_slice(&self.internal_port.to_be_bytes());
        // No preference: port 0 and the all-zeros address of the client's
        // family (::ffff:0.0.0.0 for IPv4), which tells the server which
        // family of external address is wanted (section 11.1).
        let (ip, port) = match self.suggested {
            Some(s) => (s.ip(), s.port()),
            None => match self.client {
                IpAddr::V4(_) => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                IpAddr::V6(_) => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            },
        };
        b[42..44].copy_from_slice(&port.to_be_bytes());
        b[44..60].copy_from_slice(&v6(ip).octets());
        b
    }

    /// What `resp` means for this request: the mapping granted, or why
    /// not. Answers to other requests are [`CheckError::NotOurs`] (ignore
    /// them and keep waiting); an error answer cut after its header cannot
    /// be matched and is taken as the gateway's word.
    pub fn check(&self, resp: &Response) -> Result<Granted, CheckError> {
        if let Some(m) = &resp.map
            && (m.nonce != self.nonce
                || m.protocol != self.protocol.number()
                || m.internal_port != self.internal_port)
        {
            return Err(CheckError::NotOurs);
        }
        if resp.result != ResultCode::Success {
            return Err(CheckError::Refused {
                result: resp.result,
                lifetime: resp.lifetime,
            });
        }
        // parse() returns no success without the MAP body.
        let Some(m) = &resp.map else {
            return Err(CheckError::Empty);
        };
        if self.lifetime != 0
            && (resp.lifetime == 0 || m.external.port() == 0 || m.external.ip().is_unspecified())
        {
            return Err(CheckError::Empty);
        }
        Ok(Granted {
            external: m.external,
            lifetime: resp.lifetime,
            epoch: resp.epoch,
        })
    }
}

/// A mapping the gateway granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// The assigned external address and port (may differ from those
    /// suggested).
    pub external: SocketAddr,
    /// Seconds it lasts (may be shorter or longer than asked: the server
    /// clamps to its own bounds).
    pub lifetime: u32,
    /// The server's epoch: a value that goes back means it lost its
    /// mappings (RFC 6887 section 8.5).
    pub epoch: u32,
}

/// The result code of an answer (RFC 6887 section 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    /// 0.
    Success,
    /// 1: the server speaks another version (its own is in the answer).
    UnsupportedVersion,
    /// 2: mapping is turned off, or the nonce does not own the mapping.
    NotAuthorized,
    /// 3: the server could not parse the request.
    MalformedRequest,
    /// 4.
    UnsupportedOpcode,
    /// 5: a mandatory option the server does not know.
    UnsupportedOption,
    /// 6.
    MalformedOption,
    /// 7: e.g. the gateway has no external address yet.
    NetworkFailure,
    /// 8: no ports or mappings left.
    NoResources,
    /// 9.
    UnsupportedProtocol,
    /// 10: this client has too many mappings.
    UserExceededQuota,
    /// 11: the suggested external address or port cannot be given (only
    /// with the PREFER_FAILURE option, which this client does not send).
    CannotProvideExternal,
    /// 12: a NAT between the client and the server (the client address in
    /// the request is not the source the server saw).
    AddressMismatch,
    /// 13 (PEER only).
    ExcessiveRemotePeers,
    /// Anything else (kept for logs).
    Other(u8),
}

impl From<u8> for ResultCode {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::Success,
            1 => Self::UnsupportedVersion,
            2 => Self::NotAuthorized,
            3 => Self::MalformedRequest,
            4 => Self::UnsupportedOpcode,
            5 => Self::UnsupportedOption,
            6 => Self::MalformedOption,
            7 => Self::NetworkFailure,
            8 => Self::NoResources,
            9 => Self::UnsupportedProtocol,
            10 => Self::UserExceededQuota,
            11 => Self::CannotProvideExternal,
            12 => Self::AddressMismatch,
            13 => Self::ExcessiveRemotePeers,
            n => Self::Other(n),
        }
    }
}

/// A MAP answer (RFC 6887 sections 7.2 and 11.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// Success or why not.
    pub result: ResultCode,
    /// On success, seconds the mapping lasts; on an error, how long the
    /// error holds.
    pub lifetime: u32,
    /// Seconds since the server's mapping state began.
    pub epoch: u32,
    /// The MAP fields; `None` only for an error answer cut after the header.
    pub map: Option<MapFields>,
}

/// The MAP body of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapFields {
    /// The request's nonce, echoed.
    pub nonce: Nonce,
    /// The IANA protocol number, echoed.
    pub protocol: u8,
    /// The request's internal port, echoed.
    pub internal_port: u16,
    /// The assigned external port and address (an IPv4-mapped address
    /// comes out as IPv4).
    pub external: SocketAddr,
}

impl Response {
    /// Parses a MAP answer: version 2, R bit, opcode MAP, a length that is
    /// a multiple of 4 between the header and 1100 bytes, and the 36-byte
    /// MAP body unless an error answer stops after the header. Options
    /// after the body are skipped.
    pub fn parse(b: &[u8]) -> Result<Self, ParseError> {
        // The version first, from as little as one byte: a NAT-PMP
        // gateway's "unsupported version" is 8 bytes, shorter than a PCP
        // header, and is what lets the client fall back at once.
        let Some(&version) = b.first() else {
            return Err(ParseError::Short {
                got: 0,
                want: HEADER_LEN,
            });
        };
        if version != VERSION {
            return Err(ParseError::Version(version));
        }
        if b.len() < HEADER_LEN {
            return Err(ParseError::Short {
                got: b.len(),
                want: HEADER_LEN,
            });
        }
        if b.len() > MAX_LEN {
            return Err(ParseError::Long(b.len()));
        }
        if !b.len().is_multiple_of(4) {
            return Err(ParseError::Unaligned(b.len()));
        }
        if b[1] & REPLY == 0 {
            return Err(ParseError::NotAReply(b[1]));
        }
        let op = b[1] & !REPLY;
        if op != OP_MAP {
            return Err(ParseError::Opcode(op));
        }
        let result = ResultCode::from(b[3]);
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let lifetime = u32_at(4);
        let epoch = u32_at(8);
        if b.len() < MAP_LEN {
            if result == ResultCode::Success {
                return Err(ParseError::Short {
                    got: b.len(),
                    want: MAP_LEN,
                });
            }
            return Ok(Self {
                result,
                lifetime,
                epoch,
                map: None,
            });
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&b[24..36]);
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&b[44..60]);
        let ip = Ipv6Addr::from(ip);
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        Ok(Self {
            result,
            lifetime,
            epoch,
            map: Some(MapFields {
                nonce: Nonce(nonce),
                protocol: b[36],
                internal_port: u16::from_be_bytes([b[40], b[41]]),
                external: SocketAddr::new(ip, u16::from_be_bytes([b[42], b[43]])),
            }),
        })
    }
}

/// An address in PCP's 128-bit field: IPv4 as IPv4-mapped IPv6.
fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: Nonce = Nonce([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

    fn request(lifetime: u32) -> MapRequest {
        MapRequest {
            nonce: NONCE,
            protocol: Protocol::Udp,
            client: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)),
            internal_port: 7718,
            suggested: None,
            lifetime,
        }
    }

    /// A MAP answer laid out by hand from RFC 6887 figures 3 and 10.
    fn answer(result: u8, lifetime: u32, nonce: [u8; 12], port: u16, ext: [u8; 4]) -> Vec<u8> {
        let mut b = vec![2, 0x81, 0, result];
        b.extend_from_slice(&lifetime.to_be_bytes());
        b.extend_from_slice(&77u32.to_be_bytes()); // epoch
        b.extend_from_slice(&[0; 12]); // reserved
        b.extend_from_slice(&nonce);
        b.extend_from_slice(&[17, 0, 0, 0]); // protocol, reserved
        b.extend_from_slice(&7718u16.to_be_bytes());
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        b.extend_from_slice(&ext);
        b
    }

    #[test]
    fn a_map_request_has_the_rfc_layout() {
        let b = request(7200).emit();
        let mut want = vec![2, 1, 0, 0, 0, 0, 0x1c, 0x20];
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 10]);
        want.extend_from_slice(&NONCE.0);
        want.extend_from_slice(&[17, 0, 0, 0, 0x1e, 0x26, 0, 0]);
        // No preference: ::ffff:0.0.0.0.
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(b.to_vec(), want);

        // A renewal suggests the assigned address and port; a delete is
        // lifetime 0 with the same nonce.
        let mut renew = request(7200);
        renew.suggested = Some("198.20.2.2:40000".parse().unwrap());
        let b = renew.emit();
        assert_eq!(&b[42..44], &[0x9c, 0x40]);
        assert_eq!(&b[56..60], &[198, 20, 2, 2]);
        let del = MapRequest {
            protocol: Protocol::Tcp,
            ..request(0)
        };
        let b = del.emit();
        assert_eq!(&b[4..8], &[0, 0, 0, 0]);
        assert_eq!(b[36], 6);
        assert_eq!(&b[24..36], &NONCE.0);
    }

    #[test]
    fn a_success_gives_the_assigned_address_port_and_lifetime() {
        let b = answer(0, 3600, NONCE.0, 40000, [198, 20, 2, 2]);
        let r = Response::parse(&b).unwrap();
        assert_eq!(r.result, ResultCode::Success);
        assert_eq!(r.epoch, 77);
        assert_eq!(
            request(7200).check(&r),
            Ok(Granted {
                external: "198.20.2.2:40000".parse().unwrap(),
                lifetime: 3600,
                epoch: 77,
            })
        );
        // Options after the body are skipped.
        let mut with_opt = b.clone();
        with_opt.extend_from_slice(&[0x80, 0, 0, 0]);
        assert_eq!(Response::parse(&with_opt), Ok(r));
        // The delete's answer: success with lifetime 0.
        let b = answer(0, 0, NONCE.0, 40000, [198, 20, 2, 2]);
        let g = request(0).check(&Response::parse(&b).unwrap()).unwrap();
        assert_eq!(g.lifetime, 0);
    }

    #[test]
    fn answers_to_other_requests_are_not_ours() {
        let mut other = NONCE.0;
        other[11] ^= 1;
        let r = Response::parse(&answer(0, 3600, other, 40000, [198, 20, 2, 2])).unwrap();
        assert_eq!(request(7200).check(&r), Err(CheckError::NotOurs));
        // Another internal port, another protocol.
        let mut b = answer(0, 3600, NONCE.0, 40000, [198, 20, 2, 2]);
        b[41] ^= 1;
        let r = Response::parse(&b).unwrap();
        assert_eq!(request(7200).check(&r), Err(CheckError::NotOurs));
        let mut b = answer(0, 3600, NONCE.0, 40000, [198, 20, 2, 2]);
        b[36] = 6;
        let r = Response::parse(&b).unwrap();
        assert_eq!(request(7200).check(&r), Err(CheckError::NotOurs));
    }

    #[test]
    fn result_codes_are_refusals() {
        for (code, want) in [
            (1, ResultCode::UnsupportedVersion),
            (2, ResultCode::NotAuthorized),
            (3, ResultCode::MalformedRequest),
            (4, ResultCode::UnsupportedOpcode),
            (5, ResultCode::UnsupportedOption),
            (6, ResultCode::MalformedOption),
            (7, ResultCode::NetworkFailure),
            (8, ResultCode::NoResources),
            (9, ResultCode::UnsupportedProtocol),
            (10, ResultCode::UserExceededQuota),
            (11, ResultCode::CannotProvideExternal),
            (12, ResultCode::AddressMismatch),
            (13, ResultCode::ExcessiveRemotePeers),
            (99, ResultCode::Other(99)),
        ] {
            let r = Response::parse(&answer(code, 30, NONCE.0, 0, [0; 4])).unwrap();
            assert_eq!(
                request(7200).check(&r),
                Err(CheckError::Refused {
                    result: want,
                    lifetime: 30
                })
            );
        }
        // An error cut after the header still says why.
        let mut b = answer(8, 30, NONCE.0, 0, [0; 4]);
        b.truncate(HEADER_LEN);
        let r = Response::parse(&b).unwrap();
        assert_eq!(r.map, None);
        assert!(matches!(
            request(7200).check(&r),
            Err(CheckError::Refused {
                result: ResultCode::NoResources,
                ..
            })
        ));
    }

    #[test]
    fn a_success_that_maps_nothing_is_empty() {
        for b in [
            answer(0, 3600, NONCE.0, 0, [198, 20, 2, 2]),
            answer(0, 3600, NONCE.0, 40000, [0, 0, 0, 0]),
            answer(0, 0, NONCE.0, 40000, [198, 20, 2, 2]),
        ] {
            let r = Response::parse(&b).unwrap();
            assert_eq!(request(7200).check(&r), Err(CheckError::Empty));
        }
    }

    #[test]
    fn bad_answers_are_typed_errors() {
        let ok = answer(0, 3600, NONCE.0, 40000, [198, 20, 2, 2]);
        assert_eq!(
            Response::parse(&[]),
            Err(ParseError::Short { got: 0, want: 24 })
        );
        // A NAT-PMP gateway's "unsupported version" (RFC 6886 3.5): 8 bytes.
        assert_eq!(
            Response::parse(&[0, 0x81, 0, 1, 0, 0, 0, 9]),
            Err(ParseError::Version(0))
        );
        // A draft-PCP server's UNSUPP_VERSION.
        let mut v1 = ok.clone();
        v1[0] = 1;
        v1[3] = 1;
        assert_eq!(Response::parse(&v1), Err(ParseError::Version(1)));
        assert_eq!(
            Response::parse(&ok[..20]),
            Err(ParseError::Short { got: 20, want: 24 })
        );
        // A success needs its MAP body.
        assert_eq!(
            Response::parse(&ok[..48]),
            Err(ParseError::Short { got: 48, want: 60 })
        );
        assert_eq!(Response::parse(&ok[..58]), Err(ParseError::Unaligned(58)));
        let mut long = ok.clone();
        long.resize(1104, 0);
        assert_eq!(Response::parse(&long), Err(ParseError::Long(1104)));
        // Our own request, reflected: no R bit.
        assert_eq!(
            Response::parse(&request(7200).emit()),
            Err(ParseError::NotAReply(1))
        );
        // An ANNOUNCE answer (opcode 0).
        let mut ann = ok.clone();
        ann[1] = 0x80;
        assert_eq!(Response::parse(&ann), Err(ParseError::Opcode(0)));
    }

    #[test]
    fn no_input_panics() {
        for len in 0..70 {
            for op in [0u8, 1, 0x80, 0x81, 0x82, 0xff] {
                for res in [0u8, 1, 8] {
                    let mut b = vec![2u8; len];
                    if len > 1 {
                        b[1] = op;
                    }
                    if len > 3 {
                        b[3] = res;
                    }
                    let _ = Response::parse(&b);
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            if let Ok(r) = Response::parse(&b) {
                proptest::prop_assert_eq!(b[1], 0x81);
                proptest::prop_assert!(r.map.is_some() || r.result != ResultCode::Success);
                let _ = request(7200).check(&r);
            }
        }
    }
}
