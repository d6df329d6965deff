//! The tokio shell around [`Core`]: QUIC endpoint, admin socket, timers.
//!
//! One mutex guards the core and the session registry together, so a push
//! produced by a change can never slip between a session's `SessionInit`
//! and its registration. Core calls that may commit run on the blocking
//! pool.
//!
//! Durability (group commit): a change is applied under the lock; its
//! outputs are held, in order, behind the commit they depend on; the lock is
//! released; then the caller waits until that commit is synced
//! ([`crate::store::Syncer`]: one flush + fsync covers every change applied
//! before it started, so changes that arrive together share one) and only
//! then answers. Held outputs are carried out, in order, by whoever sees
//! them durable first. Answers that only read wait for the commits they
//! could have seen. Outputs never block: pushes go into bounded per-session
//! queues.

mod admin_socket;
mod metrics;
mod quic;
mod relay;
mod sessions;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fpn_gms_client::sd_notify;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::admin::AdminResponse;
use crate::ca::Ca;
use crate::config::{Config, DataDir, OverlayRange};
use crate::core::{self, Core, DirectoryEvent, Output};
use crate::schedule::{HumanDuration, Schedule};
use crate::store::{self, CommitSeq, Store, Syncer};
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

    /// The hook's DNS server counters (`/metrics`); `None` without one.
    fn dns_stats(&self) -> Option<fpn_ddns::DdnsStats> {
        None
    }

    /// The SOA serial of the hook's zone now (`None`: no DNS), shown by
    /// `status` and the web admin's overview.
    fn zone_serial(&self) -> Option<u32> {
        None
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
    /// Lifetime of node certificates and credentials.
    pub credential_lifetime: Option<Duration>,
    /// The in-process DNS (`None`: defaults, on).
    pub dns: Option<crate::config::DnsSettings>,
}

/// Fails with [`Error::AlreadyServing`] while another server answers on
/// the data directory's admin socket. Call it before opening anything a
/// running server holds (the store, the DNS zone): a second `serve` would
/// otherwise fail on a lock, with sled's text.
pub fn check_not_serving(data: &DataDir) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(data.admin_socket()).is_ok() {
        return Err(Error::AlreadyServing {
            data: data.root().to_owned(),
        });
    }
    Ok(())
}

/// Creates a data directory: config, CA, server certificate, store.
/// Returns the CA fingerprint (hex).
pub fn init(opts: &InitOptions) -> Result<String> {
    let dir = DataDir::new(&opts.data);
    if dir.config().exists() || dir.db().exists() {
        return Err(Error::AlreadyInitialized {
            data: opts.data.clone(),
        });
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
    if let Some(l) = opts.credential_lifetime {
        cfg.credential_lifetime = HumanDuration(l);
        cfg.check()?;
    }
    if let Some(g) = opts.grace {
        cfg.grace = HumanDuration(g);
    }
    if let Some(d) = &opts.dns {
        cfg.dns = d.clone();
    }
    // Before anything is written: e.g. an in-zone NS name without an address.
    cfg.check()?;
    fsutil::create_private_dir(dir.root())?;
    let now = now_unix();
    let ca = Ca::generate(now)?;
    ca.save(&dir)?;
    let (cert, key) = ca.issue_server_cert(now)?;
    fsutil::write_new(&dir.server_key(), &key, 0o600)?;
    fsutil::write_new(&dir.server_cert(), &cert, 0o644)?;
    // Creates the store key too: the first values are sealed already.
    let store = store::open(&dir.db(), &dir.store_key(), now)?;
    core::init_store(&store, &cfg.zone, now)?;
    store.syncer().sync_all()?;
    fsutil::write_new(&dir.config(), cfg.to_toml()?.as_bytes(), 0o600)?;
    Ok(hex::encode(ca.fingerprint()))
}

/// State shared by the server's tasks.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the timer task after a change that may move its deadline.
    timer: Notify,
    hook: Arc<dyn DirectoryHook>,
    /// Makes the core's commits durable, without the lock.
    syncer: Arc<dyn Syncer>,
    /// The relay, set once right after start.
    relay: std::sync::OnceLock<RelayParts>,
}

/// The relay as the server runs it (see [`relay`]).
pub(crate) struct RelayParts {
    /// The in-process relay, if enabled.
    pub(crate) relay: Option<Arc<fpn_relay::Relay>>,
    /// What nodes are told after `SessionInit` (`None`: no relay).
    pub(crate) advertised: Option<String>,
}

pub(crate) struct Inner {
    pub(crate) core: Core,
    pub(crate) sessions: Sessions,
    /// Outputs waiting for their commit to be durable, in order.
    held: VecDeque<(CommitSeq, Vec<Output>)>,
}

impl Shared {
    /// The DNS zone's serial now (`None`: no in-process DNS).
    pub(crate) fn zone_serial(&self) -> Option<u32> {
        self.hook.zone_serial()
    }

    /// Fills in what the server, not the core, knows in a `status` answer:
    /// the relay, the zone serial and the frames pushed to sessions.
    pub(crate) fn complete_status(&self, resp: &mut AdminResponse) {
        if !resp.ok {
            return;
        }
        let Some(o) = resp.data.as_object_mut() else {
            return;
        };
        if let Some(parts) = self.relay.get()
            && let Ok(v) = serde_json::to_value(relay::status(parts))
        {
            o.insert("relay".into(), v);
        }
        if let Some(s) = self.zone_serial() {
            o.insert("zone_serial".into(), s.into());
        }
        let pushed = self.lock().sessions.pushed();
        o.insert("pushes".into(), pushed.into());
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a bug; the state is still
        // consistent with the store (changes commit before memory is final).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the outputs of a core call (caller holds the lock, right after
    /// the call): they are carried out once every commit so far is durable,
    /// after all outputs before them. Returns the commit that the call's
    /// answer must wait for (see [`Shared::settle`]).
    pub(crate) fn stage(&self, inner: &mut Inner, out: Vec<Output>) -> CommitSeq {
        let seq = self.syncer.committed();
        if !out.is_empty() {
            inner.held.push_back((seq, out));
        }
        self.release(inner);
        seq
    }

    /// The latest commit (read under the lock: what the core has seen).
    pub(crate) fn committed(&self) -> CommitSeq {
        self.syncer.committed()
    }

    /// True when `seq` is already durable (no need to [`Shared::settle`]).
    pub(crate) fn is_durable(&self, seq: CommitSeq) -> bool {
        self.syncer.synced() >= seq
    }

    /// Blocks until commit `seq` is durable (sharing the sync with every
    /// other waiter), then carries out the outputs that became durable.
    /// Call without the lock, on the blocking pool.
    pub(crate) fn settle(&self, seq: CommitSeq) -> Result<()> {
        if !self.is_durable(seq) {
            self.syncer.sync_through(seq)?;
        }
        let mut g = self.lock();
        self.release(&mut g);
        Ok(())
    }

    /// Carries out the held outputs that are durable, in order.
    fn release(&self, inner: &mut Inner) {
        let synced = self.syncer.synced();
        while inner.held.front().is_some_and(|(s, _)| *s <= synced) {
            if let Some((_, out)) = inner.held.pop_front() {
                inner.sessions.deliver(out, self.hook.as_ref());
            }
        }
    }

    /// [`Shared::settle`] from async code: only goes to the blocking pool
    /// when a sync is needed.
    pub(crate) async fn settled(self: &Arc<Self>, seq: CommitSeq) -> Result<()> {
        if self.is_durable(seq) {
            return Ok(());
        }
        let s = self.clone();
        tokio::task::spawn_blocking(move || s.settle(seq))
            .await
            .map_err(|e| {
                warn!(error = %e, "sync task failed");
                Error::Store("internal error".into())
            })?
    }
}

/// Runs the GMS of data directory `data` until `shutdown` completes.
pub async fn serve(
    data: DataDir,
    hook: Arc<dyn DirectoryHook>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let (_keep, reloads) = tokio::sync::mpsc::channel(1);
    serve_with_reload(data, hook, shutdown, reloads).await
}

/// [`serve`], taking new configurations (a SIGHUP's, already loaded and
/// checked) from `reloads`: the core applies the live keys
/// ([`Config::RELOADABLE`]) and the rest is logged as needing a restart.
/// Tells systemd `READY=1` once it serves (again after each reload) and
/// `STOPPING=1` when `shutdown` completes (`fpn_gms_client::sd_notify`;
/// nothing without `NOTIFY_SOCKET`).
pub async fn serve_with_reload(
    data: DataDir,
    hook: Arc<dyn DirectoryHook>,
    shutdown: impl std::future::Future<Output = ()>,
    mut reloads: tokio::sync::mpsc::Receiver<Config>,
) -> Result<()> {
    let cfg = Config::load(&data.config())?;
    check_not_serving(&data)?;
    // Bound before anything else starts: an address that cannot be used
    // stops `serve` at once.
    let metrics = cfg
        .metrics
        .listen
        .map(fpn_gms_client::metrics::MetricsServer::bind)
        .transpose()?;
    let store = store::open(&data.db(), &data.store_key(), now_unix())?;
    let syncer = store.syncer();
    let ca = Ca::load(&data)?;
    let server_cert = fsutil::read(&data.server_cert())?;
    let server_key = zeroize::Zeroizing::new(fsutil::read(&data.server_key())?);
    let listen = cfg.listen;
    let mut core = Core::new(cfg, Box::new(store), ca, now_unix())?;
    let sc = tls::server_config(
        core.ca().cert_der(),
        &server_cert,
        &server_key,
        core.config().expired_reconnect_grace_secs(),
    )?;
    let endpoint = fpn_gms_client::tls::server_endpoint(listen, sc, &server_key)
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

    let bell = Arc::new(Notify::new());
    let hook: Arc<dyn DirectoryHook> = Arc::new(relay::RelayHook {
        inner: hook,
        bell: bell.clone(),
    });
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            core,
            sessions: Sessions::default(),
            held: VecDeque::new(),
        }),
        timer: Notify::new(),
        hook,
        syncer,
        relay: std::sync::OnceLock::new(),
    });
    let parts = relay::start(&shared, listen, &server_key, bell)?;
    let in_process = parts.relay.clone();
    let _ = shared.relay.set(parts);
    let metrics_task = match metrics {
        Some(m) => {
            info!(listen = %m.local_addr(), "metrics at /metrics");
            let s = shared.clone();
            Some(m.spawn(Arc::new(move || {
                let s = s.clone();
                // The core's lock is a std mutex that change paths hold
                // across commits: read it off the runtime.
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || metrics::render(&s))
                        .await
                        .unwrap_or_default()
                })
            }))?)
        }
        None => None,
    };
    let web_cfg = shared.lock().core.config().clone();
    let web = crate::web::start(shared.clone(), data.clone(), &web_cfg).await?;
    info!(%local, admin = %sock_path.display(), "GMS serving");
    notify_systemd(sd_notify::READY);

    let reload_shared = shared.clone();
    let tasks = [
        tokio::spawn(quic::accept_loop(endpoint.clone(), shared.clone())),
        tokio::spawn(admin_socket::accept_loop(admin, shared.clone())),
        tokio::spawn(timer_loop(shared.clone())),
        tokio::spawn(async move {
            while let Some(cfg) = reloads.recv().await {
                apply_reload(&reload_shared, cfg).await;
            }
        }),
    ];
    shutdown.await;
    notify_systemd(sd_notify::STOPPING);
    info!("GMS shutting down");
    // The nodes come back spread over a time that grows with their number
    // (a fleet reconnecting at once overflows the handshakes, and QUIC's
    // retransmission back-off then makes the last ones wait the longest).
    let live = shared.lock().sessions.len();
    let reason = wire::shutdown_reason(live);
    info!(sessions = live, %reason, "closing the sessions");
    endpoint.close(wire::close::SHUTDOWN.into(), reason.as_bytes());
    for t in &tasks {
        t.abort();
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    if let Some(w) = &web {
        w.stop();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    if let Some(r) = in_process {
        r.close().await;
    }
    let _ = std::fs::remove_file(&sock_path);
    Ok(())
}

/// Sends `state` to systemd; a failure is logged, never fatal.
fn notify_systemd(state: &str) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, state, "cannot notify systemd");
    }
}

/// Applies a reloaded configuration to the core.
async fn apply_reload(shared: &Arc<Shared>, cfg: Config) {
    notify_systemd(&sd_notify::reloading_message());
    let restart = {
        let mut g = shared.lock();
        g.core.reload_config(&cfg, now_unix())
    };
    // A new schedule moves the next rotation: the timer looks again.
    shared.timer.notify_one();
    if restart.is_empty() {
        info!(live = ?Config::RELOADABLE, "configuration reloaded");
    } else {
        warn!(live = ?Config::RELOADABLE, restart = ?restart, "configuration reloaded; changed keys that need a restart keep their old values until then");
    }
    notify_systemd(sd_notify::READY);
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
            let seq = {
                let mut g = s.lock();
                let out = g.core.handle_timeout(now_unix());
                s.stage(&mut g, out)
            };
            // A rotation's keys are pushed only once they are durable.
            s.settle(seq)
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "timer change not durable"),
            Err(e) => error!(error = %e, "timer task failed"),
        }
    }
}

/// Time from now until unix second `t` (zero when past).
fn until_unix(t: u64) -> Duration {
    (UNIX_EPOCH + Duration::from_secs(t))
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// Runs `f` on the core on the blocking pool (it may commit), waits until
/// every commit it could depend on is durable, carries out its outputs and
/// wakes the timer. The answer is returned only when it is safe to send.
pub(crate) async fn with_core<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Core) -> (T, Vec<Output>) + Send + 'static,
) -> Result<T> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || {
        let (v, seq) = {
            let mut g = s.lock();
            let (v, out) = f(&mut g.core);
            (v, s.stage(&mut g, out))
        };
        s.timer.notify_one();
        s.settle(seq).map(|()| v)
    })
    .await
    .map_err(|e| {
        warn!(error = %e, "core task failed");
        Error::Store("internal error".into())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::AdminRequest;
    use crate::core::DirectoryEvent;

    /// Records what reaches the DNS hook.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl DirectoryHook for Recorder {
        fn on_change(&self, event: &DirectoryEvent) {
            let name = match event {
                DirectoryEvent::Updated(r) => r.name.clone(),
                DirectoryEvent::Host(h) => format!("host {}", h.name),
                DirectoryEvent::Removed { name } => format!("-{name}"),
            };
            self.0.lock().unwrap().push(name);
        }
    }

    fn ge_add(name: &str) -> AdminRequest {
        AdminRequest::GeAdd {
            name: name.into(),
            kind: Some("ges".into()),
            mode: Some("op".into()),
            groups: vec![],
            protect: vec![],
        }
    }

    #[test]
    fn outputs_wait_for_the_sync_of_their_change_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_unix();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        core::init_store(&store, "t.fpn.", now).unwrap();
        store.syncer().sync_all().unwrap();
        let syncer = store.syncer();
        let cfg = Config::new("t.fpn").unwrap();
        let core = Core::new(cfg, Box::new(store), Ca::generate(now).unwrap(), now).unwrap();
        let hook = Arc::new(Recorder::default());
        let shared = Shared {
            inner: Mutex::new(Inner {
                core,
                sessions: Sessions::default(),
                held: VecDeque::new(),
            }),
            timer: Notify::new(),
            hook: hook.clone(),
            syncer,
            relay: std::sync::OnceLock::new(),
        };
        let seen = || hook.0.lock().unwrap().clone();

        let mut seqs = Vec::new();
        for name in ["a", "b"] {
            let mut g = shared.lock();
            let (r, out) = g.core.handle_admin(ge_add(name), now);
            assert!(r.ok, "{:?}", r.error);
            seqs.push(shared.stage(&mut g, out));
        }
        assert!(
            seen().is_empty(),
            "a change's output went out before its sync"
        );
        assert!(!shared.is_durable(seqs[0]));

        // Waiting for the first change syncs both (one round) and carries
        // out both outputs, in order.
        shared.settle(seqs[0]).unwrap();
        assert!(shared.is_durable(seqs[1]));
        assert_eq!(seen(), ["a", "b"]);

        // A later change is held again until its own sync.
        let mut g = shared.lock();
        let (r, out) = g.core.handle_admin(ge_add("c"), now);
        assert!(r.ok);
        let seq = shared.stage(&mut g, out);
        assert_eq!(seen(), ["a", "b"]);
        drop(g);
        shared.settle(seq).unwrap();
        assert_eq!(seen(), ["a", "b", "c"]);
    }
}
