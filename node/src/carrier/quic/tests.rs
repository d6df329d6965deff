//! The carrier's own state, seen from inside: the transport settings and
//! the send path that takes no lock shared between peers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fpn_gms::ca::{Ca, NodeCertRequest, generate_node_key};
use fpn_gms_client::Identity;
use fpn_proto::ge::GeId;

use super::super::PeerState;
use super::{Carrier, FrameKind, PeerTarget, QuicCarrier, QuicCarrierConfig};
use crate::error::Error;

/// GE `id`'s identity, issued by `ca`.
fn identity(ca: &Ca, id: u32) -> Identity {
    let now = fpn_gms_client::now_unix();
    let (key, public) = generate_node_key().unwrap();
    let cert = ca
        .issue_node_cert(&NodeCertRequest {
            node_key: &public,
            ge_id: id,
            name: &format!("ge{id}"),
            zone: "home.fpn.",
            serial: u64::from(id),
            not_before: now,
            not_after: now + 600,
        })
        .unwrap();
    Identity::from_parts(
        "127.0.0.1:1".into(),
        "home.fpn.".into(),
        ca.public_key(),
        ca.cert_der().to_vec(),
        cert,
        Vec::new(),
        key,
    )
    .unwrap()
}

#[test]
fn the_gso_setting_reaches_quinn() {
    let ca = Ca::generate(fpn_gms_client::now_unix()).unwrap();
    let mut cfg = QuicCarrierConfig::new(identity(&ca, 1));
    let on = format!("{:?}", super::conn::transport(&cfg));
    assert!(on.contains("enable_segmentation_offload: true"), "{on}");
    cfg.segmentation_offload = false;
    let off = format!("{:?}", super::conn::transport(&cfg));
    assert!(off.contains("enable_segmentation_offload: false"), "{off}");
}

/// Two carriers on loopback, `a` connected to `b` (one frame delivered).
struct Pair {
    rt: tokio::runtime::Runtime,
    a: Arc<QuicCarrier>,
    b: QuicCarrier,
    brx: tokio::sync::mpsc::Receiver<super::Inbound>,
    to_b: PeerTarget,
}

impl Pair {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ca = Ca::generate(fpn_gms_client::now_unix()).unwrap();
        let bind = |id| {
            let mut cfg = QuicCarrierConfig::new(identity(&ca, id));
            cfg.listen = "127.0.0.1:0".parse().unwrap();
            rt.block_on(async { QuicCarrier::bind(cfg).unwrap() })
        };
        let (a, _arx) = bind(1);
        let (b, mut brx) = bind(2);
        let to_b = PeerTarget {
            ge: b.local_ge(),
            addrs: vec![b.local_addr()],
            reflexive: None,
        };
        a.send(&to_b, FrameKind::Data, b"first").unwrap();
        let f = rt.block_on(recv(&mut brx));
        assert_eq!(&f.payload[..], b"first");
        assert_eq!(a.peers()[0].state, PeerState::Up);
        Self {
            rt,
            a: Arc::new(a),
            b,
            brx,
            to_b,
        }
    }

    fn recv(&mut self) -> bytes::Bytes {
        self.rt.block_on(recv(&mut self.brx)).payload
    }
}

async fn recv(rx: &mut tokio::sync::mpsc::Receiver<super::Inbound>) -> super::Inbound {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no frame within 5 s")
        .expect("carrier gone")
}

#[test]
fn a_frame_to_a_peer_that_is_up_does_not_wait_for_the_peer_table() {
    let mut p = Pair::new();
    // Someone holds the table (a connection being set up to another peer,
    // a status read): frames to a peer that is up go on regardless.
    let table = p.a.inner.lock();
    let (done, sent) = std::sync::mpsc::channel();
    let (a, to_b) = (p.a.clone(), p.to_b.clone());
    let sender = std::thread::spawn(move || {
        let r = a.send(&to_b, FrameKind::Data, b"while the table is held");
        done.send(r.is_ok()).unwrap();
    });
    let waited = sent.recv_timeout(Duration::from_secs(5));
    drop(table);
    sender.join().unwrap();
    assert_eq!(
        waited,
        Ok(true),
        "the send waited for the peer table's lock"
    );
    assert_eq!(&p.recv()[..], b"while the table is held");
    assert_eq!(p.a.peers()[0].frames_out, 2);
}

#[test]
fn the_lock_free_path_settles_once_per_connection_and_leaves_moves_and_revocations_to_the_table() {
    let mut p = Pair::new();
    let settled = AtomicUsize::new(0);
    let settle = || {
        settled.fetch_add(1, Ordering::Relaxed);
    };
    for i in 0..3u8 {
        assert!(matches!(
            p.a.send_up(GeId(2), FrameKind::Data, &[i], settle),
            Some(Ok(()))
        ));
        assert_eq!(&p.recv()[..], &[i]);
    }
    assert_eq!(settled.load(Ordering::Relaxed), 1);

    // A move away from loopback: the connection must be opened again, so
    // the lock-free path gives the frame to the table, which redials.
    p.a.network_changed(&[]);
    assert!(
        p.a.send_up(GeId(2), FrameKind::Data, b"x", settle)
            .is_none()
    );
    p.a.send(&p.to_b, FrameKind::Data, b"after the move")
        .unwrap();
    assert_eq!(&p.recv()[..], b"after the move");
    assert!(matches!(
        p.a.send_up(GeId(2), FrameKind::Data, b"on the new one", settle),
        Some(Ok(()))
    ));
    assert_eq!(&p.recv()[..], b"on the new one");
    assert_eq!(settled.load(Ordering::Relaxed), 2);
    assert_eq!(p.a.peers()[0].connections, 2);

    // Revoked: nothing goes on the lock-free path the moment revoke returns.
    p.a.revoke_ge(GeId(2));
    assert!(
        p.a.send_up(GeId(2), FrameKind::Data, b"y", settle)
            .is_none()
    );
    assert!(matches!(
        p.a.send(&p.to_b, FrameKind::Data, b"y"),
        Err(Error::CarrierRefused { peer: GeId(2) })
    ));
    p.rt.block_on(async {
        p.a.close().await;
        p.b.close().await;
    });
}
