//! `fpn-node`: enroll, run, inspect and stop an fpn node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};
use fpn_node::config::NodeConfig;
use fpn_node::control::{self, Request};
use fpn_node::state::StateDir;
use fpn_node::status::{PingReport, Status};

/// fpn node daemon and its control commands.
#[derive(Parser)]
#[command(name = "fpn-node", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enrolls with a token from `fpn-gms token create` and saves the identity.
    ///
    /// The token is a secret until it is spent: prefer `--token-file FILE`
    /// or standard input (`--token-file -`, or no token at all with stdin
    /// not a terminal) over the command line, where `ps` and the shell's
    /// history see it.
    Enroll {
        /// The enrollment token (visible to other users in `ps`; see --token-file).
        #[arg(conflicts_with = "token_file")]
        token: Option<String>,
        /// Read the token from FILE (`-`: standard input).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// State directory (created 0700).
        #[arg(long)]
        state: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Runs the node in the foreground until SIGTERM/SIGINT or `fpn-node down`.
    Up {
        /// State directory (from `enroll`).
        #[arg(long)]
        state: PathBuf,
        /// Configuration file (TOML; see configs/node/node.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Shows the running node's state.
    Status {
        /// State directory of the running node.
        #[arg(long)]
        state: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reports this node's candidates: its local addresses, its reflexive
    /// address as the GMS sees the carrier's socket (asked anew), and what
    /// that says about its NAT.
    Netcheck {
        /// State directory of the running node.
        #[arg(long)]
        state: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pings a peer by name through the overlay.
    Ping {
        /// Short name, FQDN or overlay address.
        name: String,
        /// State directory of the running node.
        #[arg(long)]
        state: PathBuf,
        /// Echo requests to send.
        #[arg(long, default_value_t = 3)]
        count: u32,
        /// ICMPv6 echoes to the peer's IPv6 overlay address (the network's
        /// ULA /48; implied by an IPv6 address as NAME).
        #[arg(short = '6', long)]
        ipv6: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prints a shell completion script to standard output, e.g.
    /// `fpn-node completions bash > /etc/bash_completion.d/fpn-node`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: fpn_clidocs::Shell,
    },
    /// Writes man pages (one per command and subcommand, e.g.
    /// fpn-node-up.1) into a directory, e.g. /usr/local/share/man/man1.
    Man {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Explains which decision rule applies to a flow from this node to a
    /// peer, and why (modes, groups in common, keys held, revoked or
    /// unknown peer, own or non-overlay address). Sends nothing to the
    /// peer: the running node answers from its state, with the same rule
    /// code its negotiations use (it may ask the GMS for the peer's entry).
    Why {
        /// Short name, FQDN or overlay address.
        name: String,
        /// Destination port (default: any).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Protocol of the flow.
        #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp", "icmp"])]
        proto: String,
        /// State directory of the running node.
        #[arg(long)]
        state: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stops the running node. When none runs (it crashed), deletes the
    /// native carrier's nftables table it may have left, so its flows are
    /// not blackholed.
    Down {
        /// State directory of the running node.
        #[arg(long)]
        state: PathBuf,
        /// The node's configuration file (for its TUN name; the default
        /// `fpn0` without it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Up { .. }) {
        // A one-shot command piped into `head` ends quietly, like other
        // Unix tools, instead of failing on a closed stdout. (Not the
        // daemon: a closed log pipe must not kill it.)
        // SAFETY: restoring the default disposition of a signal; no handler runs.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The daemon's configuration, read once: the runtime and the heap are
    // chosen from it before the daemon takes it.
    let (log, threads, tun_workers, up_cfg) = match &cli.cmd {
        Cmd::Up { config, .. } => match NodeConfig::load(config.as_deref()) {
            Ok(c) => {
                let threads = c.runtime_threads_for(cores);
                let tun =
                    fpn_node::daemon::tun_workers(&c, fpn_node::daemon::want_workers(c.workers));
                (c.log.clone(), threads, tun, Some(c))
            }
            Err(e) => {
                eprintln!("fpn-node: {e}");
                return ExitCode::from(2);
            }
        },
        // One-shot commands talk to the daemon: one thread is plenty.
        _ => ("warn".into(), 1, 0, None),
    };
    // For measurements (bench/overlay-ab.sh `threads1`, `threads2`).
    let threads = std::env::var("FPN_NODE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(threads);
    // Before any thread (loading the configuration starts none): an arena
    // made earlier keeps serving its thread.
    let heap = matches!(cli.cmd, Cmd::Up { .. })
        .then(|| fpn_node::heap::tune(fpn_node::heap::one_arena_fits(cores, threads, tun_workers)));
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // An empty RUST_LOG counts as unset (systemd units and tests clear it so).
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok());
    let fixed = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(log));
    // A reload layer, so SIGHUP can change the `log` key's filter live
    // (RUST_LOG, when set, wins for the whole run).
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let set_log: Option<fpn_node::daemon::LogSetter> = (!fixed).then(|| {
        Box::new(move |text: &str| {
            let f = tracing_subscriber::EnvFilter::try_new(text).map_err(|e| e.to_string())?;
            handle.reload(f).map_err(|e| e.to_string())
        }) as fpn_node::daemon::LogSetter
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fpn-node: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if matches!(cli.cmd, Cmd::Up { .. }) {
        tracing::info!(
            threads,
            cores,
            heap = heap.map(|h| h.name()),
            "async runtime"
        );
    }
    let json = wants_json(&cli.cmd);
    match rt.block_on(run(cli.cmd, set_log, up_cfg)) {
        Ok(code) => code,
        Err(e) => {
            let line = fpn_clidocs::one_line(e.chain());
            // Scripts that read --json get the error as JSON on standard
            // output too; people read the line on standard error.
            if json {
                println!("{}", serde_json::json!({ "error": line }));
            }
            eprintln!("fpn-node: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the command was asked for JSON output.
fn wants_json(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Enroll { json, .. }
        | Cmd::Status { json, .. }
        | Cmd::Netcheck { json, .. }
        | Cmd::Ping { json, .. }
        | Cmd::Man { json, .. }
        | Cmd::Why { json, .. } => *json,
        Cmd::Up { .. } | Cmd::Completions { .. } | Cmd::Down { .. } => false,
    }
}

const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest token text read from a file or stdin (a token is about 120 bytes).
const MAX_TOKEN_TEXT: u64 = 4096;

/// The enrollment token: from the command line, from a file, or from
/// standard input (`-`, or nothing given and stdin is not a terminal).
fn read_token(
    arg: Option<String>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<zeroize::Zeroizing<String>> {
    use std::io::{IsTerminal, Read};
    let mut text = zeroize::Zeroizing::new(String::new());
    let from = match (arg, file) {
        (Some(t), _) => {
            *text = t;
            return Ok(text);
        }
        (None, Some(p)) if p != std::path::Path::new("-") => {
            std::fs::File::open(p)
                .and_then(|f| f.take(MAX_TOKEN_TEXT).read_to_string(&mut text))
                .map_err(|e| anyhow::anyhow!("reading the token from {}: {e}", p.display()))?;
            p.display().to_string()
        }
        (None, Some(_)) => {
            std::io::stdin()
                .take(MAX_TOKEN_TEXT)
                .read_to_string(&mut text)
                .map_err(|e| anyhow::anyhow!("reading the token from standard input: {e}"))?;
            "standard input".to_owned()
        }
        (None, None) if !std::io::stdin().is_terminal() => {
            std::io::stdin()
                .take(MAX_TOKEN_TEXT)
                .read_to_string(&mut text)
                .map_err(|e| anyhow::anyhow!("reading the token from standard input: {e}"))?;
            "standard input".to_owned()
        }
        (None, None) => anyhow::bail!(
            "no enrollment token: give --token-file FILE, pipe it on standard input, or pass it as an argument"
        ),
    };
    if text.trim().is_empty() {
        anyhow::bail!("no enrollment token in {from}");
    }
    Ok(text)
}

async fn run(
    cmd: Cmd,
    set_log: Option<fpn_node::daemon::LogSetter>,
    up_cfg: Option<NodeConfig>,
) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Completions { shell } => {
            fpn_clidocs::completions(Cli::command(), shell, &mut std::io::stdout().lock())
                .context("writing the completion script")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { out, json } => {
            let pages = fpn_clidocs::man_pages(Cli::command(), &out)?;
            if json {
                println!("{}", serde_json::json!({ "pages": pages }));
            } else {
                println!("wrote {} man pages to {}", pages.len(), out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Enroll {
            token,
            token_file,
            state,
            json,
        } => {
            let token = read_token(token, token_file.as_deref())?;
            let id = fpn_node::daemon::enroll(&token, &StateDir::new(&state)).await?;
            let cred = fpn_gms_client::verify_from_gms(&id.credential, &id.ca_public)?;
            if json {
                let v = serde_json::json!({
                    "name": cred.info.name,
                    "ge": cred.info.id.0,
                    "overlay": cred.info.overlay.to_string(),
                    "overlay6": cred.overlay6.to_string(),
                    "zone": id.zone,
                    "state": state.display().to_string(),
                });
                println!("{v}");
            } else {
                println!(
                    "enrolled {} (GE {}) overlay {} {} zone {}; identity in {}",
                    cred.info.name,
                    cred.info.id,
                    cred.info.overlay,
                    cred.overlay6,
                    id.zone,
                    state.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Up { state, config } => {
            let cfg = match up_cfg {
                Some(c) => c,
                None => NodeConfig::load(config.as_deref())?,
            };
            let reload = fpn_node::daemon::Reload {
                path: config,
                set_log,
            };
            match fpn_node::daemon::up_with(StateDir::new(state), cfg, reload).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e @ fpn_node::error::Error::Terminated(_)) => {
                    eprintln!("fpn-node: {e}");
                    Ok(ExitCode::from(3))
                }
                Err(e) => Err(e.into()),
            }
        }
        Cmd::Status { state, json } => {
            let r = ask(&state, &Request::Status, CONTROL_TIMEOUT).await?;
            let s = r.status.context("the daemon sent no status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Netcheck { state, json } => {
            let r = ask(&state, &Request::Netcheck, CONTROL_TIMEOUT).await?;
            let n = r.netcheck.context("the daemon sent no netcheck report")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&n)?);
            } else {
                println!("carrier port: {}", n.carrier_port);
                println!("local candidates: {}", n.local.join(" "));
                println!(
                    "reflexive (GMS sees now): {}",
                    n.reflexive.as_deref().unwrap_or("-")
                );
                println!(
                    "reflexive at session start: {}",
                    n.reflexive_at_session_start.as_deref().unwrap_or("-")
                );
                println!("mapping: {}", n.mapping);
                println!("{}", port_mapping_line(&n.port_mapping));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ping {
            name,
            state,
            count,
            ipv6,
            json,
        } => {
            // Each echo may wait a few seconds; the first one negotiates.
            let timeout = Duration::from_secs(10 + 3 * u64::from(count));
            let r = ask(&state, &Request::Ping { name, count, ipv6 }, timeout).await?;
            let p = r.ping.context("the daemon sent no ping report")?;
            if json {
                println!("{}", serde_json::to_string(&p)?);
            } else {
                print_ping(&p);
            }
            Ok(if p.reachable() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Why {
            name,
            port,
            proto,
            state,
            json,
        } => {
            let r = ask(&state, &Request::Why { name, proto, port }, CONTROL_TIMEOUT).await?;
            let w = r.why.context("the daemon sent no explanation")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&w)?);
            } else {
                print_why(&w);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down { state, config } => {
            if let Err(e) = ask(&state, &Request::Down, CONTROL_TIMEOUT).await {
                // No daemon answers: a crashed one may have left its table.
                let cfg = NodeConfig::load(config.as_deref())?;
                let table = fpn_node::native::table_name(&cfg.tun_name);
                let native = fpn_node::native::cleanup(&table).unwrap_or(false);
                if native {
                    eprintln!("no node running; deleted its stale nftables table {table}");
                }
                if fpn_node::native::natf_cleanup(&cfg.tun_name).unwrap_or(false) {
                    eprintln!("no node running; deleted its stale NAT-f gateway table");
                } else if !native {
                    return Err(e);
                }
                return Ok(ExitCode::SUCCESS);
            }
            // Wait until the daemon has exited (it holds the lock to the end,
            // after the TUN is gone), so `up` may follow at once.
            let dir = StateDir::new(&state);
            for _ in 0..200 {
                if dir.lock().is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn ask(
    state: &std::path::Path,
    req: &Request,
    timeout: Duration,
) -> anyhow::Result<control::Response> {
    let path = StateDir::new(state).control_socket();
    let r = control::request(&path, req, timeout).await?;
    if !r.ok {
        bail!("{}", r.error.unwrap_or_else(|| "request failed".into()));
    }
    Ok(r)
}

/// One line on the port mapping: where, through which protocol, or why not.
fn port_mapping_line(pm: &fpn_node::portmap::PortMapStatus) -> String {
    match pm.state.as_str() {
        "mapped" => format!(
            "port mapping: {} via {} at {}, lease {} s",
            pm.external.as_deref().unwrap_or("-"),
            pm.protocol.as_deref().unwrap_or("-"),
            pm.gateway.as_deref().unwrap_or("-"),
            pm.lifetime_secs.unwrap_or(0)
        ),
        other => format!(
            "port mapping: {other}{}",
            pm.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ),
    }
}

fn print_status(s: &Status) {
    match &s.overlay6 {
        Some(v6) => println!("{} (GE {}) overlay {} {v6}", s.name, s.ge, s.overlay),
        None => println!("{} (GE {}) overlay {}", s.name, s.ge, s.overlay),
    }
    println!(
        "GMS: {}, reflexive address {}",
        if s.gms.connected {
            "connected"
        } else {
            "not connected (cached keys)"
        },
        s.gms.reflexive.as_deref().unwrap_or("-")
    );
    let c = &s.credential;
    println!(
        "credential: serial {} expires {} ({}), last renewal {}, {} renewals{}",
        c.serial.map_or("-".into(), |s| s.to_string()),
        c.not_after.map_or("-".into(), |t| t.to_string()),
        match c.expires_in_secs {
            Some(s) if s < 0 => format!("expired {}s ago", -s),
            Some(s) => format!("in {s}s"),
            None => "unknown".into(),
        },
        c.last_renewal.map_or("never".into(), |t| t.to_string()),
        c.renewals,
        c.renewal_refused
            .as_ref()
            .map_or(String::new(), |r| format!(", last refused: {r}")),
    );
    println!("{}", port_mapping_line(&s.port_mapping));
    for g in &s.groups {
        println!("group {}: key versions {:?}", g.group, g.versions);
    }
    println!("peers:");
    for p in &s.peers {
        println!(
            "  {:<16} GE {:<5} {:<6} {:<24} rtt {:<10} path {} {}",
            p.name,
            p.ge,
            p.carrier,
            p.addr.as_deref().unwrap_or("-"),
            p.rtt_ms.map_or("-".into(), |r| format!("{r:.2} ms")),
            p.path,
            if p.candidate.is_empty() {
                String::new()
            } else {
                format!("[{}]", p.candidate)
            }
        );
    }
    println!("flows:");
    for f in &s.flows {
        println!(
            "  {:<5} {}:{} -> {}:{} {:<8} {:<5} out {} pkts/{} B in {} pkts/{} B",
            f.proto,
            f.src,
            f.sport,
            f.dst,
            f.dport,
            f.action,
            f.carrier,
            f.packets_out,
            f.bytes_out,
            f.packets_in,
            f.bytes_in
        );
        if let Some(r) = &f.reason {
            println!("        why: {r}");
        }
        if let Some(n) = &f.natf {
            println!(
                "        NAT-f: host {} via reserved port {} ({}{})",
                n.lan,
                n.port,
                n.role,
                if n.ipv6 {
                    ", sent to the VIN's IPv6 address"
                } else {
                    ""
                }
            );
        }
    }
    if !s.hosts.is_empty() {
        println!("hosts behind gateways:");
        for h in &s.hosts {
            match &h.vin {
                Some(vin) => println!(
                    "  {:<16} {:<15} VIN {vin}{} via GE {}",
                    h.name,
                    h.lan,
                    h.vin6
                        .as_deref()
                        .map(|v| format!(" ({v})"))
                        .unwrap_or_default(),
                    h.gateway
                ),
                None => println!("  {:<16} {:<15} behind this node", h.name, h.lan),
            }
        }
    }
    let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
    // The driver's and the data-path workers' together.
    let both = |k: &str| c(k) + c(&format!("worker_{k}"));
    println!(
        "tun: offloads {} reads {} (gso {}) writes {} (gso {}, {} segments)",
        if s.tun_offloads.is_empty() {
            "-"
        } else {
            &s.tun_offloads
        },
        both("tun_reads"),
        both("tun_gso_reads"),
        both("tun_writes"),
        both("tun_gso_writes"),
        both("tun_coalesced_segments")
    );
    let nonzero: Vec<String> = s
        .counters
        .iter()
        .filter(|(k, v)| **v > 0 && !fpn_node::status::FLOOD_COUNTERS.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("counters: {}", nonzero.join(" "));
    println!("{}", fpn_node::status::flood_line(&s.counters));
    let c = &s.config;
    println!(
        "config: {} log {}{}, {} reloads{}{}",
        if c.path.is_empty() {
            "(defaults)"
        } else {
            &c.path
        },
        c.log,
        if c.log_from_env {
            " (RUST_LOG overrides it)"
        } else {
            ""
        },
        c.reloads,
        c.reload_error
            .as_ref()
            .map_or(String::new(), |e| format!(", last reload refused: {e}")),
        if c.restart_pending.is_empty() {
            String::new()
        } else {
            format!(", restart pending for {}", c.restart_pending.join(" "))
        }
    );
}

fn print_why(w: &fpn_node::status::WhyReport) {
    let port = if w.port == 0 {
        String::new()
    } else {
        format!(" port {}", w.port)
    };
    println!(
        "{} ({}) {}{port}: {} [{}]",
        w.target, w.address, w.proto, w.action, w.rule
    );
    println!("  {}", w.reason);
    let ge = |g: &fpn_node::status::WhyGe| {
        let groups: Vec<String> = g.groups.iter().map(u32::to_string).collect();
        let mut s = format!(
            "{} (GE {}) {} groups [{}]",
            if g.name.is_empty() { "?" } else { &g.name },
            g.ge,
            if g.mode.is_empty() { "?" } else { &g.mode },
            groups.join(" ")
        );
        if let Some(k) = &g.keys {
            let keys: Vec<String> = k.iter().map(u32::to_string).collect();
            s.push_str(&format!(" keys [{}]", keys.join(" ")));
        }
        s
    };
    println!("  this node: {}", ge(&w.own));
    if let Some(p) = &w.peer {
        println!("  peer:      {}", ge(p));
    }
    if let Some(c) = &w.current {
        println!("  live flow: {c}");
    }
    if let Some(r) = &w.refused {
        println!("  last refused: {r}");
    }
}

fn print_ping(p: &PingReport) {
    let rtts: Vec<String> = p.rtt_ms.iter().map(|r| format!("{r:.3} ms")).collect();
    println!(
        "{} ({}): action {}, carrier {}, path {}, {}/{} answered{}{}",
        p.name,
        p.address,
        p.action,
        if p.carrier.is_empty() {
            "-"
        } else {
            &p.carrier
        },
        if p.path.is_empty() { "-" } else { &p.path },
        p.rtt_ms.len(),
        p.sent,
        if rtts.is_empty() { "" } else { ", rtt " },
        rtts.join(" ")
    );
}
