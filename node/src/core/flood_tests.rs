//! Node cores under a DDE flood in the simulator: the carrier's sender
//! check (a DDE's credential must be the GE the carrier authenticated) and
//! the flood counters `status` shows.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use fpn_proto::credential::Credential;
use fpn_proto::dprp::{Config, Endpoint, Entropy, Message, NegotiationId, Prefix};
use fpn_proto::flow::FlowId;
use fpn_proto::ge::{GeId, GeInfo, GeKind, GroupId, Mode};
use fpn_proto::keys::NodeKey;
use fpn_proto::sim::{START_UNIX, node_key};

use super::sim::{CoreSim, LinkConfig, overlay_of};
use crate::carrier::FrameKind;
use crate::status::Status;

fn info(id: u32) -> GeInfo {
    GeInfo {
        id: GeId(id),
        name: format!("n{id}"),
        kind: GeKind::Ges,
        mode: Mode::Open,
        groups: [GroupId(1)].into_iter().collect(),
        overlay: overlay_of(id),
    }
}

/// A DDE from the GE holding `credential` (overlay `overlay_of(id)`) to
/// `to`, made by a real endpoint; [`variant`] gives it other ids.
fn dde_template(sim: &CoreSim, id: u32, credential: Credential, to: Ipv4Addr) -> Vec<u8> {
    let src = IpAddr::V4(overlay_of(id));
    let cfg = Config::new(
        node_key(id),
        credential,
        sim.ca_public(),
        vec![Prefix::host(src)],
    );
    let mut ep =
        Endpoint::new(cfg, Entropy::Seeded([id as u8; 32]), START_UNIX, sim.now()).unwrap();
    // A member holds its group's key (one without it is refused before the
    // work these tests measure: note 24's no-downgrade rule).
    ep.set_group_key(
        GroupId(1),
        fpn_proto::keys::KeyVersion(1),
        super::sim::group_key(1, 1),
    );
    let flow = FlowId {
        src,
        dst: IpAddr::V4(to),
        protocol: 17,
        src_port: 4000,
        dst_port: 5000,
    };
    ep.initiate(flow, Vec::new(), sim.now()).unwrap();
    ep.poll_transmit().unwrap().payload
}

/// The DDE with another negotiation id (a new negotiation each).
fn variant(template: &[u8], id: u64) -> Vec<u8> {
    let Ok(Message::Dde(mut dde)) = Message::decode(template) else {
        panic!("a DDE")
    };
    dde.id = NegotiationId(id);
    Message::Dde(dde).encode().unwrap()
}

#[test]
fn a_dde_over_the_carrier_must_carry_the_credential_of_the_peer_that_sent_it() {
    let mut sim = CoreSim::new(40, LinkConfig::default());
    let a = sim.add_node(1, Mode::Open, &[1]);
    let c = sim.add_node(3, Mode::Open, &[1]);
    sim.introduce_all();
    // Mallory (GE 9, enrolled, its own carrier connection to a) copies c's
    // credential (credentials are public: every DDE of c carries it) into
    // DDEs it sends over its own connection. The copy is byte for byte c's
    // (same CA, info, key and validity: signatures are deterministic).
    let c_cred = sim.issue(info(3), &node_key(3));
    let template = dde_template(&sim, 3, c_cred, sim.nodes[a].overlay);
    let mallory = SocketAddr::from(([198, 18, 0, 9], 7718));
    for i in 0..150u64 {
        sim.inject(
            a,
            GeId(9),
            mallory,
            FrameKind::Control,
            &variant(&template, 1000 + i),
        );
    }
    // Every one dropped before DPRP: no verification, no state, and c's
    // budget at a (50/s, burst 100) is untouched.
    assert_eq!(sim.counter(a, "dde_wrong_peer"), 150);
    assert_eq!(sim.counter(a, "dprp_credential_verifications"), 0);
    assert_eq!(sim.counter(a, "dprp_rate_limited"), 0);
    assert_eq!(sim.counter(a, "negotiations"), 0);
    sim.stray.clear();
    // c itself starts a flow to a at once: its DDE (its credential, its
    // connection) passes and is not rate-limited.
    let before = sim.now();
    sim.send_udp(c, a, 4100, 5100, b"x");
    sim.drive();
    assert_eq!(sim.nodes[a].tun.len(), 1);
    assert!(sim.now() - before < std::time::Duration::from_secs(1));
    assert_eq!(sim.counter(a, "dprp_rate_limited"), 0);
    assert_eq!(sim.counter(a, "dde_wrong_peer"), 150);
    assert_eq!(sim.counter(c, "dprp_started"), 1);
}

#[test]
fn the_status_json_shows_the_flood_counters_move() {
    let mut sim = CoreSim::new(41, LinkConfig::default());
    let a = sim.add_node(1, Mode::Open, &[1]);
    let json = |sim: &CoreSim| {
        let st = Status {
            counters: sim.nodes[a].core.snapshot(&[]).counters,
            ..Status::default()
        };
        serde_json::to_value(&st).unwrap()["counters"].clone()
    };
    let quiet = json(&sim);
    for k in crate::status::FLOOD_COUNTERS {
        assert_eq!(
            quiet[*k], 0,
            "{k} is in the status JSON, 0 before any flood"
        );
    }
    let to = sim.nodes[a].overlay;
    // An enrolled flooder over its own connection: 300 DDEs at one instant.
    let honest = dde_template(&sim, 9, sim.issue(info(9), &node_key(9)), to);
    let from = SocketAddr::from(([198, 18, 0, 9], 7718));
    for i in 0..300u64 {
        sim.inject(
            a,
            GeId(9),
            from,
            FrameKind::Control,
            &variant(&honest, 1 + i),
        );
    }
    // A credential from another CA, claimed by GE 10, repeated 50 times.
    let rogue_ca = NodeKey::from_seed(&[77; 32]);
    let year = 365 * 24 * 3600;
    let forged = Credential::issue(
        &rogue_ca,
        10,
        info(10),
        node_key(10).public(),
        START_UNIX - year,
        START_UNIX + year,
    )
    .unwrap();
    let forged = dde_template(&sim, 10, forged, to);
    let from = SocketAddr::from(([198, 18, 0, 10], 7718));
    for i in 0..50u64 {
        sim.inject(
            a,
            GeId(10),
            from,
            FrameKind::Control,
            &variant(&forged, 5000 + i),
        );
    }
    // And one copy of GE 9's DDE sent over GE 10's connection.
    sim.inject(
        a,
        GeId(10),
        from,
        FrameKind::Control,
        &variant(&honest, 9999),
    );
    let flooded = json(&sim);
    // Source budget (burst 200) then GE budget (burst 100): 100 admitted.
    assert_eq!(flooded["dprp_rate_limited"], 200, "{flooded}");
    assert_eq!(flooded["dprp_responding"], 100, "{flooded}");
    // One failed verification, then the negative cache.
    assert_eq!(flooded["dprp_credential_cache_refusals"], 49, "{flooded}");
    assert_eq!(flooded["dprp_bad_credentials"], 1, "{flooded}");
    assert_eq!(flooded["dde_wrong_peer"], 1, "{flooded}");
    let line = crate::status::flood_line(&sim.nodes[a].core.counters());
    assert!(
        line.starts_with("flood: refused 250 (rate 200, busy 0, bad credential 49, wrong peer 1)"),
        "{line}"
    );
}
