//! Helpers shared by the lab's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;

/// The fpn-lab binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_fpn-lab");

/// Fails the test (never skips it) when the lab cannot run here.
pub fn need(tools: &[&'static str]) {
    if let Err(e) = fpn_lab::preflight(tools) {
        panic!("the lab tests need root and their tools (CI runs them as root): {e}");
    }
}

/// True while namespace `name` exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Namespaces whose name contains `-{id}-`.
pub fn namespaces_of(id: &str) -> Vec<String> {
    let pat = format!("-{id}-");
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.contains(&pat))
        .collect()
}

/// Pids of processes in namespace `ns` (`ip netns pids`).
pub fn pids_in(ns: &str) -> Vec<u32> {
    let out = std::process::Command::new(fpn_lab::find_tool("ip").unwrap())
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Tools the overlay acceptance tests run inside the lab.
pub const OVERLAY_TOOLS: &[&str] = &["tcpdump", "iperf3", "dig", "ping"];

/// configs/lab/overlay.toml with a GMS and the nodes of `spec`, all up and
/// ready. Fails the test (with the daemons' logs) when it cannot start.
pub fn overlay(spec: &fpn_lab::overlay::Spec) -> fpn_lab::overlay::Overlay {
    need(OVERLAY_TOOLS);
    let lab = fpn_lab::Lab::up(fpn_lab::config_path("overlay.toml")).expect("overlay lab");
    fpn_lab::overlay::Overlay::start(lab, spec).unwrap_or_else(|e| panic!("overlay start: {e}"))
}

/// The overlay of most native-carrier tests: nodes a and b, open mode,
/// both in group 1 ("home"), on their own public links behind `inet`,
/// each with two TUN workers (design note 67: on the 2-core CI machine
/// the default is none, so these tests are what keeps them tested).
pub fn two_nodes() -> fpn_lab::overlay::Overlay {
    use fpn_lab::overlay::{Mode, NodeSpec, Spec};
    let mut spec = Spec::new(
        &[(1, "home")],
        vec![
            NodeSpec::new("a", Mode::Op, &[1]),
            NodeSpec::new("b", Mode::Op, &[1]),
        ],
    );
    spec.node_config = "tun_workers = 2\n".into();
    overlay(&spec)
}

/// The IPv4 address of a lab link (the lab's links are IPv4).
pub fn ipv4(ip: std::net::IpAddr) -> std::net::Ipv4Addr {
    match ip {
        std::net::IpAddr::V4(v4) => v4,
        std::net::IpAddr::V6(_) => panic!("the lab's links are IPv4"),
    }
}

/// The fpn-lab binary (runs `echo serve`/`echo send` inside hosts).
pub fn lab_bin() -> String {
    BIN.to_string()
}

/// Starts `fpn-lab echo serve` on TCP and UDP `port` in `host`.
pub fn echo_server(lab: &fpn_lab::Lab, host: &str, port: u16) -> fpn_lab::Process {
    let addr = format!("0.0.0.0:{port}");
    let p = lab
        .command(host, [BIN, "echo", "serve", "--tcp", &addr, "--udp", &addr])
        .name(&format!("echo-{port}"))
        .spawn()
        .unwrap();
    p.wait_for_log("echo: udp", std::time::Duration::from_secs(5))
        .unwrap();
    p
}

/// Starts `iperf3 -s` in `host` and waits until it listens.
pub fn iperf_server(lab: &fpn_lab::Lab, host: &str) -> fpn_lab::Process {
    let p = lab
        .command(host, ["iperf3", "-s", "--forceflush"])
        .name("iperf3-server")
        .spawn()
        .unwrap();
    p.wait_for_log("Server listening", std::time::Duration::from_secs(5))
        .unwrap();
    p
}

/// `fpn-lab echo send TARGET --message M [--udp]` from `host`: true when
/// the message came back. `target` may be a name (resolved by the host's
/// resolv.conf, i.e. the node's DNS stub).
pub fn echo_send(
    lab: &fpn_lab::Lab,
    host: &str,
    target: &str,
    message: &str,
    udp: bool,
) -> fpn_lab::Output {
    let mut argv = vec![BIN, "echo", "send", target, "--message", message];
    if udp {
        argv.push("--udp");
    }
    lab.exec(host, argv).unwrap()
}

/// Runs iperf3 as a client for `secs` seconds (JSON output) and returns the
/// parsed report; panics with its output when it fails.
pub fn iperf_client(lab: &fpn_lab::Lab, host: &str, target: &str, secs: u32) -> serde_json::Value {
    let out = lab
        .command(
            host,
            ["iperf3", "-c", target, "-t", &secs.to_string(), "-J"],
        )
        .timeout(std::time::Duration::from_secs(u64::from(secs) + 30))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or(serde_json::Value::Null);
    assert!(
        out.success() && v.get("error").is_none(),
        "iperf3 -c {target} from {host} failed ({}): {}\n{}",
        out.status,
        v.get("error").map(|e| e.to_string()).unwrap_or_default(),
        out.stderr
    );
    v
}

/// IPv4 packets of a capture as (src, dst, protocol, total length).
pub fn ipv4_headers(
    pcap: &fpn_lab::Pcap,
) -> Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr, u8, usize)> {
    pcap.packets()
        .iter()
        .filter_map(|p| p.ip())
        .filter(|ip| ip.len() >= 20 && ip[0] >> 4 == 4)
        .map(|ip| {
            let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            let len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            (src, dst, ip[9], len)
        })
        .collect()
}

/// Packets and IP bytes of UDP between `x` and `y` (either direction).
/// TCP and UDP packets (count, bytes) between `x` and `y`, either way: the
/// native carrier keeps each flow's own protocol on the wire.
#[allow(dead_code)]
pub fn l4_between(
    pcap: &fpn_lab::Pcap,
    x: std::net::IpAddr,
    y: std::net::IpAddr,
) -> (usize, usize) {
    ipv4_headers(pcap)
        .into_iter()
        .filter(|&(s, d, proto, _)| {
            let (s, d) = (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d));
            matches!(proto, 6 | 17) && ((s == x && d == y) || (s == y && d == x))
        })
        .fold((0, 0), |(n, b), (_, _, _, len)| (n + 1, b + len))
}

pub fn udp_between(
    pcap: &fpn_lab::Pcap,
    x: std::net::IpAddr,
    y: std::net::IpAddr,
) -> (usize, usize) {
    ipv4_headers(pcap)
        .into_iter()
        .filter(|&(s, d, proto, _)| {
            let (s, d) = (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d));
            proto == 17 && ((s == x && d == y) || (s == y && d == x))
        })
        .fold((0, 0), |(n, b), (_, _, _, len)| (n + 1, b + len))
}

/// Sends a UDP probe from `host` to `to` every 100 ms for `total`; returns
/// when each answer came (the echo server answers every datagram).
pub fn probe(
    ov: &fpn_lab::overlay::Overlay,
    host: &str,
    to: std::net::SocketAddr,
    total: std::time::Duration,
) -> std::thread::JoinHandle<Vec<std::time::Instant>> {
    let t = ov
        .lab()
        .thread_in(host, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
                .unwrap();
            let end = std::time::Instant::now() + total;
            let mut answers = Vec::new();
            let mut buf = [0u8; 512];
            while std::time::Instant::now() < end {
                // A send may fail (ICMP unreachable) once the flow is cut.
                let _ = s.send_to(b"probe", to);
                let sent = std::time::Instant::now();
                while sent.elapsed() < std::time::Duration::from_millis(100) {
                    if s.recv_from(&mut buf).is_ok() {
                        answers.push(std::time::Instant::now());
                    }
                }
            }
            answers
        })
        .unwrap();
    std::thread::spawn(move || t.join())
}

/// `node`'s status entry for peer `peer` (by GE name), or null.
pub fn peer_entry(ov: &fpn_lab::overlay::Overlay, node: &str, peer: &str) -> serde_json::Value {
    let st = ov.status(node).unwrap();
    st["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == peer).cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// Waits (bounded) until `node` shows `carrier` for `peer`; returns how long
/// it took.
pub fn wait_carrier(
    ov: &fpn_lab::overlay::Overlay,
    node: &str,
    peer: &str,
    carrier: &str,
    bound: std::time::Duration,
) -> std::time::Duration {
    let t = std::time::Instant::now();
    loop {
        let p = peer_entry(ov, node, peer);
        if p["carrier"] == carrier {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < bound,
            "{node} never showed carrier {carrier} for {peer} within {bound:?}: {p}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Waits (at most 10 s) until `node` carries its traffic to `peer` natively.
pub fn wait_native(ov: &fpn_lab::overlay::Overlay, node: &str, peer: &str) {
    wait_carrier(ov, node, peer, "native", std::time::Duration::from_secs(10));
}

/// `ping -n -c 1 NAME` from `host` until one answer, at most `bound`
/// (`-n`: no reverse lookup of the answer, whose timeout in the lab would
/// count as time to the first answer).
pub fn ping_until_answered(
    ov: &fpn_lab::overlay::Overlay,
    host: &str,
    name: &str,
    bound: std::time::Duration,
) -> std::time::Duration {
    let t = std::time::Instant::now();
    loop {
        let out = ov
            .lab()
            .exec(host, ["ping", "-n", "-c", "1", "-W", "1", name])
            .unwrap();
        if out.success() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < bound,
            "{host} never reached {name} within {bound:?}: {}{}\n{}",
            out.stdout,
            out.stderr,
            ov.log_tails(40)
        );
    }
}

/// `ip route get ARGS` in `host`: the route the kernel picks.
pub fn route_get(lab: &fpn_lab::Lab, host: &str, args: &str) -> String {
    let out = lab.sh(host, &format!("ip route get {args}")).unwrap();
    format!("{}{}", out.stdout, out.stderr)
}

/// Sends `message` from `host` to `to` (an echo server), three tries in
/// `timeout`: the answer, or the error, and how long it took.
pub fn send_marked(
    lab: &fpn_lab::Lab,
    host: &str,
    to: std::net::SocketAddr,
    message: String,
    timeout: std::time::Duration,
) -> (Result<(), String>, std::time::Duration) {
    lab.run_in(host, move || {
        let t = std::time::Instant::now();
        let r = (|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            s.connect(to).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(timeout / 3))
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 1500];
            for _ in 0..3 {
                s.send(message.as_bytes()).map_err(|e| e.to_string())?;
                match s.recv(&mut buf) {
                    // The echo server answers "{the source it saw}\n" and
                    // the message.
                    Ok(n) if buf[..n].ends_with(message.as_bytes()) => return Ok(()),
                    Ok(_) => return Err("a different answer".into()),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Err("no answer".into())
        })();
        (r, t.elapsed())
    })
    .unwrap()
}

/// A home gateway node (GEN, closed) named `name` in `groups`, protecting
/// the home LAN 192.168.1.0/24 of configs/lab/nat-home*.toml.
pub fn home_gateway(name: &str, groups: &[u32]) -> fpn_lab::overlay::NodeSpec {
    use fpn_lab::overlay::{Mode, NodeSpec};
    NodeSpec {
        kind: "gen".into(),
        protect: vec!["192.168.1.0/24".into()],
        ..NodeSpec::new(name, Mode::Cl, groups)
    }
}

/// The TCP port of [`records_across`]'s receiver.
pub const RECORDS_PORT: u16 = 9301;

/// A host's move: (host, from switch, to switch).
pub type Roam = (&'static str, &'static str, &'static str);

/// 1400 records (every 10 ms) from `ends.0` to `ends.1` over one TCP
/// connection while the hosts take the steps of `walk` (3 s apart; the
/// moves of one step back to back, "at once"): every record arrives once,
/// in order, on the one connection, and the gap after each step (from the
/// moment its last new address is in place) is under `bound`. The gaps and
/// outages, per step.
pub fn records_across(
    ov: &fpn_lab::overlay::Overlay,
    label: &str,
    ends: (&str, &str),
    walk: &[&[Roam]],
    bound: std::time::Duration,
) -> Vec<(String, std::time::Duration, std::time::Duration)> {
    let (from_host, to_host) = ends;
    let out = ov
        .lab()
        .log_dir()
        .join(format!("records-{}.json", std::process::id()));
    let listen = format!("0.0.0.0:{RECORDS_PORT}");
    let out_s = out.display().to_string();
    let rx = ov
        .lab()
        .command(
            to_host,
            [
                lab_bin().as_str(),
                "records",
                "recv",
                "--listen",
                &listen,
                "--count",
                "1400",
                "--timeout",
                "40",
                "--out",
                &out_s,
            ],
        )
        .name("records-recv")
        .spawn()
        .unwrap();
    rx.wait_for_log("records: listening", std::time::Duration::from_secs(5))
        .unwrap();
    let to = format!("{}:{RECORDS_PORT}", ov.overlay_addr(to_host).unwrap());
    let tx = ov
        .lab()
        .command(
            from_host,
            [
                lab_bin().as_str(),
                "records",
                "send",
                &to,
                "--interval-ms",
                "10",
                "--count",
                "1400",
            ],
        )
        .name("records-send")
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let mut moved = Vec::new();
    for step in walk {
        let mut what = Vec::new();
        for (host, from, to) in step.iter() {
            ov.lab().roam(host, from, to).expect("roam");
            what.push(format!("{host} {from} -> {to}"));
        }
        moved.push((what.join(", "), fpn_lab::records::now_ns()));
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
    let sent = tx.wait_timeout(std::time::Duration::from_secs(30));
    let got = rx.wait_timeout(std::time::Duration::from_secs(30));
    let r: fpn_lab::records::Received = serde_json::from_slice(
        &std::fs::read(&out).unwrap_or_else(|e| panic!("{}: {e}\n{}", out.display(), rx.log())),
    )
    .unwrap();
    let status = |n: &str| ov.status(n).unwrap();
    let (a, b) = (status(from_host), status(to_host));
    let context = format!(
        "sender: {:?} {}\nreceiver: {:?} {}\n{from_host} moves: {:#}\n{to_host} moves: {:#}\n\
         {from_host} counters: {}\n{to_host} counters: {}\n{}",
        sent,
        tx.log(),
        got,
        rx.log(),
        a["moves"],
        b["moves"],
        a["counters"],
        b["counters"],
        ov.log_tails(30)
    );
    assert!(
        sent.is_ok_and(|s| s.success()),
        "the sender failed\n{context}"
    );
    assert_eq!(r.connections, 1, "the sender reconnected\n{context}");
    assert_eq!(
        r.arrivals.len(),
        1400,
        "records missing ({:?})\n{context}",
        r.error
    );
    assert_eq!(r.sequence_errors(), Vec::<String>::new(), "{context}");
    let mut gaps = Vec::new();
    for (what, t) in &moved {
        let gap = r
            .gap_after(*t, std::time::Duration::from_millis(2500))
            .unwrap_or(std::time::Duration::from_millis(2500));
        let outage = r.longest_silence(t - 1_000_000_000, t + 2_500_000_000);
        eprintln!("{label}: {what}: gap {gap:?} after the new address, outage {outage:?}");
        gaps.push((what.clone(), gap, outage));
    }
    for (what, gap, _) in &gaps {
        assert!(
            *gap < bound,
            "{what}: the records waited {gap:?} after the move\n{gaps:?}\n{context}"
        );
    }
    gaps
}

/// `node`'s IPv6 overlay address, from its status.
pub fn overlay6(ov: &fpn_lab::overlay::Overlay, node: &str) -> std::net::Ipv6Addr {
    let st = ov.status(node).unwrap();
    st["overlay6"]
        .as_str()
        .unwrap_or_else(|| panic!("{node} has no IPv6 overlay address: {st}"))
        .parse()
        .unwrap()
}

/// `fpn-lab echo serve` on TCP and UDP `port`, both families.
pub fn echo_server6(ov: &fpn_lab::overlay::Overlay, host: &str, port: u16) -> fpn_lab::Process {
    let addr = format!("[::]:{port}");
    let p = ov
        .lab()
        .command(host, [BIN, "echo", "serve", "--tcp", &addr, "--udp", &addr])
        .name(&format!("echo6-{port}"))
        .spawn()
        .unwrap();
    p.wait_for_log("echo: udp", std::time::Duration::from_secs(5))
        .unwrap();
    p
}

/// configs/lab/ipv6-only.toml with the GMS on the VPS and open nodes a and
/// b in one group.
pub fn ipv6_only() -> fpn_lab::overlay::Overlay {
    need(OVERLAY_TOOLS);
    let lab = fpn_lab::Lab::up(fpn_lab::config_path("ipv6-only.toml")).expect("ipv6-only lab");
    fpn_lab::overlay::Overlay::start(
        lab,
        &fpn_lab::overlay::Spec::new(
            &[(1, "home")],
            vec![
                fpn_lab::overlay::NodeSpec::new("a", fpn_lab::overlay::Mode::Op, &[1]),
                fpn_lab::overlay::NodeSpec::new("b", fpn_lab::overlay::Mode::Op, &[1]),
            ],
        ),
    )
    .unwrap_or_else(|e| panic!("overlay start: {e}"))
}

/// Nodes a and b of `ov` both hold a GMS session; returns their underlay
/// addresses on `pub-a`/`pub-b`, b's overlay addresses and an echo server
/// on b's port 7002 (both families).
pub fn connected_pair(
    ov: &fpn_lab::overlay::Overlay,
) -> (
    std::net::IpAddr,
    std::net::IpAddr,
    std::net::Ipv4Addr,
    std::net::Ipv6Addr,
    fpn_lab::Process,
) {
    for n in ["a", "b"] {
        let st = ov.status(n).unwrap();
        assert_eq!(st["gms"]["connected"], true, "{n}: {st}");
    }
    (
        ov.underlay("a", "pub-a").unwrap(),
        ov.underlay("b", "pub-b").unwrap(),
        ov.overlay_addr("b").unwrap(),
        overlay6(ov, "b"),
        echo_server6(ov, "b", 7002),
    )
}

/// Transport packets of a capture, both families: (src, dst, protocol,
/// src port, dst port); for ICMP and ICMPv6 the ports are the message type
/// and the echo identifier (or 0). IPv6 packets with extension headers are
/// listed with ports 0.
pub fn l4_any(pcap: &fpn_lab::Pcap) -> Vec<(std::net::IpAddr, std::net::IpAddr, u8, u16, u16)> {
    let ports = |proto: u8, l4: Option<&[u8]>| match (proto, l4) {
        (6 | 17, Some(p)) => (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ),
        (1 | 58, Some(p)) if p.len() >= 6 => (u16::from(p[0]), u16::from_be_bytes([p[4], p[5]])),
        _ => (0, 0),
    };
    pcap.packets()
        .iter()
        .filter_map(|p| p.ip())
        .filter_map(|ip| match ip.first()? >> 4 {
            4 if ip.len() >= 20 => {
                let src = std::net::IpAddr::from([ip[12], ip[13], ip[14], ip[15]]);
                let dst = std::net::IpAddr::from([ip[16], ip[17], ip[18], ip[19]]);
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let (sp, dp) = ports(ip[9], ip.get(ihl..(ihl + 8).min(ip.len())));
                Some((src, dst, ip[9], sp, dp))
            }
            6 if ip.len() >= 40 => {
                let src = std::net::IpAddr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
                let dst = std::net::IpAddr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
                let (sp, dp) = ports(ip[6], ip.get(40..48.min(ip.len())));
                Some((src, dst, ip[6], sp, dp))
            }
            _ => None,
        })
        .collect()
}

/// Sends `marker` five times on one UDP flow from `host` to `to`, after
/// a warm-up and a pause past a new flow's 300 ms QUIC grace, so the
/// marked packets take the native path (QUIC's own TLS would hide the
/// marker whatever PCCOM does). Returns the echoes that came back and the
/// flow's source port.
pub fn marked_flow(
    ov: &fpn_lab::overlay::Overlay,
    host: &str,
    to: std::net::SocketAddr,
    marker: &'static str,
) -> (usize, u16) {
    ov.lab()
        .thread_in(host, move || {
            let any: std::net::SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let s = std::net::UdpSocket::bind(any).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.send_to(b"warm-up", to);
            let _ = s.recv_from(&mut buf);
            std::thread::sleep(std::time::Duration::from_millis(800));
            let mut answers = 0;
            for _ in 0..5 {
                let _ = s.send_to(marker.as_bytes(), to);
                if s.recv_from(&mut buf)
                    .is_ok_and(|(n, _)| buf[..n].ends_with(marker.as_bytes()))
                {
                    answers += 1;
                }
            }
            (answers, s.local_addr().unwrap().port())
        })
        .unwrap()
        .join()
}
