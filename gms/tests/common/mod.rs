//! Test harness: the real `fpn-gms` binary in a temporary data directory on
//! loopback, and clients built with the library.

#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fpn_gms::admin::{self, AdminRequest, AdminResponse};
use fpn_gms::client::{self, Event, Identity, Session, SessionConfig};

pub const BIN: &str = env!("CARGO_BIN_EXE_fpn-gms");
/// Bound on every wait for the server or a client event.
pub const WAIT: Duration = Duration::from_secs(10);

/// A GMS process with its own data directory.
pub struct Gms {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Gms {
    /// `fpn-gms init` on loopback with an ephemeral port, plus `extra` flags.
    pub fn init(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("gms");
        let mut args = vec![
            "init",
            "--data",
            data.to_str().unwrap(),
            "--zone",
            "test.fpn.",
        ];
        if !extra.contains(&"--listen") {
            args.extend_from_slice(&["--listen", "127.0.0.1:0"]);
        }
        // Port 53 is shared by every test: each server's DNS gets its own port.
        if !extra.contains(&"--dns-listen") && !extra.contains(&"--no-dns") {
            args.extend_from_slice(&["--dns-listen", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            tmp,
            data,
            child: None,
            starts: 0,
        }
    }

    /// Initializes and starts.
    pub fn start_new(extra: &[&str]) -> Self {
        let mut g = Self::init(extra);
        g.start();
        g
    }

    pub fn log_path(&self) -> PathBuf {
        self.tmp.path().join(format!("serve-{}.log", self.starts))
    }

    /// Starts `serve` and waits until the admin socket answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none());
        self.starts += 1;
        let log = File::create(self.log_path()).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--data", self.data.to_str().unwrap()])
            .env("RUST_LOG", "info,fpn_gms=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if self.try_admin(&AdminRequest::Status).is_ok_and(|r| r.ok) {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("serve exited with {st}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "server did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no cleanup.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Everything the current server process logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn socket(&self) -> PathBuf {
        self.data.join("admin.sock")
    }

    pub fn try_admin(&self, req: &AdminRequest) -> fpn_gms::Result<AdminResponse> {
        admin::request(&self.socket(), req, WAIT)
    }

    /// An admin request through the library; panics unless it succeeds.
    pub fn admin(&self, req: AdminRequest) -> serde_json::Value {
        let r = self.try_admin(&req).unwrap();
        assert!(r.ok, "{req:?}: {:?}", r.error);
        r.data
    }

    /// Runs the CLI with `--data`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data")
            .arg(&self.data)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs the CLI, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "fpn-gms {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs the CLI with `--json` and parses the answer.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// `token create NAME` through the CLI.
    pub fn token(&self, name: &str) -> String {
        self.json(&["token", "create", name])["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The bound QUIC address.
    pub fn addr(&self) -> SocketAddr {
        self.admin(AdminRequest::Status)["listen"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for Gms {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn endpoint() -> quinn::Endpoint {
    client::endpoint("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// Creates a token for `name` and enrolls.
pub async fn enroll(gms: &Gms, name: &str) -> Identity {
    client::enroll(&gms.token(name), &endpoint()).await.unwrap()
}

/// Starts a session and waits for its first `Connected`.
pub async fn connect(id: Identity, cache: Option<&Path>) -> Session {
    let cfg = SessionConfig {
        key_cache: cache.map(Path::to_path_buf),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..SessionConfig::default()
    };
    let mut s = Session::start(id, endpoint(), cfg).unwrap();
    let ev = next_matching(&mut s, |e| {
        matches!(e, Event::Connected | Event::Terminated { .. })
    })
    .await;
    assert_eq!(ev, Event::Connected);
    s
}

/// The next event that satisfies `pred`, within [`WAIT`].
pub async fn next_matching(s: &mut Session, pred: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = s.next_event().await.expect("session task ended");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .expect("no matching event in time")
}
