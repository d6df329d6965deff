//! The nftables (and miniupnpd configuration) of a lab NAT router.
//!
//! Linux has no endpoint-independent NAT of its own: masquerade maps each
//! conntrack flow on its own and only *tries* to keep the inside port. So
//! for the RFC 4787 behaviours the router keeps its own binding table in
//! nftables maps, filled from the packet path after NAT (the `record` chain
//! reads the port masquerade chose from the translated packet) and used by
//! the NAT chains for the next flow:
//!
//! - `bindings`: inside proto.address.port (plus remote address for an
//!   address-dependent mapping) -> outside address.port. A new flow of a
//!   known endpoint is `snat`ed to its binding instead of masqueraded.
//! - `inbound`: outside proto.port -> inside address.port, for filtering that
//!   lets others in (DNAT to the binding) and for hairpinning.
//! - `used`: outside ports in use, so a preserved port is never handed to a
//!   second endpoint (which would make the first one's mapping depend on the
//!   remote: masquerade picks another port on a clash).
//! - `contacted`: outside port.remote address pairs, for address-dependent
//!   filtering.
//!
//! Every element expires after the mapping timeout unless outbound packets
//! refresh it (RFC 4787 REQ-6: outbound refresh). Inbound packets refresh
//! only conntrack. Random ports come from `masquerade fully-random`, which
//! checks only conntrack's tuple uniqueness: a random port may (rarely)
//! equal another endpoint's binding.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::Lab;
use crate::build::NAT_TABLE;
use crate::topology::{Filtering, Inbound, Mapping, Nat, PortAssignment, PortMapping, Topology};
use crate::{Cidr, Error};

/// The nftables table miniupnpd adds its rules to (forward accepts, DNATs).
pub(crate) const UPNP_TABLE: &str = "fpnlab_upnp";

/// Binding lifetime of TCP mappings: RFC 5382 REQ-5's 2 h 4 min.
const TCP_BINDING_SECS: u32 = 7440;

/// Binding lifetime of UDP mappings without `udp_timeout`: RFC 4787 REQ-5's
/// two minutes (conntrack's own timeouts stay as they are).
const UDP_BINDING_SECS: u32 = 120;

impl Lab {
    /// Changes the NAT of router `host` while the lab runs, e.g. to let a
    /// direct path appear: its `fpnlab_nat` table is replaced in one nftables
    /// transaction. New flows get the new behaviour; flows conntrack already
    /// has keep their mappings until they expire, as on a real router whose
    /// settings change. `port_mapping` cannot change (miniupnpd keeps
    /// running as it started).
    pub fn set_nat(&self, host: &str, nat: Nat) -> Result<(), Error> {
        let (ns, mut topo) = {
            let st = self.lock();
            (st.netns(host)?.to_string(), st.topology.clone())
        };
        let Some(entry) = topo.hosts.get_mut(host) else {
            return Err(Error::UnknownHost(host.into()));
        };
        let Some(old) = entry.nat.replace(nat.clone()) else {
            return Err(Error::topo(format!(
                "host `{host}` has no nat to change (only routers with `nat` can change it)"
            )));
        };
        if old.port_mapping != nat.port_mapping {
            return Err(Error::topo(format!(
                "host `{host}`: nat.port_mapping cannot change while the lab runs"
            )));
        }
        topo.check()?;
        // Creating the table first makes the delete valid whatever exists.
        let rules = format!(
            "table ip {NAT_TABLE} {{ }}\ndelete table ip {NAT_TABLE}\n{}",
            ruleset_for(&topo, host, &nat)
        );
        self.tools.nft_load(&ns, &rules)?;
        self.lock().topology = topo;
        tracing::info!(%host, mapping = ?nat.mapping, filtering = ?nat.filtering, "nat changed");
        self.save()
    }

    /// The NAT of router `host` now (None: not a router with `nat`).
    pub fn nat(&self, host: &str) -> Result<Option<Nat>, Error> {
        let st = self.lock();
        st.netns(host)?;
        Ok(st.topology.hosts.get(host).and_then(|h| h.nat.clone()))
    }
}

/// The ruleset of router `host`'s `nat` in topology `topo`.
pub(crate) fn ruleset_for(topo: &Topology, host: &str, nat: &Nat) -> String {
    let end = topo.end(host, &nat.out);
    let out = end.map(|e| e.ifname()).unwrap_or_default();
    let outside = end.and_then(|e| {
        e.addrs.iter().find_map(|a| match a.addr() {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        })
    });
    ruleset(out, outside, nat)
}

/// The nftables ruleset of a NAT whose outside interface is `out_if` and
/// whose outside IPv4 address is `outside` (needed for hairpinning).
///
/// A NAT without RFC 4787 keys gets the masquerade ruleset the lab always
/// had, plus the closed WAN input (see below) that hole punching needs.
pub(crate) fn ruleset(out_if: &str, outside: Option<Ipv4Addr>, nat: &Nat) -> String {
    let kind = Kind::of(nat);
    let o = format!("\"{out_if}\"");
    let mut decl = String::new();
    let mut pre = String::new();
    let mut post = String::new();
    let mut record = String::new();

    for f in &nat.forwards {
        let _ = writeln!(
            pre,
            "    iifname {o} {} dport {} dnat to {}",
            f.proto, f.port, f.to
        );
    }

    if let Some(secs) = nat.udp_timeout {
        // A conntrack timeout policy: every UDP flow through (or to) the
        // router expires after `secs` idle, answered or not.
        let _ = writeln!(
            decl,
            "  ct timeout udp_short {{ protocol udp; l3proto ip; \
             policy = {{ unreplied : {secs}, replied : {secs} }}; }}\n\
             \x20 chain timeouts {{\n\
             \x20   type filter hook prerouting priority filter; policy accept;\n\
             \x20   meta l4proto udp ct state new ct timeout set \"udp_short\"\n\
             \x20 }}"
        );
    }

    if kind.bindings {
        let key = kind.binding_key();
        for (name, typeof_) in [
            (
                "bindings",
                Some(format!("{key} : ip saddr . th sport")).filter(|_| kind.mapped),
            ),
            (
                "inbound",
                Some("meta l4proto . th dport : ip daddr . th dport".to_string()),
            ),
            (
                "used",
                Some("meta l4proto . th sport".to_string()).filter(|_| kind.mapped),
            ),
            (
                "contacted",
                Some("meta l4proto . th sport . ip daddr".to_string())
                    .filter(|_| nat.filtering == Filtering::AddressDependent),
            ),
        ] {
            if let Some(t) = typeof_ {
                let what = if t.contains(" : ") { "map" } else { "set" };
                let _ = writeln!(
                    decl,
                    "  {what} {name} {{ typeof {t}; flags dynamic,timeout; timeout {UDP_BINDING_SECS}s; }}"
                );
            }
        }
        // Inbound through the bindings, as the filtering allows.
        const DNAT_BINDING: &str = "dnat ip to meta l4proto . th dport map @inbound";
        match nat.filtering {
            Filtering::EndpointIndependent => {
                let _ = writeln!(
                    pre,
                    "    iifname {o} meta l4proto {{ tcp, udp }} {DNAT_BINDING}"
                );
            }
            Filtering::AddressDependent => {
                let _ = writeln!(
                    pre,
                    "    iifname {o} meta l4proto {{ tcp, udp }} meta l4proto . th dport . ip saddr @contacted {DNAT_BINDING}"
                );
            }
            Filtering::AddressAndPortDependent => {}
        }
        if let (true, Some(pub_ip)) = (nat.hairpin, outside) {
            for f in &nat.forwards {
                let _ = writeln!(
                    pre,
                    "    iifname != {o} ip daddr {pub_ip} {} dport {} dnat to {}",
                    f.proto, f.port, f.to
                );
            }
            let _ = writeln!(
                pre,
                "    iifname != {o} ip daddr {pub_ip} meta l4proto {{ tcp, udp }} {DNAT_BINDING}"
            );
        }

        // What the NAT chose, read from the translated packet.
        for (proto, secs) in [
            ("udp", nat.udp_timeout.unwrap_or(UDP_BINDING_SECS)),
            ("tcp", TCP_BINDING_SECS),
        ] {
            let m = format!("    oifname {o} meta l4proto {proto} ct direction original update");
            let inside = "ct original ip saddr . ct original proto-src";
            if kind.mapped {
                let remote = if nat.mapping == Mapping::AddressDependent {
                    " . ip daddr"
                } else {
                    ""
                };
                let _ = writeln!(
                    record,
                    "{m} @bindings {{ meta l4proto . {inside}{remote} timeout {secs}s : ip saddr . th sport }}"
                );
                let _ = writeln!(
                    record,
                    "{m} @used {{ meta l4proto . th sport timeout {secs}s }}"
                );
            }
            let _ = writeln!(
                record,
                "{m} @inbound {{ meta l4proto . th sport timeout {secs}s : {inside} }}"
            );
            if nat.filtering == Filtering::AddressDependent {
                let _ = writeln!(
                    record,
                    "{m} @contacted {{ meta l4proto . th sport . ip daddr timeout {secs}s }}"
                );
            }
        }
    }

    let random = match nat.port_assignment() {
        PortAssignment::Random => " fully-random",
        PortAssignment::Preserving => "",
    };
    if kind.mapped {
        let l4 = format!("    oifname {o} meta l4proto {{ tcp, udp }}");
        if nat.mapping != Mapping::AddressAndPortDependent {
            let _ = writeln!(post, "{l4} snat ip to {} map @bindings", kind.binding_key());
        }
        // A port already bound (to this endpoint for another remote, or to
        // another endpoint) is never preserved twice: address- and
        // port-dependent mappings get a new port per remote, and no two
        // endpoints share one.
        if nat.port_assignment() == PortAssignment::Preserving {
            let _ = writeln!(post, "{l4} meta l4proto . th sport != @used masquerade");
        }
        let _ = writeln!(post, "{l4} masquerade fully-random");
    }
    // Everything else (and every flow of a plain Linux NAT).
    let _ = writeln!(post, "    oifname {o} masquerade{random}");
    if let (true, Some(pub_ip)) = (nat.hairpin, outside) {
        // A hairpinned flow leaves from the sender's outside mapping, so the
        // receiver sees what an outside peer would (RFC 4787 REQ-9).
        let hp = format!("    iifname != {o} oifname != {o} ct original ip daddr {pub_ip}");
        // (Only an endpoint-independent binding is keyed without the remote.)
        if nat.mapping == Mapping::EndpointIndependent {
            let _ = writeln!(
                post,
                "{hp} meta l4proto {{ tcp, udp }} snat ip to meta l4proto . ip saddr . th sport map @bindings"
            );
        }
        let _ = writeln!(post, "{hp} snat ip to {pub_ip}");
    }

    let drop_new = match nat.inbound {
        Inbound::Drop => format!("    iifname {o} drop\n"),
        Inbound::Accept => String::new(),
    };
    // An unsolicited packet to the router's own outside address must not
    // leave a conntrack entry behind, as a home router's closed WAN input
    // does: during hole punching the peer's first packet arrives before
    // ours leaves, and its entry (peer -> us:P) would take the reply tuple
    // of our own mapping to P, so our packets to the peer would be dropped
    // (or, with masquerade, mapped to another port).
    // Services of the router itself that the outside may reach.
    let mut open = String::new();
    for p in &nat.open {
        let _ = writeln!(open, "    iifname {o} {} dport {} accept", p.proto, p.port);
    }
    let input = match nat.inbound {
        Inbound::Drop => format!(
            "  chain input {{\n\
             \x20   type filter hook input priority filter; policy accept;\n\
             {open}\
             \x20   iifname {o} meta l4proto {{ tcp, udp }} ct state new drop\n\
             \x20 }}\n"
        ),
        Inbound::Accept => String::new(),
    };
    let record_chain = if record.is_empty() {
        String::new()
    } else {
        // After srcnat: the packet carries the outside address and port.
        format!(
            "  chain record {{\n\
             \x20   type filter hook postrouting priority srcnat + 10; policy accept;\n\
             {record}\
             \x20 }}\n"
        )
    };
    format!(
        "table ip {NAT_TABLE} {{\n\
         {decl}\
         \x20 chain prerouting {{\n\
         \x20   type nat hook prerouting priority dstnat; policy accept;\n\
         {pre}\
         \x20 }}\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         {post}\
         \x20 }}\n\
         {record_chain}\
         {input}\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority filter; policy accept;\n\
         \x20   iifname {o} ct state established,related accept\n\
         \x20   iifname {o} ct status dnat accept\n\
         {drop_new}\
         \x20 }}\n\
         }}\n"
    )
}

/// The chains miniupnpd fills (it creates none itself): forward accepts and
/// DNATs for each mapping a client asks for. Loaded before miniupnpd starts.
pub(crate) fn upnp_ruleset() -> String {
    format!(
        "table inet {UPNP_TABLE} {{\n\
         \x20 chain forward {{ type filter hook forward priority filter - 1; policy accept; jump miniupnpd; }}\n\
         \x20 chain miniupnpd {{ }}\n\
         \x20 chain prerouting {{ type nat hook prerouting priority dstnat - 1; policy accept; jump prerouting_miniupnpd; }}\n\
         \x20 chain postrouting {{ type nat hook postrouting priority srcnat - 1; policy accept; jump postrouting_miniupnpd; }}\n\
         \x20 chain prerouting_miniupnpd {{ }}\n\
         \x20 chain postrouting_miniupnpd {{ }}\n\
         }}\n"
    )
}

/// miniupnpd.conf for a router whose outside interface is `out_if` and
/// whose inside interfaces (with their addresses) are `inside`.
///
/// Clients may map only ports 1024-65535 to themselves (`secure_mode`), from
/// the inside subnets; mappings live in memory only (no lease file).
pub(crate) fn miniupnpd_conf(
    out_if: &str,
    inside: &[(String, Vec<Cidr>)],
    pm: &PortMapping,
) -> String {
    let yn = |b: bool| if b { "yes" } else { "no" };
    let mut c = format!(
        "# Written by fpn-lab for this router's namespace.\n\
         ext_ifname={out_if}\n"
    );
    for (ifname, _) in inside {
        let _ = writeln!(c, "listening_ip={ifname}");
    }
    let _ = write!(
        c,
        "http_port={}\n\
         enable_natpmp={}\n\
         enable_upnp={}\n\
         secure_mode=yes\n\
         system_uptime=no\n\
         notify_interval=30\n\
         clean_ruleset_interval=600\n\
         upnp_table_name={UPNP_TABLE}\n\
         upnp_nat_table_name={UPNP_TABLE}\n\
         upnp_forward_chain=miniupnpd\n\
         upnp_nat_chain=prerouting_miniupnpd\n\
         upnp_nat_postrouting_chain=postrouting_miniupnpd\n\
         uuid=3d3cec3a-8cf0-11e0-98ee-f9b1ab000001\n",
        pm.http_port,
        yn(pm.natpmp),
        yn(pm.upnp)
    );
    if let Some(max) = pm.max_lifetime {
        // miniupnpd raises a lease under min_lifetime (default 120 s) to
        // it, and refuses to start unless min_lifetime < max_lifetime.
        let _ = write!(
            c,
            "min_lifetime={}\nmax_lifetime={max}\n",
            (max / 2).clamp(1, 120)
        );
    }
    for (_, addrs) in inside {
        for a in addrs.iter().filter(|a| a.addr().is_ipv4()) {
            let _ = writeln!(c, "allow 1024-65535 {} 1024-65535", network(a));
        }
    }
    c.push_str("deny 0-65535 0.0.0.0/0 0-65535\n");
    c
}

/// The network of an IPv4 interface address, e.g. 192.168.1.0/24.
fn network(a: &Cidr) -> String {
    match a.addr() {
        std::net::IpAddr::V4(v4) => {
            let bits = u32::from(a.prefix().min(32));
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            format!("{}/{bits}", Ipv4Addr::from(u32::from(v4) & mask))
        }
        std::net::IpAddr::V6(_) => a.to_string(),
    }
}

/// What a NAT's rules need, derived once from its keys.
struct Kind {
    /// The router keeps nftables maps at all.
    bindings: bool,
    /// The mapping is the router's own (not Linux masquerade's).
    mapped: bool,
    mapping: Mapping,
}

impl Kind {
    fn of(nat: &Nat) -> Kind {
        Kind {
            bindings: nat.keeps_bindings(),
            mapped: nat.mapping != Mapping::Linux,
            mapping: nat.mapping,
        }
    }

    /// The `bindings` key as seen on an outbound packet before NAT.
    fn binding_key(&self) -> &'static str {
        match self.mapping {
            Mapping::AddressDependent => "meta l4proto . ip saddr . th sport . ip daddr",
            _ => "meta l4proto . ip saddr . th sport",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{PortForward, Proto};

    fn plain() -> Nat {
        toml::from_str("out = \"wan\"").unwrap()
    }

    #[test]
    fn a_plain_nat_masquerades_forwards_and_drops_unsolicited() {
        let home = Nat {
            forwards: vec![PortForward {
                proto: Proto::Tcp,
                port: 8080,
                to: "192.168.1.10:80".parse().unwrap(),
            }],
            ..plain()
        };
        let rs = ruleset("wan", None, &home);
        assert!(rs.contains("oifname \"wan\" masquerade\n"), "{rs}");
        assert!(!rs.contains("accept\n    iifname \"wan\" meta"), "{rs}");
        let gateway = Nat {
            open: vec![crate::topology::OpenPort {
                proto: Proto::Udp,
                port: 7718,
            }],
            ..plain()
        };
        let gw = ruleset("wan", None, &gateway);
        assert!(
            gw.contains("iifname \"wan\" udp dport 7718 accept\n    iifname \"wan\" meta l4proto"),
            "{gw}"
        );
        assert!(
            rs.contains("iifname \"wan\" tcp dport 8080 dnat to 192.168.1.10:80"),
            "{rs}"
        );
        assert!(rs.contains("iifname \"wan\" drop"), "{rs}");
        // No maps, no record chain: the NAT the lab always had.
        assert!(!rs.contains("map") && !rs.contains("record"), "{rs}");

        let open = Nat {
            inbound: Inbound::Accept,
            random_ports: true,
            ..plain()
        };
        let rs = ruleset("wan", None, &open);
        assert!(rs.contains("masquerade fully-random"), "{rs}");
        assert!(!rs.contains("drop"), "{rs}");
        assert!(!rs.contains("dnat to"), "{rs}");
    }

    #[test]
    fn each_behaviour_has_its_rules() {
        let eim: Nat = toml::from_str(
            "out = \"wan\"\nmapping = \"endpoint-independent\"\nfiltering = \"endpoint-independent\"\nhairpin = true\nudp_timeout = 9",
        )
        .unwrap();
        let rs = ruleset("wan", Some("198.18.0.2".parse().unwrap()), &eim);
        assert!(
            rs.contains("snat ip to meta l4proto . ip saddr . th sport map @bindings"),
            "{rs}"
        );
        assert!(
            rs.contains("meta l4proto . th sport != @used masquerade"),
            "{rs}"
        );
        assert!(
            rs.contains("iifname \"wan\" meta l4proto { tcp, udp } dnat ip to"),
            "{rs}"
        );
        assert!(
            rs.contains("iifname != \"wan\" ip daddr 198.18.0.2"),
            "{rs}"
        );
        assert!(rs.contains("snat ip to 198.18.0.2"), "{rs}");
        assert!(rs.contains("unreplied : 9, replied : 9"), "{rs}");
        assert!(rs.contains("timeout 9s"), "{rs}");
        assert!(rs.contains("type filter hook input"), "{rs}");

        let adm: Nat = toml::from_str(
            "out = \"wan\"\nmapping = \"address-dependent\"\nfiltering = \"address-dependent\"",
        )
        .unwrap();
        let rs = ruleset("wan", None, &adm);
        assert!(rs.contains("th sport . ip daddr map @bindings"), "{rs}");
        assert!(rs.contains("!= @used"), "{rs}");
        assert!(rs.contains("ip saddr @contacted dnat"), "{rs}");

        let sym: Nat = toml::from_str(
            "out = \"wan\"\nmapping = \"address-and-port-dependent\"\nports = \"random\"",
        )
        .unwrap();
        let rs = ruleset("wan", None, &sym);
        assert!(
            !rs.contains("map @bindings") && !rs.contains("!= @used"),
            "{rs}"
        );
        assert!(
            rs.contains("meta l4proto { tcp, udp } masquerade fully-random"),
            "{rs}"
        );
        assert!(!rs.contains("dnat ip to"), "APDF lets nobody in: {rs}");
    }

    #[test]
    fn a_short_pcp_lease_sets_both_lifetime_bounds() {
        let inside = [("lan".to_string(), vec!["192.168.1.1/24".parse().unwrap()])];
        let pm: PortMapping = toml::from_str("max_lifetime = 12").unwrap();
        let conf = miniupnpd_conf("wan", &inside, &pm);
        assert!(conf.contains("min_lifetime=6\nmax_lifetime=12\n"), "{conf}");
        let pm: PortMapping = toml::from_str("").unwrap();
        assert!(!miniupnpd_conf("wan", &inside, &pm).contains("lifetime"));
    }

    #[test]
    fn miniupnpd_serves_the_inside_subnets_only() {
        let pm: PortMapping = toml::from_str("upnp = false").unwrap();
        let conf = miniupnpd_conf(
            "wan",
            &[("lan".into(), vec!["192.168.1.1/24".parse().unwrap()])],
            &pm,
        );
        assert!(
            conf.contains("ext_ifname=wan\nlistening_ip=lan\n"),
            "{conf}"
        );
        assert!(
            conf.contains("enable_natpmp=yes\nenable_upnp=no\n"),
            "{conf}"
        );
        assert!(
            conf.contains("allow 1024-65535 192.168.1.0/24 1024-65535\ndeny"),
            "{conf}"
        );
    }
}
