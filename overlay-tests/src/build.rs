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
use crate::topology::{Link, Route, RouteTarget};
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

    /// Waits until the link from `ifname` (in `netns`) to the switch's
    /// `port` carries frames: both ends operationally up, the host's queue
    /// discipline in place (the kernel swaps in the real one shortly after
    /// the carrier comes up; until then it drops every frame) and the
    /// bridge port forwarding.
    ///
    /// A real network gives a host its address (DHCP) only over a link
    /// that works. Adding the address and route the moment the interface
    /// is up let the first ARP request fall into that gap, and the kernel
    /// asks again only after a second (`retrans_time_ms`): a move's first
    /// packets then waited 1 s (seen in 4 of 10 handovers home).
    pub(crate) fn wait_link_works(
        &self,
        netns: &str,
        ifname: &str,
        switch: &str,
        port: &str,
    ) -> Result<(), Error> {
        const LIMIT: std::time::Duration = std::time::Duration::from_secs(3);
        let start = std::time::Instant::now();
        loop {
            let host = self.link_json(netns, ifname)?;
            let sw = self.link_json(switch, port)?;
            let up = |v: &serde_json::Value| v["operstate"] == "UP";
            if up(&host)
                && host["qdisc"] != "noop"
                && up(&sw)
                && sw["linkinfo"]["info_slave_data"]["state"] == "forwarding"
            {
                return Ok(());
            }
            if start.elapsed() > LIMIT {
                return Err(Error::WaitTimeout {
                    what: format!(
                        "link {netns}/{ifname} to switch port {switch}/{port} to carry frames"
                    ),
                    after: LIMIT,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// `ip -j -d link show dev IFNAME` in `netns`: the interface's object.
    fn link_json(&self, netns: &str, ifname: &str) -> Result<serde_json::Value, Error> {
        let out = self.ip_in(netns, &["-j", "-d", "link", "show", "dev", ifname])?;
        let mut v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| Error::Topology(format!("`ip -j link show dev {ifname}`: {e}")))?;
        Ok(v[0].take())
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
            // No duplicate address detection on the lab's fresh links, for
            // the link-local addresses too (global ones are added nodad):
            // while a router's link-local address is tentative it cannot
            // answer neighbour solicitations, and a host's first packets
            // through it were lost for about a second after `up`.
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
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
