//! Group keys: creation, rotation, the grace period and the schedule.

use fpn_proto::ge::GroupId;
use fpn_proto::keys::{GroupKey, KeyVersion};
use tracing::{error, info};

use super::{Core, GroupKeyState, Output, Tx, frame};
use crate::admin::RotatedView;
use crate::model::KeyRecord;
use crate::wire::{GroupKeys, ServerMsg, WireKey};
use crate::{Error, Result};

/// After a failed timer transaction (store error), wait this long before retrying.
const TIMER_RETRY_SECS: u64 = 5;

/// Why a group rotated (for logs and the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RotationCause {
    /// `fpn-gms rotate`.
    Admin,
    /// The rotation schedule.
    Schedule,
    /// A member left the group, was removed or revoked.
    MemberLeft,
}

impl RotationCause {
    fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Schedule => "schedule",
            Self::MemberLeft => "member left",
        }
    }
}

impl Core {
    /// Creates version 1 of a new group's key.
    pub(crate) fn create_group_key(&mut self, tx: &mut Tx, group: u32, now: u64) -> Result<()> {
        let ks = GroupKeyState {
            current: KeyRecord {
                version: KeyVersion(1),
                created_at: now,
                expires_at: None,
                key: GroupKey::from_bytes(crate::random()?),
            },
            previous: None,
        };
        self.set_keys(tx, group, ks, &[]);
        Ok(())
    }

    /// Rotates `group`: a new current version; the old current stays valid
    /// until `now + grace`; a previous version still in its grace is erased
    /// at once (only one previous version is ever valid). Pushes the new set
    /// to the group's active members, as they are at this point of the
    /// transaction: a GE removed earlier in it never receives the new key.
    pub(crate) fn rotate_group(
        &mut self,
        tx: &mut Tx,
        group: u32,
        now: u64,
        cause: RotationCause,
    ) -> Result<KeyVersion> {
        let old = self
            .st
            .keys
            .get(&group)
            .cloned()
            .ok_or_else(|| Error::admin(format!("group {group} has no key")))?;
        let version =
            KeyVersion(
                old.current.version.0.checked_add(1).ok_or_else(|| {
                    Error::admin(format!("group {group}: key versions exhausted"))
                })?,
            );
        let mut erase = Vec::new();
        if let Some(p) = &old.previous {
            erase.push(p.version);
        }
        let grace = self.cfg.grace.0.as_secs();
        let previous = if grace == 0 {
            erase.push(old.current.version);
            None
        } else {
            let mut p = old.current.clone();
            p.expires_at = Some(now + grace);
            Some(p)
        };
        let ks = GroupKeyState {
            current: KeyRecord {
                version,
                created_at: now,
                expires_at: None,
                key: GroupKey::from_bytes(crate::random()?),
            },
            previous,
        };
        self.set_keys(tx, group, ks, &erase);
        self.push_group_keys(tx, group)?;
        self.audit(
            tx,
            now,
            "rotate",
            format!(
                "rotate group {group} to v{} ({})",
                version.0,
                cause.as_str()
            ),
        );
        info!(
            group,
            version = version.0,
            cause = cause.as_str(),
            "group key rotated"
        );
        tx.rotated.push(RotatedView {
            group,
            version: version.0,
        });
        Ok(version)
    }

    /// The valid keys of `group`, newest first, as pushed to members.
    pub(crate) fn group_keys(&self, group: u32) -> Option<GroupKeys> {
        let ks = self.st.keys.get(&group)?;
        let keys = std::iter::once(&ks.current)
            .chain(ks.previous.as_ref())
            .map(|k| WireKey {
                version: k.version,
                expires_at: k.expires_at,
                key: k.key.clone(),
            })
            .collect();
        Some(GroupKeys {
            group: GroupId(group),
            keys,
        })
    }

    /// Queues a push of `group`'s key set to its active members.
    pub(crate) fn push_group_keys(&mut self, tx: &mut Tx, group: u32) -> Result<()> {
        if let Some(gk) = self.group_keys(group) {
            let to = self.members(group);
            if !to.is_empty() {
                let frame = frame(&ServerMsg::GroupKeys(gk))?;
                tx.out.push(Output::Send { to, frame });
            }
        }
        Ok(())
    }

    /// When [`Core::handle_timeout`] wants to run next (unix seconds).
    pub fn poll_timeout(&self) -> Option<u64> {
        let grace_end = self
            .st
            .keys
            .values()
            .filter_map(|k| k.previous.as_ref().and_then(|p| p.expires_at))
            .min();
        let t = [grace_end, self.next_rotation]
            .into_iter()
            .flatten()
            .min()?;
        Some(match self.timer_retry {
            Some(r) => t.max(r),
            None => t,
        })
    }

    /// Erases previous versions whose grace ended and runs the scheduled rotation.
    pub fn handle_timeout(&mut self, now: u64) -> Vec<Output> {
        if self.timer_retry.is_some_and(|r| now < r) {
            return Vec::new();
        }
        self.timer_retry = None;
        let mut out = Vec::new();
        let expired: Vec<u32> = self
            .st
            .keys
            .iter()
            .filter(|(_, k)| {
                k.previous
                    .as_ref()
                    .and_then(|p| p.expires_at)
                    .is_some_and(|e| e <= now)
            })
            .map(|(g, _)| *g)
            .collect();
        if !expired.is_empty() {
            let r = self.transact(|c, tx| {
                for g in &expired {
                    let Some(mut ks) = c.st.keys.get(g).cloned() else {
                        continue;
                    };
                    let Some(p) = ks.previous.take() else {
                        continue;
                    };
                    c.set_keys(tx, *g, ks, &[p.version]);
                    c.push_group_keys(tx, *g)?;
                    info!(
                        group = *g,
                        version = p.version.0,
                        "previous key version erased after its grace"
                    );
                }
                Ok(())
            });
            match r {
                Ok(((), tx)) => out.extend(tx.out),
                Err(e) => {
                    error!(error = %e, "erasing expired key versions");
                    self.timer_retry = Some(now + TIMER_RETRY_SECS);
                    return out;
                }
            }
        }
        if self.next_rotation.is_some_and(|t| t <= now) {
            let groups: Vec<u32> = self.st.groups.keys().copied().collect();
            let r = self.transact(|c, tx| {
                for g in groups {
                    c.rotate_group(tx, g, now, RotationCause::Schedule)?;
                }
                c.prune(tx, now);
                Ok(())
            });
            match r {
                Ok(((), tx)) => {
                    out.extend(tx.out);
                    self.next_rotation = self.cfg.rotation_schedule.next_after(now);
                }
                Err(e) => {
                    error!(error = %e, "scheduled rotation");
                    self.timer_retry = Some(now + TIMER_RETRY_SECS);
                }
            }
        }
        out
    }

    /// Drops revocation entries of items that expired anyway, and tokens
    /// that expired more than a day ago.
    fn prune(&mut self, tx: &mut Tx, now: u64) {
        let old: Vec<u64> = self
            .st
            .revocations
            .values()
            .filter(|r| r.not_after < now)
            .map(|r| r.serial)
            .collect();
        for s in old {
            self.delete_revocation(tx, s);
        }
        let stale: Vec<[u8; 16]> = self
            .st
            .tokens
            .iter()
            .filter(|(_, t)| t.expires_at.saturating_add(86_400) < now)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.delete_token(tx, id);
        }
    }
}
