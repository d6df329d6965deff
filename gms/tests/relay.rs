//! The relay inside `fpn-gms serve`: announced to nodes after the session
//! starts, forwarding between two enrolled nodes, counted in `status`, and
//! a GE that is revoked is cut off the relay at once.

mod common;

use std::time::{Duration, Instant};

use common::{Gms, connect, enroll, next_matching};
use fpn_gms::client::Event;
use fpn_proto::ge::GeId;
use fpn_relay::RelayClient;
use tokio::sync::mpsc;

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_gms_relays_between_its_nodes_and_cuts_a_revoked_one_at_once() {
    let gms = Gms::start_new(&[]);
    gms.ok(&["group", "add", "1", "--name", "one"]);
    for n in ["a", "b"] {
        gms.ok(&[
            "ge", "add", n, "--kind", "ges", "--mode", "op", "--group", "1",
        ]);
    }
    let st = gms.json(&["status"]);
    let listen = st["relay"]["listen"]
        .as_str()
        .expect("relay in status")
        .to_owned();
    assert_eq!(st["relay"]["advertised"], listen.as_str(), "{st}");

    let mut links = Vec::new();
    for n in ["a", "b"] {
        let id = enroll(&gms, n).await;
        let mut s = connect(id.clone(), None).await;
        // The session names the relay.
        let ev = next_matching(&mut s, |e| matches!(e, Event::Relay(_))).await;
        assert_eq!(ev, Event::Relay(Some(listen.clone())));
        let (tx, rx) = mpsc::channel(64);
        let link = RelayClient::new(
            "127.0.0.1:0".parse().unwrap(),
            &id.ca_cert,
            &id.cert,
            id.key_pkcs8(),
            tx,
        )
        .unwrap();
        link.set_addr(Some(listen.parse().unwrap()));
        links.push((link, rx, s));
    }
    until("both on the relay", || {
        links.iter().all(|(l, ..)| l.state().up)
    })
    .await;
    // A link is up at its handshake; the relay registers the node just
    // after. A frame to a node not yet registered is dropped, so wait for
    // the relay's own list (CI once sent before b's registration).
    until("both registered at the relay", || {
        gms.json(&["status"])["relay"]["nodes"] == serde_json::json!([1, 2])
    })
    .await;

    let frame = [0x02, 1, 2, 3, 4];
    links[0].0.send(GeId(2), &frame).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), links[1].1.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.src, &got.frame[..]), (GeId(1), &frame[..]));
    let st = gms.json(&["status"]);
    assert_eq!(st["relay"]["counters"]["frames_relayed"], 1, "{st}");
    assert_eq!(st["relay"]["nodes"], serde_json::json!([1, 2]), "{st}");

    // Revoked: b's relay connection is closed at once; its link tries again
    // (backing off) and is closed after each handshake, never registered.
    gms.ok(&["ge", "revoke", "b"]);
    let t = Instant::now();
    until("b cut off the relay", || !links[1].0.state().up).await;
    let cut = t.elapsed();
    assert!(cut < Duration::from_secs(1), "cut after {cut:?}");
    links[0].0.send(GeId(2), &frame).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        links[1].1.try_recv().is_err(),
        "a frame reached the revoked GE"
    );
    let st = gms.json(&["status"]);
    assert_eq!(st["relay"]["nodes"], serde_json::json!([1]), "{st}");
    assert_eq!(st["relay"]["counters"]["frames_relayed"], 1, "{st}");
}

/// `fpn-gms relay-cert` writes what a standalone relay needs; a relay
/// serving with it admits the GMS's enrolled nodes (and a second run
/// refuses to overwrite the directory).
#[tokio::test]
async fn relay_cert_writes_a_certificate_the_gms_nodes_accept() {
    use std::os::unix::fs::PermissionsExt;
    let gms = Gms::start_new(&[]);
    gms.ok(&["ge", "add", "a", "--kind", "ges", "--mode", "op"]);
    let out = gms.tmp.path().join("relay-certs");
    let out_s = out.to_str().unwrap();
    let data = gms.data.to_str().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(["--data", data, "relay-cert", "--out"])
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&[out_s]).status.success());
    assert!(
        !run(&[out_s]).status.success(),
        "overwrote an existing directory"
    );
    let mode = std::fs::metadata(out.join("relay.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let read = |f: &str| std::fs::read(out.join(f)).unwrap();
    let relay = fpn_relay::Relay::bind(
        fpn_relay::RelayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            rate: fpn_relay::RateLimit::default(),
            ca_der: read("ca.crt"),
            cert_der: read("relay.crt"),
            key_der: zeroize::Zeroizing::new(read("relay.key")),
            reset_secret: zeroize::Zeroizing::new(read("relay.key")),
        },
        std::sync::Arc::new(fpn_relay::CaOnly),
    )
    .unwrap();
    let id = enroll(&gms, "a").await;
    let (tx, _rx) = mpsc::channel(8);
    let link = RelayClient::new(
        "127.0.0.1:0".parse().unwrap(),
        &id.ca_cert,
        &id.cert,
        id.key_pkcs8(),
        tx,
    )
    .unwrap();
    link.set_addr(Some(relay.local_addr().unwrap()));
    until("a on the standalone relay", || {
        relay.nodes() == vec![GeId(1)]
    })
    .await;
}
