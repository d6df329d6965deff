//! The read-side win of TUN offloads, in a network namespace of its own
//! (needs root): a UDP_SEGMENT sender in the namespace pushes 64000-byte
//! GSO sends (gso_size 1400) at the TUN for a fixed time while one reader
//! drains it with `TunReader::read_batch`; once with every offload (USO: the
//! kernel hands over one super-packet per send and the reader segments it),
//! once with none (the kernel segments before the TUN: one read per packet).
//! Rounds alternate between the two; the report gives median, min and max.
//!
//! `cargo bench -p fpn-node --bench tun_read` (env `FPN_TUN_BENCH_SECS`,
//! default 2, at most 5; `FPN_TUN_BENCH_ROUNDS`, default 5)
//!
//! Columns: packets (1400-byte datagrams) delivered into the arena per
//! second, payload Gbit/s, reads per second, and the reader thread's CPU
//! time per packet (`CLOCK_THREAD_CPUTIME_ID`, robust on a shared machine).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fpn_node::tun::{Offloads, SegmentBuffers, Tun, TunConfig};

const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[derive(Debug, Clone, Copy)]
struct Round {
    pps: f64,
    gbps: f64,
    reads_ps: f64,
    cpu_ns_per_pkt: f64,
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn round(ns: &str, offloads: Offloads, secs: u64) -> Round {
    let file = File::open(format!("/var/run/netns/{ns}")).expect("open the netns");
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd affects only this thread
        // (and the threads it spawns).
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut cfg = TunConfig::new("fpnbench0", 1500);
            cfg.address = Some((LOCAL, 24));
            cfg.offloads = offloads;
            let tun = Tun::open(&cfg).expect("open the TUN");
            assert_eq!(tun.offloads(), offloads, "granted");
            let (mut rx, _tx) = tun.into_queues().unwrap().pop().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let sender = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let sock = UdpSocket::bind((LOCAL, 0)).unwrap();
                    let gso: libc::c_int = 1400;
                    // SAFETY: setsockopt(SOL_UDP, UDP_SEGMENT) with an int.
                    unsafe {
                        libc::setsockopt(
                            sock.as_raw_fd(),
                            17,
                            103,
                            std::ptr::from_ref(&gso).cast(),
                            4,
                        )
                    };
                    sock.connect(SocketAddr::from((PEER, 9999))).unwrap();
                    let msg = vec![0x5a; 64_000];
                    while !stop.load(Ordering::Relaxed) {
                        let _ = sock.send(&msg);
                    }
                })
            };
            let mut bufs = SegmentBuffers::new(256, 1500, 24);
            let (mut pkts, mut reads, mut bytes) = (0usize, 0usize, 0usize);
            let start = Instant::now();
            let cpu0 = thread_cpu();
            let deadline = start + Duration::from_secs(secs);
            while Instant::now() < deadline {
                bufs.clear();
                let Ok(r) =
                    tokio::time::timeout(Duration::from_millis(500), rx.read_batch(&mut bufs))
                        .await
                else {
                    break;
                };
                let s = r.unwrap();
                pkts += s.packets;
                reads += s.reads;
                bytes += bufs
                    .iter()
                    .map(|p| p.len().saturating_sub(28))
                    .sum::<usize>();
            }
            let cpu = thread_cpu() - cpu0;
            let t = start.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            sender.join().unwrap();
            Round {
                pps: pkts as f64 / t,
                gbps: bytes as f64 * 8.0 / t / 1e9,
                reads_ps: reads as f64 / t,
                cpu_ns_per_pkt: cpu.as_nanos() as f64 / pkts.max(1) as f64,
            }
        })
    })
    .join()
    .unwrap()
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    // cargo bench passes --bench; anything else (e.g. a filter) is ignored.
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let secs = env("FPN_TUN_BENCH_SECS", 2).clamp(1, 5);
    let rounds = env("FPN_TUN_BENCH_ROUNDS", 5).clamp(1, 20) as usize;
    let ns = Netns(format!("fpntunb-{}", std::process::id()));
    let ok = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .map(|s| s.success());
    assert!(matches!(ok, Ok(true)), "ip netns add (needs root)");
    let modes = [
        ("offload (csum,tso,uso)", Offloads::ALL),
        ("no offload", Offloads::NONE),
    ];
    let mut results: Vec<Vec<Round>> = vec![Vec::new(); modes.len()];
    for r in 0..rounds {
        for (i, (name, o)) in modes.iter().enumerate() {
            let x = round(&ns.0, *o, secs);
            eprintln!("round {r} {name}: {x:?}");
            results[i].push(x);
        }
    }
    println!(
        "| mode | packets/s (median, min-max) | payload Gbit/s | reads/s | reader CPU ns/packet |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for ((name, _), rs) in modes.iter().zip(&results) {
        let col = |f: fn(&Round) -> f64| {
            let mut v: Vec<f64> = rs.iter().map(f).collect();
            stats(&mut v)
        };
        let (p, pl, ph) = col(|r| r.pps);
        let (g, gl, gh) = col(|r| r.gbps);
        let (rd, _, _) = col(|r| r.reads_ps);
        let (c, cl, ch) = col(|r| r.cpu_ns_per_pkt);
        println!(
            "| {name} | {:.0}k ({:.0}k-{:.0}k) | {g:.2} ({gl:.2}-{gh:.2}) | {:.0}k | {c:.0} ({cl:.0}-{ch:.0}) |",
            p / 1e3,
            pl / 1e3,
            ph / 1e3,
            rd / 1e3
        );
    }
    println!("({rounds} rounds of {secs} s each, alternating)");
}
