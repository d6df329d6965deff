//! The stub answers names of the zone from the live name table, checked with
//! the real `dig` over UDP and TCP.

mod dns_util;

use std::net::{Ipv4Addr, Ipv6Addr};

use dns_util::{config, dig, start};
use fpn_node::dns::{DnsStatsSnapshot, NameTable, Target};
use fpn_node::error::Error;

fn table() -> NameTable {
    let t = NameTable::new();
    t.insert(
        "b",
        Target::Peer {
            v4: Ipv4Addr::new(100, 64, 0, 2),
            v6: Some("fd00:5c::2".parse::<Ipv6Addr>().unwrap()),
        },
    )
    .unwrap();
    t.insert("c", Target::peer(Ipv4Addr::new(100, 64, 0, 3)))
        .unwrap();
    t.insert("nas.site", Target::Vin(Ipv4Addr::new(100, 127, 0, 10)))
        .unwrap();
    t
}

#[tokio::test]
async fn a_and_aaaa_of_peers() {
    let stub = start(config(&table(), vec![])).await;
    let d = dig(stub.addr, &["b.home.fpn", "A"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.has_flag("aa"), "{}", d.raw);
    assert_eq!(d.answers_of("A"), ["100.64.0.2"], "{}", d.raw);
    // TTL is the configured one.
    assert_eq!(d.answer[0][1], "60", "{}", d.raw);

    let d = dig(stub.addr, &["b.home.fpn", "AAAA"]).await;
    assert_eq!(d.answers_of("AAAA"), ["fd00:5c::2"], "{}", d.raw);

    // Case-insensitive, and the answer keeps the client's spelling.
    let d = dig(stub.addr, &["B.Home.FPN", "A"]).await;
    assert_eq!(d.answers_of("A"), ["100.64.0.2"], "{}", d.raw);
    assert_eq!(d.answer[0][0], "B.Home.FPN.", "{}", d.raw);

    // A VIN answers like a peer's address.
    let d = dig(stub.addr, &["nas.site.home.fpn", "A"]).await;
    assert_eq!(d.answers_of("A"), ["100.127.0.10"], "{}", d.raw);

    // The same over TCP.
    let d = dig(stub.addr, &["+tcp", "c.home.fpn", "A"]).await;
    assert_eq!(d.answers_of("A"), ["100.64.0.3"], "{}", d.raw);
}

#[tokio::test]
async fn unknown_names_get_nxdomain_with_the_soa() {
    let t = table();
    let stub = start(config(&t, vec![])).await;
    for name in ["nope.home.fpn", "x.b.home.fpn"] {
        let d = dig(stub.addr, &[name, "A"]).await;
        assert_eq!(d.status, "NXDOMAIN", "{name}: {}", d.raw);
        assert!(d.has_flag("aa"), "{}", d.raw);
        assert!(d.answer.is_empty(), "{}", d.raw);
        assert_eq!(d.authority.len(), 1, "{}", d.raw);
        let soa = &d.authority[0];
        assert_eq!(soa[0], "home.fpn.");
        assert_eq!(soa[3], "SOA");
        assert_eq!(soa[6], t.serial().to_string(), "serial is the table's");
    }
}

#[tokio::test]
async fn other_types_get_nodata() {
    let stub = start(config(&table(), vec![])).await;
    for (name, qtype) in [
        ("c.home.fpn", "AAAA"),
        ("b.home.fpn", "MX"),
        ("b.home.fpn", "TXT"),
        ("nas.site.home.fpn", "AAAA"),
        // An empty non-terminal exists: NODATA, not NXDOMAIN.
        ("site.home.fpn", "A"),
        ("home.fpn", "A"),
    ] {
        let d = dig(stub.addr, &[name, qtype]).await;
        assert_eq!(d.status, "NOERROR", "{name} {qtype}: {}", d.raw);
        assert!(d.answer.is_empty(), "{name} {qtype}: {}", d.raw);
        assert_eq!(d.authority.len(), 1, "{}", d.raw);
        assert_eq!(d.authority[0][3], "SOA", "{}", d.raw);
    }
}

#[tokio::test]
async fn the_apex_answers_soa_and_ns() {
    let stub = start(config(&table(), vec![])).await;
    let d = dig(stub.addr, &["home.fpn", "SOA"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    let soa = d.answers_of("SOA");
    assert_eq!(soa.len(), 1, "{}", d.raw);
    assert!(
        soa[0].starts_with("home.fpn. nobody.invalid. "),
        "{}",
        d.raw
    );
    let d = dig(stub.addr, &["home.fpn", "NS"]).await;
    assert_eq!(d.answers_of("NS"), ["home.fpn."], "{}", d.raw);
}

#[tokio::test]
async fn table_changes_show_on_the_next_query() {
    let t = table();
    let stub = start(config(&t, vec![])).await;
    let d = dig(stub.addr, &["d.home.fpn", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);

    t.insert("d", Target::peer(Ipv4Addr::new(100, 64, 0, 4)))
        .unwrap();
    let d = dig(stub.addr, &["d.home.fpn", "A"]).await;
    assert_eq!(d.answers_of("A"), ["100.64.0.4"], "{}", d.raw);

    t.insert("d", Target::peer(Ipv4Addr::new(100, 64, 0, 44)))
        .unwrap();
    let d = dig(stub.addr, &["d.home.fpn", "A"]).await;
    assert_eq!(d.answers_of("A"), ["100.64.0.44"], "{}", d.raw);

    t.replace_all([("e", Target::peer(Ipv4Addr::new(100, 64, 0, 5)))])
        .unwrap();
    let d = dig(stub.addr, &["d.home.fpn", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    let d = dig(stub.addr, &["+tcp", "e.home.fpn", "A"]).await;
    assert_eq!(d.answers_of("A"), ["100.64.0.5"], "{}", d.raw);
}

#[tokio::test]
async fn malformed_requests_get_formerr_and_are_counted() {
    let stub = start(config(&table(), vec![])).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(stub.addr).await.unwrap();
    // A header claiming one question, followed by a broken name.
    let bad = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0x3f, b'x'];
    sock.send(&bad).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("an answer to a malformed request")
        .unwrap();
    assert_eq!(&buf[..2], &[0xab, 0xcd], "id echoed");
    assert_eq!(buf[2] & 0x80, 0x80, "a response");
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");
    assert_eq!(n, 12);
    // Runts and responses get nothing; the stub keeps serving.
    sock.send(&[1, 2, 3]).await.unwrap();
    let d = dig(stub.addr, &["b.home.fpn", "A"]).await;
    assert_eq!(d.answers_of("A"), ["100.64.0.2"], "{}", d.raw);
    // EDNS version 1 gets BADVERS.
    let d = dig(stub.addr, &["+edns=1", "+noednsneg", "b.home.fpn", "A"]).await;
    assert_eq!(d.status, "BADVERS", "{}", d.raw);
    let s: DnsStatsSnapshot = stub.stats.snapshot();
    assert_eq!(s.answered, 1, "{s}");
    assert_eq!(s.malformed, 3, "{s}");
    assert_eq!(s.forwarded + s.failed, 0, "{s}");
}

#[tokio::test]
async fn binding_a_taken_address_is_a_typed_error() {
    let stub = start(config(&table(), vec![])).await;
    let mut cfg = config(&table(), vec![]);
    cfg.listen = stub.addr;
    let err = fpn_node::dns::DnsStub::bind(cfg).await.unwrap_err();
    assert!(matches!(err, Error::DnsBind { .. }), "{err}");

    let mut cfg = config(&table(), vec![]);
    cfg.upstream_rounds = 0;
    let err = fpn_node::dns::DnsStub::bind(cfg).await.unwrap_err();
    assert!(matches!(err, Error::DnsConfig { .. }), "{err}");
    // Never on a wildcard address: that would be an open resolver.
    let mut cfg = config(&table(), vec![]);
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    let err = fpn_node::dns::DnsStub::bind(cfg).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::DnsConfig {
                setting: "listen",
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        fpn_node::dns::DnsConfig::new(stub.addr, "bad..zone", NameTable::new()),
        Err(Error::DnsName { .. })
    ));
}
