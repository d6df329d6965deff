//! Enrollment, key delivery, rotation and the grace period against the real server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fpn_gms::admin::AdminRequest;
use fpn_gms::client::{DirectorySync, Event};
use fpn_proto::ge::GroupId;
use fpn_proto::keys::KeyVersion;

const G1: GroupId = GroupId(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_enroll_receive_keys_and_follow_a_rotation() {
    let gms = Gms::start_new(&["--grace", "4s"]);
    gms.ok(&["group", "add", "1", "--name", "home"]);
    gms.ok(&[
        "ge", "add", "laptop", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    gms.ok(&[
        "ge", "add", "nas", "--kind", "gea", "--mode", "cl", "--group", "1",
    ]);

    let a = enroll(&gms, "laptop").await;
    let b = enroll(&gms, "nas").await;
    let info = a.verified_credential(fpn_gms::now_unix()).unwrap().info;
    assert_eq!(info.name, "laptop");
    assert_eq!(info.groups, [G1].into());

    let sa = connect(a, None).await;
    let sb = connect(b, None).await;
    let (va, ka) = sa.current_key(G1).unwrap();
    let (vb, kb) = sb.current_key(G1).unwrap();
    assert_eq!((va, vb), (KeyVersion(1), KeyVersion(1)));
    assert!(ka.ct_eq(&kb), "both members hold the same group key");

    // A rotation reaches both within a second.
    let t0 = Instant::now();
    gms.admin(AdminRequest::Rotate { group: Some(1) });
    for s in [&sa, &sb] {
        let left = Duration::from_secs(1).saturating_sub(t0.elapsed());
        s.wait_for(left, |st| {
            st.keys.current(G1).is_some_and(|(v, _)| v == KeyVersion(2))
        })
        .await
        .expect("new version within a second");
    }
    let (_, k2a) = sa.current_key(G1).unwrap();
    assert!(k2a.ct_eq(&sb.current_key(G1).unwrap().1));
    assert!(!k2a.ct_eq(&ka));

    // The old version is still valid during the grace period...
    assert!(sa.key(G1, KeyVersion(1)).unwrap().ct_eq(&ka));
    assert!(sb.key(G1, KeyVersion(1)).is_some());
    let keys = gms.admin(AdminRequest::Keys);
    assert_eq!(keys[0]["versions"][1]["state"], "previous");
    // ...and erased from nodes and store when it ends.
    for s in [&sa, &sb] {
        s.wait_for(WAIT, |st| st.keys.versions(G1) == vec![KeyVersion(2)])
            .await
            .expect("previous version erased after the grace");
    }
    let keys = gms.admin(AdminRequest::Keys);
    assert_eq!(keys[0]["versions"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_cache_is_private_and_serves_keys_while_the_gms_is_down() {
    let mut gms = Gms::start_new(&[]);
    gms.ok(&["group", "add", "7", "--name", "office"]);
    gms.ok(&[
        "ge", "add", "pc", "--kind", "ges", "--mode", "op", "--group", "7",
    ]);
    let id = enroll(&gms, "pc").await;
    let state = gms.tmp.path().join("node");
    id.save(&state).unwrap();
    assert_eq!(
        fpn_gms::fsutil::mode_of(&state.join("node.key")).unwrap(),
        0o600
    );
    let cache = state.join("keys");
    let s = connect(
        fpn_gms::client::Identity::load(&state).unwrap(),
        Some(&cache),
    )
    .await;
    let (v, k) = s.current_key(GroupId(7)).unwrap();
    drop(s);
    assert_eq!(fpn_gms::fsutil::mode_of(&cache).unwrap(), 0o600);
    assert_eq!(
        fpn_gms::fsutil::mode_of(&gms.data.join("ca.key")).unwrap(),
        0o600
    );
    assert_eq!(
        fpn_gms::fsutil::mode_of(&gms.data.join("admin.sock")).unwrap(),
        0o600
    );

    // With the GMS gone, a restarted node still has its keys from the cache.
    gms.kill();
    let id = fpn_gms::client::Identity::load(&state).unwrap();
    let s = fpn_gms::client::Session::start(
        id,
        endpoint(),
        fpn_gms::client::SessionConfig::with_cache(cache.clone()),
    )
    .unwrap();
    let (v2, k2) = s.current_key(GroupId(7)).unwrap();
    assert_eq!(v2, v);
    assert!(k2.ct_eq(&k));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_returns_seen_and_reported_addresses_and_pushes_changes() {
    let gms = Gms::start_new(&[]);
    gms.ok(&["group", "add", "1", "--name", "g"]);
    gms.ok(&[
        "ge", "add", "a", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    gms.ok(&[
        "ge", "add", "b", "--kind", "gen", "--mode", "cl", "--group", "1",
    ]);
    let a = enroll(&gms, "a").await;
    let b = enroll(&gms, "b").await;
    let mut sa = connect(a, None).await;
    let sb = connect(b, None).await;
    let reported: std::net::SocketAddr = "192.168.1.20:4433".parse().unwrap();
    sb.report_addresses(vec![reported]).await.unwrap();

    let e = sa.query("b").await.unwrap().expect("b is known");
    assert!(e.online);
    assert_eq!(e.seen.unwrap().ip().to_string(), "127.0.0.1");
    assert_eq!(e.reported, vec![reported]);
    let cred = fpn_proto::credential::UnverifiedCredential::decode(&e.credential).unwrap();
    assert_eq!(cred.claimed_ge(), fpn_proto::ge::GeId(2));
    assert!(sa.query("nobody").await.unwrap().is_none());

    // a asked about b, so a hears when b's addresses change; `status`
    // counts the push (one more frame pushed to a session).
    let pushes = |gms: &Gms| gms.json(&["status"])["pushes"].as_u64().expect("pushes");
    let before = pushes(&gms);
    let moved: std::net::SocketAddr = "10.1.2.3:4433".parse().unwrap();
    sb.report_addresses(vec![moved]).await.unwrap();
    let ev = next_matching(&mut sa, |e| matches!(e, Event::DirectoryChanged { .. })).await;
    assert!(pushes(&gms) > before, "the directory push is counted");
    let Event::DirectoryChanged { name, entry } = ev else {
        unreachable!()
    };
    assert_eq!(name, "b");
    assert_eq!(entry.unwrap().reported, vec![moved]);
    let show = gms.json(&["ge", "show", "b"]);
    assert_eq!(show["reported"][0], "10.1.2.3:4433");
    assert_eq!(show["online"], true);
    assert_eq!(show["version"], fpn_gms_client::VERSION, "from b's hello");
}

/// The directory on demand (`fpn-gms/3`, design note 66) over a real
/// session: a listing follows nobody and is not sent again while its
/// digest stands; a query follows; `forget` stops the pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_follows_only_the_ges_it_asks_about_and_lists_only_changes() {
    let gms = Gms::start_new(&[]);
    gms.ok(&["group", "add", "1", "--name", "g"]);
    for n in ["a", "b"] {
        gms.ok(&[
            "ge", "add", n, "--kind", "ges", "--mode", "op", "--group", "1",
        ]);
    }
    let a = enroll(&gms, "a").await;
    let b = enroll(&gms, "b").await;
    let mut sa = connect(a, None).await;
    let sb = connect(b, None).await;
    assert!(sa.on_demand(), "a new node and a new GMS chose fpn-gms/3");
    let digest = match sa.sync_directory(None).await.unwrap() {
        DirectorySync::Listed {
            entries,
            digest: Some(d),
        } => {
            assert_eq!(entries.len(), 2);
            d
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        sa.sync_directory(Some(digest)).await.unwrap(),
        DirectorySync::Unchanged
    );
    // `ge show` counts what a follows at the GMS: nothing after the
    // listing, b after the query (and then b's changes reach a), nothing
    // after the forget.
    let follows = |gms: &Gms| gms.json(&["ge", "show", "a"])["follows"].as_u64();
    assert_eq!(follows(&gms), Some(0), "a listing made a follow GEs");
    let b_entry = sa.query("b").await.unwrap().expect("b is known");
    let b_ge = fpn_proto::credential::UnverifiedCredential::decode(&b_entry.credential)
        .unwrap()
        .claimed_ge();
    assert_eq!(follows(&gms), Some(1));
    let at = |p: u16| std::net::SocketAddr::from(([10, 1, 2, 3], p));
    sb.report_addresses(vec![at(2)]).await.unwrap();
    next_matching(&mut sa, |e| matches!(e, Event::DirectoryChanged { .. })).await;
    sa.forget(&[b_ge]).await.unwrap();
    assert_eq!(follows(&gms), Some(0), "a still follows the GE it forgot");
    // A new GE changes the digest: the next sync lists again.
    gms.ok(&[
        "ge", "add", "c", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    match sa.sync_directory(Some(digest)).await.unwrap() {
        DirectorySync::Listed { entries, digest: d } => {
            assert_eq!(entries.len(), 3);
            assert_ne!(d, Some(digest));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_receives_the_hosts_behind_gateways_and_their_changes() {
    let gms = Gms::start_new(&[]);
    gms.ok(&["group", "add", "1", "--name", "home"]);
    gms.ok(&["group", "add", "2", "--name", "media"]);
    gms.ok(&[
        "ge",
        "add",
        "gw",
        "--kind",
        "gen",
        "--mode",
        "cl",
        "--group",
        "1",
        "--group",
        "2",
        "--protect",
        "192.168.1.0/24",
    ]);
    gms.ok(&[
        "ge", "add", "laptop", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    gms.ok(&[
        "host",
        "add",
        "nas",
        "--via",
        "gw",
        "--lan",
        "192.168.1.10",
        "--group",
        "1",
    ]);
    let gw_id = gms.json(&["ge", "show", "gw"])["id"].as_u64().unwrap() as u32;

    // The list comes right after the session starts.
    let id = enroll(&gms, "laptop").await;
    let mut s = connect(id, None).await;
    let Event::Hosts(list) = next_matching(&mut s, |e| matches!(e, Event::Hosts(_))).await else {
        unreachable!()
    };
    assert_eq!(list.len(), 1);
    let nas = &list[0];
    assert_eq!(nas.name, "nas");
    assert_eq!((nas.via.0, nas.via_name.as_str()), (gw_id, "gw"));
    assert_eq!(
        nas.lan,
        vec!["192.168.1.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(nas.groups, vec![G1]);

    // Changes while connected are pushed.
    gms.ok(&[
        "host",
        "add",
        "printer",
        "--via",
        "gw",
        "--lan",
        "192.168.1.20",
    ]);
    let ev = next_matching(&mut s, |e| matches!(e, Event::HostChanged { .. })).await;
    let Event::HostChanged { name, entry } = ev else {
        unreachable!()
    };
    assert_eq!(name, "printer");
    assert_eq!(
        entry.unwrap().groups,
        vec![G1, GroupId(2)],
        "the gateway's groups"
    );
    gms.ok(&["host", "set", "nas", "--lan", "192.168.1.11"]);
    let ev = next_matching(&mut s, |e| matches!(e, Event::HostChanged { .. })).await;
    assert!(
        matches!(&ev, Event::HostChanged { name, entry: Some(h) } if name == "nas" && h.lan[0].to_string() == "192.168.1.11"),
        "{ev:?}"
    );
    gms.ok(&["host", "remove", "printer"]);
    let ev = next_matching(&mut s, |e| matches!(e, Event::HostChanged { .. })).await;
    assert_eq!(
        ev,
        Event::HostChanged {
            name: "printer".into(),
            entry: None
        }
    );
    let known: Vec<String> =
        s.with_state(|st| st.hosts.as_ref().unwrap().keys().cloned().collect());
    assert_eq!(known, ["nas"]);
}
