//! Fast open (docs/PROTOCOL.md): two GEs that negotiated once hold a pair
//! epoch. The input either goes as a raw datagram into the receiving GE
//! (FOP path: epoch lookup, tag, index window, ownership checks) or into
//! the opener (FOK and NAK against its running fast opens), or names a
//! flow (protocol, source, destination, ports) the opener fast-opens for
//! real, so genuine FOPs with arbitrary flows reach every check behind the
//! tag. Nothing may panic, and the GEs' state stays bounded.
#![no_main]

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fpn_proto::dprp::Prefix;
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
        match mode % 3 {
            0 => {
                let from = SocketAddr::new([198, 18, 0, 1].into(), 7717);
                let _ = p.sim.endpoint(p.b).handle_datagram(from, rest, now);
            }
            1 => {
                let from = SocketAddr::new([198, 18, 0, 2].into(), 7717);
                let _ = p.sim.endpoint(p.a).handle_datagram(from, rest, now);
            }
            _ => {
                if rest.len() < 7 {
                    return;
                }
                let ip = |i: u8| IpAddr::from(ADDRS[usize::from(i % 4)]);
                let flow = FlowId {
                    src: ip(rest[0]),
                    dst: ip(rest[1]),
                    protocol: rest[2],
                    src_port: u16::from_be_bytes([rest[3], rest[4]]),
                    dst_port: u16::from_be_bytes([rest[5], rest[6]]),
                };
                p.sim.send_packet(p.a, flow, rest[7..].to_vec());
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
