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
//! `checksum/<bytes>` times the Internet checksum alone; `framing/<kind>/<bytes>`
//! the PCCOM round trip with a do-nothing cipher (everything but AES-GCM).
//!
//! After the criterion benchmarks, an A/B-interleaved report prints the
//! framing overhead (PCCOM round trip over raw round trip) for every size as
//! Markdown table rows; `cargo bench -p fpn-proto --bench pccom -- overhead`
//! runs only that.
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
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
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

/// One raw AES-256-GCM round trip (seal then open) of `size` bytes placed at
/// `offset` in a 64-byte aligned buffer, with the 8-byte AAD PCCOM uses.
struct RawRound<A> {
    aead: A,
    store: AlignedBuf,
    offset: usize,
    size: usize,
    counter: u64,
}

impl<A: PacketAead> RawRound<A> {
    fn new(size: usize, offset: usize) -> Self {
        let mut store = AlignedBuf::new(offset + size);
        store.as_mut().fill(0xa5);
        Self {
            aead: A::new(&keys().0.tx),
            store,
            offset,
            size,
            counter: 0,
        }
    }

    #[inline]
    fn run(&mut self) {
        self.counter += 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        let aad = [1u8, 17, 0, 0, 0, 0, 0, 0];
        let data = &mut self.store.as_mut()[self.offset..self.offset + self.size];
        let mut tag = [0u8; 16];
        self.aead
            .seal_in_place(&nonce, &aad, data, &mut tag)
            .unwrap();
        self.aead.open_in_place(&nonce, &aad, data, &tag).unwrap();
        black_box(data);
    }
}

/// One PCCOM round trip: protect at one end, unprotect at the other.
struct PccomRound<A: PacketAead> {
    sender: FlowCrypto<A>,
    receiver: FlowCrypto<A>,
    buf: AlignedBuf,
    len: usize,
}

impl<A: PacketAead> PccomRound<A> {
    fn new(packet: &[u8]) -> Self {
        let (ka, kb) = keys();
        let mut buf = AlignedBuf::new(packet.len() + TRAILER_LEN);
        buf.as_mut()[..packet.len()].copy_from_slice(packet);
        Self {
            sender: FlowCrypto::with_backend(&ka),
            receiver: FlowCrypto::with_backend(&kb),
            buf,
            len: packet.len(),
        }
    }

    #[inline]
    fn run(&mut self) {
        let buf = self.buf.as_mut();
        let n = self.sender.protect(buf, self.len).unwrap();
        let m = self.receiver.unprotect(&mut buf[..n]).unwrap();
        debug_assert_eq!(m, self.len);
        black_box(m);
    }

    fn packet(&mut self) -> &[u8] {
        &self.buf.as_mut()[..self.len]
    }
}

/// A buffer starting on a 64-byte boundary, so that the raw AEAD at the
/// packet's payload offset and PCCOM see the same cache-line alignment
/// whatever the allocator returns.
struct AlignedBuf {
    store: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let store = vec![0u8; len + 64];
        let start = store.as_ptr().align_offset(64);
        Self { store, start, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.store[self.start..self.start + self.len]
    }
}

fn kinds(size: usize) -> Vec<(&'static str, Vec<u8>)> {
    let mut kinds = vec![("ipv4-udp", ipv4_udp(size))];
    if size == 1400 {
        kinds.push(("ipv6-tcp", ipv6_tcp(size)));
    }
    kinds
}

fn bench_backend<A: PacketAead>(c: &mut Criterion<Clock>) {
    let mut g = c.benchmark_group("pccom");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut raw = RawRound::<A>::new(size, 0);
        g.bench_function(BenchmarkId::new(format!("{}/raw", A::NAME), size), |b| {
            b.iter(|| raw.run())
        });
        if size == 1400 {
            // The payload where an IPv4/UDP packet carries it: unaligned for
            // the AES-GCM code, as in PCCOM. Separates the cost of working in
            // place from the framing itself.
            let mut raw = RawRound::<A>::new(size, 28);
            g.bench_function(
                BenchmarkId::new(format!("{}/raw-offset28", A::NAME), size),
                |b| b.iter(|| raw.run()),
            );
        }
        for (kind, packet) in kinds(size) {
            let mut round = PccomRound::<A>::new(&packet);
            g.bench_function(BenchmarkId::new(format!("{}/{kind}", A::NAME), size), |b| {
                b.iter(|| round.run())
            });
            assert_eq!(
                round.packet(),
                &packet[..],
                "round trip restores the packet"
            );
        }
    }
    g.finish();
}

/// Framing overhead measured A/B interleaved: short blocks of raw round
/// trips, raw round trips at the packet's payload offset, and PCCOM round
/// trips alternate, each block timed in thread CPU time, so load that comes
/// and goes on a shared machine hits all three alike (criterion's groups run
/// one after the other, minutes apart). Prints one Markdown table row per
/// backend, kind and size: median time per round trip of each, payload
/// throughput, and the median and 10th/90th percentile of the per-round
/// overhead.
fn overhead_report<A: PacketAead>() {
    const ROUNDS: usize = 2001;
    let clock = Clock::from_env();
    for size in SIZES {
        let block = 100_000 / size + 1; // about 0.1 ms per block
        for (kind, packet) in kinds(size) {
            let mut raw = RawRound::<A>::new(size, 0);
            let mut raw_off = RawRound::<A>::new(size, packet.len() - size);
            let mut pccom = PccomRound::<A>::new(&packet);
            let time = |f: &mut dyn FnMut()| {
                let t = clock.now();
                for _ in 0..block {
                    f();
                }
                (clock.now() - t).as_nanos() as f64 / block as f64
            };
            let (mut r, mut o, mut p) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                r.push(time(&mut || raw.run()));
                o.push(time(&mut || raw_off.run()));
                p.push(time(&mut || pccom.run()));
            }
            let mut over: Vec<f64> = p
                .iter()
                .zip(&r)
                .map(|(p, r)| 100.0 * (p / r - 1.0))
                .collect();
            let mut over_off: Vec<f64> = p
                .iter()
                .zip(&o)
                .map(|(p, o)| 100.0 * (p / o - 1.0))
                .collect();
            let (rm, om, pm) = (
                percentile(&mut r, 50),
                percentile(&mut o, 50),
                percentile(&mut p, 50),
            );
            let gbps = |ns: f64| size as f64 * 8.0 / ns;
            println!(
                "overhead | {} | {kind} | {size} | {rm:.0} ns ({:.1} Gbit/s) | {om:.0} ns | \
                 {pm:.0} ns ({:.1} Gbit/s) | {:+.1}% ({:+.1}% .. {:+.1}%) | {:+.1}% |",
                A::NAME,
                gbps(rm),
                gbps(pm),
                percentile(&mut over, 50),
                percentile(&mut over, 10),
                percentile(&mut over, 90),
                percentile(&mut over_off, 50),
            );
        }
    }
}

fn percentile(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) * p / 100]
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

/// An AEAD that does nothing: measures the PCCOM framing alone (parse, MSS,
/// lengths, AAD, trailer, replay window, both checksums). A measuring
/// instrument for this benchmark only; it never leaves this file.
struct NoCipher;

impl PacketAead for NoCipher {
    const NAME: &'static str = "no-cipher";

    fn new(_: &TrafficKey) -> Self {
        Self
    }

    fn seal_in_place(
        &self,
        _: &[u8; 12],
        _: &[u8],
        data: &mut [u8],
        tag: &mut [u8; 16],
    ) -> fpn_proto::Result<()> {
        black_box(data);
        *tag = [0; 16];
        Ok(())
    }

    fn open_in_place(
        &self,
        _: &[u8; 12],
        _: &[u8],
        data: &mut [u8],
        _: &[u8; 16],
    ) -> fpn_proto::Result<()> {
        black_box(data);
        Ok(())
    }
}

fn bench_framing(c: &mut Criterion<Clock>) {
    let mut g = c.benchmark_group("framing");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        for (kind, packet) in kinds(size) {
            let mut round = PccomRound::<NoCipher>::new(&packet);
            g.bench_function(BenchmarkId::new(kind, size), |b| b.iter(|| round.run()));
        }
    }
    g.finish();
}

fn benches(c: &mut Criterion<Clock>) {
    bench_backend::<RingAesGcm>(c);
    bench_backend::<RustCryptoAesGcm>(c);
    bench_checksum(c);
    bench_framing(c);
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

fn main() {
    pccom();
    Criterion::default().configure_from_args().final_summary();
    // The interleaved overhead report runs with the full benchmark, or alone
    // with the filter `overhead` (which matches no criterion benchmark).
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filtered = args.iter().any(|a| !a.starts_with('-'));
    if !filtered || args.iter().any(|a| a == "overhead") {
        overhead_report::<RingAesGcm>();
        overhead_report::<RustCryptoAesGcm>();
    }
}
