//! The node's side of the relay: one connection to the relay the GMS
//! named, kept open (reconnecting with a capped backoff) for as long as
//! the relay is configured, frames out as `dst | frame`, frames in as
//! `src | frame` to a channel.
//!
//! The connection is kept open from the start rather than opened on the
//! first relayed frame: a node behind a NAT can only be reached through
//! the relay when it is already connected (nothing else could open its
//! NAT toward the relay), and the open connection holds that binding.
//! Cost: one QUIC connection and a keep-alive per second per node.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use fpn_proto::ge::GeId;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, info_span};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::tls;
use crate::wire::{self, RelayFrame};

/// First wait before reconnecting after a failed or lost connection.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest wait between attempts: a relay that comes back is used within
/// this plus one handshake (the 5 s resume bound of docs/DESIGN-NOTES.md).
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A link that stayed up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(2);
/// How long one handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// A frame that came through the relay.
#[derive(Clone)]
pub struct Received {
    /// The sending GE, as the relay states it (from the sender's
    /// certificate). Trusted only as far as the frame's own end-to-end
    /// authentication goes.
    pub src: GeId,
    /// The carrier frame (kind byte and frame).
    pub frame: Bytes,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("src", &self.src)
            .field("len", &self.frame.len())
            .finish()
    }
}

/// Counters of the node's relay link.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClientCounters {
    /// Frames sent to the relay.
    pub frames_out: u64,
    /// Frame bytes sent.
    pub bytes_out: u64,
    /// Frames received through the relay.
    pub frames_in: u64,
    /// Frame bytes received.
    pub bytes_in: u64,
    /// Frames dropped: no connection to the relay (yet).
    pub drops_down: u64,
    /// Frames dropped: too large for a datagram.
    pub drops_too_large: u64,
    /// Received frames dropped as malformed.
    pub drops_malformed: u64,
    /// Connections made to the relay.
    pub connections: u64,
}

#[derive(Debug, Default)]
struct Atomics {
    frames_out: AtomicU64,
    bytes_out: AtomicU64,
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    drops_down: AtomicU64,
    drops_too_large: AtomicU64,
    drops_malformed: AtomicU64,
    connections: AtomicU64,
}

/// The relay link's state, for `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkState {
    /// The relay's address, if the GMS named one.
    pub addr: Option<SocketAddr>,
    /// True while connected.
    pub up: bool,
    /// Round-trip time to the relay.
    pub rtt_ms: Option<f64>,
}

/// CA certificate, node certificate, node key (DER): what a new client
/// configuration is built from after a renewal.
type TlsParts = (Vec<u8>, Vec<u8>, Zeroizing<Vec<u8>>);

struct Inner {
    endpoint: quinn::Endpoint,
    client: Mutex<quinn::ClientConfig>,
    tls_parts: Mutex<TlsParts>,
    conn: Mutex<Option<quinn::Connection>>,
    addr: watch::Sender<Option<SocketAddr>>,
    inbound: mpsc::Sender<Received>,
    c: Atomics,
}

/// The node's relay link. Cheap to clone.
#[derive(Clone)]
pub struct RelayClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("state", &self.state())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the value is consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RelayClient {
    /// A link with this node's identity (CA, certificate, key; DER).
    /// Binds its own UDP socket on `bind` (port 0: any). Frames from the
    /// relay go to `inbound`. No connection until [`RelayClient::set_addr`].
    pub fn new(
        bind: SocketAddr,
        ca_der: &[u8],
        cert_der: &[u8],
        key_der: &Zeroizing<Vec<u8>>,
        inbound: mpsc::Sender<Received>,
    ) -> Result<Self> {
        let client = tls::client_config(ca_der, cert_der, key_der)?;
        let endpoint = fpn_gms_client::tls::endpoint(bind, None).map_err(|e| Error::Bind {
            addr: bind,
            source: std::io::Error::other(e.to_string()),
        })?;
        let (addr, rx) = watch::channel(None);
        let inner = Arc::new(Inner {
            endpoint,
            client: Mutex::new(client),
            tls_parts: Mutex::new((ca_der.to_vec(), cert_der.to_vec(), key_der.clone())),
            conn: Mutex::new(None),
            addr,
            inbound,
            c: Atomics::default(),
        });
        tokio::spawn(keeper(Arc::downgrade(&inner), rx).instrument(info_span!("relay_link")));
        Ok(Self { inner })
    }

    /// The UDP port of the link's own socket (the native receive path
    /// skips its datagrams).
    pub fn local_port(&self) -> Option<u16> {
        self.inner.endpoint.local_addr().ok().map(|a| a.port())
    }

    /// Uses the relay at `addr` from now on (`None`: no relay). A change
    /// closes the current connection and connects to the new address.
    pub fn set_addr(&self, addr: Option<SocketAddr>) {
        self.inner.addr.send_if_modified(|a| {
            let changed = *a != addr;
            *a = addr;
            changed
        });
    }

    /// Presents `cert_der` (this node's renewed certificate) from the next
    /// connection on.
    pub fn set_certificate(&self, cert_der: &[u8]) -> Result<()> {
        let mut parts = lock(&self.inner.tls_parts);
        parts.1 = cert_der.to_vec();
        let cc = tls::client_config(&parts.0, &parts.1, &parts.2)?;
        *lock(&self.inner.client) = cc;
        Ok(())
    }

    /// True while connected to the relay (cheap: for every frame).
    pub fn is_up(&self) -> bool {
        lock(&self.inner.conn).is_some()
    }

    /// True when a relay is configured (whether or not connected now).
    pub fn configured(&self) -> bool {
        self.inner.addr.borrow().is_some()
    }

    /// Sends a carrier frame (kind byte and frame) to `dst` through the
    /// relay. Never blocks; an `Err` means dropped and counted.
    pub fn send(&self, dst: GeId, frame: &[u8]) -> Result<()> {
        match frame.split_first() {
            Some((kind, rest)) => self.send_parts(dst, *kind, rest),
            None => Err(Error::Dropped("empty frame")),
        }
    }

    /// [`RelayClient::send`] of the carrier frame `kind | payload`, built
    /// in one buffer with the header (one allocation per frame).
    pub fn send_parts(&self, dst: GeId, kind: u8, payload: &[u8]) -> Result<()> {
        let c = &self.inner.c;
        let Some(conn) = lock(&self.inner.conn).clone() else {
            c.drops_down.fetch_add(1, Relaxed);
            return Err(Error::Dropped("not connected to the relay"));
        };
        let len = 1 + payload.len();
        let mut b = BytesMut::with_capacity(wire::HEADER_LEN + len);
        b.put_u32(dst.0);
        b.put_u8(kind);
        b.extend_from_slice(payload);
        let b = b.freeze();
        let max = conn.max_datagram_size().unwrap_or(0);
        if b.len() > max {
            // Only control frames are sent on a stream (a packet that does
            // not fit is dropped, like on the QUIC carrier).
            if kind != CONTROL_KIND || b.len() > wire::MAX_STREAM_FRAME {
                c.drops_too_large.fetch_add(1, Relaxed);
                return Err(Error::TooLarge {
                    size: len,
                    max: max.saturating_sub(wire::HEADER_LEN),
                });
            }
            tokio::spawn(
                async move {
                    let send = async {
                        let mut s = conn.open_uni().await?;
                        s.write_chunk(b).await?;
                        s.finish()?;
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                    };
                    match tokio::time::timeout(Duration::from_secs(10), send).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => debug!(error = %e, "control frame to the relay failed"),
                        Err(_) => debug!("control frame to the relay timed out"),
                    }
                }
                .in_current_span(),
            );
        } else if let Err(e) = conn.send_datagram(b) {
            c.drops_down.fetch_add(1, Relaxed);
            debug!(error = %e, "datagram to the relay refused");
            return Err(Error::Dropped("the relay connection refused the datagram"));
        }
        c.frames_out.fetch_add(1, Relaxed);
        c.bytes_out.fetch_add(len as u64, Relaxed);
        Ok(())
    }

    /// The largest carrier frame that fits one datagram to the relay now.
    pub fn max_frame(&self) -> Option<usize> {
        lock(&self.inner.conn)
            .as_ref()
            .and_then(|c| c.max_datagram_size())
            .map(|m| m.saturating_sub(wire::HEADER_LEN))
    }

    /// Address, whether connected, RTT.
    pub fn state(&self) -> LinkState {
        let conn = lock(&self.inner.conn).clone();
        LinkState {
            addr: *self.inner.addr.borrow(),
            up: conn.is_some(),
            rtt_ms: conn.map(|c| c.rtt().as_secs_f64() * 1e3),
        }
    }

    /// The counters now.
    pub fn counters(&self) -> ClientCounters {
        let c = &self.inner.c;
        ClientCounters {
            frames_out: c.frames_out.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
            frames_in: c.frames_in.load(Relaxed),
            bytes_in: c.bytes_in.load(Relaxed),
            drops_down: c.drops_down.load(Relaxed),
            drops_too_large: c.drops_too_large.load(Relaxed),
            drops_malformed: c.drops_malformed.load(Relaxed),
            connections: c.connections.load(Relaxed),
        }
    }

    /// Closes the connection (the relay is told).
    pub fn close(&self) {
        self.set_addr(None);
        self.inner
            .endpoint
            .close(0u32.into(), b"node shutting down");
    }
}

/// The QUIC carrier's kind byte of a control frame (its framing, see
/// node/src/carrier/frame.rs): control frames may go on a stream.
pub const CONTROL_KIND: u8 = 0x01;

/// Keeps a connection to the configured relay, reconnecting with backoff,
/// until the client is dropped.
async fn keeper(inner: std::sync::Weak<Inner>, mut addr_rx: watch::Receiver<Option<SocketAddr>>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let addr = *addr_rx.borrow_and_update();
        let Some(addr) = addr else {
            if addr_rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        let Some(i) = inner.upgrade() else { return };
        let cc = lock(&i.client).clone();
        let attempt = match i.endpoint.connect_with(cc, addr, tls::SERVER_NAME) {
            Ok(c) => tokio::time::timeout(CONNECT_TIMEOUT, c).await.ok(),
            Err(e) => {
                debug!(%addr, error = %e, "cannot connect to the relay");
                None
            }
        };
        drop(i);
        match attempt {
            Some(Ok(conn)) => {
                let Some(i) = inner.upgrade() else { return };
                info!(%addr, rtt = ?conn.rtt(), "relay link up");
                i.c.connections.fetch_add(1, Relaxed);
                *lock(&i.conn) = Some(conn.clone());
                drop(i);
                let up_at = tokio::time::Instant::now();
                // Until the connection ends or the address changes.
                tokio::select! {
                    _ = read(inner.clone(), conn.clone()) => {}
                    _ = addr_rx.changed() => conn.close(0u32.into(), b"relay changed"),
                }
                let Some(i) = inner.upgrade() else { return };
                *lock(&i.conn) = None;
                info!(%addr, reason = ?conn.close_reason(), "relay link down");
                // A link that held a while (the relay restarted or went
                // away) reconnects at once; one closed right after the
                // handshake (refused: revoked) backs off like a failure.
                if up_at.elapsed() >= STABLE_AFTER {
                    backoff = BACKOFF_MIN;
                    continue;
                }
            }
            Some(Err(e)) => debug!(%addr, error = %e, "relay handshake failed"),
            None => debug!(%addr, "relay handshake timed out or refused"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            r = addr_rx.changed() => if r.is_err() { return },
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Reads datagrams and streams of `conn` until it ends.
async fn read(inner: std::sync::Weak<Inner>, conn: quinn::Connection) {
    let streams = {
        let (inner, conn) = (inner.clone(), conn.clone());
        async move {
            while let Ok(mut recv) = conn.accept_uni().await {
                let inner = inner.clone();
                tokio::spawn(async move {
                    let read = recv.read_to_end(wire::MAX_STREAM_FRAME);
                    if let Ok(Ok(f)) = tokio::time::timeout(Duration::from_secs(10), read).await {
                        deliver(&inner, Bytes::from(f)).await;
                    }
                });
            }
        }
    };
    let datagrams = async {
        while let Ok(d) = conn.read_datagram().await {
            if !deliver(&inner, d).await {
                return;
            }
        }
    };
    tokio::select! {
        () = streams => { conn.closed().await; }
        () = datagrams => {}
    };
}

/// Hands one relay frame to the node; false when the node is gone.
async fn deliver(inner: &std::sync::Weak<Inner>, d: Bytes) -> bool {
    let Some(i) = inner.upgrade() else {
        return false;
    };
    let Ok(f) = RelayFrame::parse(&d) else {
        i.c.drops_malformed.fetch_add(1, Relaxed);
        return true;
    };
    let src = f.ge();
    let frame = d.slice(wire::HEADER_LEN..);
    if frame.is_empty() {
        i.c.drops_malformed.fetch_add(1, Relaxed);
        return true;
    }
    i.c.frames_in.fetch_add(1, Relaxed);
    i.c.bytes_in.fetch_add(frame.len() as u64, Relaxed);
    let tx = i.inbound.clone();
    drop(i);
    tx.send(Received { src, frame }).await.is_ok()
}
