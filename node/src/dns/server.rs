//! The stub's sockets: one UDP socket and one TCP listener on the same
//! address, and the tasks that serve them.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{Instrument, debug, debug_span, warn};

use super::forward::Forwarder;
use super::query::{self, Decision, Kind, Transport};
use super::stats::DnsStats;
use super::table::NameTable;
use super::zone::Zone;

/// Requests served on one TCP connection before the stub closes it, so one
/// client cannot hold a connection slot forever.
const MAX_QUERIES_PER_CONNECTION: usize = 256;
/// Pause after a socket error that may repeat at once.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// What the serving tasks share.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) zone: Zone,
    pub(crate) table: NameTable,
    pub(crate) forwarder: Forwarder,
    pub(crate) stats: DnsStats,
    pub(crate) tcp_idle: Duration,
    pub(crate) max_tcp: usize,
}

impl Core {
    /// Decides one request and counts it.
    fn decide(&self, msg: &[u8], transport: Transport) -> Decision {
        let d = query::handle(&self.zone, &self.table.snapshot(), msg, transport);
        match &d {
            Decision::Reply(_, Kind::Answered) => self.stats.answered(),
            Decision::Reply(_, Kind::Rejected) | Decision::Drop => self.stats.malformed(),
            Decision::Forward(_) => {}
        }
        d
    }
}

/// Binds UDP and TCP on `addr`. With port 0, both get the same port: the
/// UDP socket picks it and TCP follows (a few tries, in case another
/// program holds that TCP port).
pub(crate) async fn bind(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let tries = if addr.port() == 0 { 8 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(addr).await?;
        let at = udp.local_addr()?;
        match TcpListener::bind(at).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no port")))
}

/// Serves both sockets until the future is dropped.
pub(crate) async fn serve(udp: UdpSocket, tcp: TcpListener, core: Arc<Core>) {
    let udp = Arc::new(udp);
    // Forwarding tasks and TCP connections; dropping the sets (when `serve`
    // is dropped) aborts them all.
    let mut forwards = JoinSet::new();
    let mut conns = JoinSet::new();
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        tokio::select! {
            got = udp.recv_from(&mut buf) => match got {
                Ok((n, from)) => on_datagram(&core, &udp, &buf[..n], from, &mut forwards).await,
                // ICMP errors from earlier sends can surface here; they
                // concern one client, not the socket. Anything else backs
                // off briefly instead of spinning.
                Err(e) => {
                    debug!(error = %e, "UDP receive error");
                    if !is_transient(&e) {
                        tokio::time::sleep(ERROR_BACKOFF).await;
                    }
                }
            },
            got = tcp.accept() => match got {
                Ok((stream, from)) if conns.len() < core.max_tcp => {
                    let core = Arc::clone(&core);
                    conns.spawn(
                        serve_tcp(stream, core).instrument(debug_span!("dns_tcp", client = %from)),
                    );
                }
                Ok((_, from)) => debug!(%from, "too many DNS TCP connections; closing"),
                Err(e) => {
                    // Out of descriptors and the like.
                    warn!(error = %e, "DNS stub cannot accept a TCP connection");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            },
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn on_datagram(
    core: &Arc<Core>,
    udp: &Arc<UdpSocket>,
    msg: &[u8],
    from: SocketAddr,
    forwards: &mut JoinSet<()>,
) {
    match core.decide(msg, Transport::Udp) {
        Decision::Reply(out, _) => send(udp, &out, from).await,
        Decision::Drop => {}
        Decision::Forward(job) => match core.forwarder.admit() {
            None => send(udp, &core.forwarder.refuse(&job), from).await,
            Some(permit) => {
                let (core, udp) = (Arc::clone(core), Arc::clone(udp));
                forwards.spawn(
                    async move {
                        let out = core.forwarder.resolve(&job).await;
                        drop(permit);
                        send(&udp, &out, from).await;
                    }
                    .instrument(debug_span!("dns_forward", client = %from)),
                );
            }
        },
    }
}

async fn send(udp: &UdpSocket, out: &[u8], to: SocketAddr) {
    if let Err(e) = udp.send_to(out, to).await {
        debug!(%to, error = %e, "cannot send DNS response");
    }
}

/// One TCP connection: length-prefixed requests, answered in order.
async fn serve_tcp(mut stream: TcpStream, core: Arc<Core>) {
    for _ in 0..MAX_QUERIES_PER_CONNECTION {
        let msg = match timeout(core.tcp_idle, read_message(&mut stream)).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return, // the client closed
            Ok(Err(e)) => {
                debug!(error = %e, "DNS TCP read failed");
                return;
            }
            Err(_) => return, // idle
        };
        let out = match core.decide(&msg, Transport::Tcp) {
            Decision::Reply(out, _) => out,
            Decision::Drop => return,
            Decision::Forward(job) => match core.forwarder.admit() {
                None => core.forwarder.refuse(&job),
                Some(_permit) => core.forwarder.resolve(&job).await,
            },
        };
        let Ok(len) = u16::try_from(out.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&out);
        match timeout(core.tcp_idle, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Reads one length-prefixed message; `None` at a clean end of stream.
async fn read_message(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | Interrupted
            | WouldBlock
            | HostUnreachable
            | NetworkUnreachable
    )
}
