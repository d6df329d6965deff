//! Issue 10, address discovery and hole punching: nodes behind NATs reach
//! each other directly.
//!
//! - configs/lab/nat-two-homes.toml: a node in each of two homes, each
//!   behind a port-preserving masquerade NAT that drops unsolicited
//!   inbound, the GMS on the VPS. Each node learns its reflexive address
//!   (the GMS session runs on the carrier's socket), the first packet makes
//!   one node dial the other's candidates and ask the GMS for a connect-now,
//!   the other dials back at once, and both NATs open: ping and TCP echo by
//!   name work and both statuses show the direct path through the other
//!   home's NAT.
//! - configs/lab/nat-home.toml: the NAS and the laptop at home talk over
//!   their LAN addresses, and nothing of theirs crosses the router's WAN.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::{OVERLAY_TOOLS, echo_send, need, peer_entry, ping_until_answered};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use fpn_lab::{Lab, config_path};

const MARKER: &str = "fpn-punch-plaintext-marker-9c2d";

fn node_on(name: &str, host: &str) -> NodeSpec {
    NodeSpec {
        host: host.into(),
        ..NodeSpec::new(name, Mode::Op, &[1])
    }
}

fn start(topology: &str, nodes: Vec<NodeSpec>) -> Overlay {
    need(OVERLAY_TOOLS);
    let lab = Lab::up(config_path(topology)).expect("lab");
    Overlay::start(lab, &Spec::new(&[(1, "home")], nodes))
        .unwrap_or_else(|e| panic!("overlay start: {e}"))
}

/// Waits (bounded) until `node`'s status shows its reflexive address.
fn wait_reflexive(ov: &Overlay, node: &str) -> String {
    let t = Instant::now();
    loop {
        let st = ov.status(node).unwrap();
        if let Some(r) = st["gms"]["reflexive"].as_str() {
            return r.to_owned();
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{node} never learnt its reflexive address: {}",
            st["gms"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_nodes_behind_two_nats_punch_through_and_reach_each_other_by_name() {
    let ov = start(
        "nat-two-homes.toml",
        vec![node_on("a", "hosta"), node_on("b", "hostb")],
    );
    let lab = ov.lab();
    let gwa = lab.addr("gwa", "pub-a").unwrap();
    let gwb = lab.addr("gwb", "pub-b").unwrap();

    // Both routers forget a UDP flow after 15 s without packets (Linux's
    // default is 30 s unanswered, 120 s once answered), from before the
    // first packet between the nodes; the carrier's QUIC keep-alive goes
    // every 10 s.
    for gw in ["gwa", "gwb"] {
        lab.exec_ok(
            gw,
            [
                "sysctl",
                "-w",
                "net.netfilter.nf_conntrack_udp_timeout=15",
                "net.netfilter.nf_conntrack_udp_timeout_stream=15",
            ],
        )
        .unwrap();
    }

    // Address discovery: each node's reflexive address is its router's
    // public address with the carrier's port (the NAT keeps the port).
    assert_eq!(wait_reflexive(&ov, "a"), format!("{gwa}:7718"));
    assert_eq!(wait_reflexive(&ov, "b"), format!("{gwb}:7718"));
    let nc = ov.node_cli("a", &["netcheck", "--json"]).unwrap();
    assert!(nc.success(), "netcheck: {}", nc.stderr);
    let nc: serde_json::Value = serde_json::from_str(&nc.stdout).unwrap();
    assert_eq!(nc["reflexive"], format!("{gwa}:7718"), "{nc}");
    assert_eq!(nc["behind_nat"], true, "{nc}");
    assert_eq!(nc["port_preserved"], true, "{nc}");
    assert_eq!(nc["stable"], true, "{nc}");
    assert!(
        nc["local"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "192.168.1.10:7718"),
        "{nc}"
    );

    // No port is forwarded to either home: without a connect-now on the
    // other side, a's packets die at b's router.
    let took = ping_until_answered(&ov, "hosta", &Overlay::fqdn("b"), Duration::from_secs(20));
    eprintln!("first answer through the punched path after {took:?}");
    let ping = lab
        .exec("hosta", ["ping", "-c", "3", "-W", "2", &Overlay::fqdn("b")])
        .unwrap();
    assert!(ping.success(), "ping b: {}{}", ping.stdout, ping.stderr);

    // TCP echo by name, both directions of connection set-up.
    let _echo_b = common::echo_server(lab, "hostb", 7001);
    let _echo_a = common::echo_server(lab, "hosta", 7001);
    let cap = lab.capture("inet", "pub-b", "ip").unwrap();
    for (from, to) in [("hosta", "b"), ("hostb", "a")] {
        let target = format!("{}:7001", Overlay::fqdn(to));
        let out = echo_send(lab, from, &target, &MARKER.repeat(50), false);
        assert!(out.success(), "TCP echo {from} -> {target}: {}", out.stderr);
    }
    let pcap = cap.stop().unwrap();
    assert!(
        !pcap.contains(MARKER.as_bytes()),
        "plaintext marker on the internet side"
    );

    // Both sides: the peer over its reflexive candidate, i.e. straight to
    // the other home's router, with an RTT; not through the VPS.
    for (node, peer, nat) in [("a", "b", gwb), ("b", "a", gwa)] {
        let p = peer_entry(&ov, node, peer);
        assert_eq!(p["candidate"], "direct via NAT (reflexive)", "{node}: {p}");
        assert_eq!(p["addr"], format!("{nat}:7718"), "{node}: {p}");
        assert!(p["rtt_ms"].as_f64().is_some(), "{node}: {p}");
    }
    // The punch was coordinated through the GMS.
    let (sa, sb) = (ov.status("a").unwrap(), ov.status("b").unwrap());
    let asked =
        sa["gms"]["punches_asked"].as_u64().unwrap() + sb["gms"]["punches_asked"].as_u64().unwrap();
    let received = sa["gms"]["punches_received"].as_u64().unwrap()
        + sb["gms"]["punches_received"].as_u64().unwrap();
    assert!(
        asked >= 1 && received >= 1,
        "a: {}, b: {}",
        sa["gms"],
        sb["gms"]
    );

    // Keepalives held the bindings (the routers forget a flow after 15 s,
    // set at the start): after 25 s without traffic, the first echo is
    // answered at once, on the same connection (an expired binding would
    // need a new punch first, and the echo would be lost meanwhile).
    let punched = |ov: &Overlay| {
        ["a", "b"].map(|n| peer_entry(ov, n, if n == "a" { "b" } else { "a" })["punched"].as_u64())
    };
    let before = punched(&ov);
    std::thread::sleep(Duration::from_secs(25));
    let p = ov.ping("a", "b", 1).unwrap();
    assert!(
        p.ok && p.rtts().len() == 1,
        "the idle path did not carry an echo at once: {}",
        p.json
    );
    assert_eq!(punched(&ov), before, "no new punch after the idle time");
    let p = peer_entry(&ov, "a", "b");
    assert_eq!(p["candidate"], "direct via NAT (reflexive)", "{p}");
}

#[test]
fn two_nodes_on_one_home_lan_talk_over_the_lan_not_through_the_router() {
    let ov = start(
        "nat-home.toml",
        vec![node_on("nas", "nas"), node_on("laptop", "laptop")],
    );
    let lab = ov.lab();
    let gms_ip = ov.gms_addr().ip();
    let public = lab.addr("gw", "pub-home").unwrap();
    // Both sessions leave through the router: one reflexive address each,
    // same IP (the router's), different ports or not.
    for n in ["nas", "laptop"] {
        let r = wait_reflexive(&ov, n);
        assert!(r.starts_with(&format!("{public}:")), "{n}: {r}");
    }
    // The carrier's port (QUIC, and the GMS sessions) and the native path's
    // probe port; other UDP (the stubs' upstream DNS) is not theirs.
    let wan = lab
        .capture("gw", "pub-home", "udp port 7718 or udp port 7717")
        .unwrap();
    // On the NAS's port of the LAN switch: the router's port would not see
    // unicast between two other hosts.
    let lan = lab.capture("nas", "homelan", "udp").unwrap();

    ping_until_answered(
        &ov,
        "laptop",
        &Overlay::fqdn("nas"),
        Duration::from_secs(20),
    );
    let _echo = common::echo_server(lab, "nas", 7001);
    let out = echo_send(
        lab,
        "laptop",
        &format!("{}:7001", Overlay::fqdn("nas")),
        MARKER,
        false,
    );
    assert!(out.success(), "TCP echo laptop -> nas: {}", out.stderr);

    let p = peer_entry(&ov, "laptop", "nas");
    assert_eq!(p["addr"], "192.168.1.10:7718", "{p}");
    assert_eq!(p["candidate"], "direct LAN", "{p}");
    let p = peer_entry(&ov, "nas", "laptop");
    assert_eq!(p["candidate"], "direct LAN", "{p}");

    // The LAN carried them (the capture can see them) ...
    let nas = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10));
    let laptop = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 50));
    let lan = lan.stop().unwrap();
    assert!(
        common::udp_between(&lan, nas, laptop).0 > 0,
        "no UDP between the two on the LAN"
    );
    // ... and the router's WAN saw only their GMS sessions (the capture
    // filter keeps the carrier's and the native probes' ports).
    let wan = wan.stop().unwrap();
    let foreign: Vec<_> = common::ipv4_headers(&wan)
        .into_iter()
        .filter(|&(s, d, _, _)| IpAddr::V4(s) != gms_ip && IpAddr::V4(d) != gms_ip)
        .collect();
    assert!(foreign.is_empty(), "node traffic on the WAN: {foreign:?}");
}
