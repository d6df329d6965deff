//! The tokio shell around [`Core`]: QUIC endpoint, admin socket, timers.
//!
//! One mutex guards the core and the session registry together, so a push
//! produced by a change can never slip between a session's `SessionInit`
//! and its registration. Store commits (which flush) run on the blocking
//! pool. Outputs are carried out under the same lock, in order, and never
//! block: pushes go into bounded per-session queues.

mod admin_socket;
mod quic;
mod sessions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::ca::Ca;
use crate::config::{Config, DataDir, OverlayRange};
use crate::core::{self, Core, DirectoryEvent, Output};
use crate::schedule::{HumanDuration, Schedule};
use crate::store::SledStore;
use crate::{Error, Result, fsutil, now_unix, tls, wire};

pub use sessions::Sessions;

/// Where the DDNS (or anything else) learns that a GE's name, overlay
/// address or addresses changed, or that a GE is gone.
///
/// This is the single integration point for fpn-ddns: `serve` calls
/// [`DirectoryHook::on_change`] for every [`DirectoryEvent`], in order,
/// while holding the GMS lock, so an implementation must only queue the
/// event (e.g. into a channel its own task drains) and return at once.
pub trait DirectoryHook: Send + Sync + 'static {
    /// A GE was added, changed, seen at a new address, or removed.
    fn on_change(&self, event: &DirectoryEvent);

    /// Where the hook's DNS answers (shown by `fpn-gms status`).
    fn dns_addrs(&self) -> Vec<SocketAddr> {
        Vec::new()
    }
}

/// The hook used when no DNS is wired in: it drops the events.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDirectoryHook;

impl DirectoryHook for NoDirectoryHook {
    fn on_change(&self, _event: &DirectoryEvent) {}
}

/// What `fpn-gms init` sets.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The data directory to create.
    pub data: PathBuf,
    /// The zone, e.g. `home.fpn.`.
    pub zone: String,
    /// QUIC listen address.
    pub listen: Option<SocketAddr>,
    /// `host:port` nodes dial.
    pub public_addr: Option<String>,
    /// Overlay address range.
    pub overlay_range: Option<OverlayRange>,
    /// Rotation schedule.
    pub rotation_schedule: Option<Schedule>,
    /// Grace of previous key versions.
    pub grace: Option<Duration>,
    /// The in-process DNS (`None`: defaults, on).
    pub dns: Option<crate::config::DnsSettings>,
}

/// Creates a data directory: config, CA, server certificate, store.
/// Returns the CA fingerprint (hex).
pub fn init(opts: &InitOptions) -> Result<String> {
    let dir = DataDir::new(&opts.data);
    if dir.config().exists() || dir.db().exists() {
        return Err(Error::Config(format!(
            "{} is already initialized",
            opts.data.display()
        )));
    }
    let mut cfg = Config::new(&opts.zone)?;
    if let Some(l) = opts.listen {
        cfg.listen = l;
    }
    if let Some(p) = &opts.public_addr {
        if !p.contains(':') {
            return Err(Error::Config(format!(
                "public address {p:?}: expected host:port"
            )));
        }
        cfg.public_addr = Some(p.clone());
    }
    if let Some(r) = opts.overlay_range {
        cfg.overlay_range = r;
    }
    if let Some(s) = opts.rotation_schedule {
        cfg.rotation_schedule = s;
    }
    if let Some(g) = opts.grace {
        cfg.grace = HumanDuration(g);
    }
    if let Some(d) = &opts.dns {
        cfg.dns = d.clone();
    }
    fsutil::create_private_dir(dir.root())?;
    let now = now_unix();
    let ca = Ca::generate(now)?;
    ca.save(&dir)?;
    let (cert, key) = ca.issue_server_cert(now)?;
    fsutil::write_new(&dir.server_key(), &key, 0o600)?;
    fsutil::write_new(&dir.server_cert(), &cert, 0o644)?;
    let store = SledStore::open(&dir.db())?;
    core::init_store(&store, &cfg.zone, now)?;
    fsutil::write_new(&dir.config(), cfg.to_toml()?.as_bytes(), 0o600)?;
    Ok(hex::encode(ca.fingerprint()))
}

/// State shared by the server's tasks.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the timer task after a change that may move its deadline.
    timer: Notify,
    hook: Arc<dyn DirectoryHook>,
}

pub(crate) struct Inner {
    pub(crate) core: Core,
    pub(crate) sessions: Sessions,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a bug; the state is still
        // consistent with the store (changes commit before memory is final).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Carries out outputs (caller holds the lock).
    pub(crate) fn deliver(&self, inner: &mut Inner, out: Vec<Output>) {
        inner.sessions.deliver(out, self.hook.as_ref());
    }
}

/// Runs the GMS of data directory `data` until `shutdown` completes.
pub async fn serve(
    data: DataDir,
    hook: Arc<dyn DirectoryHook>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let cfg = Config::load(&data.config())?;
    let store = SledStore::open(&data.db())?;
    let ca = Ca::load(&data)?;
    let server_cert = fsutil::read(&data.server_cert())?;
    let server_key = zeroize::Zeroizing::new(fsutil::read(&data.server_key())?);
    let listen = cfg.listen;
    let mut core = Core::new(cfg, Box::new(store), ca, now_unix())?;
    let sc = tls::server_config(core.ca().cert_der(), &server_cert, &server_key)?;
    let endpoint = tls::endpoint(listen, Some(sc))
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    let local = endpoint.local_addr()?;
    core.set_listen_addr(local);
    core.set_dns_addrs(hook.dns_addrs());

    let sock_path = data.admin_socket();
    // The store lock above proves no other server runs here: a socket file
    // left behind is stale.
    let _ = std::fs::remove_file(&sock_path);
    let admin =
        tokio::net::UnixListener::bind(&sock_path).map_err(Error::io("binding", &sock_path))?;
    std::fs::set_permissions(
        &sock_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(Error::io("setting permissions of", &sock_path))?;

    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            core,
            sessions: Sessions::default(),
        }),
        timer: Notify::new(),
        hook,
    });
    info!(%local, admin = %sock_path.display(), "GMS serving");

    let tasks = [
        tokio::spawn(quic::accept_loop(endpoint.clone(), shared.clone())),
        tokio::spawn(admin_socket::accept_loop(admin, shared.clone())),
        tokio::spawn(timer_loop(shared.clone())),
    ];
    shutdown.await;
    info!("GMS shutting down");
    endpoint.close(wire::close::SHUTDOWN.into(), b"GMS shutting down");
    for t in &tasks {
        t.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    let _ = std::fs::remove_file(&sock_path);
    Ok(())
}

/// Runs the core's timers (grace ends, scheduled rotation).
async fn timer_loop(shared: Arc<Shared>) {
    loop {
        let deadline = shared.lock().core.poll_timeout();
        let wait = deadline.map_or(Duration::from_secs(3600), until_unix);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.timer.notified() => continue,
        }
        // The sleep may end early (suspend, clock steps): check the clock.
        if deadline.is_some_and(|d| now_unix() < d) {
            continue;
        }
        let s = shared.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut g = s.lock();
            let out = g.core.handle_timeout(now_unix());
            s.deliver(&mut g, out);
        })
        .await;
        if let Err(e) = r {
            error!(error = %e, "timer task failed");
        }
    }
}

/// Time from now until unix second `t` (zero when past).
fn until_unix(t: u64) -> Duration {
    (UNIX_EPOCH + Duration::from_secs(t))
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// Runs `f` on the core on the blocking pool (it may commit and flush), then
/// carries out its outputs and wakes the timer.
pub(crate) async fn with_core<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Core) -> (T, Vec<Output>) + Send + 'static,
) -> Result<T> {
    let s = shared.clone();
    let r = tokio::task::spawn_blocking(move || {
        let mut g = s.lock();
        let (v, out) = f(&mut g.core);
        s.deliver(&mut g, out);
        v
    })
    .await
    .map_err(|e| {
        warn!(error = %e, "core task failed");
        Error::Store("internal error".into())
    })?;
    shared.timer.notify_one();
    Ok(r)
}
