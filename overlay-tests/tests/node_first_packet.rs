//! Issue 4 acceptance, first packet: the first packet of a brand-new flow is
//! held while the flow is negotiated, not dropped. One UDP datagram, sent
//! once, to a peer the sender never talked to, arrives.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::overlay;
use fpn_lab::overlay::{Mode, NodeSpec, Spec};

#[test]
fn exactly_one_datagram_to_a_never_contacted_peer_arrives() {
    let ov = overlay(&Spec::new(
        &[(1, "home")],
        vec![
            NodeSpec::new("a", Mode::Op, &[1]),
            NodeSpec::new("b", Mode::Op, &[1]),
        ],
    ));
    let (a, b) = (ov.overlay_addr("a").unwrap(), ov.overlay_addr("b").unwrap());
    assert!(
        ov.flows_with("a", "b").unwrap().is_empty(),
        "a already has a flow with b"
    );

    // b listens on its overlay address (the socket lives in b's namespace).
    let rx = ov
        .lab()
        .run_in("b", move || {
            UdpSocket::bind(SocketAddr::new(b.into(), 7006))
        })
        .unwrap()
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    let payload = b"first packet of a new flow";
    let to = SocketAddr::new(b.into(), 7006);
    let sent = ov
        .lab()
        .run_in("a", move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.send_to(payload, to)
        })
        .unwrap()
        .unwrap();
    assert_eq!(sent, payload.len());

    let mut buf = [0u8; 1500];
    let (n, from) = rx
        .recv_from(&mut buf)
        .expect("the first datagram was dropped (not held during negotiation)");
    assert_eq!(&buf[..n], payload);
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(a),
        "source is a's overlay address"
    );
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(rx.recv_from(&mut buf).is_err(), "a second datagram arrived");

    let flows = ov.flows_with("a", "b").unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f["proto"] == "udp" && f["action"] == "encrypt"),
        "a's status: {flows:?}"
    );
}
