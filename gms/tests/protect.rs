//! `--protect`: the prefixes a gateway protects go into the GE record and its
//! credential (which DPRP checks a flow's ends against), through the real binary.

mod common;

use std::net::IpAddr;

use common::*;
use fpn_proto::credential::UnverifiedCredential;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn error_of(gms: &Gms, args: &[&str]) -> String {
    let o = gms.cli(args);
    assert!(!o.status.success(), "{args:?} succeeded");
    let e = String::from_utf8(o.stderr).unwrap();
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_prefixes_are_named_in_its_credential_and_can_be_changed() {
    let gms = Gms::start_new(&[]);
    gms.ok(&["group", "add", "1", "--name", "home"]);
    gms.ok(&[
        "ge",
        "add",
        "home-gw",
        "--kind",
        "gen",
        "--mode",
        "cl",
        "--group",
        "1",
        "--protect",
        "192.168.1.0/24",
        "--protect",
        "fd00:1::/64",
    ]);
    let show = gms.json(&["ge", "show", "home-gw"]);
    assert_eq!(
        show["protect"],
        serde_json::json!(["192.168.1.0/24", "fd00:1::/64"])
    );
    assert!(
        gms.ok(&["ge", "list"])
            .contains("192.168.1.0/24,fd00:1::/64")
    );
    assert!(
        gms.ok(&["ge", "show", "home-gw"])
            .contains("protects      192.168.1.0/24, fd00:1::/64")
    );
    assert!(
        gms.ok(&["audit"])
            .contains("protect=192.168.1.0/24,fd00:1::/64")
    );

    // Enrollment issues a credential that covers the LAN and nothing else.
    let id = enroll(&gms, "home-gw").await;
    let cred = UnverifiedCredential::decode(&id.credential)
        .unwrap()
        .verify(&id.ca_public, now())
        .unwrap();
    assert!(cred.covers(ip("192.168.1.10")));
    assert!(cred.covers(ip("fd00:1::10")));
    assert!(cred.covers(IpAddr::V4(cred.info.overlay)));
    assert!(!cred.covers(ip("192.168.2.10")));

    // `ge set --protect` replaces the list and re-issues the credential.
    let s = connect(id, None).await;
    let serial = gms.json(&["ge", "show", "home-gw"])["credential_serial"].clone();
    gms.ok(&["ge", "set", "home-gw", "--protect", "192.168.2.0/24"]);
    s.wait_for(WAIT, |st| {
        st.credential
            .as_ref()
            .is_some_and(|c| c.covers(ip("192.168.2.10")) && !c.covers(ip("192.168.1.10")))
    })
    .await
    .unwrap();
    let show = gms.json(&["ge", "show", "home-gw"]);
    assert_eq!(show["protect"], serde_json::json!(["192.168.2.0/24"]));
    assert_ne!(show["credential_serial"], serial);

    // `--no-protect` clears them: the gateway speaks for its overlay address only.
    gms.ok(&["ge", "set", "home-gw", "--no-protect"]);
    s.wait_for(WAIT, |st| {
        st.credential
            .as_ref()
            .is_some_and(|c| c.prefixes.is_empty())
    })
    .await
    .unwrap();
    assert_eq!(
        gms.json(&["ge", "show", "home-gw"])["protect"],
        serde_json::json!([])
    );
}

#[test]
fn malformed_or_misplaced_prefixes_are_refused_with_a_clear_error() {
    let gms = Gms::start_new(&[]);
    let add = |name: &str, kind: &str, prefixes: &[&str]| {
        let mut a = vec!["ge", "add", name, "--kind", kind, "--mode", "op"];
        for p in prefixes {
            a.extend(["--protect", p]);
        }
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let err = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        error_of(&gms, &a)
    };
    let e = err(add("laptop", "ges", &["192.168.1.0/24"]));
    assert!(e.contains("--protect with a subnet is for gateways"), "{e}");
    let e = err(add("gw", "gen", &["192.168.1.1/24"]));
    assert!(e.contains("host bits"), "{e}");
    let e = err(add("gw", "gen", &["0.0.0.0/0"]));
    assert!(e.contains("every address"), "{e}");
    let e = err(add("gw", "gen", &["192.168.1.0"]));
    assert!(e.contains("ADDRESS/LENGTH"), "{e}");
    let e = err(add("gw", "gen", &["10.0.0.0/33"]));
    assert!(e.contains("exceeds the address width"), "{e}");
    let e = err(add("gw", "gen", &["100.64.0.0/24"]));
    assert!(e.contains("overlay range"), "{e}");
    let many: Vec<String> = (0..17).map(|i| format!("10.{i}.0.0/16")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let e = err(add("gw", "gen", &many));
    assert!(e.contains("at most 16"), "{e}");
    // Nothing was added by the refusals.
    assert_eq!(gms.json(&["ge", "list"]), serde_json::json!([]));

    // One owner per address.
    gms.ok(&[
        "ge",
        "add",
        "gw1",
        "--kind",
        "gen",
        "--mode",
        "cl",
        "--protect",
        "192.168.0.0/16",
    ]);
    let e = err(add("gw2", "gea", &["192.168.7.0/24"]));
    assert!(e.contains("which GE gw1 protects"), "{e}");
    // A gateway with prefixes cannot become a GES without clearing them.
    let e = error_of(&gms, &["ge", "set", "gw1", "--kind", "ges"]);
    assert!(e.contains("--no-protect"), "{e}");
    gms.ok(&["ge", "set", "gw1", "--kind", "ges", "--no-protect"]);
    // Its prefixes are free again.
    gms.ok(&[
        "ge",
        "add",
        "gw2",
        "--kind",
        "gea",
        "--mode",
        "cl",
        "--protect",
        "192.168.7.0/24",
    ]);
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
