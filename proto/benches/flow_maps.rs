//! The per-packet table lookup, std's `HashMap` (SipHash-1-3) against
//! [`fpn_proto::flow::FastMap`] (foldhash), in the same run: a table of
//! `FLOWS` IPv4 five-tuples (default 1000), looked up in a scrambled order
//! (every key hits), and the same number of misses.
//!
//! Plain harness like `primitives`: `ROUNDS` rounds (default 5) of `ITERS`
//! lookups per table (default 200000), thread CPU time
//! (CLOCK_THREAD_CPUTIME_ID, so other load on a shared machine does not
//! inflate it), both tables interleaved within each round; prints the
//! per-lookup median over the rounds with [min..max], the ratio of the
//! medians and the load average before and after.
//!
//! Run: `cargo bench -p fpn-proto --bench flow_maps`.

// A bench binary has no public API to document.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use fpn_proto::flow::{FastMap, FlowId};

#[path = "support/measure.rs"]
mod measure;
use measure::{env_usize, loadavg, thread_cpu};

fn flow(i: u32) -> FlowId {
    FlowId {
        src: IpAddr::V4(Ipv4Addr::from(0x6440_0000 | (i & 0xffff))),
        dst: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)),
        protocol: 6,
        src_port: 40_000 + (i % 20_000) as u16,
        dst_port: 5201,
    }
}

/// Nanoseconds per lookup of `keys` (cycled `iters` times) in `map`.
fn per_lookup<S: BuildHasher>(map: &HashMap<FlowId, u64, S>, keys: &[FlowId], iters: usize) -> f64 {
    let t = thread_cpu();
    let mut sum = 0u64;
    for i in 0..iters {
        if let Some(v) = map.get(black_box(&keys[i % keys.len()])) {
            sum = sum.wrapping_add(*v);
        }
    }
    black_box(sum);
    (thread_cpu() - t).as_nanos() as f64 / iters as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let rounds = env_usize("ROUNDS", 5).max(1);
    let iters = env_usize("ITERS", 200_000).max(1);
    let flows = env_usize("FLOWS", 1000).max(1) as u32;
    let load0 = loadavg();
    let mut std_map: HashMap<FlowId, u64> = HashMap::new();
    let mut fast_map: FastMap<FlowId, u64> = FastMap::default();
    for i in 0..flows {
        std_map.insert(flow(i), u64::from(i));
        fast_map.insert(flow(i), u64::from(i));
    }
    // Scrambled order: a stride coprime to the table size.
    let hits: Vec<FlowId> = (0..flows).map(|i| flow((i * 7919) % flows)).collect();
    let misses: Vec<FlowId> = (0..flows).map(|i| flow(flows + i)).collect();
    let mut r: [Vec<f64>; 4] = Default::default();
    for _ in 0..rounds {
        r[0].push(per_lookup(&std_map, &hits, iters));
        r[1].push(per_lookup(&fast_map, &hits, iters));
        r[2].push(per_lookup(&std_map, &misses, iters));
        r[3].push(per_lookup(&fast_map, &misses, iters));
    }
    println!(
        "flow_maps: {flows} IPv4 five-tuples, {rounds} rounds of {iters} lookups, thread CPU time; load {load0} before, {} after (1-minute averages)",
        loadavg()
    );
    let names = [
        "hit, std HashMap (SipHash)",
        "hit, FastMap (foldhash)",
        "miss, std HashMap (SipHash)",
        "miss, FastMap (foldhash)",
    ];
    let meds: Vec<f64> = r.iter().map(|v| median(v.clone())).collect();
    for (i, name) in names.iter().enumerate() {
        let min = r[i].iter().copied().fold(f64::INFINITY, f64::min);
        let max = r[i].iter().copied().fold(0.0, f64::max);
        println!(
            "  {name:<30} {:>6.1} ns/lookup [{min:.1}..{max:.1}]",
            meds[i]
        );
    }
    println!(
        "  ratio std / fast: hit {:.2}x, miss {:.2}x",
        meds[0] / meds[1],
        meds[2] / meds[3]
    );
}
