//! The admin CLI: listings with --json, one-line errors, no key bytes anywhere.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fpn_gms::store::{Batch, SledStore, Store, Tree};
use fpn_proto::ge::GroupId;

fn one_line_error(o: &std::process::Output) -> String {
    assert!(!o.status.success(), "expected failure");
    let err = String::from_utf8(o.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("fpn-gms: error: "), "{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_have_json_and_key_bytes_are_never_printed() {
    let gms = Gms::start_new(&[]);
    gms.ok(&["group", "add", "1", "--name", "home"]);
    gms.ok(&["group", "add", "2", "--name", "servers"]);
    gms.ok(&[
        "ge", "add", "laptop", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    gms.ok(&[
        "ge", "add", "nas-gw", "--kind", "gea", "--mode", "cl", "--group", "1", "--group", "2",
    ]);

    let groups = gms.json(&["group", "list"]);
    assert_eq!(groups[1]["members"][0], "nas-gw");
    let ges = gms.json(&["ge", "list"]);
    assert_eq!(ges.as_array().unwrap().len(), 2);
    assert_eq!(ges[1]["kind"], "gea");
    assert_eq!(ges[1]["groups"], serde_json::json!([1, 2]));
    assert_eq!(ges[0]["overlay"], "100.64.0.1");
    assert_eq!(ges[1]["fqdn"], "nas-gw.test.fpn.");
    let status = gms.json(&["status"]);
    assert_eq!(status["zone"], "test.fpn.");
    assert_eq!(status["ges"], 2);
    assert!(gms.json(&["audit"]).as_array().unwrap().len() >= 5);
    assert!(gms.ok(&["ge", "list"]).contains("nas-gw"));
    assert!(gms.ok(&["group", "list"]).contains("servers"));

    // The key of group 1 as a member holds it.
    let s = connect(enroll(&gms, "laptop").await, None).await;
    gms.ok(&["rotate"]);
    s.wait_for(WAIT, |st| st.keys.versions(GroupId(1)).len() == 2)
        .await
        .unwrap();
    let secrets: Vec<String> = s
        .key_versions(GroupId(1))
        .into_iter()
        .map(|v| hex::encode(s.key(GroupId(1), v).unwrap().expose_secret()))
        .collect();
    let keys_text = gms.ok(&["keys"]);
    assert!(
        keys_text.contains("current") && keys_text.contains("previous"),
        "{keys_text}"
    );
    let keys_json = gms.json(&["keys"]);
    assert_eq!(keys_json[0]["versions"][0]["version"], 2);
    let everything = [
        keys_text,
        keys_json.to_string(),
        gms.json(&["ge", "show", "laptop"]).to_string(),
        gms.ok(&["audit"]),
        gms.log(),
    ]
    .join("\n");
    for k in &secrets {
        assert!(!everything.contains(k.as_str()), "key bytes leaked");
        assert!(
            !everything.to_lowercase().contains(&k[..16]),
            "key bytes leaked"
        );
    }
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let mut gms = Gms::init(&[]);
    let e = one_line_error(&gms.cli(&["ge", "list"]));
    assert!(e.contains("is `fpn-gms serve` running?"), "{e}");
    gms.start();
    let e = one_line_error(&gms.cli(&["ge", "add", "x", "--kind", "router", "--mode", "op"]));
    assert!(e.contains("GE kind"), "{e}");
    let e = one_line_error(&gms.cli(&["ge", "show", "nobody"]));
    assert!(e.contains("no GE named nobody"), "{e}");
    let e = one_line_error(&gms.cli(&["group", "remove", "5"]));
    assert!(e.contains("no group 5"), "{e}");
    let e = one_line_error(&gms.cli(&["token", "create", "nobody", "--ttl", "1h"]));
    assert!(e.contains("no GE named nobody"), "{e}");
    let o = Command::new(BIN)
        .args([
            "init",
            "--data",
            gms.data.to_str().unwrap(),
            "--zone",
            "x.fpn.",
        ])
        .output()
        .unwrap();
    assert!(one_line_error(&o).contains("already initialized"));
}

#[test]
fn a_store_written_by_a_newer_version_is_refused_with_a_clear_message() {
    let gms = Gms::init(&[]);
    {
        let s = SledStore::open(&gms.data.join("db")).unwrap();
        let mut b = Batch::new();
        b.put(Tree::Meta, b"schema".to_vec(), 99u32.to_be_bytes().to_vec());
        s.commit(b).unwrap();
    }
    let mut child = Command::new(BIN)
        .args(["serve", "--data", gms.data.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not refuse the store");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("schema version 99") && err.contains("newer fpn-gms"),
        "{err}"
    );
}
