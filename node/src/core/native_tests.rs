//! The native carrier and path selection in the simulator: two cores probe
//! each other on the underlay, carry a flow's packets as raw IP packets with
//! the underlay addresses and the application's ports, fall back to QUIC
//! when native packets stop getting through and come back when they do.

use std::net::IpAddr;
use std::time::Duration;

use fpn_proto::ge::Mode;
use fpn_proto::packet::Packet;
use fpn_proto::path::{Force, PathConfig};

use super::sim::{CoreSim, LinkConfig, udp_packet};

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Two open nodes sharing group 1, with path selection set to `force`.
fn pair(seed: u64, force: Force) -> (CoreSim, usize, usize) {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    sim.path = PathConfig {
        force,
        ..PathConfig::default()
    };
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    (sim, a, b)
}

fn carrier(sim: &CoreSim, i: usize) -> (String, String) {
    let p = &sim.nodes[i].core.snapshot(&[]).peers[0];
    (p.carrier.clone(), p.path.clone())
}

/// Native frames that are not UDP to the probe port (probes, answers,
/// DPRP on the IP path).
fn native_data_frames(sim: &CoreSim) -> Vec<&super::sim::WireFrame> {
    sim.wire()
        .iter()
        .filter(|f| f.native)
        .filter(|f| {
            Packet::parse(&f.payload[..]).is_ok_and(|p| {
                let w = p.flow_id();
                !(w.protocol == 17 && w.dst_port == super::PROBE_PORT)
            })
        })
        .collect()
}

fn native_frames(sim: &CoreSim) -> usize {
    sim.wire().iter().filter(|f| f.native).count()
}

/// Sends one packet a -> b (ports 4000 -> 5000) and one back, and runs
/// 100 ms of virtual time.
fn exchange(sim: &mut CoreSim, a: usize, b: usize, marker: &[u8]) {
    sim.send_udp(a, b, 4000, 5000, marker);
    sim.run_for(Duration::from_millis(50));
    sim.send_udp(b, a, 5000, 4000, marker);
    sim.run_for(Duration::from_millis(50));
}

#[test]
fn two_nodes_go_native_after_probes_and_carry_a_flow_natively() {
    let (mut sim, a, b) = pair(1, Force::Auto);
    sim.run_for(Duration::from_millis(500));
    for i in [a, b] {
        assert_eq!(
            carrier(&sim, i),
            ("native".into(), "native".into()),
            "node {i}"
        );
        assert!(sim.counter(i, "probes_sent") >= 1);
        assert!(sim.counter(i, "probes_answered") >= 1);
    }
    // The first packet is held while DPRP runs (on the IP path); it and
    // every later one go natively both ways (no grace: see the test below).
    sim.send_udp(a, b, 4000, 5000, b"MARKER-0");
    sim.run_for(Duration::from_millis(100));
    sim.send_udp(b, a, 5000, 4000, b"MARKER-0");
    sim.run_for(Duration::from_millis(50));
    assert_eq!(sim.counter(a, "native_out"), 1);
    for k in 1..=5u8 {
        exchange(&mut sim, a, b, format!("MARKER-{k}").as_bytes());
    }
    assert_eq!(sim.nodes[b].tun.len(), 6);
    assert_eq!(sim.nodes[a].tun.len(), 6);
    assert!(
        sim.counter(a, "native_out") >= 5,
        "{}",
        sim.counter(a, "native_out")
    );
    assert!(sim.counter(b, "native_in") >= 5);
    // On the wire: the underlay addresses, the application's ports, no
    // plaintext.
    let (ua, ub) = (sim.nodes[a].underlay.ip(), sim.nodes[b].underlay.ip());
    let natives = native_data_frames(&sim);
    assert!(natives.len() >= 12, "{}", natives.len());
    for f in natives {
        let p = Packet::parse(&f.payload[..]).expect("an IP packet");
        let w = p.flow_id();
        let (src, dst, sport, dport) = if f.from == a {
            (ua, ub, 4000, 5000)
        } else {
            (ub, ua, 5000, 4000)
        };
        assert_eq!(
            (w.src, w.dst, w.src_port, w.dst_port),
            (src, dst, sport, dport)
        );
        assert!(!contains(&f.payload, b"MARKER"));
    }
    // What came out of b's TUN is the application's packet, overlay
    // addresses and all.
    let last = sim.nodes[b].tun.last().unwrap();
    let p = Packet::parse(&last[..]).unwrap().flow_id();
    assert_eq!(
        (p.src, p.dst),
        (
            IpAddr::V4(sim.nodes[a].overlay),
            IpAddr::V4(sim.nodes[b].overlay)
        )
    );
    assert!(contains(last, b"MARKER-5"));
    let f = &sim.nodes[a].core.snapshot(&[]).flows[0];
    assert_eq!(f.carrier, "native");
    assert_eq!(sim.nodes[b].intercepted.len(), 1);
}

/// Packets of `a`'s flow 4000 -> 5000 (either direction) on the wire:
/// (native, QUIC).
fn flow_frames(sim: &CoreSim, a: usize) -> (usize, usize) {
    let ports = |f: &&super::sim::WireFrame| {
        Packet::parse(&f.payload[..]).is_ok_and(|p| {
            let w = p.flow_id();
            let (s, d) = if f.from == a {
                (4000, 5000)
            } else {
                (5000, 4000)
            };
            (w.src_port, w.dst_port) == (s, d)
        })
    };
    let native = sim.wire().iter().filter(|f| f.native).filter(ports).count();
    let quic = sim
        .wire()
        .iter()
        .filter(|f| !f.native)
        .filter(ports)
        .count();
    (native, quic)
}

/// With the path native, a new flow's first packet (held during DPRP) and
/// the reply leave natively: the responder sends its CDN only once its
/// steering is in place, the initiator releases the packet once its own
/// is, so nothing of the flow rides QUIC and there is no grace.
#[test]
fn a_new_flow_s_first_packet_and_reply_leave_natively_without_grace() {
    let (mut sim, a, b) = pair(21, Force::Auto);
    sim.run_for(Duration::from_millis(500));
    assert_eq!(carrier(&sim, a).0, "native");
    assert_eq!(carrier(&sim, b).0, "native");
    // Steering slower than a hop (a loaded host's nft): a CDN sent at once
    // would let the first packet reach b's "kernel" before its steering.
    // a's steering starts with the negotiation and is in place by the CDN.
    for i in [a, b] {
        sim.nodes[i].steer_delay = Duration::from_millis(40);
    }
    // DDE, RGI, MPIT (10 ms each), b's steering (40), CDN (10), the first
    // packet (10): 90 ms; with a's steering after the CDN it would be 130.
    sim.send_udp(a, b, 4000, 5000, b"FIRST");
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.nodes[b].tun.len(), 1, "the first packet arrived");
    sim.send_udp(b, a, 5000, 4000, b"REPLY");
    sim.run_for(Duration::from_millis(20));
    assert_eq!(sim.nodes[a].tun.len(), 1, "the reply arrived");
    // Well within the old 300 ms grace: both went natively, nothing of
    // the flow on QUIC.
    assert_eq!(flow_frames(&sim, a), (2, 0));
    assert_eq!(sim.counter(a, "native_out"), 1);
    assert_eq!(sim.counter(b, "native_out"), 1);
    for i in [a, b] {
        assert_eq!(sim.counter(i, "native_ready_timeouts"), 0);
        assert!(sim.counter(i, "dprp_native_out") >= 1);
    }
}

/// A responder whose steering is not confirmed in time completes anyway:
/// its CDN goes over QUIC, the first packet rides QUIC (delivered once),
/// the wait is counted, and the flow goes native after the grace.
#[test]
fn a_late_steering_completes_on_quic_and_is_counted() {
    let (mut sim, a, b) = pair(22, Force::Auto);
    sim.run_for(Duration::from_millis(500));
    sim.nodes[b].steer_delay = Duration::from_millis(250);
    sim.send_udp(a, b, 4000, 5000, b"FIRST");
    sim.run_for(Duration::from_millis(150));
    assert_eq!(sim.nodes[b].tun.len(), 1);
    assert_eq!(sim.counter(b, "native_ready_timeouts"), 1);
    assert_eq!(sim.counter(a, "native_ready_timeouts"), 0);
    assert_eq!(flow_frames(&sim, a), (0, 1));
    sim.run_for(super::paths::NATIVE_GRACE);
    exchange(&mut sim, a, b, b"LATER");
    assert_eq!(sim.nodes[b].tun.len(), 2);
    assert_eq!(sim.nodes[a].tun.len(), 1);
    assert_eq!(flow_frames(&sim, a), (2, 1));
}

#[test]
fn blocked_native_falls_back_to_quic_within_3s_and_comes_back_within_30s() {
    let (mut sim, a, b) = pair(2, Force::Auto);
    sim.run_for(Duration::from_millis(500));
    exchange(&mut sim, a, b, b"first");
    assert_eq!(carrier(&sim, a).0, "native");
    // The firewall starts dropping native packets mid-flow; the flow keeps
    // sending every 100 ms.
    sim.native_blocked = true;
    let blocked_at = sim.now();
    let mut fell_back = None;
    let mut delivered_before = sim.nodes[b].tun.len();
    for _ in 0..40 {
        exchange(&mut sim, a, b, b"during");
        if fell_back.is_none() && carrier(&sim, a).0 == "quic" {
            fell_back = Some(sim.now() - blocked_at);
        }
    }
    let fell_back = fell_back.expect("fell back to QUIC");
    assert!(fell_back <= Duration::from_secs(3), "{fell_back:?}");
    assert!(
        carrier(&sim, a).1.starts_with("quic ("),
        "{:?}",
        carrier(&sim, a)
    );
    // The flow kept delivering over QUIC once the path switched.
    let after = sim.nodes[b].tun.len() - delivered_before;
    assert!(after >= 40 - 31, "{after}");
    // Unblocked: native again within 30 s, and the flow goes on.
    sim.native_blocked = false;
    let healed_at = sim.now();
    let mut back = None;
    for _ in 0..300 {
        exchange(&mut sim, a, b, b"after");
        if carrier(&sim, a).0 == "native" && carrier(&sim, b).0 == "native" {
            back = Some(sim.now() - healed_at);
            break;
        }
    }
    let back = back.expect("native again");
    assert!(back <= Duration::from_secs(30), "{back:?}");
    delivered_before = sim.nodes[b].tun.len();
    let out = sim.counter(a, "native_out");
    exchange(&mut sim, a, b, b"native-again");
    assert_eq!(sim.nodes[b].tun.len(), delivered_before + 1);
    assert_eq!(sim.counter(a, "native_out"), out + 1);
}

#[test]
fn carrier_quic_never_probes_and_keeps_flows_on_quic() {
    let (mut sim, a, b) = pair(3, Force::Quic);
    sim.run_for(Duration::from_secs(5));
    exchange(&mut sim, a, b, b"q");
    for i in [a, b] {
        assert_eq!(carrier(&sim, i), ("quic".into(), "quic (forced)".into()));
        assert_eq!(sim.counter(i, "probes_sent"), 0);
        assert_eq!(sim.counter(i, "native_out"), 0);
    }
    assert_eq!(native_frames(&sim), 0);
    assert_eq!(sim.nodes[b].tun.len(), 1);
}

#[test]
fn unknown_forged_and_replayed_native_packets_are_dropped_and_counted() {
    let (mut sim, a, b) = pair(4, Force::Auto);
    sim.run_for(Duration::from_millis(500));
    exchange(&mut sim, a, b, b"one");
    sim.run_for(super::paths::NATIVE_GRACE);
    exchange(&mut sim, a, b, b"two");
    let tun_b = sim.nodes[b].tun.len();
    let (ua, ub) = match (sim.nodes[a].underlay.ip(), sim.nodes[b].underlay.ip()) {
        (IpAddr::V4(x), IpAddr::V4(y)) => (x, y),
        _ => unreachable!(),
    };
    // An unknown five-tuple (another local port) never reaches the TUN.
    // (Another source port to the flow's local port would be a NAT binding
    // attempt: nat_tests.rs.)
    let stray = udp_packet(ua, ub, 4000, 5001, b"stray");
    sim.inject_native(b, &stray);
    assert_eq!(sim.counter(b, "native_in_unknown"), 1);
    // The flow's ports from another source.
    let spoofed = udp_packet(
        std::net::Ipv4Addr::new(198, 18, 0, 99),
        ub,
        4000,
        5000,
        b"x",
    );
    sim.inject_native(b, &spoofed);
    assert_eq!(sim.counter(b, "native_in_wrong_source"), 1);
    // A replay of a native packet a sent, and a forgery of it.
    let last = native_data_frames(&sim)
        .into_iter()
        .rev()
        .find(|f| f.from == a)
        .expect("a native packet")
        .payload
        .clone();
    sim.inject_native(b, &last);
    let mut forged = last.clone();
    let n = forged.len();
    // One bit of the tag.
    forged[n - 1] ^= 1;
    sim.inject_native(b, &forged);
    // Both reuse a counter the window has seen: refused before any
    // decryption, and counted as replays (not delivered either way).
    assert_eq!(sim.counter(b, "native_in_replayed"), 2);
    assert_eq!(sim.counter(b, "native_in_rejected"), 0);
    assert_eq!(sim.nodes[b].tun.len(), tun_b);
}

#[test]
fn without_native_rights_every_peer_stays_on_quic_and_nothing_is_probed() {
    let (mut sim, a, b) = pair(5, Force::Auto);
    for i in [a, b] {
        let now = sim.now();
        sim.nodes[i]
            .core
            .handle_native_unavailable(fpn_proto::path::Unavailable::NoRawSocket, now);
    }
    let sent = (sim.counter(a, "probes_sent"), sim.counter(b, "probes_sent"));
    sim.run_for(Duration::from_secs(5));
    exchange(&mut sim, a, b, b"q");
    sim.run_for(Duration::from_millis(400));
    exchange(&mut sim, a, b, b"q2");
    for i in [a, b] {
        assert_eq!(
            carrier(&sim, i),
            ("quic".into(), "quic (no raw socket)".into())
        );
        assert_eq!(sim.counter(i, "native_out"), 0);
    }
    // The probes of the first round may have gone out before; none after.
    assert_eq!(
        (sim.counter(a, "probes_sent"), sim.counter(b, "probes_sent")),
        sent
    );
    assert_eq!(sim.nodes[b].tun.len(), 2);
}

#[test]
fn carrier_native_sends_natively_once_the_flow_is_translated() {
    let (mut sim, a, b) = pair(6, Force::Native);
    sim.run_for(Duration::from_millis(500));
    exchange(&mut sim, a, b, b"n");
    sim.run_for(Duration::from_millis(400));
    exchange(&mut sim, a, b, b"n2");
    assert_eq!(
        carrier(&sim, a),
        ("native".into(), "native (forced)".into())
    );
    assert!(sim.counter(a, "native_out") >= 1);
    assert_eq!(sim.nodes[b].tun.len(), 2);
}

/// A firewall drops the flows' raw packets but lets the probes through:
/// a's data check moves it to QUIC, its notice moves b at once, nothing
/// sent meanwhile is lost for good or delivered twice, the retries test
/// native with copies (refused as duplicates at b, never delivered) while
/// QUIC carries the flow, and native comes back when the block goes.
#[test]
fn data_dropped_but_probes_passing_moves_both_ends_to_quic_and_back() {
    let (mut sim, a, b) = pair(9, Force::Auto);
    sim.run_for(Duration::from_millis(500));
    exchange(&mut sim, a, b, b"first");
    sim.run_for(super::paths::NATIVE_GRACE);
    exchange(&mut sim, a, b, b"second");
    assert_eq!(carrier(&sim, a).0, "native");
    assert!(sim.counter(a, "native_out") >= 1);
    sim.native_data_blocked = true;
    let blocked_at = sim.now();
    let mut fell = None;
    for _ in 0..30 {
        exchange(&mut sim, a, b, b"during");
        if fell.is_none() && carrier(&sim, a).0 == "quic" {
            fell = Some(sim.now() - blocked_at);
        }
    }
    let fell = fell.expect("a fell back");
    assert!(fell <= Duration::from_secs(3), "{fell:?}");
    assert_eq!(carrier(&sim, b).0, "quic", "{:?}", carrier(&sim, b));
    // Everything sent after the fallback arrived, once.
    let before = (sim.nodes[a].tun.len(), sim.nodes[b].tun.len());
    for _ in 0..60 {
        exchange(&mut sim, a, b, b"on-quic");
    }
    assert_eq!(sim.nodes[b].tun.len() - before.1, 60);
    assert_eq!(sim.nodes[a].tun.len() - before.0, 60);
    assert!(sim.counter(a, "native_trial_copies") > 0);
    assert_eq!(carrier(&sim, a).0, "quic");
    // The block goes: the next trial's copies arrive and both go native.
    sim.native_data_blocked = false;
    for _ in 0..300 {
        exchange(&mut sim, a, b, b"after");
        if carrier(&sim, a).0 == "native" && carrier(&sim, b).0 == "native" {
            break;
        }
    }
    assert_eq!(carrier(&sim, a).0, "native");
    assert_eq!(carrier(&sim, b).0, "native");
    assert!(sim.counter(b, "native_in_replayed") + sim.counter(b, "data_in_replayed") > 0);
    sim.check_invariants();
}

/// An IPv4 ICMP echo (`ty` 8 request, 0 reply) with both checksums filled.
pub(super) fn echo_packet(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    ty: u8,
    seq: u16,
) -> Vec<u8> {
    let payload = b"PING-MARKER";
    let mut p = udp_packet(src, dst, 0, 0, payload);
    // Same lengths as the UDP packet (8-byte header): turn it into ICMP.
    p[9] = fpn_proto::flow::protocol::ICMP;
    p[10..12].fill(0);
    let l4 = &mut p[20..28];
    l4.copy_from_slice(&[ty, 0, 0, 0, 0x42, 0x42, 0, 0]);
    l4[6..8].copy_from_slice(&seq.to_be_bytes());
    let mut pkt = Packet::parse(&mut p[..]).expect("an ICMP echo");
    pkt.fill_l4_checksum();
    let c = fpn_proto::packet::checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

#[test]
fn icmp_echo_goes_native_with_its_id_as_the_port() {
    let (mut sim, a, b) = pair(7, Force::Auto);
    sim.run_for(Duration::from_millis(500));
    let (oa, ob) = (sim.nodes[a].overlay, sim.nodes[b].overlay);
    let ping = |sim: &mut CoreSim, seq: u16| {
        sim.send_packet(a, &echo_packet(oa, ob, 8, seq));
        sim.run_for(Duration::from_millis(50));
        sim.send_packet(b, &echo_packet(ob, oa, 0, seq));
        sim.run_for(Duration::from_millis(50));
    };
    ping(&mut sim, 0);
    sim.run_for(super::paths::NATIVE_GRACE);
    for seq in 1..=3 {
        ping(&mut sim, seq);
    }
    assert_eq!(sim.nodes[b].tun.len(), 4);
    assert_eq!(sim.nodes[a].tun.len(), 4);
    let (ua, ub) = (sim.nodes[a].underlay.ip(), sim.nodes[b].underlay.ip());
    let natives = native_data_frames(&sim);
    assert!(natives.len() >= 6, "{} native frames", natives.len());
    for f in natives {
        let w = Packet::parse(&f.payload[..])
            .expect("an IP packet")
            .flow_id();
        let (src, dst) = if f.from == a { (ua, ub) } else { (ub, ua) };
        assert_eq!(
            (w.src, w.dst, w.protocol, w.src_port, w.dst_port),
            (src, dst, fpn_proto::flow::protocol::ICMP, 0x4242, 0x4242)
        );
        assert!(!contains(&f.payload, b"PING-MARKER"));
    }
    assert!(contains(sim.nodes[b].tun.last().unwrap(), b"PING-MARKER"));
    let f = &sim.nodes[a].core.snapshot(&[]).flows[0];
    assert_eq!(f.carrier, "native");
}

/// DPRP on the IP path: once the peers' path is native, a new flow's
/// negotiation leaves as UDP datagrams between the underlay addresses on
/// port 7717 (where an on-path gateway would see them), not over QUIC, and
/// the answers come back the same way.
#[test]
fn with_the_path_native_a_new_flow_is_negotiated_on_the_ip_path() {
    let (mut sim, a, b) = pair(11, Force::Auto);
    sim.run_for(Duration::from_millis(500));
    assert_eq!(carrier(&sim, a).0, "native");
    let quic_control = sim.counter(a, "control_out");
    exchange(&mut sim, a, b, b"dprp-native");
    assert_eq!(sim.nodes[b].tun.len(), 1);
    assert!(sim.counter(a, "dprp_native_out") >= 2, "DDE and CDN");
    assert!(sim.counter(b, "dprp_native_in") >= 2);
    assert!(sim.counter(b, "dprp_native_out") >= 1, "the answer");
    let (ua, ub) = (sim.nodes[a].underlay.ip(), sim.nodes[b].underlay.ip());
    let dprp: Vec<_> = sim
        .wire()
        .iter()
        .filter(|f| f.native)
        .filter_map(|f| {
            let p = Packet::parse(&f.payload[..]).ok()?;
            let w = p.flow_id();
            (w.dst_port == super::PROBE_PORT && !fpn_proto::path::is_probe(p.payload()))
                .then_some((w.src, w.dst))
        })
        .collect();
    assert!(
        dprp.contains(&(ua, ub)) && dprp.contains(&(ub, ua)),
        "{dprp:?}"
    );
    // Nothing of the negotiation went over QUIC.
    assert_eq!(
        sim.counter(a, "control_out") - quic_control,
        sim.counter(a, "dprp_native_out")
    );
    assert_eq!(sim.counter(b, "control_in"), 0);
}

/// The initiator's steering, started with the negotiation, goes again when
/// the flow ends up without translation (here: refused by a closed peer of
/// another group).
#[test]
fn a_refused_flow_leaves_no_steering_behind() {
    let mut sim = CoreSim::new(23, LinkConfig::default());
    sim.path = PathConfig {
        force: Force::Auto,
        ..PathConfig::default()
    };
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Closed, &[2]);
    sim.introduce_all();
    sim.run_for(Duration::from_millis(500));
    assert_eq!(carrier(&sim, a).0, "native");
    sim.send_udp(a, b, 4000, 5000, b"REFUSED");
    sim.run_for(Duration::from_millis(10));
    assert_eq!(
        sim.nodes[a].steering.len() + sim.nodes[a].intercepted.len(),
        1,
        "steered early"
    );
    sim.run_for(Duration::from_secs(3));
    assert!(sim.nodes[b].tun.is_empty());
    assert!(sim.counter(a, "refused_flows") >= 1);
    assert!(sim.nodes[a].steering.is_empty() && sim.nodes[a].intercepted.is_empty());
}

/// The directory on demand (design note 66): b knows a from the listing
/// alone (no node key, no info), as when a dialed b and b never asked the
/// GMS about a. The first flow's DPRP gives b a's verified credential, and
/// with its key b starts a's path machine: the pair goes native.
#[test]
fn a_peer_known_from_the_listing_alone_goes_native_after_its_first_flow() {
    let mut sim = CoreSim::new(7, LinkConfig::default());
    sim.path = PathConfig {
        force: Force::Auto,
        ..PathConfig::default()
    };
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce(a, b);
    let mut listed = sim.record(a);
    listed.key = None;
    listed.info = None;
    sim.command(b, super::Command::Peer(listed));
    sim.run_for(Duration::from_millis(500));
    assert_eq!(carrier(&sim, b).0, "quic", "b has no key for a yet");
    exchange(&mut sim, a, b, b"FIRST-FLOW");
    assert_eq!(sim.nodes[b].tun.len(), 1, "the first flow did not arrive");
    sim.run_for(Duration::from_secs(30));
    for i in [a, b] {
        assert_eq!(carrier(&sim, i).0, "native", "node {i}");
    }
}

/// UDP to DPRP's port on the wire is a control message at either end, so
/// a UDP flow with that port at either end (an application's ephemeral
/// port, or a server on it) takes QUIC and is answered both ways; natively
/// its packets towards that end were refused as DPRP (`control_errors`)
/// and never delivered.
#[test]
fn a_udp_flow_on_dprp_s_port_takes_quic_and_is_answered_both_ways() {
    let (mut sim, a, b) = pair(23, Force::Auto);
    sim.run_for(Duration::from_millis(500));
    assert_eq!(carrier(&sim, a).0, "native");
    let dprp = super::PROBE_PORT;
    for (k, (pa, pb)) in [(dprp, 5000), (4000, dprp)].into_iter().enumerate() {
        let (q, r) = (format!("ASK-{k}-"), format!("ANSWER-{k}-"));
        for _ in 0..2 {
            sim.send_udp(a, b, pa, pb, q.as_bytes());
            sim.run_for(Duration::from_millis(100));
            sim.send_udp(b, a, pb, pa, r.as_bytes());
            sim.run_for(Duration::from_millis(100));
        }
        let got = |i: usize, m: &str| {
            sim.nodes[i]
                .tun
                .iter()
                .filter(|p| contains(p, m.as_bytes()))
                .count()
        };
        assert_eq!((got(b, &q), got(a, &r)), (2, 2), "ports {pa} <-> {pb}");
    }
    assert_eq!(sim.counter(a, "native_out"), 0, "the flows took QUIC");
    for i in [a, b] {
        assert_eq!(sim.counter(i, "control_errors"), 0, "node {i}");
    }
    // The path stays native for the other flows.
    exchange(&mut sim, a, b, b"OTHER");
    assert!(sim.counter(a, "native_out") >= 1);
}
