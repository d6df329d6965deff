//! Nodes: enrollment, session admission, directory queries and reports.

use std::net::SocketAddr;

use fpn_proto::ge::GeId;
use fpn_proto::keys::verify_signature;
use tracing::{debug, info};

use super::admin::{decode_fp, decode_key};
use super::{Core, DirectoryEvent, DirectoryRecord, Output, Presence, Tx, frame};
use crate::ca::{NodeCertRequest, fingerprint};
use crate::model::{CertRecord, CertStatus, EarlierIssue, Enrollment, GeRecord, RevocationRecord};
use crate::token::secret_matches;
use crate::wire::{
    ClientMsg, DirectoryEntry, EnrollRequest, Enrolled, RefusalCode, Renewed, ServerMsg,
    SessionInit, close, enroll_transcript,
};
use crate::{Error, Result};

/// Ordered pairs whose last connect-now push is remembered (rate limit).
const MAX_PUNCH_PAIRS: usize = 65_536;

/// Most revoked serials sent at session start (newest first are kept).
const MAX_INIT_REVOKED: usize = crate::wire::MAX_REVOKED;

/// Why a node was turned away, and the code it is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Machine-readable reason.
    pub code: RefusalCode,
    /// Text for logs and the operator.
    pub reason: String,
}

impl Refusal {
    fn new(code: RefusalCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// The QUIC close code for a refused session.
    pub fn close_code(&self) -> u32 {
        match self.code {
            RefusalCode::Internal => close::NORMAL,
            RefusalCode::Protocol => close::PROTOCOL,
            _ => close::REFUSED,
        }
    }

    /// As a message for the node.
    pub fn to_msg(&self) -> ServerMsg {
        ServerMsg::Refused {
            code: self.code,
            reason: self.reason.clone(),
        }
    }
}

/// What [`Core::issue_pair`] issued.
struct Issued {
    cert: Vec<u8>,
    cert_serial: u64,
    fp: [u8; 32],
    credential: Vec<u8>,
    cred_serial: u64,
    not_after: u64,
}

/// How far back `not_before` goes, so a node whose clock lags still takes
/// a fresh certificate: 5 minutes, but at most a quarter of the lifetime
/// (a short-lived credential must not look issued long before it was, or a
/// peer's "older than my last GMS sync" floor would refuse a fresh one).
fn skew_allowance(lifetime: u64) -> u64 {
    300.min(lifetime / 4)
}

impl Core {
    /// Enrolls a node: checks the token (known, secret, unused, unexpired),
    /// the node's proof of key possession and the GE, then issues the
    /// certificate and credential and burns the token, all in one
    /// transaction. Returns `Enrolled` or `Refused`.
    pub fn handle_enroll(&mut self, req: &EnrollRequest, now: u64) -> (ServerMsg, Vec<Output>) {
        match self.enroll(req, now) {
            Ok((m, out)) => (m, out),
            Err(r) => (r.to_msg(), Vec::new()),
        }
    }

    fn enroll(
        &mut self,
        req: &EnrollRequest,
        now: u64,
    ) -> std::result::Result<(ServerMsg, Vec<Output>), Refusal> {
        use RefusalCode as C;
        // Unknown id and wrong secret get the same answer: a prober learns nothing.
        let invalid = || Refusal::new(C::InvalidToken, "invalid enrollment token");
        let tok = self
            .st
            .tokens
            .get(&req.token_id)
            .cloned()
            .ok_or_else(invalid)?;
        if !secret_matches(&req.secret, &tok.secret_sha256) {
            return Err(invalid());
        }
        if tok.used_at.is_some() {
            return Err(Refusal::new(C::TokenUsed, "enrollment token already used"));
        }
        if now >= tok.expires_at {
            return Err(Refusal::new(C::TokenExpired, "enrollment token expired"));
        }
        verify_signature(
            &req.node_key,
            &enroll_transcript(&req.token_id, &req.node_key),
            &req.proof,
            "enrollment proof",
        )
        .map_err(|_| Refusal::new(C::BadProof, "the proof of key possession does not verify"))?;
        let rec = self
            .st
            .ges
            .get(&tok.ge_name)
            .filter(|g| g.id == tok.ge_id)
            .cloned()
            .ok_or_else(|| Refusal::new(C::UnknownGe, "the GE of this token no longer exists"))?;
        if !rec.is_active() {
            return Err(Refusal::new(C::Revoked, "the GE of this token is revoked"));
        }
        let r = self.transact(|c, tx| c.issue_identity(tx, rec, req, now));
        match r {
            Ok(((enrolled, name), tx)) => {
                info!(ge = %name, "GE enrolled");
                Ok((ServerMsg::Enrolled(enrolled), tx.out))
            }
            Err(e) => {
                tracing::error!(error = %e, "enrollment failed");
                Err(Refusal::new(
                    C::Internal,
                    "the GMS could not complete the enrollment; try again",
                ))
            }
        }
    }

    /// Issues a certificate and a credential for `rec`'s `node_key`, both
    /// valid from `now` for the configured lifetime, and records the
    /// certificate for session admission.
    fn issue_pair(
        &mut self,
        tx: &mut Tx,
        rec: &GeRecord,
        node_key: &[u8; 32],
        now: u64,
    ) -> Result<Issued> {
        let lifetime = self.cfg.credential_lifetime_secs();
        let not_after = now + lifetime;
        let cert_serial = self.next_serial(tx);
        let cred_serial = self.next_serial(tx);
        let cert = self.ca.issue_node_cert(&NodeCertRequest {
            node_key,
            ge_id: rec.id,
            name: &rec.name,
            zone: &self.cfg.zone,
            serial: cert_serial,
            not_before: now.saturating_sub(skew_allowance(lifetime)),
            not_after,
        })?;
        let fp = fingerprint(&cert);
        let cred = self.ca.issue_credential_with_prefixes(
            cred_serial,
            rec.info(),
            rec.protect.clone(),
            *node_key,
            now.saturating_sub(skew_allowance(lifetime)),
            not_after,
        )?;
        let credential = cred.encode()?;
        self.put_cert(
            tx,
            fp,
            CertRecord {
                ge_id: rec.id,
                ge_name: rec.name.clone(),
                serial: cert_serial,
                issued_at: now,
                not_after,
                status: CertStatus::Active,
            },
        );
        Ok(Issued {
            cert,
            cert_serial,
            fp,
            credential,
            cred_serial,
            not_after,
        })
    }

    /// Marks every live certificate of `en` with `status` and records every
    /// live serial as revoked (`reason`); returns the serials.
    pub(super) fn revoke_enrollment(
        &mut self,
        tx: &mut Tx,
        rec: &GeRecord,
        en: &Enrollment,
        status: CertStatus,
        reason: &str,
        now: u64,
    ) -> Result<Vec<u64>> {
        let mut serials = Vec::new();
        for issue in en.live_issues(now) {
            if let Some(fp) = &issue.fingerprint {
                let fp = decode_fp(fp)?;
                if let Some(mut c) = self.st.certs.get(&fp).cloned() {
                    c.status = status;
                    self.put_cert(tx, fp, c);
                }
            }
            self.put_revocation(
                tx,
                RevocationRecord {
                    serial: issue.serial,
                    item: issue.item,
                    ge_id: rec.id,
                    ge_name: rec.name.clone(),
                    reason: reason.into(),
                    at: now,
                    not_after: issue.not_after,
                },
            );
            serials.push(issue.serial);
        }
        Ok(serials)
    }

    /// Issues certificate and credential for `rec`, supersedes an earlier
    /// enrollment, and marks the token used.
    fn issue_identity(
        &mut self,
        tx: &mut Tx,
        mut rec: GeRecord,
        req: &EnrollRequest,
        now: u64,
    ) -> Result<(Enrolled, String)> {
        let new = self.issue_pair(tx, &rec, &req.node_key, now)?;
        if let Some(old) = rec.enrollment.take() {
            // Re-enrollment (lost or replaced key): the old identity dies,
            // with every renewal of it that has not expired yet.
            let serials =
                self.revoke_enrollment(tx, &rec, &old, CertStatus::Superseded, "re-enrolled", now)?;
            tx.out.push(Output::Close {
                ge: GeId(rec.id),
                code: close::SUPERSEDED,
                reason: "the GE enrolled again".into(),
            });
            tx.out.push(Output::Broadcast {
                frame: frame(&ServerMsg::Revoked {
                    ge: GeId(rec.id),
                    serials,
                })?,
            });
        }
        rec.enrollment = Some(Enrollment {
            node_key: hex::encode(req.node_key),
            cert_serial: new.cert_serial,
            cert_fingerprint: hex::encode(new.fp),
            cert_not_after: new.not_after,
            credential_serial: new.cred_serial,
            credential: hex::encode(&new.credential),
            enrolled_at: now,
            credential_not_after: None,
            renewed_at: None,
            earlier: Vec::new(),
        });
        let name = rec.name.clone();
        self.put_ge(tx, rec);
        if let Some(mut t) = self.st.tokens.get(&req.token_id).cloned() {
            t.used_at = Some(now);
            self.put_token(tx, req.token_id, t);
        }
        self.audit(
            tx,
            now,
            "enroll",
            format!(
                "enroll {name} cert={} credential={}",
                new.cert_serial, new.cred_serial
            ),
        );
        Ok((
            Enrolled {
                zone: self.cfg.zone.clone(),
                ca_public: self.ca.public_key(),
                ca_cert: self.ca.cert_der().to_vec(),
                cert: new.cert,
                credential: new.credential,
            },
            name,
        ))
    }

    /// Renews the certificate and credential of `ge`, asked over its
    /// authenticated session: same node key, same GE info, a fresh lifetime.
    /// A revoked, removed or unenrolled GE gets a typed refusal. The
    /// replaced pair stays valid until it expires (the node may crash before
    /// it saves the new one); revoking the GE revokes both.
    pub fn handle_renew(&mut self, ge: GeId, now: u64) -> (ServerMsg, Vec<Output>) {
        match self.renew(ge, now) {
            Ok((m, out)) => (m, out),
            Err(r) => {
                info!(%ge, reason = %r.reason, "renewal refused");
                (r.to_msg(), Vec::new())
            }
        }
    }

    fn renew(
        &mut self,
        ge: GeId,
        now: u64,
    ) -> std::result::Result<(ServerMsg, Vec<Output>), Refusal> {
        use RefusalCode as C;
        let rec = self
            .ge_by_id(ge.0)
            .cloned()
            .ok_or_else(|| Refusal::new(C::UnknownGe, "the GE no longer exists"))?;
        if !rec.is_active() {
            return Err(Refusal::new(C::Revoked, "GE revoked: no renewal"));
        }
        if rec.enrollment.is_none() {
            return Err(Refusal::new(C::UnknownGe, "GE not enrolled"));
        }
        let r = self.transact(|c, tx| {
            let mut rec = rec;
            let Some(mut en) = rec.enrollment.take() else {
                return Err(Error::Protocol("GE not enrolled".into()));
            };
            let node_key = decode_key(&en.node_key)?;
            let new = c.issue_pair(tx, &rec, &node_key, now)?;
            let mut earlier: Vec<EarlierIssue> = en
                .live_issues(now)
                .into_iter()
                .filter(|e| e.not_after >= now)
                .collect();
            earlier.sort_by_key(|e| e.serial);
            en.earlier = earlier;
            en.cert_serial = new.cert_serial;
            en.cert_fingerprint = hex::encode(new.fp);
            en.cert_not_after = new.not_after;
            en.credential_serial = new.cred_serial;
            en.credential = hex::encode(&new.credential);
            en.credential_not_after = None;
            en.renewed_at = Some(now);
            rec.enrollment = Some(en);
            let name = rec.name.clone();
            c.put_ge(tx, rec);
            c.audit(
                tx,
                now,
                "renew",
                format!(
                    "renew {name} cert={} credential={}",
                    new.cert_serial, new.cred_serial
                ),
            );
            Ok((new, name))
        });
        match r {
            Ok(((new, name), tx)) => {
                debug!(ge = %name, not_after = new.not_after, "credential renewed");
                Ok((
                    ServerMsg::Renewed(Renewed {
                        server_time: now,
                        cert: new.cert,
                        credential: new.credential,
                    }),
                    tx.out,
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, "renewal failed");
                Err(Refusal::new(
                    C::Internal,
                    "the GMS could not renew the credential; try again",
                ))
            }
        }
    }

    /// Admits a client certificate (by fingerprint) to a session. Called
    /// right after every handshake: revocation takes effect on the next connect.
    pub fn authorize(&self, fp: &[u8; 32], now: u64) -> std::result::Result<GeId, Refusal> {
        use RefusalCode as C;
        let cert = self
            .st
            .certs
            .get(fp)
            .ok_or_else(|| Refusal::new(C::UnknownGe, "unknown certificate"))?;
        match cert.status {
            CertStatus::Active => {}
            CertStatus::Superseded => {
                return Err(Refusal::new(
                    C::Revoked,
                    "certificate superseded by a newer enrollment",
                ));
            }
            CertStatus::Revoked => return Err(Refusal::new(C::Revoked, "certificate revoked")),
        }
        // An unrevoked node back after its certificate expired may still
        // come in to renew, for a bounded time (docs/DESIGN-NOTES.md).
        if now
            > cert
                .not_after
                .saturating_add(self.cfg.expired_reconnect_grace_secs())
        {
            return Err(Refusal::new(
                C::Revoked,
                "certificate expired beyond the reconnect grace; enroll again",
            ));
        }
        let rec = self
            .ge_by_id(cert.ge_id)
            .ok_or_else(|| Refusal::new(C::UnknownGe, "the GE no longer exists"))?;
        if !rec.is_active() {
            return Err(Refusal::new(C::Revoked, "GE revoked"));
        }
        Ok(GeId(rec.id))
    }

    /// Starts a session of `ge` seen at `seen`: returns the session id and
    /// the `SessionInit` (credential, keys of every group, revocations).
    pub fn open_session(
        &mut self,
        ge: GeId,
        seen: SocketAddr,
        reported: Vec<SocketAddr>,
        now: u64,
    ) -> std::result::Result<(u64, ServerMsg, Vec<Output>), Refusal> {
        let rec = self
            .ge_by_id(ge.0)
            .filter(|r| r.is_active())
            .cloned()
            .ok_or_else(|| Refusal::new(RefusalCode::Revoked, "GE revoked or removed"))?;
        let credential = rec
            .enrollment
            .as_ref()
            .and_then(|e| hex::decode(&e.credential).ok())
            .ok_or_else(|| Refusal::new(RefusalCode::UnknownGe, "GE not enrolled"))?;
        let groups = rec
            .groups
            .iter()
            .filter_map(|g| self.group_keys(*g))
            .collect();
        let revoked = self
            .st
            .revocations
            .keys()
            .rev()
            .take(MAX_INIT_REVOKED)
            .copied()
            .collect();
        let session = self.next_session;
        self.next_session += 1;
        let before = self.presence.get(&ge.0).cloned();
        let p = Presence {
            session,
            online: true,
            seen: Some(seen),
            reported,
            version: None,
            hosts: false,
        };
        let changed =
            before.is_none_or(|b| !b.online || b.seen != p.seen || b.reported != p.reported);
        self.presence.insert(ge.0, p);
        let mut out = Vec::new();
        if changed {
            self.presence_changed(&rec, &mut out);
        }
        let init = ServerMsg::SessionInit(SessionInit {
            server_time: now,
            credential,
            groups,
            revoked,
        });
        Ok((session, init, out))
    }

    /// Records the software version session `session` of `ge` reported
    /// in its hello (shown by `ge list`/`ge show` and the web admin; kept
    /// after the session ends, as the version last seen).
    pub fn note_version(&mut self, ge: GeId, session: u64, version: Option<String>) {
        if let Some(p) = self.presence.get_mut(&ge.0)
            && p.session == session
        {
            p.version = version;
        }
    }

    /// Ends session `session` of `ge` (a newer session of the same GE is left alone).
    pub fn close_session(&mut self, ge: GeId, session: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(p) = self.presence.get_mut(&ge.0) else {
            return out;
        };
        if p.session != session {
            return out;
        }
        p.online = false;
        for w in self.watchers.values_mut() {
            w.remove(&ge.0);
        }
        if let Some(rec) = self.ge_by_id(ge.0).cloned() {
            self.presence_changed(&rec, &mut out);
        }
        out
    }

    /// The session `session` of `ge` now comes from `seen` (its QUIC
    /// connection migrated: a laptop changed networks, or its NAT gave the
    /// binding a new port). Peers, the DNS and `Observe` must follow it, or
    /// they keep handing out an address that no longer reaches the node.
    /// A stale session (not the GE's current one) changes nothing.
    pub fn session_moved(&mut self, ge: GeId, session: u64, seen: SocketAddr) -> Vec<Output> {
        let mut out = Vec::new();
        match self.presence.get_mut(&ge.0) {
            Some(p) if p.session == session && p.online && p.seen != Some(seen) => {
                p.seen = Some(seen);
            }
            _ => return out,
        }
        if let Some(rec) = self.ge_by_id(ge.0).cloned() {
            self.presence_changed(&rec, &mut out);
        }
        out
    }

    /// Handles a request inside a session.
    pub fn handle_request(
        &mut self,
        ge: GeId,
        msg: ClientMsg,
        now: u64,
    ) -> Result<(ServerMsg, Vec<Output>)> {
        match msg {
            ClientMsg::ReportAddresses(addrs) => {
                let mut out = Vec::new();
                let changed = match self.presence.get_mut(&ge.0) {
                    Some(p) if p.reported != addrs => {
                        p.reported = addrs;
                        true
                    }
                    _ => false,
                };
                if let Some(rec) = self.ge_by_id(ge.0).filter(|_| changed).cloned() {
                    self.presence_changed(&rec, &mut out);
                }
                Ok((ServerMsg::Ack, out))
            }
            ClientMsg::DirectoryQuery(name) => {
                let entry = self.st.ges.get(&name).filter(|r| r.is_active()).cloned();
                let answer = entry.as_ref().map(|r| self.directory_entry(r));
                if let Some(r) = entry {
                    self.watchers.entry(r.id).or_default().insert(ge.0);
                }
                Ok((ServerMsg::DirectoryAnswer(answer), Vec::new()))
            }
            ClientMsg::DirectoryList { after } => {
                let page = self.listing_page(&after);
                // A node before the directory on demand (`fpn-gms/2` and
                // older) hears of every listed GE's changes from now on.
                if let ServerMsg::DirectoryListing { entries, .. } = &page {
                    for e in entries.iter().filter(|e| e.ge != ge) {
                        self.watchers.entry(e.ge.0).or_default().insert(ge.0);
                    }
                }
                Ok((page, Vec::new()))
            }
            ClientMsg::DirectoryPage { after } => Ok((self.listing_page(&after), Vec::new())),
            ClientMsg::DirectoryDigest => Ok((
                ServerMsg::DirectoryDigest(self.listing_digest()),
                Vec::new(),
            )),
            ClientMsg::DirectoryForget(ges) => {
                for g in ges {
                    if let Some(w) = self.watchers.get_mut(&g.0) {
                        w.remove(&ge.0);
                        if w.is_empty() {
                            self.watchers.remove(&g.0);
                        }
                    }
                }
                Ok((ServerMsg::Ack, Vec::new()))
            }
            ClientMsg::Renew => Ok(self.handle_renew(ge, now)),
            ClientMsg::Observe => {
                // The address is the one the session was opened from: the
                // node's carrier socket as its NAT maps it towards us.
                let seen = self.presence.get(&ge.0).and_then(|p| p.seen);
                match seen {
                    Some(a) => Ok((ServerMsg::Observed(a), Vec::new())),
                    None => Err(Error::Protocol("observe outside a session".into())),
                }
            }
            ClientMsg::ConnectNow(target) => Ok(self.connect_now(ge, target, now)),
            ClientMsg::Enroll(_) | ClientMsg::Hello { .. } => Err(Error::Protocol(
                "enrollment or hello inside an established session".into(),
            )),
        }
    }

    /// Hole punching: `asker` has no connection with `target` and dials its
    /// candidates; `target` is told to dial the asker's candidates at the
    /// same time, so both NATs see an outgoing packet first. Rate-limited
    /// per ordered pair: an honest node asks once per connection attempt
    /// (seconds apart), and a compromised one cannot make the GMS flood a
    /// peer with pushes (nor make that peer flood the asker's addresses).
    /// The candidates sent are the GMS's own record of the asker (its
    /// session address and its report), never addresses the request names.
    fn connect_now(&mut self, asker: GeId, target: GeId, now: u64) -> (ServerMsg, Vec<Output>) {
        use crate::wire::{CONNECT_NOW_INTERVAL_SECS, Candidates, ConnectNowOutcome as O};
        let answer = |o| (ServerMsg::ConnectNowSent(o), Vec::new());
        if asker == target || !self.ge_by_id(target.0).is_some_and(GeRecord::is_active) {
            return answer(O::Unknown);
        }
        if !self.presence.get(&target.0).is_some_and(|p| p.online) {
            return answer(O::Offline);
        }
        let key = (asker.0, target.0);
        if self
            .punches
            .get(&key)
            .is_some_and(|&last| now < last.saturating_add(CONNECT_NOW_INTERVAL_SECS))
        {
            return answer(O::RateLimited);
        }
        if self.punches.len() >= MAX_PUNCH_PAIRS {
            // Old entries no longer limit anything; a full table of fresh
            // ones means a flood, and forgetting them only lets one more
            // push per pair through.
            self.punches
                .retain(|_, last| now < last.saturating_add(CONNECT_NOW_INTERVAL_SECS));
            if self.punches.len() >= MAX_PUNCH_PAIRS {
                self.punches.clear();
            }
        }
        self.punches.insert(key, now);
        let p = self.presence.get(&asker.0);
        let msg = ServerMsg::ConnectNow(Candidates {
            ge: asker,
            reflexive: p.and_then(|p| p.seen),
            local: p.map(|p| p.reported.clone()).unwrap_or_default(),
        });
        match frame(&msg) {
            Ok(f) => {
                debug!(%asker, %target, "connect-now pushed");
                (
                    ServerMsg::ConnectNowSent(O::Sent),
                    vec![Output::Send {
                        to: vec![target],
                        frame: f,
                    }],
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "connect-now push not encoded");
                answer(O::Unknown)
            }
        }
    }

    /// The page of the listing after the name `after` (empty: the first).
    fn listing_page(&self, after: &str) -> ServerMsg {
        use std::ops::Bound;
        let mut entries = Vec::new();
        let mut more = false;
        let range = self
            .st
            .ges
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded));
        for (name, rec) in range.filter(|(_, r)| r.is_active()) {
            if entries.len() == crate::wire::MAX_LISTING {
                more = true;
                break;
            }
            let p = self.presence.get(&rec.id);
            entries.push(crate::wire::ListedGe {
                name: name.clone(),
                ge: GeId(rec.id),
                overlay: rec.overlay,
                online: p.is_some_and(|p| p.online),
                seen: p.and_then(|p| p.seen),
                reported: p.map(|p| p.reported.clone()).unwrap_or_default(),
            });
        }
        ServerMsg::DirectoryListing { entries, more }
    }

    /// The digest of what a listing shows of the GEs themselves (name, id,
    /// overlay address of every active GE, in name order), not of their
    /// presence. Derived from the records alone, so a GMS restart keeps
    /// it and its nodes need not list again (design note 66). Cached
    /// until a GE record is written.
    pub fn listing_digest(&mut self) -> [u8; 16] {
        if let Some(d) = self.st.listing_digest {
            return d;
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"fpn listing digest v1");
        for (name, rec) in self.st.ges.iter().filter(|(_, r)| r.is_active()) {
            // Length-prefixed: no two listings hash the same bytes.
            ctx.update(&[name.len() as u8]);
            ctx.update(name.as_bytes());
            ctx.update(&rec.id.to_be_bytes());
            ctx.update(&rec.overlay.octets());
        }
        let mut d = [0u8; 16];
        d.copy_from_slice(&ctx.finish().as_ref()[..16]);
        self.st.listing_digest = Some(d);
        d
    }

    /// How many GEs `ge` follows (hears the changes of), for `ge show`.
    /// Scans every follower set: not for listings of every GE.
    pub fn followed_by(&self, ge: GeId) -> usize {
        self.watchers.values().filter(|w| w.contains(&ge.0)).count()
    }

    /// A GE's entry as the directory answers it.
    fn directory_entry(&self, rec: &GeRecord) -> DirectoryEntry {
        let p = self.presence.get(&rec.id);
        DirectoryEntry {
            credential: rec
                .enrollment
                .as_ref()
                .and_then(|e| hex::decode(&e.credential).ok())
                .unwrap_or_default(),
            online: p.is_some_and(|p| p.online),
            seen: p.and_then(|p| p.seen),
            reported: p.map(|p| p.reported.clone()).unwrap_or_default(),
        }
    }

    /// A GE as the DDNS hook sees it.
    pub(crate) fn directory_record(&self, rec: &GeRecord) -> DirectoryRecord {
        let p = self.presence.get(&rec.id);
        DirectoryRecord {
            name: rec.name.clone(),
            id: GeId(rec.id),
            kind: rec.kind,
            overlay: rec.overlay,
            seen: p.and_then(|p| p.seen),
            reported: p.map(|p| p.reported.clone()).unwrap_or_default(),
        }
    }

    fn presence_changed(&self, rec: &GeRecord, out: &mut Vec<Output>) {
        out.push(Output::Directory(DirectoryEvent::Updated(
            self.directory_record(rec),
        )));
        // Hosts behind a gateway are published at its address: they follow it.
        self.gateway_hosts_changed(rec.id, out, false);
        match self.watcher_output(rec.id, &rec.name) {
            Ok(Some(o)) => out.push(o),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "directory push"),
        }
    }

    /// Queues the current entry of GE `id` (named `name`) to the GEs watching it.
    pub(crate) fn notify_watchers(&mut self, tx: &mut Tx, id: u32, name: &str) -> Result<()> {
        if let Some(o) = self.watcher_output(id, name)? {
            tx.out.push(o);
        }
        Ok(())
    }

    fn watcher_output(&self, id: u32, name: &str) -> Result<Option<Output>> {
        let Some(w) = self.watchers.get(&id).filter(|w| !w.is_empty()) else {
            return Ok(None);
        };
        let entry = self
            .ge_by_id(id)
            .filter(|r| r.is_active())
            .map(|r| self.directory_entry(r));
        let msg = ServerMsg::DirectoryChanged {
            name: name.to_owned(),
            entry,
        };
        Ok(Some(Output::Send {
            to: w.iter().map(|g| GeId(*g)).collect(),
            frame: frame(&msg)?,
        }))
    }

    /// The node key recorded at enrollment (for tests and the directory).
    pub fn node_key_of(&self, name: &str) -> Option<[u8; 32]> {
        let en = self.st.ges.get(name)?.enrollment.as_ref()?;
        decode_key(&en.node_key).ok()
    }
}
