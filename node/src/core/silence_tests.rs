//! Issue 9 #3 in the node core: revocations made while a node was away,
//! and the bound on how long it trusts old credentials without the GMS.

use std::time::Duration;

use super::output::Command;
use super::sim::{CoreSim, LinkConfig};
use fpn_proto::ge::Mode;
use fpn_proto::sim::START_UNIX;

fn pair(seed: u64) -> (CoreSim, usize, usize) {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    (sim, a, b)
}

fn gms(sim: &mut CoreSim, i: usize, connected: bool) {
    // Wall-clock seconds after every simulated credential's start.
    sim.command(
        i,
        Command::Gms {
            connected,
            unix: START_UNIX + 10,
        },
    );
}

/// Without the GMS for longer than the bound (an hour in the simulator),
/// b refuses new negotiations from credentials valid from before it lost
/// the GMS; the GMS back, it accepts them again.
#[test]
fn after_the_silence_bound_old_credentials_are_refused_until_the_gms_is_back() {
    let (mut sim, a, b) = pair(21);
    gms(&mut sim, b, true);
    sim.send_udp(a, b, 4000, 5000, b"before");
    sim.drive();
    assert_eq!(sim.nodes[b].tun.len(), 1);
    gms(&mut sim, b, false);
    // Within the bound: new flows still work from the caches.
    sim.run_for(Duration::from_secs(1800));
    sim.send_udp(a, b, 4001, 5000, b"within");
    sim.drive();
    assert_eq!(sim.nodes[b].tun.len(), 2);
    assert_eq!(sim.nodes[b].core.credential_floor(), None);
    // Past it: refused (a's credential dates from long before).
    sim.run_for(Duration::from_secs(1801));
    assert!(sim.nodes[b].core.credential_floor().is_some());
    assert_eq!(sim.counter(b, "gms_silence_floors"), 1);
    let refused = sim.counter(a, "refused_flows");
    sim.send_udp(a, b, 4002, 5000, b"after");
    sim.run_for(Duration::from_secs(15));
    assert_eq!(sim.nodes[b].tun.len(), 2, "a new flow got through");
    assert_eq!(sim.counter(a, "refused_flows"), refused + 1);
    // The GMS is back: accepted again (after a's refusal entry expired).
    gms(&mut sim, b, true);
    assert_eq!(sim.nodes[b].core.credential_floor(), None);
    sim.send_udp(a, b, 4003, 5000, b"back");
    sim.drive();
    assert_eq!(sim.nodes[b].tun.len(), 3);
}

/// An earlier loss's timer does not cut a later, shorter one short.
#[test]
fn the_bound_counts_from_the_latest_loss() {
    let (mut sim, _a, b) = pair(22);
    gms(&mut sim, b, false);
    sim.run_for(Duration::from_secs(1000));
    gms(&mut sim, b, true);
    gms(&mut sim, b, false);
    // The first loss's deadline (3600 s after it) passes here.
    sim.run_for(Duration::from_secs(3000));
    assert_eq!(sim.nodes[b].core.credential_floor(), None);
    sim.run_for(Duration::from_secs(700));
    assert!(sim.nodes[b].core.credential_floor().is_some());
}

/// The revocation list of a session start: a peer revoked while this node
/// was away loses its flows here, and new ones are refused.
#[test]
fn a_revocation_made_while_away_ends_the_peers_flows_at_the_next_session() {
    let (mut sim, a, b) = pair(23);
    sim.send_udp(a, b, 4000, 5000, b"x");
    sim.drive();
    assert_eq!(sim.nodes[b].core.snapshot(&[]).flows.len(), 1);
    // Credential serials are GE ids in the simulator: a is GE 1.
    sim.command(b, Command::RevocationList(vec![1, 77]));
    assert_eq!(sim.nodes[b].core.snapshot(&[]).flows.len(), 0);
    assert_eq!(sim.counter(b, "revoked_flows"), 1);
    sim.send_udp(a, b, 4001, 5000, b"y");
    sim.run_for(Duration::from_secs(15));
    assert_eq!(sim.nodes[b].tun.len(), 1);
}
