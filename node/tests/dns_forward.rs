//! Names outside the zone go to the upstream resolvers: a real DNS server
//! (hickory-server) on loopback, queried through the stub with the real
//! `dig`.

mod dns_util;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dns_util::{Listen, config, dig, start, upstream};
use fpn_node::dns::{NameTable, Target};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::{TcpListener, UdpSocket};

fn table() -> NameTable {
    let t = NameTable::new();
    t.insert("b", Target::peer(Ipv4Addr::new(100, 64, 0, 2)))
        .unwrap();
    t
}

/// A loopback address where nothing listens (bound, then closed).
async fn closed_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.local_addr().unwrap()
}

#[tokio::test]
async fn other_names_are_forwarded() {
    let up = upstream(Listen::Both).await;
    let stub = start(config(&table(), vec![up.addr])).await;
    let d = dig(stub.addr, &["www.example.test", "A"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.answers_of("A"), ["198.18.0.80"], "{}", d.raw);
    // The upstream's authoritative answer, relayed as is.
    assert!(d.has_flag("aa"), "{}", d.raw);
    let d = dig(stub.addr, &["nope.example.test", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    // Zone names still come from the table, not the upstream.
    let d = dig(stub.addr, &["b.home.fpn", "A"]).await;
    assert_eq!(d.answers_of("A"), ["100.64.0.2"], "{}", d.raw);
    let s = stub.stats.snapshot();
    assert_eq!((s.forwarded, s.answered, s.failed), (2, 1, 0), "{s}");
    up.stop().await;
}

#[tokio::test]
async fn tcp_queries_are_forwarded_over_tcp() {
    // This upstream has no UDP socket: only TCP forwarding reaches it.
    let up = upstream(Listen::TcpOnly).await;
    let mut cfg = config(&table(), vec![up.addr]);
    cfg.upstream_rounds = 1;
    let stub = start(cfg).await;
    let d = dig(stub.addr, &["+tcp", "www.example.test", "A"]).await;
    assert_eq!(d.answers_of("A"), ["198.18.0.80"], "{}", d.raw);
    let d = dig(stub.addr, &["+notcp", "www.example.test", "A"]).await;
    assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
    assert!(stub.stats.snapshot().upstream_tcp >= 1);
    up.stop().await;
}

#[tokio::test]
async fn truncated_answers_are_fetched_over_tcp() {
    let up = upstream(Listen::Both).await;
    let stub = start(config(&table(), vec![up.addr])).await;
    // The upstream truncates at the 1232 bytes the stub announces; the stub
    // fetches the 4.5 KB answer over TCP and, since the client takes 8 KB,
    // hands it over whole in one datagram. `+ignore`: dig itself must not
    // retry over TCP.
    let d = dig(
        stub.addr,
        &["+bufsize=8192", "+ignore", "big.example.test", "TXT"],
    )
    .await;
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(!d.has_flag("tc"), "{}", d.raw);
    assert_eq!(d.answers_of("TXT").len(), 20, "{}", d.raw);
    assert!(stub.stats.snapshot().upstream_tcp >= 1);

    // A client that takes less gets TC, and retries over TCP by itself.
    let d = dig(stub.addr, &["+ignore", "big.example.test", "TXT"]).await;
    assert!(d.has_flag("tc"), "{}", d.raw);
    assert!(d.answer.is_empty(), "{}", d.raw);
    let d = dig(stub.addr, &["+noedns", "big.example.test", "TXT"]).await;
    assert_eq!(d.answers_of("TXT").len(), 20, "{}", d.raw);
    up.stop().await;
}

#[tokio::test]
async fn upstream_down_gives_servfail_within_the_timeout() {
    let refused = closed_port().await;
    // A black hole: bound, never read, so no ICMP error either.
    let hole = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let hole_tcp = TcpListener::bind(hole.local_addr().unwrap()).await.unwrap();
    let mut cfg = config(&table(), vec![refused, hole.local_addr().unwrap()]);
    cfg.upstream_timeout = Duration::from_millis(300);
    cfg.upstream_rounds = 2;
    let stub = start(cfg).await;
    // dig waits 5 s: the stub's bound is 2 rounds x 2 upstreams x 300 ms.
    let d = dig(stub.addr, &["www.example.test", "A"]).await;
    assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
    let d = dig(stub.addr, &["+tcp", "www.example.test", "A"]).await;
    assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
    let s = stub.stats.snapshot();
    assert_eq!((s.failed, s.forwarded), (2, 0), "{s}");
    drop(hole_tcp);

    // No upstream at all: SERVFAIL too.
    let stub = start(config(&table(), vec![])).await;
    let d = dig(stub.addr, &["www.example.test", "A"]).await;
    assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
}

#[tokio::test]
async fn the_next_upstream_answers_when_the_first_is_down() {
    let up = upstream(Listen::Both).await;
    let hole = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(
        &table(),
        vec![closed_port().await, hole.local_addr().unwrap(), up.addr],
    );
    cfg.upstream_timeout = Duration::from_millis(300);
    cfg.upstream_rounds = 1;
    let stub = start(cfg).await;
    let d = dig(stub.addr, &["www.example.test", "A"]).await;
    assert_eq!(d.answers_of("A"), ["198.18.0.80"], "{}", d.raw);
    up.stop().await;
}

/// The stub rewrites transaction ids and accepts only the answer with its id
/// and question; the client gets its own id back. The upstream here is the
/// test itself, so it can see the forwarded query and send spoofed answers.
#[tokio::test]
async fn ids_are_rewritten_and_spoofed_answers_ignored() {
    let fake_up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(&table(), vec![fake_up.local_addr().unwrap()]);
    cfg.upstream_timeout = Duration::from_secs(3);
    cfg.upstream_rounds = 1;
    let stub = start(cfg).await;

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(stub.addr).await.unwrap();
    let mut q = Message::new(
        0x1234,
        hickory_proto::op::MessageType::Query,
        hickory_proto::op::OpCode::Query,
    );
    q.metadata.recursion_desired = true;
    let question = Query::query(
        Name::from_ascii("www.example.test.").unwrap(),
        RecordType::A,
    );
    q.add_query(question.clone());
    client.send(&q.to_vec().unwrap()).await.unwrap();

    let mut buf = vec![0u8; 2048];
    let (n, stub_side) = tokio::time::timeout(Duration::from_secs(5), fake_up.recv_from(&mut buf))
        .await
        .expect("the query reaches the upstream")
        .unwrap();
    let fwd = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(fwd.queries, vec![question.clone()]);
    let id = fwd.metadata.id;

    let answer = |id: u16, name: &str, ip: [u8; 4]| {
        let mut m = Message::response(id, hickory_proto::op::OpCode::Query);
        let name = Name::from_ascii(name).unwrap();
        m.add_query(Query::query(name.clone(), RecordType::A));
        m.add_answer(hickory_proto::rr::Record::from_rdata(
            name,
            60,
            hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A(ip.into())),
        ));
        m.to_vec().unwrap()
    };
    // Wrong id, then right id but another question: both ignored.
    fake_up
        .send_to(
            &answer(id.wrapping_add(1), "www.example.test.", [198, 18, 6, 6]),
            stub_side,
        )
        .await
        .unwrap();
    fake_up
        .send_to(
            &answer(id, "evil.example.test.", [198, 18, 6, 6]),
            stub_side,
        )
        .await
        .unwrap();
    fake_up
        .send_to(
            &answer(id, "www.example.test.", [198, 18, 0, 80]),
            stub_side,
        )
        .await
        .unwrap();

    let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
        .await
        .expect("the client hears back")
        .unwrap();
    let got = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(got.metadata.id, 0x1234, "the client's id comes back");
    assert_eq!(got.answers.len(), 1);
    assert_eq!(
        got.answers[0].data,
        hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(198, 18, 0, 80)))
    );
}
