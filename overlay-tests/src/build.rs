//! The kernel-facing steps that turn a topology into namespaces, interfaces,
//! addresses, routes, qdiscs and nftables rules.
//!
//! Each function is one `ip`/`tc`/`nft` invocation (or a few sysctl writes)
//! so a failure names exactly what the kernel refused. Interfaces are always
//! created inside their namespaces (`ip -n A link add X type veth peer name Y
//! netns B`): nothing ever appears in the root namespace, so nothing can
//! reach the machine's real interfaces.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::naming::BRIDGE;
use crate::sys;
use crate::topology::{Inbound, Link, Nat, Route, RouteTarget};
use crate::{Cidr, Error};

/// Name of the nftables table the lab installs for NATs.
pub(crate) const NAT_TABLE: &str = "fpnlab_nat";

/// Paths of the tools a lab uses.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    pub ip: PathBuf,
    pub tc: Option<PathBuf>,
    pub nft: Option<PathBuf>,
}

impl Tools {
    /// `ip -n NS args...`
    pub(crate) fn ip_in(&self, netns: &str, args: &[&str]) -> Result<String, Error> {
        let mut full = vec!["-n", netns];
        full.extend_from_slice(args);
        sys::run(&self.ip, &full)
    }

    pub(crate) fn netns_add(&self, netns: &str) -> Result<(), Error> {
        sys::run(&self.ip, &["netns", "add", netns]).map(drop)
    }

    pub(crate) fn link_up(&self, netns: &str, ifname: &str, up: bool) -> Result<(), Error> {
        let state = if up { "up" } else { "down" };
        self.ip_in(netns, &["link", "set", "dev", ifname, state])
            .map(drop)
    }

    pub(crate) fn set_mtu(&self, netns: &str, ifname: &str, mtu: u32) -> Result<(), Error> {
        self.ip_in(
            netns,
            &["link", "set", "dev", ifname, "mtu", &mtu.to_string()],
        )
        .map(drop)
    }

    /// A veth pair with one end in each namespace.
    pub(crate) fn veth(&self, ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> Result<(), Error> {
        self.ip_in(
            ns_a,
            &[
                "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
            ],
        )
        .map(drop)
    }

    pub(crate) fn link_del(&self, netns: &str, ifname: &str) -> Result<(), Error> {
        self.ip_in(netns, &["link", "del", "dev", ifname]).map(drop)
    }

    /// The bridge of a switch namespace, up.
    pub(crate) fn bridge(&self, netns: &str) -> Result<(), Error> {
        self.ip_in(netns, &["link", "add", BRIDGE, "type", "bridge"])?;
        self.link_up(netns, BRIDGE, true)
    }

    /// Puts a port on the switch's bridge and brings it up.
    pub(crate) fn bridge_port(&self, netns: &str, port: &str) -> Result<(), Error> {
        self.ip_in(netns, &["link", "set", "dev", port, "master", BRIDGE, "up"])
            .map(drop)
    }

    pub(crate) fn addr_add(&self, netns: &str, ifname: &str, addr: &Cidr) -> Result<(), Error> {
        let a = addr.to_string();
        let mut args = vec!["addr", "add", &a, "dev", ifname];
        if addr.addr().is_ipv6() {
            // Usable at once, without duplicate address detection's delay.
            args.push("nodad");
        }
        self.ip_in(netns, &args).map(drop)
    }

    pub(crate) fn addr_del(&self, netns: &str, ifname: &str, addr: &Cidr) -> Result<(), Error> {
        self.ip_in(netns, &["addr", "del", &addr.to_string(), "dev", ifname])
            .map(drop)
    }

    /// `ip route replace` (idempotent): `to` is "default" or a prefix.
    pub(crate) fn route_replace(
        &self,
        netns: &str,
        to: &RouteTarget,
        via: Option<IpAddr>,
        dev: Option<&str>,
    ) -> Result<(), Error> {
        let v6 = match to {
            RouteTarget::Net(c) => c.addr().is_ipv6(),
            RouteTarget::Default => via.is_some_and(|v| v.is_ipv6()),
        };
        let (to_s, via_s) = (to.to_string(), via.map(|v| v.to_string()));
        let mut args = vec![
            if v6 { "-6" } else { "-4" },
            "-n",
            netns,
            "route",
            "replace",
            &to_s,
        ];
        if let Some(v) = &via_s {
            args.extend(["via", v]);
        }
        if let Some(d) = dev {
            args.extend(["dev", d]);
        }
        sys::run(&self.ip, &args).map(drop)
    }

    pub(crate) fn route_del(&self, netns: &str, to: &RouteTarget, v6: bool) -> Result<(), Error> {
        let to_s = to.to_string();
        sys::run(
            &self.ip,
            &[
                if v6 { "-6" } else { "-4" },
                "-n",
                netns,
                "route",
                "del",
                &to_s,
            ],
        )
        .map(drop)
    }

    /// Delay, loss and rate on `ifname`'s egress: tbf for the rate, netem
    /// (as tbf's child when both) for delay and loss.
    pub(crate) fn shape(&self, netns: &str, ifname: &str, link: &Link) -> Result<(), Error> {
        if !link.is_shaped() {
            return Ok(());
        }
        let tc = self.tc.as_deref().ok_or(Error::MissingTool {
            tool: "tc",
            package: "iproute2",
        })?;
        let mut parent: Vec<&str> = vec!["root"];
        if let Some(rate) = &link.rate {
            // burst: at least one full packet plus headroom; latency bounds the queue.
            run_tc(
                tc,
                netns,
                &[
                    "qdisc", "add", "dev", ifname, "root", "handle", "1:", "tbf", "rate", rate,
                    "burst", "64kb", "latency", "50ms",
                ],
            )?;
            parent = vec!["parent", "1:1"];
        }
        if link.delay.is_some() || link.loss.is_some() {
            let mut args = vec!["qdisc", "add", "dev", ifname];
            args.extend(parent);
            args.extend(["handle", "10:", "netem"]);
            if let Some(d) = &link.delay {
                args.extend(["delay", d]);
                if let Some(j) = &link.jitter {
                    args.push(j);
                }
            }
            if let Some(l) = &link.loss {
                args.extend(["loss", l]);
            }
            run_tc(tc, netns, &args)?;
        }
        Ok(())
    }

    /// Loads an nftables ruleset into a namespace.
    pub(crate) fn nft_load(&self, netns: &str, ruleset: &str) -> Result<(), Error> {
        let nft = self.nft.as_deref().ok_or(Error::MissingTool {
            tool: "nft",
            package: "nftables",
        })?;
        let nft_s = nft.to_string_lossy();
        sys::run_with_stdin(
            &self.ip,
            &["netns", "exec", netns, &nft_s, "-f", "-"],
            Some(ruleset),
        )
        .map(drop)
    }
}

/// `tc -n NS ...`, turning "unknown qdisc" into [`Error::Unsupported`].
fn run_tc(tc: &Path, netns: &str, args: &[&str]) -> Result<(), Error> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    match sys::run(tc, &full) {
        Err(Error::CommandFailed { stderr, .. }) if stderr.contains("qdisc kind is unknown") => {
            let kind = args
                .iter()
                .find(|a| ["netem", "tbf"].contains(a))
                .unwrap_or(&"qdisc");
            Err(Error::Unsupported {
                feature: format!("link shaping with tc {kind}"),
                detail: format!("this kernel has no sch_{kind} ({stderr})"),
            })
        }
        other => other.map(drop),
    }
}

/// Writes sysctls in a namespace, from a thread that entered it (net.*
/// sysctls belong to the writer's network namespace).
pub(crate) fn write_sysctls(netns: &str, kv: Vec<(String, String)>) -> Result<(), Error> {
    let ns = netns.to_string();
    sys::thread_in_netns(netns, move || -> Result<(), Error> {
        for (key, value) in kv {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(format!("sysctl {key} in {ns}"), e))?;
            f.write_all(value.as_bytes())
                .map_err(|e| Error::io(format!("sysctl {key} = {value} in {ns}"), e))?;
        }
        Ok(())
    })?
    .join()
}

/// The lab's own sysctls for a host, applied before its interfaces exist so
/// they inherit the defaults.
pub(crate) fn base_sysctls(ipv6: bool, forward: bool) -> Vec<(String, String)> {
    let mut kv: Vec<(&str, &str)> = vec![
        // The same on every machine, whatever the root namespace's defaults:
        // roaming hosts and asymmetric test routes must not be dropped.
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv4.ip_forward", if forward { "1" } else { "0" }),
    ];
    if ipv6 {
        kv.extend([
            ("net.ipv6.conf.all.disable_ipv6", "0"),
            ("net.ipv6.conf.default.disable_ipv6", "0"),
            (
                "net.ipv6.conf.all.forwarding",
                if forward { "1" } else { "0" },
            ),
        ]);
    } else {
        // No router solicitations or MLD reports in captures.
        kv.extend([
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
        ]);
    }
    kv.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The nftables ruleset of a NAT whose outside interface is `out_if`.
pub(crate) fn nat_ruleset(out_if: &str, nat: &Nat) -> String {
    let mut pre = String::new();
    for f in &nat.forwards {
        pre.push_str(&format!(
            "    iifname \"{out_if}\" {} dport {} dnat to {}\n",
            f.proto, f.port, f.to
        ));
    }
    let random = if nat.random_ports {
        " fully-random"
    } else {
        ""
    };
    let drop_new = match nat.inbound {
        Inbound::Drop => format!("    iifname \"{out_if}\" drop\n"),
        Inbound::Accept => String::new(),
    };
    // Unsolicited packets to the router itself are dropped too, as a home
    // router's firewall does. Accepted, each would leave a conntrack entry
    // (a peer's hole-punching packet to the router's public port) that
    // makes masquerade give a LAN host's later flow to that peer another
    // source port, so two such NATs could never be punched (the packets of
    // both ends would each hit the other router first).
    let input = match nat.inbound {
        Inbound::Drop => format!(
            "  chain input {{\n\
             \x20   type filter hook input priority filter; policy accept;\n\
             \x20   iifname \"{out_if}\" ct state established,related accept\n\
             \x20   iifname \"{out_if}\" drop\n\
             \x20 }}\n"
        ),
        Inbound::Accept => String::new(),
    };
    format!(
        "table ip {NAT_TABLE} {{\n\
         \x20 chain prerouting {{\n\
         \x20   type nat hook prerouting priority dstnat; policy accept;\n\
         {pre}\
         \x20 }}\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   oifname \"{out_if}\" masquerade{random}\n\
         \x20 }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority filter; policy accept;\n\
         \x20   iifname \"{out_if}\" ct state established,related accept\n\
         \x20   iifname \"{out_if}\" ct status dnat accept\n\
         {drop_new}\
         \x20 }}\n\
         {input}\
         }}\n"
    )
}

/// Applies a host's static routes.
pub(crate) fn apply_routes(
    tools: &Tools,
    netns: &str,
    routes: &[Route],
    ifname_of: impl Fn(&str) -> Option<String>,
) -> Result<(), Error> {
    for r in routes {
        let dev = r.dev.as_deref().and_then(&ifname_of);
        tools.route_replace(netns, &r.to, r.via, dev.as_deref())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{PortForward, Proto};

    #[test]
    fn nat_ruleset_masquerades_forwards_and_drops_unsolicited() {
        let nat = Nat {
            out: "pub-home".into(),
            forwards: vec![PortForward {
                proto: Proto::Tcp,
                port: 8080,
                to: "192.168.1.10:80".parse().unwrap(),
            }],
            inbound: Inbound::Drop,
            random_ports: false,
        };
        let rs = nat_ruleset("wan", &nat);
        assert!(rs.contains("oifname \"wan\" masquerade\n"), "{rs}");
        assert!(
            rs.contains("iifname \"wan\" tcp dport 8080 dnat to 192.168.1.10:80"),
            "{rs}"
        );
        assert!(rs.contains("iifname \"wan\" drop"), "{rs}");
        assert!(
            rs.contains("hook input"),
            "the router itself drops too: {rs}"
        );

        let open = Nat {
            inbound: Inbound::Accept,
            random_ports: true,
            forwards: vec![],
            ..nat
        };
        let rs = nat_ruleset("wan", &open);
        assert!(rs.contains("masquerade fully-random"), "{rs}");
        assert!(!rs.contains("drop"), "{rs}");
        assert!(!rs.contains("dnat to"), "{rs}");
    }

    #[test]
    fn base_sysctls_follow_ipv6_and_forwarding() {
        let v4_router = base_sysctls(false, true);
        assert!(v4_router.contains(&("net.ipv4.ip_forward".into(), "1".into())));
        assert!(v4_router.contains(&("net.ipv6.conf.all.disable_ipv6".into(), "1".into())));
        let v6_host = base_sysctls(true, false);
        assert!(v6_host.contains(&("net.ipv6.conf.all.disable_ipv6".into(), "0".into())));
        assert!(v6_host.contains(&("net.ipv4.ip_forward".into(), "0".into())));
    }
}
