//! Short-lived node credentials renewed over the session (issue 9 item 3),
//! against the real server: a 10 s lifetime, a client session that renews
//! on its own, saves each renewal, and reconnects with what it saved.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use fpn_gms::client::{self, Event, Identity, Session, SessionConfig};

const LIFETIME: u64 = 10;

fn gms_with(reconnect_grace: Option<&str>) -> Gms {
    let mut gms = Gms::init(&["--credential-lifetime", &format!("{LIFETIME}s")]);
    if let Some(g) = reconnect_grace {
        let path = gms.data.join("gms.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("expired_reconnect_grace = \"7d\""), "{text}");
        let text = text.replace(
            "expired_reconnect_grace = \"7d\"",
            &format!("expired_reconnect_grace = \"{g}\""),
        );
        std::fs::write(&path, text).unwrap();
    }
    gms.start();
    gms.ok(&["ge", "add", "laptop", "--kind", "ges", "--mode", "op"]);
    gms
}

fn start(id: Identity, dir: &Path) -> Session {
    let cfg = SessionConfig {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        identity_dir: Some(dir.to_path_buf()),
        ..SessionConfig::default()
    };
    Session::start(id, endpoint(), cfg).unwrap()
}

fn not_after(id: &Identity) -> u64 {
    client::verify_from_gms(&id.credential, &id.ca_public)
        .unwrap()
        .not_after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_renews_twice_saves_each_and_reconnects_with_the_saved_certificate() {
    // No reconnect grace: after its expiry the enrolled certificate is dead,
    // so a reconnect can only succeed with a renewed one.
    let gms = gms_with(Some("0s"));
    let dir = tempfile::tempdir().unwrap();
    let enrolled = enroll(&gms, "laptop").await;
    enrolled.save(dir.path()).unwrap();
    let first_end = not_after(&enrolled);
    let mut s = start(enrolled.clone(), dir.path());
    // Renewals at 40-60 % of the time left: two within about 7.5 s of 10 s.
    s.wait_for(Duration::from_secs(LIFETIME + 3), |st| st.renewals >= 2)
        .await
        .expect("two renewals");
    assert!(matches!(
        next_matching(&mut s, |e| matches!(e, Event::Renewed { .. })).await,
        Event::Renewed { .. }
    ));
    let (cred, cert, last) = s.with_state(|st| {
        (
            st.credential.clone().unwrap(),
            st.cert.clone(),
            st.last_renewal,
        )
    });
    assert!(cred.not_after > first_end);
    assert!(last.is_some());
    assert_ne!(cert, enrolled.cert);
    // What the session holds is on disk, private, and whole.
    let saved = Identity::load(dir.path()).unwrap();
    assert_eq!(saved.cert, cert);
    assert_eq!(
        client::verify_from_gms(&saved.credential, &saved.ca_public).unwrap(),
        cred
    );
    for f in ["node.crt", "credential"] {
        assert_eq!(
            client::fsutil::mode_of(&dir.path().join(f)).unwrap(),
            0o600,
            "{f}"
        );
    }
    drop(s);

    // Past the enrolled pair's end: the saved (renewed) certificate gets in,
    // the enrolled one is refused.
    while client::now_unix() <= first_end + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let saved = Identity::load(dir.path()).unwrap();
    let mut again = start(saved, dir.path());
    let ev = next_matching(&mut again, |e| {
        matches!(e, Event::Connected | Event::Terminated { .. })
    })
    .await;
    assert_eq!(ev, Event::Connected);
    let old_dir = tempfile::tempdir().unwrap();
    enrolled.save(old_dir.path()).unwrap();
    let mut old = start(enrolled, old_dir.path());
    let ev = next_matching(&mut old, |e| {
        matches!(e, Event::Connected | Event::Terminated { .. })
    })
    .await;
    assert!(matches!(ev, Event::Terminated { .. }), "{ev:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_its_credential_expired_reconnects_and_renews_at_once() {
    let gms = gms_with(None);
    let dir = tempfile::tempdir().unwrap();
    let id = enroll(&gms, "laptop").await;
    id.save(dir.path()).unwrap();
    let end = not_after(&id);
    // Offline until the certificate and credential expired.
    while client::now_unix() <= end + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut s = start(id, dir.path());
    let ev = next_matching(&mut s, |e| {
        matches!(e, Event::Connected | Event::Terminated { .. })
    })
    .await;
    assert_eq!(ev, Event::Connected, "{}", gms.log());
    match next_matching(&mut s, |e| matches!(e, Event::Renewed { .. })).await {
        Event::Renewed { not_after } => assert!(not_after > client::now_unix()),
        other => panic!("{other:?}"),
    }
    // Revoked: the session ends and nothing renews it.
    gms.ok(&["ge", "revoke", "laptop"]);
    let ev = next_matching(&mut s, |e| matches!(e, Event::Terminated { .. })).await;
    assert!(matches!(ev, Event::Terminated { .. }));
}
