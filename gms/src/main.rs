//! `fpn-gms`: run the Group Management Server and administer it.

mod cli_output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};
use fpn_gms::admin::{self, AdminRequest};
use fpn_gms::config::Config;
use fpn_gms::config::{DataDir, OverlayRange};
use fpn_gms::dns::InProcessDns;
use fpn_gms::schedule::{Schedule, parse_duration};
use fpn_gms::server::{self, InitOptions, NoDirectoryHook};

/// How long the CLI waits for the server's answer (a change includes a disk flush).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// fpn Group Management Server.
#[derive(Debug, Parser)]
#[command(name = "fpn-gms", version, about)]
struct Cli {
    /// The data directory (config, CA, store, admin socket).
    #[arg(long, global = true, env = "FPN_GMS_DATA")]
    data: Option<PathBuf>,
    /// Print the server's answer as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a data directory: config, CA (key 0600), server certificate, store.
    Init {
        /// The network's DNS zone, e.g. home.fpn.
        #[arg(long)]
        zone: String,
        /// QUIC listen address.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// host:port nodes use to reach this GMS (goes into tokens).
        #[arg(long)]
        public_addr: Option<String>,
        /// Overlay address range, e.g. 100.64.0.0/16.
        #[arg(long)]
        overlay_range: Option<OverlayRange>,
        /// daily@HH:MM (local time), every:DURATION or off.
        #[arg(long)]
        rotation_schedule: Option<Schedule>,
        /// How long a previous key version stays valid after a rotation, e.g. 10m.
        #[arg(long, value_parser = parse_duration)]
        grace: Option<Duration>,
        /// Lifetime of node certificates and credentials (renewed by nodes
        /// at about half of it), e.g. 24h.
        #[arg(long, value_parser = parse_duration)]
        credential_lifetime: Option<Duration>,
        /// Where the in-process DNS answers, UDP and TCP (repeatable; default:
        /// the listen IP, port 53).
        #[arg(long = "dns-listen", value_name = "ADDR:PORT")]
        dns_listen: Vec<std::net::SocketAddr>,
        /// Do not run the DNS for the zone inside `serve`.
        #[arg(long, conflicts_with = "dns_listen")]
        no_dns: bool,
        /// The zone's name server as a parent zone delegates to it: a name
        /// inside the zone (`ns1`, published with glue from --ns-addr) or
        /// outside it (`vps.example.org.`, no glue). Default: the host of
        /// --public-addr if it is a name, else `ns1`.
        #[arg(long, value_name = "NAME")]
        ns_name: Option<String>,
        /// Glue address (A/AAAA) of an in-zone --ns-name (repeatable).
        /// Default: the IP of --public-addr.
        #[arg(long = "ns-addr", value_name = "IP")]
        ns_addrs: Vec<std::net::IpAddr>,
    },
    /// Run the server (and, unless turned off, the zone's DNS in-process).
    Serve {
        /// Where the DNS answers this time (overrides `[dns] listen`; repeatable).
        #[arg(long = "dns-listen", value_name = "ADDR:PORT")]
        dns_listen: Vec<std::net::SocketAddr>,
        /// Run without the DNS this time.
        #[arg(long, conflicts_with = "dns_listen")]
        no_dns: bool,
    },
    /// Write a certificate for a standalone relay (`fpn-relay serve
    /// --certs OUT`): relay.crt and relay.key (0600), signed by this GMS's
    /// CA, and ca.crt. Copy OUT to the relay's host; then set
    /// `[relay] enabled = false` and `public_addr = "HOST:PORT"` in
    /// gms.toml so nodes are told to use it. Needs the CA key, so run it
    /// on the GMS's host.
    RelayCert {
        /// Directory to create (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Show the server's status.
    Status,
    /// Groups.
    #[command(subcommand)]
    Group(GroupCmd),
    /// GEs (nodes).
    #[command(subcommand)]
    Ge(GeCmd),
    /// Hosts behind a gateway: machines on a gateway's LAN that run no fpn
    /// software (a NAS, a printer), reachable by name through the gateway.
    ///
    /// A host behind a gateway is a machine on the LAN of a gateway GE (kind
    /// gen, or gea for a single server) that runs no fpn software: a NAS, a
    /// printer, a camera. The DNS publishes its name with the gateway's
    /// public address (A/AAAA) and its LAN address (LIP record); nodes in
    /// its groups learn it from the GMS and reach it by name through the
    /// gateway, which answers for it with its own credential and group keys.
    /// So each LAN address must lie inside a prefix the gateway protects
    /// (`fpn-gms ge set GW --protect PREFIX`), and the host's groups must be
    /// among the gateway's. A gateway with hosts cannot be removed (remove
    /// the hosts first); revoking it withdraws their DNS records.
    #[command(subcommand)]
    Host(HostCmd),
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Rotate one group's key, or all.
    Rotate {
        /// The group; all groups when absent.
        #[arg(long)]
        group: Option<u32>,
    },
    /// Key versions and ages (key bytes are never printed).
    Keys,
    /// Print a shell completion script to standard output, e.g.
    /// `fpn-gms completions bash > /etc/bash_completion.d/fpn-gms`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: fpn_clidocs::Shell,
    },
    /// Write man pages (one per command and subcommand, e.g.
    /// fpn-gms-ge-add.1) into a directory, e.g. /usr/local/share/man/man1.
    Man {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Users of the web admin (`[web]` in gms.toml): password hashes
    /// (Argon2id) in DATA/web-users, 0600. Works whether or not the server
    /// runs; a running server reads the file at each login.
    #[command(subcommand)]
    AdminUser(AdminUserCmd),
    /// The audit log of admin actions.
    Audit {
        /// Entries after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCmd {
    /// Add a group (its first key is created at once).
    Add {
        /// Group number (lower numbers win when GEs share several).
        num: u32,
        /// Group name (a label only); default `gNUM`.
        #[arg(long)]
        name: Option<String>,
    },
    /// List groups.
    List,
    /// Remove a group without members.
    Remove {
        /// Group number.
        num: u32,
    },
    /// Rename a group (a label only: nodes know groups by number).
    Rename {
        /// Group number.
        num: u32,
        /// New name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum GeCmd {
    /// Add a GE.
    Add {
        /// Name (one DNS label).
        name: String,
        /// ges, gen or gea. Default: gen when a --protect prefix is a
        /// subnet (only gateways protect subnets), else ges.
        #[arg(long)]
        kind: Option<String>,
        /// op or cl. Default: cl for a gateway (the hosts behind it cannot
        /// refuse anything themselves), op for a ges (as in the papers).
        #[arg(long)]
        mode: Option<String>,
        /// Group membership (repeat for several). A group that does not
        /// exist yet is created with it (named gN, with a fresh key).
        #[arg(long = "group")]
        groups: Vec<u32>,
        /// A prefix the GE speaks for besides its overlay address: for a
        /// gateway the hosts behind it (e.g. 192.168.1.0/24), for a GES its
        /// own real address (ADDRESS/32, the real-address plane). Repeat for
        /// several, IPv4 or IPv6. Its credential names them.
        #[arg(long = "protect", value_name = "PREFIX")]
        protect: Vec<String>,
    },
    /// List GEs.
    List,
    /// Show one GE.
    Show {
        /// Name.
        name: String,
    },
    /// Change a GE's kind, mode, groups or protected prefixes.
    Set {
        /// Name.
        name: String,
        /// New kind.
        #[arg(long)]
        kind: Option<String>,
        /// New mode.
        #[arg(long)]
        mode: Option<String>,
        /// Replace the groups with these (repeat for several).
        #[arg(long = "group")]
        groups: Vec<u32>,
        /// Leave every group.
        #[arg(long, conflicts_with = "groups")]
        no_groups: bool,
        /// Join a group (repeatable).
        #[arg(long = "add-group")]
        add_groups: Vec<u32>,
        /// Leave a group (repeatable); the group's key rotates at once.
        #[arg(long = "remove-group")]
        remove_groups: Vec<u32>,
        /// Replace the protected prefixes with these (repeat for several);
        /// the credential is re-issued.
        #[arg(long = "protect", value_name = "PREFIX")]
        protect: Vec<String>,
        /// Protect no prefix any more.
        #[arg(long, conflicts_with = "protect")]
        no_protect: bool,
    },
    /// Remove a GE (revokes it first).
    Remove {
        /// Name.
        name: String,
    },
    /// Revoke a GE: close its sessions, refuse it, rotate its groups, tell every node.
    Revoke {
        /// Name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum HostCmd {
    /// Put a host behind a gateway.
    Add {
        /// Name (one DNS label; GEs and hosts share the zone's names).
        name: String,
        /// The gateway GE (kind gen or gea) in front of it.
        #[arg(long, value_name = "GATEWAY")]
        via: String,
        /// Its address on the gateway's LAN, inside a prefix the gateway
        /// protects (repeat for several, IPv4 or IPv6).
        #[arg(long = "lan", value_name = "ADDR", required = true)]
        lan: Vec<String>,
        /// A group whose members may reach it (repeat for several); the
        /// gateway's groups when none is given. Each must be one of the
        /// gateway's groups.
        #[arg(long = "group")]
        groups: Vec<u32>,
    },
    /// List the hosts behind gateways.
    List,
    /// Show one host.
    Show {
        /// Name.
        name: String,
    },
    /// Change a host's LAN addresses or groups.
    Set {
        /// Name.
        name: String,
        /// Replace the LAN addresses with these (repeat for several).
        #[arg(long = "lan", value_name = "ADDR")]
        lan: Vec<String>,
        /// Replace the groups with these (repeat for several).
        #[arg(long = "group")]
        groups: Vec<u32>,
        /// Go back to the gateway's groups.
        #[arg(long, conflicts_with = "groups")]
        gateway_groups: bool,
    },
    /// Remove a host: its DNS records go and the nodes forget it.
    Remove {
        /// Name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum AdminUserCmd {
    /// Create a user or set its password, read from the first line of
    /// standard input (e.g. `read -rs P; printf '%s\n' "$P" | fpn-gms
    /// admin-user set alice`), at least 12 characters.
    Set {
        /// User name (letters, digits, '-', '_', '.').
        name: String,
    },
    /// Remove a user (its open sessions end at their next request).
    Remove {
        /// User name.
        name: String,
    },
    /// List the user names.
    List,
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Create a one-time enrollment token for a GE.
    Create {
        /// GE name.
        name: String,
        /// Lifetime, e.g. 1h (default from gms.toml).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// List the tokens not used yet (ids only, never the secret).
    List,
    /// Cancel an unused token so it can no longer enroll.
    Cancel {
        /// Token id (hex, from `token list`).
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the whole cause chain joined.
            let line = fpn_clidocs::one_line(e.chain());
            // Scripts that read --json get the error as JSON on standard
            // output too; people read the line on standard error.
            if json {
                println!("{}", serde_json::json!({ "error": line }));
            }
            eprintln!("fpn-gms: error: {line}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data = cli.data.clone();
    let need_data = || {
        data.clone().context(
            "no data directory: give --data DIR or set FPN_GMS_DATA (the directory \
             `fpn-gms init --data DIR --zone ZONE` created, e.g. /var/lib/fpn-gms)",
        )
    };
    let req = match cli.cmd {
        Cmd::Completions { shell } => {
            fpn_clidocs::completions(Cli::command(), shell, &mut std::io::stdout().lock())
                .context("writing the completion script")?;
            return Ok(());
        }
        Cmd::Man { out } => {
            let pages = fpn_clidocs::man_pages(Cli::command(), &out)?;
            if cli.json {
                println!("{}", serde_json::json!({ "pages": pages }));
            } else {
                println!("wrote {} man pages to {}", pages.len(), out.display());
            }
            return Ok(());
        }
        Cmd::Init {
            zone,
            listen,
            public_addr,
            overlay_range,
            rotation_schedule,
            grace,
            credential_lifetime,
            dns_listen,
            no_dns,
            ns_name,
            ns_addrs,
        } => {
            let dir = need_data()?;
            let dns = fpn_gms::config::DnsSettings {
                enabled: !no_dns,
                listen: dns_listen,
                ns_name,
                ns_addrs,
                ..Default::default()
            };
            let fp = server::init(&InitOptions {
                data: dir.clone(),
                zone,
                listen,
                public_addr,
                overlay_range,
                rotation_schedule,
                grace,
                credential_lifetime,
                dns: Some(dns),
            })?;
            // The IPv6 overlay prefix follows from the CA key drawn just now.
            let ca = fpn_gms::ca::Ca::load(&DataDir::new(&dir))?;
            let overlay6 = fpn_proto::overlay6::Overlay6::of_ca(&ca.public_key());
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "data": dir, "ca_fingerprint": fp, "overlay6": overlay6.to_string() })
                );
            } else {
                println!(
                    "initialized {}; CA fingerprint {fp}; IPv6 overlay {overlay6}",
                    dir.display()
                );
            }
            return Ok(());
        }
        Cmd::RelayCert { out } => {
            let dir = DataDir::new(need_data()?);
            dir.check_initialized()?;
            let ca = fpn_gms::ca::Ca::load(&dir)?;
            let (cert, key) = ca.issue_relay_cert(fpn_gms::now_unix())?;
            std::fs::create_dir(&out).with_context(|| format!("creating {}", out.display()))?;
            fpn_gms::fsutil::write_new(&out.join("relay.crt"), &cert, 0o644)?;
            fpn_gms::fsutil::write_new(&out.join("relay.key"), &key, 0o600)?;
            fpn_gms::fsutil::write_new(&out.join("ca.crt"), ca.cert_der(), 0o644)?;
            if cli.json {
                println!("{}", serde_json::json!({ "out": out }));
            } else {
                println!("wrote relay.crt, relay.key, ca.crt to {}", out.display());
            }
            return Ok(());
        }
        Cmd::AdminUser(c) => {
            let dir = DataDir::new(need_data()?);
            dir.check_initialized()?;
            return admin_user(&dir, c, cli.json);
        }
        Cmd::Serve { dns_listen, no_dns } => {
            return serve(DataDir::new(need_data()?), &dns_listen, no_dns);
        }
        Cmd::Status => AdminRequest::Status,
        Cmd::Group(GroupCmd::Add { num, name }) => AdminRequest::GroupAdd {
            num,
            name: name.unwrap_or_else(|| format!("g{num}")),
        },
        Cmd::Group(GroupCmd::List) => AdminRequest::GroupList,
        Cmd::Group(GroupCmd::Remove { num }) => AdminRequest::GroupRemove { num },
        Cmd::Group(GroupCmd::Rename { num, name }) => AdminRequest::GroupRename { num, name },
        Cmd::Token(TokenCmd::List) => AdminRequest::TokenList,
        Cmd::Token(TokenCmd::Cancel { id }) => AdminRequest::TokenCancel { id },
        Cmd::Ge(GeCmd::Add {
            name,
            kind,
            mode,
            groups,
            protect,
        }) => AdminRequest::GeAdd {
            name,
            kind,
            mode,
            groups,
            protect,
        },
        Cmd::Ge(GeCmd::List) => AdminRequest::GeList,
        Cmd::Ge(GeCmd::Show { name }) => AdminRequest::GeShow { name },
        Cmd::Ge(GeCmd::Set {
            name,
            kind,
            mode,
            groups,
            no_groups,
            add_groups,
            remove_groups,
            protect,
            no_protect,
        }) => AdminRequest::GeSet {
            name,
            kind,
            mode,
            groups: (no_groups || !groups.is_empty()).then_some(groups),
            add_groups,
            remove_groups,
            protect: (no_protect || !protect.is_empty()).then_some(protect),
        },
        Cmd::Ge(GeCmd::Remove { name }) => AdminRequest::GeRemove { name },
        Cmd::Host(HostCmd::Add {
            name,
            via,
            lan,
            groups,
        }) => AdminRequest::HostAdd {
            name,
            via,
            lan,
            groups,
        },
        Cmd::Host(HostCmd::List) => AdminRequest::HostList,
        Cmd::Host(HostCmd::Show { name }) => AdminRequest::HostShow { name },
        Cmd::Host(HostCmd::Set {
            name,
            lan,
            groups,
            gateway_groups,
        }) => AdminRequest::HostSet {
            name,
            lan: (!lan.is_empty()).then_some(lan),
            groups: (gateway_groups || !groups.is_empty()).then_some(groups),
        },
        Cmd::Host(HostCmd::Remove { name }) => AdminRequest::HostRemove { name },
        Cmd::Ge(GeCmd::Revoke { name }) => AdminRequest::GeRevoke { name },
        Cmd::Token(TokenCmd::Create { name, ttl }) => AdminRequest::TokenCreate {
            name,
            ttl_secs: ttl.map(|d| d.as_secs()),
        },
        Cmd::Rotate { group } => AdminRequest::Rotate { group },
        Cmd::Keys => AdminRequest::Keys,
        Cmd::Audit { after, limit } => AdminRequest::Audit { after, limit },
    };
    let dir = DataDir::new(need_data()?);
    let resp = admin::request(&dir.admin_socket(), &req, ADMIN_TIMEOUT)?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "request failed".into()));
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&resp.data)?);
        return Ok(());
    }
    cli_output::print(&req, resp)
}

fn admin_user(dir: &DataDir, cmd: AdminUserCmd, json: bool) -> anyhow::Result<()> {
    use fpn_gms::web::users;
    match cmd {
        AdminUserCmd::Set { name } => {
            users::check_name(&name)?;
            let line = zeroize::Zeroizing::new(read_password()?);
            let password = zeroize::Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
            users::set(dir, &name, &password)?;
            if json {
                println!("{}", serde_json::json!({ "user": name, "set": true }));
            } else {
                println!("web admin user {name} set");
            }
        }
        AdminUserCmd::Remove { name } => {
            if !users::remove(dir, &name)? {
                bail!("no web admin user {name}");
            }
            if json {
                println!("{}", serde_json::json!({ "user": name, "removed": true }));
            } else {
                println!("web admin user {name} removed");
            }
        }
        AdminUserCmd::List => {
            let names = users::list(dir)?;
            if json {
                println!("{}", serde_json::json!({ "users": names }));
            } else {
                for n in names {
                    println!("{n}");
                }
            }
        }
    }
    Ok(())
}

/// The first line of standard input; on a terminal, asked for with the
/// echo off so the password is not shown.
fn read_password() -> anyhow::Result<String> {
    use std::io::IsTerminal as _;
    let stdin = std::io::stdin();
    let mut line = String::new();
    if !stdin.is_terminal() {
        stdin
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        return Ok(line);
    }
    eprint!("password: ");
    // SAFETY: tcgetattr/tcsetattr on fd 0, which is a terminal (checked
    // above), with a termios they fill in or that came from tcgetattr.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(0, &mut old) } != 0 {
        bail!("cannot read the terminal's settings to hide the password");
    }
    let mut quiet = old;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: as above.
    if unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) } != 0 {
        bail!("cannot turn the terminal's echo off to hide the password");
    }
    let r = stdin.read_line(&mut line);
    // SAFETY: as above; restores what tcgetattr returned.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &old) };
    r.context("reading the password from the terminal")?;
    Ok(line)
}

fn serve(data: DataDir, dns_listen: &[std::net::SocketAddr], no_dns: bool) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // The config's `log` key sets the filter (RUST_LOG, when set, wins for
    // the whole run); a reload layer lets SIGHUP change it live.
    let mut cfg = Config::load(&data.config())?;
    let env_filter = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let initial =
        tracing_subscriber::EnvFilter::try_new(env_filter.as_deref().unwrap_or(cfg.log_filter()))
            .context("RUST_LOG")?;
    let (filter, filter_handle) = tracing_subscriber::reload::Layer::new(initial);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut hup = rt
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) })
        .context("installing the SIGHUP handler")?;
    rt.block_on(async {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        server::check_not_serving(&data)?;
        if no_dns {
            cfg.dns.enabled = false;
        }
        let dns = InProcessDns::start(&data, &cfg, dns_listen).await?;
        let hook: Arc<dyn server::DirectoryHook> = match &dns {
            Some(d) => d.hook(),
            None => Arc::new(NoDirectoryHook),
        };
        let (reload_tx, reloads) = tokio::sync::mpsc::channel(4);
        let path = data.config();
        let reloader = tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // An unreadable or invalid file changes nothing.
                let new = match Config::load(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "SIGHUP: reload failed; the configuration in force is kept");
                        continue;
                    }
                };
                if env_filter.is_none() {
                    match tracing_subscriber::EnvFilter::try_new(new.log_filter()) {
                        Ok(f) => {
                            if let Err(e) = filter_handle.reload(f) {
                                tracing::warn!(error = %e, "SIGHUP: log filter not changed");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "SIGHUP: log filter not changed"),
                    }
                }
                if reload_tx.send(new).await.is_err() {
                    break;
                }
            }
        });
        let result = server::serve_with_reload(data, hook, shutdown, reloads).await;
        reloader.abort();
        if let Some(d) = dns {
            d.shutdown().await;
        }
        result
    })?;
    Ok(())
}
