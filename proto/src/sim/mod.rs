//! A simulated network of GEs that drives the real DPRP machines.
//!
//! Nodes form a tree: GEs and terminals sit on the public underlay or behind
//! a gateway GE (GEN/GEA). A datagram crosses every gateway between sender
//! and receiver, one link hop each, with the [`LinkConfig`]'s latency,
//! jitter, loss, duplication and reordering. As on a real path, gateways
//! intercept DDEs in transit (the DPRP port); every other DPRP message is
//! addressed hop by hop and merely forwarded.
//!
//! Time is virtual: [`Sim::drive`] jumps to the next datagram arrival or
//! endpoint timer until nothing is left, never reading a clock. Every GE
//! runs in its own tracing span (`ge{name=..}`). Everything the GEs emit is
//! recorded per node ([`Sim::events`], [`Sim::errors`]) for tests to assert.
//!
//! ```
//! use fpn_proto::ge::{GeKind, Mode};
//! use fpn_proto::sim::{GeSpec, LinkConfig, Sim};
//! let mut sim = Sim::new(1, LinkConfig::default());
//! let a = sim.add_ge(GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1"));
//! let b = sim.add_ge(GeSpec::host(2, "b", Mode::Open, &[1], "198.18.0.2"));
//! sim.send_udp(a, "198.18.0.2".parse().unwrap(), 4000, 53, b"hello");
//! sim.drive();
//! assert!(sim.established(a).is_some() && sim.established(b).is_some());
//! ```

mod net;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use net::{Dice, node_by_addr, route};
pub use net::{LinkConfig, NodeId};

use crate::Error;
use crate::credential::Credential;
use crate::dprp::{
    self, Config, DPRP_PORT, Endpoint, Entropy, Established, Event, FrontedHost, Prefix, Verdict,
    Vin,
};
use crate::flow::{FlowId, protocol};
use crate::ge::{GeId, GeInfo, GeKind, GroupId, Mode};
use crate::keys::{GroupKey, KeyVersion, NodeKey};

/// The wall-clock time the simulation starts at (unix seconds).
pub const START_UNIX: u64 = 1_800_000_000;
/// The most steps [`Sim::drive`] takes before giving up.
pub const MAX_STEPS: usize = 200_000;
/// The most virtual time [`Sim::drive`] runs.
pub const MAX_VIRTUAL_TIME: Duration = Duration::from_secs(600);

/// The node key the simulation gives GE `id` (deterministic, so tests can
/// play a GE that tries to sign or MAC in another's place).
pub fn node_key(id: u32) -> NodeKey {
    let mut seed = [0x5e; 32];
    seed[..4].copy_from_slice(&id.to_be_bytes());
    NodeKey::from_seed(&seed)
}

/// How to build one GE.
#[derive(Debug, Clone)]
pub struct GeSpec {
    /// GE id (also seeds its node key).
    pub id: u32,
    /// Name (one DNS label).
    pub name: String,
    /// GES, GEN or GEA.
    pub kind: GeKind,
    /// OP or CL.
    pub mode: Mode,
    /// Group numbers; the GE receives version 1 of each group's key.
    pub groups: Vec<u32>,
    /// Underlay address.
    pub addr: IpAddr,
    /// The gateway this GE sits behind, if any.
    pub behind: Option<NodeId>,
    /// Addresses it is the end GE for, besides its own (a GEN's terminals).
    /// A gateway's credential names them too, so they must be canonical
    /// network prefixes ([`Prefix::network`]).
    pub protects: Vec<Prefix>,
}

impl GeSpec {
    /// A GES on the public underlay.
    pub fn host(id: u32, name: &str, mode: Mode, groups: &[u32], addr: &str) -> Self {
        Self {
            id,
            name: name.into(),
            kind: GeKind::Ges,
            mode,
            groups: groups.to_vec(),
            addr: addr.parse().expect("a literal address"),
            behind: None,
            protects: Vec::new(),
        }
    }

    /// A gateway (GEN or GEA) protecting `subnet`.
    pub fn gateway(
        id: u32,
        name: &str,
        kind: GeKind,
        mode: Mode,
        groups: &[u32],
        addr: &str,
        subnet: Prefix,
    ) -> Self {
        Self {
            kind,
            protects: vec![subnet],
            ..Self::host(id, name, mode, groups, addr)
        }
    }

    /// Places the GE behind a gateway.
    pub fn behind(mut self, gateway: NodeId) -> Self {
        self.behind = Some(gateway);
        self
    }
}

enum Role {
    Ge(Box<Endpoint>),
    Terminal,
}

struct Node {
    name: String,
    gateway: bool,
    addr: IpAddr,
    behind: Option<NodeId>,
    role: Role,
    events: Vec<(Instant, Event)>,
    errors: Vec<(Instant, Error)>,
    verdicts: Vec<Verdict>,
}

struct InFlight {
    from: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
    path: Vec<NodeId>,
    hop: usize,
}

/// One datagram a GE sent, as it went onto the wire (after tampering).
#[derive(Clone)]
pub struct Sent {
    /// Virtual time of sending.
    pub at: Instant,
    /// The sending GE.
    pub from: NodeId,
    /// Underlay destination.
    pub dst: SocketAddr,
    /// The bytes.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sent")
            .field("from", &self.from)
            .field("dst", &self.dst)
            .field("type", &dprp::msg::peek(&self.payload).map(|(t, _)| t).ok())
            .field("len", &self.payload.len())
            .finish()
    }
}

/// A hook that may rewrite every datagram a GE sends (tests of corruption).
pub type Tamper = Box<dyn FnMut(NodeId, &mut Vec<u8>)>;

/// The most datagrams [`Sim::wire`] keeps.
pub const WIRE_LOG_LIMIT: usize = 100_000;

/// Datagram counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams the GEs sent.
    pub sent: u64,
    /// Hop deliveries (a datagram crossing three hops counts three).
    pub delivered: u64,
    /// Hop losses.
    pub lost: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Datagrams with no route, or that reached a terminal.
    pub undeliverable: u64,
}

/// The simulated network. See the [module docs](self).
pub struct Sim {
    now: Instant,
    start: Instant,
    link: LinkConfig,
    dice: Dice,
    ca: NodeKey,
    group_keys: BTreeMap<GroupId, GroupKey>,
    nodes: Vec<Node>,
    in_flight: BTreeMap<(Instant, u64), InFlight>,
    seq: u64,
    wire: Vec<Sent>,
    tamper: Option<Tamper>,
    /// NAT-f: each node's VINs, and the node its datagrams to a VIN go to
    /// (the node shell's job: what is addressed to a VIN goes to its gateway).
    vins: BTreeMap<NodeId, Vec<(Vin, NodeId)>>,
    /// Datagram counters.
    pub stats: NetStats,
}

impl Sim {
    /// An empty network; `seed` drives every random choice (keys, dice).
    pub fn new(seed: u64, link: LinkConfig) -> Self {
        let mut dice = Dice::new(seed);
        let ca = NodeKey::from_seed(&dice.bytes32());
        // The only clock read: an arbitrary origin for virtual time.
        let start = Instant::now();
        Self {
            now: start,
            start,
            link,
            dice,
            ca,
            group_keys: BTreeMap::new(),
            nodes: Vec::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            wire: Vec::new(),
            tamper: None,
            vins: BTreeMap::new(),
            stats: NetStats::default(),
        }
    }

    /// The CA's public key.
    pub fn ca_public(&self) -> [u8; 32] {
        self.ca.public()
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Every datagram the GEs sent so far (up to [`WIRE_LOG_LIMIT`]).
    pub fn wire(&self) -> &[Sent] {
        &self.wire
    }

    /// Lets `f` rewrite every datagram from now on, before it is logged and sent.
    pub fn set_tamper(&mut self, f: impl FnMut(NodeId, &mut Vec<u8>) + 'static) {
        self.tamper = Some(Box::new(f));
    }

    /// Changes the link model from now on.
    pub fn set_link(&mut self, link: LinkConfig) {
        self.link = link;
    }

    /// The key version 1 of `group` every member receives.
    pub fn group_key(&mut self, group: GroupId) -> GroupKey {
        let dice = &mut self.dice;
        self.group_keys
            .entry(group)
            .or_insert_with(|| GroupKey::from_bytes(dice.bytes32()))
            .clone()
    }

    /// Issues a credential with the simulation's CA (validity: a year around the start).
    pub fn issue(&self, info: GeInfo, node_key: &NodeKey) -> Credential {
        self.issue_with_prefixes(info, Vec::new(), node_key)
    }

    /// Issues a credential that also names `prefixes` (a gateway's LAN).
    pub fn issue_with_prefixes(
        &self,
        info: GeInfo,
        prefixes: Vec<Prefix>,
        node_key: &NodeKey,
    ) -> Credential {
        let year = 365 * 24 * 3600;
        Credential::issue_with_prefixes(
            &self.ca,
            u64::from(info.id.0),
            info,
            prefixes,
            node_key.public(),
            START_UNIX - year,
            START_UNIX + year,
        )
        .expect("valid GE info and prefixes")
    }

    /// Issues a credential with its own serial and validity (unix
    /// seconds; the simulation's clock starts at [`START_UNIX`]), as a GMS
    /// with a short credential lifetime would, for expiry and renewal tests.
    pub fn issue_valid(
        &self,
        serial: u64,
        info: GeInfo,
        node_key: &NodeKey,
        not_before: u64,
        not_after: u64,
    ) -> Credential {
        Credential::issue(
            &self.ca,
            serial,
            info,
            node_key.public(),
            not_before,
            not_after,
        )
        .expect("valid GE info and validity")
    }

    /// The GE info [`Sim::add_ge`] gives `spec`. Its overlay address is its
    /// underlay address when that is IPv4 (flows in the simulation run
    /// between underlay addresses, so that is the address the GE speaks for),
    /// else `100.64.x.y` from its id.
    pub fn info_of(spec: &GeSpec) -> GeInfo {
        GeInfo {
            id: GeId(spec.id),
            name: spec.name.clone(),
            kind: spec.kind,
            mode: spec.mode,
            groups: spec.groups.iter().map(|g| GroupId(*g)).collect(),
            overlay: match spec.addr {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => Ipv4Addr::new(100, 64, (spec.id >> 8) as u8, spec.id as u8),
            },
        }
    }

    /// Adds a GE with its endpoint (default timing and limits).
    pub fn add_ge(&mut self, spec: GeSpec) -> NodeId {
        self.add_ge_with(spec, |_| {})
    }

    /// Adds a GE, letting `tune` adjust its configuration first.
    pub fn add_ge_with(&mut self, spec: GeSpec, tune: impl FnOnce(&mut Config)) -> NodeId {
        let node_key = node_key(spec.id);
        // A gateway's credential names the subnets it protects, as the GMS
        // issues it; a GES speaks for its own address only.
        let prefixes = if spec.kind.is_gateway() {
            spec.protects.clone()
        } else {
            Vec::new()
        };
        let credential = self.issue_with_prefixes(Self::info_of(&spec), prefixes, &node_key);
        let mut protected = vec![Prefix::host(spec.addr)];
        protected.extend(spec.protects.iter().copied());
        let mut cfg = Config::new(node_key, credential, self.ca.public(), protected);
        tune(&mut cfg);
        let seed = self.dice.bytes32();
        let mut ep = Endpoint::new(cfg, Entropy::Seeded(seed), START_UNIX, self.now)
            .expect("consistent config");
        for g in &spec.groups {
            let key = self.group_key(GroupId(*g));
            ep.set_group_key(GroupId(*g), KeyVersion(1), key);
        }
        let gateway = spec.kind.is_gateway();
        self.push(
            spec.name,
            spec.addr,
            spec.behind,
            gateway,
            Role::Ge(Box::new(ep)),
        )
    }

    /// NAT-f: gives GE `node` a VIN (added to its others) whose DPRP
    /// messages the network delivers to `via`, normally the GE
    /// `vin.gateway` names (a test may route them to another, to play a
    /// stranger answering).
    pub fn add_vin(&mut self, node: NodeId, vin: Vin, via: NodeId) {
        let list = self.vins.entry(node).or_default();
        list.retain(|(v, _)| v.vin != vin.vin);
        list.push((vin, via));
        let all = list.iter().map(|(v, _)| *v).collect();
        self.endpoint(node).set_vins(all);
    }

    /// NAT-f: the hosts gateway `node` fronts (replaces its table).
    pub fn set_fronted_hosts(&mut self, node: NodeId, hosts: Vec<FrontedHost>) {
        self.endpoint(node).set_fronted_hosts(hosts);
    }

    /// Adds a plain host (it runs nothing of ours) behind a gateway.
    pub fn add_terminal(&mut self, name: &str, addr: &str, behind: NodeId) -> NodeId {
        let addr = addr.parse().expect("a literal address");
        self.push(name.into(), addr, Some(behind), false, Role::Terminal)
    }

    fn push(
        &mut self,
        name: String,
        addr: IpAddr,
        behind: Option<NodeId>,
        gateway: bool,
        role: Role,
    ) -> NodeId {
        assert!(
            self.nodes.iter().all(|n| n.addr != addr),
            "address {addr} used twice"
        );
        self.nodes.push(Node {
            name,
            gateway,
            addr,
            behind,
            role,
            events: Vec::new(),
            errors: Vec::new(),
            verdicts: Vec::new(),
        });
        NodeId(self.nodes.len() - 1)
    }

    /// The endpoint of a GE node.
    pub fn endpoint(&mut self, node: NodeId) -> &mut Endpoint {
        let n = &mut self.nodes[node.0];
        match &mut n.role {
            Role::Ge(ep) => ep,
            Role::Terminal => panic!("{} is a terminal", n.name),
        }
    }

    /// A node's underlay address.
    pub fn addr(&self, node: NodeId) -> IpAddr {
        self.nodes[node.0].addr
    }

    /// The GE that intercepts `node`'s traffic: itself, or its gateway.
    pub fn ge_of(&self, node: NodeId) -> NodeId {
        match self.nodes[node.0].role {
            Role::Ge(_) => node,
            Role::Terminal => self.nodes[node.0]
                .behind
                .expect("terminals sit behind a gateway"),
        }
    }

    /// The first packet of a UDP flow from `from` (a GES or a terminal) to
    /// `dst`: handed to the intercepting GE, which holds it and negotiates.
    pub fn send_udp(
        &mut self,
        from: NodeId,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> FlowId {
        let flow = FlowId {
            src: self.addr(from),
            dst,
            protocol: protocol::UDP,
            src_port: sport,
            dst_port: dport,
        };
        self.send_packet(from, flow, payload.to_vec());
        flow
    }

    /// Hands a packet of `flow` to the GE intercepting `from`'s traffic.
    pub fn send_packet(&mut self, from: NodeId, flow: FlowId, packet: Vec<u8>) {
        let ge = self.ge_of(from);
        let now = self.now;
        let span = tracing::info_span!("ge", name = %self.nodes[ge.0].name);
        let r = span.in_scope(|| self.endpoint(ge).handle_packet(flow, packet, now));
        let node = &mut self.nodes[ge.0];
        match r {
            Ok(v) => node.verdicts.push(v),
            Err(e) => node.errors.push((now, e)),
        }
        self.flush(ge);
    }

    /// Runs until no datagram is in flight and no timer is armed.
    ///
    /// Panics after [`MAX_STEPS`] steps or [`MAX_VIRTUAL_TIME`]: a
    /// negotiation that never settles is a bug the test must see.
    pub fn drive(&mut self) {
        let limit = self.now + MAX_VIRTUAL_TIME;
        assert!(
            self.run_until(limit),
            "the network did not settle within {MAX_VIRTUAL_TIME:?}"
        );
    }

    /// Runs for `d` of virtual time; afterwards the clock stands at the end
    /// of that span. Returns true when nothing is left to do.
    pub fn run_for(&mut self, d: Duration) -> bool {
        let limit = self.now + d;
        let idle = self.run_until(limit);
        self.now = self.now.max(limit);
        idle
    }

    fn run_until(&mut self, limit: Instant) -> bool {
        // Pick up what tests queued by calling an endpoint directly.
        for i in 0..self.nodes.len() {
            self.flush(NodeId(i));
        }
        for _ in 0..MAX_STEPS {
            let next_packet = self.in_flight.keys().next().map(|(t, _)| *t);
            let next_timer = (0..self.nodes.len())
                .filter_map(|i| match &self.nodes[i].role {
                    Role::Ge(ep) => ep.poll_timeout().map(|(t, _)| t),
                    Role::Terminal => None,
                })
                .min();
            let Some(next) = next_packet.into_iter().chain(next_timer).min() else {
                return true;
            };
            if next > limit {
                return false;
            }
            self.now = self.now.max(next);
            if next_packet == Some(next) {
                let key = *self.in_flight.keys().next().expect("checked");
                let d = self.in_flight.remove(&key).expect("checked");
                self.arrive(d);
            } else {
                self.fire_timers();
            }
        }
        panic!("the network did not settle within {MAX_STEPS} steps");
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            let span = tracing::info_span!("ge", name = %self.nodes[i].name);
            if let Role::Ge(ep) = &mut self.nodes[i].role
                && ep.poll_timeout().is_some_and(|(t, _)| t <= now)
            {
                span.in_scope(|| ep.handle_timeout(now));
                self.flush(NodeId(i));
            }
        }
    }

    fn arrive(&mut self, mut d: InFlight) {
        self.stats.delivered += 1;
        let at = d.path[d.hop];
        let last = d.hop + 1 == d.path.len();
        let node = &self.nodes[at.0];
        let intercept = match &node.role {
            Role::Ge(_) => {
                last || (node.gateway
                    && d.dst.port() == DPRP_PORT
                    && dprp::msg::peek(&d.payload).is_ok_and(|(t, _)| t.intercepted_in_transit()))
            }
            Role::Terminal => false,
        };
        if intercept {
            let now = self.now;
            let span = tracing::info_span!("ge", name = %node.name);
            let Role::Ge(ep) = &mut self.nodes[at.0].role else {
                unreachable!()
            };
            // Addressed here, or intercepted on the way (a DDE or FOP in transit).
            let r = span.in_scope(|| {
                if last {
                    ep.handle_datagram(d.from, &d.payload, now)
                } else {
                    ep.handle_transit_datagram(d.from, d.dst, &d.payload, now)
                }
            });
            if let Err(e) = r {
                tracing::debug!(node = %self.nodes[at.0].name, error = %e, "datagram refused");
                self.nodes[at.0].errors.push((now, e));
            }
            self.flush(at);
        } else if last {
            self.stats.undeliverable += 1;
        } else {
            d.hop += 1;
            self.schedule(d);
        }
    }

    fn schedule(&mut self, d: InFlight) {
        let delays = self.dice.hop(&self.link);
        if delays.is_empty() {
            self.stats.lost += 1;
        }
        self.stats.duplicated += delays.len().saturating_sub(1) as u64;
        for delay in delays {
            self.seq += 1;
            let copy = InFlight {
                from: d.from,
                dst: d.dst,
                payload: d.payload.clone(),
                path: d.path.clone(),
                hop: d.hop,
            };
            self.in_flight.insert((self.now + delay, self.seq), copy);
        }
    }

    fn flush(&mut self, node: NodeId) {
        let now = self.now;
        loop {
            let Role::Ge(ep) = &mut self.nodes[node.0].role else {
                return;
            };
            let Some(mut t) = ep.poll_transmit() else {
                break;
            };
            self.stats.sent += 1;
            if let Some(f) = &mut self.tamper {
                f(node, &mut t.payload);
            }
            if self.wire.len() < WIRE_LOG_LIMIT {
                self.wire.push(Sent {
                    at: now,
                    from: node,
                    dst: t.dst,
                    payload: t.payload.clone(),
                });
            }
            let via_vin = self.vins.get(&node).and_then(|l| {
                l.iter()
                    .find(|(v, _)| v.vin == t.dst.ip())
                    .map(|(_, via)| *via)
            });
            // The shell sends what is addressed to a VIN to the VIN's gateway.
            if let Some(via) = via_vin {
                t.dst = SocketAddr::new(self.nodes[via.0].addr, t.dst.port());
            }
            let to =
                via_vin.or_else(|| node_by_addr(self.nodes.iter().map(|n| &n.addr), t.dst.ip()));
            let Some(to) = to.filter(|to| *to != node) else {
                self.stats.undeliverable += 1;
                continue;
            };
            let parents: Vec<Option<NodeId>> = self.nodes.iter().map(|n| n.behind).collect();
            let path = route(|n| parents[n.0], node, to);
            let from = SocketAddr::new(self.nodes[node.0].addr, DPRP_PORT);
            self.schedule(InFlight {
                from,
                dst: t.dst,
                payload: t.payload,
                path,
                hop: 0,
            });
        }
        let Role::Ge(ep) = &mut self.nodes[node.0].role else {
            return;
        };
        let mut evs = Vec::new();
        while let Some(e) = ep.poll_event() {
            evs.push((now, e));
        }
        self.nodes[node.0].events.extend(evs);
    }

    /// Everything a GE reported, with the virtual time it was reported at.
    pub fn events(&self, node: NodeId) -> &[(Instant, Event)] {
        &self.nodes[node.0].events
    }

    /// Every error a GE's endpoint returned (refused datagrams and packets).
    pub fn errors(&self, node: NodeId) -> &[(Instant, Error)] {
        &self.nodes[node.0].errors
    }

    /// What `handle_packet` answered for each packet sent through a GE.
    pub fn verdicts(&self, node: NodeId) -> &[Verdict] {
        &self.nodes[node.0].verdicts
    }

    /// The last entry a GE installed, if any.
    pub fn established(&self, node: NodeId) -> Option<&Established> {
        self.events(node).iter().rev().find_map(|(_, e)| match e {
            Event::Established(e) => Some(e),
            _ => None,
        })
    }

    /// How many entries a GE installed.
    pub fn established_count(&self, node: NodeId) -> usize {
        self.events(node)
            .iter()
            .filter(|(_, e)| matches!(e, Event::Established(_)))
            .count()
    }

    /// Why each of a GE's failed negotiations failed, in order.
    pub fn failures(&self, node: NodeId) -> Vec<dprp::FailReason> {
        self.events(node)
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Failed { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }
}
