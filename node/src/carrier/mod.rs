//! PLACEHOLDER (branch wt-node only): the carrier interface from the shared
//! contract, so the daemon compiles until helper "carrier"'s branch is
//! merged; that merge replaces this whole file with the real QUIC carrier.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fpn_proto::ge::GeId;

use crate::error::{Error, Result};

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A DPRP message.
    Control,
    /// A (PCCOM-protected or plain) IP packet.
    Data,
}

/// Which carrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarrierKind {
    /// QUIC DATAGRAM frames.
    Quic,
    /// Native IP.
    Native,
}

/// Where to reach a peer.
#[derive(Debug, Clone)]
pub struct PeerTarget {
    /// The peer.
    pub ge: GeId,
    /// Addresses to try, best first.
    pub addrs: Vec<SocketAddr>,
}

/// A frame received.
#[derive(Debug)]
pub struct Inbound {
    /// The authenticated peer.
    pub peer: GeId,
    /// Its underlay address.
    pub from: SocketAddr,
    /// What it carries.
    pub kind: FrameKind,
    /// The payload.
    pub payload: bytes::Bytes,
}

/// Per-peer statistics.
#[derive(Debug, Clone)]
pub struct PeerStats {
    /// The peer.
    pub ge: GeId,
    /// Its address.
    pub remote: SocketAddr,
    /// Round-trip time.
    pub rtt: Option<Duration>,
}

/// A way to carry frames to peers.
pub trait Carrier: Send + Sync {
    /// Which carrier.
    fn kind(&self) -> CarrierKind;
    /// Sends one frame; never blocks.
    fn send(&self, to: &PeerTarget, kind: FrameKind, payload: &[u8]) -> Result<()>;
    /// Peer statistics.
    fn peers(&self) -> Vec<PeerStats>;
}

/// QUIC carrier settings.
#[derive(Debug, Clone)]
pub struct QuicCarrierConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// State directory with node.crt/node.key/ca.crt.
    pub state_dir: PathBuf,
}

/// The QUIC carrier (placeholder).
#[derive(Debug)]
pub struct QuicCarrier;

impl QuicCarrier {
    /// Binds the carrier.
    pub fn bind(
        _cfg: QuicCarrierConfig,
    ) -> Result<(QuicCarrier, tokio::sync::mpsc::Receiver<Inbound>)> {
        Err(Error::Config("the QUIC carrier is not merged yet".into()))
    }
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 0))
    }
    /// Cuts off a GE.
    pub fn revoke_ge(&self, _ge: GeId) {}
    /// Cuts off serials.
    pub fn revoke_serials(&self, _serials: &[u64]) {}
    /// Closes everything.
    pub async fn close(&self) {}
}

impl Carrier for QuicCarrier {
    fn kind(&self) -> CarrierKind {
        CarrierKind::Quic
    }
    fn send(&self, _to: &PeerTarget, _kind: FrameKind, _payload: &[u8]) -> Result<()> {
        Ok(())
    }
    fn peers(&self) -> Vec<PeerStats> {
        Vec::new()
    }
}
