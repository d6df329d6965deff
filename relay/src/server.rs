//! The relay's tokio shell: a QUIC endpoint, one task per node connection,
//! and the [`Forwarder`] deciding each frame.
//!
//! A node connects with its node certificate (mutual TLS, the network's
//! CA); its GE id comes from the certificate. The relay then forwards
//! `dst | frame` datagrams (and streams) from it as `src | frame` to dst's
//! connection, if dst is connected; otherwise the frame is dropped and
//! counted. Admission beyond the CA chain (revocation) is the
//! [`Admission`]'s: inside the GMS it asks the GMS core, a standalone relay
//! admits every certificate the CA signed that is still valid.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fpn_proto::ge::GeId;
use tracing::{Instrument, debug, info, info_span, warn};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::forward::{Counters, DropReason, Forwarder, RateLimit, Verdict};
use crate::tls::{self, NodeCert};
use crate::wire::{self, RelayFrame};

/// The UDP port a relay listens on by default.
pub const DEFAULT_PORT: u16 = 7720;

/// Application close codes of relay connections.
pub mod close {
    /// The relay is shutting down.
    pub const SHUTDOWN: u32 = 0;
    /// A newer connection of the same GE replaced this one.
    pub const REPLACED: u32 = 1;
    /// The GE or its certificate is revoked (or was removed).
    pub const REVOKED: u32 = 2;
}

/// Who may use the relay beyond a valid certificate chain.
pub trait Admission: Send + Sync + 'static {
    /// True if the holder of `cert` may relay now. Called after each
    /// handshake and by [`Relay::recheck`]; must not block for long.
    fn admit(&self, cert: &NodeCert) -> bool;
}

/// Admits every certificate the CA signed (a standalone relay: revocation
/// is bounded by the certificates' short lifetime, see docs/GMS.md).
#[derive(Debug, Default, Clone, Copy)]
pub struct CaOnly;

impl Admission for CaOnly {
    fn admit(&self, _cert: &NodeCert) -> bool {
        true
    }
}

/// Settings of a [`Relay`].
#[derive(Clone)]
pub struct RelayConfig {
    /// UDP address to listen on (default `0.0.0.0:7720`).
    pub listen: SocketAddr,
    /// Per-node rate limit.
    pub rate: RateLimit,
    /// The network's CA certificate (DER).
    pub ca_der: Vec<u8>,
    /// The relay's certificate (DER, for [`tls::SERVER_NAME`], CA-signed).
    pub cert_der: Vec<u8>,
    /// Its key (PKCS#8 DER).
    pub key_der: Zeroizing<Vec<u8>>,
    /// A secret that stays the same across restarts (e.g. a key file's
    /// bytes): the stateless-reset keys derive from it.
    pub reset_secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key bytes.
        f.debug_struct("RelayConfig")
            .field("listen", &self.listen)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

struct State {
    fwd: Forwarder,
    conns: HashMap<u64, (quinn::Connection, NodeCert)>,
}

struct Shared {
    state: Mutex<State>,
    admission: Arc<dyn Admission>,
    next_id: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the table is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running relay. Dropping it closes the endpoint.
pub struct Relay {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("local", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Binds the UDP socket and starts accepting nodes. Must be called
    /// inside a tokio runtime.
    pub fn bind(cfg: RelayConfig, admission: Arc<dyn Admission>) -> Result<Self> {
        cfg.rate.check()?;
        let server = tls::server_config(&cfg.ca_der, &cfg.cert_der, &cfg.key_der)?;
        let sock = std::net::UdpSocket::bind(cfg.listen).map_err(|source| Error::Bind {
            addr: cfg.listen,
            source,
        })?;
        let runtime = quinn::default_runtime().ok_or(Error::Config {
            setting: "runtime",
            reason: "the relay needs a tokio runtime",
        })?;
        let endpoint = quinn::Endpoint::new(
            tls::endpoint_config(&cfg.reset_secret),
            Some(server),
            sock,
            runtime,
        )
        .map_err(|source| Error::Bind {
            addr: cfg.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                fwd: Forwarder::new(cfg.rate),
                conns: HashMap::new(),
            }),
            admission,
            next_id: AtomicU64::new(1),
        });
        tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        info!(listen = ?endpoint.local_addr().ok(), "relay serving");
        Ok(Self { endpoint, shared })
    }

    /// The address the relay listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint.local_addr().map_err(|source| Error::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        self.shared.lock().fwd.counters()
    }

    /// The GEs connected now.
    pub fn nodes(&self) -> Vec<GeId> {
        self.shared.lock().fwd.nodes()
    }

    /// Refuses `ge` from now on and closes its connection at once.
    pub fn revoke(&self, ge: GeId) {
        let mut st = self.shared.lock();
        if let Some(id) = st.fwd.handle_revoked(ge)
            && let Some((c, _)) = st.conns.remove(&id)
        {
            c.close(close::REVOKED.into(), b"revoked");
            info!(peer = %ge, "relay connection cut: revoked");
        }
    }

    /// Closes `ge`'s connection now without refusing it later: the
    /// [`Admission`] decides again when it reconnects.
    pub fn cut(&self, ge: GeId) {
        let mut st = self.shared.lock();
        if let Some(id) = st.fwd.handle_cut(ge)
            && let Some((c, _)) = st.conns.remove(&id)
        {
            c.close(close::REVOKED.into(), b"refused");
            info!(peer = %ge, "relay connection cut: no longer admitted");
        }
    }

    /// Asks the [`Admission`] again about every connected node and cuts
    /// those it refuses now (after a revocation or removal in the GMS).
    /// They are not refused for good: a GE whose certificate was only
    /// superseded comes back with its new one.
    pub fn recheck(&self) {
        let live: Vec<(u64, NodeCert)> = self
            .shared
            .lock()
            .conns
            .iter()
            .map(|(id, (_, c))| (*id, *c))
            .collect();
        for (_, cert) in live {
            if !self.shared.admission.admit(&cert) {
                self.cut(cert.ge);
            }
        }
    }

    /// Closes every connection and waits (bounded) until the nodes were told.
    pub async fn close(&self) {
        self.endpoint
            .close(close::SHUTDOWN.into(), b"relay shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.endpoint
            .close(close::SHUTDOWN.into(), b"relay shutting down");
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let from = fpn_gms_client::canonical_addr(incoming.remote_address());
        let shared = shared.clone();
        tokio::spawn(
            async move {
                let conn = match tokio::time::timeout(Duration::from_secs(10), incoming).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return debug!(error = %e, "relay handshake failed"),
                    Err(_) => return debug!("relay handshake timed out"),
                };
                let Some(cert) = tls::peer_node_cert(&conn) else {
                    conn.close(close::REVOKED.into(), b"no identity");
                    return warn!("relay client without a GE id in its certificate");
                };
                serve(conn, cert, shared)
                    .instrument(info_span!("relay_peer", peer = %cert.ge))
                    .await;
            }
            .instrument(info_span!("relay_accept", %from)),
        );
    }
}

/// Registers a node's connection and forwards what it sends until it ends.
async fn serve(conn: quinn::Connection, cert: NodeCert, shared: Arc<Shared>) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    if !shared.admission.admit(&cert) {
        shared.lock().fwd.count_refused();
        conn.close(close::REVOKED.into(), b"refused");
        return info!("relay client refused: revoked or unknown certificate");
    }
    {
        let mut st = shared.lock();
        match st.fwd.handle_connect(cert.ge, id, Instant::now()) {
            Err(()) => {
                conn.close(close::REVOKED.into(), b"refused");
                return info!("relay client refused: revoked");
            }
            Ok(old) => {
                if let Some((c, _)) = old.and_then(|o| st.conns.remove(&o)) {
                    c.close(close::REPLACED.into(), b"replaced");
                }
                st.conns.insert(id, (conn.clone(), cert));
            }
        }
    }
    info!(from = %fpn_gms_client::canonical_addr(conn.remote_address()), "relay client up");
    let streams =
        tokio::spawn(read_streams(conn.clone(), cert.ge, id, shared.clone()).in_current_span());
    loop {
        let d = match conn.read_datagram().await {
            Ok(d) => d,
            Err(e) => {
                debug!(error = %e, "relay connection ended");
                break;
            }
        };
        forward(&shared, cert.ge, id, d, false);
    }
    streams.abort();
    let mut st = shared.lock();
    st.fwd.handle_disconnect(cert.ge, id);
    st.conns.remove(&id);
    drop(st);
    info!("relay client down");
}

async fn read_streams(conn: quinn::Connection, ge: GeId, id: u64, shared: Arc<Shared>) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let shared = shared.clone();
        tokio::spawn(
            async move {
                let read = recv.read_to_end(wire::MAX_STREAM_FRAME);
                match tokio::time::timeout(Duration::from_secs(10), read).await {
                    Ok(Ok(f)) => forward(&shared, ge, id, Bytes::from(f), true),
                    _ => shared.lock().fwd.count_drop(DropReason::Malformed),
                }
            }
            .in_current_span(),
        );
    }
}

/// One frame from `src` (connection `id`): decide, rewrite the header to
/// the source, send on the destination's connection.
fn forward(shared: &Shared, src: GeId, id: u64, d: Bytes, stream: bool) {
    let dst = RelayFrame::parse(&d).ok().map(|f| f.ge());
    let target = {
        let mut st = shared.lock();
        match st.fwd.handle_frame(src, id, dst, d.len(), Instant::now()) {
            Verdict::Forward { conn, .. } => st.conns.get(&conn).map(|(c, _)| c.clone()),
            Verdict::Drop(r) => {
                tracing::trace!(?r, len = d.len(), "relay frame dropped");
                None
            }
        }
    };
    let Some(out_conn) = target else { return };
    let mut out = BytesMut::from(&d[..]);
    // Cannot fail: the frame was parsed, so it holds a header.
    let _ = wire::write_header(&mut out, src);
    let out = out.freeze();
    if stream || out.len() > out_conn.max_datagram_size().unwrap_or(0) {
        if !stream {
            shared.lock().fwd.count_drop(DropReason::TooLarge);
            return;
        }
        tokio::spawn(
            async move {
                let send = async {
                    let mut s = out_conn.open_uni().await?;
                    s.write_chunk(out).await?;
                    s.finish()?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                };
                if let Err(e) = tokio::time::timeout(Duration::from_secs(10), send)
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()))
                {
                    debug!(error = %e, "relayed control frame not delivered");
                }
            }
            .in_current_span(),
        );
        return;
    }
    if let Err(e) = out_conn.send_datagram(out) {
        debug!(error = %e, "relayed datagram refused");
        shared.lock().fwd.count_drop(DropReason::TooLarge);
    }
}
