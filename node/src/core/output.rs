//! The core's inputs and outputs as values: [`Command`] in, [`DataOut`]
//! (borrowed, the data path) and [`Output`] (owned, everything else) out.

use std::net::{IpAddr, Ipv4Addr};

use fpn_proto::credential::Credential;
use fpn_proto::flow::FlowId;

use fpn_proto::ge::{GeId, GroupId};
use fpn_proto::keys::{GroupKey, KeyVersion};

use crate::carrier::{CarrierKind, FrameKind, PeerTarget};
use crate::directory::PeerRecord;

/// What the daemon (GMS task, control loop) tells the core. No channels:
/// questions are the core's query methods, answered by the driver.
#[derive(Debug)]
pub enum Command {
    /// A group's valid keys, newest first (empty: the node left the group).
    Keys {
        /// The group.
        group: GroupId,
        /// Versions and keys, newest first.
        keys: Vec<(KeyVersion, GroupKey)>,
    },
    /// Credential serials of `ge` were revoked: its flows end now.
    Revoked {
        /// The GE.
        ge: GeId,
        /// The serials.
        serials: Vec<u64>,
    },
    /// The GE is gone from the directory (revoked or removed): refuse it.
    PeerGone(GeId),
    /// A peer's directory record (new or updated).
    Peer(PeerRecord),
    /// The hosts behind gateways, the whole list (replaces the previous).
    Hosts(Vec<super::natf::Host>),
    /// Erase every key and stop forwarding (this node was revoked).
    EraseKeys,
    /// The GMS re-issued this node's own credential (after `ge set`):
    /// negotiations from now on carry it.
    Credential(Box<Credential>),
    /// The GMS's full list of revoked serials (sent at every session start:
    /// revocations made while this node was away reach it this way).
    RevocationList(Vec<u64>),
    /// The GMS session is up (`true`) or lost; `unix` is the wall clock now.
    Gms {
        /// Up or lost.
        connected: bool,
        /// Unix seconds now.
        unix: u64,
    },
}

/// What became of a data packet: returned by the hot-path inputs, borrowing
/// the caller's buffer, so nothing is copied or allocated per packet.
pub enum DataOut<'a> {
    /// Send `frame` (a protected or plain packet) to the peer on `path`.
    Send {
        /// Where the carrier sends it.
        target: &'a PeerTarget,
        /// The path.
        path: CarrierKind,
        /// The frame, a prefix of the caller's buffer.
        frame: &'a [u8],
    },
    /// Write `packet` (a prefix of the caller's buffer) into the TUN.
    Tun(&'a [u8]),
    /// Nothing to do with the packet (dropped, held, or consumed); look at
    /// [`NodeCore::poll_output`](super::NodeCore::poll_output) for the rest.
    Nothing,
}

impl std::fmt::Debug for DataOut<'_> {
    // Never packet bytes: lengths only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Send {
                target,
                path,
                frame,
            } => f
                .debug_struct("Send")
                .field("peer", &target.ge)
                .field("path", path)
                .field("len", &frame.len())
                .finish(),
            Self::Tun(p) => f.debug_struct("Tun").field("len", &p.len()).finish(),
            Self::Nothing => f.write_str("Nothing"),
        }
    }
}

/// Everything the core wants done besides the data path, drained with
/// [`NodeCore::poll_output`](super::NodeCore::poll_output).
#[derive(Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a frame to a peer on a path.
    Send {
        /// The peer and the addresses the carrier may dial.
        target: PeerTarget,
        /// The path.
        path: CarrierKind,
        /// DPRP message or packet.
        kind: FrameKind,
        /// The frame.
        payload: Vec<u8>,
    },
    /// Write a packet into the TUN (an ICMP error, or a released packet of
    /// a flow that ends at this node).
    Tun(Vec<u8>),
    /// Ask the directory who owns this overlay address; the answer comes
    /// back as [`Command::Peer`].
    DirectoryLookup(Ipv4Addr),
    /// The peer table changed (names, addresses, owners): views published
    /// from it (DNS names, `ping` resolution) should be refreshed.
    PeersChanged,
    /// Send a raw IPv4 packet on the native path as it is (a path probe
    /// or answer, addressed from this node's underlay address).
    SendNative(Vec<u8>),
    /// Which source address does the host use toward this underlay
    /// address? Answer with
    /// [`NodeCore::handle_local_address`](super::NodeCore::handle_local_address).
    FindLocalAddress(IpAddr),
    /// Steer inbound packets of this wire five-tuple (source = the peer's
    /// underlay address) to [`NodeCore::handle_native_packet`](super::NodeCore::handle_native_packet).
    NativeFlowAdded(FlowId),
    /// Stop steering this wire five-tuple (its flow ended).
    NativeFlowRemoved(FlowId),
    /// Gateway: packets from the TUN from `remote` (a remote node's overlay
    /// address) to `vin` (its VIN for a host here) go to `lip` in the LAN
    /// (nftables DNAT and masquerade in the node's table).
    NatfMapped {
        /// The remote node's overlay address.
        remote: Ipv4Addr,
        /// The VIN the remote uses for the host.
        vin: Ipv4Addr,
        /// The host's LAN address.
        lip: IpAddr,
    },
    /// Gateway: the LAN addresses of the hosts this node answers for (the
    /// whole list; empty: none any more). Only negotiated pairs may reach
    /// them through the TUN.
    NatfFronted(Vec<IpAddr>),
    /// Gateway: the pair's last flow ended; remove its DNAT.
    NatfUnmapped {
        /// The remote node's overlay address.
        remote: Ipv4Addr,
        /// The VIN.
        vin: Ipv4Addr,
    },
    /// Gateway on the path: forwarded packets of this flow (either
    /// direction) are dropped from now on (`drop`), or no longer.
    TransitDrop {
        /// The flow, in the direction of its first packet.
        flow: FlowId,
        /// Add (true) or remove the drop.
        drop: bool,
    },
}

impl std::fmt::Debug for Output {
    // Never payload bytes: lengths only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Send {
                target,
                path,
                kind,
                payload,
            } => f
                .debug_struct("Send")
                .field("peer", &target.ge)
                .field("path", path)
                .field("kind", kind)
                .field("len", &payload.len())
                .finish(),
            Self::Tun(p) => f.debug_struct("Tun").field("len", &p.len()).finish(),
            Self::DirectoryLookup(ip) => f.debug_tuple("DirectoryLookup").field(ip).finish(),
            Self::PeersChanged => f.write_str("PeersChanged"),
            Self::SendNative(p) => f.debug_struct("SendNative").field("len", &p.len()).finish(),
            Self::FindLocalAddress(ip) => f.debug_tuple("FindLocalAddress").field(ip).finish(),
            Self::NativeFlowAdded(w) => f.debug_tuple("NativeFlowAdded").field(w).finish(),
            Self::NativeFlowRemoved(w) => f.debug_tuple("NativeFlowRemoved").field(w).finish(),
            Self::NatfMapped { remote, vin, lip } => f
                .debug_struct("NatfMapped")
                .field("remote", remote)
                .field("vin", vin)
                .field("lip", lip)
                .finish(),
            Self::NatfFronted(l) => f.debug_tuple("NatfFronted").field(l).finish(),
            Self::TransitDrop { flow, drop } => f
                .debug_struct("TransitDrop")
                .field("flow", flow)
                .field("drop", drop)
                .finish(),
            Self::NatfUnmapped { remote, vin } => f
                .debug_struct("NatfUnmapped")
                .field("remote", remote)
                .field("vin", vin)
                .finish(),
        }
    }
}

/// Why the carrier did not send a frame (fed back with
/// [`NodeCore::handle_send_error`](super::NodeCore::handle_send_error)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The frame does not fit; `max` is the largest payload that does.
    TooLarge {
        /// Largest payload that fits one datagram now.
        max: usize,
    },
    /// Dropped for another reason (unreachable, queue full, closed).
    Dropped,
}

impl From<&crate::error::Error> for SendError {
    fn from(e: &crate::error::Error) -> Self {
        match e {
            crate::error::Error::CarrierTooLarge { max, .. } => Self::TooLarge { max: *max },
            _ => Self::Dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_shows_lengths_and_no_payload_or_key_bytes() {
        let o = Output::Send {
            target: PeerTarget {
                ge: GeId(2),
                addrs: Vec::new(),
                reflexive: None,
            },
            path: CarrierKind::Quic,
            kind: FrameKind::Data,
            payload: vec![0xab; 40],
        };
        let frame = [0xab; 12];
        let d = DataOut::Tun(&frame);
        let s = format!("{o:?} {:?} {d:?}", Output::Tun(vec![0xab; 28]));
        assert!(
            s.contains("len: 40") && s.contains("len: 28") && s.contains("len: 12"),
            "{s}"
        );
        assert!(!s.contains("171"), "{s}");
        let c = Command::Keys {
            group: GroupId(1),
            keys: vec![(KeyVersion(1), GroupKey::from_bytes([0xab; 32]))],
        };
        let s = format!("{c:?}");
        assert!(!s.contains("171") && s.contains("redacted"), "{s}");
    }
}
