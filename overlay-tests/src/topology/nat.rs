//! A host's `nat` table: which NAT a router is, in RFC 4787's terms.
//!
//! Without the RFC 4787 keys a NAT is what it always was in the lab: Linux
//! masquerade (port-preserving, or `random_ports`) with conntrack's
//! filtering. `mapping`, `ports`, `filtering`, `hairpin` and `udp_timeout`
//! choose a behaviour each; `port_mapping` adds a NAT-PMP/PCP/UPnP IGD daemon
//! (miniupnpd). The nftables that implement them are in `lab/nat.rs`;
//! docs/LAB.md says exactly what each one does and where it differs from a
//! textbook NAT.

use std::fmt;
use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};

/// Source NAT on one interface, as a home or carrier router does it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nat {
    /// The outside link (its interface on this host gets the masquerade rule).
    pub out: String,
    /// Port forwards from the outside address to inside hosts.
    #[serde(default)]
    pub forwards: Vec<PortForward>,
    /// Ports of the router itself open to new connections on `out` (a
    /// service on the router, such as fpn-node's carrier on a gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open: Vec<OpenPort>,
    /// What happens to new connections arriving on `out` that no forward
    /// or binding lets in: `"drop"` (default, like a home router) or
    /// `"accept"`.
    #[serde(default)]
    pub inbound: Inbound,
    /// Randomize source ports (`masquerade fully-random`): a NAT that does
    /// not preserve ports, harder to traverse. The same as `ports = "random"`.
    #[serde(default)]
    pub random_ports: bool,
    /// How outside ports are chosen per inside endpoint (RFC 4787 section
    /// 4.1). Default: Linux masquerade as it is.
    #[serde(default)]
    pub mapping: Mapping,
    /// Whether a new mapping keeps the inside port when it can (RFC 4787
    /// section 4.2.1). Default: preserving, or random with `random_ports`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortAssignment>,
    /// Who may send to an open mapping (RFC 4787 section 5). Default:
    /// address-and-port-dependent (only the remote the mapping was made for,
    /// which is conntrack's own behaviour).
    #[serde(default)]
    pub filtering: Filtering,
    /// Inside hosts reach each other through the router's outside address
    /// and their mappings (RFC 4787 section 6). Default: off.
    #[serde(default)]
    pub hairpin: bool,
    /// Lifetime in seconds of an idle UDP mapping (conntrack entries and the
    /// NAT's own bindings), e.g. 10 to test keepalives. Default: conntrack's
    /// (30 s unanswered, 120 s once answered) and 120 s for bindings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_timeout: Option<u32>,
    /// Run a port-mapping daemon (miniupnpd: NAT-PMP, PCP and UPnP IGD) on
    /// the router's inside links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mapping: Option<PortMapping>,
}

impl Nat {
    /// The port assignment in force: `ports`, else `random_ports`.
    pub fn port_assignment(&self) -> PortAssignment {
        self.ports.unwrap_or(if self.random_ports {
            PortAssignment::Random
        } else {
            PortAssignment::Preserving
        })
    }

    /// True when the router keeps its own binding table (nftables maps)
    /// because a key asks for more than Linux masquerade does by itself.
    pub fn keeps_bindings(&self) -> bool {
        self.mapping != Mapping::Linux
            || self.filtering != Filtering::AddressAndPortDependent
            || self.hairpin
    }
}

/// RFC 4787 mapping behaviour: when does an inside endpoint get the same
/// outside port?
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// Linux masquerade as it is: each flow (5-tuple) is mapped on its own,
    /// keeping the inside port when no other flow to the same remote uses
    /// it. Looks endpoint-independent until two inside hosts use the same
    /// port; then the second one's flows to a shared remote get other ports.
    #[default]
    Linux,
    /// One outside port per inside address and port, whatever the remote
    /// ("cone" NATs). A port once given is not given to another endpoint
    /// while its binding lives.
    EndpointIndependent,
    /// One outside port per inside endpoint and remote address.
    AddressDependent,
    /// One outside port per inside endpoint and remote address and port
    /// ("symmetric" NATs).
    AddressAndPortDependent,
}

/// RFC 4787 port assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortAssignment {
    /// An endpoint's first mapping keeps its inside port if no binding has
    /// that port; later mappings of the same endpoint (address- or
    /// port-dependent NATs) get random ports.
    Preserving,
    /// Every new mapping gets a random port (`fully-random`).
    Random,
}

/// RFC 4787 filtering behaviour: who may send to an open mapping?
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Anyone ("full cone").
    EndpointIndependent,
    /// Any port of an address the inside endpoint has sent to through this
    /// mapping ("restricted cone").
    AddressDependent,
    /// Only the address and port the mapping was made for (conntrack's own
    /// behaviour; "port-restricted cone").
    #[default]
    AddressAndPortDependent,
}

/// A port-mapping daemon on the router (Debian's miniupnpd, nftables build).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// Answer NAT-PMP and PCP on UDP port 5351.
    #[serde(default = "yes")]
    pub natpmp: bool,
    /// Answer UPnP IGD (SSDP discovery and SOAP on `http_port`).
    #[serde(default = "yes")]
    pub upnp: bool,
    /// The TCP port of the UPnP IGD's description and control URLs.
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    /// The longest PCP lease granted, seconds (miniupnpd's `max_lifetime`;
    /// its floor `min_lifetime` becomes half of it, at most 120 s; at
    /// least 2). Unset: miniupnpd's
    /// defaults (120 s to 24 h). A short one makes clients renew within a
    /// test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<u32>,
}

fn yes() -> bool {
    true
}

fn default_http_port() -> u16 {
    5000
}

/// Policy for unsolicited inbound traffic on a NAT's outside interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Inbound {
    /// Only replies, port-forwarded connections and what the filtering
    /// behaviour lets through get in.
    #[default]
    Drop,
    /// Everything routable gets in (NAT without a firewall).
    Accept,
}

/// A port forward (DNAT) on a NAT's outside address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    /// `"tcp"` or `"udp"`.
    pub proto: Proto,
    /// The outside port.
    pub port: u16,
    /// The inside address and port.
    pub to: SocketAddrV4,
}

/// A port of the router open from outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenPort {
    /// `"tcp"` or `"udp"`.
    pub proto: Proto,
    /// The port.
    pub port: u16,
}

/// A transport protocol for port forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Longest `udp_timeout` the lab accepts, in seconds.
pub(crate) const MAX_UDP_TIMEOUT: u32 = 3600;

/// True for the IPv4 ranges miniupnpd 2.3 calls reserved (its
/// `addr_is_reserved`, getifaddr.c): it refuses to map ports when the
/// outside address is one of them ("Port forwarding is impossible"), and the
/// lab's usual 198.18.0.0/15 is one.
pub fn miniupnpd_refuses(ip: std::net::Ipv4Addr) -> bool {
    const RESERVED: &[([u8; 4], u8)] = &[
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([100, 64, 0, 0], 10),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 0, 0, 0], 24),
        ([192, 0, 2, 0], 24),
        ([192, 31, 196, 0], 24),
        ([192, 52, 193, 0], 24),
        ([192, 88, 99, 0], 24),
        ([192, 168, 0, 0], 16),
        ([192, 175, 48, 0], 24),
        ([198, 18, 0, 0], 15),
        ([198, 51, 100, 0], 24),
        ([203, 0, 113, 0], 24),
        ([224, 0, 0, 0], 4),
        ([240, 0, 0, 0], 4),
    ];
    let a = u32::from(ip);
    RESERVED.iter().any(|(net, len)| {
        let mask = u32::MAX << (32 - u32::from(*len));
        a & mask == u32::from_be_bytes(*net) & mask
    })
}
