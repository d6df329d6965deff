//! The rules a topology must follow before the lab builds it.
//!
//! Everything the kernel would refuse halfway through (a 16-character
//! interface name, a route through a link the host is not on) or that would
//! silently do the wrong thing (two default routes, a sysctl outside `net.*`
//! that would change the real machine) is refused here with a message that
//! names the host and link.

use std::collections::{BTreeMap, BTreeSet};

use super::nat::{MAX_UDP_TIMEOUT, miniupnpd_refuses};
use super::{Host, Link, Nat, PortAssignment, RouteTarget, Topology};
use crate::Error;

/// Longest Linux interface name (IFNAMSIZ - 1).
pub(crate) const MAX_IFNAME: usize = 15;

/// Names the lab uses itself inside switch namespaces.
const RESERVED: &[&str] = &["lo", "br0"];

/// Checks a normalized topology.
pub(super) fn check(t: &Topology) -> Result<(), Error> {
    if t.hosts.is_empty() {
        return Err(Error::topo("no hosts: add at least one [hosts.NAME] table"));
    }
    let mut names = BTreeSet::new();
    for name in t.hosts.keys() {
        check_name("host", name)?;
        names.insert(name.as_str());
    }
    for link in &t.links {
        check_name("link", &link.name)?;
        // Switches get a namespace named after the link, next to the hosts'.
        if !names.insert(link.name.as_str()) {
            return Err(Error::topo(format!(
                "name `{}` is used twice (hosts and links share one set of names)",
                link.name
            )));
        }
        check_link(t, link)?;
    }
    for (name, host) in &t.hosts {
        check_host(t, name, host)?;
    }
    Ok(())
}

/// Host and link names: short, lowercase, usable as interface names.
fn check_name(kind: &str, name: &str) -> Result<(), Error> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let starts_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > MAX_IFNAME || !ok_chars || !starts_ok {
        return Err(Error::topo(format!(
            "{kind} name `{name}`: use 1 to {MAX_IFNAME} of a-z, 0-9 and '-', starting with a letter \
             or digit (it becomes an interface name)"
        )));
    }
    if RESERVED.contains(&name) {
        return Err(Error::topo(format!("{kind} name `{name}` is reserved")));
    }
    Ok(())
}

/// Interface names: what the kernel accepts and what maps onto sysctl paths.
fn check_ifname(host: &str, ifname: &str) -> Result<(), Error> {
    let ok_chars = ifname
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ifname.is_empty() || ifname.len() > MAX_IFNAME || !ok_chars || ifname == "lo" {
        return Err(Error::topo(format!(
            "host `{host}`: interface name `{ifname}` must be 1 to {MAX_IFNAME} of A-Z, a-z, 0-9, \
             '-' and '_', and not `lo`"
        )));
    }
    Ok(())
}

fn check_link(t: &Topology, link: &Link) -> Result<(), Error> {
    let name = &link.name;
    if link.ends.is_empty() {
        return Err(Error::topo(format!("link `{name}` has no ends")));
    }
    let mut seen = BTreeSet::new();
    for end in &link.ends {
        if !t.hosts.contains_key(&end.host) {
            return Err(Error::topo(format!(
                "link `{name}`: unknown host `{}`",
                end.host
            )));
        }
        if !seen.insert(end.host.as_str()) {
            return Err(Error::topo(format!(
                "link `{name}`: host `{}` appears twice (one end per host and link)",
                end.host
            )));
        }
        check_ifname(&end.host, end.ifname())?;
        if !link.is_switch() && !end.attached {
            return Err(Error::topo(format!(
                "link `{name}`: `attached = false` needs `switch = true` (only switch ends can be \
                 attached and detached)"
            )));
        }
        if let Some(gw) = end.gateway {
            let on_subnet = end.addrs.iter().any(|a| a.contains(gw));
            if !on_subnet {
                return Err(Error::topo(format!(
                    "link `{name}`, host `{}`: gateway {gw} is not in the subnet of any of the \
                     end's addresses",
                    end.host
                )));
            }
        }
    }
    if let Some(mtu) = link.mtu
        && !(68..=65535).contains(&mtu)
    {
        return Err(Error::topo(format!(
            "link `{name}`: mtu {mtu} is outside 68..=65535"
        )));
    }
    check_unit(name, "delay", link.delay.as_deref(), &["us", "ms", "s"])?;
    check_unit(name, "jitter", link.jitter.as_deref(), &["us", "ms", "s"])?;
    check_unit(name, "loss", link.loss.as_deref(), &["%"])?;
    check_unit(
        name,
        "rate",
        link.rate.as_deref(),
        &["kbit", "mbit", "gbit", "bit"],
    )?;
    if link.jitter.is_some() && link.delay.is_none() {
        return Err(Error::topo(format!("link `{name}`: jitter needs delay")));
    }
    Ok(())
}

/// Checks `value` is a plain decimal number followed by one of `units`, so
/// it reaches `tc` as one well-formed token.
fn check_unit(link: &str, key: &str, value: Option<&str>, units: &[&str]) -> Result<(), Error> {
    let Some(v) = value else { return Ok(()) };
    let ok = units.iter().any(|u| {
        v.strip_suffix(u).is_some_and(|num| {
            !num.is_empty()
                && num.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && num.bytes().filter(|&b| b == b'.').count() <= 1
                && num.bytes().next().is_some_and(|b| b.is_ascii_digit())
        })
    });
    if ok {
        Ok(())
    } else {
        Err(Error::topo(format!(
            "link `{link}`: {key} = \"{v}\" should be a number followed by one of {}",
            units.join(", ")
        )))
    }
}

fn check_host(t: &Topology, name: &str, host: &Host) -> Result<(), Error> {
    // Interfaces present at the same time must differ; a detached end may
    // reuse the name of an attached one (a laptop's wlan0 on another network).
    let mut ifnames = BTreeMap::new();
    for (link, end) in t.ends_of(name).filter(|(_, e)| e.attached) {
        if let Some(other) = ifnames.insert(end.ifname(), &link.name) {
            return Err(Error::topo(format!(
                "host `{name}`: interface `{}` is used by links `{other}` and `{}`",
                end.ifname(),
                link.name
            )));
        }
    }

    // At most one default route per family while the lab comes up.
    let mut defaults: BTreeMap<bool, String> = BTreeMap::new();
    let mut add_default = |v6: bool, what: String| match defaults.insert(v6, what.clone()) {
        Some(prev) => Err(Error::topo(format!(
            "host `{name}` has two default routes: {prev} and {what}"
        ))),
        None => Ok(()),
    };
    for (link, end) in t.ends_of(name).filter(|(_, e)| e.attached) {
        if let Some(gw) = end.gateway {
            add_default(
                gw.is_ipv6(),
                format!("gateway {gw} on link `{}`", link.name),
            )?;
        }
    }

    for route in &host.routes {
        if route.via.is_none() && route.dev.is_none() {
            return Err(Error::topo(format!(
                "host `{name}`: route to {} needs `via` or `dev`",
                route.to
            )));
        }
        if let Some(dev) = &route.dev
            && t.end(name, dev).is_none()
        {
            return Err(Error::topo(format!(
                "host `{name}`: route to {} uses link `{dev}`, which the host is not on",
                route.to
            )));
        }
        let via_v6 = route.via.map(|v| v.is_ipv6());
        match route.to {
            RouteTarget::Default => {
                add_default(via_v6.unwrap_or(false), "route to default".to_string())?;
            }
            RouteTarget::Net(net) => {
                if via_v6.is_some_and(|v6| v6 != net.addr().is_ipv6()) {
                    return Err(Error::topo(format!(
                        "host `{name}`: route to {net} via {} mixes address families",
                        route.via.map(|v| v.to_string()).unwrap_or_default()
                    )));
                }
                if net.prefix() == 0 {
                    add_default(net.addr().is_ipv6(), format!("route to {net}"))?;
                }
            }
        }
    }

    if let Some(text) = &host.resolv_conf {
        crate::resolv::check(text)
            .map_err(|why| Error::topo(format!("host `{name}`: resolv_conf {why}")))?;
    }

    if let Some(nat) = &host.nat {
        if t.end(name, &nat.out).is_none() {
            return Err(Error::topo(format!(
                "host `{name}`: nat.out = \"{}\" is not a link of this host",
                nat.out
            )));
        }
        check_nat_kind(t, name, nat)?;
        let mut ports = BTreeSet::new();
        for fwd in &nat.forwards {
            if fwd.port == 0 || fwd.to.port() == 0 {
                return Err(Error::topo(format!(
                    "host `{name}`: port forward with port 0"
                )));
            }
            if !ports.insert((fwd.proto, fwd.port)) {
                return Err(Error::topo(format!(
                    "host `{name}`: two forwards for {} port {}",
                    fwd.proto, fwd.port
                )));
            }
        }
    }

    for key in host.sysctls.keys() {
        let ok_chars = key.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.' || b == b'-'
        });
        if !key.starts_with("net.") || !ok_chars || key.contains("..") || key.ends_with('.') {
            return Err(Error::topo(format!(
                "host `{name}`: sysctl `{key}` refused: only net.* keys are per namespace"
            )));
        }
    }

    for cmd in &host.run {
        if cmd.trim().is_empty() {
            return Err(Error::topo(format!(
                "host `{name}`: empty command in `run`"
            )));
        }
    }
    let mut svc_names = BTreeSet::new();
    for svc in &host.services {
        if svc.cmd.trim().is_empty() {
            return Err(Error::topo(format!(
                "host `{name}`: service with an empty cmd"
            )));
        }
        let name_ok = svc
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok || svc.name.len() > 64 {
            return Err(Error::topo(format!(
                "host `{name}`: service name `{}` must be up to 64 of a-z, A-Z, 0-9, '-', '_'",
                svc.name
            )));
        }
        if !svc_names.insert(svc.name.as_str()) {
            return Err(Error::topo(format!(
                "host `{name}`: two services named `{}`; give them `name`s",
                svc.name
            )));
        }
        if let Some(secs) = svc.wait_secs
            && !(secs > 0.0 && secs <= 600.0)
        {
            return Err(Error::topo(format!(
                "host `{name}`: service `{}`: wait_secs must be in (0, 600]",
                svc.name
            )));
        }
    }
    Ok(())
}

/// The RFC 4787 keys and the port-mapping daemon of a host's `nat`.
fn check_nat_kind(t: &Topology, name: &str, nat: &Nat) -> Result<(), Error> {
    if nat.random_ports && nat.ports == Some(PortAssignment::Preserving) {
        return Err(Error::topo(format!(
            "host `{name}`: nat has both random_ports = true and ports = \"preserving\"; keep one"
        )));
    }
    if let Some(secs) = nat.udp_timeout
        && !(1..=MAX_UDP_TIMEOUT).contains(&secs)
    {
        return Err(Error::topo(format!(
            "host `{name}`: nat.udp_timeout = {secs} must be 1 to {MAX_UDP_TIMEOUT} seconds"
        )));
    }
    // Hairpinning matches the outside address; miniupnpd announces it.
    let outside = t.end(name, &nat.out).and_then(|e| {
        e.addrs.iter().find_map(|a| match a.addr() {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        })
    });
    if (nat.hairpin || nat.port_mapping.is_some()) && outside.is_none() {
        return Err(Error::topo(format!(
            "host `{name}`: nat.hairpin and nat.port_mapping need an IPv4 address on link `{}`",
            nat.out
        )));
    }
    if let (Some(pm), Some(ip)) = (&nat.port_mapping, outside) {
        if !pm.natpmp && !pm.upnp {
            return Err(Error::topo(format!(
                "host `{name}`: nat.port_mapping with neither natpmp nor upnp"
            )));
        }
        if pm.max_lifetime.is_some_and(|m| m < 2) {
            return Err(Error::topo(format!(
                "host `{name}`: nat.port_mapping.max_lifetime must be at least 2 (miniupnpd \
                 needs a shorter min_lifetime)"
            )));
        }
        if pm.http_port == 0 {
            return Err(Error::topo(format!(
                "host `{name}`: nat.port_mapping.http_port must not be 0"
            )));
        }
        if miniupnpd_refuses(ip) {
            return Err(Error::topo(format!(
                "host `{name}`: nat.port_mapping: miniupnpd maps no ports when the outside \
                 address ({ip} on `{}`) is private or reserved, and 198.18.0.0/15 is reserved; \
                 give this router's outside link a public-looking address (the lab's \
                 configs use 198.20.0.0/16, which stays inside the lab's namespaces)",
                nat.out
            )));
        }
        let inside = t
            .ends_of(name)
            .filter(|(l, _)| l.name != nat.out)
            .any(|(_, e)| e.addrs.iter().any(|a| a.addr().is_ipv4()));
        if !inside {
            return Err(Error::topo(format!(
                "host `{name}`: nat.port_mapping needs an inside link with an IPv4 address"
            )));
        }
    }
    Ok(())
}
