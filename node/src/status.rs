//! What `fpn-node status --json` and `fpn-node ping --json` print (the
//! shapes are part of the CLI contract; scripts read them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The daemon's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// This node's GE name.
    pub name: String,
    /// Its GE id.
    pub ge: u32,
    /// Its overlay address.
    pub overlay: String,
    /// Its IPv6 overlay address (in the network's ULA /48); absent when the
    /// host has no IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay6: Option<String>,
    /// The GMS session.
    pub gms: GmsStatus,
    /// This node's credential (and certificate) and its renewal.
    #[serde(default)]
    pub credential: CredentialStatus,
    /// Groups with their valid key versions (newest first).
    pub groups: Vec<GroupStatus>,
    /// Peers known to the engine (directory, flows, carrier connections).
    pub peers: Vec<PeerStatus>,
    /// Flows in the PIT.
    pub flows: Vec<FlowStatus>,
    /// Counters of the engine, DPRP, DNS stub.
    pub counters: BTreeMap<String, u64>,
    /// The offloads the kernel granted on the TUN ("csum,tso4,...", or
    /// "none"); the `tun_*` counters say what they did.
    #[serde(default)]
    pub tun_offloads: String,
    /// The configuration in force and its SIGHUP reloads.
    #[serde(default)]
    pub config: ConfigStatus,
    /// Port mapping at the default gateway: the protocol that mapped
    /// (`pcp`, `nat-pmp`, `upnp-igd`) and the external address, as in
    /// `netcheck`.
    #[serde(default)]
    pub port_mapping: crate::portmap::PortMapStatus,
    /// Hosts behind gateways: behind other GEs with the VIN the DNS stub
    /// answers, and the ones this node answers for as their gateway.
    #[serde(default)]
    pub hosts: Vec<HostStatus>,
    /// This node's recent moves (address or route changes) with the gap
    /// each caused, oldest first.
    #[serde(default)]
    pub moves: Vec<MoveStatus>,
}

/// A host behind a gateway, as `status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostStatus {
    /// Its name in the zone.
    pub name: String,
    /// Its LAN address.
    pub lan: String,
    /// The VIN this node's DNS stub answers for it (hosts behind other GEs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vin: Option<String>,
    /// The VIN's IPv6 address (design note 60; the DNS stub answers AAAA
    /// with it where the TUN has IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vin6: Option<String>,
    /// The gateway GE's id.
    pub gateway: u32,
    /// True when this node is its gateway.
    pub fronted: bool,
}

/// A NAT-f flow's mapping, as `status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NatfFlowStatus {
    /// The host's LAN address.
    pub lan: String,
    /// The port reserved on the gateway's public address.
    pub port: u16,
    /// `remote` (this node reaches the host) or `gateway` (this node answers for it).
    pub role: String,
    /// True when the application sent the flow to the VIN's IPv6 address:
    /// this node makes it the IPv4 flow shown at its TUN (design note 60).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ipv6: bool,
}

/// The configuration in force (the keys a SIGHUP can change) and how the
/// reloads went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The file given to `up --config` (empty: the defaults).
    pub path: String,
    /// The `log` key in force (`RUST_LOG`, when set, overrides it).
    pub log: String,
    /// True when `RUST_LOG` was set at start-up: it wins over `log`.
    pub log_from_env: bool,
    /// Reloads applied.
    pub reloads: u64,
    /// Why the last reload was refused (the file in force stays), until one succeeds.
    pub reload_error: Option<String>,
    /// Keys changed in the file that wait for a restart.
    pub restart_pending: Vec<String>,
}

/// The GMS session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GmsStatus {
    /// True while a session is up.
    pub connected: bool,
    /// This node's reflexive address: where the GMS sees the carrier's
    /// socket (the public side of a NAT), learnt at session start.
    #[serde(default)]
    pub reflexive: Option<String>,
    /// Connect-now requests this node sent (it dialed a peer it had no
    /// connection with and asked the GMS to make the peer dial back).
    #[serde(default)]
    pub punches_asked: u64,
    /// Connect-now pushes this node received (and dialed the peer at once).
    #[serde(default)]
    pub punches_received: u64,
}

/// What `fpn-node netcheck` reports: the node's candidates and what can be
/// said about its NAT from the GMS's one address.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Netcheck {
    /// True while a GMS session is up (else only cached facts are shown).
    pub gms_connected: bool,
    /// The carrier's local UDP port.
    pub carrier_port: u16,
    /// Local candidates: the addresses this node reports to the GMS.
    pub local: Vec<String>,
    /// The reflexive address the GMS sees now (asked for this report).
    pub reflexive: Option<String>,
    /// The reflexive address learnt at session start.
    pub reflexive_at_session_start: Option<String>,
    /// True when the reflexive address is none of the local ones (a NAT
    /// rewrites the carrier's packets).
    pub behind_nat: Option<bool>,
    /// True when the NAT kept the carrier's port.
    pub port_preserved: Option<bool>,
    /// True when the two observations agree (the mapping held).
    pub stable: Option<bool>,
    /// What the mapping's behaviour towards other destinations looks like,
    /// and how much of that was actually tested.
    pub mapping: String,
    /// Port mapping at the default gateway (PCP, NAT-PMP or UPnP IGD):
    /// whether it is available, the protocol, the external address and
    /// lease.
    #[serde(default)]
    pub port_mapping: crate::portmap::PortMapStatus,
}

/// This node's credential: short-lived, renewed over the GMS session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CredentialStatus {
    /// Its serial.
    pub serial: Option<u64>,
    /// End of its validity (and of the certificate's), unix seconds.
    pub not_after: Option<u64>,
    /// Seconds until then at the time of the answer (negative: expired;
    /// peers refuse new negotiations until a renewal).
    pub expires_in_secs: Option<i64>,
    /// When the last renewal arrived, unix seconds (`None`: none since the
    /// daemon started).
    pub last_renewal: Option<u64>,
    /// Renewals since the daemon started.
    pub renewals: u64,
    /// Why the GMS refused the last renewal, until one succeeds.
    pub renewal_refused: Option<String>,
}

/// A group this node is in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Group number.
    pub group: u32,
    /// Valid key versions, newest first.
    pub versions: Vec<u32>,
}

/// A peer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerStatus {
    /// GE name ("" when only its id is known).
    pub name: String,
    /// GE id.
    pub ge: u32,
    /// Overlay address, when known.
    pub overlay: Option<String>,
    /// The carrier its packets take now: "native", "quic" or "relay".
    pub carrier: String,
    /// The path machine's status with the reason: "native",
    /// "quic (native probe failed 3x)", "quic (forced)", ...
    #[serde(default)]
    pub path: String,
    /// The underlay address in use (carrier connection) or first known.
    pub addr: Option<String>,
    /// Round-trip time of the carrier connection.
    pub rtt_ms: Option<f64>,
    /// Which of the peer's candidates the QUIC connection uses: "direct
    /// LAN", "direct via NAT (reflexive)", "direct (public address)",
    /// "direct via NAT (peer-reflexive)"; "relay" while its QUIC frames go
    /// through the relay (no direct path is claimed then); empty without a
    /// connection.
    #[serde(default)]
    pub candidate: String,
    /// Connections set up because a connect-now arrived (hole punching).
    #[serde(default)]
    pub punched: u64,
    /// Background attempts at direct QUIC while the peer was relayed.
    #[serde(default)]
    pub direct_retries: u64,
}

/// A flow.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FlowStatus {
    /// "tcp", "udp", "icmp", "icmpv6" or the protocol number.
    pub proto: String,
    /// Source address (of the flow's first packet).
    pub src: String,
    /// Destination address.
    pub dst: String,
    /// Source port (ICMP: echo id).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// "encrypt", "plain", "refuse", or on a gateway between the ends
    /// "relay" (carrier "transit").
    pub action: String,
    /// The carrier ("native", "quic", "relay"; "transit": a flow between
    /// two other GEs negotiated through this gateway).
    pub carrier: String,
    /// The peer GE.
    pub peer: Option<u32>,
    /// Group key version of a protected flow.
    pub key_version: Option<u32>,
    /// Packets sent to the peer.
    pub packets_out: u64,
    /// Packets received from the peer.
    pub packets_in: u64,
    /// Bytes sent (plain lengths).
    pub bytes_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Why the flow is refused or dropped (the rule, who applied it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The NAT-f mapping of a flow to a host behind a gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub natf: Option<NatfFlowStatus>,
}

/// One move of this node (its addresses or routes changed).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MoveStatus {
    /// When, in milliseconds since the node started.
    pub at_ms: u64,
    /// What changed ("address 10.20.0.50 added (if 3)", ...).
    pub cause: String,
    /// From the change to the first packet received after it; `None` while
    /// none came yet.
    pub gap_ms: Option<f64>,
}

impl FlowStatus {
    /// A flow's five-tuple with everything else empty.
    pub fn of(f: &fpn_proto::flow::FlowId) -> Self {
        Self {
            proto: proto_name(f.protocol),
            src: f.src.to_string(),
            dst: f.dst.to_string(),
            sport: f.src_port,
            dport: f.dst_port,
            ..Self::default()
        }
    }
}

/// The answer to `ping`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PingReport {
    /// The name as resolved (FQDN), or the address given.
    pub name: String,
    /// The peer's overlay address.
    pub address: String,
    /// "encrypt", "plain", "refuse", or "unreachable".
    pub action: String,
    /// The carrier the flow used ("native", "quic" or "relay"), empty when none.
    /// ICMP flows always take QUIC (the nft set steers TCP and UDP only).
    pub carrier: String,
    /// The peer's path status ("native", "quic (native probe failed 3x)",
    /// ...), empty when the peer is unknown.
    #[serde(default)]
    pub path: String,
    /// Round-trip times of the answered echoes, milliseconds.
    pub rtt_ms: Vec<f64>,
    /// Echo requests sent.
    pub sent: u32,
}

impl PingReport {
    /// True when the peer answered at least once and policy allowed it.
    pub fn reachable(&self) -> bool {
        !self.rtt_ms.is_empty() && self.action != "refuse"
    }
}

/// The status name of a flow's protocol.
pub fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// The status name of an action.
pub fn action_name(a: fpn_proto::action::Action) -> &'static str {
    use fpn_proto::action::Action;
    match a {
        Action::Protect(_) => "encrypt",
        Action::Pass | Action::Relay => "plain",
        Action::Drop => "refuse",
    }
}

/// The counters of the flood defences (DPRP budgets, capacities, cookies,
/// the negative credential cache, the carrier's DDE sender check). The
/// human `status` folds them into one line ([`flood_line`]); `--json`
/// has each of them in `counters`.
pub const FLOOD_COUNTERS: &[&str] = &[
    "dde_wrong_peer",
    "dprp_busy_drops",
    "dprp_initiator_busy",
    "dprp_responder_busy",
    "dprp_rate_limited",
    "dprp_initiate_rate_limited",
    "dprp_credential_cache_refusals",
    "dprp_credential_verifications",
    "dprp_cookies_sent",
    "dprp_cookies_accepted",
    "dprp_cookie_refusals",
    "dprp_failed_drops",
    "dprp_not_owner",
    "dprp_credential_cache_hits",
    "dprp_credential_cache_misses",
    "dprp_pair_cache_hits",
    "dprp_pair_cache_misses",
    "dprp_responding",
    "dprp_initiated",
    "dprp_bad_credentials",
];

/// One line for the human `status`: what the flood defences refused and
/// the cookies they exchanged, e.g. `flood: refused 120 (rate 100, busy 0,
/// bad credential 20, wrong peer 0), cookies 5 sent 2 accepted`.
pub fn flood_line(counters: &BTreeMap<String, u64>) -> String {
    let c = |k: &str| counters.get(k).copied().unwrap_or(0);
    let rate = c("dprp_rate_limited") + c("dprp_initiate_rate_limited");
    let busy = c("dprp_busy_drops");
    let bad = c("dprp_credential_cache_refusals");
    let wrong = c("dde_wrong_peer") + c("dprp_not_owner");
    format!(
        "flood: refused {} (rate {rate}, busy {busy}, bad credential {bad}, wrong peer {wrong}), cookies {} sent {} accepted",
        rate + busy + bad + wrong,
        c("dprp_cookies_sent"),
        c("dprp_cookies_accepted"),
    )
}

/// The answer to `why`: which decision rule applies to a flow from this
/// node to an address, and why (nothing is sent to the peer).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WhyReport {
    /// The name asked about, as resolved (FQDN), or the address given.
    pub target: String,
    /// The destination address.
    pub address: String,
    /// "tcp", "udp" or "icmp".
    pub proto: String,
    /// The destination port (0: any; ICMP has none).
    pub port: u16,
    /// The rule: "self", "not-overlay", "unknown-peer", "peer-info-unknown",
    /// "revoked", "shared-group", "both-open", "closed-drops", "key-missing".
    pub rule: String,
    /// What this node does with such a flow: "local", "bypass", "encrypt",
    /// "plain" or "refuse".
    pub action: String,
    /// The rule's reasoning in a sentence.
    pub reason: String,
    /// The group the flow is protected with (rule "shared-group").
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group: Option<u32>,
    /// The GE that drops the flow (rule "closed-drops").
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dropped_by: Option<u32>,
    /// This node: its mode, certified groups and the groups it holds a key for.
    pub own: WhyGe,
    /// The peer owning the address, when the directory names one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub peer: Option<WhyGe>,
    /// The action of a live flow to that address (and port) in the PIT.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub current: Option<String>,
    /// Why a recent flow to that address (and port) was refused.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refused: Option<String>,
}

/// A GE as `why` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WhyGe {
    /// GE name ("" when unknown).
    pub name: String,
    /// GE id.
    pub ge: u32,
    /// "open" or "closed" ("" when its credential is not known yet).
    pub mode: String,
    /// Certified groups.
    pub groups: Vec<u32>,
    /// Groups it holds a key for (this node only: a peer's keys are only
    /// known once it answers a negotiation).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub keys: Option<Vec<u32>>,
}
