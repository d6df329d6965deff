//! The life of flows around their PIT entries: the first packet kept to
//! quote in an ICMP error, flows refused (for `status` and `ping`), flows
//! waiting to be renegotiated, and unknown flows being healed. Every table
//! is bounded, and each entry that expires has a deadline in [`Timers`].

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use fpn_proto::flow::{FastMap, FastSet, FlowId};
use fpn_proto::ge::GeId;

use super::timers::{Timer, Timers};
use crate::icmp;

/// Most flows whose first packet is kept to quote in an ICMP error.
const MAX_QUOTES: usize = 4096;
/// Most refused flows remembered for `status`.
const MAX_REFUSED: usize = 1024;
/// Most flows waiting to be renegotiated.
const MAX_RENEGOTIATE: usize = 65_536;
/// Most unknown flows remembered for healing.
const MAX_HEALING: usize = 1024;
/// Most flows remembered as refused for an unknown owner.
const MAX_AWAITING_OWNER: usize = 1024;
/// How long a refused flow stays in `status`.
pub const REFUSED_SHOWN: Duration = Duration::from_secs(60);
/// Least time between two negotiations started for packets of an unknown flow.
pub const HEAL_GAP: Duration = Duration::from_secs(2);
/// Pause before a flow is renegotiated after a key rotation (the other
/// end's GMS push may arrive a little later than ours).
pub const RENEGOTIATE_DELAY: Duration = Duration::from_millis(1500);
/// Pause before a failed renegotiation is tried again.
pub const RENEGOTIATE_RETRY: Duration = Duration::from_secs(5);

/// The flow tables next to the PIT.
#[derive(Debug, Default)]
pub struct Flows {
    quotes: FastMap<FlowId, Vec<u8>>,
    refused: FastMap<FlowId, (Option<GeId>, String, Instant)>,
    renegotiation_due: FastSet<FlowId>,
    renegotiating: FastSet<FlowId>,
    healing: FastSet<FlowId>,
    awaiting_owner: FastMap<Ipv4Addr, Vec<(FlowId, GeId)>>,
    awaiting: usize,
}

impl Flows {
    /// Keeps the start of a held first packet, to quote should the flow be
    /// refused.
    pub fn keep_quote(&mut self, flow: FlowId, packet: &[u8]) {
        if self.quotes.len() < MAX_QUOTES && !self.quotes.contains_key(&flow) {
            let n = packet.len().min(icmp::QUOTE_LEN);
            self.quotes.insert(flow, packet[..n].to_vec());
        }
    }

    /// The quote of a refused flow.
    pub fn take_quote(&mut self, flow: &FlowId) -> Option<Vec<u8>> {
        self.quotes.remove(flow)
    }

    /// A negotiation of `flow` ended well: nothing of it is pending. A
    /// refusal of either direction is over (a flow refused as responder
    /// may come back negotiated from this side).
    pub fn established(&mut self, flow: &FlowId) {
        self.quotes.remove(flow);
        self.refused.remove(flow);
        self.refused.remove(&flow.reversed());
        self.renegotiating.remove(flow);
    }

    /// Remembers a refused flow, who refused it and why (for `status`
    /// and `why`), for [`REFUSED_SHOWN`].
    pub fn refuse(
        &mut self,
        flow: FlowId,
        by: Option<GeId>,
        reason: String,
        now: Instant,
        timers: &mut Timers,
    ) {
        if self.refused.len() < MAX_REFUSED || self.refused.contains_key(&flow) {
            self.refused.insert(flow, (by, reason, now));
            timers.schedule(now + REFUSED_SHOWN, Timer::ForgetRefused(flow));
        }
    }

    /// A refused flow's deadline: forgotten unless it was refused again since.
    pub fn forget_refused(&mut self, flow: &FlowId, now: Instant) {
        if self
            .refused
            .get(flow)
            .is_some_and(|(_, _, at)| now.saturating_duration_since(*at) >= REFUSED_SHOWN)
        {
            self.refused.remove(flow);
        }
    }

    /// True when `flow` was refused lately.
    pub fn is_refused(&self, flow: &FlowId) -> bool {
        self.refused.contains_key(flow)
    }

    /// Refused flows, who refused them and why.
    pub fn refused(&self) -> impl Iterator<Item = (&FlowId, Option<GeId>, &str)> {
        self.refused
            .iter()
            .map(|(f, (by, reason, _))| (f, *by, reason.as_str()))
    }

    /// Schedules the renegotiation of `flow` at `at` (once per flow).
    pub fn schedule_renegotiation(&mut self, flow: FlowId, at: Instant, timers: &mut Timers) {
        if self.renegotiation_due.len() < MAX_RENEGOTIATE && self.renegotiation_due.insert(flow) {
            timers.schedule(at, Timer::Renegotiate(flow));
        }
    }

    /// The renegotiation deadline of `flow` arrived.
    pub fn renegotiation_due(&mut self, flow: &FlowId) {
        self.renegotiation_due.remove(flow);
    }

    /// A renegotiation of `flow` (oriented from this node) started.
    pub fn renegotiating(&mut self, flow: FlowId) {
        self.renegotiating.insert(flow);
    }

    /// A renegotiation of `flow` ended; true when one was running.
    pub fn renegotiation_ended(&mut self, flow: &FlowId) -> bool {
        self.renegotiating.remove(flow)
    }

    /// True (and remembered for [`HEAL_GAP`]) when a healing negotiation of
    /// `flow` may start now.
    pub fn may_heal(&mut self, flow: FlowId, now: Instant, timers: &mut Timers) -> bool {
        if self.healing.contains(&flow) || self.healing.len() >= MAX_HEALING {
            return false;
        }
        self.healing.insert(flow);
        timers.schedule(now + HEAL_GAP, Timer::ForgetHealing(flow));
        true
    }

    /// True while a healing negotiation of `flow` is recent.
    pub fn is_healing(&self, flow: &FlowId) -> bool {
        self.healing.contains(flow)
    }

    /// `flow`, negotiated by `peer`, was refused because nobody is known to
    /// own its remote address `remote` yet: remembered (bounded) so that the
    /// flow can be negotiated from this side once the directory answered.
    pub fn await_owner(&mut self, remote: Ipv4Addr, flow: FlowId, peer: GeId) {
        if self.awaiting >= MAX_AWAITING_OWNER {
            return;
        }
        let list = self.awaiting_owner.entry(remote).or_default();
        if !list.contains(&(flow, peer)) {
            list.push((flow, peer));
            self.awaiting += 1;
        }
    }

    /// The flows refused while `remote` had no known owner.
    pub fn owner_known(&mut self, remote: Ipv4Addr) -> Vec<(FlowId, GeId)> {
        let list = self.awaiting_owner.remove(&remote).unwrap_or_default();
        self.awaiting -= list.len();
        list
    }

    /// The healing gap of `flow` is over.
    pub fn forget_healing(&mut self, flow: &FlowId) {
        self.healing.remove(flow);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn flow(port: u16) -> FlowId {
        FlowId {
            src: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)),
            protocol: 17,
            src_port: port,
            dst_port: 53,
        }
    }

    #[test]
    fn refused_flows_and_healing_expire_by_deadline() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut f = Flows::default();
        f.refuse(flow(1), None, String::new(), t0, &mut timers);
        // Refused again later: the first deadline must not forget it.
        f.refuse(flow(1), None, String::new(), t0 + HEAL_GAP, &mut timers);
        assert_eq!(
            timers.pop_due(t0 + REFUSED_SHOWN),
            Some(Timer::ForgetRefused(flow(1)))
        );
        f.forget_refused(&flow(1), t0 + REFUSED_SHOWN);
        assert!(f.is_refused(&flow(1)));
        f.forget_refused(&flow(1), t0 + HEAL_GAP + REFUSED_SHOWN);
        assert!(!f.is_refused(&flow(1)));
        assert!(f.may_heal(flow(2), t0, &mut timers));
        assert!(!f.may_heal(flow(2), t0, &mut timers));
        f.forget_healing(&flow(2));
        assert!(f.may_heal(flow(2), t0, &mut timers));
        // A renegotiation is scheduled once per flow.
        let before = timers.len();
        f.schedule_renegotiation(flow(3), t0, &mut timers);
        f.schedule_renegotiation(flow(3), t0, &mut timers);
        assert_eq!(timers.len(), before + 1);
    }
}
