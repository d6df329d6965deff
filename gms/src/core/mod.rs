//! The GMS's request handling, without sockets or clocks.
//!
//! [`Core`] owns the store, the CA and an in-memory view of every record.
//! Each input is a method (`handle_admin`, `handle_enroll`, `open_session`,
//! `handle_request`, `handle_timeout`) that takes `now` (unix seconds) and
//! returns the answer plus [`Output`]s: frames to push to sessions, sessions
//! to close, directory events for the DDNS hook. The QUIC and unix-socket
//! shells in [`crate::server`] feed it and carry out the outputs; tests call
//! it directly.
//!
//! Every change goes through [`Core::transact`]: memory and a store batch are
//! updated together, the batch is committed, and if the commit fails the
//! memory view is reloaded from the store, so memory never holds a change
//! the store refused. The shell makes the commits durable (one sync for all
//! changes that arrive together, [`crate::store::Syncer`]) before it sends
//! any answer or carries out any output produced after them.

mod admin;
mod hosts;
#[cfg(test)]
mod hosts_tests;
mod keys;
mod session;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use fpn_proto::ge::{GeId, GeKind};
use fpn_proto::keys::KeyVersion;
use tracing::error;

use crate::admin::RotatedView;
use crate::ca::Ca;
use crate::config::Config;
use crate::model::{
    AuditEntry, CertRecord, Counters, GeRecord, GroupRecord, HostRecord, KeyRecord, META_COUNTERS,
    META_SCHEMA, RevocationRecord, SCHEMA_VERSION, TokenRecord, from_json, to_json,
};
use crate::store::{Batch, Store, Tree};
use crate::wire::ServerMsg;
use crate::{Error, Result};

pub use session::Refusal;

/// A side effect for the shell to carry out, in order.
#[derive(Debug, Clone)]
pub enum Output {
    /// Push `frame` to the live sessions of these GEs (offline ones are skipped).
    Send {
        /// Recipients.
        to: Vec<GeId>,
        /// One encoded [`ServerMsg`] frame, shared by all recipients.
        frame: Arc<[u8]>,
    },
    /// Push `frame` to every live session.
    Broadcast {
        /// One encoded [`ServerMsg`] frame.
        frame: Arc<[u8]>,
    },
    /// Close the live sessions of `ge` with a QUIC application close code.
    Close {
        /// The GE.
        ge: GeId,
        /// A [`crate::wire::close`] code.
        code: u32,
        /// Reason sent to the node.
        reason: String,
    },
    /// A GE's directory data changed: hand it to the [`crate::server::DirectoryHook`].
    Directory(DirectoryEvent),
}

/// What the DDNS integration learns about GEs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryEvent {
    /// A GE was added, or its info or addresses changed.
    Updated(DirectoryRecord),
    /// A host behind a gateway was added or changed, or its gateway's
    /// address changed: its records follow the gateway's.
    Host(HostDirectoryRecord),
    /// A GE or host was removed (or a GE revoked): its records must go.
    Removed {
        /// Its name (a label under the zone).
        name: String,
    },
}

/// A GE as the DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryRecord {
    /// Name (a label under the zone).
    pub name: String,
    /// GE id.
    pub id: GeId,
    /// Kind.
    pub kind: GeKind,
    /// Overlay address.
    pub overlay: Ipv4Addr,
    /// Address its session comes from (the A/AAAA record), if it was ever seen.
    pub seen: Option<SocketAddr>,
    /// Addresses it reports (LIP records).
    pub reported: Vec<SocketAddr>,
}

/// A host behind a gateway as the DNS sees it: the gateway's address for
/// A/AAAA, its own LAN addresses for LIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDirectoryRecord {
    /// The host's name (a label under the zone).
    pub name: String,
    /// The gateway GE.
    pub via: GeId,
    /// Where the gateway's session comes from (its public address), if it
    /// was ever seen; the same address the gateway's own A/AAAA gives.
    pub seen: Option<SocketAddr>,
    /// The host's LAN addresses (LIP records).
    pub lan: Vec<IpAddr>,
}

/// Live session data of a GE (memory only; rebuilt as nodes reconnect).
#[derive(Debug, Clone, Default)]
pub(crate) struct Presence {
    /// Id of the session that set it.
    session: u64,
    online: bool,
    seen: Option<SocketAddr>,
    reported: Vec<SocketAddr>,
    /// The software version the session's hello named.
    version: Option<String>,
    /// The session chose the hosts directory (ALPN `fpn-gms/2`): host
    /// changes are pushed to it.
    hosts: bool,
}

/// Current and previous versions of a group's key.
#[derive(Debug, Clone)]
pub(crate) struct GroupKeyState {
    current: KeyRecord,
    previous: Option<KeyRecord>,
}

/// The in-memory view of the store.
#[derive(Debug, Default)]
pub(crate) struct State {
    ges: BTreeMap<String, GeRecord>,
    ids: HashMap<u32, String>,
    overlays: HashSet<Ipv4Addr>,
    groups: BTreeMap<u32, GroupRecord>,
    keys: BTreeMap<u32, GroupKeyState>,
    certs: HashMap<[u8; 32], CertRecord>,
    tokens: HashMap<[u8; 16], TokenRecord>,
    revocations: BTreeMap<u64, RevocationRecord>,
    /// Hosts behind gateways, by name.
    hosts: BTreeMap<String, HostRecord>,
    counters: Counters,
    /// The listing's digest ([`ServerMsg::DirectoryDigest`]), computed when
    /// first asked for and forgotten whenever a GE record is written.
    listing_digest: Option<[u8; 16]>,
}

/// Pending effects of one transaction.
#[derive(Debug, Default)]
pub(crate) struct Tx {
    batch: Batch,
    out: Vec<Output>,
    /// Memory was changed: a failed commit must reload it.
    dirty: bool,
    rotated: Vec<RotatedView>,
    /// Kinds of the audit entries written (counted once committed).
    audited: Vec<&'static str>,
}

/// What the GMS changed since it started, for `/metrics` (kept in memory
/// only: a restart counts from 0 again, as Prometheus expects of counters).
#[derive(Debug, Default, Clone)]
pub struct Activity {
    /// Committed changes by kind (the audit log's command: `ge add`,
    /// `ge revoke`, `group add`, `token create`, `enroll`, `renew`,
    /// `rotate`, ...).
    pub changes: BTreeMap<&'static str, u64>,
    /// Group key rotations committed (scheduled, on leave or revocation, on
    /// demand).
    pub rotations: u64,
}

/// The GMS state machine.
pub struct Core {
    cfg: Config,
    store: Box<dyn Store>,
    ca: Ca,
    st: State,
    listen: Option<SocketAddr>,
    /// Where the in-process DNS answers.
    dns: Vec<SocketAddr>,
    presence: HashMap<u32, Presence>,
    /// GE -> GEs that asked the directory about it.
    watchers: HashMap<u32, BTreeSet<u32>>,
    /// (asker, target) -> unix time of the last connect-now push.
    punches: HashMap<(u32, u32), u64>,
    next_session: u64,
    next_rotation: Option<u64>,
    /// Set after a timer transaction failed: not before this time again.
    timer_retry: Option<u64>,
    activity: Activity,
    /// Who the admin request being handled comes from (the audit log's
    /// "who"); `None` outside [`Core::handle_admin_as`].
    actor: Option<String>,
}

/// The audit log's "who" for what the server does by itself (scheduled
/// rotations, grace ends, enrollments).
pub const SYSTEM_ACTOR: &str = "gms";

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("zone", &self.cfg.zone)
            .field("ges", &self.st.ges.len())
            .field("groups", &self.st.groups.len())
            .finish_non_exhaustive()
    }
}

/// Writes the schema version and counters into an empty store (`fpn-gms init`).
pub fn init_store(store: &dyn Store, zone: &str, now: u64) -> Result<()> {
    if store.get(Tree::Meta, META_SCHEMA)?.is_some() {
        return Err(Error::Config(
            "the data directory is already initialized".into(),
        ));
    }
    let mut b = Batch::new();
    b.put(
        Tree::Meta,
        META_SCHEMA,
        SCHEMA_VERSION.to_be_bytes().to_vec(),
    );
    b.put(Tree::Meta, META_COUNTERS, to_json(&Counters::default()));
    b.audit(to_json(&AuditEntry {
        at: now,
        action: format!("init zone={zone}"),
        who: SYSTEM_ACTOR.into(),
    }));
    store.commit(b)
}

/// Refuses a store without a schema version or with a newer one.
pub fn check_schema(store: &dyn Store) -> Result<u32> {
    let v = store.get(Tree::Meta, META_SCHEMA)?.ok_or_else(|| {
        Error::Store(
            "the store has no schema version: not an fpn-gms data directory (run `fpn-gms init`)"
                .into(),
        )
    })?;
    let v: [u8; 4] = v.as_slice().try_into().map_err(|_| Error::Corrupt {
        tree: "meta",
        reason: "schema version is not 4 bytes".into(),
    })?;
    let v = u32::from_be_bytes(v);
    if v > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found: v,
            supported: SCHEMA_VERSION,
        });
    }
    // Version 1 differs from 2 only in that secret values are in the clear;
    // the sealed store migrates it before the core reads anything
    // (store::SealedStore::open), and a core on an unsealed store (tests)
    // reads both alike.
    Ok(v)
}

impl Core {
    /// Loads the state from `store` (which must pass [`check_schema`]).
    pub fn new(cfg: Config, store: Box<dyn Store>, ca: Ca, now: u64) -> Result<Self> {
        check_schema(store.as_ref())?;
        let st = State::load(store.as_ref())?;
        let next_rotation = cfg.rotation_schedule.next_after(now);
        Ok(Self {
            cfg,
            store,
            ca,
            st,
            listen: None,
            dns: Vec::new(),
            presence: HashMap::new(),
            watchers: HashMap::new(),
            punches: HashMap::new(),
            next_session: 1,
            next_rotation,
            timer_retry: None,
            activity: Activity::default(),
            actor: None,
        })
    }

    /// Records the address the QUIC endpoint actually bound (used in tokens
    /// when no public address is configured).
    pub fn set_listen_addr(&mut self, addr: SocketAddr) {
        self.listen = Some(addr);
    }

    /// Records where the in-process DNS answers (for `status`).
    pub fn set_dns_addrs(&mut self, addrs: Vec<SocketAddr>) {
        self.dns = addrs;
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// A SIGHUP's new configuration: applies the keys of
    /// [`Config::RELOADABLE`] at once and returns the other keys that
    /// changed (they need a restart; the running server keeps their old
    /// values, and `status` shows the values in force). A new rotation
    /// schedule is counted from `now`.
    pub fn reload_config(&mut self, new: &Config, now: u64) -> Vec<&'static str> {
        let restart = self.cfg.restart_keys_changed(new);
        if new.rotation_schedule != self.cfg.rotation_schedule {
            self.next_rotation = new.rotation_schedule.next_after(now);
        }
        self.cfg.rotation_schedule = new.rotation_schedule;
        self.cfg.grace = new.grace;
        self.cfg.token_ttl = new.token_ttl;
        self.cfg.log = new.log.clone();
        restart
    }

    /// The CA.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Runs `f` as one transaction: commit on success, reload memory on failure.
    pub(crate) fn transact<T>(
        &mut self,
        f: impl FnOnce(&mut Self, &mut Tx) -> Result<T>,
    ) -> Result<(T, Tx)> {
        let mut tx = Tx::default();
        let r = f(self, &mut tx).and_then(|v| {
            self.store.commit(std::mem::take(&mut tx.batch))?;
            Ok(v)
        });
        match r {
            Ok(v) => {
                for kind in &tx.audited {
                    *self.activity.changes.entry(kind).or_default() += 1;
                }
                self.activity.rotations += tx.rotated.len() as u64;
                Ok((v, tx))
            }
            Err(e) => {
                if tx.dirty {
                    match State::load(self.store.as_ref()) {
                        Ok(st) => self.st = st,
                        Err(le) => error!(error = %le, "reloading the state after a failed change"),
                    }
                }
                Err(e)
            }
        }
    }

    // ---- record writes: memory and batch together ----

    fn put_ge(&mut self, tx: &mut Tx, rec: GeRecord) {
        tx.batch.put(Tree::Ges, rec.name.as_bytes(), to_json(&rec));
        self.st.ids.insert(rec.id, rec.name.clone());
        self.st.overlays.insert(rec.overlay);
        // Only what a listing shows moves the digest (a renewal, say,
        // rewrites the record without it).
        let listed = |r: &GeRecord| (r.id, r.overlay, r.is_active());
        if self.st.ges.get(&rec.name).map(listed) != Some(listed(&rec)) {
            self.st.listing_digest = None;
        }
        self.st.ges.insert(rec.name.clone(), rec);
        tx.dirty = true;
    }

    fn delete_ge(&mut self, tx: &mut Tx, name: &str) {
        tx.batch.delete(Tree::Ges, name.as_bytes());
        if let Some(rec) = self.st.ges.remove(name) {
            self.st.ids.remove(&rec.id);
            self.st.overlays.remove(&rec.overlay);
        }
        self.st.listing_digest = None;
        tx.dirty = true;
    }

    fn put_host(&mut self, tx: &mut Tx, rec: HostRecord) {
        tx.batch
            .put(Tree::Hosts, rec.name.as_bytes(), to_json(&rec));
        self.st.hosts.insert(rec.name.clone(), rec);
        tx.dirty = true;
    }

    fn delete_host(&mut self, tx: &mut Tx, name: &str) {
        tx.batch.delete(Tree::Hosts, name.as_bytes());
        self.st.hosts.remove(name);
        tx.dirty = true;
    }

    fn put_group(&mut self, tx: &mut Tx, rec: GroupRecord) {
        tx.batch
            .put(Tree::Groups, rec.num.to_be_bytes(), to_json(&rec));
        self.st.groups.insert(rec.num, rec);
        tx.dirty = true;
    }

    fn delete_group(&mut self, tx: &mut Tx, num: u32) {
        tx.batch.delete(Tree::Groups, num.to_be_bytes());
        self.st.groups.remove(&num);
        if let Some(ks) = self.st.keys.remove(&num) {
            for k in std::iter::once(&ks.current).chain(ks.previous.as_ref()) {
                tx.batch.delete(
                    Tree::Keys,
                    KeyRecord::tree_key(fpn_proto::ge::GroupId(num), k.version),
                );
            }
        }
        tx.dirty = true;
    }

    fn set_keys(&mut self, tx: &mut Tx, group: u32, ks: GroupKeyState, erase: &[KeyVersion]) {
        let g = fpn_proto::ge::GroupId(group);
        for v in erase {
            tx.batch.delete(Tree::Keys, KeyRecord::tree_key(g, *v));
        }
        for k in std::iter::once(&ks.current).chain(ks.previous.as_ref()) {
            tx.batch
                .put(Tree::Keys, KeyRecord::tree_key(g, k.version), k.encode());
        }
        self.st.keys.insert(group, ks);
        tx.dirty = true;
    }

    fn put_cert(&mut self, tx: &mut Tx, fp: [u8; 32], rec: CertRecord) {
        tx.batch.put(Tree::Certs, fp.to_vec(), to_json(&rec));
        self.st.certs.insert(fp, rec);
        tx.dirty = true;
    }

    fn put_token(&mut self, tx: &mut Tx, id: [u8; 16], rec: TokenRecord) {
        tx.batch.put(Tree::Tokens, id.to_vec(), to_json(&rec));
        self.st.tokens.insert(id, rec);
        tx.dirty = true;
    }

    fn delete_token(&mut self, tx: &mut Tx, id: [u8; 16]) {
        tx.batch.delete(Tree::Tokens, id.to_vec());
        self.st.tokens.remove(&id);
        tx.dirty = true;
    }

    fn put_revocation(&mut self, tx: &mut Tx, rec: RevocationRecord) {
        tx.batch
            .put(Tree::Revocations, rec.serial.to_be_bytes(), to_json(&rec));
        self.st.revocations.insert(rec.serial, rec);
        tx.dirty = true;
    }

    fn delete_revocation(&mut self, tx: &mut Tx, serial: u64) {
        tx.batch.delete(Tree::Revocations, serial.to_be_bytes());
        self.st.revocations.remove(&serial);
        tx.dirty = true;
    }

    /// Takes the next serial (certificates and credentials share the counter).
    fn next_serial(&mut self, tx: &mut Tx) -> u64 {
        let s = self.st.counters.next_serial;
        self.st.counters.next_serial += 1;
        self.write_counters(tx);
        s
    }

    fn write_counters(&mut self, tx: &mut Tx) {
        tx.batch
            .put(Tree::Meta, META_COUNTERS, to_json(&self.st.counters));
        tx.dirty = true;
    }

    /// Appends `action` to the audit log with who asked for it; `kind`
    /// (`"ge add"`, `"rotate"`, ...) is what `/metrics` counts it as once
    /// the change commits.
    fn audit(&mut self, tx: &mut Tx, now: u64, kind: &'static str, action: String) {
        let who = self.actor.clone().unwrap_or_else(|| SYSTEM_ACTOR.into());
        tx.batch.audit(to_json(&AuditEntry {
            at: now,
            action,
            who,
        }));
        tx.audited.push(kind);
    }

    /// What this server changed since it started (for `/metrics`).
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    // ---- lookups ----

    fn ge_by_id(&self, id: u32) -> Option<&GeRecord> {
        self.st.ids.get(&id).and_then(|n| self.st.ges.get(n))
    }

    /// Active GEs that are members of `group`.
    fn members(&self, group: u32) -> Vec<GeId> {
        self.st
            .ges
            .values()
            .filter(|g| g.is_active() && g.groups.contains(&group))
            .map(|g| GeId(g.id))
            .collect()
    }

    /// Number of GEs with a live session.
    pub fn online(&self) -> usize {
        self.presence.values().filter(|p| p.online).count()
    }
}

/// Encodes a push once for all its recipients.
fn frame(msg: &ServerMsg) -> Result<Arc<[u8]>> {
    Ok(Arc::from(msg.encode()?))
}

impl State {
    fn load(store: &dyn Store) -> Result<Self> {
        let mut st = State::default();
        if let Some(c) = store.get(Tree::Meta, META_COUNTERS)? {
            st.counters = from_json("meta", &c)?;
        }
        for (_, v) in store.scan(Tree::Ges)? {
            let rec: GeRecord = from_json("ges", &v)?;
            st.ids.insert(rec.id, rec.name.clone());
            st.overlays.insert(rec.overlay);
            st.ges.insert(rec.name.clone(), rec);
        }
        for (_, v) in store.scan(Tree::Groups)? {
            let rec: GroupRecord = from_json("groups", &v)?;
            st.groups.insert(rec.num, rec);
        }
        let mut versions: BTreeMap<u32, Vec<KeyRecord>> = BTreeMap::new();
        for (k, v) in store.scan(Tree::Keys)? {
            let (g, ver) = KeyRecord::parse_tree_key(&k)?;
            versions
                .entry(g.0)
                .or_default()
                .push(KeyRecord::decode(ver, &v)?);
        }
        for (g, mut vs) in versions {
            // Scan order is by version; the newest is current.
            let Some(current) = vs.pop() else { continue };
            st.keys.insert(
                g,
                GroupKeyState {
                    current,
                    previous: vs.pop(),
                },
            );
        }
        for (k, v) in store.scan(Tree::Certs)? {
            let fp: [u8; 32] = k.as_slice().try_into().map_err(|_| Error::Corrupt {
                tree: "certs",
                reason: "fingerprint is not 32 bytes".into(),
            })?;
            st.certs.insert(fp, from_json("certs", &v)?);
        }
        for (k, v) in store.scan(Tree::Tokens)? {
            let id: [u8; 16] = k.as_slice().try_into().map_err(|_| Error::Corrupt {
                tree: "tokens",
                reason: "token id is not 16 bytes".into(),
            })?;
            st.tokens.insert(id, from_json("tokens", &v)?);
        }
        for (_, v) in store.scan(Tree::Revocations)? {
            let rec: RevocationRecord = from_json("revocations", &v)?;
            st.revocations.insert(rec.serial, rec);
        }
        for (_, v) in store.scan(Tree::Hosts)? {
            let rec: HostRecord = from_json("hosts", &v)?;
            st.hosts.insert(rec.name.clone(), rec);
        }
        Ok(st)
    }
}
