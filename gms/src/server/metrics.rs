//! What `/metrics` shows for the GMS (`[metrics] listen` in gms.toml).
//!
//! A scrape reads what `fpn-gms status` reads (the core's views under the
//! lock, held only to copy them), the core's [`Activity`] counters (bumped
//! once per committed change, never per packet), the session registry, and
//! the atomics of the DNS server and the relay. Names: docs/GMS.md
//! "Metrics".
//!
//! [`Activity`]: crate::core::Activity

use std::sync::Arc;

use fpn_gms_client::metrics::Exposition;

use super::Shared;
use crate::core::Activity;

/// The change kinds counted apart from admin changes (they have their own
/// families): a node's enrollment and renewals, and rotations.
const NOT_ADMIN: [&str; 3] = ["enroll", "renew", "rotate"];

/// The admin change kinds, shown at 0 before the first of each (so a
/// `rate()` has a start).
const ADMIN: [&str; 9] = [
    "ge add",
    "ge set",
    "ge revoke",
    "ge remove",
    "group add",
    "group rename",
    "group remove",
    "token create",
    "token cancel",
];

/// The page for one scrape.
pub(super) fn render(shared: &Arc<Shared>) -> String {
    let (status, groups, activity, online, opened, pushed) = {
        let g = shared.lock();
        (
            g.core.status(),
            g.core.group_list(),
            g.core.activity().clone(),
            g.sessions.len(),
            g.sessions.opened(),
            g.sessions.pushed(),
        )
    };
    let dns = shared.hook.dns_stats();
    let relay = shared
        .relay
        .get()
        .and_then(|p| p.relay.as_ref())
        .map(|r| r.counters());

    let mut e = Exposition::new();
    e.gauge("fpn_gms_ges", "GEs defined (any state).")
        .set(&[], status.ges as f64);
    e.gauge("fpn_gms_groups", "Groups defined.")
        .set(&[], status.groups as f64);
    e.gauge("fpn_gms_sessions", "GE sessions open now.")
        .set(&[], online as f64);
    e.gauge("fpn_gms_ges_online", "GEs the GMS counts as online.")
        .set(&[], status.online as f64);
    e.counter(
        "fpn_gms_sessions_opened",
        "GE sessions opened since the server started.",
    )
    .count(&[], opened);
    e.counter(
        "fpn_gms_pushes",
        "Frames pushed to sessions since the server started (one per receiving session).",
    )
    .count(&[], pushed);
    let kv = e.gauge(
        "fpn_gms_key_version",
        "Current key version per group (it rises by one per rotation).",
    );
    for g in &groups {
        kv.set(
            &[("group", &g.num.to_string()), ("name", &g.name)],
            f64::from(g.key_version),
        );
    }
    if let Some(next) = status.next_rotation {
        e.gauge(
            "fpn_gms_next_rotation_timestamp_seconds",
            "When the scheduled rotation runs next, unix seconds.",
        )
        .set(&[], next as f64);
    }
    changes(&mut e, &activity);

    if let Some(d) = dns {
        e.counter(
            "fpn_gms_dns_requests",
            "DNS requests (queries, UPDATEs, transfers) received, by transport.",
        )
        .count(&[("transport", "udp")], d.requests_udp)
        .count(&[("transport", "tcp")], d.requests_tcp);
        e.counter(
            "fpn_gms_dns_transfers",
            "Zone transfers (AXFR/IXFR) served.",
        )
        .count(&[], d.transfers);
        e.counter(
            "fpn_gms_dns_updates",
            "Zone updates: RFC 2136 UPDATEs that passed TSIG (applied or refused), and the GMS's own record writes.",
        )
        .count(
            &[("source", "rfc2136"), ("result", "applied")],
            d.updates_applied,
        )
        .count(
            &[("source", "rfc2136"), ("result", "refused")],
            d.updates_refused,
        )
        .count(&[("source", "gms"), ("result", "applied")], d.api_changes);
    }

    if let Some(r) = relay {
        e.counter("fpn_gms_relay_frames", "Frames the relay forwarded.")
            .count(&[], r.frames_relayed);
        e.counter(
            "fpn_gms_relay_bytes",
            "Frame bytes the relay forwarded (carrier frames, headers not counted).",
        )
        .count(&[], r.bytes_relayed);
        let drops = e.counter(
            "fpn_gms_relay_drops",
            "Frames the relay dropped, by reason.",
        );
        for (reason, n) in [
            ("malformed", r.drop_malformed),
            ("no_destination", r.drop_no_destination),
            ("rate_limited", r.drop_rate_limited),
            ("to_self", r.drop_to_self),
            ("not_registered", r.drop_not_registered),
            ("too_large", r.drop_too_large),
        ] {
            drops.count(&[("reason", reason)], n);
        }
        e.counter(
            "fpn_gms_relay_connections",
            "Connections the relay accepted.",
        )
        .count(&[], r.connections);
        e.counter(
            "fpn_gms_relay_refused",
            "Relay connections refused (revoked GE or certificate) or cut.",
        )
        .count(&[], r.refused);
        e.gauge("fpn_gms_relay_nodes", "Nodes connected to the relay now.")
            .set(&[], r.nodes as f64);
    }
    e.encode()
}

/// Changes since start: admin changes by kind, enrollments, renewals,
/// rotations.
fn changes(e: &mut Exposition, a: &Activity) {
    let admin = e.counter(
        "fpn_gms_admin_changes",
        "Committed admin changes by kind (ge add, ge set, ge revoke, ge remove, group add, group remove, token create).",
    );
    let c = |k: &str| a.changes.get(k).copied().unwrap_or(0);
    for kind in ADMIN {
        admin.count(&[("kind", kind)], c(kind));
    }
    // Kinds added later that this list does not name yet.
    for (kind, n) in &a.changes {
        if !NOT_ADMIN.contains(kind) && !ADMIN.contains(kind) {
            admin.count(&[("kind", kind)], *n);
        }
    }
    e.counter("fpn_gms_enrollments", "GEs enrolled with a token.")
        .count(&[], c("enroll"));
    e.counter("fpn_gms_renewals", "Credential renewals over GE sessions.")
        .count(&[], c("renew"));
    e.counter(
        "fpn_gms_rotations",
        "Group key rotations (scheduled, on leave or revocation, on demand).",
    )
    .count(&[], a.rotations);
}
