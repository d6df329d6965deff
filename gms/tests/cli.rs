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
    let data = gms.data.to_str().unwrap().to_owned();
    assert!(
        e.contains("no fpn-gms server answers")
            && e.contains(&format!("start it with `fpn-gms serve --data {data}`")),
        "{e}"
    );
    gms.start();
    let e = one_line_error(&gms.cli(&["ge", "add", "x", "--kind", "router", "--mode", "op"]));
    assert!(e.contains("GE kind"), "{e}");
    let e = one_line_error(&gms.cli(&["ge", "show", "nobody"]));
    assert!(e.contains("no GE named nobody"), "{e}");
    let e = one_line_error(&gms.cli(&["group", "remove", "5"]));
    assert!(e.contains("no group 5"), "{e}");
    let e = one_line_error(&gms.cli(&["token", "create", "nobody", "--ttl", "1h"]));
    assert!(
        e.contains("no GE named nobody") && e.contains("`fpn-gms ge add nobody --group N`"),
        "{e}"
    );
    let e = one_line_error(&gms.cli(&[
        "ge", "add", "y", "--kind", "ges", "--mode", "op", "--group", "0",
    ]));
    assert!(e.contains("group numbers start at 1"), "{e}");
    // A second server on the same data directory: named, not sled's lock text.
    let o = gms.cli(&["serve"]);
    let e = one_line_error(&o);
    assert!(
        e.contains(&format!("another fpn-gms serve already runs on {data}")),
        "{e}"
    );
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
    let e = one_line_error(&o);
    assert!(
        e.contains("already initialized") && e.contains(&format!("fpn-gms serve --data {data}")),
        "{e}"
    );
}

/// The mistakes of a first run, each with the command that fixes it: no
/// `--data`, a directory `init` never created (missing, or some other
/// directory), a TOML mistake in gms.toml (with its line), and a user who
/// may not open the admin socket. With `--json` the error is JSON on
/// standard output as well.
#[test]
fn first_run_mistakes_name_the_command_that_fixes_them() {
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env_remove("FPN_GMS_DATA")
            .output()
            .unwrap()
    };
    let e = one_line_error(&run(&["status"]));
    assert!(e.contains("give --data DIR or set FPN_GMS_DATA"), "{e}");

    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let (m, t) = (missing.to_str().unwrap(), tmp.path().to_str().unwrap());
    for (dir, reason) in [(m, "no such directory"), (t, "no gms.toml in it")] {
        for args in [
            vec!["status"],
            vec!["ge", "list"],
            vec!["token", "create", "laptop"],
            vec!["serve"],
            vec!["relay-cert", "--out", "/nonexistent/relay"],
        ] {
            let mut a = vec!["--data", dir];
            a.extend(&args);
            let e = one_line_error(&run(&a));
            assert!(
                e.contains(&format!(
                    "{dir} is not an fpn-gms data directory ({reason})"
                )) && e.contains(&format!("fpn-gms init --data {dir} --zone ZONE")),
                "{args:?}: {e}"
            );
        }
    }
    let o = run(&["--data", m, "--json", "ge", "list"]);
    one_line_error(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not an fpn-gms data directory"),
        "{v}"
    );
    assert!(!missing.exists());

    // gms.toml with a mistake on line 3: one line with the line and column.
    let gms = Gms::init(&[]);
    let cfg = gms.data.join("gms.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("# edited\ngrace 10m\n{text}")).unwrap();
    let e = one_line_error(&gms.cli(&["serve"]));
    assert!(e.contains("gms.toml: line 2, column "), "{e}");
    std::fs::write(&cfg, text).unwrap();

    // Someone other than the server's user: the data directory is 0700.
    let mut gms = gms;
    gms.start();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::process::CommandExt;
        let o = Command::new(BIN)
            .args(["--data", gms.data.to_str().unwrap(), "status"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let e = one_line_error(&o);
        assert!(e.contains("permission denied") && e.contains("sudo"), "{e}");
    }
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

/// `admin-user set/list/remove`: the password comes from standard input,
/// only its Argon2id hash reaches `web-users` (0600); a short password and
/// a bad name are one-line errors; it works without a running server.
#[test]
fn admin_users_are_hashed_at_rest_and_checked() {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let gms = common::Gms::init(&[]);
    let run = |args: &[&str], stdin: &str| {
        let mut c = std::process::Command::new(common::BIN)
            .arg("--data")
            .arg(&gms.data)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    let o = run(&["admin-user", "set", "alice"], "correct horse battery\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = gms.data.join("web-users");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("alice:$argon2id$"), "{text}");
    assert!(!text.contains("correct horse"));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let o = run(&["admin-user", "set", "bob"], "short\n");
    assert!(!o.status.success());
    assert!(one_line_error(&o).contains("at least 12 characters"));
    let o = run(&["admin-user", "set", "b:b"], "long enough password\n");
    assert!(!o.status.success());
    assert!(one_line_error(&o).contains("only letters, digits"));

    let o = run(&["admin-user", "list", "--json"], "");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["users"], serde_json::json!(["alice"]));
    let o = run(&["admin-user", "remove", "alice"], "");
    assert!(o.status.success());
    let o = run(&["admin-user", "remove", "alice"], "");
    assert!(one_line_error(&o).contains("no web admin user alice"));
}
