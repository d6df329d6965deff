//! Segmentation cost of a 64 KB TUN super-packet: TSO over IPv4 and IPv6
//! (MSS 1448 and 1376, the latter a PCCOM-clamped MSS) and USO, into a
//! reused [`SegmentBuffers`] arena with 24 bytes of tail room per slot;
//! `copy` is the floor: the same bytes copied into the same slots with no
//! header rewrite or checksum.
//!
//! `cargo bench -p fpn-proto --bench gso`
//!
//! Throughput is the super-packet's payload bytes per iteration.

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use fpn_proto::packet::gso::{SegmentBuffers, Segments};
use fpn_proto::packet::vnet::{GsoKind, VnetRepr};

const V6_SRC: [u8; 16] = [0xfd, 0, 0, 0x5c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_DST: [u8; 16] = [0xfd, 0, 0, 0x5c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn super_packet(kind: GsoKind, payload: usize, mss: u16) -> (Vec<u8>, VnetRepr) {
    let data = vec![0xa5; payload];
    let mut out = Vec::new();
    let (l4, off) = match kind {
        GsoKind::TcpV4 => {
            PacketBuilder::ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
                .tcp(40000, 5201, 1, 65535)
                .ack(1)
                .write(&mut out, &data)
                .unwrap();
            (20, 16)
        }
        GsoKind::TcpV6 => {
            PacketBuilder::ipv6(V6_SRC, V6_DST, 64)
                .tcp(40000, 5201, 1, 65535)
                .ack(1)
                .write(&mut out, &data)
                .unwrap();
            (40, 16)
        }
        _ => {
            PacketBuilder::ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
                .udp(40000, 4789)
                .write(&mut out, &data)
                .unwrap();
            (20, 6)
        }
    };
    let hdr = VnetRepr {
        needs_csum: true,
        gso: kind,
        gso_size: mss,
        csum_start: l4,
        csum_offset: off,
        hdr_len: 0,
        ..VnetRepr::NONE
    };
    (out, hdr)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("gso");
    let cases = [
        ("tcp4", GsoKind::TcpV4, 65_535 - 40, 1448u16),
        ("tcp4-clamped", GsoKind::TcpV4, 65_535 - 40, 1376),
        ("tcp6", GsoKind::TcpV6, 65_535 - 60, 1428),
        ("udp4", GsoKind::UdpL4, 65_535 - 28, 1400),
    ];
    for (name, kind, payload, mss) in cases {
        let (pkt, hdr) = super_packet(kind, payload, mss);
        let mut bufs = SegmentBuffers::new(64, 1500, 24);
        g.throughput(Throughput::Bytes(payload as u64));
        g.bench_function(BenchmarkId::new(name, mss), |b| {
            b.iter(|| {
                bufs.clear();
                let segs = Segments::new(&hdr, black_box(&pkt)).unwrap();
                black_box(segs.write_all(&mut bufs).unwrap())
            })
        });
        if name == "tcp4" {
            g.bench_function(BenchmarkId::new("copy", mss), |b| {
                b.iter(|| {
                    bufs.clear();
                    for chunk in black_box(&pkt[40..]).chunks(usize::from(mss)) {
                        bufs.push_with(|slot| {
                            slot[..40].copy_from_slice(&pkt[..40]);
                            slot[40..40 + chunk.len()].copy_from_slice(chunk);
                            Ok(40 + chunk.len())
                        })
                        .unwrap();
                    }
                    black_box(bufs.len())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
