//! Steps 3 to 5, everybody at home: names, the laptop and the NAS on the
//! home LAN (native carrier, what the wire shows), a refused flow, a key
//! rotation under traffic.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fpn_lab::overlay::Overlay;
use serde_json::Value;

use crate::MARKER;
use crate::util::{
    ECHO_PORT, QUIC_PORT, counter, echo_server, echo_tcp, flows_on_version, group_version, iperf,
    marker_transfer, mbits, print_paths, say, spawn_ready, stalled, step, wait_path,
};
use crate::wire::{PCCOM_TRAILER, TCP_ACK, WireTcp, tcp_packets, udp_bytes};

/// Steps 3, 4 and 5. The echo servers and iperf3 server they start on the
/// NAS stay up for the later steps (dropped when the demo ends).
pub fn steps(ov: &Overlay, secs: u32) -> Result<Vec<fpn_lab::Process>> {
    let lab = ov.lab();
    let servers = vec![
        echo_server(lab, "nas")?,
        echo_server(lab, "laptop")?,
        spawn_ready(
            lab,
            "nas",
            &["iperf3", "-s", "--forceflush"],
            "Server listening",
        )?,
    ];
    names(ov)?;
    home_lan(ov, secs)?;
    refused_and_rotation(ov, secs)?;
    Ok(servers)
}

/// Step 3: the GMS's DNS (public A, LIP), the laptop's stub, `ping nas`.
fn names(ov: &Overlay) -> Result<()> {
    step(3, "Names");
    let lab = ov.lab();
    let gms_ip = ov.gms_addr().ip();
    let home = lab.addr("gw", "pub-home")?;
    let nas_lan = lab.addr("nas", "homelan")?;
    let out = lab.exec_ok(
        "laptop",
        [
            "dig",
            "+noall",
            "+answer",
            "+additional",
            "+time=2",
            &format!("@{gms_ip}"),
            "nas.home.fpn",
            "A",
        ],
    )?;
    let (a, lips) = a_and_lips(&out);
    say(&format!(
        "    $ dig @{gms_ip} nas.home.fpn    the GMS's DNS: A {}    (the home router: where the NAS is on the internet)",
        a.map(|a| a.to_string()).unwrap_or_else(|| "none".into())
    ));
    say(&format!(
        "                                   LIP {}    (RR type 65300 in the additional section: its address on the home LAN)",
        lips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    ensure!(
        a.map(IpAddr::V4) == Some(home),
        "the GMS's DNS answered A {a:?}, not the home router's {home}: {out}"
    );
    ensure!(
        lips.iter().any(|l| IpAddr::V4(*l) == nas_lan),
        "no LIP record with the NAS's LAN address {nas_lan}: {out}"
    );

    let nas_ip = ov.overlay_addr("nas")?;
    let laptop_ip = ov.overlay_addr("laptop")?;
    let stub = lab.exec_ok("laptop", ["dig", "+short", "+time=2", "nas.home.fpn", "A"])?;
    say(&format!(
        "    $ dig nas.home.fpn    on the laptop, its fpn-node DNS stub ({laptop_ip}): the NAS's overlay address  ->  {}",
        stub.trim()
    ));
    ensure!(
        stub.trim() == nas_ip.to_string(),
        "the laptop's stub answered {stub:?}, not {nas_ip}"
    );
    let ping = lab.exec("laptop", ["ping", "-c", "2", "-W", "2", "nas"])?;
    ensure!(
        ping.success(),
        "ping nas failed: {}{}",
        ping.stdout,
        ping.stderr
    );
    say("    $ ping nas    works: the short name, the search domain home.fpn, the overlay");
    ipv6(ov)
}

/// The end of step 3: the same NAS over the overlay's IPv6 addresses (the
/// network's ULA /48 from the CA key, each GE's IPv4 address in its last
/// 32 bits; docs/DESIGN-NOTES.md note 59).
fn ipv6(ov: &Overlay) -> Result<()> {
    let lab = ov.lab();
    let st = ov.status("nas")?;
    let nas6 = st["overlay6"]
        .as_str()
        .context("the NAS has no IPv6 overlay address")?
        .to_owned();
    let aaaa = lab.exec_ok(
        "laptop",
        ["dig", "+short", "+time=2", "nas.home.fpn", "AAAA"],
    )?;
    say(&format!(
        "    $ dig nas.home.fpn AAAA    the stub: the NAS's IPv6 overlay address  ->  {}",
        aaaa.trim()
    ));
    ensure!(
        aaaa.trim() == nas6,
        "the laptop's stub answered AAAA {aaaa:?}, not {nas6}"
    );
    let ping = lab.exec("laptop", ["ping", "-6", "-c", "2", "-W", "2", "nas"])?;
    ensure!(
        ping.success(),
        "ping -6 nas failed: {}{}",
        ping.stdout,
        ping.stderr
    );
    let flows = ov.status("laptop")?;
    let flow = flows["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["dst"] == nas6.as_str() && f["proto"] == "icmpv6")
        .cloned()
        .context("no ICMPv6 flow to the NAS in the laptop's status")?;
    ensure!(
        flow["action"] == "encrypt",
        "the IPv6 flow to the NAS is not encrypted: {flow}"
    );
    say(&format!(
        "    $ ping -6 nas    works too: the laptop's flow to {nas6} is {} with group key v{} on {} (IPv6 TCP, UDP and echoes cross the native path as IPv4 packets)",
        flow["action"].as_str().unwrap_or("?"),
        flow["key_version"],
        flow["carrier"].as_str().unwrap_or("?")
    ));
    Ok(())
}

/// The A record and the LIP records in `dig +noall +answer +additional`
/// output (LIPs in RFC 3597 form: `TYPE65300 \# 4 C0A8010A`).
fn a_and_lips(dig: &str) -> (Option<Ipv4Addr>, Vec<Ipv4Addr>) {
    let mut a = None;
    let mut lips = Vec::new();
    for line in dig.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.get(3..) {
            Some(["A", addr, ..]) => a = addr.parse().ok(),
            Some(["TYPE65300", "\\#", "4", hex, ..]) => {
                if let Ok(n) = u32::from_str_radix(hex, 16) {
                    lips.push(Ipv4Addr::from(n));
                }
            }
            _ => {}
        }
    }
    (a, lips)
}

/// Step 4: laptop <-> NAS on the home LAN, natively, and what the wire
/// shows of it.
fn home_lan(ov: &Overlay, secs: u32) -> Result<()> {
    step(
        4,
        "At home: laptop and NAS over the home LAN, encrypted, on the native carrier",
    );
    let lab = ov.lab();
    let nas_ip = ov.overlay_addr("nas")?;
    let (a_lan, b_lan) = (lab.addr("laptop", "homelan")?, lab.addr("nas", "homelan")?);
    // Step 3's ping was the first contact: the nodes found each other's LAN
    // candidate (before the home router's address) and their path probes
    // find the native path within seconds.
    for (n, peer) in [("laptop", "nas"), ("nas", "laptop")] {
        wait_path(
            ov,
            n,
            peer,
            "native",
            Some("direct LAN"),
            Duration::from_secs(10),
        )?;
    }
    say(&format!(
        "    tcpdump runs on the NAS's port of the home LAN switch ({b_lan})"
    ));
    let filter = format!("host {a_lan} and host {b_lan}");
    let cap = lab.capture("nas", "homelan", &filter)?;
    let text = MARKER.repeat(100);
    let to = SocketAddr::new(nas_ip.into(), ECHO_PORT);
    let (rounds, sport) = marker_transfer(lab, "laptop", to, &text)?;
    say(&format!(
        "    the laptop sent {rounds} x {} bytes of readable text to nas.home.fpn:{ECHO_PORT} ({nas_ip}) on one TCP connection and got them back",
        text.len()
    ));
    let pcap = cap.stop()?;
    let wire = tcp_packets(&pcap);
    let flow: Vec<&WireTcp> = wire
        .iter()
        .filter(|p| p.between(a_lan, sport, b_lan, ECHO_PORT))
        .collect();
    say(&format!(
        "    the capture holds {} packets of that connection; as the wire shows them:",
        flow.len()
    ));
    let data_out = flow
        .iter()
        .find(|p| p.src == a_lan && p.payload > PCCOM_TRAILER);
    let data_back = flow
        .iter()
        .find(|p| p.src == b_lan && p.payload > PCCOM_TRAILER);
    let ack = flow
        .iter()
        .find(|p| p.flags == TCP_ACK && p.payload == PCCOM_TRAILER);
    let (Some(data_out), Some(data_back), Some(ack)) = (data_out, data_back, ack) else {
        bail!(
            "the connection {a_lan}:{sport} -> {b_lan}:{ECHO_PORT} is not on the wire as native packets \
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
    let quic = udp_bytes(&pcap, a_lan, b_lan, Some(QUIC_PORT));
    say(&format!(
        "    the application's own ports between the two machines' LAN addresses, no tunnel header; {quic} bytes of QUIC (port {QUIC_PORT}) in the same capture: a new connection's first 300 ms ride QUIC while the NAS adds its nftables rule"
    ));
    ensure!(
        !pcap.contains(MARKER.as_bytes()),
        "the plaintext was readable on the wire!"
    );
    say("    the text appears in none of them: it crossed the LAN encrypted");
    // Control: the same text outside fpn, to the NAS's own address, is
    // readable on the same link (so the check above can see it).
    let control = lab.capture("nas", "homelan", &filter)?;
    echo_tcp(lab, "laptop", SocketAddr::new(b_lan, ECHO_PORT), MARKER)
        .context("the control send")?;
    control
        .wait_for(Duration::from_secs(5), |p| p.contains(MARKER.as_bytes()))
        .context("the control: the text sent outside fpn never showed on the capture")?;
    drop(control);
    say(&format!(
        "    control: the same text sent outside fpn, to {b_lan}:{ECHO_PORT}, is readable in a capture of the same port"
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
        "nas",
        "homelan",
        &format!("udp port {QUIC_PORT} and {filter}"),
    )?;
    let native_before = counter(ov, "laptop", "native_out")?;
    let report = iperf(lab, "laptop", "nas.home.fpn", secs)?;
    let received = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or(0.0);
    let quic = udp_bytes(&quic_cap.stop()?, a_lan, b_lan, Some(QUIC_PORT));
    let native = counter(ov, "laptop", "native_out")? - native_before;
    say(&format!(
        "    $ iperf3 -c nas.home.fpn -t {secs}  ->  {:.0} Mbit/s; the laptop sent {native} native packets, {quic} bytes of QUIC crossed meanwhile",
        mbits(&report)
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
    say("    which path each pair uses ($ fpn-node status --json, peers; the path is per peer,");
    say("    carrier, then which of the peer's addresses, the address and the RTT):");
    print_paths(ov, &[("laptop", "nas"), ("nas", "laptop")])?;
    for (n, peer) in [("laptop", "nas"), ("nas", "laptop")] {
        wait_path(ov, n, peer, "native", Some("direct LAN"), Duration::ZERO)
            .with_context(|| format!("{n} -> {peer} left the home LAN's native path"))?;
    }
    Ok(())
}

/// Step 5: the guest (CL, no shared group) is refused at
/// once; a key rotation does not disturb a transfer.
fn refused_and_rotation(ov: &Overlay, secs: u32) -> Result<()> {
    step(5, "A refused flow fails fast; a key rotation under traffic");
    let lab = ov.lab();
    let laptop_ip = ov.overlay_addr("laptop")?;
    let nas_ip = ov.overlay_addr("nas")?;
    let to = SocketAddr::new(laptop_ip.into(), ECHO_PORT);
    let (r, took) = lab.run_in("guest", move || {
        let t = Instant::now();
        let r = TcpStream::connect_timeout(&to, Duration::from_secs(5)).map(drop);
        (r, t.elapsed())
    })?;
    match r {
        Ok(()) => bail!("the guest connected to the laptop; the policy should refuse it"),
        Err(e) => say(&format!(
            "    the guest (CL, group 2) connects to laptop.home.fpn:{ECHO_PORT}: refused after {} ms ({e})",
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

    let v0 = group_version(ov)?;
    say(&format!(
        "    group 1 is at key version {v0}; a {secs} s transfer laptop -> NAS starts, the GMS rotates the key after 1 s"
    ));
    let report = std::thread::scope(|s| -> Result<Value> {
        let t = s.spawn(|| iperf(lab, "laptop", "nas.home.fpn", secs));
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
        mbits(&report)
    ));
    ensure!(stalls == 0, "the transfer stalled during the rotation");
    // The old version stays valid for the grace, so flows still on it would
    // pass everything above: show that they moved.
    let moved = flows_on_version(ov, "laptop", &nas_ip.to_string(), v1)?;
    say(&format!(
        "    the laptop's {moved} encrypted flows with the NAS were renegotiated and use version {v1}"
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dig_output_gives_the_a_record_and_the_lips() {
        let out = "nas.home.fpn.\t\t60\tIN\tA\t198.18.2.2\n\
                   nas.home.fpn.\t\t60\tIN\tTYPE65300 \\# 4 C0A8010A\n";
        let (a, lips) = a_and_lips(out);
        assert_eq!(a, Some(Ipv4Addr::new(198, 18, 2, 2)));
        assert_eq!(lips, vec![Ipv4Addr::new(192, 168, 1, 10)]);
        assert_eq!(a_and_lips(""), (None, vec![]));
    }
}
