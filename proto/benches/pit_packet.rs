//! The PIT's per-packet work (look up the flow, seal the packet with its
//! keys, count it) with few and with many live flows: what a packet costs
//! when its entry is one of 100,000 rather than one of 1,000 (the entry is
//! then seldom in cache).
//!
//! Plain harness like `flow_maps`: a PIT of protected entries for each size
//! in `SIZES` (default `1000,100000`); `ROUNDS` rounds (default 5) of
//! `ITERS` packets (default 200000) of 64 bytes, each of another flow in a
//! scrambled order; thread CPU time per packet, median over the rounds with
//! [min..max], and the load average before and after.
//!
//! Then a full table's insert: a table of `FULL` entries (default 65536,
//! the node's default `max_flows`) takes `ITERS` new flows at 10,000 a
//! second of simulated time (a connection storm), each making room by
//! evicting an idle one; thread CPU time per insert, median over `ROUNDS`
//! with [min..max].
//!
//! Run: `cargo bench -p fpn-proto --bench pit_packet`.

// A bench binary has no public API to document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use fpn_proto::flow::FlowId;
use fpn_proto::ge::{GeId, GroupId};
use fpn_proto::keys::{GroupKey, KeyVersion, Role, derive_flow_keys};
use fpn_proto::pccom::TRAILER_LEN;
use fpn_proto::pit::{NewEntry, Origin, Pit, PitConfig};

#[path = "support/measure.rs"]
mod measure;
use measure::{env_usize, loadavg, thread_cpu};

const SRC: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const DST: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

fn flow(i: usize) -> FlowId {
    FlowId {
        src: IpAddr::V4(SRC),
        dst: IpAddr::V4(DST),
        protocol: 17,
        src_port: 1024 + (i % 60_000) as u16,
        dst_port: 7000 + (i / 60_000) as u16,
    }
}

/// A 64-byte IPv4 UDP packet of flow `f`.
fn packet(f: &FlowId) -> Vec<u8> {
    let mut p = vec![0u8; 64];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&64u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&SRC.octets());
    p[16..20].copy_from_slice(&DST.octets());
    p[20..22].copy_from_slice(&f.src_port.to_be_bytes());
    p[22..24].copy_from_slice(&f.dst_port.to_be_bytes());
    p[24..26].copy_from_slice(&44u16.to_be_bytes());
    p
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds = env_usize("ROUNDS", 5).max(1);
    let iters = env_usize("ITERS", 200_000).max(1);
    let sizes = std::env::var("SIZES").unwrap_or_else(|_| "1000,100000".to_owned());
    let load0 = loadavg();
    let gk = GroupKey::from_bytes([7; 32]);
    let now = Instant::now();
    let mut lines = Vec::new();
    for size in sizes.split(',') {
        let n: usize = size.parse().expect("SIZES: numbers separated by commas");
        let mut pit = Pit::new(PitConfig {
            max_entries: n,
            ..PitConfig::default()
        });
        for i in 0..n {
            let mut nonce = [0u8; 32];
            nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let keys = derive_flow_keys(&gk, &nonce, &[3; 32], Role::Initiator);
            pit.insert(
                flow(i),
                NewEntry::protect(GroupId(1), KeyVersion(1), GeId(2), keys),
                now,
            )
            .expect("room for every flow");
        }
        // Scrambled order: a stride coprime to the table size.
        let order: Vec<FlowId> = (0..n).map(|i| flow((i * 7919) % n)).collect();
        let templates: Vec<Vec<u8>> = order.iter().map(packet).collect();
        let mut buf = vec![0u8; 64 + TRAILER_LEN];
        let mut per = Vec::new();
        for _ in 0..rounds {
            let t = thread_cpu();
            for k in 0..iters {
                let j = k % n;
                buf[..64].copy_from_slice(&templates[j]);
                let d = pit.handle_packet(&order[j], Origin::Local, &mut buf, 64, now);
                black_box(d.expect("sealed"));
            }
            per.push((thread_cpu() - t).as_nanos() as f64 / iters as f64);
        }
        let min = per.iter().copied().fold(f64::INFINITY, f64::min);
        let max = per.iter().copied().fold(0.0, f64::max);
        lines.push(format!(
            "  {n:>7} flows  {:>6.1} ns/packet [{min:.1}..{max:.1}]",
            median(&mut per)
        ));
    }
    let full = env_usize("FULL", 65_536).max(1);
    let mut per = Vec::new();
    for r in 0..rounds {
        let mut pit = Pit::new(PitConfig {
            max_entries: full,
            ..PitConfig::default()
        });
        for i in 0..full {
            pit.insert(flow(i), NewEntry::pass(), now)
                .expect("room for every flow");
        }
        // New flows from 2 s on (everything above idle for a second), one
        // every 100 us: the table's own new flows turn idle a second after
        // they came, like a storm's.
        let base = full + r * iters;
        let t = thread_cpu();
        for k in 0..iters {
            let at = now + Duration::from_secs(2) + Duration::from_micros(100 * k as u64);
            pit.insert(flow(base + k), NewEntry::pass(), at)
                .expect("an idle flow to evict");
            while pit.poll_event().is_some() {}
        }
        per.push((thread_cpu() - t).as_nanos() as f64 / iters as f64);
    }
    let min = per.iter().copied().fold(f64::INFINITY, f64::min);
    let max = per.iter().copied().fold(0.0, f64::max);
    println!(
        "pit_packet: 64-byte packets sealed through the PIT, {rounds} rounds of {iters}, thread CPU time; load {load0} before, {} after",
        loadavg()
    );
    for l in lines {
        println!("{l}");
    }
    println!(
        "  full table of {full}: {:>6.1} ns/insert with an eviction [{min:.1}..{max:.1}]",
        median(&mut per)
    );
}
