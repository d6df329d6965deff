//! Hosts behind gateways, driven through the core (admin requests,
//! sessions) without QUIC.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use fpn_proto::ge::GeId;

use super::tests::{T0, admin, admin_err, enroll, fixture, ge_add, group_add, pushes_to};
use super::*;
use crate::admin::{AdminRequest, HostView};

fn gateway(c: &mut Core, name: &str, kind: &str, groups: &[u32], protect: &[&str]) {
    admin(
        c,
        AdminRequest::GeAdd {
            name: name.into(),
            kind: Some(kind.into()),
            mode: Some("cl".into()),
            groups: groups.to_vec(),
            protect: protect.iter().map(|p| (*p).to_owned()).collect(),
        },
    );
}

fn host_add(name: &str, via: &str, lan: &[&str], groups: &[u32]) -> AdminRequest {
    AdminRequest::HostAdd {
        name: name.into(),
        via: via.into(),
        lan: lan.iter().map(|l| (*l).to_owned()).collect(),
        groups: groups.to_vec(),
    }
}

fn host_events(out: &[Output]) -> Vec<&DirectoryEvent> {
    out.iter()
        .filter_map(|o| match o {
            Output::Directory(e @ (DirectoryEvent::Host(_) | DirectoryEvent::Removed { .. })) => {
                Some(e)
            }
            _ => None,
        })
        .collect()
}

/// A core with groups 1-3, gateway `gw` (gen, groups 1 and 2, protecting
/// 192.168.1.0/24 and fd00:1::/64) and a GES `laptop` in group 1.
fn home() -> super::tests::Fixture {
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    for g in 1..=3 {
        group_add(c, g);
    }
    gateway(c, "gw", "gen", &[1, 2], &["192.168.1.0/24", "fd00:1::/64"]);
    ge_add(c, "laptop", &[1]);
    f
}

#[test]
fn a_host_is_added_listed_shown_changed_and_removed() {
    let mut f = home();
    let c = &mut f.core;
    let (d, out) = admin(c, host_add("nas", "gw", &["192.168.1.10"], &[1]));
    let v: HostView = serde_json::from_value(d).unwrap();
    assert_eq!(
        (v.via.as_str(), v.lan.len(), v.groups.clone()),
        ("gw", 1, vec![1])
    );
    assert_eq!(v.fqdn, "nas.t.fpn.");
    // `ge show` of the gateway names its hosts.
    let (g, _) = admin(c, AdminRequest::GeShow { name: "gw".into() });
    assert_eq!(g["hosts"], serde_json::json!(["nas"]));
    // The DNS hears of it at once (no address yet: the gateway was never seen).
    match host_events(&out)[..] {
        [DirectoryEvent::Host(h)] => {
            assert_eq!(h.name, "nas");
            assert_eq!(h.seen, None);
            assert_eq!(
                h.lan,
                vec!["192.168.1.10".parse::<std::net::IpAddr>().unwrap()]
            );
        }
        ref other => panic!("{other:?}"),
    }
    // No group given: the gateway's groups.
    admin(
        c,
        host_add("printer", "gw", &["192.168.1.20", "fd00:1::20"], &[]),
    );
    let (d, _) = admin(c, AdminRequest::HostList);
    let list: Vec<HostView> = serde_json::from_value(d).unwrap();
    assert_eq!(
        list.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        ["nas", "printer"]
    );
    assert_eq!(list[1].groups, vec![1, 2]);
    assert_eq!(list[1].lan.len(), 2);
    // set: new LAN address and groups, checked like add.
    let (d, _) = admin(
        c,
        AdminRequest::HostSet {
            name: "nas".into(),
            lan: Some(vec!["192.168.1.11".into()]),
            groups: Some(vec![2]),
        },
    );
    let v: HostView = serde_json::from_value(d).unwrap();
    assert_eq!(
        (v.lan[0].to_string(), v.groups),
        ("192.168.1.11".into(), vec![2])
    );
    let e = admin_err(
        c,
        AdminRequest::HostSet {
            name: "nas".into(),
            lan: Some(vec!["10.0.0.1".into()]),
            groups: None,
        },
    );
    assert!(e.contains("outside"), "{e}");
    // Survives a reload from the store.
    let st = State::load(c.store.as_ref()).unwrap();
    assert_eq!(st.hosts, c.st.hosts);
    assert_eq!(st.hosts["nas"].groups, [2].into());
    // remove: the records go.
    let (_, out) = admin(c, AdminRequest::HostRemove { name: "nas".into() });
    assert!(
        matches!(host_events(&out)[..], [DirectoryEvent::Removed { name }] if name == "nas"),
        "{out:?}"
    );
    let e = admin_err(c, AdminRequest::HostShow { name: "nas".into() });
    assert!(e.contains("no host named nas"), "{e}");
    assert!(
        !State::load(c.store.as_ref())
            .unwrap()
            .hosts
            .contains_key("nas")
    );
}

#[test]
fn bad_hosts_are_refused_with_errors_that_name_the_fix() {
    let mut f = home();
    let c = &mut f.core;
    gateway(c, "srv", "gea", &[3], &["10.9.0.0/24"]);
    admin(c, host_add("nas", "gw", &["192.168.1.10"], &[1]));
    let cases: Vec<(AdminRequest, &str)> = vec![
        // One namespace with the GEs.
        (
            host_add("laptop", "gw", &["192.168.1.30"], &[]),
            "taken by a GE",
        ),
        (
            host_add("nas", "gw", &["192.168.1.30"], &[]),
            "taken by a host behind gw",
        ),
        (
            host_add("Bad_Name", "gw", &["192.168.1.30"], &[]),
            "host name",
        ),
        // Outside the gateway's prefixes: the error names them and the fix.
        (
            host_add("tv", "gw", &["192.168.2.5"], &[]),
            "outside the prefixes gateway gw protects (192.168.1.0/24, fd00:1::/64); \
             the gateway may only answer for addresses its credential names: \
             `fpn-gms ge set gw --protect PREFIX`",
        ),
        (
            host_add("tv", "gw", &["fd00:2::5"], &[]),
            "outside the prefixes",
        ),
        // A group the gateway is not in.
        (
            host_add("tv", "gw", &["192.168.1.5"], &[3]),
            "group 3 is not one of gateway gw's groups (1,2); the gateway answers for the host \
             with its own group keys",
        ),
        (
            host_add("tv", "nowhere", &["192.168.1.5"], &[]),
            "no GE named nowhere",
        ),
        (
            host_add("tv", "laptop", &["192.168.1.5"], &[]),
            "a host needs a gateway",
        ),
        (host_add("tv", "gw", &[], &[]), "at least one LAN address"),
        (
            host_add("tv", "gw", &["192.168.1.999"], &[]),
            "not an IP address",
        ),
        (
            host_add("tv", "gw", &["127.0.0.1"], &[]),
            "not a host's address",
        ),
    ];
    for (req, want) in cases {
        let e = admin_err(c, req.clone());
        assert!(e.contains(want), "{req:?}: {e}");
    }
    // A gea fronts one server, not more.
    admin(c, host_add("db", "srv", &["10.9.0.5"], &[]));
    let e = admin_err(c, host_add("db2", "srv", &["10.9.0.6"], &[]));
    assert!(e.contains("already fronts host db"), "{e}");
    // A GE may not take a host's name.
    let e = admin_err(
        c,
        AdminRequest::GeAdd {
            name: "nas".into(),
            kind: Some("ges".into()),
            mode: Some("op".into()),
            groups: vec![1],
            protect: vec![],
        },
    );
    assert!(e.contains("taken by a host behind gw"), "{e}");
    let hosts = c.st.hosts.len();
    assert_eq!(hosts, 2);
    // A failed commit leaves nothing behind.
    f.fail.store(true, Ordering::SeqCst);
    let (r, _) = f
        .core
        .handle_admin(host_add("tv", "gw", &["192.168.1.5"], &[]), T0);
    assert!(!r.ok);
    f.fail.store(false, Ordering::SeqCst);
    assert!(!f.core.st.hosts.contains_key("tv"));
}

#[test]
fn a_gateway_keeps_what_its_hosts_need() {
    let mut f = home();
    let c = &mut f.core;
    admin(c, host_add("nas", "gw", &["192.168.1.10"], &[2]));
    let set = |protect: Option<Vec<&str>>, kind: Option<&str>, remove_groups: Vec<u32>| {
        AdminRequest::GeSet {
            name: "gw".into(),
            kind: kind.map(Into::into),
            mode: None,
            groups: None,
            add_groups: vec![],
            remove_groups,
            protect: protect.map(|p| p.into_iter().map(Into::into).collect()),
        }
    };
    // Prefixes that leave the host outside: refused, naming the host.
    let e = admin_err(c, set(Some(vec!["192.168.2.0/24"]), None, vec![]));
    assert!(
        e.contains("host nas: LAN address 192.168.1.10 is outside"),
        "{e}"
    );
    // Leaving the host's group, or ceasing to be a gateway: refused.
    let e = admin_err(c, set(None, None, vec![2]));
    assert!(e.contains("host nas: group 2"), "{e}");
    let e = admin_err(c, set(Some(vec![]), Some("ges"), vec![]));
    assert!(e.contains("host nas"), "{e}");
    // A change that keeps the host covered is fine.
    admin(c, set(Some(vec!["192.168.0.0/16"]), None, vec![1]));
    // A gea fronts one server: a gen with two hosts cannot become one.
    admin(c, host_add("printer", "gw", &["192.168.1.20"], &[2]));
    let e = admin_err(c, set(None, Some("gea"), vec![]));
    assert!(e.contains("GE gw fronts hosts nas, printer"), "{e}");
    admin(
        c,
        AdminRequest::HostRemove {
            name: "printer".into(),
        },
    );
    admin(c, set(None, Some("gea"), vec![]));
    // Removing the gateway is refused while hosts are behind it...
    let e = admin_err(c, AdminRequest::GeRemove { name: "gw".into() });
    assert!(
        e.contains("GE gw has hosts behind it: nas; remove them first"),
        "{e}"
    );
    // ...and works once they are gone.
    admin(c, AdminRequest::HostRemove { name: "nas".into() });
    admin(c, AdminRequest::GeRemove { name: "gw".into() });
}

#[test]
fn host_records_follow_the_gateway_and_sessions_that_asked_get_hosts() {
    let mut f = home();
    let c = &mut f.core;
    enroll(c, "gw", 1);
    enroll(c, "laptop", 2);
    let (gw, laptop) = (GeId(c.st.ges["gw"].id), GeId(c.st.ges["laptop"].id));
    admin(c, host_add("nas", "gw", &["192.168.1.10"], &[1]));
    // The laptop's session takes hosts; the list comes first.
    let (sid, _, _) = c
        .open_session(laptop, "198.18.3.2:7718".parse().unwrap(), vec![], T0)
        .unwrap();
    let f0 = c.subscribe_hosts(laptop, sid).unwrap();
    match ServerMsg::decode(f0[1], &f0[crate::wire::HEADER_LEN..]).unwrap() {
        ServerMsg::Hosts(l) => {
            assert_eq!(l.len(), 1);
            assert_eq!(
                (l[0].name.as_str(), l[0].via, l[0].via_name.as_str()),
                ("nas", gw, "gw")
            );
        }
        other => panic!("{other:?}"),
    }
    // The gateway comes online: the host's records take its address.
    let home_addr: SocketAddr = "198.18.2.2:7718".parse().unwrap();
    let (gsid, _, out) = c.open_session(gw, home_addr, vec![], T0).unwrap();
    assert!(
        matches!(host_events(&out)[..], [DirectoryEvent::Host(h)] if h.seen == Some(home_addr)),
        "{out:?}"
    );
    // It moves: the records follow.
    let moved: SocketAddr = "198.18.2.3:7718".parse().unwrap();
    let out = c.session_moved(gw, gsid, moved);
    assert!(
        matches!(host_events(&out)[..], [DirectoryEvent::Host(h)] if h.seen == Some(moved)),
        "{out:?}"
    );
    let (d, _) = admin(c, AdminRequest::HostShow { name: "nas".into() });
    assert_eq!(d["public"], "198.18.2.3");
    // A new host is pushed to the laptop, not to the gateway (which did
    // not ask for hosts).
    let (_, out) = admin(c, host_add("printer", "gw", &["192.168.1.20"], &[]));
    match &pushes_to(&out, laptop)[..] {
        [
            ServerMsg::HostChanged {
                name,
                entry: Some(h),
            },
        ] => {
            assert_eq!(name, "printer");
            assert_eq!(h.groups.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(pushes_to(&out, gw).is_empty());
    // Removal is pushed as an entry-less change.
    let (_, out) = admin(
        c,
        AdminRequest::HostRemove {
            name: "printer".into(),
        },
    );
    assert!(matches!(
        &pushes_to(&out, laptop)[..],
        [ServerMsg::HostChanged { entry: None, .. }]
    ));
    // Revoking the gateway is never refused: its hosts lose their records
    // and leave the nodes' directory.
    let (_, out) = admin(c, AdminRequest::GeRevoke { name: "gw".into() });
    assert!(
        host_events(&out)
            .iter()
            .any(|e| matches!(e, DirectoryEvent::Host(h) if h.name == "nas" && h.seen.is_none())),
        "{out:?}"
    );
    assert!(
        pushes_to(&out, laptop)
            .iter()
            .any(|m| matches!(m, ServerMsg::HostChanged { name, entry: None } if name == "nas"))
    );
    // A closed session gets no more pushes.
    c.close_session(laptop, sid);
    gateway(c, "gw2", "gen", &[1], &["10.1.0.0/16"]);
    let (_, out) = admin(c, host_add("cam", "gw2", &["10.1.0.9"], &[]));
    assert!(pushes_to(&out, laptop).is_empty());
}
