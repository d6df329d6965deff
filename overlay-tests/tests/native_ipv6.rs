//! Issue 14 acceptance, the native carrier over an IPv6-only underlay
//! (design note 63): on configs/lab/ipv6-only.toml (no IPv4 anywhere) the
//! peers' path is native, and flows of both overlay families cross it as
//! IPv6 packets between the two nodes' addresses with the application's
//! own protocol and ports (an IPv4 overlay flow changes family on the wire
//! and back), their payloads sealed by PCCOM. A capture on the router
//! shows it, with a control that the marker is findable there; a 10 s
//! iperf3 by name runs native with no QUIC in between.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{connected_pair, echo_send, iperf_server, ipv6_only, l4_any, marked_flow};
use fpn_lab::overlay::Overlay;

const MARKER: &str = "fpn-native6-plaintext-marker-7b19";
/// The QUIC carrier's port (the lab's default).
const QUIC_PORT: u16 = 7718;
/// Bound for the first native path.
const NATIVE_UP: Duration = Duration::from_secs(10);
/// ICMPv6's protocol number.
const ICMPV6: u8 = 58;

fn counter(ov: &Overlay, node: &str, name: &str) -> u64 {
    ov.status(node).unwrap()["counters"][name]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn on_an_ipv6_only_underlay_both_overlay_families_run_natively_as_ipv6_packets() {
    let ov = ipv6_only();
    let lab = ov.lab();
    let (a_pub, b_pub, b4, b6, _echo) = connected_pair(&ov);
    assert!(a_pub.is_ipv6() && b_pub.is_ipv6(), "{a_pub} {b_pub}");
    let _iperf = iperf_server(lab, "b");

    let p = ov.ping("a", "b", 2).unwrap();
    assert!(p.ok, "a -> b: {:?}", p.output);
    common::wait_carrier(&ov, "a", "b", "native", NATIVE_UP);
    common::wait_carrier(&ov, "b", "a", "native", NATIVE_UP);
    let peer = common::peer_entry(&ov, "a", "b");
    assert_eq!(peer["path"], "native", "{peer}");
    let drops = |n: &str| {
        [
            "native_in_unknown",
            "native_in_wrong_source",
            "native_in_rejected",
        ]
        .map(|c| counter(&ov, n, c))
    };
    let drops_before = [drops("a"), drops("b")];

    // Everything between a and b, on the router's side of b's link.
    let cap = lab
        .capture("inet", "pub-b", &format!("host {a_pub} and host {b_pub}"))
        .unwrap();
    let mut sports = Vec::new();
    for to in [IpAddr::V4(b4), IpAddr::V6(b6)] {
        let (answers, sport) = marked_flow(&ov, "a", SocketAddr::new(to, 7002), MARKER);
        assert!(
            answers >= 3,
            "to {to}: only {answers} of 5 marker echoes came back"
        );
        sports.push(sport);
    }
    let ping = lab
        .exec("a", ["ping", "-c", "3", "-W", "2", &b4.to_string()])
        .unwrap();
    assert!(ping.success(), "ping {b4}: {}{}", ping.stdout, ping.stderr);
    let ping = lab
        .exec("a", ["ping", "-6", "-c", "3", "-W", "2", &b6.to_string()])
        .unwrap();
    assert!(
        ping.success(),
        "ping -6 {b6}: {}{}",
        ping.stdout,
        ping.stderr
    );
    // Both marked flows on the wire as native UDP between the underlay
    // addresses with their own ports, both ways: the IPv4 one too.
    let pcap = cap
        .wait_for(Duration::from_secs(5), |p| {
            let l4 = l4_any(p);
            sports.iter().all(|&sp| {
                l4.contains(&(a_pub, b_pub, 17, sp, 7002))
                    && l4.contains(&(b_pub, a_pub, 17, 7002, sp))
            })
        })
        .unwrap_or_else(|e| {
            panic!("the marked flows never went native over IPv6 ({a_pub} -> {b_pub}:7002, source ports {sports:?}): {e}")
        });
    assert!(
        !pcap.contains(MARKER.as_bytes()),
        "plaintext marker on the wire"
    );
    // The echoes of both families crossed as ICMPv6 echoes between the
    // underlay addresses (requests a -> b, replies b -> a).
    let l4 = l4_any(&pcap);
    assert!(
        l4.iter().all(|x| x.0.is_ipv6()),
        "IPv4 on an IPv6-only link"
    );
    let echoes = |s, d, ty| {
        l4.iter()
            .filter(|x| (x.0, x.1, x.2, x.3) == (s, d, ICMPV6, ty))
            .count()
    };
    assert!(
        echoes(a_pub, b_pub, 128) >= 4 && echoes(b_pub, a_pub, 129) >= 4,
        "native echoes: {:?}",
        l4.iter().filter(|x| x.2 == ICMPV6).collect::<Vec<_>>()
    );
    // Control: the marker sent outside the overlay shows on this capture.
    let out = echo_send(
        lab,
        "a",
        &SocketAddr::new(b_pub, 7002).to_string(),
        MARKER,
        true,
    );
    assert!(out.success(), "{}", out.stderr);
    cap.wait_for(Duration::from_secs(5), |p| p.contains(MARKER.as_bytes()))
        .expect("the capture sees a plaintext marker");
    drop(cap);
    // a's status: both marked flows encrypted and native.
    let flows = ov.flows_with("a", "b").unwrap();
    for to in [b4.to_string(), b6.to_string()] {
        assert!(
            flows.iter().any(|f| f["dst"] == to.as_str()
                && f["proto"] == "udp"
                && f["dport"] == 7002
                && f["action"] == "encrypt"
                && f["carrier"] == "native"),
            "no encrypted native UDP flow to {to}:7002: {flows:?}"
        );
    }

    // A 10 s TCP transfer by name: native, and (almost) no QUIC between
    // the two while it runs.
    let quic_cap = lab
        .capture(
            "inet",
            "pub-b",
            &format!("udp port {QUIC_PORT} and host {a_pub} and host {b_pub}"),
        )
        .unwrap();
    let tcp_cap = lab
        .capture(
            "inet",
            "pub-b",
            &format!("tcp port 5201 and host {a_pub} and host {b_pub}"),
        )
        .unwrap();
    let b = Overlay::fqdn("b");
    let out_before = counter(&ov, "a", "native_out");
    let report = common::iperf_client(lab, "a", &b, 10);
    let received = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(received > 1_000_000.0, "iperf3 moved only {received} bytes");
    let quic = quic_cap.stop().unwrap();
    let quic_bytes: usize = quic
        .packets()
        .iter()
        .filter_map(|p| p.ip())
        .map(<[u8]>::len)
        .sum();
    assert!(
        (quic_bytes as f64) < received * 0.05,
        "{quic_bytes} bytes of QUIC between a and b during a native transfer of {received}"
    );
    let tcp = tcp_cap.stop().unwrap();
    let tcp_packets = l4_any(&tcp)
        .iter()
        .filter(|x| (x.0, x.1, x.2, x.4) == (a_pub, b_pub, 6, 5201))
        .count();
    // Half the MTU-sized packets the bytes need at least: tcpdump drops
    // some under a full-speed transfer (the counter below is exact).
    assert!(
        tcp_packets as f64 > received / 1500.0 / 2.0,
        "{tcp_packets} native TCP packets {a_pub} -> {b_pub}:5201 for {received} bytes"
    );
    let sent = counter(&ov, "a", "native_out") - out_before;
    assert!(
        sent as f64 > received / 1500.0,
        "a sent {sent} native packets for {received} bytes"
    );
    assert!(
        ov.flows_with("a", "b")
            .unwrap()
            .iter()
            .any(|f| f["proto"] == "tcp"
                && f["dport"] == 5201
                && f["action"] == "encrypt"
                && f["carrier"] == "native"),
        "a shows no encrypted native TCP flow to b:5201"
    );
    // Flows started on the native path were negotiated on it (UDP 7717
    // over IPv6), and nothing unknown or forged came in.
    assert!(
        counter(&ov, "a", "dprp_native_out") > 0,
        "no DPRP on the IP path from a"
    );
    assert!(counter(&ov, "b", "dprp_native_in") > 0);
    for (n, before) in ["a", "b"].into_iter().zip(drops_before) {
        assert_eq!(
            drops(n),
            before,
            "{n}: native_in_unknown, _wrong_source, _rejected"
        );
    }
}
