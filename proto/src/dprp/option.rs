//! DPRP options: typed TLVs carried by every DPRP message.
//!
//! Wire form of one option: `kind u8 | len u8 | value [len]`; a list is a
//! count byte (at most [`MAX_OPTIONS`]) followed by the options in the order
//! the sender chose (order is kept, so re-encoding gives the same bytes).
//!
//! | kind | option | value |
//! | --- | --- | --- |
//! | 1 | Mobile PPC binding update | old address, old port u16, new address, new port u16 |
//! | 2 | NAT-f | LIP address, reserved port u16 |
//! | 3 | Cookie (DDE only: the echo of a COOKIE) | cookie [16] |
//! | 4 | Fast open (DDE and RGI: this end keeps a pair epoch) | empty |
//! | 5..=255 | unknown (kept, ignored) | opaque |
//!
//! Addresses are a family byte (4 or 6) and the address bytes. Kind 0 is
//! reserved and refused.

use std::net::{IpAddr, SocketAddr};

use crate::wire::{Reader, Writer};
use crate::{Error, Result};

/// The most options one message may carry.
pub const MAX_OPTIONS: usize = 16;

const KIND_BINDING_UPDATE: u8 = 1;
const KIND_NAT_F: u8 = 2;
const KIND_COOKIE: u8 = 3;
const KIND_FAST_OPEN: u8 = 4;
const KIND_FAST_FIRST: u8 = 5;
/// The highest kind this version knows.
const KIND_LAST_KNOWN: u8 = KIND_FAST_FIRST;

/// One DPRP option.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DprpOption {
    /// Mobile PPC binding update: the sender's underlay address changed from
    /// `old` to `new`; the receiver rewrites the flow's underlay addresses (CIT).
    BindingUpdate {
        /// The address and port the peer knew.
        old: SocketAddr,
        /// The address and port to use from now on.
        new: SocketAddr,
    },
    /// NAT-f: the private (LIP) address of the host behind the receiving
    /// gateway, and the port the gateway reserved on its public address.
    NatF {
        /// The host's local (private) address.
        lip: IpAddr,
        /// The port reserved on the gateway's public address.
        reserved_port: u16,
    },
    /// The cookie a loaded responder sent in a COOKIE message, echoed in
    /// the retried DDE. Older nodes carry it as an unknown option.
    Cookie([u8; crate::dprp::msg::COOKIE_LEN]),
    /// Fast open (docs/PROTOCOL.md): the sender keeps a pair epoch from
    /// this negotiation if the other end does too (in a DDE: it offers; in
    /// an RGI: it accepts). Older nodes carry it as an unknown option and
    /// never answer it, so neither end keeps an epoch with them.
    FastOpen,
    /// Beside [`DprpOption::FastOpen`]: the sender takes FOPs that carry
    /// their flow's first packet (docs/PROTOCOL.md, "The first packet in
    /// its FOP"; in a DDE it offers, in an RGI it accepts). Older nodes
    /// carry it as an unknown option and never answer it, so they are
    /// sent FOPs without one.
    FastFirst,
    /// An option this version does not know; carried unchanged and ignored.
    Unknown {
        /// The kind byte (6 or more).
        kind: u8,
        /// The value bytes.
        value: Vec<u8>,
    },
}

impl DprpOption {
    fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        let mut value = Vec::with_capacity(40);
        let mut v = Writer::new(&mut value);
        let kind = match self {
            Self::BindingUpdate { old, new } => {
                v.ip_addr(old.ip());
                v.u16(old.port());
                v.ip_addr(new.ip());
                v.u16(new.port());
                KIND_BINDING_UPDATE
            }
            Self::NatF { lip, reserved_port } => {
                v.ip_addr(*lip);
                v.u16(*reserved_port);
                KIND_NAT_F
            }
            Self::Cookie(c) => {
                v.bytes(c);
                KIND_COOKIE
            }
            Self::FastOpen => KIND_FAST_OPEN,
            Self::FastFirst => KIND_FAST_FIRST,
            Self::Unknown { kind, value: bytes } => {
                if *kind <= KIND_LAST_KNOWN {
                    return Err(Error::invalid(
                        "option kind",
                        "unknown options must use kind 6 or more",
                    ));
                }
                v.bytes(bytes);
                *kind
            }
        };
        w.u8(kind);
        w.short_bytes(&value, usize::from(u8::MAX), "option value")
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let kind = r.u8("option kind")?;
        let value = r.short_bytes(usize::from(u8::MAX), "option value")?;
        let mut v = Reader::new(value);
        let opt = match kind {
            0 => return Err(Error::invalid("option kind", "0 is reserved")),
            KIND_BINDING_UPDATE => {
                let old_ip = v.ip_addr("binding update old address")?;
                let old_port = v.u16("binding update old port")?;
                let new_ip = v.ip_addr("binding update new address")?;
                let new_port = v.u16("binding update new port")?;
                Self::BindingUpdate {
                    old: SocketAddr::new(old_ip, old_port),
                    new: SocketAddr::new(new_ip, new_port),
                }
            }
            KIND_NAT_F => Self::NatF {
                lip: v.ip_addr("NAT-f LIP")?,
                reserved_port: v.u16("NAT-f reserved port")?,
            },
            KIND_COOKIE => Self::Cookie(v.array("cookie")?),
            KIND_FAST_OPEN => Self::FastOpen,
            KIND_FAST_FIRST => Self::FastFirst,
            kind => {
                return Ok(Self::Unknown {
                    kind,
                    value: value.to_vec(),
                });
            }
        };
        v.finish("option value")?;
        Ok(opt)
    }
}

/// Appends a count byte and the options.
pub(crate) fn encode_options(w: &mut Writer<'_>, options: &[DprpOption]) -> Result<()> {
    if options.len() > MAX_OPTIONS {
        return Err(Error::TooLarge {
            what: "option list",
            len: options.len(),
            max: MAX_OPTIONS,
        });
    }
    w.u8(options.len() as u8);
    options.iter().try_for_each(|o| o.encode(w))
}

/// Reads a list written by [`encode_options`].
pub(crate) fn decode_options(r: &mut Reader<'_>) -> Result<Vec<DprpOption>> {
    let n = usize::from(r.u8("option count")?);
    if n > MAX_OPTIONS {
        return Err(Error::TooLarge {
            what: "option list",
            len: n,
            max: MAX_OPTIONS,
        });
    }
    (0..n).map(|_| DprpOption::decode(r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(opts: &[DprpOption]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_options(&mut Writer::new(&mut v), opts).unwrap();
        let mut r = Reader::new(&v);
        assert_eq!(decode_options(&mut r).unwrap(), opts);
        r.finish("options").unwrap();
        v
    }

    #[test]
    fn typed_options_round_trip() {
        let v = round_trip(&[
            DprpOption::BindingUpdate {
                old: "198.18.0.5:4500".parse().unwrap(),
                new: "[2001:db8::5]:4501".parse().unwrap(),
            },
            DprpOption::NatF {
                lip: "192.168.1.10".parse().unwrap(),
                reserved_port: 40001,
            },
            DprpOption::FastOpen,
            DprpOption::FastFirst,
            DprpOption::Unknown {
                kind: 200,
                value: vec![1, 2, 3],
            },
        ]);
        // count, then BU: kind 1, len 1+4+2+1+16+2 = 26
        assert_eq!(&v[..3], &[5, 1, 26]);
        // Fast open and its first packets: kinds 4 and 5, empty; a value
        // is refused.
        assert!(
            v.windows(4)
                .any(|w| w == [KIND_FAST_OPEN, 0, KIND_FAST_FIRST, 0])
        );
        assert!(decode_options(&mut Reader::new(&[1, KIND_FAST_OPEN, 1, 0])).is_err());
        assert!(decode_options(&mut Reader::new(&[1, KIND_FAST_FIRST, 1, 0])).is_err());
    }

    #[test]
    fn malformed_options_are_errors() {
        // NAT-f with a trailing byte inside its value.
        let bad = [1, KIND_NAT_F, 8, 4, 192, 168, 1, 10, 0, 80, 0];
        assert!(matches!(
            decode_options(&mut Reader::new(&bad)),
            Err(Error::TrailingBytes { .. })
        ));
        // Reserved kind 0, too many options, value longer than the input.
        assert!(decode_options(&mut Reader::new(&[1, 0, 0])).is_err());
        assert!(matches!(
            decode_options(&mut Reader::new(&[17])),
            Err(Error::TooLarge { .. })
        ));
        assert!(decode_options(&mut Reader::new(&[1, 9, 5, 1])).is_err());
        // Unknown options may not pose as known kinds.
        let mut v = Vec::new();
        let opt = DprpOption::Unknown {
            kind: KIND_NAT_F,
            value: vec![],
        };
        assert!(encode_options(&mut Writer::new(&mut v), &[opt]).is_err());
    }
}
