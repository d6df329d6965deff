//! Issue 4 acceptance: two nodes in a shared group reach each other by name
//! (`b.home.fpn`) through their DNS stubs, over TCP (iperf3, 10 s), UDP and
//! ping, and a capture on the link between them never holds a plaintext
//! marker the application sent.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{echo_send, iperf_client, iperf_server, l4_between, overlay};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};

const MARKER: &str = "fpn-acceptance-plaintext-marker-5b1e";

#[test]
fn two_nodes_in_a_group_reach_each_other_by_name_and_the_wire_shows_no_plaintext() {
    let ov = overlay(&Spec::new(
        &[(1, "home")],
        vec![
            NodeSpec::new("a", Mode::Op, &[1]),
            NodeSpec::new("b", Mode::Op, &[1]),
        ],
    ));
    let lab = ov.lab();
    let b_overlay = ov.overlay_addr("b").unwrap();
    let a_pub = ov.underlay("a", "pub-a").unwrap();
    let b_pub = ov.underlay("b", "pub-b").unwrap();
    let b = Overlay::fqdn("b");

    // Names: the GMS's DDNS has b's public address (where its session comes
    // from); a's stub (a's resolv.conf) answers b's overlay address.
    let gms_ip = ov.gms_addr().ip().to_string();
    let ddns = lab
        .exec_ok(
            "a",
            [
                "dig",
                "+short",
                "+time=2",
                "+tries=2",
                &format!("@{gms_ip}"),
                &b,
                "A",
            ],
        )
        .unwrap();
    assert_eq!(ddns.trim(), b_pub.to_string(), "GMS DDNS answer for {b}");
    let stub = lab
        .exec_ok("a", ["dig", "+short", "+time=2", "+tries=2", &b, "A"])
        .unwrap();
    assert_eq!(
        stub.trim(),
        b_overlay.to_string(),
        "a's DNS stub answer for {b}"
    );

    let _echo = common::echo_server(lab, "b", 7001);
    let _iperf = iperf_server(lab, "b");
    // Everything on b's public link, from before the first overlay packet.
    // Full packets, so the marker search sees every byte; the 10 s transfer
    // runs after it (its gigabytes would not help the search).
    let cap = lab.capture("inet", "pub-b", "ip").unwrap();

    // ping by name (the system's ping, resolving through the stub)
    let ping = lab.exec("a", ["ping", "-c", "3", "-W", "2", &b]).unwrap();
    assert!(ping.success(), "ping {b}: {}{}", ping.stdout, ping.stderr);
    // The name has both overlay addresses; the host's resolver picks
    // (glibc prefers the IPv6 one, a ULA, to IPv4; note 59).
    let b6 = ov.status("b").unwrap()["overlay6"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        ping.stdout.contains(&b_overlay.to_string())
            || (!b6.is_empty() && ping.stdout.contains(&b6)),
        "{}",
        ping.stdout
    );

    // fpn-node ping: action and carrier
    let p = ov.ping("a", "b", 3).unwrap();
    assert!(p.ok, "fpn-node ping b: {:?}", p.output);
    assert_eq!(p.action(), "encrypt", "{}", p.json);
    // The peer is on the native path, and so is ICMP echo (the echo id
    // stands for the ports; native_icmp.rs checks the wire).
    assert_eq!(p.carrier(), "native", "{}", p.json);
    assert_eq!(p.json["path"], "native", "{}", p.json);
    assert_eq!(p.rtts().len(), 3, "{}", p.json);

    // TCP (the marker 400 times, ~15 kB) and UDP (once) by name, echoed back.
    let target = format!("{b}:7001");
    let long = MARKER.repeat(400);
    for (udp, msg) in [(false, long.as_str()), (true, MARKER)] {
        let out = echo_send(lab, "a", &target, msg, udp);
        assert!(out.success(), "echo udp={udp} to {target}: {}", out.stderr);
        let mut words = out.stdout.split_whitespace();
        let server: std::net::SocketAddr = words.next().unwrap().parse().unwrap();
        assert_eq!(
            server.ip(),
            IpAddr::V4(b_overlay),
            "{b} resolved to b's overlay address"
        );
        let seen: std::net::SocketAddr = words.next().unwrap().parse().unwrap();
        assert_eq!(
            seen.ip(),
            IpAddr::V4(ov.overlay_addr("a").unwrap()),
            "b sees a's overlay address"
        );
    }

    // What crossed b's link: the marker's bytes, both ways, between the
    // public addresses (natively: TCP and UDP with the application's ports),
    // and not one copy of the marker itself.
    let carried = 2 * long.len();
    let pcap = cap
        .wait_for(Duration::from_secs(5), |p| {
            l4_between(p, a_pub, b_pub).1 >= carried
        })
        .unwrap_or_else(|e| {
            panic!("the capture never saw the echo between {a_pub} and {b_pub}: {e}")
        });
    let (packets, bytes) = l4_between(&pcap, a_pub, b_pub);
    assert!(
        packets >= 10 && bytes >= carried,
        "{packets} packets, {bytes} bytes"
    );
    assert!(
        !pcap.contains(MARKER.as_bytes()),
        "plaintext marker on the wire"
    );
    let leaked = common::ipv4_headers(&pcap)
        .into_iter()
        .filter(|(s, d, _, _)| s.octets()[..2] == [100, 64] || d.octets()[..2] == [100, 64])
        .count();
    assert_eq!(leaked, 0, "overlay-addressed packets on the underlay");

    // Control: the same marker sent outside the overlay (underlay to
    // underlay) is seen by this very capture, so the search above can fail.
    let out = echo_send(lab, "a", &format!("{b_pub}:7001"), MARKER, true);
    assert!(out.success(), "{}", out.stderr);
    cap.wait_for(Duration::from_secs(5), |p| p.contains(MARKER.as_bytes()))
        .expect("the capture sees a plaintext marker");
    drop(cap);

    // TCP for 10 s, by name.
    let before = flow_bytes(&ov);
    let report = iperf_client(lab, "a", &b, 10);
    let received = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(received > 1_000_000.0, "iperf3 moved only {received} bytes");
    let flows = ov.flows_with("a", "b").unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f["action"] == "encrypt" && f["carrier"] == "native" && f["proto"] == "tcp"),
        "a's status shows no encrypted TCP flow to b on the native path: {flows:?}"
    );
    // UDP for 3 s at 20 Mbit/s, by name: it arrives (a generous loss bound;
    // the rate is far below what the overlay carries).
    let out = lab
        .command(
            "a",
            ["iperf3", "-c", &b, "-u", "-b", "20M", "-t", "3", "-J"],
        )
        .timeout(Duration::from_secs(40))
        .output()
        .unwrap();
    let udp: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    assert!(out.success(), "iperf3 -u: {} {}", udp["error"], out.stderr);
    let sum = &udp["end"]["sum"];
    let lost = sum["lost_percent"].as_f64().unwrap_or(100.0);
    assert!(
        sum["packets"].as_u64().unwrap_or(0) > 1000,
        "iperf3 -u: {sum}"
    );
    assert!(
        lost < 10.0,
        "iperf3 -u lost {lost}% of its datagrams: {sum}"
    );
    assert!(
        ov.flows_with("a", "b")
            .unwrap()
            .iter()
            .any(|f| f["proto"] == "udp" && f["dport"] == 5201 && f["action"] == "encrypt"),
        "no encrypted UDP flow to b:5201"
    );

    let moved = flow_bytes(&ov) - before;
    assert!(
        moved >= received,
        "a's flows to b count {moved} bytes, iperf3 moved {received}"
    );
}

/// Bytes a's status counts in its flows with b (out and in).
fn flow_bytes(ov: &Overlay) -> f64 {
    ov.flows_with("a", "b")
        .unwrap()
        .iter()
        .map(|f| f["bytes_out"].as_f64().unwrap_or(0.0) + f["bytes_in"].as_f64().unwrap_or(0.0))
        .sum()
}
