//! GMS key rotation fan-out benchmark (not a test).
//!
//! Starts a real `fpn-gms serve` process, defines one group and N GEs in it,
//! enrolls N simulated nodes with real tokens, connects N sessions (sharing
//! a few QUIC endpoints, i.e. UDP sockets), then rotates the group several
//! times and reports the time from the `rotate` request until every node
//! holds the new version, plus the server's resident memory per connected
//! node (VmRSS from /proc/<pid>/status, after minus before the sessions).
//!
//! Run through `bench/gms-fanout.sh`, or:
//! `cargo run --release -p fpn-gms --example fanout -- --gms-bin target/release/fpn-gms --nodes 1000`

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fpn_gms::admin::{self, AdminRequest};
use fpn_gms::client::{self, Event, Identity, Session, SessionConfig};
use fpn_proto::ge::GroupId;
use fpn_proto::keys::KeyVersion;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const GROUP: GroupId = GroupId(1);
/// Bound on every phase of the benchmark.
const PHASE_TIMEOUT: Duration = Duration::from_secs(900);
/// Bound on one rotation reaching every node.
const ROTATION_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
struct Args {
    /// The fpn-gms binary to run as the server.
    #[arg(long)]
    gms_bin: PathBuf,
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Rotations to measure.
    #[arg(long, default_value_t = 5)]
    rotations: u32,
    /// Client QUIC endpoints (UDP sockets) the sessions share.
    #[arg(long, default_value_t = 8)]
    endpoints: usize,
    /// Enrollments and session starts in flight at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Data directory parent (a temporary directory when absent).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()?)
}

fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn ask(sock: &std::path::Path, req: AdminRequest) -> anyhow::Result<serde_json::Value> {
    let r = admin::request(sock, &req, Duration::from_secs(60))?;
    if !r.ok {
        bail!("{req:?}: {}", r.error.unwrap_or_default());
    }
    Ok(r.data)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tmp = match &args.workdir {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir()?,
    };
    let data = tmp.path().join("gms");
    let st = Command::new(&args.gms_bin)
        .args([
            "init",
            "--data",
            data.to_str().unwrap(),
            "--zone",
            "bench.fpn.",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--rotation-schedule", "off", "--grace", "10m"])
        // The in-process DNS runs as in production, on a port of its own.
        .args(["--dns-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("init failed");
    }
    let log = std::fs::File::create(tmp.path().join("serve.log"))?;
    let server = Server {
        child: Command::new(&args.gms_bin)
            .args(["serve", "--data", data.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    };
    let pid = server.child.id();
    let sock = data.join("admin.sock");
    let t = Instant::now();
    while ask(&sock, AdminRequest::Status).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("server did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Define the network: one group, N GEs, N tokens.
    let t = Instant::now();
    ask(
        &sock,
        AdminRequest::GroupAdd {
            num: GROUP.0,
            name: "all".into(),
        },
    )?;
    let mut tokens = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let name = format!("n{i}");
        ask(
            &sock,
            AdminRequest::GeAdd {
                name: name.clone(),
                kind: Some("ges".into()),
                mode: Some("op".into()),
                groups: vec![GROUP.0],
                protect: Vec::new(),
            },
        )?;
        let tok = ask(
            &sock,
            AdminRequest::TokenCreate {
                name,
                ttl_secs: Some(3600),
            },
        )?;
        tokens.push(tok["token"].as_str().context("token")?.to_owned());
    }
    let define = t.elapsed();
    eprintln!("defined {} GEs and tokens in {define:.2?}", args.nodes);

    let endpoints: Vec<quinn::Endpoint> = (0..args.endpoints)
        .map(|_| client::endpoint("127.0.0.1:0".parse().unwrap()))
        .collect::<Result<_, _>>()?;

    // Enroll everyone (real tokens, real certificates).
    let t = Instant::now();
    let sem = Arc::new(Semaphore::new(args.concurrency));
    let mut set = JoinSet::new();
    for (i, tok) in tokens.into_iter().enumerate() {
        let ep = endpoints[i % endpoints.len()].clone();
        let permit = sem.clone().acquire_owned().await?;
        set.spawn(async move {
            let r = client::enroll(&tok, &ep).await;
            drop(permit);
            r.map(|id| (i, id))
        });
    }
    let mut ids: Vec<Option<Identity>> = vec![None; args.nodes];
    while let Some(r) = tokio::time::timeout(PHASE_TIMEOUT, set.join_next()).await? {
        let (i, id) = r??;
        ids[i] = Some(id);
    }
    let enroll = t.elapsed();
    eprintln!("enrolled {} nodes in {enroll:.2?}", args.nodes);

    let rss_before = rss_kib(pid)?;
    // Connect every session; each start waits for its first full state.
    let t = Instant::now();
    let mut set = JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let ep = endpoints[i % endpoints.len()].clone();
        let permit = sem.clone().acquire_owned().await?;
        set.spawn(async move {
            let cfg = SessionConfig {
                connect_timeout: Duration::from_secs(30),
                ..SessionConfig::default()
            };
            let mut s = Session::start(id.expect("enrolled"), ep, cfg)?;
            loop {
                match tokio::time::timeout(Duration::from_secs(60), s.next_event()).await {
                    Ok(Some(Event::Connected)) => break,
                    Ok(Some(Event::Terminated { reason })) => bail!("session refused: {reason}"),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => bail!("session did not connect"),
                }
            }
            drop(permit);
            anyhow::Ok(Arc::new(s))
        });
    }
    let mut sessions = Vec::with_capacity(args.nodes);
    while let Some(r) = tokio::time::timeout(PHASE_TIMEOUT, set.join_next()).await? {
        sessions.push(r??);
    }
    let connect = t.elapsed();
    // Let the server settle (handshake buffers freed) before reading memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(pid)?;
    let online = ask(&sock, AdminRequest::Status)?["online"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "{} sessions up in {connect:.2?}; server reports {online} online",
        sessions.len()
    );
    if online as usize != args.nodes {
        bail!("only {online} of {} nodes online", args.nodes);
    }

    let mut results = Vec::new();
    for r in 0..args.rotations {
        let version = KeyVersion(r + 2);
        let t0 = Instant::now();
        let mut set = JoinSet::new();
        for s in &sessions {
            let s = s.clone();
            set.spawn(async move {
                s.wait_for(ROTATION_TIMEOUT, |st| {
                    st.keys.current(GROUP).is_some_and(|(v, _)| v == version)
                })
                .await
                .map(|()| t0.elapsed())
            });
        }
        let data = ask(
            &sock,
            AdminRequest::Rotate {
                group: Some(GROUP.0),
            },
        )?;
        let acked = t0.elapsed();
        assert_eq!(data[0]["version"], version.0);
        let mut lat = Vec::with_capacity(args.nodes);
        while let Some(x) = set.join_next().await {
            lat.push(x??);
        }
        lat.sort();
        let all = *lat.last().unwrap();
        eprintln!(
            "rotation to v{}: admin ack {acked:.1?}, p50 {:.1?}, p99 {:.1?}, all {} nodes {all:.1?}",
            version.0,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            args.nodes
        );
        results.push((acked, percentile(&lat, 0.5), percentile(&lat, 0.99), all));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let per_node = (rss_after.saturating_sub(rss_before) as f64) / args.nodes as f64;
    let mut alls: Vec<Duration> = results.iter().map(|r| r.3).collect();
    alls.sort();
    println!("nodes: {}", args.nodes);
    println!("define (ge add + token create): {define:.2?}");
    println!("enroll: {enroll:.2?}");
    println!("connect sessions: {connect:.2?}");
    println!(
        "server RSS: {} KiB before sessions, {} KiB with {} sessions: {per_node:.1} KiB per node",
        rss_before, rss_after, args.nodes
    );
    for (i, (ack, p50, p99, all)) in results.iter().enumerate() {
        println!(
            "rotation {}: ack {ack:.1?} p50 {p50:.1?} p99 {p99:.1?} all {all:.1?}",
            i + 1
        );
    }
    println!(
        "all nodes updated: median of {} rotations {:.1?}, worst {:.1?}",
        alls.len(),
        alls[alls.len() / 2],
        alls[alls.len() - 1]
    );
    drop(sessions);
    drop(server);
    Ok(())
}
