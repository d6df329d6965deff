//! The real-address plane in the core (issue 11, part 2): flows between the
//! real addresses of hosts, not overlay addresses.
//!
//! A node speaks for its overlay address and for the prefixes its
//! credential names (`--protect` at the GMS): a gateway's LAN, or a GES's
//! own real address. The shell steers the host's traffic to the prefixes
//! peers' credentials name into the TUN (policy routing, the node's own
//! sockets marked past it: `crate::real_plane`), so such a packet enters the
//! core as any TUN packet does; everything after that is the overlay's data
//! path: DPRP with the GE that owns the destination (the peer table knows
//! prefixes too), the PIT, PCCOM, and the native carrier, whose translation
//! is the identity for a GES (its wire address is its real address).
//!
//! What differs is a flow the rules leave plain: on the overlay its packets
//! ride QUIC (the overlay address means nothing on the wire), while a plain
//! real-address flow must reach the wire as it is, so the peer's kernel,
//! or a host that runs nothing, takes it like any packet
//! ([`NodeCore::plain_on_wire`]).

use std::net::IpAddr;

use fpn_proto::action::Action;
use fpn_proto::dprp::Prefix;
use fpn_proto::flow::FlowId;

use super::NodeCore;

impl NodeCore {
    /// Sets the prefixes besides the overlay address this node speaks for
    /// (its credential's). DPRP's own list is set apart (`dprp::Config`).
    pub fn set_real_prefixes(&mut self, prefixes: Vec<Prefix>) {
        self.real = prefixes;
    }

    /// The prefixes besides the overlay address this node speaks for.
    pub fn real_prefixes(&self) -> &[Prefix] {
        &self.real
    }

    /// True for this node's overlay address and the addresses its
    /// credential's prefixes cover: the near end of its flows.
    pub(super) fn is_own(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) if a == self.cfg.overlay => true,
            IpAddr::V6(a) if a == self.cfg.overlay6() => true,
            _ => self.real.iter().any(|p| p.contains(ip)),
        }
    }

    /// True when `flow` (a PIT key) is a real-address flow the rules pass
    /// in plain: its packets go on the wire unchanged
    /// (`Output::SendNative`), never into a QUIC frame.
    pub(super) fn plain_on_wire(&self, flow: &FlowId) -> bool {
        // Checked per packet: a node without the plane pays one branch.
        if self.real.is_empty() {
            return false;
        }
        let ours = [
            IpAddr::V4(self.cfg.overlay),
            IpAddr::V6(self.cfg.overlay6()),
        ];
        !ours.contains(&flow.src)
            && !ours.contains(&flow.dst)
            && self
                .pit
                .lookup(flow)
                .is_some_and(|(_, e)| e.action() == Action::Pass)
    }
}
