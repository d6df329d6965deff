//! The simulator itself, and the paper's example network negotiated end to
//! end on it: the actions the real machines install match the decision table.

use std::net::IpAddr;

use fpn_proto::action::Action::{self, Drop, Pass, Protect};
use fpn_proto::dprp::{Event, FailReason, Prefix};
use fpn_proto::ge::{GeId, GeKind, GroupId, Mode};
use fpn_proto::sim::{GeSpec, LinkConfig, NodeId, Sim};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Paper {
    sim: Sim,
    hosts: Vec<(&'static str, NodeId)>,
    ges: Vec<(&'static str, NodeId)>,
}

/// GEN CL {1} with a terminal behind it; GES1 OP {1}; GES2 OP {1,2};
/// GES3 OP {3}; GEA CL {2,3} in front of a server.
fn paper(seed: u64, link: LinkConfig) -> Paper {
    let mut sim = Sim::new(seed, link);
    let gen_ = sim.add_ge(GeSpec::gateway(
        1,
        "gen",
        GeKind::Gen,
        Mode::Closed,
        &[1],
        "198.18.1.1",
        Prefix::new(ip("192.168.1.0"), 24).unwrap(),
    ));
    let terminal = sim.add_terminal("terminal", "192.168.1.10", gen_);
    let ges1 = sim.add_ge(GeSpec::host(2, "ges1", Mode::Open, &[1], "198.18.0.2"));
    let ges2 = sim.add_ge(GeSpec::host(3, "ges2", Mode::Open, &[1, 2], "198.18.0.3"));
    let ges3 = sim.add_ge(GeSpec::host(4, "ges3", Mode::Open, &[3], "198.18.0.4"));
    let gea = sim.add_ge(GeSpec::gateway(
        5,
        "gea",
        GeKind::Gea,
        Mode::Closed,
        &[2, 3],
        "198.18.5.1",
        Prefix::host(ip("192.168.5.10")),
    ));
    let server = sim.add_terminal("server", "192.168.5.10", gea);
    Paper {
        sim,
        hosts: vec![
            ("terminal", terminal),
            ("ges1", ges1),
            ("ges2", ges2),
            ("ges3", ges3),
            ("server", server),
        ],
        ges: vec![
            ("gen", gen_),
            ("ges1", ges1),
            ("ges2", ges2),
            ("ges3", ges3),
            ("gea", gea),
        ],
    }
}

const P1: Action = Protect(GroupId(1));
const P2: Action = Protect(GroupId(2));
const P3: Action = Protect(GroupId(3));

/// Same table as tests/decision_table.rs: (from, to, initiator end, responder end, dropped at).
#[rustfmt::skip]
const TABLE: &[(&str, &str, Action, Action, Option<u32>)] = &[
    ("terminal", "ges1", P1, P1, None), ("terminal", "ges2", P1, P1, None),
    ("terminal", "ges3", Drop, Pass, Some(1)), ("terminal", "server", Drop, Drop, Some(1)),
    ("ges1", "terminal", P1, P1, None), ("ges1", "ges2", P1, P1, None),
    ("ges1", "ges3", Pass, Pass, None), ("ges1", "server", Pass, Drop, Some(5)),
    ("ges2", "terminal", P1, P1, None), ("ges2", "ges1", P1, P1, None),
    ("ges2", "ges3", Pass, Pass, None), ("ges2", "server", P2, P2, None),
    ("ges3", "terminal", Pass, Drop, Some(1)), ("ges3", "ges1", Pass, Pass, None),
    ("ges3", "ges2", Pass, Pass, None), ("ges3", "server", P3, P3, None),
    ("server", "terminal", Drop, Drop, Some(5)), ("server", "ges1", Drop, Pass, Some(5)),
    ("server", "ges2", P2, P2, None), ("server", "ges3", P3, P3, None),
];

#[test]
fn the_paper_network_negotiates_the_table_on_the_wire() {
    let mut p = paper(40, LinkConfig::default());
    let host = |p: &Paper, n: &str| p.hosts.iter().find(|h| h.0 == n).unwrap().1;
    for (port, &(from, to, ia, ra, dropped)) in TABLE.iter().enumerate() {
        let (src, dst) = (host(&p, from), host(&p, to));
        let (ige, rge) = (p.sim.ge_of(src), p.sim.ge_of(dst));
        let before = (p.sim.events(ige).len(), p.sim.events(rge).len());
        let dst_addr = p.sim.addr(dst);
        let flow = p.sim.send_udp(src, dst_addr, 10_000 + port as u16, 9, b"x");
        p.sim.drive();
        let ctx = format!("{from} -> {to}");
        let new = |n: NodeId, skip: usize| {
            p.sim.events(n)[skip..]
                .iter()
                .map(|(_, e)| e.clone())
                .collect::<Vec<_>>()
        };
        let (iev, rev) = (new(ige, before.0), new(rge, before.1));
        let entry = |evs: &[Event]| {
            evs.iter().find_map(|e| match e {
                Event::Established(e) if e.flow == flow => Some(e.action),
                _ => None,
            })
        };
        match dropped {
            None => {
                assert_eq!(entry(&iev), Some(ia), "{ctx}");
                assert!(
                    iev.iter().any(|e| matches!(e, Event::Release { .. })),
                    "{ctx}"
                );
            }
            Some(by) => {
                // The initiator is told at once and installs nothing.
                assert_eq!(entry(&iev), None, "{ctx}");
                let failed = iev.iter().find_map(|e| match e {
                    Event::Failed {
                        reason,
                        dropped_packets,
                        ..
                    } => Some((reason.clone(), *dropped_packets)),
                    _ => None,
                });
                assert_eq!(
                    failed,
                    Some((FailReason::Dropped { by: GeId(by) }, 1)),
                    "{ctx}"
                );
            }
        }
        assert_eq!(entry(&rev), Some(ra), "{ctx}");
    }
    for (name, ge) in &p.ges {
        assert!(
            p.sim.errors(*ge).is_empty(),
            "{name}: {:?}",
            p.sim.errors(*ge)
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let mut p = paper(seed, LinkConfig::lossy(0.2));
        let (t, s) = (p.hosts[0].1, p.hosts[2].1);
        let dst = p.sim.addr(s);
        p.sim.send_udp(t, dst, 1, 2, b"x");
        p.sim.drive();
        let wire: Vec<(u128, Vec<u8>)> = p
            .sim
            .wire()
            .iter()
            .map(|w| ((w.at - p.sim.wire()[0].at).as_nanos(), w.payload.clone()))
            .collect();
        (wire, p.sim.stats)
    };
    let (a, b) = (run(5), run(5));
    assert_eq!(a, b);
    assert_ne!(a.0, run(6).0);
}

#[test]
fn virtual_time_advances_only_by_events() {
    let mut p = paper(41, LinkConfig::default());
    let (ges1, ges2) = (p.hosts[1].1, p.hosts[2].1);
    let dst = p.sim.addr(ges2);
    p.sim.send_udp(ges1, dst, 1, 2, b"x");
    // Four messages over one 10 ms hop each: established after 40 ms of virtual time.
    assert!(!p.sim.run_for(std::time::Duration::from_millis(39)));
    assert!(p.sim.established(ges1).is_none());
    p.sim.run_for(std::time::Duration::from_millis(1));
    assert!(p.sim.established(ges1).is_some());
}
