//! Eviction notices (docs/PROTOCOL.md, "Eviction notice"; design note 69):
//! a GE whose full PIT evicted flows it had opened with a peer tells that
//! peer, under their pair epoch, so the peer drops its entries too. Without
//! it the peer keeps the flow, and when the flow's ports are used again
//! one end seals under keys the other no longer holds: the packet is lost
//! and the flow waits for a heal.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::Endpoint;
use crate::dprp::msg::{Evict, EvictedFlow, HEADER_LEN, MAX_EVICTED, Message, NegotiationId};
use crate::dprp::{DPRP_PORT, Event, Transmit};
use crate::flow::FlowId;
use crate::ge::GeId;
use crate::keys::{EPOCH_ID_LEN, MAC_LEN};
use crate::{Error, Result};

/// The most bytes one EVICT takes: it fits one QUIC datagram and one
/// unfragmented IP datagram, so a notice is never a stream or a fragment.
const EVICT_BYTES: usize = 1_100;

/// An encoded [`EvictedFlow`]'s length.
fn entry_len(flow: &FlowId) -> usize {
    let addr = |a: IpAddr| match a {
        IpAddr::V4(_) => 1 + 4 + 2,
        IpAddr::V6(_) => 1 + 16 + 2,
    };
    8 + 1 + addr(flow.src) + addr(flow.dst)
}

impl Endpoint {
    /// Tells `peer` that this GE evicted `flows` from its full PIT: each
    /// with the id of the negotiation or fast open that installed it, all
    /// of them flows whose entry named `peer`. Sent on the newest live pair
    /// epoch with `peer` (in as few EVICTs as fit one datagram each), to
    /// the peer's overlay address; without such an epoch nothing is sent
    /// (the peer heals the flow on its next packet, as before). Returns how
    /// many flows were listed.
    pub fn notify_evicted(&mut self, peer: GeId, flows: &[EvictedFlow], now: Instant) -> usize {
        let own = self.ge();
        let Some(e) = self.epochs.newest(peer, now) else {
            return 0;
        };
        let dst = SocketAddr::new(IpAddr::V4(e.peer.info.overlay), DPRP_PORT);
        let fixed = HEADER_LEN + EPOCH_ID_LEN + 1 + MAC_LEN;
        let mut sent = 0;
        let mut rest = flows;
        while !rest.is_empty() {
            let mut n = 0;
            let mut len = fixed;
            while n < rest.len() && n < MAX_EVICTED {
                let l = entry_len(&rest[n].flow);
                if n > 0 && len + l > EVICT_BYTES {
                    break;
                }
                len += l;
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let mut id = [0u8; 8];
            if self.rng.fill(&mut id).is_err() {
                break;
            }
            let mut evict = Evict {
                id: NegotiationId(u64::from_be_bytes(id)),
                epoch: e.id,
                flows: chunk.to_vec(),
                tag: [0; MAC_LEN],
            };
            let Ok(tag) = e.evict_tag(own, &evict) else {
                break;
            };
            evict.tag = tag;
            let Ok(payload) = Message::Evict(evict).encode() else {
                break;
            };
            self.transmits.push_back(Transmit { dst, payload });
            sent += chunk.len();
        }
        self.stats.evict_sent += sent as u64;
        tracing::debug!(%peer, flows = sent, "eviction notice sent");
        sent
    }

    /// A peer's EVICT: authentic under a pair epoch this GE holds, it is
    /// reported as [`Event::PeerEvicted`] for the node to drop the entries.
    /// The notice needs no replay window: each listed flow names the
    /// opening its entry came from, so an old notice again (or late)
    /// matches only entries its sender really evicted.
    pub(super) fn on_evict(&mut self, evict: Evict, now: Instant) -> Result<()> {
        let Some(e) = self.epochs.get_mut(&evict.epoch, now) else {
            self.stats.evict_unknown_epoch += 1;
            return Err(Error::UnknownEpoch);
        };
        e.verify_evict(&evict)?;
        let peer = e.peer_ge();
        self.stats.evict_received += evict.flows.len() as u64;
        tracing::debug!(%peer, flows = evict.flows.len(), "eviction notice from the peer");
        self.events.push_back(Event::PeerEvicted {
            peer,
            flows: evict.flows,
        });
        Ok(())
    }
}
