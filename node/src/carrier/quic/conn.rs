//! Connections: the endpoint, connecting and accepting, keeping one
//! connection per peer, and the tasks that read from a connection.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fpn_proto::ge::GeId;
use tracing::{Instrument, debug, info, info_span, warn};

use super::auth::{PeerCert, SERVER_NAME, SERVER_NAME_MOVED, peer_of};
use super::peer::{Counters, Link, Up};
use super::{Congestion, Inner, QuicCarrierConfig, close};
use crate::carrier::candidates::{self, Action, Race};
use crate::carrier::{FrameKind, Inbound, PeerTarget, frame};
use crate::error::{Error, Result};

/// Socket buffers asked for (the kernel caps them at rmem_max/wmem_max).
/// At a gigabit a default 208 KiB buffer holds under 2 ms of packets.
const UDP_BUFFER: usize = 8 << 20;
/// Datagrams taken from a connection per wake-up before yielding.
const BATCH: usize = 64;
/// How long a peer may take to deliver one control frame on a stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// The RTT a connection assumes before it has measured one. quinn's
/// default (333 ms, RFC 9002's) puts the first retransmission of a lost
/// Initial about 1 s after it; a punched dial loses its first Initial
/// whenever it reaches the peer's NAT before the peer's own packet opened
/// it (the two sides dial within a millisecond or two of each other), and
/// the lab saw every first ping from behind an address-dependent NAT wait
/// that second. With 100 ms the retry comes about 0.3 s after; a path
/// slower than that sends an Initial twice, which costs one datagram.
const INITIAL_RTT: Duration = Duration::from_millis(100);

/// The transport settings every connection uses, both directions.
pub(super) fn transport(cfg: &QuicCarrierConfig) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.initial_rtt(INITIAL_RTT);
    t.max_idle_timeout(quinn::IdleTimeout::try_from(cfg.idle_timeout).ok());
    t.keep_alive_interval(Some(cfg.keep_alive));
    // Frames travel in datagrams; streams carry only control frames too
    // large for one, one frame per unidirectional stream.
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(32u32.into());
    t.datagram_receive_buffer_size(Some(cfg.datagram_receive_buffer));
    t.datagram_send_buffer_size(cfg.datagram_send_buffer);
    t.initial_mtu(cfg.initial_mtu);
    t.enable_segmentation_offload(cfg.segmentation_offload);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(cfg.mtu_upper_bound);
    t.mtu_discovery_config(Some(mtu));
    match cfg.congestion {
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    t
}

/// A QUIC endpoint on a UDP socket with large buffers, serving `server`.
pub(super) fn endpoint(
    listen: SocketAddr,
    server: quinn::ServerConfig,
    config: quinn::EndpointConfig,
) -> Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |source| Error::CarrierBind {
        addr: listen,
        source,
    };
    let sock = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(bind)?;
    if listen.is_ipv6() {
        // Bound to [::], IPv4 peers arrive as mapped addresses.
        let _ = sock.set_only_v6(false);
    }
    // Best effort: a smaller buffer still works, with more loss in bursts.
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    // Past the real-address plane's routes into the TUN (real_plane.rs):
    // a peer's carrier address may be a real address it protects.
    crate::real_plane::mark(&sock);
    sock.bind(&listen.into()).map_err(bind)?;
    let runtime = quinn::default_runtime().ok_or(Error::CarrierConfig {
        setting: "runtime",
        reason: "the QUIC carrier needs a tokio runtime",
    })?;
    quinn::Endpoint::new(config, Some(server), sock.into(), runtime).map_err(bind)
}

/// Accepts peers until the endpoint closes.
pub(super) async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let from = fpn_gms_client::canonical_addr(incoming.remote_address());
        let inner2 = inner.clone();
        let span = info_span!("quic_accept", %from);
        inner.runtime.spawn(
            async move {
                let conn = match tokio::time::timeout(inner2.connect_timeout, incoming).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return debug!(error = %e, "incoming handshake failed"),
                    Err(_) => return debug!("incoming handshake timed out"),
                };
                let Some(cert) = peer_of(&conn) else {
                    // The verifier required a certificate with a GE id; this is unreachable
                    // unless quinn hands over a connection without one.
                    conn.close(close::REVOKED.into(), b"no identity");
                    return warn!("peer without identity after the handshake");
                };
                // A peer that moved dials under another server name: its
                // connection replaces ours even right after ours came up.
                let moved = conn
                    .handshake_data()
                    .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                    .and_then(|d| d.server_name)
                    .is_some_and(|n| n == SERVER_NAME_MOVED);
                inner2.install(conn, cert.ge, cert, moved, None);
            }
            .instrument(span),
        );
    }
}

/// One connection attempt to a peer ([`connect`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Attempt {
    /// Its number (`Peer::race_gen` when it started).
    pub number: u64,
    /// Counts the connection as one the GMS asked for.
    pub punch: bool,
    /// This node moved: the connection replaces the peer's at once.
    pub moved: bool,
}

/// Connects to `target`: its candidates race ([`Race`]: local ones at
/// once, the reflexive one a moment later, the first handshake kept), and
/// the winner is installed; on failure drops what was queued and backs off.
pub(super) async fn connect(inner: Arc<Inner>, target: PeerTarget, attempt: Attempt) {
    let Attempt {
        number,
        punch,
        moved,
    } = attempt;
    let span = info_span!("quic_peer", peer = %target.ge);
    async move {
        let cands = candidates::typed(&target.addrs, target.reflexive);
        let mut race = Race::new(cands.iter().map(|(_, k)| *k).collect(), Instant::now());
        let mut attempts = tokio::task::JoinSet::new();
        loop {
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            while let Some(action) = race.poll_action(Instant::now()) {
                match action {
                    Action::Dial(i) => {
                        let (inner, (addr, kind)) = (inner.clone(), cands[i]);
                        debug!(%addr, ?kind, "dialing candidate");
                        attempts.spawn(async move {
                            (i, connect_one(&inner, target.ge, addr, moved).await)
                        });
                    }
                    // Only a completed handshake makes a candidate ready,
                    // and that is taken below where the connection is.
                    Action::Take(_) => {}
                    Action::GiveUp => {
                        inner.connect_failed(target.ge, number);
                        return;
                    }
                }
            }
            let wake = race.poll_timeout().map(tokio::time::Instant::from_std);
            if attempts.is_empty() && wake.is_none() {
                // Nothing in flight and nothing due: an attempt task ended
                // without a result (it panicked). Give up like a failure
                // rather than leave the peer connecting for ever.
                inner.connect_failed(target.ge, number);
                return;
            }
            let done = tokio::select! {
                r = attempts.join_next(), if !attempts.is_empty() => r,
                _ = sleep_until(wake) => continue,
            };
            let Some(Ok((i, r))) = done else { continue };
            let (addr, kind) = cands[i];
            match r {
                Ok(conn) => match peer_of(&conn) {
                    Some(cert) => {
                        race.handle_ready(i);
                        // The first ready candidate is taken at once, so the
                        // one just ready is the one taken.
                        if let Some(Action::Take(_)) = race.poll_action(Instant::now()) {
                            // Dropping the other attempts abandons their handshakes.
                            attempts.abort_all();
                            debug!(%addr, ?kind, "candidate won");
                            if punch {
                                inner.count_punch(target.ge);
                            }
                            return inner.install(conn, inner.local, cert, moved, Some(number));
                        }
                    }
                    None => {
                        conn.close(close::REVOKED.into(), b"no identity");
                        race.handle_failed(i);
                    }
                },
                Err(e) => {
                    debug!(%addr, ?kind, error = %e, "connection attempt failed");
                    race.handle_failed(i);
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Sleeps until `t`; forever without one.
async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn connect_one(
    inner: &Inner,
    ge: GeId,
    addr: SocketAddr,
    moved: bool,
) -> Result<quinn::Connection> {
    let mut cc = quinn::ClientConfig::new(inner.tls.client_crypto(ge)?);
    cc.transport_config(inner.transport.clone());
    let connecting = inner
        .endpoint
        .connect_with(
            cc,
            addr,
            if moved {
                SERVER_NAME_MOVED
            } else {
                SERVER_NAME
            },
        )
        .map_err(|e| Error::CarrierTls(format!("connect to {addr}: {e}")))?;
    match tokio::time::timeout(inner.connect_timeout, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(Error::CarrierTls(format!("{addr}: {e}"))),
        Err(_) => Err(Error::CarrierTls(format!("{addr}: handshake timed out"))),
    }
}

impl Inner {
    /// Makes `conn` (opened by `initiator`) the peer's connection, unless a
    /// connection that wins is already up (never when `moved`: the
    /// initiator moved and the old one is dead); sends what was queued.
    /// `race`: the number of this node's attempt that opened it (`None`
    /// for an accepted one); an attempt overtaken by a newer one installs
    /// nothing.
    fn install(
        self: &Arc<Self>,
        conn: quinn::Connection,
        initiator: GeId,
        cert: PeerCert,
        moved: bool,
        race: Option<u64>,
    ) {
        let ge = cert.ge;
        let mut peers = self.lock();
        if self.closed.load(Ordering::Acquire) || self.tls.trust().is_refused(&cert) {
            // Closed, or revoked while the handshake ran.
            conn.close(close::REVOKED.into(), b"refused");
            return;
        }
        let peer = self.entry(&mut peers, ge);
        if race.is_some_and(|n| n != peer.race_gen) {
            debug!(peer = %ge, "connection of an overtaken attempt: closed");
            conn.close(close::DUPLICATE.into(), b"overtaken");
            return;
        }
        let span = info_span!("quic_peer", peer = %ge);
        if let Link::Up(old) = peer.link() {
            // A peer only opens a connection when it holds none with us. So
            // a new one means our old one is dead for the peer (it crashed
            // and restarted, or gave the connection up), unless both sides
            // opened theirs at once: then both connections come up within
            // a few connect timeouts of each other, and both sides keep
            // the one opened by the lower GE id, so both keep the same one.
            let simultaneous = !moved
                && old.initiator != initiator
                && old.since.elapsed() < self.simultaneous_window;
            // A peer that moved races its candidates, and more than one
            // handshake may complete here before it drops the losers;
            // which one its race took shows when it sends on it (its
            // Binding Update goes at once): the first one stays, the
            // others are read and become the connection with their first
            // frame (`Inner::promote`); the losers it closes itself.
            if moved
                && old.moved
                && old.initiator == initiator
                && old.since.elapsed() < self.connect_timeout
            {
                debug!(peer = %ge, "second connection of a moved peer's race: kept until it is used");
                let counters = peer.counters.clone();
                drop(peers);
                self.spawn_readers_promoting(conn, cert, counters, span, true);
                return;
            }
            if simultaneous && old.initiator < initiator {
                debug!(peer = %ge, %initiator, "duplicate connection, keeping the other");
                // The peer may have sent on it before it learnt which one
                // wins: read it for a grace period, never send on it.
                self.spawn_readers(conn.clone(), cert, peer.counters.clone(), span);
                self.runtime.spawn(retire(conn));
                return;
            }
            if moved {
                info!(peer = %ge, %initiator, "new connection after a move replaces the old one");
            } else if !simultaneous {
                info!(peer = %ge, %initiator, "new connection from a peer that lost the old one");
            }
            self.runtime.spawn(retire(old.conn.clone()));
        }
        let remote = fpn_gms_client::canonical_addr(conn.remote_address());
        info!(peer = %ge, %initiator, rtt = ?conn.rtt(), "peer up");
        peer.addr = Some(remote);
        peer.retry_at = None;
        Counters::add(&peer.counters.connections, 1);
        peer.set_link(Link::Up(Up {
            conn: conn.clone(),
            initiator,
            serial: cert.serial,
            since: Instant::now(),
            moved,
        }));
        self.runtime
            .spawn(watch(conn.clone()).instrument(span.clone()));
        while let Some((kind, f)) = peer.queue.pop_front() {
            // Each failure is counted in transmit_frame; the rest still go.
            let _ = self.transmit_frame(ge, &peer.counters, &conn, kind, f);
        }
        let counters = peer.counters.clone();
        drop(peers);
        self.spawn_readers(conn, cert, counters, span);
    }

    fn spawn_readers(
        self: &Arc<Self>,
        conn: quinn::Connection,
        cert: PeerCert,
        counters: Arc<Counters>,
        span: tracing::Span,
    ) {
        self.spawn_readers_promoting(conn, cert, counters, span, false);
    }

    /// [`Inner::spawn_readers`]; with `promote`, the connection becomes
    /// the peer's with the first datagram that comes on it.
    fn spawn_readers_promoting(
        self: &Arc<Self>,
        conn: quinn::Connection,
        cert: PeerCert,
        counters: Arc<Counters>,
        span: tracing::Span,
        promote: bool,
    ) {
        self.runtime.spawn(
            read_datagrams(self.clone(), conn.clone(), cert, counters.clone(), promote)
                .instrument(span.clone()),
        );
        self.runtime
            .spawn(read_streams(self.clone(), conn, cert, counters).instrument(span));
    }

    /// Counts a connection set up on the GMS's connect-now.
    fn count_punch(&self, ge: GeId) {
        if let Some(p) = self.lock().get(&ge) {
            Counters::add(&p.counters.punches, 1);
        }
    }

    /// Every address of attempt `number` failed: drop what waited and
    /// back off (unless a newer attempt runs).
    fn connect_failed(&self, ge: GeId, number: u64) {
        let mut peers = self.lock();
        let Some(peer) = peers.get_mut(&ge) else {
            return;
        };
        if matches!(peer.link(), Link::Connecting) && peer.race_gen == number {
            info!(peer = %ge, dropped = peer.queue.len(), "peer unreachable");
            peer.set_link(Link::Idle);
            peer.drop_queue();
            peer.retry_at = Some(Instant::now() + self.retry_after);
        }
    }

    /// A connection ended; the peer goes idle if it was its connection.
    /// When the peer refused us (our certificate failed its checks, or it
    /// revoked us), new attempts wait like after a failed connect.
    /// A moved peer's other connection carried a frame: its race took
    /// this one, which becomes the peer's connection (the one in place is
    /// retired), unless it is closed already.
    fn promote(self: &Arc<Self>, cert: PeerCert, conn: &quinn::Connection) {
        if conn.close_reason().is_some() {
            return;
        }
        let mut peers = self.lock();
        if self.closed.load(Ordering::Acquire) || self.tls.trust().is_refused(&cert) {
            // Revoked (or shut) since it came up: never published.
            conn.close(close::REVOKED.into(), b"refused");
            return;
        }
        let Some(peer) = peers.get_mut(&cert.ge) else {
            return;
        };
        if let Link::Up(cur) = peer.link() {
            if cur.conn.stable_id() == conn.stable_id() {
                return;
            }
            self.runtime.spawn(retire(cur.conn.clone()));
        }
        info!(peer = %cert.ge, "the moved peer uses its other connection: it is the peer's now");
        peer.addr = Some(fpn_gms_client::canonical_addr(conn.remote_address()));
        peer.set_link(Link::Up(Up {
            conn: conn.clone(),
            initiator: cert.ge,
            serial: cert.serial,
            since: Instant::now(),
            moved: true,
        }));
        self.runtime.spawn(watch(conn.clone()));
        while let Some((kind, f)) = peer.queue.pop_front() {
            let _ = self.transmit_frame(cert.ge, &peer.counters, conn, kind, f);
        }
    }

    fn connection_gone(&self, ge: GeId, conn: &quinn::Connection) {
        let mut peers = self.lock();
        if let Some(peer) = peers.get_mut(&ge)
            && let Link::Up(up) = peer.link()
            && up.conn.stable_id() == conn.stable_id()
        {
            peer.set_link(Link::Idle);
            log_stats(ge, conn, &peer.counters);
            let reason = conn.close_reason();
            if reason.as_ref().is_some_and(refused) {
                peer.retry_at = Some(Instant::now() + self.retry_after);
                info!(peer = %ge, ?reason, "refused by peer");
            } else {
                info!(peer = %ge, ?reason, "peer down");
            }
        }
    }

    /// Hands received frames to the engine. Returns the close code when
    /// the connection must end: the engine is gone, or the peer was revoked
    /// meanwhile (its frames are then dropped).
    async fn deliver(
        &self,
        cert: PeerCert,
        from: SocketAddr,
        counters: &Counters,
        frames: &mut Vec<Bytes>,
    ) -> Option<u32> {
        if self.tls.trust().is_refused(&cert) {
            frames.clear();
            return Some(close::REVOKED);
        }
        let ge = cert.ge;
        let mut rest = frames.drain(..);
        while rest.len() > 0 {
            // One wait for the room of the whole batch (issue 13: not one
            // per frame). A slow engine stalls this reader; quinn then
            // drops the oldest datagrams of this connection, not anything
            // else.
            let n = rest.len().min(self.inbound.max_capacity());
            let Ok(mut permits) = self.inbound.reserve_many(n).await else {
                // Returning drops the rest of the batch with the drain.
                return Some(close::SHUTDOWN);
            };
            for f in rest.by_ref().take(n) {
                let Some(kind) = frame::parse(&f) else {
                    Counters::add(&counters.drops_malformed, 1);
                    continue;
                };
                let payload = f.slice(frame::OVERHEAD..);
                Counters::add(&counters.frames_in, 1);
                Counters::add(&counters.bytes_in, payload.len() as u64);
                if let Some(permit) = permits.next() {
                    permit.send(Inbound {
                        peer: ge,
                        from,
                        kind,
                        payload,
                    });
                }
            }
        }
        None
    }
}

/// Logs (DEBUG) what quinn saw on a connection next to the carrier's own
/// counters: frames handed over vs. datagrams quinn sent shows drops in the
/// send buffer, datagrams quinn received vs. frames delivered shows drops
/// in the receive buffer (a slow engine); lost packets and congestion
/// events show the path's own losses.
pub(super) fn log_stats(ge: GeId, conn: &quinn::Connection, c: &Counters) {
    use std::sync::atomic::Ordering::Relaxed;
    let st = conn.stats();
    debug!(
        peer = %ge,
        frames_out = c.frames_out.load(Relaxed),
        frames_in = c.frames_in.load(Relaxed),
        quic_datagrams_out = st.frame_tx.datagram,
        quic_datagrams_in = st.frame_rx.datagram,
        lost_packets = st.path.lost_packets,
        congestion_events = st.path.congestion_events,
        cwnd = st.path.cwnd,
        "connection stats"
    );
}

/// How long the losing connection of a simultaneous connect is still read.
const DUPLICATE_GRACE: Duration = Duration::from_secs(2);

/// Closes a connection that lost to another one, after a grace period in
/// which frames the peer sent on it still arrive.
pub(super) async fn retire(conn: quinn::Connection) {
    tokio::select! {
        _ = tokio::time::sleep(DUPLICATE_GRACE) => conn.close(close::DUPLICATE.into(), b"duplicate"),
        _ = conn.closed() => {}
    }
}

/// How often [`watch`] looks at a connection.
const WATCH_TICK: Duration = Duration::from_millis(250);
/// Data sent without any packet coming back for this long (or eight round
/// trips, if longer) means the peer is gone.
const UNANSWERED_AFTER: Duration = Duration::from_secs(3);

/// Closes `conn` when data sent on it gets no answer at all. A peer that
/// restarted on the same port resets its old connections at once (see
/// `restart`); this covers the rest: a peer that is gone, came back on
/// another address, or whose resets do not get through. Without it such a
/// connection would swallow frames until the idle timeout. Every data
/// packet elicits an ACK within a round trip and the ACK delay, so seconds
/// of silence after sending mean the path or the peer is gone; closing lets
/// the next frame reconnect. Only data counts as a question: keep-alives
/// and path-MTU probes (which may be lost by design) are left to the idle
/// timeout.
async fn watch(conn: quinn::Connection) {
    let mut tick = tokio::time::interval(WATCH_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut rx_seen, mut tx_answered) = (0, 0);
    let mut unanswered_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = conn.closed() => return,
            _ = tick.tick() => {}
        }
        let st = conn.stats();
        let (rx, tx) = (
            st.udp_rx.datagrams,
            st.frame_tx.datagram + st.frame_tx.stream,
        );
        if rx != rx_seen {
            (rx_seen, tx_answered, unanswered_since) = (rx, tx, None);
            continue;
        }
        if tx == tx_answered {
            continue;
        }
        let since = *unanswered_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= UNANSWERED_AFTER.max(conn.rtt() * 8) {
            info!(silent = ?since.elapsed(), "peer does not answer, closing the connection");
            conn.close(close::UNANSWERED.into(), b"unanswered");
            return;
        }
    }
}

/// True if the peer closed the connection because it does not accept us:
/// a TLS alert (our certificate failed its checks; with TLS 1.3 the client
/// learns this only after its side of the handshake completed) or a revocation.
fn refused(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::ConnectionClosed(c) => {
            (0x100..0x200).contains(&u64::from(c.error_code))
        }
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code == close::REVOKED.into(),
        _ => false,
    }
}

/// Reads datagrams until the connection ends, taking every datagram that
/// is ready per wake-up.
async fn read_datagrams(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    cert: PeerCert,
    counters: Arc<Counters>,
    mut promote: bool,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        match conn.read_datagram().await {
            Ok(d) => batch.push(d),
            Err(e) => {
                debug!(error = %e, "connection ended");
                break;
            }
        }
        while batch.len() < BATCH {
            match ready_datagram(&conn) {
                Some(d) => batch.push(d),
                None => break,
            }
        }
        if std::mem::take(&mut promote) {
            inner.promote(cert, &conn);
        }
        // The source address may change (migration); read it per batch.
        if let Some(code) = inner
            .deliver(
                cert,
                fpn_gms_client::canonical_addr(conn.remote_address()),
                &counters,
                &mut batch,
            )
            .await
        {
            conn.close(code.into(), b"closing");
            break;
        }
    }
    inner.connection_gone(cert.ge, &conn);
}

/// A datagram that is already received, without waiting.
fn ready_datagram(conn: &quinn::Connection) -> Option<Bytes> {
    let mut fut = pin!(conn.read_datagram());
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(d)) => Some(d),
        _ => None,
    }
}

/// Reads control frames that came on unidirectional streams.
async fn read_streams(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    cert: PeerCert,
    counters: Arc<Counters>,
) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let (inner, counters, from) = (
            inner.clone(),
            counters.clone(),
            fpn_gms_client::canonical_addr(conn.remote_address()),
        );
        inner.runtime.clone().spawn(
            async move {
                let read = recv.read_to_end(frame::MAX_STREAM_FRAME);
                let mut frames = match tokio::time::timeout(STREAM_TIMEOUT, read).await {
                    Ok(Ok(f)) if frame::parse(&f) == Some(FrameKind::Control) => {
                        vec![Bytes::from(f)]
                    }
                    _ => {
                        // Too long, cut off, too slow, or not a control frame.
                        Counters::add(&counters.drops_malformed, 1);
                        return;
                    }
                };
                inner.deliver(cert, from, &counters, &mut frames).await;
            }
            .in_current_span(),
        );
    }
}

/// Sends one control frame on its own unidirectional stream.
pub(super) async fn send_stream(
    conn: quinn::Connection,
    f: Bytes,
    timeout: Duration,
    _slot: StreamSlot,
    ge: GeId,
) {
    let send = async {
        let mut s = conn.open_uni().await?;
        s.write_chunk(f).await?;
        s.finish()?;
        // Waits until the peer has the whole frame, so the slot stays taken meanwhile.
        let _ = s.stopped().await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(peer = %ge, error = %e, "control frame on a stream failed"),
        Err(_) => debug!(peer = %ge, "control frame on a stream timed out"),
    }
}

/// One of a bounded number of control streams in flight; released on drop.
#[derive(Debug)]
pub(super) struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    /// Takes a slot if fewer than `max` are taken.
    pub(super) fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
