//! NAT-PMP (RFC 6886) messages: the client's requests and the gateway's
//! answers. Pure codec: no sockets, no clock. Answers come from the
//! network (anything on the LAN can send to the client's port), so
//! [`Response::parse`] checks every length and field and never panics; a
//! fuzz target (node/fuzz, `natpmp_parse`) holds it to that.

use std::net::Ipv4Addr;

/// UDP port a NAT-PMP gateway listens on (RFC 6886 section 3).
pub const SERVER_PORT: u16 = 5351;

/// Protocol version of NAT-PMP (PCP, RFC 6887, is version 2).
const VERSION: u8 = 0;
/// Opcode of the external-address request.
const OP_EXTERNAL: u8 = 0;
/// Opcode of a UDP mapping request.
const OP_MAP_UDP: u8 = 1;
/// Opcode of a TCP mapping request.
const OP_MAP_TCP: u8 = 2;
/// Answers carry the request's opcode plus this.
const OP_REPLY: u8 = 128;

/// Why an answer was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than its opcode's fixed size.
    #[error("NAT-PMP answer of {got} bytes, {want} expected")]
    Short {
        /// The length received.
        got: usize,
        /// The length the opcode needs.
        want: usize,
    },
    /// Not version 0 (a PCP server answers a NAT-PMP request with its own
    /// version and result "unsupported version").
    #[error("NAT-PMP version {0} in the answer")]
    Version(u8),
    /// An opcode without the reply bit, or one this client never sends.
    #[error("NAT-PMP opcode {0} in the answer")]
    Opcode(u8),
}

/// Transport of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// UDP (the carrier's).
    Udp,
    /// TCP.
    Tcp,
}

/// A client request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// "What is your external address?"
    ExternalAddress,
    /// Map `external` (a wish; the gateway may choose another) to our
    /// `internal` port for `lifetime` seconds. Lifetime 0 with external 0
    /// deletes the mapping (RFC 6886 section 3.4).
    Map {
        /// UDP or TCP.
        protocol: Protocol,
        /// The port on this host.
        internal: u16,
        /// The external port asked for (0: any).
        external: u16,
        /// Seconds; RFC 6886 recommends 7200.
        lifetime: u32,
    },
}

impl Request {
    /// The request's wire bytes (2 or 12 bytes).
    pub fn emit(&self) -> Vec<u8> {
        match *self {
            Self::ExternalAddress => vec![VERSION, OP_EXTERNAL],
            Self::Map {
                protocol,
                internal,
                external,
                lifetime,
            } => {
                let op = match protocol {
                    Protocol::Udp => OP_MAP_UDP,
                    Protocol::Tcp => OP_MAP_TCP,
                };
                let mut b = Vec::with_capacity(12);
                b.extend_from_slice(&[VERSION, op, 0, 0]);
                b.extend_from_slice(&internal.to_be_bytes());
                b.extend_from_slice(&external.to_be_bytes());
                b.extend_from_slice(&lifetime.to_be_bytes());
                b
            }
        }
    }
}

/// The result code of an answer (RFC 6886 section 3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    /// 0: success.
    Success,
    /// 1: the gateway speaks another version.
    UnsupportedVersion,
    /// 2: the gateway does NAT-PMP but refuses (e.g. turned off by its owner).
    NotAuthorized,
    /// 3: network failure (e.g. the gateway has no external address yet).
    NetworkFailure,
    /// 4: out of resources (no ports or mappings left).
    OutOfResources,
    /// 5: unsupported opcode.
    UnsupportedOpcode,
    /// Anything else (kept for logs).
    Other(u16),
}

impl From<u16> for ResultCode {
    fn from(v: u16) -> Self {
        match v {
            0 => Self::Success,
            1 => Self::UnsupportedVersion,
            2 => Self::NotAuthorized,
            3 => Self::NetworkFailure,
            4 => Self::OutOfResources,
            5 => Self::UnsupportedOpcode,
            n => Self::Other(n),
        }
    }
}

/// A gateway's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// The answer to [`Request::ExternalAddress`].
    ExternalAddress {
        /// Success or why not (the address is meaningful on success only).
        result: ResultCode,
        /// Seconds since the gateway's mapping table started: a value that
        /// goes back means the gateway lost its mappings (RFC 6886 3.6).
        epoch: u32,
        /// The gateway's external IPv4 address.
        address: Ipv4Addr,
    },
    /// The answer to [`Request::Map`].
    Map {
        /// UDP or TCP, as asked.
        protocol: Protocol,
        /// Success or why not.
        result: ResultCode,
        /// As above.
        epoch: u32,
        /// Our port, as asked.
        internal: u16,
        /// The external port the gateway gave.
        external: u16,
        /// Seconds the mapping lasts (may be shorter than asked).
        lifetime: u32,
    },
}

impl Response {
    /// Parses an answer. Answers of version 0 with a result code but too
    /// short for their opcode's body (RFC 6886 allows a gateway to send
    /// only the 8-byte header on some errors) still parse when their result
    /// is not success, with zeros for the missing fields.
    pub fn parse(b: &[u8]) -> Result<Self, ParseError> {
        if b.len() < 2 {
            return Err(ParseError::Short {
                got: b.len(),
                want: 2,
            });
        }
        if b[0] != VERSION {
            return Err(ParseError::Version(b[0]));
        }
        let op = b[1];
        let want = match op {
            x if x == OP_REPLY | OP_EXTERNAL => 12,
            x if x == OP_REPLY | OP_MAP_UDP || x == OP_REPLY | OP_MAP_TCP => 16,
            _ => return Err(ParseError::Opcode(op)),
        };
        if b.len() < 4 {
            return Err(ParseError::Short { got: b.len(), want });
        }
        let result = ResultCode::from(u16::from_be_bytes([b[2], b[3]]));
        if b.len() < want && (result == ResultCode::Success || b.len() < 8) {
            return Err(ParseError::Short { got: b.len(), want });
        }
        // Zero-padded copy: every field below is read from a full-size
        // buffer, so an error answer cut after its header reads zeros.
        let mut f = [0u8; 16];
        let n = b.len().min(want);
        f[..n].copy_from_slice(&b[..n]);
        let u16_at = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
        let epoch = u32_at(4);
        Ok(if want == 12 {
            Self::ExternalAddress {
                result,
                epoch,
                address: Ipv4Addr::new(f[8], f[9], f[10], f[11]),
            }
        } else {
            Self::Map {
                protocol: if op == OP_REPLY | OP_MAP_UDP {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
                result,
                epoch,
                internal: u16_at(8),
                external: u16_at(10),
                lifetime: u32_at(12),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_rfc_layout() {
        assert_eq!(Request::ExternalAddress.emit(), [0, 0]);
        let m = Request::Map {
            protocol: Protocol::Udp,
            internal: 7718,
            external: 7718,
            lifetime: 7200,
        };
        assert_eq!(
            m.emit(),
            [0, 1, 0, 0, 0x1e, 0x26, 0x1e, 0x26, 0, 0, 0x1c, 0x20]
        );
        let del = Request::Map {
            protocol: Protocol::Tcp,
            internal: 80,
            external: 0,
            lifetime: 0,
        };
        assert_eq!(del.emit(), [0, 2, 0, 0, 0, 80, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn answers_parse() {
        let ext = [0, 128, 0, 0, 0, 0, 1, 0, 198, 20, 2, 2];
        assert_eq!(
            Response::parse(&ext),
            Ok(Response::ExternalAddress {
                result: ResultCode::Success,
                epoch: 256,
                address: Ipv4Addr::new(198, 20, 2, 2),
            })
        );
        let map = [
            0, 129, 0, 0, 0, 0, 0, 9, 0x1e, 0x26, 0x9c, 0x40, 0, 0, 0x0e, 0x10,
        ];
        assert_eq!(
            Response::parse(&map),
            Ok(Response::Map {
                protocol: Protocol::Udp,
                result: ResultCode::Success,
                epoch: 9,
                internal: 7718,
                external: 40000,
                lifetime: 3600,
            })
        );
        // A refusal cut after the header parses, with its result.
        let refused = [0, 129, 0, 2, 0, 0, 0, 9];
        assert!(matches!(
            Response::parse(&refused),
            Ok(Response::Map {
                result: ResultCode::NotAuthorized,
                lifetime: 0,
                ..
            })
        ));
    }

    #[test]
    fn bad_answers_are_typed_errors() {
        assert_eq!(
            Response::parse(&[]),
            Err(ParseError::Short { got: 0, want: 2 })
        );
        // A PCP server's answer (version 2).
        assert_eq!(
            Response::parse(&[2, 129, 0, 1]),
            Err(ParseError::Version(2))
        );
        // A request echoed back (no reply bit).
        assert_eq!(Response::parse(&[0, 1, 0, 0]), Err(ParseError::Opcode(1)));
        // A success cut short.
        assert_eq!(
            Response::parse(&[0, 129, 0, 0, 0, 0, 0, 9, 0x1e, 0x26]),
            Err(ParseError::Short { got: 10, want: 16 })
        );
        assert_eq!(
            Response::parse(&[0, 128, 0]),
            Err(ParseError::Short { got: 3, want: 12 })
        );
    }

    #[test]
    fn no_input_panics() {
        // Every length up to past the largest answer, every opcode, both
        // result kinds: parse returns (the fuzz target goes further).
        for len in 0..20 {
            for op in [0u8, 1, 2, 3, 128, 129, 130, 131, 255] {
                for res in [0u8, 3] {
                    let mut b = vec![0u8; len];
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
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            if let Ok(Response::Map { protocol, .. }) = Response::parse(&b) {
                proptest::prop_assert_eq!(protocol == Protocol::Udp, b[1] == 129);
            }
        }
    }
}
