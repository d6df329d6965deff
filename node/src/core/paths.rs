//! The native carrier inside the core: one [`PathMachine`] per peer that has
//! a certified key, and the one [`XlatTable`] (overlay <-> wire five-tuple
//! of each flow).
//!
//! How the pieces meet (docs/DESIGN-NOTES.md note 17 has the reasons):
//! - A machine is made when the directory gives a peer's key; its candidates
//!   are the peer's underlay addresses on [`PROBE_PORT`]. Its probes leave
//!   as raw IPv4/UDP packets ([`Output::SendNative`]) from this node's
//!   underlay address toward the candidate, which the driver finds for the
//!   core ([`Output::FindLocalAddress`], answered with
//!   [`NodeCore::handle_local_address`]); until then they wait here.
//! - A flow gets its translation as soon as both ends of its wire side are
//!   known: this node's local address toward the peer, and the peer's native
//!   address (the candidate that answered, or the address its authenticated
//!   probes came from). Whether the flow's packets *leave* natively is the
//!   machine's choice per packet; inbound native packets of a translated
//!   flow are accepted whatever the machine says, so a switch in either
//!   direction never breaks a flow.
//! - Each translation's inbound wire five-tuple is announced
//!   ([`Output::NativeFlowAdded`]/[`Output::NativeFlowRemoved`]) so the
//!   driver can steer exactly those packets to the node.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fpn_proto::flow::{FastMap, FastSet, FlowId};
use fpn_proto::ge::GeId;
use fpn_proto::packet::Packet;
use fpn_proto::path::{
    self, PathEvent, PathKind, PathMachine, PathStatus, ProbeView, Transmit, Unavailable,
};
use fpn_proto::pit::{Disposition, Origin};
use fpn_proto::xlat::Translation;
use tracing::{debug, info, trace};

use super::{DataOut, NodeCore, Output};
use crate::carrier::CarrierKind;

/// The UDP port of path probes (and DPRP) on the underlay.
pub const PROBE_PORT: u16 = 7717;
/// Most probes waiting for a local address.
const MAX_HELD_PROBES: usize = 64;
/// Most remote underlay addresses with a known local address (DPRP
/// datagrams from unproven sources add entries).
const MAX_LOCALS: usize = 1024;
/// The largest DPRP message sent as a native UDP datagram (IPv4 + UDP
/// headers on top stay under the usual 1500-byte path MTU); a longer one
/// takes QUIC.
const MAX_NATIVE_DPRP: usize = 1400;
/// IP protocol number of UDP.
const UDP: u8 = 17;
/// Most candidate flows one packet from an unexpected source is tried
/// against (a NAT binding, docs/PROTOCOL.md "NAT binding").
const MAX_BINDING_CANDIDATES: usize = 8;
/// Native copies of a flow's first packets to a peer behind a NAT (they
/// open this node's own NAT for the flow while the packets go on QUIC).
/// Every packet until the peer's came in, not just the first: a router's
/// TCP conntrack that missed segments sees ACKs for data it never saw,
/// calls the flow invalid and stops translating it (the lab did).
const NAT_PUNCH_COPIES: u8 = 64;
/// Most flows with such copies counted at once.
const MAX_PUNCHING_FLOWS: usize = 4096;
/// Most trial opens per second for NAT bindings: unauthenticated packets
/// must not buy unbounded AEAD work.
const BINDING_TRIALS_PER_SEC: u32 = 2048;
/// How long a new translation's packets still leave on QUIC when nothing
/// says the peer's steering is in place (its nft rule comes milliseconds
/// after the flow is established there, and a native packet that comes
/// before it goes to the peer's kernel: a lost SYN-ACK, a RST). A new flow
/// negotiated on the IP path does not wait for it (steering.rs). Native
/// packets *in* are accepted at once.
pub const NATIVE_GRACE: Duration = Duration::from_millis(300);

/// The native-carrier state of the core.
#[derive(Default)]
pub(super) struct Paths {
    /// One machine per peer with a certified key.
    pub machines: BTreeMap<GeId, PathMachine>,
    /// Per peer, the address its authenticated probes came from.
    pub probe_sources: BTreeMap<GeId, IpAddr>,
    /// This node's address toward each remote underlay address.
    pub locals: BTreeMap<IpAddr, IpAddr>,
    /// Remote addresses the driver was asked about.
    pub asked: BTreeSet<IpAddr>,
    /// Probes waiting for their local address.
    pub held: Vec<Transmit>,
    /// Local side of inbound wire five-tuples (source address and port
    /// zeroed, [`local_side`]) -> the overlay flows (translation keys) with
    /// that local side: tells a packet from the wrong source from an unknown
    /// flow, and names the flows a NAT binding may belong to. A set, not a
    /// list: a server's port gathers every client flow, and a flow comes
    /// and goes in O(log n), not a scan.
    pub sources: FastMap<FlowId, BTreeSet<FlowId>>,
    /// Overlay flows whose wire side came from an authenticated NAT binding
    /// (the observed source, not the peer's own address and port): a later
    /// translation install must not undo it.
    pub bound: FastSet<FlowId>,
    /// Trial opens left in the current second (NAT bindings), and when the
    /// second started.
    pub binding_budget: (Option<Instant>, u32),
    /// Overlay flows of which an authenticated native packet came in: to a
    /// peer behind a NAT only these leave natively (their packets opened
    /// the NAT's mapping; anything else would meet a NAT with none).
    pub heard: FastSet<FlowId>,
    /// Native copies sent per flow to a peer behind a NAT before its own
    /// packet of the flow came in ([`NAT_PUNCH_COPIES`] at most).
    pub punches: FastMap<FlowId, u8>,
    /// Peers whose authenticated probes came from a port other than
    /// [`PROBE_PORT`] (a NAT rewrote it), with that source: also probed
    /// there (a peer-reflexive candidate), and treated as behind a NAT.
    pub nat_sources: BTreeMap<GeId, SocketAddr>,
    /// Sources of native DPRP datagrams from a port other than
    /// [`PROBE_PORT`] (a NAT's): answers go back there (bounded).
    pub dprp_sources: HashSet<SocketAddr>,
    /// Earliest machine deadline (may be early, never late).
    pub deadline: Option<Instant>,
    /// Why native cannot work on this node, when it cannot.
    pub unavailable: Option<Unavailable>,
    /// The underlay families this host has an address in, as the driver
    /// last said (`None`: not said, both assumed).
    pub families: Option<Families>,
}

/// The address families of the host's underlay (global addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    /// An IPv4 address.
    pub v4: bool,
    /// An IPv6 address other than link-local (what the driver reports).
    pub v6: bool,
}

impl Families {
    /// The families of `addrs`.
    pub fn of(addrs: &[IpAddr]) -> Self {
        Self {
            v4: addrs.iter().any(IpAddr::is_ipv4),
            v6: addrs.iter().any(IpAddr::is_ipv6),
        }
    }
}

impl NodeCore {
    /// The host uses `local` as its source address toward `remote` (the
    /// answer to [`Output::FindLocalAddress`]). Then drain
    /// [`NodeCore::poll_output`].
    pub fn handle_local_address(&mut self, remote: IpAddr, local: IpAddr, now: Instant) {
        self.installs.raise_global();
        self.paths.asked.remove(&remote);
        self.paths.locals.insert(remote, local);
        self.release_transit_transmits(remote);
        for t in std::mem::take(&mut self.paths.held) {
            self.route_probe(t);
        }
        let peers: Vec<GeId> = self.paths.machines.keys().copied().collect();
        for ge in peers {
            self.install_peer_translations(ge, now);
        }
        self.drain_paths(now);
    }

    /// The host's underlay now has addresses of `families` (at start and
    /// after every move): each peer's native candidates are of one family
    /// (IPv4 where both ends have it, else IPv6; docs/DESIGN-NOTES.md note
    /// 63), so a change of families probes again. Then drain
    /// [`NodeCore::poll_output`].
    pub fn handle_underlay_families(&mut self, families: Families, now: Instant) {
        if self.paths.families == Some(families) {
            return;
        }
        self.paths.families = Some(families);
        self.installs.raise_global();
        let peers: Vec<GeId> = self.paths.machines.keys().copied().collect();
        for ge in peers {
            self.update_machine(ge, now);
        }
        self.drain_paths(now);
    }

    /// Native cannot work on this node (no raw socket, no nftables): every
    /// peer stays on QUIC and answers no probes.
    pub fn handle_native_unavailable(&mut self, why: Unavailable, now: Instant) {
        self.paths.unavailable = Some(why);
        self.installs.raise_global();
        self.sync_all_native_activity();
        for m in self.paths.machines.values_mut() {
            m.handle_native_unavailable(why, now);
        }
        self.drain_paths(now);
    }

    /// A packet the native receive path took in: `buf[..len]` holds a raw
    /// IPv4 or IPv6 packet addressed to this node's underlay address. Probes and
    /// answers (UDP to [`PROBE_PORT`]) go to the sender's machine; a PCCOM
    /// packet of a translated flow is translated back to its overlay
    /// five-tuple, unprotected in place and returned for the TUN. Anything
    /// else is dropped and counted, never delivered. Then drain
    /// [`NodeCore::poll_output`].
    pub fn handle_native_packet<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        len: usize,
        now: Instant,
    ) -> DataOut<'a> {
        if self.erased || len > buf.len() {
            return DataOut::Nothing;
        }
        let Ok(pkt) = Packet::parse(&buf[..len]) else {
            self.counters.native_in_unknown += 1;
            return DataOut::Nothing;
        };
        let wire = pkt.flow_id();
        if wire.protocol == UDP && wire.dst_port == PROBE_PORT {
            let from = SocketAddr::new(wire.src, wire.src_port);
            let payload = pkt.payload();
            if path::is_probe(payload) {
                self.handle_probe_datagram(payload, from, now);
            } else {
                // DPRP messages are authenticated by DPRP itself. The
                // answer goes back the way the message came, from the
                // address it was sent to (bounded: sources are unproven).
                self.counters.dprp_native_in += 1;
                let local = wire.dst;
                if self.paths.locals.len() < MAX_LOCALS
                    || self.paths.locals.contains_key(&from.ip())
                {
                    self.paths.locals.insert(from.ip(), local);
                }
                if from.port() != PROBE_PORT
                    && (self.paths.dprp_sources.len() < MAX_LOCALS
                        || self.paths.dprp_sources.contains(&from))
                {
                    // Through a NAT that rewrote the port: the answer must
                    // go to the NAT's port to get back in.
                    self.paths.dprp_sources.insert(from);
                }
                self.steering.via_native = true;
                if let Err(e) = self.dprp.handle_datagram(from, payload, now) {
                    self.counters.control_errors += 1;
                    trace!(error = %e, "native DPRP datagram refused");
                }
                self.dprp_touched = true;
                self.drain(now);
                self.steering.via_native = false;
            }
            return DataOut::Nothing;
        }
        let opened = self.native_data(wire, buf, len, now);
        let n = opened.and_then(|n| self.vin6_for_tun(buf, n));
        if let Some(t) = self.installs.take_native_candidate()
            && n.is_some()
            && n == opened
        {
            // Opened and for the TUN as it is (a VIN6 flow changes family
            // at the TUN).
            let overlay = t.overlay.reversed();
            self.offer(
                super::installs::InstallKey::Native(wire),
                &overlay,
                t.peer,
                super::installs::InstallAction::FromNative(t),
                now,
            );
        }
        match n {
            Some(n) => {
                self.note_received(now);
                self.counters.native_in += 1;
                self.counters.native_bytes_in += n as u64;
                self.counters.tun_out += 1;
                let buf: &'a [u8] = buf;
                DataOut::Tun(&buf[..n])
            }
            None => DataOut::Nothing,
        }
    }

    /// The carrier shown for `ge` with its reason (`status`, `ping`).
    pub fn path_status(&self, ge: GeId) -> Option<PathStatus> {
        self.paths.machines.get(&ge).map(PathMachine::status)
    }

    /// The carrier a flow (PIT key) of `ge` takes now: native when the
    /// peer's path is native and the flow has a translation.
    pub(super) fn flow_carrier(&self, flow: &FlowId, ge: GeId) -> CarrierKind {
        if self.plain_on_wire(flow) {
            // A plain real-address flow leaves as the raw packet (real.rs).
            return CarrierKind::Native;
        }
        let overlay = if self.is_own(flow.src) {
            *flow
        } else {
            flow.reversed()
        };
        let native = self.peer_native(ge) && self.xlat.get(&overlay).is_some();
        if native {
            CarrierKind::Native
        } else {
            CarrierKind::Quic
        }
    }

    /// The carrier and path status text of the peer owning overlay address
    /// `ip` (for `ping`).
    pub fn peer_path(&self, ip: Ipv4Addr) -> Option<(String, String)> {
        let p = self.peers.get(self.peers.owner(ip)?)?;
        Some((p.path.current.as_str().to_owned(), p.path.text()))
    }

    /// An inbound native data packet: `Some(n)` when `buf[..n]` is for the TUN.
    fn native_data(
        &mut self,
        wire: FlowId,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Option<usize> {
        let Some(t) = self.xlat.by_inbound_wire(&wire).copied() else {
            if let Some(list) = self.paths.sources.get(&local_side(&wire)) {
                // A translated flow's local side from another source: a NAT
                // on the way may have rewritten the peer's address or port.
                // Only an authenticated packet of the flow moves it.
                let same_ports = list.iter().any(|o| {
                    self.xlat
                        .get(o)
                        .is_some_and(|t| t.wire.dst_port == wire.src_port)
                });
                if let Some(n) = self.try_binding(wire, buf, len, now) {
                    return Some(n);
                }
                // A flow's very ports from another address keep note 21's
                // count; another port is a binding that did not
                // authenticate (or a flow of the peer not steered yet),
                // counted in `native_bindings_refused` only.
                if same_ports {
                    self.counters.native_in_wrong_source += 1;
                }
            } else {
                self.counters.native_in_unknown += 1;
            }
            trace!(%wire, "native packet of no translated flow dropped");
            return None;
        };
        // The lookup is by the exact five-tuple, so the source is the
        // translation's peer address; checked again in case the table's
        // key and entry ever disagree.
        if wire.src != t.wire.dst {
            self.counters.native_in_wrong_source += 1;
            return None;
        }
        let Some(len) = from_wire(buf, len, &wire, &t) else {
            self.counters.native_in_rejected += 1;
            return None;
        };
        let overlay = t.overlay.reversed();
        // Only the GE the flow was negotiated with may feed it.
        if self.pit.lookup(&overlay).and_then(|(_, e)| e.peer()) != Some(t.peer) {
            self.counters.native_in_rejected += 1;
            return None;
        }
        match self
            .pit
            .handle_packet(&overlay, Origin::Remote, buf, len, now)
        {
            Ok(Disposition::Forward { len: n }) => {
                if let Some(m) = self.paths.machines.get_mut(&t.peer) {
                    m.handle_native_data_received(now);
                }
                self.heard_natively(&t.overlay);
                if self.installs.kinds.native {
                    // After this packet the flow's next ones change nothing
                    // here but counts (the gate's peer side is set, the flow
                    // is heard): a worker may carry them.
                    self.installs.native_candidate = Some(t);
                }
                Some(n)
            }
            Err(fpn_proto::Error::Replay { .. }) => {
                // During the peer's trial of native (docs/DESIGN-NOTES.md
                // note 19) the same packet comes on both carriers and the
                // QUIC copy may win: the native one still got through, which
                // is what the peer's data check asks. Never delivered;
                // counted apart from forgeries (an attacker's replay lands
                // here too: the window cannot tell the two apart).
                if let Some(m) = self.paths.machines.get_mut(&t.peer) {
                    m.handle_native_data_received(now);
                }
                self.counters.native_in_replayed += 1;
                trace!(flow = %overlay, "native duplicate refused");
                None
            }
            Ok(_) | Err(_) => {
                self.counters.native_in_rejected += 1;
                trace!(flow = %overlay, "native packet refused");
                None
            }
        }
    }

    /// The NAT binding step (docs/PROTOCOL.md "NAT binding"): a packet whose
    /// local side (this node's address, protocol, port) is a translated
    /// flow's but whose source is not the flow's expected one. It is tried
    /// against each such flow whose peer is known at the packet's source
    /// address: rewritten as if it were that flow's, opened with the flow's
    /// PCCOM key on a copy. The first that opens (tag and replay window) is
    /// the flow, and the observed source becomes its wire peer (translation
    /// and steering). Returns the overlay packet's length, now in `buf`.
    fn try_binding(
        &mut self,
        wire: FlowId,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Option<usize> {
        let candidates: Vec<FlowId> = self
            .paths
            .sources
            .get(&local_side(&wire))?
            .iter()
            .copied()
            .filter(|o| {
                self.xlat
                    .get(o)
                    .is_some_and(|t| self.peer_known_at(t.peer, &t.wire, wire.src))
            })
            .take(MAX_BINDING_CANDIDATES)
            .collect();
        if candidates.is_empty() {
            self.counters.native_bindings_refused += 1;
            return None;
        }
        let (start, left) = &mut self.paths.binding_budget;
        if start.is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1)) {
            *start = Some(now);
            *left = BINDING_TRIALS_PER_SEC;
        }
        // Room for an IPv6 overlay packet, 20 bytes longer than the wire's.
        let mut trial = vec![0u8; len + fpn_proto::packet::family::HEADER_DELTA];
        let mut replayed = false;
        for overlay in candidates {
            let left = &mut self.paths.binding_budget.1;
            if *left == 0 {
                self.counters.native_bindings_refused += 1;
                return None;
            }
            *left -= 1;
            let Some(t) = self.xlat.get(&overlay).copied() else {
                continue;
            };
            trial[..len].copy_from_slice(&buf[..len]);
            let Some(tlen) = from_wire(&mut trial, len, &wire, &t) else {
                continue;
            };
            if self.pit.lookup(&overlay).and_then(|(_, e)| e.peer()) != Some(t.peer) {
                continue;
            }
            match self
                .pit
                .handle_packet(&overlay, Origin::Remote, &mut trial, tlen, now)
            {
                Ok(Disposition::Forward { len: n }) if n <= buf.len() => {
                    buf[..n].copy_from_slice(&trial[..n]);
                    self.bind_observed(t, wire);
                    if let Some(m) = self.paths.machines.get_mut(&t.peer) {
                        m.handle_native_data_received(now);
                    }
                    self.heard_natively(&t.overlay);
                    return Some(n);
                }
                Err(fpn_proto::Error::Replay { .. }) => replayed = true,
                Ok(_) | Err(_) => {}
            }
        }
        // Forged, replayed (a copy of a packet already received, sent from
        // elsewhere) or of no flow: nothing moves.
        self.counters.native_bindings_refused += 1;
        if replayed {
            trace!(%wire, "replayed NAT binding refused");
        }
        None
    }

    /// Whether `ge` is seen behind a NAT on the native path: its probes'
    /// port was rewritten, or its native address is the reflexive one the
    /// GMS sees (a port-preserving NAT). Sending a flow natively into such a
    /// NAT before the peer's packet of it came in failed in the lab even
    /// with port-preserving NATs on both sides (the TCP echo timed out;
    /// docs/DESIGN-NOTES.md note 40).
    pub(super) fn behind_nat(&self, ge: GeId) -> bool {
        self.paths.nat_sources.contains_key(&ge)
            || self.peers.get(ge).is_some_and(|p| {
                p.target
                    .reflexive
                    .is_some_and(|r| self.native_remote(ge) == Some(r.ip()))
            })
    }

    /// Whether a NAT between this node and `ge` rewrites ports: the peer's
    /// (its probes came from another port than [`PROBE_PORT`]) or this
    /// node's (the peer saw our probes from another port). Such a NAT
    /// rewrites ICMP echo ids too, and an echo whose id changed on the way
    /// matches no `native_echo` entry at the peer: its kernel answered it
    /// with the sealed payload, and the failed data checks then took the
    /// whole peer off native (a `ping` from the cafe lost its first 2 s).
    /// The binding step (TCP and UDP) does not cover echo ids, so echoes
    /// across such a NAT go on QUIC (note 58).
    pub(super) fn echo_ids_rewritten(&self, ge: GeId) -> bool {
        self.paths.nat_sources.contains_key(&ge)
            || self
                .paths
                .machines
                .get(&ge)
                .and_then(|m| m.reflexive_addr())
                .is_some_and(|r| r.port() != PROBE_PORT)
    }

    /// The path text of `ge` for `status`, saying when the peer is behind a
    /// NAT (its probes' port was rewritten, or the directory has a
    /// reflexive candidate for it): `native via NAT` (its flows go natively
    /// once its own packet of the flow came in), `quic (native blocked by
    /// NAT; ...)` while the machine is not native.
    pub(super) fn nat_path_text(&self, ge: GeId, text: String) -> String {
        let nat = self.paths.nat_sources.contains_key(&ge)
            || self
                .peers
                .get(ge)
                .is_some_and(|p| p.target.reflexive.is_some());
        if !nat || text.contains("forced") {
            return text;
        }
        if text == "native" {
            return "native via NAT".into();
        }
        match text.strip_prefix("quic (") {
            Some(rest) => format!("quic (native blocked by NAT; {rest}"),
            None => text,
        }
    }

    /// Whether `ip` is an address `ge` is known at: its flow's current wire
    /// peer, the source of its authenticated probes, or a directory
    /// candidate. A binding may move a flow's port anywhere but its address
    /// only among these, so a packet captured on the way and sent first
    /// from an attacker's own address cannot pull the flow there.
    fn peer_known_at(&self, ge: GeId, current: &FlowId, ip: IpAddr) -> bool {
        current.dst == ip
            || self.paths.probe_sources.get(&ge) == Some(&ip)
            || self
                .peers
                .get(ge)
                .is_some_and(|p| p.target.addrs.iter().any(|a| a.ip() == ip))
    }

    /// Installs an authenticated binding: flow `t` is now seen at
    /// `observed` (an inbound wire five-tuple), so its packets go back to
    /// that address and port and its steering takes that five-tuple.
    fn bind_observed(&mut self, t: Translation, observed: FlowId) {
        let new_wire = FlowId {
            dst: observed.src,
            dst_port: observed.src_port,
            ..t.wire
        };
        let old_inbound = t.wire.reversed();
        match self.xlat.rebind(&t.overlay, new_wire) {
            Ok(n) => {
                self.installs.raise(t.peer);
                let inbound = n.wire.reversed();
                self.paths.bound.insert(t.overlay);
                self.counters.native_bindings += 1;
                info!(flow = %t.overlay, peer = %t.peer, from = %old_inbound, to = %inbound,
                    "NAT binding installed");
                self.push_output(Output::NativeFlowRemoved(old_inbound));
                self.push_output(Output::NativeFlowAdded(inbound));
            }
            Err(e) => {
                self.counters.native_bindings_refused += 1;
                debug!(flow = %t.overlay, error = %e, "NAT binding not installed");
            }
        }
    }

    fn handle_probe_datagram(&mut self, payload: &[u8], from: SocketAddr, now: Instant) {
        let Ok(view) = ProbeView::new_checked(payload) else {
            self.counters.native_in_unknown += 1;
            return;
        };
        let ge = view.sender();
        // An answer carries the count the data check compares, a probe gets
        // this node's: both as if the core had carried every packet.
        self.sync_native_activity(ge);
        if !matches!(
            view.kind(),
            path::ProbeKind::Probe | path::ProbeKind::Answer
        ) {
            // Notices and moved messages come over the carrier, whose peer
            // authentication says who sent them; on the native path nobody
            // vouches for the source.
            self.counters.native_in_unknown += 1;
            return;
        }
        let Some(m) = self.paths.machines.get_mut(&ge) else {
            // A peer's first probe often comes before the directory told
            // this node of the peer (its key): not an unknown packet, just
            // early. Counted apart, so `native_in_unknown` stays a signal.
            self.counters.probes_unknown_peer += 1;
            return;
        };
        let is_probe = view.kind() == path::ProbeKind::Probe;
        let moves_before = m.stats().peer_moves;
        match m.handle_datagram(payload, from, now) {
            Ok(()) => {
                if self
                    .paths
                    .machines
                    .get(&ge)
                    .is_some_and(|m| m.stats().peer_moves > moves_before)
                {
                    self.peer_moved(ge, Some(from.ip()), now);
                }
                if is_probe && self.paths.probe_sources.get(&ge) != Some(&from.ip()) {
                    self.paths.probe_sources.insert(ge, from.ip());
                    self.install_peer_translations(ge, now);
                }
                if is_probe
                    && from.port() != PROBE_PORT
                    && self.paths.nat_sources.get(&ge) != Some(&from)
                {
                    // A NAT rewrote the peer's probe port: its mapping of
                    // the peer's 7717 is `from`, the only place our probes
                    // (and answers) get in. Probed as one more candidate.
                    self.paths.nat_sources.insert(ge, from);
                    self.update_machine(ge, now);
                }
            }
            Err(e) => trace!(peer = %ge, error = %e, "probe refused"),
        }
        self.drain_path(ge, now);
    }

    /// The family a peer with underlay addresses `peer` is probed in:
    /// `Some(true)` IPv4, `Some(false)` IPv6, `None` when the two ends
    /// share none. One family per peer, IPv4 where both ends have it, so
    /// a dual-stack pair keeps the path it had before IPv6 underlays were
    /// native and both ends agree without a word (note 63).
    pub(super) fn native_family_v4(&self, peer: &[SocketAddr]) -> Option<bool> {
        let here = self
            .paths
            .families
            .unwrap_or(Families { v4: true, v6: true });
        if here.v4 && peer.iter().any(SocketAddr::is_ipv4) {
            Some(true)
        } else if here.v6 && peer.iter().any(SocketAddr::is_ipv6) {
            Some(false)
        } else {
            None
        }
    }

    /// Makes or updates the machine of a peer after a directory record.
    pub(super) fn update_machine(&mut self, ge: GeId, now: Instant) {
        // The machine may start a probe: it carries the workers' counts.
        self.sync_native_activity(ge);
        let Some(p) = self.peers.get(ge) else { return };
        let mut candidates: Vec<SocketAddr> = Vec::new();
        let family = self.native_family_v4(&p.target.addrs);
        for a in p
            .target
            .addrs
            .iter()
            .filter(|a| Some(a.is_ipv4()) == family)
        {
            let c = SocketAddr::new(a.ip(), PROBE_PORT);
            if !candidates.contains(&c) {
                candidates.push(c);
            }
        }
        if let Some(c) = self.paths.nat_sources.get(&ge)
            && Some(c.is_ipv4()) == family
            && !candidates.contains(c)
        {
            candidates.push(*c);
        }
        if let Some(m) = self.paths.machines.get_mut(&ge) {
            if m.candidates() != candidates.as_slice() {
                m.set_candidates(candidates, now);
            }
        } else {
            let Some(key) = p.key else { return };
            let probe_key = match self.dprp.probe_key(&key) {
                Ok(k) => k,
                Err(e) => {
                    debug!(peer = %ge, error = %e, "no probe key for the peer: QUIC only");
                    return;
                }
            };
            let unix_now = self.cfg.unix_start
                + now
                    .saturating_duration_since(*self.epoch.get_or_insert(now))
                    .as_secs();
            let mut m = PathMachine::new(
                self.cfg.path.clone(),
                self.dprp.ge(),
                ge,
                &probe_key,
                candidates,
                unix_now,
                now,
            );
            if let Some(why) = self.paths.unavailable {
                m.handle_native_unavailable(why, now);
            }
            debug!(peer = %ge, status = %m.status(), "path machine started");
            if let Some(p) = self.peers.get_mut(ge) {
                p.path.current = carrier_of(m.current());
                p.path.status = Some(m.status());
            }
            self.paths.machines.insert(ge, m);
        }
        self.drain_path(ge, now);
    }

    /// Forgets a peer's machine and translations (it left the directory).
    pub(super) fn remove_machine(&mut self, ge: GeId) {
        self.installs.raise(ge);
        self.paths.machines.remove(&ge);
        self.paths.probe_sources.remove(&ge);
        self.paths.nat_sources.remove(&ge);
        let flows: Vec<FlowId> = self.xlat.flows_of(ge).copied().collect();
        for f in &flows {
            self.flow_ended(f);
        }
    }

    /// Runs machines whose deadline passed.
    pub(super) fn handle_path_timeout(&mut self, now: Instant) {
        if self.paths.deadline.is_none_or(|d| d > now) {
            return;
        }
        let due: Vec<GeId> = self
            .paths
            .machines
            .iter()
            .filter(|(_, m)| m.poll_timeout().is_some_and(|(t, _)| t <= now))
            .map(|(g, _)| *g)
            .collect();
        for ge in due {
            self.sync_native_activity(ge);
            if let Some(m) = self.paths.machines.get_mut(&ge) {
                m.handle_timeout(now);
            }
        }
        self.drain_paths(now);
    }

    /// Drains every machine and recomputes the earliest deadline.
    pub(super) fn drain_paths(&mut self, now: Instant) {
        let ges: Vec<GeId> = self.paths.machines.keys().copied().collect();
        for ge in ges {
            self.drain_path(ge, now);
        }
        self.paths.deadline = self
            .paths
            .machines
            .values()
            .filter_map(|m| m.poll_timeout().map(|(t, _)| t))
            .min();
    }

    /// Drains one machine's transmits and events.
    pub(super) fn drain_path(&mut self, ge: GeId, now: Instant) {
        loop {
            let Some(m) = self.paths.machines.get_mut(&ge) else {
                return;
            };
            if let Some(t) = m.poll_transmit() {
                if matches!(
                    t.kind,
                    path::ProbeKind::Notice | path::ProbeKind::Moved | path::ProbeKind::MovedAck
                ) {
                    self.send_notice(ge, &t);
                } else {
                    self.route_probe(t);
                }
                continue;
            }
            let Some(ev) = m.poll_event() else { break };
            let status = m.status();
            self.on_path_event(ge, ev, status, now);
        }
        self.merge_path_deadline(ge);
        self.check_installs(ge);
    }

    /// Moves the earliest deadline earlier if `ge`'s machine needs it (the
    /// data path's cheap update; [`NodeCore::drain_paths`] recomputes).
    pub(super) fn merge_path_deadline(&mut self, ge: GeId) {
        if let Some((t, _)) = self.paths.machines.get(&ge).and_then(|m| m.poll_timeout()) {
            self.paths.deadline = Some(self.paths.deadline.map_or(t, |d| d.min(t)));
        }
    }

    fn on_path_event(&mut self, ge: GeId, ev: PathEvent, status: PathStatus, now: Instant) {
        let _span = tracing::debug_span!("peer", %ge).entered();
        if let Some(p) = self.peers.get_mut(ge) {
            p.path.current = carrier_of(status.path);
            p.path.status = Some(status);
        }
        match ev {
            PathEvent::Switched { from, to, reason } => {
                info!(%from, %to, %reason, "path switched");
                if to == PathKind::Native {
                    self.install_peer_translations(ge, now);
                }
            }
            PathEvent::Reason { path, reason } => debug!(%path, %reason, "path reason"),
        }
        self.peers_changed = true;
    }

    /// A fallback notice goes to the peer as a control frame on the QUIC
    /// carrier: the native path just failed, so it is no way to say so.
    fn send_notice(&mut self, ge: GeId, t: &Transmit) {
        let Some(p) = self.peers.get(ge).filter(|p| !p.target.addrs.is_empty()) else {
            return;
        };
        let target = p.target.clone();
        self.push_output(Output::Send {
            target,
            path: CarrierKind::Quic,
            kind: crate::carrier::FrameKind::Control,
            payload: t.payload().to_vec(),
        });
    }

    /// A path message on the carrier from `peer` (control frame with
    /// [`path::is_probe`] true, arrived from `from`): notices, moved
    /// messages (Binding Updates) and their acks are taken there; probes
    /// and answers belong on the native path, where they measure it.
    pub(super) fn handle_carrier_path_message(
        &mut self,
        peer: GeId,
        from: SocketAddr,
        payload: &[u8],
        now: Instant,
    ) {
        let Ok(view) = ProbeView::new_checked(payload) else {
            self.counters.control_errors += 1;
            return;
        };
        let kind = view.kind();
        let by_carrier = matches!(
            kind,
            path::ProbeKind::Notice | path::ProbeKind::Moved | path::ProbeKind::MovedAck
        );
        if !by_carrier || view.sender() != peer {
            // Only the carrier's authenticated peer speaks for itself: a
            // moved message naming another GE is a forgery.
            self.counters.control_errors += 1;
            if kind == path::ProbeKind::Moved {
                self.moves.refused += 1;
            }
            return;
        }
        self.sync_native_activity(peer);
        let Some(m) = self.paths.machines.get_mut(&peer) else {
            return;
        };
        let r = match kind {
            path::ProbeKind::Notice => m.handle_notice(payload, now),
            path::ProbeKind::Moved => m.handle_moved(payload, from, now),
            _ => m.handle_moved_ack(payload),
        };
        match r {
            Ok(()) if kind == path::ProbeKind::Notice => {
                debug!(%peer, status = %m.status(), "peer's native path failed");
            }
            Ok(()) if kind == path::ProbeKind::Moved => {
                info!(%peer, %from, status = %m.status(), "peer moved (its binding update)");
                // Through the relay the source is a stand-in: where the
                // peer went shows in its probes or the directory.
                let ip = (!crate::carrier::is_relay_from(&from)).then_some(from.ip());
                self.peer_moved(peer, ip, now);
            }
            Ok(()) => {
                debug!(%peer, "binding update acknowledged");
                self.release_held(peer, now);
            }
            Err(e) => {
                self.counters.control_errors += 1;
                if kind == path::ProbeKind::Moved {
                    self.moves.refused += 1;
                }
                debug!(%peer, ?kind, error = %e, "path message refused");
            }
        }
        self.drain_path(peer, now);
    }

    /// Sends a probe as a raw UDP packet, or holds it until the local
    /// address toward its destination is known.
    fn route_probe(&mut self, t: Transmit) {
        let dst = t.dst.ip();
        let Some(local) = self.paths.locals.get(&dst).copied() else {
            if self.paths.asked.insert(dst) {
                self.push_output(Output::FindLocalAddress(dst));
            }
            if self.paths.held.len() < MAX_HELD_PROBES {
                self.paths.held.push(t);
            }
            return;
        };
        match udp_packet(local, dst, PROBE_PORT, t.dst.port(), t.payload()) {
            Some(p) => self.push_output(Output::SendNative(p)),
            None => trace!(%dst, %local, "no local address of the probe's family"),
        }
    }

    /// The peer's native address as this node knows it now.
    /// Forced native with no answer yet: the first candidate (the
    /// configuration asked for native whatever the probes say).
    pub(super) fn native_remote(&self, ge: GeId) -> Option<IpAddr> {
        let m = self.paths.machines.get(&ge)?;
        m.native_addr()
            .map(|a| a.ip())
            .or_else(|| self.paths.probe_sources.get(&ge).copied())
            .or_else(|| {
                (self.cfg.path.force == path::Force::Native)
                    .then(|| m.candidates().first().map(|a| a.ip()))
                    .flatten()
            })
    }

    /// Peer `ge` moved, to `ip` as far as this node can tell (its fresh,
    /// authenticated probe or Binding Update came from there): the NAT
    /// bindings of its flows are stale (they name the old network's NAT),
    /// so its flows' translations move to `ip` with their own ports, and a
    /// new NAT there binds them again with its first packet. Without this
    /// a bound flow kept its old binding and the peer's packets from the
    /// new address were refused until a TCP retransmission (hundreds of ms)
    /// made a new one. `None`: moved to where this node cannot tell (the
    /// Binding Update came through the relay); the old address is no
    /// longer taken as the peer's.
    pub(super) fn peer_moved(&mut self, ge: GeId, ip: Option<IpAddr>, now: Instant) {
        self.installs.raise(ge);
        let xlat = &self.xlat;
        self.paths
            .bound
            .retain(|o| xlat.get(o).is_none_or(|t| t.peer != ge));
        match ip {
            Some(ip) => {
                self.paths.probe_sources.insert(ge, ip);
            }
            None => {
                self.paths.probe_sources.remove(&ge);
            }
        }
        // The NAT that rewrote its probes belonged to the old network; the
        // next probe from a NAT says so again. Unless it is at the new
        // address: the peer's probes from the new network often come
        // before its Binding Update (the carrier opens its connection
        // again first), and forgetting the NAT they showed would send
        // echoes natively into it until the next probe (note 58). A NAT
        // source kept at the same address after a move within one NAT (a
        // CGNAT) may name a stale port until the next probe replaces it;
        // echoes would meet the same NAT on :7717 without it.
        if self
            .paths
            .nat_sources
            .get(&ge)
            .is_none_or(|s| Some(s.ip()) != ip)
        {
            self.paths.nat_sources.remove(&ge);
        }
        self.install_peer_translations(ge, now);
    }

    /// Installs (or moves) the translation of every protected flow of `ge`.
    pub(super) fn install_peer_translations(&mut self, ge: GeId, now: Instant) {
        let flows: Vec<FlowId> = self
            .pit
            .iter()
            .filter(|(_, e)| e.peer() == Some(ge))
            .map(|(f, _)| *f)
            .collect();
        for f in flows {
            self.install_translation(f, ge, false, now);
        }
    }

    /// A native packet of `overlay` opened (here or by a worker, note 79):
    /// the peer steers the flow, and it was heard through the peer's NAT,
    /// if any.
    pub(super) fn heard_natively(&mut self, overlay: &FlowId) {
        self.peer_steering_seen(overlay);
        self.paths.heard.insert(*overlay);
    }

    /// Installs the translation of one flow (PIT key `flow`) with `ge` when
    /// both addresses of its wire side are known.
    /// `fresh`: the flow's PIT entry was made just now, so no worker's
    /// install holds its cipher state and none needs taking back (below).
    pub(super) fn install_translation(
        &mut self,
        flow: FlowId,
        ge: GeId,
        fresh: bool,
        now: Instant,
    ) {
        if !self
            .pit
            .lookup(&flow)
            .is_some_and(|(_, e)| matches!(e.action(), fpn_proto::action::Action::Protect(_)))
        {
            // Plain and relayed flows keep to QUIC: on the native path a
            // plain packet would cross the underlay unprotected.
            return;
        }
        if self.paths.unavailable.is_some() || !natively_steerable(&flow) {
            return;
        }
        let Some(remote) = self.native_remote(ge) else {
            return;
        };
        let Some(local) = self.paths.locals.get(&remote).copied() else {
            if self.paths.asked.insert(remote) {
                self.push_output(Output::FindLocalAddress(remote));
            }
            return;
        };
        let overlay = if self.is_own(flow.src) {
            flow
        } else {
            flow.reversed()
        };
        if remote.is_ipv6() && self.natf.mapping(&overlay).is_some() {
            // A gateway's NAT-f table (its DNAT to the host, its reserved
            // ports) is IPv4: such a flow takes QUIC from an IPv6-only
            // underlay (note 63).
            return;
        }
        let mut t = Translation::addresses(overlay, local, remote, ge);
        self.natf_wire_ports(&mut t);
        if let Some(old) = self.xlat.get(&overlay).copied() {
            if old == t {
                return;
            }
            if self.paths.bound.contains(&overlay) && old.wire.src == local {
                // A NAT binding put the observed address and port there;
                // the peer's own address says less about where its packets
                // come from.
                return;
            }
            self.xlat.remove(&overlay);
            self.installs.raise(ge);
            self.forget_source(&old);
            self.push_output(Output::NativeFlowRemoved(old.wire.reversed()));
        }
        match self.xlat.insert(t) {
            Ok(()) => {
                // An established flow's packets took QUIC until now (or the
                // old translation): its installs say so and must go, and the
                // peer's epoch is how. A new flow has none (the PIT retired
                // any earlier entry's cipher state, which stales its
                // installs): raising the epoch for it would take every other
                // flow of the peer back from the workers too, for every new
                // flow of a storm (design note 79).
                if !fresh {
                    self.installs.raise(ge);
                }
                let inbound = t.wire.reversed();
                self.paths
                    .sources
                    .entry(local_side(&inbound))
                    .or_default()
                    .insert(overlay);
                self.close_gate(overlay, now);
                debug!(flow = %overlay, peer = %ge, "native translation installed");
                // Steered already since the negotiation started
                // (steering.rs), or asked for now.
                if !self.take_presteer(overlay, inbound) {
                    self.push_output(Output::NativeFlowAdded(inbound));
                }
            }
            Err(e) => {
                self.counters.native_translations_refused += 1;
                debug!(flow = %overlay, error = %e, "no native translation");
            }
        }
    }

    /// The flow (PIT key) ended: its translation and interception go.
    pub(super) fn flow_ended(&mut self, flow: &FlowId) {
        let overlay = if self.is_own(flow.src) {
            *flow
        } else {
            flow.reversed()
        };
        self.steering_ended(&overlay);
        self.paths.bound.remove(&overlay);
        self.paths.heard.remove(&overlay);
        self.paths.punches.remove(&overlay);
        if let Some(t) = self.xlat.remove(&overlay) {
            self.forget_source(&t);
            self.push_output(Output::NativeFlowRemoved(t.wire.reversed()));
        }
        self.natf_flow_ended(flow);
        self.vin6_flow_ended(flow);
    }

    /// Takes translation `t`'s flow out of [`Paths::sources`].
    fn forget_source(&mut self, t: &Translation) {
        let key = local_side(&t.wire.reversed());
        if let Some(list) = self.paths.sources.get_mut(&key) {
            list.remove(&t.overlay);
            if list.is_empty() {
                self.paths.sources.remove(&key);
            }
        }
    }

    /// Outbound: if `ge`'s path is native and the flow in `buf[..n]` has a
    /// translation, rewrites it to its wire packet in place and returns
    /// where that lies (the caller sends `buf[start..end]` natively; see
    /// [`Self::to_wire`] for packets that change family).
    pub(super) fn try_native(
        &mut self,
        ge: GeId,
        buf: &mut [u8],
        n: usize,
        now: Instant,
    ) -> Option<(usize, usize)> {
        if !self.peer_native(ge) {
            return None;
        }
        let (overlay, ip_header) = match Packet::parse(&buf[..n]) {
            Ok(p) => (p.flow_id(), p.ip_header_len()),
            Err(_) => return None,
        };
        if !natively_steerable(&overlay) {
            if on_dprp_port(&overlay) {
                self.counters.quic_dprp_port += 1;
            } else if !overlay.dst.is_ipv4() {
                self.counters.quic_ipv6 += 1;
            }
            return None;
        }
        if matches!(
            overlay.protocol,
            fpn_proto::flow::protocol::ICMP | fpn_proto::flow::protocol::ICMPV6
        ) && self.echo_ids_rewritten(ge)
        {
            self.counters.native_echo_nat += 1;
            return None;
        }
        // Checked before the steering gate: the copies below must go even
        // while the gate waits for a native packet of the peer, which
        // cannot come through the peer's NAT before our copy opened ours.
        if self.behind_nat(ge) && !self.paths.heard.contains(&overlay) {
            // Inbound through the peer's NAT works only where its own
            // packets of the flow made a mapping: QUIC (or the relay) until
            // one came in. The first few also go natively as copies: they
            // open this side's NAT for the flow (when both ends are behind
            // one, each waits for the other's packet), and a copy that gets
            // through is a duplicate the replay window drops.
            self.counters.native_nat_waits += 1;
            // Never a copy of a TCP SYN or SYN-ACK: a router's conntrack
            // that sees the handshake only in part (the peer's router drops
            // our SYN, ours never sees its SYN-ACK) keeps the flow half-open
            // and stops translating it; from a mid-stream segment it picks
            // the flow up as established (nf_conntrack_tcp_loose).
            let syn =
                overlay.protocol == 6 && buf.get(ip_header + 13).is_some_and(|f| f & 0x02 != 0);
            let sent = self.paths.punches.entry(overlay).or_default();
            if !syn && *sent < NAT_PUNCH_COPIES && self.paths.punches.len() <= MAX_PUNCHING_FLOWS {
                *self.paths.punches.entry(overlay).or_default() += 1;
                let mut copy = with_room(&buf[..n]);
                if let Some((start, end)) = self.to_wire(&mut copy, n) {
                    copy.truncate(end);
                    copy.drain(..start);
                    self.counters.native_nat_punches += 1;
                    self.push_output(Output::SendNative(copy));
                }
            }
            return None;
        }
        if !self.steering.gates.is_empty() && !self.gate_open(&overlay, now) {
            return None;
        }
        let (start, end) = self.to_wire(buf, n)?;
        if let Some(m) = self.paths.machines.get_mut(&ge) {
            m.handle_native_data_sent(now);
        }
        self.merge_path_deadline(ge);
        self.counters.native_out += 1;
        self.counters.native_bytes_out += (end - start) as u64;
        Some((start, end))
    }

    /// Rewrites the protected overlay packet in `buf[..n]` for the wire by
    /// its flow's translation: `Some((start, end))` when the wire packet is
    /// now `buf[start..end]`, `None` (buffer unchanged) when the flow has
    /// none or the packet cannot cross (an IPv6 extension header, IPv4
    /// options, no room). The port rewrite after a family change works on
    /// the packet just made and checked, so it does not fail there. PCCOM binds neither the addresses nor the IP
    /// version, so a packet may change family on the way (`packet::family`):
    /// an IPv6 overlay packet on an IPv4 wire starts 20 bytes in (note 59),
    /// an IPv4 one on an IPv6 wire ends 20 bytes later (`buf` needs the
    /// room; note 63).
    pub(super) fn to_wire(&self, buf: &mut [u8], n: usize) -> Option<(usize, usize)> {
        let overlay = Packet::parse(&buf[..n]).ok()?.flow_id();
        let t = self.xlat.get(&overlay)?;
        to_wire(buf, n, t)
    }

    /// The packet in `frame` (PIT key `flow`'s, protected) leaves on QUIC to
    /// `ge`: while `ge`'s machine runs a trial, a native copy goes too (a
    /// bounded number per probe round), so the trial sees whether native
    /// data gets through without a flow ever depending on it.
    pub(super) fn send_trial_copy(&mut self, ge: GeId, frame: &[u8], now: Instant) {
        if !self.paths.machines.get(&ge).is_some_and(|m| m.in_trial()) {
            return;
        }
        let Ok(pkt) = Packet::parse(frame) else {
            return;
        };
        let overlay = pkt.flow_id();
        if self.xlat.get(&overlay).is_none()
            || (overlay.protocol == fpn_proto::flow::protocol::ICMP && self.echo_ids_rewritten(ge))
            || !self.gate_open(&overlay, now)
            || !self
                .paths
                .machines
                .get_mut(&ge)
                .is_some_and(|m| m.take_trial_copy())
        {
            return;
        }
        let mut copy = with_room(frame);
        let Some((start, end)) = self.to_wire(&mut copy, frame.len()) else {
            return;
        };
        copy.truncate(end);
        copy.drain(..start);
        if let Some(m) = self.paths.machines.get_mut(&ge) {
            m.handle_native_data_sent(now);
        }
        self.merge_path_deadline(ge);
        self.counters.native_trial_copies += 1;
        self.push_output(Output::SendNative(copy));
    }

    /// DPRP on the IP path: a message for `ge` leaves as a UDP datagram
    /// from this node's underlay address, port 7717, to the peer's native
    /// address, port 7717, while the peer's path is native (on-path
    /// gateways see it there; docs/DESIGN-NOTES.md note 23). True if sent.
    pub(super) fn send_dprp_native(&mut self, ge: GeId, payload: &[u8]) -> bool {
        if payload.len() > MAX_NATIVE_DPRP || !self.peer_native(ge) {
            return false;
        }
        let Some(remote) = self.native_remote(ge) else {
            return false;
        };
        // Behind a NAT that rewrote the peer's 7717, its mapping (where its
        // probes come from) is the way in.
        let dst = match self.paths.nat_sources.get(&ge) {
            Some(n) if n.ip() == remote => {
                if self.paths.dprp_sources.len() < MAX_LOCALS {
                    self.paths.dprp_sources.insert(*n);
                }
                *n
            }
            _ => SocketAddr::new(remote, PROBE_PORT),
        };
        self.send_dprp_to(dst, payload)
    }

    /// Whether `ge`'s path is native now.
    pub(super) fn peer_native(&self, ge: GeId) -> bool {
        self.peers
            .get(ge)
            .is_some_and(|p| p.path.current == CarrierKind::Native)
    }

    /// Sends a DPRP message as a native UDP datagram to `dst` (port 7717)
    /// if this node knows its own address toward it. True if sent.
    pub(super) fn send_dprp_to(&mut self, dst: SocketAddr, payload: &[u8]) -> bool {
        if payload.len() > MAX_NATIVE_DPRP
            || (dst.port() != PROBE_PORT && !self.paths.dprp_sources.contains(&dst))
        {
            return false;
        }
        let Some(local) = self.paths.locals.get(&dst.ip()).copied() else {
            return false;
        };
        match udp_packet(local, dst.ip(), PROBE_PORT, dst.port(), payload) {
            Some(p) => {
                self.counters.dprp_native_out += 1;
                self.push_output(Output::SendNative(p));
                true
            }
            None => false,
        }
    }

    /// Probe counters summed over the machines.
    pub(super) fn probe_stats(&self) -> (u64, u64) {
        self.paths.machines.values().fold((0, 0), |(s, a), m| {
            let st = m.stats();
            (s + st.probes_sent, a + st.probes_answered)
        })
    }
}

/// A copy of `packet` with room behind it for the 20 bytes an IPv4
/// packet grows by on an IPv6 wire ([`NodeCore::to_wire`]).
pub(super) fn with_room(packet: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(packet.len() + fpn_proto::packet::family::HEADER_DELTA);
    v.extend_from_slice(packet);
    v.resize(packet.len() + fpn_proto::packet::family::HEADER_DELTA, 0);
    v
}

/// The core's carrier kind for a path kind.
fn carrier_of(k: PathKind) -> CarrierKind {
    match k {
        PathKind::Native => CarrierKind::Native,
        PathKind::Quic => CarrierKind::Quic,
    }
}

/// The local side of an inbound wire five-tuple: its source address and
/// port zeroed (a NAT may have rewritten both). An ICMP echo keeps its
/// identifier, which stands for both ports.
fn local_side(inbound: &FlowId) -> FlowId {
    FlowId {
        src: unspecified(inbound.src),
        src_port: if inbound.protocol == fpn_proto::flow::protocol::ICMP {
            inbound.src_port
        } else {
            0
        },
        ..*inbound
    }
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// A UDP datagram from `src:sport` to `dst:dport` in the addresses'
/// family ([`udp_v4`], [`udp_v6`]); `None` when they differ.
pub fn udp_packet(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Option<Vec<u8>> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(udp_v4(s, d, sport, dport, payload)),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(udp_v6(s, d, sport, dport, payload)),
        _ => None,
    }
}

/// An IPv6/UDP datagram from `src:sport` to `dst:dport`, with the checksum
/// IPv6 requires (RFC 8200 8.1).
pub fn udp_v6(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let mut p = vec![0u8; 40 + ulen];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(ulen as u16).to_be_bytes());
    p[6] = UDP;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40..42].copy_from_slice(&sport.to_be_bytes());
    p[42..44].copy_from_slice(&dport.to_be_bytes());
    p[44..46].copy_from_slice(&(ulen as u16).to_be_bytes());
    p[48..].copy_from_slice(payload);
    // The pseudo-header (addresses, length, next header) and the datagram.
    let sum = fpn_proto::packet::checksum::Sum::new()
        .add_bytes(&p[8..40])
        .add_u32(ulen as u32)
        .add_u16(u16::from(UDP))
        .add_bytes(&p[40..]);
    let c = match sum.finish() {
        0 => 0xffff,
        c => c,
    };
    p[46..48].copy_from_slice(&c.to_be_bytes());
    p
}

/// An IPv4/UDP datagram from `src:sport` to `dst:dport` (UDP checksum 0,
/// which IPv4 allows; the probe's own tag protects its bytes).
pub fn udp_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 28 + payload.len()];
    let total = p.len() as u16;
    p[0] = 0x45;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = UDP;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    let c = fpn_proto::packet::checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

/// Rewrites the protected packet `buf[..n]` of `t.overlay` for the wire of
/// `t` (addresses and ports; the IP header's family too when the wire's
/// differs, for which an IPv4 overlay packet needs 20 bytes of room behind
/// it). Returns where the wire packet lies in `buf`. The core and the
/// workers send with it.
pub(super) fn to_wire(buf: &mut [u8], n: usize, t: &Translation) -> Option<(usize, usize)> {
    let mut pkt = Packet::parse(&mut buf[..n]).ok()?;
    let (overlay, ip_header) = (pkt.flow_id(), pkt.ip_header_len());
    if overlay.src.is_ipv4() == t.wire.src.is_ipv4() {
        // The usual case: addresses (and ports) rewritten in place, one
        // parse per packet.
        return fpn_proto::xlat::rewrite_to(&mut pkt, &t.overlay, &t.wire)
            .ok()
            .map(|()| (0, n));
    }
    // The flow as it is once its IP header has the wire's family and
    // addresses: `rewrite_to` then puts the translation's ports.
    let from = FlowId {
        src: t.wire.src,
        dst: t.wire.dst,
        ..overlay
    };
    match (t.wire.src, t.wire.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            if !fpn_proto::packet::family::plain_header(false, ip_header) {
                return None;
            }
            let start = fpn_proto::packet::family::v6_to_v4(buf, n, src, dst).ok()?;
            // Checked and valid, so this rewrite cannot fail on the
            // packet just made.
            let mut p4 = Packet::parse(&mut buf[start..n]).ok()?;
            fpn_proto::xlat::rewrite_to(&mut p4, &from, &t.wire).ok()?;
            Some((start, n))
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            if !fpn_proto::packet::family::plain_header(true, ip_header) {
                return None;
            }
            let end = fpn_proto::packet::family::v4_to_v6(buf, n, src, dst).ok()?;
            let mut p6 = Packet::parse(&mut buf[..end]).ok()?;
            fpn_proto::xlat::rewrite_to(&mut p6, &from, &t.wire).ok()?;
            Some((0, end))
        }
        _ => None,
    }
}

/// Rewrites the inbound wire packet in `buf[..len]` (five-tuple `wire` as
/// it arrived) into the overlay packet of translation `t`, in place, at the
/// start of `buf`: `Some(new length)`, or `None` when it does not fit (then
/// `buf` may hold a half-rewritten packet, which the caller drops). A
/// packet changes family where the translation's two sides differ
/// (`packet::family`): an IPv4 wire packet of an IPv6 overlay flow grows by
/// 20 bytes (note 59); an IPv6 wire packet of an IPv4 flow shrinks by 20,
/// and moves to the buffer's start (note 63).
pub(super) fn from_wire(
    buf: &mut [u8],
    len: usize,
    wire: &FlowId,
    t: &Translation,
) -> Option<usize> {
    let overlay = t.overlay.reversed();
    let (len, from) = match (overlay.src, overlay.dst) {
        (IpAddr::V6(src), IpAddr::V6(dst)) if wire.src.is_ipv4() => {
            let n = fpn_proto::packet::family::v4_to_v6(buf, len, src, dst).ok()?;
            (n, overlay_addressed(wire, &overlay))
        }
        (IpAddr::V4(src), IpAddr::V4(dst)) if wire.src.is_ipv6() => {
            if Packet::parse(&buf[..len]).ok()?.ip_header_len()
                != fpn_proto::packet::IPV6_HEADER_LEN
            {
                return None;
            }
            let start = fpn_proto::packet::family::v6_to_v4(buf, len, src, dst).ok()?;
            buf.copy_within(start..len, 0);
            (len - start, overlay_addressed(wire, &overlay))
        }
        _ => (len, *wire),
    };
    let mut pkt = Packet::parse(&mut buf[..len]).ok()?;
    fpn_proto::xlat::rewrite_to(&mut pkt, &from, &overlay).ok()?;
    Some(len)
}

/// `wire`'s ports and protocol with `overlay`'s addresses: a packet that
/// changed family, before its ports are put back.
fn overlay_addressed(wire: &FlowId, overlay: &FlowId) -> FlowId {
    FlowId {
        src: overlay.src,
        dst: overlay.dst,
        ..*wire
    }
}

/// Whether the peer's nftables table can take this flow's packets away
/// from its kernel: TCP and UDP by five-tuple (set `native_flows`), ICMP
/// echo by addresses and echo id (set `native_echo`, request and reply).
/// Anything else sent natively would reach the peer's kernel, which would
/// answer it itself, so it stays on QUIC: other ICMP messages are flows
/// with ports 0 (fpn-proto's `FlowId`), so an echo with id 0 stays too.
/// A UDP flow with DPRP's port at either end stays too
/// ([`on_dprp_port`]).
pub(super) fn natively_steerable(flow: &FlowId) -> bool {
    if on_dprp_port(flow) {
        return false;
    }
    // TCP, UDP and echoes of either family cross on a wire of either
    // (notes 59, 62, 63); other ICMPv6 messages take QUIC.
    if flow.dst.is_ipv6() {
        return match flow.protocol {
            6 | UDP => true,
            fpn_proto::flow::protocol::ICMPV6 => flow.src_port != 0,
            _ => false,
        };
    }
    match flow.protocol {
        6 | UDP => true,
        fpn_proto::flow::protocol::ICMP => flow.src_port != 0,
        _ => false,
    }
}

/// A UDP flow with [`PROBE_PORT`] (DPRP's port) at either end. On the wire
/// UDP to that port is a DPRP message or a probe at the receiving node
/// (`handle_native_packet`), so such a flow's packets towards that end
/// would be refused as control messages: it takes QUIC (design note 73).
/// The rule reads the flow's ports only, so both ends agree. The node
/// binds no socket to the port (the receive ring takes its datagrams), so
/// an application may hold it: a server on it, or a client given it as
/// an ephemeral port where the host's range includes it (Linux's default,
/// 32768-60999, does not; `bench/overlay.sh` widens it to 1024-65535).
pub(super) fn on_dprp_port(flow: &FlowId) -> bool {
    flow.protocol == UDP && (flow.src_port == PROBE_PORT || flow.dst_port == PROBE_PORT)
}
