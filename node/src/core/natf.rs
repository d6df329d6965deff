//! NAT-f in the node core: hosts behind gateways, their VINs on a remote
//! node, and the per-flow mappings both ends keep.
//!
//! A *host behind a gateway* (registered at the GMS with `fpn-gms host add`)
//! runs no fpn software; its gateway GE answers for it. Two roles:
//!
//! - **Remote** (any node): every host behind another GE gets a **VIN**, a
//!   virtual address from `vin_range` (routed into the TUN), which the DNS
//!   stub hands out for the host's name. The VIN is derived from the name
//!   (a hash, then the next free address), so it stays the same while the
//!   host exists and, in practice, across restarts. A flow to a VIN is
//!   negotiated with the host's gateway (DPRP with the NAT-f option); the
//!   gateway's answer names the port it reserved on its public address,
//!   which becomes the wire side of the flow's translation (the VAT entry
//!   `{overlay:s <-> VIN:d} <=> {remote:s <-> gateway:t}`).
//! - **Gateway** (a GE with hosts behind it): it answers NAT-f negotiations
//!   for its hosts (the DPRP endpoint checks the host's groups and reserves
//!   the port) and keeps, per flow, the remote's overlay address and VIN;
//!   the packets it writes into its TUN keep them (`{remote-overlay:s ->
//!   VIN:d}`), and the kernel rewrites them into the LAN through the node's
//!   nftables table: DNAT VIN -> host per (remote, VIN) pair, masquerade to
//!   the gateway's LAN address, the FTP conntrack helper on port 21 (see
//!   docs/DESIGN-NOTES.md). The core only says which pairs exist
//!   ([`Output::NatfMapped`](super::Output::NatfMapped) and
//!   [`Output::NatfUnmapped`](super::Output::NatfUnmapped)).
//!
//! Nothing here is on the per-packet path of an established flow except one
//! hash lookup for packets the TUN gives the gateway from a VIN.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use fpn_proto::flow::{FastMap, FlowId};
use fpn_proto::ge::{GeId, GroupId};

/// Default range of VINs: inside the overlay range a node routes into its
/// TUN (100.64.0.0/10), outside the GMS's default overlay_range (/16).
pub const DEFAULT_VIN_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 127, 0, 0), 16);

/// A host behind a gateway, as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its name in the zone (one label).
    pub name: String,
    /// The gateway GE that answers for it.
    pub via: GeId,
    /// Its LAN addresses (the LIP records); the first IPv4 one is used.
    pub lan: Vec<IpAddr>,
    /// The groups whose members may reach it.
    pub groups: Vec<GroupId>,
}

impl Host {
    /// The LAN address flows go to.
    pub fn lip(&self) -> Option<IpAddr> {
        self.lan.iter().copied().find(IpAddr::is_ipv4)
    }
}

/// Where a VIN leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VinTarget {
    /// The host's name.
    pub name: String,
    /// Its gateway.
    pub gateway: GeId,
    /// Its LAN address.
    pub lip: IpAddr,
}

/// One NAT-f flow's mapping, on either end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mapping {
    /// The host's LAN address.
    pub lip: IpAddr,
    /// The port the gateway reserved on its public address.
    pub port: u16,
    /// True on the gateway.
    pub gateway: bool,
}

/// A (remote overlay address, VIN) pair the gateway's kernel DNATs.
pub(super) type Pair = (Ipv4Addr, Ipv4Addr);

/// The core's NAT-f state. See the module docs.
#[derive(Debug, Default)]
pub(super) struct Natf {
    range: Option<(Ipv4Addr, u8)>,
    /// Hosts behind other GEs, by name, and their VINs.
    by_name: BTreeMap<String, Ipv4Addr>,
    vins: FastMap<Ipv4Addr, VinTarget>,
    /// Hosts this GE answers for.
    fronted: Vec<Host>,
    /// Per flow, oriented as the remote sent its first packet
    /// (`{remote-overlay:s -> VIN:d}`).
    flows: FastMap<FlowId, Mapping>,
    /// Gateway: each DNATed pair, its host and how many flows use it.
    pairs: FastMap<Pair, (IpAddr, usize)>,
}

/// What changed when the host list was replaced.
#[derive(Debug, Default)]
pub(super) struct HostsChange {
    /// VINs that no longer lead anywhere (their flows must end).
    pub gone_vins: Vec<Ipv4Addr>,
    /// LAN addresses this GE no longer answers for.
    pub gone_lips: Vec<IpAddr>,
}

impl Natf {
    /// A state whose VINs come from `range`.
    pub(super) fn new(range: (Ipv4Addr, u8)) -> Self {
        Self {
            range: Some(range),
            ..Self::default()
        }
    }

    /// Replaces the host list (`own`: this GE, whose hosts it fronts).
    pub(super) fn set_hosts(&mut self, own: GeId, hosts: &[Host]) -> HostsChange {
        let mut change = HostsChange::default();
        let new_fronted: Vec<Host> = hosts.iter().filter(|h| h.via == own).cloned().collect();
        for old in &self.fronted {
            if let Some(lip) = old.lip()
                && !new_fronted.iter().any(|h| h.lip() == Some(lip))
            {
                change.gone_lips.push(lip);
            }
        }
        self.fronted = new_fronted;
        let remote: Vec<&Host> = hosts
            .iter()
            .filter(|h| h.via != own && h.lip().is_some())
            .collect();
        // Keep the VINs of hosts still listed (stable while in use), drop
        // the others, then give new hosts theirs.
        let mut keep = BTreeMap::new();
        for (name, vin) in std::mem::take(&mut self.by_name) {
            match remote.iter().find(|h| h.name == name) {
                Some(h) => {
                    self.vins.insert(
                        vin,
                        VinTarget {
                            name: name.clone(),
                            gateway: h.via,
                            lip: h.lip().expect("filtered"),
                        },
                    );
                    keep.insert(name, vin);
                }
                None => {
                    self.vins.remove(&vin);
                    change.gone_vins.push(vin);
                }
            }
        }
        self.by_name = keep;
        for h in remote {
            if self.by_name.contains_key(&h.name) {
                continue;
            }
            let Some(vin) = self.free_vin(&h.name) else {
                tracing::warn!(host = %h.name, "no free VIN left in vin_range; the host has no address");
                continue;
            };
            self.by_name.insert(h.name.clone(), vin);
            self.vins.insert(
                vin,
                VinTarget {
                    name: h.name.clone(),
                    gateway: h.via,
                    lip: h.lip().expect("filtered"),
                },
            );
        }
        change
    }

    /// The first free address at or after the name's hash in the range.
    fn free_vin(&self, name: &str) -> Option<Ipv4Addr> {
        let (net, len) = self.range?;
        let size = 1u64 << (32 - u32::from(len.min(30)));
        // Skip the range's first and last address (network, broadcast).
        let usable = size - 2;
        let start = fnv1a(name.as_bytes()) % usable;
        (0..usable).find_map(|i| {
            let off = 1 + (start + i) % usable;
            let ip = Ipv4Addr::from(u32::from(net) + off as u32);
            (!self.vins.contains_key(&ip)).then_some(ip)
        })
    }

    /// Whether `ip` lies in the VIN range.
    pub(super) fn in_range(&self, ip: Ipv4Addr) -> bool {
        self.range
            .is_some_and(|r| super::negotiation::in_net(ip, r))
    }

    /// Where VIN `ip` leads.
    pub(super) fn vin(&self, ip: Ipv4Addr) -> Option<&VinTarget> {
        self.vins.get(&ip)
    }

    /// Every VIN with its target.
    pub(super) fn vins(&self) -> impl Iterator<Item = (Ipv4Addr, &VinTarget)> {
        self.vins.iter().map(|(ip, t)| (*ip, t))
    }

    /// The names and VINs of the hosts behind other GEs (for the DNS stub).
    pub(super) fn names(&self) -> impl Iterator<Item = (&String, Ipv4Addr)> {
        self.by_name.iter().map(|(n, ip)| (n, *ip))
    }

    /// The hosts this GE answers for.
    pub(super) fn fronted(&self) -> &[Host] {
        &self.fronted
    }

    /// A NAT-f flow was established: `flow` as the remote sent it. Returns
    /// the pair to DNAT when this gateway's first flow of it starts.
    ///
    /// A renegotiation of a flow the gateway already maps (a key rotation,
    /// the packet limit) reserves a port of its own: the old one comes back
    /// in `freed` for the caller to release, and the pair is counted once.
    pub(super) fn established(
        &mut self,
        flow: FlowId,
        m: Mapping,
        freed: &mut Option<u16>,
    ) -> Option<(Pair, IpAddr)> {
        if let Some(old) = self.flows.insert(flow, m)
            && old.gateway
        {
            if old.port != m.port {
                *freed = Some(old.port);
            }
            return None;
        }
        if !m.gateway {
            return None;
        }
        let pair = pair_of(&flow)?;
        let e = self.pairs.entry(pair).or_insert((m.lip, 0));
        e.1 += 1;
        (e.1 == 1).then_some((pair, m.lip))
    }

    /// The mapping of `flow` (either orientation).
    pub(super) fn mapping(&self, flow: &FlowId) -> Option<&Mapping> {
        self.flows
            .get(flow)
            .or_else(|| self.flows.get(&flow.reversed()))
    }

    /// Whether the gateway has a NAT-f flow that `flow` (a packet its TUN
    /// gave it, from a VIN to a remote) belongs to.
    pub(super) fn is_gateway_reply(&self, flow: &FlowId) -> bool {
        self.flows.get(&flow.reversed()).is_some_and(|m| m.gateway)
    }

    /// A flow ended (either orientation). Returns its mapping, and the pair
    /// to stop DNATing when it was the pair's last flow.
    pub(super) fn ended(&mut self, flow: &FlowId) -> Option<(FlowId, Mapping, Option<Pair>)> {
        let key = if self.flows.contains_key(flow) {
            *flow
        } else {
            flow.reversed()
        };
        let m = self.flows.remove(&key)?;
        let mut gone = None;
        if m.gateway
            && let Some(pair) = pair_of(&key)
            && let Some(e) = self.pairs.get_mut(&pair)
        {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                self.pairs.remove(&pair);
                gone = Some(pair);
            }
        }
        Some((key, m, gone))
    }

    /// The flows (as the remote sent them) whose host is `lip` on this
    /// gateway, or whose VIN is `vin` on this remote.
    pub(super) fn flows_to(&self, lip: Option<IpAddr>, vin: Option<Ipv4Addr>) -> Vec<FlowId> {
        self.flows
            .iter()
            .filter(|(f, m)| {
                (m.gateway && Some(m.lip) == lip)
                    || (!m.gateway && Some(f.dst) == vin.map(IpAddr::V4))
            })
            .map(|(f, _)| *f)
            .collect()
    }

    /// Every DNATed pair (for status and for a restarted table).
    pub(super) fn pairs(&self) -> impl Iterator<Item = (Pair, IpAddr)> + '_ {
        self.pairs.iter().map(|(p, (lip, _))| (*p, *lip))
    }
}

impl super::NodeCore {
    /// The directory's host list changed: VINs for hosts behind others,
    /// the hosts this GE answers for; flows to hosts that left end now.
    pub(super) fn set_hosts(&mut self, hosts: &[Host]) {
        let own = self.dprp.ge();
        let before: Vec<IpAddr> = self.natf.fronted().iter().filter_map(Host::lip).collect();
        let change = self.natf.set_hosts(own, hosts);
        let after: Vec<IpAddr> = self.natf.fronted().iter().filter_map(Host::lip).collect();
        if before != after {
            self.push_output(super::Output::NatfFronted(after));
        }
        let mut ended = Vec::new();
        for vin in &change.gone_vins {
            ended.extend(self.natf.flows_to(None, Some(*vin)));
        }
        for lip in &change.gone_lips {
            ended.extend(self.natf.flows_to(Some(*lip), None));
        }
        for f in ended {
            self.pit.remove(&f);
            self.flow_ended(&f);
            tracing::info!(flow = %f, "the host left the directory: its flow ends");
        }
        self.push_natf_tables();
        self.peers_changed = true;
        tracing::debug!(
            vins = self.natf.names().count(),
            fronted = self.natf.fronted().len(),
            "hosts behind gateways updated"
        );
    }

    /// Hands DPRP the current VINs and fronted hosts.
    fn push_natf_tables(&mut self) {
        let vins = self
            .natf
            .vins()
            .map(|(vin, t)| fpn_proto::dprp::Vin {
                vin: IpAddr::V4(vin),
                gateway: t.gateway,
                lip: t.lip,
            })
            .collect();
        self.dprp.set_vins(vins);
        let fronted = self
            .natf
            .fronted()
            .iter()
            .filter_map(|h| {
                Some(fpn_proto::dprp::FrontedHost {
                    lip: h.lip()?,
                    groups: h.groups.clone(),
                })
            })
            .collect();
        self.dprp.set_fronted_hosts(fronted);
        self.dprp_touched = true;
    }

    /// The GE that answers for overlay address `ip`: its owner, or for a
    /// VIN the host's gateway.
    pub fn owner_of(&self, ip: Ipv4Addr) -> Option<GeId> {
        self.peers
            .owner(ip)
            .or_else(|| self.natf.vin(ip).map(|t| t.gateway))
    }

    /// A negotiation carried the NAT-f option: remember the flow's mapping
    /// (`flow` as the remote sent it); a gateway DNATs the pair.
    pub(super) fn natf_established(&mut self, flow: FlowId, gateway: bool, lip: IpAddr, port: u16) {
        let m = Mapping { lip, port, gateway };
        tracing::debug!(%flow, %lip, port, gateway, "NAT-f mapping");
        let mut freed = None;
        if let Some(((remote, vin), lip)) = self.natf.established(flow, m, &mut freed) {
            self.push_output(super::Output::NatfMapped { remote, vin, lip });
        }
        if let Some(old) = freed {
            self.dprp.release_natf_port(flow.protocol, old);
        }
    }

    /// A flow ended: its NAT-f mapping and port reservation go too.
    pub(super) fn natf_flow_ended(&mut self, flow: &FlowId) {
        let Some((key, m, gone)) = self.natf.ended(flow) else {
            return;
        };
        if m.gateway {
            self.dprp.release_natf_port(key.protocol, m.port);
        }
        if let Some((remote, vin)) = gone {
            self.push_output(super::Output::NatfUnmapped { remote, vin });
        }
    }

    /// The wire side of a NAT-f flow's translation: the gateway's reserved
    /// port instead of the application's (`overlay` oriented from this node).
    pub(super) fn natf_wire_ports(&self, t: &mut fpn_proto::xlat::Translation) {
        if let Some(m) = self.natf.mapping(&t.overlay) {
            if m.gateway {
                t.wire.src_port = m.port;
            } else {
                t.wire.dst_port = m.port;
            }
        }
    }

    /// The NAT-f part of a flow's status line.
    pub(super) fn natf_flow_status(&self, flow: &FlowId) -> Option<crate::status::NatfFlowStatus> {
        self.natf
            .mapping(flow)
            .map(|m| crate::status::NatfFlowStatus {
                lan: m.lip.to_string(),
                port: m.port,
                role: if m.gateway { "gateway" } else { "remote" }.into(),
                ipv6: self.is_vin6_flow(flow),
            })
    }

    /// The hosts for `status`.
    pub(super) fn host_status(&self) -> Vec<crate::status::HostStatus> {
        let own = self.dprp.ge();
        let mut out: Vec<crate::status::HostStatus> = self
            .natf
            .names()
            .filter_map(|(name, vin)| {
                let t = self.natf.vin(vin)?;
                Some(crate::status::HostStatus {
                    name: name.clone(),
                    lan: t.lip.to_string(),
                    vin: Some(vin.to_string()),
                    vin6: Some(self.cfg.net6.address(vin).to_string()),
                    gateway: t.gateway.0,
                    fronted: false,
                })
            })
            .collect();
        out.extend(
            self.natf
                .fronted()
                .iter()
                .map(|h| crate::status::HostStatus {
                    name: h.name.clone(),
                    lan: h.lip().map(|l| l.to_string()).unwrap_or_default(),
                    vin: None,
                    vin6: None,
                    gateway: own.0,
                    fronted: true,
                }),
        );
        out
    }

    /// Whether `dst` is a VIN that leads nowhere (its host left, or it was
    /// never handed out): such packets get a host-unreachable at once.
    pub(super) fn dead_vin(&self, dst: IpAddr) -> bool {
        matches!(dst, IpAddr::V4(d) if self.natf.in_range(d) && self.natf.vin(d).is_none())
    }

    /// Every host name with its VIN, for the DNS stub.
    pub fn host_names(&self) -> Vec<(String, Ipv4Addr)> {
        self.natf.names().map(|(n, ip)| (n.clone(), ip)).collect()
    }

    /// Gateway: every (remote overlay, VIN) pair DNATed now with its host
    /// (a driver that re-created its table installs them again).
    pub fn natf_pairs(&self) -> Vec<(Ipv4Addr, Ipv4Addr, IpAddr)> {
        self.natf.pairs().map(|((r, v), lip)| (r, v, lip)).collect()
    }
}

fn pair_of(flow: &FlowId) -> Option<Pair> {
    match (flow.src, flow.dst) {
        (IpAddr::V4(r), IpAddr::V4(v)) => Some((r, v)),
        _ => None,
    }
}

/// FNV-1a, 64 bits: a stable hash (the same VIN for a name on every run,
/// unlike the std hasher's random keys).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, via: u32, lip: [u8; 4]) -> Host {
        Host {
            name: name.into(),
            via: GeId(via),
            lan: vec![IpAddr::from(lip)],
            groups: vec![GroupId(1)],
        }
    }

    #[test]
    fn vins_are_stable_per_name_and_freed_with_the_host() {
        let mut n = Natf::new(DEFAULT_VIN_RANGE);
        let hosts = [
            host("nas", 2, [192, 168, 1, 10]),
            host("printer", 2, [192, 168, 1, 20]),
        ];
        n.set_hosts(GeId(1), &hosts);
        let nas = n.by_name["nas"];
        assert!(n.in_range(nas));
        assert_eq!(n.vin(nas).unwrap().lip, IpAddr::from([192, 168, 1, 10]));
        // Another node with the same list gives the same VIN.
        let mut m = Natf::new(DEFAULT_VIN_RANGE);
        m.set_hosts(GeId(7), &hosts);
        assert_eq!(m.by_name["nas"], nas);
        // The printer leaves: its VIN goes, the NAS keeps its own.
        let change = n.set_hosts(GeId(1), &hosts[..1]);
        assert_eq!(change.gone_vins.len(), 1);
        assert_eq!(n.by_name["nas"], nas);
        assert_eq!(n.names().count(), 1);
    }

    #[test]
    fn a_gateway_fronts_its_own_hosts_and_gives_them_no_vin() {
        let mut n = Natf::new(DEFAULT_VIN_RANGE);
        let hosts = [
            host("nas", 1, [192, 168, 1, 10]),
            host("cam", 3, [10, 0, 0, 5]),
        ];
        n.set_hosts(GeId(1), &hosts);
        assert_eq!(n.fronted().len(), 1);
        assert_eq!(
            n.names().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["cam"]
        );
        let change = n.set_hosts(GeId(1), &hosts[1..]);
        assert_eq!(change.gone_lips, [IpAddr::from([192, 168, 1, 10])]);
    }

    #[test]
    fn colliding_names_get_distinct_vins_in_a_tiny_range() {
        let mut n = Natf::new((Ipv4Addr::new(100, 127, 0, 0), 30));
        let hosts = [
            host("a", 2, [10, 0, 0, 1]),
            host("b", 2, [10, 0, 0, 2]),
            host("c", 2, [10, 0, 0, 3]),
        ];
        n.set_hosts(GeId(1), &hosts);
        // A /30 has two usable addresses: the third host gets none.
        assert_eq!(n.names().count(), 2);
        let mut v: Vec<Ipv4Addr> = n.names().map(|(_, ip)| ip).collect();
        v.sort();
        assert_eq!(
            v,
            [Ipv4Addr::new(100, 127, 0, 1), Ipv4Addr::new(100, 127, 0, 2)]
        );
    }

    #[test]
    fn gateway_pairs_are_counted_per_flow() {
        let mut n = Natf::new(DEFAULT_VIN_RANGE);
        let r = Ipv4Addr::new(100, 64, 0, 3);
        let vin = Ipv4Addr::new(100, 127, 3, 4);
        let lip = IpAddr::from([192, 168, 1, 10]);
        let f = |sport| FlowId {
            src: IpAddr::V4(r),
            dst: IpAddr::V4(vin),
            protocol: 6,
            src_port: sport,
            dst_port: 80,
        };
        let m = |port| Mapping {
            lip,
            port,
            gateway: true,
        };
        let mut freed = None;
        assert_eq!(
            n.established(f(1000), m(47000), &mut freed),
            Some(((r, vin), lip))
        );
        assert_eq!(n.established(f(1001), m(47001), &mut freed), None);
        // A renegotiation of the first flow with a new port frees the old.
        assert_eq!(n.established(f(1000), m(47002), &mut freed), None);
        assert_eq!(freed, Some(47000));
        assert!(n.is_gateway_reply(&f(1000).reversed()));
        assert!(!n.is_gateway_reply(&f(1002).reversed()));
        let (_, m0, gone) = n.ended(&f(1000).reversed()).unwrap();
        assert_eq!((m0.port, gone), (47002, None));
        let (_, mm, gone) = n.ended(&f(1001)).unwrap();
        assert_eq!(mm.port, 47001);
        assert_eq!(gone, Some((r, vin)));
        assert!(n.ended(&f(1001)).is_none());
    }
}
