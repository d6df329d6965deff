//! The embedding API (what fpn-gms uses): open a zone in-process, serve it,
//! set and remove a GE's records without TSIG, and check with the real
//! `dig` that they are served; reopen and find them again.

mod common;

use std::net::IpAddr;
use std::process::Command;

use fpn_ddns::{Ddns, DdnsConfig, Error, Sockets};
use hickory_proto::rr::{Name, RecordType};

fn dig(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+norec",
            "+time=3",
            "+tries=2",
        ])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config(dir: &std::path::Path) -> DdnsConfig {
    DdnsConfig::new(Name::from_ascii("home.fpn.").unwrap(), dir.join("data"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ge_records_set_through_the_api_are_served_and_persist() {
    common::require_tools();
    let dir = tempfile::tempdir().unwrap();
    let ddns = Ddns::open(config(dir.path())).unwrap();
    let server = ddns
        .serve(Sockets::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap())
        .unwrap();
    let port = server.local_addrs()[0].port();
    let s0 = ddns.serial();

    let lips: Vec<IpAddr> = vec!["192.168.1.10".parse().unwrap(), "fd00::10".parse().unwrap()];
    let s1 = ddns
        .set_ge_records("nas", Some("198.18.0.7".parse().unwrap()), None, &lips)
        .await
        .unwrap();
    assert_eq!(s1, s0 + 1);
    let out = dig(port, &["nas.home.fpn.", "A"]);
    assert!(out.contains("ADDITIONAL: 3"), "A, two LIP and OPT:\n{out}");
    assert!(out.contains("TYPE65300 \\# 4 C0A8010A"), "{out}");
    assert!(
        out.contains("TYPE65300 \\# 16 FD000000000000000000000000000010"),
        "{out}"
    );
    let recs = ddns.records("nas").unwrap();
    assert_eq!(recs.len(), 3);
    assert!(
        recs.iter()
            .any(|r| r.record_type() == RecordType::Unknown(65300))
    );

    // replace: the old address goes, the LIPs go
    ddns.set_ge_records(
        "nas.home.fpn.",
        Some("198.18.0.8".parse().unwrap()),
        Some("2001:db8::8".parse().unwrap()),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        dig(port, &["+short", "nas.home.fpn.", "A"]).trim(),
        "198.18.0.8"
    );
    assert_eq!(
        dig(port, &["+short", "nas.home.fpn.", "AAAA"]).trim(),
        "2001:db8::8"
    );
    assert_eq!(
        dig(port, &["+short", "nas.home.fpn.", "TYPE65300"]).trim(),
        ""
    );

    ddns.set_ge_records("laptop", Some("198.18.0.9".parse().unwrap()), None, &[])
        .await
        .unwrap();
    ddns.remove_ge("nas").await.unwrap();
    assert!(dig(port, &["nas.home.fpn.", "A"]).contains("status: NXDOMAIN"));

    // bad names are typed errors, and change nothing
    let serial = ddns.serial();
    assert!(matches!(
        ddns.remove_ge("x.other.fpn.").await,
        Err(Error::Name { .. })
    ));
    assert!(matches!(ddns.remove_ge("@").await, Err(Error::Name { .. })));
    assert!(ddns.set_ge_records("*", None, None, &[]).await.is_err());
    assert_eq!(ddns.serial(), serial);

    server.shutdown().await;
    ddns.close();

    // reopen: same data, same serial
    let ddns = Ddns::open(config(dir.path())).unwrap();
    assert_eq!(ddns.serial(), serial);
    assert_eq!(ddns.records("laptop").unwrap().len(), 1);
    assert!(ddns.records("nas").unwrap().is_empty());
    ddns.close();

    // the database belongs to its zone
    let other = DdnsConfig::new(
        Name::from_ascii("other.fpn.").unwrap(),
        dir.path().join("data"),
    );
    assert!(matches!(Ddns::open(other), Err(Error::ZoneMismatch { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_api_changes_all_commit() {
    let dir = tempfile::tempdir().unwrap();
    let ddns = std::sync::Arc::new(Ddns::open(config(dir.path())).unwrap());
    let s0 = ddns.serial();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let d = ddns.clone();
        tasks.push(tokio::spawn(async move {
            let a = std::net::Ipv4Addr::from(0xc612_0000 + i);
            d.set_ge_records(&format!("h{i}"), Some(a), None, &[]).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for i in 0..200 {
        assert_eq!(ddns.records(&format!("h{i}")).unwrap().len(), 1);
    }
    let s1 = ddns.serial();
    assert!(s1 > s0 && s1 <= s0 + 200, "one serial per commit");
}

/// Shutting down with a TCP client still connected: `close` returns (the
/// commit thread gets an explicit stop; it does not wait for every sender).
#[tokio::test]
async fn close_returns_with_a_client_still_connected() {
    let dir = tempfile::tempdir().unwrap();
    let ddns = Ddns::open(config(dir.path())).unwrap();
    let server = ddns
        .serve(Sockets::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap())
        .unwrap();
    let addr = server.local_addrs()[0];
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::task::yield_now().await;
    server.shutdown().await;
    let closed = tokio::task::spawn_blocking(move || ddns.close());
    tokio::time::timeout(std::time::Duration::from_secs(10), closed)
        .await
        .expect("close hung")
        .unwrap();
}
