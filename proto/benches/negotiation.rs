//! CPU cost of one DPRP negotiation (DDE, RGI, MPIT, CDN) between two GEs
//! in one process, no gateway, lossless: the number the 200 us budget is about.
//!
//! - `warm`: a repeated negotiation between GEs that know each other (peer
//!   credential and pair key cached): 2 X25519 key generations + 2 X25519
//!   agreements + HMACs and hashes.
//! - `cold`: the first negotiation between two GEs: adds, per side, one CA
//!   signature check of the peer's credential and one static X25519.
//! - `initiator side` / `responder side`: the warm negotiation's CPU split.
//! - `via gateway (sim)`: three GEs on the simulator (includes its overhead),
//!   cold caches; for information, no budget.
//!
//! The `cpu` variants report the thread's CPU time (CLOCK_THREAD_CPUTIME_ID)
//! instead of wall time, so a busy machine does not inflate them.
//!
//! Run: `cargo bench -p fpn-proto --bench negotiation`

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fpn_proto::credential::Credential;
use fpn_proto::dprp::{Config, DPRP_PORT, Endpoint, Entropy, Event, Prefix, Rate};
use fpn_proto::flow::{FlowId, protocol};
use fpn_proto::ge::{GeId, GeInfo, GeKind, GroupId, Mode};
use fpn_proto::keys::{GroupKey, KeyVersion, NodeKey};
use fpn_proto::sim::{GeSpec, LinkConfig, Sim};

#[path = "support/measure.rs"]
mod measure;
use measure::thread_cpu;

const UNIX: u64 = 1_800_000_000;

fn endpoint(ca: &NodeKey, id: u32, addr: IpAddr, now: Instant) -> Endpoint {
    let key = NodeKey::from_seed(&[id as u8; 32]);
    let info = GeInfo {
        id: GeId(id),
        name: format!("ge{id}"),
        kind: GeKind::Ges,
        mode: Mode::Open,
        groups: [GroupId(1)].into(),
        overlay: Ipv4Addr::new(100, 64, 0, id as u8),
    };
    let cred = Credential::issue(
        ca,
        u64::from(id),
        info,
        key.public(),
        UNIX - 1000,
        UNIX + 100_000_000,
    )
    .unwrap();
    let mut cfg = Config::new(key, cred, ca.public(), vec![Prefix::host(addr)]);
    // Finished negotiations are forgotten at once, so the tables stay small.
    cfg.timing.linger = Duration::ZERO;
    // Thousands of negotiations a second between the same two GEs are the
    // point here, not a flood: without this the per-GE and per-source DDE
    // budgets (issue #9 item 2) refuse them after the first burst.
    cfg.limits.dde_per_source = Rate::UNLIMITED;
    cfg.limits.dde_per_ge = Rate::UNLIMITED;
    cfg.limits.initiate_per_destination = Rate::UNLIMITED;
    let mut ep = Endpoint::new(cfg, Entropy::Seeded([id as u8 ^ 0x55; 32]), UNIX, now).unwrap();
    ep.set_group_key(GroupId(1), KeyVersion(1), GroupKey::from_bytes([7; 32]));
    ep
}

struct Pair {
    a: Endpoint,
    b: Endpoint,
    a_addr: SocketAddr,
    b_addr: IpAddr,
    now: Instant,
    port: u16,
}

impl Pair {
    fn new() -> Self {
        let ca = NodeKey::from_seed(&[0xca; 32]);
        let now = Instant::now();
        // The flow ends are the credentials' overlay addresses: since the identity
        // binding (issue #9 item 1) DPRP refuses any other source or destination.
        let (a_ip, b_ip) = (IpAddr::from([100, 64, 0, 1]), IpAddr::from([100, 64, 0, 2]));
        Self {
            a: endpoint(&ca, 1, a_ip, now),
            b: endpoint(&ca, 2, b_ip, now),
            a_addr: SocketAddr::new(a_ip, DPRP_PORT),
            b_addr: b_ip,
            now,
            port: 0,
        }
    }

    /// One full negotiation; returns the CPU time spent in each side's calls.
    fn negotiate(&mut self) -> (Duration, Duration) {
        self.port = self.port.wrapping_add(1);
        let flow = FlowId {
            src: self.a_addr.ip(),
            dst: self.b_addr,
            protocol: protocol::UDP,
            src_port: self.port,
            dst_port: 53,
        };
        let now = self.now;
        let b_addr = SocketAddr::new(self.b_addr, DPRP_PORT);
        let (mut ta, mut tb) = (Duration::ZERO, Duration::ZERO);
        let t = Instant::now();
        self.a.handle_packet(flow, vec![0; 64], now).unwrap();
        let mut to_b = self.a.poll_transmit();
        ta += t.elapsed();
        let mut done = false;
        for _ in 0..4 {
            let Some(m) = to_b.take() else { break };
            let t = Instant::now();
            self.b
                .handle_datagram(self.a_addr, &m.payload, now)
                .unwrap();
            let to_a = self.b.poll_transmit().expect("an answer");
            while self.b.poll_event().is_some() {}
            tb += t.elapsed();
            let t = Instant::now();
            self.a.handle_datagram(b_addr, &to_a.payload, now).unwrap();
            to_b = self.a.poll_transmit();
            while let Some(e) = self.a.poll_event() {
                done |= matches!(e, Event::Established(_));
            }
            ta += t.elapsed();
        }
        assert!(done, "negotiation did not finish");
        let t = Instant::now();
        self.a.handle_timeout(now);
        ta += t.elapsed();
        let t = Instant::now();
        self.b.handle_timeout(now);
        tb += t.elapsed();
        (ta, tb)
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("dprp negotiation");
    let mut warm = Pair::new();
    warm.negotiate();
    g.bench_function("warm (known peers)", |b| {
        b.iter(|| black_box(warm.negotiate()))
    });
    g.bench_function("cold (first contact)", |b| {
        b.iter_batched(
            Pair::new,
            |mut p| black_box(p.negotiate()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("warm, cpu", |b| {
        b.iter_custom(|iters| {
            let t = thread_cpu();
            (0..iters).for_each(|_| {
                black_box(warm.negotiate());
            });
            thread_cpu() - t
        })
    });
    g.bench_function("cold, cpu", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let mut p = Pair::new();
                    let t = thread_cpu();
                    black_box(p.negotiate());
                    thread_cpu() - t
                })
                .sum()
        })
    });
    g.bench_function("initiator side (warm)", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| warm.negotiate().0).sum())
    });
    g.bench_function("responder side (warm)", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| warm.negotiate().1).sum())
    });
    g.bench_function("via gateway (sim, cold)", |b| {
        b.iter_batched(
            || {
                let mut sim = Sim::new(1, LinkConfig::default());
                let subnet = Prefix::host(IpAddr::from([10, 0, 0, 100]));
                let gw = sim.add_ge(GeSpec::gateway(
                    10,
                    "gw",
                    GeKind::Gen,
                    Mode::Open,
                    &[],
                    "198.18.0.10",
                    subnet,
                ));
                let a = sim.add_ge(GeSpec::host(1, "a", Mode::Open, &[1], "10.0.0.2").behind(gw));
                sim.add_ge(GeSpec::host(2, "b", Mode::Open, &[1], "198.18.0.2"));
                (sim, a)
            },
            |(mut sim, a)| {
                sim.send_udp(a, IpAddr::from([198, 18, 0, 2]), 1, 2, b"x");
                sim.drive();
                assert!(sim.established(a).is_some());
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
