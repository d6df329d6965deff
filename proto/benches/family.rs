//! Per-packet cost of carrying an IPv6 overlay packet on the IPv4 native
//! path (`packet::family`, design note 59): the sender's `v6_to_v4` (a new
//! header, the checksum adjusted, no payload copy) and the receiver's
//! `v4_to_v6` (the packet moved 20 bytes up, the header written back),
//! next to `rewrite`, what an IPv4 overlay packet costs on the same path
//! (addresses and ports rewritten in place, `xlat::rewrite_to`). Full-size
//! TCP segments (1380-byte IPv6 packets) and a small one.
//!
//! `cargo bench -p fpn-proto --bench family`

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use fpn_proto::flow::FlowId;
use fpn_proto::packet::Packet;
use fpn_proto::packet::family::{HEADER_DELTA, v4_to_v6, v6_to_v4};

const S6: [u8; 16] = [0xfd, 0, 0, 0x5c, 0, 0, 0, 0, 0, 0, 0, 0, 100, 64, 0, 1];
const D6: [u8; 16] = [0xfd, 0, 0, 0x5c, 0, 0, 0, 0, 0, 0, 0, 0, 100, 64, 0, 2];
const W_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
const W_DST: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);

fn tcp6(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(S6, D6, 64)
        .tcp(40000, 5201, 1, 65535)
        .ack(1)
        .write(&mut out, &vec![0xa5; len - 60])
        .unwrap();
    out
}

fn tcp4(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4([100, 64, 0, 1], [100, 64, 0, 2], 64)
        .tcp(40000, 5201, 1, 65535)
        .ack(1)
        .write(&mut out, &vec![0xa5; len - 40])
        .unwrap();
    out
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("family");
    for len in [1380usize, 84] {
        let v6 = tcp6(len);
        let mut wire = v6.clone();
        let start = v6_to_v4(&mut wire, len, W_SRC, W_DST).unwrap();
        let mut v4_wire = wire[start..].to_vec();
        v4_wire.resize(len, 0);
        g.bench_with_input(BenchmarkId::new("v6_to_v4", len), &v6, |b, p| {
            b.iter_batched_ref(
                || p.clone(),
                |buf| black_box(v6_to_v4(buf, len, W_SRC, W_DST).unwrap()),
                BatchSize::SmallInput,
            )
        });
        g.bench_with_input(BenchmarkId::new("v4_to_v6", len), &v4_wire, |b, p| {
            b.iter_batched_ref(
                || p.clone(),
                |buf| {
                    black_box(
                        v4_to_v6(
                            buf,
                            len - HEADER_DELTA,
                            Ipv6Addr::from(S6),
                            Ipv6Addr::from(D6),
                        )
                        .unwrap(),
                    )
                },
                BatchSize::SmallInput,
            )
        });
        let v4 = tcp4(len - HEADER_DELTA);
        let from = Packet::parse(&v4[..]).unwrap().flow_id();
        let to = FlowId {
            src: IpAddr::V4(W_SRC),
            dst: IpAddr::V4(W_DST),
            ..from
        };
        g.bench_with_input(BenchmarkId::new("rewrite", len), &v4, |b, p| {
            b.iter_batched_ref(
                || p.clone(),
                |buf| {
                    let mut pkt = Packet::parse(&mut buf[..]).unwrap();
                    fpn_proto::xlat::rewrite_to(&mut pkt, &from, &to).unwrap();
                    black_box(pkt.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
