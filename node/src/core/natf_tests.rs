//! NAT-f in the simulator: a remote core reaches a host behind a gateway
//! core through the host's VIN; the gateway writes the remote's packets
//! into its TUN unchanged and asks its driver to DNAT the pair; refusals,
//! the pair's lifetime and the reserved port on the native wire.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use fpn_proto::dprp::Prefix;
use fpn_proto::ge::{GeId, GroupId, Mode};
use fpn_proto::packet::Packet;
use fpn_proto::path::{Force, PathConfig};

use super::Command;
use super::natf::Host;
use super::sim::{CoreSim, LinkConfig, udp_packet};

const NAS: [u8; 4] = [192, 168, 1, 10];
const PRINTER: [u8; 4] = [192, 168, 1, 20];

fn hosts() -> Vec<Host> {
    vec![
        Host {
            name: "nas".into(),
            via: GeId(2),
            lan: vec![IpAddr::from(NAS)],
            groups: vec![GroupId(1)],
        },
        Host {
            name: "printer".into(),
            via: GeId(2),
            lan: vec![IpAddr::from(PRINTER)],
            groups: vec![GroupId(2)],
        },
    ]
}

/// Remote node 1 (group 1), gateway node 2 (closed, groups 1 and 2, the
/// LAN 192.168.1.0/24), both told of the two hosts.
pub(super) fn home(seed: u64, force: Force) -> (CoreSim, usize, usize) {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    sim.path = PathConfig {
        force,
        ..PathConfig::default()
    };
    let r = sim.add_node(1, Mode::Open, &[1]);
    let lan = Prefix::new(IpAddr::from([192, 168, 1, 0]), 24).unwrap();
    let g = sim.add_gateway(2, Mode::Closed, &[1, 2], lan);
    sim.introduce_all();
    for i in [r, g] {
        sim.command(i, Command::Hosts(hosts()));
    }
    (sim, r, g)
}

pub(super) fn vin(sim: &CoreSim, i: usize, name: &str) -> Ipv4Addr {
    sim.nodes[i]
        .core
        .host_names()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no VIN for {name}"))
}

fn flows(sim: &CoreSim, i: usize) -> Vec<crate::status::FlowStatus> {
    sim.nodes[i].core.snapshot(&[]).flows
}

#[test]
fn a_remote_reaches_a_host_behind_a_gateway_through_its_vin() {
    let (mut sim, r, g) = home(1, Force::Quic);
    // Only the hosts behind other GEs get VINs; the gateway fronts both
    // and told its driver their LAN addresses.
    assert_eq!(sim.nodes[g].core.host_names(), []);
    assert_eq!(
        sim.nodes[g].natf_fronted,
        [IpAddr::from(NAS), IpAddr::from(PRINTER)]
    );
    assert!(sim.nodes[r].natf_fronted.is_empty());
    let nas = vin(&sim, r, "nas");
    let ro = sim.nodes[r].overlay;
    let out = udp_packet(ro, nas, 4000, 5000, b"to the NAS");
    sim.send_packet(r, &out);
    sim.drive();
    // The gateway wrote the remote's packet into its TUN as the remote
    // sent it (the kernel DNATs it), and asked for the pair's DNAT.
    let got = &sim.nodes[g].tun;
    assert_eq!(got.len(), 1, "gateway TUN: {got:?}");
    let p = Packet::parse(&got[0][..]).unwrap();
    let f = p.flow_id();
    assert_eq!((f.src, f.dst), (IpAddr::V4(ro), IpAddr::V4(nas)));
    assert_eq!(p.payload(), b"to the NAS");
    assert_eq!(
        sim.nodes[g].natf_pairs.get(&(ro, nas)),
        Some(&IpAddr::from(NAS))
    );
    // Both ends show the mapping with the same reserved port.
    let (fr, fg) = (flows(&sim, r), flows(&sim, g));
    let (mr, mg) = (fr[0].natf.clone().unwrap(), fg[0].natf.clone().unwrap());
    assert_eq!((mr.role.as_str(), mg.role.as_str()), ("remote", "gateway"));
    assert_eq!(mr.port, mg.port);
    assert!((47000..=47999).contains(&mr.port), "{}", mr.port);
    assert_eq!(mr.lan, "192.168.1.10");
    // The NAS's answer, as conntrack hands it back into the gateway's
    // TUN, reaches the remote's application from the VIN.
    let back = udp_packet(nas, ro, 5000, 4000, b"from the NAS");
    sim.send_packet(g, &back);
    sim.drive();
    let got = &sim.nodes[r].tun;
    assert_eq!(got.len(), 1);
    let p = Packet::parse(&got[0][..]).unwrap();
    assert_eq!(p.flow_id().src, IpAddr::V4(nas));
    assert_eq!(p.payload(), b"from the NAS");
}

#[test]
fn a_host_outside_the_remote_s_groups_is_refused_at_once() {
    let (mut sim, r, g) = home(2, Force::Quic);
    let printer = vin(&sim, r, "printer");
    let ro = sim.nodes[r].overlay;
    sim.send_packet(r, &udp_packet(ro, printer, 4000, 80, b"print"));
    sim.drive();
    assert!(sim.nodes[g].tun.is_empty());
    assert!(sim.nodes[g].natf_pairs.is_empty());
    // ICMP administratively prohibited (type 3 code 13) to the application.
    let icmp = &sim.nodes[r].tun;
    assert_eq!(icmp.len(), 1, "{icmp:?}");
    assert_eq!((icmp[0][9], icmp[0][20], icmp[0][21]), (1, 3, 13));
    assert_eq!(sim.counter(r, "refused_flows"), 1);
}

#[test]
fn the_pair_goes_with_its_last_flow_and_with_the_host() {
    let (mut sim, r, g) = home(3, Force::Quic);
    let nas = vin(&sim, r, "nas");
    let ro = sim.nodes[r].overlay;
    for sport in [4000, 4001] {
        sim.send_packet(r, &udp_packet(ro, nas, sport, 5000, b"x"));
    }
    sim.drive();
    assert_eq!(sim.nodes[g].tun.len(), 2);
    assert_eq!(sim.nodes[g].natf_pairs.len(), 1);
    // Two flows, two reserved ports.
    let ports: std::collections::BTreeSet<u16> = flows(&sim, g)
        .iter()
        .filter_map(|f| f.natf.as_ref().map(|n| n.port))
        .collect();
    assert_eq!(ports.len(), 2);
    // The host leaves the directory: its flows end at the gateway, and the
    // pair's DNAT goes.
    sim.command(g, Command::Hosts(hosts()[1..].to_vec()));
    assert!(sim.nodes[g].natf_pairs.is_empty());
    assert_eq!(sim.nodes[g].natf_fronted, [IpAddr::from(PRINTER)]);
    assert!(flows(&sim, g).is_empty());
    // At the remote, a VIN whose host left answers host unreachable at once.
    sim.command(r, Command::Hosts(hosts()[1..].to_vec()));
    sim.nodes[r].tun.clear();
    sim.send_packet(r, &udp_packet(ro, nas, 4002, 5000, b"x"));
    sim.drive();
    let icmp = &sim.nodes[r].tun;
    assert_eq!(icmp.len(), 1);
    assert_eq!((icmp[0][20], icmp[0][21]), (3, 1));
}

#[test]
fn an_idle_nat_f_flow_ages_out_with_its_pair() {
    let (mut sim, r, g) = home(4, Force::Quic);
    let nas = vin(&sim, r, "nas");
    let ro = sim.nodes[r].overlay;
    sim.send_packet(r, &udp_packet(ro, nas, 4000, 5000, b"x"));
    sim.drive();
    assert_eq!(sim.nodes[g].natf_pairs.len(), 1);
    sim.run_for(Duration::from_secs(400));
    assert!(sim.nodes[g].natf_pairs.is_empty());
    assert!(flows(&sim, g).is_empty());
}

#[test]
fn on_the_native_path_the_wire_carries_the_reserved_port() {
    let (mut sim, r, g) = home(5, Force::Auto);
    sim.run_for(Duration::from_millis(500));
    let nas = vin(&sim, r, "nas");
    let ro = sim.nodes[r].overlay;
    sim.send_packet(r, &udp_packet(ro, nas, 4000, 5000, b"MARKER-natf"));
    sim.run_for(Duration::from_millis(100));
    sim.send_packet(r, &udp_packet(ro, nas, 4000, 5000, b"MARKER-natf"));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.nodes[g].tun.len(), 2, "{}", sim.nodes[g].tun.len());
    let port = flows(&sim, r)[0].natf.as_ref().unwrap().port;
    let gw = match sim.nodes[g].underlay.ip() {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!(),
    };
    let native: Vec<_> = sim
        .wire()
        .iter()
        .filter(|f| f.native)
        .filter_map(|f| Packet::parse(&f.payload[..]).ok().map(|p| p.flow_id()))
        .filter(|w| {
            w.protocol == 17 && w.dst_port != super::PROBE_PORT && w.src_port != super::PROBE_PORT
        })
        .collect();
    assert!(!native.is_empty(), "nothing went natively");
    for w in &native {
        assert_eq!((w.dst, w.dst_port), (IpAddr::V4(gw), port), "{w}");
    }
    assert!(
        !sim.wire()
            .iter()
            .any(|f| f.payload.windows(11).any(|x| x == b"MARKER-natf"))
    );
}

#[test]
fn a_renegotiated_flow_keeps_one_reserved_port() {
    let (mut sim, r, g) = home(6, Force::Quic);
    let nas = vin(&sim, r, "nas");
    let ro = sim.nodes[r].overlay;
    sim.send_packet(r, &udp_packet(ro, nas, 4000, 5000, b"x"));
    sim.drive();
    assert_eq!(sim.counter(g, "natf_ports_reserved"), 1);
    // Group 1's key rotates at both ends: the remote (the flow's
    // initiator) renegotiates, and the gateway reserves a new port.
    for i in [r, g] {
        sim.command(
            i,
            Command::Keys {
                group: GroupId(1),
                keys: vec![
                    (fpn_proto::keys::KeyVersion(2), super::sim::group_key(1, 2)),
                    (fpn_proto::keys::KeyVersion(1), super::sim::group_key(1, 1)),
                ],
            },
        );
    }
    sim.run_for(Duration::from_secs(5));
    let f = flows(&sim, g);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].key_version, Some(2), "not renegotiated: {:?}", f[0]);
    // One flow, one reservation: the old port went back to the pool.
    assert_eq!(sim.counter(g, "natf_ports_reserved"), 1);
    // Both ends agree on the new port, and packets still go through.
    let pr = flows(&sim, r)[0].natf.as_ref().unwrap().port;
    assert_eq!(f[0].natf.as_ref().unwrap().port, pr);
    sim.nodes[g].tun.clear();
    sim.send_packet(r, &udp_packet(ro, nas, 4000, 5000, b"after"));
    sim.drive();
    assert_eq!(sim.nodes[g].tun.len(), 1);
}
