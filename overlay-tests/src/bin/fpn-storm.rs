//! fpn-storm: the connection storm of `bench/overlay.sh` (issue 13): many
//! short flows through a tunnel, each a new five-tuple, as a web service
//! taking connections or a resolver sending every query from a fresh port.
//!
//! - `fpn-storm serve --port P` answers both: on TCP port P it reads one
//!   request per connection, writes the same bytes back and closes; on UDP
//!   port P it echoes every datagram.
//! - `fpn-storm tcp --to ADDR:P` opens connections for `--secs` seconds,
//!   `--concurrency` at a time (closed loop): connect, send the request,
//!   read the answer, close. Each completed connection's time from connect
//!   to answer is kept.
//! - `fpn-storm udp --to ADDR:P` sends queries the same way, each from a
//!   new socket (so a new source port): send, wait for the echo.
//!
//! An operation that takes longer than `--timeout-ms` counts as failed
//! (a lost SYN is retransmitted after 1 s, so its connection still
//! completes, late). Prints one JSON object: completed and failed
//! operations, completions per second, and the median, 99th percentile and
//! maximum latency in milliseconds, and the first failures (the flow's
//! local port, when the operation began, why) to look up in the nodes'
//! logs. The run is bounded by `--secs` and
//! `--max`; connections still open then are abandoned and not counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Open many short flows through a tunnel and count them.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Answer TCP requests (one per connection) and echo UDP datagrams.
    Serve {
        /// The TCP and UDP port.
        #[arg(long)]
        port: u16,
    },
    /// A storm of short TCP connections: connect, request, answer, close.
    Tcp(Storm),
    /// A storm of UDP queries, each from a new socket (a new source port).
    Udp(Storm),
}

#[derive(clap::Args, Debug)]
struct Storm {
    /// The server's address and port.
    #[arg(long)]
    to: SocketAddr,
    /// How long to run, seconds.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Operations in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Most operations in all (a bound besides the time).
    #[arg(long, default_value_t = 2_000_000)]
    max: u64,
    /// An operation slower than this counts as failed, milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Bytes in each request and answer.
    #[arg(long, default_value_t = 64)]
    size: usize,
}

/// Failures listed in the output (the count covers all of them).
const MAX_LISTED_FAILURES: usize = 20;

/// One operation: a connection or a query. `port` gets the flow's local
/// port once it is known (a connection's after its handshake).
async fn tcp_once(
    to: SocketAddr,
    req: &[u8],
    ans: &mut [u8],
    port: &mut u16,
) -> std::io::Result<()> {
    let mut s = TcpStream::connect(to).await?;
    *port = s.local_addr()?.port();
    s.set_nodelay(true)?;
    s.write_all(req).await?;
    s.read_exact(ans).await?;
    Ok(())
}

async fn udp_once(
    to: SocketAddr,
    req: &[u8],
    ans: &mut [u8],
    port: &mut u16,
) -> std::io::Result<()> {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("an address")
    } else {
        "[::]:0".parse().expect("an address")
    };
    let s = UdpSocket::bind(bind).await?;
    s.connect(to).await?;
    *port = s.local_addr()?.port();
    s.send(req).await?;
    loop {
        let n = s.recv(ans).await?;
        if n == req.len() && ans[..n] == *req {
            return Ok(());
        }
    }
}

async fn serve(port: u16) -> Result<()> {
    // Both families on one socket where the host has IPv6.
    let tcp = match TcpListener::bind(("::", port)).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("TCP port {port}"))?,
    };
    let udp = match UdpSocket::bind(("::", port)).await {
        Ok(u) => u,
        Err(_) => UdpSocket::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("UDP port {port}"))?,
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            if let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&buf[..n], from).await;
            }
        }
    });
    loop {
        let (mut s, _) = tcp.accept().await?;
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; 65_536];
            // One request, answered with its own bytes; then the client
            // closes.
            if let Ok(n) = s.read(&mut buf).await
                && n > 0
            {
                let _ = s.write_all(&buf[..n]).await;
            }
            let _ = s.read(&mut buf).await;
        });
    }
}

/// Latencies (microseconds) of the completed operations and the failures.
#[derive(Default)]
struct Tally {
    done: Vec<u64>,
    failed: u64,
    /// The first failures: local port (0: not known), ms since the
    /// storm began, why.
    listed: Vec<(u16, u64, String)>,
}

impl Tally {
    fn fail(&mut self, port: u16, began: Duration, why: String) {
        self.failed += 1;
        if self.listed.len() < MAX_LISTED_FAILURES {
            self.listed.push((port, began.as_millis() as u64, why));
        }
    }
}

async fn storm(kind: &'static str, cfg: Storm) -> Result<serde_json::Value> {
    if cfg.concurrency == 0 || cfg.size == 0 || cfg.secs == 0 {
        bail!("--concurrency, --size and --secs must be positive");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(cfg.max));
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..cfg.concurrency {
        let (stop, budget, to, size) = (stop.clone(), budget.clone(), cfg.to, cfg.size);
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let req: Vec<u8> = (0..size).map(|i| (i + w) as u8).collect();
            let mut ans = vec![0u8; size];
            while !stop.load(Ordering::Relaxed)
                && budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                    .is_ok()
            {
                let t0 = Instant::now();
                let mut port = 0;
                let op = async {
                    match kind {
                        "tcp" => tcp_once(to, &req, &mut ans, &mut port).await,
                        _ => udp_once(to, &req, &mut ans, &mut port).await,
                    }
                };
                let r = tokio::time::timeout(timeout, op).await;
                let began = t0.duration_since(start);
                match r {
                    Ok(Ok(())) => t.done.push(t0.elapsed().as_micros() as u64),
                    // A refused connection or a lost answer: pause a little
                    // so a tunnel that refuses at once is not spun on.
                    Ok(Err(e)) => {
                        t.fail(port, began, e.to_string());
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => t.fail(port, began, "timeout".into()),
                }
            }
            t
        }));
    }
    tokio::time::sleep(Duration::from_secs(cfg.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let mut all = Tally::default();
    for task in tasks {
        // A task still waiting on its operation is abandoned at the
        // timeout: its operation is neither completed nor failed.
        if let Ok(Ok(t)) = tokio::time::timeout(timeout + Duration::from_secs(1), task).await {
            all.done.extend(t.done);
            all.failed += t.failed;
            all.listed.extend(t.listed);
        }
    }
    all.done.sort_unstable();
    all.listed.sort_unstable_by_key(|f| f.1);
    all.listed.truncate(MAX_LISTED_FAILURES);
    let failures: Vec<serde_json::Value> = all
        .listed
        .iter()
        .map(|(port, at, why)| serde_json::json!({"port": port, "began_ms": at, "why": why}))
        .collect();
    let pct = |p: f64| -> f64 {
        if all.done.is_empty() {
            return f64::NAN;
        }
        let i = ((all.done.len() as f64 * p).ceil() as usize).clamp(1, all.done.len()) - 1;
        all.done[i] as f64 / 1000.0
    };
    Ok(serde_json::json!({
        "kind": kind,
        "to": cfg.to.to_string(),
        "concurrency": cfg.concurrency,
        "secs": elapsed,
        "completed": all.done.len(),
        "failed": all.failed,
        "per_sec": all.done.len() as f64 / cfg.secs as f64,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "failures": failures,
    }))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.command {
            Cmd::Serve { port } => serve(port).await,
            Cmd::Tcp(s) => {
                println!("{}", storm("tcp", s).await?);
                Ok(())
            }
            Cmd::Udp(s) => {
                println!("{}", storm("udp", s).await?);
                Ok(())
            }
        }
    })
}
