//! Many live flows on one node: the heap each flow costs at either end and
//! what ageing them all out at once costs, on two node cores of the
//! deterministic simulator (real DPRP with fast open, real PITs with their
//! PCCOM keys, the native path's translations and steering; no sockets).
//!
//! Node a opens `FLOWS` UDP flows to node b (default 100000), in bursts
//! within DPRP's fast-open budget, each flow carrying one packet. A
//! counting allocator gives the live heap: before the flows, with them, and
//! after each end's flows aged out (a first, then b), so each end's bytes
//! per flow are what its ageing gave back, and "left" is what stayed after
//! both (tables keep their capacity). Then the same flows open and age out
//! twice more: a leak would grow the heap over the third cycle. Ageing runs the way the daemon runs it:
//! `handle_timeout` past every flow's idle timeout, one slice per call;
//! reported are the calls, the longest call at each end and the total
//! (thread CPU).
//!
//! For each carrier (`CARRIERS`, default `quic,native`): `ROUNDS` rounds
//! (default 3), each a fresh pair; prints medians with [min..max] and the
//! load average before and after.
//!
//! `WORKERS=1` gives each node a data-path worker (design note 67), as the
//! daemon's receive and TUN threads hold them: each flow's installs there
//! keep its cipher states alive until the worker's sweep after the flow
//! ended (a pass starts once a second, a piece of the table per step:
//! design notes 82 and 83), so the worker's table is reported on its own: the heap
//! each end's pass gave back after its flows aged out, per flow; and the
//! initiator's pass with every flow live and after they all ended: its
//! longest step and its total (thread CPU). `FULL_SWEEP=1` times the
//! whole-table sweep instead (`Worker::sweep`, one step: what the threads
//! ran before note 82), for a comparison in one build.
//!
//! Run: `cargo bench -p fpn-node --bench flow_scale`.

// A bench binary has no public API to document.
#![allow(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use fpn_node::core::sim::{CoreSim, LinkConfig};
use fpn_proto::ge::Mode;
use fpn_proto::path::{Force, PathConfig};
use fpn_proto::pit::PitConfig;

#[path = "../../proto/benches/support/measure.rs"]
mod measure;
use measure::{env_usize, loadavg, thread_cpu};

/// Counts the bytes of live heap allocations.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only
// a counter is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout contract passes through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as in `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Flows opened per burst: well within DPRP's fast-open budget per GE.
const BURST: usize = 1000;
/// Source ports used per destination port.
const PORTS: usize = 50_000;

/// One round's figures.
struct Round {
    per_flow_a: f64,
    per_flow_b: f64,
    left_per_flow: f64,
    grew_per_flow: f64,
    open_us_per_flow: f64,
    calls: usize,
    /// The ageing's longest call at each end (initiator, responder).
    longest_ms: [f64; 2],
    total_ms: f64,
    native: bool,
    /// What each end's worker held per flow (given back at its sweep).
    worker_a: f64,
    worker_b: f64,
    /// The initiator's worker's pass with every flow live, and after they
    /// ended: (longest step, total), thread CPU in ms, and its steps.
    sweep_live_ms: (f64, f64, f64),
    sweep_ended_ms: (f64, f64, f64),
}

/// A whole pass of `w`'s periodic sweep: its longest step and its total,
/// thread CPU in ms, and its steps.
fn pass(w: &mut fpn_node::core::worker::Worker) -> (f64, f64, f64) {
    if env_usize("FULL_SWEEP", 0) == 1 {
        let t = thread_cpu();
        w.sweep();
        let ms = (thread_cpu() - t).as_secs_f64() * 1e3;
        return (ms, ms, 1.0);
    }
    let (mut longest, mut total, mut steps) = (Duration::ZERO, Duration::ZERO, 0);
    loop {
        steps += 1;
        let t = thread_cpu();
        let done = w.sweep_step();
        let d = thread_cpu() - t;
        longest = longest.max(d);
        total += d;
        if done {
            break;
        }
    }
    (
        longest.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        f64::from(steps),
    )
}

fn round(seed: u64, flows: usize, force: Force, workers: bool) -> Round {
    let mut sim = CoreSim::new(seed, LinkConfig::default());
    sim.fast_open = true;
    sim.workers = workers;
    sim.wire_log = false;
    sim.invariants = false;
    sim.path = PathConfig {
        force,
        ..PathConfig::default()
    };
    sim.pit = PitConfig {
        max_entries: flows + 16,
        ..PitConfig::default()
    };
    let a = sim.add_node(1, Mode::Open, &[1]);
    let b = sim.add_node(2, Mode::Open, &[1]);
    sim.introduce_all();
    let before = live();
    let first = cycle(&mut sim, a, b, flows);
    let after_first = live();
    // The same flows twice more: tables settle at their capacity by the
    // second cycle (hash order differs), so a third that grows the heap
    // is a leak.
    cycle(&mut sim, a, b, flows);
    let after_second = live();
    cycle(&mut sim, a, b, flows);
    let after_third = live();
    let n = flows as f64;
    Round {
        left_per_flow: (after_first - before) as f64 / n,
        grew_per_flow: (after_third - after_second) as f64 / n,
        ..first
    }
}

/// Opens `flows` flows from a to b, then ages each end's out.
fn cycle(sim: &mut CoreSim, a: usize, b: usize, flows: usize) -> Round {
    // A first flow negotiates and leaves the pair epoch the others open
    // with (a burst of negotiations would meet DPRP's DDE budgets).
    sim.send_udp(a, b, 1, 1, b"first");
    sim.drive();
    sim.run_for(Duration::from_secs(2));
    for n in &mut sim.nodes {
        n.tun.clear();
    }
    let t = thread_cpu();
    let mut opened = 0;
    while opened < flows {
        let burst = BURST.min(flows - opened);
        for i in opened..opened + burst {
            let sport = 10_000 + (i % PORTS) as u16;
            let dport = 7000 + (i / PORTS) as u16;
            sim.send_udp(a, b, sport, dport, b"y");
        }
        opened += burst;
        sim.drive();
        // Leaves the fast-open budget (per second and GE) room to refill.
        sim.run_for(Duration::from_millis(600));
        sim.nodes[b].tun.clear();
    }
    let open = thread_cpu() - t;
    let entries = (sim.nodes[a].core.pit().len(), sim.nodes[b].core.pit().len());
    assert!(
        entries.0 >= flows && entries.1 >= flows,
        "every flow open at both ends: {entries:?} of {flows}"
    );
    // A UDP flow's one packet rides inside its FOP (note 71), which takes
    // the IP path when the peer's path is native (DPRP on the IP path);
    // and every flow has its translation (a FOP takes the IP path without
    // one too).
    let native = sim.counter(a, "native_out") + sim.counter(a, "dprp_native_out")
        > flows as u64 / 2
        && sim.counter(a, "native_translations_refused") == 0
        && sim.counter(b, "native_translations_refused") == 0;

    // A receive thread sweeps its worker's table once a second, most of
    // the time with every flow still live.
    let sweep_live = sim.nodes[a].worker.as_mut().map_or((0.0, 0.0, 0.0), pass);
    // Each end ages out on its own, the way its driver would run it: past
    // every flow's idle timeout at once, one slice per call.
    let late = sim.now() + Duration::from_secs(400);
    let (mut calls, mut longest, mut total) = (0, [Duration::ZERO; 2], Duration::ZERO);
    let mut freed = [0isize; 2];
    let mut swept = [0isize; 2];
    let mut sweep_ended = (0.0, 0.0, 0.0);
    for (k, i) in [a, b].into_iter().enumerate() {
        let at_start = live();
        let core = &mut sim.nodes[i].core;
        while !core.pit().is_empty() {
            let t = thread_cpu();
            core.handle_timeout(late);
            while core.poll_output().is_some() {}
            let d = thread_cpu() - t;
            longest[k] = longest[k].max(d);
            total += d;
            calls += 1;
        }
        freed[k] = at_start - live();
        if let Some(w) = sim.nodes[i].worker.as_mut() {
            let before_sweep = live();
            let p = pass(w);
            if k == 0 {
                sweep_ended = p;
            }
            swept[k] = before_sweep - live();
        }
    }
    // The simulation's clock catches up with the cores'.
    let behind = late.saturating_duration_since(sim.now());
    sim.run_for(behind);
    let n = flows as f64;
    Round {
        per_flow_a: freed[0] as f64 / n,
        per_flow_b: freed[1] as f64 / n,
        worker_a: swept[0] as f64 / n,
        worker_b: swept[1] as f64 / n,
        sweep_live_ms: sweep_live,
        sweep_ended_ms: sweep_ended,
        left_per_flow: 0.0,
        grew_per_flow: 0.0,
        open_us_per_flow: open.as_secs_f64() * 1e6 / n,
        calls,
        longest_ms: longest.map(|d| d.as_secs_f64() * 1e3),
        total_ms: total.as_secs_f64() * 1e3,
        native,
    }
}

fn stat(v: impl Iterator<Item = f64>) -> String {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    let m = v[v.len() / 2];
    format!("{m:.1} [{:.1}..{:.1}]", v[0], v[v.len() - 1])
}

fn main() {
    let flows = env_usize("FLOWS", 100_000);
    let rounds = env_usize("ROUNDS", 3).max(1);
    let carriers = std::env::var("CARRIERS").unwrap_or_else(|_| "quic,native".to_owned());
    let workers = env_usize("WORKERS", 0) == 1;
    println!(
        "flow_scale: {flows} flows, {rounds} rounds, workers {workers}, medians [min..max]; load before {}",
        loadavg()
    );
    for carrier in carriers.split(',') {
        let force = match carrier {
            "quic" => Force::Quic,
            "native" => Force::Native,
            other => panic!("unknown carrier {other:?} in CARRIERS (quic, native)"),
        };
        let rs: Vec<Round> = (0..rounds)
            .map(|r| round(100 + r as u64, flows, force, workers))
            .collect();
        assert!(
            rs.iter().all(|r| r.native == (force == Force::Native)),
            "{carrier}: the flows did not take that carrier"
        );
        println!("{carrier}:");
        type Row = (&'static str, fn(&Round) -> f64, &'static str);
        let rows: [Row; 5] = [
            ("heap per flow, initiator ", |r| r.per_flow_a, "bytes"),
            ("heap per flow, responder ", |r| r.per_flow_b, "bytes"),
            (
                "heap left after ageing   ",
                |r| r.left_per_flow,
                "bytes per flow",
            ),
            (
                "heap grown by a 3rd cycle",
                |r| r.grew_per_flow,
                "bytes per flow",
            ),
            (
                "opening, both ends + sim ",
                |r| r.open_us_per_flow,
                "us CPU per flow",
            ),
        ];
        for (label, value, unit) in rows {
            println!("  {label}  {} {unit}", stat(rs.iter().map(value)));
        }
        if workers {
            println!(
                "  (with workers the heap per flow above is what the cores' ageing gave back, the \
                 keys the workers held are below; what is left includes the workers' tables, \
                 which keep their size; the responder's longest ageing call includes the \
                 allocator's cleanup after the initiator's worker freed its keys, one heap in \
                 this one-thread simulation: notes 82, 83)"
            );
            println!(
                "  worker table, initiator    {} bytes per flow",
                stat(rs.iter().map(|r| r.worker_a))
            );
            println!(
                "  worker table, responder    {} bytes per flow",
                stat(rs.iter().map(|r| r.worker_b))
            );
            for (label, p) in [
                (
                    "live:",
                    (|r| r.sweep_live_ms) as fn(&Round) -> (f64, f64, f64),
                ),
                ("ended:", |r| r.sweep_ended_ms),
            ] {
                println!(
                    "  initiator's worker pass, every flow {label:6} longest step {} ms, total {} \
                     ms, {} steps",
                    stat(rs.iter().map(|r| p(r).0)),
                    stat(rs.iter().map(|r| p(r).1)),
                    stat(rs.iter().map(|r| p(r).2))
                );
            }
        }
        println!(
            "  ageing all out (2 ends)    {} calls, longest at the initiator {} ms, at the \
             responder {} ms, total {} ms",
            stat(rs.iter().map(|r| r.calls as f64)),
            stat(rs.iter().map(|r| r.longest_ms[0])),
            stat(rs.iter().map(|r| r.longest_ms[1])),
            stat(rs.iter().map(|r| r.total_ms))
        );
    }
    println!("load after {}", loadavg());
}
