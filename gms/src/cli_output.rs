//! Human-readable output of the admin commands (`--json` prints the raw answer).

use fpn_gms::admin::{
    AdminRequest, AdminResponse, AuditView, DoneView, GeView, GroupView, HostView, KeysView,
    RotatedView, StatusView, TokenView,
};

/// Prints the answer to `req`.
pub fn print(req: &AdminRequest, resp: AdminResponse) -> anyhow::Result<()> {
    match req {
        AdminRequest::Status => {
            let s: StatusView = resp.into_result()?;
            println!("zone            {}", s.zone);
            println!("listen          {}", opt(s.listen));
            if s.dns.is_empty() {
                println!("dns             off");
            } else {
                let a: Vec<String> = s.dns.iter().map(ToString::to_string).collect();
                println!("dns             {} (udp+tcp)", a.join(", "));
            }
            if let Some(serial) = s.zone_serial {
                println!("zone serial     {serial}");
            }
            println!("public address  {}", opt(s.public_addr));
            println!("CA fingerprint  {}", s.ca_fingerprint);
            if !s.overlay6.is_empty() {
                println!("IPv6 overlay    {}", s.overlay6);
            }
            println!("GEs             {} ({} online)", s.ges, s.online);
            println!("groups          {}", s.groups);
            println!(
                "rotation        {} (grace {}s)",
                s.rotation_schedule, s.grace_secs
            );
            println!("next rotation   {}", opt(s.next_rotation));
            if let Some(r) = s.relay {
                let where_ = match (r.listen, &r.advertised) {
                    (Some(l), Some(a)) => format!("in-process on {l}, nodes use {a}"),
                    (None, Some(a)) => format!("standalone at {a}"),
                    (_, None) => "none".into(),
                };
                println!("relay           {where_}");
                if let Some(c) = r.counters {
                    println!(
                        "relay traffic   {} nodes, {} frames / {} bytes relayed; dropped: {} no destination, {} rate-limited, {} other; {} refused",
                        c.nodes,
                        c.frames_relayed,
                        c.bytes_relayed,
                        c.drop_no_destination,
                        c.drop_rate_limited,
                        c.drop_malformed
                            + c.drop_to_self
                            + c.drop_not_registered
                            + c.drop_too_large,
                        c.refused
                    );
                }
            }
        }
        AdminRequest::GroupList => {
            let gs: Vec<GroupView> = resp.into_result()?;
            println!("{:>5}  {:<16} {:>5}  MEMBERS", "GROUP", "NAME", "KEY");
            for g in gs {
                println!(
                    "{:>5}  {:<16} {:>5}  {}",
                    g.num,
                    g.name,
                    format!("v{}", g.key_version),
                    g.members.join(",")
                );
            }
        }
        AdminRequest::GeList => {
            let ges: Vec<GeView> = resp.into_result()?;
            println!(
                "{:<20} {:>5} {:<4} {:<3} {:<12} {:<15} {:<9} {:<6} PROTECTS",
                "NAME", "ID", "KIND", "MODE", "GROUPS", "OVERLAY", "STATE", "ONLINE"
            );
            for g in ges {
                println!(
                    "{:<20} {:>5} {:<4} {:<4} {:<12} {:<15} {:<9} {:<6} {}",
                    g.name,
                    g.id,
                    g.kind,
                    g.mode,
                    groups(&g.groups),
                    g.overlay,
                    g.state,
                    if g.online { "yes" } else { "no" },
                    if g.protect.is_empty() {
                        "-".to_owned()
                    } else {
                        g.protect.join(",")
                    }
                );
            }
        }
        AdminRequest::GeShow { .. } | AdminRequest::GeAdd { .. } | AdminRequest::GeSet { .. } => {
            let rotated: Vec<RotatedView> = resp
                .data
                .get("rotated")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            let created: Vec<u32> = resp
                .data
                .get("created_groups")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            for g in created {
                println!("group {g} created (named g{g}, with a fresh key)");
            }
            let g: GeView = resp.into_result()?;
            println!("name          {} ({})", g.name, g.fqdn);
            println!("id            {}", g.id);
            println!("kind, mode    {}, {}", g.kind, g.mode);
            println!("groups        {}", groups(&g.groups));
            println!("overlay       {}, {}", g.overlay, g.overlay6);
            if !g.protect.is_empty() {
                println!("protects      {}", g.protect.join(", "));
            }
            if !g.hosts.is_empty() {
                println!("hosts         {}", g.hosts.join(", "));
            }
            println!(
                "state         {}{}",
                g.state,
                if g.online { ", online" } else { "" }
            );
            if let Some(s) = g.seen {
                println!("seen at       {s}");
            }
            if !g.reported.is_empty() {
                let r: Vec<String> = g.reported.iter().map(ToString::to_string).collect();
                println!("reports       {}", r.join(", "));
            }
            if let Some(v) = &g.version {
                println!("version       {v}");
            }
            if let Some(n) = g.follows.filter(|_| g.online) {
                println!("follows       {n} GEs (the peers its node talks to)");
            }
            if let (Some(serial), Some(fp)) = (g.cert_serial, &g.cert_fingerprint) {
                println!("certificate   serial {serial}, sha256 {fp}");
            }
            print_rotated(&rotated);
        }
        AdminRequest::TokenCreate { .. } => {
            let t: TokenView = resp.into_result()?;
            println!("{}", t.token);
            eprintln!(
                "one-time token for {}; expires at {} (unix); run: fpn-node enroll TOKEN",
                t.ge, t.expires_at
            );
        }
        AdminRequest::TokenList => {
            let ts: Vec<fpn_gms::admin::TokenInfoView> = resp.into_result()?;
            for t in ts {
                println!(
                    "{} {:<16} expires {:>11}{}",
                    t.id,
                    t.ge,
                    t.expires_at,
                    if t.expired { " (expired)" } else { "" }
                );
            }
        }
        AdminRequest::Rotate { .. } => {
            let r: Vec<RotatedView> = resp.into_result()?;
            print_rotated(&r);
        }
        AdminRequest::Keys => {
            let ks: Vec<KeysView> = resp.into_result()?;
            println!(
                "{:>5}  {:<16} {:>7}  {:<8} {:>8}  EXPIRES IN",
                "GROUP", "NAME", "VERSION", "STATE", "AGE"
            );
            for k in ks {
                for v in k.versions {
                    println!(
                        "{:>5}  {:<16} {:>7}  {:<8} {:>8}  {}",
                        k.group,
                        k.name,
                        format!("v{}", v.version),
                        v.state,
                        age(v.age_secs),
                        v.expires_in_secs.map_or("-".into(), age)
                    );
                }
            }
        }
        AdminRequest::HostList => {
            let hs: Vec<HostView> = resp.into_result()?;
            println!(
                "{:<20} {:<20} {:<32} {:<12} PUBLIC",
                "NAME", "VIA", "LAN", "GROUPS"
            );
            for h in hs {
                println!(
                    "{:<20} {:<20} {:<32} {:<12} {}",
                    h.name,
                    h.via,
                    ips(&h.lan),
                    groups(&h.groups),
                    opt(h.public)
                );
            }
        }
        AdminRequest::HostShow { .. }
        | AdminRequest::HostAdd { .. }
        | AdminRequest::HostSet { .. } => {
            let h: HostView = resp.into_result()?;
            println!("name          {} ({})", h.name, h.fqdn);
            println!("via           {} (GE {})", h.via, h.via_id);
            println!("lan           {}", ips(&h.lan));
            println!("groups        {}", groups(&h.groups));
            println!("public (A)    {}", opt(h.public));
        }
        AdminRequest::Audit { .. } => {
            let es: Vec<AuditView> = resp.into_result()?;
            for e in es {
                let who = if e.who.is_empty() { "-" } else { &e.who };
                println!("{:>6} {:>11} {:<12} {}", e.seq, e.at, who, e.action);
            }
        }
        AdminRequest::GroupAdd { .. }
        | AdminRequest::GroupRemove { .. }
        | AdminRequest::GroupRename { .. }
        | AdminRequest::TokenCancel { .. }
        | AdminRequest::GeRemove { .. }
        | AdminRequest::HostRemove { .. }
        | AdminRequest::GeRevoke { .. } => {
            let d: DoneView = resp.into_result()?;
            println!("{}", d.done);
            print_rotated(&d.rotated);
        }
    }
    Ok(())
}

fn print_rotated(r: &[RotatedView]) {
    for x in r {
        println!("group {} rotated to v{}", x.group, x.version);
    }
}

fn groups(g: &[u32]) -> String {
    if g.is_empty() {
        return "-".into();
    }
    g.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn ips(v: &[std::net::IpAddr]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn age(s: u64) -> String {
    match s {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3600 => format!("{}h", s / 3600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
