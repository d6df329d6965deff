//! Bad tokens, foreign certificates and malformed messages against the real server.

mod common;

use common::*;
use fpn_gms::client::Error;
use fpn_gms::client::{self, Event, Session, SessionConfig};
use fpn_gms::token::Token;
use fpn_gms::wire::{ClientMsg, close};
use fpn_proto::ge::GroupId;
use fpn_proto::keys::KeyVersion;

fn refusal(r: client::Result<client::Identity>) -> (u16, String) {
    match r {
        Err(Error::Refused { code, reason }) => (code, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_expired_and_forged_tokens_are_refused() {
    let gms = Gms::start_new(&[]);
    gms.ok(&["ge", "add", "a", "--kind", "ges", "--mode", "op"]);
    let ep = endpoint();

    let t = gms.token("a");
    client::enroll(&t, &ep).await.unwrap();
    assert_eq!(
        refusal(client::enroll(&t, &ep).await),
        (2, "enrollment token already used".into())
    );

    let expired = gms.json(&["token", "create", "a", "--ttl", "0s"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        refusal(client::enroll(&expired, &ep).await),
        (3, "enrollment token expired".into())
    );

    let mut forged = Token::parse(&gms.token("a")).unwrap();
    forged.secret[0] ^= 1;
    assert_eq!(
        refusal(client::enroll(&forged.encode(), &ep).await),
        (1, "invalid enrollment token".into())
    );
    let mut unknown = Token::parse(&gms.token("a")).unwrap();
    unknown.id[0] ^= 1;
    assert_eq!(refusal(client::enroll(&unknown.encode(), &ep).await).0, 1);

    // A token that pins another CA: the node refuses this server.
    let mut other_ca = Token::parse(&gms.token("a")).unwrap();
    other_ca.ca_fingerprint[0] ^= 1;
    let e = client::enroll(&other_ca.encode(), &ep).await.unwrap_err();
    assert!(e.to_string().contains("fingerprint"), "{e}");

    assert!(matches!(
        client::enroll("fpn1:garbage", &ep).await,
        Err(Error::TokenFormat(_))
    ));
    let log = gms.log();
    assert!(log.contains("enrollment refused"), "{log}");
}

/// Writes an identity whose certificate comes from a CA the GMS never saw,
/// but which trusts the GMS's CA (so the node gets as far as presenting it).
fn foreign_identity(gms: &Gms, dir: &std::path::Path) -> client::Identity {
    use fpn_gms::ca::{Ca, NodeCertRequest, generate_node_key};
    let now = fpn_gms::now_unix();
    let foreign = Ca::generate(now).unwrap();
    let (key, public) = generate_node_key().unwrap();
    let cert = foreign
        .issue_node_cert(&NodeCertRequest {
            node_key: &public,
            ge_id: 1,
            name: "a",
            zone: "test.fpn.",
            serial: 1,
            not_before: now - 86_400,
            not_after: now + 86_400,
        })
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("node.key"), key.as_slice()).unwrap();
    std::fs::write(dir.join("node.crt"), cert).unwrap();
    std::fs::copy(gms.data.join("ca.crt"), dir.join("ca.crt")).unwrap();
    std::fs::write(dir.join("credential"), b"").unwrap();
    let meta = serde_json::json!({
        "gms_addr": gms.addr().to_string(),
        "zone": "test.fpn.",
        "ca_public": hex::encode(foreign.public_key()),
    });
    std::fs::write(dir.join("identity.json"), meta.to_string()).unwrap();
    client::Identity::load(dir).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_a_foreign_ca_is_refused() {
    let gms = Gms::start_new(&[]);
    gms.ok(&["ge", "add", "a", "--kind", "ges", "--mode", "op"]);
    let id = foreign_identity(&gms, &gms.tmp.path().join("foreign"));
    let mut s = Session::start(id, endpoint(), SessionConfig::default()).unwrap();
    let ev = next_matching(&mut s, |e| {
        matches!(e, Event::Connected | Event::Terminated { .. })
    })
    .await;
    let Event::Terminated { reason } = ev else {
        panic!("{ev:?}")
    };
    assert!(reason.contains("refused the TLS handshake"), "{reason}");
    // The server may log just after the client saw the refusal.
    let deadline = std::time::Instant::now() + WAIT;
    while !gms.log().contains("handshake failed") {
        assert!(
            std::time::Instant::now() < deadline,
            "no handshake failure logged: {}",
            gms.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits for `conn` to be closed and returns the application close code.
async fn close_code(conn: &quinn::Connection) -> u64 {
    match tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("not closed in time")
    {
        quinn::ConnectionError::ApplicationClosed(ac) => ac.error_code.into_inner(),
        other => panic!("unexpected close: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_close_only_their_connection() {
    let gms = Gms::start_new(&[]);
    gms.ok(&["group", "add", "1", "--name", "one"]);
    gms.ok(&[
        "ge", "add", "good", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    gms.ok(&[
        "ge", "add", "bad", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    let good = connect(enroll(&gms, "good").await, None).await;
    let bad_id = enroll(&gms, "bad").await;
    let addr = gms.addr();
    let fp: [u8; 32] = hex::decode(gms.json(&["status"])["ca_fingerprint"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let ep = endpoint();

    // Without a certificate (the enrollment path).
    let bad_frames: [&[u8]; 4] = [
        &[1, 0x01, 0xff, 0xff, 0xff, 0xff], // oversized length
        &[1, 0x7e, 0, 0, 0, 1, 0],          // unknown type
        &[1, 0x01, 0, 0, 0, 3, 1, 2, 3],    // truncated enroll request
        &[9, 0x01, 0, 0, 0, 0],             // unknown frame version
    ];
    for f in bad_frames {
        let cfg = fpn_gms::tls::enroll_client_config(fp).unwrap();
        let conn = ep
            .connect_with(cfg, addr, "fpn-gms")
            .unwrap()
            .await
            .unwrap();
        let (mut s, _r) = conn.open_bi().await.unwrap();
        s.write_all(f).await.unwrap();
        assert_eq!(close_code(&conn).await, u64::from(close::PROTOCOL), "{f:?}");
    }

    // With a valid certificate: hello, then garbage on the session stream.
    let cfg = fpn_gms::tls::session_client_config(
        &bad_id.ca_cert,
        &bad_id.cert,
        bad_id.key_pkcs8(),
        fpn_gms::tls::KEEP_ALIVE,
    )
    .unwrap();
    let conn = ep
        .connect_with(cfg.clone(), addr, "fpn-gms")
        .unwrap()
        .await
        .unwrap();
    let (mut s, _r) = conn.open_bi().await.unwrap();
    s.write_all(
        &ClientMsg::Hello {
            reported: vec![],
            version: None,
        }
        .encode()
        .unwrap(),
    )
    .await
    .unwrap();
    s.write_all(&[1, 0x04, 0, 0, 0, 2, 200, 0]).await.unwrap(); // name length 200 > 63
    assert_eq!(close_code(&conn).await, u64::from(close::PROTOCOL));

    // A session that does not start with hello.
    let conn = ep
        .connect_with(cfg, addr, "fpn-gms")
        .unwrap()
        .await
        .unwrap();
    let (mut s, _r) = conn.open_bi().await.unwrap();
    s.write_all(&ClientMsg::DirectoryQuery("good".into()).encode().unwrap())
        .await
        .unwrap();
    assert_eq!(close_code(&conn).await, u64::from(close::PROTOCOL));

    let log = gms.log();
    assert!(log.matches("bad control message").count() >= 6, "{log}");

    // The well-behaved session is still served.
    gms.ok(&["rotate", "--group", "1"]);
    good.wait_for(WAIT, |st| {
        st.keys
            .current(GroupId(1))
            .is_some_and(|(v, _)| v == KeyVersion(2))
    })
    .await
    .unwrap();
    assert_eq!(gms.json(&["status"])["online"], 1);
}
