//! Issue 10, port mapping: a node behind a router that speaks NAT-PMP
//! (miniupnpd) maps its carrier port, reports the mapped address, and a
//! peer behind a symmetric NAT reaches it directly on that address.
//!
//! configs/lab/nat-matrix-upnp.toml: both routers are symmetric NATs with
//! random ports (so hole punching fails between them, and without the
//! mapping the pair goes through the relay), `gwa` runs miniupnpd. Node `a`
//! obtains a mapping of UDP 7718 on gwa's outside address (netcheck shows
//! it), `b` dials it at once and connects directly (`b`'s status: `direct
//! via NAT (port-mapped)`, not relay), ping and TCP echo by name work both
//! ways, and after `fpn-node down` on `a` the mapping is gone from gwa.
//! The same again with NAT-PMP turned off on gwa: the node falls back to
//! UPnP IGD (SSDP discovery, AddPortMapping).

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
fn a_node_behind_a_nat_pmp_router_is_reached_directly_on_its_mapped_port() {
    reached_on_mapped_port(&config_path("nat-matrix-upnp.toml"), "nat-pmp");
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
    reached_on_mapped_port(&path, "upnp-igd");
}

/// The scenario on `topology` (nat-matrix-upnp.toml or a variant): `a`
/// maps with `protocol`, `b` reaches it on the mapping.
fn reached_on_mapped_port(topology: &std::path::Path, protocol: &str) {
    need(OVERLAY_TOOLS);
    need(&["miniupnpd", "nft"]);
    let lab = Lab::up(topology).expect("lab");
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
}
