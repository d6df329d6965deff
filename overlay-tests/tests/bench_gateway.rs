//! The NAT-f benchmark (bench/gateway.sh; docs/BENCHMARKS.md "Hosts behind
//! a gateway"). Ignored in the test suite: it measures, it asserts only
//! that every measurement answered.
//!
//! configs/lab/nat-home.toml, the laptop at the cafe, fpn-node on the home
//! router as the gateway (GEN) and on the laptop, the GMS on the VPS; the
//! NAS runs a UDP echo and iperf3 and no fpn software. Per round:
//!
//! - `new_host`: `HOSTS` hosts registered behind the gateway that nobody
//!   contacted before (each a LAN address of its own on the NAS): from a
//!   fresh UDP socket on the laptop, one 64-byte datagram to the host's
//!   name, the echo timed inside the client (the name resolved before the
//!   clock starts). The first packet waits for the NAT-f negotiation (DPRP
//!   with the gateway, the port reservation, the gateway's DNAT pair) and
//!   is then delivered. Median over the hosts, ms.
//! - `new_flow`: the same to a host contacted already (a new source port:
//!   a new flow, the pair's DNAT in place), `HOSTS` times, median ms.
//! - `plain_rtt`: the same datagram to the home router's public address,
//!   which forwards UDP 7000 to the NAS (a plain port forward, no fpn),
//!   median ms.
//! - `fpn_mbit`, `plain_mbit`: iperf3 TCP, `DURATION` s, laptop -> NAS by
//!   name through the gateway, and laptop -> the router's forwarded port
//!   8080 (NAS:80) without fpn. Receiver Mbit/s.
//!
//! Environment: REPEAT (3), HOSTS (10), DURATION (10), FPN_BIN_DIR (the
//! daemons to measure; bench/gateway.sh sets target/release). The report
//! gives each value as the median over rounds with [min..max].

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{BIN, need};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use fpn_lab::{Lab, config_path};

const ECHO_PORT: u16 = 7000;
/// The never-contacted hosts' echo: one socket per address, so each answer
/// leaves from the address it was sent to (conntrack matches it; a socket
/// on 0.0.0.0 would answer from the NAS's primary address).
const HOST_ECHO_PORT: u16 = 7001;

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One datagram from a fresh socket per target, timed inside the client:
/// the echo's round trip in ms (None: lost), targets resolved first.
const TIMED: &str = r#"
import json, socket, sys
import time
port = int(sys.argv[1])
targets = [socket.gethostbyname(h) for h in sys.argv[2:]]
out = []
for dst in targets:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.bind(("0.0.0.0", 0))
    t = time.perf_counter()
    s.sendto(b"x" * 64, (dst, port))
    try:
        s.recvfrom(4096)
        out.append(round((time.perf_counter() - t) * 1000, 3))
    except socket.timeout:
        out.append(None)
    s.close()
    time.sleep(0.05)
print(json.dumps(out))
"#;

fn timed(lab: &Lab, port: u16, targets: &[String]) -> Vec<f64> {
    let mut argv = vec![
        "python3".to_string(),
        "-c".into(),
        TIMED.into(),
        port.to_string(),
    ];
    argv.extend(targets.iter().cloned());
    let out = lab
        .command("laptop", argv)
        .timeout(Duration::from_secs(10 * targets.len() as u64 + 10))
        .output()
        .unwrap();
    assert!(out.success(), "timed echo: {}", out.stderr);
    let v: Vec<Option<f64>> = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(v.iter().all(Option::is_some), "lost echoes: {v:?}");
    v.into_iter().flatten().collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn iperf(lab: &Lab, target: &str, port: u16, secs: u32) -> f64 {
    let out = lab
        .command(
            "laptop",
            [
                "iperf3",
                "-c",
                target,
                "-p",
                &port.to_string(),
                "-t",
                &secs.to_string(),
                "-J",
            ],
        )
        .timeout(Duration::from_secs(u64::from(secs) + 30))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 to {target}:{port}: {}{}", out.stdout, out.stderr))
        / 1e6
}

#[test]
#[ignore = "a benchmark: bench/gateway.sh runs it"]
fn bench_gateway() {
    need(&["iperf3", "python3", "dig"]);
    let rounds = env_u32("REPEAT", 3);
    let hosts = env_u32("HOSTS", 10);
    let secs = env_u32("DURATION", 10);
    assert!(
        rounds * hosts <= 150,
        "REPEAT x HOSTS must fit 192.168.1.100-249"
    );
    let lab = Lab::up(config_path("nat-home.toml")).expect("lab");
    lab.roam("laptop", "homelan", "cafelan").unwrap();
    let ov = Overlay::start(
        lab,
        &Spec::new(
            &[(1, "home")],
            vec![
                common::home_gateway("gw", &[1]),
                NodeSpec::new("laptop", Mode::Op, &[1]),
            ],
        ),
    )
    .unwrap_or_else(|e| panic!("overlay: {e}"));
    let lab = ov.lab();
    let gw_pub = lab.addr("gw", "pub-home").unwrap();
    // The NAS: an echo on every address, iperf3 for fpn (5201) and for the
    // router's forward (8080 -> NAS:80); a plain UDP forward for the echo.
    let _echo = lab
        .command(
            "nas",
            [
                BIN,
                "echo",
                "serve",
                "--udp",
                &format!("0.0.0.0:{ECHO_PORT}"),
            ],
        )
        .name("echo")
        .spawn()
        .unwrap();
    let _iperf = lab
        .command("nas", ["iperf3", "-s"])
        .name("iperf-5201")
        .spawn()
        .unwrap();
    let _iperf80 = lab
        .command("nas", ["iperf3", "-s", "-p", "80"])
        .name("iperf-80")
        .spawn()
        .unwrap();
    lab.exec_ok(
        "gw",
        [
            "nft",
            "add",
            "rule",
            "ip",
            "fpnlab_nat",
            "prerouting",
            "iifname",
            "wan",
            "udp",
            "dport",
            &ECHO_PORT.to_string(),
            "dnat",
            "to",
            &format!("192.168.1.10:{ECHO_PORT}"),
        ],
    )
    .unwrap();
    ov.gms_admin(&["host", "add", "nas", "--via", "gw", "--lan", "192.168.1.10"])
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // Warm: the laptop's path to the gateway is up (a first flow).
    timed(lab, ECHO_PORT, &["nas.home.fpn".into()]);

    let mut rows: Vec<[f64; 5]> = Vec::new();
    for r in 0..rounds {
        let mut echo = vec![BIN.to_string(), "echo".into(), "serve".into()];
        let names: Vec<String> = (0..hosts)
            .map(|k| {
                let n = 100 + r * hosts + k;
                let ip = Ipv4Addr::new(192, 168, 1, n as u8);
                lab.exec_ok(
                    "nas",
                    ["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
                )
                .unwrap();
                echo.extend(["--udp".into(), format!("{ip}:{HOST_ECHO_PORT}")]);
                let name = format!("h{n}");
                ov.gms_admin(&[
                    "host",
                    "add",
                    &name,
                    "--via",
                    "gw",
                    "--lan",
                    &ip.to_string(),
                ])
                .unwrap();
                format!("{name}.home.fpn")
            })
            .collect();
        let host_echo = lab
            .command("nas", echo)
            .name(&format!("echo-round-{r}"))
            .spawn()
            .unwrap();
        host_echo
            .wait_for_log("echo: udp", Duration::from_secs(5))
            .unwrap();
        // Every name resolves before the clock starts (the directory push).
        for n in &names {
            let t = std::time::Instant::now();
            while lab
                .exec("laptop", ["dig", "+short", n])
                .unwrap()
                .stdout
                .trim()
                .is_empty()
            {
                assert!(t.elapsed() < Duration::from_secs(20), "{n} never resolved");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let new_host = median(&mut timed(lab, HOST_ECHO_PORT, &names));
        drop(host_echo);
        let warm: Vec<String> = (0..hosts).map(|_| "nas.home.fpn".to_string()).collect();
        let new_flow = median(&mut timed(lab, ECHO_PORT, &warm));
        let plain: Vec<String> = (0..hosts).map(|_| gw_pub.to_string()).collect();
        let plain_rtt = median(&mut timed(lab, ECHO_PORT, &plain));
        let fpn_mbit = iperf(lab, "nas.home.fpn", 5201, secs);
        let plain_mbit = iperf(lab, &gw_pub.to_string(), 8080, secs);
        eprintln!(
            "round {}: new host {new_host:.3} ms, new flow {new_flow:.3} ms, plain {plain_rtt:.3} ms, fpn {fpn_mbit:.0} Mbit/s, plain {plain_mbit:.0} Mbit/s",
            r + 1
        );
        rows.push([new_host, new_flow, plain_rtt, fpn_mbit, plain_mbit]);
    }
    let carrier = ov.status("laptop").unwrap()["peers"]
        .as_array()
        .and_then(|p| {
            p.iter()
                .find(|p| p["name"] == "gw")
                .map(|p| p["carrier"].clone())
        })
        .unwrap_or_default();
    let col = |i: usize| {
        let mut v: Vec<f64> = rows.iter().map(|r| r[i]).collect();
        let (lo, hi) = (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        let m = median(&mut v);
        if i < 3 {
            format!("{m:.3} [{lo:.3}..{hi:.3}]")
        } else {
            format!("{m:.0} [{lo:.0}..{hi:.0}]")
        }
    };
    println!("\n{rounds} rounds, {hosts} hosts per round, laptop -> gateway carrier: {carrier}\n");
    println!(
        "| first packet to a never-contacted host, ms | new flow to a contacted host, ms | plain port forward RTT, ms | TCP through the gateway, Mbit/s | TCP through a plain port forward, Mbit/s |"
    );
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| {} | {} | {} | {} | {} |",
        col(0),
        col(1),
        col(2),
        col(3),
        col(4)
    );
}
