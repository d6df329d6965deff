//! The topology file: hosts, links and switches, routes, NATs and commands.
//!
//! A topology is plain data, parsed from TOML (docs/LAB.md describes every
//! key) and checked by [`Topology::parse`] before anything touches the
//! kernel, so a typo fails with a message instead of half a lab. Parsing needs
//! no root and has no side effects.
//!
//! After parsing, a topology is *normalized*: every end has its `ifname`,
//! its `addr` is folded into `addrs`, links with other than two ends are
//! marked `switch`, and every service has a name.

mod nat;
mod validate;

pub use nat::{
    Filtering, Inbound, Mapping, Nat, OpenPort, PortAssignment, PortForward, PortMapping, Proto,
};

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Cidr, Error};

/// A whole lab: hosts (one network namespace each) and the links between them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Free text shown by `fpn-lab up` and `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Hosts by name. Each becomes a network namespace.
    #[serde(default)]
    pub hosts: BTreeMap<String, Host>,
    /// Links: veth pairs (two ends) and switches (a bridge, any number of ends).
    #[serde(default)]
    pub links: Vec<Link>,
}

/// One host: a network namespace with its own interfaces, routes and rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Route packets between interfaces (a router). Implied by `nat`.
    #[serde(default)]
    pub forward: bool,
    /// Keep IPv6 enabled. It is off by default (no router solicitations or
    /// MLD in captures) and on as soon as one of the host's addresses is IPv6.
    #[serde(default)]
    pub ipv6: bool,
    /// Extra sysctls, applied after the lab's defaults. Only `net.*` keys:
    /// those are per namespace, anything else would change the machine.
    #[serde(default)]
    pub sysctls: BTreeMap<String, SysctlValue>,
    /// Static routes. Default routes usually come from an end's `gateway`.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Source NAT on one interface: Linux masquerade, or one of the RFC 4787
    /// behaviours, with port forwards, hairpinning, a short UDP timeout and a
    /// port-mapping daemon as asked (see [`Nat`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<Nat>,
    /// Raw nftables ruleset loaded into the host after the NAT rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nft: Option<String>,
    /// Shell commands run in order once the network is up; each must succeed.
    #[serde(default)]
    pub run: Vec<String>,
    /// Background commands started after `run`, logged, stopped on teardown.
    #[serde(default)]
    pub services: Vec<Service>,
    /// The host's own /etc/resolv.conf (written to /etc/netns/NS/, which
    /// `ip netns exec` mounts over /etc/resolv.conf for the host's commands).
    /// None: the host uses the machine's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<String>,
}

/// A sysctl value as written in TOML: `1`, `true` or `"4096 87380 6291456"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SysctlValue {
    /// A boolean, written as 1 or 0.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// Anything else, written as given.
    Text(String),
}

impl fmt::Display for SysctlValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SysctlValue::Bool(b) => write!(f, "{}", u8::from(*b)),
            SysctlValue::Int(i) => write!(f, "{i}"),
            SysctlValue::Text(s) => f.write_str(s),
        }
    }
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `"default"` or a prefix such as `"10.2.0.0/24"`.
    pub to: RouteTarget,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    /// Out through this link (its interface on this host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// Where a route leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RouteTarget {
    /// The default route (of the `via` address's family; IPv4 without `via`).
    Default,
    /// A prefix.
    Net(Cidr),
}

impl TryFrom<String> for RouteTarget {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        if s == "default" {
            Ok(RouteTarget::Default)
        } else {
            s.parse().map(RouteTarget::Net)
        }
    }
}

impl From<RouteTarget> for String {
    fn from(t: RouteTarget) -> String {
        t.to_string()
    }
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteTarget::Default => f.write_str("default"),
            RouteTarget::Net(c) => c.fmt(f),
        }
    }
}

/// A background command on a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "ServiceRepr")]
pub struct Service {
    /// Name for `Lab::service` and the log file; defaults to the program name.
    pub name: String,
    /// Shell command (run with `sh -c`).
    pub cmd: String,
    /// Wait until the log contains this text before going on.
    pub wait_for: Option<String>,
    /// How long to wait for `wait_for`, in seconds (default 10).
    pub wait_secs: Option<f64>,
}

/// A service is either a bare command string or a table.
#[derive(Deserialize)]
#[serde(untagged)]
enum ServiceRepr {
    Cmd(String),
    Full {
        #[serde(default)]
        name: Option<String>,
        cmd: String,
        #[serde(default)]
        wait_for: Option<String>,
        #[serde(default)]
        wait_secs: Option<f64>,
    },
}

impl From<ServiceRepr> for Service {
    fn from(r: ServiceRepr) -> Self {
        match r {
            ServiceRepr::Cmd(cmd) => Service {
                name: String::new(),
                cmd,
                wait_for: None,
                wait_secs: None,
            },
            ServiceRepr::Full {
                name,
                cmd,
                wait_for,
                wait_secs,
            } => Service {
                name: name.unwrap_or_default(),
                cmd,
                wait_for,
                wait_secs,
            },
        }
    }
}

/// A link: a veth pair between two hosts, or a switch (bridge) joining any
/// number of hosts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Name; also the default interface name on every end (so at most 15
    /// characters).
    pub name: String,
    /// Make this a switch even with two ends (needed to attach and detach
    /// hosts at runtime). Links with other than two ends are always switches.
    #[serde(default)]
    pub switch: bool,
    /// MTU of every interface on the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// One-way delay added on each end's egress, e.g. `"10ms"` (tc netem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Delay variation, e.g. `"2ms"` (needs `delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    /// Packet loss on each end's egress, e.g. `"1%"` (tc netem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    /// Rate limit on each end's egress, e.g. `"100mbit"` (tc tbf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// The hosts on this link and their addresses.
    pub ends: Vec<End>,
}

/// One host's end of a link.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    /// The host.
    pub host: String,
    /// One address with prefix, e.g. `"198.18.0.1/24"` (folded into `addrs`).
    #[serde(default, skip_serializing)]
    pub addr: Option<Cidr>,
    /// Addresses with prefix.
    #[serde(default)]
    pub addrs: Vec<Cidr>,
    /// Interface name on the host (default: the link name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// Default route via this address while this end is attached. Moving a
    /// host between switches moves its default route with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Attached when the lab comes up (switch ends only); a detached end is
    /// one the host can later roam to.
    #[serde(default = "yes")]
    pub attached: bool,
}

fn yes() -> bool {
    true
}

impl End {
    /// The interface name on the host (set for every end after parsing).
    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or_default()
    }
}

impl Link {
    /// True for a bridge segment, false for a veth pair.
    pub fn is_switch(&self) -> bool {
        self.switch
    }

    /// The end of `host`, if it is on this link.
    pub fn end(&self, host: &str) -> Option<&End> {
        self.ends.iter().find(|e| e.host == host)
    }

    /// True when the link asks for delay, jitter, loss or a rate limit.
    pub fn is_shaped(&self) -> bool {
        self.delay.is_some() || self.loss.is_some() || self.rate.is_some()
    }
}

impl Topology {
    /// Parses, normalizes and checks a topology given as TOML text. `origin`
    /// names the text in error messages (a path, or `<inline>`).
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        let mut topo: Topology = toml::from_str(text).map_err(|e| Error::Parse {
            path: origin.to_string(),
            source: Box::new(e),
        })?;
        topo.normalize();
        validate::check(&topo)?;
        Ok(topo)
    }

    /// Checks a topology changed after parsing (e.g. a NAT changed at
    /// runtime) by the same rules as [`Topology::parse`].
    pub(crate) fn check(&self) -> Result<(), Error> {
        validate::check(self)
    }

    /// Reads and parses a topology file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Topology::parse(&text, &path.display().to_string())
    }

    /// The link called `name`.
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The end of `host` on link `link`.
    pub fn end(&self, host: &str, link: &str) -> Option<&End> {
        self.link(link)?.end(host)
    }

    /// Every (link, end) of `host`, in file order.
    pub fn ends_of<'a>(&'a self, host: &'a str) -> impl Iterator<Item = (&'a Link, &'a End)> + 'a {
        self.links
            .iter()
            .filter_map(move |l| l.end(host).map(|e| (l, e)))
    }

    /// True when `host` has IPv6 enabled (asked for, or an IPv6 address).
    pub fn host_has_ipv6(&self, host: &str) -> bool {
        self.hosts.get(host).is_some_and(|h| h.ipv6)
            || self
                .ends_of(host)
                .any(|(_, e)| e.addrs.iter().any(|a| a.addr().is_ipv6()))
    }

    /// Fills defaults so later code never has to.
    fn normalize(&mut self) {
        for link in &mut self.links {
            if link.ends.len() != 2 {
                link.switch = true;
            }
            for end in &mut link.ends {
                if let Some(a) = end.addr.take() {
                    end.addrs.insert(0, a);
                }
                if end.ifname.is_none() {
                    end.ifname = Some(link.name.clone());
                }
            }
        }
        for host in self.hosts.values_mut() {
            if host.nat.is_some() {
                host.forward = true;
            }
            let mut used: Vec<String> = Vec::new();
            for svc in &mut host.services {
                if svc.name.is_empty() {
                    let prog = svc.cmd.split_whitespace().next().unwrap_or("service");
                    let base = prog.rsplit('/').next().unwrap_or(prog).to_string();
                    let mut name = base.clone();
                    let mut n = 2;
                    while used.contains(&name) {
                        name = format!("{base}-{n}");
                        n += 1;
                    }
                    svc.name = name;
                }
                used.push(svc.name.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests;
