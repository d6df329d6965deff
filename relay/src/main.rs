//! `fpn-relay`: the relay as a process of its own, for users who want it
//! somewhere else than on the GMS's host. `fpn-gms serve` runs the same
//! relay in-process by default; see docs/GMS.md "Relay".

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fpn_relay::{CaOnly, RateLimit, Relay, RelayConfig};
use zeroize::Zeroizing;

/// fpn relay: forwards end-to-end protected frames between nodes that
/// cannot reach each other directly (both behind NATs). It authenticates
/// both nodes with their certificates (the network's CA), limits each
/// node's rate, and never holds a key that decrypts what it forwards.
#[derive(Parser, Debug)]
#[command(name = "fpn-relay", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve until SIGINT/SIGTERM.
    ///
    /// CERTS is a directory with relay.crt, relay.key and ca.crt, as
    /// written by `fpn-gms relay-cert --out CERTS` on the GMS host. Then
    /// set `[relay] enabled = false` and `public_addr = "HOST:PORT"` (this
    /// relay's address) in the GMS's config so nodes are told to use it.
    /// A standalone relay cannot see revocations: it relies on the node
    /// certificates' short lifetime (credential_lifetime, default 24 h).
    Serve {
        /// Directory with relay.crt, relay.key, ca.crt.
        #[arg(long)]
        certs: PathBuf,
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:7720")]
        listen: SocketAddr,
        /// Sustained rate per node, Mbit/s.
        #[arg(long, default_value_t = 50)]
        rate_mbit: u64,
        /// Burst per node, KiB.
        #[arg(long, default_value_t = 1024)]
        burst_kib: u64,
        /// Log the counters this often (seconds; 0: never). With --json
        /// each is one JSON line on stdout instead.
        #[arg(long, default_value_t = 10)]
        stats_every: u64,
        /// Counters as JSON lines on stdout.
        #[arg(long)]
        json: bool,
    },
}

fn read(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let p = dir.join(name);
    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Cmd::Serve {
        certs,
        listen,
        rate_mbit,
        burst_kib,
        stats_every,
        json,
    } = Cli::parse().cmd;
    let key = Zeroizing::new(read(&certs, "relay.key")?);
    let cfg = RelayConfig {
        listen,
        rate: RateLimit {
            bytes_per_sec: rate_mbit.saturating_mul(1_000_000) / 8,
            burst: burst_kib.saturating_mul(1024),
        },
        ca_der: read(&certs, "ca.crt")?,
        cert_der: read(&certs, "relay.crt")?,
        reset_secret: key.clone(),
        key_der: key,
    };
    let relay = Relay::bind(cfg, Arc::new(CaOnly))?;
    eprintln!("relay listening on {}", relay.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let every = Duration::from_secs(stats_every.max(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick(), if stats_every > 0 => {
                let c = relay.counters();
                if json {
                    println!("{}", serde_json::to_string(&c)?);
                } else {
                    tracing::info!(?c, "relay counters");
                }
            }
        }
    }
    relay.close().await;
    Ok(())
}
