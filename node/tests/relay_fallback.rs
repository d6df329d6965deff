//! The QUIC carrier with the relay as its fallback (`PathCarrier`), on
//! loopback with a real relay (`fpn_relay::Relay`) and identities from the
//! GMS's own CA code.
//!
//! A peer whose only address never answers (a UDP socket nobody reads, on
//! loopback): the first frame waits in the QUIC carrier's queue for the
//! connection attempt, and when the attempt is still not up after
//! `RELAY_AFTER` (1 s) the queued frame goes through the relay by itself,
//! with no later frame to carry the decision. Without the timer the frame
//! waits until the attempt gives up (5 s here) and is dropped with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fpn_node::carrier::{
    Carrier, FrameKind, Inbound, PathCarrier, PeerTarget, QuicCarrier, QuicCarrierConfig,
};
use fpn_proto::ge::GeId;
use fpn_relay::{CaOnly, RateLimit, Relay, RelayClient, RelayConfig};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

#[path = "support/carrier_net.rs"]
mod carrier_net;
use carrier_net::Network;

/// A node: its QUIC carrier (connect timeout 5 s) behind a `PathCarrier`
/// with a relay link to `relay`, and the frames it receives (direct or
/// relayed).
fn node(
    net: &Network,
    id: u32,
    relay: std::net::SocketAddr,
) -> (Arc<PathCarrier>, RelayClient, mpsc::Receiver<Inbound>) {
    let identity = net.identity(id, u64::from(id));
    let (relayed_tx, relayed_rx) = mpsc::channel(64);
    let client = RelayClient::new(
        "127.0.0.1:0".parse().unwrap(),
        &identity.ca_cert,
        &identity.cert,
        identity.key_pkcs8(),
        relayed_tx,
    )
    .unwrap();
    client.set_addr(Some(relay));
    let mut cfg = QuicCarrierConfig::new(identity);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.connect_timeout = Duration::from_secs(5);
    let (quic, inbound) = QuicCarrier::bind(cfg).unwrap();
    let path = PathCarrier::new(Arc::new(quic), Some(client.clone()));
    tokio::spawn(path.clone().run_inbound(relayed_rx));
    (path, client, inbound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_direct_attempts_queued_frame_goes_through_the_relay_by_itself() {
    let net = Network::new();
    let (cert_der, key_der) = net.ca.issue_relay_cert(fpn_gms_client::now_unix()).unwrap();
    let relay = Relay::bind(
        RelayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            rate: RateLimit::default(),
            ca_der: net.ca.cert_der().to_vec(),
            cert_der,
            key_der,
            reset_secret: Zeroizing::new(b"relay fallback test".to_vec()),
        },
        Arc::new(CaOnly),
    )
    .unwrap();
    let at = relay.local_addr().unwrap();
    let (a, a_link, _a_in) = node(&net, 1, at);
    let (_b, b_link, mut b_in) = node(&net, 2, at);
    let t = Instant::now();
    while !(a_link.state().up && b_link.state().up) {
        assert!(t.elapsed() < Duration::from_secs(10), "relay links not up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // b's only address: a socket that takes datagrams and never answers.
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = PeerTarget {
        ge: GeId(2),
        addrs: vec![hole.local_addr().unwrap()],
        reflexive: None,
    };
    let sent = Instant::now();
    a.send(&to, FrameKind::Data, b"the first frame").unwrap();
    // Nothing else is sent: the relay timer alone must move the frame.
    let got = tokio::time::timeout(Duration::from_secs(3), b_in.recv())
        .await
        .expect("the queued frame never came through the relay")
        .unwrap();
    let took = sent.elapsed();
    assert_eq!(got.peer, GeId(1));
    assert_eq!(&got.payload[..], b"the first frame");
    assert!(
        fpn_node::carrier::is_relay_from(&got.from),
        "not relayed: {:?}",
        got.from
    );
    eprintln!("the queued frame came through the relay after {took:?}");
    let peer = a
        .peers()
        .into_iter()
        .find(|p| p.ge == GeId(2))
        .expect("a's status has b");
    assert!(
        peer.why.as_deref().unwrap_or("").contains("not up in time"),
        "{peer:?}"
    );
    drop(hole);
}
