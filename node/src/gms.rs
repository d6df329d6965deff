//! The daemon's GMS side: drives the client [`Session`], passes keys and
//! revocations to the node core and the carrier, and keeps the peer
//! [`Directory`] (the on-disk cache `peers.json`, and what to fetch) in step
//! with the GMS. Every change goes to the core as a command: the core's
//! peer table is what the node routes by, and the DNS stub's names and
//! `ping`'s resolution are published from it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fpn_gms_client::{Event, Session};
use fpn_proto::ge::{GeId, GroupId};
use fpn_proto::keys::KeyVersion;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::carrier::{PeerTarget, QuicCarrier};
use crate::core::Command;
use crate::directory::{Directory, HostRecord, PeerRecord, carrier_addrs, record_from_entry};
use crate::error::{Error, Result};

/// How often the full directory listing is refreshed while connected.
const LIST_EVERY: Duration = Duration::from_secs(30);
/// Least time between two listings triggered by unknown addresses.
const LIST_MIN_GAP: Duration = Duration::from_secs(1);
/// Sweeps (one per [`LIST_EVERY`]) in a row that found no live flow with a
/// followed peer before the node stops following it (directory on demand).
const FORGET_AFTER_SWEEPS: u8 = 2;
/// Most peers with live flows one sweep starts following (the rest, the
/// next sweeps).
const FOLLOWS_PER_SWEEP: usize = 64;
/// How long one directory request to the GMS may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// What `status` shows of the GMS side.
#[derive(Debug, Default, Clone)]
pub struct GmsView {
    /// True while a session is up.
    pub connected: bool,
    /// Groups and their valid key versions, newest first.
    pub groups: BTreeMap<GroupId, Vec<KeyVersion>>,
    /// End of this node's credential (and certificate) validity, unix seconds.
    pub credential_not_after: Option<u64>,
    /// The credential's serial.
    pub credential_serial: Option<u64>,
    /// When the last renewal arrived, unix seconds.
    pub last_renewal: Option<u64>,
    /// Renewals since the daemon started.
    pub renewals: u64,
    /// Why the GMS refused the last renewal, until one succeeds.
    pub renewal_refused: Option<String>,
    /// This node's reflexive address: where the GMS sees the carrier's
    /// socket (the public side of a NAT). Learnt at each session start.
    pub reflexive: Option<SocketAddr>,
    /// Connect-now requests sent to the GMS (this node dialed a peer).
    pub punches_asked: u64,
    /// Connect-now pushes received (a peer dialed this node).
    pub punches_received: u64,
}

/// State shared with the daemon (status, ping).
#[derive(Debug, Clone, Default)]
pub struct Shared {
    view: Arc<Mutex<GmsView>>,
    dir: Arc<Mutex<Directory>>,
}

impl Shared {
    /// Shared state seeded with a directory (from the disk cache).
    pub fn new(dir: Directory) -> Self {
        Self {
            view: Arc::default(),
            dir: Arc::new(Mutex::new(dir)),
        }
    }

    /// The GMS view.
    pub fn view(&self) -> MutexGuard<'_, GmsView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory.
    pub fn dir(&self) -> MutexGuard<'_, Directory> {
        self.dir.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Everything the GMS task needs.
pub struct GmsTask {
    /// The session (started by the daemon).
    pub session: Session,
    /// The network CA's key (directory credentials are verified with it).
    pub ca_public: [u8; 32],
    /// This node's GE id.
    pub own_ge: GeId,
    /// The node core's command channel (read by its driver).
    pub engine: mpsc::Sender<Command>,
    /// The carrier (revocations cut its connections).
    pub carrier: Arc<QuicCarrier>,
    /// The relay link: the GMS says where the relay is.
    pub relay: Option<fpn_relay::RelayClient>,
    /// Shared with the daemon.
    pub shared: Shared,
    /// Where the directory is cached.
    pub cache_path: PathBuf,
    /// Overlay addresses the engine needs an owner for.
    pub requests: mpsc::Receiver<Ipv4Addr>,
    /// Seconds a directory record is trusted.
    pub ttl: u64,
    /// Peers the carrier started dialing (ask the GMS to make them dial back).
    pub punch_requests: mpsc::Receiver<GeId>,
    /// `netcheck`: ask the GMS for this node's reflexive address now.
    pub observe_requests: mpsc::Receiver<oneshot::Sender<Option<SocketAddr>>>,
    /// The node's own (local) carrier addresses, as reported at start.
    pub reported: Vec<SocketAddr>,
    /// New external addresses from the port-mapping client (`None`: the
    /// mapping was lost); `None` when port mapping is off.
    pub mapped_updates: Option<mpsc::Receiver<Option<SocketAddr>>>,
    /// The current port mapping, reported with the local addresses.
    pub mapped: Option<SocketAddr>,
    /// The node's local carrier addresses after a network change (the
    /// driver's network watcher): reported at once, so that new peers find
    /// a moved node; a move never waits for this (peers already talking
    /// follow it on their own).
    pub local_updates: Option<mpsc::Receiver<Vec<SocketAddr>>>,
    /// The real-address plane is on: every listed peer's credential is
    /// fetched (a listing names no prefixes, and the host's traffic to a
    /// peer's real address reaches the node only once its route exists).
    pub fetch_credentials: bool,
    /// The core's driver: which peers have live flows (the directory on
    /// demand follows those).
    pub queries: mpsc::Sender<crate::driver::Query>,
    /// What this node follows of the directory; `Following::default()`.
    pub following: Following,
}

/// The directory on demand (design note 66): the node lists names and
/// overlay addresses (so names resolve at once) without following anyone,
/// and follows (hears the address changes of) only the peers it talks to.
#[derive(Debug, Default)]
pub struct Following {
    /// Digest of the last full listing: a sync that finds it unchanged
    /// lists nothing.
    digest: Option<[u8; 16]>,
    /// The peers followed.
    peers: BTreeMap<GeId, Follow>,
}

/// One followed peer.
#[derive(Debug, Clone, Copy)]
struct Follow {
    /// The session (its number, `NodeState::sessions`) in which the GMS
    /// confirmed the follow: a GMS forgets every follow when a session
    /// ends, so one from an older session is to be asked for again.
    session: u64,
    /// Sweeps in a row that found no live flow with the peer.
    idle: u8,
}

impl Following {
    /// The GMS answered a query about `ge` in session `session`: it
    /// follows `ge` for this node from now on, as if just used.
    fn confirmed(&mut self, ge: GeId, session: u64) {
        self.peers.insert(ge, Follow { session, idle: 0 });
    }

    /// True when `ge` is followed in session `session` (the current one).
    fn is_followed(&self, ge: GeId, session: u64) -> bool {
        self.peers.get(&ge).is_some_and(|f| f.session == session)
    }

    /// The number of peers followed.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True when no peer is followed.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Counts a sweep: peers in `live` are in use; the others age by one
    /// sweep. Returns the peers to forget now (idle for
    /// [`FORGET_AFTER_SWEEPS`] sweeps), no longer followed.
    fn sweep(&mut self, live: &BTreeSet<GeId>) -> Vec<GeId> {
        let mut forget = Vec::new();
        self.peers.retain(|ge, f| {
            if live.contains(ge) {
                f.idle = 0;
                return true;
            }
            f.idle += 1;
            if f.idle >= FORGET_AFTER_SWEEPS {
                forget.push(*ge);
                return false;
            }
            true
        });
        forget
    }
}

/// Most peers whose credential one listing fetches (the real-address
/// plane); the rest come with the next listing.
const CREDENTIALS_PER_LIST: usize = 64;

/// Most listed peers whose credential one listing fetches otherwise. A
/// node keeps every peer's credential in its cache (`peers.json`), so that
/// a first contact works from the cache while the GMS is down and both
/// ends of a new pair can probe the native path from the start; the fetch
/// follows the peer, and the sweeps forget it again unless the node talks
/// to it (design note 66). Bounded so that a new fleet fills its caches
/// over minutes rather than all at once.
const PREFETCH_PER_LIST: usize = 16;

/// The next item of an optional channel; never ready without one (or once
/// it closed).
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => match r.recv().await {
            Some(v) => Some(v),
            None => {
                *rx = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// The addresses a node reports: its port mapping first (a candidate peers
/// dial at once and recognise by its IP, that of the node's NAT; see
/// `carrier::candidates::is_mapped`; first, so that peers that keep only
/// the first few addresses keep it), then its local ones, at most
/// [`fpn_gms_client::wire::MAX_ADDRS`].
pub fn reported_addrs(local: &[SocketAddr], mapped: Option<SocketAddr>) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = mapped.into_iter().collect();
    out.extend(local.iter().copied().filter(|a| Some(*a) != mapped));
    out.truncate(fpn_gms_client::wire::MAX_ADDRS);
    out
}

impl GmsTask {
    /// Runs until the session ends. `Err(Error::Terminated)` when the GMS
    /// revoked or refused this node.
    pub async fn run(mut self) -> Result<()> {
        self.send_initial_keys().await;
        self.show_credential();
        let mut refresh = tokio::time::interval(LIST_EVERY);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_list = tokio::time::Instant::now() - LIST_EVERY;
        // Until the first session is up this node has heard nothing since it
        // started: the silence bound counts from here.
        self.report_gms(false).await;
        loop {
            enum Wake {
                Ev(Option<Event>),
                Need(Option<Ipv4Addr>),
                Punch(Option<GeId>),
                Observe(Option<oneshot::Sender<Option<SocketAddr>>>),
                Mapped(Option<SocketAddr>),
                Local(Vec<SocketAddr>),
                Refresh,
            }
            let wake = tokio::select! {
                ev = self.session.next_event() => Wake::Ev(ev),
                r = self.requests.recv() => Wake::Need(r),
                p = self.punch_requests.recv() => Wake::Punch(p),
                o = self.observe_requests.recv() => Wake::Observe(o),
                Some(m) = recv_opt(&mut self.mapped_updates) => Wake::Mapped(m),
                Some(l) = recv_opt(&mut self.local_updates) => Wake::Local(l),
                _ = refresh.tick() => Wake::Refresh,
            };
            match wake {
                Wake::Punch(None) => return Ok(()),
                Wake::Punch(Some(ge)) => {
                    self.ask_connect_now(ge);
                    self.follow(ge).await;
                }
                Wake::Observe(None) => return Ok(()),
                Wake::Observe(Some(reply)) => {
                    let now = if self.shared.view().connected {
                        self.observe().await
                    } else {
                        None
                    };
                    let _ = reply.send(now);
                }
                Wake::Local(l) => {
                    self.reported = l;
                    if self.shared.view().connected {
                        self.report_addrs().await;
                    }
                }
                Wake::Mapped(m) => {
                    self.mapped = m;
                    if self.shared.view().connected {
                        self.report_addrs().await;
                    }
                }
                Wake::Ev(None) => return Ok(()),
                Wake::Ev(Some(ev)) => self.on_event(ev, &mut last_list).await?,
                Wake::Need(None) => return Ok(()),
                Wake::Need(Some(ip)) => self.resolve_addr(ip, &mut last_list).await,
                Wake::Refresh => {
                    if self.shared.view().connected {
                        self.list(&mut last_list).await;
                        self.sweep().await;
                    }
                }
            }
        }
    }

    async fn send_initial_keys(&mut self) {
        // Keys from the on-disk cache: the node works before (or without) a GMS.
        let groups: Vec<GroupId> = self.session.with_state(|s| s.keys.groups().collect());
        for g in groups {
            let versions = self.session.key_versions(g);
            self.push_keys(g, versions).await;
        }
    }

    async fn push_keys(&mut self, group: GroupId, versions: Vec<KeyVersion>) {
        let keys: Vec<_> = versions
            .iter()
            .filter_map(|v| self.session.key(group, *v).map(|k| (*v, k)))
            .collect();
        {
            let mut view = self.shared.view();
            if keys.is_empty() {
                view.groups.remove(&group);
            } else {
                view.groups
                    .insert(group, keys.iter().map(|(v, _)| *v).collect());
            }
        }
        let _ = self.engine.send(Command::Keys { group, keys }).await;
    }

    async fn on_event(&mut self, ev: Event, last_list: &mut tokio::time::Instant) -> Result<()> {
        match ev {
            Event::Connected => {
                self.shared.view().connected = true;
                self.show_credential();
                info!("GMS session up");
                // Revocations made while this node was away come only in the
                // session's first message: apply the whole list.
                let revoked: Vec<u64> = self
                    .session
                    .with_state(|s| s.revoked.iter().copied().collect());
                self.carrier.revoke_serials(&revoked);
                let _ = self.engine.send(Command::RevocationList(revoked)).await;
                self.report_gms(true).await;
                if self.mapped.is_some() {
                    self.report_addrs().await;
                }
                // A new session may come from a new mapping (a NAT reboot, a
                // new network): learn it afresh.
                self.shared.view().reflexive = None;
                self.observe().await;
                self.list(last_list).await;
                // Follow again the peers this node talks to: with the
                // directory on demand, those it followed; an older GMS
                // knows no such thing, and every peer with addresses is asked.
                let names: Vec<String> = if self.session.on_demand() {
                    // Those the directory no longer has are dropped.
                    let dir = self.shared.dir();
                    self.following
                        .peers
                        .retain(|ge, _| dir.by_ge(*ge).is_some());
                    let peers = self.following.peers.keys();
                    peers
                        .filter_map(|ge| dir.by_ge(*ge).map(|r| r.name.clone()))
                        .collect()
                } else {
                    self.shared
                        .dir()
                        .iter()
                        .filter(|r| r.fetched > 0)
                        .map(|r| r.name.clone())
                        .collect()
                };
                for n in names {
                    self.query(&n).await;
                }
            }
            Event::Keys { group, versions } => self.push_keys(group, versions).await,
            Event::ConnectNow(c) => {
                // The peer dials our candidates now; dialing its candidates
                // at the same time opens our NAT towards it.
                debug!(peer = %c.ge, "connect-now from the GMS");
                self.shared.view().punches_received += 1;
                let (addrs, reflexive) = carrier_addrs(&c.local, c.reflexive);
                self.carrier.punch(PeerTarget {
                    ge: c.ge,
                    addrs,
                    reflexive,
                });
            }
            Event::InfoChanged(info) => {
                info!(groups = ?info.groups, mode = ?info.mode, "this node's GE info changed");
                // Peers judge this node by the credential it sends: the new
                // one (already checked by the session) goes to DPRP at once,
                // or peers keep seeing the old groups and prefixes.
                let cred = self.session.with_state(|s| s.credential.clone());
                if let Some(c) = cred {
                    let _ = self.engine.send(Command::Credential(Box::new(c))).await;
                }
                let left: Vec<GroupId> = self
                    .shared
                    .view()
                    .groups
                    .keys()
                    .filter(|g| !info.groups.contains(g))
                    .copied()
                    .collect();
                for g in left {
                    self.push_keys(g, Vec::new()).await;
                }
            }
            Event::Renewed { not_after } => {
                // New negotiations show the new credential at once, and new
                // carrier handshakes the new certificate; flows and
                // connections already up are not touched.
                let (cred, cert) = self
                    .session
                    .with_state(|s| (s.credential.clone(), s.cert.clone()));
                if let Some(c) = cred {
                    let _ = self.engine.send(Command::Credential(Box::new(c))).await;
                }
                if let Err(e) = self.carrier.set_certificate(&cert) {
                    warn!(error = %e, "renewed certificate not taken by the carrier");
                }
                if let Some(r) = &self.relay
                    && let Err(e) = r.set_certificate(&cert)
                {
                    warn!(error = %e, "renewed certificate not taken by the relay link");
                }
                self.show_credential();
                info!(not_after, "own credential renewed");
            }
            Event::RenewalRefused { reason } => {
                warn!(%reason, "the GMS refused to renew this node's credential");
                self.show_credential();
            }
            Event::Revoked { ge, serials } => {
                info!(%ge, serials = serials.len(), "credentials revoked");
                self.carrier.revoke_serials(&serials);
                let _ = self.engine.send(Command::Revoked { ge, serials }).await;
                if ge == self.own_ge {
                    return Ok(());
                }
                // Revoked for good, or re-enrolled (a new certificate)?
                let name = self.shared.dir().by_ge(ge).map(|r| r.name.clone());
                if let Some(name) = name {
                    self.query(&name).await;
                }
            }
            Event::DirectoryChanged { name, entry } => match entry {
                Some(e) => self.store_entry(&e).await,
                None => self.gone(&name).await,
            },
            Event::Relay(addr) => self.set_relay(addr).await,
            Event::Hosts(list) => {
                let changed = self.shared.dir().set_hosts(list.iter().map(HostRecord::of));
                if changed {
                    info!(hosts = list.len(), "hosts behind gateways");
                    self.save();
                    self.on_hosts_changed().await;
                }
            }
            Event::HostChanged { name, entry } => {
                let changed = match entry {
                    Some(h) => {
                        debug!(host = %name, gateway = %h.via_name, "host behind a gateway changed");
                        self.shared.dir().upsert_host(HostRecord::of(&h))
                    }
                    None => {
                        debug!(host = %name, "host behind a gateway gone");
                        self.shared.dir().remove_host(&name).is_some()
                    }
                };
                if changed {
                    self.save();
                    self.on_hosts_changed().await;
                }
            }
            Event::Disconnected { reason } => {
                self.report_gms(false).await;
                let was = std::mem::take(&mut self.shared.view().connected);
                if was {
                    warn!(%reason, "GMS session lost; working from cached keys and directory");
                }
            }
            Event::Terminated { reason } => {
                self.shared.view().connected = false;
                return Err(Error::Terminated(reason));
            }
        }
        Ok(())
    }

    /// Reports the local addresses and the port mapping to the GMS (the
    /// session keeps them for its next Hello too).
    async fn report_addrs(&mut self) {
        let addrs = reported_addrs(&self.reported, self.mapped);
        match tokio::time::timeout(QUERY_TIMEOUT, self.session.report_addresses(addrs.clone()))
            .await
        {
            Ok(Ok(())) => debug!(?addrs, "addresses reported"),
            Ok(Err(e)) => debug!(error = %e, "address report failed"),
            Err(_) => debug!("address report timed out"),
        }
    }

    /// Asks the GMS for this node's reflexive address (status, netcheck).
    /// The status view keeps the one learnt at session start.
    async fn observe(&mut self) -> Option<SocketAddr> {
        match tokio::time::timeout(QUERY_TIMEOUT, self.session.observe()).await {
            Ok(Ok(a)) => {
                debug!(reflexive = %a, "reflexive address");
                let mut v = self.shared.view();
                if v.reflexive.is_none() {
                    v.reflexive = Some(a);
                }
                Some(a)
            }
            Ok(Err(e)) => {
                debug!(error = %e, "reflexive address query failed");
                None
            }
            Err(_) => {
                debug!("reflexive address query timed out");
                None
            }
        }
    }

    /// The carrier dials `ge` on its own: ask the GMS to make it dial back
    /// (only while connected; without a GMS there is nobody to relay it).
    fn ask_connect_now(&mut self, ge: GeId) {
        if !self.shared.view().connected {
            return;
        }
        if self.session.request_connect_now(ge) {
            self.shared.view().punches_asked += 1;
            debug!(peer = %ge, "asked the GMS for a connect-now");
        }
    }

    /// Points the relay link at the address the GMS named (`host:port`,
    /// resolved here; `None`: no relay). A name that does not resolve
    /// leaves the link as it was.
    async fn set_relay(&self, addr: Option<String>) {
        let Some(relay) = &self.relay else { return };
        let Some(addr) = addr else {
            info!("the GMS names no relay");
            relay.set_addr(None);
            return;
        };
        match tokio::net::lookup_host(addr.as_str()).await {
            // The family this host can reach (a name may have A and AAAA).
            Ok(addrs) => match fpn_gms_client::pick_routable(&addrs.collect::<Vec<_>>()) {
                Some(a) => {
                    info!(relay = %a, "relay named by the GMS");
                    relay.set_addr(Some(a));
                }
                None => warn!(relay = %addr, "the relay's name has no address"),
            },
            Err(e) => warn!(relay = %addr, error = %e, "cannot resolve the relay's address"),
        }
    }

    /// Copies the credential's validity and the renewal record into the
    /// status view.
    fn show_credential(&self) {
        let (not_after, serial, last, n, refused) = self.session.with_state(|s| {
            (
                s.credential.as_ref().map(|c| c.not_after),
                s.credential.as_ref().map(|c| c.serial),
                s.last_renewal,
                s.renewals,
                s.renewal_refused.clone(),
            )
        });
        let mut v = self.shared.view();
        v.credential_not_after = not_after;
        v.credential_serial = serial;
        v.last_renewal = last;
        v.renewals = n;
        v.renewal_refused = refused;
    }

    /// Tells the core the GMS session is up or lost (the silence bound).
    async fn report_gms(&mut self, connected: bool) {
        let unix = fpn_gms_client::now_unix();
        let _ = self.engine.send(Command::Gms { connected, unix }).await;
    }

    /// Refreshes the full listing (names and overlay addresses); with the
    /// directory on demand, only when its digest changed.
    async fn list(&mut self, last_list: &mut tokio::time::Instant) {
        *last_list = tokio::time::Instant::now();
        let known = self.following.digest;
        let synced = tokio::time::timeout(QUERY_TIMEOUT, self.session.sync_directory(known)).await;
        let listed = match synced {
            Ok(Ok(fpn_gms_client::DirectorySync::Unchanged)) => {
                self.fetch_missing_credentials().await;
                return;
            }
            Ok(Ok(fpn_gms_client::DirectorySync::Listed { entries, digest })) => {
                self.following.digest = digest;
                entries
            }
            Ok(Err(e)) => {
                debug!(error = %e, "directory listing failed");
                return;
            }
            Err(_) => {
                debug!("directory listing timed out");
                return;
            }
        };
        let names: BTreeSet<String> = listed
            .iter()
            .filter(|l| l.ge != self.own_ge)
            .map(|l| l.name.clone())
            .collect();
        let now = fpn_gms_client::now_unix();
        let (gone, updates) = {
            let mut dir = self.shared.dir();
            let gone = dir.retain_names(&names);
            let mut updates = Vec::new();
            for l in listed.into_iter().filter(|l| l.ge != self.own_ge) {
                let (addrs, reflexive) = carrier_addrs(&l.reported, l.seen);
                let rec = PeerRecord {
                    name: l.name,
                    ge: l.ge.0,
                    overlay: l.overlay,
                    fetched: if addrs.is_empty() { 0 } else { now },
                    addrs,
                    reflexive,
                    key: None,
                    info: None,
                };
                let old = dir.by_name(&rec.name).cloned();
                if let Some(stored) = dir.upsert(rec)
                    && old.as_ref().is_none_or(|o| {
                        o.ge != stored.ge
                            || o.overlay != stored.overlay
                            || o.addrs != stored.addrs
                            || o.reflexive != stored.reflexive
                    })
                {
                    updates.push(stored.clone());
                }
            }
            (gone, updates)
        };
        for r in gone {
            self.following.peers.remove(&r.ge());
            let _ = self.engine.send(Command::PeerGone(r.ge())).await;
            self.carrier.revoke_ge(r.ge());
        }
        for r in updates {
            let _ = self.engine.send(Command::Peer(r)).await;
        }
        self.fetch_missing_credentials().await;
        self.save();
    }

    /// Fetches the credentials of listed peers that have none in the cache
    /// yet, a bounded number per listing (more with the real-address plane,
    /// which routes their prefixes).
    async fn fetch_missing_credentials(&mut self) {
        let budget = if self.fetch_credentials {
            CREDENTIALS_PER_LIST
        } else {
            PREFETCH_PER_LIST
        };
        let missing: Vec<String> = self
            .shared
            .dir()
            .iter()
            .filter(|r| r.info.is_none())
            .take(budget)
            .map(|r| r.name.clone())
            .collect();
        for name in missing {
            self.query(&name).await;
        }
    }

    /// Follows peer `ge` (the directory on demand): the carrier is dialing
    /// it, so this node talks to it; its entry is fetched afresh and its
    /// changes pushed from now on. Nothing when it is followed already or
    /// the GMS follows every listed GE anyway.
    async fn follow(&mut self, ge: GeId) {
        if !self.shared.view().connected
            || !self.session.on_demand()
            || self.following.is_followed(ge, self.session_number())
        {
            return;
        }
        let name = self.shared.dir().by_ge(ge).map(|r| r.name.clone());
        if let Some(name) = name {
            self.query(&name).await;
        }
    }

    /// Follows the peers with live flows that are not followed yet (a
    /// peer that dialed this node, say), and stops following those that
    /// had no live flow for [`FORGET_AFTER_SWEEPS`] sweeps (the directory
    /// on demand).
    async fn sweep(&mut self) {
        if !self.session.on_demand() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self
            .queries
            .send(crate::driver::Query::LivePeers(tx))
            .await
            .is_err()
        {
            return;
        }
        let Ok(live) = rx.await else { return };
        let live: BTreeSet<GeId> = live.into_iter().collect();
        let session = self.session_number();
        let unfollowed: Vec<String> = {
            let dir = self.shared.dir();
            live.iter()
                .filter(|g| !self.following.is_followed(**g, session))
                .filter_map(|g| dir.by_ge(*g).map(|r| r.name.clone()))
                .take(FOLLOWS_PER_SWEEP)
                .collect()
        };
        for name in unfollowed {
            self.query(&name).await;
        }
        if self.fetch_credentials {
            // The real-address plane routes peers' protected prefixes
            // before any flow exists: a change to them must still be
            // pushed, so nothing is forgotten (a leftover: note 66).
            return;
        }
        let forget = self.following.sweep(&live);
        if forget.is_empty() {
            return;
        }
        debug!(peers = forget.len(), "no longer following idle peers");
        match tokio::time::timeout(QUERY_TIMEOUT, self.session.forget(&forget)).await {
            Ok(Ok(())) => {}
            // Still followed at the GMS: a few pushes too many, until the
            // session ends.
            Ok(Err(e)) => debug!(error = %e, "forgetting peers failed"),
            Err(_) => debug!("forgetting peers timed out"),
        }
    }

    /// The engine needs the owner of `ip` (and its carrier addresses).
    async fn resolve_addr(&mut self, ip: Ipv4Addr, last_list: &mut tokio::time::Instant) {
        let now = fpn_gms_client::now_unix();
        let known = self.shared.dir().by_overlay(ip).cloned();
        let rec = match known {
            Some(r) => r,
            None => {
                if last_list.elapsed() < LIST_MIN_GAP {
                    return;
                }
                self.list(last_list).await;
                match self.shared.dir().by_overlay(ip).cloned() {
                    Some(r) => r,
                    None => {
                        debug!(%ip, "no GE owns this overlay address");
                        return;
                    }
                }
            }
        };
        // A peer not followed yet (the directory on demand) is fetched
        // afresh and followed: the listing's addresses are a hint only.
        let unfollowed = self.session.on_demand()
            && !self.following.is_followed(rec.ge(), self.session_number());
        if (unfollowed || rec.is_stale(now, self.ttl)) && self.query(&rec.name).await {
            return;
        }
        // Cached record (GMS down or fresh enough): hand it over as it is.
        let _ = self.engine.send(Command::Peer(rec)).await;
    }

    /// Asks the GMS about `name` (subscribing to its changes). True when
    /// the GMS answered.
    async fn query(&mut self, name: &str) -> bool {
        match tokio::time::timeout(QUERY_TIMEOUT, self.session.query(name)).await {
            Ok(Ok(Some(e))) => {
                // Asking followed the GE the answer is about: the GMS
                // pushes its changes to this node from now on, whether or
                // not the entry is kept (a push alone does not mean that:
                // it may be the last one before a forget).
                let ge = fpn_proto::credential::UnverifiedCredential::decode(&e.credential)
                    .ok()
                    .map(|c| c.claimed_ge());
                if let Some(ge) = ge.filter(|g| *g != self.own_ge) {
                    let session = self.session_number();
                    self.following.confirmed(ge, session);
                }
                self.store_entry(&e).await;
                true
            }
            Ok(Ok(None)) => {
                self.gone(name).await;
                true
            }
            Ok(Err(e)) => {
                debug!(name, error = %e, "directory query failed");
                false
            }
            Err(_) => false,
        }
    }

    /// The number of the current GMS session (follows belong to one).
    fn session_number(&self) -> u64 {
        self.session.with_state(|s| s.sessions)
    }

    async fn store_entry(&mut self, e: &fpn_gms_client::wire::DirectoryEntry) {
        let rec = match record_from_entry(e, &self.ca_public, fpn_gms_client::now_unix()) {
            Ok(r) => r,
            Err(err) => {
                warn!(error = %err, "directory entry with a bad credential ignored");
                return;
            }
        };
        if rec.ge() == self.own_ge {
            return;
        }
        debug!(name = %rec.name, ge = rec.ge, addrs = ?rec.addrs, "peer directory entry");
        let stored = self.shared.dir().upsert(rec).cloned();
        if let Some(r) = stored {
            let _ = self.engine.send(Command::Peer(r)).await;
        }
        self.save();
    }

    async fn gone(&mut self, name: &str) {
        let removed = self.shared.dir().remove(name);
        if let Some(r) = removed {
            self.following.peers.remove(&r.ge());
            info!(name, ge = r.ge, "peer gone from the directory");
            let _ = self.engine.send(Command::PeerGone(r.ge())).await;
            self.carrier.revoke_ge(r.ge());
            self.save();
        }
    }

    /// HOOK (NAT-f, issue 11): the hosts behind gateways in
    /// [`Shared::dir`] changed (full list at session start, or one pushed
    /// change). The node core and the DNS stub (VIN pool) are to be told
    /// here; until they take hosts, the directory and its disk cache are
    /// the whole of it.
    /// The core gets the whole list (VINs, the hosts it fronts).
    async fn on_hosts_changed(&mut self) {
        let hosts = crate::directory::core_hosts(self.shared.dir().hosts());
        debug!(hosts = hosts.len(), "hosts behind gateways updated");
        let _ = self.engine.send(Command::Hosts(hosts)).await;
    }

    fn save(&self) {
        if let Err(e) = self.shared.dir().save(&self.cache_path) {
            warn!(error = %e, "saving the peer cache");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followed_peer_is_forgotten_after_sweeps_without_a_live_flow_only() {
        let mut f = Following::default();
        for g in [1, 2] {
            f.confirmed(GeId(g), 1);
        }
        let live: BTreeSet<GeId> = [GeId(1)].into();
        assert!(f.sweep(&live).is_empty(), "one idle sweep is not enough");
        assert_eq!(f.sweep(&live), [GeId(2)]);
        assert_eq!(f.peers.keys().copied().collect::<Vec<_>>(), [GeId(1)]);
        // A live flow again resets the count, and so does a new follow.
        f.confirmed(GeId(2), 1);
        assert!(f.sweep(&BTreeSet::new()).is_empty());
        f.confirmed(GeId(2), 1);
        assert_eq!(f.sweep(&[GeId(2)].into()), [GeId(1)]);
        assert!(f.sweep(&BTreeSet::new()).is_empty(), "2's count was reset");
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn a_follow_from_an_earlier_session_is_no_follow() {
        let mut f = Following::default();
        f.confirmed(GeId(7), 3);
        assert!(f.is_followed(GeId(7), 3));
        // The GMS forgot it when session 3 ended.
        assert!(!f.is_followed(GeId(7), 4));
        assert!(!f.is_followed(GeId(8), 3));
    }

    #[test]
    fn the_mapping_is_reported_first_and_the_list_stays_bounded() {
        let m: SocketAddr = "198.20.2.2:7718".parse().unwrap();
        let lan: SocketAddr = "192.168.1.10:7718".parse().unwrap();
        assert_eq!(reported_addrs(&[lan], Some(m)), [m, lan]);
        assert_eq!(reported_addrs(&[lan], None), [lan]);
        let many: Vec<SocketAddr> = (0..40)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 7718)))
            .collect();
        let r = reported_addrs(&many, Some(m));
        assert_eq!(r.len(), fpn_gms_client::wire::MAX_ADDRS);
        assert_eq!(r[0], m);
    }
}
