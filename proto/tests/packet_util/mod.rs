//! Test packets built with etherparse, and validation by etherparse: an
//! implementation independent of fpn-proto's own parser and checksum code.

#![allow(dead_code)] // each test crate uses a different subset

use std::net::Ipv6Addr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};

pub const V4_SRC: [u8; 4] = [198, 18, 0, 1];
pub const V4_DST: [u8; 4] = [198, 18, 0, 2];

pub fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

pub fn v6_src() -> [u8; 16] {
    v6("fd00:5c::1")
}

pub fn v6_dst() -> [u8; 16] {
    v6("fd00:5c::2")
}

/// The payload used in tests: recognisable, not constant.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
        .collect()
}

pub fn ipv4_udp(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(V4_SRC, V4_DST, 64)
        .udp(40000, 53)
        .write(&mut out, &payload(len))
        .unwrap();
    out
}

pub fn ipv6_udp(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(v6_src(), v6_dst(), 64)
        .udp(40000, 53)
        .write(&mut out, &payload(len))
        .unwrap();
    out
}

pub fn ipv4_tcp(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(V4_SRC, V4_DST, 64)
        .tcp(40000, 22, 0x1234_5678, 64240)
        .ack(0x0abc_def0)
        .psh()
        .write(&mut out, &payload(len))
        .unwrap();
    out
}

pub fn ipv6_tcp(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(v6_src(), v6_dst(), 64)
        .tcp(40000, 22, 0x1234_5678, 64240)
        .ack(0x0abc_def0)
        .psh()
        .write(&mut out, &payload(len))
        .unwrap();
    out
}

pub fn ipv4_ping(id: u16, seq: u16, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(V4_SRC, V4_DST, 64)
        .icmpv4_echo_request(id, seq)
        .write(&mut out, &payload(len))
        .unwrap();
    out
}

pub fn ipv6_ping(id: u16, seq: u16, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(v6_src(), v6_dst(), 64)
        .icmpv6_echo_request(id, seq)
        .write(&mut out, &payload(len))
        .unwrap();
    out
}

/// A SYN (or SYN-ACK) with MSS, SACK-permitted, timestamps and window scale,
/// as Linux sends them.
pub fn tcp_syn(ipv6: bool, mss: u16, syn_ack: bool) -> Vec<u8> {
    let opts = [
        TcpOptionElement::MaximumSegmentSize(mss),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(1, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ];
    let b = if ipv6 {
        PacketBuilder::ipv6(v6_src(), v6_dst(), 64)
    } else {
        PacketBuilder::ipv4(V4_SRC, V4_DST, 64)
    };
    let mut t = b.tcp(40000, 22, 1000, 64240).syn().options(&opts).unwrap();
    if syn_ack {
        t = t.ack(5000);
    }
    let mut out = Vec::new();
    t.write(&mut out, &[]).unwrap();
    out
}

/// A TCP SYN whose options are given raw (must be a multiple of 4 bytes).
pub fn tcp_syn_raw_options(options: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(V4_SRC, V4_DST, 64)
        .tcp(40000, 22, 1000, 64240)
        .syn()
        .options_raw(options)
        .unwrap()
        .write(&mut out, &[])
        .unwrap();
    out
}

/// Copies `pkt` into a buffer with `room` spare bytes; returns it and the packet length.
pub fn with_room(pkt: &[u8], room: usize) -> (Vec<u8>, usize) {
    let mut buf = pkt.to_vec();
    buf.resize(pkt.len() + room, 0);
    (buf, pkt.len())
}

/// Asserts with etherparse that `pkt` is a valid IP packet: it parses, the IP
/// length fields match `pkt.len()`, the IPv4 header checksum and the
/// transport checksum (recomputed by etherparse) are right, the UDP length is
/// right. Returns the transport payload.
pub fn assert_valid(pkt: &[u8]) -> Vec<u8> {
    let s = SlicedPacket::from_ip(pkt).expect("etherparse parses the packet");
    enum Ip {
        V4([u8; 4], [u8; 4]),
        V6([u8; 16], [u8; 16]),
    }
    let ip = match s.net.expect("has an IP header") {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            assert_eq!(usize::from(h.total_len()), pkt.len(), "IPv4 total length");
            assert_eq!(
                h.to_header().calc_header_checksum(),
                h.header_checksum(),
                "IPv4 header checksum"
            );
            Ip::V4(h.source(), h.destination())
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            assert_eq!(
                usize::from(h.payload_length()) + 40,
                pkt.len(),
                "IPv6 payload length"
            );
            Ip::V6(h.source(), h.destination())
        }
        NetSlice::Arp(_) => panic!("not IP"),
    };
    match s.transport.expect("has a transport header") {
        TransportSlice::Tcp(t) => {
            let c = match ip {
                Ip::V4(a, b) => t.calc_checksum_ipv4(a, b),
                Ip::V6(a, b) => t.calc_checksum_ipv6(a, b),
            }
            .unwrap();
            assert_eq!(c, t.checksum(), "TCP checksum");
            t.payload().to_vec()
        }
        TransportSlice::Udp(u) => {
            let h = u.to_header();
            let c = match ip {
                Ip::V4(a, b) => h.calc_checksum_ipv4_raw(a, b, u.payload()),
                Ip::V6(a, b) => h.calc_checksum_ipv6_raw(a, b, u.payload()),
            }
            .unwrap();
            assert_eq!(c, u.checksum(), "UDP checksum");
            assert_eq!(usize::from(u.length()), u.slice().len(), "UDP length");
            u.payload().to_vec()
        }
        TransportSlice::Icmpv4(i) => {
            assert_eq!(
                i.header().icmp_type.calc_checksum(i.payload()),
                i.checksum(),
                "ICMP checksum"
            );
            i.payload().to_vec()
        }
        TransportSlice::Icmpv6(i) => {
            let Ip::V6(a, b) = ip else {
                panic!("ICMPv6 over IPv4")
            };
            assert!(i.is_checksum_valid(a, b), "ICMPv6 checksum");
            i.payload().to_vec()
        }
        TransportSlice::Igmp(_) => panic!("IGMP"),
    }
}

/// The MSS option of a TCP SYN, read by etherparse.
pub fn mss_of(pkt: &[u8]) -> Option<u16> {
    let s = SlicedPacket::from_ip(pkt).unwrap();
    let Some(TransportSlice::Tcp(t)) = s.transport else {
        panic!("not TCP")
    };
    t.options_iterator().find_map(|o| match o {
        Ok(TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
        _ => None,
    })
}

/// Both ends' traffic keys of one flow, from a group key of `seed` bytes
/// (distinct seeds: distinct keys).
pub fn flow_keys(seed: u8) -> (fpn_proto::keys::FlowKeys, fpn_proto::keys::FlowKeys) {
    use fpn_proto::keys::{GroupKey, Role, derive_flow_keys};
    let gk = GroupKey::from_bytes([seed; 32]);
    (
        derive_flow_keys(&gk, &[seed; 32], &[3; 32], Role::Initiator),
        derive_flow_keys(&gk, &[seed; 32], &[3; 32], Role::Responder),
    )
}

/// The flow id of a packet fpn-proto parses.
pub fn flow_of(pkt: &[u8]) -> fpn_proto::flow::FlowId {
    fpn_proto::packet::Packet::parse(pkt).unwrap().flow_id()
}
