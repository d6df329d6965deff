//! What a capture shows: TCP packets with their payload length, UDP bytes
//! between two addresses. Enough to print a capture the way tcpdump would
//! and to count what crossed a link; no payload is ever printed.

use std::net::IpAddr;

/// PCCOM's trailer on every protected packet: an 8-byte counter and a
/// 16-byte tag (docs/PROTOCOL.md).
pub const PCCOM_TRAILER: usize = 24;
/// TCP flags byte of a pure ACK.
pub const TCP_ACK: u8 = 0x10;

/// A TCP packet as a capture shows it.
pub struct WireTcp {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    /// Bytes after the TCP header.
    pub payload: usize,
}

impl WireTcp {
    /// True when the packet belongs to the connection `a:aport <-> b:bport`.
    pub fn between(&self, a: IpAddr, aport: u16, b: IpAddr, bport: u16) -> bool {
        (self.src, self.sport, self.dst, self.dport) == (a, aport, b, bport)
            || (self.src, self.sport, self.dst, self.dport) == (b, bport, a, aport)
    }

    /// One line as tcpdump would print it, with the payload length.
    pub fn line(&self) -> String {
        let mut f = String::new();
        for (bit, c) in [
            (0x02, 'S'),
            (0x01, 'F'),
            (0x04, 'R'),
            (0x08, 'P'),
            (0x10, '.'),
        ] {
            if self.flags & bit != 0 {
                f.push(c);
            }
        }
        format!(
            "{}:{} -> {}:{} TCP [{f}] {:>5}-byte payload",
            self.src, self.sport, self.dst, self.dport, self.payload
        )
    }
}

/// The IPv4 TCP packets of a capture.
pub fn tcp_packets(pcap: &fpn_lab::Pcap) -> Vec<WireTcp> {
    pcap.packets()
        .iter()
        .filter_map(|p| p.ip())
        .filter_map(|ip| {
            let (src, dst, proto, ihl, total) = fpn_lab::inject::ipv4_fields(ip).ok()?;
            let tcp = ip.get(ihl..total)?;
            if proto != 6 || tcp.len() < 20 {
                return None;
            }
            let off = usize::from(tcp[12] >> 4) * 4;
            Some(WireTcp {
                src: src.into(),
                dst: dst.into(),
                sport: u16::from_be_bytes([tcp[0], tcp[1]]),
                dport: u16::from_be_bytes([tcp[2], tcp[3]]),
                flags: tcp[13],
                payload: tcp.len().checked_sub(off)?,
            })
        })
        .collect()
}

/// IP bytes of UDP between `a` and `b` (either way) with `port` at one end
/// (any port when `None`).
pub fn udp_bytes(pcap: &fpn_lab::Pcap, a: IpAddr, b: IpAddr, port: Option<u16>) -> usize {
    pcap.packets()
        .iter()
        .filter_map(|p| p.ip())
        .filter_map(|ip| {
            let (src, dst, proto, ihl, total) = fpn_lab::inject::ipv4_fields(ip).ok()?;
            let udp = ip.get(ihl..ihl + 4)?;
            let (sp, dp) = (
                u16::from_be_bytes([udp[0], udp[1]]),
                u16::from_be_bytes([udp[2], udp[3]]),
            );
            let (src, dst) = (IpAddr::from(src), IpAddr::from(dst));
            (proto == 17
                && ((src, dst) == (a, b) || (src, dst) == (b, a))
                && port.is_none_or(|port| sp == port || dp == port))
            .then_some(total)
        })
        .sum()
}
