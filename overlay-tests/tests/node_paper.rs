//! The GMS paper's example network (configs/lab/paper.toml): GEN CL {1}
//! with a terminal behind it, GES1 OP {1}, GES2 OP {1,2}, GES3 OP {3}, GEA
//! CL {2,3} in front of a server, on a routed intranet where every GE works
//! on its real address (issue 11, part 2).
//!
//! The expected result of every ordered pair of endpoints is computed with
//! fpn-proto's `decision` module (never a hand-written table that could
//! disagree with the rules), and says per link of the pair's route whether
//! a marked message must cross it in plain, encrypted, or not at all.
//!
//! The runs: the expected table against the paper's statements
//! (ARCHITECTURE.md); the topology with plain routing and no fpn software,
//! which must deliver every pair and show every marker on every link of its
//! route (the control for every "absent" below); GES1-3 alone on their real
//! addresses (an encrypted and a plain pair, in place on the wire); and the
//! whole network, every ordered pair with per-pair captures
//! (docs/NODE.md, "The real-address plane"; docs/DESIGN-NOTES.md note 53).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{echo_send, echo_server, need, route_get, send_marked};
use fpn_lab::{Lab, config_path};
use fpn_proto::decision::decide;
use fpn_proto::ge::{GeId, GeInfo, GeKind, GroupId, Mode};

/// The UDP port the echo servers listen on.
const PORT: u16 = 9100;
/// DPRP's port.
const DPRP: u16 = 7717;

/// The UDP ports and payload of a captured IPv4 packet.
fn udp_of(p: &fpn_lab::Packet) -> Option<(u16, u16, &[u8])> {
    let ip = p.ip()?;
    if ip.len() < 28 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let udp = ip.get(usize::from(ip[0] & 0x0f) * 4..)?;
    let sport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    Some((sport, dport, udp.get(8..)?))
}

/// A UDP datagram from or to `port`.
fn on_udp_port(p: &fpn_lab::Packet, port: u16) -> bool {
    udp_of(p).is_some_and(|(s, d, _)| s == port || d == port)
}

/// A FOP on DPRP's port with a first packet inside for `port`.
fn first_inside_fop_to(p: &fpn_lab::Packet, port: u16) -> bool {
    use fpn_proto::dprp::msg::Message;
    let Some((_, DPRP, payload)) = udp_of(p) else {
        return false;
    };
    match Message::decode(payload) {
        Ok(Message::Fop(f)) => f.first.is_some_and(|first| {
            fpn_proto::packet::Packet::parse(&first.packet[..])
                .is_ok_and(|inner| inner.flow_id().dst_port == port)
        }),
        _ => false,
    }
}
/// The endpoints, in the paper's order.
const ENDPOINTS: [&str; 5] = ["terminal", "ges1", "ges2", "ges3", "server"];

/// What must happen to a flow from one endpoint to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Encrypted between the two end GEs with this group.
    Encrypted(u32),
    /// Plain everywhere.
    Plain,
    /// Dropped by this GE (its lab host name); the sender fails fast.
    Dropped(&'static str),
}

/// The paper's GEs: (lab host, kind, mode, groups).
const GES: [(&str, GeKind, Mode, &[u32]); 5] = [
    ("gen", GeKind::Gen, Mode::Closed, &[1]),
    ("ges1", GeKind::Ges, Mode::Open, &[1]),
    ("ges2", GeKind::Ges, Mode::Open, &[1, 2]),
    ("ges3", GeKind::Ges, Mode::Open, &[3]),
    ("gea", GeKind::Gea, Mode::Closed, &[2, 3]),
];

fn info(i: usize) -> GeInfo {
    let (name, kind, mode, groups) = GES[i];
    GeInfo {
        id: GeId(i as u32 + 1),
        name: name.into(),
        kind,
        mode,
        groups: groups.iter().map(|g| GroupId(*g)).collect(),
        overlay: std::net::Ipv4Addr::new(100, 64, 0, i as u8 + 1),
    }
}

/// The end GE of an endpoint: a GES for its own host, the GEN for the
/// terminal, the GEA for the server.
fn end_ge(endpoint: &str) -> usize {
    match endpoint {
        "terminal" => 0,
        "ges1" => 1,
        "ges2" => 2,
        "ges3" => 3,
        "server" => 4,
        other => panic!("no endpoint {other}"),
    }
}

/// Every ordered pair's expected result, from the decision rules. On this
/// topology no GE stands between two end GEs (the GEN and the GEA are the
/// end GEs of their LANs, the GESs hang off the core router), so a flow's
/// GE path is its two ends.
fn expected() -> BTreeMap<(&'static str, &'static str), Expect> {
    let infos: Vec<GeInfo> = (0..GES.len()).map(info).collect();
    let mut out = BTreeMap::new();
    for from in ENDPOINTS {
        for to in ENDPOINTS {
            if from == to {
                continue;
            }
            let path = [&infos[end_ge(from)], &infos[end_ge(to)]];
            let d = decide(&path).unwrap();
            let e = match (d.group, d.dropped_at) {
                (Some(g), _) => Expect::Encrypted(g.0),
                (None, Some(at)) => Expect::Dropped(GES[end_ge([from, to][at.min(1)])].0),
                (None, None) => Expect::Plain,
            };
            out.insert((from, to), e);
        }
    }
    out
}

/// The links a packet of `endpoint` crosses to reach the core router, and
/// which of them lie behind the endpoint's own end GE (the LAN between a
/// terminal or server and its gateway: plain even for a protected flow).
fn route(endpoint: &str) -> (&'static [&'static str], Option<&'static str>) {
    match endpoint {
        "terminal" => (&["lan-t", "l-gen"], Some("lan-t")),
        "ges1" => (&["l-ges1"], None),
        "ges2" => (&["l-ges2"], None),
        "ges3" => (&["l-ges3"], None),
        "server" => (&["lan-s", "l-gea"], Some("lan-s")),
        other => panic!("no endpoint {other}"),
    }
}

/// Every link with a capture: (the host it is taken on, the link).
const CAPTURED: [(&str, &str); 7] = [
    ("terminal", "lan-t"),
    ("gen", "l-gen"),
    ("ges1", "l-ges1"),
    ("ges2", "l-ges2"),
    ("ges3", "l-ges3"),
    ("gea", "l-gea"),
    ("server", "lan-s"),
];

/// Addresses of the endpoints (on the link that faces their gateway).
fn addr_of(lab: &Lab, endpoint: &str) -> IpAddr {
    let link = route(endpoint).0[0];
    lab.addr(endpoint, link).unwrap()
}

fn marker(from: &str, to: &str) -> String {
    format!("PAPER-MARK-{from}-to-{to}")
}

#[test]
fn the_decision_rules_give_the_papers_statements() {
    let t = expected();
    assert_eq!(t.len(), 20, "every ordered pair of five endpoints");
    // ARCHITECTURE.md, "Decision rules": the paper's example network.
    assert_eq!(t[&("terminal", "ges1")], Expect::Encrypted(1));
    assert_eq!(t[&("ges1", "terminal")], Expect::Encrypted(1));
    assert_eq!(t[&("ges2", "server")], Expect::Encrypted(2));
    assert_eq!(t[&("ges3", "server")], Expect::Encrypted(3));
    assert_eq!(t[&("ges1", "server")], Expect::Dropped("gea"));
    assert_eq!(t[&("ges1", "ges3")], Expect::Plain);
    assert_eq!(t[&("ges3", "ges1")], Expect::Plain);
    assert_eq!(t[&("terminal", "ges3")], Expect::Dropped("gen"));
    // The rest follows from the same rules (fpn-proto's sim_network.rs
    // negotiates the same table on its simulated wire).
    assert_eq!(t[&("terminal", "server")], Expect::Dropped("gen"));
    assert_eq!(t[&("server", "terminal")], Expect::Dropped("gea"));
    assert_eq!(t[&("ges3", "terminal")], Expect::Dropped("gen"));
    assert_eq!(t[&("server", "ges1")], Expect::Dropped("gea"));
    assert_eq!(t[&("ges2", "ges3")], Expect::Plain);
    assert_eq!(t[&("ges1", "ges2")], Expect::Encrypted(1));
}

/// Without any fpn software the intranet routes every pair, and the
/// captures see each marker on every link of its route: the ground the
/// fpn run below stands on (and its control: every "absent" it asserts
/// there is a marker this run shows present).
#[test]
fn without_fpn_the_intranet_routes_every_pair_and_the_captures_see_it_plain() {
    need(&["tcpdump"]);
    let lab = Lab::up(config_path("paper.toml")).unwrap();
    let _servers: Vec<_> = ENDPOINTS
        .iter()
        .map(|h| echo_server(&lab, h, PORT))
        .collect();
    let caps: Vec<_> = CAPTURED
        .iter()
        .map(|(h, l)| (*l, lab.capture(h, l, &format!("udp port {PORT}")).unwrap()))
        .collect();
    for (from, to) in expected().keys() {
        let dst = SocketAddr::new(addr_of(&lab, to), PORT);
        let (r, took) = send_marked(&lab, from, dst, marker(from, to), Duration::from_secs(3));
        assert!(r.is_ok(), "{from} -> {to}: {r:?} after {took:?}");
    }
    let pcaps: BTreeMap<&str, fpn_lab::Pcap> = caps
        .into_iter()
        .map(|(l, c)| (l, c.stop().unwrap()))
        .collect();
    for (from, to) in expected().keys() {
        let links: BTreeSet<&str> = route(from).0.iter().chain(route(to).0).copied().collect();
        for (link, pcap) in &pcaps {
            let seen = pcap.contains(marker(from, to).as_bytes());
            assert_eq!(
                seen,
                links.contains(link),
                "{from} -> {to} on {link}: marker seen {seen}"
            );
        }
    }
}

/// The GMS on the paper network and the nodes of `names` (of [`GES`]),
/// defined as the paper says: kind, mode, groups, and `--protect` for
/// what each speaks for on the real-address plane (a GES its own real
/// address, the GEN the terminal's LAN, the GEA the server). All up.
fn paper_overlay(names: &[&str]) -> fpn_lab::overlay::Overlay {
    use fpn_lab::overlay::{Mode as M, NodeSpec, Overlay, Spec};
    need(common::OVERLAY_TOOLS);
    let lab = Lab::up(config_path("paper.toml")).unwrap();
    let ges: Vec<_> = GES.iter().filter(|g| names.contains(&g.0)).collect();
    let mut spec = Spec::new(
        &[(1, "g1"), (2, "g2"), (3, "g3")],
        ges.iter()
            .map(|(n, _, m, g)| {
                let m = if *m == Mode::Open { M::Op } else { M::Cl };
                NodeSpec::new(n, m, g)
            })
            .collect(),
    );
    spec.gms_host = "gms".into();
    spec.gms_link = "l-gms".into();
    spec.define = false;
    let protect = |name: &str| match name {
        "gen" => "192.168.1.0/24".to_string(),
        "gea" => "192.168.5.10/32".to_string(),
        ges => format!("{}/32", lab.addr(ges, route(ges).0[0]).unwrap()),
    };
    let protects: Vec<String> = ges.iter().map(|g| protect(g.0)).collect();
    let ov = Overlay::prepare(lab, &spec).unwrap();
    for g in 1..=3 {
        ov.gms_admin(&["group", "add", &g.to_string(), "--name", &format!("g{g}")])
            .unwrap();
    }
    for ((name, kind, mode, groups), prefix) in ges.iter().zip(&protects) {
        let mut args = vec![
            "ge".to_string(),
            "add".into(),
            name.to_string(),
            "--kind".into(),
            kind.to_string(),
            "--mode".into(),
            if *mode == Mode::Open { "op" } else { "cl" }.into(),
            "--protect".into(),
            prefix.clone(),
        ];
        for g in *groups {
            args.extend(["--group".into(), g.to_string()]);
        }
        ov.gms_admin(&args).unwrap();
    }
    for g in &ges {
        ov.enroll(g.0).unwrap();
    }
    for g in &ges {
        ov.up(g.0)
            .unwrap_or_else(|e| panic!("{} up: {e}\n{}", g.0, ov.log_tails(30)));
    }
    ov
}

/// Step (a) of issue 11 part 2: two GESs that share a group protect a
/// flow between their *real* addresses in place (PCCOM on the packet with
/// the hosts' own addresses, no overlay address anywhere on the wire), and
/// two that share none talk in plain, the marker visible on the wire.
#[test]
fn ges_on_real_addresses_encrypt_in_place_and_pass_plain_as_the_rules_say() {
    let ov = paper_overlay(&["ges1", "ges2", "ges3"]);
    let lab = ov.lab();
    let _servers: Vec<_> = ["ges1", "ges2", "ges3"]
        .iter()
        .map(|h| echo_server(lab, h, PORT))
        .collect();
    let cap = lab
        .capture("ges1", "l-ges1", &format!("port {PORT}"))
        .unwrap();
    let (g1, g2, g3) = (
        addr_of(lab, "ges1"),
        addr_of(lab, "ges2"),
        addr_of(lab, "ges3"),
    );
    // The steering, as the kernel sees it: the host's own packets to a
    // peer's real address go into the TUN from the host's real address;
    // the node's own (marked) packets take the main table.
    let own = route_get(lab, "ges1", &g2.to_string());
    assert!(
        own.contains("dev fpn0") && own.contains(&format!("src {g1}")),
        "{own}"
    );
    let marked = route_get(lab, "ges1", &format!("{g2} mark 0x77170000"));
    assert!(marked.contains("dev eth0"), "{marked}");
    for (to, addr) in [("ges2", g2), ("ges3", g3)] {
        let (r, took) = send_marked(
            lab,
            "ges1",
            SocketAddr::new(addr, PORT),
            marker("ges1", to),
            Duration::from_secs(6),
        );
        assert!(
            r.is_ok(),
            "ges1 -> {to}: {r:?} after {took:?}\n{}\n{}\n{}\n{}",
            ov.log_tails(60),
            ov.status("ges1").unwrap(),
            ov.status(to).unwrap(),
            lab.sh(
                "ges1",
                "ip rule show; ip route show table 7717; nft list ruleset"
            )
            .unwrap()
            .stdout
        );
    }
    // TCP too: a connection (SYN with the MSS clamped by the node, data,
    // FIN) to ges2's real address, through the same plane.
    let tcp = echo_send(
        lab,
        "ges1",
        &SocketAddr::new(g2, PORT).to_string(),
        "PAPER-MARK-tcp-ges1-to-ges2",
        false,
    );
    // It prints the server's address and the source the server saw: the
    // host's real address, not the overlay one.
    assert!(
        tcp.success() && tcp.stdout.contains(&format!(" {g1}:")),
        "TCP ges1 -> ges2: {}{}",
        tcp.stdout,
        tcp.stderr
    );
    let pcap = cap.stop().unwrap();
    assert!(
        !pcap.contains(b"PAPER-MARK-tcp-ges1-to-ges2"),
        "the TCP marker crossed l-ges1 in plain"
    );
    assert!(
        common::l4_between(&pcap, g1, g2).0 > common::udp_between(&pcap, g1, g2).0,
        "TCP segments between the real addresses on the wire"
    );
    let enc = marker("ges1", "ges2");
    assert!(
        !pcap.contains(enc.as_bytes()),
        "ges1 -> ges2 share group 1: the marker crossed l-ges1 in plain"
    );
    let (n, _) = common::udp_between(&pcap, g1, g2);
    assert!(
        n >= 2,
        "ges1 <-> ges2: the protected datagrams keep the real addresses and port {PORT} on the wire (in place), saw {n}\n{}",
        ov.log_tails(40)
    );
    assert!(
        pcap.contains(marker("ges1", "ges3").as_bytes()),
        "ges1 -> ges3 share no group and both are open: plain on the wire"
    );
    // The node's own view agrees: ges1's PIT holds the flows under the
    // real addresses, encrypted with ges2, plain with ges3.
    let st = ov.status("ges1").unwrap();
    let action_to = |dst: IpAddr| {
        st["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["dst"] == dst.to_string() && f["dport"] == PORT)
            .map(|f| f["action"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(action_to(g2).as_deref(), Some("encrypt"), "{st}");
    assert_eq!(action_to(g3).as_deref(), Some("plain"), "{st}");
    // ges2 opened ges1's packets and wrote them into its TUN with the
    // flow's own five-tuple: its receive path must not take those copies
    // back (each would be one failed PCCOM open).
    let st2 = ov.status("ges2").unwrap();
    assert!(st2["counters"]["native_in"].as_u64() >= Some(1), "{st2}");
    assert_eq!(st2["counters"]["native_in_rejected"], 0, "{st2}");
}

/// The acceptance run of issue 11, part 2: with the GMS and the five
/// nodes up (kinds, modes, groups and protected prefixes as in the paper),
/// every ordered pair sends a marked UDP message and the result is the
/// decision rules': delivered or failed fast at the dropping GE, the
/// marker absent on the links between the two end GEs of an encrypted
/// flow, present on the LAN behind a gateway and on every link of a plain
/// flow, and never past the GE that drops a flow.
#[test]
fn every_pair_gets_the_papers_result_on_the_wire() {
    let ov = paper_overlay(&["gen", "ges1", "ges2", "ges3", "gea"]);
    let lab = ov.lab();
    // A gateway steers what comes from the hosts it protects, and nothing
    // else it routes or sends itself.
    let g1 = addr_of(lab, "ges1");
    let lan = route_get(lab, "gen", &format!("{g1} from 192.168.1.10 iif lan"));
    assert!(lan.contains("dev fpn0"), "{lan}");
    let other = route_get(lab, "gen", &format!("{g1} from 198.18.1.10 iif wan"));
    assert!(!other.contains("fpn0"), "{other}");
    let own = route_get(lab, "gen", &g1.to_string());
    assert!(!own.contains("fpn0"), "{own}");
    let _servers: Vec<_> = ENDPOINTS
        .iter()
        .map(|h| echo_server(lab, h, PORT))
        .collect();
    // DPRP's port too: a fast-opened flow's first datagram rides inside its
    // FOP (design note 71).
    let caps: Vec<_> = CAPTURED
        .iter()
        .map(|(h, l)| {
            let filter = format!("udp port {PORT} or udp port {DPRP}");
            (*l, lab.capture(h, l, &filter).unwrap())
        })
        .collect();
    let caps: BTreeMap<&str, fpn_lab::Capture> = caps.into_iter().collect();
    let count = |link: &str| caps[link].snapshot().unwrap().len();
    let table = expected();
    for (&(from, to), e) in &table {
        let (from_links, from_lan) = route(from);
        let (to_links, to_lan) = route(to);
        let links: Vec<&str> = from_links.iter().chain(to_links).copied().collect();
        let before: Vec<usize> = links.iter().map(|l| count(l)).collect();
        let dst = SocketAddr::new(addr_of(lab, to), PORT);
        let (r, took) = send_marked(lab, from, dst, marker(from, to), Duration::from_secs(6));
        match e {
            Expect::Dropped(by) => {
                assert!(r.is_err(), "{from} -> {to} must be dropped at {by}");
                assert!(
                    took < Duration::from_secs(2),
                    "{from} -> {to}: refused after {took:?}, not fast ({r:?})"
                );
            }
            _ => assert!(
                r.is_ok(),
                "{from} -> {to} ({e:?}): {r:?} after {took:?}\n{}",
                ov.log_tails(30)
            ),
        }
        // What this pair put on each link of its route (tcpdump -U: in the
        // file right after it was seen; a moment for the last answer).
        std::thread::sleep(Duration::from_millis(300));
        for (link, before) in links.iter().zip(before) {
            let pcap = caps[link].snapshot().unwrap();
            let new = &pcap.packets()[before.min(pcap.len())..];
            let seen = new.iter().any(|p| p.contains(marker(from, to).as_bytes()));
            let lan = Some(*link) == from_lan || Some(*link) == to_lan;
            let want = match e {
                Expect::Plain => true,
                Expect::Encrypted(_) => lan,
                // Held by the initiator's end GE: only a terminal's own LAN
                // saw it.
                Expect::Dropped(_) => Some(*link) == from_lan,
            };
            assert_eq!(
                seen,
                want,
                "{from} -> {to} ({e:?}) on {link}: marker seen {seen}, {} new packets",
                new.len()
            );
            if matches!(e, Expect::Encrypted(_)) && !lan {
                // Encrypted on the IP path itself (the flow's own UDP port
                // on the wire, PCCOM inside), not hidden in a QUIC tunnel:
                // the query natively or, fast-opened, sealed inside its FOP
                // on the IP path; the answer natively.
                let on_port = new.iter().filter(|p| on_udp_port(p, PORT)).count();
                let in_fops = new.iter().filter(|p| first_inside_fop_to(p, PORT)).count();
                assert!(
                    on_port >= 1 && on_port + in_fops >= 2,
                    "{from} -> {to}: {on_port} protected datagrams and {in_fops} in FOPs on {link} (QUIC instead of in place?)"
                );
            }
        }
    }
    for (_, c) in caps {
        c.stop().unwrap();
    }
}
