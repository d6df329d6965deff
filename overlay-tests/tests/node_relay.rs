//! Issue 10, the relay: two nodes behind NATs that no direct QUIC gets
//! through (configs/lab/nat-home.toml: the NAS behind the home router, the
//! laptop roamed to the cafe, whose NAT maps to random ports) reach each
//! other through the relay the GMS runs on the VPS. By name, ping, TCP and
//! UDP echo, set up from either side; both show `relay` for the other; a
//! capture on the VPS (the relay's host) never holds the application's
//! plaintext marker (with a control: the same capture sees it when it is
//! sent in the clear); a restart of the GMS (and so of its relay)
//! interrupts traffic for at most 5 s after it is back; and once the home
//! router forwards the NAS's carrier port, both nodes move to direct QUIC
//! without the flow noticing, and the relay forwards nothing more.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{OVERLAY_TOOLS, echo_send, need, peer_entry, udp_between};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use fpn_lab::{Lab, config_path};

const MARKER: &str = "fpn-relay-plaintext-marker-3e8a";
/// The relay's port (in-process in fpn-gms, the default).
const RELAY_PORT: u16 = 7720;

fn nat_home() -> Overlay {
    need(OVERLAY_TOOLS);
    let lab = Lab::up(config_path("nat-home.toml")).expect("nat-home lab");
    lab.roam("laptop", "homelan", "cafelan")
        .expect("roam laptop");
    let mut spec = Spec::new(
        &[(1, "home")],
        vec![
            NodeSpec::new("nas", Mode::Op, &[1]),
            NodeSpec::new("laptop", Mode::Op, &[1]),
        ],
    );
    spec.gms_link = "pub-vps".into();
    Overlay::start(lab, &spec).unwrap_or_else(|e| panic!("overlay start: {e}"))
}

/// `fpn-node ping` from `from` to `to` until it answers (bounded): the
/// first packets wait for the direct attempt to fail.
fn ping_until_answered(ov: &Overlay, from: &str, to: &str, bound: Duration) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let p = ov.ping(from, to, 2).unwrap();
        if p.ok && !p.rtts().is_empty() {
            return p.json;
        }
        assert!(
            t.elapsed() < bound,
            "{from} never reached {to} within {bound:?}: {:?}\n{}",
            p.output,
            ov.log_tails(40)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn nodes_behind_nats_reach_each_other_through_the_relay_which_sees_no_plaintext() {
    let ov = nat_home();
    let lab = ov.lab();
    let vps = lab.addr("vps", "pub-vps").unwrap();
    let relay = SocketAddr::new(vps, RELAY_PORT);
    let nas_overlay = ov.overlay_addr("nas").unwrap();
    let laptop_overlay = ov.overlay_addr("laptop").unwrap();
    let nas = Overlay::fqdn("nas");
    let laptop = Overlay::fqdn("laptop");

    let _echo_nas = common::echo_server(lab, "nas", 7001);
    let _echo_laptop = common::echo_server(lab, "laptop", 7001);
    let _echo_vps = common::echo_server(lab, "vps", 7001);
    // Everything the VPS sees, from before the first overlay packet.
    let cap = lab.capture("vps", "pub-vps", "ip").unwrap();

    // The laptop sets up first: ping by name answers, through the relay.
    let p = ping_until_answered(&ov, "laptop", "nas", Duration::from_secs(30));
    assert_eq!(p["action"], "encrypt", "{p}");
    assert_eq!(p["carrier"], "relay", "{p}");
    let e = peer_entry(&ov, "laptop", "nas");
    assert_eq!(e["carrier"], "relay", "laptop's status for nas: {e}");
    assert!(
        e["path"].as_str().unwrap_or("").starts_with("relay ("),
        "the path says why: {e}"
    );
    assert_eq!(e["addr"], relay.to_string(), "{e}");

    // TCP (the marker 400 times) and UDP by name, laptop -> nas ...
    let long = MARKER.repeat(400);
    let target = format!("{nas}:7001");
    for (udp, msg) in [(false, long.as_str()), (true, MARKER)] {
        let out = echo_send(lab, "laptop", &target, msg, udp);
        assert!(out.success(), "echo udp={udp} to {target}: {}", out.stderr);
        let mut w = out.stdout.split_whitespace();
        let server: SocketAddr = w.next().unwrap().parse().unwrap();
        assert_eq!(server.ip(), IpAddr::V4(nas_overlay));
        let seen: SocketAddr = w.next().unwrap().parse().unwrap();
        assert_eq!(seen.ip(), IpAddr::V4(laptop_overlay), "nas sees the laptop");
    }
    // ... and set up the other way, nas -> laptop.
    let target = format!("{laptop}:7001");
    for (udp, msg) in [(false, long.as_str()), (true, MARKER)] {
        let out = echo_send(lab, "nas", &target, msg, udp);
        assert!(out.success(), "echo udp={udp} to {target}: {}", out.stderr);
    }
    let e = peer_entry(&ov, "nas", "laptop");
    assert_eq!(e["carrier"], "relay", "nas's status for the laptop: {e}");
    let flows = ov.flows_with("laptop", "nas").unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f["proto"] == "tcp" && f["action"] == "encrypt" && f["carrier"] == "relay"),
        "no encrypted TCP flow through the relay: {flows:?}"
    );

    // The relay's host saw the echoes go through it (both NATs' public
    // addresses to UDP 7720) and never the marker.
    let home = lab.addr("gw", "pub-home").unwrap();
    let cafe = lab.addr("cafe", "pub-cafe").unwrap();
    let carried = 4 * long.len();
    let pcap = cap
        .wait_for(Duration::from_secs(5), |p| {
            udp_between(p, home, vps).1 + udp_between(p, cafe, vps).1 >= carried
        })
        .unwrap_or_else(|e| panic!("the relay's host never saw the relayed echoes: {e}"));
    assert!(
        !pcap.contains(MARKER.as_bytes()),
        "plaintext marker on the relay's host"
    );
    let st = ov.gms_json(&["status"]).unwrap();
    let c = &st["relay"]["counters"];
    assert!(
        c["frames_relayed"].as_u64().unwrap_or(0) > 20
            && c["bytes_relayed"].as_u64().unwrap_or(0) >= carried as u64,
        "relay counters: {st}"
    );
    assert_eq!(
        st["relay"]["nodes"].as_array().map(Vec::len),
        Some(2),
        "{st}"
    );
    // Control: the marker sent in the clear to the VPS is seen by this capture.
    let out = echo_send(
        lab,
        "laptop",
        &SocketAddr::new(vps, 7001).to_string(),
        MARKER,
        true,
    );
    assert!(out.success(), "{}", out.stderr);
    cap.wait_for(Duration::from_secs(5), |p| p.contains(MARKER.as_bytes()))
        .expect("the capture sees a plaintext marker");
    drop(cap);

    // The relay restarts (it runs in the GMS): a UDP probe every 100 ms
    // from the laptop to the NAS gets answers again within 5 s of the GMS
    // serving again.
    let probe = common::probe(
        &ov,
        "laptop",
        SocketAddr::new(IpAddr::V4(nas_overlay), 7001),
        Duration::from_secs(16),
    );
    std::thread::sleep(Duration::from_secs(2));
    ov.kill_gms();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    ov.start_gms().unwrap();
    let back = Instant::now();
    let answers = probe.join().unwrap();
    assert!(
        answers.iter().any(|&a| a < killed),
        "no answers before the restart"
    );
    let first = answers
        .iter()
        .find(|&&a| a > back)
        .unwrap_or_else(|| panic!("no answer after the relay came back\n{}", ov.log_tails(40)));
    let gap = first.duration_since(back);
    assert!(
        gap <= Duration::from_secs(5),
        "traffic resumed {gap:?} after the relay was back (bound 5 s)"
    );
    eprintln!("relay restart: traffic resumed {gap:?} after the GMS served again");

    // The home router forwards the NAS's carrier port now: the laptop's
    // background retries of direct QUIC (the NAS's address as the GMS sees
    // it, port 7718) get through, both leave the relay, and the probe's
    // flow goes on across the switch.
    let probe = common::probe(
        &ov,
        "laptop",
        SocketAddr::new(IpAddr::V4(nas_overlay), 7001),
        Duration::from_secs(45),
    );
    let forward = [
        "nft",
        "add",
        "rule",
        "ip",
        "fpnlab_nat",
        "prerouting",
        "iifname",
        "wan",
        "udp",
        "dport",
        "7718",
        "dnat",
        "to",
        "192.168.1.10:7718",
    ];
    // The laptop's retries already left a conntrack entry on the router
    // for this very 5-tuple (unreplied; its retransmissions keep it alive),
    // and NAT rules only apply to new connections: let unreplied UDP
    // entries end after 1 s (replied ones, the nodes' sessions, keep
    // their own timeout), so the next retry is new and forwarded.
    lab.exec_ok(
        "gw",
        ["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=1"],
    )
    .unwrap();
    lab.exec_ok("gw", forward).unwrap();
    let opened = Instant::now();
    let took = common::wait_carrier(&ov, "laptop", "nas", "quic", Duration::from_secs(42));
    common::wait_carrier(&ov, "nas", "laptop", "quic", Duration::from_secs(3));
    eprintln!("relay -> direct: {took:?} after the port forward");
    let answers = probe.join().unwrap();
    let worst = answers
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or(Duration::MAX);
    assert!(
        answers.len() > 300 && worst < Duration::from_secs(2),
        "{} answers, worst gap {worst:?} across the switch to direct",
        answers.len()
    );
    assert!(
        answers.iter().any(|&a| a > opened + took),
        "no answers after the switch to direct"
    );

    // Direct now: a transfer (a new TCP flow, its DPRP included) puts not
    // one frame through the relay; the links to it carry keep-alives only.
    let relayed = || {
        ov.gms_json(&["status"]).unwrap()["relay"]["counters"]["frames_relayed"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = relayed();
    let out = echo_send(lab, "laptop", &format!("{nas}:7001"), &long, false);
    assert!(out.success(), "echo over direct QUIC: {}", out.stderr);
    assert_eq!(peer_entry(&ov, "laptop", "nas")["carrier"], "quic");
    assert_eq!(
        relayed(),
        before,
        "frames went through the relay while direct"
    );
}
