//! Issue 13, cheap new flows (docs/DESIGN-NOTES.md note 64,
//! docs/PROTOCOL.md "Fast open"), with the real binaries: once two nodes
//! negotiated a flow, a new flow between them needs no negotiation. Its
//! first datagram is answered at its first send; on the wire there is a
//! FOP (with the flow's first datagram inside, sealed: note 71), the same
//! FOP again marked steered once the opener steers the flow (note 75) and
//! a FOK on DPRP's port, and no DDE; the flow's packets go native once the peer
//! confirmed, PCCOM-sealed (a capture shows no marker, and
//! the same marker sent outside the overlay shows). The same through two
//! NATs; and with `fast_open = false` every flow is negotiated again.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{OVERLAY_TOOLS, echo_send, l4_any, marked_flow, need};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use fpn_lab::{Lab, config_path};

const MARKER: &str = "fpn-fastopen-plaintext-marker-3d5a";
/// The echo server's port on b.
const ECHO: u16 = 7009;
/// DPRP's port.
const DPRP: u16 = 7717;
/// DPRP message types (docs/PROTOCOL.md).
const DDE: u8 = 1;
const FOP: u8 = 7;
const FOK: u8 = 8;

fn counter(ov: &Overlay, node: &str, name: &str) -> u64 {
    ov.status(node).unwrap()["counters"][name]
        .as_u64()
        .unwrap_or(0)
}

/// The DPRP messages of an IPv4 capture: (source, destination, type).
fn dprp_messages(pcap: &fpn_lab::Pcap) -> Vec<(IpAddr, IpAddr, u8)> {
    pcap.packets()
        .iter()
        .filter_map(|p| p.ip())
        .filter(|ip| ip.len() >= 20 && ip[0] >> 4 == 4 && ip[9] == 17)
        .filter_map(|ip| {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let udp = ip.get(ihl..)?;
            let dport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
            let sport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
            // Either end's DPRP port (answers go back to the sender's).
            if dport != DPRP && sport != DPRP {
                return None;
            }
            let payload = udp.get(8..)?;
            (payload.first() == Some(&1)).then(|| {
                (
                    IpAddr::from([ip[12], ip[13], ip[14], ip[15]]),
                    IpAddr::from([ip[16], ip[17], ip[18], ip[19]]),
                    payload[1],
                )
            })
        })
        .collect()
}

/// The FOPs of an IPv4 capture that carry their flow's first packet
/// (design note 71): whether each is marked steered, and the sealed packet
/// inside.
fn firsts_inside_fops(pcap: &fpn_lab::Pcap) -> Vec<(bool, Vec<u8>)> {
    use fpn_proto::dprp::msg::Message;
    pcap.packets()
        .iter()
        .filter_map(|p| p.ip())
        .filter(|ip| ip.len() >= 28 && ip[0] >> 4 == 4 && ip[9] == 17)
        .filter_map(|ip| {
            let udp = ip.get(usize::from(ip[0] & 0x0f) * 4..)?;
            match Message::decode(udp.get(8..)?) {
                Ok(Message::Fop(f)) => f.first.map(|f| (f.steered, f.packet)),
                _ => None,
            }
        })
        .collect()
}

/// One datagram from a fresh socket in `host` to `to`, sent once: whether
/// the echo came back (within `wait`), and after how long.
/// Sends one datagram from a new port of `host` to `to`: whether its echo
/// came within `wait`, after how long, and from which port it was sent.
fn first_datagram(
    ov: &Overlay,
    host: &str,
    to: SocketAddr,
    wait: Duration,
) -> (bool, Duration, u16) {
    ov.lab()
        .run_in(host, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let port = s.local_addr().unwrap().port();
            s.set_read_timeout(Some(wait)).unwrap();
            let t = Instant::now();
            s.send_to(b"first of a new flow", to).unwrap();
            let mut buf = [0u8; 1500];
            let ok = s
                .recv_from(&mut buf)
                .is_ok_and(|(n, _)| buf[..n].ends_with(b"first of a new flow"));
            (ok, t.elapsed(), port)
        })
        .unwrap()
}

#[test]
fn a_new_flow_between_negotiated_nodes_opens_at_once_and_runs_natively_sealed() {
    let ov = common::two_nodes();
    let lab = ov.lab();
    let a_pub = ov.underlay("a", "pub-a").unwrap();
    let b_pub = ov.underlay("b", "pub-b").unwrap();
    let _echo = common::echo_server(lab, "b", ECHO);
    let p = ov.ping("a", "b", 2).unwrap();
    assert!(p.ok, "a -> b: {:?}", p.output);
    common::wait_native(&ov, "a", "b");
    common::wait_native(&ov, "b", "a");
    assert!(
        counter(&ov, "a", "dprp_epochs") >= 1,
        "the ping's negotiation left no epoch"
    );
    let started = counter(&ov, "a", "dprp_started");
    let opened = counter(&ov, "a", "dprp_fast_opened");
    let accepted = counter(&ov, "b", "dprp_fast_accepted");

    let cap = lab
        .capture("inet", "pub-b", &format!("host {a_pub} and host {b_pub}"))
        .unwrap();
    let to = SocketAddr::new(ov.overlay_addr("b").unwrap().into(), ECHO);
    let (answered, took, first_port) = first_datagram(&ov, "a", to, Duration::from_secs(3));
    assert!(
        answered,
        "the first datagram of a fast-opened flow was lost"
    );
    eprintln!("first datagram of a new flow answered after {took:?}");
    let (answers, sport) = marked_flow(&ov, "a", to, MARKER);
    assert!(answers >= 3, "only {answers} of 5 marker echoes came back");
    let pcap = cap
        .wait_for(Duration::from_secs(5), |p| {
            l4_any(p).iter().any(|&(s, d, pr, sp, dp)| {
                s == a_pub && d == b_pub && pr == 17 && sp == sport && dp == ECHO
            })
        })
        .unwrap_or_else(|e| panic!("the fast-opened flow never went native: {e}"));
    assert!(
        !pcap.contains(MARKER.as_bytes()),
        "plaintext marker on the wire"
    );
    // The echo of the lone first datagram went natively too: b held it
    // for a's steered notice instead of sending it over QUIC (note 76).
    let echoed_natively = |p: &fpn_lab::Pcap| {
        l4_any(p).iter().any(|&(s, d, pr, sp, dp)| {
            s == b_pub && d == a_pub && pr == 17 && sp == ECHO && dp == first_port
        })
    };
    assert!(
        echoed_natively(&pcap),
        "the first datagram's echo did not go natively (waits {}, timeouts {})",
        counter(&ov, "b", "native_notice_waits"),
        counter(&ov, "b", "native_notice_timeouts")
    );
    // Two new flows: two FOPs from a on the IP path, two FOKs from b, and
    // not one DDE.
    let msgs = dprp_messages(&pcap);
    let count = |src: IpAddr, t: u8| msgs.iter().filter(|m| m.0 == src && m.2 == t).count();
    assert!(count(a_pub, FOP) >= 2, "FOPs on the wire: {msgs:?}");
    assert!(count(b_pub, FOK) >= 2, "FOKs on the wire: {msgs:?}");
    assert_eq!(count(a_pub, DDE) + count(b_pub, DDE), 0, "a DDE: {msgs:?}");
    // Each UDP flow's first datagram rode inside its FOP (note 71), sealed:
    // the marked flow's first marker is one of them, and the marker shows
    // nowhere on the wire (above). The FOP left before a steered the flow
    // (not marked), and went again, marked, once it did (note 75).
    let firsts = firsts_inside_fops(&pcap);
    let unmarked: Vec<&Vec<u8>> = firsts.iter().filter(|f| !f.0).map(|f| &f.1).collect();
    let marked: Vec<&Vec<u8>> = firsts.iter().filter(|f| f.0).map(|f| &f.1).collect();
    assert!(
        unmarked.len() >= 2 && marked.len() >= 2,
        "{} FOPs with a first packet inside, {} marked steered: {msgs:?}",
        firsts.len(),
        marked.len()
    );
    for m in &marked {
        assert!(unmarked.contains(m), "a steered notice of a FOP never sent");
    }
    assert!(counter(&ov, "a", "dprp_fast_first_sent") >= 2);
    assert!(counter(&ov, "b", "dprp_fast_first_received") >= 2);
    assert!(counter(&ov, "a", "dprp_fast_steered_sent") >= 2);
    assert!(counter(&ov, "b", "dprp_fast_steered_received") >= 2);
    for (_, f) in &firsts {
        let p = fpn_proto::packet::Packet::parse(&f[..]).expect("an IP packet inside the FOP");
        assert_eq!(p.flow_id().dst_port, ECHO, "{:?}", p.flow_id());
    }
    assert_eq!(counter(&ov, "a", "dprp_started"), started, "a negotiated");
    assert!(counter(&ov, "a", "dprp_fast_opened") >= opened + 2);
    assert!(counter(&ov, "a", "dprp_fast_confirmed") >= 2);
    assert!(counter(&ov, "b", "dprp_fast_accepted") >= accepted + 2);
    assert_eq!(counter(&ov, "a", "dprp_fast_fallbacks"), 0);
    // Control: the marker sent outside the overlay shows on this capture.
    let out = echo_send(lab, "a", &format!("{b_pub}:{ECHO}"), MARKER, true);
    assert!(out.success(), "{}", out.stderr);
    cap.wait_for(Duration::from_secs(5), |p| p.contains(MARKER.as_bytes()))
        .expect("the capture sees a plaintext marker");
}

#[test]
fn through_two_nats_a_new_flow_is_fast_opened() {
    need(OVERLAY_TOOLS);
    let lab = Lab::up(config_path("nat-matrix-eim.toml")).expect("lab");
    let nodes = ["a", "b"]
        .map(|n| NodeSpec {
            host: n.into(),
            ..NodeSpec::new(n, Mode::Op, &[1])
        })
        .to_vec();
    let ov = Overlay::start(lab, &Spec::new(&[(1, "home")], nodes))
        .unwrap_or_else(|e| panic!("overlay start: {e}"));
    let _echo = common::echo_server(ov.lab(), "b", ECHO);
    let b = Overlay::fqdn("b");
    common::ping_until_answered(&ov, "a", &b, Duration::from_secs(30));
    let started = counter(&ov, "a", "dprp_started");
    let to = SocketAddr::new(ov.overlay_addr("b").unwrap().into(), ECHO);
    let (answered, took, _) = first_datagram(&ov, "a", to, Duration::from_secs(3));
    assert!(
        answered,
        "the first datagram was lost\n{}",
        ov.log_tails(40)
    );
    eprintln!("first datagram through the NATs answered after {took:?}");
    let (answers, _) = marked_flow(&ov, "a", to, MARKER);
    assert!(answers >= 3, "only {answers} of 5 echoes came back");
    assert_eq!(counter(&ov, "a", "dprp_started"), started, "a negotiated");
    assert!(counter(&ov, "a", "dprp_fast_opened") >= 2);
    assert!(counter(&ov, "a", "dprp_fast_confirmed") >= 2);
    assert!(counter(&ov, "b", "dprp_fast_accepted") >= 2);
}

#[test]
fn with_fast_open_off_every_new_flow_is_negotiated() {
    need(OVERLAY_TOOLS);
    let mut spec = Spec::new(
        &[(1, "home")],
        vec![
            NodeSpec::new("a", Mode::Op, &[1]),
            NodeSpec::new("b", Mode::Op, &[1]),
        ],
    );
    spec.node_config = "fast_open = false\n".into();
    let ov = common::overlay(&spec);
    let _echo = common::echo_server(ov.lab(), "b", ECHO);
    let p = ov.ping("a", "b", 2).unwrap();
    assert!(p.ok, "a -> b: {:?}", p.output);
    let started = counter(&ov, "a", "dprp_started");
    let to = SocketAddr::new(ov.overlay_addr("b").unwrap().into(), ECHO);
    let (answered, _, _) = first_datagram(&ov, "a", to, Duration::from_secs(3));
    assert!(answered, "the first datagram was lost");
    assert_eq!(counter(&ov, "a", "dprp_started"), started + 1);
    assert_eq!(counter(&ov, "a", "dprp_fast_opened"), 0);
    assert_eq!(counter(&ov, "a", "dprp_epochs"), 0);
}

/// One datagram from a socket bound to `sport` in `host` to `to`, sent
/// once: whether its echo came back within `wait`.
fn datagram_from_port(
    ov: &Overlay,
    host: &str,
    sport: u16,
    to: SocketAddr,
    wait: Duration,
) -> bool {
    datagrams_from_port(ov, host, sport, to, 1, wait) == 1
}

/// UDP to port 7717 on the wire is DPRP's, so a flow with that port at
/// either end (a server on it, or a client given it as an ephemeral port:
/// `bench/overlay.sh`'s storm widens the range and met it within seconds)
/// takes QUIC between native nodes: two queries from one socket on a's
/// port 7717, and two to a server on b's port 7717, are each answered at
/// their first send, no DPRP message is refused, and no packet of theirs
/// goes natively (`native_out` does not move; `quic_dprp_port` does).
/// Natively, their packets towards the 7717 end were taken for DPRP
/// messages and refused (`control_errors`), and the queries lost; a flow's
/// first datagram rides inside its FOP, which is DPRP's own, hence two.
#[test]
fn a_udp_flow_on_dprp_s_port_is_answered_between_native_nodes() {
    let ov = common::two_nodes();
    let lab = ov.lab();
    let _echo = common::echo_server(lab, "b", ECHO);
    let _echo7717 = common::echo_server(lab, "b", DPRP);
    let p = ov.ping("a", "b", 2).unwrap();
    assert!(p.ok, "a -> b: {:?}", p.output);
    common::wait_native(&ov, "a", "b");
    common::wait_native(&ov, "b", "a");
    let errors = |ov: &Overlay| {
        (
            counter(ov, "a", "control_errors"),
            counter(ov, "b", "control_errors"),
        )
    };
    let before = errors(&ov);
    let native_out = counter(&ov, "a", "native_out");
    let b = IpAddr::from(ov.overlay_addr("b").unwrap());
    let wait = Duration::from_secs(3);
    for (from, to) in [(DPRP, ECHO), (40_123, DPRP)] {
        assert_eq!(
            datagrams_from_port(&ov, "a", from, SocketAddr::new(b, to), 2, wait),
            2,
            "queries from port {from} to port {to} lost"
        );
    }
    assert_eq!(errors(&ov), before, "DPRP messages refused");
    assert_eq!(counter(&ov, "a", "native_out"), native_out);
    assert!(counter(&ov, "a", "quic_dprp_port") >= 2);
    // A flow on other ports still goes native: its second datagram is a
    // native packet.
    assert_eq!(
        datagrams_from_port(&ov, "a", 40_124, SocketAddr::new(b, ECHO), 2, wait),
        2
    );
    assert!(counter(&ov, "a", "native_out") > native_out);
}

/// `count` datagrams from one socket bound to `sport` in `host` to `to`,
/// one at a time, each sent once: how many were echoed within `wait`.
fn datagrams_from_port(
    ov: &Overlay,
    host: &str,
    sport: u16,
    to: SocketAddr,
    count: usize,
    wait: Duration,
) -> usize {
    ov.lab()
        .run_in(host, move || {
            let s = std::net::UdpSocket::bind(("0.0.0.0", sport)).unwrap();
            s.set_read_timeout(Some(wait)).unwrap();
            let mut answered = 0;
            for k in 0..count {
                let msg = format!("query {k} from {sport}");
                s.send_to(msg.as_bytes(), to).unwrap();
                let mut buf = [0u8; 1500];
                if s.recv_from(&mut buf)
                    .is_ok_and(|(n, _)| buf[..n].ends_with(msg.as_bytes()))
                {
                    answered += 1;
                }
            }
            answered
        })
        .unwrap()
}

/// Issue 13, design note 69: through two NATs, b's flow table holds 16
/// flows and a's many. New flows make b evict a's idle ones; b's eviction
/// notice makes a drop them too, so when a's client uses those ports again
/// (as a resolver does) each first datagram opens the flow afresh and is
/// answered at its first send. Without the notice a keeps the flows and
/// seals under keys b no longer has: those datagrams are lost.
#[test]
fn through_two_nats_ports_the_peer_evicted_are_opened_afresh_without_loss() {
    need(OVERLAY_TOOLS);
    let lab = Lab::up(config_path("nat-matrix-eim.toml")).expect("lab");
    let mut b = NodeSpec {
        host: "b".into(),
        ..NodeSpec::new("b", Mode::Op, &[1])
    };
    b.config = "max_flows = 16\n".into();
    let a = NodeSpec {
        host: "a".into(),
        ..NodeSpec::new("a", Mode::Op, &[1])
    };
    let ov = Overlay::start(lab, &Spec::new(&[(1, "home")], vec![a, b]))
        .unwrap_or_else(|e| panic!("overlay start: {e}"));
    let _echo = common::echo_server(ov.lab(), "b", ECHO);
    common::ping_until_answered(&ov, "a", &Overlay::fqdn("b"), Duration::from_secs(30));
    let to = SocketAddr::new(ov.overlay_addr("b").unwrap().into(), ECHO);
    let wait = Duration::from_secs(2);
    // A new flow into b's full table needs one idle for a second to take
    // its place: each round waits that long. Fourteen flows (with the
    // ping's, 15 of b's 16 places), then fourteen more: b evicts the ping's
    // and 12 of the first, a's table keeps them until b's notices.
    let idle = || std::thread::sleep(Duration::from_millis(1_300));
    idle();
    let first: Vec<u16> = (41_000..41_014).collect();
    for &p in &first {
        assert!(datagram_from_port(&ov, "a", p, to, wait), "port {p}");
    }
    idle();
    for p in 42_000..42_014 {
        assert!(datagram_from_port(&ov, "a", p, to, wait), "port {p}");
    }
    assert!(
        counter(&ov, "b", "flows_evicted") >= 13,
        "b evicted too few"
    );
    assert!(counter(&ov, "b", "dprp_evict_sent") >= 13);
    // The last notice may still be on its way (QUIC) when the last echo
    // came back (native).
    let deadline = Instant::now() + Duration::from_secs(3);
    while counter(&ov, "a", "flows_evicted_by_peer") < 13 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        counter(&ov, "a", "flows_evicted_by_peer") >= 13,
        "a kept the flows b evicted\n{}",
        ov.log_tails(40)
    );
    assert_eq!(counter(&ov, "a", "flows_evicted"), 0);
    // The first ports again, each once, once b's newer flows are idle too.
    idle();
    let no_flow = counter(&ov, "b", "data_in_no_flow");
    let refused = counter(&ov, "b", "native_bindings_refused");
    let lost: Vec<u16> = first
        .iter()
        .copied()
        .filter(|&p| !datagram_from_port(&ov, "a", p, to, wait))
        .collect();
    assert!(
        lost.is_empty(),
        "first datagrams lost on reused ports {lost:?}\n{}",
        ov.log_tails(40)
    );
    assert_eq!(counter(&ov, "b", "data_in_no_flow"), no_flow);
    assert_eq!(counter(&ov, "b", "native_bindings_refused"), refused);
}
