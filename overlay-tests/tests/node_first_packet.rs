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

/// TCP segments of a capture: (src, dst, src port, dst port, flags,
/// payload length).
fn tcp_segments(
    pcap: &fpn_lab::Pcap,
) -> Vec<(std::net::IpAddr, std::net::IpAddr, u16, u16, u8, usize)> {
    pcap.packets()
        .iter()
        .filter_map(|p| p.ip())
        .filter(|ip| ip.len() >= 40 && ip[0] >> 4 == 4 && ip[9] == 6)
        .filter_map(|ip| {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let t = ip.get(ihl..)?;
            let doff = usize::from(t.get(12)? >> 4) * 4;
            Some((
                std::net::IpAddr::from([ip[12], ip[13], ip[14], ip[15]]),
                std::net::IpAddr::from([ip[16], ip[17], ip[18], ip[19]]),
                u16::from_be_bytes([t[0], t[1]]),
                u16::from_be_bytes([t[2], t[3]]),
                *t.get(13)?,
                total.saturating_sub(ihl + doff),
            ))
        })
        .collect()
}

/// Issue 8 leftover (docs/DESIGN-NOTES.md note 36): with the path native,
/// a new TCP connection's SYN and first data leave natively, as the
/// application's own packets between the underlay addresses: b sends its
/// CDN only once its nftables rule for the flow is in, a releases the held
/// SYN once its own is, so no packet of the connection rides QUIC (no
/// 300 ms grace). After the ping the connection is fast-opened (note 64):
/// then the FOK plays the CDN's part.
#[test]
fn a_new_tcp_connection_s_syn_and_first_data_leave_natively() {
    let ov = common::two_nodes();
    let lab = ov.lab();
    let a_pub = ov.underlay("a", "pub-a").unwrap();
    let b_pub = ov.underlay("b", "pub-b").unwrap();
    let _echo = common::echo_server(lab, "b", 7002);
    let p = ov.ping("a", "b", 2).unwrap();
    assert!(p.ok, "a -> b: {:?}", p.output);
    common::wait_native(&ov, "a", "b");
    common::wait_native(&ov, "b", "a");
    let counter = |n: &str, c: &str| ov.status(n).unwrap()["counters"][c].as_u64().unwrap_or(0);
    let native_out = |n: &str| counter(n, "native_out");
    let before = (native_out("a"), native_out("b"));
    let cap = lab
        .capture(
            "inet",
            "pub-b",
            &format!("tcp port 7002 and host {a_pub} and host {b_pub}"),
        )
        .unwrap();
    let b = fpn_lab::overlay::Overlay::fqdn("b");
    let out = common::echo_send(lab, "a", &format!("{b}:7002"), "first data", false);
    assert!(out.success(), "tcp echo: {}", out.stderr);
    let segs = cap
        .wait_for(Duration::from_secs(5), |p| {
            tcp_segments(p)
                .iter()
                .any(|s| s.0 == b_pub && s.2 == 7002 && s.5 > 0)
        })
        .expect("the echo never came back natively");
    let segs = tcp_segments(&segs);
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    assert!(
        segs.iter()
            .any(|s| (s.0, s.1, s.3) == (a_pub, b_pub, 7002) && s.4 & (SYN | ACK) == SYN),
        "no native SYN {a_pub} -> {b_pub}:7002: {segs:?}"
    );
    assert!(
        segs.iter()
            .any(|s| (s.0, s.1, s.2) == (b_pub, a_pub, 7002) && s.4 & (SYN | ACK) == SYN | ACK),
        "no native SYN-ACK: {segs:?}"
    );
    assert!(
        segs.iter()
            .any(|s| (s.0, s.1, s.3) == (a_pub, b_pub, 7002) && s.5 > 0),
        "the first data did not leave natively: {segs:?}"
    );
    // Nothing of the connection on QUIC, either way: every packet each
    // node sent on it counts as native (`native_out`; `data_out` counts
    // both carriers).
    for (n, peer, before) in [("a", "b", before.0), ("b", "a", before.1)] {
        let flows = ov.flows_with(n, peer).unwrap();
        let tcp = flows
            .iter()
            .find(|f| f["proto"] == "tcp" && (f["dport"] == 7002 || f["sport"] == 7002))
            .unwrap_or_else(|| panic!("{n} has no flow for the connection: {flows:?}"));
        let sent = tcp["packets_out"].as_u64().unwrap();
        assert!(sent >= 3, "{n}: {tcp}");
        assert_eq!(
            native_out(n) - before,
            sent,
            "{n}: the connection's packets did not all leave natively: {tcp}"
        );
    }
    for n in ["a", "b"] {
        assert_eq!(counter(n, "native_ready_timeouts"), 0, "{n}");
    }
    assert!(
        counter("a", "dprp_fast_opened") >= 1,
        "the connection was negotiated, not fast-opened"
    );
}
