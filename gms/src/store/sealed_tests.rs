use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fpn_proto::ge::GroupId;
use fpn_proto::keys::{GroupKey, KeyVersion};

use super::*;
use crate::model::{KeyRecord, TokenRecord};
use crate::store::SledStore;

/// Opens the raw sled store, waiting (bounded) for a dropped one to let go
/// of its lock: sled releases it when its own threads have stopped.
fn raw(dir: &Path) -> SledStore {
    let t0 = Instant::now();
    loop {
        match SledStore::open(dir) {
            Ok(s) => return s,
            Err(e) if t0.elapsed() < Duration::from_secs(5) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the store stayed locked after its drop: {e}"),
        }
    }
}

fn sealed(dir: &Path) -> Result<SealedStore<SledStore>> {
    SealedStore::open(raw(&dir.join("db")), &dir.join("store.key"), 1000)
}

fn key_value(version: u32, key: [u8; 32], expires_at: Option<u64>) -> Vec<u8> {
    KeyRecord {
        version: KeyVersion(version),
        created_at: 1000,
        expires_at,
        key: GroupKey::from_bytes(key),
    }
    .encode()
}

fn token_value(hash_hex: &str) -> Vec<u8> {
    to_json(&TokenRecord {
        ge_name: "laptop".into(),
        ge_id: 1,
        secret_sha256: hash_hex.into(),
        created_at: 1000,
        expires_at: 2000,
        used_at: None,
    })
}

fn commit_synced(store: &dyn Store, b: Batch) {
    store.commit(b).unwrap();
    store.syncer().sync_all().unwrap();
}

/// What a GMS does to its secrets over time: keys for three groups, a
/// rotation of each (the old version marked, then deleted at the end of
/// the grace), a group removed with its key, a token created and used.
/// Returns every secret written (group keys, the token's verifier).
fn workload(store: &dyn Store) -> Vec<Vec<u8>> {
    let mut secrets = Vec::new();
    let mut b = Batch::new();
    let mut v1 = Vec::new();
    for g in 1..=3u32 {
        let k: [u8; 32] = crate::random().unwrap();
        b.put(
            Tree::Keys,
            KeyRecord::tree_key(GroupId(g), KeyVersion(1)),
            key_value(1, k, None),
        );
        secrets.push(k.to_vec());
        v1.push(k);
    }
    let token_hash = hex::encode(crate::random::<32>().unwrap());
    b.put(Tree::Tokens, b"token-1".to_vec(), token_value(&token_hash));
    secrets.push(token_hash.clone().into_bytes());
    commit_synced(store, b);

    // Rotation: a new current version, the old one with its grace end.
    let mut b = Batch::new();
    for g in 1..=3u32 {
        let k: [u8; 32] = crate::random().unwrap();
        b.put(
            Tree::Keys,
            KeyRecord::tree_key(GroupId(g), KeyVersion(2)),
            key_value(2, k, None),
        );
        b.put(
            Tree::Keys,
            KeyRecord::tree_key(GroupId(g), KeyVersion(1)),
            key_value(1, v1[g as usize - 1], Some(1600)),
        );
        secrets.push(k.to_vec());
    }
    commit_synced(store, b);

    // Grace over: version 1 erased; group 3 removed; the token used up.
    let mut b = Batch::new();
    for g in 1..=3u32 {
        b.delete(Tree::Keys, KeyRecord::tree_key(GroupId(g), KeyVersion(1)));
    }
    b.delete(Tree::Keys, KeyRecord::tree_key(GroupId(3), KeyVersion(2)));
    b.delete(Tree::Tokens, b"token-1".to_vec());
    commit_synced(store, b);
    secrets
}

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

/// The secrets whose bytes occur anywhere in any file under `dir`.
fn found_in(dir: &Path, secrets: &[Vec<u8>]) -> Vec<(usize, PathBuf)> {
    let mut hits = Vec::new();
    for f in files(dir) {
        let bytes = std::fs::read(&f).unwrap();
        for (i, s) in secrets.iter().enumerate() {
            if bytes.windows(s.len()).any(|w| w == s.as_slice()) {
                hits.push((i, f.clone()));
            }
        }
    }
    hits
}

#[test]
fn no_secret_reaches_the_sled_files_in_the_clear_even_after_rotation_and_delete() {
    // Control: the same work on the bare sled store leaves every secret,
    // deleted ones included, in its files. This is what sealing is for,
    // and it shows the scan below can see a key when one is there.
    let plain = tempfile::tempdir().unwrap();
    let secrets = {
        let s = raw(plain.path());
        workload(&s)
    };
    let s = raw(plain.path());
    let hits = found_in(plain.path(), &secrets);
    drop(s);
    for i in 0..secrets.len() {
        assert!(
            hits.iter().any(|(h, _)| *h == i),
            "secret {i} not in the bare sled files: the control proves nothing"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let (secrets, current) = {
        let s = sealed(dir.path()).unwrap();
        let secrets = workload(&s);
        // Still readable through the store: group 1's version 2.
        let v = s
            .get(Tree::Keys, &KeyRecord::tree_key(GroupId(1), KeyVersion(2)))
            .unwrap()
            .unwrap();
        let rec = KeyRecord::decode(KeyVersion(2), &v).unwrap();
        (secrets, rec.key.expose_secret().to_vec())
    };
    assert_eq!(current, secrets[4], "group 1 v2 reads back");
    // Closed; every byte of every file of the sled directory.
    let s = raw(&dir.path().join("db"));
    let hits = found_in(&dir.path().join("db"), &secrets);
    drop(s);
    assert!(
        hits.is_empty(),
        "secrets in the clear in the sealed store's files: {hits:?}"
    );
    // The key file is no group key either.
    assert!(found_in(dir.path(), &secrets).is_empty());
}

#[test]
fn a_schema_1_store_is_migrated_on_open_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let k: [u8; 32] = crate::random().unwrap();
    let key_v = key_value(4, k, None);
    let token_v = token_value("ab12");
    {
        // What fpn-gms before sealing wrote.
        let s = raw(&db);
        let mut b = Batch::new();
        b.put(Tree::Meta, META_SCHEMA, 1u32.to_be_bytes().to_vec());
        b.put(
            Tree::Keys,
            KeyRecord::tree_key(GroupId(1), KeyVersion(4)),
            key_v.clone(),
        );
        b.put(Tree::Tokens, b"t".to_vec(), token_v.clone());
        b.put(Tree::Ges, b"laptop".to_vec(), b"{\"ge\":1}".to_vec());
        commit_synced(&s, b);
    }
    assert!(!dir.path().join("store.key").exists());
    let audit_before;
    {
        let s = sealed(dir.path()).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("store.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // Reads as before, through the store...
        let kk = KeyRecord::tree_key(GroupId(1), KeyVersion(4));
        assert_eq!(s.get(Tree::Keys, &kk).unwrap().unwrap().as_slice(), key_v);
        assert_eq!(s.scan(Tree::Tokens).unwrap()[0].1.as_slice(), token_v);
        assert_eq!(
            s.get(Tree::Ges, b"laptop").unwrap().unwrap().as_slice(),
            b"{\"ge\":1}"
        );
        // ...but is sealed underneath, and the schema says so.
        let stored = s.inner().get(Tree::Keys, &kk).unwrap().unwrap();
        assert_eq!(stored.len(), key_v.len() + SEAL_OVERHEAD);
        assert!(!stored.windows(32).any(|w| w == k));
        let stored = s.inner().get(Tree::Tokens, b"t").unwrap().unwrap();
        assert!(!stored.windows(4).any(|w| w == b"ab12"));
        assert_eq!(
            s.inner()
                .get(Tree::Ges, b"laptop")
                .unwrap()
                .unwrap()
                .as_slice(),
            b"{\"ge\":1}",
            "only the secret trees are sealed"
        );
        assert_eq!(
            s.get(Tree::Meta, META_SCHEMA).unwrap().unwrap().as_slice(),
            2u32.to_be_bytes()
        );
        let log = s.audit_log(None, 10).unwrap();
        assert!(
            String::from_utf8_lossy(&log.last().unwrap().1)
                .contains("store sealed: 2 secret values migrated"),
            "{log:?}"
        );
        audit_before = log.len();
        assert!(s.syncer().synced() >= s.syncer().committed(), "not synced");
    }
    // A second open finds it sealed and migrates nothing.
    let s = sealed(dir.path()).unwrap();
    assert_eq!(s.audit_log(None, 10).unwrap().len(), audit_before);
    let kk = KeyRecord::tree_key(GroupId(1), KeyVersion(4));
    assert_eq!(s.get(Tree::Keys, &kk).unwrap().unwrap().as_slice(), key_v);
}

/// A store whose commits all fail (a full disk, say).
struct FailingCommits(SledStore);

impl Store for FailingCommits {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
        self.0.get(tree, key)
    }
    fn scan(&self, tree: Tree) -> Result<Vec<Entry>> {
        self.0.scan(tree)
    }
    fn commit(&self, _: Batch) -> Result<()> {
        Err(Error::Store("no space left (test)".into()))
    }
    fn syncer(&self) -> Arc<dyn Syncer> {
        self.0.syncer()
    }
    fn audit_log(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.0.audit_log(after, limit)
    }
}

#[test]
fn a_failed_migration_leaves_the_store_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let kk = KeyRecord::tree_key(GroupId(1), KeyVersion(1));
    let key_v = key_value(1, crate::random().unwrap(), None);
    {
        let s = raw(&db);
        let mut b = Batch::new();
        b.put(Tree::Meta, META_SCHEMA, 1u32.to_be_bytes().to_vec());
        b.put(Tree::Keys, kk.clone(), key_v.clone());
        commit_synced(&s, b);
    }
    let e = SealedStore::open(
        FailingCommits(raw(&db)),
        &dir.path().join("store.key"),
        1000,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Store(_)), "{e}");
    let s = raw(&db);
    assert_eq!(s.get(Tree::Keys, &kk).unwrap().unwrap().as_slice(), key_v);
    assert!(s.get(Tree::Meta, META_STORE_KEY_CHECK).unwrap().is_none());
    assert_eq!(
        s.get(Tree::Meta, META_SCHEMA).unwrap().unwrap().as_slice(),
        1u32.to_be_bytes()
    );
    drop(s);
    // The next open migrates it, with the key file made the first time.
    let s = sealed(dir.path()).unwrap();
    assert_eq!(s.get(Tree::Keys, &kk).unwrap().unwrap().as_slice(), key_v);
}

#[test]
fn a_missing_wrong_open_or_broken_key_file_is_a_typed_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("store.key");
    let kk = KeyRecord::tree_key(GroupId(1), KeyVersion(1));
    let key_v = key_value(1, crate::random().unwrap(), None);
    {
        let s = sealed(dir.path()).unwrap();
        let mut b = Batch::new();
        b.put(Tree::Keys, kk.clone(), key_v.clone());
        commit_synced(&s, b);
    }
    let good = std::fs::read(&key_path).unwrap();
    let stored_before = raw(&dir.path().join("db"))
        .get(Tree::Keys, &kk)
        .unwrap()
        .unwrap();
    let put_key = |bytes: &[u8], mode: u32| {
        let _ = std::fs::remove_file(&key_path);
        std::fs::write(&key_path, bytes).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(mode)).unwrap();
    };

    std::fs::remove_file(&key_path).unwrap();
    let e = sealed(dir.path()).unwrap_err();
    assert!(matches!(e, Error::StoreKeyMissing { .. }), "{e}");
    assert!(e.to_string().contains("restore it"), "{e}");
    assert!(!key_path.exists(), "a new key was made for a sealed store");

    put_key(&[7u8; 32], 0o600);
    let e = sealed(dir.path()).unwrap_err();
    assert!(matches!(e, Error::StoreKeyWrong { .. }), "{e}");
    assert_eq!(std::fs::read(&key_path).unwrap(), [7u8; 32], "key replaced");

    put_key(&good, 0o644);
    let e = sealed(dir.path()).unwrap_err();
    assert!(matches!(e, Error::StoreKeyMode { mode: 0o644, .. }), "{e}");

    put_key(&good[..16], 0o600);
    let e = sealed(dir.path()).unwrap_err();
    assert!(matches!(e, Error::StoreKeyUnreadable { .. }), "{e}");

    // None of that touched the store: with the right key back, all is there.
    put_key(&good, 0o600);
    {
        let s = sealed(dir.path()).unwrap();
        assert_eq!(s.get(Tree::Keys, &kk).unwrap().unwrap().as_slice(), key_v);
        assert_eq!(
            s.inner().get(Tree::Keys, &kk).unwrap().unwrap(),
            stored_before,
            "the sealed value was rewritten"
        );
    }
}

#[test]
fn a_sealed_value_moved_to_another_key_or_altered_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = sealed(dir.path()).unwrap();
    let (a, b) = (
        KeyRecord::tree_key(GroupId(1), KeyVersion(1)),
        KeyRecord::tree_key(GroupId(2), KeyVersion(1)),
    );
    let mut batch = Batch::new();
    batch.put(Tree::Keys, a.clone(), key_value(1, [1; 32], None));
    commit_synced(&s, batch);
    let stored = s.inner().get(Tree::Keys, &a).unwrap().unwrap();
    // Copied under group 2's key, behind the sealing layer's back.
    let mut batch = Batch::new();
    batch.put(Tree::Keys, b.clone(), stored.to_vec());
    let mut flipped = stored.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    batch.put(Tree::Keys, a.clone(), flipped);
    s.inner().commit(batch).unwrap();
    for k in [&a, &b] {
        let e = s.get(Tree::Keys, k).unwrap_err();
        assert!(matches!(e, Error::Corrupt { tree: "keys", .. }), "{e}");
    }
    assert!(matches!(
        s.scan(Tree::Keys),
        Err(Error::Corrupt { tree: "keys", .. })
    ));
}
