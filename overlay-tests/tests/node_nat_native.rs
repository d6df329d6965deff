//! Issue 10, the native path through NATs (docs/PROTOCOL.md "NAT
//! binding"): two nodes in two homes, each behind its router's NAT, carry a
//! TCP flow as native PCCOM packets, the application's own ports between
//! the two routers' public addresses.
//!
//! - configs/lab/nat-matrix-eim.toml: port-preserving, endpoint-independent
//!   NATs on both sides: after its first round trips (on QUIC, with native
//!   copies that open each side's router) the flow runs natively through
//!   both NATs, no plaintext.
//! - configs/lab/nat-matrix-adm.toml: random ports (address-dependent
//!   mapping) on b's router: the binding step maps the random port back to
//!   b's flow and the transfer runs natively.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{OVERLAY_TOOLS, echo_send, need, peer_entry};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use fpn_lab::{Lab, config_path};

const MARKER: &str = "fpn-natnative-plaintext-marker-4e1b";
const QUIC_PORT: u16 = 7718;

fn start(topology: &str) -> Overlay {
    need(OVERLAY_TOOLS);
    let lab = Lab::up(config_path(topology)).expect("lab");
    let nodes = ["a", "b"]
        .map(|n| NodeSpec {
            host: n.into(),
            ..NodeSpec::new(n, Mode::Op, &[1])
        })
        .to_vec();
    Overlay::start(lab, &Spec::new(&[(1, "home")], nodes))
        .unwrap_or_else(|e| panic!("overlay start: {e}"))
}

fn counter(ov: &Overlay, node: &str, name: &str) -> u64 {
    ov.status(node).unwrap()["counters"][name]
        .as_u64()
        .unwrap_or(0)
}

/// (src, dst, protocol, sport, dport) of an IPv4 packet.
type L4 = (IpAddr, IpAddr, u8, u16, u16);

/// The [`L4`] of the IPv4 packets of a capture.
fn l4(pcap: &fpn_lab::Pcap) -> Vec<L4> {
    pcap.packets()
        .iter()
        .filter_map(|p| p.ip())
        .filter(|ip| ip.len() >= 20 && ip[0] >> 4 == 4)
        .map(|ip| {
            let src = IpAddr::from([ip[12], ip[13], ip[14], ip[15]]);
            let dst = IpAddr::from([ip[16], ip[17], ip[18], ip[19]]);
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let (sp, dp) = match (ip[9], ip.get(ihl..ihl + 4)) {
                (6 | 17, Some(p)) => (
                    u16::from_be_bytes([p[0], p[1]]),
                    u16::from_be_bytes([p[2], p[3]]),
                ),
                _ => (0, 0),
            };
            (src, dst, ip[9], sp, dp)
        })
        .collect()
}

/// TCP echo a -> b:7001 (a long marker) with a capture on the internet
/// side of b's router; returns the capture's packets between the routers.
fn transfer(ov: &Overlay) -> (Vec<L4>, bool) {
    let lab = ov.lab();
    let (gwa, gwb) = (
        lab.addr("gwa", "pub-a").unwrap(),
        lab.addr("gwb", "pub-b").unwrap(),
    );
    let _echo = common::echo_server(lab, "b", 7001);
    // A first flow, so that the second one below starts with both paths
    // settled (the path machines go native after the first contact).
    let cap = lab
        .capture("inet", "pub-b", &format!("host {gwa} and host {gwb}"))
        .unwrap();
    let out = echo_send(
        lab,
        "a",
        &format!("{}:7001", Overlay::fqdn("b")),
        &MARKER.repeat(200),
        false,
    );
    assert!(out.success(), "TCP echo a -> b: {}", out.stderr);
    let pcap = cap.stop().unwrap();
    let marker = pcap.contains(MARKER.as_bytes());
    (l4(&pcap), marker)
}

#[test]
fn through_two_port_preserving_nats_a_tcp_flow_goes_native_after_its_first_round_trips() {
    let ov = start("nat-matrix-eim.toml");
    let lab = ov.lab();
    let (gwa, gwb) = (
        lab.addr("gwa", "pub-a").unwrap(),
        lab.addr("gwb", "pub-b").unwrap(),
    );
    common::ping_until_answered(&ov, "a", &Overlay::fqdn("b"), Duration::from_secs(30));
    common::wait_carrier(&ov, "a", "b", "native", Duration::from_secs(20));
    common::wait_carrier(&ov, "b", "a", "native", Duration::from_secs(20));
    for (n, p) in [("a", "b"), ("b", "a")] {
        let e = peer_entry(&ov, n, p);
        assert_eq!(e["path"], "native via NAT", "{n}: {e}");
    }
    let (pkts, marker) = transfer(&ov);
    assert!(!marker, "plaintext marker on the internet side");
    // The application's port behind the routers' addresses, both ways.
    let tcp_to = pkts
        .iter()
        .filter(|&&(s, d, pr, _, dp)| s == gwa && d == gwb && pr == 6 && dp == 7001)
        .count();
    let tcp_from = pkts
        .iter()
        .filter(|&&(s, d, pr, sp, _)| s == gwb && d == gwa && pr == 6 && sp == 7001)
        .count();
    let quic = pkts
        .iter()
        .filter(|&&(_, _, pr, sp, dp)| pr == 17 && (sp == QUIC_PORT || dp == QUIC_PORT))
        .count();
    eprintln!("native TCP {tcp_to} -> / {tcp_from} <-, QUIC {quic}");
    for n in ["a", "b"] {
        let st = ov.status(n).unwrap();
        eprintln!("{n}: {}", st["counters"]);
    }
    // The flow goes natively through both NATs once each side heard the
    // other's packet of it (each end's native copies, never of the SYN or
    // SYN-ACK, open its own router). Until then its packets ride QUIC: the
    // handshake and the first round trips, about 15 datagrams with the
    // copies' twins and a keep-alive (one run: 11 -> / 10 <- native, 15
    // QUIC). A transfer on QUIC alone would be 40 or more.
    assert!(
        tcp_to >= 5 && tcp_from >= 5,
        "{tcp_to} / {tcp_from}: {pkts:?}"
    );
    assert!(quic <= 25, "{quic} QUIC datagrams during the transfer");
    assert!(counter(&ov, "a", "native_in") > 0);
    assert!(counter(&ov, "b", "native_in") > 0);
}

#[test]
fn with_random_ports_on_one_side_the_binding_step_carries_the_flow_natively() {
    let ov = start("nat-matrix-adm.toml");
    common::ping_until_answered(&ov, "a", &Overlay::fqdn("b"), Duration::from_secs(40));
    // Give the path machines time to probe (and b's NAT mapping of 7717 to
    // be learnt by a from b's probes).
    std::thread::sleep(Duration::from_secs(5));
    let (pkts, marker) = transfer(&ov);
    assert!(!marker, "plaintext marker on the internet side");
    let native_tcp = pkts.iter().filter(|&&(_, _, pr, _, _)| pr == 6).count();
    let ca = peer_entry(&ov, "a", "b");
    let cb = peer_entry(&ov, "b", "a");
    let bindings = counter(&ov, "a", "native_bindings") + counter(&ov, "b", "native_bindings");
    eprintln!(
        "a: {} / {}, b: {} / {}, native TCP {native_tcp}, bindings {bindings}",
        ca["carrier"], ca["path"], cb["carrier"], cb["path"]
    );
    // Which one happened: native through the random port, by the binding
    // step (a binds the port b's router chose for the flow), not a
    // fallback. The few QUIC-carried first packets are the wait for a
    // packet of the flow from the NAT'ed side.
    assert_eq!(ca["carrier"], "native", "{ca}");
    assert_eq!(cb["carrier"], "native", "{cb}");
    assert!(bindings >= 1, "no binding");
    assert!(native_tcp >= 10, "only {native_tcp} native TCP packets");
    // b's segments came in at a natively, from the random port.
    assert!(counter(&ov, "a", "native_in") >= 5);
}
