//! One entry of the carrier's peer table: the link state, the queue while
//! connecting, the counters, and what the send path reads without the
//! table's lock ([`Sending`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use bytes::{BufMut, Bytes, BytesMut};
use fpn_proto::ge::GeId;

use super::super::{CarrierKind, FrameKind, PeerState, PeerStats, frame};

/// Bytes the send buffer allocates at a time.
const SEND_BLOCK: usize = 256 * 1024;

/// Counters of one peer. Atomics, because the connection's reader tasks
/// count without taking the table's lock.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub drops_too_large: AtomicU64,
    pub drops_unreachable: AtomicU64,
    pub drops_malformed: AtomicU64,
    pub connections: AtomicU64,
    pub punches: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
}

/// The connection in use with a peer.
#[derive(Debug)]
pub(crate) struct Up {
    pub conn: quinn::Connection,
    /// Who opened it.
    pub initiator: GeId,
    /// The serial of the certificate the peer presented.
    pub serial: u64,
    /// When it became the peer's connection.
    pub since: Instant,
    /// Opened by a peer that had just moved (`SERVER_NAME_MOVED`).
    pub moved: bool,
}

/// The state of the link to a peer.
#[derive(Debug)]
pub(crate) enum Link {
    Idle,
    Connecting,
    Up(Up),
}

/// A peer's connection while frames may go straight onto it: published
/// by the table (under its lock) whenever the link changes, read by
/// [`super::Inner::send_up`] without any lock shared between peers.
#[derive(Debug)]
pub(crate) struct Sending {
    pub conn: quinn::Connection,
    pub counters: Arc<Counters>,
    /// Set by the first frame sent through this publication: the relay
    /// wrapper settles its choice for the peer once per publication (a
    /// connection coming up, a move).
    pub settled: AtomicBool,
    /// This peer's own send block: a peer whose frames quinn holds long
    /// (a stalled path) pins only its own blocks. Its lock is the peer's,
    /// like quinn's own per connection.
    pub buf: Mutex<SendBuf>,
}

impl Sending {
    /// The frame for `payload`, cut from this peer's send block.
    pub(crate) fn encode(&self, kind: FrameKind, payload: &[u8]) -> Bytes {
        // A poisoned lock only means a panic elsewhere; the block is whole.
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        b.encode(kind, payload)
    }
}

/// The slot a peer's [`Sending`] is published in; the carrier's map of
/// slots only grows when a peer is first seen.
pub(crate) type SendSlot = Arc<ArcSwapOption<Sending>>;

/// One peer.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Changed only through [`Peer::set_link`], which keeps `slot` in step.
    link: Link,
    slot: SendSlot,
    /// Address of the current (or last tried) connection.
    pub addr: Option<SocketAddr>,
    /// Encoded frames waiting for the connection being set up.
    pub queue: VecDeque<(FrameKind, Bytes)>,
    pub counters: Arc<Counters>,
    /// After a failed attempt, no new one before this.
    pub retry_at: Option<Instant>,
    /// The send block of frames built under the table's lock (queued
    /// while connecting, or sent on the table's path).
    pub send_buf: SendBuf,
    /// This host moved and the connection was accepted here: open it again
    /// from this side with the next frame (`Carrier::network_changed`).
    /// Set through [`Peer::set_redial`]: the connection is unpublished, so
    /// the next frame takes the table's path, which redials.
    redial: bool,
    /// The connection attempt running for the peer, if any: a new one
    /// aborts it ([`super::Inner::start_race`]).
    pub race: Option<tokio::task::AbortHandle>,
    /// Number of the newest attempt: an older one that got past its last
    /// await before its abort installs nothing and fails nothing.
    pub race_gen: u64,
}

/// Where outgoing frames are built. Frames are cut from one block and
/// handed to quinn; once quinn has sent them the block is reused, so the
/// send path does not allocate per packet.
#[derive(Debug, Default)]
pub(crate) struct SendBuf(BytesMut);

impl SendBuf {
    /// The frame for `payload`: kind byte and payload.
    pub(crate) fn encode(&mut self, kind: FrameKind, payload: &[u8]) -> Bytes {
        let need = frame::OVERHEAD + payload.len();
        if self.0.capacity() < need {
            // Reclaims the block when quinn has released every frame cut
            // from it; otherwise starts a new one.
            self.0.reserve(need.max(SEND_BLOCK));
        }
        self.0.put_u8(frame::kind_byte(kind));
        self.0.extend_from_slice(payload);
        self.0.split().freeze()
    }
}

impl Peer {
    pub(crate) fn new() -> Self {
        Self {
            link: Link::Idle,
            slot: SendSlot::default(),
            addr: None,
            queue: VecDeque::new(),
            counters: Arc::default(),
            retry_at: None,
            send_buf: SendBuf::default(),
            redial: false,
            race: None,
            race_gen: 0,
        }
    }

    /// The link's state.
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// The slot the send path reads the peer's connection from.
    pub(crate) fn slot(&self) -> &SendSlot {
        &self.slot
    }

    /// Makes `link` the peer's link and publishes it; returns the old one.
    pub(crate) fn set_link(&mut self, link: Link) -> Link {
        let old = std::mem::replace(&mut self.link, link);
        self.publish();
        old
    }

    /// Whether the connection must be opened again from this side.
    pub(crate) fn redial(&self) -> bool {
        self.redial
    }

    /// Marks the connection for a redial (or clears the mark) and
    /// publishes anew: a fresh publication also settles anew.
    pub(crate) fn set_redial(&mut self, redial: bool) {
        self.redial = redial;
        self.publish();
    }

    /// Frames go straight onto the connection only while it is up and not
    /// to be redialed; otherwise through the table (which queues,
    /// connects or redials).
    fn publish(&self) {
        let sending = match &self.link {
            Link::Up(up) if !self.redial => Some(Arc::new(Sending {
                conn: up.conn.clone(),
                counters: self.counters.clone(),
                settled: AtomicBool::new(false),
                buf: Mutex::default(),
            })),
            _ => None,
        };
        self.slot.store(sending);
    }

    /// Drops everything queued, counting it as unreachable.
    pub(crate) fn drop_queue(&mut self) {
        let n = self.queue.len() as u64;
        self.queue.clear();
        Counters::add(&self.counters.drops_unreachable, n);
    }

    /// The peer's public view.
    pub(crate) fn stats(&self, ge: GeId) -> PeerStats {
        let c = &self.counters;
        let (state, rtt, max_payload, initiator) = match &self.link {
            Link::Idle => (PeerState::Idle, None, None, None),
            Link::Connecting => (PeerState::Connecting, None, None, None),
            Link::Up(up) => (
                PeerState::Up,
                Some(up.conn.rtt()),
                up.conn
                    .max_datagram_size()
                    .map(|m| m.saturating_sub(frame::OVERHEAD)),
                Some(up.initiator),
            ),
        };
        PeerStats {
            ge,
            carrier: CarrierKind::Quic,
            state,
            addr: self.addr,
            rtt,
            max_payload,
            initiator,
            frames_out: c.frames_out.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
            frames_in: c.frames_in.load(Relaxed),
            bytes_in: c.bytes_in.load(Relaxed),
            drops_too_large: c.drops_too_large.load(Relaxed),
            drops_unreachable: c.drops_unreachable.load(Relaxed),
            drops_malformed: c.drops_malformed.load(Relaxed),
            connections: c.connections.load(Relaxed),
            punches: c.punches.load(Relaxed),
            direct_retries: 0,
            why: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_kind_byte_and_reuse_the_send_block() {
        let mut p = SendBuf::default();
        let a = p.encode(FrameKind::Data, &[1, 2, 3]);
        assert_eq!(&a[..], &[frame::kind_byte(FrameKind::Data), 1, 2, 3]);
        let b = p.encode(FrameKind::Control, &[]);
        assert_eq!(&b[..], &[frame::kind_byte(FrameKind::Control)]);
        // Both came from one block: the second starts where the first ended.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        drop((a, b));
        let big = vec![7u8; SEND_BLOCK];
        let c = p.encode(FrameKind::Data, &big);
        assert_eq!(c.len(), SEND_BLOCK + 1);
        assert_eq!(&c[1..], &big[..]);
    }
}
