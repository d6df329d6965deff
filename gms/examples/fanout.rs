//! GMS key rotation fan-out benchmark (not a test).
//!
//! Starts a real `fpn-gms serve` process, defines one group and N GEs in it,
//! enrolls N simulated nodes with real tokens, connects N sessions (sharing
//! a few QUIC endpoints, i.e. UDP sockets), then rotates the group several
//! times and reports the time from the `rotate` request until every node
//! holds the new version, plus the server's resident memory per connected
//! node (VmRSS from /proc/<pid>/status, after minus before the sessions).
//!
//! With `--reconnect`, after the rotations every node does what a node does
//! when its session comes up (bring its listing up to date: with the
//! directory on demand, list it only when its digest changed, following
//! nobody; and look up, so follow, the 5 peers it talks to), then the GMS
//! restarts (SIGTERM, `serve` again on the same data) and the time until
//! every node is back and has done so again is measured, with the GMS's
//! CPU seconds and the frames it pushed meanwhile (issue 13, "the
//! directory at scale").
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
    /// After the rotations, measure a GMS restart with every node
    /// listing the directory and looking up its peers again.
    #[arg(long)]
    reconnect: bool,
}

/// Peers each node talks to (looked up after each session start).
const PEERS: usize = 5;

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

/// A UDP port on loopback that is free now.
fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// CPU seconds (user + system) process `pid` used so far.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after ')'.
    let rest = s.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn spawn_server(
    gms_bin: &std::path::Path,
    data: &std::path::Path,
    log: &std::path::Path,
) -> anyhow::Result<Server> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(Server {
        child: Command::new(gms_bin)
            .args(["serve", "--data", data.to_str().context("data path")?])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    })
}

async fn wait_status(sock: &std::path::Path) -> anyhow::Result<()> {
    let t = Instant::now();
    while ask(sock, AdminRequest::Status).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("server did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// What a node does when its session comes up (node/src/gms.rs): brings
/// its listing up to date (with the directory on demand, only when the
/// listing's digest differs from `digest`, the one of its last listing,
/// which is updated; a listing follows nobody) and looks up, and so
/// follows, the peers it talks to.
async fn node_sync(
    s: &Session,
    i: usize,
    n: usize,
    digest: &std::sync::Mutex<Option<[u8; 16]>>,
) -> anyhow::Result<()> {
    let known = *digest.lock().unwrap();
    if let client::DirectorySync::Listed { entries, digest: d } = s.sync_directory(known).await? {
        anyhow::ensure!(entries.len() == n, "listed {} of {n} GEs", entries.len());
        *digest.lock().unwrap() = d;
    }
    for k in 1..=PEERS {
        s.query(&format!("n{}", (i + k) % n)).await?;
    }
    Ok(())
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
            // A fixed port: the restart of `--reconnect` must come back
            // where the nodes' identities say the GMS is.
            &format!("127.0.0.1:{}", free_udp_port()?),
        ])
        .args(["--rotation-schedule", "off", "--grace", "10m"])
        // The in-process DNS runs as in production, on a port of its own.
        .args(["--dns-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("init failed");
    }
    let log = tmp.path().join("serve.log");
    let mut server = spawn_server(&args.gms_bin, &data, &log)?;
    let pid = server.child.id();
    let sock = data.join("admin.sock");
    wait_status(&sock).await?;

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
    if args.reconnect {
        let sessions = sessions
            .into_iter()
            .map(|s| Arc::try_unwrap(s).map_err(|_| anyhow::anyhow!("session still shared")))
            .collect::<anyhow::Result<Vec<Session>>>()?;
        server = reconnect(&args, server, &data, &log, &sock, sessions).await?;
    }
    drop(server);
    Ok(())
}

/// The `--reconnect` measurement (see the module's head).
async fn reconnect(
    args: &Args,
    server: Server,
    data: &std::path::Path,
    log: &std::path::Path,
    sock: &std::path::Path,
    sessions: Vec<Session>,
) -> anyhow::Result<Server> {
    let n = args.nodes;
    // What each node kept of its last listing: its digest.
    let digests: Arc<Vec<std::sync::Mutex<Option<[u8; 16]>>>> =
        Arc::new((0..n).map(|_| std::sync::Mutex::new(None)).collect());
    // Every node syncs as at its session start, all at once.
    let pid = server.child.id();
    let (cpu0, pushed0) = (cpu_secs(pid)?, pushes(sock)?);
    let (first, first_retries, mut sessions) =
        sync_all(sessions, &digests, Instant::now(), false).await?;
    let (cpu1, pushed1) = (cpu_secs(pid)?, pushes(sock)?);
    let first_all = *first.last().context("no node")?;
    eprintln!(
        "first sync of {n} nodes: all {first_all:.1?}, GMS CPU {:.1} s, pushes {}, syncs cut short by a dropped session {first_retries}",
        cpu1 - cpu0,
        pushed1 - pushed0
    );
    // The GMS restarts; every node comes back and syncs again.
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut old = server;
    let _ = old.child.wait();
    std::mem::forget(old);
    // Events from before the restart (pushes of the first sync) go first.
    for s in &mut sessions {
        while s.try_next_event().is_some() {}
    }
    let t0 = Instant::now();
    let server = spawn_server(&args.gms_bin, data, log)?;
    let pid = server.child.id();
    wait_status(sock).await?;
    eprintln!(
        "GMS serving again {:.1?} after the restart began",
        t0.elapsed()
    );
    let (lat, retries, keep) = sync_all(sessions, &digests, t0, true).await?;
    let all = *lat.last().context("no node")?;
    let (cpu, pushed) = (cpu_secs(pid)?, pushes(sock)?);
    println!(
        "restart with {n} nodes ({PEERS} peers each): all back and synced {all:.1?} (p50 {:.1?}, p99 {:.1?}); GMS CPU {cpu:.1} s; pushes {pushed}; syncs cut short by a dropped session {retries}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
    );
    println!(
        "first sync (no restart): all {first_all:.1?}; GMS CPU {:.1} s; pushes {}",
        cpu1 - cpu0,
        pushed1 - pushed0
    );
    drop(keep);
    Ok(server)
}

/// Every node syncs at once (`node_sync`), each after its session is
/// (back) up when `reconnected`; a session the GMS drops meanwhile (a slow
/// reader of its pushes) comes back and syncs again, counted. Returns the
/// times from `t0` until each node was done (sorted), the retries, and
/// the sessions.
async fn sync_all(
    sessions: Vec<Session>,
    digests: &Arc<Vec<std::sync::Mutex<Option<[u8; 16]>>>>,
    t0: Instant,
    reconnected: bool,
) -> anyhow::Result<(Vec<Duration>, u32, Vec<Session>)> {
    let n = sessions.len();
    let mut set = JoinSet::new();
    for (i, mut s) in sessions.into_iter().enumerate() {
        let digests = digests.clone();
        set.spawn(async move {
            let mut retries = 0u32;
            let mut wait = reconnected;
            loop {
                while wait {
                    match tokio::time::timeout(ROTATION_TIMEOUT, s.next_event()).await {
                        Ok(Some(Event::Connected)) => wait = false,
                        Ok(Some(Event::Terminated { reason })) => {
                            bail!("session refused: {reason}")
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => bail!("session did not come back"),
                    }
                }
                match node_sync(&s, i, n, &digests[i]).await {
                    Ok(()) => break,
                    Err(_) => {
                        retries += 1;
                        wait = true;
                    }
                }
            }
            // The session lives on until every node is done.
            Ok((i, t0.elapsed(), retries, s))
        });
    }
    let mut lat = Vec::with_capacity(n);
    let mut keep = Vec::with_capacity(n);
    let mut retries = 0;
    while let Some(r) = tokio::time::timeout(PHASE_TIMEOUT, set.join_next()).await? {
        let (i, d, k, s) = r??;
        lat.push(d);
        retries += k;
        keep.push((i, s));
    }
    lat.sort();
    // Node i stays node i (its digest, its peers) in the next phase.
    keep.sort_by_key(|(i, _)| *i);
    Ok((lat, retries, keep.into_iter().map(|(_, s)| s).collect()))
}

/// The frames the GMS pushed to sessions since it started (`status`).
fn pushes(sock: &std::path::Path) -> anyhow::Result<u64> {
    ask(sock, AdminRequest::Status)?["pushes"]
        .as_u64()
        .context("status without pushes")
}
