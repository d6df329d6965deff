//! Helpers of the DNS stub tests: the real `dig`, a stub on loopback and a
//! real upstream DNS server (hickory-server) on loopback.

#![allow(dead_code)] // each test file uses a different subset

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fpn_node::dns::{DnsConfig, DnsStats, DnsStub, NameTable, Upstreams};
use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, SOA, TXT};
use hickory_server::proto::rr::{Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// What dig printed, picked apart.
#[derive(Debug)]
pub struct Dig {
    /// The status word of the header line: NOERROR, NXDOMAIN, ...
    pub status: String,
    /// The header flags: qr, aa, rd, ra, tc.
    pub flags: Vec<String>,
    /// Answer section lines, split into whitespace-separated fields.
    pub answer: Vec<Vec<String>>,
    /// Authority section lines, split.
    pub authority: Vec<Vec<String>>,
    /// The whole output, for failure messages.
    pub raw: String,
}

impl Dig {
    /// Whether the header carries `flag`.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The data fields (after name, TTL, class, type) of the answers of one
    /// type.
    pub fn answers_of(&self, rtype: &str) -> Vec<String> {
        self.answer
            .iter()
            .filter(|f| f.get(3).map(String::as_str) == Some(rtype))
            .map(|f| f[4..].join(" "))
            .collect()
    }
}

/// Runs the real `dig` against `server` with `args`. Panics (fails the test,
/// never skips it) when dig is not installed.
pub async fn dig(server: SocketAddr, args: &[&str]) -> Dig {
    let mut cmd = tokio::process::Command::new("dig");
    cmd.arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=5", "+tries=1"])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(Duration::from_secs(30), cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("dig is required for these tests (Debian: apt-get install bind9-dnsutils)")
        }
        Ok(Err(e)) => panic!("cannot run dig: {e}"),
        Err(_) => panic!("dig did not finish in 30 s"),
    };
    parse_dig(&String::from_utf8_lossy(&out.stdout))
}

fn parse_dig(raw: &str) -> Dig {
    let mut status = String::new();
    let mut flags = Vec::new();
    let mut answer = Vec::new();
    let mut authority = Vec::new();
    let mut section: Option<&mut Vec<Vec<String>>> = None;
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            status = rest.split(',').next().unwrap_or("").to_owned();
        }
        if let Some(rest) = line.strip_prefix(";; flags:") {
            flags = rest
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect();
        }
        if line.starts_with(";; ANSWER SECTION:") {
            section = Some(&mut answer);
            continue;
        }
        if line.starts_with(";; AUTHORITY SECTION:") {
            section = Some(&mut authority);
            continue;
        }
        if line.trim().is_empty() || line.starts_with(';') {
            section = None;
            continue;
        }
        if let Some(s) = section.as_mut() {
            s.push(line.split_whitespace().map(str::to_owned).collect());
        }
    }
    Dig {
        status,
        flags,
        answer,
        authority,
        raw: raw.to_owned(),
    }
}

/// A stub running on 127.0.0.1 (ephemeral port) for the life of the value.
pub struct Stub {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: DnsStats,
    task: JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Settings for a test stub for `home.fpn` with `upstreams`.
pub fn config(table: &NameTable, upstreams: Vec<SocketAddr>) -> DnsConfig {
    let mut cfg =
        DnsConfig::new((Ipv4Addr::LOCALHOST, 0).into(), "home.fpn", table.clone()).expect("config");
    cfg.upstreams = Upstreams::List(upstreams);
    cfg.upstream_timeout = Duration::from_millis(500);
    cfg
}

/// Binds and runs a stub.
pub async fn start(cfg: DnsConfig) -> Stub {
    let stub = DnsStub::bind(cfg).await.expect("bind the stub");
    let addr = stub.local_addr();
    let stats = stub.stats();
    let task = tokio::spawn(stub.run());
    Stub { addr, stats, task }
}

/// A real DNS server (hickory-server) authoritative for `example.test.` on
/// 127.0.0.1, port chosen by the OS. `www` has A 198.18.0.80; `big` has 20
/// TXT records of 200 bytes (about 4.5 KB: truncated over UDP).
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    server: Server<Catalog>,
}

impl Upstream {
    /// Stops the server.
    pub async fn stop(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }
}

/// Which sockets the upstream opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// UDP and TCP on the same port.
    Both,
    /// TCP only (the port's UDP is left closed).
    TcpOnly,
}

/// Starts an upstream for `example.test.` on 127.0.0.1, port chosen by the OS.
pub async fn upstream(listen: Listen) -> Upstream {
    let mut server = Server::new(example_test().await);
    let addr = match listen {
        Listen::Both => {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let addr = udp.local_addr().unwrap();
            let tcp = TcpListener::bind(addr).await.expect("TCP on the UDP port");
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 64);
            addr
        }
        Listen::TcpOnly => {
            let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let addr = tcp.local_addr().unwrap();
            server.register_listener(tcp, Duration::from_secs(5), 64);
            addr
        }
    };
    Upstream { addr, server }
}

/// Starts an upstream for `example.test.` on `addr`, UDP and TCP.
pub async fn upstream_at(addr: SocketAddr) -> Upstream {
    let mut server = Server::new(example_test().await);
    server.register_socket(UdpSocket::bind(addr).await.expect("upstream UDP"));
    let tcp = TcpListener::bind(addr).await.expect("upstream TCP");
    server.register_listener(tcp, Duration::from_secs(5), 64);
    Upstream { addr, server }
}

/// The catalog of the upstream: the zone `example.test.`.
async fn example_test() -> Catalog {
    let origin = Name::from_ascii("example.test.").unwrap();
    let zone = InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
        None,
    );
    let soa = SOA::new(
        Name::from_ascii("ns.example.test.").unwrap(),
        Name::from_ascii("hostmaster.example.test.").unwrap(),
        1,
        3600,
        600,
        86400,
        60,
    );
    zone.upsert(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1)
        .await;
    let www = Name::from_ascii("www.example.test.").unwrap();
    zone.upsert(
        Record::from_rdata(www, 60, RData::A(A(Ipv4Addr::new(198, 18, 0, 80)))),
        1,
    )
    .await;
    let big = Name::from_ascii("big.example.test.").unwrap();
    for i in 0..20 {
        let text = format!("{i:03}{}", "x".repeat(197));
        zone.upsert(
            Record::from_rdata(big.clone(), 60, RData::TXT(TXT::new(vec![text]))),
            1,
        )
        .await;
    }
    let mut catalog = Catalog::new();
    catalog.upsert(origin.into(), vec![Arc::new(zone) as Arc<dyn ZoneHandler>]);
    catalog
}
