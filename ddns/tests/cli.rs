//! The real `fpn-ddns` binary driven by the real `dig` and `nsupdate` on
//! loopback, with the example configuration configs/ddns/ddns.toml.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{Setup, ZONE, text};

const ADD_NAS: &str = "update add nas.home.fpn. 60 A 198.18.0.7\n\
                       update add nas.home.fpn. 60 TYPE65300 \\# 4 c0a8010a";

#[test]
fn signed_update_adds_a_and_lip_and_dig_sees_lip_as_additional() {
    let s = Setup::new();
    let srv = s.start(&[]);
    let serial = srv.serial();
    let out = srv.nsupdate(Some(&s.path("admin.key")), ADD_NAS);
    assert!(
        out.status.success(),
        "nsupdate failed: {}\n{}",
        text(&out),
        s.log()
    );
    assert_eq!(srv.serial(), serial + 1);

    let answer = srv.dig(&["nas.home.fpn.", "A"]);
    assert!(answer.contains("status: NOERROR"), "{answer}");
    assert!(answer.contains("flags: qr aa;"), "{answer}");
    let additional = answer
        .split(";; ADDITIONAL SECTION:")
        .nth(1)
        .unwrap_or_else(|| panic!("no additional section:\n{answer}"));
    assert!(
        additional.contains("nas.home.fpn.\t\t60\tIN\tTYPE65300 \\# 4 C0A8010A"),
        "{answer}"
    );
    assert_eq!(srv.short("nas.home.fpn.", "A"), ["198.18.0.7"]);
    // the LIP record asked for directly, over UDP and TCP
    assert_eq!(srv.short("nas.home.fpn.", "TYPE65300"), ["\\# 4 C0A8010A"]);
    assert_eq!(
        srv.dig(&["+tcp", "+short", "nas.home.fpn.", "TYPE65300"])
            .trim(),
        "\\# 4 C0A8010A"
    );
    // an IPv6 LIP
    let out = srv.nsupdate(
        Some(&s.path("admin.key")),
        "update add nas.home.fpn. 60 TYPE65300 \\# 16 fd000000000000000000000000000010",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(srv.short("nas.home.fpn.", "TYPE65300").len(), 2);
}

#[test]
fn unsigned_and_wrongly_signed_updates_are_refused_and_change_nothing() {
    let s = Setup::new();
    let srv = s.start(&[]);
    let serial = srv.serial();

    let out = srv.nsupdate(None, ADD_NAS);
    assert!(!out.status.success());
    assert!(text(&out).contains("REFUSED"), "{}", text(&out));

    // same key name, other secret: BADSIG
    let out = srv.nsupdate(Some(&s.forged_key("admin")), ADD_NAS);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("NOTAUTH") || text(&out).contains("tsig"),
        "{}",
        text(&out)
    );

    // a key the server does not know: BADKEY
    let out = srv.nsupdate(Some(&s.forged_key("stranger")), ADD_NAS);
    assert!(!out.status.success());

    assert!(srv.short("nas.home.fpn.", "A").is_empty());
    assert!(
        srv.dig(&["nas.home.fpn.", "A"])
            .contains("status: NXDOMAIN")
    );
    assert_eq!(srv.serial(), serial);
    let log = s.log();
    assert!(log.contains("update refused: request not signed"), "{log}");
    assert!(log.contains("bad TSIG signature"), "{log}");
    assert!(log.contains("unknown TSIG key"), "{log}");
}

#[test]
fn failed_prerequisites_leave_the_zone_unchanged() {
    let s = Setup::new();
    let srv = s.start(&[]);
    let admin = s.path("admin.key");
    assert!(srv.nsupdate(Some(&admin), ADD_NAS).status.success());
    let serial = srv.serial();

    let cases = [
        ("prereq nxdomain nas.home.fpn.", "YXDOMAIN"),
        ("prereq yxdomain nope.home.fpn.", "NXDOMAIN"),
        ("prereq nxrrset nas.home.fpn. A", "YXRRSET"),
        ("prereq yxrrset nas.home.fpn. TXT", "NXRRSET"),
        ("prereq yxrrset nas.home.fpn. A 198.18.0.99", "NXRRSET"),
    ];
    for (prereq, rcode) in cases {
        let out = srv.nsupdate(
            Some(&admin),
            &format!("{prereq}\nupdate add new.home.fpn. 60 A 198.18.0.9"),
        );
        assert!(!out.status.success(), "{prereq} passed");
        assert!(text(&out).contains(rcode), "{prereq}: {}", text(&out));
    }
    assert!(srv.short("new.home.fpn.", "A").is_empty());
    assert_eq!(srv.serial(), serial);

    // a prerequisite that holds lets the update through
    let out = srv.nsupdate(
        Some(&admin),
        "prereq yxrrset nas.home.fpn. A 198.18.0.7\nupdate add new.home.fpn. 60 A 198.18.0.9",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(srv.short("new.home.fpn.", "A"), ["198.18.0.9"]);
}

#[test]
fn records_survive_a_restart_and_a_kill_right_after_the_answer() {
    let s = Setup::new();
    let admin = s.path("admin.key");
    let srv = s.start(&[]);
    assert!(srv.nsupdate(Some(&admin), ADD_NAS).status.success());
    let serial = srv.serial();
    srv.stop(libc::SIGTERM);

    let srv = s.start(&[]);
    assert_eq!(srv.short("nas.home.fpn.", "A"), ["198.18.0.7"]);
    assert_eq!(srv.short("nas.home.fpn.", "TYPE65300"), ["\\# 4 C0A8010A"]);
    assert_eq!(srv.serial(), serial);

    // SIGKILL as soon as nsupdate has its answer: the update was durable
    // before it was answered.
    let out = srv.nsupdate(
        Some(&admin),
        "update delete nas.home.fpn. A\nupdate add pc.home.fpn. 60 A 198.18.0.8",
    );
    assert!(out.status.success(), "{}", text(&out));
    srv.stop(libc::SIGKILL);
    let srv = s.start(&[]);
    assert_eq!(srv.short("pc.home.fpn.", "A"), ["198.18.0.8"]);
    assert!(srv.short("nas.home.fpn.", "A").is_empty());
    assert_eq!(srv.serial(), serial + 1);
}

#[test]
fn axfr_needs_a_key_with_the_transfer_permission() {
    let s = Setup::new();
    let srv = s.start(&[]);
    assert!(
        srv.nsupdate(Some(&s.path("admin.key")), ADD_NAS)
            .status
            .success()
    );
    let xfer = s.path("xfer.key");

    let out = srv.dig(&["-k", xfer.to_str().unwrap_or_default(), ZONE, "AXFR"]);
    let records: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .collect();
    let soas = records.iter().filter(|l| l.contains("\tSOA\t")).count();
    assert_eq!(soas, 2, "SOA first and last:\n{out}");
    assert!(
        records.first().is_some_and(|l| l.contains("\tSOA\t")),
        "{out}"
    );
    assert!(
        records
            .iter()
            .any(|l| l.starts_with("nas.home.fpn.") && l.contains("\tA\t198.18.0.7")),
        "{out}"
    );
    assert!(
        records
            .iter()
            .any(|l| l.contains("TYPE65300 \\# 4 C0A8010A")),
        "{out}"
    );
    assert!(records.iter().any(|l| l.contains("\tNS\t")), "{out}");
    assert!(
        records.last().is_some_and(|l| l.contains("\tTSIG\t")),
        "the transfer is signed:\n{out}"
    );
    assert!(!out.contains("Transfer failed"), "{out}");
    assert!(
        !out.contains("verify"),
        "dig checked the TSIG signature:\n{out}"
    );

    // without a key, and with keys lacking the permission
    for key in [
        None,
        Some(s.path("router1.key")),
        Some(s.forged_key("xfer")),
    ] {
        let mut args = vec![];
        let k = key.as_ref().map(|k| k.to_string_lossy().into_owned());
        if let Some(k) = &k {
            args.extend(["-k", k.as_str()]);
        }
        args.extend([ZONE, "AXFR"]);
        let out = srv.dig(&args);
        assert!(
            !out.contains("nas.home.fpn."),
            "transfer with {key:?}:\n{out}"
        );
        assert!(
            out.contains("Transfer failed") || out.contains("failed"),
            "{out}"
        );
    }
}

/// A zone seeded from a zone file, large enough for a transfer of many
/// messages: dig verifies the chained TSIG signatures of every message.
#[test]
fn a_large_axfr_spans_signed_messages_that_dig_verifies() {
    let s = Setup::new();
    let mut zone = String::from(
        "$ORIGIN home.fpn.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\n",
    );
    for i in 0..3000 {
        zone.push_str(&format!(
            "host{i} IN A 198.18.{}.{}\nhost{i} IN TXT \"ge={i}\"\n",
            i / 256,
            i % 256
        ));
    }
    std::fs::write(s.path("seed.zone"), zone).expect("write zone");
    let seed = s.path("seed.zone");
    let srv = s.start(&["--zone-file", seed.to_str().unwrap_or_default()]);
    assert_eq!(srv.short("host2999.home.fpn.", "A"), ["198.18.11.183"]);
    let xfer = s.path("xfer.key");
    let out = srv.dig(&["-k", xfer.to_str().unwrap_or_default(), ZONE, "AXFR"]);
    assert!(
        !out.contains("verify") && !out.contains("failed"),
        "{}",
        &out[out.len().saturating_sub(2000)..]
    );
    let size = out
        .lines()
        .find(|l| l.starts_with(";; XFR size:"))
        .unwrap_or_else(|| panic!("no XFR summary"));
    // 2 SOA + NS + 6000 records, over more than one message
    assert!(
        size.starts_with(";; XFR size: 6003 records (messages "),
        "{size}"
    );
    assert!(!size.contains("(messages 1,"), "{size}");
}

#[test]
fn ixfr_sends_the_changes_since_a_serial() {
    let s = Setup::new();
    let srv = s.start(&[]);
    let admin = s.path("admin.key");
    let before = srv.serial();
    assert!(srv.nsupdate(Some(&admin), ADD_NAS).status.success());
    assert!(
        srv.nsupdate(Some(&admin), "update delete nas.home.fpn. A")
            .status
            .success()
    );
    let xfer = s.path("xfer.key");
    let out = srv.dig(&[
        "+tcp",
        "-k",
        xfer.to_str().unwrap_or_default(),
        ZONE,
        &format!("IXFR={before}"),
    ]);
    let records: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty() && !l.contains("TSIG"))
        .collect();
    // current SOA; old SOA, new SOA, A + LIP added; old SOA, A deleted,
    // new SOA; current SOA
    assert_eq!(records.len(), 1 + 4 + 3 + 1, "{out}");
    assert!(records[1].contains(&format!(" {before} ")), "{out}");
    // an up-to-date client gets the SOA alone
    let out = srv.dig(&[
        "+tcp",
        "-k",
        xfer.to_str().unwrap_or_default(),
        ZONE,
        &format!("IXFR={}", before + 2),
    ]);
    let n = out.lines().filter(|l| l.contains("\tSOA\t")).count();
    assert_eq!(n, 1, "{out}");
}

#[test]
fn a_scoped_key_updates_only_its_subtree() {
    let s = Setup::new();
    let srv = s.start(&[]);
    let router = s.path("router1.key");
    let out = srv.nsupdate(Some(&router), "update add nas.router1.home.fpn. 60 A 198.18.0.7\nupdate add nas.router1.home.fpn. 60 TYPE65300 \\# 4 c0a8010a");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(srv.short("nas.router1.home.fpn.", "A"), ["198.18.0.7"]);
    let serial = srv.serial();
    for cmd in [
        "update add pc.home.fpn. 60 A 198.18.0.8",
        "update add router2.home.fpn. 60 A 198.18.0.8",
        "update delete home.fpn. NS",
        "update add ok.router1.home.fpn. 60 A 198.18.0.8\nupdate add pc.home.fpn. 60 A 198.18.0.8",
    ] {
        let out = srv.nsupdate(Some(&router), cmd);
        assert!(!out.status.success(), "{cmd} was accepted");
        assert!(text(&out).contains("REFUSED"), "{cmd}: {}", text(&out));
    }
    assert_eq!(srv.serial(), serial);
    assert!(srv.short("ok.router1.home.fpn.", "A").is_empty());
    // the transfer-only key may not update at all
    let out = srv.nsupdate(
        Some(&s.path("xfer.key")),
        "update add x.home.fpn. 60 A 198.18.0.8",
    );
    assert!(text(&out).contains("REFUSED"), "{}", text(&out));
}

#[test]
fn a_notify_reaches_the_secondary_on_every_change() {
    let s = Setup::new();
    let secondary = UdpSocket::bind("127.0.0.1:0").expect("bind");
    secondary
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let target = secondary.local_addr().expect("addr").to_string();
    let srv = s.start(&["--notify", &target]);
    assert!(
        srv.nsupdate(Some(&s.path("admin.key")), ADD_NAS)
            .status
            .success()
    );
    let serial = srv.serial();
    let mut buf = [0u8; 1024];
    let (n, from) = secondary.recv_from(&mut buf).expect("no NOTIFY arrived");
    let m = &buf[..n];
    assert_eq!((m[2] >> 3) & 0x0f, 4, "opcode NOTIFY");
    assert_eq!(m[2] & 0x84, 0x04, "a request with AA set");
    assert!(
        m.windows(10).any(|w| w == b"\x04home\x03fpn\x00"),
        "names the zone"
    );
    assert!(
        m.windows(4).any(|w| w == serial.to_be_bytes()),
        "carries the new serial"
    );
    // acknowledge; a change later brings a new NOTIFY
    let mut ack = m[..12].to_vec();
    ack[2] |= 0x80;
    ack[4..12].fill(0);
    secondary.send_to(&ack, from).expect("ack");
    assert!(
        srv.nsupdate(
            Some(&s.path("admin.key")),
            "update add pc.home.fpn. 60 A 198.18.0.8"
        )
        .status
        .success()
    );
    // (a retransmission of the first may come before it on a slow machine)
    let newer = |m: &[u8]| m.windows(4).any(|w| w == (serial + 1).to_be_bytes());
    let mut got = false;
    for _ in 0..10 {
        let (n, _) = secondary.recv_from(&mut buf).expect("no second NOTIFY");
        if newer(&buf[..n]) {
            got = true;
            break;
        }
    }
    assert!(got, "no NOTIFY with the new serial");
}

#[test]
fn tsig_keygen_prints_a_key_nsupdate_reads() {
    let out = std::process::Command::new(common::BIN)
        .args(["tsig-keygen", "-a", "hmac-sha512", "k1"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("key \"k1\" {\n\talgorithm hmac-sha512;\n\tsecret \""),
        "{text}"
    );
    let bad = std::process::Command::new(common::BIN)
        .args(["tsig-keygen", "-a", "hmac-md5", "k1"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
}
