//! First-run mistakes of `fpn-node enroll` against a real GMS (the
//! fpn-gms server, in this process, on loopback): a token used twice, an
//! expired token, a GMS that does not answer. Each error names what
//! happened and the command that fixes it; nothing is written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fpn_gms::admin::{self, AdminRequest};
use fpn_gms::config::{DataDir, DnsSettings};
use fpn_gms::server::{self, InitOptions, NoDirectoryHook};

const WAIT: Duration = Duration::from_secs(10);

/// A GMS serving from a temporary data directory until dropped.
struct Gms {
    _tmp: tempfile::TempDir,
    data: DataDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gms {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("gms");
        server::init(&InitOptions {
            data: root.clone(),
            zone: "test.fpn.".into(),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            public_addr: None,
            overlay_range: None,
            rotation_schedule: None,
            grace: None,
            credential_lifetime: None,
            dns: Some(DnsSettings {
                enabled: false,
                ..Default::default()
            }),
        })
        .unwrap();
        let data = DataDir::new(&root);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let d = data.clone();
        let task = tokio::spawn(async move {
            server::serve(d, Arc::new(NoDirectoryHook), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let g = Self {
            _tmp: tmp,
            data,
            stop: Some(stop),
            task: Some(task),
        };
        let deadline = Instant::now() + WAIT;
        while g.admin(AdminRequest::Status).await.is_none() {
            assert!(Instant::now() < deadline, "the GMS did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        g
    }

    /// One admin request; `None` while the socket does not answer.
    async fn admin(&self, req: AdminRequest) -> Option<serde_json::Value> {
        let sock = self.data.admin_socket();
        let r = tokio::task::spawn_blocking(move || admin::request(&sock, &req, WAIT))
            .await
            .unwrap()
            .ok()?;
        assert!(r.ok, "{:?}", r.error);
        Some(r.data)
    }

    async fn token(&self, name: &str, ttl_secs: Option<u64>) -> String {
        let v = self
            .admin(AdminRequest::TokenCreate {
                name: name.into(),
                ttl_secs,
            })
            .await
            .unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

async fn add_laptop(gms: &Gms) {
    gms.admin(AdminRequest::GroupAdd {
        num: 1,
        name: "home".into(),
    })
    .await
    .unwrap();
    gms.admin(AdminRequest::GeAdd {
        name: "laptop".into(),
        kind: Some("ges".into()),
        mode: Some("op".into()),
        groups: vec![1],
        protect: Vec::new(),
    })
    .await
    .unwrap();
}

/// `fpn-node enroll --token-file FILE --state STATE [--json]` (off the
/// runtime's threads: it blocks until the binary exits).
async fn enroll(token: &str, state: &Path, json: bool) -> Output {
    let file = state.with_extension("token");
    std::fs::write(&file, token).unwrap();
    let mut args: Vec<String> = vec![
        "enroll".into(),
        "--token-file".into(),
        file.to_str().unwrap().into(),
        "--state".into(),
        state.to_str().unwrap().into(),
    ];
    if json {
        args.push("--json".into());
    }
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_fpn-node"))
            .args(&args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn state_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_or_expired_token_says_to_create_a_new_one() {
    let gms = Gms::start().await;
    add_laptop(&gms).await;
    let dir = tempfile::tempdir().unwrap();

    let token = gms.token("laptop", None).await;
    let first = enroll(&token, &state_in(&dir, "a"), false).await;
    assert!(first.status.success(), "{}", stderr(&first));
    // The same token again, e.g. on a second machine or after a reinstall.
    let again = enroll(&token, &state_in(&dir, "b"), true).await;
    assert!(!again.status.success());
    let err = stderr(&again);
    assert!(
        err.contains("already used") && err.contains("fpn-gms token create NAME"),
        "{err}"
    );
    assert!(err.contains("fpn-node up --state"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("already used"), "{v}");
    assert!(!state_in(&dir, "b").join("identity.json").exists());

    let short = gms.token("laptop", Some(1)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = enroll(&short, &state_in(&dir, "c"), false).await;
    assert!(!late.status.success());
    let err = stderr(&late);
    assert!(
        err.contains("expired") && err.contains("fpn-gms token create NAME --ttl"),
        "{err}"
    );
    assert!(!state_in(&dir, "c").join("identity.json").exists());
    gms.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gms_that_does_not_answer_is_named_with_where_to_look() {
    // A port nothing listens on: bind one, note it, close it.
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let token = fpn_gms_client::token::Token::generate(&addr.to_string(), [7; 32])
        .unwrap()
        .encode();
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let out = enroll(&token, &state_in(&dir, "s"), false).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("no answer from the GMS at {addr}"))
            && err.contains("fpn-gms serve")
            && err.contains(&format!("UDP port {}", addr.port())),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(!state_in(&dir, "s").join("identity.json").exists());
}
