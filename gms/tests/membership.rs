//! Leaving a group and revocation against the real server.

mod common;

use common::*;
use fpn_gms::client::{Event, Session, SessionConfig};
use fpn_proto::ge::{GeId, GroupId};
use fpn_proto::keys::KeyVersion;

const G1: GroupId = GroupId(1);

/// Every event queued so far, after a round trip through the session's
/// ordered stream (so every push sent before now has arrived).
async fn drain(s: &mut Session) -> Vec<Event> {
    s.query("a").await.unwrap();
    let mut v = Vec::new();
    while let Some(e) = s.try_next_event() {
        v.push(e);
    }
    v
}

fn got_version(events: &[Event], group: GroupId, version: KeyVersion) -> bool {
    events.iter().any(|e| {
        matches!(e, Event::Keys { group: g, versions } if *g == group && versions.contains(&version))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_ge_from_a_group_rotates_it_without_the_leaver() {
    let gms = Gms::start_new(&["--grace", "1h"]);
    gms.ok(&["group", "add", "1", "--name", "one"]);
    gms.ok(&["group", "add", "2", "--name", "two"]);
    for (n, g) in [("a", "1"), ("b", "1"), ("c", "1")] {
        gms.ok(&[
            "ge", "add", n, "--kind", "ges", "--mode", "op", "--group", g, "--group", "2",
        ]);
    }
    let sa = connect(enroll(&gms, "a").await, None).await;
    let sb = connect(enroll(&gms, "b").await, None).await;
    let mut sc = connect(enroll(&gms, "c").await, None).await;
    drain(&mut sc).await;

    let out = gms.json(&["ge", "set", "c", "--remove-group", "1"]);
    assert_eq!(out["rotated"][0]["group"], 1);
    assert_eq!(out["rotated"][0]["version"], 2);
    for s in [&sa, &sb] {
        s.wait_for(WAIT, |st| {
            st.keys.current(G1).is_some_and(|(v, _)| v == KeyVersion(2))
        })
        .await
        .unwrap();
    }
    // One more rotation for good measure: c is out of group 1 for good.
    gms.ok(&["rotate", "--group", "1"]);
    sa.wait_for(WAIT, |st| {
        st.keys.current(G1).is_some_and(|(v, _)| v == KeyVersion(3))
    })
    .await
    .unwrap();

    let events = drain(&mut sc).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::InfoChanged(i) if i.groups == [GroupId(2)].into())),
        "c was told its new groups: {events:?}"
    );
    assert!(!got_version(&events, G1, KeyVersion(2)) && !got_version(&events, G1, KeyVersion(3)));
    assert!(sc.key_versions(G1).is_empty(), "c dropped group 1's keys");
    assert_eq!(
        sc.key_versions(GroupId(2)),
        vec![KeyVersion(1)],
        "group 2 did not rotate"
    );
    assert_eq!(sc.info().unwrap().groups, [GroupId(2)].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_ge_is_disconnected_refused_and_everyone_is_told() {
    let gms = Gms::start_new(&[]);
    gms.ok(&["group", "add", "1", "--name", "one"]);
    gms.ok(&[
        "ge", "add", "a", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    gms.ok(&[
        "ge", "add", "b", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    let mut sa = connect(enroll(&gms, "a").await, None).await;
    let b_id = enroll(&gms, "b").await;
    let mut sb = connect(b_id.clone(), None).await;
    let b_serials = {
        let show = gms.json(&["ge", "show", "b"]);
        vec![
            show["cert_serial"].as_u64().unwrap(),
            show["credential_serial"].as_u64().unwrap(),
        ]
    };
    drain(&mut sa).await;

    gms.ok(&["ge", "revoke", "b"]);

    // b's live connection is closed, for good.
    let ev = next_matching(&mut sb, |e| matches!(e, Event::Terminated { .. })).await;
    assert_eq!(
        ev,
        Event::Terminated {
            reason: "GE revoked".into()
        }
    );
    // a learns the revocation and gets the rotated key.
    let ev = next_matching(&mut sa, |e| matches!(e, Event::Revoked { .. })).await;
    let Event::Revoked { ge, mut serials } = ev else {
        unreachable!()
    };
    serials.sort_unstable();
    assert_eq!((ge, serials), (GeId(2), b_serials.clone()));
    sa.wait_for(WAIT, |st| {
        st.keys.current(G1).is_some_and(|(v, _)| v == KeyVersion(2))
    })
    .await
    .unwrap();
    assert!(sa.with_state(|s| b_serials.iter().all(|x| s.revoked.contains(x))));
    assert!(sb.key_versions(G1).iter().all(|v| *v == KeyVersion(1)));

    // A reconnect with the revoked certificate is refused.
    let mut again = Session::start(b_id, endpoint(), SessionConfig::default()).unwrap();
    let ev = next_matching(&mut again, |e| {
        matches!(e, Event::Connected | Event::Terminated { .. })
    })
    .await;
    assert_eq!(
        ev,
        Event::Terminated {
            reason: "certificate revoked".into()
        }
    );
    assert_eq!(gms.json(&["ge", "show", "b"])["state"], "revoked");
    // And revoked GEs get no new tokens.
    assert!(!gms.cli(&["token", "create", "b"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_group_delivers_its_key_at_once() {
    let gms = Gms::start_new(&[]);
    gms.ok(&["group", "add", "1", "--name", "one"]);
    gms.ok(&[
        "ge", "add", "a", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    let mut sa = connect(enroll(&gms, "a").await, None).await;
    gms.ok(&["group", "add", "4", "--name", "four"]);
    gms.ok(&["ge", "set", "a", "--add-group", "4"]);
    let ev = next_matching(
        &mut sa,
        |e| matches!(e, Event::Keys { group, .. } if *group == GroupId(4)),
    )
    .await;
    assert_eq!(
        ev,
        Event::Keys {
            group: GroupId(4),
            versions: vec![KeyVersion(1)]
        }
    );
    sa.wait_for(WAIT, |st| {
        st.credential
            .as_ref()
            .is_some_and(|c| c.info.groups.contains(&GroupId(4)))
    })
    .await
    .unwrap();
    // Joining rotates nothing: the members of group 4 keep their key.
    assert_eq!(gms.json(&["group", "list"])[1]["key_version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_reissued_while_away_is_announced_when_the_session_starts() {
    // `ge set` while the node is not connected (or before it restarts with
    // the credential it enrolled with): the new credential arrives in the
    // SessionInit, and the node must hear of it as of a push.
    let gms = Gms::start_new(&[]);
    gms.ok(&["group", "add", "1", "--name", "one"]);
    gms.ok(&["group", "add", "2", "--name", "two"]);
    gms.ok(&[
        "ge", "add", "a", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    let id = enroll(&gms, "a").await;
    gms.ok(&["ge", "set", "a", "--add-group", "2"]);
    let mut s = connect(id, None).await;
    let events = drain(&mut s).await;
    let both = [G1, GroupId(2)].into();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::InfoChanged(i) if i.groups == both)),
        "the re-issued credential was not announced: {events:?}"
    );
    assert_eq!(s.info().unwrap().groups, both);
}
