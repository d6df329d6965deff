//! Fast open (docs/PROTOCOL.md): two GEs that negotiated once hold a pair
//! epoch. The input either goes as a raw datagram into the receiving GE
//! (FOP and EVICT path: epoch lookup, tag, index window, ownership checks)
//! or into the opener (FOK and NAK against its running fast opens), or
//! names a flow (protocol, source, destination, ports) the opener
//! fast-opens for real, with the rest of the input as the first packet
//! inside its FOP, so genuine FOPs with arbitrary flows and contents reach
//! every check behind the tag, or names flows with openings the opener lists in
//! a genuine eviction notice, which the peer must take whole. Nothing may
//! panic, and the GEs' state stays bounded.
#![no_main]

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fpn_proto::dprp::{EvictedFlow, NegotiationId, Prefix};
use fpn_proto::flow::FlowId;
use fpn_proto::ge::{GeId, Mode};
use fpn_proto::sim::{GeSpec, LinkConfig, NodeId, Sim};
use libfuzzer_sys::fuzz_target;

struct Pair {
    sim: Sim,
    a: NodeId,
    b: NodeId,
}

fn pair() -> Pair {
    let mut sim = Sim::new(1, LinkConfig::default());
    let fast = |c: &mut fpn_proto::dprp::Config| c.fast_open = true;
    let a = sim.add_ge_with(GeSpec::host(1, "a", Mode::Open, &[1], "198.18.0.1"), fast);
    let b = sim.add_ge_with(GeSpec::host(2, "b", Mode::Open, &[1], "198.18.0.2"), fast);
    let dir = vec![
        (Prefix::host([198, 18, 0, 1].into()), GeId(1)),
        (Prefix::host([198, 18, 0, 2].into()), GeId(2)),
    ];
    sim.endpoint(a).set_directory(dir.clone());
    sim.endpoint(b).set_directory(dir);
    sim.send_udp(a, [198, 18, 0, 2].into(), 1000, 53, b"first");
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.endpoint(a).occupancy().epochs, 1);
    Pair { sim, a, b }
}

thread_local! {
    static PAIR: RefCell<(Pair, u32)> = RefCell::new((pair(), 0));
}

/// Inputs per pair: the simulator logs every datagram and event, so a
/// fresh pair now and then keeps the memory of a long run flat.
const INPUTS_PER_PAIR: u32 = 20_000;

const ADDRS: [[u8; 4]; 4] = [[198, 18, 0, 1], [198, 18, 0, 2], [198, 18, 0, 9], [10, 0, 0, 1]];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    PAIR.with(|cell| {
        let (p, inputs) = &mut *cell.borrow_mut();
        *inputs += 1;
        if *inputs > INPUTS_PER_PAIR {
            (*p, *inputs) = (pair(), 1);
        }
        let now = p.sim.now();
        let ip = |i: u8| IpAddr::from(ADDRS[usize::from(i % 4)]);
        match mode % 4 {
            0 => {
                let from = SocketAddr::new([198, 18, 0, 1].into(), 7717);
                let _ = p.sim.endpoint(p.b).handle_datagram(from, rest, now);
            }
            1 => {
                let from = SocketAddr::new([198, 18, 0, 2].into(), 7717);
                let _ = p.sim.endpoint(p.a).handle_datagram(from, rest, now);
            }
            2 => {
                // Each 15 bytes: an opening id and a flow.
                // Both families: the notice's size depends on them.
                let addr = |i: u8| match i % 8 {
                    4 => IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1u16]),
                    5..=7 => IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)]),
                    _ => ip(i),
                };
                let flows: Vec<EvictedFlow> = rest
                    .chunks_exact(15)
                    .map(|c| EvictedFlow {
                        opening: NegotiationId(u64::from_be_bytes(c[..8].try_into().unwrap())),
                        flow: FlowId {
                            src: addr(c[8]),
                            dst: addr(c[8] >> 3),
                            protocol: c[9],
                            src_port: u16::from_be_bytes([c[10], c[11]]),
                            dst_port: u16::from_be_bytes([c[12], c[13]]),
                        },
                    })
                    .filter(|f| f.flow.src.is_ipv4() == f.flow.dst.is_ipv4())
                    .collect();
                let before = p.sim.endpoint(p.b).stats();
                let sent = p.sim.endpoint(p.a).notify_evicted(GeId(2), &flows, now);
                p.sim.run_for(Duration::from_millis(50));
                // All of them, unless the pair's epoch has run out (b's
                // copy ends a link delay before a's: notices sent in that
                // moment find none there).
                assert!(sent == flows.len() || sent == 0);
                let after = p.sim.endpoint(p.b).stats();
                assert!(
                    after.evict_received == before.evict_received + sent as u64
                        || after.evict_unknown_epoch > before.evict_unknown_epoch
                );
            }
            _ => {
                if rest.len() < 7 {
                    return;
                }
                let flow = FlowId {
                    src: ip(rest[0]),
                    dst: ip(rest[1]),
                    protocol: rest[2],
                    src_port: u16::from_be_bytes([rest[3], rest[4]]),
                    dst_port: u16::from_be_bytes([rest[5], rest[6]]),
                };
                let events = p.sim.events(p.a).len();
                p.sim.send_packet(p.a, flow, rest[7..].to_vec());
                // The rest goes inside the FOP too, as a node puts the
                // sealed first packet there (retransmissions carry it).
                let opened = p.sim.events(p.a)[events..].iter().find_map(|(_, e)| match e {
                    fpn_proto::dprp::Event::Established(e) if e.fast.is_some() => {
                        Some(e.negotiation)
                    }
                    _ => None,
                });
                if let Some(id) = opened
                    && !rest[7..].is_empty()
                {
                    let steered = rest[7] & 1 == 1;
                    let _ = p.sim.endpoint(p.a).attach_first(id, &rest[7..], steered, now);
                }
                p.sim.run_for(Duration::from_millis(50));
            }
        }
        for n in [p.a, p.b] {
            let ep = p.sim.endpoint(n);
            while ep.poll_transmit().is_some() {}
            while ep.poll_event().is_some() {}
        }
        // Retransmissions and fallbacks run on; nothing grows without bound.
        p.sim.run_for(Duration::from_millis(10));
        assert!(p.sim.endpoint(p.a).negotiations() < 10_000);
        assert!(p.sim.endpoint(p.b).occupancy().epochs <= 2);
    });
});
