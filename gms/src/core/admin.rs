//! Admin commands: groups, GEs, tokens, rotation, listings.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use fpn_proto::credential::MAX_PREFIXES;
use fpn_proto::ge::{GeId, GeKind, Mode, validate_name};
use fpn_proto::prefix::Prefix;
use tracing::info;

use super::keys::RotationCause;
use super::{Core, DirectoryEvent, Output, Tx, frame};
use crate::admin::{
    AdminRequest, AdminResponse, AuditView, DoneView, GeView, GroupView, KeyVersionView, KeysView,
    StatusView, TokenView,
};
use crate::model::{
    AuditEntry, CertStatus, GeRecord, GroupRecord, RevocationRecord, RevokedItem, SCHEMA_VERSION,
    TokenRecord, from_json,
};
use crate::token::Token;
use crate::wire::{ServerMsg, close};
use crate::{Error, Result};

/// Most groups a network may define (group numbers are u32, but each is a key to rotate).
const MAX_GROUPS_TOTAL: usize = 4096;
/// Longest group name.
const MAX_GROUP_NAME: usize = 64;
/// Longest token lifetime.
const MAX_TOKEN_TTL: u64 = 30 * 86_400;

impl Core {
    /// [`Core::handle_admin`] on behalf of `who`, which the audit log records
    /// with every change the request makes (`cli uid=0`, `web:alice`).
    pub fn handle_admin_as(
        &mut self,
        req: AdminRequest,
        who: &str,
        now: u64,
    ) -> (AdminResponse, Vec<Output>) {
        self.actor = Some(who.to_owned());
        let r = self.handle_admin(req, now);
        self.actor = None;
        r
    }

    /// Handles one admin request. A change is committed before this returns
    /// its `ok` answer; the shell syncs the store, then answers and carries
    /// out the outputs.
    pub fn handle_admin(&mut self, req: AdminRequest, now: u64) -> (AdminResponse, Vec<Output>) {
        let r = match req {
            AdminRequest::Status => Ok((AdminResponse::ok(&self.status()), Vec::new())),
            AdminRequest::GroupList => Ok((AdminResponse::ok(&self.group_list()), Vec::new())),
            AdminRequest::GeList => Ok((AdminResponse::ok(&self.ge_list()), Vec::new())),
            AdminRequest::GeShow { name } => self
                .ge_view(&name)
                .map(|v| (AdminResponse::ok(&v), Vec::new())),
            AdminRequest::Keys => Ok((AdminResponse::ok(&self.keys_view(now)), Vec::new())),
            AdminRequest::Audit { after, limit } => self
                .audit_view(after, limit)
                .map(|v| (AdminResponse::ok(&v), Vec::new())),
            AdminRequest::GroupAdd { num, name } => self.group_add(num, name, now),
            AdminRequest::GroupRemove { num } => self.group_remove(num, now),
            AdminRequest::GroupRename { num, name } => self.group_rename(num, name, now),
            AdminRequest::TokenList => Ok((AdminResponse::ok(&self.token_list(now)), Vec::new())),
            AdminRequest::TokenCancel { id } => self.token_cancel(&id, now),
            AdminRequest::GeAdd {
                name,
                kind,
                mode,
                groups,
                protect,
            } => self.ge_add(
                name,
                kind.as_deref(),
                mode.as_deref(),
                groups,
                &protect,
                now,
            ),
            AdminRequest::GeSet {
                name,
                kind,
                mode,
                groups,
                add_groups,
                remove_groups,
                protect,
            } => self.ge_set(
                &name,
                GeChange {
                    kind,
                    mode,
                    groups,
                    add_groups,
                    remove_groups,
                    protect,
                },
                now,
            ),
            AdminRequest::GeRemove { name } => self.ge_retire(&name, Retire::Remove, now),
            AdminRequest::GeRevoke { name } => self.ge_retire(&name, Retire::Revoke, now),
            AdminRequest::TokenCreate { name, ttl_secs } => self.token_create(&name, ttl_secs, now),
            AdminRequest::HostAdd {
                name,
                via,
                lan,
                groups,
            } => self.host_add(name, &via, &lan, groups, now),
            AdminRequest::HostSet { name, lan, groups } => self.host_set(&name, lan, groups, now),
            AdminRequest::HostRemove { name } => self.host_remove(&name, now),
            AdminRequest::HostList => Ok((AdminResponse::ok(&self.host_list()), Vec::new())),
            AdminRequest::HostShow { name } => self
                .host_view(&name)
                .map(|v| (AdminResponse::ok(&v), Vec::new())),
            AdminRequest::Rotate { group } => self.rotate_cmd(group, now),
        };
        match r {
            Ok(x) => x,
            Err(e) => (AdminResponse::err(e), Vec::new()),
        }
    }

    fn group_add(
        &mut self,
        num: u32,
        name: String,
        now: u64,
    ) -> Result<(AdminResponse, Vec<Output>)> {
        if num == 0 {
            return Err(Error::admin("group numbers start at 1"));
        }
        check_label("group name", &name, MAX_GROUP_NAME)?;
        if self.st.groups.contains_key(&num) {
            return Err(Error::admin(format!("group {num} already exists")));
        }
        if let Some(g) = self.st.groups.values().find(|g| g.name == name) {
            return Err(Error::admin(format!(
                "group name {name:?} is taken by group {}",
                g.num
            )));
        }
        if self.st.groups.len() >= MAX_GROUPS_TOTAL {
            return Err(Error::admin(format!("at most {MAX_GROUPS_TOTAL} groups")));
        }
        let ((), tx) = self.transact(|c, tx| {
            c.put_group(
                tx,
                GroupRecord {
                    num,
                    name: name.clone(),
                    created_at: now,
                },
            );
            c.create_group_key(tx, num, now)?;
            c.audit(tx, now, "group add", format!("group add {num} name={name}"));
            Ok(())
        })?;
        info!(group = num, "group added");
        Ok(done(format!("group {num} ({name}) added"), tx))
    }

    fn group_rename(
        &mut self,
        num: u32,
        name: String,
        now: u64,
    ) -> Result<(AdminResponse, Vec<Output>)> {
        check_label("group name", &name, MAX_GROUP_NAME)?;
        let Some(old) = self.st.groups.get(&num).cloned() else {
            return Err(Error::admin(format!("no group {num}")));
        };
        if let Some(g) = self
            .st
            .groups
            .values()
            .find(|g| g.name == name && g.num != num)
        {
            return Err(Error::admin(format!(
                "group name {name:?} is taken by group {}",
                g.num
            )));
        }
        // The name is the operator's label only: keys, credentials and
        // nodes know groups by number, so nothing is pushed.
        let ((), tx) = self.transact(|c, tx| {
            c.put_group(
                tx,
                GroupRecord {
                    name: name.clone(),
                    ..old.clone()
                },
            );
            c.audit(
                tx,
                now,
                "group rename",
                format!("group rename {num} name={name} (was {})", old.name),
            );
            Ok(())
        })?;
        info!(group = num, "group renamed");
        Ok(done(format!("group {num} renamed to {name}"), tx))
    }

    fn token_list(&self, now: u64) -> Vec<crate::admin::TokenInfoView> {
        let mut v: Vec<_> = self
            .st
            .tokens
            .iter()
            .filter(|(_, t)| t.used_at.is_none())
            .map(|(id, t)| crate::admin::TokenInfoView {
                id: hex::encode(id),
                ge: t.ge_name.clone(),
                created_at: t.created_at,
                expires_at: t.expires_at,
                expired: t.expires_at <= now,
            })
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        v
    }

    fn token_cancel(&mut self, id: &str, now: u64) -> Result<(AdminResponse, Vec<Output>)> {
        let raw: [u8; 16] = hex::decode(id)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::admin(format!("token id {id:?}: expected 32 hex digits")))?;
        let Some(t) = self.st.tokens.get(&raw).cloned() else {
            return Err(Error::admin(format!("no token {id}")));
        };
        if t.used_at.is_some() {
            return Err(Error::admin(format!("token {id} was used already")));
        }
        let ((), tx) = self.transact(|c, tx| {
            c.delete_token(tx, raw);
            c.audit(
                tx,
                now,
                "token cancel",
                format!("token cancel {} id={id}", t.ge_name),
            );
            Ok(())
        })?;
        info!(ge = %t.ge_name, "token cancelled");
        Ok(done(format!("token {id} for {} cancelled", t.ge_name), tx))
    }

    fn group_remove(&mut self, num: u32, now: u64) -> Result<(AdminResponse, Vec<Output>)> {
        if !self.st.groups.contains_key(&num) {
            return Err(Error::admin(format!("no group {num}")));
        }
        let members: Vec<&str> = self
            .st
            .ges
            .values()
            .filter(|g| g.is_active() && g.groups.contains(&num))
            .map(|g| g.name.as_str())
            .collect();
        if !members.is_empty() {
            return Err(Error::admin(format!(
                "group {num} still has members: {}; move them out first (ge set NAME --remove-group {num})",
                members.join(", ")
            )));
        }
        let ((), tx) = self.transact(|c, tx| {
            // Revoked GEs keep their record for the audit trail; drop the group from it.
            let stale: Vec<GeRecord> =
                c.st.ges
                    .values()
                    .filter(|g| g.groups.contains(&num))
                    .cloned()
                    .collect();
            for mut g in stale {
                g.groups.remove(&num);
                c.put_ge(tx, g);
            }
            c.delete_group(tx, num);
            c.audit(tx, now, "group remove", format!("group remove {num}"));
            Ok(())
        })?;
        info!(group = num, "group removed");
        Ok(done(format!("group {num} removed"), tx))
    }

    fn ge_add(
        &mut self,
        name: String,
        kind: Option<&str>,
        mode: Option<&str>,
        groups: Vec<u32>,
        protect: &[String],
        now: u64,
    ) -> Result<(AdminResponse, Vec<Output>)> {
        validate_name(&name).map_err(|e| Error::admin(format!("GE name {name:?}: {e}")))?;
        let kind: GeKind = match kind {
            Some(k) => k.parse().map_err(|e| Error::admin(format!("{e}")))?,
            None => default_kind(protect),
        };
        let mode: Mode = match mode {
            Some(m) => m.parse().map_err(|e| Error::admin(format!("{e}")))?,
            None => default_mode(kind),
        };
        if self.st.ges.contains_key(&name) {
            return Err(Error::admin(format!("GE {name} already exists")));
        }
        self.check_name_free(&name)?;
        let groups = self.check_groups(groups.into_iter())?;
        let created = self.new_groups(&groups)?;
        let protect = self.check_protect(&name, kind, protect)?;
        let ((), tx) = self.transact(|c, tx| {
            c.create_groups(tx, &created, &name, now)?;
            let id = c.st.counters.next_ge_id;
            let next_id = id
                .checked_add(1)
                .ok_or_else(|| Error::admin("GE ids exhausted"))?;
            // Fails before touching memory; from here on the counters change.
            let overlay = c.allocate_overlay()?;
            c.st.counters.next_ge_id = next_id;
            c.write_counters(tx);
            let rec = GeRecord {
                id,
                name: name.clone(),
                kind,
                mode,
                groups: groups.clone(),
                overlay,
                protect: protect.clone(),
                created_at: now,
                revoked_at: None,
                enrollment: None,
            };
            c.audit(
                tx,
                now,
                "ge add",
                format!(
                    "ge add {name} id={id} kind={kind} mode={mode} groups={} overlay={overlay}{}",
                    join(&groups),
                    protect_note(&protect)
                ),
            );
            tx.out.push(Output::Directory(DirectoryEvent::Updated(
                c.directory_record(&rec),
            )));
            c.put_ge(tx, rec);
            Ok(())
        })?;
        info!(ge = %name, %kind, %mode, "GE added");
        let view = self.ge_view(&name)?;
        Ok((with_created(AdminResponse::ok(&view), &created), tx.out))
    }

    fn ge_set(
        &mut self,
        name: &str,
        ch: GeChange,
        now: u64,
    ) -> Result<(AdminResponse, Vec<Output>)> {
        let old = self.ge_record(name)?;
        if !old.is_active() {
            return Err(Error::admin(format!(
                "GE {name} is revoked; remove it and add it again"
            )));
        }
        let mut new = old.clone();
        if let Some(k) = &ch.kind {
            new.kind = k.parse().map_err(|e| Error::admin(format!("{e}")))?;
        }
        if let Some(m) = &ch.mode {
            new.mode = m.parse().map_err(|e| Error::admin(format!("{e}")))?;
        }
        if let Some(gs) = ch.groups {
            new.groups = self.check_groups(gs.into_iter())?;
        }
        if let Some(ps) = &ch.protect {
            new.protect = self.check_protect(name, new.kind, ps)?;
        } else if !new.kind.is_gateway() && new.protect.iter().any(|p| !p.is_host()) {
            // A GES keeps single addresses (its real ones); a subnet is a
            // gateway's.
            return Err(Error::admin(format!(
                "GE {name} protects {}: a ges protects single addresses only (add --no-protect)",
                new.protect
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        new.groups
            .extend(self.check_groups(ch.add_groups.into_iter())?);
        let created = self.new_groups(&new.groups)?;
        for g in &ch.remove_groups {
            if !new.groups.remove(g) && !old.groups.contains(g) {
                return Err(Error::admin(format!("GE {name} is not in group {g}")));
            }
        }
        if new.groups.len() > fpn_proto::ge::MAX_GROUPS {
            return Err(Error::admin(format!(
                "a GE can be in at most {} groups",
                fpn_proto::ge::MAX_GROUPS
            )));
        }
        if new == old {
            return Ok((AdminResponse::ok(&self.ge_view(name)?), Vec::new()));
        }
        self.check_gateway_change(&old, &new)?;
        let left: Vec<u32> = old.groups.difference(&new.groups).copied().collect();
        let joined: Vec<u32> = new.groups.difference(&old.groups).copied().collect();
        let ((), tx) = self.transact(|c, tx| {
            c.create_groups(tx, &created, name, now)?;
            let mut new = new.clone();
            if new.enrollment.is_some() {
                c.reissue_credential(tx, &mut new, now)?;
            }
            c.audit(
                tx,
                now,
                "ge set",
                format!(
                    "ge set {name} kind={} mode={} groups={}{}",
                    new.kind,
                    new.mode,
                    join(&new.groups),
                    protect_note(&new.protect)
                ),
            );
            tx.out.push(Output::Directory(DirectoryEvent::Updated(
                c.directory_record(&new),
            )));
            c.put_ge(tx, new);
            // The membership above is already updated: a leaver is no
            // member of the rotations below and never sees the new version.
            for g in &left {
                c.rotate_group(tx, *g, now, RotationCause::MemberLeft)?;
            }
            for g in &joined {
                if let Some(gk) = c.group_keys(*g) {
                    let f = frame(&ServerMsg::GroupKeys(gk))?;
                    tx.out.push(Output::Send {
                        to: vec![GeId(old.id)],
                        frame: f,
                    });
                }
            }
            c.notify_watchers(tx, old.id, name)?;
            Ok(())
        })?;
        info!(ge = %name, ?left, ?joined, "GE changed");
        let view = self.ge_view(name)?;
        let mut resp = with_created(AdminResponse::ok(&view), &created);
        if let Some(o) = resp.data.as_object_mut() {
            o.insert(
                "rotated".into(),
                serde_json::to_value(&tx.rotated).unwrap_or_default(),
            );
        }
        Ok((resp, tx.out))
    }

    /// The groups of `gs` that do not exist yet: `ge add` and `ge set`
    /// create them (named `gN`, with a fresh key), so a network is defined
    /// by its GEs alone (docs/MANAGEMENT.md). Refused when the default name
    /// is taken or the GMS would hold too many groups.
    fn new_groups(&self, gs: &BTreeSet<u32>) -> Result<Vec<u32>> {
        let missing: Vec<u32> = gs
            .iter()
            .copied()
            .filter(|g| !self.st.groups.contains_key(g))
            .collect();
        for g in &missing {
            if *g == 0 {
                return Err(Error::admin("group numbers start at 1"));
            }
            let name = format!("g{g}");
            if let Some(o) = self.st.groups.values().find(|o| o.name == name) {
                return Err(Error::admin(format!(
                    "no group {g}, and its default name {name} is taken by group {}: add it with `fpn-gms group add {g} --name NAME`",
                    o.num
                )));
            }
        }
        if self.st.groups.len() + missing.len() > MAX_GROUPS_TOTAL {
            return Err(Error::admin(format!("at most {MAX_GROUPS_TOTAL} groups")));
        }
        Ok(missing)
    }

    /// Creates the groups [`Self::new_groups`] found missing, for GE `ge`
    /// (in the same transaction as its change).
    fn create_groups(&mut self, tx: &mut Tx, groups: &[u32], ge: &str, now: u64) -> Result<()> {
        for &num in groups {
            let name = format!("g{num}");
            self.put_group(
                tx,
                GroupRecord {
                    num,
                    name: name.clone(),
                    created_at: now,
                },
            );
            self.create_group_key(tx, num, now)?;
            self.audit(
                tx,
                now,
                "group add",
                format!("group add {num} name={name} (with its first member {ge})"),
            );
            info!(group = num, ge = %ge, "group created with its first member");
        }
        Ok(())
    }

    /// Issues a new credential for `rec` (info changed) and revokes the old one.
    fn reissue_credential(&mut self, tx: &mut Tx, rec: &mut GeRecord, now: u64) -> Result<()> {
        let Some(mut en) = rec.enrollment.clone() else {
            return Ok(());
        };
        let node_key = decode_key(&en.node_key)?;
        let serial = self.next_serial(tx);
        // The new info takes effect at once, but the lifetime is not
        // extended: renewal is the session's business.
        let not_after = en.cert_not_after.max(now + 60);
        let cred = self.ca.issue_credential_with_prefixes(
            serial,
            rec.info(),
            rec.protect.clone(),
            node_key,
            now.saturating_sub(60),
            not_after,
        )?;
        let bytes = cred.encode()?;
        // The old info dies now: the current credential and any earlier
        // one (from a renewal) not yet expired.
        let mut old_serials = vec![en.credential_serial];
        old_serials.extend(
            en.earlier
                .iter()
                .filter(|e| e.item == RevokedItem::Credential && e.not_after >= now)
                .map(|e| e.serial),
        );
        for &old in &old_serials {
            self.put_revocation(
                tx,
                RevocationRecord {
                    serial: old,
                    item: RevokedItem::Credential,
                    ge_id: rec.id,
                    ge_name: rec.name.clone(),
                    reason: "superseded".into(),
                    at: now,
                    not_after,
                },
            );
        }
        en.earlier.retain(|e| e.item != RevokedItem::Credential);
        en.credential_not_after = Some(not_after);
        en.credential_serial = serial;
        en.credential = hex::encode(&bytes);
        rec.enrollment = Some(en);
        tx.out.push(Output::Send {
            to: vec![GeId(rec.id)],
            frame: frame(&ServerMsg::GeInfo(bytes))?,
        });
        tx.out.push(Output::Broadcast {
            frame: frame(&ServerMsg::Revoked {
                ge: GeId(rec.id),
                serials: old_serials,
            })?,
        });
        Ok(())
    }

    /// `ge remove` and `ge revoke`: the certificate and credential are
    /// revoked, live sessions closed, every group of the GE rotated, and
    /// every node told. `remove` also deletes the record.
    fn ge_retire(
        &mut self,
        name: &str,
        how: Retire,
        now: u64,
    ) -> Result<(AdminResponse, Vec<Output>)> {
        let rec = self.ge_record(name)?;
        if how == Retire::Revoke && !rec.is_active() {
            return Err(Error::admin(format!("GE {name} is already revoked")));
        }
        if how == Retire::Remove {
            // Removing a gateway would leave its hosts pointing nowhere;
            // revoking it (an emergency) is never refused: its hosts stay
            // defined but lose their DNS records and leave the nodes'
            // directory until the gateway is enrolled again.
            self.check_no_hosts(&rec)?;
        }
        let verb = match how {
            Retire::Remove => "removed",
            Retire::Revoke => "revoked",
        };
        let ((), tx) = self.transact(|c, tx| {
            let mut serials = Vec::new();
            if let Some(en) = rec.enrollment.as_ref().filter(|_| rec.is_active()) {
                // Every live pair: renewals leave the replaced ones valid
                // until they expire.
                serials = c.revoke_enrollment(tx, &rec, en, CertStatus::Revoked, verb, now)?;
            }
            let tokens: Vec<[u8; 16]> =
                c.st.tokens
                    .iter()
                    .filter(|(_, t)| t.ge_id == rec.id)
                    .map(|(id, _)| *id)
                    .collect();
            for id in tokens {
                c.delete_token(tx, id);
            }
            match how {
                Retire::Remove => c.delete_ge(tx, name),
                Retire::Revoke => {
                    let mut r = rec.clone();
                    r.revoked_at = Some(now);
                    c.put_ge(tx, r);
                }
            }
            c.audit(
                tx,
                now,
                if how == Retire::Remove {
                    "ge remove"
                } else {
                    "ge revoke"
                },
                format!(
                    "ge {} {name} id={}",
                    if how == Retire::Remove {
                        "remove"
                    } else {
                        "revoke"
                    },
                    rec.id
                ),
            );
            tx.out.push(Output::Close {
                ge: GeId(rec.id),
                code: close::REVOKED,
                reason: format!("GE {verb}"),
            });
            if rec.is_active() {
                for g in &rec.groups {
                    c.rotate_group(tx, *g, now, RotationCause::MemberLeft)?;
                }
            }
            if !serials.is_empty() {
                tx.out.push(Output::Broadcast {
                    frame: frame(&ServerMsg::Revoked {
                        ge: GeId(rec.id),
                        serials,
                    })?,
                });
            }
            c.notify_watchers(tx, rec.id, &rec.name)?;
            tx.out.push(Output::Directory(DirectoryEvent::Removed {
                name: rec.name.clone(),
            }));
            c.gateway_hosts_changed(rec.id, &mut tx.out, true);
            Ok(())
        })?;
        self.presence.remove(&rec.id);
        self.watchers.remove(&rec.id);
        info!(ge = %name, "GE {verb}");
        Ok(done(format!("GE {name} {verb}"), tx))
    }

    fn token_create(
        &mut self,
        name: &str,
        ttl: Option<u64>,
        now: u64,
    ) -> Result<(AdminResponse, Vec<Output>)> {
        let rec = self.ge_record(name)?;
        if !rec.is_active() {
            return Err(Error::admin(format!("GE {name} is revoked")));
        }
        let ttl = ttl.unwrap_or(self.cfg.token_ttl.0.as_secs());
        if ttl > MAX_TOKEN_TTL {
            return Err(Error::admin(format!(
                "token lifetime is at most {}d",
                MAX_TOKEN_TTL / 86_400
            )));
        }
        let addr = self.public_addr()?;
        let token = Token::generate(&addr, self.ca.fingerprint())?;
        let expires_at = now + ttl;
        let ((), _tx) = self.transact(|c, tx| {
            c.put_token(
                tx,
                token.id,
                TokenRecord {
                    ge_name: rec.name.clone(),
                    ge_id: rec.id,
                    secret_sha256: hex::encode(token.secret_hash()),
                    created_at: now,
                    expires_at,
                    used_at: None,
                },
            );
            c.audit(
                tx,
                now,
                "token create",
                format!(
                    "token create {name} id={} ttl={ttl}s",
                    hex::encode(token.id)
                ),
            );
            Ok(())
        })?;
        info!(ge = %name, ttl, "enrollment token created");
        let view = TokenView {
            token: token.encode(),
            ge: name.to_owned(),
            expires_at,
        };
        Ok((AdminResponse::ok(&view), Vec::new()))
    }

    fn rotate_cmd(&mut self, group: Option<u32>, now: u64) -> Result<(AdminResponse, Vec<Output>)> {
        let groups: Vec<u32> = match group {
            Some(g) if self.st.groups.contains_key(&g) => vec![g],
            Some(g) => return Err(Error::admin(format!("no group {g}"))),
            None => self.st.groups.keys().copied().collect(),
        };
        let ((), tx) = self.transact(|c, tx| {
            for g in groups {
                c.rotate_group(tx, g, now, RotationCause::Admin)?;
            }
            Ok(())
        })?;
        Ok((AdminResponse::ok(&tx.rotated), tx.out))
    }

    // ---- views ----

    pub(crate) fn status(&self) -> StatusView {
        StatusView {
            zone: self.cfg.zone.clone(),
            listen: self.listen,
            dns: self.dns.clone(),
            public_addr: self.public_addr().ok(),
            ca_fingerprint: hex::encode(self.ca.fingerprint()),
            overlay6: fpn_proto::overlay6::Overlay6::of_ca(&self.ca.public_key()).to_string(),
            ges: self.st.ges.len(),
            groups: self.st.groups.len(),
            online: self.online(),
            rotation_schedule: self.cfg.rotation_schedule.to_string(),
            next_rotation: self.next_rotation,
            grace_secs: self.cfg.grace.0.as_secs(),
            schema: SCHEMA_VERSION,
            relay: None,
            zone_serial: None,
            pushes: None,
        }
    }

    pub(crate) fn group_list(&self) -> Vec<GroupView> {
        self.st
            .groups
            .values()
            .map(|g| GroupView {
                num: g.num,
                name: g.name.clone(),
                members: self
                    .st
                    .ges
                    .values()
                    .filter(|r| r.is_active() && r.groups.contains(&g.num))
                    .map(|r| r.name.clone())
                    .collect(),
                key_version: self.st.keys.get(&g.num).map_or(0, |k| k.current.version.0),
            })
            .collect()
    }

    fn ge_list(&self) -> Vec<GeView> {
        self.st.ges.values().map(|r| self.view_of(r)).collect()
    }

    fn ge_view(&self, name: &str) -> Result<GeView> {
        self.st
            .ges
            .get(name)
            .map(|r| GeView {
                follows: Some(self.followed_by(GeId(r.id))),
                ..self.view_of(r)
            })
            .ok_or_else(|| no_ge(name))
    }

    /// A copy of the record of the GE named `name` (the caller changes it
    /// and writes it back in one store batch).
    fn ge_record(&self, name: &str) -> Result<GeRecord> {
        self.st.ges.get(name).cloned().ok_or_else(|| no_ge(name))
    }

    fn view_of(&self, r: &GeRecord) -> GeView {
        let p = self.presence.get(&r.id);
        let en = r.enrollment.as_ref();
        GeView {
            id: r.id,
            name: r.name.clone(),
            kind: r.kind.to_string(),
            mode: r.mode.to_string(),
            groups: r.groups.iter().copied().collect(),
            overlay: r.overlay,
            overlay6: fpn_proto::overlay6::Overlay6::of_ca(&self.ca.public_key())
                .address(r.overlay),
            protect: r.protect.iter().map(ToString::to_string).collect(),
            hosts: self
                .st
                .hosts
                .values()
                .filter(|h| h.via == r.id)
                .map(|h| h.name.clone())
                .collect(),
            fqdn: format!("{}.{}", r.name, self.cfg.zone),
            state: if !r.is_active() {
                "revoked"
            } else if en.is_some() {
                "enrolled"
            } else {
                "added"
            }
            .into(),
            online: p.is_some_and(|p| p.online),
            seen: p.and_then(|p| p.seen),
            reported: p.map(|p| p.reported.clone()).unwrap_or_default(),
            version: p.and_then(|p| p.version.clone()),
            follows: None,
            cert_serial: en.map(|e| e.cert_serial),
            cert_fingerprint: en.map(|e| e.cert_fingerprint.clone()),
            cert_not_after: en.map(|e| e.cert_not_after),
            credential_serial: en.map(|e| e.credential_serial),
            renewed_at: en.and_then(|e| e.renewed_at),
        }
    }

    fn keys_view(&self, now: u64) -> Vec<KeysView> {
        self.st
            .keys
            .iter()
            .map(|(g, ks)| KeysView {
                group: *g,
                name: self
                    .st
                    .groups
                    .get(g)
                    .map(|r| r.name.clone())
                    .unwrap_or_default(),
                versions: std::iter::once((&ks.current, "current"))
                    .chain(ks.previous.as_ref().map(|p| (p, "previous")))
                    .map(|(k, state)| KeyVersionView {
                        version: k.version.0,
                        state: state.into(),
                        age_secs: now.saturating_sub(k.created_at),
                        expires_in_secs: k.expires_at.map(|e| e.saturating_sub(now)),
                    })
                    .collect(),
            })
            .collect()
    }

    fn audit_view(&self, after: Option<u64>, limit: usize) -> Result<Vec<AuditView>> {
        self.store
            .audit_log(after, limit.min(10_000))?
            .into_iter()
            .map(|(seq, v)| {
                let e: AuditEntry = from_json("audit", &v)?;
                Ok(AuditView {
                    seq,
                    at: e.at,
                    action: e.action,
                    who: e.who,
                })
            })
            .collect()
    }

    // ---- helpers ----

    /// The `host:port` nodes dial: the configured public address, else the bound listen address.
    pub fn public_addr(&self) -> Result<String> {
        if let Some(a) = &self.cfg.public_addr {
            return Ok(a.clone());
        }
        match self.listen {
            Some(l) if !l.ip().is_unspecified() => Ok(l.to_string()),
            Some(l) => Err(Error::admin(format!(
                "the GMS listens on {l}, which nodes cannot dial: set public_addr in gms.toml"
            ))),
            None => Err(Error::admin("the GMS is not listening yet")),
        }
    }

    fn check_groups(&self, gs: impl Iterator<Item = u32>) -> Result<BTreeSet<u32>> {
        let mut out = BTreeSet::new();
        for g in gs {
            out.insert(g);
        }
        if out.len() > fpn_proto::ge::MAX_GROUPS {
            return Err(Error::admin(format!(
                "a GE can be in at most {} groups",
                fpn_proto::ge::MAX_GROUPS
            )));
        }
        Ok(out)
    }

    /// Parses and checks the prefixes `--protect` gives GE `name` of `kind`:
    /// only a gateway protects any; each is a canonical network prefix (no
    /// host bits, not /0); at most a credential's worth; none overlaps the
    /// overlay range (a gateway must not speak for GEs' overlay addresses)
    /// or a prefix another GE protects (an address has one owner, which
    /// both DPRP ends and the nodes' directory rely on).
    fn check_protect(&self, name: &str, kind: GeKind, given: &[String]) -> Result<Vec<Prefix>> {
        if given.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(given.len());
        for s in given {
            let p: Prefix = s
                .parse()
                .map_err(|e| Error::admin(format!("--protect {s:?}: {e}")))?;
            out.push(p);
        }
        // A GES may name its host's own real addresses (the real-address
        // plane); a subnet is what only a gateway stands in front of.
        if !kind.is_gateway() && out.iter().any(|p| !p.is_host()) {
            return Err(Error::admin(format!(
                "--protect with a subnet is for gateways (kind gen or gea); a {kind} names its own real addresses only, as ADDRESS/32"
            )));
        }
        out.sort_unstable();
        out.dedup();
        if out.len() > MAX_PREFIXES {
            return Err(Error::admin(format!(
                "a gateway can protect at most {MAX_PREFIXES} prefixes, {} given",
                out.len()
            )));
        }
        let range = self.cfg.overlay_range;
        let overlay: Prefix = range
            .to_string()
            .parse()
            .map_err(|e| Error::admin(format!("overlay range {range}: {e}")))?;
        for p in &out {
            if p.overlaps(&overlay) {
                return Err(Error::admin(format!(
                    "--protect {p} overlaps the overlay range {range}: GEs' overlay addresses are their own"
                )));
            }
            let other = self
                .st
                .ges
                .values()
                .filter(|r| r.name != name && r.is_active())
                .find_map(|r| r.protect.iter().find(|q| q.overlaps(p)).map(|q| (r, q)));
            if let Some((r, q)) = other {
                return Err(Error::admin(format!(
                    "--protect {p} overlaps {q}, which GE {} protects: an address has one owner",
                    r.name
                )));
            }
        }
        Ok(out)
    }

    /// The next free overlay address, continuing after the last one given,
    /// so addresses of removed GEs come back only after the range wrapped.
    fn allocate_overlay(&mut self) -> Result<Ipv4Addr> {
        let range = self.cfg.overlay_range;
        let hosts = range.hosts();
        let start = self.st.counters.next_overlay.max(1);
        for i in 0..hosts {
            let idx = (start - 1 + i) % hosts + 1;
            if let Some(a) = range.host(idx).filter(|a| !self.st.overlays.contains(a)) {
                self.st.counters.next_overlay = idx % hosts + 1;
                return Ok(a);
            }
        }
        Err(Error::admin(format!("the overlay range {range} is full")))
    }
}

/// Requested changes of `ge set`.
struct GeChange {
    kind: Option<String>,
    mode: Option<String>,
    groups: Option<Vec<u32>>,
    add_groups: Vec<u32>,
    remove_groups: Vec<u32>,
    protect: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retire {
    Remove,
    Revoke,
}

pub(super) fn done(what: String, tx: Tx) -> (AdminResponse, Vec<Output>) {
    (
        AdminResponse::ok(&DoneView {
            done: what,
            rotated: tx.rotated,
        }),
        tx.out,
    )
}

/// ` protect=a,b` for the audit log, or nothing for a GE without prefixes.
fn protect_note(protect: &[Prefix]) -> String {
    if protect.is_empty() {
        return String::new();
    }
    let list: Vec<String> = protect.iter().map(ToString::to_string).collect();
    format!(" protect={}", list.join(","))
}

fn join(groups: &BTreeSet<u32>) -> String {
    groups
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn check_label(what: &str, s: &str, max: usize) -> Result<()> {
    if s.is_empty() || s.len() > max || s.chars().any(|c| c.is_control() || c == '\n') {
        return Err(Error::admin(format!(
            "{what} must be 1 to {max} printable characters"
        )));
    }
    Ok(())
}

pub(super) fn decode_key(hex_key: &str) -> Result<[u8; 32]> {
    hex::decode(hex_key)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| Error::Corrupt {
            tree: "ges",
            reason: "node key is not 32 hex bytes".into(),
        })
}

pub(super) fn decode_fp(hex_fp: &str) -> Result<[u8; 32]> {
    hex::decode(hex_fp)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| Error::Corrupt {
            tree: "ges",
            reason: "certificate fingerprint is not 32 hex bytes".into(),
        })
}

/// The admin error for a GE name nobody has.
fn no_ge(name: &str) -> Error {
    Error::admin(format!(
        "no GE named {name} (add it with `fpn-gms ge add {name} --group N`; `fpn-gms ge list` shows the GEs)"
    ))
}

/// A GE's kind when `ge add` names none: a gateway (GEN) when it protects a
/// subnet (only gateways may), else a GES (single addresses are a GES's
/// own real addresses; a GEA in front of one server says `--kind gea`).
fn default_kind(protect: &[String]) -> GeKind {
    let subnet = protect.iter().any(|p| {
        p.parse::<fpn_proto::dprp::Prefix>()
            .is_ok_and(|p| !p.is_host())
    });
    if subnet { GeKind::Gen } else { GeKind::Ges }
}

/// A GE's mode when `ge add` names none: a gateway is closed (the hosts
/// behind it cannot refuse anything themselves, so only GEs that share a
/// group with it reach them), a GES open (as in the papers).
fn default_mode(kind: GeKind) -> Mode {
    if kind.is_gateway() {
        Mode::Closed
    } else {
        Mode::Open
    }
}

/// `created_groups` in a response's data when a change created groups.
fn with_created(mut resp: AdminResponse, created: &[u32]) -> AdminResponse {
    if !created.is_empty()
        && let Some(o) = resp.data.as_object_mut()
    {
        o.insert("created_groups".into(), serde_json::json!(created));
    }
    resp
}
