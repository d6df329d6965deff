//! Forward secrecy of DPRP's randomness (issue #9, item 4): an endpoint
//! built with [`Entropy::Os`] draws every ephemeral secret, nonce and
//! negotiation id from the OS, so nothing kept in the process (no seed, no
//! per-process key) predicts them; a seeded endpoint, for the simulators,
//! repeats itself exactly.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use fpn_proto::dprp::msg::{Dde, Rgi};
use fpn_proto::dprp::{Config, DPRP_PORT, Endpoint, Entropy, Message, Prefix};
use fpn_proto::flow::{FlowId, protocol};
use fpn_proto::ge::{GroupId, Mode};
use fpn_proto::keys::KeyVersion;
use fpn_proto::sim::{self, GeSpec, LinkConfig, START_UNIX, Sim};
use ring::hkdf;
use x25519_dalek::{PublicKey, StaticSecret};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn flow() -> FlowId {
    FlowId {
        src: ip("100.64.0.1"),
        dst: ip("100.64.0.2"),
        protocol: protocol::UDP,
        src_port: 4000,
        dst_port: 22,
    }
}

/// An endpoint for GE `id` at `addr`, credential from the simulation's CA
/// (the same bytes on every call: only `entropy` differs between two).
fn endpoint(sim: &mut Sim, id: u32, addr: &str, entropy: Entropy, now: Instant) -> Endpoint {
    let spec = GeSpec::host(id, "ge", Mode::Open, &[1], addr);
    let key = sim::node_key(id);
    let credential = sim.issue(Sim::info_of(&spec), &key);
    let cfg = Config::new(
        key,
        credential,
        sim.ca_public(),
        vec![Prefix::host(ip(addr))],
    );
    let mut ep = Endpoint::new(cfg, entropy, START_UNIX, now).unwrap();
    let gk = sim.group_key(GroupId(1));
    ep.set_group_key(GroupId(1), KeyVersion(1), gk);
    ep
}

/// The DDE an initiator sends first for `flow()`.
fn first_dde(ep: &mut Endpoint, now: Instant) -> (Vec<u8>, Dde) {
    ep.initiate(flow(), vec![], now).unwrap();
    let raw = ep.poll_transmit().unwrap().payload;
    let Message::Dde(d) = Message::decode(&raw).unwrap() else {
        panic!("not a DDE")
    };
    (raw, d)
}

/// The RGI a responder answers `dde` with.
fn rgi_for(ep: &mut Endpoint, dde: &[u8], now: Instant) -> Rgi {
    let from = SocketAddr::new(ip("100.64.0.1"), DPRP_PORT);
    ep.handle_datagram(from, dde, now).unwrap();
    let raw = ep.poll_transmit().unwrap().payload;
    let Message::Rgi(r) = Message::decode(&raw).unwrap() else {
        panic!("not an RGI")
    };
    r
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// What a seeded endpoint's first negotiation draws (secret, nonce, id),
/// recomputed from the seed alone: the derivation a real node must not use.
fn predict(seed: [u8; 32]) -> ([u8; 32], [u8; 16], u64) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"fpn v1 dprp seed").extract(&seed);
    let mut r = [0u8; 56];
    prk.expand(&[b"fpn v1 dprp rng", &0u64.to_be_bytes()], Len(56))
        .unwrap()
        .fill(&mut r)
        .unwrap();
    let secret = PublicKey::from(&StaticSecret::from(<[u8; 32]>::try_from(&r[..32]).unwrap()));
    (
        secret.to_bytes(),
        r[32..48].try_into().unwrap(),
        u64::from_be_bytes(r[48..].try_into().unwrap()),
    )
}

#[test]
fn os_entropy_gives_two_identical_endpoints_different_ephemerals_nonces_and_ids() {
    let mut sim = Sim::new(1, LinkConfig::default());
    let now = sim.now();
    // Two initiators identical in every input, in one process: a per-process
    // key (or any fixed seed) behind `Entropy::Os` would make them agree.
    let mut a = endpoint(&mut sim, 1, "100.64.0.1", Entropy::Os, now);
    let mut b = endpoint(&mut sim, 1, "100.64.0.1", Entropy::Os, now);
    let (raw_a, da) = first_dde(&mut a, now);
    let (_, db) = first_dde(&mut b, now);
    assert_ne!(da.share, db.share, "ephemeral shares repeat");
    assert_ne!(da.nonce, db.nonce, "nonces repeat");
    assert_ne!(da.id, db.id, "negotiation ids repeat");
    // And the same two as responders, given the very same DDE.
    let mut r1 = endpoint(&mut sim, 2, "100.64.0.2", Entropy::Os, now);
    let mut r2 = endpoint(&mut sim, 2, "100.64.0.2", Entropy::Os, now);
    let (g1, g2) = (rgi_for(&mut r1, &raw_a, now), rgi_for(&mut r2, &raw_a, now));
    assert_ne!(
        g1.responder.share, g2.responder.share,
        "responder ephemerals repeat"
    );
    // The seed material a simulator would use (all-zero, or any other) does
    // not predict an OS-sourced ephemeral.
    for seed in [[0u8; 32], [1u8; 32]] {
        assert_ne!(predict(seed).0, da.share);
    }
}

#[test]
fn seeded_entropy_is_reproducible_and_predictable_from_its_seed() {
    let mut sim = Sim::new(2, LinkConfig::default());
    let now = sim.now();
    let seed = [7u8; 32];
    let mut a = endpoint(&mut sim, 1, "100.64.0.1", Entropy::Seeded(seed), now);
    let mut b = endpoint(&mut sim, 1, "100.64.0.1", Entropy::Seeded(seed), now);
    let (raw_a, da) = first_dde(&mut a, now);
    let (raw_b, _) = first_dde(&mut b, now);
    assert_eq!(raw_a, raw_b, "a seeded endpoint must repeat itself");
    // Exactly why a node must not run seeded: the seed gives the secrets.
    let (share, nonce, id) = predict(seed);
    assert_eq!((da.share, da.nonce, da.id.0), (share, nonce, id));
}
