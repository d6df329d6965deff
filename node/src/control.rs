//! The control socket (`DIR/control.sock`, 0600): one JSON request per
//! line, one JSON response per line. `fpn-node status|ping|down` are its
//! clients.
//!
//! ```text
//! -> {"cmd":"status"}
//! <- {"ok":true,"status":{...}}
//! -> {"cmd":"ping","name":"b","count":3}
//! <- {"ok":true,"ping":{"name":"b.home.fpn","address":"100.64.0.2","action":"encrypt","carrier":"quic","rtt_ms":[1.2,0.4,0.4]}}
//! -> {"cmd":"netcheck"}
//! <- {"ok":true,"netcheck":{"reflexive":"198.18.2.2:7718","behind_nat":true,...}}
//! -> {"cmd":"why","name":"nas","proto":"tcp","port":22}
//! <- {"ok":true,"why":{"rule":"shared-group","action":"encrypt","reason":"...",...}}
//! -> {"cmd":"down"}
//! <- {"ok":true}
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::status::{Netcheck, PingReport, Status, WhyReport};

/// Longest request line accepted.
const MAX_LINE: usize = 4096;
/// Most pings one request may ask for.
pub const MAX_PING_COUNT: u32 = 100;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// The daemon's state.
    Status,
    /// ICMP echo to a peer through the overlay.
    Ping {
        /// Short name, FQDN or overlay address.
        name: String,
        /// Echo requests to send (1..=100).
        count: u32,
        /// ICMPv6 to the peer's IPv6 overlay address (also when `name` is
        /// an IPv6 address).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ipv6: bool,
    },
    /// The node's candidates and reflexive address (asks the GMS anew).
    Netcheck,
    /// Which decision rule applies to a flow to a peer, and why (sends
    /// nothing to the peer).
    Why {
        /// Short name, FQDN or overlay address.
        name: String,
        /// "tcp", "udp" or "icmp".
        #[serde(default = "default_proto")]
        proto: String,
        /// Destination port (0: any).
        #[serde(default)]
        port: u16,
    },
    /// Stop the daemon.
    Down,
}

fn default_proto() -> String {
    "tcp".into()
}

/// A response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    /// True when the request was carried out.
    pub ok: bool,
    /// What went wrong, when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// The answer to `status`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<Status>,
    /// The answer to `ping`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ping: Option<PingReport>,
    /// The answer to `netcheck`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub netcheck: Option<Netcheck>,
    /// The answer to `why`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub why: Option<WhyReport>,
}

impl Response {
    /// A failure.
    pub fn error(e: impl ToString) -> Self {
        Self {
            ok: false,
            error: Some(e.to_string()),
            ..Self::default()
        }
    }
}

/// A request from a client, with where its answer goes.
#[derive(Debug)]
pub struct Call {
    /// The request.
    pub request: Request,
    /// The answer.
    pub reply: oneshot::Sender<Response>,
}

/// The listening control socket; removed from disk when dropped.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` (0600), replacing a stale socket. Call only while
    /// holding the state directory's lock, so the socket cannot be live.
    pub fn bind(path: &Path) -> Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => debug!(path = %path.display(), "removed a stale control socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    what: format!("removing {}", path.display()),
                    source,
                });
            }
        }
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| Error::Io { what, source }
        };
        let listener = UnixListener::bind(path).map_err(io("binding"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod"))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Accepts clients until the task is dropped; each request goes to `calls`.
    pub async fn serve(self, calls: mpsc::Sender<Call>) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "control socket accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                if let Err(e) = handle_client(stream, calls).await {
                    debug!(error = %e, "control client");
                }
            });
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn handle_client(stream: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(MAX_LINE as u64 * 4)).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = if line.len() > MAX_LINE {
            Response::error("request too long")
        } else {
            match serde_json::from_str::<Request>(&line) {
                Err(e) => Response::error(format!("bad request: {e}")),
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    if calls.send(Call { request, reply: tx }).await.is_err() {
                        Response::error("the daemon is stopping")
                    } else {
                        rx.await
                            .unwrap_or_else(|_| Response::error("the daemon is stopping"))
                    }
                }
            }
        };
        let mut out = serde_json::to_vec(&resp).map_err(std::io::Error::other)?;
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

use tokio::io::AsyncReadExt as _;

/// Why nothing answers on `socket`, as the user can fix it: the state
/// directory is not enrolled (or does not exist: a wrong `--state`), the
/// user may not read it (run with sudo), or no daemon runs on it.
fn not_running(socket: &Path, source: std::io::Error) -> Error {
    let state = socket.parent().unwrap_or(Path::new(".")).to_owned();
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        return Error::ControlDenied {
            path: socket.to_owned(),
        };
    }
    match std::fs::metadata(crate::state::StateDir::new(&state).identity_file()) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Error::ControlDenied {
            path: socket.to_owned(),
        },
        Err(e) => Error::NotEnrolled {
            reason: if state.is_dir() {
                e.to_string()
            } else {
                "no such directory".into()
            },
            path: state,
        },
        Ok(_) => Error::NotRunning {
            path: socket.to_owned(),
            state,
            source,
        },
    }
}

/// Sends one request to the daemon on `path` and waits for its answer (at
/// most `timeout`).
pub async fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    let work = async {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| not_running(path, source))?;
        let (r, mut w) = stream.into_split();
        let mut line = serde_json::to_vec(req).map_err(|e| Error::Control(e.to_string()))?;
        line.push(b'\n');
        let io = |source| Error::Io {
            what: format!("talking to {}", path.display()),
            source,
        };
        w.write_all(&line).await.map_err(io)?;
        let mut answer = String::new();
        BufReader::new(r.take(16 << 20))
            .read_line(&mut answer)
            .await
            .map_err(io)?;
        if answer.is_empty() {
            return Err(Error::Control("the daemon closed the connection".into()));
        }
        serde_json::from_str::<Response>(&answer)
            .map_err(|e| Error::Control(format!("bad answer: {e}")))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Error::Control(format!("no answer within {timeout:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_json_form() {
        let cases = [
            (Request::Status, r#"{"cmd":"status"}"#),
            (Request::Down, r#"{"cmd":"down"}"#),
            (
                Request::Why {
                    name: "nas".into(),
                    proto: "udp".into(),
                    port: 53,
                },
                r#"{"cmd":"why","name":"nas","proto":"udp","port":53}"#,
            ),
            (
                Request::Ping {
                    name: "b".into(),
                    count: 2,
                    ipv6: false,
                },
                r#"{"cmd":"ping","name":"b","count":2}"#,
            ),
        ];
        for (req, json) in cases {
            assert_eq!(serde_json::to_string(&req).unwrap(), json);
            assert_eq!(serde_json::from_str::<Request>(json).unwrap(), req);
        }
        for bad in [r#"{"cmd":"reboot"}"#, r#"{"cmd":"ping"}"#, "[]", ""] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_request_reaches_the_handler_and_bad_lines_get_errors() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("control.sock");
        std::fs::write(&path, b"stale").unwrap();
        let server = ControlServer::bind(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(server.serve(tx));
        let handler = tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                let ok = c.request == Request::Down;
                let _ = c.reply.send(Response {
                    ok,
                    ..Response::default()
                });
            }
        });
        let t = Duration::from_secs(5);
        assert!(request(&path, &Request::Down, t).await.unwrap().ok);
        assert!(!request(&path, &Request::Status, t).await.unwrap().ok);
        // A raw garbage line gets an error answer, not a hang.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{not json}\n").await.unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).await.unwrap();
        let r: Response = serde_json::from_str(&answer).unwrap();
        assert!(!r.ok && r.error.unwrap().contains("bad request"));
        task.abort();
        handler.abort();
        let _ = task.await;
        // Dropping the server removed the socket.
        assert!(!path.exists());
        // No daemon: a typed error at once, which says what is missing:
        // the enrollment, then (once enrolled) the daemon.
        assert!(matches!(
            request(&path, &Request::Status, t).await,
            Err(Error::NotEnrolled { .. })
        ));
        let id = crate::state::StateDir::new(path.parent().unwrap()).identity_file();
        std::fs::write(id, "{}").unwrap();
        assert!(matches!(
            request(&path, &Request::Status, t).await,
            Err(Error::NotRunning { .. })
        ));
    }
}
