//! Helpers for the integration tests: run the real `fpn-ddns` binary on an
//! ephemeral loopback port with the example configuration, and drive it
//! with the real `dig` and `nsupdate` (Debian package bind9-dnsutils).

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_fpn-ddns");
pub const ZONE: &str = "home.fpn.";

/// Fails (never skips) when a tool the tests need is missing.
pub fn require_tools() {
    for tool in ["dig", "nsupdate"] {
        let found = Command::new(tool)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "`{tool}` is missing: install Debian's bind9-dnsutils (scripts/deps.sh does)"
        );
    }
}

/// A scratch directory holding the example configuration and fresh keys.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// Copies configs/ddns/ddns.toml and makes its three keys with
    /// `fpn-ddns tsig-keygen`.
    pub fn new() -> Self {
        require_tools();
        let dir = tempfile::tempdir().expect("tempdir");
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/ddns/ddns.toml");
        std::fs::copy(&example, dir.path().join("ddns.toml"))
            .expect("copy the example configuration");
        for name in ["admin", "router1", "xfer"] {
            let out = Command::new(BIN)
                .args(["tsig-keygen", &format!("{name}-key")])
                .output()
                .expect("run tsig-keygen");
            assert!(out.status.success(), "tsig-keygen failed");
            std::fs::write(dir.path().join(format!("{name}.key")), &out.stdout).expect("write key");
        }
        Self { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A key file with the same name as `name` but another secret.
    pub fn forged_key(&self, name: &str) -> PathBuf {
        let out = Command::new(BIN)
            .args(["tsig-keygen", &format!("{name}-key")])
            .output()
            .expect("tsig-keygen");
        let p = self.path(&format!("forged-{name}.key"));
        std::fs::write(&p, &out.stdout).expect("write key");
        p
    }

    /// Starts the server on an ephemeral port.
    pub fn start(&self, extra: &[&str]) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("server.log"))
            .expect("log file");
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(self.path("ddns.toml"))
            .args(["--listen", "127.0.0.1:0", "--udp-threads", "2", "--data"])
            .arg(self.path("data"))
            .args(extra)
            .env("RUST_LOG", "fpn_ddns=debug,info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start fpn-ddns");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("fpn-ddns did not start; log:\n{}", self.log());
            });
        let addr: SocketAddr = line
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Server { child, addr }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
    }
}

/// A running `fpn-ddns serve`.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// `dig @server -p PORT +norec ARGS`, output as text.
    pub fn dig(&self, args: &[&str]) -> String {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port(),
                "+norec",
                "+time=3",
                "+tries=2",
            ])
            .args(args)
            .output()
            .expect("run dig");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `dig +short`, one answer per line.
    pub fn short(&self, name: &str, t: &str) -> Vec<String> {
        self.dig(&["+short", name, t])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The zone's SOA serial.
    pub fn serial(&self) -> u32 {
        let soa = self.short(ZONE, "SOA");
        let line = soa.first().unwrap_or_else(|| panic!("no SOA answer"));
        line.split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .expect("serial")
    }

    /// Runs nsupdate (`-k key` if given) with `server` and `zone` lines
    /// prepended and `send` appended.
    pub fn nsupdate(&self, key: Option<&Path>, commands: &str) -> Output {
        let mut cmd = Command::new("nsupdate");
        cmd.args(["-t", "5"]);
        if let Some(k) = key {
            cmd.arg("-k").arg(k);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsupdate");
        let script = format!(
            "server 127.0.0.1 {}\nzone {ZONE}\n{commands}\nsend\n",
            self.port()
        );
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write");
        child.wait_with_output().expect("nsupdate output")
    }

    /// Stops the server with SIGTERM (or SIGKILL) and waits.
    pub fn stop(mut self, signal: i32) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, signal) };
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Text of an nsupdate run, for assertions and messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
