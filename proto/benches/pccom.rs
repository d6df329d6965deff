//! PCCOM throughput: protect + unprotect of one packet, next to the raw
//! AES-256-GCM seal + open of the same payload with the same backend, for
//! both backends, in one run.
//!
//! `cargo bench -p fpn-proto --bench pccom`
//!
//! Benchmark ids: `pccom/<backend>/<kind>/<payload bytes>` where kind is
//! `raw` (seal + open of the payload with an 8-byte AAD, as PCCOM uses) or
//! `ipv4-udp` / `ipv6-tcp` (the full PCCOM path: parse, MSS check, AAD,
//! seal, trailer, length fields, checksum, then replay check, open, window,
//! lengths, checksum). Throughput is payload bytes per iteration, one
//! iteration being a round trip (both directions' work on one packet).
//! `checksum/<bytes>` times the Internet checksum alone.

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::Ipv6Addr;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use fpn_proto::keys::{FlowKeys, TrafficKey};
use fpn_proto::packet::checksum::checksum;
use fpn_proto::pccom::{FlowCrypto, PacketAead, RingAesGcm, RustCryptoAesGcm, TRAILER_LEN};

const SIZES: [usize; 4] = [64, 512, 1400, 8900];

fn keys() -> (FlowKeys, FlowKeys) {
    let a = || TrafficKey::from_bytes([0x11; 32]);
    let b = || TrafficKey::from_bytes([0x22; 32]);
    (FlowKeys { tx: a(), rx: b() }, FlowKeys { tx: b(), rx: a() })
}

fn ipv4_udp(payload: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
        .udp(40000, 4789)
        .write(&mut out, &vec![0xa5; payload])
        .unwrap();
    out
}

fn ipv6_tcp(payload: usize) -> Vec<u8> {
    let s: Ipv6Addr = "fd00::1".parse().unwrap();
    let d: Ipv6Addr = "fd00::2".parse().unwrap();
    let mut out = Vec::new();
    PacketBuilder::ipv6(s.octets(), d.octets(), 64)
        .tcp(40000, 22, 1_000_000, 65535)
        .ack(77)
        .psh()
        .write(&mut out, &vec![0x5a; payload])
        .unwrap();
    out
}

fn bench_backend<A: PacketAead>(c: &mut Criterion) {
    let mut g = c.benchmark_group("pccom");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));

        // Raw AEAD: seal then open the same bytes, fresh nonce each time.
        let (ka, _) = keys();
        let aead = A::new(&ka.tx);
        let aad = [1u8, 17, 0, 0, 0, 0, 0, 0];
        let mut data = vec![0xa5u8; size];
        let mut counter = 0u64;
        g.bench_function(BenchmarkId::new(format!("{}/raw", A::NAME), size), |b| {
            b.iter(|| {
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                let tag = aead.seal_in_place(&nonce, &aad, &mut data).unwrap();
                aead.open_in_place(&nonce, &aad, &mut data, &tag).unwrap();
                black_box(&data);
            })
        });

        let mut kinds: Vec<(&str, Vec<u8>)> = vec![("ipv4-udp", ipv4_udp(size))];
        if size == 1400 {
            kinds.push(("ipv6-tcp", ipv6_tcp(size)));
        }
        for (kind, packet) in kinds {
            let (ka, kb) = keys();
            let mut sender = FlowCrypto::<A>::with_backend(&ka);
            let mut receiver = FlowCrypto::<A>::with_backend(&kb);
            let len = packet.len();
            let mut buf = packet.clone();
            buf.resize(len + TRAILER_LEN, 0);
            g.bench_function(BenchmarkId::new(format!("{}/{kind}", A::NAME), size), |b| {
                b.iter(|| {
                    let n = sender.protect(&mut buf, len).unwrap();
                    let m = receiver.unprotect(&mut buf[..n]).unwrap();
                    debug_assert_eq!(m, len);
                    black_box(m);
                })
            });
            assert_eq!(&buf[..len], &packet[..], "round trip restores the packet");
        }
    }
    g.finish();
}

/// The Internet checksum alone: PCCOM runs it once per direction over the
/// whole transport segment, so it is most of the framing cost.
fn bench_checksum(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let data = vec![0xa5u8; size];
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| checksum(black_box(&data)))
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_backend::<RingAesGcm>(c);
    bench_backend::<RustCryptoAesGcm>(c);
    bench_checksum(c);
}

criterion_group!(pccom, benches);
criterion_main!(pccom);
