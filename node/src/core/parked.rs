//! Packets of flows this node has no entry for yet, from a peer it holds a
//! pair epoch with (fast open, docs/PROTOCOL.md): the flow may have been
//! fast-opened and its FOP still be on the way. The FOP takes DPRP's way
//! (the IP path when the peer's path is native) and the flow's first
//! packets QUIC until both ends steer the flow, so they can arrive in
//! either order. Such packets wait here briefly instead of making this
//! node negotiate the flow (healing) and being lost; the FOP's entry
//! releases them, else they are dropped and healing runs as before.

use std::time::Duration;

use fpn_proto::flow::{FastMap, FlowId};
use fpn_proto::ge::GeId;

/// How long a packet waits for its flow's FOP.
pub const PARK_WAIT: Duration = Duration::from_millis(100);
/// Most flows with waiting packets (an authenticated peer could send
/// packets of many unknown flows).
const MAX_FLOWS: usize = 256;
/// Most waiting packets per flow.
const MAX_PER_FLOW: usize = 8;

/// The waiting packets, by flow (as received).
#[derive(Debug, Default)]
pub(super) struct Parked {
    flows: FastMap<FlowId, (GeId, Vec<Vec<u8>>)>,
}

/// What [`Parked::park`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Parking {
    /// The flow's first waiting packet: arm its timer.
    First,
    /// Another packet of a waiting flow.
    More,
    /// No room: handle the packet as before.
    Full,
}

impl Parked {
    /// Keeps `packet` of `flow` from `peer`.
    pub(super) fn park(&mut self, flow: FlowId, peer: GeId, packet: &[u8]) -> Parking {
        if let Some((p, q)) = self.flows.get_mut(&flow) {
            if *p != peer || q.len() >= MAX_PER_FLOW {
                return Parking::Full;
            }
            q.push(packet.to_vec());
            return Parking::More;
        }
        if self.flows.len() >= MAX_FLOWS {
            return Parking::Full;
        }
        self.flows.insert(flow, (peer, vec![packet.to_vec()]));
        Parking::First
    }

    /// Takes the packets waiting for `flow`.
    pub(super) fn take(&mut self, flow: &FlowId) -> Option<(GeId, Vec<Vec<u8>>)> {
        self.flows.remove(flow)
    }

    /// Flows with waiting packets.
    pub(super) fn len(&self) -> usize {
        self.flows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16) -> FlowId {
        FlowId {
            src: [100, 64, 0, 2].into(),
            dst: [100, 64, 0, 1].into(),
            protocol: 17,
            src_port: port,
            dst_port: 53,
        }
    }

    #[test]
    fn a_flow_keeps_a_few_packets_of_its_peer_and_the_table_is_bounded() {
        let mut p = Parked::default();
        assert_eq!(p.park(flow(1), GeId(2), b"a"), Parking::First);
        assert_eq!(p.park(flow(1), GeId(2), b"b"), Parking::More);
        // Another peer cannot add to the flow.
        assert_eq!(p.park(flow(1), GeId(3), b"c"), Parking::Full);
        for _ in 2..MAX_PER_FLOW {
            assert_eq!(p.park(flow(1), GeId(2), b"d"), Parking::More);
        }
        assert_eq!(p.park(flow(1), GeId(2), b"e"), Parking::Full);
        for port in 2..=MAX_FLOWS as u16 {
            assert_eq!(p.park(flow(port), GeId(2), b"x"), Parking::First);
        }
        assert_eq!(p.park(flow(9999), GeId(2), b"x"), Parking::Full);
        let (peer, q) = p.take(&flow(1)).unwrap();
        assert_eq!((peer, q.len()), (GeId(2), MAX_PER_FLOW));
        assert_eq!(&q[..2], &[b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(p.len(), MAX_FLOWS - 1);
    }
}
