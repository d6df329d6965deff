//! Port mapping: asks the default gateway to forward the carrier's UDP port
//! (PCP, RFC 6887; when the gateway does not speak it, NAT-PMP, RFC 6886;
//! when it speaks neither, UPnP IGD: SSDP discovery and AddPortMapping,
//! through `igd-next`), so peers behind any NAT can reach this node
//! directly on the gateway's external address. The mapped address becomes
//! a candidate the node reports to the GMS (peers dial it at once, like a
//! local one: a mapping needs no punch).
//!
//! Runs in the background and never delays start-up: each attempt is
//! bounded (RFC 6886's 250 ms doubling schedule, cut to [`TRIES`] sends;
//! a NAT-PMP gateway answers PCP with "unsupported version", which ends
//! the PCP attempt at once),
//! a mapping is renewed at half its lifetime, the gateway is re-read every
//! [`GATEWAY_POLL`] and a new one is asked at once, and a failed gateway is
//! asked again after a back-off. On a clean shutdown the mapping is
//! deleted (lifetime 0). It never touches the carrier's socket: requests go
//! from a socket of their own, as RFC 6886 and RFC 6887 allow.
//!
//! See DESIGN-NOTES, the port-mapping notes (37 and the PCP follow-up).

pub mod natpmp;
pub mod pcp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, info_span};

use natpmp::{Protocol, Request, Response, ResultCode};

/// Lifetime asked for (RFC 6886 recommends two hours).
pub const LIFETIME_SECS: u32 = 7200;
/// Sends per request: 250, 500, 1000, 2000 ms waits (RFC 6886 goes on to
/// nine, 64 s in all; a gateway that has not answered in 3.75 s is treated
/// as not speaking NAT-PMP, and asked again after [`RETRY_MIN`]).
pub const TRIES: u32 = 4;
/// First wait for an answer.
const FIRST_WAIT: Duration = Duration::from_millis(250);
/// How often the default gateway is re-read (a new network, a new router).
pub const GATEWAY_POLL: Duration = Duration::from_secs(10);
/// First back-off after a gateway did not map; doubles to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(30);
/// Longest back-off.
const RETRY_MAX: Duration = Duration::from_secs(600);
/// How long the delete at shutdown may take.
const DELETE_BOUND: Duration = Duration::from_secs(1);
/// How long SSDP discovery of a UPnP gateway may take.
const UPNP_SEARCH: Duration = Duration::from_secs(2);
/// How long a whole UPnP attempt (discovery, description, AddPortMapping)
/// may take; the blocking client runs on a blocking thread.
const UPNP_BOUND: Duration = Duration::from_secs(8);
/// The mapping's name in the router's UPnP table.
const UPNP_DESCRIPTION: &str = "fpn-node carrier";

/// What `netcheck` shows of port mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapStatus {
    /// `"off"` (configured off), `"trying"`, `"mapped"` or `"unavailable"`.
    pub state: String,
    /// The protocol that mapped (`"pcp"`, `"nat-pmp"` or `"upnp-igd"`),
    /// when mapped.
    pub protocol: Option<String>,
    /// The gateway asked.
    pub gateway: Option<String>,
    /// The external address peers can reach the carrier on.
    pub external: Option<String>,
    /// Seconds the gateway granted.
    pub lifetime_secs: Option<u32>,
    /// When the mapping was obtained or renewed, unix seconds.
    pub renewed_at: Option<u64>,
    /// Why there is no mapping (the last failure).
    pub error: Option<String>,
}

/// The running port-mapping client: its status, and the handle that stops
/// it (deleting the mapping).
pub struct PortMapper {
    status: Arc<Mutex<PortMapStatus>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl PortMapper {
    /// Starts mapping UDP `port` on whatever the default gateway is; each
    /// new (or lost: `None`) external address goes to `mapped`.
    pub fn start(port: u16, mapped: mpsc::Sender<Option<SocketAddr>>) -> Self {
        let status = Arc::new(Mutex::new(PortMapStatus {
            state: "trying".into(),
            ..PortMapStatus::default()
        }));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(
            run(port, status.clone(), mapped, stop_rx).instrument(info_span!("portmap")),
        );
        Self { status, stop, task }
    }

    /// A status for a node with port mapping turned off.
    pub fn off_status() -> PortMapStatus {
        PortMapStatus {
            state: "off".into(),
            ..PortMapStatus::default()
        }
    }

    /// A shared view of the status (for `netcheck`).
    pub fn status_handle(&self) -> Arc<Mutex<PortMapStatus>> {
        self.status.clone()
    }

    /// Stops the client and deletes the mapping (bounded by about a second).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(DELETE_BOUND * 2, self.task)
            .await
            .is_err()
        {
            debug!("port mapping client did not stop in time");
        }
    }
}

/// A mapping the gateway granted.
#[derive(Debug, Clone)]
struct Mapping {
    gateway: Ipv4Addr,
    external: SocketAddr,
    lifetime: u32,
    epoch: u32,
    /// The protocol that granted it.
    via: Via,
}

/// The protocol behind a mapping, with what renewing and deleting it need.
#[derive(Debug, Clone)]
enum Via {
    /// PCP: the mapping's nonce (renewals and the delete must carry it).
    Pcp(pcp::Nonce),
    /// NAT-PMP.
    NatPmp,
    /// The UPnP IGD service that granted it.
    Upnp(Arc<igd_next::Gateway>),
}

impl Mapping {
    fn protocol(&self) -> &'static str {
        match self.via {
            Via::Pcp(_) => "pcp",
            Via::NatPmp => "nat-pmp",
            Via::Upnp(_) => "upnp-igd",
        }
    }
}

/// Why a gateway gave no mapping.
#[derive(Debug, thiserror::Error)]
enum MapError {
    #[error("no answer from {0}:5351 (NAT-PMP) after {TRIES} tries")]
    NoAnswer(Ipv4Addr),
    #[error("gateway refused: {0:?}")]
    Refused(ResultCode),
    #[error("no answer from {0}:5351 (PCP) after {TRIES} tries")]
    PcpNoAnswer(Ipv4Addr),
    /// The gateway answered in another version (0: it speaks NAT-PMP only).
    #[error("the gateway answered PCP in version {0}")]
    PcpVersion(u8),
    #[error("{0}")]
    PcpRefused(pcp::CheckError),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("UPnP IGD: {0}")]
    Upnp(String),
}

async fn run(
    port: u16,
    status: Arc<Mutex<PortMapStatus>>,
    mapped: mpsc::Sender<Option<SocketAddr>>,
    mut stop: watch::Receiver<bool>,
) {
    let set = |f: &dyn Fn(&mut PortMapStatus)| {
        let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    };
    let mut current: Option<Mapping> = None;
    let mut backoff = RETRY_MIN;
    loop {
        let gw = default_gateway();
        // The gateway moved (or went): the old mapping means nothing now.
        if let Some(m) = &current
            && Some(m.gateway) != gw
        {
            info!(old = %m.gateway, new = ?gw, "default gateway changed: mapping again");
            current = None;
            let _ = mapped.send(None).await;
        }
        let wait = match gw {
            None => {
                set(&|s| {
                    s.state = "unavailable".into();
                    s.gateway = None;
                    s.error = Some("no default IPv4 gateway".into());
                });
                GATEWAY_POLL
            }
            Some(gw) => {
                let due = current.is_none();
                if due || renewal_due(&status) {
                    match map_any(gw, port, LIFETIME_SECS, current.as_ref()).await {
                        Ok(m) => {
                            backoff = RETRY_MIN;
                            let fresh = current.as_ref().map(|c| c.external) != Some(m.external);
                            if fresh {
                                info!(
                                    external = %m.external,
                                    lifetime_secs = m.lifetime,
                                    gateway = %gw,
                                    protocol = m.protocol(),
                                    "port mapping obtained"
                                );
                                let _ = mapped.send(Some(m.external)).await;
                            } else {
                                debug!(external = %m.external, lifetime_secs = m.lifetime, "port mapping renewed");
                            }
                            if let Some(c) = &current
                                && !matches!(m.via, Via::Upnp(_))
                                && m.epoch < c.epoch
                            {
                                debug!("gateway epoch went back (it restarted); mapping renewed");
                            }
                            let now = fpn_gms_client::now_unix();
                            let protocol = m.protocol();
                            set(&|s| {
                                *s = PortMapStatus {
                                    state: "mapped".into(),
                                    protocol: Some(protocol.into()),
                                    gateway: Some(gw.to_string()),
                                    external: Some(m.external.to_string()),
                                    lifetime_secs: Some(m.lifetime),
                                    renewed_at: Some(now),
                                    error: None,
                                };
                            });
                            let wait = renew_wait(m.lifetime);
                            current = Some(m);
                            wait
                        }
                        Err(e) => {
                            debug!(gateway = %gw, error = %e, "port mapping failed");
                            if current.take().is_some() {
                                let _ = mapped.send(None).await;
                            }
                            let msg = e.to_string();
                            set(&|s| {
                                *s = PortMapStatus {
                                    state: "unavailable".into(),
                                    gateway: Some(gw.to_string()),
                                    error: Some(msg.clone()),
                                    ..PortMapStatus::default()
                                };
                            });
                            let w = backoff;
                            backoff = (backoff * 2).min(RETRY_MAX);
                            w
                        }
                    }
                } else {
                    until_renewal(&status)
                }
            }
        };
        // After a failure, wait the back-off but still notice a new
        // gateway within GATEWAY_POLL.
        let until = tokio::time::Instant::now() + wait;
        let gw_then = gw;
        loop {
            let step = until
                .saturating_duration_since(tokio::time::Instant::now())
                .min(GATEWAY_POLL);
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = stop.changed() => {
                    if let Some(m) = current {
                        delete(m, port).await;
                    }
                    return;
                }
            }
            if tokio::time::Instant::now() >= until || default_gateway() != gw_then {
                break;
            }
        }
    }
}

/// How long to sleep after a mapping of `lifetime` seconds was granted:
/// until its renewal is due (half the lifetime), and never past
/// [`GATEWAY_POLL`] (the loop re-reads the gateway then), nor less than a
/// second (a gateway granting a lifetime of 1 s is not asked in a spin).
fn renew_wait(lifetime: u32) -> Duration {
    Duration::from_millis(u64::from(lifetime) * 500)
        .min(GATEWAY_POLL)
        .max(Duration::from_secs(1))
}

/// The time left until [`renewal_due`], within [1 s, GATEWAY_POLL].
fn until_renewal(status: &Mutex<PortMapStatus>) -> Duration {
    let s = status.lock().unwrap_or_else(|p| p.into_inner());
    let left = match (s.renewed_at, s.lifetime_secs) {
        (Some(at), Some(l)) => (at + u64::from(l / 2)).saturating_sub(fpn_gms_client::now_unix()),
        _ => 0,
    };
    Duration::from_secs(left).clamp(Duration::from_secs(1), GATEWAY_POLL)
}

/// True when half the granted lifetime has passed (RFC 6886 3.3: renew
/// before it ends).
fn renewal_due(status: &Mutex<PortMapStatus>) -> bool {
    let s = status.lock().unwrap_or_else(|p| p.into_inner());
    match (s.renewed_at, s.lifetime_secs) {
        (Some(at), Some(l)) => fpn_gms_client::now_unix() >= at + u64::from(l / 2),
        _ => true,
    }
}

/// PCP first, then NAT-PMP (each a few small packets, bounded by
/// [`TRIES`]; a NAT-PMP gateway's "unsupported version" answer to PCP
/// ends PCP's turn at once, RFC 6887 section 9); when the gateway speaks
/// neither, UPnP IGD (bounded by [`UPNP_BOUND`]). A PCP mapping being
/// renewed keeps its nonce and asks for its address and port again; a
/// NAT-PMP mapping is renewed with NAT-PMP first.
async fn map_any(
    gw: Ipv4Addr,
    port: u16,
    lifetime: u32,
    current: Option<&Mapping>,
) -> Result<Mapping, MapError> {
    let renew = current.and_then(|c| match c.via {
        Via::Pcp(n) => Some((n, c.external)),
        _ => None,
    });
    // A NAT-PMP mapping is renewed with NAT-PMP first: a gateway that
    // ignores PCP would otherwise cost PCP's four tries at every renewal.
    let mut pmp_err = None;
    if current.is_some_and(|c| matches!(c.via, Via::NatPmp)) {
        match map(gw, port, lifetime).await {
            Ok(m) => return Ok(m),
            Err(e) => {
                debug!(gateway = %gw, error = %e, "NAT-PMP renewal failed; trying PCP");
                pmp_err = Some(e);
            }
        }
    }
    let pcp_err = match map_pcp(gw, port, lifetime, renew).await {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    let pmp_err = match pmp_err {
        Some(e) => e,
        None => {
            debug!(gateway = %gw, error = %pcp_err, "PCP gave no mapping; trying NAT-PMP");
            match map(gw, port, lifetime).await {
                Ok(m) => return Ok(m),
                Err(e) => e,
            }
        }
    };
    debug!(gateway = %gw, error = %pmp_err, "NAT-PMP gave no mapping; trying UPnP IGD");
    match map_upnp(gw, port, lifetime).await {
        Ok(m) => Ok(m),
        Err(u) => Err(MapError::Upnp(format!(
            "{u}; NAT-PMP: {pmp_err}; PCP: {pcp_err}"
        ))),
    }
}

/// A fresh random mapping nonce (RFC 6887 section 11.1).
fn fresh_nonce() -> Result<pcp::Nonce, MapError> {
    use ring::rand::SecureRandom;
    let mut n = [0u8; 12];
    ring::rand::SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| MapError::Io(std::io::Error::other("no randomness for the PCP nonce")))?;
    Ok(pcp::Nonce(n))
}

/// PCP MAP of UDP `port` at `gw`; `renew`: the nonce and external address
/// of the mapping being renewed.
async fn map_pcp(
    gw: Ipv4Addr,
    port: u16,
    lifetime: u32,
    renew: Option<(pcp::Nonce, SocketAddr)>,
) -> Result<Mapping, MapError> {
    let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
    sock.connect(SocketAddr::from((gw, pcp::SERVER_PORT)))
        .await?;
    // The request names this host's address towards the gateway: the
    // source address the gateway sees (else ADDRESS_MISMATCH).
    let client = sock.local_addr()?.ip();
    let nonce = match renew {
        Some((n, _)) => n,
        None => fresh_nonce()?,
    };
    let req = pcp::MapRequest {
        nonce,
        protocol: pcp::Protocol::Udp,
        client,
        internal_port: port,
        suggested: renew.map(|(_, ext)| ext),
        lifetime,
    };
    let g = ask_pcp(&sock, gw, &req).await?;
    Ok(Mapping {
        gateway: gw,
        external: g.external,
        lifetime: g.lifetime,
        epoch: g.epoch,
        via: Via::Pcp(nonce),
    })
}

/// Sends `req` on the same schedule as NAT-PMP's [`ask`] until its answer
/// arrives. Answers to other requests (another nonce) and garbage are
/// skipped; an answer in another version ends it at once.
async fn ask_pcp(
    sock: &UdpSocket,
    gw: Ipv4Addr,
    req: &pcp::MapRequest,
) -> Result<pcp::Granted, MapError> {
    let mut buf = [0u8; pcp::MAX_LEN + 4];
    let no_answer = || MapError::PcpNoAnswer(gw);
    exchange(
        sock,
        &req.emit(),
        &mut buf,
        no_answer,
        |d| match pcp::Response::parse(d) {
            Ok(resp) => match req.check(&resp) {
                Ok(g) => Some(Ok(g)),
                Err(pcp::CheckError::NotOurs) => {
                    debug!("ignoring a PCP answer to another request");
                    None
                }
                Err(e) => Some(Err(MapError::PcpRefused(e))),
            },
            Err(pcp::ParseError::Version(v)) => Some(Err(MapError::PcpVersion(v))),
            Err(e) => {
                debug!(error = %e, "ignoring a PCP datagram");
                None
            }
        },
    )
    .await
}

/// UPnP IGD: finds the gateway by SSDP (only one at `gw` is used: a
/// device elsewhere on the LAN cannot forward our gateway's ports), and
/// asks it to forward UDP `port` to this host's address towards it.
async fn map_upnp(gw: Ipv4Addr, port: u16, lifetime: u32) -> Result<Mapping, MapError> {
    // This host's address on the gateway's network: where the gateway
    // forwards to (connect() on UDP sends nothing).
    let probe = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
    probe.connect(SocketAddr::from((gw, 1900))).await?;
    let local = SocketAddr::new(probe.local_addr()?.ip(), port);
    let blocking = tokio::task::spawn_blocking(move || {
        let mut opts = igd_next::SearchOptions::default();
        opts.timeout = Some(UPNP_SEARCH);
        opts.single_search_timeout = Some(UPNP_SEARCH);
        opts.gateway_ip_version = igd_next::GatewayIpVersion::V4;
        let g = igd_next::search_gateway(opts).map_err(|e| e.to_string())?;
        if g.addr.ip() != IpAddr::V4(gw) {
            return Err(format!("the UPnP gateway found is {}, not {gw}", g.addr));
        }
        let ext = g.get_external_ip().map_err(|e| e.to_string())?;
        g.add_port(
            igd_next::PortMappingProtocol::UDP,
            port,
            local,
            lifetime,
            UPNP_DESCRIPTION,
        )
        .map_err(|e| e.to_string())?;
        Ok((g, ext))
    });
    let (g, ext) = tokio::time::timeout(UPNP_BOUND, blocking)
        .await
        .map_err(|_| MapError::Upnp(format!("no answer within {UPNP_BOUND:?}")))?
        .map_err(|e| MapError::Upnp(e.to_string()))?
        .map_err(MapError::Upnp)?;
    Ok(Mapping {
        gateway: gw,
        external: SocketAddr::new(ext, port),
        lifetime,
        epoch: 0,
        via: Via::Upnp(Arc::new(g)),
    })
}

/// Asks `gw` for its external address, then for a mapping of `port`.
async fn map(gw: Ipv4Addr, port: u16, lifetime: u32) -> Result<Mapping, MapError> {
    let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
    sock.connect(SocketAddr::from((gw, natpmp::SERVER_PORT)))
        .await?;
    let (address, _) = match ask(&sock, gw, Request::ExternalAddress).await? {
        Response::ExternalAddress {
            result: ResultCode::Success,
            address,
            epoch,
        } => (address, epoch),
        Response::ExternalAddress { result, .. } => return Err(MapError::Refused(result)),
        Response::Map { .. } => return Err(MapError::NoAnswer(gw)),
    };
    let req = Request::Map {
        protocol: Protocol::Udp,
        internal: port,
        external: port,
        lifetime,
    };
    match ask(&sock, gw, req).await? {
        Response::Map {
            result: ResultCode::Success,
            external,
            lifetime,
            epoch,
            ..
        } if external != 0 && lifetime != 0 => Ok(Mapping {
            gateway: gw,
            external: SocketAddr::new(IpAddr::V4(address), external),
            lifetime,
            epoch,
            via: Via::NatPmp,
        }),
        Response::Map { result, .. } => Err(MapError::Refused(result)),
        Response::ExternalAddress { .. } => Err(MapError::NoAnswer(gw)),
    }
}

/// Sends `req` on RFC 6886's schedule (250 ms, doubling) until an answer
/// to it arrives; other datagrams (stray answers, garbage) are skipped.
async fn ask(sock: &UdpSocket, gw: Ipv4Addr, req: Request) -> Result<Response, MapError> {
    let mut buf = [0u8; 64];
    let no_answer = || MapError::NoAnswer(gw);
    exchange(
        sock,
        &req.emit(),
        &mut buf,
        no_answer,
        |d| match Response::parse(d) {
            Ok(resp) if answers(&req, &resp) => Some(Ok(resp)),
            Ok(_) => None,
            Err(e) => {
                debug!(error = %e, "ignoring a NAT-PMP datagram");
                None
            }
        },
    )
    .await
}

/// Sends `bytes` to the gateway (`sock` is connected to it) [`TRIES`]
/// times, waiting [`FIRST_WAIT`] and then twice as long each time, and
/// hands every datagram that comes back to `judge` until it settles
/// (`Some`). NAT-PMP and PCP share the schedule and the port. ICMP port
/// unreachable shows as ECONNREFUSED: nothing listens on 5351, so there
/// is no point in the other tries (`no_answer`, as when all go
/// unanswered).
async fn exchange<T>(
    sock: &UdpSocket,
    bytes: &[u8],
    buf: &mut [u8],
    no_answer: impl Fn() -> MapError,
    mut judge: impl FnMut(&[u8]) -> Option<Result<T, MapError>>,
) -> Result<T, MapError> {
    let mut wait = FIRST_WAIT;
    for _ in 0..TRIES {
        sock.send(bytes).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let r = tokio::time::timeout_at(deadline, sock.recv(buf)).await;
            let Ok(r) = r else { break };
            let n = match r {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(no_answer());
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(settled) = judge(&buf[..n]) {
                return settled;
            }
        }
        wait *= 2;
    }
    Err(no_answer())
}

/// True when `resp` is the answer to `req` (same opcode and port).
fn answers(req: &Request, resp: &Response) -> bool {
    match (req, resp) {
        (Request::ExternalAddress, Response::ExternalAddress { .. }) => true,
        (
            Request::Map {
                protocol, internal, ..
            },
            Response::Map {
                protocol: p,
                internal: i,
                ..
            },
        ) => protocol == p && internal == i,
        _ => false,
    }
}

/// Deletes `m` (lifetime 0), bounded: the gateway forgets it anyway when
/// the lifetime ends.
async fn delete(m: Mapping, port: u16) {
    if let Via::Pcp(nonce) = m.via {
        let r = tokio::time::timeout(DELETE_BOUND, async {
            let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
            sock.connect(SocketAddr::from((m.gateway, pcp::SERVER_PORT)))
                .await?;
            let req = pcp::MapRequest {
                nonce,
                protocol: pcp::Protocol::Udp,
                client: sock.local_addr()?.ip(),
                internal_port: port,
                suggested: None,
                lifetime: 0,
            };
            ask_pcp(&sock, m.gateway, &req).await
        })
        .await;
        match r {
            Ok(Ok(_)) => info!(external = %m.external, "port mapping deleted"),
            Ok(Err(e)) => debug!(error = %e, "port mapping delete failed"),
            Err(_) => debug!("port mapping delete timed out"),
        }
        return;
    }
    if let Via::Upnp(g) = m.via.clone() {
        let ext = m.external.port();
        let r = tokio::time::timeout(
            DELETE_BOUND,
            tokio::task::spawn_blocking(move || {
                g.remove_port(igd_next::PortMappingProtocol::UDP, ext)
            }),
        )
        .await;
        match r {
            Ok(Ok(Ok(()))) => info!(external = %m.external, "port mapping deleted"),
            Ok(Ok(Err(e))) => debug!(error = %e, "port mapping delete failed"),
            Ok(Err(e)) => debug!(error = %e, "port mapping delete task failed"),
            Err(_) => debug!("port mapping delete timed out"),
        }
        return;
    }
    let req = Request::Map {
        protocol: Protocol::Udp,
        internal: port,
        external: 0,
        lifetime: 0,
    };
    let r = tokio::time::timeout(DELETE_BOUND, async {
        let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
        sock.connect(SocketAddr::from((m.gateway, natpmp::SERVER_PORT)))
            .await?;
        ask(&sock, m.gateway, req).await
    })
    .await;
    match r {
        Ok(Ok(_)) => info!(external = %m.external, "port mapping deleted"),
        Ok(Err(e)) => debug!(error = %e, "port mapping delete failed"),
        Err(_) => debug!("port mapping delete timed out"),
    }
}

/// The default IPv4 gateway of this network namespace, from
/// /proc/net/route (the first default route).
pub fn default_gateway() -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_default_gateway(&text)
}

/// The gateway of the first `0.0.0.0/0` route in /proc/net/route's text
/// (fields: Iface Destination Gateway Flags ... Mask; hex, host order).
fn parse_default_gateway(text: &str) -> Option<Ipv4Addr> {
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (dst, gw, mask) = (f.get(1)?, f.get(2)?, f.get(7)?);
        if *dst != "00000000" || *mask != "00000000" {
            return None;
        }
        let g = u32::from_str_radix(gw, 16).ok()?;
        // /proc prints the address as a native-endian u32 (little endian
        // on every platform this runs on).
        let ip = Ipv4Addr::from(g.swap_bytes());
        (!ip.is_unspecified()).then_some(ip)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_gateway_is_read_from_proc_net_route() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            parse_default_gateway(text),
            Some(Ipv4Addr::new(192, 168, 1, 1))
        );
        assert_eq!(parse_default_gateway("Iface\n"), None);
        assert_eq!(parse_default_gateway("h\nbad line\n"), None);
    }

    /// How a fake gateway answers.
    #[derive(Clone, Copy)]
    enum Fake {
        /// PCP (and nothing else is asked).
        Pcp,
        /// NAT-PMP; PCP gets "unsupported version" in NAT-PMP's format.
        NatPmp,
        /// NAT-PMP; PCP requests are dropped.
        NatPmpSilent,
    }

    /// A gateway on a loopback address of its own (the other tests use
    /// 127.0.0.1:5351 as "nothing listens"), answering PCP and NAT-PMP as
    /// told; every request it gets goes to the returned receiver.
    async fn fake_gateway(
        ip: Ipv4Addr,
        fake: Fake,
    ) -> (Ipv4Addr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let sock = UdpSocket::bind((ip, natpmp::SERVER_PORT)).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = [0u8; 1200];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let req = buf[..n].to_vec();
                let _ = tx.send(req.clone());
                let answer = match (req[0], fake) {
                    // A PCP server: echo the request as the answer
                    // (nonce, protocol, port), as miniupnpd does; first a
                    // stray answer to another nonce, which must be skipped.
                    (2, Fake::Pcp) => {
                        let mut a = req.clone();
                        a[1] |= 0x80;
                        a[3] = 0;
                        a[8..24].fill(0);
                        a[42..44].copy_from_slice(&40001u16.to_be_bytes());
                        a[44..60].copy_from_slice(
                            &Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped().octets(),
                        );
                        let mut stray = a.clone();
                        stray[24] ^= 0xff;
                        let _ = sock.send_to(&stray, from).await;
                        a
                    }
                    // A NAT-PMP-only gateway: RFC 6886 3.5's answer to any
                    // other version.
                    (v, Fake::NatPmp) if v != 0 => vec![0, 0x80 | req[1], 0, 1, 0, 0, 0, 5],
                    // A router that drops what it does not speak.
                    (v, _) if v != 0 => continue,
                    (_, _) if req[1] == 0 => vec![0, 128, 0, 0, 0, 0, 0, 5, 198, 51, 100, 7],
                    (_, _) => {
                        let mut a = vec![0, 128 | req[1], 0, 0, 0, 0, 0, 5];
                        a.extend_from_slice(&req[4..6]);
                        a.extend_from_slice(&40002u16.to_be_bytes());
                        a.extend_from_slice(&3600u32.to_be_bytes());
                        a
                    }
                };
                let _ = sock.send_to(&answer, from).await;
            }
        });
        (ip, rx)
    }

    #[tokio::test]
    async fn pcp_maps_first_and_the_delete_carries_the_mapping_nonce() {
        let (gw, mut reqs) = fake_gateway(Ipv4Addr::new(127, 83, 51, 1), Fake::Pcp).await;
        let m = map_any(gw, 7718, 7200, None).await.unwrap();
        assert_eq!(m.protocol(), "pcp");
        assert_eq!(m.external, "198.51.100.7:40001".parse().unwrap());
        assert_eq!(m.lifetime, 7200);
        let first = reqs.recv().await.unwrap();
        assert_eq!(first[0], 2, "PCP is asked first");
        assert_eq!(&first[40..42], &7718u16.to_be_bytes());
        let Via::Pcp(nonce) = m.via else {
            unreachable!()
        };
        assert_eq!(&first[24..36], &nonce.0);

        // A renewal keeps the nonce and suggests the mapping it has.
        let r = map_any(gw, 7718, 7200, Some(&m)).await.unwrap();
        assert_eq!(r.external, m.external);
        let renew = reqs.recv().await.unwrap();
        assert_eq!(&renew[24..36], &nonce.0);
        assert_eq!(&renew[42..44], &40001u16.to_be_bytes());

        // The delete: lifetime 0, the same nonce.
        delete(m, 7718).await;
        let del = reqs.recv().await.unwrap();
        assert_eq!(&del[4..8], &[0, 0, 0, 0]);
        assert_eq!(&del[24..36], &nonce.0);
    }

    #[tokio::test]
    async fn a_nat_pmp_gateway_answering_pcp_with_unsupported_version_maps_at_once() {
        let (gw, mut reqs) = fake_gateway(Ipv4Addr::new(127, 83, 51, 2), Fake::NatPmp).await;
        let t = std::time::Instant::now();
        let m = map_any(gw, 7718, 7200, None).await.unwrap();
        // Without the fallback on the version answer, PCP would wait out
        // its four tries (3.75 s) first.
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(m.protocol(), "nat-pmp");
        assert_eq!(m.external, "198.51.100.7:40002".parse().unwrap());
        assert_eq!(m.lifetime, 3600);
        assert_eq!(reqs.recv().await.unwrap()[0], 2);
        assert_eq!(reqs.recv().await.unwrap()[..2], [0, 0]);
    }

    #[tokio::test]
    async fn a_nat_pmp_mapping_is_renewed_with_nat_pmp_first() {
        let (gw, mut reqs) = fake_gateway(Ipv4Addr::new(127, 83, 51, 3), Fake::NatPmpSilent).await;
        // The first mapping waits out PCP's tries (the router ignores it).
        let m = map_any(gw, 7718, 7200, None).await.unwrap();
        assert_eq!(m.protocol(), "nat-pmp");
        while reqs.try_recv().is_ok() {}
        let t = std::time::Instant::now();
        let r = map_any(gw, 7718, 7200, Some(&m)).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(r.protocol(), "nat-pmp");
        assert_eq!(reqs.recv().await.unwrap()[0], 0, "NAT-PMP asked first");
    }

    #[test]
    fn renewal_waits_for_half_the_lifetime_within_bounds() {
        assert_eq!(renew_wait(7200), GATEWAY_POLL);
        assert_eq!(renew_wait(8), Duration::from_secs(4));
        assert_eq!(renew_wait(1), Duration::from_secs(1));
        let st = Mutex::new(PortMapStatus {
            renewed_at: Some(fpn_gms_client::now_unix()),
            lifetime_secs: Some(6),
            ..PortMapStatus::default()
        });
        assert!(!renewal_due(&st));
        assert!(until_renewal(&st) <= Duration::from_secs(3));
        st.lock().unwrap().renewed_at = Some(fpn_gms_client::now_unix() - 3);
        assert!(renewal_due(&st));
        assert_eq!(until_renewal(&st), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_gateway_without_nat_pmp_gives_a_bounded_failure() {
        // Loopback: nothing listens on 5351, so the ICMP error ends it at
        // once (and the whole attempt is bounded by TRIES in any case).
        let t = std::time::Instant::now();
        let r = map(Ipv4Addr::LOCALHOST, 7718, 60).await;
        assert!(matches!(r, Err(MapError::NoAnswer(_))), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(4));
    }
}
