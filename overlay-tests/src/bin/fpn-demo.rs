//! fpn-demo: the README's main command (through scripts/demo.sh).
//!
//! Builds a small fpn network in network namespaces (configs/lab/overlay.toml):
//! a VPS running fpn-gms with its DDNS, a laptop and a NAS that share a group
//! on different links behind a router, and a guest node that is closed (CL)
//! and shares no group with them. Then it shows, step by step and in plain
//! words: name resolution, an encrypted TCP transfer (a capture proves no
//! plaintext crosses the wire), a refused flow failing fast, a key rotation
//! under traffic and the GMS going down without breaking traffic. Every step
//! checks what it shows; the exit status is non-zero when one fails.
//! Everything is removed at the end, also on failure and on Ctrl-C.

use std::io::Write;
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
    say(&format!(
        "    tcpdump runs on the router's link to the NAS ({b_pub})"
    ));
    let cap = lab.capture("inet", "pub-b", "ip")?;
    let text = MARKER.repeat(100);
    let out = lab.exec(
        "a",
        [
            bin_lab()?.as_str(),
            "echo",
            "send",
            "nas.home.fpn:7001",
            "--message",
            &text,
        ],
    )?;
    ensure!(
        out.success(),
        "sending the marker to the NAS failed: {}",
        out.stderr
    );
    say(&format!(
        "    the laptop sent {} bytes of readable text to nas.home.fpn:7001 and got them back",
        text.len()
    ));
    let p = ov.ping("laptop", "nas", 3)?;
    ensure!(p.ok, "fpn-node ping nas failed: {}", p.output.stderr);
    say(&format!(
        "    $ fpn-node ping nas  ->  action {}, carrier {}, rtt {:?} ms",
        p.action(),
        p.carrier(),
        p.rtts()
    ));
    ensure!(
        p.action() == "encrypt",
        "the flow to the NAS is not encrypted: {}",
        p.json
    );
    std::thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop()?;
    let (mut n, mut bytes) = (0, 0);
    for pkt in pcap.packets() {
        if let Some(ip) = pkt.ip().filter(|ip| ip.len() >= 20 && ip[9] == 17) {
            let (s, d) = (&ip[12..16], &ip[16..20]);
            let (x, y) = (octets(a_pub), octets(b_pub));
            if (s == x && d == y) || (s == y && d == x) {
                n += 1;
                bytes += usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            }
        }
    }
    say(&format!(
        "    the capture holds {n} UDP packets ({bytes} bytes) between {a_pub} and {b_pub} (QUIC, port 7718)"
    ));
    ensure!(bytes >= 2 * text.len(), "the capture missed the transfer");
    ensure!(
        !pcap.contains(MARKER.as_bytes()),
        "the plaintext was readable on the wire!"
    );
    say("    the text appears in none of them: it crossed the wire encrypted");
    let report = iperf(lab, "a", "nas.home.fpn", secs)?;
    say(&format!(
        "    $ iperf3 -c nas.home.fpn -t {secs}  ->  {:.0} Mbit/s",
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e6
    ));

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

fn step(n: u32, title: &str) {
    say(&format!("\n==> Step {n}: {title}"));
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn octets(a: std::net::IpAddr) -> [u8; 4] {
    match a {
        std::net::IpAddr::V4(v4) => v4.octets(),
        std::net::IpAddr::V6(_) => [0; 4],
    }
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
