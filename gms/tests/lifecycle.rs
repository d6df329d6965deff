//! Reconnects, offline nodes catching up, scheduled rotation, and the
//! directory hook the DDNS plugs into.

mod common;

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;
use fpn_gms::admin::{self, AdminRequest};
use fpn_gms::client::{Event, Identity, Session, SessionConfig};
use fpn_gms::config::DataDir;
use fpn_gms::core::DirectoryEvent;
use fpn_gms::server::{self, DirectoryHook, InitOptions};
use fpn_proto::ge::GroupId;
use fpn_proto::keys::KeyVersion;

const G1: GroupId = GroupId(1);

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn fast_reconnect() -> SessionConfig {
    SessionConfig {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        // Notice a killed GMS within 1.5 s (three silent keep-alives).
        keep_alive: Duration::from_millis(500),
        ..SessionConfig::default()
    }
}

/// A GMS killed and started again (a crash, no SHUTDOWN sent) answers the
/// first keep-alive of a session its previous process had with a
/// stateless reset the node can verify (the reset key comes from the
/// server key, not from the process): the node knows at once that its
/// session is gone, rather than after its idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gms_resets_the_sessions_of_its_previous_process() {
    // Its own loopback address: the relay takes port 7720 next to a fixed
    // QUIC port, and the other restart test has 127.0.0.1's.
    let port = std::net::UdpSocket::bind("127.0.0.3:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.3:{port}");
    let mut gms = Gms::start_new(&["--listen", &listen]);
    gms.ok(&["group", "add", "1", "--name", "one"]);
    gms.ok(&[
        "ge", "add", "a", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    let id = enroll(&gms, "a").await;
    let cfg = SessionConfig {
        keep_alive: Duration::from_secs(2),
        ..fast_reconnect()
    };
    let mut s = Session::start(id, endpoint(), cfg).unwrap();
    next_matching(&mut s, |e| *e == Event::Connected).await;
    gms.kill();
    gms.start();
    let Event::Disconnected { reason } =
        next_matching(&mut s, |e| matches!(e, Event::Disconnected { .. })).await
    else {
        unreachable!()
    };
    // Without the shared key: "timed out", three keep-alives later.
    assert!(reason.contains("reset"), "{reason}");
    next_matching(&mut s, |e| *e == Event::Connected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reconnects_after_a_gms_restart_and_catches_up() {
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let mut gms = Gms::start_new(&["--listen", &listen, "--grace", "1h"]);
    gms.ok(&["group", "add", "1", "--name", "one"]);
    gms.ok(&[
        "ge", "add", "a", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    let id = enroll(&gms, "a").await;
    let mut s = Session::start(id.clone(), endpoint(), fast_reconnect()).unwrap();
    next_matching(&mut s, |e| *e == Event::Connected).await;

    gms.kill();
    next_matching(&mut s, |e| matches!(e, Event::Disconnected { .. })).await;
    // Keys keep working while the GMS is down.
    assert_eq!(s.current_key(G1).unwrap().0, KeyVersion(1));
    gms.start();
    next_matching(&mut s, |e| *e == Event::Connected).await;
    gms.ok(&["rotate"]);
    s.wait_for(WAIT, |st| {
        st.keys.current(G1).is_some_and(|(v, _)| v == KeyVersion(2))
    })
    .await
    .unwrap();
    assert_eq!(s.with_state(|st| st.sessions), 2);
    drop(s);

    // Offline during a rotation: the next session brings current and previous.
    gms.ok(&["rotate"]);
    let fresh: Identity = id;
    let s = connect(fresh, None).await;
    assert_eq!(s.key_versions(G1), vec![KeyVersion(3), KeyVersion(2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_session_closes_its_connection() {
    let gms = Gms::start_new(&[]);
    gms.ok(&["ge", "add", "a", "--kind", "ges", "--mode", "op"]);
    let s = connect(enroll(&gms, "a").await, None).await;
    assert_eq!(gms.json(&["status"])["online"], 1);
    drop(s);
    let t = std::time::Instant::now();
    while gms.json(&["status"])["online"] != 0 {
        assert!(t.elapsed() < WAIT, "the dropped session is still online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_rotate_on_the_configured_schedule() {
    let gms = Gms::start_new(&["--rotation-schedule", "every:1s", "--grace", "1h"]);
    gms.ok(&["group", "add", "1", "--name", "one"]);
    gms.ok(&[
        "ge", "add", "a", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    let s = connect(enroll(&gms, "a").await, None).await;
    let v0 = s.current_key(G1).unwrap().0;
    s.wait_for(WAIT, |st| {
        st.keys.current(G1).is_some_and(|(v, _)| v.0 >= v0.0 + 2)
    })
    .await
    .expect("two scheduled rotations");
    let audit = gms.ok(&["audit"]);
    assert!(audit.contains("(schedule)"), "{audit}");
}

/// Forwards every directory event to a channel, as a DDNS adapter would.
struct Capture(Mutex<mpsc::Sender<DirectoryEvent>>);

impl DirectoryHook for Capture {
    fn on_change(&self, event: &DirectoryEvent) {
        let _ = self.0.lock().unwrap().send(event.clone());
    }
}

fn next_event(
    rx: &mpsc::Receiver<DirectoryEvent>,
    pred: impl Fn(&DirectoryEvent) -> bool,
) -> DirectoryEvent {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let e = rx.recv_timeout(left).expect("directory event in time");
        if pred(&e) {
            return e;
        }
    }
}

async fn ask(sock: std::path::PathBuf, req: AdminRequest) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        let r = admin::request(&sock, &req, WAIT).unwrap();
        assert!(r.ok, "{:?}", r.error);
        r.data
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_hook_hears_about_additions_addresses_and_removals() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gms");
    server::init(&InitOptions {
        data: data.clone(),
        zone: "hook.fpn.".into(),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        public_addr: None,
        overlay_range: None,
        rotation_schedule: None,
        grace: None,
        credential_lifetime: None,
        dns: None,
    })
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let srv = tokio::spawn(server::serve(
        DataDir::new(&data),
        Arc::new(Capture(Mutex::new(tx))),
        async {
            let _ = stopped.await;
        },
    ));
    let sock = data.join("admin.sock");
    let t = std::time::Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < WAIT, "server did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    ask(
        sock.clone(),
        AdminRequest::GeAdd {
            name: "nas".into(),
            kind: Some("gen".into()),
            mode: Some("cl".into()),
            groups: vec![],
            protect: Vec::new(),
        },
    )
    .await;
    let ev = next_event(&rx, |_| true);
    let DirectoryEvent::Updated(r) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (r.name.as_str(), r.overlay.to_string().as_str(), r.seen),
        ("nas", "100.64.0.1", None)
    );

    let token = ask(
        sock.clone(),
        AdminRequest::TokenCreate {
            name: "nas".into(),
            ttl_secs: None,
        },
    )
    .await;
    let id = fpn_gms::client::enroll(token["token"].as_str().unwrap(), &endpoint())
        .await
        .unwrap();
    let lan: std::net::SocketAddr = "192.168.1.1:4433".parse().unwrap();
    let cfg = SessionConfig {
        reported: vec![lan],
        ..SessionConfig::default()
    };
    let mut s = Session::start(id, endpoint(), cfg).unwrap();
    next_matching(&mut s, |e| *e == Event::Connected).await;
    let ev = next_event(
        &rx,
        |e| matches!(e, DirectoryEvent::Updated(r) if r.seen.is_some()),
    );
    let DirectoryEvent::Updated(r) = ev else {
        unreachable!()
    };
    assert_eq!(r.seen.unwrap().ip().to_string(), "127.0.0.1");
    assert_eq!(r.reported, vec![lan]);

    ask(sock.clone(), AdminRequest::GeRemove { name: "nas".into() }).await;
    let ev = next_event(&rx, |e| matches!(e, DirectoryEvent::Removed { .. }));
    assert_eq!(ev, DirectoryEvent::Removed { name: "nas".into() });

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, srv)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!sock.exists(), "the admin socket is removed on shutdown");
}
