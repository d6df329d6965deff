//! QUIC connections: enrollment (no client certificate) and sessions (mTLS).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fpn_proto::ge::GeId;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

use crate::task::AbortOnDrop;

use super::sessions::{PUSH_QUEUE, SessionHandle};
use super::{Shared, with_core};
use crate::framing::{read_frame, read_frame_limited, write_frame};
use crate::wire::{ClientMsg, MAX_ENROLL_BODY, ServerMsg, close};
use crate::{Error, Result, now_unix, tls};

/// Handshake, first stream and first message must each arrive within this.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a session's path is looked at for a migration (the client
/// moved): the directory, DNS and `Observe` follow within this time.
const PATH_CHECK: Duration = Duration::from_secs(1);

pub(super) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = fpn_gms_client::canonical_addr(incoming.remote_address());
        let s = shared.clone();
        // Addresses only at debug level (STYLE.md §4).
        tokio::spawn(
            async move { connection(incoming, s).await }.instrument(debug_span!("conn", %remote)),
        );
    }
}

async fn connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let conn = match tokio::time::timeout(STEP_TIMEOUT, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            // A foreign or invalid client certificate ends here.
            info!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            debug!("handshake timed out");
            return;
        }
    };
    match tls::peer_fingerprint(&conn) {
        None => enrollment(&conn, &shared).await,
        Some(fp) => session(conn, fp, shared).await,
    }
}

/// Closes `conn` because of bad input, saying why in the log and to the peer.
fn close_protocol(conn: &quinn::Connection, e: &Error) {
    warn!(reason = %e, "closing connection: bad control message");
    let mut reason = e.to_string();
    reason.truncate(200);
    conn.close(close::PROTOCOL.into(), reason.as_bytes());
}

async fn enrollment(conn: &quinn::Connection, shared: &Arc<Shared>) {
    let r: Result<()> = async {
        let (mut send, mut recv) = tokio::time::timeout(STEP_TIMEOUT, conn.accept_bi())
            .await
            .map_err(|_| Error::Timeout("enrollment stream"))??;
        // Unauthenticated: read no more than an enrollment request can be.
        let (ty, body) =
            tokio::time::timeout(STEP_TIMEOUT, read_frame_limited(&mut recv, MAX_ENROLL_BODY))
                .await
                .map_err(|_| Error::Timeout("enrollment request"))??
                .ok_or_else(|| {
                    Error::Protocol("stream closed before the enrollment request".into())
                })?;
        let ClientMsg::Enroll(req) = ClientMsg::decode(ty, &body)? else {
            return Err(Error::Protocol(
                "a connection without a client certificate may only enroll".into(),
            ));
        };
        let answer = with_core(shared, move |core| core.handle_enroll(&req, now_unix())).await?;
        if let ServerMsg::Refused { reason, .. } = &answer {
            info!(%reason, "enrollment refused");
        }
        write_frame(&mut send, &answer.encode()?).await?;
        send.finish()?;
        // Let the node read the answer and close; then we are done either way.
        let _ = tokio::time::timeout(STEP_TIMEOUT, conn.closed()).await;
        Ok(())
    }
    .await;
    match r {
        Ok(()) => conn.close(close::NORMAL.into(), b"done"),
        Err(e @ (Error::Protocol(_) | Error::Proto(_))) => close_protocol(conn, &e),
        Err(e @ Error::Timeout(_)) => {
            debug!(error = %e, "enrollment timed out");
            conn.close(close::TIMEOUT.into(), b"timeout");
        }
        Err(e) => debug!(error = %e, "enrollment connection ended"),
    }
}

async fn session(conn: quinn::Connection, fp: [u8; 32], shared: Arc<Shared>) {
    let admitted = shared.lock().core.authorize(&fp, now_unix());
    let ge = match admitted {
        Ok(ge) => ge,
        Err(r) => {
            info!(reason = %r.reason, "session refused");
            conn.close(r.close_code().into(), r.reason.as_bytes());
            return;
        }
    };
    let span = info_span!("session", %ge);
    match run_session(&conn, ge, &shared)
        .instrument(span.clone())
        .await
    {
        Ok(()) => {}
        Err(e @ (Error::Protocol(_) | Error::Proto(_))) => {
            let _g = span.enter();
            close_protocol(&conn, &e);
        }
        Err(e) => {
            let _g = span.enter();
            debug!(error = %e, "session ended");
        }
    }
}

async fn run_session(conn: &quinn::Connection, ge: GeId, shared: &Arc<Shared>) -> Result<()> {
    let (mut send, mut recv) = tokio::time::timeout(STEP_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| Error::Timeout("session stream"))??;
    let (ty, body) = tokio::time::timeout(STEP_TIMEOUT, read_frame(&mut recv))
        .await
        .map_err(|_| Error::Timeout("hello"))??
        .ok_or_else(|| Error::Protocol("stream closed before hello".into()))?;
    let ClientMsg::Hello { reported, version } = ClientMsg::decode(ty, &body)? else {
        return Err(Error::Protocol("a session must start with hello".into()));
    };
    let seen: SocketAddr = fpn_gms_client::canonical_addr(conn.remote_address());
    let (tx, mut rx) = mpsc::channel::<Arc<[u8]>>(PUSH_QUEUE);
    // A node that offered the hosts directory (and so knows its messages).
    let wants_hosts = fpn_gms_client::tls::negotiated_v2(conn);
    let (sid, init, hosts, seq) = {
        let mut g = shared.lock();
        match g.core.open_session(ge, seen, reported, now_unix()) {
            Ok((sid, init, out)) => {
                g.core.note_version(ge, sid, version);
                // The list is taken under the same lock that registers the
                // session for pushes, so no change falls between the two.
                // No early return here: the session is registered below and
                // must reach its cleanup. A list that cannot be encoded (the
                // host limit makes it impossible) leaves the node without one.
                let hosts = if wants_hosts {
                    g.core
                        .subscribe_hosts(ge, sid)
                        .inspect_err(|e| warn!(error = %e, "host list not sent"))
                        .ok()
                } else {
                    None
                };
                g.sessions.insert(
                    ge,
                    SessionHandle {
                        id: sid,
                        tx: tx.clone(),
                        conn: conn.clone(),
                    },
                );
                let seq = shared.stage(&mut g, out);
                (sid, init, hosts, seq)
            }
            Err(r) => {
                info!(reason = %r.reason, "session refused");
                conn.close(r.close_code().into(), r.reason.as_bytes());
                return Ok(());
            }
        }
    };
    info!("session up");
    let result = async {
        // The init may show changes not yet durable: send it once they are.
        shared.settled(seq).await?;
        write_frame(&mut send, &init.encode()?).await?;
        // Where the relay is: a message of its own after the init, so the
        // init's layout stays as it was.
        let relay = shared
            .relay
            .get()
            .and_then(|r| r.advertised.clone())
            .unwrap_or_default();
        write_frame(&mut send, &ServerMsg::Relay(relay).encode()?).await?;
        if let Some(h) = &hosts {
            write_frame(&mut send, h).await?;
        }
        // Requests are read by their own task, so a frame is never cut by a
        // cancelled read; answers join the push queue and keep their order.
        let _reader = AbortOnDrop(tokio::spawn(
            read_requests(conn.clone(), recv, ge, tx, shared.clone())
                .instrument(tracing::Span::current()),
        ));
        let mut seen = seen;
        let mut path_check = tokio::time::interval(PATH_CHECK);
        loop {
            tokio::select! {
                _ = path_check.tick() => {
                    // quinn follows a migrating client without telling us:
                    // look at the path now and then.
                    let now_seen = fpn_gms_client::canonical_addr(conn.remote_address());
                    if now_seen != seen {
                        info!(from = %seen, to = %now_seen, "session moved");
                        seen = now_seen;
                        let mut g = shared.lock();
                        let out = g.core.session_moved(ge, sid, seen);
                        shared.stage(&mut g, out);
                    }
                }
                f = rx.recv() => match f {
                    Some(frame) => {
                        if let Err(e) = write_frame(&mut send, &frame).await {
                            break Err(e.into());
                        }
                    }
                    None => break Ok(()),
                },
                s = conn.accept_bi() => {
                    break match s {
                        Ok(_) => Err(Error::Protocol("a session uses one stream".into())),
                        Err(e) => Err(e.into()),
                    };
                }
                r = conn.closed() => break Err(r.into()),
            }
        }
    }
    .await;
    let mut g = shared.lock();
    g.sessions.remove(ge, sid);
    let out = g.core.close_session(ge, sid);
    shared.stage(&mut g, out);
    drop(g);
    info!("session down");
    result
}

/// Reads a session's requests and queues each answer. Bad input closes the
/// connection (which ends the session loop).
async fn read_requests(
    conn: quinn::Connection,
    recv: quinn::RecvStream,
    ge: GeId,
    tx: mpsc::Sender<Arc<[u8]>>,
    shared: Arc<Shared>,
) {
    match serve_requests(recv, ge, tx, &shared).await {
        Ok(()) => {}
        Err(e @ (Error::Protocol(_) | Error::Proto(_))) => close_protocol(&conn, &e),
        Err(e) => debug!(error = %e, "request stream ended"),
    }
}

async fn serve_requests(
    mut recv: quinn::RecvStream,
    ge: GeId,
    tx: mpsc::Sender<Arc<[u8]>>,
    shared: &Arc<Shared>,
) -> Result<()> {
    while let Some((ty, body)) = read_frame(&mut recv).await? {
        let msg = ClientMsg::decode(ty, &body)?;
        let (answer, out, seq) = {
            let mut g = shared.lock();
            let (answer, out) = g.core.handle_request(ge, msg, now_unix())?;
            (answer, out, shared.committed())
        };
        // The answer may show changes not yet durable.
        shared.settled(seq).await?;
        let frame: Arc<[u8]> = Arc::from(answer.encode()?);
        if tx.send(frame).await.is_err() {
            break;
        }
        let mut g = shared.lock();
        shared.stage(&mut g, out);
    }
    Ok(())
}
