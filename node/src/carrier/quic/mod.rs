//! The QUIC carrier: frames in QUIC DATAGRAM frames, one mutually
//! authenticated connection per peer.
//!
//! - **Identity.** Both ends present the node certificate the GMS issued
//!   and verify the other's chain to the network's CA ([`auth`]). The peer's
//!   GE id is read from its certificate; an outgoing connection must reach
//!   exactly the GE it was opened for.
//! - **One connection per peer**, used in both directions. When both sides
//!   connect at once, each side keeps the connection opened by the lower GE
//!   id and closes the other, so both keep the same one. A peer's new
//!   connection later than that replaces ours: it only connects when it
//!   holds none with us (it restarted, or gave ours up).
//! - **Dead connections go fast.** A peer that crashed and came back on the
//!   same port resets its old connections with its first answer (the reset
//!   keys derive from the node key, [`restart`]); a connection whose data
//!   gets no answer at all for 3 s is closed. Either way the next frame
//!   opens a new connection, without the back-off of a failed connect.
//! - **Frames.** One frame per DATAGRAM, behind a kind byte ([`frame`]). A
//!   data frame that does not fit the connection's current datagram size is
//!   dropped and counted ([`Error::CarrierTooLarge`] tells the size that
//!   fits); a control frame that does not fit goes on its own
//!   unidirectional stream.
//! - **Never blocking.** [`Carrier::send`] hands the frame to quinn (which
//!   drops the oldest datagrams when its send buffer is full) or queues it,
//!   bounded, while the connection is being set up.
//! - **No lock shared between peers per frame.** A peer's connection, while
//!   up, is published in a lock-free snapshot ([`peer::Sending`]) that the
//!   send path reads; frames are built in the peer's own block. The peer
//!   table's lock is taken only for frames that connection does not take
//!   (connecting, queued, a redial after a move, a lost connection) and to
//!   change a link.
//! - **Revocation.** Revoked GEs and serials are refused in the handshake,
//!   and their live connections are closed at once.
//!
//! [`frame`]: super::frame

mod auth;
mod conn;
mod peer;
mod restart;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use fpn_proto::flow::FastMap;
use fpn_proto::ge::GeId;
use tokio::sync::mpsc;
use tracing::debug;

use super::{Carrier, CarrierKind, FrameKind, Inbound, PeerStats, PeerTarget, frame};
use crate::error::{Error, Result};
use auth::Tls;
use peer::{Counters, Link, Peer, SendSlot};

/// The UDP port the carrier listens on by default.
pub const DEFAULT_PORT: u16 = 7718;
/// ALPN of node-to-node QUIC.
pub const ALPN: &[u8] = b"fpn-node/1";

/// What the direct QUIC connection to a peer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// No connection and no failed attempt pending.
    Idle,
    /// Being set up.
    Connecting,
    /// Up.
    Up,
    /// The last attempt failed on every address (or the peer refused us).
    Failed,
}

/// Application close codes.
mod close {
    /// The carrier is shutting down.
    pub const SHUTDOWN: u32 = 0;
    /// Both sides connected at once; this connection lost.
    pub const DUPLICATE: u32 = 1;
    /// The peer was revoked.
    pub const REVOKED: u32 = 2;
    /// The peer stopped acknowledging what we sent.
    pub const UNANSWERED: u32 = 3;
}

/// Congestion controllers the carrier can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// CUBIC, quinn's default: backs off on loss.
    Cubic,
    /// BBR (quinn's implementation is marked experimental): paces at the
    /// measured bottleneck rate instead of filling buffers.
    Bbr,
}

/// Settings of a [`QuicCarrier`]. [`QuicCarrierConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct QuicCarrierConfig {
    /// Where to listen (UDP). Default `[::]:7718` (both families; IPv4 only
    /// where the host has no IPv6 sockets); port 0 picks a free port.
    pub listen: SocketAddr,
    /// The node's identity from enrollment (node.crt, node.key, ca.crt).
    pub identity: fpn_gms_client::Identity,
    /// A connection with no traffic (keep-alives included) for this long is
    /// dead. Default 30 s.
    pub idle_timeout: Duration,
    /// Keep-alive interval of a connection; keeps NAT mappings open. Default 10 s.
    pub keep_alive: Duration,
    /// How long one connection attempt (one address) may take. Default 5 s.
    pub connect_timeout: Duration,
    /// After every address of a peer failed, frames for it are dropped for
    /// this long before the next attempt. Default 1 s.
    pub retry_after: Duration,
    /// Frames held per peer while its connection is set up. Default 256.
    pub queue_len: usize,
    /// Capacity of the [`Inbound`] channel. Default 4096.
    pub inbound_capacity: usize,
    /// UDP payload size used from the first packet (at least 1200). Default 1200.
    pub initial_mtu: u16,
    /// Largest UDP payload path-MTU discovery tries. Default 1452 (fits a
    /// 1500-byte link with IPv6 headers); 1472 suits IPv4-only 1500-byte links.
    pub mtu_upper_bound: u16,
    /// Received datagrams quinn buffers per connection before dropping the
    /// oldest, in bytes. Default 4 MiB.
    pub datagram_receive_buffer: usize,
    /// Datagrams quinn buffers per connection before dropping the oldest, in
    /// bytes. Default 1 MiB.
    pub datagram_send_buffer: usize,
    /// The congestion controller. Default [`Congestion::Cubic`].
    pub congestion: Congestion,
    /// Several datagrams per send syscall (UDP GSO) where the kernel has
    /// it. Default on.
    pub segmentation_offload: bool,
}

impl QuicCarrierConfig {
    /// The defaults, listening on `[::]:7718`.
    pub fn new(identity: fpn_gms_client::Identity) -> Self {
        Self {
            listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, DEFAULT_PORT)),
            identity,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
            queue_len: 256,
            inbound_capacity: 4096,
            initial_mtu: 1200,
            mtu_upper_bound: 1452,
            datagram_receive_buffer: 4 << 20,
            datagram_send_buffer: 1 << 20,
            congestion: Congestion::Cubic,
            segmentation_offload: true,
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |setting, reason| Err(Error::CarrierConfig { setting, reason });
        if self.initial_mtu < 1200 {
            return bad("initial_mtu", "must be at least 1200");
        }
        if self.mtu_upper_bound < self.initial_mtu {
            return bad("mtu_upper_bound", "must be at least initial_mtu");
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return bad("keep_alive", "must be above zero and below idle_timeout");
        }
        if quinn::IdleTimeout::try_from(self.idle_timeout).is_err() {
            return bad("idle_timeout", "too long");
        }
        if self.queue_len == 0 || self.inbound_capacity == 0 {
            return bad("queue_len/inbound_capacity", "must be above zero");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be above zero");
        }
        Ok(())
    }
}

/// The QUIC carrier. Dropping it closes every connection; [`QuicCarrier::close`]
/// does so gracefully.
#[derive(Debug)]
pub struct QuicCarrier {
    inner: Arc<Inner>,
    punch_requests: Mutex<Option<mpsc::Receiver<GeId>>>,
}

/// Punch requests held for the daemon; beyond this they are dropped (the
/// next connection attempt asks again).
const PUNCH_QUEUE: usize = 64;

impl QuicCarrier {
    /// Binds the UDP socket and starts accepting peers. Received frames
    /// arrive on the returned channel. Must be called inside a tokio runtime.
    pub fn bind(cfg: QuicCarrierConfig) -> Result<(Self, mpsc::Receiver<Inbound>)> {
        cfg.check()?;
        let tls = Tls::new(&cfg.identity, ALPN)?;
        let transport = Arc::new(conn::transport(&cfg));
        let server = server_config(&tls, &transport)?;
        let config = restart::endpoint_config(cfg.identity.key_pkcs8());
        let endpoint = match conn::endpoint(cfg.listen, server.clone(), config.clone()) {
            // `[::]` serves both families; a host without IPv6 sockets
            // gets the IPv4 wildcard on the same port.
            Err(Error::CarrierBind { source, .. })
                if cfg.listen.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                    && source.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
            {
                let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, cfg.listen.port()));
                tracing::warn!(error = %source, listen = %v4, "no IPv6 sockets on this host: the carrier listens on IPv4 only");
                conn::endpoint(v4, server, config)?
            }
            r => r?,
        };
        let (tx, rx) = mpsc::channel(cfg.inbound_capacity);
        let (punch_tx, punch_rx) = mpsc::channel(PUNCH_QUEUE);
        let inner = Arc::new(Inner {
            endpoint,
            local: tls.local(),
            tls,
            transport,
            runtime: tokio::runtime::Handle::current(),
            connect_timeout: cfg.connect_timeout,
            simultaneous_window: cfg.connect_timeout * 2 + Duration::from_secs(1),
            retry_after: cfg.retry_after,
            queue_len: cfg.queue_len,
            peers: Mutex::default(),
            slots: ArcSwap::default(),
            inbound: tx,
            closed: AtomicBool::new(false),
            control_streams: Arc::default(),
            punch_requests: punch_tx,
        });
        inner.runtime.spawn(conn::accept_loop(inner.clone()));
        Ok((
            Self {
                inner,
                punch_requests: Mutex::new(Some(punch_rx)),
            },
            rx,
        ))
    }

    /// The carrier's QUIC endpoint, for the GMS session: run on the
    /// carrier's own socket, the session's source address as the GMS sees
    /// it is the carrier's reflexive address (the NAT's mapping of this
    /// very socket), which peers can then be told to dial.
    pub fn endpoint(&self) -> quinn::Endpoint {
        self.inner.endpoint.clone()
    }

    /// Peers this carrier started dialing on its own (a frame for a peer
    /// with no connection): the daemon asks the GMS to tell each of them to
    /// dial back at once (hole punching). Taken once; `None` afterwards.
    /// While nobody takes it, requests are dropped.
    pub fn take_punch_requests(&self) -> Option<mpsc::Receiver<GeId>> {
        self.punch_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The GMS relayed that `target` wants a connection: dial its
    /// candidates now, without a frame to send, so this node's NAT sees an
    /// outgoing packet to the peer while the peer's packets are on their
    /// way. Nothing happens while a connection is up or being set up (the
    /// peer's attempt then meets ours; the simultaneous-open rule keeps
    /// one), and a back-off after a failed attempt is cut short.
    pub fn punch(&self, target: PeerTarget) {
        self.inner.punch(target);
    }

    /// The address the carrier listens on.
    pub fn local_addr(&self) -> SocketAddr {
        // The socket is bound for the endpoint's life, so this only fails
        // after close; the configured address is then as good an answer.
        self.inner
            .endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
    }

    /// This node's GE id, from its certificate.
    pub fn local_ge(&self) -> GeId {
        self.inner.local
    }

    /// Presents `cert` (this node's renewed certificate, DER) in every
    /// handshake from now on, both as client and as server. Connections
    /// already up keep going: TLS checks certificates only at the handshake.
    pub fn set_certificate(&self, cert: &[u8]) -> Result<()> {
        self.inner.tls.set_cert(cert)?;
        let server = server_config(&self.inner.tls, &self.inner.transport)?;
        self.inner.endpoint.set_server_config(Some(server));
        Ok(())
    }

    /// Refuses `ge` from now on and closes its connection at once; frames
    /// queued for it are dropped.
    pub fn revoke_ge(&self, ge: GeId) {
        self.inner.tls.trust().revoke_ge(ge);
        self.inner.cut(|g, _| g == ge);
    }

    /// Refuses certificates with these serials from now on and closes the
    /// connections that were opened with them.
    pub fn revoke_serials(&self, serials: &[u64]) {
        self.inner.tls.trust().revoke_serials(serials);
        self.inner.cut(|_, serial| serials.contains(&serial));
    }

    /// What the direct connection to `ge` is doing (the relay fallback
    /// reads it for every frame the connection does not take at once, see
    /// [`super::relayed`]).
    pub fn direct(&self, ge: GeId) -> Direct {
        match self.inner.lock().get(&ge) {
            None => Direct::Idle,
            Some(p) => match p.link() {
                Link::Up(_) => Direct::Up,
                Link::Connecting => Direct::Connecting,
                Link::Idle if p.retry_at.is_some() => Direct::Failed,
                Link::Idle => Direct::Idle,
            },
        }
    }

    /// Takes the frames queued for `ge` while its connection is being set
    /// up (none when it is up or idle): the relay fallback sends them
    /// instead when the attempt is slow.
    pub fn take_queued(&self, ge: GeId) -> Vec<(FrameKind, bytes::Bytes)> {
        match self.inner.lock().get_mut(&ge) {
            Some(p) if matches!(p.link(), Link::Connecting) => p.queue.drain(..).collect(),
            _ => Vec::new(),
        }
    }

    /// Starts a connection to `to` unless one is up or being set up, even
    /// while the back-off of a failed attempt runs (the relay fallback
    /// retries direct on its own schedule). Nothing is queued.
    pub fn connect(&self, to: &PeerTarget) {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire)
            || inner.tls.trust().refused_ge(to.ge)
            || to.addrs.is_empty()
        {
            return;
        }
        let mut peers = inner.lock();
        let peer = inner.entry(&mut peers, to.ge);
        if matches!(peer.link(), Link::Idle) {
            peer.set_link(Link::Connecting);
            inner.start_race(peer, to.clone(), false, false);
            // A retry of direct QUIC punches like a first attempt does.
            let _ = inner.punch_requests.try_send(to.ge);
        }
    }

    /// Sends on `ge`'s connection if it is up, without any lock shared
    /// between peers; `settle` runs at most once per publication of the
    /// connection (it coming up, a move), before its first frame sent this
    /// way. `None`: not up (or just lost); [`QuicCarrier::send_by_table`]
    /// then queues, connects, redials or refuses.
    pub fn send_up(
        &self,
        ge: GeId,
        kind: FrameKind,
        payload: &[u8],
        settle: impl FnOnce(),
    ) -> Option<Result<()>> {
        self.inner.send_up(ge, kind, payload, settle)
    }

    /// Sends through the peer table, under its lock: queues while a
    /// connection is set up, connects, redials after a move, refuses a
    /// revoked peer. For a caller that tried [`QuicCarrier::send_up`]
    /// first ([`Carrier::send`] does both).
    pub fn send_by_table(&self, to: &PeerTarget, kind: FrameKind, payload: &[u8]) -> Result<()> {
        self.inner.send(to, kind, payload)
    }

    /// A sender into the channel [`QuicCarrier::bind`] returned: frames
    /// that arrived another way (the relay) join the carrier's own.
    pub fn inbound_sender(&self) -> mpsc::Sender<Inbound> {
        self.inner.inbound.clone()
    }

    /// Closes every connection, tells the peers, and waits (bounded) until
    /// they have been told.
    pub async fn close(&self) {
        self.inner.shut();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
    }
}

/// The endpoint's server side, from the current certificate.
fn server_config(
    tls: &Tls,
    transport: &Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig> {
    let mut server = quinn::ServerConfig::with_crypto(tls.server_crypto()?);
    server.transport_config(transport.clone());
    // Bounds the handshakes held at once; each costs memory and a signature.
    server.max_incoming(4096);
    Ok(server)
}

impl Drop for QuicCarrier {
    fn drop(&mut self) {
        // The accept loop and the connection tasks hold the shared state;
        // closing the endpoint ends them.
        self.inner.shut();
    }
}

impl Carrier for QuicCarrier {
    fn kind(&self) -> CarrierKind {
        CarrierKind::Quic
    }

    fn send(&self, to: &PeerTarget, kind: FrameKind, payload: &[u8]) -> Result<()> {
        match self.inner.send_up(to.ge, kind, payload, || {}) {
            Some(r) => r,
            None => self.inner.send(to, kind, payload),
        }
    }

    fn network_changed(&self, addrs: &[std::net::IpAddr]) {
        // quinn migrates a connection this node opened (the kernel picks
        // the new source, the peer validates the new path): kept, when
        // the peer's address is one the node can still reach from another
        // network. Opened again from this side with its next frame,
        // racing the peer's candidates as at first: a connection this node
        // accepted (quinn pins a server's source address, gone now), one
        // to a private address (the peer's LAN one leads nowhere from
        // another network) and one to an address of a family this host has
        // no address of any more (a move from an IPv6-only network to an
        // IPv4-only one: the peer's other family is among its candidates).
        // The peer takes the new one as replacing its own at once.
        let local = self.inner.local;
        for (ge, p) in self.inner.lock().iter_mut() {
            let redial = match p.link() {
                Link::Up(up) => {
                    let remote = fpn_gms_client::canonical_addr(up.conn.remote_address()).ip();
                    up.initiator != local
                        || !reachable_anywhere(remote)
                        || !same_family_here(remote, addrs)
                }
                Link::Connecting => true,
                Link::Idle => false,
            };
            if redial {
                debug!(peer = %ge, "moved: the connection is opened again");
            } else {
                debug!(peer = %ge, "moved: the connection migrates");
            }
            // Published anew either way: the next frame on a migrating
            // connection settles it again (the relay choice sees it up, as
            // it used to with every frame).
            p.set_redial(redial || p.redial());
        }
    }

    fn peers(&self) -> Vec<PeerStats> {
        self.inner
            .lock()
            .iter()
            .map(|(ge, p)| p.stats(*ge))
            .collect()
    }
}

/// Control frames in flight on streams at most (each is a task).
const MAX_CONTROL_STREAMS: usize = 64;

/// State shared by the carrier and its tasks.
#[derive(Debug)]
pub(crate) struct Inner {
    endpoint: quinn::Endpoint,
    local: GeId,
    tls: Tls,
    transport: Arc<quinn::TransportConfig>,
    runtime: tokio::runtime::Handle,
    connect_timeout: Duration,
    /// Two connections between the same pair set up within this window
    /// of each other are a simultaneous open; see [`Inner::install`].
    simultaneous_window: Duration,
    retry_after: Duration,
    queue_len: usize,
    peers: Mutex<BTreeMap<GeId, Peer>>,
    /// Every peer's [`SendSlot`], for the send path to read without
    /// `peers`' lock. Written under that lock, when a peer is first seen.
    slots: ArcSwap<FastMap<GeId, SendSlot>>,
    inbound: mpsc::Sender<Inbound>,
    closed: AtomicBool,
    control_streams: Arc<AtomicUsize>,
    /// Peers dialed because a frame was waiting (see `take_punch_requests`).
    punch_requests: mpsc::Sender<GeId>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<GeId, Peer>> {
        // A poisoned lock means a panic elsewhere; the table itself is consistent.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `ge`'s entry in the table `peers` (the locked table), made and its
    /// slot published when the peer is new.
    fn entry<'a>(&self, peers: &'a mut BTreeMap<GeId, Peer>, ge: GeId) -> &'a mut Peer {
        peers.entry(ge).or_insert_with(|| {
            let peer = Peer::new();
            let mut slots = FastMap::clone(&self.slots.load());
            slots.insert(ge, peer.slot().clone());
            self.slots.store(Arc::new(slots));
            peer
        })
    }

    /// Sends on `ge`'s connection when it is published (up, not to be
    /// redialed), without taking the table's lock; `settle` runs before the
    /// first frame of each publication. `None` when there is no such
    /// connection or it was just lost: the caller goes through
    /// [`Inner::send`], which queues, connects, redials or refuses.
    /// Revocation and shutdown unpublish under the table's lock before
    /// they return, so nothing is sent to a refused peer after that.
    fn send_up(
        &self,
        ge: GeId,
        kind: FrameKind,
        payload: &[u8],
        settle: impl FnOnce(),
    ) -> Option<Result<()>> {
        let slots = self.slots.load();
        let sending = slots.get(&ge)?.load();
        let s = sending.as_ref()?;
        if !s.settled.load(Ordering::Relaxed) && !s.settled.swap(true, Ordering::Relaxed) {
            settle();
        }
        let f = s.encode(kind, payload);
        match self.transmit_frame(ge, &s.counters, &s.conn, kind, f) {
            // The table's path marks the link idle and queues the frame
            // for the new connection.
            Err(Error::CarrierDropped {
                reason: LOST_REASON,
                ..
            }) => None,
            r => Some(r),
        }
    }

    fn shut(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for (ge, p) in self.lock().iter() {
            if let Link::Up(up) = p.link() {
                conn::log_stats(*ge, &up.conn, &p.counters);
            }
        }
        self.endpoint.close(close::SHUTDOWN.into(), b"shutdown");
        for p in self.lock().values_mut() {
            p.drop_queue();
            p.set_link(Link::Idle);
        }
    }

    /// Closes the connections `f(ge, serial)` selects and drops their queues.
    fn cut(&self, f: impl Fn(GeId, u64) -> bool) {
        let refused = |ge| self.tls.trust().refused_ge(ge);
        for (ge, p) in self.lock().iter_mut() {
            let hit = match p.link() {
                Link::Up(up) => f(*ge, up.serial),
                _ => refused(*ge),
            };
            if hit {
                if let Link::Up(up) = p.set_link(Link::Idle) {
                    up.conn.close(close::REVOKED.into(), b"revoked");
                    tracing::info!(peer = %ge, "peer revoked, connection closed");
                }
                p.drop_queue();
            }
        }
    }

    fn send(self: &Arc<Self>, to: &PeerTarget, kind: FrameKind, payload: &[u8]) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::CarrierClosed);
        }
        if self.tls.trust().refused_ge(to.ge) {
            return Err(Error::CarrierRefused { peer: to.ge });
        }
        let mut peers = self.lock();
        let peer = self.entry(&mut peers, to.ge);
        // The mark goes with this frame, as it always did, even without
        // an address to dial.
        if peer.redial() && to.addrs.is_empty() {
            peer.set_redial(false);
        } else if peer.redial() {
            // Frames queue until the new connection is up (a handshake,
            // milliseconds); the old one is read a little longer. An
            // attempt started before the move (from no address, or to
            // the peer's unreachable one) is aborted: left running, its
            // handshake could complete after this one's (its Initial
            // resent once the network is back) and replace the fresh
            // connection on both sides, losing what was in flight on it.
            // The link changes first: the old connection is never
            // published again.
            if let Link::Up(old) = peer.set_link(Link::Connecting) {
                self.runtime.spawn(conn::retire(old.conn));
            }
            peer.set_redial(false);
            self.start_race(peer, to.clone(), false, true);
        }
        if let Link::Up(up) = peer.link() {
            let conn = up.conn.clone();
            let f = peer.send_buf.encode(kind, payload);
            match self.transmit_frame(to.ge, &peer.counters, &conn, kind, f) {
                Err(Error::CarrierDropped {
                    reason: LOST_REASON,
                    ..
                }) => {
                    // The reader task will notice too; reconnecting now
                    // keeps this frame.
                    peer.set_link(Link::Idle);
                }
                r => return r,
            }
        }
        let dropped = |peer: &mut Peer, reason| {
            Counters::add(&peer.counters.drops_unreachable, 1);
            Err(Error::CarrierDropped {
                peer: to.ge,
                reason,
            })
        };
        if matches!(peer.link(), Link::Idle) {
            if peer.retry_at.is_some_and(|t| Instant::now() < t) {
                return dropped(peer, "the last connection attempt failed; retrying later");
            }
            if to.addrs.is_empty() {
                return dropped(peer, "no address to connect to");
            }
            peer.set_link(Link::Connecting);
            self.start_race(peer, to.clone(), false, false);
            // Behind a NAT the peer's router drops our packets unless the
            // peer sends to us at the same time: ask the GMS to tell it.
            let _ = self.punch_requests.try_send(to.ge);
        }
        if peer.queue.len() >= self.queue_len {
            return dropped(peer, "queue full while connecting");
        }
        let f = peer.send_buf.encode(kind, payload);
        peer.queue.push_back((kind, f));
        Ok(())
    }

    /// Starts racing `target`'s candidates ([`conn::connect`]), aborting
    /// the attempt still running for the peer: only the newest attempt may
    /// install a connection or give the peer up (one that is past its last
    /// await when aborted is told by its number, `Peer::race_gen`).
    fn start_race(self: &Arc<Self>, peer: &mut Peer, target: PeerTarget, punch: bool, moved: bool) {
        if let Some(old) = peer.race.take() {
            old.abort();
        }
        peer.race_gen += 1;
        let attempt = conn::Attempt {
            number: peer.race_gen,
            punch,
            moved,
        };
        let task = self
            .runtime
            .spawn(conn::connect(self.clone(), target, attempt));
        peer.race = Some(task.abort_handle());
    }

    fn punch(self: &Arc<Self>, target: PeerTarget) {
        if self.closed.load(Ordering::Acquire) || self.tls.trust().refused_ge(target.ge) {
            return;
        }
        let mut peers = self.lock();
        let peer = self.entry(&mut peers, target.ge);
        if !matches!(peer.link(), Link::Idle) || target.addrs.is_empty() {
            return;
        }
        debug!(peer = %target.ge, "dialing on the peer's connect-now");
        peer.retry_at = None;
        peer.set_link(Link::Connecting);
        self.start_race(peer, target, true, false);
    }

    /// Sends one encoded frame (kind byte included) on `conn`; counts it or its drop.
    fn transmit_frame(
        &self,
        ge: GeId,
        c: &Arc<Counters>,
        conn: &quinn::Connection,
        kind: FrameKind,
        f: bytes::Bytes,
    ) -> Result<()> {
        let len = (f.len() - frame::OVERHEAD) as u64;
        let max = conn.max_datagram_size().unwrap_or(0);
        if f.len() > max {
            if kind == FrameKind::Control {
                return self.send_on_stream(ge, c, conn, f);
            }
            Counters::add(&c.drops_too_large, 1);
            let max = max.saturating_sub(frame::OVERHEAD);
            debug!(peer = %ge, size = len, max, "frame does not fit a datagram, dropped");
            return Err(Error::CarrierTooLarge {
                peer: ge,
                size: len as usize,
                max,
            });
        }
        match conn.send_datagram(f) {
            Ok(()) => {
                Counters::add(&c.frames_out, 1);
                Counters::add(&c.bytes_out, len);
                Ok(())
            }
            Err(quinn::SendDatagramError::TooLarge) => {
                // The path MTU shrank between the check and the send.
                Counters::add(&c.drops_too_large, 1);
                let max = conn
                    .max_datagram_size()
                    .unwrap_or(0)
                    .saturating_sub(frame::OVERHEAD);
                Err(Error::CarrierTooLarge {
                    peer: ge,
                    size: len as usize,
                    max,
                })
            }
            Err(quinn::SendDatagramError::ConnectionLost(_)) => {
                Counters::add(&c.drops_unreachable, 1);
                Err(Error::CarrierDropped {
                    peer: ge,
                    reason: LOST_REASON,
                })
            }
            Err(e) => {
                Counters::add(&c.drops_unreachable, 1);
                debug!(peer = %ge, error = %e, "datagram refused");
                Err(Error::CarrierDropped {
                    peer: ge,
                    reason: "the peer does not accept datagrams",
                })
            }
        }
    }

    /// A control frame too large for a datagram: its own unidirectional stream.
    fn send_on_stream(
        &self,
        ge: GeId,
        c: &Arc<Counters>,
        conn: &quinn::Connection,
        f: bytes::Bytes,
    ) -> Result<()> {
        if f.len() > frame::MAX_STREAM_FRAME {
            Counters::add(&c.drops_too_large, 1);
            return Err(Error::CarrierTooLarge {
                peer: ge,
                size: f.len() - frame::OVERHEAD,
                max: frame::MAX_STREAM_FRAME - frame::OVERHEAD,
            });
        }
        let Some(slot) = conn::StreamSlot::take(&self.control_streams, MAX_CONTROL_STREAMS) else {
            Counters::add(&c.drops_unreachable, 1);
            return Err(Error::CarrierDropped {
                peer: ge,
                reason: "too many control frames in flight",
            });
        };
        let len = (f.len() - frame::OVERHEAD) as u64;
        Counters::add(&c.frames_out, 1);
        Counters::add(&c.bytes_out, len);
        self.runtime.spawn(conn::send_stream(
            conn.clone(),
            f,
            self.connect_timeout,
            slot,
            ge,
        ));
        Ok(())
    }
}

/// Whether this host, with addresses `addrs` (empty: unknown), has one of
/// `remote`'s family to reach it from.
fn same_family_here(remote: std::net::IpAddr, addrs: &[std::net::IpAddr]) -> bool {
    addrs.is_empty() || addrs.iter().any(|a| a.is_ipv4() == remote.is_ipv4())
}

/// Whether `ip` can be reached from another network than the one this
/// host is on now: not a private, shared (CGNAT), link-local or loopback
/// address.
fn reachable_anywhere(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v) => {
            let shared = v.octets()[0] == 100 && (v.octets()[1] & 0xc0) == 64;
            !(v.is_private() || v.is_link_local() || v.is_loopback() || shared)
        }
        std::net::IpAddr::V6(v) => {
            let ula = (v.segments()[0] & 0xfe00) == 0xfc00;
            let link_local = (v.segments()[0] & 0xffc0) == 0xfe80;
            !(v.is_loopback() || ula || link_local)
        }
    }
}

/// The reason of a drop on a connection that was just lost.
const LOST_REASON: &str = "the connection was lost";

#[cfg(test)]
mod move_tests {
    use super::reachable_anywhere;

    #[test]
    fn private_shared_and_link_local_addresses_are_not_reachable_from_elsewhere() {
        for a in [
            "192.168.1.1",
            "10.20.0.1",
            "172.16.5.5",
            "100.64.0.1",
            "169.254.1.1",
            "127.0.0.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(!reachable_anywhere(a.parse().unwrap()), "{a}");
        }
        for a in ["198.18.2.2", "203.0.113.7", "100.128.0.1", "2001:db8::1"] {
            assert!(reachable_anywhere(a.parse().unwrap()), "{a}");
        }
    }
}

#[cfg(test)]
mod tests;
