//! The DDNS that `fpn-gms serve` runs in-process, queried with the real
//! `dig`: GE records follow sessions and admin changes, and survive a restart.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fpn_gms::client::{Event, Session, SessionConfig};

/// The DNS address from `status --json` (the harness binds port 0).
fn dns_addr(gms: &Gms) -> SocketAddr {
    let st = gms.json(&["status"]);
    st["dns"][0]
        .as_str()
        .unwrap_or_else(|| panic!("status has no dns address: {st}"))
        .parse()
        .unwrap()
}

/// `dig +short NAME TYPE` against the GMS's DNS; `None` when the name does
/// not exist (NXDOMAIN).
fn dig(dns: SocketAddr, name: &str, rtype: &str) -> Option<Vec<String>> {
    let out = Command::new("dig")
        .args([
            &format!("@{}", dns.ip()),
            "-p",
            &dns.port().to_string(),
            "+tries=1",
            "+time=2",
            "+noall",
            "+answer",
            "+comments",
            name,
            rtype,
        ])
        .output()
        .expect("dig is installed (bind9-dnsutils; scripts/deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dig failed: {text}");
    if text.contains("status: NXDOMAIN") {
        return None;
    }
    assert!(text.contains("status: NOERROR"), "dig: {text}");
    Some(
        text.lines()
            .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .collect(),
    )
}

/// Polls `dig` until `want` holds (the records are written just after the
/// GMS acts), bounded by [`WAIT`].
fn dig_until(
    dns: SocketAddr,
    name: &str,
    rtype: &str,
    want: impl Fn(&Option<Vec<String>>) -> bool,
) -> Option<Vec<String>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = dig(dns, name, rtype);
        if want(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{name} {rtype}: still {got:?} after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ge_records_follow_sessions_and_admin_changes() {
    let mut gms = Gms::start_new(&[]);
    let dns = dns_addr(&gms);
    gms.ok(&["group", "add", "1", "--name", "home"]);
    gms.ok(&[
        "ge", "add", "laptop", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    gms.ok(&[
        "ge", "add", "nas", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);

    // The zone exists and answers; a GE that never connected has no address.
    let soa = dig(dns, "test.fpn", "SOA").expect("zone apex exists");
    assert_eq!(soa.len(), 1, "{soa:?}");
    assert_eq!(dig(dns, "laptop.test.fpn", "A"), None);
    // `status` (and the web admin's overview) shows the serial the zone serves.
    let soa_serial = || -> u64 {
        let out = Command::new("dig")
            .args([
                &format!("@{}", dns.ip()),
                "-p",
                &dns.port().to_string(),
                "+short",
                "test.fpn",
                "SOA",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let serial = text.split_whitespace().nth(2);
        serial
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no serial in {text:?}"))
    };
    let serial = gms.json(&["status"])["zone_serial"].as_u64();
    assert_eq!(serial, Some(soa_serial()), "{soa:?}");

    // A session: A = the address the GMS sees, LIP = the other reported one.
    let id = enroll(&gms, "laptop").await;
    let cfg = SessionConfig {
        reported: vec!["10.9.8.7:7718".parse().unwrap()],
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..SessionConfig::default()
    };
    let mut s = Session::start(id, endpoint(), cfg).unwrap();
    next_matching(&mut s, |e| matches!(e, Event::Connected)).await;
    let a = dig_until(dns, "laptop.test.fpn", "A", |g| g.is_some());
    assert_eq!(a.unwrap(), vec!["127.0.0.1".to_owned()]);
    let after = gms.json(&["status"])["zone_serial"].as_u64();
    assert!(
        after > serial,
        "the serial did not move: {serial:?} -> {after:?}"
    );
    let lip = dig_until(dns, "laptop.test.fpn", "TYPE65300", |g| {
        g.as_ref().is_some_and(|v| !v.is_empty())
    });
    // dig prints unknown types in RFC 3597 form: \# 4 0a090807.
    let lip_rdata = std::process::Command::new("dig")
        .args([
            &format!("@{}", dns.ip()),
            "-p",
            &dns.port().to_string(),
            "+short",
            "laptop.test.fpn",
            "TYPE65300",
        ])
        .output()
        .unwrap();
    let lip_text = String::from_utf8_lossy(&lip_rdata.stdout).to_lowercase();
    assert!(lip_text.contains("0a090807"), "{lip:?} / {lip_text}");

    // Restart: the records are on disk, not rebuilt from sessions.
    drop(s);
    gms.kill();
    gms.start();
    let dns = dns_addr(&gms);
    let a = dig_until(dns, "laptop.test.fpn", "A", |g| g.is_some());
    assert_eq!(a.unwrap(), vec!["127.0.0.1".to_owned()]);

    // Removing the GE removes its name.
    gms.ok(&["ge", "remove", "laptop"]);
    dig_until(dns, "laptop.test.fpn", "A", Option::is_none);
}

#[test]
fn no_dns_turns_it_off_and_a_taken_port_is_a_clear_error() {
    let gms = Gms::start_new(&["--no-dns"]);
    let st = gms.json(&["status"]);
    assert_eq!(st["dns"], serde_json::json!([]), "{st}");

    // Another server on the same DNS address: `serve` refuses to start and
    // says what to do, instead of running without its DNS.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind(taken.local_addr().unwrap()).ok();
    let addr = taken.local_addr().unwrap().to_string();
    let other = Gms::init(&["--dns-listen", &addr]);
    let out = Command::new(BIN)
        .args(["serve", "--data", other.data.to_str().unwrap()])
        .output()
        .unwrap();
    drop((taken, tcp));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot serve DNS on") && err.contains("--no-dns"),
        "{err}"
    );
    // `serve --no-dns` runs this data directory anyway.
    let mut serve = Command::new(BIN)
        .args(["serve", "--no-dns", "--data", other.data.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while !other
        .try_admin(&fpn_gms::admin::AdminRequest::Status)
        .is_ok_and(|r| r.ok)
    {
        assert!(serve.try_wait().unwrap().is_none(), "serve --no-dns exited");
        assert!(Instant::now() < deadline, "serve --no-dns did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(other.json(&["status"])["dns"], serde_json::json!([]));
    let _ = serve.kill();
    let _ = serve.wait();
}

/// `dig NAME TYPE` against the GMS's DNS with the answer and additional
/// sections, as text.
fn dig_sections(dns: SocketAddr, name: &str, rtype: &str) -> String {
    let out = Command::new("dig")
        .args([
            &format!("@{}", dns.ip()),
            "-p",
            &dns.port().to_string(),
            "+tries=1",
            "+time=2",
            "+noall",
            "+answer",
            "+additional",
            name,
            rtype,
        ])
        .output()
        .expect("dig is installed");
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

/// Connects a session for `id` from `local` (a loopback address of its
/// own, so the GMS sees the gateway come from there).
async fn connect_from(id: fpn_gms::client::Identity, local: &str) -> Session {
    let ep = fpn_gms::client::endpoint(format!("{local}:0").parse().unwrap()).unwrap();
    let cfg = SessionConfig {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..SessionConfig::default()
    };
    let mut s = Session::start(id, ep, cfg).unwrap();
    next_matching(&mut s, |e| matches!(e, Event::Connected)).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_behind_a_gateway_has_the_gateways_address_and_its_lan_address_as_lip() {
    let gms = Gms::start_new(&[]);
    let dns = dns_addr(&gms);
    gms.ok(&["group", "add", "1", "--name", "home"]);
    gms.ok(&[
        "ge",
        "add",
        "gw",
        "--kind",
        "gen",
        "--mode",
        "cl",
        "--group",
        "1",
        "--protect",
        "192.168.1.0/24",
    ]);
    gms.ok(&["host", "add", "nas", "--via", "gw", "--lan", "192.168.1.10"]);
    // The gateway never connected: nothing to point the name at yet.
    assert_eq!(dig(dns, "nas.test.fpn", "A"), None);

    // The gateway's session comes from 127.0.0.1: so does the host's A,
    // with its LAN address as LIP in the additional section.
    let id = enroll(&gms, "gw").await;
    let state = gms.tmp.path().join("gw");
    id.save(&state).unwrap();
    let s = connect_from(id, "127.0.0.1").await;
    let a = dig_until(dns, "nas.test.fpn", "A", |g| g.is_some());
    assert_eq!(a.unwrap(), vec!["127.0.0.1".to_owned()]);
    let text = dig_sections(dns, "nas.test.fpn", "A");
    assert!(
        text.contains("nas.test.fpn.") && text.contains("type65300") && text.contains("c0a8010a"),
        "LIP 192.168.1.10 in the additional section: {text}"
    );
    assert_eq!(
        gms.json(&["host", "show", "nas"])["public"],
        "127.0.0.1",
        "host show names the published address"
    );

    // The gateway comes back from another address: the host follows.
    drop(s);
    let s = connect_from(
        fpn_gms::client::Identity::load(&state).unwrap(),
        "127.0.0.2",
    )
    .await;
    dig_until(dns, "nas.test.fpn", "A", |g| {
        g.as_deref() == Some(&["127.0.0.2".to_owned()][..])
    });
    dig_until(dns, "gw.test.fpn", "A", |g| {
        g.as_deref() == Some(&["127.0.0.2".to_owned()][..])
    });

    // A new LAN address replaces the LIP.
    gms.ok(&["host", "set", "nas", "--lan", "192.168.1.11"]);
    let deadline = Instant::now() + WAIT;
    while !dig_sections(dns, "nas.test.fpn", "A").contains("c0a8010b") {
        assert!(Instant::now() < deadline, "the LIP did not change");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Removing the host removes its name, not the gateway's.
    gms.ok(&["host", "remove", "nas"]);
    dig_until(dns, "nas.test.fpn", "A", Option::is_none);
    assert!(dig(dns, "gw.test.fpn", "A").is_some());
    drop(s);
}
