//! Engine dispatch without I/O: real DPRP endpoints, PITs and PCCOM between
//! engines whose carrier frames and TUN writes are captured in memory and
//! delivered by hand. (The real carrier and TUN are exercised by the lab's
//! acceptance tests.)

use std::collections::BTreeSet;
use std::sync::Mutex;

use fpn_gms::ca::Ca;
use fpn_proto::dprp::Config;
use fpn_proto::ge::{GeInfo, GeKind, Mode};
use fpn_proto::keys::NodeKey;
use fpn_proto::pit::PitConfig;

use super::*;
use crate::carrier::PeerStats;

const T0: u64 = 1_800_000_000;

#[derive(Default)]
struct Frames(Mutex<Vec<(GeId, FrameKind, Vec<u8>)>>);

impl Carrier for Frames {
    fn kind(&self) -> CarrierKind {
        CarrierKind::Quic
    }
    fn send(&self, to: &PeerTarget, kind: FrameKind, payload: &[u8]) -> crate::error::Result<()> {
        self.0.lock().unwrap().push((to.ge, kind, payload.to_vec()));
        Ok(())
    }
    fn peers(&self) -> Vec<PeerStats> {
        Vec::new()
    }
}

#[derive(Default)]
struct Tun(Mutex<Vec<Vec<u8>>>);

impl TunWriter for Tun {
    fn write_packet(&self, packet: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().push(packet.to_vec());
        Ok(packet.len())
    }
}

struct Node {
    engine: Engine,
    ge: GeId,
    overlay: Ipv4Addr,
    underlay: SocketAddr,
    frames: Arc<Frames>,
    tun: Arc<Tun>,
    _dir: mpsc::Receiver<Ipv4Addr>,
}

fn node(ca: &Ca, id: u32, mode: Mode, groups: &[u32], now: Instant) -> Node {
    let key = NodeKey::from_seed(&[id as u8; 32]);
    let overlay = Ipv4Addr::new(100, 64, 0, id as u8);
    let info = GeInfo {
        id: GeId(id),
        name: format!("n{id}"),
        kind: GeKind::Ges,
        mode,
        groups: groups.iter().map(|g| GroupId(*g)).collect::<BTreeSet<_>>(),
        overlay,
    };
    let cred = ca
        .issue_credential(u64::from(id), info, key.public(), T0 - 60, T0 + 86_400)
        .unwrap();
    let cfg = Config::new(
        key,
        cred,
        ca.public_key(),
        vec![dprp::Prefix::host(IpAddr::V4(overlay))],
    );
    let dprp = Endpoint::new(cfg, [id as u8; 32], T0, now).unwrap();
    let frames = Arc::new(Frames::default());
    let tun = Arc::new(Tun::default());
    let (tx, rx) = mpsc::channel(16);
    let mut engine = Engine::new(
        EngineConfig {
            overlay,
            mtu: 1380,
            overlay_net: (Ipv4Addr::new(100, 64, 0, 0), 10),
        },
        dprp,
        Pit::new(PitConfig::default()),
        frames.clone(),
        tun.clone(),
        tx,
    );
    for g in groups {
        engine.handle_command(
            Command::Keys {
                group: GroupId(*g),
                keys: vec![(KeyVersion(1), GroupKey::from_bytes([*g as u8; 32]))],
            },
            now,
        );
    }
    Node {
        engine,
        ge: GeId(id),
        overlay,
        underlay: SocketAddr::from(([198, 18, 0, id as u8], 7718)),
        frames,
        tun,
        _dir: rx,
    }
}

/// Tells every node where every other one is.
fn introduce(nodes: &mut [&mut Node], now: Instant) {
    let recs: Vec<PeerRecord> = nodes
        .iter()
        .map(|n| PeerRecord {
            name: format!("n{}", n.ge.0),
            ge: n.ge.0,
            overlay: n.overlay,
            addrs: vec![n.underlay],
            fetched: T0,
        })
        .collect();
    for n in nodes.iter_mut() {
        for r in &recs {
            if r.ge != n.ge.0 {
                n.engine.handle_command(Command::Peer(r.clone()), now);
            }
        }
    }
}

/// Two open nodes sharing group 1 that know where the other is.
fn open_pair(ca: &Ca, now: Instant) -> (Node, Node) {
    let mut a = node(ca, 1, Mode::Open, &[1], now);
    let mut b = node(ca, 2, Mode::Open, &[1], now);
    introduce(&mut [&mut a, &mut b], now);
    (a, b)
}

/// Delivers captured frames between nodes until none are left; returns
/// the data frames seen on the way (the "wire").
fn pump(nodes: &mut [&mut Node], now: Instant) -> Vec<Vec<u8>> {
    let mut wire = Vec::new();
    for _ in 0..32 {
        let mut moved = false;
        for i in 0..nodes.len() {
            let out: Vec<_> = std::mem::take(&mut *nodes[i].frames.0.lock().unwrap());
            let (from_ge, from) = (nodes[i].ge, nodes[i].underlay);
            for (to, kind, payload) in out {
                moved = true;
                if kind == FrameKind::Data {
                    wire.push(payload.clone());
                }
                let dst = nodes.iter_mut().find(|n| n.ge == to).expect("known peer");
                let frame = Inbound {
                    peer: from_ge,
                    from,
                    kind,
                    payload: payload.into(),
                };
                dst.engine.handle_inbound(&frame, now);
            }
        }
        if !moved {
            break;
        }
    }
    wire
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 28 + payload.len()];
    let total = p.len() as u16;
    p[0] = 0x45;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    let mut sum: u32 = 0;
    for c in p[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p
}

fn send(n: &mut Node, packet: &[u8], now: Instant) {
    let mut buf = vec![0u8; n.engine.buffer_len()];
    buf[..packet.len()].copy_from_slice(packet);
    n.engine.handle_tun_packet(&mut buf, packet.len(), now);
}

fn send_udp(n: &mut Node, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8], now: Instant) {
    let pkt = udp(n.overlay, dst, sport, dport, payload);
    send(n, &pkt, now);
}

fn counter(n: &Node, name: &str) -> u64 {
    n.engine.snapshot().counters[name]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_first_packet_is_held_negotiated_and_delivered_encrypted() {
    let ca = Ca::generate(T0).unwrap();
    let now = Instant::now();
    let (mut a, mut b) = open_pair(&ca, now);
    let pkt = udp(a.overlay, b.overlay, 4000, 5000, b"MARKER-first-packet");
    send(&mut a, &pkt, now);
    assert_eq!(counter(&a, "held"), 1);
    assert!(b.tun.0.lock().unwrap().is_empty());
    let wire = pump(&mut [&mut a, &mut b], now);
    // Exactly the application's packet came out at b, and the wire never
    // carried its payload in the clear.
    // The same packet (PCCOM filled in the UDP checksum the sender left 0).
    let got = b.tun.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!((&got[0][..26], &got[0][28..]), (&pkt[..26], &pkt[28..]));
    assert_eq!(wire.len(), 1);
    assert!(!contains(&wire[0], b"MARKER"));
    // The reply travels under the same entry, no new negotiation.
    let reply = udp(b.overlay, a.overlay, 5000, 4000, b"MARKER-reply");
    send(&mut b, &reply, now);
    pump(&mut [&mut a, &mut b], now);
    let got = a.tun.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!((&got[..26], &got[28..]), (&reply[..26], &reply[28..]));
    let s = a.engine.snapshot();
    assert_eq!(s.flows.len(), 1);
    assert_eq!(
        (s.flows[0].action.as_str(), s.flows[0].carrier.as_str()),
        ("encrypt", "quic")
    );
    assert_eq!((s.flows[0].packets_out, s.flows[0].packets_in), (1, 1));
    assert_eq!(counter(&a, "dprp_started"), 1);
}

#[test]
fn a_closed_peer_without_a_shared_group_is_refused_with_icmp_at_once() {
    let ca = Ca::generate(T0).unwrap();
    let now = Instant::now();
    let mut a = node(&ca, 1, Mode::Open, &[1], now);
    let mut c = node(&ca, 3, Mode::Closed, &[2], now);
    introduce(&mut [&mut a, &mut c], now);
    let pkt = udp(a.overlay, c.overlay, 4000, 22, b"hello");
    send(&mut a, &pkt, now);
    pump(&mut [&mut a, &mut c], now);
    assert!(c.tun.0.lock().unwrap().is_empty());
    let icmp = a
        .tun
        .0
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("an ICMP error");
    assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 13));
    assert_eq!(&icmp[28..56], &pkt[..28]);
    let s = a.engine.snapshot();
    assert_eq!(s.flows.len(), 1);
    assert_eq!(s.flows[0].action, "refuse");
    // The next packet of the flow is refused at once from the negative entry.
    send(&mut a, &pkt, now);
    assert_eq!(counter(&a, "icmp_sent"), 2);
}

#[test]
fn open_nodes_without_a_shared_group_talk_in_plain() {
    let ca = Ca::generate(T0).unwrap();
    let now = Instant::now();
    let mut a = node(&ca, 1, Mode::Open, &[1], now);
    let mut e = node(&ca, 5, Mode::Open, &[3], now);
    introduce(&mut [&mut a, &mut e], now);
    let pkt = udp(a.overlay, e.overlay, 4000, 5000, b"PLAIN-marker");
    send(&mut a, &pkt, now);
    let wire = pump(&mut [&mut a, &mut e], now);
    let got = e.tun.0.lock().unwrap().clone();
    assert_eq!((got.len(), &got[0][28..]), (1, &pkt[28..]));
    assert!(contains(&wire[0], b"PLAIN-marker"));
    assert_eq!(a.engine.snapshot().flows[0].action, "plain");
}

#[test]
fn packets_from_a_ge_other_than_the_flows_peer_are_dropped() {
    let ca = Ca::generate(T0).unwrap();
    let now = Instant::now();
    let (mut a, mut b) = open_pair(&ca, now);
    send_udp(&mut a, b.overlay, 4000, 5000, b"x", now);
    let wire = pump(&mut [&mut a, &mut b], now);
    // The same protected bytes, replayed by another authenticated GE.
    let forged = Inbound {
        peer: GeId(9),
        from: SocketAddr::from(([198, 18, 0, 9], 7718)),
        kind: FrameKind::Data,
        payload: wire[0].clone().into(),
    };
    b.engine.handle_inbound(&forged, now);
    assert_eq!(counter(&b, "data_in_wrong_peer"), 1);
    assert_eq!(b.tun.0.lock().unwrap().len(), 1);
}

#[test]
fn after_a_rotation_only_the_initiator_renegotiates_and_traffic_goes_on() {
    let ca = Ca::generate(T0).unwrap();
    let now = Instant::now();
    let (mut a, mut b) = open_pair(&ca, now);
    send_udp(&mut a, b.overlay, 4000, 5000, b"one", now);
    pump(&mut [&mut a, &mut b], now);
    let keys = || Command::Keys {
        group: GroupId(1),
        keys: vec![
            (KeyVersion(2), GroupKey::from_bytes([22; 32])),
            (KeyVersion(1), GroupKey::from_bytes([1; 32])),
        ],
    };
    a.engine.handle_command(keys(), now);
    b.engine.handle_command(keys(), now);
    // Nothing happens at once; the old entry keeps carrying packets.
    assert!(a.frames.0.lock().unwrap().is_empty() && b.frames.0.lock().unwrap().is_empty());
    send_udp(&mut a, b.overlay, 4000, 5000, b"two", now);
    pump(&mut [&mut a, &mut b], now);
    let later = now + Duration::from_secs(2);
    a.engine.handle_tick(later);
    b.engine.handle_tick(later);
    pump(&mut [&mut a, &mut b], later);
    assert_eq!(counter(&a, "dprp_started"), 2);
    assert_eq!(counter(&b, "dprp_started"), 0);
    assert_eq!(a.engine.snapshot().flows[0].key_version, Some(2));
    assert_eq!(b.engine.snapshot().flows[0].key_version, Some(2));
    send_udp(&mut b, a.overlay, 5000, 4000, b"three", later);
    send_udp(&mut a, b.overlay, 4000, 5000, b"four", later);
    pump(&mut [&mut a, &mut b], later);
    assert_eq!(b.tun.0.lock().unwrap().len(), 3);
    assert_eq!(a.tun.0.lock().unwrap().len(), 1);
    assert_eq!(
        counter(&a, "data_in_rejected") + counter(&b, "data_in_rejected"),
        0
    );
}

#[test]
fn a_revoked_peer_loses_its_flows_at_once() {
    let ca = Ca::generate(T0).unwrap();
    let now = Instant::now();
    let (mut a, mut b) = open_pair(&ca, now);
    send_udp(&mut a, b.overlay, 4000, 5000, b"x", now);
    pump(&mut [&mut a, &mut b], now);
    a.engine.handle_command(
        Command::Revoked {
            ge: b.ge,
            serials: vec![2],
        },
        now,
    );
    assert!(a.engine.snapshot().flows.is_empty());
    // A new negotiation with the revoked credential fails.
    send_udp(&mut a, b.overlay, 4001, 5000, b"y", now);
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(b.tun.0.lock().unwrap().len(), 1);
}

#[test]
fn packets_of_a_flow_this_node_forgot_make_it_negotiate_again() {
    let ca = Ca::generate(T0).unwrap();
    let now = Instant::now();
    let (mut a, mut b) = open_pair(&ca, now);
    send_udp(&mut b, a.overlay, 5000, 4000, b"x", now);
    pump(&mut [&mut a, &mut b], now);
    // a restarts: a fresh engine, same identity, no flows.
    let mut a = node(&ca, 1, Mode::Open, &[1], now);
    introduce(&mut [&mut a, &mut b], now);
    send_udp(&mut b, a.overlay, 5000, 4000, b"lost", now);
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(counter(&a, "data_in_no_flow"), 1);
    // a negotiated the flow again: b's next packet arrives.
    send_udp(&mut b, a.overlay, 5000, 4000, b"back", now);
    pump(&mut [&mut a, &mut b], now);
    let got = a.tun.0.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert!(contains(&got[0], b"back"));
}
