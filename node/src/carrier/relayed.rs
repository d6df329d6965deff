//! [`PathCarrier`]: the QUIC carrier with the relay as its fallback.
//!
//! The node core hands QUIC frames to this carrier as before; per peer,
//! [`RelayChoice`] decides whether a frame goes on the direct QUIC
//! connection or through the relay (`dst | frame`, see fpn_relay::wire).
//! Frames that come through the relay join the QUIC carrier's inbound
//! channel as if they came from the peer over QUIC, with a `from` address
//! of their own ([`relay_from`]), so the core handles them exactly like
//! direct frames: PCCOM and DPRP authenticate them end to end. The relay's
//! claim of who sent a frame is only a routing hint: a data frame whose
//! flow key is not the claimed peer's fails PCCOM, a DPRP message carries
//! its sender's signature, and the core checks both against the claimed
//! GE (note "Relay" in docs/DESIGN-NOTES.md).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use fpn_proto::ge::GeId;
use fpn_relay::{Received, RelayClient};
use tokio::sync::mpsc;
use tracing::{debug, trace};

use super::relay_choice::{Decision, RelayChoice};
use super::{
    Carrier, CarrierKind, Direct, FrameKind, Inbound, PeerStats, PeerTarget, QuicCarrier, frame,
};
use crate::error::{Error, Result};

/// The `from` address of frames that came through the relay from `ge`:
/// in 100::/64 (RFC 6666, discard-only), one per GE, port 0. The core keys
/// "who sent this" by address, so each relayed peer needs its own; none
/// of these is ever dialled ([`is_relay_from`]).
pub fn relay_from(ge: GeId) -> SocketAddr {
    let g = ge.0;
    let ip = Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, (g >> 16) as u16, g as u16);
    SocketAddr::new(IpAddr::V6(ip), 0)
}

/// True for an address made by [`relay_from`].
pub fn is_relay_from(a: &SocketAddr) -> bool {
    match a.ip() {
        IpAddr::V6(ip) => ip.segments()[..6] == [0x100, 0, 0, 0, 0, 0] && a.port() == 0,
        IpAddr::V4(_) => false,
    }
}

/// The QUIC carrier, and the relay when direct QUIC fails.
pub struct PathCarrier {
    quic: Arc<QuicCarrier>,
    relay: Option<RelayClient>,
    choices: Mutex<BTreeMap<GeId, RelayChoice>>,
    /// Peers with a timer armed for [`RelayChoice::relay_due`].
    timers: Mutex<BTreeSet<GeId>>,
    me: Weak<PathCarrier>,
}

impl std::fmt::Debug for PathCarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathCarrier")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

impl PathCarrier {
    /// `quic` alone (`relay` = `None`) or with the relay. Frames from the
    /// relay arrive on `relayed`; [`PathCarrier::run_inbound`] moves them
    /// into the QUIC carrier's inbound channel.
    pub fn new(quic: Arc<QuicCarrier>, relay: Option<RelayClient>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            quic,
            relay,
            choices: Mutex::new(BTreeMap::new()),
            timers: Mutex::new(BTreeSet::new()),
            me: me.clone(),
        })
    }

    /// A direct attempt to `ge` is in progress and not relayed: at its
    /// [`RelayChoice::relay_due`] the frames queued for it go through the
    /// relay, instead of waiting there for the next frame (a DPRP
    /// retransmission, a second later). One timer per peer at a time;
    /// needs a tokio runtime (none: the next frame decides, as before).
    fn arm_relay_timer(&self, ge: GeId, due: Instant) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !lock(&self.timers).insert(ge) {
            return;
        }
        let me = self.me.clone();
        rt.spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            if let Some(me) = me.upgrade() {
                lock(&me.timers).remove(&ge);
                me.relay_queued(ge);
            }
        });
    }

    /// Sends the frames queued for a slow direct attempt to `ge` through
    /// the relay, when the choice says so now.
    fn relay_queued(&self, ge: GeId) {
        let Some(relay) = self.relay_up() else { return };
        let direct = self.quic.direct(ge);
        if direct != Direct::Connecting {
            return;
        }
        let now = Instant::now();
        let decision = {
            let mut c = self.choices();
            let Some(choice) = c.get_mut(&ge) else { return };
            match choice.relay_due() {
                Some(due) if due > now => {
                    drop(c);
                    return self.arm_relay_timer(ge, due);
                }
                _ => choice.decide(direct, true, now),
            }
        };
        if !matches!(decision, Decision::Relay { .. }) {
            return;
        }
        let queued = self.quic.take_queued(ge);
        debug!(peer = %ge, frames = queued.len(), "direct attempt slow: queued frames through the relay");
        for (_, f) in queued {
            if let Err(e) = relay.send(ge, &f) {
                trace!(peer = %ge, error = %e, "queued frame not relayed");
            }
        }
    }

    fn choices(&self) -> MutexGuard<'_, BTreeMap<GeId, RelayChoice>> {
        // A poisoned lock only means a panic elsewhere; the table is consistent.
        self.choices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves frames that came through the relay into the QUIC carrier's
    /// inbound channel, as frames of the GE the relay names, until either
    /// side closes.
    pub async fn run_inbound(self: Arc<Self>, mut relayed: mpsc::Receiver<Received>) {
        let tx = self.quic.inbound_sender();
        while let Some(r) = relayed.recv().await {
            let Some(kind) = frame::parse(&r.frame) else {
                trace!(src = %r.src, "relayed frame of unknown kind dropped");
                continue;
            };
            let direct = self.quic.direct(r.src);
            self.choices()
                .entry(r.src)
                .or_insert_with(|| RelayChoice::new(Instant::now()))
                .handle_relayed_frame(direct, Instant::now());
            let inbound = Inbound {
                peer: r.src,
                from: relay_from(r.src),
                kind,
                payload: r.frame.slice(frame::OVERHEAD..),
            };
            if tx.send(inbound).await.is_err() {
                return;
            }
        }
    }

    fn relay_up(&self) -> Option<&RelayClient> {
        self.relay.as_ref().filter(|r| r.is_up())
    }
}

impl Carrier for PathCarrier {
    fn kind(&self) -> CarrierKind {
        CarrierKind::Quic
    }

    fn network_changed(&self, local: &[std::net::IpAddr]) {
        // The choices first: the carrier publishes every connection anew,
        // and a frame settling one must find the move recorded.
        for c in self.choices().values_mut() {
            c.moved();
        }
        self.quic.network_changed(local);
    }

    fn send(&self, to: &PeerTarget, kind: FrameKind, payload: &[u8]) -> Result<()> {
        // A connection that is up takes every frame: the peer's choice
        // learns so once per connection, and every other frame goes on
        // without a lock shared between peers (issue 13).
        let settle = || {
            let now = Instant::now();
            self.choices()
                .entry(to.ge)
                .or_insert_with(|| RelayChoice::new(now))
                .decide(Direct::Up, self.relay_up().is_some(), now);
        };
        if let Some(r) = self.quic.send_up(to.ge, kind, payload, settle) {
            return r;
        }
        // Addresses that stand for "through the relay" are never dialled.
        let cleaned;
        let to = if to.addrs.iter().any(is_relay_from) {
            cleaned = PeerTarget {
                ge: to.ge,
                addrs: to
                    .addrs
                    .iter()
                    .copied()
                    .filter(|a| !is_relay_from(a))
                    .collect(),
                reflexive: to.reflexive,
            };
            &cleaned
        } else {
            to
        };
        let relay = self.relay_up();
        let direct = self.quic.direct(to.ge);
        let (decision, due) = {
            let mut c = self.choices();
            let now = Instant::now();
            let choice = c.entry(to.ge).or_insert_with(|| RelayChoice::new(now));
            (
                choice.decide(direct, relay.is_some(), now),
                choice.relay_due(),
            )
        };
        if let (Decision::Direct, Some(due), Some(_)) = (decision, due, relay) {
            self.arm_relay_timer(to.ge, due);
        }
        // Not for a connection that is up: that is every data frame, and
        // the check below costs a second lookup of the peer table.
        if decision == Decision::Direct
            && relay.is_some()
            && matches!(direct, Direct::Idle | Direct::Failed)
        {
            // This frame may be the one that starts the attempt: from now
            // on it counts towards RELAY_AFTER, with a timer.
            let r = self.quic.send_by_table(to, kind, payload);
            if self.quic.direct(to.ge) == Direct::Connecting {
                let now = Instant::now();
                let due = {
                    let mut c = self.choices();
                    let choice = c.entry(to.ge).or_insert_with(|| RelayChoice::new(now));
                    choice.decide(Direct::Connecting, true, now);
                    choice.relay_due()
                };
                if let Some(due) = due {
                    self.arm_relay_timer(to.ge, due);
                }
            }
            return r;
        }
        match (decision, relay) {
            (Decision::Relay { retry_direct }, Some(r)) => {
                if retry_direct {
                    debug!(peer = %to.ge, "relayed peer: trying direct QUIC again");
                    self.quic.connect(to);
                }
                r.send_parts(to.ge, frame::kind_byte(kind), payload)
                    .map_err(|e| match e {
                        fpn_relay::Error::TooLarge { max, .. } => Error::CarrierTooLarge {
                            peer: to.ge,
                            size: payload.len(),
                            max: max.saturating_sub(frame::OVERHEAD),
                        },
                        _ => Error::CarrierDropped {
                            peer: to.ge,
                            reason: "the relay link is down",
                        },
                    })
            }
            _ => self.quic.send_by_table(to, kind, payload),
        }
    }

    fn peers(&self) -> Vec<PeerStats> {
        let mut peers = self.quic.peers();
        let Some(relay) = &self.relay else {
            return peers;
        };
        let link = relay.state();
        let choices = self.choices();
        // A peer answered through the relay from its first frame may have
        // no entry in the QUIC carrier yet.
        for (ge, c) in choices.iter() {
            if c.why().is_some() && !peers.iter().any(|p| p.ge == *ge) {
                peers.push(PeerStats {
                    ge: *ge,
                    carrier: CarrierKind::Quic,
                    state: super::PeerState::Idle,
                    addr: None,
                    rtt: None,
                    max_payload: None,
                    initiator: None,
                    frames_out: 0,
                    bytes_out: 0,
                    frames_in: 0,
                    bytes_in: 0,
                    drops_too_large: 0,
                    drops_unreachable: 0,
                    drops_malformed: 0,
                    punches: 0,
                    connections: 0,
                    direct_retries: 0,
                    why: None,
                });
            }
        }
        peers.sort_by_key(|p| p.ge);
        for p in &mut peers {
            // Counted also once direct again: status shows that it was tried.
            p.direct_retries = choices.get(&p.ge).map_or(0, RelayChoice::retries);
            if let Some(why) = choices.get(&p.ge).and_then(RelayChoice::why)
                && p.state != super::PeerState::Up
            {
                p.carrier = CarrierKind::Relay;
                p.addr = link.addr;
                p.rtt = link
                    .rtt_ms
                    .map(|ms| std::time::Duration::from_secs_f64(ms / 1e3));
                p.state = if link.up {
                    super::PeerState::Up
                } else {
                    super::PeerState::Connecting
                };
                p.why = Some(why.as_str().to_owned());
            }
        }
        peers
    }
}

/// A poisoned lock only means a panic elsewhere; the set is consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses_are_one_per_ge_and_recognised() {
        let a = relay_from(GeId(7));
        let b = relay_from(GeId(0x0001_0007));
        assert_ne!(a, b);
        assert!(is_relay_from(&a) && is_relay_from(&b));
        assert_eq!(a.to_string(), "[100::7]:0");
        assert!(!is_relay_from(&"198.18.1.10:7718".parse().unwrap()));
        assert!(!is_relay_from(&"[100::7]:7718".parse().unwrap()));
        assert!(!is_relay_from(&"[2001:db8::7]:0".parse().unwrap()));
    }
}
