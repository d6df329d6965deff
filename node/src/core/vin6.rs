//! Hosts behind gateways over the IPv6 overlay: a VIN's IPv6 address and
//! the translation at this node's TUN (docs/DESIGN-NOTES.md note 60).
//!
//! A host behind a gateway has one VIN here (natf.rs), an IPv4 address of
//! `vin_range`; its IPv6 address is the network's overlay prefix with the
//! VIN as its last 32 bits, as for a GE (note 59), and the DNS stub answers
//! AAAA with it. The gateway, the DPRP negotiation, the reserved port and
//! the gateway's nftables DNAT stay IPv4: an IPv6 packet this host sends to
//! a VIN's IPv6 address becomes, at the TUN, the IPv4 packet from this
//! node's IPv4 overlay address to the VIN (`family::v6_to_v4`, TCP, UDP and
//! ICMP echo), and the flow's packets that come back leave the core as
//! IPv6 again. Policy cannot tell the two apart and need not: both
//! addresses of this node are the same GE's, the host is the same host.
//!
//! The only state is the set of flows (as IPv4 flows) that started as IPv6
//! at the TUN: an entry is made by the first packet and goes with the flow.
//! An application with a flow of the same ports in each family to the same
//! host would merge two flows into one: the second family's packets are
//! dropped (counted as policy drops) while the first one's flow lives.

use std::net::{IpAddr, Ipv4Addr};

use fpn_proto::flow::{FastSet, FlowId};
use fpn_proto::packet::family;
use fpn_proto::packet::{IPV6_HEADER_LEN, Packet};
use tracing::debug;

/// Most flows marked as IPv6 at the TUN before the marks of flows the PIT
/// no longer has are swept.
const MAX_MARKED: usize = 65_536;

/// The flows (as this node sends them: `overlay:s -> VIN:d`) that are IPv6
/// at the TUN.
#[derive(Debug, Default)]
pub(super) struct Vin6 {
    flows: FastSet<FlowId>,
}

impl super::NodeCore {
    /// The TUN gave an IPv6 packet to a VIN's IPv6 address: rewrites it in
    /// place as the IPv4 packet to the VIN and returns where that starts
    /// (`Ok`), or `Err(())` when it is dropped (it cannot cross, or its
    /// ports clash with a live IPv4 flow). `None`: not such a packet.
    pub(super) fn vin6_to_v4(&mut self, buf: &mut [u8], len: usize) -> Option<Result<usize, ()>> {
        let p = buf.get(..len)?;
        if p.len() < IPV6_HEADER_LEN || p[0] >> 4 != 6 {
            return None;
        }
        let dst: [u8; 16] = p[24..40].try_into().ok()?;
        let vin = self.cfg.net6.as_v4(dst.into())?;
        if !self.natf.in_range(vin) {
            return None;
        }
        let src: [u8; 16] = p[8..24].try_into().ok()?;
        if std::net::Ipv6Addr::from(src) != self.cfg.overlay6() {
            return None;
        }
        let Ok(start) = family::v6_to_v4(buf, len, self.cfg.overlay, vin) else {
            // An extension header or an ICMPv6 message other than echo.
            self.counters.policy_drops += 1;
            debug!(%vin, "IPv6 packet to a VIN that cannot become IPv4: dropped");
            return Some(Err(()));
        };
        let Ok(p4) = Packet::parse(&buf[start..len]) else {
            return Some(Err(()));
        };
        let flow = p4.flow_id();
        if !self.vin6.flows.contains(&flow) {
            if self.pit.lookup(&flow).is_some() {
                self.counters.policy_drops += 1;
                debug!(%flow, "IPv6 flow to a VIN clashes with a live IPv4 flow: dropped");
                return Some(Err(()));
            }
            if self.vin6.flows.len() >= MAX_MARKED {
                let pit = &self.pit;
                self.vin6.flows.retain(|f| pit.lookup(f).is_some());
            }
            self.vin6.flows.insert(flow);
        }
        Some(Ok(start))
    }

    /// Whether the IPv4 packet the TUN gave, of `flow`, must be dropped:
    /// its flow lives as an IPv6 one at the TUN.
    pub(super) fn clashes_with_vin6(&self, flow: &FlowId) -> bool {
        !self.vin6.flows.is_empty() && self.vin6.flows.contains(flow)
    }

    /// A packet for the TUN in `buf[..n]`: an IPv4 packet from a VIN of a
    /// flow that is IPv6 at the TUN becomes that IPv6 packet (20 bytes
    /// longer; `buf` has the room: the PCCOM trailer it lost). Returns the
    /// length to write, or `None` to drop it.
    pub(super) fn vin6_for_tun(&mut self, buf: &mut [u8], n: usize) -> Option<usize> {
        if self.vin6.flows.is_empty() || buf.first() != Some(&0x45) || n < 20 {
            return Some(n);
        }
        let vin = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        if !self.natf.in_range(vin) {
            return Some(n);
        }
        let flow = Packet::parse(&buf[..n]).ok()?.flow_id();
        if !self.vin6.flows.contains(&flow.reversed()) {
            return Some(n);
        }
        let IpAddr::V4(own) = flow.dst else {
            return Some(n);
        };
        match family::v4_to_v6(
            buf,
            n,
            self.cfg.net6.address(vin),
            self.cfg.net6.address(own),
        ) {
            Ok(m) => Some(m),
            Err(e) => {
                self.counters.tun_write_drops += 1;
                debug!(%flow, error = %e, "packet of an IPv6 VIN flow not made IPv6: dropped");
                None
            }
        }
    }

    /// The packet an ICMP error quotes, as the application sent it: the
    /// IPv4 packet of a flow that is IPv6 at the TUN is quoted as its IPv6
    /// header and first 8 bytes (all RFC 4443 asks for to match a socket).
    pub(super) fn quote_as_sent(&self, packet: &[u8]) -> Option<Vec<u8>> {
        if self.vin6.flows.is_empty() {
            return None;
        }
        let flow = Packet::parse(packet)
            .ok()
            .map(|p| p.flow_id())
            .or_else(|| quoted_flow(packet))?;
        if !self.vin6.flows.contains(&flow) {
            return None;
        }
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (flow.src, flow.dst) else {
            return None;
        };
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        let l4 = packet.get(ihl..packet.len().min(ihl + 8))?;
        let mut q = vec![0u8; IPV6_HEADER_LEN + l4.len()];
        q[0] = 0x60;
        q[4..6].copy_from_slice(&(total.saturating_sub(ihl) as u16).to_be_bytes());
        q[6] = match packet[9] {
            fpn_proto::flow::protocol::ICMP => fpn_proto::flow::protocol::ICMPV6,
            p => p,
        };
        q[7] = packet[8];
        q[8..24].copy_from_slice(&self.cfg.net6.address(src).octets());
        q[24..40].copy_from_slice(&self.cfg.net6.address(dst).octets());
        q[IPV6_HEADER_LEN..].copy_from_slice(l4);
        if q[6] == fpn_proto::flow::protocol::ICMPV6 && l4.first() == Some(&8) {
            q[IPV6_HEADER_LEN] = 128;
        }
        Some(q)
    }

    /// Whether `flow` (either orientation) is IPv6 at the TUN.
    pub(super) fn is_vin6_flow(&self, flow: &FlowId) -> bool {
        !self.vin6.flows.is_empty()
            && (self.vin6.flows.contains(flow) || self.vin6.flows.contains(&flow.reversed()))
    }

    /// A flow ended or was refused: its IPv6 mark goes too.
    pub(super) fn vin6_flow_ended(&mut self, flow: &FlowId) {
        if !self.vin6.flows.is_empty() && !self.vin6.flows.remove(flow) {
            self.vin6.flows.remove(&flow.reversed());
        }
    }
}

/// The five-tuple of a quoted IPv4 packet too short for [`Packet::parse`]
/// (a quote keeps the first bytes only).
fn quoted_flow(packet: &[u8]) -> Option<FlowId> {
    if packet.first()? >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let l4 = packet.get(ihl..ihl + 8)?;
    let proto = packet[9];
    // As fpn-proto's flow ids: an echo's identifier is both ports.
    let (sp, dp) = match proto {
        fpn_proto::flow::protocol::ICMP if matches!(l4[0], 0 | 8) => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            (id, id)
        }
        fpn_proto::flow::protocol::ICMP => (0, 0),
        _ => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
    };
    Some(FlowId {
        src: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]).into(),
        dst: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]).into(),
        protocol: proto,
        src_port: sp,
        dst_port: dp,
    })
}
