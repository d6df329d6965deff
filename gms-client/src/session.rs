//! A node's session with the GMS: connect, receive state and pushes, reconnect.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fpn_proto::credential::Credential;
use fpn_proto::ge::{GeId, GeInfo, GroupId};
use fpn_proto::keys::{GroupKey, KeyVersion};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{Identity, KeyCache, resolve};
use crate::ca::SERVER_NAME;
use crate::framing::{read_frame, write_frame};
use crate::task::AbortOnDrop;
use crate::wire::{
    Candidates, ClientMsg, ConnectNowOutcome, DirectoryEntry, GroupKeys, HostEntry, ListedGe,
    ServerMsg, close,
};
use crate::{Error, Result, now_unix, tls};

/// Events kept for a slow reader; beyond this, events are dropped (the
/// state in [`NodeState`] stays authoritative).
const EVENT_QUEUE: usize = 1024;

/// How a session behaves.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Addresses the node reports for itself (its local addresses).
    pub reported: Vec<SocketAddr>,
    /// Where the key cache lives on disk (0600); `None` keeps keys in memory only.
    pub key_cache: Option<PathBuf>,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Connect and first-answer timeout.
    pub connect_timeout: Duration,
    /// Keep-alive interval; a GMS silent for three intervals counts as gone.
    pub keep_alive: Duration,
    /// The node's state directory: renewed certificates and credentials are
    /// saved there (see [`Identity::save_renewal`]); `None` keeps them in
    /// memory only.
    pub identity_dir: Option<PathBuf>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            reported: Vec::new(),
            key_cache: None,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            keep_alive: tls::KEEP_ALIVE,
            identity_dir: None,
        }
    }
}

impl SessionConfig {
    /// Defaults with a key cache file.
    pub fn with_cache(path: PathBuf) -> Self {
        Self {
            key_cache: Some(path),
            ..Self::default()
        }
    }
}

/// What happened, for a node that reacts (the state is in [`NodeState`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A session is up and the full state was received.
    Connected,
    /// A group's valid key versions changed (newest first).
    Keys {
        /// The group.
        group: GroupId,
        /// Valid versions, newest first; empty when the group was left.
        versions: Vec<KeyVersion>,
    },
    /// The node's GE info changed (new credential).
    InfoChanged(GeInfo),
    /// The certificate and credential were renewed (and saved); the new
    /// credential is in [`NodeState::credential`], and the next connection
    /// presents the new certificate.
    Renewed {
        /// End of the new credential's validity, unix seconds.
        not_after: u64,
    },
    /// The GMS refused a renewal (the GE was revoked or removed).
    RenewalRefused {
        /// Why, as the GMS said.
        reason: String,
    },
    /// Serials were revoked.
    Revoked {
        /// The GE they belonged to.
        ge: GeId,
        /// The serials.
        serials: Vec<u64>,
    },
    /// A GE this node asked about changed.
    DirectoryChanged {
        /// Its name.
        name: String,
        /// Its new entry, `None` when gone.
        entry: Option<DirectoryEntry>,
    },
    /// A peer wants a connection with this node (hole punching): connect to
    /// its candidates now, so both NATs see outgoing packets at once.
    ConnectNow(Candidates),
    /// The full list of hosts behind gateways, sent after each session
    /// start by a GMS that knows hosts (the list replaces what
    /// [`NodeState::hosts`] held).
    Hosts(Vec<HostEntry>),
    /// A host behind a gateway was added or changed (`Some`), or removed
    /// (`None`), while connected.
    HostChanged {
        /// Its name.
        name: String,
        /// Its new entry, `None` when gone.
        entry: Option<HostEntry>,
    },
    /// Where the network's relay is (`host:port`; `None`: no relay),
    /// as the GMS said after the session started.
    Relay(Option<String>),
    /// The session dropped; a reconnect follows.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The GMS refused or revoked this node: no more reconnects.
    Terminated {
        /// Why.
        reason: String,
    },
}

/// What the node knows, updated by the session task.
#[derive(Debug, Default)]
pub struct NodeState {
    /// Valid group keys.
    pub keys: KeyCache,
    /// The current credential.
    pub credential: Option<Credential>,
    /// Revoked serials.
    pub revoked: BTreeSet<u64>,
    /// True while a session is up.
    pub connected: bool,
    /// Set when the GMS ended this node for good.
    pub terminated: Option<String>,
    /// Sessions established so far.
    pub sessions: u64,
    /// When the last renewal was received, unix seconds (this node's clock).
    pub last_renewal: Option<u64>,
    /// Renewals received since the session task started.
    pub renewals: u64,
    /// Why the last renewal was refused, until one succeeds.
    pub renewal_refused: Option<String>,
    /// The certificate this node presents, DER (renewals replace it).
    pub cert: Vec<u8>,
    /// Hosts behind gateways by name, as the GMS last said; `None` until a
    /// GMS that knows hosts sent its list.
    pub hosts: Option<BTreeMap<String, HostEntry>>,
    /// The current session chose [`crate::tls::ALPN_V3`]: the GMS lists
    /// without subscribing, answers digests and forgets follows.
    pub on_demand: bool,
}

struct Shared {
    state: Mutex<NodeState>,
    changed: watch::Sender<u64>,
    events: mpsc::Sender<Event>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, ev: Event) {
        let _ = self.events.try_send(ev);
        self.changed.send_modify(|n| *n += 1);
    }
}

/// What [`Session::sync_directory`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectorySync {
    /// The listing is the one whose digest the node gave.
    Unchanged,
    /// The whole listing, sorted by name.
    Listed {
        /// Every active GE.
        entries: Vec<ListedGe>,
        /// Its digest, to give to the next sync; `None` from a GMS
        /// without the directory on demand.
        digest: Option<[u8; 16]>,
    },
}

/// One page of a directory listing: the GEs and whether more follow.
type Page = (Vec<ListedGe>, bool);

enum Command {
    Query(String, oneshot::Sender<Option<DirectoryEntry>>),
    Report(Vec<SocketAddr>, oneshot::Sender<()>),
    /// A page of the listing: `true` subscribes (0x05), `false` does not (0x07).
    List(String, bool, oneshot::Sender<Page>),
    Digest(oneshot::Sender<[u8; 16]>),
    Forget(Vec<GeId>, oneshot::Sender<()>),
    Observe(oneshot::Sender<SocketAddr>),
    ConnectNow(GeId, oneshot::Sender<ConnectNowOutcome>),
}

enum Pending {
    Query(oneshot::Sender<Option<DirectoryEntry>>),
    Ack(oneshot::Sender<()>),
    List(oneshot::Sender<Page>),
    Digest(oneshot::Sender<[u8; 16]>),
    Observe(oneshot::Sender<SocketAddr>),
    ConnectNow(oneshot::Sender<ConnectNowOutcome>),
    Renew,
}

/// A running session (a task that reconnects until stopped or terminated).
pub struct Session {
    shared: Arc<Shared>,
    events: mpsc::Receiver<Event>,
    cmds: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    /// Starts the session task on `endpoint`. Keys from the on-disk cache
    /// are available at once, before the first connect.
    pub fn start(
        identity: Identity,
        endpoint: quinn::Endpoint,
        cfg: SessionConfig,
    ) -> Result<Self> {
        let client_cfg = tls::session_client_config(
            &identity.ca_cert,
            &identity.cert,
            identity.key_pkcs8(),
            cfg.keep_alive,
        )?;
        let mut state = NodeState::default();
        if let Some(p) = &cfg.key_cache {
            state.keys = KeyCache::load(p)?;
            state.keys.prune(now_unix());
        }
        // An expired credential is still this node's: it is what it shows
        // until the first session renews it (peers refuse it meanwhile).
        state.credential = crate::verify_from_gms(&identity.credential, &identity.ca_public).ok();
        state.cert = identity.cert.clone();
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            events: ev_tx,
        });
        let name = identity
            .verified_credential(now_unix())
            .map(|c| c.info.name)
            .unwrap_or_default();
        let task = tokio::spawn(
            run(identity, endpoint, client_cfg, cfg, shared.clone(), cmd_rx)
                .instrument(info_span!("gms-session", ge = %name)),
        );
        Ok(Self {
            shared,
            events: ev_rx,
            cmds: cmd_tx,
            task,
        })
    }

    /// The next event; `None` once the session task ended.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next event if one is queued, without waiting.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Runs `f` on the current state.
    pub fn with_state<T>(&self, f: impl FnOnce(&NodeState) -> T) -> T {
        f(&self.shared.lock())
    }

    /// The key of `group` at `version`, if still valid now.
    pub fn key(&self, group: GroupId, version: KeyVersion) -> Option<GroupKey> {
        self.with_state(|s| s.keys.key(group, version, now_unix()).cloned())
    }

    /// The current version of `group` and its key.
    pub fn current_key(&self, group: GroupId) -> Option<(KeyVersion, GroupKey)> {
        self.with_state(|s| s.keys.current(group).map(|(v, k)| (v, k.clone())))
    }

    /// The valid versions of `group`, newest first.
    pub fn key_versions(&self, group: GroupId) -> Vec<KeyVersion> {
        self.with_state(|s| s.keys.versions(group))
    }

    /// The node's GE info from its current credential.
    pub fn info(&self) -> Option<GeInfo> {
        self.with_state(|s| s.credential.as_ref().map(|c| c.info.clone()))
    }

    /// Waits until `pred` holds on the state, at most `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&NodeState) -> bool,
    ) -> Result<()> {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.shared.lock()) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Err(_) => return Err(Error::Timeout("waiting for the session state")),
                Ok(Err(_)) => return Err(Error::Terminated("session task ended".into())),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Asks the GMS where GE `name` can be reached (and subscribes to its changes).
    pub async fn query(&self, name: &str) -> Result<Option<DirectoryEntry>> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Command::Query(name.to_owned(), tx))
            .await
            .map_err(|_| Error::Terminated("session task ended".into()))?;
        rx.await
            .map_err(|_| Error::Stream("not connected to the GMS".into()))
    }

    /// Lists every enrolled GE (name, id, overlay address), page by page,
    /// sorted by name. Subscribes to the listed GEs' changes ([`Event::DirectoryChanged`]).
    pub async fn list_directory(&self) -> Result<Vec<ListedGe>> {
        self.list_pages(true).await
    }

    /// True when the current session has the directory on demand
    /// ([`crate::tls::ALPN_V3`]): [`Session::sync_directory`] then follows
    /// nothing, and [`Session::forget`] is understood.
    pub fn on_demand(&self) -> bool {
        self.with_state(|s| s.on_demand)
    }

    /// Brings a node's listing up to date. With the directory on demand
    /// the GMS is first asked for the listing's digest: when it is
    /// `known` (the digest of the node's last listing) nothing is listed;
    /// otherwise every page is, subscribing to nothing (the node follows
    /// the GEs it asks about with [`Session::query`]). With an older GMS
    /// this is [`Session::list_directory`], which follows every listed GE.
    pub async fn sync_directory(&self, known: Option<[u8; 16]>) -> Result<DirectorySync> {
        if !self.on_demand() {
            let entries = self.list_pages(true).await?;
            return Ok(DirectorySync::Listed {
                entries,
                digest: None,
            });
        }
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Command::Digest(tx))
            .await
            .map_err(|_| Error::Terminated("session task ended".into()))?;
        let digest = rx
            .await
            .map_err(|_| Error::Stream("not connected to the GMS".into()))?;
        if known == Some(digest) {
            return Ok(DirectorySync::Unchanged);
        }
        // A change between the digest and the pages makes the next sync
        // list again: the digest kept is never newer than the listing.
        let entries = self.list_pages(false).await?;
        Ok(DirectorySync::Listed {
            entries,
            digest: Some(digest),
        })
    }

    /// Stops following these GEs (the directory on demand): the GMS no
    /// longer pushes their changes to this node. Ok at once on a session
    /// without the directory on demand (there is nothing to ask).
    pub async fn forget(&self, ges: &[GeId]) -> Result<()> {
        if !self.on_demand() {
            return Ok(());
        }
        for chunk in ges.chunks(crate::wire::MAX_FORGET) {
            let (tx, rx) = oneshot::channel();
            self.cmds
                .send(Command::Forget(chunk.to_vec(), tx))
                .await
                .map_err(|_| Error::Terminated("session task ended".into()))?;
            rx.await
                .map_err(|_| Error::Stream("not connected to the GMS".into()))?;
        }
        Ok(())
    }

    async fn list_pages(&self, subscribe: bool) -> Result<Vec<ListedGe>> {
        let mut all: Vec<ListedGe> = Vec::new();
        loop {
            let after = all.last().map(|e| e.name.clone()).unwrap_or_default();
            let (tx, rx) = oneshot::channel();
            self.cmds
                .send(Command::List(after, subscribe, tx))
                .await
                .map_err(|_| Error::Terminated("session task ended".into()))?;
            let (page, more) = rx
                .await
                .map_err(|_| Error::Stream("not connected to the GMS".into()))?;
            let progressed = !page.is_empty();
            all.extend(page);
            if !more || !progressed {
                return Ok(all);
            }
        }
    }

    /// Asks the GMS where it sees this session come from: the reflexive
    /// address of the socket the session runs on.
    pub async fn observe(&self) -> Result<SocketAddr> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Command::Observe(tx))
            .await
            .map_err(|_| Error::Terminated("session task ended".into()))?;
        rx.await
            .map_err(|_| Error::Stream("not connected to the GMS".into()))
    }

    /// Asks the GMS to tell GE `ge` to connect to this node now (it pushes
    /// [`Event::ConnectNow`] there, rate-limited per pair).
    pub async fn connect_now(&self, ge: GeId) -> Result<ConnectNowOutcome> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Command::ConnectNow(ge, tx))
            .await
            .map_err(|_| Error::Terminated("session task ended".into()))?;
        rx.await
            .map_err(|_| Error::Stream("not connected to the GMS".into()))
    }

    /// [`Session::connect_now`] without waiting for the answer: false when
    /// the request could not even be queued (the session task is busy or
    /// gone). For callers that must not stall on the GMS.
    pub fn request_connect_now(&self, ge: GeId) -> bool {
        let (tx, _rx) = oneshot::channel();
        self.cmds.try_send(Command::ConnectNow(ge, tx)).is_ok()
    }

    /// Tells the GMS the node's addresses changed.
    pub async fn report_addresses(&self, addrs: Vec<SocketAddr>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Command::Report(addrs, tx))
            .await
            .map_err(|_| Error::Terminated("session task ended".into()))?;
        rx.await
            .map_err(|_| Error::Stream("not connected to the GMS".into()))
    }
}

async fn run(
    mut identity: Identity,
    endpoint: quinn::Endpoint,
    mut client_cfg: quinn::ClientConfig,
    mut cfg: SessionConfig,
    shared: Arc<Shared>,
    mut cmds: mpsc::Receiver<Command>,
) {
    let mut backoff = cfg.backoff_min;
    loop {
        let before = shared.lock().sessions;
        let r = connect_once(
            &mut identity,
            &endpoint,
            &mut client_cfg,
            &mut cfg,
            &shared,
            &mut cmds,
        )
        .await;
        let was_up = shared.lock().sessions > before;
        {
            let mut s = shared.lock();
            s.connected = false;
            // The next GMS may be an older one.
            s.on_demand = false;
        }
        // A GMS that shuts down says over how long its nodes should spread
        // their return.
        let spread = match &r {
            Err(Error::Connection(quinn::ConnectionError::ApplicationClosed(ac)))
                if ac.error_code.into_inner() == u64::from(close::SHUTDOWN) =>
            {
                crate::wire::shutdown_spread(&ac.reason)
            }
            _ => None,
        };
        let reason = match r {
            Ok(()) => return,
            Err(Error::Terminated(reason)) => {
                warn!(%reason, "the GMS ended this node's session for good");
                shared.lock().terminated = Some(reason.clone());
                shared.emit(Event::Terminated { reason });
                return;
            }
            Err(e) => e.to_string(),
        };
        debug!(%reason, "session down");
        shared.emit(Event::Disconnected { reason });
        if was_up {
            backoff = cfg.backoff_min;
        }
        // Jitter (50-100 %) keeps a fleet from reconnecting in lockstep after a GMS restart.
        let jitter = crate::random::<1>().map_or(255, |b| b[0]);
        let mut wait = backoff.mul_f64(0.5 + f64::from(jitter) / 510.0);
        if let Some(spread) = spread {
            let r = crate::random::<2>().map_or(0, u16::from_be_bytes);
            wait += spread.mul_f64(f64::from(r) / 65_536.0);
            debug!(
                ?wait,
                "the GMS is restarting: coming back within its spread"
            );
        }
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                c = cmds.recv() => match c {
                    // Requests while disconnected fail at once (their reply channel drops).
                    Some(_) => {}
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// One connection: returns when it ends. `Err(Terminated)` means do not retry.
async fn connect_once(
    identity: &mut Identity,
    endpoint: &quinn::Endpoint,
    client_cfg: &mut quinn::ClientConfig,
    cfg: &mut SessionConfig,
    shared: &Arc<Shared>,
    cmds: &mut mpsc::Receiver<Command>,
) -> Result<()> {
    let addr = resolve(&identity.gms_addr).await?;
    let conn = tokio::time::timeout(
        cfg.connect_timeout,
        endpoint.connect_with(client_cfg.clone(), addr, SERVER_NAME)?,
    )
    .await
    .map_err(|_| Error::Timeout("connecting to the GMS"))?
    .map_err(classify)?;
    let r = session_loop(&conn, identity, client_cfg, cfg, shared, cmds).await;
    let r = match r {
        // The connection's own close reason says more than the stream error.
        Err(e) => Err(conn.close_reason().map_or(e, classify)),
        Ok(()) => Ok(()),
    };
    conn.close(close::NORMAL.into(), b"bye");
    r
}

async fn session_loop(
    conn: &quinn::Connection,
    identity: &mut Identity,
    client_cfg: &mut quinn::ClientConfig,
    cfg: &mut SessionConfig,
    shared: &Arc<Shared>,
    cmds: &mut mpsc::Receiver<Command>,
) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(classify)?;
    let hello = ClientMsg::Hello {
        reported: cfg.reported.clone(),
        version: Some(crate::VERSION.into()),
    };
    write_frame(&mut send, &hello.encode()?).await?;
    let (ty, body) = tokio::time::timeout(cfg.connect_timeout, read_frame(&mut recv))
        .await
        .map_err(|_| Error::Timeout("session start"))??
        .ok_or_else(|| Error::Protocol("the GMS closed the session stream".into()))?;
    let ServerMsg::SessionInit(init) = ServerMsg::decode(ty, &body)? else {
        return Err(Error::Protocol(
            "the session did not start with SessionInit".into(),
        ));
    };
    // The GMS's clock decides the validity of what it just issued; a node
    // whose clock is off still accepts its own fresh credential.
    let offset = i128::from(init.server_time) - i128::from(now_unix());
    if offset.abs() > 300 {
        warn!(
            offset_secs = offset as i64,
            "this node's clock differs from the GMS's"
        );
    }
    let cred = verify_credential(identity, &init.credential)?;
    let mut renew_at = tokio::time::Instant::now()
        + crate::renewal::renewal_delay(cred.not_after, init.server_time, jitter());
    let groups: BTreeSet<GroupId> = cred.info.groups.clone();
    let mut changed_groups: Vec<(GroupId, Vec<KeyVersion>)> = Vec::new();
    // A `ge set` while this node was away (or before it restarted with the
    // credential it enrolled with) reaches it only here: say so, as for a
    // push, or the node keeps sending its old credential.
    let reissued;
    {
        let mut s = shared.lock();
        reissued = (s.credential.as_ref() != Some(&cred)).then(|| cred.info.clone());
        s.keys.retain_groups(&groups);
        for gk in init.groups {
            let g = gk.group;
            s.keys.apply(gk);
            changed_groups.push((g, s.keys.versions(g)));
        }
        s.credential = Some(cred);
        s.revoked = init.revoked.into_iter().collect();
        s.connected = true;
        s.on_demand = crate::tls::negotiated_v3(conn);
        s.sessions += 1;
    }
    save_cache(cfg, shared);
    info!("connected to the GMS");
    shared.emit(Event::Connected);
    if let Some(info) = reissued {
        shared.emit(Event::InfoChanged(info));
    }
    for (group, versions) in changed_groups {
        shared.emit(Event::Keys { group, versions });
    }

    // Frames are read by their own task so a read is never cut by select!.
    let (msg_tx, mut msgs) = mpsc::channel::<Result<ServerMsg>>(64);
    let _reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let r = match read_frame(&mut recv).await {
                Ok(Some((ty, body))) => ServerMsg::decode(ty, &body),
                Ok(None) => Err(Error::Stream("the GMS closed the session stream".into())),
                Err(e) => Err(e),
            };
            let stop = r.is_err();
            if msg_tx.send(r).await.is_err() || stop {
                break;
            }
        }
    }));
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut renewing = false;
    loop {
        tokio::select! {
            m = msgs.recv() => {
                let Some(m) = m else { break Err(Error::Stream("reader ended".into())) };
                let m = match m {
                    Ok(m) => m,
                    Err(e) => break Err(e),
                };
                let is_renewal = matches!(pending.front(), Some(Pending::Renew))
                    && matches!(m, ServerMsg::Renewed(_) | ServerMsg::Refused { .. });
                if is_renewal {
                    pending.pop_front();
                    renewing = false;
                    let next = match on_renewal(m, identity, client_cfg, cfg, shared) {
                        Ok(d) => d,
                        Err(e) => break Err(e),
                    };
                    renew_at = tokio::time::Instant::now() + next;
                    continue;
                }
                if let Err(e) = handle_push(m, identity, cfg, shared, &mut pending) {
                    break Err(e);
                }
            }
            _ = tokio::time::sleep_until(renew_at), if !renewing => {
                match ClientMsg::Renew.encode() {
                    Ok(f) => {
                        if let Err(e) = write_frame(&mut send, &f).await {
                            break Err(e);
                        }
                        debug!("asking the GMS to renew this node's credential");
                        pending.push_back(Pending::Renew);
                        renewing = true;
                    }
                    Err(e) => break Err(e),
                }
            }
            c = cmds.recv() => {
                let Some(c) = c else { break Ok(()) };
                let (frame, p) = match c {
                    Command::Query(name, tx) => (ClientMsg::DirectoryQuery(name), Pending::Query(tx)),
                    Command::Report(addrs, tx) => {
                        cfg.reported = addrs.clone();
                        (ClientMsg::ReportAddresses(addrs), Pending::Ack(tx))
                    }
                    Command::List(after, true, tx) => {
                        (ClientMsg::DirectoryList { after }, Pending::List(tx))
                    }
                    Command::List(after, false, tx) => {
                        (ClientMsg::DirectoryPage { after }, Pending::List(tx))
                    }
                    Command::Digest(tx) => (ClientMsg::DirectoryDigest, Pending::Digest(tx)),
                    Command::Forget(ges, tx) => (ClientMsg::DirectoryForget(ges), Pending::Ack(tx)),
                    Command::Observe(tx) => (ClientMsg::Observe, Pending::Observe(tx)),
                    Command::ConnectNow(ge, tx) => {
                        (ClientMsg::ConnectNow(ge), Pending::ConnectNow(tx))
                    }
                };
                match frame.encode() {
                    Ok(f) => {
                        if let Err(e) = write_frame(&mut send, &f).await {
                            break Err(e);
                        }
                        pending.push_back(p);
                    }
                    // A bad request (e.g. a name too long) fails alone: its reply drops.
                    Err(e) => debug!(error = %e, "request not sent"),
                }
            }
        }
    }
}

fn handle_push(
    m: ServerMsg,
    identity: &Identity,
    cfg: &SessionConfig,
    shared: &Arc<Shared>,
    pending: &mut VecDeque<Pending>,
) -> Result<()> {
    match m {
        ServerMsg::GroupKeys(gk) => apply_keys(gk, cfg, shared),
        ServerMsg::GeInfo(c) => {
            let cred = verify_credential(identity, &c)?;
            let info = cred.info.clone();
            {
                let mut s = shared.lock();
                s.keys.retain_groups(&info.groups);
                s.credential = Some(cred);
            }
            save_cache(cfg, shared);
            shared.emit(Event::InfoChanged(info));
        }
        ServerMsg::Revoked { ge, serials } => {
            shared.lock().revoked.extend(serials.iter().copied());
            shared.emit(Event::Revoked { ge, serials });
        }
        ServerMsg::DirectoryChanged { name, entry } => {
            shared.emit(Event::DirectoryChanged { name, entry });
        }
        ServerMsg::Relay(addr) => {
            shared.emit(Event::Relay(Some(addr).filter(|a| !a.is_empty())));
        }
        ServerMsg::Hosts(list) => {
            debug!(hosts = list.len(), "hosts behind gateways");
            shared.lock().hosts = Some(list.iter().map(|h| (h.name.clone(), h.clone())).collect());
            shared.emit(Event::Hosts(list));
        }
        ServerMsg::HostChanged { name, entry } => {
            {
                let mut s = shared.lock();
                let hosts = s.hosts.get_or_insert_with(BTreeMap::new);
                match &entry {
                    Some(h) => {
                        hosts.insert(name.clone(), h.clone());
                    }
                    None => {
                        hosts.remove(&name);
                    }
                }
            }
            debug!(host = %name, present = entry.is_some(), "host behind a gateway changed");
            shared.emit(Event::HostChanged { name, entry });
        }
        ServerMsg::DirectoryAnswer(entry) => match pending.pop_front() {
            Some(Pending::Query(tx)) => {
                let _ = tx.send(entry);
            }
            _ => return Err(Error::Protocol("unexpected directory answer".into())),
        },
        ServerMsg::DirectoryListing { entries, more } => match pending.pop_front() {
            Some(Pending::List(tx)) => {
                let _ = tx.send((entries, more));
            }
            _ => return Err(Error::Protocol("unexpected directory listing".into())),
        },
        ServerMsg::DirectoryDigest(d) => match pending.pop_front() {
            Some(Pending::Digest(tx)) => {
                let _ = tx.send(d);
            }
            _ => return Err(Error::Protocol("unexpected directory digest".into())),
        },
        ServerMsg::Ack => match pending.pop_front() {
            Some(Pending::Ack(tx)) => {
                let _ = tx.send(());
            }
            _ => return Err(Error::Protocol("unexpected acknowledgement".into())),
        },
        ServerMsg::Observed(a) => match pending.pop_front() {
            Some(Pending::Observe(tx)) => {
                let _ = tx.send(a);
            }
            _ => return Err(Error::Protocol("unexpected observed address".into())),
        },
        ServerMsg::ConnectNowSent(o) => match pending.pop_front() {
            Some(Pending::ConnectNow(tx)) => {
                let _ = tx.send(o);
            }
            _ => return Err(Error::Protocol("unexpected connect-now answer".into())),
        },
        ServerMsg::ConnectNow(c) => shared.emit(Event::ConnectNow(c)),
        ServerMsg::Enrolled(_)
        | ServerMsg::Refused { .. }
        | ServerMsg::SessionInit(_)
        | ServerMsg::Renewed(_) => {
            return Err(Error::Protocol(
                "unexpected message inside a session".into(),
            ));
        }
    }
    Ok(())
}

/// A byte of OS randomness for the renewal jitter (mid-range if none).
fn jitter() -> u8 {
    crate::random::<1>().map_or(128, |b| b[0])
}

/// Handles the answer to a renewal: checks, saves and swaps in the new
/// certificate and credential, or records the refusal. Returns when to ask
/// next. A refusal is not fatal here: a revoked GE's session is closed by
/// the GMS anyway, and a transient refusal (the GMS could not commit) is
/// retried.
fn on_renewal(
    m: ServerMsg,
    identity: &mut Identity,
    client_cfg: &mut quinn::ClientConfig,
    cfg: &SessionConfig,
    shared: &Arc<Shared>,
) -> Result<Duration> {
    let (not_after, server_now) = shared
        .lock()
        .credential
        .as_ref()
        .map_or((0, now_unix()), |c| (c.not_after, now_unix()));
    match m {
        ServerMsg::Renewed(r) => {
            let cred = verify_credential(identity, &r.credential)?;
            let own = identity.node_key()?.public();
            if !r.cert.windows(own.len()).any(|w| w == own) {
                return Err(Error::Protocol(
                    "the GMS renewed a certificate for another key".into(),
                ));
            }
            let new_cfg = tls::session_client_config(
                &identity.ca_cert,
                &r.cert,
                identity.key_pkcs8(),
                cfg.keep_alive,
            )?;
            identity.cert = r.cert;
            identity.credential = r.credential;
            // Saved before it is used: a crash after this point restarts
            // with the new pair; before it, with the old one (still valid).
            if let Some(dir) = &cfg.identity_dir
                && let Err(e) = identity.save_renewal(dir)
            {
                warn!(error = %e, "saving the renewed credential; keeping it in memory");
            }
            *client_cfg = new_cfg;
            let not_after = cred.not_after;
            {
                let mut s = shared.lock();
                s.credential = Some(cred);
                s.cert = identity.cert.clone();
                s.last_renewal = Some(now_unix());
                s.renewals += 1;
                s.renewal_refused = None;
            }
            info!(not_after, "credential renewed");
            shared.emit(Event::Renewed { not_after });
            Ok(crate::renewal::renewal_delay(
                not_after,
                r.server_time,
                jitter(),
            ))
        }
        ServerMsg::Refused { code, reason } => {
            warn!(?code, %reason, "the GMS refused to renew this node's credential");
            shared.lock().renewal_refused = Some(reason.clone());
            shared.emit(Event::RenewalRefused { reason });
            Ok(crate::renewal::retry_delay(not_after, server_now))
        }
        _ => Err(Error::Protocol("unexpected answer to a renewal".into())),
    }
}

fn apply_keys(gk: GroupKeys, cfg: &SessionConfig, shared: &Arc<Shared>) {
    let group = gk.group;
    let versions = {
        let mut s = shared.lock();
        s.keys.apply(gk);
        s.keys.versions(group)
    };
    debug!(%group, ?versions, "group keys updated");
    save_cache(cfg, shared);
    shared.emit(Event::Keys { group, versions });
}

fn save_cache(cfg: &SessionConfig, shared: &Arc<Shared>) {
    if let Some(p) = &cfg.key_cache {
        let bytes = shared.lock().keys.clone();
        if let Err(e) = bytes.save(p) {
            warn!(error = %e, "saving the key cache");
        }
    }
}

/// Verifies a credential the GMS sent over this authenticated session: the
/// CA signature must hold; validity is judged by the GMS (see
/// [`super::verify_from_gms`]), so a skewed node clock does not lock it out.
fn verify_credential(identity: &Identity, bytes: &[u8]) -> Result<Credential> {
    let c = super::verify_from_gms(bytes, &identity.ca_public)?;
    let own = identity.node_key()?.public();
    if c.node_key != own {
        return Err(Error::Protocol(
            "the GMS sent a credential for another key".into(),
        ));
    }
    Ok(c)
}

/// Turns a connection error into `Terminated` when retrying cannot help.
fn classify(e: quinn::ConnectionError) -> Error {
    match &e {
        quinn::ConnectionError::ApplicationClosed(ac) => {
            let code = ac.error_code.into_inner();
            let reason = String::from_utf8_lossy(&ac.reason).into_owned();
            if code == u64::from(close::REFUSED) || code == u64::from(close::REVOKED) {
                return Error::Terminated(reason);
            }
            Error::Connection(e)
        }
        quinn::ConnectionError::ConnectionClosed(cc) => {
            let code = u64::from(cc.error_code);
            // 0x100-0x1ff: a TLS alert; the GMS refused our certificate.
            if (0x100..0x200).contains(&code) {
                return Error::Terminated(format!("the GMS refused the TLS handshake: {cc}"));
            }
            Error::Connection(e)
        }
        _ => Error::Connection(e),
    }
}
