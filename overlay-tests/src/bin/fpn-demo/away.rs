//! Steps 6 to 8, the laptop away: it moves to the cafe (what the node does
//! about that, measured; then the relay, and what the relay's host sees),
//! it opens the page of the printer at home, which runs no fpn software,
//! through the home gateway (NAT-f), and the GMS, which is also the relay,
//! goes down.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fpn_lab::overlay::Overlay;
use serde_json::Value;

use crate::MARKER;
use crate::util::{
    ECHO_PORT, Probe, RELAY_PORT, echo_server, echo_tcp, iperf, mbits, path_words, peer_entry,
    print_paths, say, stalled, step, str_of, wait_path,
};
use crate::wire::udp_bytes;

/// How long the laptop may take to reach the NAS again after the move.
/// Measured: a median 10.7 s (bench/demo-roam.sh; the native path's
/// probes fail, then one 5 s direct QUIC attempt, then the relay); one run
/// with other traffic (`fpn-node ping`) took 23 s. The bound leaves room
/// for a loaded machine.
const REACH_AGAIN: Duration = Duration::from_secs(60);

/// The record stream's port on the home router's node, and its records
/// (10 ms apart: 1 s before the move, 2 s after).
const RECORDS_PORT: u16 = 9500;
const RECORDS: u64 = 300;

/// How soon after the GMS serves again the relayed pair must answer again
/// (node_relay.rs's bound; a median 0.76 s in bench/relay-restart.sh).
const RELAY_BACK: Duration = Duration::from_secs(5);

/// Steps 6 to 8, after the home steps (whose servers are still up).
pub fn steps(ov: &Overlay, secs: u32) -> Result<()> {
    to_the_cafe(ov)?;
    printer(ov)?;
    gms_down(ov, secs)
}

/// The printer's page; its text must never cross the home router's WAN.
const PRINTER_PAGE: &str =
    "Printer status: ready, 87% toner. (fpn-demo: this page must never be readable on the wire)";

/// `curl http://printer.home.fpn/` on the laptop (bounded).
fn printer_page(lab: &fpn_lab::Lab) -> Result<fpn_lab::Output> {
    Ok(lab
        .command(
            "laptop",
            [
                "curl",
                "-sS",
                "--max-time",
                "20",
                "http://printer.home.fpn/",
            ],
        )
        .timeout(Duration::from_secs(30))
        .output()?)
}

/// Step 7: from the cafe, the laptop opens the page of the printer at home
/// by name; the printer runs no fpn software, the home router (the
/// gateway) maps the laptop's flow to it.
fn printer(ov: &Overlay) -> Result<()> {
    step(
        7,
        "From the cafe, the printer at home, which runs no fpn software",
    );
    let lab = ov.lab();
    let www = lab.log_dir().join("printer-www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), PRINTER_PAGE)?;
    let lab_bin = crate::util::bin_lab()?;
    let _http = crate::util::spawn_ready(
        lab,
        "printer",
        &[
            &lab_bin,
            "http",
            "--listen",
            "0.0.0.0:80",
            "--dir",
            www.to_str().context("path")?,
        ],
        "serving",
    )?;
    let router = lab.addr("gw", "pub-home")?;
    let gms = ov.gms_addr().ip().to_string();
    let public = lab.exec_ok(
        "laptop",
        ["dig", "+short", &format!("@{gms}"), "printer.home.fpn", "A"],
    )?;
    say(&format!(
        "    at the GMS's DNS, printer.home.fpn has the home router's address ({}) and, in a LIP record,",
        public.trim()
    ));
    say(&format!(
        "    its LAN address {}: for resolvers outside fpn. The laptop's own DNS stub answers with a VIN,",
        crate::PRINTER
    ));
    let vin = lab.exec_ok("laptop", ["dig", "+short", "printer.home.fpn"])?;
    let vin = vin.trim().to_owned();
    ensure!(
        vin.starts_with("100.127."),
        "the laptop's stub answered {vin:?} for the printer, not a VIN"
    );
    say(&format!(
        "    a virtual address routed into its TUN: {vin}. The first packet to it is held while the laptop asks the"
    ));
    say(
        "    home router's node (the gateway) for a mapping: does the laptop share a group with the printer? Then a",
    );
    say(
        "    port is reserved on the router's public address and the router's kernel maps the flow to the printer.",
    );
    let cap = lab.capture("gw", "pub-home", "ip")?;
    let t = Instant::now();
    let page = printer_page(lab)?;
    let took = t.elapsed();
    ensure!(
        page.success() && page.stdout == PRINTER_PAGE,
        "the laptop did not get the printer's page: {}",
        page.stderr
    );
    // A second connection: a new flow (and mapping) on the path that is
    // warm now; the first one also waited for the laptop's first
    // connection to the router since it moved.
    let t2 = Instant::now();
    let again = printer_page(lab)?;
    let took2 = t2.elapsed();
    ensure!(
        again.success(),
        "the second connection failed: {}",
        again.stderr
    );
    say(&format!(
        "    $ curl http://printer.home.fpn/   (on the laptop, at the cafe: {:.0} ms the first time, with the laptop's",
        took.as_secs_f64() * 1e3
    ));
    say(&format!(
        "      first connection to the router since it moved; {:.0} ms for a second connection, its own new mapping)",
        took2.as_secs_f64() * 1e3
    ));
    say(&format!("      {PRINTER_PAGE}"));
    let who = lab.exec_ok(
        "laptop",
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "http://printer.home.fpn/whoami",
        ],
    )?;
    ensure!(
        who.starts_with("192.168.1.1:"),
        "the printer saw {who:?}, not the gateway's LAN address"
    );
    say(&format!(
        "    the printer saw the request come from {} (the router's LAN address): it needs nothing of fpn",
        who.trim()
    ));
    // The name has an AAAA too (the VIN in the overlay's IPv6 prefix), so
    // curl went over IPv6; the laptop made the flow IPv4 at its TUN
    // (design note 60).
    let vin6 = lab.exec_ok("laptop", ["dig", "+short", "printer.home.fpn", "AAAA"])?;
    let vin6: std::net::Ipv6Addr = vin6
        .trim()
        .parse()
        .with_context(|| format!("the laptop's stub answered AAAA {vin6:?} for the printer"))?;
    let vin4: std::net::Ipv4Addr = vin.parse().context("the VIN")?;
    ensure!(
        vin6.octets()[12..] == vin4.octets(),
        "the printer's AAAA {vin6} is not its VIN {vin} in the overlay's IPv6 prefix"
    );
    let used = lab.exec_ok(
        "laptop",
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{remote_ip}",
            "http://printer.home.fpn/",
        ],
    )?;
    ensure!(
        used.trim() == vin6.to_string(),
        "curl reached the printer at {used:?}, not at its IPv6 address {vin6}"
    );
    say(&format!(
        "    the stub answers AAAA too ({vin6}: the VIN in the overlay's IPv6 prefix) and curl took it: the laptop"
    ));
    say(
        "    turns such IPv6 flows into IPv4 ones at its TUN, so the router and the printer see the flow they always did.",
    );
    let pcap = cap.stop()?;
    ensure!(
        !pcap.contains(PRINTER_PAGE.as_bytes()) && !pcap.contains(b"Printer status"),
        "the printer's page crossed the home router's WAN readable"
    );
    let flows = ov.status("laptop")?["flows"].clone();
    let natf = flows
        .as_array()
        .and_then(|f| {
            f.iter()
                .find(|f| f["dst"] == vin.as_str() && f["natf"].is_object())
        })
        .context("no NAT-f flow to the printer in the laptop's status")?;
    say(&format!(
        "    checked: on the router's WAN ({router}) the page never appears; the flow is {} on {}, through port {}",
        str_of(&natf["action"]),
        str_of(&natf["carrier"]),
        natf["natf"]["port"]
    ));
    say(
        "    of the router's public address, reserved for this laptop and this flow (a stranger gets nothing there).",
    );
    Ok(())
}

/// Step 6: the laptop roams to the cafe and reaches the NAS again.
fn to_the_cafe(ov: &Overlay) -> Result<()> {
    step(6, "The laptop goes to the cafe");
    let lab = ov.lab();
    // A transfer that keeps running across the move: a timestamped record
    // every 10 ms over one TCP connection to the home router's node.
    let gw = SocketAddr::new(ov.overlay_addr("gw")?.into(), RECORDS_PORT);
    let listener = lab.run_in("gw", || {
        std::net::TcpListener::bind(("0.0.0.0", RECORDS_PORT))
    })??;
    let receiver = std::thread::spawn(move || {
        fpn_lab::records::receive(listener, RECORDS, Duration::from_secs(30))
    });
    let sender = lab.thread_in("laptop", move || {
        fpn_lab::records::send(gw, Duration::from_millis(10), RECORDS)
    })?;
    say(&format!(
        "    on the laptop, a TCP connection to gw.home.fpn:{RECORDS_PORT} carries a timestamped record every 10 ms; then"
    ));
    std::thread::sleep(Duration::from_secs(1));
    lab.roam("laptop", "homelan", "cafelan")?;
    let moved = Instant::now();
    let moved_ns = fpn_lab::records::now_ns();
    // `ping nas` (by its overlay address) from the moment of the move, while
    // the record stream runs: how soon the NAS answers again.
    let nas = ov.overlay_addr("nas")?.to_string();
    let nas_probe = lab.thread_in("laptop", move || {
        while moved.elapsed() < REACH_AGAIN {
            let answered = std::process::Command::new("ping")
                .args(["-n", "-c", "1", "-W", "1", &nas])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if answered {
                return Some(moved.elapsed());
            }
        }
        None
    })?;
    let cafe = lab.addr("cafe", "pub-cafe")?;
    say(&format!(
        "    the laptop's Wi-Fi (wlan0) leaves the home LAN and joins the cafe's: now {}, behind the cafe's NAT ({cafe}, random ports)",
        lab.addr("laptop", "cafelan")?
    ));
    let sent = sender.join();
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the record receiver panicked"))?;
    ensure!(
        sent.is_ok(),
        "the record stream broke across the move: {sent:?}"
    );
    ensure!(
        got.connections == 1
            && got.arrivals.len() as u64 == RECORDS
            && got.sequence_errors().is_empty(),
        "the record stream lost or repeated records across the move: {} of {RECORDS}, {:?}",
        got.arrivals.len(),
        got.sequence_errors()
    );
    let gap = got
        .gap_after(moved_ns, Duration::from_secs(2))
        .context("no record arrived after the move")?;
    let mv = ov.status("laptop")?["moves"]
        .as_array()
        .and_then(|m| m.last().cloned())
        .unwrap_or_default();
    say(&format!(
        "    the laptop's node saw the move at once (netlink): {}",
        str_of(&mv["cause"])
    ));
    say(
        "    it sent the router's node a Binding Update over a QUIC connection opened from the cafe, held its packets",
    );
    say(&format!(
        "    until the answer, and the stream went on: all {RECORDS} records, in order, on the same connection; the"
    ));
    say(&format!(
        "    receiver waited {:.0} ms for records after the new address was in place (fpn-node status: gap {:.0} ms)",
        gap.as_secs_f64() * 1e3,
        mv["gap_ms"].as_f64().unwrap_or(f64::NAN)
    ));
    say(
        "    The NAS is another case: it sits behind the home router's NAT with nothing open, and the cafe's NAT",
    );
    say(
        "    picks a new random port per destination, so no direct path exists between the two. The laptop's view",
    );
    say(
        "    of the NAS ($ fpn-node status) while `ping -c 1 nas` runs on the laptop, over and over:",
    );
    let mut last = String::new();
    let reached = loop {
        let out = lab.exec("laptop", ["ping", "-n", "-c", "1", "-W", "1", "nas"])?;
        let p = peer_entry(ov, "laptop", "nas")?;
        let now = format!("{:<6} {}", str_of(&p["carrier"]), str_of(&p["path"]));
        if now != last {
            let gloss = match str_of(&p["carrier"]) {
                "native" => "the home LAN's native path, which leads nowhere now",
                "quic" => "its native probes went unanswered: QUIC to the NAS's addresses",
                "relay" => "no direct QUIC either: through the relay",
                _ => "",
            };
            say(&format!(
                "      +{:>4.1} s  {now:<40} {gloss}",
                moved.elapsed().as_secs_f64()
            ));
            last = now;
        }
        if out.success() {
            break moved.elapsed();
        }
        if moved.elapsed() > REACH_AGAIN {
            bail!(
                "the laptop did not reach nas.home.fpn within {REACH_AGAIN:?} of the move: {}",
                path_words(&p)
            );
        }
    };
    let first = nas_probe
        .join()
        .context("the NAS never answered the pings sent from the move on")?;
    say(&format!(
        "      +{:>4.1} s  ping nas answers again: the laptop reached the NAS {:.1} s after the move (pinged from the move on, during the record stream), with no restart",
        reached.as_secs_f64(),
        first.as_secs_f64()
    ));

    let nc = ov.node_cli("laptop", &["netcheck", "--json"])?;
    ensure!(nc.success(), "fpn-node netcheck failed: {}", nc.stderr);
    let nc: Value = serde_json::from_str(nc.stdout.trim()).context("netcheck --json")?;
    let reflexive: Option<SocketAddr> = str_of(&nc["reflexive"]).parse().ok();
    let local = nc["local"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| str_of(l).to_owned())
        .collect::<Vec<_>>()
        .join(", ");
    say(&format!(
        "    $ fpn-node netcheck (on the laptop)  ->  local candidates {local}; the GMS sees it at {}",
        reflexive.map_or("(unknown)".into(), |r| r.to_string())
    ));
    // What the GMS knows of the laptop after the move (the node told it
    // its new addresses at once; the reflexive one comes with its session).
    if reflexive.is_some_and(|r| r.ip() == cafe) {
        say("    the GMS sees the laptop at the cafe's NAT now");
    } else {
        say(
            "    the GMS still has the reflexive address the laptop's session was opened from (the home router's):",
        );
        say(
            "    the session carried on from the cafe (QUIC migrates a connection), so it was never opened again;",
        );
        say("    the laptop's local addresses, which it reports, are the cafe's");
    }
    let p = ov.ping("laptop", "nas", 3)?;
    say(&format!(
        "    $ fpn-node ping nas  ->  action {}, carrier {}, path {}, rtt {:?} ms",
        p.action(),
        p.carrier(),
        str_of(&p.json["path"]),
        p.rtts()
    ));
    ensure!(
        p.ok && p.action() == "encrypt" && p.carrier() == "relay",
        "fpn-node ping nas from the cafe: not encrypted through the relay: {}",
        p.json
    );

    // The relayed transfer, captured on the relay's host.
    let vps = lab.addr("vps", "pub-vps")?;
    let home = lab.addr("gw", "pub-home")?;
    let _echo = echo_server(lab, "vps")?;
    let cap = lab.capture("vps", "pub-vps", "ip")?;
    let text = MARKER.repeat(100);
    let nas = SocketAddr::new(ov.overlay_addr("nas")?.into(), ECHO_PORT);
    let seen = echo_tcp(lab, "laptop", nas, &text).context("TCP echo laptop -> nas")?;
    say(&format!(
        "    the laptop sent {} bytes of readable text to nas.home.fpn:{ECHO_PORT} over TCP and got them back (the NAS saw {seen})",
        text.len()
    ));
    ensure!(
        seen.ip() == ov.overlay_addr("laptop")?,
        "the NAS saw the connection from {seen}, not the laptop's overlay address"
    );
    // Laptop -> relay -> NAS and back: the text crosses the VPS's link four times.
    let carried = 4 * text.len();
    let relayed = |p: &fpn_lab::Pcap| {
        udp_bytes(p, home, vps, Some(RELAY_PORT)) + udp_bytes(p, cafe, vps, Some(RELAY_PORT))
    };
    let pcap = cap
        .wait_for(Duration::from_secs(5), |p| relayed(p) >= carried)
        .context("the relay's host never saw the relayed transfer")?;
    say(&format!(
        "    tcpdump on the VPS: {} bytes of UDP between the relay (:{RELAY_PORT}) and the two NATs ({home}, {cafe}) during it",
        relayed(&pcap)
    ));
    ensure!(
        !pcap.contains(MARKER.as_bytes()),
        "the plaintext was readable on the relay's host!"
    );
    say("    the text appears nowhere in them: the relay forwards what it cannot read");
    echo_tcp(lab, "laptop", SocketAddr::new(vps, ECHO_PORT), MARKER).context("the control send")?;
    cap.wait_for(Duration::from_secs(5), |p| p.contains(MARKER.as_bytes()))
        .context("the control: the text sent in the clear never showed on the VPS's capture")?;
    say(&format!(
        "    control: the same text sent in the clear to {vps}:{ECHO_PORT} is readable in the same capture"
    ));

    let st = ov.gms_json(&["status"])?;
    say(&format!(
        "    $ fpn-gms status: the relay has forwarded {} frames ({} bytes) for {} nodes",
        st["relay"]["counters"]["frames_relayed"],
        st["relay"]["counters"]["bytes_relayed"],
        st["relay"]["nodes"].as_array().map_or(0, Vec::len)
    ));
    let asked = ov.status("laptop")?["gms"]["punches_asked"]
        .as_u64()
        .unwrap_or(0);
    ensure!(
        asked > 0,
        "the laptop never asked the GMS for a connect-now"
    );
    say(
        "    why the relay: the laptop dialled the NAS's addresses (its LAN address, unreachable from the cafe,",
    );
    say(&format!(
        "    and the home router's, which drops what it did not ask for) and asked the GMS {asked} times to have the"
    ));
    say(
        "    NAS dial back; the GMS hands out the laptop's new addresses, but that does not do: the cafe's NAT",
    );
    say("    picks a new random port for each destination, so the NAS cannot hit the");
    say("    laptop's mapping. No direct path exists; the relay in fpn-gms carries the pair:");
    print_paths(ov, &[("laptop", "nas"), ("nas", "laptop")])?;
    for (n, peer) in [("laptop", "nas"), ("nas", "laptop")] {
        wait_path(ov, n, peer, "relay", None, Duration::ZERO)?;
    }
    Ok(())
}

/// Step 8: the GMS (and with it the relay) is killed under a transfer on a
/// direct path and a probe on the relayed one; then it comes back.
fn gms_down(ov: &Overlay, secs: u32) -> Result<()> {
    step(8, "The GMS goes down");
    let lab = ov.lab();
    // The desktop's first contact with the NAS: LAN candidates, native path.
    let ping = lab.exec("desktop", ["ping", "-n", "-c", "2", "-W", "2", "nas"])?;
    ensure!(
        ping.success(),
        "the desktop cannot ping nas: {}",
        ping.stdout
    );
    for (n, peer) in [("desktop", "nas"), ("nas", "desktop")] {
        wait_path(
            ov,
            n,
            peer,
            "native",
            Some("direct LAN"),
            Duration::from_secs(10),
        )?;
    }
    say("    the pairs now: the desktop and the NAS at home, the laptop at the cafe:");
    print_paths(
        ov,
        &[
            ("desktop", "nas"),
            ("nas", "desktop"),
            ("laptop", "nas"),
            ("nas", "laptop"),
        ],
    )?;
    let nas = SocketAddr::new(ov.overlay_addr("nas")?.into(), ECHO_PORT);
    let probe = Probe::start(lab, "laptop", nas, Duration::from_secs(60))?;
    let (report, killed) = std::thread::scope(|s| -> Result<(Value, Instant)> {
        let t = s.spawn(|| iperf(lab, "desktop", "nas.home.fpn", secs));
        std::thread::sleep(Duration::from_secs(1));
        ov.kill_gms();
        let killed = Instant::now();
        let report = t
            .join()
            .map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))??;
        Ok((report, killed))
    })?;
    say(&format!(
        "    the GMS was killed (SIGKILL) one second into a {secs} s transfer desktop -> nas.home.fpn, while the laptop"
    ));
    say("    at the cafe sends the NAS a UDP datagram every 100 ms");
    let stalls = stalled(&report);
    say(&format!(
        "    the direct pair: the transfer ran to its end, {:.0} Mbit/s, {stalls} stalled seconds",
        mbits(&report)
    ));
    ensure!(stalls == 0, "the transfer stalled when the GMS died");
    // A new TCP connection is a new flow: negotiated without the GMS.
    echo_tcp(lab, "desktop", nas, "hello")
        .context("a new flow desktop -> nas with the GMS down")?;
    say(
        "    a new TCP connection from the desktop to nas.home.fpn works too: the nodes use their cached keys",
    );

    let down = killed.elapsed();
    let answers = probe.answers();
    let before = answers.iter().filter(|a| **a < killed).count();
    // Answers already under way when the GMS died are not the relay's
    // doing after it; 300 ms covers them.
    let during = answers
        .iter()
        .filter(|a| **a > killed + Duration::from_millis(300))
        .count();
    ensure!(
        before > 0,
        "the relayed pair answered nothing even before the GMS went down"
    );
    if during == 0 {
        say(&format!(
            "    the relayed pair: cut. The relay runs inside fpn-gms; {before} answers before the kill, none in the {:.1} s since",
            down.as_secs_f64()
        ));
    } else {
        say(&format!(
            "    the relayed pair: {before} answers before the kill, {during} in the {:.1} s since",
            down.as_secs_f64()
        ));
    }
    ov.start_gms()?;
    let back = Instant::now();
    let again = probe.answer_after(back, RELAY_BACK);
    probe.finish();
    let Some(again) = again else {
        bail!("the relayed pair did not answer within {RELAY_BACK:?} of the GMS serving again");
    };
    say(&format!(
        "    the GMS serves again ($ fpn-gms serve): the relayed pair answers {:.2} s later",
        again.duration_since(back).as_secs_f64()
    ));
    let p = peer_entry(ov, "desktop", "nas")?;
    ensure!(
        p["carrier"] == "native" && p["candidate"] == "direct LAN",
        "the desktop left the LAN's native path to the NAS: {}",
        path_words(&p)
    );
    Ok(())
}
