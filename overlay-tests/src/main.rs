//! `fpn-lab`: build, use and remove network-namespace labs from a shell.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use fpn_lab::{Lab, LabOptions, LabState, Topology, naming, state};

/// Network-namespace labs for fpn: hosts, links, switches, routers and NATs
/// (RFC 4787 kinds, port mapping with miniupnpd) from a TOML topology (see
/// docs/LAB.md and configs/lab/).
///
/// Needs root. Labs live until `fpn-lab down`; their state is in
/// /run/fpn-lab (FPN_LAB_STATE_DIR), their namespaces are named
/// fpnlab-ID-HOST (prefix from FPN_LAB_PREFIX).
#[derive(Parser, Debug)]
#[command(name = "fpn-lab", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

const EXAMPLES: &str = "\
Examples:
  fpn-lab up configs/lab/nat-home.toml        # prints the lab id and names
  fpn-lab exec laptop -- ping -c1 198.18.1.10  # run in a host of the only lab
  fpn-lab spawn vps -- iperf3 -s               # background, logged, killed on down
  fpn-lab roam laptop homelan cafelan          # move the laptop to the cafe
  fpn-lab up configs/lab/nat-matrix-adm.toml   # two homes behind chosen NAT kinds
  fpn-lab exec b -- fpn-lab echo whoami --udp --bind 0.0.0.0:5000 \\
      198.18.1.10:7000 198.18.1.11:7000        # one port or two: the NAT's mapping
  fpn-lab spawn a -- fpn-lab echo serve --udp 0.0.0.0:6000 --open 198.18.1.10:7000
                                               # open a mapping; who may now send to it?
  fpn-lab nat gwb --set 'mapping = \"endpoint-independent\"'
                                               # change a NAT at runtime; shows its bindings
  fpn-lab down                                 # remove the only lab
  fpn-lab down --all                           # remove every lab, also crashed ones";

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build the topology in FILE, start its services, print the lab id and
    /// the mapping from topology names to namespaces and interfaces.
    Up {
        /// Topology file (TOML).
        file: PathBuf,
        /// Print the lab state as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Use this lab id instead of a random one (a-z, 0-9, up to 12).
        #[arg(long)]
        id: Option<String>,
    },
    /// Run a command in a host (stdin, stdout and exit status are the command's).
    Exec {
        /// Lab id (default: the only running lab).
        #[arg(long)]
        lab: Option<String>,
        /// Host name from the topology.
        host: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Start a background command in a host; it is logged and killed on `down`.
    Spawn {
        /// Lab id (default: the only running lab).
        #[arg(long)]
        lab: Option<String>,
        /// Name for the log file (default: the program name).
        #[arg(long)]
        name: Option<String>,
        /// Host name from the topology.
        host: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Remove a lab: kill its processes, delete its namespaces and state.
    Down {
        /// Lab id (default: the only running lab).
        id: Option<String>,
        /// Remove every lab with this prefix, including namespaces left by
        /// crashed runs that have no state file.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// List running labs (and namespaces that belong to no known lab).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a host's addresses on a link.
    Addr {
        /// Lab id (default: the only running lab).
        #[arg(long)]
        lab: Option<String>,
        /// Host name.
        host: String,
        /// Link name.
        link: String,
        /// Print only the first address, without prefix length.
        #[arg(long, short = '1')]
        first: bool,
    },
    /// Attach a host to a switch (with the topology's addresses and gateway).
    Attach {
        /// Lab id (default: the only running lab).
        #[arg(long)]
        lab: Option<String>,
        /// Host name.
        host: String,
        /// Switch (link) name.
        link: String,
    },
    /// Detach a host from a switch.
    Detach {
        /// Lab id (default: the only running lab).
        #[arg(long)]
        lab: Option<String>,
        /// Host name.
        host: String,
        /// Switch (link) name.
        link: String,
    },
    /// Move a host from one switch to another (detach, then attach).
    Roam {
        /// Lab id (default: the only running lab).
        #[arg(long)]
        lab: Option<String>,
        /// Host name.
        host: String,
        /// Switch it leaves.
        from: String,
        /// Switch it joins.
        to: String,
    },
    /// Show a NAT router's behaviour and its nftables (bindings included), or
    /// change it while the lab runs (`--set`).
    Nat {
        /// Lab id (default: the only running lab).
        #[arg(long)]
        lab: Option<String>,
        /// Router (a host with `nat`).
        host: String,
        /// Keys to change, as inside the topology's inline table, e.g.
        /// 'mapping = "endpoint-independent", filtering = "address-dependent"'.
        /// Keys not given keep their value. New flows get the new behaviour;
        /// existing flows keep their mappings.
        #[arg(long)]
        set: Option<String>,
        /// Print JSON: the NAT's keys and `nft -j` of its table.
        #[arg(long)]
        json: bool,
    },
    /// Check a topology file without building it (no root needed).
    Check {
        /// Topology file (TOML).
        file: PathBuf,
    },
    /// A TCP/UDP echo that tells clients the address it sees them from.
    #[command(subcommand)]
    Echo(EchoCmd),
    /// A timestamped record stream over one TCP connection (a handover
    /// measure: a move shows up as a gap in the arrivals).
    #[command(subcommand)]
    Records(RecordsCmd),
    /// A small static HTTP server for hosts that run no fpn software
    /// (`GET /whoami` answers the client's address as the server sees it).
    Http {
        /// TCP address to listen on, e.g. 0.0.0.0:80.
        #[arg(long)]
        listen: SocketAddr,
        /// Directory whose files are served (`/` is index.html).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: fpn_clidocs::Shell,
    },
    /// Write man pages (one per command and subcommand) into a directory.
    Man {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum RecordsCmd {
    /// Connect and send a 16-byte record (sequence number, send time)
    /// every interval; exits non-zero if the connection breaks.
    Send {
        /// Receiver, ADDRESS:PORT.
        to: SocketAddr,
        /// Milliseconds between records.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// Records to send.
        #[arg(long, default_value_t = 1000)]
        count: u64,
    },
    /// Accept one connection and note when each record arrived; writes
    /// JSON (`{"arrivals":[{"seq","sent_ns","recv_ns"}],"connections",
    /// "error"}`) to --out when the sender closes, --count arrived or
    /// --timeout passed.
    Recv {
        /// TCP address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Stop after this many records.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// Where to write the JSON.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum EchoCmd {
    /// Serve on the given addresses until killed.
    Serve {
        /// TCP address to listen on, e.g. 0.0.0.0:7000 (repeatable).
        #[arg(long)]
        tcp: Vec<SocketAddr>,
        /// UDP address to listen on (repeatable).
        #[arg(long)]
        udp: Vec<SocketAddr>,
        /// Before serving, open a NAT mapping for the (single) --udp socket
        /// by asking this echo server outside who it is; prints
        /// `mapped ADDRESS:PORT`. Others can then try to reach that address
        /// (`echo send --udp`), which is what a NAT's filtering decides.
        #[arg(long, requires = "udp")]
        open: Option<SocketAddr>,
        /// With --open: send a keepalive to that server every SECS seconds
        /// so the mapping outlives the NAT's UDP timeout.
        #[arg(long, requires = "open")]
        keepalive: Option<f64>,
    },
    /// Send a message and check that it comes back; prints the server's
    /// address (resolved), then the client address the server saw. The
    /// server may be a name (HOST:PORT), resolved with the host's resolv.conf.
    Send {
        /// Server, ADDRESS:PORT or NAME:PORT.
        server: String,
        /// The bytes to send (e.g. a marker a capture looks for).
        #[arg(long)]
        message: String,
        /// Use UDP (one datagram per try) instead of TCP.
        #[arg(long)]
        udp: bool,
        /// UDP: datagrams to send before giving up (1 = exactly one).
        #[arg(long, default_value_t = 3)]
        tries: u32,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
    /// Ask servers which address they see; prints one ADDRESS:PORT line per
    /// server. Over UDP every server is asked from the same socket, so the
    /// lines show a NAT's mapping behaviour: one port for all servers
    /// (endpoint-independent) or one per server.
    Whoami {
        /// Server addresses.
        #[arg(required = true)]
        servers: Vec<SocketAddr>,
        /// UDP only: bind the socket to this address (e.g. 0.0.0.0:5000,
        /// to see whether a NAT keeps the port).
        #[arg(long, requires = "udp")]
        bind: Option<SocketAddr>,
        /// Use UDP instead of TCP.
        #[arg(long)]
        udp: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fpn-lab: error: {}", fpn_clidocs::one_line(e.chain()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = state::state_dir();
    match cli.cmd {
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            fpn_clidocs::completions(Cli::command(), shell, &mut std::io::stdout().lock())
                .context("writing the completion script")?;
        }
        Cmd::Man { out } => {
            use clap::CommandFactory;
            let pages = fpn_clidocs::man_pages(Cli::command(), &out)?;
            println!("wrote {} man pages to {}", pages.len(), out.display());
        }
        Cmd::Up { file, json, id } => {
            let opts = LabOptions {
                id,
                persistent: true,
                ..LabOptions::default()
            };
            let lab = opts.up_file(&file)?;
            let st = lab.persist()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_lab(&st);
            }
        }
        Cmd::Exec { lab, host, cmd } => {
            let st = LabState::resolve(&dir, lab.as_deref())?;
            let ns = st.netns(&host)?;
            let ip = fpn_lab::find_tool("ip")?;
            let err = std::process::Command::new(ip)
                .args(["netns", "exec", ns])
                .args(&cmd)
                .env("FPN_LAB_ID", &st.id)
                .env("FPN_LAB_HOST", &host)
                .exec();
            bail!("running {:?} in {host}: {err}", cmd.join(" "));
        }
        Cmd::Spawn {
            lab,
            name,
            host,
            cmd,
        } => {
            let lab = Lab::open_in(&dir, lab.as_deref())?;
            let mut c = lab.command(&host, &cmd);
            if let Some(n) = &name {
                c = c.name(n);
            }
            let p = c.spawn()?;
            println!("pid {} log {}", p.pid(), p.log_path().display());
            p.release();
        }
        Cmd::Down { id, all } => {
            if all {
                let prefix = naming::prefix_from_env()?;
                let removed = state::down_all(&dir, &prefix)?;
                println!("removed {} namespaces", removed.len());
            } else {
                let st = LabState::resolve(&dir, id.as_deref())?;
                state::down(&dir, &st.id)?;
                println!("lab {} removed", st.id);
            }
        }
        Cmd::List { json } => list(&dir, json)?,
        Cmd::Addr {
            lab,
            host,
            link,
            first,
        } => {
            let st = LabState::resolve(&dir, lab.as_deref())?;
            let addrs = &st.end(&host, &link)?.addrs;
            if addrs.is_empty() {
                bail!("host {host} has no address on {link}");
            }
            if first {
                println!("{}", addrs[0].addr());
            } else {
                for a in addrs {
                    println!("{a}");
                }
            }
        }
        Cmd::Attach { lab, host, link } => {
            Lab::open_in(&dir, lab.as_deref())?.attach(&host, &link)?
        }
        Cmd::Detach { lab, host, link } => {
            Lab::open_in(&dir, lab.as_deref())?.detach(&host, &link)?
        }
        Cmd::Roam {
            lab,
            host,
            from,
            to,
        } => {
            let lab = Lab::open_in(&dir, lab.as_deref())?;
            lab.roam(&host, &from, &to)?;
            let now = lab.addrs(&host, &to)?;
            let shown: Vec<String> = now.iter().map(|a| a.to_string()).collect();
            println!("{host} now on {to}: {}", shown.join(", "));
        }
        Cmd::Nat {
            lab,
            host,
            set,
            json,
        } => nat(&dir, lab.as_deref(), &host, set.as_deref(), json)?,
        Cmd::Check { file } => {
            let t = Topology::from_file(&file)?;
            println!(
                "{}: ok, {} hosts, {} links ({} switches)",
                file.display(),
                t.hosts.len(),
                t.links.len(),
                t.links.iter().filter(|l| l.is_switch()).count()
            );
        }
        Cmd::Echo(e) => echo(e)?,
        Cmd::Records(r) => records(r)?,
        Cmd::Http { listen, dir } => fpn_lab::http::serve(listen, &dir)?,
    }
    Ok(())
}

/// `fpn-lab nat`: show (and with `set`, first change) a router's NAT.
fn nat(
    dir: &std::path::Path,
    lab: Option<&str>,
    host: &str,
    set: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let lab = Lab::open_in(dir, lab)?;
    let Some(current) = lab.nat(host)? else {
        bail!("host {host} has no nat");
    };
    let now = match set {
        Some(keys) => {
            // Merge the given keys over the current ones.
            let mut table = toml::Value::try_from(&current)?;
            let given: toml::Table =
                toml::from_str(&format!("nat = {{ {keys} }}")).with_context(|| {
                    format!("--set {keys:?} is not the inside of a TOML inline table")
                })?;
            if let (Some(t), Some(toml::Value::Table(g))) = (table.as_table_mut(), given.get("nat"))
            {
                for (k, v) in g {
                    t.insert(k.clone(), v.clone());
                }
            }
            let new: fpn_lab::topology::Nat = table.try_into().context("--set")?;
            lab.set_nat(host, new.clone())?;
            new
        }
        None => current,
    };
    let nft = fpn_lab::find_tool("nft")?;
    let nft = nft.to_string_lossy();
    if json {
        let out = lab.exec_ok(
            host,
            [nft.as_ref(), "-j", "list", "table", "ip", "fpnlab_nat"],
        )?;
        let rules: serde_json::Value = serde_json::from_str(&out).context("nft -j output")?;
        let v = serde_json::json!({ "host": host, "nat": now, "nftables": rules });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let keys = toml::to_string(&now)?;
        println!("{host}: nat\n{}", keys.trim_end());
        print!(
            "{}",
            lab.exec_ok(host, [nft.as_ref(), "list", "table", "ip", "fpnlab_nat"])?
        );
    }
    Ok(())
}

fn print_lab(st: &LabState) {
    let desc = st.topology.description.as_deref().unwrap_or("");
    let src = st
        .source
        .as_ref()
        .map(|p| format!(" ({})", p.display()))
        .unwrap_or_default();
    println!("lab {} up: {desc}{src}", st.id);
    println!("  {:<10} {:<28} interfaces", "host", "namespace");
    for (host, ns) in &st.hosts {
        let ifaces: Vec<String> = st
            .ends
            .get(host)
            .into_iter()
            .flatten()
            .map(|(link, e)| {
                let addrs: Vec<String> = e.addrs.iter().map(|a| a.to_string()).collect();
                let state = if e.attached { "" } else { ", detached" };
                let addrs = if addrs.is_empty() {
                    String::new()
                } else {
                    format!(" {}", addrs.join(" "))
                };
                format!("{}{addrs} ({link}{state})", e.ifname)
            })
            .collect();
        println!("  {host:<10} {ns:<28} {}", ifaces.join(", "));
    }
    for (link, ns) in &st.switches {
        println!("  {:<10} {ns:<28} switch {link}", format!("[{link}]"));
    }
    println!("logs: {}", st.log_dir.display());
    println!(
        "run: fpn-lab exec --lab {} HOST -- CMD    remove: fpn-lab down {}",
        st.id, st.id
    );
}

fn list(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let labs = LabState::list(dir);
    let prefix = naming::prefix_from_env()?;
    let known: Vec<String> = labs.iter().flat_map(|l| l.namespaces()).collect();
    let orphans: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|ns| naming::parse_netns(&prefix, ns).is_some() && !known.contains(ns))
        .collect();
    if json {
        let v = serde_json::json!({ "labs": labs, "orphan_namespaces": orphans });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if labs.is_empty() && orphans.is_empty() {
        println!("no labs");
    }
    for l in &labs {
        let owner = match l.owner_pid {
            None => "fpn-lab up".to_string(),
            Some(p) if l.owner_alive() => format!("process {p}"),
            Some(p) => format!("process {p} (dead: remove with fpn-lab down {})", l.id),
        };
        let src = l
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        println!("{}  {} hosts  {}  owner: {owner}", l.id, l.hosts.len(), src);
    }
    for ns in &orphans {
        println!("orphan namespace {ns} (remove with fpn-lab down --all)");
    }
    Ok(())
}

fn records(cmd: RecordsCmd) -> anyhow::Result<()> {
    match cmd {
        RecordsCmd::Send {
            to,
            interval_ms,
            count,
        } => {
            if !(1..=60_000).contains(&interval_ms) || count > 1_000_000 {
                bail!("--interval-ms must be in 1..=60000 and --count at most 1000000");
            }
            fpn_lab::records::send(to, Duration::from_millis(interval_ms), count)?;
            println!("records: sent {count}");
        }
        RecordsCmd::Recv {
            listen,
            count,
            timeout,
            out,
        } => {
            if !(timeout > 0.0 && timeout <= 3600.0) {
                bail!("--timeout must be in (0, 3600] seconds");
            }
            let l = std::net::TcpListener::bind(listen)
                .with_context(|| format!("binding TCP {listen}"))?;
            println!("records: listening on {listen}");
            let r = fpn_lab::records::receive(l, count, Duration::from_secs_f64(timeout));
            std::fs::write(&out, serde_json::to_vec(&r)?)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("records: received {}", r.arrivals.len());
        }
    }
    Ok(())
}

fn echo(cmd: EchoCmd) -> anyhow::Result<()> {
    match cmd {
        EchoCmd::Serve {
            tcp,
            udp,
            open,
            keepalive,
        } => {
            if tcp.is_empty() && udp.is_empty() {
                bail!("give at least one --tcp or --udp address");
            }
            if open.is_some() && udp.len() != 1 {
                bail!("--open needs exactly one --udp address");
            }
            let keepalive = match keepalive {
                Some(s) if !(s > 0.0 && s <= 3600.0) => {
                    bail!("--keepalive must be in (0, 3600] seconds")
                }
                s => s.map(Duration::from_secs_f64),
            };
            let mut threads = Vec::new();
            for a in tcp {
                let l =
                    std::net::TcpListener::bind(a).with_context(|| format!("binding TCP {a}"))?;
                println!("echo: tcp {a}");
                threads.push(std::thread::spawn(move || fpn_lab::echo::serve_tcp(l)));
            }
            for a in udp {
                let s = std::net::UdpSocket::bind(a).with_context(|| format!("binding UDP {a}"))?;
                if let Some(opener) = open {
                    let (mapped, t) = fpn_lab::echo::serve_udp_opened(
                        s,
                        opener,
                        keepalive,
                        Duration::from_secs(5),
                    )?;
                    println!("mapped {mapped}");
                    threads.push(t);
                } else {
                    threads.push(std::thread::spawn(move || fpn_lab::echo::serve_udp(s)));
                }
                println!("echo: udp {a}");
            }
            for t in threads {
                match t.join() {
                    Ok(r) => r?,
                    Err(_) => bail!("an echo thread panicked"),
                }
            }
        }
        EchoCmd::Send {
            server,
            message,
            udp,
            tries,
            timeout,
        } => {
            if !(timeout > 0.0 && timeout <= 600.0) {
                bail!("--timeout must be in (0, 600] seconds");
            }
            let t = Duration::from_secs_f64(timeout);
            // A name's IPv4 address first (what the tests mean by a name);
            // an IPv6 literal, or a name with only AAAA, as it is.
            let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&server)
                .with_context(|| format!("resolving {server}"))?
                .collect();
            let addr = addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(addrs.first())
                .copied()
                .with_context(|| format!("{server} has no address"))?;
            let seen = if udp {
                fpn_lab::echo::send_udp(addr, message.as_bytes(), tries, t)?
            } else {
                fpn_lab::echo::send_tcp(addr, message.as_bytes(), t)?
            };
            println!("{addr} {seen}");
        }
        EchoCmd::Whoami {
            servers,
            bind,
            udp,
            timeout,
        } => {
            if !(timeout > 0.0 && timeout <= 600.0) {
                bail!("--timeout must be in (0, 600] seconds");
            }
            let t = Duration::from_secs_f64(timeout);
            if udp {
                let any: SocketAddr = if servers[0].is_ipv6() {
                    SocketAddr::from(([0u16; 8], 0))
                } else {
                    SocketAddr::from(([0, 0, 0, 0], 0))
                };
                let local = bind.unwrap_or(any);
                let s = std::net::UdpSocket::bind(local)
                    .with_context(|| format!("binding UDP {local}"))?;
                for server in servers {
                    println!("{}", fpn_lab::echo::whoami_udp_on(&s, server, t)?);
                }
                return Ok(());
            }
            for server in servers {
                println!("{}", fpn_lab::echo::whoami_tcp(server, t)?);
            }
        }
    }
    Ok(())
}
