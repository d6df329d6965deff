//! DNS over TCP (RFC 7766): length-prefixed messages, several per
//! connection, answered in order. Zone transfers and large answers use it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{Instrument, debug, debug_span, warn};

use super::Shared;
use crate::answer::{self, Ctx, Outcome, TransferRequest, update_response};
use crate::commit::{Job, Msg, ReplyTo};
use crate::wire::Rcode;
use crate::xfr;

/// Most TCP connections at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// A connection idle this long is closed (RFC 7766 suggests seconds).
const IDLE: Duration = Duration::from_secs(10);
/// Time to read one message once its length has arrived.
const READ: Duration = Duration::from_secs(5);
/// Time to write one response (a slow reader cannot hold a task forever).
const WRITE: Duration = Duration::from_secs(30);

/// Accepts connections until the task is aborted (which also aborts every
/// connection it started).
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, jobs: SyncSender<Msg>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accepting a TCP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (shared, jobs) = (shared.clone(), jobs.clone());
        let span = debug_span!("tcp", %peer);
        conns.spawn(
            async move {
                if let Err(e) = connection(stream, peer, shared, &jobs).await {
                    debug!(error = %e, "connection ended");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    jobs: &SyncSender<Msg>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut msg = Vec::with_capacity(512);
    let mut out = Vec::with_capacity(512);
    loop {
        let len = match timeout(IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()), // idle
        };
        msg.resize(len, 0);
        timeout(READ, stream.read_exact(&mut msg))
            .await
            .map_err(|_| timed_out())??;
        super::Counters::add(&shared.counters.requests_tcp, 1);
        let outcome = {
            let zone = shared.zone.read().unwrap_or_else(|e| e.into_inner());
            let ctx = Ctx {
                zone: &zone,
                keys: &shared.keys,
                now: crate::unix_now(),
                tcp: true,
            };
            answer::handle(&ctx, &msg, &mut out)
        };
        match outcome {
            Outcome::Reply => send(&mut stream, &out).await?,
            Outcome::Drop => {}
            Outcome::Update(pending) => {
                let (tx, rx) = oneshot::channel();
                let fallback = update_response(&pending, Rcode::SERVFAIL, crate::unix_now());
                let job = Job::Update {
                    pending,
                    reply: ReplyTo::Channel(tx),
                };
                let answer = match jobs.try_send(Msg::Job(job)) {
                    Ok(()) => rx.await.unwrap_or(fallback),
                    Err(_) => {
                        debug!(%peer, "update queue full");
                        fallback
                    }
                };
                send(&mut stream, &answer).await?;
            }
            Outcome::Transfer(req) => {
                super::Counters::add(&shared.counters.transfers, 1);
                // Encoding a large zone takes a while: not on the runtime.
                let shared = shared.clone();
                let msgs = tokio::task::spawn_blocking(move || transfer_messages(&shared, &req))
                    .await
                    .map_err(std::io::Error::other)??;
                for m in msgs {
                    send(&mut stream, &m).await?;
                }
            }
        }
    }
}

async fn send(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len =
        u16::try_from(msg.len()).map_err(|_| std::io::Error::other("response over 64 KiB"))?;
    let mut buf = Vec::with_capacity(msg.len() + 2);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(msg);
    timeout(WRITE, stream.write_all(&buf))
        .await
        .map_err(|_| timed_out())?
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")
}

/// The messages of a transfer, from a consistent snapshot of the zone.
fn transfer_messages(shared: &Shared, req: &TransferRequest) -> std::io::Result<Vec<Vec<u8>>> {
    let (soa, serial, nodes) = {
        let zone = shared.zone.read().unwrap_or_else(|e| e.into_inner());
        let nodes = if req.ixfr_from.is_some() {
            Vec::new()
        } else {
            zone.snapshot()
        };
        (zone.soa_record(), zone.serial(), nodes)
    };
    let now = crate::unix_now();
    let io = |e: crate::Error| std::io::Error::other(e.to_string());
    let Some(from) = req.ixfr_from else {
        return xfr::axfr(req, &soa, nodes, now).map_err(io);
    };
    if xfr::up_to_date(from, serial) {
        return xfr::ixfr(req, &soa, &[], now).map_err(io);
    }
    // The journal may already hold a commit newer than the snapshot: keep
    // the diffs up to the snapshot's serial.
    let diffs = shared.journal.diffs_since(from).map_err(io)?;
    if let Some(mut diffs) = diffs {
        let end = diffs.iter().position(|d| {
            d.new_soa
                .as_ref()
                .is_some_and(|s| soa_serial(s) == Some(serial))
        });
        if let Some(end) = end {
            diffs.truncate(end + 1);
            return xfr::ixfr(req, &soa, &diffs, now).map_err(io);
        }
    }
    // Not in the journal: a full transfer in IXFR's place (RFC 1995 4).
    let (soa, nodes) = {
        let zone = shared.zone.read().unwrap_or_else(|e| e.into_inner());
        (zone.soa_record(), zone.snapshot())
    };
    xfr::axfr(req, &soa, nodes, now).map_err(io)
}

fn soa_serial(r: &hickory_proto::rr::Record) -> Option<u32> {
    match &r.data {
        hickory_proto::rr::RData::SOA(s) => Some(s.serial),
        _ => None,
    }
}
