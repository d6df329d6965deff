//! The decision rules on the example network of the GMS paper
//! (ARCHITECTURE.md, "Decision rules"), every ordered pair in one table.
//!
//! GEN CL {1} with a terminal behind it; GES1 OP {1}; GES2 OP {1,2};
//! GES3 OP {3}; GEA CL {2,3} in front of a server. A flow to or from the
//! terminal has the GEN as its end GE, one to or from the server the GEA.

use std::net::Ipv4Addr;

use fpn_proto::action::Action::{self, Drop, Pass, Protect, Relay};
use fpn_proto::decision::decide;
use fpn_proto::ge::{GeId, GeInfo, GeKind, GroupId, Mode};

fn ge(id: u32, name: &str, kind: GeKind, mode: Mode, groups: &[u32]) -> GeInfo {
    GeInfo {
        id: GeId(id),
        name: name.into(),
        kind,
        mode,
        groups: groups.iter().map(|g| GroupId(*g)).collect(),
        overlay: Ipv4Addr::new(100, 64, 0, id as u8),
    }
}

/// The end GE of each host of the example network, by host name.
fn network() -> Vec<(&'static str, GeInfo)> {
    vec![
        ("terminal", ge(1, "gen", GeKind::Gen, Mode::Closed, &[1])),
        ("ges1", ge(2, "ges1", GeKind::Ges, Mode::Open, &[1])),
        ("ges2", ge(3, "ges2", GeKind::Ges, Mode::Open, &[1, 2])),
        ("ges3", ge(4, "ges3", GeKind::Ges, Mode::Open, &[3])),
        ("server", ge(5, "gea", GeKind::Gea, Mode::Closed, &[2, 3])),
    ]
}

const P1: Action = Protect(GroupId(1));
const P2: Action = Protect(GroupId(2));
const P3: Action = Protect(GroupId(3));

/// (from, to, action of the initiator's end GE, of the responder's, dropped at)
#[rustfmt::skip]
const TABLE: &[(&str, &str, Action, Action, Option<&str>)] = &[
    // terminal <-> GES1 encrypted (the GEN decrypts for the terminal)
    ("terminal", "ges1",   P1,   P1,   None),
    ("terminal", "ges2",   P1,   P1,   None),
    // terminal -> GES3 dropped at the GEN
    ("terminal", "ges3",   Drop, Pass, Some("gen")),
    ("terminal", "server", Drop, Drop, Some("gen")),
    ("ges1",     "terminal", P1, P1,   None),
    ("ges1",     "ges2",   P1,   P1,   None),
    // GES1 <-> GES3 plain
    ("ges1",     "ges3",   Pass, Pass, None),
    // GES1 -> server dropped at the GEA
    ("ges1",     "server", Pass, Drop, Some("gea")),
    ("ges2",     "terminal", P1, P1,   None),
    ("ges2",     "ges1",   P1,   P1,   None),
    ("ges2",     "ges3",   Pass, Pass, None),
    // GES2 -> server encrypted (group 2, the only one they share)
    ("ges2",     "server", P2,   P2,   None),
    ("ges3",     "terminal", Pass, Drop, Some("gen")),
    ("ges3",     "ges1",   Pass, Pass, None),
    ("ges3",     "ges2",   Pass, Pass, None),
    // GES3 -> server encrypted (group 3)
    ("ges3",     "server", P3,   P3,   None),
    ("server",   "terminal", Drop, Drop, Some("gea")),
    ("server",   "ges1",   Drop, Pass, Some("gea")),
    ("server",   "ges2",   P2,   P2,   None),
    ("server",   "ges3",   P3,   P3,   None),
];

#[test]
fn paper_example_network_every_ordered_pair() {
    let net = network();
    let end = |host: &str| &net.iter().find(|(h, _)| *h == host).expect("host").1;
    // The table covers every ordered pair exactly once.
    assert_eq!(TABLE.len(), net.len() * (net.len() - 1));
    for (a, _) in &net {
        for (b, _) in &net {
            let n = TABLE.iter().filter(|r| r.0 == *a && r.1 == *b).count();
            assert_eq!(n, usize::from(a != b), "{a} -> {b}");
        }
    }
    for &(from, to, ia, ra, dropped) in TABLE {
        let path = [end(from), end(to)];
        let d = decide(&path).unwrap();
        assert_eq!(d.actions, [ia, ra], "{from} -> {to}");
        let dropped_by = d
            .dropped_by(&path)
            .map(|id| path.iter().find(|g| g.id == id).unwrap().name.as_str());
        assert_eq!(dropped_by, dropped, "{from} -> {to}: dropped at");
    }
}

#[test]
fn gateways_between_the_ends_relay_or_follow_their_mode() {
    let net = network();
    let (gen_, ges1, ges3, gea) = (&net[0].1, &net[1].1, &net[3].1, &net[4].1);
    // A closed gateway between two ends that share a group relays.
    let d = decide(&[ges1, gen_, ges1]).unwrap();
    assert_eq!(d.actions, [P1, Relay, P1]);
    // Between ends that share none, the first closed GE on the path drops.
    let d = decide(&[ges1, gea, gen_, ges3]).unwrap();
    assert_eq!(d.actions, [Pass, Drop, Drop, Pass]);
    assert_eq!(d.dropped_at, Some(1));
}
