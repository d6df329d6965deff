//! Issue 10, port mapping: a node behind a router that speaks PCP and
//! NAT-PMP (miniupnpd) maps its carrier port with PCP, reports the mapped
//! address, and a peer behind a symmetric NAT reaches it directly on that
//! address.
//!
//! configs/lab/nat-matrix-upnp.toml: both routers are symmetric NATs with
//! random ports (so hole punching fails between them, and without the
//! mapping the pair goes through the relay), `gwa` runs miniupnpd. Node `a`
//! obtains a mapping of UDP 7718 on gwa's outside address with PCP
//! (netcheck and status show `pcp`; miniupnpd names the rule after the PCP
//! nonce), `b` dials it at once and connects directly (`b`'s status:
//! `direct via NAT (port-mapped)`, not relay), ping and TCP echo by name
//! work both ways, and after `fpn-node down` on `a` the mapping is gone
//! from gwa (the PCP delete carries the mapping's nonce, or miniupnpd
//! refuses it).
//!
//! miniupnpd 2.3.1 serves PCP and NAT-PMP on one socket behind one switch
//! (`enable_natpmp`); it cannot serve NAT-PMP alone. The NAT-PMP case
//! therefore drops PCP (version 2) requests at gwa with an nftables rule,
//! like a NAT-PMP-only router that ignores PCP: the node's PCP tries time
//! out and it maps with NAT-PMP (the fast fallback on a NAT-PMP router's
//! "unsupported version" answer is a unit test in node/src/portmap). With
//! NAT-PMP (and PCP) turned off on gwa the node falls back to UPnP IGD
//! (SSDP discovery, AddPortMapping).

mod common;

use std::time::{Duration, Instant};

use common::{OVERLAY_TOOLS, echo_send, need, peer_entry};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use fpn_lab::{Lab, config_path};

fn node_on(name: &str) -> NodeSpec {
    NodeSpec {
        host: name.into(),
        ..NodeSpec::new(name, Mode::Op, &[1])
    }
}

/// The DNAT rules miniupnpd keeps on `gw` (one per mapping).
fn router_mappings(lab: &Lab, gw: &str) -> String {
    lab.exec_ok(
        gw,
        [
            "nft",
            "list",
            "chain",
            "inet",
            "fpnlab_upnp",
            "prerouting_miniupnpd",
        ],
    )
    .unwrap()
}

/// Waits (bounded) until `node`'s netcheck shows a port mapping.
fn wait_mapped(ov: &Overlay, node: &str) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let out = ov.node_cli(node, &["netcheck", "--json"]).unwrap();
        assert!(out.success(), "netcheck: {}", out.stderr);
        let nc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        if nc["port_mapping"]["state"] == "mapped" {
            return nc;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{node} got no port mapping: {nc}\n{}",
            ov.log_tails(30)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_node_behind_a_pcp_router_is_reached_directly_on_its_mapped_port() {
    reached_on_mapped_port(&config_path("nat-matrix-upnp.toml"), "pcp", false);
}

#[test]
fn a_node_behind_a_nat_pmp_router_is_reached_directly_on_its_mapped_port() {
    reached_on_mapped_port(&config_path("nat-matrix-upnp.toml"), "nat-pmp", true);
}

#[test]
fn without_nat_pmp_the_node_maps_its_port_with_upnp_igd() {
    let text = std::fs::read_to_string(config_path("nat-matrix-upnp.toml")).unwrap();
    let patched = text.replace(
        "port_mapping = { natpmp = true, upnp = true }",
        "port_mapping = { natpmp = false, upnp = true }",
    );
    assert_ne!(patched, text, "the topology's port_mapping line changed");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nat-matrix-upnp-only.toml");
    std::fs::write(&path, patched).unwrap();
    reached_on_mapped_port(&path, "upnp-igd", false);
}

#[test]
fn a_short_pcp_lease_is_renewed_before_it_expires() {
    // miniupnpd grants PCP leases of at most 12 s (and removes a mapping
    // whose lease ran out): the node must renew at half of what was
    // granted, not of the 7200 s it asked for, with the mapping's nonce.
    const LEASE: u64 = 12;
    need(OVERLAY_TOOLS);
    need(&["miniupnpd", "nft"]);
    let text = std::fs::read_to_string(config_path("nat-matrix-upnp.toml")).unwrap();
    let patched = text.replace(
        "port_mapping = { natpmp = true, upnp = true }",
        &format!("port_mapping = {{ natpmp = true, upnp = true, max_lifetime = {LEASE} }}"),
    );
    assert_ne!(patched, text, "the topology's port_mapping line changed");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nat-matrix-upnp-short-lease.toml");
    std::fs::write(&path, patched).unwrap();
    let lab = Lab::up(&path).expect("lab");
    let ov = Overlay::start(
        lab,
        &Spec::new(&[(1, "home")], vec![node_on("a"), node_on("b")]),
    )
    .unwrap_or_else(|e| panic!("overlay start: {e}"));
    let lab = ov.lab();
    let nc = wait_mapped(&ov, "a");
    let pm = &nc["port_mapping"];
    assert_eq!(pm["protocol"], "pcp", "{nc}");
    assert_eq!(
        pm["lifetime_secs"], LEASE,
        "the granted lease is honoured: {nc}"
    );
    let first = pm["renewed_at"].as_u64().unwrap();

    // Two and a half leases later the mapping is still on the router (each
    // renewal replaced it with a fresh lease) and b reaches a on it.
    std::thread::sleep(Duration::from_secs(LEASE * 5 / 2));
    assert!(
        router_mappings(lab, "gwa").contains("7718"),
        "the mapping expired: {}",
        miniupnpd_log(lab)
    );
    let out = ov.node_cli("a", &["netcheck", "--json"]).unwrap();
    let nc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let pm = &nc["port_mapping"];
    assert_eq!(pm["state"], "mapped", "{nc}");
    let renewed = pm["renewed_at"].as_u64().unwrap();
    assert!(renewed > first + LEASE, "not renewed: {nc}");
    let log = miniupnpd_log(lab);
    let adds = log.matches("PCP MAP: added mapping UDP 7718->").count();
    assert!(adds >= 4, "{adds} PCP MAP requests in 2.5 leases: {log}");
    assert!(!log.contains("Unauthorized"), "{log}");
    let p = ov.ping("b", "a", 3).unwrap();
    assert!(p.ok, "ping b -> a on the renewed mapping: {}", p.json);
    let e = peer_entry(&ov, "b", "a");
    assert_eq!(e["candidate"], "direct via NAT (port-mapped)", "{e}");
}

/// The nftables table on gwa that drops PCP requests (first payload byte,
/// the version, not 0) to miniupnpd's port, counting them.
const NO_PCP_TABLE: &str = "fpntest_nopcp";

/// Makes `gw` ignore PCP, as a NAT-PMP-only router does.
fn drop_pcp(lab: &Lab, gw: &str) {
    lab.exec_ok(gw, ["nft", "add", "table", "inet", NO_PCP_TABLE])
        .unwrap();
    lab.exec_ok(
        gw,
        [
            "nft",
            "add",
            "chain",
            "inet",
            NO_PCP_TABLE,
            "input",
            "{ type filter hook input priority -5 ; }",
        ],
    )
    .unwrap();
    lab.exec_ok(
        gw,
        [
            "nft",
            "add",
            "rule",
            "inet",
            NO_PCP_TABLE,
            "input",
            "udp",
            "dport",
            "5351",
            "@th,64,8",
            "!=",
            "0",
            "counter",
            "drop",
        ],
    )
    .unwrap();
}

/// The scenario on `topology` (nat-matrix-upnp.toml or a variant): `a`
/// maps with `protocol`, `b` reaches it on the mapping. `no_pcp`: gwa
/// drops PCP before the nodes start.
fn reached_on_mapped_port(topology: &std::path::Path, protocol: &str, no_pcp: bool) {
    need(OVERLAY_TOOLS);
    need(&["miniupnpd", "nft"]);
    let lab = Lab::up(topology).expect("lab");
    if no_pcp {
        drop_pcp(&lab, "gwa");
    }
    let ov = Overlay::start(
        lab,
        &Spec::new(&[(1, "home")], vec![node_on("a"), node_on("b")]),
    )
    .unwrap_or_else(|e| panic!("overlay start: {e}"));
    let lab = ov.lab();
    let gwa = lab.addr("gwa", "pub-a").unwrap();
    let mapped = format!("{gwa}:7718");

    // a's netcheck: NAT-PMP mapped the carrier port on gwa's outside
    // address; b's router has no port-mapping daemon.
    let nc = wait_mapped(&ov, "a");
    let pm = &nc["port_mapping"];
    assert_eq!(pm["protocol"], protocol, "{nc}");
    assert_eq!(pm["external"], mapped, "{nc}");
    assert_eq!(pm["gateway"], "192.168.1.1", "{nc}");
    assert!(pm["lifetime_secs"].as_u64().unwrap_or(0) > 0, "{nc}");
    assert!(
        router_mappings(lab, "gwa").contains("7718"),
        "no mapping on the router"
    );
    let out = ov.node_cli("a", &["netcheck"]).unwrap();
    assert!(
        out.stdout
            .contains(&format!("port mapping: {mapped} via {protocol}")),
        "{}",
        out.stdout
    );
    // The status shows it too, and the router says which protocol asked
    // (miniupnpd's log; its rules in nftables carry no description).
    let out = ov.node_cli("a", &["status", "--json"]).unwrap();
    let st: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(st["port_mapping"]["protocol"], protocol, "{st}");
    let log = miniupnpd_log(lab);
    match protocol {
        "pcp" => {
            assert!(log.contains("PCP MAP: added mapping UDP 7718->"), "{log}");
            assert!(!log.contains("NAT-PMP port mapping request"), "{log}");
        }
        "nat-pmp" => assert!(log.contains("NAT-PMP port mapping request"), "{log}"),
        _ => {}
    }
    if no_pcp {
        // a asked with PCP first: gwa dropped (and counted) its requests.
        let t = lab
            .exec_ok("gwa", ["nft", "list", "table", "inet", NO_PCP_TABLE])
            .unwrap();
        assert!(!t.contains("packets 0 "), "no PCP request reached gwa: {t}");
    }
    let out = ov.node_cli("b", &["netcheck", "--json"]).unwrap();
    let ncb: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_ne!(ncb["port_mapping"]["state"], "mapped", "{ncb}");

    // b (symmetric NAT) sets up first: it dials a's mapped address at
    // once; a ping by name answers. Bounded: the GMS must have the mapped
    // address before b looks a up.
    let t = Instant::now();
    loop {
        let out = lab
            .exec(
                "b",
                ["ping", "-n", "-c", "1", "-W", "1", &Overlay::fqdn("a")],
            )
            .unwrap();
        if out.success() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "b never reached a: {}\n{}",
            out.stdout,
            ov.log_tails(40)
        );
    }
    let p = ov.ping("b", "a", 3).unwrap();
    assert!(p.ok, "ping b -> a: {}", p.json);

    // TCP echo by name, both directions of connection set-up.
    let _echo_a = common::echo_server(lab, "a", 7001);
    let _echo_b = common::echo_server(lab, "b", 7001);
    for (from, to) in [("b", "a"), ("a", "b")] {
        let target = format!("{}:7001", Overlay::fqdn(to));
        let out = echo_send(lab, from, &target, "port-mapped", false);
        assert!(out.success(), "TCP echo {from} -> {target}: {}", out.stderr);
    }

    // b reached a on the mapping, directly: not through the relay.
    let e = peer_entry(&ov, "b", "a");
    assert_eq!(e["candidate"], "direct via NAT (port-mapped)", "{e}");
    assert_eq!(e["addr"], mapped, "{e}");
    assert_ne!(e["carrier"], "relay", "{e}");

    // A clean stop deletes the mapping at the router.
    assert!(ov.down("a").unwrap(), "fpn-node down a failed");
    let rules = router_mappings(lab, "gwa");
    assert!(
        !rules.contains("7718"),
        "the mapping outlived the node: {rules}"
    );
    if protocol == "pcp" {
        // Deleted by PCP (with the mapping's nonce), not by expiry.
        let log = miniupnpd_log(lab);
        assert!(log.contains("PCP: UDP port 7718 mapping removed"), "{log}");
    }
}

/// gwa's miniupnpd log so far.
fn miniupnpd_log(lab: &Lab) -> String {
    std::fs::read_to_string(lab.log_dir().join("gwa-miniupnpd.log")).unwrap_or_default()
}
