//! `status` and `ping` as pure queries of the core: nothing here changes
//! state, and the carrier's per-peer numbers come in as an argument.

use std::collections::BTreeMap;

use fpn_proto::flow::FlowId;
use fpn_proto::ge::GeId;
use fpn_proto::pit::FlowStats;

use super::NodeCore;
use crate::carrier::{CarrierKind, PeerStats};
use crate::status::{FlowStatus, PeerStatus, action_name};

/// The core's part of `status`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Peers.
    pub peers: Vec<PeerStatus>,
    /// Flows.
    pub flows: Vec<FlowStatus>,
    /// Counters.
    pub counters: BTreeMap<String, u64>,
    /// Packets and bytes per peer GE since start (flows gone included),
    /// for `/metrics`.
    pub peer_traffic: BTreeMap<GeId, FlowStats>,
    /// DPRP's counters with the negotiation durations and failure reasons.
    pub dprp: fpn_proto::dprp::Stats,
    /// Hosts behind gateways (with their VINs) and the ones this node fronts.
    pub hosts: Vec<crate::status::HostStatus>,
    /// This node's recent moves (address or route changes), oldest first.
    pub moves: Vec<crate::status::MoveStatus>,
}

/// The core's counters (exported in `status`).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counters {
    pub tun_in: u64,
    pub tun_out: u64,
    pub tun_write_drops: u64,
    pub tun_malformed: u64,
    pub data_out: u64,
    pub data_in: u64,
    pub data_in_no_flow: u64,
    /// Packets of unknown flows kept for a FOP that may be behind them
    /// (parked.rs), and of those, delivered once it came.
    pub data_in_parked: u64,
    pub data_in_unparked: u64,
    pub data_in_wrong_peer: u64,
    pub data_in_rejected: u64,
    /// Negotiated flows not installed: the PIT held `max_flows` entries and
    /// none of those that may make room (the peer's own when it holds its
    /// share) had been idle for a second.
    pub flows_table_full: u64,
    /// Idle flows removed to make room for new ones in a full PIT.
    pub flows_evicted: u64,
    /// Flows removed because their peer evicted them (its EVICT notice).
    pub flows_evicted_by_peer: u64,
    /// Flows a peer's EVICT listed that this node no longer holds under
    /// that opening (removed, or opened again since): left alone.
    pub peer_evictions_ignored: u64,
    pub control_in: u64,
    pub control_out: u64,
    pub control_errors: u64,
    /// DDEs over the carrier whose credential (or last gateway hop) is not
    /// the GE the carrier authenticated, dropped before DPRP saw them.
    pub dde_wrong_peer: u64,
    pub send_errors: u64,
    pub no_route: u64,
    pub held: u64,
    pub refused_flows: u64,
    pub icmp_sent: u64,
    pub policy_drops: u64,
    pub pending_drops: u64,
    pub dprp_errors: u64,
    pub revoked_flows: u64,
    pub too_big: u64,
    pub wrong_owner: u64,
    pub unknown_owner: u64,
    pub flows_unbound: u64,
    pub output_drops: u64,
    pub native_out: u64,
    pub native_in: u64,
    /// Bytes of `native_out` packets as sent (protected, wire addresses).
    pub native_bytes_out: u64,
    /// Bytes of `native_in` packets as delivered to the TUN.
    pub native_bytes_in: u64,
    pub native_in_unknown: u64,
    pub native_in_wrong_source: u64,
    /// NAT bindings installed (docs/PROTOCOL.md "NAT binding").
    pub native_bindings: u64,
    /// Packets to a translated flow's local side from an unexpected source
    /// that did not authenticate as a binding (forged, replayed, over
    /// budget, from an address the peer is not known at); those with the
    /// flow's very ports are in `native_in_wrong_source` too.
    pub native_bindings_refused: u64,
    /// Flows the native path could have carried whose translation the
    /// table refused (full, a wire five-tuple another flow holds, or
    /// sides of two families): they take QUIC from here.
    pub native_translations_refused: u64,
    /// Packets of UDP flows with DPRP's port (7717) at either end, sent on
    /// QUIC to a peer whose path is native (design note 73).
    pub quic_dprp_port: u64,
    /// Packets to a peer behind a NAT that took QUIC because no packet of
    /// their flow had come in natively yet (the NAT has no mapping).
    pub native_nat_waits: u64,
    /// Native copies of such packets (they open this node's NAT).
    pub native_nat_punches: u64,
    /// ICMP echoes that took QUIC although the peer's path is native: a
    /// NAT between the two rewrites ports, and with them echo ids.
    pub native_echo_nat: u64,
    /// IPv6 overlay packets that took QUIC although the peer's path is
    /// native: ICMPv6 and packets with extension headers, which do not
    /// cross the IPv4 native path (note 59).
    pub quic_ipv6: u64,
    pub native_in_rejected: u64,
    pub native_trial_copies: u64,
    pub native_ready_timeouts: u64,
    /// Fast-opened UDP flows whose answers waited for the opener's
    /// steered notice (note 76), and those whose notice did not come in
    /// time (the answers took QUIC).
    pub native_notice_waits: u64,
    pub native_notice_timeouts: u64,
    pub native_in_replayed: u64,
    pub data_in_replayed: u64,
    pub dprp_native_out: u64,
    pub dprp_native_in: u64,
    pub gms_silence_floors: u64,
    pub probes_unknown_peer: u64,
}

impl NodeCore {
    /// The core's state for `status`; `carrier` is what the carrier reports
    /// per peer (underlay address in use, RTT).
    pub fn snapshot(&self, carrier: &[PeerStats]) -> Snapshot {
        // Peers whose QUIC frames the carrier sends through the relay.
        let relayed = |ge: fpn_proto::ge::GeId| {
            carrier
                .iter()
                .find(|s| s.ge == ge && s.carrier == CarrierKind::Relay)
        };
        let peers = self
            .peers
            .iter()
            .filter(|p| !p.target.addrs.is_empty() || p.had_flow)
            .map(|p| {
                let st = carrier.iter().find(|s| s.ge == p.ge);
                PeerStatus {
                    name: p.name.clone(),
                    ge: p.ge.0,
                    overlay: p.overlay.map(|o| o.to_string()),
                    carrier: match relayed(p.ge) {
                        Some(_) if p.path.current == CarrierKind::Quic => "relay".into(),
                        _ => p.path.current.as_str().into(),
                    },
                    path: match relayed(p.ge) {
                        Some(r) if p.path.current == CarrierKind::Quic => {
                            format!(
                                "relay ({})",
                                r.why.as_deref().unwrap_or("direct QUIC failed")
                            )
                        }
                        _ => self.nat_path_text(p.ge, p.path.text()),
                    },
                    addr: st
                        .and_then(|s| s.addr)
                        .or_else(|| p.target.addrs.first().copied())
                        .map(|a| a.to_string()),
                    rtt_ms: st.and_then(|s| s.rtt).map(|d| d.as_secs_f64() * 1e3),
                    // A relayed peer's "connection" is our link to the
                    // relay: its address is no candidate of the peer's.
                    candidate: match relayed(p.ge) {
                        Some(_) if p.path.current == CarrierKind::Quic => "relay".into(),
                        // A native path needs no QUIC connection (DPRP
                        // goes on the IP path too): the path's own address.
                        _ if p.path.current == CarrierKind::Native => self
                            .paths
                            .machines
                            .get(&p.ge)
                            .and_then(|m| m.native_addr())
                            .map(|a| {
                                crate::carrier::candidates::native_path_text(
                                    a.ip(),
                                    &p.target.addrs,
                                    p.target.reflexive,
                                )
                                .to_owned()
                            })
                            .unwrap_or_default(),
                        _ => st
                            .filter(|s| s.state == crate::carrier::PeerState::Up)
                            .and_then(|s| s.addr)
                            .map(|a| {
                                crate::carrier::candidates::path_text(
                                    a,
                                    &p.target.addrs,
                                    p.target.reflexive,
                                )
                                .to_owned()
                            })
                            .unwrap_or_default(),
                    },
                    punched: st.map_or(0, |s| s.punches),
                    direct_retries: st.map_or(0, |s| s.direct_retries),
                }
            })
            .collect();
        let mut flows: Vec<FlowStatus> = self
            .pit
            .iter()
            .map(|(f, e)| {
                let s = e.stats();
                // Counters are kept per origin: local = sent to the peer.
                FlowStatus {
                    action: action_name(e.action()).into(),
                    carrier: e
                        .peer()
                        .map(|p| match self.flow_carrier(f, p) {
                            CarrierKind::Quic if relayed(p).is_some() => "relay".into(),
                            c => c.as_str().into(),
                        })
                        .unwrap_or_default(),
                    peer: e.peer().map(|p| p.0),
                    key_version: e.key_version().map(|v| v.0),
                    packets_out: s.packets_local,
                    packets_in: s.packets_remote,
                    bytes_out: s.bytes_local,
                    bytes_in: s.bytes_remote,
                    reason: (e.action() == fpn_proto::action::Action::Drop).then(|| {
                        "the decision rules drop it here (a closed GE, no shared group)".to_owned()
                    }),
                    natf: self.natf_flow_status(f),
                    ..FlowStatus::of(f)
                }
            })
            .collect();
        flows.extend(self.flows.refused().map(|(f, by, reason)| FlowStatus {
            action: "refuse".into(),
            peer: by.map(|g| g.0),
            reason: Some(reason.to_owned()),
            ..FlowStatus::of(f)
        }));
        flows.extend(self.transit.entries.iter().map(|(f, t)| {
            FlowStatus {
                action: match t.action {
                    fpn_proto::action::Action::Relay => "relay".into(),
                    fpn_proto::action::Action::Drop => "refuse".into(),
                    _ => "plain".into(),
                },
                carrier: "transit".into(),
                peer: Some(t.initiator.0),
                reason: Some(match t.action {
                    fpn_proto::action::Action::Drop => {
                        "on the path: this gateway's rules drop it (a closed GE, no shared group)"
                            .into()
                    }
                    fpn_proto::action::Action::Relay => {
                        "on the path: forwarded as the ends protect it".into()
                    }
                    _ => "on the path: forwarded plain".into(),
                }),
                ..FlowStatus::of(f)
            }
        }));
        flows.sort_by(|a, b| {
            (&a.src, &a.dst, a.sport, a.dport).cmp(&(&b.src, &b.dst, b.sport, b.dport))
        });
        Snapshot {
            peers,
            flows,
            counters: self.counters(),
            peer_traffic: self.pit.peer_totals(),
            dprp: self.dprp.stats(),
            hosts: self.host_status(),
            moves: self.move_status(),
        }
    }

    /// The action and path of a flow (for `ping`): `("refuse", "")` for a
    /// flow refused lately, `None` for an unknown one.
    pub fn flow_info(&self, flow: &FlowId) -> Option<(String, String)> {
        if self.flows.is_refused(flow) {
            return Some(("refuse".into(), String::new()));
        }
        self.pit.lookup(flow).map(|(_, e)| {
            let path = e
                .peer()
                .map(|p| self.flow_carrier(flow, p).as_str())
                .unwrap_or_default();
            (action_name(e.action()).to_owned(), path.to_owned())
        })
    }

    /// The names of the peer table with their overlay addresses, by name:
    /// what the DNS stub answers for the zone (besides this node's own).
    pub fn peer_names(&self) -> Vec<(String, std::net::Ipv4Addr)> {
        let mut names: Vec<(String, std::net::Ipv4Addr)> = self
            .peers
            .iter()
            .filter(|p| !p.name.is_empty())
            .filter_map(|p| p.overlay.map(|o| (p.name.clone(), o)))
            .collect();
        names.sort();
        names
    }

    /// Every counter by name.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let c = self.counters;
        let d = self.dprp.stats();
        let o = self.dprp.occupancy();
        let (probes_sent, probes_answered) = self.probe_stats();
        let moved = self.paths.machines.values().fold((0, 0, 0), |a, m| {
            let s = m.stats();
            (
                a.0 + s.moved_sent,
                a.1 + s.moved_acked,
                a.2 + s.moved_received,
            )
        });
        [
            ("tun_in", c.tun_in),
            ("tun_out", c.tun_out),
            ("tun_write_drops", c.tun_write_drops),
            ("tun_malformed", c.tun_malformed),
            ("data_out", c.data_out),
            ("data_in", c.data_in),
            ("data_in_no_flow", c.data_in_no_flow),
            ("data_in_parked", c.data_in_parked),
            ("data_in_unparked", c.data_in_unparked),
            ("data_in_wrong_peer", c.data_in_wrong_peer),
            ("data_in_rejected", c.data_in_rejected),
            ("control_in", c.control_in),
            ("control_out", c.control_out),
            ("control_errors", c.control_errors),
            ("dde_wrong_peer", c.dde_wrong_peer),
            ("send_errors", c.send_errors),
            ("no_route", c.no_route),
            ("held", c.held),
            ("refused_flows", c.refused_flows),
            ("icmp_sent", c.icmp_sent),
            ("policy_drops", c.policy_drops),
            ("pending_drops", c.pending_drops),
            ("dprp_errors", c.dprp_errors),
            ("revoked_flows", c.revoked_flows),
            ("too_big", c.too_big),
            ("wrong_owner", c.wrong_owner),
            ("unknown_owner", c.unknown_owner),
            ("flows_unbound", c.flows_unbound),
            ("output_drops", c.output_drops),
            ("native_out", c.native_out),
            ("native_in", c.native_in),
            ("native_bytes_out", c.native_bytes_out),
            ("native_bytes_in", c.native_bytes_in),
            ("native_in_unknown", c.native_in_unknown),
            ("native_in_wrong_source", c.native_in_wrong_source),
            ("native_bindings", c.native_bindings),
            ("native_bindings_refused", c.native_bindings_refused),
            ("native_translations_refused", c.native_translations_refused),
            ("quic_dprp_port", c.quic_dprp_port),
            ("native_nat_waits", c.native_nat_waits),
            ("native_nat_punches", c.native_nat_punches),
            ("native_echo_nat", c.native_echo_nat),
            ("quic_ipv6", c.quic_ipv6),
            ("native_in_rejected", c.native_in_rejected),
            ("native_trial_copies", c.native_trial_copies),
            ("native_ready_timeouts", c.native_ready_timeouts),
            ("native_notice_waits", c.native_notice_waits),
            ("native_notice_timeouts", c.native_notice_timeouts),
            ("native_in_replayed", c.native_in_replayed),
            ("data_in_replayed", c.data_in_replayed),
            ("dprp_native_out", c.dprp_native_out),
            ("dprp_native_in", c.dprp_native_in),
            ("gms_silence_floors", c.gms_silence_floors),
            ("probes_unknown_peer", c.probes_unknown_peer),
            ("probes_sent", probes_sent),
            ("probes_answered", probes_answered),
            ("dprp_started", d.started),
            ("dprp_established", d.established),
            ("dprp_failed", d.failed),
            ("dprp_negative_drops", d.negative_drops),
            ("dprp_hold_overflow", d.hold_overflow),
            // Flood defences (DESIGN-NOTES "DPRP under flood").
            ("dprp_busy_drops", d.busy_drops),
            ("dprp_initiator_busy", d.initiator_busy),
            ("dprp_responder_busy", d.responder_busy),
            ("dprp_rate_limited", d.rate_limited),
            ("dprp_initiate_rate_limited", d.initiate_rate_limited),
            (
                "dprp_credential_cache_refusals",
                d.credential_cache_refusals,
            ),
            ("dprp_credential_verifications", d.credential_verifications),
            ("dprp_cookies_sent", d.cookies_sent),
            ("dprp_cookies_accepted", d.cookies_accepted),
            ("dprp_cookie_refusals", d.cookie_refusals),
            ("dprp_failed_drops", d.failed_drops),
            ("dprp_not_owner", d.not_owner),
            ("dprp_stranger_naks", d.stranger_naks),
            // Fast open (DESIGN-NOTES note 64).
            ("dprp_fast_opened", d.fast_opened),
            ("dprp_fast_confirmed", d.fast_confirmed),
            ("dprp_fast_fallbacks", d.fast_fallbacks),
            ("dprp_fast_accepted", d.fast_accepted),
            // The first packet in its FOP (note 71).
            ("dprp_fast_first_sent", d.fast_first_sent),
            ("dprp_fast_first_received", d.fast_first_received),
            // The steered notice (note 75).
            ("dprp_fast_steered_sent", d.fast_steered_sent),
            ("dprp_fast_steered_received", d.fast_steered_received),
            ("dprp_fast_fok_repeats", d.fast_fok_repeats),
            ("dprp_fast_unknown_epoch", d.fast_unknown_epoch),
            ("dprp_fast_refused_in_transit", d.fast_refused_in_transit),
            ("dprp_epoch_renewals", d.epoch_renewals),
            // Eviction notices (note 69).
            ("dprp_evict_sent", d.evict_sent),
            ("dprp_evict_received", d.evict_received),
            ("dprp_evict_unknown_epoch", d.evict_unknown_epoch),
            ("dprp_epochs", o.epochs as u64),
            ("parked_flows", self.parked.len() as u64),
            ("dprp_revoked_at_completion", d.revoked_at_completion),
            ("dprp_credential_cache_hits", d.cache.credential_hits),
            ("dprp_credential_cache_misses", d.cache.credential_misses),
            ("dprp_pair_cache_hits", d.cache.pair_hits),
            ("dprp_pair_cache_misses", d.cache.pair_misses),
            ("dprp_responding", o.responding as u64),
            ("dprp_initiated", o.initiated as u64),
            ("dprp_bad_credentials", o.bad_credentials as u64),
            ("dprp_natf_refused", d.natf_refused),
            ("dprp_natf_bad_answers", d.natf_bad_answers),
            ("natf_ports_reserved", o.natf_ports as u64),
            ("dprp_transit_in", self.transit.ddes_in),
            ("dprp_transit_refused", self.transit.ddes_refused),
            ("transit_relayed", self.transit.relayed),
            ("transit_passed", self.transit.passed),
            ("transit_dropped", self.transit.dropped),
            ("transit_entries", self.transit.entries.len() as u64),
            ("move_held", self.moves.held_total),
            ("move_held_dropped", self.moves.held_dropped),
            ("moved_refused", self.moves.refused),
            ("moved_sent", moved.0),
            ("moved_acked", moved.1),
            ("moved_received", moved.2),
            ("pit_entries", self.pit.len() as u64),
            ("flows_table_full", c.flows_table_full),
            ("flows_evicted", c.flows_evicted),
            ("flows_evicted_by_peer", c.flows_evicted_by_peer),
            ("peer_evictions_ignored", c.peer_evictions_ignored),
            ("negotiations", self.dprp.negotiations() as u64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}
