//! Group keys at rest: the real `fpn-gms` never leaves a group key in the
//! clear in its data directory, refuses a sealed store without its key, and
//! migrates a store written before sealing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fpn_gms::admin::AdminRequest;
use fpn_gms::model::META_SCHEMA;
use fpn_gms::store::{Batch, META_STORE_KEY_CHECK, SledStore, Store, Tree};
use fpn_proto::ge::GroupId;
use fpn_proto::keys::KeyVersion;

const G: GroupId = GroupId(1);

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `(key index, file)` for every key whose bytes occur in a file under `dir`.
fn found_in(dir: &Path, keys: &[[u8; 32]]) -> Vec<(usize, PathBuf)> {
    let mut hits = Vec::new();
    for f in files(dir) {
        let Ok(bytes) = std::fs::read(&f) else {
            continue; // the admin socket
        };
        for (i, k) in keys.iter().enumerate() {
            if bytes.windows(32).any(|w| w == k) {
                hits.push((i, f.clone()));
            }
        }
    }
    hits
}

/// Opens the bare sled store of a stopped server (bounded wait for its lock).
fn raw_store(db: &Path) -> SledStore {
    let t0 = Instant::now();
    loop {
        match SledStore::open(db) {
            Ok(s) => return s,
            Err(e) if t0.elapsed() < WAIT => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("store still locked: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_group_key_a_node_received_is_in_the_gms_data_directory() {
    let mut gms = Gms::start_new(&["--grace", "1s"]);
    gms.ok(&["group", "add", "1", "--name", "home"]);
    gms.ok(&[
        "ge", "add", "laptop", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    let node_state = gms.tmp.path().join("node");
    std::fs::create_dir_all(&node_state).unwrap();
    let cache = node_state.join("keys");
    let s = connect(enroll(&gms, "laptop").await, Some(&cache)).await;

    // Three versions, as the node received them: v1, then two rotations
    // whose previous version the GMS deletes after the 1 s grace.
    let mut keys = Vec::new();
    for v in 1..=3u32 {
        if v > 1 {
            gms.admin(AdminRequest::Rotate { group: Some(1) });
        }
        s.wait_for(WAIT, |st| st.keys.versions(G) == vec![KeyVersion(v)])
            .await
            .unwrap_or_else(|_| panic!("the node never held only version {v}"));
        let k = s.key(G, KeyVersion(v)).unwrap();
        keys.push(*k.expose_secret());
    }
    drop(s);
    let log = gms.log();
    gms.kill();

    // The needles are real: the node's own key cache holds the current one.
    assert!(
        found_in(&node_state, &keys).iter().any(|(i, _)| *i == 2),
        "the node's cache does not hold the key it received"
    );
    let hits = found_in(&gms.data, &keys);
    assert!(
        hits.is_empty(),
        "group keys in the clear in the GMS data directory: {hits:?}"
    );
    // Nor did the server log them, raw or in hex.
    assert!(log.contains("rotat"), "not the server's log: {log}");
    for k in &keys {
        assert!(!log.contains(&hex::encode(k)), "a key in hex in the log");
        assert!(
            !log.as_bytes().windows(32).any(|w| w == k),
            "a key in the log"
        );
    }
    let key_file = gms.data.join("store.key");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn serve_refuses_a_sealed_store_without_its_key_and_runs_again_once_restored() {
    let mut gms = Gms::start_new(&[]);
    gms.ok(&["group", "add", "1", "--name", "home"]);
    gms.kill();
    let key_file = gms.data.join("store.key");
    let aside = gms.tmp.path().join("store.key.backup");
    std::fs::rename(&key_file, &aside).unwrap();

    let child = Command::new(BIN)
        .args(["serve", "--data", gms.data.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_exit(child);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("store.key is missing") && err.contains("restore it"),
        "{err}"
    );
    assert!(
        !key_file.exists(),
        "serve made a new key for a sealed store"
    );

    std::fs::rename(&aside, &key_file).unwrap();
    gms.start();
    let keys = gms.admin(AdminRequest::Keys);
    assert_eq!(keys[0]["versions"][0]["version"], 1, "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_before_sealing_is_migrated_and_keeps_its_keys() {
    let mut gms = Gms::start_new(&[]);
    gms.ok(&["group", "add", "1", "--name", "home"]);
    gms.kill();

    // Turn the data directory into what fpn-gms wrote before sealing: the
    // same records in the clear, schema 1, no check value, no key file.
    let db = gms.data.join("db");
    let key_file = gms.data.join("store.key");
    let clear = {
        let s = fpn_gms::store::open(&db, &key_file, fpn_gms::now_unix()).unwrap();
        s.scan(Tree::Keys).unwrap()
    };
    assert_eq!(clear.len(), 1);
    let v1: [u8; 32] = clear[0].1[16..].try_into().unwrap();
    {
        let s = raw_store(&db);
        let mut b = Batch::new();
        for (k, v) in &clear {
            b.put(Tree::Keys, k.clone(), v.to_vec());
        }
        b.delete(Tree::Meta, META_STORE_KEY_CHECK);
        b.put(Tree::Meta, META_SCHEMA, 1u32.to_be_bytes().to_vec());
        s.commit(b).unwrap();
        s.syncer().sync_all().unwrap();
    }
    std::fs::remove_file(&key_file).unwrap();

    gms.start();
    let audit = gms.admin(AdminRequest::Audit {
        after: None,
        limit: 100,
    });
    assert!(
        audit
            .to_string()
            .contains("store sealed: 1 secret values migrated"),
        "{audit}"
    );
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    gms.ok(&[
        "ge", "add", "laptop", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    let s = connect(enroll(&gms, "laptop").await, None).await;
    let (v, k) = s.current_key(G).unwrap();
    assert_eq!(v, KeyVersion(1));
    assert_eq!(*k.expose_secret(), v1, "the migrated key changed");
    drop(s);
    gms.kill();
    let s = raw_store(&db);
    let stored = s.get(Tree::Keys, &clear[0].0).unwrap().unwrap();
    assert!(!stored.windows(32).any(|w| w == v1), "not sealed");
    assert_eq!(
        s.get(Tree::Meta, META_SCHEMA).unwrap().unwrap().as_slice(),
        2u32.to_be_bytes()
    );
}

/// Waits (bounded) for a process that is expected to exit by itself.
fn wait_exit(mut child: std::process::Child) -> std::process::Output {
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
