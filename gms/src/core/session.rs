//! Nodes: enrollment, session admission, directory queries and reports.

use std::net::SocketAddr;

use fpn_proto::ge::GeId;
use fpn_proto::keys::verify_signature;
use tracing::info;

use super::admin::{decode_fp, decode_key};
use super::{Core, DirectoryEvent, DirectoryRecord, Output, Presence, Tx, frame};
use crate::ca::{NodeCertRequest, fingerprint};
use crate::model::{CertRecord, CertStatus, Enrollment, GeRecord, RevocationRecord, RevokedItem};
use crate::token::secret_matches;
use crate::wire::{
    ClientMsg, DirectoryEntry, EnrollRequest, Enrolled, RefusalCode, ServerMsg, SessionInit, close,
    enroll_transcript,
};
use crate::{Error, Result};

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

    /// Issues certificate and credential for `rec`, supersedes an earlier
    /// enrollment, and marks the token used.
    fn issue_identity(
        &mut self,
        tx: &mut Tx,
        mut rec: GeRecord,
        req: &EnrollRequest,
        now: u64,
    ) -> Result<(Enrolled, String)> {
        let validity = u64::from(self.cfg.cert_validity_days) * 86_400;
        let not_after = now + validity;
        let cert_serial = self.next_serial(tx);
        let cred_serial = self.next_serial(tx);
        let cert = self.ca.issue_node_cert(&NodeCertRequest {
            node_key: &req.node_key,
            ge_id: rec.id,
            name: &rec.name,
            zone: &self.cfg.zone,
            serial: cert_serial,
            not_before: now.saturating_sub(86_400),
            not_after,
        })?;
        let fp = fingerprint(&cert);
        let cred = self.ca.issue_credential_with_prefixes(
            cred_serial,
            rec.info(),
            rec.protect.clone(),
            req.node_key,
            now.saturating_sub(300),
            not_after,
        )?;
        let cred_bytes = cred.encode()?;
        if let Some(old) = rec.enrollment.take() {
            // Re-enrollment (lost or replaced key): the old identity dies.
            let old_fp = decode_fp(&old.cert_fingerprint)?;
            if let Some(mut c) = self.st.certs.get(&old_fp).cloned() {
                c.status = CertStatus::Superseded;
                self.put_cert(tx, old_fp, c);
            }
            let mut serials = Vec::new();
            for (serial, item) in [
                (old.cert_serial, RevokedItem::Certificate),
                (old.credential_serial, RevokedItem::Credential),
            ] {
                self.put_revocation(
                    tx,
                    RevocationRecord {
                        serial,
                        item,
                        ge_id: rec.id,
                        ge_name: rec.name.clone(),
                        reason: "re-enrolled".into(),
                        at: now,
                        not_after: old.cert_not_after,
                    },
                );
                serials.push(serial);
            }
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
        rec.enrollment = Some(Enrollment {
            node_key: hex::encode(req.node_key),
            cert_serial,
            cert_fingerprint: hex::encode(fp),
            cert_not_after: not_after,
            credential_serial: cred_serial,
            credential: hex::encode(&cred_bytes),
            enrolled_at: now,
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
            format!("enroll {name} cert={cert_serial} credential={cred_serial}"),
        );
        Ok((
            Enrolled {
                zone: self.cfg.zone.clone(),
                ca_public: self.ca.public_key(),
                ca_cert: self.ca.cert_der().to_vec(),
                cert,
                credential: cred_bytes,
            },
            name,
        ))
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
        if now > cert.not_after {
            return Err(Refusal::new(
                C::Revoked,
                "certificate expired; enroll again",
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

    /// Handles a request inside a session.
    pub fn handle_request(&mut self, ge: GeId, msg: ClientMsg) -> Result<(ServerMsg, Vec<Output>)> {
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
                use std::ops::Bound;
                let mut entries = Vec::new();
                let mut watch = Vec::new();
                let mut more = false;
                let range = self
                    .st
                    .ges
                    .range::<String, _>((Bound::Excluded(&after), Bound::Unbounded));
                for (name, rec) in range.filter(|(_, r)| r.is_active()) {
                    if entries.len() == crate::wire::MAX_LISTING {
                        more = true;
                        break;
                    }
                    // The lister hears of this GE's address changes from now on.
                    if rec.id != ge.0 {
                        watch.push(rec.id);
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
                for id in watch {
                    self.watchers.entry(id).or_default().insert(ge.0);
                }
                Ok((ServerMsg::DirectoryListing { entries, more }, Vec::new()))
            }
            ClientMsg::Enroll(_) | ClientMsg::Hello { .. } => Err(Error::Protocol(
                "enrollment or hello inside an established session".into(),
            )),
        }
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
