//! The admin unix socket: one JSON request line, one JSON answer line.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use super::{Shared, with_core};
use crate::admin::{AdminRequest, AdminResponse, MAX_LINE};
use crate::now_unix;

/// A client must send its request within this time.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, shared.clone()));
            }
            Err(e) => {
                warn!(error = %e, "admin socket accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, shared: Arc<Shared>) {
    // The socket is 0600, so this is root or the GMS's own user; the uid
    // still tells the audit log which one.
    let who = match stream.peer_cred() {
        Ok(c) => format!("cli uid={}", c.uid()),
        Err(_) => "cli".to_owned(),
    };
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r.take(MAX_LINE as u64));
    let mut line = String::new();
    let resp = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => AdminResponse::err("no request within 10 s"),
        Ok(Err(e)) => AdminResponse::err(format!("reading the request: {e}")),
        Ok(Ok(_)) => match serde_json::from_str::<AdminRequest>(&line) {
            Err(e) => AdminResponse::err(format!("bad admin request: {e}")),
            Ok(req) => {
                debug!(?req, "admin request");
                let status = matches!(req, AdminRequest::Status);
                let mut resp = match with_core(&shared, move |core| {
                    core.handle_admin_as(req, &who, now_unix())
                })
                .await
                {
                    Ok(r) => r,
                    Err(e) => AdminResponse::err(e),
                };
                // The relay's numbers and the zone serial live in the
                // server, not the core.
                if status {
                    shared.complete_status(&mut resp);
                }
                resp
            }
        },
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    out.push(b'\n');
    if let Err(e) = w.write_all(&out).await {
        debug!(error = %e, "admin client went away before the answer");
    }
    let _ = w.shutdown().await;
}
