//! The QUIC carrier between real carriers on loopback, with identities
//! issued by the GMS's own CA code (the certificates enrollment hands out).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fpn_gms_client::Identity;
use fpn_node::carrier::{
    Carrier, FrameKind, Inbound, PeerState, PeerStats, PeerTarget, QuicCarrier, QuicCarrierConfig,
};
use fpn_node::error::Error;
use fpn_proto::ge::GeId;
use tokio::sync::mpsc::Receiver;

#[path = "support/carrier_net.rs"]
mod carrier_net;
use carrier_net::{Network, carrier, target};

/// Generous bound for anything that should take milliseconds on loopback.
const WAIT: Duration = Duration::from_secs(10);

async fn recv(rx: &mut Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no frame in time")
        .expect("channel closed")
}

/// Waits until the carrier's view of `ge` satisfies `f`.
async fn until(c: &QuicCarrier, ge: GeId, f: impl Fn(&PeerStats) -> bool) -> PeerStats {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(p) = c.peers().into_iter().find(|p| p.ge == ge)
            && f(&p)
        {
            return p;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "peer {ge} never got there: {:?}",
            c.peers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nothing arrives for a while.
async fn silent(rx: &mut Receiver<Inbound>) {
    if let Ok(Some(f)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        panic!("unexpected frame {f:?}");
    }
}

#[tokio::test]
async fn frames_flow_both_ways_on_one_connection_and_name_the_sender() {
    let net = Network::new();
    let (a, mut arx) = carrier(net.identity(1, 11));
    let (b, mut brx) = carrier(net.identity(2, 12));
    assert_eq!((a.local_ge(), b.local_ge()), (GeId(1), GeId(2)));

    // Sent before any connection exists: queued, then delivered.
    a.send(&target(&b), FrameKind::Data, b"ping").unwrap();
    let f = recv(&mut brx).await;
    assert_eq!(
        (f.peer, f.kind, &f.payload[..]),
        (GeId(1), FrameKind::Data, &b"ping"[..])
    );
    assert_eq!(f.from, a.local_addr());

    // The answer reuses the connection a opened, whatever address b is given.
    let back = PeerTarget {
        ge: GeId(1),
        addrs: vec![],
        reflexive: None,
    };
    b.send(&back, FrameKind::Control, b"pong").unwrap();
    let f = recv(&mut arx).await;
    assert_eq!(
        (f.peer, f.kind, &f.payload[..]),
        (GeId(2), FrameKind::Control, &b"pong"[..])
    );

    // A control frame larger than any datagram goes on a stream.
    let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    a.send(&target(&b), FrameKind::Control, &big).unwrap();
    let f = recv(&mut brx).await;
    assert_eq!((f.kind, &f.payload[..]), (FrameKind::Control, &big[..]));

    // A burst arrives in order of sending as far as it arrives, and is counted.
    for i in 0..200u32 {
        a.send(&target(&b), FrameKind::Data, &i.to_be_bytes())
            .unwrap();
    }
    let mut got = 0;
    while let Ok(Some(f)) = tokio::time::timeout(Duration::from_secs(2), brx.recv()).await {
        assert_eq!(f.payload.len(), 4);
        got += 1;
        if got == 200 {
            break;
        }
    }
    assert!(got > 150, "only {got} of 200 datagrams arrived on loopback");

    let pa = until(&a, GeId(2), |p| p.state == PeerState::Up).await;
    let pb = until(&b, GeId(1), |p| p.state == PeerState::Up).await;
    assert_eq!((pa.connections, pb.connections), (1, 1));
    assert_eq!((pa.initiator, pb.initiator), (Some(GeId(1)), Some(GeId(1))));
    assert_eq!(pa.frames_out, 202);
    assert_eq!(pa.bytes_out, 4 + 5000 + 800);
    assert_eq!(pb.frames_in, 2 + got);
    assert_eq!(pa.frames_in, 1);
    assert!(pa.rtt.is_some() && pa.max_payload.unwrap() >= 1100);
    assert_eq!(pa.drops(), 0);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn a_certificate_from_a_foreign_ca_is_refused_both_ways() {
    let net = Network::new();
    let other = Network::new();
    let (a, mut arx) = carrier(net.identity(1, 11));
    // Same GE id and name as a member would have, wrong CA.
    let (m, mut mrx) = carrier(other.identity(2, 12));

    m.send(&target(&a), FrameKind::Data, b"let me in").unwrap();
    silent(&mut arx).await;
    let p = until(&m, GeId(1), |p| {
        p.state == PeerState::Idle && p.drops_unreachable == 1
    })
    .await;
    assert_eq!(p.connections, 0);
    assert!(!a.peers().iter().any(|p| p.state == PeerState::Up));

    // Nor does a accept m as a server.
    a.send(&target(&m), FrameKind::Data, b"hello?").unwrap();
    silent(&mut mrx).await;
    until(&a, GeId(2), |p| {
        p.state == PeerState::Idle && p.drops_unreachable == 1
    })
    .await;
    // During the back-off frames are dropped at once, with a typed error.
    assert!(matches!(
        a.send(&target(&m), FrameKind::Data, b"again"),
        Err(Error::CarrierDropped { .. })
    ));
}

#[tokio::test]
async fn an_address_answering_with_another_ge_is_refused() {
    let net = Network::new();
    let (a, _arx) = carrier(net.identity(1, 11));
    let (b, mut brx) = carrier(net.identity(2, 12));
    // a believes GE 3 lives at b's address.
    let wrong = PeerTarget {
        ge: GeId(3),
        addrs: vec![b.local_addr()],
        reflexive: None,
    };
    a.send(&wrong, FrameKind::Data, b"for 3").unwrap();
    until(&a, GeId(3), |p| {
        p.state == PeerState::Idle && p.drops_unreachable == 1
    })
    .await;
    silent(&mut brx).await;
    assert!(matches!(
        a.send(&target(&a), FrameKind::Data, b"self"),
        Err(Error::CarrierRefused { peer: GeId(1) })
    ));
}

/// `c` tried `ge` and was turned away: its link is idle after an attempt
/// (a failed connect, or a connection the peer closed at once: with TLS 1.3
/// the client finishes its handshake before the server checks its
/// certificate), and it now backs off with a typed drop.
async fn turned_away(c: &QuicCarrier, to: &PeerTarget, connections: u64) {
    until(c, to.ge, |p| {
        p.state == PeerState::Idle && (p.drops_unreachable >= 1 || p.connections > connections)
    })
    .await;
    assert!(matches!(
        c.send(to, FrameKind::Data, b"again"),
        Err(Error::CarrierDropped { .. })
    ));
}

/// Waits out the back-off after a refusal (1 s by default).
async fn back_off() {
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

#[tokio::test]
async fn a_revoked_serial_is_cut_off_and_refused() {
    let net = Network::new();
    let (a, mut arx) = carrier(net.identity(1, 11));
    let (b, mut brx) = carrier(net.identity(2, 12));
    b.send(&target(&a), FrameKind::Data, b"hi").unwrap();
    recv(&mut arx).await;
    until(&b, GeId(1), |p| p.state == PeerState::Up).await;

    a.revoke_serials(&[12]);
    // a closed the connection at once; b sees it go down.
    assert_eq!(a.peers()[0].state, PeerState::Idle);
    until(&b, GeId(1), |p| p.state != PeerState::Up).await;
    back_off().await;
    // b's new attempt is refused in the handshake; nothing reaches a.
    b.send(&target(&a), FrameKind::Data, b"still me").unwrap();
    turned_away(&b, &target(&a), 1).await;
    silent(&mut arx).await;
    // a does not accept b as a server either.
    a.send(&target(&b), FrameKind::Data, b"to b").unwrap();
    turned_away(&a, &target(&b), 1).await;
    silent(&mut brx).await;

    // The same GE with a new certificate (re-enrolled) is welcome again.
    let (b2, _b2rx) = carrier(net.identity(2, 13));
    b2.send(&target(&a), FrameKind::Data, b"new me").unwrap();
    let f = recv(&mut arx).await;
    assert_eq!((f.peer, &f.payload[..]), (GeId(2), &b"new me"[..]));
}

#[tokio::test]
async fn a_revoked_ge_is_cut_off_and_refused() {
    let net = Network::new();
    let (a, mut arx) = carrier(net.identity(1, 11));
    let (b, _brx) = carrier(net.identity(2, 12));
    b.send(&target(&a), FrameKind::Data, b"hi").unwrap();
    recv(&mut arx).await;
    until(&a, GeId(2), |p| p.state == PeerState::Up).await;

    a.revoke_ge(GeId(2));
    until(&b, GeId(1), |p| p.state != PeerState::Up).await;
    assert!(matches!(
        a.send(&target(&b), FrameKind::Data, b"x"),
        Err(Error::CarrierRefused { peer: GeId(2) })
    ));
    back_off().await;
    b.send(&target(&a), FrameKind::Data, b"still me").unwrap();
    turned_away(&b, &target(&a), 1).await;
    silent(&mut arx).await;
    // Even with a fresh certificate: the GE itself is refused.
    let (b2, _b2rx) = carrier(net.identity(2, 13));
    b2.send(&target(&a), FrameKind::Data, b"new me").unwrap();
    turned_away(&b2, &target(&a), 0).await;
    silent(&mut arx).await;
}

#[tokio::test]
async fn an_oversized_data_frame_is_a_typed_and_counted_drop() {
    let net = Network::new();
    let (a, _arx) = carrier(net.identity(1, 11));
    let (b, mut brx) = carrier(net.identity(2, 12));
    a.send(&target(&b), FrameKind::Data, b"hi").unwrap();
    recv(&mut brx).await;
    let max = until(&a, GeId(2), |p| p.state == PeerState::Up)
        .await
        .max_payload
        .unwrap();

    let err = a
        .send(&target(&b), FrameKind::Data, &vec![0u8; 1500])
        .unwrap_err();
    match err {
        Error::CarrierTooLarge { peer, size, max: m } => {
            assert_eq!((peer, size), (GeId(2), 1500));
            assert!(m < 1500 && m >= max, "max {m}, was {max}");
        }
        e => panic!("unexpected {e}"),
    }
    assert_eq!(a.peers()[0].drops_too_large, 1);
    // A frame of exactly the reported size goes through.
    let max = a.peers()[0].max_payload.unwrap();
    a.send(&target(&b), FrameKind::Data, &vec![7u8; max])
        .unwrap();
    let f = recv(&mut brx).await;
    assert_eq!(f.payload.len(), max);
    assert_eq!(a.peers()[0].drops(), 1);
}

#[tokio::test]
async fn simultaneous_connects_end_with_one_working_connection() {
    let net = Network::new();
    for round in 0..5u64 {
        let (a, mut arx) = carrier(net.identity(1, 100 + round));
        let (b, mut brx) = carrier(net.identity(2, 200 + round));
        // Both start connecting before either connection exists.
        a.send(&target(&b), FrameKind::Data, b"from a").unwrap();
        b.send(&target(&a), FrameKind::Data, b"from b").unwrap();
        assert_eq!(&recv(&mut brx).await.payload[..], b"from a");
        assert_eq!(&recv(&mut arx).await.payload[..], b"from b");
        // Both settle on the connection GE 1 opened.
        let one = |p: &PeerStats| p.state == PeerState::Up && p.initiator == Some(GeId(1));
        until(&a, GeId(2), one).await;
        until(&b, GeId(1), one).await;
        // Let a losing connection's close arrive, then check it still works.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pa = until(&a, GeId(2), one).await;
        let pb = until(&b, GeId(1), one).await;
        assert_eq!(pa.addr, Some(b.local_addr()), "round {round}");
        assert_eq!(pb.addr, Some(a.local_addr()), "round {round}");
        a.send(&target(&b), FrameKind::Data, b"again a").unwrap();
        b.send(&target(&a), FrameKind::Data, b"again b").unwrap();
        assert_eq!(&recv(&mut brx).await.payload[..], b"again a");
        assert_eq!(&recv(&mut arx).await.payload[..], b"again b");
        a.close().await;
        b.close().await;
    }
}

#[tokio::test]
async fn a_closed_carrier_refuses_to_send_and_peers_see_it_go() {
    let net = Network::new();
    let (a, _arx) = carrier(net.identity(1, 11));
    let (b, mut brx) = carrier(net.identity(2, 12));
    a.send(&target(&b), FrameKind::Data, b"hi").unwrap();
    recv(&mut brx).await;
    a.close().await;
    assert!(matches!(
        a.send(&target(&b), FrameKind::Data, b"x"),
        Err(Error::CarrierClosed)
    ));
    until(&b, GeId(1), |p| p.state == PeerState::Idle).await;
}

#[test]
fn bad_settings_are_typed_errors() {
    let net = Network::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _g = rt.enter();
    let mut cfg = QuicCarrierConfig::new(net.identity(1, 1));
    cfg.initial_mtu = 1000;
    assert!(matches!(
        QuicCarrier::bind(cfg),
        Err(Error::CarrierConfig {
            setting: "initial_mtu",
            ..
        })
    ));
    let mut cfg = QuicCarrierConfig::new(net.identity(1, 1));
    cfg.keep_alive = cfg.idle_timeout;
    assert!(QuicCarrier::bind(cfg).is_err());
    // A port that is taken.
    let (a, _rx) = {
        let mut cfg = QuicCarrierConfig::new(net.identity(1, 1));
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        QuicCarrier::bind(cfg).unwrap()
    };
    let mut cfg = QuicCarrierConfig::new(net.identity(2, 2));
    cfg.listen = a.local_addr();
    assert!(matches!(
        QuicCarrier::bind(cfg),
        Err(Error::CarrierBind { .. })
    ));
}

/// A carrier in another process (`examples/carrier_echo.rs`): it can be killed
/// (SIGKILL, no CONNECTION_CLOSE) and started again on the same port.
struct ChildCarrier {
    child: Child,
    port: u16,
}

impl ChildCarrier {
    /// Starts the child and waits until it listens.
    fn start(dir: &Path, port: u16, greet: Option<std::net::SocketAddr>) -> Self {
        let mut cmd = Command::new(echo_binary());
        cmd.arg(dir).arg(port.to_string());
        if let Some(a) = greet {
            cmd.arg(a.to_string());
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let port = BufReader::new(out)
            .lines()
            .map_while(|l| l.ok())
            .find_map(|l| l.strip_prefix("port ").and_then(|p| p.parse().ok()))
            .expect("the child carrier did not start");
        Self { child, port }
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// SIGKILL: the process ends without closing anything.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildCarrier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The echo carrier example, built by cargo next to this test binary
/// (`cargo test` and `cargo build --all-targets` build examples).
fn echo_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/carrier-HASH -> target/<profile>/examples/
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join("carrier_echo");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p fpn-node --examples`",
        path.display()
    );
    path
}

/// Sends to `to` every 100 ms until a frame comes back (the child echoes);
/// returns how long that took.
async fn until_echo(a: &QuicCarrier, rx: &mut Receiver<Inbound>, to: &PeerTarget) -> Duration {
    let start = tokio::time::Instant::now();
    for i in 0..100u32 {
        // Drops while the connection heals are expected.
        let _ = a.send(to, FrameKind::Data, &i.to_be_bytes());
        if let Ok(Some(f)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            assert_eq!(f.peer, to.ge);
            return start.elapsed();
        }
    }
    panic!("no echo from {} within 10 s", to.ge);
}

fn local_carrier(id: Identity) -> (QuicCarrier, Receiver<Inbound>) {
    let mut cfg = QuicCarrierConfig::new(id);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.connect_timeout = Duration::from_secs(1);
    QuicCarrier::bind(cfg).unwrap()
}

/// Far below the 30 s idle timeout a dead connection would otherwise last.
const HEAL: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_crashed_and_restarted_peer_we_connected_to_is_reached_again_at_once() {
    let net = Network::new();
    let (a, mut arx) = local_carrier(net.identity(1, 11));
    let dir = net.identity_dir(2, 12);
    let mut b = ChildCarrier::start(&dir, 0, None);
    let to = PeerTarget {
        ge: GeId(2),
        addrs: vec![b.addr()],
        reflexive: None,
    };
    // a opens the connection: b's stateless reset token is what a holds.
    until_echo(&a, &mut arx, &to).await;
    assert_eq!(
        until(&a, GeId(2), |p| p.state == PeerState::Up)
            .await
            .connections,
        1
    );

    b.kill();
    let _b = ChildCarrier::start(&dir, b.port, None);
    let took = until_echo(&a, &mut arx, &to).await;
    eprintln!("a -> restarted b: echo after {took:?}");
    assert!(took < HEAL, "healed only after {took:?}");
    let p = until(&a, GeId(2), |p| p.state == PeerState::Up).await;
    assert_eq!((p.connections, p.initiator), (2, Some(GeId(1))));
}

#[tokio::test]
async fn a_crashed_and_restarted_peer_that_connected_to_us_is_reached_again_at_once() {
    let net = Network::new();
    let (a, mut arx) = local_carrier(net.identity(1, 11));
    let dir = net.identity_dir(2, 12);
    // b opens the connection: a, its server, resets with the token b
    // handed out after the handshake (quinn switches to that connection
    // id at once).
    let mut b = ChildCarrier::start(&dir, 0, Some(a.local_addr()));
    assert_eq!(&recv(&mut arx).await.payload[..], b"hello again");
    let to = PeerTarget {
        ge: GeId(2),
        addrs: vec![b.addr()],
        reflexive: None,
    };
    until_echo(&a, &mut arx, &to).await;
    assert_eq!(
        until(&a, GeId(2), |p| p.state == PeerState::Up)
            .await
            .initiator,
        Some(GeId(2))
    );

    b.kill();
    let _b = ChildCarrier::start(&dir, b.port, None);
    let took = until_echo(&a, &mut arx, &to).await;
    eprintln!("a -> restarted b (b had connected): echo after {took:?}");
    assert!(took < HEAL, "healed only after {took:?}");
}

#[tokio::test]
async fn a_restarted_peer_that_connects_first_replaces_our_old_connection() {
    let net = Network::new();
    let (a, mut arx) = local_carrier(net.identity(1, 11));
    let dir = net.identity_dir(2, 12);
    let mut b = ChildCarrier::start(&dir, 0, None);
    let to = PeerTarget {
        ge: GeId(2),
        addrs: vec![b.addr()],
        reflexive: None,
    };
    until_echo(&a, &mut arx, &to).await;
    // a's connection (a has the lower id) is older than a simultaneous
    // open could make it (twice the connect timeout of 1 s, and 1 s).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        until(&a, GeId(2), |p| p.state == PeerState::Up)
            .await
            .initiator,
        Some(GeId(1))
    );

    b.kill();
    let _b = ChildCarrier::start(&dir, b.port, Some(a.local_addr()));
    assert_eq!(&recv(&mut arx).await.payload[..], b"hello again");
    // a takes b's new connection at once, rather than its own dead one.
    let p = until(&a, GeId(2), |p| p.initiator == Some(GeId(2))).await;
    assert_eq!((p.state, p.connections), (PeerState::Up, 2));
    // The state above is the proof (the new connection, b's, is the one
    // in use); the echo on it only has to come long before the dead
    // connection's idle timeout (a 1 s bound flaked on a loaded machine).
    let took = until_echo(&a, &mut arx, &to).await;
    assert!(took < HEAL, "echo after {took:?}");
}

#[tokio::test]
async fn a_connection_whose_data_gets_no_answer_is_given_up_long_before_the_idle_timeout() {
    let net = Network::new();
    let (a, mut arx) = local_carrier(net.identity(1, 11));
    let dir = net.identity_dir(2, 12);
    let mut b = ChildCarrier::start(&dir, 0, None);
    let to = PeerTarget {
        ge: GeId(2),
        addrs: vec![b.addr()],
        reflexive: None,
    };
    until_echo(&a, &mut arx, &to).await;
    // b is gone for good: nothing resets the connection.
    b.kill();
    let start = tokio::time::Instant::now();
    let mut sent = 0u32;
    while a.peers()[0].state == PeerState::Up {
        assert!(
            start.elapsed() < HEAL,
            "still up after {:?}",
            start.elapsed()
        );
        let _ = a.send(&to, FrameKind::Data, &sent.to_be_bytes());
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "a gave up the connection to the dead b after {:?}",
        start.elapsed()
    );
    // The next frame tries a new connection (and fails: nobody listens).
    a.send(&to, FrameKind::Data, b"anyone?").unwrap();
    until(&a, GeId(2), |p| {
        p.connections == 1 && p.state == PeerState::Idle && p.drops_unreachable >= 1
    })
    .await;
}
