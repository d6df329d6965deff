//! The node's DNS stub.
//!
//! It listens (UDP and TCP) on the node's overlay address, port 53, and:
//!
//! - answers names in the network's zone (e.g. `b.home.fpn.`) authoritatively
//!   from a live [`NameTable`] the daemon keeps in step with the GMS
//!   directory: A/AAAA of a peer's overlay addresses (or a VIN for a host
//!   behind a gateway), NODATA for other types, NXDOMAIN with the zone's SOA
//!   for unknown names, SOA and NS at the apex;
//! - forwards every other name to upstream resolvers (by default the system's,
//!   from /etc/resolv.conf) and relays the answer, or SERVFAIL when none
//!   answers in time. Upstream exchanges use fresh sockets and random ids,
//!   retry on the next upstream, fall back to TCP on truncation and are
//!   bounded in number and time.
//!
//! It is not an open resolver: it answers whoever reaches its socket, so the
//! daemon binds it to the overlay address only, which only this host and
//! overlay peers can reach. Never bind it to a public or wildcard address.
//!
//! [`resolved`] offers the systemd-resolved split-DNS set-up so the host's
//! own programs use the stub for the zone.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fpn_node::error::Error> {
//! use fpn_node::dns::{DnsConfig, DnsStub, NameTable, Target};
//! let table = NameTable::new();
//! table.insert("b", Target::peer("100.64.0.2".parse().unwrap()))?;
//! let cfg = DnsConfig::new("100.64.0.1:53".parse().unwrap(), "home.fpn", table.clone())?;
//! let stub = DnsStub::bind(cfg).await?;
//! let stats = stub.stats();
//! tokio::spawn(stub.run());
//! // later: table.insert(..) takes effect on the next query; stats.snapshot()
//! # Ok(()) }
//! ```

mod forward;
mod query;
pub mod resolved;
mod server;
mod stats;
mod table;
mod upstream;
mod zone;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tracing::{Instrument, debug, info, info_span, warn};

pub use stats::{DnsStats, DnsStatsSnapshot};
pub use table::{NameTable, Target};
pub use upstream::{MAX_UPSTREAMS, SYSTEM_RESOLV_CONF, Upstreams, parse_resolv_conf};

use crate::error::{Error, Result};
use forward::{ForwardConfig, Forwarder};
use server::Core;
use zone::Zone;

/// The stub's settings. [`DnsConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Where to listen, UDP and TCP: the overlay address, port 53. Port 0
    /// picks a free port (tests). Wildcard addresses are refused.
    pub listen: SocketAddr,
    /// The names of the zone.
    pub table: NameTable,
    /// Where other names go.
    pub upstreams: Upstreams,
    /// TTL of the stub's answers, and of negative answers (SOA minimum), in
    /// seconds. Default 60: names follow directory changes within a minute.
    pub ttl: u32,
    /// How long one exchange with one upstream may take. Default 2 s.
    pub upstream_timeout: Duration,
    /// How many times the list of upstreams is tried. Default 2.
    pub upstream_rounds: u8,
    /// The EDNS UDP payload announced to upstreams. Default 1232.
    pub upstream_udp_payload: u16,
    /// Forwarded requests in flight at most; more get SERVFAIL at once.
    /// Default 256.
    pub max_in_flight: usize,
    /// Open TCP connections at most; more are closed. Default 32.
    pub max_tcp_connections: usize,
    /// A TCP connection idle this long is closed. Default 10 s.
    pub tcp_idle_timeout: Duration,
    zone: String,
}

impl DnsConfig {
    /// Settings for a stub on `listen` serving `zone` (e.g. `home.fpn`) from
    /// `table`, with the defaults documented on each field.
    pub fn new(listen: SocketAddr, zone: &str, table: NameTable) -> Result<Self> {
        Zone::new(zone, 0)?;
        Ok(Self {
            listen,
            table,
            upstreams: Upstreams::default(),
            ttl: 60,
            upstream_timeout: Duration::from_secs(2),
            upstream_rounds: 2,
            upstream_udp_payload: query::EDNS_PAYLOAD,
            max_in_flight: 256,
            max_tcp_connections: 32,
            tcp_idle_timeout: Duration::from_secs(10),
            zone: zone.to_owned(),
        })
    }

    /// The zone, as given.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    fn check(&self) -> Result<()> {
        let bad = |setting, reason| Err(Error::DnsConfig { setting, reason });
        if self.listen.ip().is_unspecified() {
            // On a wildcard address the stub would answer (and forward for)
            // anyone who reaches the host: an open resolver.
            return bad("listen", "must be the overlay address, not a wildcard");
        }
        if self.ttl > i32::MAX as u32 {
            return bad("ttl", "above 2^31 - 1 (RFC 2181)");
        }
        if self.upstream_timeout.is_zero() {
            return bad("upstream_timeout", "must be positive");
        }
        if self.upstream_rounds == 0 {
            return bad("upstream_rounds", "must be at least 1");
        }
        if self.upstream_udp_payload < 512 {
            return bad("upstream_udp_payload", "must be at least 512");
        }
        if self.max_in_flight == 0 || self.max_tcp_connections == 0 {
            return bad("max_in_flight/max_tcp_connections", "must be at least 1");
        }
        if self.tcp_idle_timeout.is_zero() {
            return bad("tcp_idle_timeout", "must be positive");
        }
        Ok(())
    }
}

/// A bound DNS stub; [`run`](Self::run) serves it.
#[derive(Debug)]
pub struct DnsStub {
    udp: UdpSocket,
    tcp: TcpListener,
    local: SocketAddr,
    core: Arc<Core>,
}

impl DnsStub {
    /// Checks `config`, reads the upstreams and binds UDP and TCP.
    pub async fn bind(config: DnsConfig) -> Result<Self> {
        config.check()?;
        let zone = Zone::new(&config.zone, config.ttl)?;
        let (udp, tcp) = server::bind(config.listen)
            .await
            .map_err(|source| Error::DnsBind {
                addr: config.listen,
                source,
            })?;
        let local = udp.local_addr().map_err(|source| Error::DnsBind {
            addr: config.listen,
            source,
        })?;
        let upstreams = config.upstreams.resolve(local)?;
        if upstreams.is_empty() {
            warn!("DNS stub has no upstream resolver: names outside the zone will fail");
        }
        debug!(%local, ?upstreams, "DNS stub sockets");
        info!(zone = %zone.apex(), upstreams = upstreams.len(), "DNS stub bound");
        let stats = DnsStats::default();
        let forwarder = Forwarder::new(
            ForwardConfig {
                upstreams,
                timeout: config.upstream_timeout,
                rounds: config.upstream_rounds,
                udp_payload: config.upstream_udp_payload,
                max_in_flight: config.max_in_flight,
            },
            stats.clone(),
        );
        let core = Arc::new(Core {
            zone,
            table: config.table,
            forwarder,
            stats,
            tcp_idle: config.tcp_idle_timeout,
            max_tcp: config.max_tcp_connections,
        });
        Ok(Self {
            udp,
            tcp,
            local,
            core,
        })
    }

    /// The address the stub listens on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The upstream resolvers in use, after leaving out the stub itself.
    pub fn upstreams(&self) -> &[SocketAddr] {
        self.core.forwarder.upstreams()
    }

    /// The stub's counters (a shared handle; keep it for `status`).
    pub fn stats(&self) -> DnsStats {
        self.core.stats.clone()
    }

    /// Serves until the returned future is dropped (e.g. its task aborted);
    /// dropping it also cancels every forward and TCP connection in progress.
    pub async fn run(self) {
        let span = info_span!("dns_stub");
        server::serve(self.udp, self.tcp, self.core)
            .instrument(span)
            .await;
    }
}
