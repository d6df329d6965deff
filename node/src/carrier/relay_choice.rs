//! Per peer: direct QUIC or the relay, sans-IO (time comes in, decisions
//! go out). [`super::PathCarrier`] asks it for every frame the direct
//! connection does not take at once, and tells it once per connection
//! that direct is up (the frames on an up connection ask nothing).
//!
//! - Direct is tried first. When every address of the peer failed (the
//!   QUIC carrier reports [`Direct::Failed`]) frames go through the relay.
//! - A direct connection still not up [`RELAY_AFTER`] after its first
//!   frame ([`RELAY_AFTER_MOVED`] when this node just moved) sends the
//!   peer's frames through the relay meanwhile (the attempt goes on), the
//!   frames queued for the attempt too, at that moment
//!   ([`RelayChoice::relay_due`], a timer in `PathCarrier`): a first
//!   contact behind NATs that cannot be punched then takes about a second
//!   instead of the attempt's 5 s per address, and a refused flow fails in
//!   about a second too.
//! - A frame that came through the relay from a peer with no direct
//!   connection up means that peer could not reach us directly: answers go
//!   back through the relay at once, instead of waiting for our own direct
//!   attempt to time out (5 s per address) while the peer's DPRP waits.
//! - While relayed, direct is retried in the background 2 s after the
//!   switch, then at intervals doubling from 2 s up to 30 s (one connection
//!   attempt each; frames keep going through the relay meanwhile); the first frame after a direct connection is up
//!   (ours, or one the peer opened to us) goes direct again.
//! - Switching never breaks a flow: frames are end-to-end protected and the
//!   receiving node takes a flow's frames from every carrier.
//!
//! Without a relay configured nothing changes: frames go to the QUIC
//! carrier as before.

use std::time::{Duration, Instant};

use super::Direct;

/// First delay before retrying direct once relayed.
pub const RETRY_MIN: Duration = Duration::from_secs(2);
/// Longest delay between direct retries.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a first direct connection attempt may take before the peer's
/// frames go through the relay meanwhile. A punched connection is up in
/// about 0.2 s in the lab (note 34: local candidates at once, the
/// reflexive one 150 ms later); on the internet a handshake takes a few
/// round trips.
pub const RELAY_AFTER: Duration = Duration::from_secs(1);
/// [`RELAY_AFTER`] for the first attempt after this node moved: the
/// connection it had is gone and the peer's addresses may all be out of
/// reach from the new network (a LAN address, a NAT that lets nothing
/// in), so the relay is taken sooner; a direct connection that comes up
/// later takes the peer back.
pub const RELAY_AFTER_MOVED: Duration = Duration::from_millis(200);

/// Why a peer is relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Every direct connection attempt failed.
    DirectFailed,
    /// The peer reached us through the relay and no direct connection is up.
    PeerRelayed,
    /// The first direct attempt was not up after [`RELAY_AFTER`] (after a
    /// move [`RELAY_AFTER_MOVED`]; it goes on).
    DirectSlow,
}

impl Why {
    /// Text for `status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::DirectFailed => "direct QUIC failed",
            Self::PeerRelayed => "peer came through the relay",
            Self::DirectSlow => "direct QUIC not up in time",
        }
    }
}

/// Where one frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// To the QUIC carrier (which connects if needed).
    Direct,
    /// To the relay; when `retry_direct`, also start a direct attempt.
    Relay {
        /// Start a direct connection attempt in the background now.
        retry_direct: bool,
    },
}

/// The choice for one peer.
#[derive(Debug, Clone)]
pub struct RelayChoice {
    relayed: Option<(Why, Instant)>,
    /// When the current direct attempt was first seen in progress (not relayed).
    connecting_since: Option<Instant>,
    /// How long that attempt may take before the relay carries the
    /// frames meanwhile ([`RELAY_AFTER`], or [`RELAY_AFTER_MOVED`]).
    relay_after: Duration,
    retry_at: Instant,
    delay: Duration,
    retries: u64,
}

impl RelayChoice {
    /// A peer not relayed yet.
    pub fn new(now: Instant) -> Self {
        Self {
            relayed: None,
            connecting_since: None,
            relay_after: RELAY_AFTER,
            retry_at: now,
            delay: RETRY_MIN,
            retries: 0,
        }
    }

    /// Where the next frame goes, given the direct connection's state and
    /// whether a relay link is up.
    pub fn decide(&mut self, direct: Direct, relay_up: bool, now: Instant) -> Decision {
        if direct != Direct::Connecting {
            self.connecting_since = None;
        }
        if direct == Direct::Up {
            self.relay_after = RELAY_AFTER;
            if let Some((why, since)) = self.relayed.take() {
                tracing::info!(relayed_for = ?now.saturating_duration_since(since), was = why.as_str(), "peer reachable directly again, leaving the relay");
            }
            self.delay = RETRY_MIN;
            return Decision::Direct;
        }
        if !relay_up {
            // Nothing else to try: the QUIC carrier queues, connects or drops.
            return Decision::Direct;
        }
        match (direct, self.relayed) {
            (Direct::Failed, None) => {
                self.relay(Why::DirectFailed, now);
                self.relay_frame(now)
            }
            (Direct::Connecting, None) => {
                let since = *self.connecting_since.get_or_insert(now);
                if now.saturating_duration_since(since) < self.relay_after {
                    return Decision::Direct;
                }
                self.relay(Why::DirectSlow, now);
                Decision::Relay {
                    retry_direct: false,
                }
            }
            (Direct::Connecting, Some(_)) => Decision::Relay {
                retry_direct: false,
            },
            (Direct::Failed, Some((Why::DirectSlow, since))) => {
                // The attempt that was slow has failed: say so, and the
                // next retry is a full delay away from this failure.
                self.relayed = Some((Why::DirectFailed, since));
                self.retry_at = now + self.delay;
                self.relay_frame(now)
            }
            (Direct::Failed | Direct::Idle, Some(_)) => self.relay_frame(now),
            (Direct::Up, Some(_)) | (_, None) => Decision::Direct,
        }
    }

    /// This node moved: the next direct attempt (a connection opened again
    /// from the new address) gets [`RELAY_AFTER_MOVED`] before the relay
    /// carries the frames meanwhile, and an attempt in progress starts
    /// counting again.
    pub fn moved(&mut self) {
        self.relay_after = RELAY_AFTER_MOVED;
        self.connecting_since = None;
    }

    /// A frame of this peer arrived through the relay while `direct` is
    /// the state of our direct connection to it.
    pub fn handle_relayed_frame(&mut self, direct: Direct, now: Instant) {
        if self.relayed.is_none() && direct != Direct::Up {
            self.relay(Why::PeerRelayed, now);
            // The first frame back also tries direct: the peer may well be
            // reachable from here even if we were not from there.
            self.retry_at = now;
        }
    }

    /// When a direct attempt in progress (not relayed yet) reaches
    /// [`RELAY_AFTER`]: the frames queued for it should then go through the
    /// relay without waiting for the next frame.
    pub fn relay_due(&self) -> Option<Instant> {
        match self.relayed {
            None => self.connecting_since.map(|s| s + self.relay_after),
            Some(_) => None,
        }
    }

    /// Why the peer is relayed, if it is.
    pub fn why(&self) -> Option<Why> {
        self.relayed.map(|(w, _)| w)
    }

    /// Background direct retries asked for so far (each one a
    /// [`Decision::Relay`] with `retry_direct`).
    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// When the next direct retry is due (while relayed).
    pub fn retry_at(&self) -> Option<Instant> {
        self.relayed.map(|_| self.retry_at)
    }

    fn relay(&mut self, why: Why, now: Instant) {
        tracing::info!(why = why.as_str(), "peer goes through the relay");
        self.relayed = Some((why, now));
        self.delay = RETRY_MIN;
        self.retry_at = now + RETRY_MIN;
    }

    fn relay_frame(&mut self, now: Instant) -> Decision {
        let retry_direct = now >= self.retry_at;
        if retry_direct {
            self.retries += 1;
            self.retry_at = now + self.delay;
            self.delay = (self.delay * 2).min(RETRY_MAX);
        }
        Decision::Relay { retry_direct }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_RETRY: Decision = Decision::Relay {
        retry_direct: false,
    };
    const RETRY: Decision = Decision::Relay { retry_direct: true };

    #[test]
    fn direct_first_then_the_relay_when_every_address_failed() {
        let t = Instant::now();
        let mut c = RelayChoice::new(t);
        assert_eq!(c.decide(Direct::Idle, true, t), Decision::Direct);
        assert_eq!(c.decide(Direct::Connecting, true, t), Decision::Direct);
        assert_eq!(c.why(), None);
        assert_eq!(c.decide(Direct::Failed, true, t), NO_RETRY);
        assert_eq!(c.why(), Some(Why::DirectFailed));
        assert_eq!(c.decide(Direct::Failed, true, t), NO_RETRY);
    }

    #[test]
    fn a_slow_first_attempt_sends_through_the_relay_meanwhile() {
        let t = Instant::now();
        let mut c = RelayChoice::new(t);
        assert_eq!(c.decide(Direct::Idle, true, t), Decision::Direct);
        let ms = |n| t + Duration::from_millis(n);
        assert_eq!(
            c.decide(Direct::Connecting, true, ms(100)),
            Decision::Direct
        );
        assert_eq!(
            c.decide(Direct::Connecting, true, ms(1050)),
            Decision::Direct
        );
        // The carrier's timer fires then, without waiting for a frame.
        assert_eq!(c.relay_due(), Some(ms(1100)));
        // A second after the attempt was first seen: the relay, meanwhile.
        assert_eq!(c.decide(Direct::Connecting, true, ms(1100)), NO_RETRY);
        assert_eq!(c.relay_due(), None, "relayed: no timer");
        assert_eq!(c.why(), Some(Why::DirectSlow));
        // The attempt fails: still relayed, now for that reason.
        assert_eq!(c.decide(Direct::Failed, true, ms(5100)), NO_RETRY);
        assert_eq!(c.why(), Some(Why::DirectFailed));
        // One that comes up instead takes the peer back.
        let mut d = RelayChoice::new(t);
        d.decide(Direct::Connecting, true, t);
        d.decide(Direct::Connecting, true, ms(1500));
        assert_eq!(d.why(), Some(Why::DirectSlow));
        assert_eq!(d.decide(Direct::Up, true, ms(1600)), Decision::Direct);
        assert_eq!(d.why(), None);
        // Without a relay link nothing changes.
        let mut e = RelayChoice::new(t);
        e.decide(Direct::Connecting, false, t);
        assert_eq!(
            e.decide(Direct::Connecting, false, ms(3000)),
            Decision::Direct
        );
    }

    #[test]
    fn after_a_move_the_relay_is_taken_sooner_and_direct_takes_the_peer_back() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let mut c = RelayChoice::new(t);
        assert_eq!(c.decide(Direct::Up, true, t), Decision::Direct);
        c.moved();
        // The connection is opened again from the new address.
        assert_eq!(c.decide(Direct::Connecting, true, ms(10)), Decision::Direct);
        assert_eq!(c.relay_due(), Some(ms(210)));
        assert_eq!(c.decide(Direct::Connecting, true, ms(210)), NO_RETRY);
        assert_eq!(c.why(), Some(Why::DirectSlow));
        // Up later: direct again, and the next first attempt has its second.
        assert_eq!(c.decide(Direct::Up, true, ms(400)), Decision::Direct);
        assert_eq!(c.why(), None);
        c.decide(Direct::Connecting, true, ms(500));
        assert_eq!(c.relay_due(), Some(ms(1500)));
        // A move during an attempt restarts its count with the shorter bound.
        c.moved();
        c.decide(Direct::Connecting, true, ms(900));
        assert_eq!(c.relay_due(), Some(ms(1100)));
    }

    #[test]
    fn without_a_relay_link_frames_stay_with_the_quic_carrier() {
        let t = Instant::now();
        let mut c = RelayChoice::new(t);
        assert_eq!(c.decide(Direct::Failed, false, t), Decision::Direct);
        assert_eq!(c.why(), None);
    }

    #[test]
    fn direct_is_retried_with_a_doubling_capped_delay_and_wins_when_up() {
        let t = Instant::now();
        let mut c = RelayChoice::new(t);
        c.decide(Direct::Failed, true, t);
        let mut at = t;
        let mut retries = Vec::new();
        // 120 s of frames every 100 ms while direct keeps failing.
        for i in 0..1200u64 {
            at = t + Duration::from_millis(100 * i);
            if c.decide(Direct::Failed, true, at) == RETRY {
                retries.push(at.duration_since(t).as_secs());
            }
        }
        assert_eq!(retries, vec![2, 4, 8, 16, 32, 62, 92], "{retries:?}");
        assert_eq!(c.retries(), 7, "each retry is counted (status shows it)");
        // A retry in progress keeps the relay, without another retry.
        assert_eq!(c.decide(Direct::Connecting, true, at), NO_RETRY);
        // Up: direct again, and the delay starts over next time.
        assert_eq!(c.decide(Direct::Up, true, at), Decision::Direct);
        assert_eq!(c.why(), None);
        assert_eq!(c.decide(Direct::Failed, true, at), NO_RETRY);
        assert_eq!(c.retry_at(), Some(at + RETRY_MIN));
    }

    #[test]
    fn a_peer_that_came_through_the_relay_is_answered_through_it_at_once() {
        let t = Instant::now();
        let mut c = RelayChoice::new(t);
        c.handle_relayed_frame(Direct::Idle, t);
        assert_eq!(c.why(), Some(Why::PeerRelayed));
        // The answer goes through the relay and a direct attempt starts.
        assert_eq!(c.decide(Direct::Idle, true, t), RETRY);
        assert_eq!(c.decide(Direct::Connecting, true, t), NO_RETRY);
        // A peer with a direct connection up is not moved by a relayed frame.
        let mut d = RelayChoice::new(t);
        d.handle_relayed_frame(Direct::Up, t);
        assert_eq!(d.why(), None);
        assert_eq!(d.decide(Direct::Up, true, t), Decision::Direct);
    }
}
