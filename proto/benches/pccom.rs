//! PCCOM throughput: protect + unprotect of one packet, next to the raw
//! AES-256-GCM seal + open of the same payload with the same backend, for
//! both backends, in one run.
//!
//! `cargo bench -p fpn-proto --bench pccom`
//!
//! Benchmark ids: `pccom/<backend>/<kind>/<payload bytes>` where kind is
//! `raw` (seal + open of the payload with an 8-byte AAD, as PCCOM uses, in its
//! own allocation), `raw-offset28` (the same at the offset where an IPv4/UDP
//! packet carries its payload), or
//! `ipv4-udp` / `ipv6-tcp` (the full PCCOM path: parse, MSS check, AAD,
//! seal, trailer, length fields, checksum, then replay check, open, window,
//! lengths, checksum). Throughput is payload bytes per iteration, one
//! iteration being a round trip (both directions' work on one packet).
//! `checksum/<bytes>` times the Internet checksum alone.
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`),
//! not wall time: the development machine is shared, and CPU time does not
//! count the periods the thread waits for a core. Set `FPN_BENCH_WALL=1` to
//! measure wall time instead.

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::Ipv6Addr;

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
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

fn bench_backend<A: PacketAead>(c: &mut Criterion<Clock>) {
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

        if size == 1400 {
            // The same seal + open with the payload where an IPv4/UDP packet
            // puts it (offset 28): unaligned for the AES-GCM code, as in PCCOM.
            // Separates the cost of working in place from the framing itself.
            let mut store = vec![0xa5u8; 28 + size];
            g.bench_function(
                BenchmarkId::new(format!("{}/raw-offset28", A::NAME), size),
                |b| {
                    b.iter(|| {
                        counter += 1;
                        let mut nonce = [0u8; 12];
                        nonce[4..].copy_from_slice(&counter.to_be_bytes());
                        let data = &mut store[28..];
                        let tag = aead.seal_in_place(&nonce, &aad, data).unwrap();
                        aead.open_in_place(&nonce, &aad, data, &tag).unwrap();
                        black_box(&data);
                    })
                },
            );
        }
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
fn bench_checksum(c: &mut Criterion<Clock>) {
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

fn benches(c: &mut Criterion<Clock>) {
    bench_backend::<RingAesGcm>(c);
    bench_backend::<RustCryptoAesGcm>(c);
    bench_checksum(c);
}

/// Thread CPU time (default) or wall time.
struct Clock {
    wall: bool,
    origin: std::time::Instant,
    formatter: WallTime,
}

impl Clock {
    fn from_env() -> Self {
        Self {
            wall: std::env::var_os("FPN_BENCH_WALL").is_some_and(|v| v == "1"),
            origin: std::time::Instant::now(),
            formatter: WallTime,
        }
    }

    fn now(&self) -> Duration {
        if self.wall {
            return self.origin.elapsed();
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

impl Measurement for Clock {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        self.now()
    }

    fn end(&self, start: Duration) -> Duration {
        self.now().saturating_sub(start)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        self.formatter.formatter()
    }
}

criterion_group! {
    name = pccom;
    config = Criterion::default().with_measurement(Clock::from_env());
    targets = benches
}
criterion_main!(pccom);
