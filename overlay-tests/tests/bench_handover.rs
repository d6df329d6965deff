//! The handover benchmark (bench/handover.sh; docs/BENCHMARKS.md
//! "Handover"). Ignored in the test suite: it measures, it asserts only
//! that the stream survived and every move was followed by records.
//!
//! configs/lab/nat-home.toml: the laptop sends a 16-byte timestamped record
//! every 10 ms over one TCP connection to the home router while it walks
//! home LAN -> cafe (NAT, random ports) -> public hotspot -> home LAN, over
//! and over (`MOVES` moves, `DWELL` seconds at each place). The gap of a
//! move is the receiver's longest wait for a record from the moment the
//! new address and route are in place (`fpn_lab::records`, the lab test's
//! measure). Three tunnels, one after the other, each on a fresh lab:
//!
//! - `fpn-native`: fpn-node on the router and the laptop, default carrier
//!   (native where it works);
//! - `fpn-quic`: the same with `carrier = "quic"`;
//! - `wireguard-go`: the router listens on UDP 7718 (the port its NAT
//!   lets in), the laptop's endpoint is the router's public address with a
//!   25 s keepalive; WireGuard roams when the router receives an
//!   authenticated packet from the laptop's new address.
//!
//! Then, for fpn: the RTT of the flow that moved (a UDP flow from a fixed
//! port, opened at home before the first move, back home after the last)
//! against a new flow, 200 echoes each, medians (the seed measured +0.01
//! ms for a moved flow).
//!
//! Environment: MOVES (12), DWELL (4, seconds; a gap is looked for up to
//! 0.5 s before the next move, and one longer is reported as that), FPN_BIN_DIR (the daemons
//! to measure; bench/handover.sh sets target/release).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{OVERLAY_TOOLS, echo_server, need};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use fpn_lab::records::{Received, now_ns};
use fpn_lab::{Lab, config_path};

const RECORDS_PORT: u16 = 9301;
const ECHO_PORT: u16 = 9300;
/// Records after the last move, so its gap is measured in full.
const TAIL: Duration = Duration::from_secs(2);
/// How long after a move its gap is looked for (a move with no record
/// within it is reported as this): the dwell less this margin, so the
/// next move's outage is never counted.
const MARGIN: Duration = Duration::from_millis(500);

const WALK: [(&str, &str, &str); 3] = [
    ("homelan", "cafelan", "home -> cafe (NAT)"),
    ("cafelan", "publan", "cafe -> public"),
    ("publan", "homelan", "public -> home"),
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the record stream from the laptop to `to` while the laptop walks
/// `moves` moves; the gap of each, by kind of move.
fn walk(lab: &Lab, to: SocketAddr, moves: usize, dwell: Duration) -> Vec<(&'static str, Duration)> {
    let count = ((dwell * moves as u32 + dwell + TAIL).as_millis() / 10) as u64;
    let listener = lab
        .run_in("gw", || {
            std::net::TcpListener::bind(("0.0.0.0", RECORDS_PORT))
        })
        .unwrap()
        .unwrap();
    let receiver = std::thread::spawn(move || {
        fpn_lab::records::receive(listener, count, Duration::from_secs(count / 100 + 60))
    });
    let sender = lab
        .thread_in("laptop", move || {
            fpn_lab::records::send(to, Duration::from_millis(10), count)
        })
        .unwrap();
    std::thread::sleep(dwell);
    let mut at = Vec::new();
    for i in 0..moves {
        let (from, to, kind) = WALK[i % WALK.len()];
        lab.roam("laptop", from, to).expect("roam");
        at.push((kind, now_ns()));
        std::thread::sleep(dwell);
    }
    let sent = sender.join();
    let got: Received = receiver.join().unwrap();
    assert!(sent.is_ok(), "the stream broke: {sent:?}");
    assert_eq!(got.connections, 1);
    assert_eq!(got.arrivals.len() as u64, count, "{:?}", got.error);
    assert!(got.sequence_errors().is_empty());
    // Back home for what follows.
    let done = moves % WALK.len();
    if done != 0 {
        lab.roam("laptop", WALK[done].0, "homelan")
            .expect("roam home");
    }
    let window = dwell.saturating_sub(MARGIN);
    at.into_iter()
        .map(|(k, t)| (k, got.gap_after(t, window).unwrap_or(window)))
        .collect()
}

/// `n` UDP echoes from `from`'s port `sport` to `to`; their RTTs, ms.
fn rtts(lab: &Lab, from: &str, to: SocketAddr, sport: u16, n: usize) -> Vec<f64> {
    lab.run_in(from, move || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", sport)).unwrap();
        s.connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 1500];
        let mut out = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            s.send(b"rtt").unwrap();
            if let Ok(k) = s.recv(&mut buf)
                && buf[..k].ends_with(b"rtt")
            {
                out.push(t.elapsed().as_secs_f64() * 1e3);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        out
    })
    .unwrap()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// fpn on a fresh lab with `carrier` appended to the nodes' configuration:
/// the gaps, and (moved flow, new flow) median RTTs.
fn fpn(
    carrier: &str,
    moves: usize,
    dwell: Duration,
) -> (Vec<(&'static str, Duration)>, (f64, f64)) {
    let lab = Lab::up(config_path("nat-home.toml")).expect("lab");
    let mut spec = Spec::new(
        &[(1, "home")],
        vec![
            NodeSpec::new("gw", Mode::Op, &[1]),
            NodeSpec::new("laptop", Mode::Op, &[1]),
        ],
    );
    spec.node_config = carrier.to_string();
    let ov = Overlay::start(lab, &spec).unwrap_or_else(|e| panic!("overlay: {e}"));
    let _echo = echo_server(ov.lab(), "gw", ECHO_PORT);
    let gw = ov.overlay_addr("gw").unwrap();
    let echo = SocketAddr::new(gw.into(), ECHO_PORT);
    // The flow that will move, opened (and settled) at home.
    assert!(rtts(ov.lab(), "laptop", echo, 42000, 50).len() > 40);
    let gaps = walk(
        ov.lab(),
        SocketAddr::new(gw.into(), RECORDS_PORT),
        moves,
        dwell,
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut moved = rtts(ov.lab(), "laptop", echo, 42000, 200);
    let mut fresh = rtts(ov.lab(), "laptop", echo, 42001, 200);
    assert!(moved.len() > 150 && fresh.len() > 150);
    (gaps, (median(&mut moved), median(&mut fresh)))
}

fn sh(lab: &Lab, host: &str, argv: &[&str]) {
    lab.exec_ok(host, argv.iter().copied())
        .unwrap_or_else(|e| panic!("{host}: {argv:?}: {e}"));
}

fn wg_key() -> (String, String) {
    let private = std::process::Command::new("wg")
        .arg("genkey")
        .output()
        .unwrap();
    assert!(private.status.success());
    let private = String::from_utf8(private.stdout)
        .unwrap()
        .trim()
        .to_string();
    let mut child = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let public = child.wait_with_output().unwrap();
    (
        private,
        String::from_utf8(public.stdout).unwrap().trim().to_string(),
    )
}

/// wireguard-go on a fresh lab: the gaps.
fn wireguard(moves: usize, dwell: Duration) -> Vec<(&'static str, Duration)> {
    let lab = Lab::up(config_path("nat-home.toml")).expect("lab");
    // Interface names are per namespace, their control sockets are not:
    // one name per host.
    let id = std::process::id() % 100_000;
    let (gw_priv, gw_pub) = wg_key();
    let (lt_priv, lt_pub) = wg_key();
    let dir = lab.log_dir();
    let mut procs = Vec::new();
    for (host, private, addr) in [
        ("gw", &gw_priv, "10.99.0.1/24"),
        ("laptop", &lt_priv, "10.99.0.2/24"),
    ] {
        let dev = format!("wg{id}{}", &host[..1]);
        let key = dir.join(format!("{host}.wgkey"));
        std::fs::write(&key, private).unwrap();
        procs.push(
            lab.command(
                host,
                ["env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", "-f", &dev],
            )
            .name(&format!("wireguard-go-{host}"))
            .spawn()
            .unwrap(),
        );
        let sock = format!("/var/run/wireguard/{dev}.sock");
        let t = Instant::now();
        while !std::path::Path::new(&sock).exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "wireguard-go did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let key = key.display().to_string();
        // The router listens on the port its NAT lets in; the laptop
        // names the router's public address and keeps its mapping open.
        let peer: &[&str] = if host == "gw" {
            &[
                "listen-port",
                "7718",
                "peer",
                &lt_pub,
                "allowed-ips",
                "10.99.0.2/32",
            ]
        } else {
            &[
                "peer",
                &gw_pub,
                "allowed-ips",
                "10.99.0.1/32",
                "endpoint",
                "198.18.2.2:7718",
                "persistent-keepalive",
                "25",
            ]
        };
        let mut argv = vec!["wg", "set", &dev, "private-key", &key];
        argv.extend_from_slice(peer);
        sh(&lab, host, &argv);
        sh(&lab, host, &["ip", "addr", "add", addr, "dev", &dev]);
        sh(&lab, host, &["ip", "link", "set", &dev, "up"]);
    }
    let to = SocketAddr::new(Ipv4Addr::new(10, 99, 0, 1).into(), RECORDS_PORT);
    let gaps = walk(&lab, to, moves, dwell);
    drop(procs);
    gaps
}

fn summary(gaps: &[(&'static str, Duration)]) -> Vec<(&'static str, f64, f64, usize)> {
    WALK.iter()
        .map(|(_, _, kind)| {
            let mut v: Vec<f64> = gaps
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, d)| d.as_secs_f64() * 1e3)
                .collect();
            let worst = v.iter().copied().fold(0.0, f64::max);
            let n = v.len();
            (*kind, median(&mut v), worst, n)
        })
        .collect()
}

#[test]
#[ignore = "a benchmark: bench/handover.sh"]
fn handover() {
    need(OVERLAY_TOOLS);
    need(&["wireguard-go", "wg"]);
    let moves = env_u64("MOVES", 12) as usize;
    let dwell = Duration::from_secs(env_u64("DWELL", 4));
    let (native, (n_moved, n_fresh)) = fpn("", moves, dwell);
    let (quic, (q_moved, q_fresh)) = fpn("carrier = \"quic\"", moves, dwell);
    let wg = wireguard(moves, dwell);
    println!(
        "handover gap, ms: median [worst] over the moves of each kind ({moves} moves, {} s apart, 10 ms records over one TCP connection)",
        dwell.as_secs()
    );
    println!(
        "{:<22} {:>18} {:>18} {:>18}",
        "move", "fpn native", "fpn quic", "wireguard-go"
    );
    let (a, b, c) = (summary(&native), summary(&quic), summary(&wg));
    for i in 0..WALK.len() {
        println!(
            "{:<22} {:>8.1} [{:>6.1}] {:>8.1} [{:>6.1}] {:>8.1} [{:>6.1}]   (n={})",
            a[i].0, a[i].1, a[i].2, b[i].1, b[i].2, c[i].1, c[i].2, a[i].3
        );
    }
    let all = |g: &[(&str, Duration)]| {
        let mut v: Vec<f64> = g.iter().map(|(_, d)| d.as_secs_f64() * 1e3).collect();
        let worst = v.iter().copied().fold(0.0, f64::max);
        (median(&mut v), worst)
    };
    let (an, bn, cn) = (all(&native), all(&quic), all(&wg));
    println!(
        "{:<22} {:>8.1} [{:>6.1}] {:>8.1} [{:>6.1}] {:>8.1} [{:>6.1}]",
        "all moves", an.0, an.1, bn.0, bn.1, cn.0, cn.1
    );
    println!(
        "moved-flow RTT, median of 200 echoes, ms: native moved {n_moved:.3} vs new {n_fresh:.3} ({:+.3}); quic moved {q_moved:.3} vs new {q_fresh:.3} ({:+.3})",
        n_moved - n_fresh,
        q_moved - q_fresh
    );
    println!(
        "per move, ms: native {:?}",
        native
            .iter()
            .map(|(_, d)| (d.as_secs_f64() * 1e3).round())
            .collect::<Vec<_>>()
    );
    println!(
        "per move, ms: quic   {:?}",
        quic.iter()
            .map(|(_, d)| (d.as_secs_f64() * 1e3).round())
            .collect::<Vec<_>>()
    );
    println!(
        "per move, ms: wg     {:?}",
        wg.iter()
            .map(|(_, d)| (d.as_secs_f64() * 1e3).round())
            .collect::<Vec<_>>()
    );
}
