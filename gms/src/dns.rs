//! The zone's DNS inside `fpn-gms serve`: fpn-ddns embedded and kept in
//! step with the GEs.
//!
//! The GMS core reports every change of a GE's name or addresses as a
//! [`DirectoryEvent`] while it holds its lock, so [`DnsHook`] only notes the
//! newest event per name and wakes a task; that task writes the records
//! (each write durable before the next, see fpn-ddns) outside the lock. A
//! burst of changes to one name (a node reconnecting over and over) costs
//! one write, and the queue never holds more than one entry per GE.
//!
//! Records of a GE: A/AAAA = the address its session comes from (what the
//! GMS sees, so the public address of a node behind NAT), LIP = the
//! addresses it reports that differ from that one. A GE never seen has no
//! records. A host behind a gateway: A/AAAA = its gateway's (and they
//! follow it), LIP = the host's LAN addresses. The DDNS holds no overlay addresses: nodes learn those from the
//! GMS directory (credentials), and their DNS stubs answer with them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fpn_ddns::hickory_proto::rr::Name;
use fpn_ddns::{Ddns, DdnsConfig, FileConfig, Server, Sockets};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{Config, DataDir, DnsSettings};
use crate::core::{DirectoryEvent, DirectoryRecord};
use crate::server::DirectoryHook;
use crate::{Error, Result};

/// UDP worker threads when the configuration names none: the GMS is one
/// small server, the DNS shares its cores.
const DEFAULT_UDP_THREADS: usize = 2;

/// Changes waiting for the writer: newest event per GE name.
#[derive(Default)]
struct Pending {
    events: Mutex<HashMap<String, DirectoryEvent>>,
    wake: Notify,
    closing: AtomicBool,
}

impl Pending {
    fn take(&self) -> HashMap<String, DirectoryEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The [`DirectoryHook`] that feeds the in-process DNS.
pub struct DnsHook {
    pending: Arc<Pending>,
    addrs: Vec<SocketAddr>,
    /// The zone (its counters for `/metrics`, its serial for `status`).
    /// Weak: `shutdown` takes the zone back with `Arc::try_unwrap` to close
    /// it while the server may still hold the hook.
    ddns: std::sync::Weak<Ddns>,
}

impl DirectoryHook for DnsHook {
    fn on_change(&self, event: &DirectoryEvent) {
        let name = match event {
            DirectoryEvent::Updated(r) => r.name.clone(),
            DirectoryEvent::Host(h) => h.name.clone(),
            DirectoryEvent::Removed { name } => name.clone(),
        };
        self.pending
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, event.clone());
        self.pending.wake.notify_one();
    }

    fn dns_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    fn dns_stats(&self) -> Option<fpn_ddns::DdnsStats> {
        self.ddns.upgrade().map(|d| d.stats())
    }

    fn zone_serial(&self) -> Option<u32> {
        self.ddns.upgrade().map(|d| d.serial())
    }
}

/// The running DNS: server threads, the zone and the record writer.
pub struct InProcessDns {
    ddns: Arc<Ddns>,
    server: Server,
    writer: JoinHandle<()>,
    pending: Arc<Pending>,
    hook: Arc<DnsHook>,
}

impl std::fmt::Debug for InProcessDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessDns")
            .field("zone", &self.ddns.origin().to_string())
            .field("addrs", &self.hook.addrs)
            .finish_non_exhaustive()
    }
}

impl InProcessDns {
    /// Opens the zone in the data directory and starts answering on the
    /// configured addresses (`listen` overrides them when not empty).
    /// Returns `None` when the configuration turns the DNS off.
    ///
    /// Must run inside a tokio runtime (the writer is a task).
    pub async fn start(
        data: &DataDir,
        cfg: &Config,
        listen: &[SocketAddr],
    ) -> Result<Option<Self>> {
        let settings: &DnsSettings = &cfg.dns;
        if !settings.enabled {
            return Ok(None);
        }
        let mut origin = Name::from_ascii(&cfg.zone)
            .map_err(|e| Error::Config(format!("zone {}: {e}", cfg.zone)))?;
        origin.set_fqdn(true);
        let mut dcfg = DdnsConfig::new(origin, data.dns_db());
        if let Some(file) = &settings.config {
            let path: PathBuf = data.root().join(file);
            FileConfig::read(&path)?.apply(&mut dcfg, data.root())?;
        }
        let addrs = if listen.is_empty() {
            settings.listen_addrs(cfg.listen)
        } else {
            listen.to_vec()
        };
        let threads = settings.udp_threads.unwrap_or(DEFAULT_UDP_THREADS);
        let mut sockets = Sockets::default();
        for addr in &addrs {
            let s = Sockets::bind(*addr, threads).map_err(|e| {
                Error::Config(format!(
                    "cannot serve DNS on {addr}: {e} (set [dns] listen in gms.toml, \
                     or --dns-listen, or turn it off with --no-dns)"
                ))
            })?;
            sockets.extend(s);
        }
        let ddns = Arc::new(Ddns::open(dcfg)?);
        // Before answering: a secondary's first transfer already carries
        // the NS and glue that gms.toml asks for.
        publish_nameserver(&ddns, cfg).await?;
        let server = ddns.serve(sockets)?;
        let bound = server.local_addrs().to_vec();
        info!(zone = %ddns.origin(), addrs = ?bound, serial = ddns.serial(), "DDNS serving (udp+tcp)");
        let pending = Arc::new(Pending::default());
        let writer = tokio::spawn(write_records(ddns.clone(), pending.clone()));
        let hook = Arc::new(DnsHook {
            pending: pending.clone(),
            addrs: bound,
            ddns: Arc::downgrade(&ddns),
        });
        Ok(Some(Self {
            ddns,
            server,
            writer,
            pending,
            hook,
        }))
    }

    /// The hook to hand to [`crate::server::serve`].
    pub fn hook(&self) -> Arc<DnsHook> {
        self.hook.clone()
    }

    /// Where it answers.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.hook.addrs
    }

    /// Writes what is still queued, stops answering and closes the zone
    /// (flushed). Call after the GMS stopped producing events.
    pub async fn shutdown(self) {
        self.pending.closing.store(true, Ordering::SeqCst);
        self.pending.wake.notify_one();
        if let Err(e) = self.writer.await {
            warn!("DNS record writer ended abnormally: {e}");
        }
        self.server.shutdown().await;
        drop(self.hook);
        match Arc::try_unwrap(self.ddns) {
            Ok(ddns) => ddns.close(),
            Err(_) => warn!("DNS zone still in use at shutdown; sled flushes it on drop"),
        }
    }
}

/// Makes the apex NS and its glue what `cfg` asks for (see
/// [`Config::nameserver`]). Zones created before these settings (NS
/// `ns1.<zone>` without an address, which a parent cannot delegate to and
/// `named-checkzone` refuses) are brought in step here on each start; a
/// zone that already matches is left alone, serial unchanged.
async fn publish_nameserver(ddns: &Ddns, cfg: &Config) -> Result<()> {
    use fpn_ddns::hickory_proto::rr::rdata::{A, AAAA, NS};
    use fpn_ddns::hickory_proto::rr::{RData, RecordType};
    let Some(ns) = cfg.nameserver()? else {
        warn!(
            zone = %cfg.zone,
            "the zone's NS has no address, so a parent zone cannot delegate to it: \
             set public_addr, or [dns] ns_name and ns_addrs, in gms.toml"
        );
        return Ok(());
    };
    let origin = ddns.origin().to_string();
    let apex = ddns.records(&origin)?;
    let ttl = apex
        .iter()
        .find(|r| r.record_type() == RecordType::NS)
        .map_or(DEFAULT_NS_TTL, |r| r.ttl);
    let name = Name::from_ascii(&ns.name)
        .map_err(|e| Error::Config(format!("[dns] ns_name {}: {e}", ns.name)))?;
    if ns.in_zone {
        // Glue first: the NS never points at a name without an address.
        let v4: Vec<RData> = ns
            .glue
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(a) => Some(RData::A(A(*a))),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v6: Vec<RData> = ns
            .glue
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(a) => Some(RData::AAAA(AAAA(*a))),
                IpAddr::V4(_) => None,
            })
            .collect();
        ddns.set_rrset(&ns.name, u16::from(RecordType::A), ttl, v4)
            .await?;
        ddns.set_rrset(&ns.name, u16::from(RecordType::AAAA), ttl, v6)
            .await?;
    }
    let serial = ddns
        .set_rrset(
            &origin,
            u16::from(RecordType::NS),
            ttl,
            vec![RData::NS(NS(name))],
        )
        .await?;
    info!(ns = %ns.name, glue = ns.glue.len(), serial, "zone NS published");
    Ok(())
}

/// TTL of the apex NS and glue when the zone has none to copy.
const DEFAULT_NS_TTL: u32 = 3600;

/// The writer task: applies queued events until closed, then drains once more.
async fn write_records(ddns: Arc<Ddns>, pending: Arc<Pending>) {
    loop {
        let closing = pending.closing.load(Ordering::SeqCst);
        let batch = pending.take();
        for (name, event) in batch {
            apply(&ddns, &name, &event).await;
        }
        if closing {
            return;
        }
        pending.wake.notified().await;
    }
}

async fn apply(ddns: &Ddns, name: &str, event: &DirectoryEvent) {
    let result = match event {
        DirectoryEvent::Removed { .. } => ddns.remove_ge(name).await,
        DirectoryEvent::Host(host) => {
            let (a, aaaa) = address_of(host.seen);
            if a.is_none() && aaaa.is_none() {
                // A gateway never seen (or revoked): nothing to point at.
                ddns.remove_ge(name).await
            } else {
                ddns.set_ge_records(name, a, aaaa, &host.lan).await
            }
        }
        DirectoryEvent::Updated(rec) => {
            let (a, aaaa, lips) = records_of(rec);
            if a.is_none() && aaaa.is_none() && lips.is_empty() {
                ddns.remove_ge(name).await
            } else {
                ddns.set_ge_records(name, a, aaaa, &lips).await
            }
        }
    };
    match result {
        Ok(serial) => debug!(name, serial, "DNS records written"),
        Err(e) => warn!(name, "cannot write DNS records: {e}"),
    }
}

/// The A or AAAA record for a session seen at `seen`.
fn address_of(
    seen: Option<SocketAddr>,
) -> (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>) {
    // Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d.
    match seen.map(|s| s.ip().to_canonical()) {
        Some(IpAddr::V4(v4)) => (Some(v4), None),
        Some(IpAddr::V6(v6)) => (None, Some(v6)),
        None => (None, None),
    }
}

/// A, AAAA and LIP records of a GE.
fn records_of(
    rec: &DirectoryRecord,
) -> (
    Option<std::net::Ipv4Addr>,
    Option<std::net::Ipv6Addr>,
    Vec<IpAddr>,
) {
    let seen = rec.seen.map(|s| s.ip().to_canonical());
    let (a, aaaa) = address_of(rec.seen);
    let mut lips: Vec<IpAddr> = Vec::new();
    for ip in rec.reported.iter().map(|s| s.ip().to_canonical()) {
        if Some(ip) != seen && !ip.is_unspecified() && !ip.is_loopback() && !lips.contains(&ip) {
            lips.push(ip);
        }
    }
    (a, aaaa, lips)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpn_proto::ge::{GeId, GeKind};

    fn rec(seen: Option<&str>, reported: &[&str]) -> DirectoryRecord {
        DirectoryRecord {
            name: "laptop".into(),
            id: GeId(7),
            kind: GeKind::Ges,
            overlay: "100.64.0.7".parse().unwrap(),
            seen: seen.map(|s| s.parse().unwrap()),
            reported: reported.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn seen_address_is_the_a_record_and_other_reported_ones_are_lips() {
        let (a, aaaa, lips) = records_of(&rec(
            Some("[::ffff:198.18.0.9]:5000"),
            &[
                "198.18.0.9:7718",
                "10.0.0.5:7718",
                "10.0.0.5:7719",
                "127.0.0.1:7718",
                "0.0.0.0:7718",
            ],
        ));
        assert_eq!(a, Some("198.18.0.9".parse().unwrap()));
        assert_eq!(aaaa, None);
        assert_eq!(lips, vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn never_seen_has_no_address_records() {
        let (a, aaaa, lips) = records_of(&rec(None, &[]));
        assert!(a.is_none() && aaaa.is_none() && lips.is_empty());
        let (_, aaaa, _) = records_of(&rec(Some("[2001:db8::1]:1"), &[]));
        assert_eq!(aaaa, Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn the_queue_keeps_only_the_newest_event_per_name() {
        let hook = DnsHook {
            pending: Arc::new(Pending::default()),
            addrs: Vec::new(),
            ddns: std::sync::Weak::new(),
        };
        hook.on_change(&DirectoryEvent::Updated(rec(Some("198.18.0.1:1"), &[])));
        hook.on_change(&DirectoryEvent::Removed {
            name: "laptop".into(),
        });
        let batch = hook.pending.take();
        assert_eq!(batch.len(), 1);
        assert!(matches!(batch["laptop"], DirectoryEvent::Removed { .. }));
        assert!(hook.pending.take().is_empty());
    }
}
