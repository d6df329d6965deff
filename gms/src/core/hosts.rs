//! Hosts behind gateways: the admin commands, the checks that keep them in
//! step with their gateway, and what the DNS and the nodes learn of them.
//!
//! A host is a machine on a gateway's LAN that runs no fpn software. The
//! gateway GE (kind gen, or gea for the one server it fronts) answers for
//! it with its own credential and group keys, so a host's addresses must
//! lie inside the gateway's protected prefixes and its groups must be
//! among the gateway's. The checks run when a host is added or changed and
//! when its gateway changes: a `ge set` that would leave a host outside its
//! gateway's prefixes or groups is refused with the host named, and a
//! gateway with hosts cannot be removed (design note "hosts behind a
//! gateway").

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use fpn_gms_client::wire::{HostEntry, MAX_HOST_LAN, MAX_HOSTS};
use fpn_proto::ge::{GeId, GeKind, GroupId, validate_name};
use tracing::info;

use super::{Core, DirectoryEvent, HostDirectoryRecord, Output, Tx, frame};
use crate::admin::{AdminResponse, HostView};
use crate::model::{GeRecord, HostRecord};
use crate::wire::ServerMsg;
use crate::{Error, Result};

impl Core {
    pub(super) fn host_add(
        &mut self,
        name: String,
        via: &str,
        lan: &[String],
        groups: Vec<u32>,
        now: u64,
    ) -> Result<(AdminResponse, Vec<Output>)> {
        validate_name(&name).map_err(|e| Error::admin(format!("host name {name:?}: {e}")))?;
        self.check_name_free(&name)?;
        if self.st.hosts.len() >= MAX_HOSTS {
            return Err(Error::admin(format!(
                "at most {MAX_HOSTS} hosts behind gateways"
            )));
        }
        let gw = self.gateway(via)?;
        if gw.kind == GeKind::Gea
            && let Some(h) = self.st.hosts.values().find(|h| h.via == gw.id)
        {
            return Err(Error::admin(format!(
                "GE {via} is a gea, an adapter in front of one server, and already fronts host {}; \
                 make it a gen (`fpn-gms ge set {via} --kind gen`) to put more hosts behind it",
                h.name
            )));
        }
        let lan = parse_lan(lan)?;
        let groups = if groups.is_empty() {
            gw.groups.clone()
        } else {
            groups.into_iter().collect()
        };
        let rec = HostRecord {
            name: name.clone(),
            via: gw.id,
            lan,
            groups,
            created_at: now,
        };
        check_host_fits(&rec, &gw)?;
        let ((), tx) = self.transact(|c, tx| {
            c.audit(
                tx,
                now,
                "host add",
                format!(
                    "host add {name} via={via} lan={} groups={}",
                    join_ips(&rec.lan),
                    join_groups(&rec.groups)
                ),
            );
            c.put_host(tx, rec.clone());
            c.host_changed(tx, &name)?;
            Ok(())
        })?;
        info!(host = %name, gateway = %via, "host added");
        Ok((AdminResponse::ok(&self.host_view(&name)?), tx.out))
    }

    pub(super) fn host_set(
        &mut self,
        name: &str,
        lan: Option<Vec<String>>,
        groups: Option<Vec<u32>>,
        now: u64,
    ) -> Result<(AdminResponse, Vec<Output>)> {
        let old = self.host_record(name)?;
        let gw = self
            .ge_by_id(old.via)
            .cloned()
            .ok_or_else(|| Error::admin(format!("host {name}: its gateway is gone")))?;
        let mut new = old.clone();
        if let Some(l) = lan {
            new.lan = parse_lan(&l)?;
        }
        if let Some(g) = groups {
            new.groups = if g.is_empty() {
                gw.groups.clone()
            } else {
                g.into_iter().collect()
            };
        }
        check_host_fits(&new, &gw)?;
        if new == old {
            return Ok((AdminResponse::ok(&self.host_view(name)?), Vec::new()));
        }
        let ((), tx) = self.transact(|c, tx| {
            c.audit(
                tx,
                now,
                "host set",
                format!(
                    "host set {name} lan={} groups={}",
                    join_ips(&new.lan),
                    join_groups(&new.groups)
                ),
            );
            c.put_host(tx, new.clone());
            c.host_changed(tx, name)?;
            Ok(())
        })?;
        info!(host = %name, "host changed");
        Ok((AdminResponse::ok(&self.host_view(name)?), tx.out))
    }

    pub(super) fn host_remove(
        &mut self,
        name: &str,
        now: u64,
    ) -> Result<(AdminResponse, Vec<Output>)> {
        let rec = self.host_record(name)?;
        let ((), tx) = self.transact(|c, tx| {
            c.audit(tx, now, "host remove", format!("host remove {name}"));
            c.delete_host(tx, name);
            tx.out.push(Output::Directory(DirectoryEvent::Removed {
                name: rec.name.clone(),
            }));
            c.host_changed(tx, name)?;
            Ok(())
        })?;
        info!(host = %name, "host removed");
        Ok(super::admin::done(format!("host {name} removed"), tx))
    }

    pub(super) fn host_list(&self) -> Vec<HostView> {
        self.st
            .hosts
            .values()
            .map(|h| self.host_view_of(h))
            .collect()
    }

    pub(super) fn host_view(&self, name: &str) -> Result<HostView> {
        self.st
            .hosts
            .get(name)
            .map(|h| self.host_view_of(h))
            .ok_or_else(|| no_host(name))
    }

    fn host_view_of(&self, h: &HostRecord) -> HostView {
        let gw = self.ge_by_id(h.via);
        HostView {
            name: h.name.clone(),
            fqdn: format!("{}.{}", h.name, self.cfg.zone),
            via: gw.map(|g| g.name.clone()).unwrap_or_default(),
            via_id: h.via,
            lan: h.lan.clone(),
            groups: h.groups.iter().copied().collect(),
            public: self
                .presence
                .get(&h.via)
                .and_then(|p| p.seen)
                .filter(|_| gw.is_some_and(GeRecord::is_active))
                .map(|s| s.ip().to_canonical()),
            created_at: h.created_at,
        }
    }

    fn host_record(&self, name: &str) -> Result<HostRecord> {
        self.st
            .hosts
            .get(name)
            .cloned()
            .ok_or_else(|| no_host(name))
    }

    /// The active gateway GE named `via`.
    fn gateway(&self, via: &str) -> Result<GeRecord> {
        let gw = self.st.ges.get(via).cloned().ok_or_else(|| {
            Error::admin(format!(
                "no GE named {via} to put the host behind (add the gateway with \
                 `fpn-gms ge add {via} --kind gen --mode cl --group N --protect PREFIX`)"
            ))
        })?;
        if !gw.is_active() {
            return Err(Error::admin(format!("GE {via} is revoked")));
        }
        if !gw.kind.is_gateway() {
            return Err(Error::admin(format!(
                "GE {via} is a {}, which speaks for its own overlay address only; a host needs a \
                 gateway (kind gen, or gea for a single server): `fpn-gms ge set {via} --kind gen \
                 --protect PREFIX`",
                gw.kind
            )));
        }
        Ok(gw)
    }

    /// Refuses `name` when a GE or a host already has it (one namespace:
    /// both are labels of the zone).
    pub(super) fn check_name_free(&self, name: &str) -> Result<()> {
        if self.st.ges.contains_key(name) {
            return Err(Error::admin(format!(
                "{name} is taken by a GE: GEs and hosts share the zone's names"
            )));
        }
        if let Some(h) = self.st.hosts.get(name) {
            let via = self
                .ge_by_id(h.via)
                .map_or_else(|| h.via.to_string(), |g| g.name.clone());
            return Err(Error::admin(format!(
                "{name} is taken by a host behind {via}: GEs and hosts share the zone's names"
            )));
        }
        Ok(())
    }

    /// Refuses a change of gateway `old` into `new` (kind, prefixes,
    /// groups) that would leave one of its hosts without what it needs.
    pub(super) fn check_gateway_change(&self, old: &GeRecord, new: &GeRecord) -> Result<()> {
        let hosts: Vec<&HostRecord> = self.st.hosts.values().filter(|h| h.via == old.id).collect();
        for h in &hosts {
            check_host_fits(h, new)?;
        }
        // A gea is an adapter in front of one server (host add refuses a
        // second one): a gen with more cannot become one.
        if new.kind == GeKind::Gea && hosts.len() > 1 {
            let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
            return Err(Error::admin(format!(
                "GE {} fronts hosts {}: a gea is an adapter in front of one server; keep it a gen, \
                 or remove all but one host first (`fpn-gms host remove NAME`)",
                old.name,
                names.join(", ")
            )));
        }
        Ok(())
    }

    /// Refuses to remove gateway `rec` while hosts are behind it.
    pub(super) fn check_no_hosts(&self, rec: &GeRecord) -> Result<()> {
        let names: Vec<&str> = self
            .st
            .hosts
            .values()
            .filter(|h| h.via == rec.id)
            .map(|h| h.name.as_str())
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        Err(Error::admin(format!(
            "GE {} has hosts behind it: {}; remove them first (`fpn-gms host remove NAME`)",
            rec.name,
            names.join(", ")
        )))
    }

    /// Queues what a change of host `name` (already applied to memory)
    /// means: its DNS records, and a push to the sessions that take hosts.
    fn host_changed(&mut self, tx: &mut Tx, name: &str) -> Result<()> {
        if let Some(h) = self.st.hosts.get(name) {
            tx.out
                .push(Output::Directory(DirectoryEvent::Host(self.host_dns(h))));
        }
        if let Some(o) = self.host_push(name)? {
            tx.out.push(o);
        }
        Ok(())
    }

    /// Queues the host records of every host behind gateway `gw` again:
    /// its address or state changed (session, revocation).
    pub(super) fn gateway_hosts_changed(&self, gw: u32, out: &mut Vec<Output>, push: bool) {
        for h in self.st.hosts.values().filter(|h| h.via == gw) {
            out.push(Output::Directory(DirectoryEvent::Host(self.host_dns(h))));
            if push {
                match self.host_push(&h.name) {
                    Ok(Some(o)) => out.push(o),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "host push"),
                }
            }
        }
    }

    /// Host `h` as the DNS hook sees it. A revoked gateway has no address.
    fn host_dns(&self, h: &HostRecord) -> HostDirectoryRecord {
        let active = self.ge_by_id(h.via).is_some_and(GeRecord::is_active);
        HostDirectoryRecord {
            name: h.name.clone(),
            via: GeId(h.via),
            seen: self
                .presence
                .get(&h.via)
                .and_then(|p| p.seen)
                .filter(|_| active),
            lan: h.lan.clone(),
        }
    }

    /// Host `h` as nodes see it; `None` while its gateway is revoked or gone.
    fn host_entry(&self, h: &HostRecord) -> Option<HostEntry> {
        let gw = self.ge_by_id(h.via).filter(|g| g.is_active())?;
        Some(HostEntry {
            name: h.name.clone(),
            via: GeId(gw.id),
            via_name: gw.name.clone(),
            lan: h.lan.clone(),
            groups: h.groups.iter().map(|g| GroupId(*g)).collect(),
        })
    }

    /// The push telling the sessions that take hosts the current entry of
    /// host `name`; `None` when no such session is up.
    fn host_push(&self, name: &str) -> Result<Option<Output>> {
        let to: Vec<GeId> = self
            .presence
            .iter()
            .filter(|(_, p)| p.online && p.hosts)
            .map(|(g, _)| GeId(*g))
            .collect();
        if to.is_empty() {
            return Ok(None);
        }
        let entry = self.st.hosts.get(name).and_then(|h| self.host_entry(h));
        let msg = ServerMsg::HostChanged {
            name: name.to_owned(),
            entry,
        };
        Ok(Some(Output::Send {
            to,
            frame: frame(&msg)?,
        }))
    }

    /// Session `session` of `ge` chose the hosts directory: from now on it
    /// gets every host change, and this is the full list to send it first
    /// (after the session's init, before any push).
    pub fn subscribe_hosts(&mut self, ge: GeId, session: u64) -> Result<Arc<[u8]>> {
        if let Some(p) = self.presence.get_mut(&ge.0)
            && p.session == session
        {
            p.hosts = true;
        }
        let list: Vec<HostEntry> = self
            .st
            .hosts
            .values()
            .filter_map(|h| self.host_entry(h))
            .collect();
        frame(&ServerMsg::Hosts(list))
    }
}

/// Parses `--lan` addresses: at least one, at most [`MAX_HOST_LAN`], no
/// unspecified, loopback or multicast address; duplicates dropped.
fn parse_lan(given: &[String]) -> Result<Vec<IpAddr>> {
    if given.is_empty() {
        return Err(Error::admin(
            "a host needs at least one LAN address (--lan 192.168.1.10)",
        ));
    }
    let mut out: Vec<IpAddr> = Vec::with_capacity(given.len());
    for s in given {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| Error::admin(format!("--lan {s:?}: not an IP address")))?;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            return Err(Error::admin(format!(
                "--lan {ip}: not a host's address on a LAN"
            )));
        }
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    if out.len() > MAX_HOST_LAN {
        return Err(Error::admin(format!(
            "a host has at most {MAX_HOST_LAN} LAN addresses, {} given",
            out.len()
        )));
    }
    Ok(out)
}

/// Checks that host `h` fits gateway `gw`: a gateway kind, every LAN
/// address inside one of its protected prefixes, every group one of its
/// groups. The errors name the host and the fix.
fn check_host_fits(h: &HostRecord, gw: &GeRecord) -> Result<()> {
    if !gw.kind.is_gateway() {
        return Err(Error::admin(format!(
            "host {} is behind GE {}: a {} cannot answer for it (remove the host first)",
            h.name, gw.name, gw.kind
        )));
    }
    for ip in &h.lan {
        if !gw.protect.iter().any(|p| p.contains(*ip)) {
            let prefixes = if gw.protect.is_empty() {
                "none".to_owned()
            } else {
                gw.protect
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(Error::admin(format!(
                "host {}: LAN address {ip} is outside the prefixes gateway {} protects ({prefixes}); \
                 the gateway may only answer for addresses its credential names: \
                 `fpn-gms ge set {} --protect PREFIX` to cover it",
                h.name, gw.name, gw.name
            )));
        }
    }
    let outside: Vec<u32> = h
        .groups
        .iter()
        .filter(|g| !gw.groups.contains(g))
        .copied()
        .collect();
    if !outside.is_empty() {
        return Err(Error::admin(format!(
            "host {}: group {} is not one of gateway {}'s groups ({}); the gateway answers for \
             the host with its own group keys, so a host's groups are among its gateway's \
             (`fpn-gms ge set {} --add-group N`)",
            h.name,
            join_groups(&outside.into_iter().collect()),
            gw.name,
            join_groups(&gw.groups),
            gw.name
        )));
    }
    Ok(())
}

fn join_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn join_groups(groups: &BTreeSet<u32>) -> String {
    groups
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The admin error for a host name nobody has.
fn no_host(name: &str) -> Error {
    Error::admin(format!(
        "no host named {name} (add it with `fpn-gms host add {name} --via GATEWAY --lan ADDR`; \
         `fpn-gms host list` shows the hosts)"
    ))
}
