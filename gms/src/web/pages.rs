//! The web admin's HTML: plain server-rendered pages that work without
//! JavaScript and fit a phone (one column, tables scroll sideways).
//! Every string that comes from a user or the store goes through [`esc`].

use std::fmt::Write;

use crate::admin::{
    AuditView, GeView, GroupView, HostView, KeysView, StatusView, TokenInfoView, TokenView,
};

use super::auth::Flash;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;padding:0 1rem 2rem;max-width:70rem}\
nav{display:flex;flex-wrap:wrap;gap:.8rem;align-items:center;padding:.8rem 0;border-bottom:1px solid #ccc}\
nav a{text-decoration:none;font-weight:600}nav form{margin-left:auto}\
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.5rem 0}\
td,th{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}\
form.inline{display:inline}input,select,button{font-size:1rem;margin:.15rem 0}\
fieldset{margin:1rem 0;border:1px solid #ccc}label{display:block;margin:.3rem 0}\
.ok{background:#e6f4ea;padding:.5rem}.err{background:#fde7e9;padding:.5rem}\
.on{color:#137333;font-weight:600}.off{color:#777}code{word-break:break-all}\
.token{font-size:1.1rem;background:#f4f4f4;padding:.5rem}";

/// A whole page: head, navigation (with the logout form), flash, body.
pub fn layout(title: &str, csrf: Option<&str>, flash: Option<&Flash>, body: &str) -> String {
    let nav = match csrf {
        Some(c) => format!(
            "<nav><a href=\"/\">Overview</a><a href=\"/groups\">Groups</a><a href=\"/ges\">GEs</a>\
             <a href=\"/hosts\">Hosts</a><a href=\"/tokens\">Tokens</a><a href=\"/audit\">Audit log</a>\
             <form method=\"post\" action=\"/logout\" class=\"inline\">{}<button id=\"logout\">Log out</button></form></nav>",
            csrf_field(c)
        ),
        None => String::new(),
    };
    let flash = match flash {
        Some(f) => format!(
            "<p class=\"{}\" id=\"flash\">{}</p>",
            if f.ok { "ok" } else { "err" },
            esc(&f.text)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · fpn-gms</title><style>{STYLE}</style></head>\
         <body>{nav}<h1>{t}</h1>{flash}{body}</body></html>",
        t = esc(title)
    )
}

/// The hidden CSRF field of every form.
pub fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

/// The login form (`csrf` is the double-submit value of the login cookie).
pub fn login(csrf: &str, error: Option<&str>) -> String {
    let err = error.map_or(String::new(), |e| {
        format!("<p class=\"err\" id=\"login-error\">{}</p>", esc(e))
    });
    layout(
        "Log in",
        None,
        None,
        &format!(
            "{err}<form method=\"post\" action=\"/login\">{}\
             <label>User <input name=\"user\" id=\"user\" autocomplete=\"username\" required></label>\
             <label>Password <input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button id=\"login\">Log in</button></form>",
            csrf_field(csrf)
        ),
    )
}

/// The overview: counts, online GEs, key versions and last rotations.
pub fn overview(st: &StatusView, ges: &[GeView], keys: &[KeysView], now: u64) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<div class=\"scroll\"><table id=\"status\">\
         <tr><th>Zone</th><td>{}</td></tr>\
         <tr><th>GEs online</th><td id=\"online-count\">{} of {}</td></tr>\
         <tr><th>Groups</th><td>{}</td></tr>\
         <tr><th>Rotation schedule</th><td>{}</td></tr>\
         <tr><th>Next rotation</th><td>{}</td></tr>\
         <tr><th>DNS zone serial</th><td id=\"zone-serial\">{}</td></tr>\
         <tr><th>Nodes dial</th><td>{}</td></tr>\
         <tr><th>CA fingerprint</th><td><code>{}</code></td></tr></table></div>",
        esc(&st.zone),
        st.online,
        st.ges,
        st.groups,
        esc(&st.rotation_schedule),
        st.next_rotation.map_or("-".into(), time),
        st.zone_serial
            .map_or("- (no in-process DNS)".into(), |s| s.to_string()),
        esc(st.public_addr.as_deref().unwrap_or("-")),
        esc(&st.ca_fingerprint),
    );
    b.push_str("<h2>GEs</h2><div class=\"scroll\"><table id=\"ges-online\"><tr><th>GE</th><th>State</th><th>Online</th><th>From</th></tr>");
    for g in ges {
        let _ = write!(
            b,
            "<tr id=\"ov-{n}\"><td>{n}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&g.state),
            online(g.online),
            g.seen.map_or("-".into(), |s| esc(&s.to_string())),
            n = esc(&g.name),
        );
    }
    b.push_str("</table></div><h2>Group keys</h2><div class=\"scroll\"><table><tr><th>Group</th><th>Key version</th><th>Last rotation</th></tr>");
    for k in keys {
        let (v, at) = k.versions.first().map_or((0, "-".to_owned()), |v| {
            (v.version, time(now.saturating_sub(v.age_secs)))
        });
        let _ = write!(
            b,
            "<tr><td>{} {}</td><td>v{v}</td><td>{at}</td></tr>",
            k.group,
            esc(&k.name)
        );
    }
    b.push_str("</table></div>");
    b
}

/// The groups with their members, and the forms that change them.
pub fn groups(gs: &[GroupView], csrf: &str) -> String {
    let f = csrf_field(csrf);
    let mut b = String::from(
        "<div class=\"scroll\"><table id=\"groups\"><tr><th>#</th><th>Name</th><th>Members</th><th>Key</th><th></th></tr>",
    );
    for g in gs {
        let _ = write!(
            b,
            "<tr id=\"group-{n}\"><td>{n}</td><td>{}</td><td>{}</td><td>v{}</td><td>\
             <form method=\"post\" action=\"/groups/rotate\" class=\"inline\">{f}<input type=\"hidden\" name=\"num\" value=\"{n}\"><button>Rotate now</button></form> \
             <form method=\"post\" action=\"/groups/remove\" class=\"inline\">{f}<input type=\"hidden\" name=\"num\" value=\"{n}\"><button>Remove</button></form>\
             <form method=\"post\" action=\"/groups/rename\">{f}<input type=\"hidden\" name=\"num\" value=\"{n}\">\
             <input name=\"name\" size=\"10\" aria-label=\"new name\" required> <button>Rename</button></form></td></tr>",
            esc(&g.name),
            esc(&g.members.join(", ")),
            g.key_version,
            n = g.num,
        );
    }
    let _ = write!(
        b,
        "</table></div><fieldset><legend>Add a group</legend><form method=\"post\" action=\"/groups/add\" id=\"group-add\">{f}\
         <label>Number <input name=\"num\" id=\"group-num\" inputmode=\"numeric\" required></label>\
         <label>Name <input name=\"name\" id=\"group-name\" required></label>\
         <button id=\"group-add-button\">Add group</button></form></fieldset>\
         <fieldset><legend>Rotate every group</legend><form method=\"post\" action=\"/groups/rotate\">{f}<button>Rotate all now</button></form></fieldset>"
    );
    b
}

/// The GEs: state, addresses, and forms to add, change, revoke, remove and
/// create enrollment tokens.
pub fn ges(ges: &[GeView], csrf: &str) -> String {
    let f = csrf_field(csrf);
    let mut b = String::from(
        "<div class=\"scroll\"><table id=\"ges\"><tr><th>Name</th><th>Kind</th><th>Mode</th><th>Groups</th>\
         <th>Overlay</th><th>Protects</th><th>State</th><th>Online</th><th>Version</th><th>Addresses</th><th>Actions</th></tr>",
    );
    for g in ges {
        let groups = g
            .groups
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut addrs: Vec<String> = g.seen.iter().map(|s| format!("seen {s}")).collect();
        addrs.extend(g.reported.iter().map(|s| s.to_string()));
        let n = esc(&g.name);
        let hidden = format!("{f}<input type=\"hidden\" name=\"name\" value=\"{n}\">");
        let actions = if g.state == "revoked" {
            format!(
                "<form method=\"post\" action=\"/ges/remove\" class=\"inline\">{hidden}<button>Remove</button></form>"
            )
        } else {
            format!(
                "<form method=\"post\" action=\"/ges/set\">{hidden}\
                 <select name=\"mode\" aria-label=\"mode\"><option value=\"op\"{op}>op</option><option value=\"cl\"{cl}>cl</option></select> \
                 <input name=\"groups\" value=\"{groups}\" size=\"6\" aria-label=\"groups\"> <button>Set</button></form>\
                 <form method=\"post\" action=\"/tokens/create\" class=\"inline\">{hidden}\
                 <select name=\"ttl\" aria-label=\"token lifetime\"><option value=\"3600\">1 h</option><option value=\"86400\">1 day</option><option value=\"604800\">7 days</option></select> \
                 <button id=\"token-{n}\">Create token</button></form> \
                 <form method=\"post\" action=\"/ges/revoke\" class=\"inline\">{hidden}<button id=\"revoke-{n}\">Revoke</button></form> \
                 <form method=\"post\" action=\"/ges/remove\" class=\"inline\">{hidden}<button>Remove</button></form>",
                op = if g.mode == "op" { " selected" } else { "" },
                cl = if g.mode == "cl" { " selected" } else { "" },
            )
        };
        let _ = write!(
            b,
            "<tr id=\"ge-{n}\"><td>{n}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"state\">{}</td>\
             <td class=\"online\">{}</td><td class=\"version\">{}</td><td>{}</td><td>{actions}</td></tr>",
            esc(&g.kind),
            esc(&g.mode),
            esc(&groups),
            g.overlay,
            esc(&g.protect.join(" ")),
            esc(&g.state),
            online(g.online),
            esc(g.version.as_deref().unwrap_or("-")),
            esc(&addrs.join(" ")),
        );
    }
    let _ = write!(
        b,
        "</table></div><fieldset><legend>Add a GE</legend><form method=\"post\" action=\"/ges/add\" id=\"ge-add\">{f}\
         <label>Name <input name=\"name\" id=\"ge-name\" required></label>\
         <label>Kind <select name=\"kind\" id=\"ge-kind\"><option value=\"\">default (gen for a subnet, else ges)</option><option value=\"ges\">ges</option><option value=\"gen\">gen</option><option value=\"gea\">gea</option></select></label>\
         <label>Mode <select name=\"mode\" id=\"ge-mode\"><option value=\"\">default (cl for a gateway, else op)</option><option value=\"op\">op</option><option value=\"cl\">cl</option></select></label>\
         <label>Groups (comma-separated numbers) <input name=\"groups\" id=\"ge-groups\"></label>\
         <label>Protected prefixes (gen/gea only, comma-separated, e.g. 192.168.1.0/24) <input name=\"protect\" id=\"ge-protect\"></label>\
         <button id=\"ge-add-button\">Add GE</button></form></fieldset>"
    );
    b
}

/// The hosts behind gateways: list with gateway, LAN addresses, groups
/// and published address; a remove button each; the add form.
pub fn hosts(hs: &[HostView], csrf: &str) -> String {
    let f = csrf_field(csrf);
    let mut b = String::from(
        "<p>A host behind a gateway runs no fpn software (a NAS, a printer): the DNS gives its \
         name the gateway's public address and its LAN address as LIP, and nodes in its groups \
         reach it through the gateway. Its LAN addresses lie inside the gateway's protected \
         prefixes; its groups are among the gateway's.</p>\
         <div class=\"scroll\"><table id=\"hosts\"><tr><th>Name</th><th>Gateway</th><th>LAN</th>\
         <th>Groups</th><th>Public address</th><th>Actions</th></tr>",
    );
    for h in hs {
        let n = esc(&h.name);
        let lan: Vec<String> = h.lan.iter().map(ToString::to_string).collect();
        let groups: Vec<String> = h.groups.iter().map(u32::to_string).collect();
        let _ = write!(
            b,
            "<tr id=\"host-{n}\"><td>{n}</td><td class=\"via\">{}</td><td class=\"lan\">{}</td>\
             <td class=\"groups\">{}</td><td>{}</td><td><form method=\"post\" action=\"/hosts/remove\" class=\"inline\">{f}\
             <input type=\"hidden\" name=\"name\" value=\"{n}\"><button id=\"remove-host-{n}\">Remove</button></form></td></tr>",
            esc(&h.via),
            esc(&lan.join(" ")),
            esc(&groups.join(",")),
            h.public.map_or_else(|| "-".to_owned(), |a| a.to_string()),
        );
    }
    let _ = write!(
        b,
        "</table></div><fieldset><legend>Add a host</legend><form method=\"post\" action=\"/hosts/add\" id=\"host-add\">{f}\
         <label>Name <input name=\"name\" id=\"host-name\" required></label>\
         <label>Gateway (a gen or gea GE) <input name=\"via\" id=\"host-via\" required></label>\
         <label>LAN addresses (comma-separated) <input name=\"lan\" id=\"host-lan\" required></label>\
         <label>Groups (comma-separated numbers; empty: the gateway's) <input name=\"groups\" id=\"host-groups\"></label>\
         <button id=\"host-add-button\">Add host</button></form></fieldset>"
    );
    b
}

/// A new token, shown this once, with a QR code (inline SVG) for phones.
pub fn token(t: &TokenView, qr_svg: &str) -> String {
    format!(
        "<p>The token for <b>{ge}</b>, valid until {exp}. It is shown only now: the GMS keeps \
         a hash of its secret, not the token.</p><p class=\"token\"><code id=\"token\">{tok}</code></p>\
         <p>On the node, run <code>fpn-node enroll --state /var/lib/fpn-node --token-file -</code> \
         and paste the token (on the command line it would show in <code>ps</code>), or scan the code.</p>\
         <div id=\"qr\" style=\"max-width:20rem\">{qr_svg}</div><p><a href=\"/ges\">Back to the GEs</a></p>",
        ge = esc(&t.ge),
        exp = time(t.expires_at),
        tok = esc(&t.token),
    )
}

/// The unused tokens (ids only: the secrets were shown once) with a
/// cancel button each.
pub fn tokens(ts: &[TokenInfoView], csrf: &str) -> String {
    let f = csrf_field(csrf);
    let mut b = String::from(
        "<p>Tokens not used yet. A token is shown only when it is created (from the GEs page).</p>\
         <div class=\"scroll\"><table id=\"tokens\"><tr><th>GE</th><th>Id</th><th>Created</th><th>Expires</th><th></th></tr>",
    );
    for t in ts {
        let id = esc(&t.id);
        let _ = write!(
            b,
            "<tr id=\"token-{id}\"><td>{}</td><td><code>{id}</code></td><td>{}</td><td>{}{}</td><td>\
             <form method=\"post\" action=\"/tokens/cancel\" class=\"inline\">{f}<input type=\"hidden\" name=\"id\" value=\"{id}\">\
             <button>Cancel</button></form></td></tr>",
            esc(&t.ge),
            time(t.created_at),
            time(t.expires_at),
            if t.expired { " (expired)" } else { "" },
        );
    }
    b.push_str("</table></div>");
    b
}

/// The audit log, newest first.
pub fn audit(es: &[AuditView]) -> String {
    let mut b = String::from(
        "<div class=\"scroll\"><table id=\"audit\"><tr><th>#</th><th>When (UTC)</th><th>Who</th><th>What</th></tr>",
    );
    for e in es.iter().rev() {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.seq,
            time(e.at),
            esc(if e.who.is_empty() { "-" } else { &e.who }),
            esc(&e.action)
        );
    }
    b.push_str("</table></div>");
    b
}

/// A plain error page (bad CSRF token, not found).
pub fn error(title: &str, text: &str) -> String {
    layout(
        title,
        None,
        None,
        &format!(
            "<p class=\"err\" id=\"error\">{}</p><p><a href=\"/\">Back</a></p>",
            esc(text)
        ),
    )
}

fn online(on: bool) -> &'static str {
    if on {
        "<span class=\"on\">online</span>"
    } else {
        "<span class=\"off\">offline</span>"
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a unix time.
fn time(unix: u64) -> String {
    let (y, m, d) = crate::ca::civil_from_unix(unix);
    let s = unix % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_strings_are_escaped() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
        let a = audit(&[AuditView {
            seq: 1,
            at: 0,
            action: "group add 1 name=<script>".into(),
            who: "web:x".into(),
        }]);
        assert!(a.contains("&lt;script&gt;") && !a.contains("<script>"));
        assert!(a.contains("1970-01-01 00:00:00"));
    }
}
