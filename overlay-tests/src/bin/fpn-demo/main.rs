//! fpn-demo: the README's main command (through scripts/demo.sh).
//!
//! Builds the users' network in network namespaces (configs/lab/demo.toml):
//! a VPS running fpn-gms with its DDNS and its relay; a home behind a NAT
//! with the NAS, a desktop and the laptop on the home LAN; a cafe behind a
//! NAT with random ports, where the laptop goes later. A visitor's phone on
//! the home LAN (the guest) is closed (CL) and shares no group with the
//! others. Then it shows, step by step and in plain words: who is behind
//! which NAT, enrollment, names (the NAS's public NAT address and its LAN
//! address in a LIP record at the GMS's DNS), an encrypted transfer between
//! laptop and NAS over the home LAN on the native carrier (a capture shows
//! the application's own ports, ciphertext and the PCCOM trailer, never the
//! text; a control shows the text when sent outside fpn), a refused flow and
//! a key rotation under traffic, the laptop moving to the cafe (what the
//! node does about it, measured; then the pair goes through the relay, and
//! a capture at the VPS holds no plaintext), and the GMS going down (a
//! direct pair's transfer goes on; the relayed pair, whose relay is the
//! GMS, is cut until it is back, measured). Each pair's path comes from
//! `fpn-node status --json`. Every step checks what it shows; the exit
//! status is non-zero when one fails. Everything is removed at the end,
//! also on failure and on Ctrl-C.

mod away;
mod home;
mod util;
mod wire;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use fpn_lab::{Lab, LabOptions};

use util::{ECHO_PORT, echo_server, echo_tcp, say, step};

/// Set once Ctrl-C or SIGTERM arrived: the lab is being removed under the
/// steps' feet, so their failures are not worth reporting.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A plaintext the demo sends through the overlay and looks for on the wire.
pub const MARKER: &str = "fpn-demo: this sentence must never be readable on the wire";

/// Show fpn on a lab network of NAT'ed homes and cafes: names, encryption,
/// policy, rotation, a laptop on the move, the relay, a GMS outage.
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

/// The demo's nodes: GE name (also its lab host's), mode and groups. The
/// home router `gw` is the home's gateway (a GEN for 192.168.1.0/24): the
/// printer behind it runs no fpn software.
const NODES: [(&str, Mode, &[u32]); 5] = [
    ("nas", Mode::Op, &[1]),
    ("desktop", Mode::Op, &[1]),
    ("laptop", Mode::Op, &[1]),
    ("guest", Mode::Cl, &[2]),
    ("gw", Mode::Cl, &[1]),
];

/// The home LAN the gateway protects.
pub const HOME_LAN: &str = "192.168.1.0/24";
/// The printer's LAN address (no fpn software on it).
pub const PRINTER: &str = "192.168.1.20";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let t = Instant::now();
    match run(&cli) {
        Ok(()) => {
            say(&format!(
                "\nAll steps passed in {:.0} s. The lab has been removed.",
                t.elapsed().as_secs_f64()
            ));
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

    step(
        1,
        "The network: a VPS, a home and a cafe, each behind its own NAT",
    );
    // The id is chosen first, so a Ctrl-C during the build removes it too.
    let id = fpn_lab::naming::new_id();
    *lab_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
    let lab = LabOptions {
        id: Some(id),
        keep_logs: cli.keep_logs,
        ..LabOptions::default()
    }
    .up_file(fpn_lab::config_path("demo.toml"))?;
    network(&lab)?;

    step(2, "Defining the network at the GMS and enrolling the nodes");
    say("    group 1 \"home\": the NAS, the desktop and the laptop, all open (OP)");
    say("    group 2 \"guests\": the guest, closed (CL): it only talks to members of its groups");
    say(&format!(
        "    the home router gw, closed, in group 1, as the home's gateway (kind gen) for {HOME_LAN}"
    ));
    let spec = Spec::new(
        &[(1, "home"), (2, "guests")],
        NODES
            .iter()
            .map(|(n, mode, groups)| {
                let mut spec = NodeSpec::new(n, *mode, groups);
                if *n == "gw" {
                    spec.kind = "gen".into();
                    spec.protect = vec![HOME_LAN.into()];
                }
                spec
            })
            .collect(),
    );
    let ov = Overlay::start(lab, &spec)?;
    ov.gms_admin(&[
        "host", "add", "printer", "--via", "gw", "--lan", PRINTER, "--group", "1",
    ])?;
    say(&format!(
        "    $ fpn-gms host add printer --via gw --lan {PRINTER} --group 1   (the printer runs no fpn software)"
    ));
    // The servers the steps use stay up to the end, and stop before the
    // overlay does.
    let result = enrolled(&ov)
        .and_then(|()| home::steps(&ov, secs))
        .and_then(|servers| away::steps(&ov, secs).map(|()| drop(servers)));
    if result.is_err() && !INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("\nWhat the daemons logged last:\n{}", ov.log_tails(20));
    }
    result
}

/// Step 1: who is where, and a check that each LAN reaches the internet
/// through its router's NAT (the VPS sees the router's address).
fn network(lab: &Lab) -> Result<()> {
    say(&format!(
        "    lab {}: network namespaces, one per machine, joined by veth links (configs/lab/demo.toml);",
        lab.id()
    ));
    say("    an internet router joins the VPS and the two sites' routers:");
    let vps = lab.addr("vps", "pub-vps")?;
    let (home, cafe) = (lab.addr("gw", "pub-home")?, lab.addr("cafe", "pub-cafe")?);
    say(&format!(
        "      vps      {vps:<13} public: fpn-gms (QUIC :4433), its DNS server for home.fpn (:53), its relay (:7720)"
    ));
    say(&format!(
        "      home     {home:<13} the home router: NAT (Linux masquerade), drops unsolicited inbound, forwards no port; runs fpn-node (carrier port open)"
    ));
    for (host, what) in [
        ("nas", "the NAS"),
        ("desktop", "a desktop"),
        ("laptop", "the laptop, on the home Wi-Fi for now"),
        ("guest", "a visitor's phone on the home Wi-Fi"),
        (
            "printer",
            "a printer with a web page: no fpn software on it",
        ),
    ] {
        say(&format!(
            "        {host:<8} {:<13} {what}",
            lab.addr(host, "homelan")?
        ));
    }
    say(&format!(
        "      cafe     {cafe:<13} the cafe's router: NAT with random ports, drops unsolicited inbound (LAN 10.20.0.0/24)"
    ));
    let _echo = echo_server(lab, "vps")?;
    let to = SocketAddr::new(vps, ECHO_PORT);
    let seen = echo_tcp(lab, "nas", to, "hello")?;
    ensure!(
        seen.ip() == home,
        "the VPS sees the NAS as {seen}, not behind the home router {home}"
    );
    say(&format!(
        "    checked: an echo server on the VPS sees the NAS as {seen} (the home router's NAT)"
    ));
    Ok(())
}

/// The end of step 2: each node enrolled and up, and where the GMS sees it
/// from (its reflexive address: its NAT's public side).
fn enrolled(ov: &Overlay) -> Result<()> {
    let lab = ov.lab();
    for (n, ..) in NODES {
        let reflexive = reflexive(ov, n)?;
        let router = lab.addr("gw", "pub-home")?;
        ensure!(
            reflexive.ip() == router,
            "the GMS sees {n} at {reflexive}, not behind its router {router}"
        );
        say(&format!(
            "    {n:<7} enrolled with a one-time token; overlay address {:<11} the GMS sees it at {reflexive}",
            ov.overlay_addr(n)?.to_string() + ";"
        ));
    }
    Ok(())
}

/// `node`'s reflexive address as its status shows it (waits up to 10 s
/// for the GMS's answer after the session started).
fn reflexive(ov: &Overlay, node: &str) -> Result<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = ov.status(node)?;
        if let Some(r) = st["gms"]["reflexive"].as_str() {
            return r
                .parse()
                .with_context(|| format!("{node}'s reflexive address {r:?}"));
        }
        if Instant::now() > deadline {
            bail!("{node} never learnt its reflexive address: {}", st["gms"]);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
