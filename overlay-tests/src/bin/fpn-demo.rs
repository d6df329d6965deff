//! fpn-demo: the README's main command (through scripts/demo.sh).
//!
//! Builds a small fpn network in network namespaces (configs/lab/overlay.toml):
//! a VPS running fpn-gms with its DDNS, a laptop and a NAS that share a group
//! on different links behind a router, and a guest node that is closed (CL)
//! and shares no group with them. Then it shows, step by step and in plain
//! words: name resolution, an encrypted TCP transfer on the native carrier
//! (a capture shows the application's own ports between the two machines'
//! addresses, payloads with the PCCOM trailer and no plaintext, and a control
//! that the plaintext would show; each pair's carrier from `status`), a
//! refused flow failing fast, a key rotation
//! under traffic and the GMS going down without breaking traffic. Every step
//! checks what it shows; the exit status is non-zero when one fails.
//! Everything is removed at the end, also on failure and on Ctrl-C.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use fpn_lab::{Lab, LabOptions};
use serde_json::Value;

/// Set once Ctrl-C or SIGTERM arrived: the lab is being removed under the
/// steps' feet, so their failures are not worth reporting.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A plaintext the demo sends through the overlay and looks for on the wire.
const MARKER: &str = "fpn-demo: this sentence must never be readable on the wire";

/// Show fpn on a lab network: names, encryption, policy, rotation, GMS outage.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Shorter transfers (for CI): 3 s instead of 10 s.
    #[arg(long)]
    quick: bool,
    /// Keep the lab's logs (daemon logs, pcap files) after the demo.
    #[arg(long)]
    keep_logs: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => {
            say("\nAll steps passed. The lab has been removed.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            if INTERRUPTED.load(Ordering::SeqCst) {
                // The signal thread is removing the lab and exits for us;
                // what failed here failed because of that.
                loop {
                    std::thread::park();
                }
            }
            eprintln!("\nfpn-demo: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let lab_id = cleanup_on_signal(cli.keep_logs)?;
    fpn_lab::preflight(&["tcpdump", "iperf3", "dig", "ping"])?;
    let secs: u32 = if cli.quick { 3 } else { 10 };

    step(1, "Building the lab network");
    // The id is chosen first, so a Ctrl-C during the build removes it too.
    let id = fpn_lab::naming::new_id();
    *lab_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
    let lab = LabOptions {
        id: Some(id),
        keep_logs: cli.keep_logs,
        ..LabOptions::default()
    }
    .up_file(fpn_lab::config_path("overlay.toml"))?;
    say(&format!(
        "    lab {}: network namespaces, one per machine, joined by veth links through a router:",
        lab.id()
    ));
    for (host, link, role) in [
        (
            "vps",
            "pub-vps",
            "runs fpn-gms (QUIC :4433) and its DNS server for home.fpn (:53)",
        ),
        ("a", "pub-a", "the laptop"),
        ("b", "pub-b", "the NAS"),
        ("d", "pub-d", "a guest device"),
    ] {
        say(&format!(
            "    {host:<4} {:<13} {role}",
            lab.addr(host, link)?
        ));
    }

    step(2, "Defining the network at the GMS and enrolling the nodes");
    say("    group 1 \"home\": laptop and NAS, both open (OP)");
    say("    group 2 \"guests\": the guest, closed (CL): it only talks to members of its groups");
    let spec = Spec::new(
        &[(1, "home"), (2, "guests")],
        vec![
            node("laptop", "a", Mode::Op, &[1]),
            node("nas", "b", Mode::Op, &[1]),
            node("guest", "d", Mode::Cl, &[2]),
        ],
    );
    let ov = Overlay::start(lab, &spec)?;
    let result = steps(&ov, secs);
    if result.is_err() && !INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("\nWhat the daemons logged last:\n{}", ov.log_tails(20));
    }
    result
}

fn steps(ov: &Overlay, secs: u32) -> Result<()> {
    let lab = ov.lab();
    for n in ["laptop", "nas", "guest"] {
        say(&format!(
            "    {n:<7} enrolled with a one-time token; overlay address {}; `fpn-node up` is ready",
            ov.overlay_addr(n)?
        ));
    }
    let nas_ip = ov.overlay_addr("nas")?;
    let _echo = echo_server(lab, "b", 7001)?;
    let _echo_laptop = echo_server(lab, "a", 7001)?;
    let _iperf = spawn_ready(
        lab,
        "b",
        &["iperf3", "-s", "--forceflush"],
        "Server listening",
    )?;

    step(3, "Name resolution");
    let gms_ip = ov.gms_addr().ip();
    let ddns = lab.exec_ok(
        "a",
        [
            "dig",
            "+short",
            "+time=2",
            &format!("@{gms_ip}"),
            "nas.home.fpn",
            "A",
        ],
    )?;
    let nas_pub = ov.underlay("nas", "pub-b")?;
    say(&format!(
        "    $ dig @{gms_ip} nas.home.fpn    the GMS's DNS: where the NAS is on the internet  ->  {}",
        ddns.trim()
    ));
    ensure!(
        ddns.trim() == nas_pub.to_string(),
        "the GMS's DNS answered {ddns:?}, not {nas_pub}"
    );
    let stub = lab.exec_ok("a", ["dig", "+short", "+time=2", "nas.home.fpn", "A"])?;
    let laptop_ip = ov.overlay_addr("laptop")?;
    say(&format!(
        "    $ dig nas.home.fpn    on the laptop, its fpn-node DNS stub ({laptop_ip}): the NAS's overlay address  ->  {}",
        stub.trim()
    ));
    ensure!(
        stub.trim() == nas_ip.to_string(),
        "the laptop's stub answered {stub:?}, not {nas_ip}"
    );
    let ping = lab.exec("a", ["ping", "-c", "2", "-W", "2", "nas"])?;
    ensure!(
        ping.success(),
        "ping nas failed: {}{}",
        ping.stdout,
        ping.stderr
    );
    say("    $ ping nas    works: the short name, the search domain home.fpn, the overlay");

    step(4, "An encrypted TCP transfer, and what the wire shows");
    let (a_pub, b_pub) = (
        ov.underlay("laptop", "pub-a")?,
        ov.underlay("nas", "pub-b")?,
    );
    // Step 3's ping was the first contact; the nodes' path probes find the
    // native path within seconds of it.
    wait_native(ov, "laptop", "nas")?;
    wait_native(ov, "nas", "laptop")?;
    say(&format!(
        "    tcpdump runs on the router's link to the NAS ({b_pub})"
    ));
    let cap = lab.capture("inet", "pub-b", &format!("host {a_pub} and host {b_pub}"))?;
    let text = MARKER.repeat(100);
    let (rounds, sport) = marker_transfer(lab, SocketAddr::new(nas_ip.into(), 7001), &text)?;
    say(&format!(
        "    the laptop sent {rounds} x {} bytes of readable text to nas.home.fpn:7001 ({nas_ip}) on one TCP connection and got them back",
        text.len()
    ));
    let pcap = cap.stop()?;
    let wire = tcp_packets(&pcap);
    let flow: Vec<&WireTcp> = wire
        .iter()
        .filter(|p| p.between(a_pub, sport, b_pub, 7001))
        .collect();
    say(&format!(
        "    the capture holds {} packets of that connection; as the wire shows them:",
        flow.len()
    ));
    let data_out = flow
        .iter()
        .find(|p| p.src == a_pub && p.payload > PCCOM_TRAILER);
    let data_back = flow
        .iter()
        .find(|p| p.src == b_pub && p.payload > PCCOM_TRAILER);
    let ack = flow
        .iter()
        .find(|p| p.flags == TCP_ACK && p.payload == PCCOM_TRAILER);
    let (Some(data_out), Some(data_back), Some(ack)) = (data_out, data_back, ack) else {
        bail!(
            "the connection {a_pub}:{sport} -> {b_pub}:7001 is not on the wire as native packets \
             (data both ways and pure ACKs carrying the trailer): {} packets",
            flow.len()
        );
    };
    for (p, what) in [
        (
            data_out,
            "payload unreadable: ciphertext + 24-byte PCCOM trailer",
        ),
        (data_back, "the echo, unreadable too"),
        (ack, "a pure ACK: its payload is the PCCOM trailer alone"),
    ] {
        say(&format!("      {}  {what}", p.line()));
    }
    // Every packet of the flow carries the trailer: an ACK without it would
    // be the kernel's own, i.e. the connection not protected on the wire.
    let bare = flow.iter().filter(|p| p.payload < PCCOM_TRAILER).count();
    ensure!(
        bare == 0,
        "{bare} packets of the connection carry no PCCOM trailer"
    );
    let quic = udp_bytes(&pcap, a_pub, b_pub, QUIC_PORT);
    say(&format!(
        "    the application's own ports between the two machines' addresses, no tunnel header; {quic} bytes of QUIC (port {QUIC_PORT}) in the same capture: a new connection's first 300 ms ride QUIC while the NAS adds its nftables rule"
    ));
    ensure!(
        !pcap.contains(MARKER.as_bytes()),
        "the plaintext was readable on the wire!"
    );
    say("    the text appears in none of them: it crossed the wire encrypted");
    // Control: the same text outside fpn, to the NAS's own address, is
    // readable on the same link (so the check above can see it).
    let control = lab.capture("inet", "pub-b", &format!("host {a_pub} and host {b_pub}"))?;
    let out = lab.exec(
        "a",
        [
            bin_lab()?.as_str(),
            "echo",
            "send",
            &format!("{b_pub}:7001"),
            "--message",
            MARKER,
        ],
    )?;
    ensure!(out.success(), "the control send failed: {}", out.stderr);
    control
        .wait_for(Duration::from_secs(5), |p| p.contains(MARKER.as_bytes()))
        .context("the control: the text sent outside fpn never showed on the capture")?;
    drop(control);
    say(&format!(
        "    control: the same text sent outside fpn, to {b_pub}:7001, is readable in a capture of the same link"
    ));

    let p = ov.ping("laptop", "nas", 3)?;
    ensure!(p.ok, "fpn-node ping nas failed: {}", p.output.stderr);
    say(&format!(
        "    $ fpn-node ping nas  ->  action {}, carrier {}, path {}, rtt {:?} ms",
        p.action(),
        p.carrier(),
        p.json["path"].as_str().unwrap_or("?"),
        p.rtts()
    ));
    ensure!(
        p.action() == "encrypt",
        "the flow to the NAS is not encrypted: {}",
        p.json
    );
    let quic_cap = lab.capture(
        "inet",
        "pub-b",
        &format!("udp port {QUIC_PORT} and host {a_pub} and host {b_pub}"),
    )?;
    let native_before = counter(ov, "laptop", "native_out")?;
    let report = iperf(lab, "a", "nas.home.fpn", secs)?;
    let received = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or(0.0);
    let quic = udp_bytes(&quic_cap.stop()?, a_pub, b_pub, QUIC_PORT);
    let native = counter(ov, "laptop", "native_out")? - native_before;
    say(&format!(
        "    $ iperf3 -c nas.home.fpn -t {secs}  ->  {:.0} Mbit/s; the laptop sent {native} native packets, {quic} bytes of QUIC crossed meanwhile",
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e6
    ));
    // The transfer ran natively: packets counted as native, little QUIC
    // (the connection's first 300 ms ride QUIC: a tenth of a 3 s transfer
    // at full speed), and the flow shown as native.
    ensure!(
        native as f64 > received / 1500.0 && (quic as f64) < received * 0.2,
        "the transfer did not run natively: {native} native packets and {quic} bytes of QUIC for {received} bytes"
    );
    let flows = ov.flows_with("laptop", "nas")?;
    ensure!(
        flows
            .iter()
            .any(|f| f["proto"] == "tcp" && f["dport"] == 5201 && f["carrier"] == "native"),
        "the laptop does not show the iperf3 flow as native: {flows:?}"
    );
    say("    which carrier each pair uses ($ fpn-node status --json, peers; the path is per peer,");
    say("    the policy still refuses the guest's flows, step 5):");
    for n in ["laptop", "nas", "guest"] {
        let st = ov.status(n)?;
        for peer in st["peers"].as_array().into_iter().flatten() {
            say(&format!(
                "      {n:<7} -> {:<7} carrier {:<7} path {}",
                peer["name"].as_str().unwrap_or("?"),
                peer["carrier"].as_str().unwrap_or("?"),
                peer["path"].as_str().unwrap_or("?")
            ));
        }
    }
    for (n, peer) in [("laptop", "nas"), ("nas", "laptop")] {
        let (carrier, path) = peer_path(ov, n, peer)?;
        ensure!(
            carrier == "native",
            "{n} -> {peer} ran on {carrier} ({path}), not natively"
        );
    }

    step(5, "A refused flow fails fast");
    let to = SocketAddr::new(laptop_ip.into(), 7001);
    let (r, took) = lab.run_in("d", move || {
        let t = Instant::now();
        let r = TcpStream::connect_timeout(&to, Duration::from_secs(5)).map(drop);
        (r, t.elapsed())
    })?;
    match r {
        Ok(()) => bail!("the guest connected to the laptop; the policy should refuse it"),
        Err(e) => say(&format!(
            "    the guest (CL, group 2) connects to laptop.home.fpn:7001: refused after {} ms ({e})",
            took.as_millis()
        )),
    }
    ensure!(
        took < Duration::from_secs(1),
        "the refusal took {took:?} (more than 1 s)"
    );
    let p = ov.ping("guest", "laptop", 1)?;
    say(&format!(
        "    $ fpn-node ping laptop (on the guest)  ->  action {}",
        p.action()
    ));
    ensure!(
        !p.ok,
        "fpn-node ping from the guest to the laptop succeeded"
    );

    step(6, "A key rotation under traffic");
    let v0 = group_version(ov)?;
    say(&format!(
        "    group 1 is at key version {v0}; a {secs} s transfer starts, the GMS rotates the key after 1 s"
    ));
    let report = std::thread::scope(|s| -> Result<Value> {
        let t = s.spawn(|| iperf(lab, "a", "nas.home.fpn", secs));
        std::thread::sleep(Duration::from_secs(1));
        let rotated = ov.gms_admin(&["rotate", "--group", "1"]);
        let report = t
            .join()
            .map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))??;
        rotated?;
        Ok(report)
    })?;
    let v1 = group_version(ov)?;
    ensure!(v1 == v0 + 1, "the key version is {v1}, expected {}", v0 + 1);
    let stalls = stalled(&report);
    say(&format!(
        "    key version now {v1}; the transfer ran to its end ({:.0} Mbit/s), {stalls} stalled seconds",
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e6
    ));
    ensure!(stalls == 0, "the transfer stalled during the rotation");
    // The old version stays valid for the grace, so flows still on it would
    // pass everything above: show that they moved.
    let moved = flows_on_version(ov, "laptop", &nas_ip.to_string(), v1)?;
    say(&format!(
        "    the laptop's {moved} encrypted flows with the NAS were renegotiated and use version {v1}"
    ));

    step(7, "The GMS goes down; traffic does not");
    let report = std::thread::scope(|s| -> Result<Value> {
        let t = s.spawn(|| iperf(lab, "a", "nas.home.fpn", secs));
        std::thread::sleep(Duration::from_secs(1));
        ov.kill_gms();
        say("    the GMS was killed (SIGKILL) one second into a transfer");
        t.join()
            .map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))?
    })?;
    say(&format!(
        "    the running transfer finished: {:.0} Mbit/s, {} stalled seconds",
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e6,
        stalled(&report)
    ));
    ensure!(
        stalled(&report) == 0,
        "the transfer stalled when the GMS died"
    );
    let out = lab.exec(
        "b",
        [
            bin_lab()?.as_str(),
            "echo",
            "send",
            "laptop.home.fpn:7001",
            "--message",
            "hello",
        ],
    )?;
    ensure!(
        out.success(),
        "a new flow NAS -> laptop failed with the GMS down: {}",
        out.stderr
    );
    say(
        "    a new connection from the NAS to laptop.home.fpn works: the nodes use their cached keys",
    );
    Ok(())
}

fn node(name: &str, host: &str, mode: Mode, groups: &[u32]) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        host: host.into(),
        mode,
        groups: groups.to_vec(),
    }
}

/// Waits (bounded) until every encrypted flow of `node` with `peer` uses key
/// version `v`; returns how many there are.
fn flows_on_version(ov: &Overlay, node: &str, peer: &str, v: u64) -> Result<usize> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let st = ov.status(node)?;
        let versions: Vec<u64> = st["flows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|f| f["action"] == "encrypt" && (f["src"] == peer || f["dst"] == peer))
            .map(|f| f["key_version"].as_u64().unwrap_or(0))
            .collect();
        if !versions.is_empty() && versions.iter().all(|x| *x == v) {
            return Ok(versions.len());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{node}'s flows with {peer} did not move to key version {v}: {versions:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The QUIC carrier's port (node/src/config.rs DEFAULT_PORT).
const QUIC_PORT: u16 = 7718;
/// PCCOM's trailer on every protected packet: an 8-byte counter and a
/// 16-byte tag (docs/PROTOCOL.md).
const PCCOM_TRAILER: usize = 24;
/// TCP flags byte of a pure ACK.
const TCP_ACK: u8 = 0x10;

/// `node`'s carrier and path text for `peer` (`fpn-node status --json`).
fn peer_path(ov: &Overlay, node: &str, peer: &str) -> Result<(String, String)> {
    let st = ov.status(node)?;
    let p = st["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == peer).cloned())
        .unwrap_or(Value::Null);
    Ok((
        p["carrier"].as_str().unwrap_or("").to_owned(),
        p["path"].as_str().unwrap_or("").to_owned(),
    ))
}

/// Waits (at most 10 s) until `node` takes the native path to `peer`.
fn wait_native(ov: &Overlay, node: &str, peer: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (carrier, path) = peer_path(ov, node, peer)?;
        if carrier == "native" {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{node} never found the native path to {peer}: carrier {carrier:?}, path {path:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One of `node`'s status counters.
fn counter(ov: &Overlay, node: &str, name: &str) -> Result<u64> {
    Ok(ov.status(node)?["counters"][name].as_u64().unwrap_or(0))
}

/// Sends `text` three times over one TCP connection from the laptop to the
/// echo server at `to` and checks each echo; returns the rounds and the
/// connection's source port. The connection is held for 800 ms before the
/// text goes: a new flow rides QUIC for its first 300 ms (docs/NODE.md), so
/// the text travels natively.
fn marker_transfer(lab: &Lab, to: SocketAddr, text: &str) -> Result<(usize, u16)> {
    let text = text.to_owned();
    lab.run_in("a", move || -> Result<(usize, u16)> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut byte = [0u8; 1];
        // The server's greeting: the client's address and a newline.
        while byte[0] != b'\n' {
            s.read_exact(&mut byte)?;
        }
        std::thread::sleep(Duration::from_millis(800));
        let mut back = vec![0u8; text.len()];
        for _ in 0..3 {
            s.write_all(text.as_bytes())?;
            s.read_exact(&mut back)?;
            ensure!(back == text.as_bytes(), "the echo differs from the text");
        }
        Ok((3, s.local_addr()?.port()))
    })?
}

/// A TCP packet as a capture shows it.
struct WireTcp {
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    sport: u16,
    dport: u16,
    flags: u8,
    /// Bytes after the TCP header.
    payload: usize,
}

impl WireTcp {
    fn between(&self, a: std::net::IpAddr, aport: u16, b: std::net::IpAddr, bport: u16) -> bool {
        (self.src, self.sport, self.dst, self.dport) == (a, aport, b, bport)
            || (self.src, self.sport, self.dst, self.dport) == (b, bport, a, aport)
    }

    /// One line as tcpdump would print it, with the payload length.
    fn line(&self) -> String {
        let mut f = String::new();
        for (bit, c) in [
            (0x02, 'S'),
            (0x01, 'F'),
            (0x04, 'R'),
            (0x08, 'P'),
            (0x10, '.'),
        ] {
            if self.flags & bit != 0 {
                f.push(c);
            }
        }
        format!(
            "{}:{} -> {}:{} TCP [{f}] {:>5}-byte payload",
            self.src, self.sport, self.dst, self.dport, self.payload
        )
    }
}

/// The IPv4 TCP packets of a capture.
fn tcp_packets(pcap: &fpn_lab::Pcap) -> Vec<WireTcp> {
    pcap.packets()
        .iter()
        .filter_map(|p| p.ip())
        .filter_map(|ip| {
            let (src, dst, proto, ihl, total) = fpn_lab::inject::ipv4_fields(ip).ok()?;
            let tcp = ip.get(ihl..total)?;
            if proto != 6 || tcp.len() < 20 {
                return None;
            }
            let off = usize::from(tcp[12] >> 4) * 4;
            Some(WireTcp {
                src: src.into(),
                dst: dst.into(),
                sport: u16::from_be_bytes([tcp[0], tcp[1]]),
                dport: u16::from_be_bytes([tcp[2], tcp[3]]),
                flags: tcp[13],
                payload: tcp.len().checked_sub(off)?,
            })
        })
        .collect()
}

/// IP bytes of UDP between `a` and `b` (either way) with `port` at one end.
fn udp_bytes(pcap: &fpn_lab::Pcap, a: std::net::IpAddr, b: std::net::IpAddr, port: u16) -> usize {
    pcap.packets()
        .iter()
        .filter_map(|p| p.ip())
        .filter_map(|ip| {
            let (src, dst, proto, ihl, total) = fpn_lab::inject::ipv4_fields(ip).ok()?;
            let udp = ip.get(ihl..ihl + 4)?;
            let (sp, dp) = (
                u16::from_be_bytes([udp[0], udp[1]]),
                u16::from_be_bytes([udp[2], udp[3]]),
            );
            let (src, dst) = (std::net::IpAddr::from(src), std::net::IpAddr::from(dst));
            (proto == 17
                && ((src, dst) == (a, b) || (src, dst) == (b, a))
                && (sp == port || dp == port))
                .then_some(total)
        })
        .sum()
}

fn step(n: u32, title: &str) {
    say(&format!("\n==> Step {n}: {title}"));
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// fpn-lab, for `echo serve/send` inside the hosts.
fn bin_lab() -> Result<String> {
    Ok(fpn_lab::workspace_binary("fpn-lab")?
        .to_string_lossy()
        .into_owned())
}

fn spawn_ready(lab: &Lab, host: &str, argv: &[&str], ready: &str) -> Result<fpn_lab::Process> {
    let p = lab.spawn(host, argv)?;
    p.wait_for_log(ready, Duration::from_secs(10))?;
    Ok(p)
}

fn echo_server(lab: &Lab, host: &str, port: u16) -> Result<fpn_lab::Process> {
    let addr = format!("0.0.0.0:{port}");
    let lab_bin = bin_lab()?;
    spawn_ready(
        lab,
        host,
        &[&lab_bin, "echo", "serve", "--tcp", &addr, "--udp", &addr],
        "echo: udp",
    )
}

fn iperf(lab: &Lab, host: &str, target: &str, secs: u32) -> Result<Value> {
    let out = lab
        .command(
            host,
            ["iperf3", "-c", target, "-t", &secs.to_string(), "-J"],
        )
        .timeout(Duration::from_secs(u64::from(secs) + 30))
        .output()?;
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    if !out.success() || v.get("error").is_some() {
        bail!(
            "iperf3 to {target} failed: {} {}",
            v["error"],
            out.stderr.trim()
        );
    }
    Ok(v)
}

/// Seconds of an iperf3 report in which nothing arrived.
fn stalled(report: &Value) -> usize {
    report["intervals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["sum"]["bytes"].as_f64().unwrap_or(0.0) <= 0.0)
        .count()
}

/// Current key version of group 1 at the GMS.
fn group_version(ov: &Overlay) -> Result<u64> {
    let keys = ov.gms_json(&["keys"])?;
    keys.as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["group"] == 1)
        .flat_map(|k| k["versions"].as_array().cloned().unwrap_or_default())
        .filter(|v| v["state"] == "current")
        .filter_map(|v| v["version"].as_u64())
        .max()
        .with_context(|| format!("no current key of group 1 in {keys}"))
}

/// Ctrl-C and SIGTERM remove the lab before the demo exits: they are
/// blocked in every thread (the lab unblocks them for its children) and one
/// thread waits for them and tears down the lab whose id is in the returned
/// slot, from its state file. Call before any other thread starts.
fn cleanup_on_signal(keep_logs: bool) -> Result<Arc<Mutex<Option<String>>>> {
    let slot: Arc<Mutex<Option<String>>> = Arc::default();
    let state_dir = fpn_lab::state::state_dir();
    // SAFETY: plain libc signal-set calls on a local, zeroed sigset_t.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("blocking SIGINT/SIGTERM failed");
        }
        set
    };
    let id = slot.clone();
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: `set` is a valid, initialised signal set.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            eprintln!("\nfpn-demo: interrupted; removing the lab");
            INTERRUPTED.store(true, Ordering::SeqCst);
            let id = id.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(id) = id {
                let logs = fpn_lab::LabState::load(&state_dir, &id).map(|st| st.log_dir);
                let _ = fpn_lab::state::down(&state_dir, &id);
                if let (Ok(dir), false) = (logs, keep_logs) {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            eprintln!("fpn-demo: lab removed");
            std::process::exit(130);
        }
    });
    Ok(slot)
}
