//! NAT-f (GSRA) negotiations on the simulated network: a remote node R
//! reaches host H (192.168.1.10, a terminal) behind gateway G through a VIN.

use std::net::IpAddr;
use std::time::Duration;

use crate::Error;
use crate::dprp::msg::{Message, RefuseCode};
use crate::dprp::{Config, DprpOption, Established, FailReason, FrontedHost, NatfMapping, Vin};
use crate::flow::{FlowId, protocol};
use crate::ge::{GeId, GeKind, GroupId, Mode};
use crate::sim::{GeSpec, LinkConfig, NodeId, Sim};

const LIP: &str = "192.168.1.10";
const VIN: &str = "100.127.0.5";
const G_ID: u32 = 10;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Net {
    sim: Sim,
    g: NodeId,
}

/// Gateway G (GEN, open, groups 1 and 2) protecting 192.168.1.0/24, with H
/// behind it in `host_groups`; `tune` adjusts G's configuration.
fn net(host_groups: &[u32], tune: impl FnOnce(&mut Config)) -> Net {
    let mut sim = Sim::new(11, LinkConfig::default());
    let g = sim.add_ge_with(
        GeSpec::gateway(
            G_ID,
            "g",
            GeKind::Gen,
            Mode::Open,
            &[1, 2],
            "198.18.0.10",
            "192.168.1.0/24".parse().unwrap(),
        ),
        tune,
    );
    sim.add_terminal("nas", LIP, g);
    sim.set_fronted_hosts(
        g,
        vec![FrontedHost {
            lip: ip(LIP),
            groups: host_groups.iter().map(|g| GroupId(*g)).collect(),
        }],
    );
    Net { sim, g }
}

impl Net {
    /// A remote GES with a VIN for `lip` behind G.
    fn remote(&mut self, id: u32, groups: &[u32], addr: &str, vin: &str, lip: &str) -> NodeId {
        let r = self
            .sim
            .add_ge(GeSpec::host(id, "r", Mode::Open, groups, addr));
        let v = Vin {
            vin: ip(vin),
            gateway: GeId(G_ID),
            lip: ip(lip),
        };
        self.sim.add_vin(r, v, self.g);
        r
    }

    fn natf_ports(&mut self) -> usize {
        self.sim.endpoint(self.g).occupancy().natf_ports
    }
}

fn natf(e: &Established) -> NatfMapping {
    e.natf.expect("a NAT-f mapping")
}

fn established_natf(sim: &Sim, n: NodeId) -> Vec<NatfMapping> {
    sim.events(n)
        .iter()
        .filter_map(|(_, e)| match e {
            crate::dprp::Event::Established(e) => e.natf,
            _ => None,
        })
        .collect()
}

#[test]
fn remote_and_gateway_agree_on_keys_and_the_reserved_port() {
    let mut n = net(&[2], |_| {});
    let r = n.remote(1, &[1, 2], "198.18.0.1", VIN, LIP);
    let flow = n.sim.send_udp(r, ip(VIN), 4000, 80, b"GET /");
    n.sim.drive();
    let (ri, gi) = (
        n.sim.established(r).unwrap().clone(),
        n.sim.established(n.g).unwrap().clone(),
    );
    assert_eq!(
        ri.flow, flow,
        "the VIN is the flow's destination at both ends"
    );
    assert_eq!(gi.flow, flow);
    assert_eq!(ri.peer, GeId(G_ID));
    // Decided with the host's groups: 2, though R and G share group 1.
    assert_eq!(ri.action, crate::action::Action::Protect(GroupId(2)));
    assert_eq!(gi.action, ri.action);
    let (rk, gk) = (ri.keys.as_ref().unwrap(), gi.keys.as_ref().unwrap());
    assert_eq!(rk.tx.expose_secret(), gk.rx.expose_secret());
    assert_eq!(rk.rx.expose_secret(), gk.tx.expose_secret());
    assert_eq!(natf(&ri), natf(&gi));
    assert_eq!(natf(&ri).lip, ip(LIP));
    assert!(crate::dprp::DEFAULT_NATF_PORTS.contains(&natf(&ri).reserved_port));
    assert!(gi.peer_options.contains(&DprpOption::NatF {
        lip: ip(LIP),
        reserved_port: 0
    }));
    assert_eq!(n.natf_ports(), 1);
    // The held packet is released under the entry.
    assert!(
        n.sim
            .events(r)
            .iter()
            .any(|(_, e)| matches!(e, crate::dprp::Event::Release { .. }))
    );
    // The reservation outlives the negotiation: the node frees it.
    n.sim.run_for(Duration::from_secs(30));
    assert_eq!(n.sim.endpoint(n.g).negotiations(), 0);
    assert_eq!(n.natf_ports(), 1);
    let port = natf(&gi).reserved_port;
    assert!(n.sim.endpoint(n.g).release_natf_port(protocol::UDP, port));
    assert_eq!(n.natf_ports(), 0);
}

#[test]
fn every_remote_and_every_flow_gets_its_own_port() {
    let mut n = net(&[1], |_| {});
    let r1 = n.remote(1, &[1], "198.18.0.1", VIN, LIP);
    let r2 = n.remote(2, &[1], "198.18.0.2", VIN, LIP);
    n.sim.send_udp(r1, ip(VIN), 4000, 80, b"a");
    n.sim.send_udp(r1, ip(VIN), 4001, 80, b"b");
    n.sim.send_udp(r2, ip(VIN), 4000, 80, b"c");
    n.sim.drive();
    let mut ports: Vec<u16> = established_natf(&n.sim, n.g)
        .iter()
        .map(|m| m.reserved_port)
        .collect();
    assert_eq!(ports.len(), 3);
    let mut remote: Vec<u16> = [r1, r2]
        .iter()
        .flat_map(|r| established_natf(&n.sim, *r))
        .map(|m| m.reserved_port)
        .collect();
    ports.sort_unstable();
    remote.sort_unstable();
    assert_eq!(ports, remote, "each remote learns the port of its flow");
    ports.dedup();
    assert_eq!(ports.len(), 3, "ports are unique");
    assert_eq!(n.natf_ports(), 3);
}

#[test]
fn a_retransmitted_dde_reserves_no_second_port() {
    let mut n = net(&[1], |_| {});
    let r = n.remote(1, &[1], "198.18.0.1", VIN, LIP);
    // The first RGI is lost: R sends its DDE again, G answers it again.
    let g = n.g;
    let mut lost = false;
    n.sim.set_tamper(move |from, bytes| {
        if from == g && !lost && matches!(Message::decode(bytes), Ok(Message::Rgi(_))) {
            lost = true;
            bytes.clear();
        }
    });
    n.sim.send_udp(r, ip(VIN), 4000, 80, b"x");
    n.sim.drive();
    let ddes = n
        .sim
        .wire()
        .iter()
        .filter(|s| s.from == r && matches!(Message::decode(&s.payload), Ok(Message::Dde(_))))
        .count();
    assert!(ddes >= 2, "the DDE was retransmitted");
    assert_eq!(n.natf_ports(), 1);
    // The first port of the range: the retransmission was answered from
    // the first reservation, not by a new one (which would take the next).
    assert_eq!(natf(n.sim.established(g).unwrap()).reserved_port, 47000);
    assert_eq!(
        natf(n.sim.established(r).unwrap()),
        natf(n.sim.established(g).unwrap())
    );
}

#[test]
fn a_remote_outside_the_hosts_groups_is_refused_fast() {
    // R shares group 1 with G, but the host is only in group 2.
    let mut n = net(&[2], |_| {});
    let r = n.remote(1, &[1], "198.18.0.1", VIN, LIP);
    n.sim.send_udp(r, ip(VIN), 4000, 80, b"x");
    n.sim.drive();
    assert_eq!(
        n.sim.failures(r),
        vec![FailReason::Refused {
            by: GeId(G_ID),
            code: RefuseCode::NotInHostGroup
        }]
    );
    let failed_at = n
        .sim
        .events(r)
        .iter()
        .find(|(_, e)| matches!(e, crate::dprp::Event::Failed { .. }))
        .map(|(t, _)| *t)
        .unwrap();
    assert!(failed_at - n.sim.wire()[0].at < Duration::from_millis(100));
    assert!(n.sim.established(r).is_none() && n.sim.established(n.g).is_none());
    assert_eq!(n.natf_ports(), 0);
    assert_eq!(n.sim.endpoint(n.g).stats().natf_refused, 1);
}

#[test]
fn a_host_not_fronted_or_not_covered_is_refused() {
    // Fronted but outside G's credential (10.9.9.9), covered but not
    // fronted, neither.
    for (lip, fronted) in [
        ("10.9.9.9", true),
        ("192.168.1.11", false),
        ("172.16.0.1", false),
    ] {
        let mut n = net(&[1], |_| {});
        if fronted {
            n.sim.set_fronted_hosts(
                n.g,
                vec![FrontedHost {
                    lip: ip(lip),
                    groups: vec![GroupId(1)],
                }],
            );
        }
        let r = n.remote(1, &[1], "198.18.0.1", VIN, lip);
        n.sim.send_udp(r, ip(VIN), 4000, 80, b"x");
        n.sim.drive();
        assert_eq!(
            n.sim.failures(r),
            vec![FailReason::Refused {
                by: GeId(G_ID),
                code: RefuseCode::UnknownHost
            }],
            "{lip}"
        );
        assert_eq!(n.natf_ports(), 0);
    }
}

#[test]
fn an_exhausted_pool_refuses_until_a_port_is_released() {
    let mut n = net(&[1], |c| c.natf_ports = 47000..=47000);
    let r = n.remote(1, &[1], "198.18.0.1", VIN, LIP);
    n.sim.send_udp(r, ip(VIN), 4000, 80, b"a");
    n.sim.drive();
    assert_eq!(natf(n.sim.established(r).unwrap()).reserved_port, 47000);
    n.sim.send_udp(r, ip(VIN), 4001, 80, b"b");
    n.sim.drive();
    assert_eq!(
        n.sim.failures(r),
        vec![FailReason::Refused {
            by: GeId(G_ID),
            code: RefuseCode::NoPort
        }]
    );
    // The same port number of another protocol is free.
    let tcp = FlowId {
        src: ip("198.18.0.1"),
        dst: ip(VIN),
        protocol: protocol::TCP,
        src_port: 4002,
        dst_port: 80,
    };
    n.sim.send_packet(r, tcp, b"syn".to_vec());
    n.sim.drive();
    assert_eq!(n.sim.established(r).unwrap().flow, tcp);
    // The node removes the first flow: its port serves the next one.
    assert!(n.sim.endpoint(n.g).release_natf_port(protocol::UDP, 47000));
    let flow = n.sim.send_udp(r, ip(VIN), 4003, 80, b"c");
    n.sim.drive();
    let e = n.sim.established(r).unwrap();
    assert_eq!((e.flow, natf(e).reserved_port), (flow, 47000));
}

#[test]
fn a_failed_negotiation_frees_its_port() {
    let mut n = net(&[1], |_| {});
    let r = n.remote(1, &[1], "198.18.0.1", VIN, LIP);
    // Every MPIT is lost: G's responder waits, then times out.
    n.sim.set_tamper(move |from, bytes| {
        if from == r && matches!(Message::decode(bytes), Ok(Message::Mpit(_))) {
            bytes.clear();
        }
    });
    n.sim.send_udp(r, ip(VIN), 4000, 80, b"x");
    n.sim.run_for(Duration::from_secs(1));
    assert_eq!(n.natf_ports(), 1, "reserved while the negotiation runs");
    n.sim.drive();
    assert_eq!(n.sim.failures(r), vec![FailReason::Timeout]);
    assert!(n.sim.established(n.g).is_none());
    assert_eq!(n.natf_ports(), 0);
}

#[test]
fn an_rgi_whose_port_was_changed_on_the_way_is_rejected() {
    let mut n = net(&[1], |_| {});
    let r = n.remote(1, &[1], "198.18.0.1", VIN, LIP);
    let g = n.g;
    n.sim.set_tamper(move |from, bytes| {
        if from != g {
            return;
        }
        if let Ok(Message::Rgi(mut rgi)) = Message::decode(bytes) {
            for o in &mut rgi.responder.options {
                if let DprpOption::NatF { reserved_port, .. } = o {
                    *reserved_port = 8080;
                }
            }
            *bytes = Message::Rgi(rgi).encode().unwrap();
        }
    });
    n.sim.send_udp(r, ip(VIN), 4000, 80, b"x");
    n.sim.drive();
    assert!(n.sim.established(r).is_none());
    assert!(
        n.sim
            .errors(r)
            .iter()
            .any(|(_, e)| *e == Error::BadMac("RGI tag"))
    );
    assert_eq!(n.sim.failures(r), vec![FailReason::Timeout]);
    assert_eq!(n.natf_ports(), 0, "G's negotiation timed out too");
}

#[test]
fn an_answer_without_a_mapping_is_rejected() {
    // G ignores NAT-f and answers as the end of the VIN's address.
    let mut n = net(&[1], |c| {
        c.natf_ignored = true;
        c.protected.push(crate::dprp::Prefix::host(ip(VIN)));
    });
    let r = n.remote(1, &[1], "198.18.0.1", VIN, LIP);
    n.sim.send_udp(r, ip(VIN), 4000, 80, b"x");
    n.sim.drive();
    assert_eq!(
        n.sim.failures(r),
        vec![FailReason::Rejected(Error::BadNatfAnswer(
            "no NAT-f option"
        ))]
    );
    assert_eq!(n.sim.endpoint(r).stats().natf_bad_answers, 1);
    assert!(n.sim.established(r).is_none());
}

#[test]
fn a_stranger_gateway_answering_is_not_accepted() {
    let mut n = net(&[1], |_| {});
    // S fronts a host at the same LAN address, in the same group: the VIN's
    // datagrams reach it instead of G.
    let s = n.sim.add_ge(GeSpec::gateway(
        20,
        "s",
        GeKind::Gen,
        Mode::Open,
        &[1],
        "198.18.0.20",
        "192.168.1.0/24".parse().unwrap(),
    ));
    n.sim.set_fronted_hosts(
        s,
        vec![FrontedHost {
            lip: ip(LIP),
            groups: vec![GroupId(1)],
        }],
    );
    let r = n
        .sim
        .add_ge(GeSpec::host(1, "r", Mode::Open, &[1], "198.18.0.1"));
    let v = Vin {
        vin: ip(VIN),
        gateway: GeId(G_ID),
        lip: ip(LIP),
    };
    n.sim.add_vin(r, v, s);
    n.sim.send_udp(r, ip(VIN), 4000, 80, b"x");
    n.sim.drive();
    assert_eq!(
        n.sim.failures(r),
        vec![FailReason::Rejected(Error::UnexpectedPeer {
            expected: G_ID,
            found: 20
        })]
    );
    assert!(n.sim.established(r).is_none());
    // S's reservation went with its unconfirmed negotiation.
    assert_eq!(n.sim.endpoint(s).occupancy().natf_ports, 0);
}

#[test]
fn a_gateway_on_the_path_passes_the_request_on_even_fronting_the_same_address() {
    let mut n = net(&[1], |_| {});
    // T in front of R's LAN 10.0.0.0/24 fronts a host of its own at the
    // same private address as G's (both homes use 192.168.1.0/24).
    let mut spec = GeSpec::gateway(
        30,
        "t",
        GeKind::Gen,
        Mode::Closed,
        &[1],
        "198.18.0.30",
        "10.0.0.0/24".parse().unwrap(),
    );
    spec.protects.push("192.168.1.0/24".parse().unwrap());
    let t = n.sim.add_ge(spec);
    n.sim.set_fronted_hosts(
        t,
        vec![FrontedHost {
            lip: ip(LIP),
            groups: vec![GroupId(1)],
        }],
    );
    let r = n
        .sim
        .add_ge(GeSpec::host(1, "r", Mode::Open, &[1], "10.0.0.2").behind(t));
    let v = Vin {
        vin: ip(VIN),
        gateway: GeId(G_ID),
        lip: ip(LIP),
    };
    n.sim.add_vin(r, v, n.g);
    let flow = n.sim.send_udp(r, ip(VIN), 4000, 80, b"x");
    n.sim.drive();
    let (ri, ti, gi) = (
        n.sim.established(r).expect("R's entry").clone(),
        n.sim.established(t).expect("T's entry").clone(),
        n.sim.established(n.g).expect("G's entry").clone(),
    );
    assert_eq!((ri.flow, ti.flow, gi.flow), (flow, flow, flow));
    assert_eq!(ti.action, crate::action::Action::Relay);
    assert_eq!(ti.natf, None, "a gateway on the path reserves nothing");
    assert_eq!(natf(&ri), natf(&gi));
    assert_eq!(n.sim.endpoint(t).occupancy().natf_ports, 0);
    assert_eq!(n.natf_ports(), 1);
}
