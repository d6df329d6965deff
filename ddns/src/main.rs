//! `fpn-ddns`: run the zone's DNS server, or make a TSIG key.
//!
//! ```text
//! fpn-ddns serve --zone home.fpn. --listen 0.0.0.0:53 --data /var/lib/fpn-ddns \
//!                [--tsig-key-file admin.key]... [--config ddns.toml] [--notify ADDR:PORT]...
//! fpn-ddns tsig-keygen [-a hmac-sha256] NAME > NAME.key
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use fpn_ddns::config::resolve_key_name;
use fpn_ddns::keys::generate_key_file;
use fpn_ddns::{Algorithm, Ddns, DdnsConfig, FileConfig, KeyPolicy, NotifyTarget, Sockets};
use hickory_proto::rr::Name;
use tracing::info;

#[derive(Parser)]
#[command(
    name = "fpn-ddns",
    version,
    about = "fpn's authoritative DNS server (LIP records, RFC 2136 + TSIG, AXFR/IXFR)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the zone over UDP and TCP.
    Serve(ServeArgs),
    /// Print a new random TSIG key in the format `nsupdate -k` reads.
    TsigKeygen {
        /// MAC algorithm: hmac-sha256, hmac-sha384 or hmac-sha512.
        #[arg(short, long, default_value = "hmac-sha256")]
        algorithm: String,
        /// The key's name.
        name: String,
    },
}

#[derive(Parser)]
struct ServeArgs {
    /// TOML configuration (keys with scopes, notify targets, SOA); flags add to it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The zone, e.g. home.fpn.
    #[arg(long)]
    zone: Option<String>,
    /// Address to serve on, UDP and TCP (repeatable; port 0 picks a free one).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Directory of the zone database.
    #[arg(long)]
    data: Option<PathBuf>,
    /// BIND key file; its keys may update the whole zone and transfer it (repeatable).
    #[arg(long = "tsig-key-file")]
    tsig_key_files: Vec<PathBuf>,
    /// Secondary to send NOTIFY to on every change (repeatable).
    #[arg(long)]
    notify: Vec<SocketAddr>,
    /// UDP threads per address (default: number of CPUs).
    #[arg(long)]
    udp_threads: Option<usize>,
    /// Zone file to seed a new (empty) database from.
    #[arg(long)]
    zone_file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::TsigKeygen { algorithm, name } => {
            let alg = Algorithm::from_str(&algorithm)?;
            resolve_key_name(&name)?;
            print!("{}", generate_key_file(&name, alg)?);
            Ok(())
        }
        Cmd::Serve(args) => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve(args))
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (file, base) = match &args.config {
        Some(path) => {
            let base = path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            (FileConfig::read(path)?, base)
        }
        None => (FileConfig::default(), PathBuf::from(".")),
    };
    let Some(zone) = args.zone.clone().or_else(|| file.zone.clone()) else {
        bail!("no zone: give --zone or `zone` in the configuration");
    };
    let mut origin = Name::from_ascii(&zone).with_context(|| format!("bad zone name {zone:?}"))?;
    origin.set_fqdn(true);
    let data = match (&args.data, &file.data) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => base.join(d),
        (None, None) => bail!("no data directory: give --data or `data` in the configuration"),
    };
    let mut cfg = DdnsConfig::new(origin.clone(), data);
    file.apply(&mut cfg, &base)?;
    for path in &args.tsig_key_files {
        cfg.add_key_file(path, &KeyPolicy::admin(&cfg.origin))?;
    }
    cfg.notify.extend(
        args.notify
            .iter()
            .map(|&address| NotifyTarget { address, key: None }),
    );
    if args.zone_file.is_some() {
        cfg.zone_file = args.zone_file.clone();
    }
    let listen = if args.listen.is_empty() {
        file.listen.clone()
    } else {
        args.listen.clone()
    };
    if listen.is_empty() {
        bail!("nowhere to listen: give --listen or `listen` in the configuration");
    }
    let threads = args
        .udp_threads
        .or(file.udp_threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    let ddns = Ddns::open(cfg)?;
    let mut sockets = Sockets::default();
    for addr in &listen {
        sockets.extend(
            Sockets::bind(*addr, threads).with_context(|| format!("cannot listen on {addr}"))?,
        );
    }
    let server = ddns.serve(sockets)?;
    for addr in server.local_addrs() {
        // Tests and scripts read this line to learn the port.
        println!("fpn-ddns: serving {} on {addr} (udp+tcp)", ddns.origin());
    }
    info!(zone = %ddns.origin(), serial = ddns.serial(), udp_threads = threads, "serving");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("shutting down");
    server.shutdown().await;
    ddns.close();
    Ok(())
}
