//! A zone a parent can delegate to: the zone as a secondary transfers it
//! (real `dig` AXFR with a TSIG key) passes BIND's `named-checkzone`,
//! which refuses an in-zone NS without an address. Also for a data
//! directory whose zone was created before the NS settings existed.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const ZONE: &str = "test.fpn.";

/// A BIND key file with the transfer permission, and the `[dns] config`
/// that grants it; returns the key file.
fn allow_transfer(gms: &Gms) -> std::path::PathBuf {
    // A test-only key: 32 fixed bytes, base64.
    let key = gms.data.join("xfer.key");
    std::fs::write(
        &key,
        "key \"xfer-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"dGVzdC1vbmx5LXRyYW5zZmVyLWtleS0zMi1ieXRlcyE=\";\n};\n",
    )
    .unwrap();
    std::fs::write(
        gms.data.join("ddns.toml"),
        "[[key]]\nfile = \"xfer.key\"\ntransfer = true\n",
    )
    .unwrap();
    let path = gms.data.join("gms.toml");
    let mut cfg: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let dns = cfg
        .entry("dns")
        .or_insert_with(|| toml::Value::Table(Default::default()));
    dns.as_table_mut()
        .unwrap()
        .insert("config".into(), "ddns.toml".into());
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    key
}

/// The zone by AXFR from the running GMS's DNS, as a zone file.
fn axfr(gms: &Gms, key: &Path, out: &Path) -> String {
    let st = gms.json(&["status"]);
    let dns: std::net::SocketAddr = st["dns"][0].as_str().unwrap().parse().unwrap();
    let o = Command::new("dig")
        .args([
            &format!("@{}", dns.ip()),
            "-p",
            &dns.port().to_string(),
            "+tries=1",
            "+time=3",
            "-k",
            key.to_str().unwrap(),
            ZONE,
            "AXFR",
        ])
        .output()
        .expect("dig is installed (bind9-dnsutils; scripts/deps.sh installs it)");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && text.contains("\tSOA\t"),
        "AXFR: {text}"
    );
    // What a secondary keeps: the zone's records, not the transfer's TSIG.
    let zone: String = text
        .lines()
        .filter(|l| !l.contains("\tTSIG\t"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(out, &zone).unwrap();
    zone
}

/// `named-checkzone ZONE FILE`: (passed, its output).
fn checkzone(file: &Path) -> (bool, String) {
    let o = Command::new("named-checkzone")
        .args([ZONE, file.to_str().unwrap()])
        .output()
        .expect("named-checkzone is installed (bind9-utils; scripts/deps.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// Records of `rtype` at `owner` in dig's zone output: their data.
fn rdata(zone: &str, owner: &str, rtype: &str) -> Vec<String> {
    zone.lines()
        .filter(|l| !l.starts_with(';'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 5 && f[0] == owner && f[3] == rtype)
        .map(|f| f[4..].join(" "))
        .collect()
}

#[test]
fn the_transferred_zone_has_ns_with_glue_and_passes_named_checkzone() {
    let mut gms = Gms::init(&["--ns-addr", "127.0.0.1", "--ns-addr", "::1"]);
    let key = allow_transfer(&gms);
    gms.start();
    let file = gms.tmp.path().join("zone.axfr");
    let zone = axfr(&gms, &key, &file);
    let (ok, out) = checkzone(&file);
    assert!(ok, "named-checkzone refused the zone:\n{out}\n{zone}");
    assert_eq!(rdata(&zone, ZONE, "NS"), ["ns1.test.fpn."], "{zone}");
    assert_eq!(rdata(&zone, "ns1.test.fpn.", "A"), ["127.0.0.1"], "{zone}");
    assert_eq!(rdata(&zone, "ns1.test.fpn.", "AAAA"), ["::1"], "{zone}");
}

/// A zone created the old way (NS `ns1.<zone>`, no address) gets its glue
/// when a GMS with these settings starts on it; the serial moves once and
/// a restart changes nothing more.
#[test]
fn a_zone_from_before_the_ns_settings_is_brought_in_step_on_start() {
    let mut gms = Gms::init(&["--public-addr", "127.0.0.1:4433"]);
    let key = allow_transfer(&gms);
    // What fpn-ddns creates on its own: SOA and NS ns1.<zone>, no glue.
    let origin = fpn_ddns::hickory_proto::rr::Name::from_ascii(ZONE).unwrap();
    let old =
        fpn_ddns::Ddns::open(fpn_ddns::DdnsConfig::new(origin, gms.data.join("dns"))).unwrap();
    assert!(old.records("ns1").unwrap().is_empty());
    old.close();

    gms.start();
    let file = gms.tmp.path().join("zone.axfr");
    let zone = axfr(&gms, &key, &file);
    let (ok, out) = checkzone(&file);
    assert!(ok, "named-checkzone refused the zone:\n{out}\n{zone}");
    assert_eq!(rdata(&zone, "ns1.test.fpn.", "A"), ["127.0.0.1"], "{zone}");
    let serial = rdata(&zone, ZONE, "SOA")[0].clone();

    gms.kill();
    gms.start();
    let again = axfr(&gms, &key, &file);
    assert_eq!(
        rdata(&again, ZONE, "SOA")[0],
        serial,
        "a restart rewrote the NS"
    );
}

/// A name server outside the zone (the VPS's own name) is published
/// without glue; glue for it, or an in-zone name without an address, is
/// refused at `init` with the setting to change.
#[test]
fn an_out_of_zone_ns_has_no_glue_and_impossible_settings_are_refused() {
    let mut gms = Gms::init(&["--public-addr", "vps.example.org:4433"]);
    let key = allow_transfer(&gms);
    gms.start();
    let file = gms.tmp.path().join("zone.axfr");
    let zone = axfr(&gms, &key, &file);
    assert_eq!(rdata(&zone, ZONE, "NS"), ["vps.example.org."], "{zone}");
    assert!(rdata(&zone, "ns1.test.fpn.", "A").is_empty(), "{zone}");

    let tmp = tempfile::tempdir().unwrap();
    for (extra, says) in [
        (
            vec!["--ns-name", "vps.example.org.", "--ns-addr", "198.18.0.1"],
            "outside the zone",
        ),
        (
            vec!["--listen", "0.0.0.0:4433", "--ns-name", "ns1"],
            "ns_addrs",
        ),
    ] {
        let data = tmp.path().join("d");
        let mut args = vec!["init", "--data", data.to_str().unwrap(), "--zone", ZONE];
        args.extend(extra.iter().copied());
        let o = Command::new(BIN).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?}");
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(!data.exists(), "{extra:?}: init wrote something");
    }
}
