//! The core driven directly, without QUIC (STYLE.md §2).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fpn_proto::ge::GeId;
use fpn_proto::keys::NodeKey;
use zeroize::Zeroizing;

use super::*;
use crate::admin::AdminRequest;
use crate::schedule::{HumanDuration, Schedule};
use crate::store::SledStore;
use crate::token::Token;
use crate::wire::{ClientMsg, EnrollRequest, RefusalCode, close, enroll_transcript};

pub(super) const T0: u64 = 1_800_000_000;

/// A store whose commits can be made to fail.
struct Flaky {
    inner: SledStore,
    fail: Arc<AtomicBool>,
}

impl Store for Flaky {
    fn get(&self, t: Tree, k: &[u8]) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        self.inner.get(t, k)
    }
    fn scan(&self, t: Tree) -> Result<Vec<crate::store::Entry>> {
        self.inner.scan(t)
    }
    fn commit(&self, b: Batch) -> Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::Store("disk full (test)".into()));
        }
        self.inner.commit(b)
    }
    fn syncer(&self) -> Arc<dyn crate::store::Syncer> {
        self.inner.syncer()
    }
    fn audit_log(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.inner.audit_log(after, limit)
    }
}

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) core: Core,
    pub(super) fail: Arc<AtomicBool>,
}

pub(super) fn fixture(edit: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let inner = SledStore::open(dir.path()).unwrap();
    init_store(&inner, "t.fpn.", T0).unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let mut cfg = Config::new("t.fpn").unwrap();
    cfg.rotation_schedule = Schedule::Off;
    cfg.grace = HumanDuration(Duration::from_secs(60));
    edit(&mut cfg);
    let store = Flaky {
        inner,
        fail: fail.clone(),
    };
    let mut core = Core::new(cfg, Box::new(store), Ca::generate(T0).unwrap(), T0).unwrap();
    core.set_listen_addr("198.18.0.1:4433".parse().unwrap());
    Fixture {
        _dir: dir,
        core,
        fail,
    }
}

pub(super) fn admin(c: &mut Core, req: AdminRequest) -> (serde_json::Value, Vec<Output>) {
    let (r, out) = c.handle_admin(req.clone(), T0);
    assert!(r.ok, "{req:?}: {:?}", r.error);
    (r.data, out)
}

pub(super) fn admin_err(c: &mut Core, req: AdminRequest) -> String {
    let (r, out) = c.handle_admin(req, T0);
    assert!(!r.ok && out.is_empty());
    r.error.unwrap()
}

pub(super) fn ge_add(c: &mut Core, name: &str, groups: &[u32]) {
    admin(
        c,
        AdminRequest::GeAdd {
            name: name.into(),
            kind: Some("ges".into()),
            mode: Some("op".into()),
            groups: groups.to_vec(),
            protect: Vec::new(),
        },
    );
}

pub(super) fn group_add(c: &mut Core, num: u32) {
    admin(
        c,
        AdminRequest::GroupAdd {
            num,
            name: format!("g{num}"),
        },
    );
}

pub(super) fn token(c: &mut Core, name: &str, ttl: u64) -> Token {
    let (d, _) = admin(
        c,
        AdminRequest::TokenCreate {
            name: name.into(),
            ttl_secs: Some(ttl),
        },
    );
    Token::parse(d["token"].as_str().unwrap()).unwrap()
}

pub(super) fn enroll_req(t: &Token, seed: u8) -> EnrollRequest {
    let k = NodeKey::from_seed(&[seed; 32]);
    let public = k.public();
    EnrollRequest {
        token_id: t.id,
        secret: t.secret.clone(),
        node_key: public,
        proof: k.sign(&enroll_transcript(&t.id, &public)),
    }
}

/// Enrolls `name` and returns the fingerprint of its certificate.
pub(super) fn enroll(c: &mut Core, name: &str, seed: u8) -> [u8; 32] {
    let t = token(c, name, 600);
    match c.handle_enroll(&enroll_req(&t, seed), T0).0 {
        ServerMsg::Enrolled(e) => crate::ca::fingerprint(&e.cert),
        other => panic!("{other:?}"),
    }
}

/// GEs that an output list sends a `GroupKeys` push for `group` to.
fn key_push_recipients(out: &[Output], group: u32) -> Vec<GeId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, frame } => {
                let (ty, body) = (frame[1], &frame[crate::wire::HEADER_LEN..]);
                match ServerMsg::decode(ty, body) {
                    Ok(ServerMsg::GroupKeys(gk)) if gk.group.0 == group => Some(to.clone()),
                    _ => None,
                }
            }
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn overlay_addresses_are_unique_and_not_reused_until_the_range_wraps() {
    let mut f = fixture(|c| c.overlay_range = "100.64.0.0/29".parse().unwrap());
    let c = &mut f.core;
    for n in ["a", "b", "c"] {
        ge_add(c, n, &[]);
    }
    let ip = |c: &Core, n: &str| c.st.ges[n].overlay.to_string();
    assert_eq!(
        (ip(c, "a"), ip(c, "b"), ip(c, "c")),
        (
            "100.64.0.1".into(),
            "100.64.0.2".into(),
            "100.64.0.3".into()
        )
    );
    admin(c, AdminRequest::GeRemove { name: "b".into() });
    ge_add(c, "d", &[]);
    // b's address is not handed out while the range has unused ones.
    assert_eq!(ip(c, "d"), "100.64.0.4");
    for n in ["e", "f"] {
        ge_add(c, n, &[]);
    }
    // The range wrapped: the freed address is the only one left.
    ge_add(c, "g", &[]);
    assert_eq!(ip(c, "g"), "100.64.0.2");
    assert!(
        admin_err(
            c,
            AdminRequest::GeAdd {
                name: "h".into(),
                kind: Some("ges".into()),
                mode: Some("op".into()),
                groups: vec![],
                protect: Vec::new(),
            }
        )
        .contains("full")
    );
}

#[test]
fn enrollment_tokens_work_once_and_refuse_forgeries() {
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    ge_add(c, "a", &[]);
    let t = token(c, "a", 600);
    let refusal = |m: ServerMsg| match m {
        ServerMsg::Refused { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    };

    let mut forged = enroll_req(&t, 1);
    forged.secret = Zeroizing::new([0; 32]);
    assert_eq!(
        refusal(c.handle_enroll(&forged, T0).0),
        RefusalCode::InvalidToken
    );
    let mut unknown = enroll_req(&t, 1);
    unknown.token_id[0] ^= 1;
    assert_eq!(
        refusal(c.handle_enroll(&unknown, T0).0),
        RefusalCode::InvalidToken
    );
    let mut bad_proof = enroll_req(&t, 1);
    bad_proof.proof[0] ^= 1;
    assert_eq!(
        refusal(c.handle_enroll(&bad_proof, T0).0),
        RefusalCode::BadProof
    );

    assert!(matches!(
        c.handle_enroll(&enroll_req(&t, 1), T0).0,
        ServerMsg::Enrolled(_)
    ));
    assert_eq!(
        refusal(c.handle_enroll(&enroll_req(&t, 2), T0).0),
        RefusalCode::TokenUsed
    );

    let t2 = token(c, "a", 10);
    assert_eq!(
        refusal(c.handle_enroll(&enroll_req(&t2, 3), T0 + 10).0),
        RefusalCode::TokenExpired
    );
}

#[test]
fn a_leaving_member_is_not_sent_the_new_key() {
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    group_add(c, 1);
    group_add(c, 2);
    ge_add(c, "a", &[1, 2]);
    ge_add(c, "b", &[1]);
    let (d, out) = admin(
        c,
        AdminRequest::GeSet {
            name: "a".into(),
            kind: None,
            mode: None,
            groups: None,
            add_groups: vec![],
            remove_groups: vec![1],
            protect: None,
        },
    );
    assert_eq!(d["rotated"][0]["group"], 1);
    let to = key_push_recipients(&out, 1);
    assert_eq!(to, vec![GeId(2)], "only b gets group 1's new key");
    assert_eq!(c.st.keys[&1].current.version.0, 2);
    assert_eq!(c.st.keys[&2].current.version.0, 1, "group 2 is untouched");
}

#[test]
fn revocation_refuses_the_certificate_rotates_and_tells_everyone() {
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    group_add(c, 1);
    ge_add(c, "a", &[1]);
    ge_add(c, "b", &[1]);
    let fa = enroll(c, "a", 1);
    let fb = enroll(c, "b", 2);
    assert_eq!(c.authorize(&fb, T0), Ok(GeId(2)));
    let (_, out) = admin(c, AdminRequest::GeRevoke { name: "b".into() });
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Close {
            ge: GeId(2),
            code: close::REVOKED,
            ..
        }
    )));
    assert!(out.iter().any(|o| matches!(o, Output::Broadcast { .. })));
    assert_eq!(key_push_recipients(&out, 1), vec![GeId(1)]);
    assert!(matches!(
        c.authorize(&fb, T0),
        Err(Refusal {
            code: crate::wire::RefusalCode::Revoked,
            ..
        })
    ));
    assert_eq!(c.authorize(&fa, T0), Ok(GeId(1)));
    assert!(
        c.open_session(GeId(2), "127.0.0.1:1".parse().unwrap(), vec![], T0)
            .is_err()
    );
    // A foreign fingerprint is unknown.
    assert!(c.authorize(&[9; 32], T0).is_err());
}

#[test]
fn re_enrollment_supersedes_the_old_certificate() {
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    ge_add(c, "a", &[]);
    let old = enroll(c, "a", 1);
    let new = enroll(c, "a", 2);
    assert!(c.authorize(&old, T0).is_err());
    assert_eq!(c.authorize(&new, T0), Ok(GeId(1)));
}

#[test]
fn a_failed_commit_leaves_no_trace_in_memory() {
    let mut f = fixture(|_| {});
    group_add(&mut f.core, 1);
    f.fail.store(true, Ordering::SeqCst);
    let e = admin_err(
        &mut f.core,
        AdminRequest::GeAdd {
            name: "a".into(),
            kind: Some("ges".into()),
            mode: Some("op".into()),
            groups: vec![1],
            protect: Vec::new(),
        },
    );
    assert!(e.contains("disk full"), "{e}");
    assert!(admin_err(&mut f.core, AdminRequest::Rotate { group: Some(1) }).contains("disk full"));
    f.fail.store(false, Ordering::SeqCst);
    assert!(f.core.st.ges.is_empty());
    assert_eq!(f.core.st.counters.next_ge_id, 1);
    assert_eq!(f.core.st.keys[&1].current.version.0, 1);
    // And the same name still works once the disk does.
    ge_add(&mut f.core, "a", &[1]);
}

#[test]
fn grace_ends_and_schedules_fire_from_handle_timeout() {
    let mut f = fixture(|c| c.rotation_schedule = Schedule::Every(Duration::from_secs(3600)));
    let c = &mut f.core;
    group_add(c, 1);
    ge_add(c, "a", &[1]);
    assert_eq!(c.poll_timeout(), Some(T0 + 3600));
    admin(c, AdminRequest::Rotate { group: Some(1) });
    assert_eq!(c.poll_timeout(), Some(T0 + 60), "the grace end comes first");
    assert!(c.handle_timeout(T0 + 59).is_empty());
    let out = c.handle_timeout(T0 + 60);
    assert_eq!(key_push_recipients(&out, 1), vec![GeId(1)]);
    assert!(c.st.keys[&1].previous.is_none());
    let out = c.handle_timeout(T0 + 3600);
    assert_eq!(key_push_recipients(&out, 1), vec![GeId(1)]);
    assert_eq!(c.st.keys[&1].current.version.0, 3);
    assert_eq!(c.poll_timeout(), Some(T0 + 3660));
}

#[test]
fn a_store_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let mut b = Batch::new();
    b.put(
        Tree::Meta,
        META_SCHEMA,
        (SCHEMA_VERSION + 1).to_be_bytes().to_vec(),
    );
    s.commit(b).unwrap();
    let e = Core::new(
        Config::new("t.fpn").unwrap(),
        Box::new(s),
        Ca::generate(T0).unwrap(),
        T0,
    )
    .unwrap_err();
    assert!(matches!(
        e,
        Error::SchemaTooNew { found, supported }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION
    ));
    assert!(e.to_string().contains("newer fpn-gms"));
}

#[test]
fn admin_errors_are_clear_and_change_nothing() {
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    group_add(c, 1);
    assert!(
        admin_err(
            c,
            AdminRequest::GroupAdd {
                num: 1,
                name: "x".into()
            }
        )
        .contains("already exists")
    );
    assert!(
        admin_err(
            c,
            AdminRequest::GeAdd {
                name: "Bad_Name".into(),
                kind: Some("ges".into()),
                mode: Some("op".into()),
                groups: vec![],
                protect: Vec::new(),
            }
        )
        .contains("GE name")
    );
    assert!(
        admin_err(
            c,
            AdminRequest::GeAdd {
                name: "a".into(),
                kind: Some("ges".into()),
                mode: Some("op".into()),
                groups: vec![0],
                protect: Vec::new(),
            }
        )
        .contains("group numbers start at 1")
    );
    ge_add(c, "a", &[1]);
    assert!(admin_err(c, AdminRequest::GroupRemove { num: 1 }).contains("still has members: a"));
    assert!(admin_err(c, AdminRequest::GeShow { name: "zz".into() }).contains("no GE named zz"));
}

#[test]
fn the_directory_lists_active_ges_in_pages_by_name() {
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    group_add(c, 1);
    for n in ["c", "a", "b"] {
        ge_add(c, n, &[1]);
    }
    let list = |c: &mut Core, after: &str| match c
        .handle_request(
            GeId(2),
            ClientMsg::DirectoryList {
                after: after.into(),
            },
            0,
        )
        .unwrap()
        .0
    {
        ServerMsg::DirectoryListing { entries, more } => (
            entries.into_iter().map(|e| e.name).collect::<Vec<_>>(),
            more,
        ),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        list(c, ""),
        (vec!["a".into(), "b".into(), "c".into()], false)
    );
    assert_eq!(list(c, "a"), (vec!["b".into(), "c".into()], false));
    admin(c, AdminRequest::GeRevoke { name: "b".into() });
    assert_eq!(list(c, ""), (vec!["a".into(), "c".into()], false));
    assert_eq!(list(c, "c"), (vec![], false));
    // Listing subscribed the lister (GE 2, "a") to the others' changes:
    // c's session start (new addresses) is pushed to it.
    enroll(c, "c", 3);
    let id_c = GeId(c.st.ges["c"].id);
    let (_, _, out) = c
        .open_session(id_c, "198.18.0.3:5000".parse().unwrap(), vec![], T0)
        .unwrap();
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Send { to, .. } if to.contains(&GeId(2))
    )));
}

// ---- renewal of node credentials (issue 9 item 3) ----

fn renewed(c: &mut Core, ge: u32, now: u64) -> crate::wire::Renewed {
    match c.handle_request(GeId(ge), ClientMsg::Renew, now).unwrap().0 {
        ServerMsg::Renewed(r) => r,
        other => panic!("{other:?}"),
    }
}

fn revoked_serials(out: &[Output]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            Output::Broadcast { frame } => {
                let (ty, len) = crate::wire::parse_header(frame[..6].try_into().unwrap()).unwrap();
                match ServerMsg::decode(ty, &frame[6..6 + len]) {
                    Ok(ServerMsg::Revoked { serials, .. }) => Some(serials),
                    _ => None,
                }
            }
            _ => None,
        })
        .flatten()
        .collect()
}

fn cred_of(bytes: &[u8], c: &Core, now: u64) -> fpn_proto::credential::Credential {
    fpn_proto::credential::UnverifiedCredential::decode(bytes)
        .unwrap()
        .verify(&c.ca().public_key(), now)
        .unwrap()
}

#[test]
fn enrollment_and_renewal_issue_the_configured_lifetime_to_the_second() {
    let mut f = fixture(|cfg| cfg.credential_lifetime = HumanDuration(Duration::from_secs(20)));
    let c = &mut f.core;
    ge_add(c, "a", &[]);
    let fp0 = enroll(c, "a", 1);
    let en = c.st.ges["a"].enrollment.clone().unwrap();
    assert_eq!(en.cert_not_after, T0 + 20);
    let cred0 = cred_of(&hex::decode(&en.credential).unwrap(), c, T0);
    assert_eq!(cred0.not_after, T0 + 20);
    // Not backdated by more than a quarter of its life (the floor of a
    // peer that lost its GMS must not see a fresh renewal as old).
    assert_eq!(cred0.not_before, T0 - 5);

    let r = renewed(c, 1, T0 + 10);
    assert_eq!(r.server_time, T0 + 10);
    let cred1 = cred_of(&r.credential, c, T0 + 10);
    assert_eq!((cred1.not_before, cred1.not_after), (T0 + 5, T0 + 30));
    assert_eq!(cred1.node_key, cred0.node_key);
    assert_eq!(cred1.info, cred0.info);
    assert!(cred1.serial > cred0.serial);
    let fp1 = crate::ca::fingerprint(&r.cert);
    // Both certificates open sessions: the node may have crashed before
    // saving the new one.
    assert_eq!(c.authorize(&fp0, T0 + 15), Ok(GeId(1)));
    assert_eq!(c.authorize(&fp1, T0 + 15), Ok(GeId(1)));
    // The session's next start sends the renewed credential.
    let (_, init, _) = c
        .open_session(GeId(1), "127.0.0.1:1".parse().unwrap(), vec![], T0 + 15)
        .unwrap();
    match init {
        ServerMsg::SessionInit(i) => assert_eq!(i.credential, r.credential),
        other => panic!("{other:?}"),
    }
    let en = c.st.ges["a"].enrollment.clone().unwrap();
    assert_eq!(en.renewed_at, Some(T0 + 10));
    assert_eq!(en.earlier.len(), 2, "{:?}", en.earlier);
    // A second renewal prunes what has expired by then.
    renewed(c, 1, T0 + 25);
    let en = c.st.ges["a"].enrollment.clone().unwrap();
    assert!(
        en.earlier.iter().all(|e| e.not_after == T0 + 30),
        "{:?}",
        en.earlier
    );
}

#[test]
fn a_revoked_or_removed_ge_gets_no_renewal_and_loses_every_live_pair() {
    let mut f = fixture(|cfg| cfg.credential_lifetime = HumanDuration(Duration::from_secs(20)));
    let c = &mut f.core;
    ge_add(c, "a", &[]);
    ge_add(c, "b", &[]);
    let fa0 = enroll(c, "a", 1);
    enroll(c, "b", 2);
    let en0 = c.st.ges["a"].enrollment.clone().unwrap();
    let r = renewed(c, 1, T0 + 10);
    let fa1 = crate::ca::fingerprint(&r.cert);
    let new_serial = cred_of(&r.credential, c, T0 + 10).serial;
    let (_, out) = c.handle_admin(AdminRequest::GeRevoke { name: "a".into() }, T0 + 12);
    let serials = revoked_serials(&out);
    for s in [en0.cert_serial, en0.credential_serial, new_serial] {
        assert!(serials.contains(&s), "{s} not in {serials:?}");
    }
    for fp in [fa0, fa1] {
        assert!(c.authorize(&fp, T0 + 12).is_err());
    }
    match c
        .handle_request(GeId(1), ClientMsg::Renew, T0 + 12)
        .unwrap()
        .0
    {
        ServerMsg::Refused { code, .. } => assert_eq!(code, RefusalCode::Revoked),
        other => panic!("{other:?}"),
    }
    admin(c, AdminRequest::GeRemove { name: "b".into() });
    match c
        .handle_request(GeId(2), ClientMsg::Renew, T0 + 12)
        .unwrap()
        .0
    {
        ServerMsg::Refused { code, .. } => assert_eq!(code, RefusalCode::UnknownGe),
        other => panic!("{other:?}"),
    }
}

#[test]
fn re_enrollment_supersedes_renewed_certificates_too() {
    let mut f = fixture(|cfg| cfg.credential_lifetime = HumanDuration(Duration::from_secs(60)));
    let c = &mut f.core;
    ge_add(c, "a", &[]);
    let old = enroll(c, "a", 1);
    let renewed_old = crate::ca::fingerprint(&renewed(c, 1, T0 + 1).cert);
    let new = enroll(c, "a", 2);
    assert!(c.authorize(&old, T0 + 2).is_err());
    assert!(c.authorize(&renewed_old, T0 + 2).is_err());
    assert_eq!(c.authorize(&new, T0 + 2), Ok(GeId(1)));
}

#[test]
fn an_expired_certificate_may_reconnect_to_renew_within_the_grace_only() {
    let mut f = fixture(|cfg| {
        cfg.credential_lifetime = HumanDuration(Duration::from_secs(20));
        cfg.expired_reconnect_grace = HumanDuration(Duration::from_secs(100));
    });
    let c = &mut f.core;
    ge_add(c, "a", &[]);
    let fp = enroll(c, "a", 1);
    assert_eq!(c.authorize(&fp, T0 + 120), Ok(GeId(1)));
    let r = renewed(c, 1, T0 + 120);
    assert_eq!(cred_of(&r.credential, c, T0 + 120).not_after, T0 + 140);
    assert!(c.authorize(&fp, T0 + 121).is_err());
    // Revoked: no grace at all.
    let fresh = crate::ca::fingerprint(&r.cert);
    admin(c, AdminRequest::GeRevoke { name: "a".into() });
    assert!(c.authorize(&fresh, T0 + 125).is_err());
}

// ---- NAT traversal: reflexive candidates and connect-now (issue 10) ----

/// The frames of `out` sent to `ge`, decoded.
pub(super) fn pushes_to(out: &[Output], ge: GeId) -> Vec<ServerMsg> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, frame } if to.contains(&ge) => {
                ServerMsg::decode(frame[1], &frame[crate::wire::HEADER_LEN..]).ok()
            }
            _ => None,
        })
        .collect()
}

#[test]
fn the_directory_carries_the_reflexive_candidate_and_connect_now_reaches_the_peer() {
    use crate::wire::{Candidates, ConnectNowOutcome as O};
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    group_add(c, 1);
    for (seed, n) in [(1, "nas"), (2, "laptop")] {
        ge_add(c, n, &[1]);
        enroll(c, n, seed);
    }
    let (nas, laptop) = (GeId(c.st.ges["nas"].id), GeId(c.st.ges["laptop"].id));
    // Each session comes from the public side of its home's NAT (the
    // carrier's socket, port-preserved), reporting its LAN address.
    let nas_seen: SocketAddr = "198.18.2.2:7718".parse().unwrap();
    let nas_lan: SocketAddr = "192.168.1.10:7718".parse().unwrap();
    let laptop_seen: SocketAddr = "198.18.3.2:7718".parse().unwrap();
    let laptop_lan: SocketAddr = "192.168.2.50:7718".parse().unwrap();
    c.open_session(nas, nas_seen, vec![nas_lan], T0).unwrap();
    c.open_session(laptop, laptop_seen, vec![laptop_lan], T0)
        .unwrap();

    // The directory hands out both candidates, typed by field.
    match c
        .handle_request(laptop, ClientMsg::DirectoryQuery("nas".into()), T0)
        .unwrap()
        .0
    {
        ServerMsg::DirectoryAnswer(Some(e)) => {
            assert_eq!(e.seen, Some(nas_seen), "reflexive candidate");
            assert_eq!(e.reported, vec![nas_lan], "local candidates");
        }
        other => panic!("{other:?}"),
    }
    // A node learns its own reflexive address.
    match c.handle_request(nas, ClientMsg::Observe, T0).unwrap().0 {
        ServerMsg::Observed(a) => assert_eq!(a, nas_seen),
        other => panic!("{other:?}"),
    }

    // The laptop asks: the NAS is told to dial the laptop's candidates,
    // which come from the GMS's own record.
    let (answer, out) = c
        .handle_request(laptop, ClientMsg::ConnectNow(nas), T0)
        .unwrap();
    assert!(
        matches!(answer, ServerMsg::ConnectNowSent(O::Sent)),
        "{answer:?}"
    );
    let pushed = pushes_to(&out, nas);
    assert_eq!(
        pushed.len(),
        1,
        "one push to the NAS and nothing to anyone else: {out:?}"
    );
    match &pushed[0] {
        ServerMsg::ConnectNow(cands) => assert_eq!(
            cands,
            &Candidates {
                ge: laptop,
                reflexive: Some(laptop_seen),
                local: vec![laptop_lan],
            }
        ),
        other => panic!("{other:?}"),
    }
    assert!(pushes_to(&out, laptop).is_empty());

    // Rate-limited per ordered pair; the other direction is its own pair.
    let again = c
        .handle_request(laptop, ClientMsg::ConnectNow(nas), T0)
        .unwrap();
    assert!(matches!(again.0, ServerMsg::ConnectNowSent(O::RateLimited)));
    assert!(again.1.is_empty());
    let back = c
        .handle_request(nas, ClientMsg::ConnectNow(laptop), T0)
        .unwrap();
    assert!(matches!(back.0, ServerMsg::ConnectNowSent(O::Sent)));
    let later = c
        .handle_request(
            laptop,
            ClientMsg::ConnectNow(nas),
            T0 + crate::wire::CONNECT_NOW_INTERVAL_SECS,
        )
        .unwrap();
    assert!(matches!(later.0, ServerMsg::ConnectNowSent(O::Sent)));

    // Oneself, unknown GEs and offline ones get no push.
    for (target, want) in [(laptop, O::Unknown), (GeId(999), O::Unknown)] {
        let (a, out) = c
            .handle_request(laptop, ClientMsg::ConnectNow(target), T0 + 5)
            .unwrap();
        assert!(
            matches!(a, ServerMsg::ConnectNowSent(o) if o == want),
            "{a:?}"
        );
        assert!(out.is_empty());
    }
    let sid = c.presence[&nas.0].session;
    c.close_session(nas, sid);
    let (a, out) = c
        .handle_request(laptop, ClientMsg::ConnectNow(nas), T0 + 10)
        .unwrap();
    assert!(matches!(a, ServerMsg::ConnectNowSent(O::Offline)), "{a:?}");
    assert!(out.is_empty());
}

#[test]
fn a_session_that_moves_takes_its_peers_dns_and_observe_along() {
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    group_add(c, 1);
    for (seed, n) in [(1, "nas"), (2, "laptop")] {
        ge_add(c, n, &[1]);
        enroll(c, n, seed);
    }
    let (nas, laptop) = (GeId(c.st.ges["nas"].id), GeId(c.st.ges["laptop"].id));
    let home: SocketAddr = "198.18.2.2:7718".parse().unwrap();
    let cafe: SocketAddr = "198.18.3.2:40123".parse().unwrap();
    c.open_session(nas, "198.18.1.20:7718".parse().unwrap(), vec![], T0)
        .unwrap();
    let (sid, _, _) = c.open_session(laptop, home, vec![], T0).unwrap();
    // The NAS watches the laptop's entry.
    c.handle_request(nas, ClientMsg::DirectoryQuery("laptop".into()), T0)
        .unwrap();

    // The laptop's QUIC connection migrated to the cafe.
    let out = c.session_moved(laptop, sid, cafe);
    let dns = out
        .iter()
        .any(|o| matches!(o, Output::Directory(DirectoryEvent::Updated(r)) if r.name == "laptop"));
    assert!(dns, "the DNS hears of the move: {out:?}");
    match &pushes_to(&out, nas)[..] {
        [ServerMsg::DirectoryChanged { entry: Some(e), .. }] => {
            assert_eq!(e.seen, Some(cafe), "the watcher gets the new address")
        }
        other => panic!("{other:?}"),
    }
    match c.handle_request(laptop, ClientMsg::Observe, T0).unwrap().0 {
        ServerMsg::Observed(a) => assert_eq!(a, cafe),
        other => panic!("{other:?}"),
    }
    // The same address again, or a stale session, changes nothing.
    assert!(c.session_moved(laptop, sid, cafe).is_empty());
    assert!(c.session_moved(laptop, sid + 1, home).is_empty());
    match c.handle_request(laptop, ClientMsg::Observe, T0).unwrap().0 {
        ServerMsg::Observed(a) => assert_eq!(a, cafe),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_audit_log_records_who_made_each_change() {
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    let (r, _) = c.handle_admin_as(
        AdminRequest::GroupAdd {
            num: 1,
            name: "home".into(),
        },
        "web:alice",
        T0,
    );
    assert!(r.ok, "{:?}", r.error);
    let (r, _) = c.handle_admin_as(AdminRequest::Rotate { group: Some(1) }, "cli uid=0", T0 + 1);
    assert!(r.ok, "{:?}", r.error);
    // A request without an actor (the server's own) is the system's.
    let (log, _) = admin(
        c,
        AdminRequest::Audit {
            after: None,
            limit: 100,
        },
    );
    let log: Vec<crate::admin::AuditView> = serde_json::from_value(log).unwrap();
    let who: Vec<(&str, &str)> = log
        .iter()
        .map(|e| (e.who.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(who[0].0, "gms", "{who:?}");
    assert_eq!(who[1], ("web:alice", "group add 1 name=home"), "{who:?}");
    assert_eq!(who[2].0, "cli uid=0", "{who:?}");
    assert!(who[2].1.starts_with("rotate group 1"), "{who:?}");
}

#[test]
fn groups_rename_and_unused_tokens_list_and_cancel() {
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    group_add(c, 1);
    group_add(c, 2);
    admin(
        c,
        AdminRequest::GroupRename {
            num: 1,
            name: "home".into(),
        },
    );
    let (gs, _) = admin(c, AdminRequest::GroupList);
    assert_eq!(gs[0]["name"], "home");
    // Names stay unique; an unknown group is an error.
    assert!(
        admin_err(
            c,
            AdminRequest::GroupRename {
                num: 2,
                name: "home".into()
            }
        )
        .contains("taken")
    );
    assert!(
        admin_err(
            c,
            AdminRequest::GroupRename {
                num: 9,
                name: "x".into()
            }
        )
        .contains("no group 9")
    );

    ge_add(c, "a", &[1]);
    let t = token(c, "a", 3600);
    let (ts, _) = admin(c, AdminRequest::TokenList);
    let ts: Vec<crate::admin::TokenInfoView> = serde_json::from_value(ts).unwrap();
    assert_eq!(ts.len(), 1);
    assert_eq!(
        (ts[0].ge.as_str(), ts[0].id.clone()),
        ("a", hex::encode(t.id))
    );
    assert!(!serde_json::to_string(&ts).unwrap().contains(&t.encode()));
    admin(
        c,
        AdminRequest::TokenCancel {
            id: ts[0].id.clone(),
        },
    );
    let (ts, _) = admin(c, AdminRequest::TokenList);
    assert_eq!(ts.as_array().map(Vec::len), Some(0));
    // The cancelled token no longer enrolls.
    let (r, _) = c.handle_enroll(&enroll_req(&t, 1), T0);
    assert!(
        !matches!(r, ServerMsg::Enrolled(_)),
        "a cancelled token enrolled"
    );
    assert!(admin_err(c, AdminRequest::TokenCancel { id: "zz".into() }).contains("32 hex digits"));
}

/// docs/MANAGEMENT.md's defaults: a GE's missing groups are created with
/// it (named gN, keyed, audited), a subnet makes a gateway (GEN), and a
/// gateway is closed unless told otherwise.
#[test]
fn ge_add_derives_kind_and_mode_and_creates_its_groups() {
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    let (v, _) = admin(
        c,
        AdminRequest::GeAdd {
            name: "gw".into(),
            kind: None,
            mode: None,
            groups: vec![4],
            protect: vec!["192.168.1.0/24".into()],
        },
    );
    assert_eq!(
        (v["kind"].as_str(), v["mode"].as_str()),
        (Some("gen"), Some("cl")),
        "{v}"
    );
    assert_eq!(v["groups"], serde_json::json!([4]));
    let (gs, _) = admin(c, AdminRequest::GroupList);
    let gs: Vec<crate::admin::GroupView> = serde_json::from_value(gs).unwrap();
    let g4 = gs.iter().find(|g| g.num == 4).expect("group 4 created");
    assert_eq!((g4.name.as_str(), g4.key_version), ("g4", 1));
    let (v, _) = admin(
        c,
        AdminRequest::GeAdd {
            name: "h".into(),
            kind: None,
            mode: None,
            groups: vec![4],
            protect: vec!["10.0.0.11/32".into()],
        },
    );
    assert_eq!(
        (v["kind"].as_str(), v["mode"].as_str()),
        (Some("ges"), Some("op")),
        "{v}"
    );
    // Said in the response, and only when it happened.
    let (d, _) = admin(
        c,
        AdminRequest::GeAdd {
            name: "k".into(),
            kind: Some("gea".into()),
            mode: None,
            groups: vec![4, 5],
            protect: vec!["192.168.5.10/32".into()],
        },
    );
    assert_eq!(d["created_groups"], serde_json::json!([5]), "{d}");
    assert_eq!(d["mode"], "cl");
    assert!(v.get("created_groups").is_none(), "{v}");
    // A taken default name is a clear error, nothing created.
    admin(
        c,
        AdminRequest::GroupRename {
            num: 5,
            name: "g6".into(),
        },
    );
    let e = admin_err(
        c,
        AdminRequest::GeAdd {
            name: "m".into(),
            kind: None,
            mode: None,
            groups: vec![6],
            protect: Vec::new(),
        },
    );
    assert!(e.contains("default name g6 is taken by group 5"), "{e}");
    assert!(admin_err(c, AdminRequest::GeShow { name: "m".into() }).contains("no GE named m"));
}

// ---- the directory on demand (design note 66) ----

#[test]
fn the_directory_on_demand_follows_only_what_a_node_asks_about_until_it_forgets() {
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    group_add(c, 1);
    for n in ["a", "b", "c"] {
        ge_add(c, n, &[1]);
    }
    enroll(c, "c", 3);
    let a = GeId(c.st.ges["a"].id);
    let id_c = GeId(c.st.ges["c"].id);
    // A page that follows nobody, with the same entries as a listing.
    let (page, _) = c
        .handle_request(a, ClientMsg::DirectoryPage { after: "".into() }, T0)
        .unwrap();
    match page {
        ServerMsg::DirectoryListing { entries, more } => {
            let names: Vec<_> = entries.into_iter().map(|e| e.name).collect();
            assert_eq!(
                (names, more),
                (vec!["a".into(), "b".into(), "c".into()], false)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.followed_by(a), 0);
    let (sid, _, out) = c
        .open_session(id_c, "198.18.0.3:5000".parse().unwrap(), vec![], T0)
        .unwrap();
    assert!(
        pushes_to(&out, a).is_empty(),
        "a page made its reader follow c"
    );
    // A query follows.
    c.handle_request(a, ClientMsg::DirectoryQuery("c".into()), T0)
        .unwrap();
    assert_eq!(c.followed_by(a), 1);
    let out = c.session_moved(id_c, sid, "198.18.0.3:6000".parse().unwrap());
    assert!(
        !pushes_to(&out, a).is_empty(),
        "c's move was not pushed to its follower"
    );
    // Forgetting stops the pushes at once.
    let (ack, _) = c
        .handle_request(a, ClientMsg::DirectoryForget(vec![id_c, GeId(999)]), T0)
        .unwrap();
    assert!(matches!(ack, ServerMsg::Ack), "{ack:?}");
    assert_eq!(c.followed_by(a), 0);
    let out = c.session_moved(id_c, sid, "198.18.0.3:7000".parse().unwrap());
    assert!(
        pushes_to(&out, a).is_empty(),
        "a forgotten GE's move was pushed"
    );
}

#[test]
fn the_listing_digest_changes_with_the_listing_only_and_survives_a_restart() {
    let mut f = fixture(|_| {});
    let c = &mut f.core;
    group_add(c, 1);
    for n in ["a", "b"] {
        ge_add(c, n, &[1]);
    }
    enroll(c, "b", 2);
    let a = GeId(c.st.ges["a"].id);
    let digest = |c: &mut Core| match c.handle_request(a, ClientMsg::DirectoryDigest, T0) {
        Ok((ServerMsg::DirectoryDigest(d), _)) => d,
        other => panic!("{other:?}"),
    };
    let d0 = digest(c);
    assert_eq!(digest(c), d0);
    // Presence is not part of it.
    let b = GeId(c.st.ges["b"].id);
    c.open_session(b, "198.18.0.2:5000".parse().unwrap(), vec![], T0)
        .unwrap();
    c.handle_request(
        b,
        ClientMsg::ReportAddresses(vec!["10.0.0.2:7718".parse().unwrap()]),
        T0,
    )
    .unwrap();
    assert_eq!(digest(c), d0, "presence changed the digest");
    // A GE added changes it; revoked, it is listed no more and the digest
    // is the old one again.
    ge_add(c, "e", &[1]);
    let d1 = digest(c);
    assert_ne!(d1, d0, "a new GE left the digest as it was");
    admin(c, AdminRequest::GeRevoke { name: "e".into() });
    assert_eq!(digest(c), d0);
    // The same records after a restart: the same digest.
    let reloaded = State::load(c.store.as_ref()).unwrap();
    c.st = reloaded;
    assert_eq!(c.st.listing_digest, None);
    assert_eq!(digest(c), d0, "a restart changed the digest");
}
