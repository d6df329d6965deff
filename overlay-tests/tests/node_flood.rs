//! Issue 9, item 2 acceptance: an enrolled member floods a victim node
//! (DPRP DDEs with its real credential to the victim's UDP 7717, junk UDP
//! and TCP at the victim's underlay address, enrollment attempts with bad
//! tokens at the GMS) while two honest nodes keep a TCP transfer at >= 80%
//! of its unflooded throughput and can still start new flows by name; the
//! victim's status shows the flood seen and refused. Unflooded and flooded
//! 2 s transfers alternate (the flooder stopped and continued) and their
//! medians are compared, so load from outside the test hits both alike.
//!
//! The flooder (the `fpn-flood` binary) runs under a CPU quota
//! ([`FLOOD_CPU_PERCENT`] of one core, a cgroup; v1's `cpu` hierarchy
//! where there is one, else v2's `cpu.max`, which is untested): on the
//! 2-core machines the lab runs on, an unbounded sender would take a core
//! from the honest nodes whatever fpn does. Its packets still arrive far
//! above every DPRP budget (about 3 000 DDEs a second while it runs,
//! against 100 per source).
//!
//! `FPN_NODE_UNSAFE_NO_FLOOD_LIMITS=1` in the environment turns the nodes'
//! DPRP defences off (budgets, capacities, cookies): the test then fails,
//! which is how it was checked to test them.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{echo_send, iperf_client, iperf_server, overlay};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use serde_json::Value;

/// The flooding tool cargo built with these tests.
const FLOOD: &str = env!("CARGO_BIN_EXE_fpn-flood");
/// The flooder's CPU quota, percent of one core.
const FLOOD_CPU_PERCENT: u64 = 5;
/// Seconds of each measured transfer.
const TRANSFER_SECS: u32 = 2;
/// Unflooded and flooded transfers, alternating, of each kind.
const ROUNDS: usize = 5;
/// How long the flood lasts (wall clock, stopped or not): the six
/// transfers with their setup, the new flow, and slack.
const FLOOD_MS: u64 = 32_000;
/// A new TCP connection by name must be answered within this, flood or not.
const NEW_FLOW_BOUND: Duration = Duration::from_secs(3);

/// A cgroup with a CPU quota, removed on drop (also when the
/// test fails: the flooder has exited or been killed by then).
struct CpuQuota(PathBuf);

impl CpuQuota {
    /// A group under cgroup v1's `cpu` hierarchy, else under the unified
    /// (v2) tree with `cpu.max`; the test fails (never skips) without one.
    fn new(percent: u64) -> Self {
        let name = format!("fpn-flood-{}", std::process::id());
        let quota = percent * 1000;
        let v1 = PathBuf::from("/sys/fs/cgroup/cpu");
        if v1.join("cpu.cfs_quota_us").exists() {
            let q = CpuQuota::make(v1.join(&name));
            std::fs::write(q.0.join("cpu.cfs_period_us"), "100000").unwrap();
            std::fs::write(q.0.join("cpu.cfs_quota_us"), quota.to_string()).unwrap();
            q
        } else {
            let root = PathBuf::from("/sys/fs/cgroup");
            // The cpu controller must be on for the root's children.
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
            let q = CpuQuota::make(root.join(&name));
            std::fs::write(q.0.join("cpu.max"), format!("{quota} 100000"))
                .unwrap_or_else(|e| panic!("cpu.max in {}: {e}", q.0.display()));
            q
        }
    }

    fn make(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        CpuQuota(dir)
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.0.display()));
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        // Retries: the kernel refuses while the last task is still exiting.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Received bits per second of a TCP transfer from a to b, by name.
fn throughput(ov: &Overlay) -> f64 {
    let v = iperf_client(ov.lab(), "a", &Overlay::fqdn("b"), TRANSFER_SECS);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn counters(ov: &Overlay, name: &str) -> Value {
    ov.status(name).unwrap()["counters"].clone()
}

fn moved(before: &Value, after: &Value, key: &str) -> u64 {
    after[key]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(before[key].as_u64().unwrap_or(0))
}

#[test]
fn a_flooding_member_neither_slows_an_honest_transfer_nor_stops_new_flows() {
    let started = Instant::now();
    let ov = overlay(&Spec::new(
        &[(1, "home")],
        vec![
            NodeSpec::new("a", Mode::Op, &[1]),
            NodeSpec::new("b", Mode::Op, &[1]),
            NodeSpec::new("c", Mode::Op, &[1]),
        ],
    ));
    let lab = ov.lab();
    let _iperf = iperf_server(lab, "b");
    let _echo = common::echo_server(lab, "b", 7001);
    let target = format!("{}:7001", Overlay::fqdn("b"));
    // The first flow finds b (directory, DPRP, native path); the transfers
    // then measure steady state only.
    let warm = echo_send(lab, "a", &target, "warm-up", false);
    assert!(warm.success(), "echo a -> b: {}", warm.stderr);

    let b_pub = ov.underlay("b", "pub-b").unwrap().to_string();
    let b_overlay = ov.overlay_addr("b").unwrap().to_string();
    let c_overlay = ov.overlay_addr("c").unwrap().to_string();
    let c_state = ov.state_dir("c").unwrap().to_string_lossy().into_owned();
    let before = counters(&ov, "b");
    let quota = CpuQuota::new(FLOOD_CPU_PERCENT);
    let flood = lab
        .command(
            "c",
            [
                FLOOD,
                "--state",
                &c_state,
                "--overlay",
                &c_overlay,
                "--victim",
                &b_pub,
                "--victim-overlay",
                &b_overlay,
                "--duration-ms",
                &FLOOD_MS.to_string(),
            ],
        )
        .name("fpn-flood")
        .spawn()
        .unwrap();
    // `ip netns exec` execs the flooder in place: this pid is the
    // flooder's, and writing it moves all its threads under the quota.
    quota.add(flood.pid());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        flood.is_running(),
        "fpn-flood stopped early: {}",
        flood.log()
    );

    // Unflooded and flooded transfers alternate (the flooder stopped and
    // continued with SIGSTOP/SIGCONT), and their medians are compared:
    // other load on the shared test machine swings a single 5 s transfer
    // by 2x, and alternating charges that drift to neither side.
    let (mut quiet, mut flooded) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        flood.signal(libc::SIGSTOP);
        quiet.push(throughput(&ov));
        flood.signal(libc::SIGCONT);
        // Let the flood reach full rate again before measuring.
        std::thread::sleep(Duration::from_millis(300));
        flooded.push(throughput(&ov));
    }
    // A new flow (a new TCP connection, so a new DPRP negotiation) by name,
    // answered in time while the flood goes on. (Each flooded transfer
    // above was a new flow too.)
    let t = Instant::now();
    let fresh = echo_send(lab, "a", &target, "a new flow under flood", false);
    let took = t.elapsed();
    let during = flood.is_running();
    let status = flood
        .wait_timeout(Duration::from_millis(FLOOD_MS) + Duration::from_secs(20))
        .unwrap();
    let log = flood.log();
    let report: Value = log
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    drop(quota);
    let after = counters(&ov, "b");
    // Each flooded transfer is compared with the unflooded one just before
    // it: the median of those ratios cancels load that drifts over the run.
    let mut ratios: Vec<f64> = quiet.iter().zip(&flooded).map(|(q, f)| f / q).collect();
    let ratio = median(&mut ratios);
    let (q, f) = (median(&mut quiet), median(&mut flooded));
    eprintln!(
        "unflooded {:.1} Mbit/s, flooded {:.1} Mbit/s (paired median {:.0}%, medians of {quiet:.0?} and {flooded:.0?}), new flow in {took:?}\nflood: {report}\nvictim counters moved: {}",
        q / 1e6,
        f / 1e6,
        100.0 * ratio,
        counters_moved(&before, &after),
    );
    // One line for bench/flood.sh (medians over rounds).
    eprintln!(
        "flood-result: {}",
        serde_json::json!({
            "quiet_mbps": q / 1e6,
            "flooded_mbps": f / 1e6,
            "ratio": ratio,
            "new_flow_ms": took.as_secs_f64() * 1e3,
            "dde_per_s": report["dde"].as_f64().unwrap_or(0.0) * 1e3 / FLOOD_MS as f64,
            "junk_per_s": (report["udp_junk"].as_f64().unwrap_or(0.0)
                + report["tcp_junk"].as_f64().unwrap_or(0.0)) * 1e3 / FLOOD_MS as f64,
            "enroll_attempts": report["enroll_attempts"],
            "rate_limited": moved(&before, &after, "dprp_rate_limited"),
            "responding": after["dprp_responding"],
        })
    );
    assert!(status.success(), "fpn-flood failed: {log}");
    assert!(
        fresh.success() && during,
        "a new flow during the flood: {}",
        fresh.stderr
    );
    assert!(took < NEW_FLOW_BOUND, "the new flow took {took:?}");
    // The flood was a flood: every kind sent, far above the budgets.
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    assert!(n("dde") >= 10_000, "{report}");
    assert!(n("udp_junk") >= 5_000 && n("tcp_junk") >= 5_000, "{report}");
    assert!(n("enroll_attempts") >= 10, "{report}");
    assert_eq!(n("enroll_accepted"), 0, "{report}");
    // The victim saw it and refused it cheaply: DDEs beyond the budgets,
    // and no more peers' negotiations than the budgets allow.
    let refused = moved(&before, &after, "dprp_rate_limited")
        + moved(&before, &after, "dprp_busy_drops")
        + moved(&before, &after, "dprp_cookies_sent");
    assert!(
        refused >= n("dde") / 2,
        "b refused {refused} of {} DDEs: {after}",
        n("dde")
    );
    assert!(
        moved(&before, &after, "control_errors") >= refused,
        "{after}"
    );
    assert!(
        ratio >= 0.8,
        "flooded throughput {:.0}% of unflooded (median of paired ratios {ratios:.2?}; medians {:.1} and {:.1} Mbit/s of {flooded:.0?} and {quiet:.0?})",
        100.0 * ratio,
        f / 1e6,
        q / 1e6
    );
    // The GMS still answers its admin after the bad-token flood.
    assert!(ov.gms_admin(&["ge", "list"]).is_ok());
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
}

/// The counters that moved, for the log.
fn counters_moved(before: &Value, after: &Value) -> String {
    let Some(map) = after.as_object() else {
        return String::new();
    };
    map.keys()
        .filter_map(|k| {
            let d = moved(before, after, k);
            (d > 0).then(|| format!("{k}={d}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}
