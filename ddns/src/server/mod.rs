//! Running the zone: the [`Ddns`] handle (open, the embedding API, serve),
//! sockets, and the [`Server`] that answers on them.
//!
//! Threads and tasks: one commit thread (the zone's only writer, see
//! [`crate::commit`]); one blocking OS thread per UDP socket (batched
//! `recvmmsg`/`sendmmsg` on Linux); tokio tasks for TCP connections and
//! NOTIFY. Readers share the zone through an `RwLock` held for one batch
//! of datagrams at a time; the writer holds it only to swap in names that
//! are already durable.

mod tcp;
mod udp;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::commit::{self, Job, Msg};
use crate::config::{DdnsConfig, resolve_name};
use crate::keys::KeyRing;
use crate::store::{self, JournalReader, Store};
use crate::zone::{ApiChange, Zone, key_of};
use crate::{Error, notify};

/// State shared by the answer paths and the commit thread.
pub struct Shared {
    pub(crate) zone: RwLock<Zone>,
    pub(crate) keys: KeyRing,
    pub(crate) journal: JournalReader,
    serial_tx: watch::Sender<u32>,
    /// What the answer paths and the commit thread did (atomics: one add
    /// per UDP batch or TCP message, never a lock).
    pub(crate) counters: Counters,
}

/// The server's counters (see [`DdnsStats`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests_udp: AtomicU64,
    pub(crate) requests_tcp: AtomicU64,
    pub(crate) transfers: AtomicU64,
    pub(crate) updates_applied: AtomicU64,
    pub(crate) updates_refused: AtomicU64,
    pub(crate) api_changes: AtomicU64,
}

impl Counters {
    /// Adds `n` to `c`.
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the DNS server did since the zone was opened ([`Ddns::stats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DdnsStats {
    /// Requests received over UDP (queries and UPDATEs).
    pub requests_udp: u64,
    /// Requests received over TCP (queries, UPDATEs, transfers).
    pub requests_tcp: u64,
    /// Zone transfers (AXFR/IXFR) served.
    pub transfers: u64,
    /// RFC 2136 UPDATEs that passed TSIG and were applied (NOERROR).
    pub updates_applied: u64,
    /// UPDATEs that passed TSIG and were refused (a prerequisite, a name
    /// the key may not touch, a replay) or failed to store.
    pub updates_refused: u64,
    /// Record changes made through the API (the GMS writing its GEs'
    /// records) that were stored.
    pub api_changes: u64,
}

impl Shared {
    /// Shared state around a loaded zone.
    pub(crate) fn new(zone: Zone, keys: KeyRing, journal: JournalReader) -> Self {
        let (serial_tx, _) = watch::channel(zone.serial());
        Self {
            zone: RwLock::new(zone),
            keys,
            journal,
            serial_tx,
            counters: Counters::default(),
        }
    }

    /// Tells the NOTIFY sender about a new serial.
    pub(crate) fn serial_changed(&self, serial: u32) {
        self.serial_tx.send_replace(serial);
    }
}

/// An open zone: the handle the binary and the GMS hold.
///
/// ```no_run
/// # async fn demo() -> Result<(), fpn_ddns::Error> {
/// use fpn_ddns::{Ddns, DdnsConfig, Sockets};
/// let origin = "home.fpn.".parse().unwrap();
/// let ddns = Ddns::open(DdnsConfig::new(origin, "/var/lib/fpn/ddns"))?;
/// let server = ddns.serve(Sockets::bind("0.0.0.0:53".parse().unwrap(), 2)?)?;
/// // a GE behind a NAT: the gateway's public address, the host's private one
/// ddns.set_ge_records("nas", Some("198.18.0.7".parse().unwrap()), None,
///                     &["192.168.1.10".parse().unwrap()]).await?;
/// server.shutdown().await;
/// ddns.close();
/// # Ok(()) }
/// ```
pub struct Ddns {
    shared: Arc<Shared>,
    jobs: Option<SyncSender<Msg>>,
    committer: Option<std::thread::JoinHandle<()>>,
    config: DdnsConfig,
}

impl std::fmt::Debug for Ddns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ddns")
            .field("origin", &self.config.origin)
            .finish()
    }
}

impl Ddns {
    /// Opens the zone's database (creating the zone if it is new: from the
    /// configured zone file, or with just SOA and NS) and starts the commit
    /// thread. Does not listen anywhere: see [`Ddns::serve`].
    pub fn open(config: DdnsConfig) -> Result<Self, Error> {
        let origin = config.origin.clone();
        for t in &config.notify {
            if let Some(k) = &t.key
                && config.keys.get(k).is_none()
            {
                return Err(Error::Config(format!("notify key {k} is not configured")));
            }
        }
        let mut store = Store::open(&config.data_dir, &origin)?;
        let mut nodes = store.load()?;
        if nodes.is_empty() {
            let seed = match &config.zone_file {
                Some(path) => store::import_zone_file(path, &origin)?,
                None => new_zone(&config)?,
            };
            // Validates the seed (SOA at the apex, sizes) before writing it.
            Zone::from_nodes(&origin, seed.clone())?;
            store.init(&seed)?;
            info!(zone = %origin, names = seed.len(), "created zone");
            nodes = seed;
        }
        let zone = Zone::from_nodes(&origin, nodes)?;
        info!(zone = %origin, serial = zone.serial(), names = zone.len(), keys = config.keys.len(), "zone loaded");
        let shared = Arc::new(Shared::new(
            zone,
            config.keys.clone(),
            store.journal_reader(),
        ));
        let (jobs, rx) = std::sync::mpsc::sync_channel(commit::QUEUE);
        let for_thread = shared.clone();
        let committer = std::thread::Builder::new()
            .name("fpn-ddns-commit".into())
            .spawn(move || commit::run(for_thread, store, rx))?;
        Ok(Self {
            shared,
            jobs: Some(jobs),
            committer: Some(committer),
            config,
        })
    }

    /// The server's counters now.
    pub fn stats(&self) -> DdnsStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DdnsStats {
            requests_udp: l(&c.requests_udp),
            requests_tcp: l(&c.requests_tcp),
            transfers: l(&c.transfers),
            updates_applied: l(&c.updates_applied),
            updates_refused: l(&c.updates_refused),
            api_changes: l(&c.api_changes),
        }
    }

    /// The zone's name.
    pub fn origin(&self) -> &Name {
        &self.config.origin
    }

    /// The current SOA serial.
    pub fn serial(&self) -> u32 {
        self.read_zone().serial()
    }

    /// Replaces the A, AAAA and LIP records of a GE's name (relative to the
    /// zone, like `nas`, or absolute with a trailing dot). `None` or an
    /// empty list removes that record set. Returns once the change is
    /// durable, with the new serial. No TSIG: the caller is trusted.
    pub async fn set_ge_records(
        &self,
        name: &str,
        a: Option<Ipv4Addr>,
        aaaa: Option<Ipv6Addr>,
        lips: &[IpAddr],
    ) -> Result<u32, Error> {
        let name = resolve_name(name, self.origin())?;
        let ttl = self.config.ge_ttl;
        self.apply(ApiChange::SetGe {
            name,
            ttl,
            a,
            aaaa,
            lips: lips.to_vec(),
        })
        .await
    }

    /// Removes a GE's name and every record at it.
    pub async fn remove_ge(&self, name: &str) -> Result<u32, Error> {
        let name = resolve_name(name, self.origin())?;
        self.apply(ApiChange::RemoveName { name }).await
    }

    /// Replaces one record set (type number `rtype`); an empty `rdatas`
    /// removes it.
    pub async fn set_rrset(
        &self,
        name: &str,
        rtype: u16,
        ttl: u32,
        rdatas: Vec<RData>,
    ) -> Result<u32, Error> {
        let name = resolve_name(name, self.origin())?;
        self.apply(ApiChange::SetRrset {
            name,
            rtype,
            ttl,
            rdatas,
        })
        .await
    }

    /// Commits a change and waits until it is durable and served.
    pub async fn apply(&self, change: ApiChange) -> Result<u32, Error> {
        let jobs = self.jobs.as_ref().ok_or(Error::Closed)?;
        let (tx, rx) = oneshot::channel();
        let mut job = Msg::Job(Job::Api { change, reply: tx });
        // The queue is bounded; wait for room rather than fail.
        loop {
            match jobs.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Full(j)) => {
                    job = j;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(Error::Closed),
            }
        }
        rx.await.map_err(|_| Error::Closed)?
    }

    /// The records at a name, as served now.
    pub fn records(&self, name: &str) -> Result<Vec<Record>, Error> {
        let name = resolve_name(name, self.origin())?;
        let zone = self.read_zone();
        Ok(zone
            .node(&key_of(&name))
            .map(|n| n.data().records().collect())
            .unwrap_or_default())
    }

    /// Starts answering on `sockets`: one thread per UDP socket, a task per
    /// TCP listener, and the NOTIFY sender. Must be called inside a tokio
    /// runtime.
    pub fn serve(&self, sockets: Sockets) -> Result<Server, Error> {
        let jobs = self.jobs.clone().ok_or(Error::Closed)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for (i, sock) in sockets.udp.into_iter().enumerate() {
            addrs.push(sock.local_addr()?);
            threads.push(udp::spawn(
                i,
                Arc::new(sock),
                self.shared.clone(),
                jobs.clone(),
                stop.clone(),
            )?);
        }
        let mut tasks = Vec::new();
        for l in sockets.tcp {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            addrs.push(l.local_addr()?);
            tasks.push(tokio::spawn(tcp::accept_loop(
                l,
                self.shared.clone(),
                jobs.clone(),
            )));
        }
        if !self.config.notify.is_empty() {
            let rx = self.shared.serial_tx.subscribe();
            tasks.push(tokio::spawn(notify::run(
                self.config.notify.clone(),
                self.shared.clone(),
                rx,
            )));
        }
        addrs.sort();
        addrs.dedup();
        Ok(Server {
            stop,
            threads,
            tasks,
            addrs,
        })
    }

    /// Stops the commit thread after it has answered every queued job.
    /// Servers started from this handle should be shut down first.
    pub fn close(mut self) {
        if let Some(jobs) = self.jobs.take() {
            // An explicit stop: tasks being torn down may still hold senders.
            let _ = jobs.send(Msg::Stop);
        }
        if let Some(t) = self.committer.take()
            && t.join().is_err()
        {
            warn!("the commit thread panicked");
        }
    }

    fn read_zone(&self) -> std::sync::RwLockReadGuard<'_, Zone> {
        self.shared.zone.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The SOA and NS records of a new zone.
fn new_zone(config: &DdnsConfig) -> Result<Vec<crate::zone::NodeData>, Error> {
    let origin = &config.origin;
    let s = &config.soa;
    let mname = match &s.mname {
        Some(m) => {
            Name::from_ascii(m).map_err(|_| Error::Config(format!("bad SOA mname {m:?}")))?
        }
        None => resolve_name("ns1", origin)?,
    };
    let rname = match &s.rname {
        Some(r) => {
            Name::from_ascii(r).map_err(|_| Error::Config(format!("bad SOA rname {r:?}")))?
        }
        None => resolve_name("hostmaster", origin)?,
    };
    let ns = if config.ns.is_empty() {
        vec![mname.clone()]
    } else {
        config.ns.clone()
    };
    // A new zone starts at the current time, so a zone rebuilt after losing
    // its data still has a serial above the one secondaries hold.
    let serial = crate::unix_now() as u32;
    let soa = SOA::new(
        mname, rname, serial, s.refresh, s.retry, s.expire, s.minimum,
    );
    let zone = Zone::new_empty(origin, soa, s.ttl, &ns)?;
    Ok(zone.snapshot().iter().map(|n| n.data().clone()).collect())
}

/// Sockets to serve on.
#[derive(Debug, Default)]
pub struct Sockets {
    /// UDP sockets; each gets its own thread.
    pub udp: Vec<std::net::UdpSocket>,
    /// TCP listeners.
    pub tcp: Vec<std::net::TcpListener>,
}

impl Sockets {
    /// Binds `addr` for TCP and `udp_threads` UDP sockets (SO_REUSEPORT, so
    /// the kernel spreads clients over the threads). Port 0 picks one free
    /// port for both protocols.
    pub fn bind(addr: SocketAddr, udp_threads: usize) -> Result<Self, Error> {
        let n = udp_threads.max(1);
        let mut last = None;
        for _ in 0..20 {
            match Self::try_bind(addr, n) {
                Ok(s) => return Ok(s),
                // With port 0 the TCP port may be taken for UDP: try another.
                Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    last = Some(e)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map_or_else(|| Error::Config("could not bind".into()), Error::Io))
    }

    fn try_bind(addr: SocketAddr, n: usize) -> std::io::Result<Self> {
        let domain = Domain::for_address(addr);
        let tcp = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        tcp.set_reuse_address(true)?;
        if addr.is_ipv6() {
            tcp.set_only_v6(true)?;
        }
        tcp.bind(&addr.into())?;
        tcp.listen(1024)?;
        let tcp: std::net::TcpListener = tcp.into();
        let port = tcp.local_addr()?.port();
        let udp_addr = SocketAddr::new(addr.ip(), port);
        let mut udp = Vec::with_capacity(n);
        for _ in 0..n {
            let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_reuse_port(true)?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            // Room for bursts while a worker is busy; the kernel caps it.
            let _ = s.set_recv_buffer_size(4 << 20);
            s.bind(&udp_addr.into())?;
            udp.push(s.into());
        }
        Ok(Self {
            udp,
            tcp: vec![tcp],
        })
    }

    /// Adds the sockets of `other`.
    pub fn extend(&mut self, other: Self) {
        self.udp.extend(other.udp);
        self.tcp.extend(other.tcp);
    }
}

/// A running server: answering until [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    addrs: Vec<SocketAddr>,
}

impl Server {
    /// The addresses answered on.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops answering: UDP threads finish their batch (within 200 ms),
    /// TCP connections and NOTIFY retries are dropped. Updates already
    /// queued are still committed and answered by the commit thread.
    pub async fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}
