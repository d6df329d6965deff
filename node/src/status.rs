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
    /// The GMS session.
    pub gms: GmsStatus,
    /// Groups with their valid key versions (newest first).
    pub groups: Vec<GroupStatus>,
    /// Peers known to the engine (directory, flows, carrier connections).
    pub peers: Vec<PeerStatus>,
    /// Flows in the PIT.
    pub flows: Vec<FlowStatus>,
    /// Counters of the engine, DPRP, DNS stub.
    pub counters: BTreeMap<String, u64>,
}

/// The GMS session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GmsStatus {
    /// True while a session is up.
    pub connected: bool,
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
    /// The carrier its packets take now: "native" or "quic".
    pub carrier: String,
    /// The path machine's status with the reason: "native",
    /// "quic (native probe failed 3x)", "quic (forced)", ...
    #[serde(default)]
    pub path: String,
    /// The underlay address in use (carrier connection) or first known.
    pub addr: Option<String>,
    /// Round-trip time of the carrier connection.
    pub rtt_ms: Option<f64>,
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
    /// "encrypt", "plain" or "refuse".
    pub action: String,
    /// The carrier ("quic").
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
    /// The carrier the flow used ("native" or "quic"), empty when none.
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
