//! The translation table: per flow, the addresses and ports the application
//! sees (the *overlay* side) and the ones on the wire (the *wire* side).
//!
//! ARCHITECTURE.md asks for one mechanism where three features rewrite
//! addresses: the native carrier (overlay addresses of a flow <-> the two
//! nodes' underlay addresses), Mobile PPC (the CIT: after a move the wire
//! side changes, the overlay side stays) and NAT-f (the VAT on the
//! initiator: VIN <-> gateway address and reserved port). Each is an entry
//! here: `overlay` is the flow as the local application sends it, `wire` is
//! the same packet as it leaves this node. A Binding Update or a NAT-f
//! mapping is an authenticated change of an entry's wire side
//! ([`XlatTable::rebind`], [`XlatTable::rebind_peer`]).
//!
//! Both directions are looked up by a hash of the five-tuple and rewritten in
//! place with incremental checksum updates ([`Packet::set_src`] and friends):
//! nothing allocates per packet. PCCOM is indifferent to the rewrite: its
//! associated data holds no address or port (docs/PROTOCOL.md), the flow's
//! keys are bound to the overlay five-tuple, and the receiver translates
//! before it unprotects.
//!
//! What the table never does: decide that a flow may use an entry (DPRP and
//! the PIT do), or rewrite a packet whose five-tuple it has no entry for.
//! Overlay and wire sides of an entry may be of different families for a
//! TCP, UDP or echo flow (the caller changes the family with
//! `packet::family`; the rewrites here keep it): an IPv6 overlay flow on an
//! IPv4 wire and an IPv4 overlay flow on an IPv6 wire, where an echo is of
//! the wire's ICMP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::flow::{FastMap, FlowId};
use crate::ge::GeId;
use crate::packet::Packet;
use crate::{Error, Result};

/// Default bound on the number of entries.
pub const DEFAULT_MAX_ENTRIES: usize = 65_536;

/// One flow's two faces, both oriented from this node to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The flow as the local application sends it (overlay addresses).
    pub overlay: FlowId,
    /// The same packets as they leave this node (underlay addresses, and
    /// the ports the peer or a NAT in between expects).
    pub wire: FlowId,
    /// The GE at the other end of the wire side.
    pub peer: GeId,
}

impl Translation {
    /// An entry that keeps the ports and the protocol and changes only the
    /// two addresses: the native carrier's usual case. An echo crossing
    /// to the other family is of that family's ICMP on the wire (ICMPv6
    /// on an IPv6 wire, ICMP on an IPv4 one; `packet::family`).
    pub fn addresses(overlay: FlowId, local: IpAddr, remote: IpAddr, peer: GeId) -> Self {
        let protocol = wire_protocol(overlay.protocol, local);
        Self {
            overlay,
            wire: FlowId {
                src: local,
                dst: remote,
                protocol,
                ..overlay
            },
            peer,
        }
    }

    /// True when applying the entry changes nothing (overlay = wire).
    pub fn is_identity(&self) -> bool {
        self.overlay == self.wire
    }
}

/// The table. Keys are outbound five-tuples; an inbound packet is looked up
/// by its reversed five-tuple.
#[derive(Debug, Clone)]
pub struct XlatTable {
    by_overlay: FastMap<FlowId, Translation>,
    by_wire: FastMap<FlowId, FlowId>,
    by_peer: BTreeMap<GeId, BTreeSet<FlowId>>,
    max: usize,
}

impl Default for XlatTable {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl XlatTable {
    /// An empty table holding at most `max_entries` flows.
    pub fn new(max_entries: usize) -> Self {
        Self {
            by_overlay: FastMap::default(),
            by_wire: FastMap::default(),
            by_peer: BTreeMap::new(),
            max: max_entries,
        }
    }

    /// Adds or replaces the entry of `t.overlay`.
    ///
    /// Refused with [`Error::TranslationConflict`] when another flow already
    /// uses the same wire five-tuple (two overlay flows would share one
    /// flow on the wire and the receiver could not tell them apart), with
    /// [`Error::InvalidField`] when the two sides differ in family or
    /// protocol, and with [`Error::TableFull`] at the bound.
    pub fn insert(&mut self, t: Translation) -> Result<()> {
        use crate::flow::protocol::{ICMP, ICMPV6, TCP, UDP};
        // Each side is of one family. They may differ only for a TCP, UDP
        // or echo flow (`packet::family`, whose callers change the family;
        // the rewrites here keep it), whose echo is of the wire's ICMP.
        let family_change = t.overlay.src.is_ipv6() != t.wire.src.is_ipv6();
        if t.wire.protocol != wire_protocol(t.overlay.protocol, t.wire.src) {
            return Err(Error::invalid(
                "translation",
                "overlay and wire protocols differ",
            ));
        }
        if t.overlay.src.is_ipv4() != t.overlay.dst.is_ipv4()
            || t.wire.src.is_ipv4() != t.wire.dst.is_ipv4()
            || (t.overlay.src.is_ipv4() != t.wire.src.is_ipv4()
                && !(family_change && matches!(t.overlay.protocol, TCP | UDP | ICMP | ICMPV6)))
        {
            return Err(Error::invalid(
                "translation",
                "overlay and wire address families differ",
            ));
        }
        if let Some(owner) = self.by_wire.get(&t.wire)
            && *owner != t.overlay
        {
            return Err(Error::TranslationConflict {
                wire: t.wire,
                owner: *owner,
            });
        }
        if !self.by_overlay.contains_key(&t.overlay) && self.by_overlay.len() >= self.max {
            return Err(Error::TableFull("translation"));
        }
        self.remove(&t.overlay);
        self.by_wire.insert(t.wire, t.overlay);
        self.by_peer.entry(t.peer).or_default().insert(t.overlay);
        self.by_overlay.insert(t.overlay, t);
        Ok(())
    }

    /// Removes the entry of an outbound overlay flow.
    pub fn remove(&mut self, overlay: &FlowId) -> Option<Translation> {
        let t = self.by_overlay.remove(overlay)?;
        self.by_wire.remove(&t.wire);
        if let Some(set) = self.by_peer.get_mut(&t.peer) {
            set.remove(overlay);
            if set.is_empty() {
                self.by_peer.remove(&t.peer);
            }
        }
        Some(t)
    }

    /// Removes every entry of `peer`; returns their overlay flows.
    pub fn remove_peer(&mut self, peer: GeId) -> Vec<FlowId> {
        let flows: Vec<FlowId> = self
            .by_peer
            .remove(&peer)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        for f in &flows {
            if let Some(t) = self.by_overlay.remove(f) {
                self.by_wire.remove(&t.wire);
            }
        }
        flows
    }

    /// The entry of an outbound overlay flow.
    pub fn get(&self, overlay: &FlowId) -> Option<&Translation> {
        self.by_overlay.get(overlay)
    }

    /// The entry whose wire side an inbound packet with five-tuple
    /// `inbound_wire` (peer -> this node) belongs to.
    pub fn by_inbound_wire(&self, inbound_wire: &FlowId) -> Option<&Translation> {
        let overlay = self.by_wire.get(&inbound_wire.reversed())?;
        self.by_overlay.get(overlay)
    }

    /// Changes the wire side of one flow (a Binding Update for one flow, a
    /// NAT-f mapping, a path switch to other ports). Same checks as
    /// [`XlatTable::insert`]; an unknown flow is [`Error::NoRoute`] of its
    /// destination.
    pub fn rebind(&mut self, overlay: &FlowId, wire: FlowId) -> Result<Translation> {
        let Some(old) = self.by_overlay.get(overlay).copied() else {
            return Err(Error::NoRoute(overlay.dst));
        };
        let new = Translation { wire, ..old };
        self.insert(new)?;
        Ok(new)
    }

    /// A peer's underlay address changed (its Binding Update, or a path
    /// found by NAT traversal): every flow of `peer` whose wire destination
    /// is `old` now goes to `new`, ports unchanged. Returns how many flows
    /// moved; a flow whose new wire tuple would collide stays as it was and
    /// is not counted.
    pub fn rebind_peer(&mut self, peer: GeId, old: IpAddr, new: IpAddr) -> usize {
        self.rebind_where(peer, |w| {
            (w.dst == old && w.dst.is_ipv4() == new.is_ipv4()).then_some(FlowId { dst: new, ..*w })
        })
    }

    /// This node's own underlay address changed (it moved): every flow of
    /// `peer` whose wire source is `old` now leaves from `new`.
    pub fn rebind_local(&mut self, peer: GeId, old: IpAddr, new: IpAddr) -> usize {
        self.rebind_where(peer, |w| {
            (w.src == old && w.src.is_ipv4() == new.is_ipv4()).then_some(FlowId { src: new, ..*w })
        })
    }

    fn rebind_where(&mut self, peer: GeId, f: impl Fn(&FlowId) -> Option<FlowId>) -> usize {
        let flows: Vec<FlowId> = self
            .by_peer
            .get(&peer)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let mut moved = 0;
        for o in flows {
            let Some(wire) = self.by_overlay.get(&o).and_then(|t| f(&t.wire)) else {
                continue;
            };
            if self.rebind(&o, wire).is_ok() {
                moved += 1;
            }
        }
        moved
    }

    /// Rewrites an outbound packet (overlay -> wire) in place. Returns the
    /// entry used, or `None` (packet untouched) when its flow has none.
    pub fn translate_outbound<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        pkt: &mut Packet<T>,
    ) -> Result<Option<Translation>> {
        let Some(t) = self.by_overlay.get(&pkt.flow_id()).copied() else {
            return Ok(None);
        };
        rewrite(pkt, &t.overlay, &t.wire)?;
        Ok(Some(t))
    }

    /// Rewrites an inbound packet (wire -> overlay) in place. Returns the
    /// entry used, or `None` (packet untouched) when its flow has none.
    pub fn translate_inbound<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        pkt: &mut Packet<T>,
    ) -> Result<Option<Translation>> {
        let Some(t) = self.by_inbound_wire(&pkt.flow_id()).copied() else {
            return Ok(None);
        };
        rewrite(pkt, &t.wire.reversed(), &t.overlay.reversed())?;
        Ok(Some(t))
    }

    /// Entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Translation> {
        self.by_overlay.values()
    }

    /// The overlay flows of `peer`, ordered.
    pub fn flows_of(&self, peer: GeId) -> impl Iterator<Item = &FlowId> {
        self.by_peer.get(&peer).into_iter().flatten()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.by_overlay.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.by_overlay.is_empty()
    }
}

/// The protocol of an overlay flow of `protocol` on a wire whose local
/// address is `wire_src`: an echo is of the wire family's ICMP.
fn wire_protocol(protocol: u8, wire_src: IpAddr) -> u8 {
    use crate::flow::protocol::{ICMP, ICMPV6};
    match protocol {
        ICMPV6 if wire_src.is_ipv4() => ICMP,
        ICMP if wire_src.is_ipv6() => ICMPV6,
        p => p,
    }
}

/// Rewrites `pkt`, whose five-tuple is `from`, to `to` in place (checksums
/// updated incrementally). The node's NAT binding step uses it to try a
/// packet from an unexpected source as a candidate flow's before any entry
/// says so (docs/PROTOCOL.md "NAT binding").
pub fn rewrite_to<T: AsRef<[u8]> + AsMut<[u8]>>(
    pkt: &mut Packet<T>,
    from: &FlowId,
    to: &FlowId,
) -> Result<()> {
    rewrite(pkt, from, to)
}

/// Rewrites the fields where `from` and `to` differ. Only changed fields
/// are written, so an identity entry costs a lookup and nothing else.
fn rewrite<T: AsRef<[u8]> + AsMut<[u8]>>(
    pkt: &mut Packet<T>,
    from: &FlowId,
    to: &FlowId,
) -> Result<()> {
    if from.src != to.src {
        pkt.set_src(to.src)?;
    }
    if from.dst != to.dst {
        pkt.set_dst(to.dst)?;
    }
    if from.src_port != to.src_port {
        pkt.set_src_port(to.src_port)?;
    }
    // An ICMP echo has one identifier standing for both ports: the first
    // write above already moved it.
    let echo = matches!(
        to.protocol,
        crate::flow::protocol::ICMP | crate::flow::protocol::ICMPV6
    );
    if from.dst_port != to.dst_port && !echo {
        pkt.set_dst_port(to.dst_port)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::protocol;

    fn flow(src: &str, dst: &str, sp: u16, dp: u16) -> FlowId {
        FlowId {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: protocol::TCP,
            src_port: sp,
            dst_port: dp,
        }
    }

    #[test]
    fn insert_refuses_a_shared_wire_tuple_and_mixed_families() {
        let mut t = XlatTable::new(4);
        let a = flow("100.64.0.1", "100.64.0.2", 1000, 80);
        let b = flow("100.64.0.1", "100.64.0.3", 1000, 80);
        let local = "198.18.0.1".parse().unwrap();
        let remote = "198.18.0.2".parse().unwrap();
        t.insert(Translation::addresses(a, local, remote, GeId(2)))
            .unwrap();
        // b would leave with the same wire five-tuple as a.
        let err = t
            .insert(Translation::addresses(b, local, remote, GeId(3)))
            .unwrap_err();
        assert!(matches!(err, Error::TranslationConflict { owner, .. } if owner == a));
        let v6 = "fd00::2".parse().unwrap();
        assert!(matches!(
            t.insert(Translation::addresses(b, local, v6, GeId(3))),
            Err(Error::InvalidField { .. })
        ));
        // Replacing a's own entry is fine, and frees the old wire tuple.
        let other = "198.18.0.9".parse().unwrap();
        t.insert(Translation::addresses(a, local, other, GeId(2)))
            .unwrap();
        t.insert(Translation::addresses(b, local, remote, GeId(3)))
            .unwrap();
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn an_ipv6_echo_on_an_ipv4_wire_is_an_icmp_flow_there_and_nothing_else_changes_protocol() {
        let mut t = XlatTable::new(8);
        let echo6 = FlowId {
            protocol: protocol::ICMPV6,
            ..flow("fd00::6440:1", "fd00::6440:2", 7, 7)
        };
        let (l4, r4): (IpAddr, IpAddr) =
            ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
        let x = Translation::addresses(echo6, l4, r4, GeId(2));
        assert_eq!(x.wire.protocol, protocol::ICMP);
        assert_eq!((x.wire.src_port, x.wire.dst_port), (7, 7));
        t.insert(x).unwrap();
        // On an IPv6 wire it stays ICMPv6.
        let (l6, r6) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        assert_eq!(
            Translation::addresses(echo6, l6, r6, GeId(2)).wire.protocol,
            protocol::ICMPV6
        );
        // Any other protocol change is refused.
        let wrong = Translation {
            wire: FlowId {
                protocol: protocol::ICMPV6,
                ..x.wire
            },
            ..x
        };
        assert!(t.insert(wrong).is_err());
        let echo4 = FlowId {
            protocol: protocol::ICMP,
            ..flow("100.64.0.1", "100.64.0.2", 9, 9)
        };
        let mut y = Translation::addresses(echo4, l4, r4, GeId(2));
        y.wire.protocol = protocol::ICMPV6;
        assert!(t.insert(y).is_err());
    }

    #[test]
    fn an_ipv4_flow_on_an_ipv6_wire_keeps_its_ports_and_its_echo_is_icmpv6_there() {
        let mut t = XlatTable::new(8);
        let (l6, r6): (IpAddr, IpAddr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        let tcp = flow("100.64.0.1", "100.64.0.2", 40000, 443);
        let x = Translation::addresses(tcp, l6, r6, GeId(2));
        assert_eq!(x.wire.protocol, protocol::TCP);
        assert_eq!(
            (x.wire.src, x.wire.src_port, x.wire.dst_port),
            (l6, 40000, 443)
        );
        t.insert(x).unwrap();
        let echo4 = FlowId {
            protocol: protocol::ICMP,
            ..flow("100.64.0.1", "100.64.0.2", 9, 9)
        };
        let e = Translation::addresses(echo4, l6, r6, GeId(2));
        assert_eq!(e.wire.protocol, protocol::ICMPV6);
        t.insert(e).unwrap();
        assert_eq!(t.by_inbound_wire(&e.wire.reversed()), Some(&e));
        // An ICMP echo on an IPv6 wire claiming to stay ICMP is refused,
        // and so is any other protocol across families.
        let mut wrong = e;
        wrong.wire.protocol = protocol::ICMP;
        assert!(t.insert(wrong).is_err());
        let other = FlowId {
            protocol: 47,
            ..flow("100.64.0.1", "100.64.0.2", 0, 0)
        };
        assert!(
            t.insert(Translation::addresses(other, l6, r6, GeId(2)))
                .is_err()
        );
    }

    #[test]
    fn the_bound_holds() {
        let mut t = XlatTable::new(2);
        let l = "198.18.0.1".parse().unwrap();
        for (i, r) in ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
            .iter()
            .enumerate()
        {
            let o = flow("100.64.0.1", "100.64.0.2", 1000 + i as u16, 80);
            let res = t.insert(Translation::addresses(o, l, r.parse().unwrap(), GeId(2)));
            assert_eq!(res.is_ok(), i < 2, "{i}: {res:?}");
        }
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn rebinding_a_peer_moves_its_flows_and_only_those() {
        let mut t = XlatTable::default();
        let l = "198.18.0.1".parse().unwrap();
        let old: IpAddr = "198.18.0.2".parse().unwrap();
        let new: IpAddr = "198.18.5.7".parse().unwrap();
        let a = flow("100.64.0.1", "100.64.0.2", 1000, 80);
        let b = flow("100.64.0.1", "100.64.0.2", 1001, 80);
        let c = flow("100.64.0.1", "100.64.0.3", 1002, 80);
        t.insert(Translation::addresses(a, l, old, GeId(2)))
            .unwrap();
        t.insert(Translation::addresses(b, l, old, GeId(2)))
            .unwrap();
        t.insert(Translation::addresses(c, l, old, GeId(3)))
            .unwrap();
        assert_eq!(t.rebind_peer(GeId(2), old, new), 2);
        assert_eq!(t.get(&a).unwrap().wire.dst, new);
        assert_eq!(t.get(&c).unwrap().wire.dst, old);
        // The inbound index follows: replies from the new address map back.
        let reply = FlowId {
            src: new,
            dst: l,
            ..a.reversed()
        };
        assert_eq!(t.by_inbound_wire(&reply).unwrap().overlay, a);
        let stale = FlowId {
            src: old,
            dst: l,
            ..a.reversed()
        };
        assert!(t.by_inbound_wire(&stale).is_none());
        let moved_local = t.rebind_local(GeId(3), l, "198.18.9.9".parse().unwrap());
        assert_eq!(moved_local, 1);
        assert_eq!(t.remove_peer(GeId(2)), vec![a, b]);
        assert_eq!(t.len(), 1);
        assert!(t.flows_of(GeId(2)).next().is_none());
        assert!(matches!(t.rebind(&a, c), Err(Error::NoRoute(_))));
    }
}
