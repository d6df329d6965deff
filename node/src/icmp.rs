//! ICMP messages the node writes into its TUN: "destination unreachable"
//! for flows that policy refused or whose negotiation failed, so the
//! application's `connect()` or `send()` fails at once instead of hanging.

use std::net::{IpAddr, Ipv4Addr};

/// ICMPv4 destination unreachable.
pub const V4_UNREACHABLE: u8 = 3;
/// Code 13: communication administratively prohibited (policy refused).
pub const V4_ADMIN_PROHIBITED: u8 = 13;
/// Code 1: host unreachable (the negotiation got no answer).
pub const V4_HOST_UNREACHABLE: u8 = 1;
/// ICMPv6 destination unreachable.
pub const V6_UNREACHABLE: u8 = 1;
/// ICMPv6 code 1: communication with destination administratively prohibited.
pub const V6_ADMIN_PROHIBITED: u8 = 1;
/// ICMPv6 code 3: address unreachable.
pub const V6_ADDRESS_UNREACHABLE: u8 = 3;
/// ICMPv6 packet too big (RFC 4443 3.2): IPv6 routers never fragment, so
/// path MTU discovery needs it for every packet, not only DF ones.
pub const V6_PACKET_TOO_BIG: u8 = 2;
/// The smallest MTU an IPv6 link may have (RFC 8200 5).
pub const V6_MIN_MTU: u16 = 1280;

/// How much of the offending packet is quoted (its IP header and 8 bytes
/// of L4 header for IPv4, as RFC 792 asks; a little more is harmless).
pub const QUOTE_LEN: usize = 68;

/// ICMPv4 code 4: fragmentation needed and DF set (path MTU discovery).
pub const V4_FRAG_NEEDED: u8 = 4;

/// Why a flow is reported unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Policy refused the flow (a CL GE without a shared group).
    Prohibited,
    /// No answer from the destination.
    NoAnswer,
    /// The packet is too big for the carrier: the sender should use at most
    /// this MTU (IPv4 packets with DF only, others get no answer; every
    /// IPv6 packet, with at least [`V6_MIN_MTU`]).
    TooBig(u16),
}

/// Writes into `out` an ICMP "destination unreachable" answering `packet`
/// (an IPv4 or IPv6 packet this host sent; only its first bytes are
/// needed), as if sent by the packet's destination. Returns the length, or
/// `None` when `packet` is not an IP packet worth answering (too short, or
/// itself an ICMP error). `out` must hold at least 48 + [`QUOTE_LEN`] bytes.
pub fn unreachable(packet: &[u8], why: Unreachable, out: &mut [u8]) -> Option<usize> {
    match (packet.first()? >> 4, why) {
        // Only a DF packet asks for path-MTU feedback.
        (4, Unreachable::TooBig(_)) if packet.get(6).is_none_or(|f| f & 0x40 == 0) => None,
        (4, _) => unreachable_v4(packet, why, out),
        (6, _) => unreachable_v6(packet, why, out),
        _ => None,
    }
}

fn unreachable_v4(packet: &[u8], why: Unreachable, out: &mut [u8]) -> Option<usize> {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl {
        return None;
    }
    // Never answer an ICMP error with another (RFC 1122 3.2.2).
    if packet[9] == 1 && packet.get(ihl).is_some_and(|t| ![0, 8].contains(t)) {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let quote = &packet[..packet.len().min(ihl + 8).min(QUOTE_LEN)];
    let total = 20 + 8 + quote.len();
    let out = out.get_mut(..total)?;
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = 64;
    out[9] = 1;
    out[12..16].copy_from_slice(&dst.octets());
    out[16..20].copy_from_slice(&src.octets());
    let c = checksum(&[&out[..20]]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out[20] = V4_UNREACHABLE;
    out[21] = match why {
        Unreachable::Prohibited => V4_ADMIN_PROHIBITED,
        Unreachable::NoAnswer => V4_HOST_UNREACHABLE,
        Unreachable::TooBig(mtu) => {
            out[26..28].copy_from_slice(&mtu.to_be_bytes());
            V4_FRAG_NEEDED
        }
    };
    out[28..].copy_from_slice(quote);
    let c = checksum(&[&out[20..]]);
    out[22..24].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

fn unreachable_v6(packet: &[u8], why: Unreachable, out: &mut [u8]) -> Option<usize> {
    if packet.len() < 40 {
        return None;
    }
    if packet[6] == 58 && packet.get(40).is_some_and(|t| *t < 128) {
        return None;
    }
    let quote = &packet[..packet.len().min(40 + 8).min(QUOTE_LEN)];
    let icmp_len = 8 + quote.len();
    let total = 40 + icmp_len;
    let out = out.get_mut(..total)?;
    out.fill(0);
    out[0] = 0x60;
    out[4..6].copy_from_slice(&(icmp_len as u16).to_be_bytes());
    out[6] = 58;
    out[7] = 64;
    let (src, dst) = (&packet[8..24], &packet[24..40]);
    out[8..24].copy_from_slice(dst);
    out[24..40].copy_from_slice(src);
    (out[40], out[41]) = match why {
        Unreachable::Prohibited => (V6_UNREACHABLE, V6_ADMIN_PROHIBITED),
        Unreachable::NoAnswer => (V6_UNREACHABLE, V6_ADDRESS_UNREACHABLE),
        Unreachable::TooBig(mtu) => {
            out[44..48].copy_from_slice(&u32::from(mtu.max(V6_MIN_MTU)).to_be_bytes());
            (V6_PACKET_TOO_BIG, 0)
        }
    };
    out[48..].copy_from_slice(quote);
    let mut pseudo = [0u8; 40];
    pseudo[..16].copy_from_slice(dst);
    pseudo[16..32].copy_from_slice(src);
    pseudo[32..36].copy_from_slice(&(icmp_len as u32).to_be_bytes());
    pseudo[39] = 58;
    let c = checksum(&[&pseudo, &out[40..]]);
    out[42..44].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

/// An ICMPv4 echo request (ICMP header and payload only, for a raw socket
/// whose kernel adds the IP header).
pub fn echo_request(id: u16, seq: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[8, 0, 0, 0]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
    let c = checksum(&[out]);
    out[2..4].copy_from_slice(&c.to_be_bytes());
}

/// What an ICMPv4 packet read from a raw socket (IP header included) says
/// about echo `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoAnswer {
    /// An echo reply with this sequence number, from this address.
    Reply {
        /// Sequence number.
        seq: u16,
        /// Who answered.
        from: IpAddr,
    },
    /// A destination-unreachable quoting our echo request.
    Unreachable {
        /// Its code (13: administratively prohibited).
        code: u8,
    },
}

/// Parses a packet from a raw ICMPv4 socket; `None` when it is not about echo `id`.
pub fn parse_echo_answer(packet: &[u8], id: u16) -> Option<EchoAnswer> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let icmp = packet.get(ihl..)?;
    let from = IpAddr::V4(Ipv4Addr::new(
        *packet.get(12)?,
        packet[13],
        packet[14],
        packet[15],
    ));
    match *icmp.first()? {
        0 if icmp.len() >= 8 && u16::from_be_bytes([icmp[4], icmp[5]]) == id => {
            Some(EchoAnswer::Reply {
                seq: u16::from_be_bytes([icmp[6], icmp[7]]),
                from,
            })
        }
        3 => {
            // The quoted packet: IP header, then our echo request's header.
            let inner = icmp.get(8..)?;
            let ihl2 = usize::from(inner.first()? & 0x0f) * 4;
            let echo = inner.get(ihl2..ihl2 + 8)?;
            (echo[0] == 8 && u16::from_be_bytes([echo[4], echo[5]]) == id)
                .then_some(EchoAnswer::Unreachable { code: icmp[1] })
        }
        _ => None,
    }
}

/// Parses an ICMPv6 message from a raw ICMPv6 socket (no IP header: the
/// kernel strips it) from `from`; `None` when it is not about echo `id`.
/// A destination unreachable answers with the code an ICMPv4 one would
/// carry (13 for "administratively prohibited", 1 otherwise).
pub fn parse_echo6_answer(msg: &[u8], id: u16, from: IpAddr) -> Option<EchoAnswer> {
    match *msg.first()? {
        129 if msg.len() >= 8 && u16::from_be_bytes([msg[4], msg[5]]) == id => {
            Some(EchoAnswer::Reply {
                seq: u16::from_be_bytes([msg[6], msg[7]]),
                from,
            })
        }
        V6_UNREACHABLE => {
            // The quoted packet: IPv6 header, then our echo request.
            let echo = msg.get(8 + 40..8 + 40 + 8)?;
            (echo[0] == 128 && u16::from_be_bytes([echo[4], echo[5]]) == id).then_some(
                EchoAnswer::Unreachable {
                    code: if msg[1] == V6_ADMIN_PROHIBITED {
                        V4_ADMIN_PROHIBITED
                    } else {
                        V4_HOST_UNREACHABLE
                    },
                },
            )
        }
        _ => None,
    }
}

/// The Internet checksum over the concatenation of `parts` (each of even
/// length except the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        let mut chunks = p.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [b] = chunks.remainder() {
            sum += u32::from(*b) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpn_proto::packet::Packet;

    fn udp_v4() -> Vec<u8> {
        let mut p = vec![0u8; 20 + 8 + 5];
        p[0] = 0x45;
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[100, 64, 0, 1]);
        p[16..20].copy_from_slice(&[100, 64, 0, 2]);
        p[20..22].copy_from_slice(&5000u16.to_be_bytes());
        p[22..24].copy_from_slice(&53u16.to_be_bytes());
        p[24..26].copy_from_slice(&13u16.to_be_bytes());
        p[28..].copy_from_slice(b"hello");
        let c = checksum(&[&p[..20]]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn an_admin_prohibited_answer_is_a_valid_packet_from_the_destination() {
        let mut out = [0u8; 128];
        let n = unreachable(&udp_v4(), Unreachable::Prohibited, &mut out).unwrap();
        let pkt = Packet::parse(&out[..n]).unwrap();
        assert!(pkt.ip_checksum_ok());
        assert!(pkt.l4_checksum_ok());
        assert_eq!(pkt.src().to_string(), "100.64.0.2");
        assert_eq!(pkt.dst().to_string(), "100.64.0.1");
        assert_eq!((out[20], out[21]), (3, 13));
        // The quote is the original header and 8 bytes of UDP header.
        assert_eq!(&out[28..n], &udp_v4()[..28]);
        let n = unreachable(&udp_v4(), Unreachable::NoAnswer, &mut out).unwrap();
        assert_eq!((out[20], out[21], n), (3, 1, 56));
    }

    #[test]
    fn a_too_big_df_packet_gets_frag_needed_with_the_mtu() {
        let mut out = [0u8; 128];
        let mut df = udp_v4();
        // A packet without DF may be fragmented: no answer.
        assert_eq!(unreachable(&df, Unreachable::TooBig(1200), &mut out), None);
        df[6] = 0x40;
        let n = unreachable(&df, Unreachable::TooBig(1200), &mut out).unwrap();
        assert_eq!((out[20], out[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([out[26], out[27]]), 1200);
        assert!(Packet::parse(&out[..n]).unwrap().l4_checksum_ok());
    }

    #[test]
    fn icmp_errors_and_garbage_get_no_answer() {
        let mut out = [0u8; 128];
        let mut err = udp_v4();
        err[9] = 1;
        err[20] = 3;
        assert_eq!(unreachable(&err, Unreachable::Prohibited, &mut out), None);
        for junk in [&[][..], &[0x45, 0, 0][..], &[0x71; 40][..], &[0x60; 20][..]] {
            assert_eq!(unreachable(junk, Unreachable::Prohibited, &mut out), None);
        }
    }

    #[test]
    fn an_ipv6_answer_has_a_valid_checksum() {
        let mut p = vec![0u8; 40 + 8];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[44..46].copy_from_slice(&8u16.to_be_bytes());
        let mut out = [0u8; 160];
        let n = unreachable(&p, Unreachable::Prohibited, &mut out).unwrap();
        let pkt = Packet::parse(&out[..n]).unwrap();
        assert!(pkt.l4_checksum_ok());
        assert_eq!((out[40], out[41]), (1, 1));
        // Too big: every IPv6 packet gets it (no DF in IPv6), with the MTU
        // in the 32-bit field and never below IPv6's minimum.
        for (asked, told) in [(1380u16, 1380u32), (1200, 1280)] {
            let n = unreachable(&p, Unreachable::TooBig(asked), &mut out).unwrap();
            let pkt = Packet::parse(&out[..n]).unwrap();
            assert!(pkt.l4_checksum_ok());
            assert_eq!((out[40], out[41]), (2, 0));
            assert_eq!(u32::from_be_bytes(out[44..48].try_into().unwrap()), told);
            assert_eq!(&out[24..40], &p[8..24], "back to the sender");
        }
    }

    #[test]
    fn icmpv6_echo_replies_and_refusals_are_told_apart() {
        let from: IpAddr = "fd00::6440:2".parse().unwrap();
        let reply = [129, 0, 0, 0, 0x12, 0x34, 0, 7, b'x'];
        assert_eq!(
            parse_echo6_answer(&reply, 0x1234, from),
            Some(EchoAnswer::Reply { seq: 7, from })
        );
        assert_eq!(parse_echo6_answer(&reply, 0x1235, from), None);
        // Unreachable quoting our request (IPv6 header, then the echo).
        let mut unreach = vec![1, 1, 0, 0, 0, 0, 0, 0];
        unreach.extend_from_slice(&[0x60; 40]);
        unreach.extend_from_slice(&[128, 0, 0, 0, 0x12, 0x34, 0, 0]);
        assert_eq!(
            parse_echo6_answer(&unreach, 0x1234, from),
            Some(EchoAnswer::Unreachable { code: 13 })
        );
        unreach[1] = 3;
        assert_eq!(
            parse_echo6_answer(&unreach, 0x1234, from),
            Some(EchoAnswer::Unreachable { code: 1 })
        );
        assert_eq!(parse_echo6_answer(&unreach[..30], 0x1234, from), None);
        assert_eq!(parse_echo6_answer(&[], 0x1234, from), None);
    }

    #[test]
    fn echo_requests_and_answers_round_trip() {
        let mut req = Vec::new();
        echo_request(0x1234, 7, b"fpn", &mut req);
        assert_eq!(checksum(&[&req]), 0);
        // A reply as a raw socket returns it: IP header + ICMP.
        let mut reply = vec![0x45; 20];
        reply[12..16].copy_from_slice(&[100, 64, 0, 2]);
        let mut icmp = req.clone();
        icmp[0] = 0;
        reply.extend_from_slice(&icmp);
        assert_eq!(
            parse_echo_answer(&reply, 0x1234),
            Some(EchoAnswer::Reply {
                seq: 7,
                from: "100.64.0.2".parse().unwrap()
            })
        );
        assert_eq!(parse_echo_answer(&reply, 0x4321), None);
        // An admin-prohibited error quoting the request.
        let mut sent = vec![0x45; 20];
        sent[9] = 1;
        sent.extend_from_slice(&req);
        let mut out = [0u8; 128];
        let n = unreachable(&sent, Unreachable::Prohibited, &mut out).unwrap();
        assert_eq!(
            parse_echo_answer(&out[..n], 0x1234),
            Some(EchoAnswer::Unreachable { code: 13 })
        );
        assert_eq!(parse_echo_answer(&[0x45], 1), None);
    }
}
