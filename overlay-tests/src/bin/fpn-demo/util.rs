//! The demo's tools: printing, the programs it runs in the lab's hosts
//! (echo servers, iperf3, a UDP probe), and questions to the nodes'
//! `status --json`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fpn_lab::Lab;
use fpn_lab::overlay::Overlay;
use serde_json::Value;

/// The QUIC carrier's port (node/src/config.rs DEFAULT_PORT).
pub const QUIC_PORT: u16 = 7718;
/// The relay's port (in-process in fpn-gms, the default).
pub const RELAY_PORT: u16 = 7720;
/// The echo servers' port (TCP and UDP).
pub const ECHO_PORT: u16 = 7001;

pub fn step(n: u32, title: &str) {
    say(&format!("\n==> Step {n}: {title}"));
}

pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// fpn-lab, for `echo serve/send` inside the hosts.
pub fn bin_lab() -> Result<String> {
    Ok(fpn_lab::workspace_binary("fpn-lab")?
        .to_string_lossy()
        .into_owned())
}

pub fn spawn_ready(lab: &Lab, host: &str, argv: &[&str], ready: &str) -> Result<fpn_lab::Process> {
    let p = lab.spawn(host, argv)?;
    p.wait_for_log(ready, Duration::from_secs(10))?;
    Ok(p)
}

/// A TCP and UDP echo server on [`ECHO_PORT`] in `host`.
pub fn echo_server(lab: &Lab, host: &str) -> Result<fpn_lab::Process> {
    let addr = format!("0.0.0.0:{ECHO_PORT}");
    let lab_bin = bin_lab()?;
    spawn_ready(
        lab,
        host,
        &[&lab_bin, "echo", "serve", "--tcp", &addr, "--udp", &addr],
        "echo: udp",
    )
}

/// One TCP echo of `text` from `host` to `to`; the client address the
/// server saw.
pub fn echo_tcp(lab: &Lab, host: &str, to: SocketAddr, text: &str) -> Result<SocketAddr> {
    let text = text.as_bytes().to_vec();
    let seen = lab.run_in(host, move || {
        fpn_lab::echo::send_tcp(to, &text, Duration::from_secs(5))
    })??;
    Ok(seen)
}

pub fn iperf(lab: &Lab, host: &str, target: &str, secs: u32) -> Result<Value> {
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

/// Mbit/s received in an iperf3 report.
pub fn mbits(report: &Value) -> f64 {
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e6
}

/// Seconds of an iperf3 report in which nothing arrived.
pub fn stalled(report: &Value) -> usize {
    report["intervals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["sum"]["bytes"].as_f64().unwrap_or(0.0) <= 0.0)
        .count()
}

/// Sends `text` three times over one TCP connection from `host` to the
/// echo server at `to` and checks each echo; returns the rounds and the
/// connection's source port. The connection is held for 800 ms before the
/// text goes: a new flow rides QUIC for its first 300 ms (docs/NODE.md), so
/// on a native path the text travels natively.
pub fn marker_transfer(lab: &Lab, host: &str, to: SocketAddr, text: &str) -> Result<(usize, u16)> {
    let text = text.to_owned();
    lab.run_in(host, move || -> Result<(usize, u16)> {
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

/// A UDP datagram every 100 ms from a host to an echo server, recording
/// when each answer came, until stopped (or at most `bound`).
pub struct Probe {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Instant>>>,
    thread: fpn_lab::NetnsThread<()>,
}

impl Probe {
    pub fn start(lab: &Lab, host: &str, to: SocketAddr, bound: Duration) -> Result<Probe> {
        let stop = Arc::new(AtomicBool::new(false));
        let answers: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let (flag, got) = (stop.clone(), answers.clone());
        let thread = lab.thread_in(host, move || {
            let Ok(s) = std::net::UdpSocket::bind("0.0.0.0:0") else {
                return;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
            let end = Instant::now() + bound;
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::SeqCst) && Instant::now() < end {
                // A send may fail (ICMP unreachable) while the path is cut.
                let _ = s.send_to(b"probe", to);
                let sent = Instant::now();
                while sent.elapsed() < Duration::from_millis(100) {
                    if s.recv_from(&mut buf).is_ok() {
                        lock(&got).push(Instant::now());
                    }
                }
            }
        })?;
        Ok(Probe {
            stop,
            answers,
            thread,
        })
    }

    /// When each answer came, so far.
    pub fn answers(&self) -> Vec<Instant> {
        lock(&self.answers).clone()
    }

    /// Waits (at most `bound`) for the first answer after `t`.
    pub fn answer_after(&self, t: Instant, bound: Duration) -> Option<Instant> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(a) = self.answers().into_iter().find(|a| *a > t) {
                return Some(a);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the probe; when each answer came.
    pub fn finish(self) -> Vec<Instant> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join();
        lock(&self.answers).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `node`'s status entry for peer `peer` (by GE name), or null.
pub fn peer_entry(ov: &Overlay, node: &str, peer: &str) -> Result<Value> {
    let st = ov.status(node)?;
    Ok(st["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == peer).cloned())
        .unwrap_or(Value::Null))
}

/// Waits (at most `bound`) until `node` shows `carrier` for `peer`, and,
/// when `candidate` is given, that candidate; returns the status entry.
pub fn wait_path(
    ov: &Overlay,
    node: &str,
    peer: &str,
    carrier: &str,
    candidate: Option<&str>,
    bound: Duration,
) -> Result<Value> {
    let deadline = Instant::now() + bound;
    loop {
        let p = peer_entry(ov, node, peer)?;
        if p["carrier"] == carrier && candidate.is_none_or(|c| p["candidate"] == c) {
            return Ok(p);
        }
        ensure!(
            Instant::now() < deadline,
            "{node} never showed {carrier} {} for {peer} within {bound:?}: {p}",
            candidate.unwrap_or("")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints which path each of `pairs` uses, from the first node's
/// `status --json`.
pub fn print_paths(ov: &Overlay, pairs: &[(&str, &str)]) -> Result<()> {
    for (n, peer) in pairs {
        let p = peer_entry(ov, n, peer)?;
        say(&format!("      {n:<7} -> {peer:<7}  {}", path_words(&p)));
    }
    Ok(())
}

/// A peer's status entry in a few words: carrier, which of the peer's
/// addresses the QUIC connection uses (or why the relay), the address and
/// the RTT.
pub fn path_words(p: &Value) -> String {
    let carrier = str_of(&p["carrier"]);
    let how = match (carrier, str_of(&p["candidate"])) {
        ("relay", _) => str_of(&p["path"]),
        (_, "") if str_of(&p["path"]) != carrier => str_of(&p["path"]),
        (_, c) => c,
    };
    let rtt = p["rtt_ms"]
        .as_f64()
        .map(|r| format!("  rtt {r:.1} ms"))
        .unwrap_or_default();
    format!("{carrier:<6}  {how:<36}  {}{rtt}", str_of(&p["addr"]))
}

pub fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// One of `node`'s status counters.
pub fn counter(ov: &Overlay, node: &str, name: &str) -> Result<u64> {
    Ok(ov.status(node)?["counters"][name].as_u64().unwrap_or(0))
}

/// Current key version of group 1 at the GMS.
pub fn group_version(ov: &Overlay) -> Result<u64> {
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

/// Waits (bounded) until every encrypted flow of `node` with `peer` uses key
/// version `v`; returns how many there are.
pub fn flows_on_version(ov: &Overlay, node: &str, peer: &str, v: u64) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(5);
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
            Instant::now() < deadline,
            "{node}'s flows with {peer} did not move to key version {v}: {versions:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
