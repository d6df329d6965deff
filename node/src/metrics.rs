//! What `/metrics` shows for a node (`[metrics] listen` in node.toml).
//!
//! Nothing is counted for metrics: a scrape takes the same snapshot as
//! `fpn-node status` (the core's counters, the PIT, DPRP's stats) plus the
//! carrier's per-peer atomics and the relay link's, and writes them out
//! under Prometheus names. The names and labels are listed in docs/NODE.md
//! ("Metrics"); configs/grafana/fpn.json graphs them.

use std::collections::BTreeMap;

use fpn_gms_client::metrics::Exposition;
use fpn_proto::dprp::{DURATION_BUCKETS_US, Stats as DprpStats};
use fpn_proto::ge::GeId;
use fpn_proto::pit::FlowStats;
use fpn_relay::ClientCounters;

use crate::carrier::PeerStats;
use crate::status::Status;

/// Everything one scrape reads.
#[derive(Debug)]
pub struct Scrape<'a> {
    /// What `status` shows.
    pub status: &'a Status,
    /// Packets and bytes per peer since start (the PIT's totals).
    pub peer_traffic: &'a BTreeMap<GeId, FlowStats>,
    /// DPRP's counters, durations and failure reasons.
    pub dprp: &'a DprpStats,
    /// The carrier's per-peer counters (QUIC, and which peers are relayed).
    pub carrier: &'a [PeerStats],
    /// The relay link's counters (`None`: no relay link).
    pub relay: Option<ClientCounters>,
}

/// The core counters that count packets dropped, with the reason label
/// each gets in `fpn_node_drops_total`.
const DROPS: &[(&str, &str)] = &[
    ("tun_malformed", "tun_malformed"),
    ("tun_write_drops", "tun_write"),
    ("tun_read_drops", "tun_read"),
    ("worker_tun_read_drops", "worker_tun_read"),
    ("worker_tun_misses_dropped", "worker_misses"),
    ("worker_native_refused", "worker_native_refused"),
    ("data_in_no_flow", "no_flow"),
    ("data_in_wrong_peer", "wrong_peer"),
    ("data_in_rejected", "rejected"),
    ("data_in_replayed", "replayed"),
    ("native_in_unknown", "native_unknown"),
    ("native_in_wrong_source", "native_wrong_source"),
    ("native_in_rejected", "native_rejected"),
    ("native_in_replayed", "native_replayed"),
    ("policy_drops", "policy"),
    ("pending_drops", "pending"),
    ("output_drops", "output_queue"),
    ("no_route", "no_route"),
    ("too_big", "too_big"),
    ("send_errors", "send_error"),
    ("dprp_hold_overflow", "hold_overflow"),
    ("dprp_negative_drops", "negative_entry"),
    ("dprp_failed_drops", "negotiation_failed"),
    ("dprp_busy_drops", "dprp_busy"),
    ("dprp_rate_limited", "dprp_rate_limited"),
    ("dprp_initiate_rate_limited", "dprp_initiate_rate_limited"),
    ("dprp_credential_cache_refusals", "bad_credential"),
    ("dde_wrong_peer", "dde_wrong_peer"),
];

/// The page for one scrape.
pub fn render(s: &Scrape<'_>) -> String {
    let st = s.status;
    let c = |k: &str| st.counters.get(k).copied().unwrap_or(0);
    let mut e = Exposition::new();

    e.gauge(
        "fpn_node_info",
        "This node: its GE name, id and overlay addresses (overlay6 empty without IPv6).",
    )
    .set(
        &[
            ("name", &st.name),
            ("ge", &st.ge.to_string()),
            ("overlay", &st.overlay),
            ("overlay6", st.overlay6.as_deref().unwrap_or("")),
        ],
        1.0,
    );
    e.gauge(
        "fpn_node_gms_connected",
        "1 while the GMS session is up, else 0.",
    )
    .set(&[], f64::from(u8::from(st.gms.connected)));
    if let Some(secs) = st.credential.expires_in_secs {
        e.gauge(
            "fpn_node_credential_expiry_seconds",
            "Seconds until this node's credential expires (renewed at about half its life).",
        )
        .set(&[], secs as f64);
    }
    e.counter(
        "fpn_node_credential_renewals",
        "Credential renewals since the daemon started.",
    )
    .count(&[], st.credential.renewals);

    // Key versions per group.
    let newest = e.gauge(
        "fpn_node_key_version",
        "Newest key version this node holds, per group.",
    );
    for g in &st.groups {
        let v = g.versions.first().copied().unwrap_or(0);
        newest.set(&[("group", &g.group.to_string())], f64::from(v));
    }
    let valid = e.gauge(
        "fpn_node_key_versions_valid",
        "Key versions valid now per group (2 during a rotation's grace).",
    );
    for g in &st.groups {
        valid.set(&[("group", &g.group.to_string())], g.versions.len() as f64);
    }

    // Peers: the path each takes, its RTT and its traffic.
    let name_of = |ge: u32| {
        st.peers
            .iter()
            .find(|p| p.ge == ge)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    };
    let path = e.gauge(
        "fpn_node_peer_path",
        "1 for the carrier a peer's packets take now (native, quic or relay), 0 for the others.",
    );
    for p in &st.peers {
        let ge = p.ge.to_string();
        for kind in ["native", "quic", "relay"] {
            path.set(
                &[("peer", &p.name), ("ge", &ge), ("path", kind)],
                f64::from(u8::from(p.carrier == kind)),
            );
        }
    }
    let rtt = e.gauge(
        "fpn_node_peer_rtt_seconds",
        "Round-trip time of the QUIC connection to a peer.",
    );
    for p in &st.peers {
        if let Some(ms) = p.rtt_ms {
            rtt.set(&[("peer", &p.name), ("ge", &p.ge.to_string())], ms / 1e3);
        }
    }
    let packets = e.counter(
        "fpn_node_peer_packets",
        "Packets of flows with a peer, by direction (out: sent to it), flows gone included.",
    );
    for (ge, t) in s.peer_traffic {
        let (name, id) = (name_of(ge.0), ge.0.to_string());
        packets.count(
            &[("peer", &name), ("ge", &id), ("direction", "out")],
            t.packets_local,
        );
        packets.count(
            &[("peer", &name), ("ge", &id), ("direction", "in")],
            t.packets_remote,
        );
    }
    let bytes = e.counter(
        "fpn_node_peer_bytes",
        "Bytes (plain packet lengths) of flows with a peer, by direction.",
    );
    for (ge, t) in s.peer_traffic {
        let (name, id) = (name_of(ge.0), ge.0.to_string());
        bytes.count(
            &[("peer", &name), ("ge", &id), ("direction", "out")],
            t.bytes_local,
        );
        bytes.count(
            &[("peer", &name), ("ge", &id), ("direction", "in")],
            t.bytes_remote,
        );
    }
    let rejected = e.counter(
        "fpn_node_peer_rejected_packets",
        "Packets of a peer's flows refused (authentication, replay, malformed).",
    );
    for (ge, t) in s.peer_traffic {
        rejected.count(
            &[("peer", &name_of(ge.0)), ("ge", &ge.0.to_string())],
            t.rejected,
        );
    }

    // The QUIC carrier per peer (data and DPRP frames).
    let frames = e.counter(
        "fpn_node_carrier_peer_frames",
        "Frames on the QUIC carrier per peer, by direction.",
    );
    for p in s.carrier {
        let (name, id) = (name_of(p.ge.0), p.ge.0.to_string());
        frames.count(
            &[("peer", &name), ("ge", &id), ("direction", "out")],
            p.frames_out,
        );
        frames.count(
            &[("peer", &name), ("ge", &id), ("direction", "in")],
            p.frames_in,
        );
    }
    let fbytes = e.counter(
        "fpn_node_carrier_peer_bytes",
        "Frame payload bytes on the QUIC carrier per peer, by direction.",
    );
    for p in s.carrier {
        let (name, id) = (name_of(p.ge.0), p.ge.0.to_string());
        fbytes.count(
            &[("peer", &name), ("ge", &id), ("direction", "out")],
            p.bytes_out,
        );
        fbytes.count(
            &[("peer", &name), ("ge", &id), ("direction", "in")],
            p.bytes_in,
        );
    }
    let cdrops = e.counter(
        "fpn_node_carrier_peer_drops",
        "Frames the QUIC carrier dropped per peer, by reason.",
    );
    for p in s.carrier {
        let (name, id) = (name_of(p.ge.0), p.ge.0.to_string());
        for (reason, n) in [
            ("too_large", p.drops_too_large),
            ("unreachable", p.drops_unreachable),
            ("malformed", p.drops_malformed),
        ] {
            cdrops.count(&[("peer", &name), ("ge", &id), ("reason", reason)], n);
        }
    }

    // Per carrier, all peers together.
    let quic = |f: fn(&PeerStats) -> u64| -> u64 {
        // A relayed peer's entry still holds its QUIC counters.
        s.carrier.iter().map(f).sum()
    };
    let relay = s.relay.unwrap_or_default();
    let cpk = e.counter(
        "fpn_node_carrier_packets",
        "Packets (native) or frames (quic, relay) per carrier, by direction.",
    );
    for (carrier, out, inn) in [
        ("native", c("native_out"), c("native_in")),
        ("quic", quic(|p| p.frames_out), quic(|p| p.frames_in)),
        ("relay", relay.frames_out, relay.frames_in),
    ] {
        cpk.count(&[("carrier", carrier), ("direction", "out")], out);
        cpk.count(&[("carrier", carrier), ("direction", "in")], inn);
    }
    let cby = e.counter(
        "fpn_node_carrier_bytes",
        "Bytes per carrier, by direction (native: packets as sent and delivered; quic, relay: frame payloads).",
    );
    for (carrier, out, inn) in [
        ("native", c("native_bytes_out"), c("native_bytes_in")),
        ("quic", quic(|p| p.bytes_out), quic(|p| p.bytes_in)),
        ("relay", relay.bytes_out, relay.bytes_in),
    ] {
        cby.count(&[("carrier", carrier), ("direction", "out")], out);
        cby.count(&[("carrier", carrier), ("direction", "in")], inn);
    }
    let cdr = e.counter(
        "fpn_node_carrier_drops",
        "Frames a carrier dropped, by reason.",
    );
    for (carrier, reason, n) in [
        ("quic", "too_large", quic(|p| p.drops_too_large)),
        ("quic", "unreachable", quic(|p| p.drops_unreachable)),
        ("quic", "malformed", quic(|p| p.drops_malformed)),
        ("relay", "down", relay.drops_down),
        ("relay", "too_large", relay.drops_too_large),
        ("relay", "malformed", relay.drops_malformed),
    ] {
        cdr.count(&[("carrier", carrier), ("reason", reason)], n);
    }

    e.counter(
        "fpn_node_tun_packets",
        "Packets read from (in) and written to (out) the TUN.",
    )
    .count(&[("direction", "in")], c("tun_in"))
    .count(&[("direction", "out")], c("tun_out"));
    let drops = e.counter(
        "fpn_node_drops",
        "Packets the node dropped, by reason (the `status` counter each comes from is in docs/NODE.md).",
    );
    for (key, reason) in DROPS {
        drops.count(&[("reason", reason)], c(key));
    }

    // Flows.
    let mut by_action: BTreeMap<&str, u64> = [("encrypt", 0), ("plain", 0), ("refuse", 0)]
        .into_iter()
        .collect();
    for f in &st.flows {
        *by_action.entry(f.action.as_str()).or_default() += 1;
    }
    let flows = e.gauge(
        "fpn_node_flows",
        "Flows in the PIT (and refused lately) by action.",
    );
    for (action, n) in &by_action {
        flows.set(&[("action", action)], *n as f64);
    }
    e.counter(
        "fpn_node_flows_refused",
        "Flows refused (negotiation failed or dropped by the rules).",
    )
    .count(&[], c("refused_flows"));

    // Negotiations.
    let d = s.dprp;
    e.counter(
        "fpn_node_negotiations_started",
        "DPRP negotiations this node started.",
    )
    .count(&[], d.started);
    e.counter(
        "fpn_node_negotiations_completed",
        "DPRP entries installed (any position: initiator, responder, gateway).",
    )
    .count(&[], d.established);
    let failed = e.counter(
        "fpn_node_negotiations_failed",
        "DPRP negotiations this node started that failed, by reason.",
    );
    for (reason, n) in [
        ("timeout", d.failed_by.timeout),
        ("dropped", d.failed_by.dropped),
        ("refused", d.failed_by.refused),
        ("rejected", d.failed_by.rejected),
    ] {
        failed.count(&[("reason", reason)], n);
    }
    e.gauge(
        "fpn_node_negotiations_active",
        "DPRP negotiations in progress or lingering.",
    )
    .set(&[], c("negotiations") as f64);
    let buckets: Vec<(f64, u64)> = DURATION_BUCKETS_US
        .iter()
        .zip(d.durations.buckets)
        .map(|(us, n)| (*us as f64 / 1e6, n))
        .collect();
    e.histogram(
        "fpn_node_negotiation_duration_seconds",
        "Time from this node's DDE to the installed entry, per negotiation it started.",
    )
    .observe(
        &[],
        d.durations.sum_us as f64 / 1e6,
        d.durations.count,
        &buckets,
    );
    e.encode()
}
