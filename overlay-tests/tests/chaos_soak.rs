//! Issue 9 item 10: the chaos soak. A GMS and three nodes (a, b, c in one
//! group) carry two flows (a -> b and c -> b, UDP echo by name, a plaintext
//! marker in every datagram) the whole time, while a seeded RNG picks an
//! event every few seconds: SIGKILL + restart of a node (same state dir),
//! SIGKILL + restart of the GMS, a link flap in the router, 5% netem loss on
//! a node's link, or a GMS admin change (`ge add`) whose acknowledgement is
//! recorded. At the end it asserts: (1) no marker in any capture on the
//! nodes' links (with a control that the capture would show one); (2) no
//! flow dead longer than [`MAX_DEAD`] after both its ends are up; (3) every
//! acknowledged GMS change survived the GMS's restarts.
//!
//! `FPN_CHAOS_SEED` replays a run (the seed is printed); `FPN_CHAOS_SECS`
//! sets the long variant's length (default 240 s).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use common::{echo_send, overlay};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};

/// The longest a flow may stay dead once both its ends are up again.
const MAX_DEAD: Duration = Duration::from_secs(10);
/// What every flow datagram carries; must never be seen on a link.
const MARKER: &str = "CHAOS-PLAIN-FLOW";
/// What the control datagram (sent outside the overlay) carries.
const CONTROL: &str = "CHAOS-PLAIN-CONTROL";
const PORT: u16 = 7005;
/// The flows: (from, to).
const FLOWS: [(&str, &str); 2] = [("a", "b"), ("c", "b")];

/// A small deterministic RNG (splitmix64): enough to replay a run from its
/// seed without a new dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One entry of the event log: what happened, from when to when (seconds
/// since the soak began), and which nodes it took down (their flows are
/// excused from `start` to `end`).
#[derive(Debug)]
struct Event {
    start: f64,
    end: f64,
    what: String,
    down: Vec<&'static str>,
}

/// The router's interface on node `name`'s public link (found by the
/// router's address on it, 198.18.N.1).
fn router_iface(ov: &Overlay, name: &str) -> String {
    let under = ov
        .underlay(name, &format!("pub-{name}"))
        .unwrap()
        .to_string();
    let gw = under.rsplit_once('.').unwrap().0.to_owned() + ".1/";
    let out = ov
        .lab()
        .exec_ok("inet", ["ip", "-o", "-4", "addr", "show"])
        .unwrap();
    out.lines()
        .find(|l| l.contains(&gw))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no router interface with {gw}: {out}"))
        .to_owned()
}

/// The worst dead time of a flow: the longest stretch without a success
/// that no event excuses (a gap's clock starts at the later of the last
/// success and the end of the last event that took one of its ends down).
fn worst_dead(ok: &[f64], end: f64, events: &[Event], ends: [&str; 2]) -> (f64, f64) {
    let mut worst = (0.0, 0.0);
    let mut prev = 0.0;
    for &t in ok.iter().chain(std::iter::once(&end)) {
        let excused = events
            .iter()
            .filter(|e| e.down.iter().any(|d| ends.contains(d)))
            .filter(|e| e.start < t && e.end > prev)
            .map(|e| e.end)
            .fold(prev, f64::max);
        let dead = (t - excused).max(0.0);
        if dead > worst.0 {
            worst = (dead, excused);
        }
        prev = t;
    }
    worst
}

/// Sets the flag when dropped (also on unwind).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Starts 5% loss on `node`'s link: netem on its eth0 where the kernel has
/// it (CONFIG_NET_SCH_NETEM), else a random 5% drop in the router's
/// forward path to and from it (nft numgen). Returns which it used.
fn loss_on(lab: &fpn_lab::Lab, node: &str, iface: &str) -> &'static str {
    let netem = [
        "tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "loss", "5%",
    ];
    if lab.exec(node, netem).is_ok_and(|o| o.success()) {
        return "netem";
    }
    for cmd in [
        "add table inet fpnchaos".to_owned(),
        "add chain inet fpnchaos loss { type filter hook forward priority -10; }".to_owned(),
        format!("add rule inet fpnchaos loss iifname {iface} numgen random mod 100 < 5 drop"),
        format!("add rule inet fpnchaos loss oifname {iface} numgen random mod 100 < 5 drop"),
    ] {
        lab.exec_ok("inet", ["nft", &cmd]).unwrap();
    }
    "nft"
}

/// Ends the loss [`loss_on`] started.
fn loss_off(lab: &fpn_lab::Lab, node: &str, how: &str) {
    if how == "netem" {
        lab.exec_ok(node, ["tc", "qdisc", "del", "dev", "eth0", "root"])
            .unwrap();
    } else {
        lab.exec_ok("inet", ["nft", "delete", "table", "inet", "fpnchaos"])
            .unwrap();
    }
}

fn soak(secs: u64) {
    let seed = std::env::var("FPN_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("chaos soak: seed {seed} (FPN_CHAOS_SEED={seed} replays), {secs} s");
    let mut rng = Rng(seed);

    let ov = overlay(&Spec::new(
        &[(1, "home")],
        vec![
            NodeSpec::new("a", Mode::Op, &[1]),
            NodeSpec::new("b", Mode::Op, &[1]),
            NodeSpec::new("c", Mode::Op, &[1]),
        ],
    ));
    let lab = ov.lab();
    let _echo = common::echo_server(lab, "b", PORT);
    let caps: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| lab.capture(n, &format!("pub-{n}"), "").unwrap())
        .collect();
    let ifaces: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| router_iface(&ov, n))
        .collect();

    let t0 = Instant::now();
    let now = || t0.elapsed().as_secs_f64();
    let stop = AtomicBool::new(false);
    // While fpn-node on a flow's source is killed and coming back, its host
    // has no TUN and resolves names via the GMS's DDNS (public addresses):
    // whatever it sends then goes out in the clear, by design of the lab's
    // resolv.conf (fail-open while the node is down, see the report of
    // issue 9 item 10). The flows hold their source's read lock per send and
    // a restart takes the write lock, so no datagram is sent in that window
    // and invariant (1) is about the overlay, not about a host without one.
    let restarting: [RwLock<()>; 3] = Default::default();
    let events: Mutex<Vec<Event>> = Mutex::new(Vec::new());
    let mut acked: Vec<String> = Vec::new();
    let soak_len = Duration::from_secs(secs);

    let liveness: Vec<Vec<f64>> = std::thread::scope(|s| {
        let flows: Vec<_> = FLOWS
            .iter()
            .map(|&(from, to)| {
                let (stop, now) = (&stop, &now);
                let gate = &restarting[usize::from(from.as_bytes()[0] - b'a')];
                s.spawn(move || {
                    let mut ok = Vec::new();
                    let target = format!("{to}.home.fpn:{PORT}");
                    // Bounded by count as well as by the stop flag.
                    for i in 0..100_000u32 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let msg = format!("{MARKER}-{from}-{i}");
                        let held = gate.read().unwrap();
                        let sent = echo_send(lab, from, &target, &msg, true).success();
                        drop(held);
                        if sent {
                            ok.push(now());
                        }
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    ok
                })
            })
            .collect();

        // A panic below must still stop the flows, or the scope never ends.
        let _stop = StopOnDrop(&stop);
        // The chaos: one event at a time, every 2-5 s, until the soak ends.
        let mut n = 0u32;
        while t0.elapsed() < soak_len && n < 10_000 {
            n += 1;
            std::thread::sleep(Duration::from_millis(2000 + rng.below(3000)));
            if t0.elapsed() >= soak_len {
                break;
            }
            let k = rng.below(3) as usize;
            let node = ["a", "b", "c"][k];
            let start = now();
            let (what, down) = match rng.below(5) {
                0 => {
                    let _held = restarting[k].write().unwrap();
                    ov.kill(node).unwrap();
                    let r = ov.up(node);
                    assert!(r.is_ok(), "{node} did not come back up: {r:?}");
                    (format!("SIGKILL + up {node}"), vec![node])
                }
                1 => {
                    ov.kill_gms();
                    ov.start_gms().unwrap();
                    ("SIGKILL + restart GMS".to_owned(), vec![])
                }
                2 => {
                    let ms = 500 + rng.below(2500);
                    let i = ifaces[k].as_str();
                    lab.exec_ok("inet", ["ip", "link", "set", i, "down"])
                        .unwrap();
                    std::thread::sleep(Duration::from_millis(ms));
                    lab.exec_ok("inet", ["ip", "link", "set", i, "up"]).unwrap();
                    (format!("link flap {node} ({i}) {ms} ms"), vec![node])
                }
                3 => {
                    let ms = 2000 + rng.below(4000);
                    let how = loss_on(lab, node, &ifaces[k]);
                    std::thread::sleep(Duration::from_millis(ms));
                    loss_off(lab, node, how);
                    (format!("5% loss on {node} ({how}) {ms} ms"), vec![])
                }
                _ => {
                    let name = format!("chaos{n}");
                    let r = ov.gms_admin(&[
                        "ge", "add", &name, "--kind", "ges", "--mode", "op", "--group", "1",
                    ]);
                    let what = format!(
                        "ge add {name}: {}",
                        if r.is_ok() { "ack" } else { "no ack" }
                    );
                    if r.is_ok() {
                        acked.push(name);
                    }
                    (what, vec![])
                }
            };
            let end = now();
            eprintln!("[{start:7.2} .. {end:7.2}] {what}");
            events.lock().unwrap().push(Event {
                start,
                end,
                what,
                down,
            });
        }
        stop.store(true, Ordering::Relaxed);
        flows.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let end = now();
    let events = events.into_inner().unwrap();
    let log = events
        .iter()
        .map(|e| format!("[{:7.2} .. {:7.2}] {}", e.start, e.end, e.what))
        .collect::<Vec<_>>()
        .join("\n");

    // Control: the same kind of datagram outside the overlay must show up
    // in the capture, or the captures prove nothing.
    let b_under = ov.underlay("b", "pub-b").unwrap();
    for _ in 0..3 {
        echo_send(lab, "a", &format!("{b_under}:{PORT}"), CONTROL, true);
    }
    let mut failures = Vec::new();
    for (n, cap) in ["a", "b", "c"].iter().zip(caps) {
        let pcap = cap.stop().unwrap();
        let leaked = pcap.count_containing(MARKER.as_bytes());
        if leaked > 0 {
            failures.push(format!("{leaked} packets with the marker on {n}'s link"));
        }
        if *n != "c" && !pcap.contains(CONTROL.as_bytes()) {
            failures.push(format!("control not seen on {n}'s link"));
        }
    }

    for (&(from, to), ok) in FLOWS.iter().zip(&liveness) {
        let (dead, since) = worst_dead(ok, end, &events, [from, to]);
        eprintln!(
            "flow {from} -> {to}: {} successes, worst dead {dead:.2} s (from {since:.2})",
            ok.len()
        );
        if dead > MAX_DEAD.as_secs_f64() {
            failures.push(format!(
                "flow {from} -> {to} dead {dead:.2} s from {since:.2} (ends up)"
            ));
        }
    }

    let list = ov.gms_json(&["ge", "list"]).unwrap().to_string();
    for name in &acked {
        if !list.contains(&format!("\"{name}\"")) {
            failures.push(format!("acknowledged `ge add {name}` lost"));
        }
    }
    eprintln!(
        "chaos soak: {end:.1} s, {} events, {} acknowledged changes, seed {seed}",
        events.len(),
        acked.len()
    );
    assert!(
        failures.is_empty(),
        "chaos soak failed (seed {seed}):\n{}\nevents:\n{log}\nlogs:\n{}",
        failures.join("\n"),
        ov.log_tails(20)
    );
}

/// The CI variant: the same soak, 45 s.
#[test]
fn chaos_soak_short() {
    soak(45);
}

/// The full soak (FPN_CHAOS_SECS, default 240 s): too long for every CI run.
#[test]
#[ignore = "4 minutes; run with --run-ignored only"]
fn chaos_soak_long() {
    let secs = std::env::var("FPN_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(240)
        .min(300);
    soak(secs);
}
