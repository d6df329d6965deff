//! The QUIC carrier with short-lived certificates (issue 9 item 3): a peer
//! refuses a node whose certificate expired, in both handshake roles, and
//! takes it again once the node swapped in its renewed certificate with
//! [`QuicCarrier::set_certificate`], without a restart.

use std::time::Duration;

use fpn_gms::ca::NodeCertRequest;
use fpn_gms_client::Identity;
use fpn_node::carrier::{Carrier, FrameKind, Inbound, PeerState, PeerTarget, QuicCarrier};
use fpn_proto::ge::GeId;
use tokio::sync::mpsc::Receiver;

#[path = "support/carrier_net.rs"]
mod carrier_net;
use carrier_net::{Network, carrier, target};

const WAIT: Duration = Duration::from_secs(10);

/// A certificate for `id`'s key as GE `ge`, valid for `secs` from now.
fn cert_for(net: &Network, id: &Identity, ge: u32, serial: u64, secs: u64) -> Vec<u8> {
    let now = fpn_gms_client::now_unix();
    let public = id.node_key().unwrap().public();
    net.ca
        .issue_node_cert(&NodeCertRequest {
            node_key: &public,
            ge_id: ge,
            name: &format!("ge{ge}"),
            zone: "home.fpn.",
            serial,
            not_before: now.saturating_sub(1),
            not_after: now + secs,
        })
        .unwrap()
}

async fn recv(rx: &mut Receiver<Inbound>) -> Option<Inbound> {
    tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .ok()
        .flatten()
}

/// Sends until one frame arrives (a refused attempt backs off ~1 s).
async fn reaches(from: &QuicCarrier, to: &PeerTarget, rx: &mut Receiver<Inbound>) -> bool {
    let end = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < end {
        let _ = from.send(to, FrameKind::Data, b"hello");
        if recv(rx).await.is_some() {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn an_expired_certificate_is_refused_and_a_swapped_in_renewal_is_taken() {
    let net = Network::new();
    let (a, mut arx) = carrier(net.identity(1, 11));
    let mut b_id = net.identity(2, 12);
    b_id.cert = cert_for(&net, &b_id, 2, 13, 2);
    let (b, mut brx) = carrier(b_id.clone());
    // Expired: b is turned away as client and as server.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    b.send(&target(&a), FrameKind::Data, b"expired").unwrap();
    assert!(
        recv(&mut arx).await.is_none(),
        "a took b's expired certificate"
    );
    a.send(&target(&b), FrameKind::Data, b"to expired").unwrap();
    assert!(
        recv(&mut brx).await.is_none(),
        "a accepted b's expired server certificate"
    );
    assert!(
        !a.peers()
            .iter()
            .any(|p| p.ge == GeId(2) && p.state == PeerState::Up)
    );

    // The renewal, swapped in while the carrier runs.
    b.set_certificate(&cert_for(&net, &b_id, 2, 14, 60))
        .unwrap();
    assert!(
        reaches(&b, &target(&a), &mut arx).await,
        "b -> a after renewal"
    );
    // And as a server (a fresh carrier a2 dials b).
    let (a2, _a2rx) = carrier(net.identity(3, 15));
    assert!(
        reaches(&a2, &target(&b), &mut brx).await,
        "a2 -> b after renewal"
    );

    // A certificate of another GE is not taken.
    assert!(
        b.set_certificate(&cert_for(&net, &b_id, 9, 16, 60))
            .is_err()
    );
}
