//! The node core's data path allocates nothing per packet: with a flow
//! established, a packet from the TUN out to the peer and a frame from the
//! peer into the TUN run under a counting global allocator, both ways, on
//! the QUIC carrier's path and on the native one.

#[path = "../../proto/tests/alloc_util/mod.rs"]
mod alloc_util;
use alloc_util::allocations;

use std::time::Duration;

use fpn_node::carrier::{CarrierKind, FrameKind};
use fpn_node::core::DataOut;
use fpn_node::core::sim::{CoreSim, LinkConfig, udp_packet};
use fpn_proto::ge::Mode;
use fpn_proto::path::PathConfig;

/// One packet from `from`'s TUN through its core, the "wire" and `to`'s
/// core into `to`'s TUN; returns the length written there.
fn one_way(
    sim: &mut CoreSim,
    from: usize,
    to: usize,
    packet: &[u8],
    out_buf: &mut [u8],
    in_buf: &mut [u8],
) -> usize {
    let now = sim.now();
    out_buf[..packet.len()].copy_from_slice(packet);
    let (peer, addr) = (sim.nodes[from].ge, sim.nodes[from].underlay);
    let to_ge = sim.nodes[to].ge;
    let n = match sim.nodes[from]
        .core
        .handle_tun_packet(out_buf, packet.len(), now)
    {
        DataOut::Send { target, frame, .. } => {
            assert_eq!(target.ge, to_ge);
            frame.len()
        }
        other => panic!("not sent: {other:?}"),
    };
    in_buf[..n].copy_from_slice(&out_buf[..n]);
    match sim.nodes[to]
        .core
        .handle_carrier_frame(peer, addr, FrameKind::Data, in_buf, n, now)
    {
        DataOut::Tun(p) => p.len(),
        other => panic!("not delivered: {other:?}"),
    }
}

#[test]
fn the_core_data_path_of_an_established_flow_allocates_nothing() {
    let mut sim = CoreSim::new(1, LinkConfig::default());
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    sim.send_udp(a, b, 4000, 5000, b"first");
    sim.drive();
    assert_eq!(sim.nodes[b].tun.len(), 1);
    let (oa, ob) = (sim.nodes[a].overlay, sim.nodes[b].overlay);
    let there = udp_packet(oa, ob, 4000, 5000, &[0x5a; 1200]);
    let back = udp_packet(ob, oa, 5000, 4000, &[0xa5; 64]);
    let len = sim.nodes[a].core.buffer_len();
    let (mut out_buf, mut in_buf) = (vec![0u8; len], vec![0u8; len]);
    // Warm up (first packets may size lazily grown state once).
    for _ in 0..4 {
        one_way(&mut sim, a, b, &there, &mut out_buf, &mut in_buf);
        one_way(&mut sim, b, a, &back, &mut out_buf, &mut in_buf);
    }
    let mut delivered = 0;
    let n = allocations(|| {
        for _ in 0..1000 {
            delivered += one_way(&mut sim, a, b, &there, &mut out_buf, &mut in_buf);
            delivered += one_way(&mut sim, b, a, &back, &mut out_buf, &mut in_buf);
        }
    });
    assert_eq!(n, 0, "allocations on the data path");
    assert_eq!(delivered, 1000 * (there.len() + back.len()));
    assert_eq!(sim.counter(a, "data_out"), 1005);
    assert_eq!(sim.counter(b, "data_in_rejected"), 0);
}

/// Like [`one_way`], on the native path: the packet leaves translated to
/// the underlay addresses and comes in through the native receive input.
fn one_way_native(
    sim: &mut CoreSim,
    from: usize,
    to: usize,
    packet: &[u8],
    out_buf: &mut [u8],
    in_buf: &mut [u8],
) -> usize {
    let now = sim.now();
    out_buf[..packet.len()].copy_from_slice(packet);
    let n = match sim.nodes[from]
        .core
        .handle_tun_packet(out_buf, packet.len(), now)
    {
        DataOut::Send {
            path: CarrierKind::Native,
            frame,
            ..
        } => frame.len(),
        other => panic!("not sent natively: {other:?}"),
    };
    in_buf[..n].copy_from_slice(&out_buf[..n]);
    match sim.nodes[to].core.handle_native_packet(in_buf, n, now) {
        DataOut::Tun(p) => p.len(),
        other => panic!("not delivered: {other:?}"),
    }
}

#[test]
fn the_native_data_path_of_an_established_flow_allocates_nothing() {
    let mut sim = CoreSim::new(2, LinkConfig::default());
    sim.path = PathConfig::default();
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    sim.run_for(Duration::from_millis(500));
    sim.send_udp(a, b, 4000, 5000, b"first");
    sim.drive();
    sim.send_udp(b, a, 5000, 4000, b"back");
    sim.drive();
    // The flow is native from its first packet (DESIGN-NOTES note 36).
    sim.run_for(Duration::from_millis(400));
    let (oa, ob) = (sim.nodes[a].overlay, sim.nodes[b].overlay);
    let there = udp_packet(oa, ob, 4000, 5000, &[0x5a; 1200]);
    let back = udp_packet(ob, oa, 5000, 4000, &[0xa5; 64]);
    let len = sim.nodes[a].core.buffer_len();
    let (mut out_buf, mut in_buf) = (vec![0u8; len], vec![0u8; len]);
    for _ in 0..4 {
        one_way_native(&mut sim, a, b, &there, &mut out_buf, &mut in_buf);
        one_way_native(&mut sim, b, a, &back, &mut out_buf, &mut in_buf);
    }
    let mut delivered = 0;
    let n = allocations(|| {
        for _ in 0..1000 {
            delivered += one_way_native(&mut sim, a, b, &there, &mut out_buf, &mut in_buf);
            delivered += one_way_native(&mut sim, b, a, &back, &mut out_buf, &mut in_buf);
        }
    });
    assert_eq!(n, 0, "allocations on the native data path");
    assert_eq!(delivered, 1000 * (there.len() + back.len()));
    // The first packet, the 4 warm-up packets and the 1000.
    assert_eq!(sim.counter(a, "native_out"), 1005);
    assert_eq!(sim.counter(b, "native_in_rejected"), 0);
}
