//! Verified peer credentials and pair keys, cached, and the revocation lists.
//!
//! A known peer costs no CA signature check and no static X25519 on its next
//! negotiation: the credential is cached by its exact bytes (so a re-issued
//! credential is checked again) and the pair key by the peer's node key. The
//! validity period and the revocation lists are checked on every use.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::credential::Credential;
use crate::dprp::budget::BadCredentials;
use crate::dprp::msg::CredentialBytes;
use crate::dprp::transcript::PairKey;
use crate::ge::GeId;
use crate::keys::{NodeKey, PUBLIC_KEY_LEN};
use crate::{Error, Result};

/// Cache counters, for stats and for the benchmark's cold/warm split.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Credentials found verified in the cache.
    pub credential_hits: u64,
    /// Credentials whose CA signature had to be checked.
    pub credential_misses: u64,
    /// Pair keys found in the cache.
    pub pair_hits: u64,
    /// Pair keys computed (one static X25519 each).
    pub pair_misses: u64,
}

#[derive(Debug)]
pub(crate) struct Peers {
    cap: usize,
    creds: BTreeMap<CredentialBytes, Credential>,
    cred_order: VecDeque<CredentialBytes>,
    pairs: BTreeMap<[u8; PUBLIC_KEY_LEN], PairKey>,
    pair_order: VecDeque<[u8; PUBLIC_KEY_LEN]>,
    revoked_ges: BTreeSet<GeId>,
    revoked_serials: BTreeSet<u64>,
    /// Credentials valid from before this (unix seconds) are refused: see
    /// [`Error::CredentialStale`].
    not_before_floor: Option<u64>,
    bad: BadCredentials,
    pub(crate) stats: CacheStats,
    /// CA signature checks of credentials (each an Ed25519 verification).
    pub(crate) verifications: u64,
    /// Credentials refused from the negative cache.
    pub(crate) known_bad_hits: u64,
}

impl Peers {
    pub(crate) fn new(cap: usize, bad_cap: usize, bad_ttl: Duration) -> Self {
        Self {
            cap: cap.max(1),
            creds: BTreeMap::new(),
            cred_order: VecDeque::new(),
            pairs: BTreeMap::new(),
            pair_order: VecDeque::new(),
            revoked_ges: BTreeSet::new(),
            revoked_serials: BTreeSet::new(),
            not_before_floor: None,
            bad: BadCredentials::new(bad_cap, bad_ttl),
            stats: CacheStats::default(),
            verifications: 0,
            known_bad_hits: 0,
        }
    }

    /// True (and counted) when `bytes` failed verification recently: the
    /// check costs one hash, and lets a flood of one bad credential be
    /// refused before anything else is spent on it.
    pub(crate) fn is_known_bad(&mut self, bytes: &CredentialBytes, unix_now: u64) -> bool {
        let bad = self
            .bad
            .get(&BadCredentials::key(bytes.as_bytes()), unix_now)
            .is_some();
        if bad {
            self.known_bad_hits += 1;
        }
        bad
    }

    /// Forgets the failed credentials (the wall clock moved, so a
    /// credential refused as not yet valid may be valid now).
    pub(crate) fn clear_bad(&mut self) {
        self.bad.clear();
    }

    /// Failed credentials remembered.
    pub(crate) fn bad_len(&self) -> usize {
        self.bad.len()
    }

    /// Verifies a credential (CA signature, validity at `unix_now`, revocation).
    ///
    /// A credential that fails is remembered by a hash of its bytes and
    /// refused with the same error for a while without a second signature
    /// check. Only failures are remembered: success still
    /// goes through the positive cache, which checks validity and the
    /// revocation lists on every use, so neither can be bypassed.
    pub(crate) fn verify(
        &mut self,
        bytes: &CredentialBytes,
        ca: &[u8; PUBLIC_KEY_LEN],
        unix_now: u64,
    ) -> Result<Credential> {
        if let Some(c) = self.creds.get(bytes) {
            self.stats.credential_hits += 1;
            let c = c.clone();
            self.check(&c, unix_now)?;
            return Ok(c);
        }
        let key = BadCredentials::key(bytes.as_bytes());
        if let Some(e) = self.bad.get(&key, unix_now) {
            self.known_bad_hits += 1;
            return Err(e.clone());
        }
        self.stats.credential_misses += 1;
        let checked = bytes.parse().and_then(|u| {
            self.verifications += 1;
            let c = u.verify(ca, unix_now)?;
            self.check(&c, unix_now)?;
            Ok(c)
        });
        let c = match checked {
            Ok(c) => c,
            Err(e) => {
                self.bad.insert(key, e.clone(), unix_now);
                return Err(e);
            }
        };
        if self.creds.len() >= self.cap
            && let Some(old) = self.cred_order.pop_front()
        {
            self.creds.remove(&old);
        }
        self.creds.insert(bytes.clone(), c.clone());
        self.cred_order.push_back(bytes.clone());
        Ok(c)
    }

    /// Whether a verified credential is still good at `now`: not revoked,
    /// not older than the floor, inside its validity period.
    pub(crate) fn check(&self, c: &Credential, now: u64) -> Result<()> {
        if self.revoked_ges.contains(&c.info.id) || self.revoked_serials.contains(&c.serial) {
            return Err(Error::Revoked(c.info.id.0));
        }
        if let Some(floor) = self.not_before_floor
            && c.not_before < floor
        {
            return Err(Error::CredentialStale {
                ge: c.info.id.0,
                not_before: c.not_before,
                floor,
            });
        }
        if now < c.not_before || now > c.not_after {
            return Err(Error::CredentialExpired {
                ge: c.info.id.0,
                now,
                not_before: c.not_before,
                not_after: c.not_after,
            });
        }
        Ok(())
    }

    /// The pair key with the GE whose (verified) node key is `peer`.
    pub(crate) fn pair_key(
        &mut self,
        node: &NodeKey,
        peer: &[u8; PUBLIC_KEY_LEN],
    ) -> Result<PairKey> {
        if let Some(k) = self.pairs.get(peer) {
            self.stats.pair_hits += 1;
            return Ok(k.clone());
        }
        self.stats.pair_misses += 1;
        let k = PairKey::derive(node, peer)?;
        if self.pairs.len() >= self.cap
            && let Some(old) = self.pair_order.pop_front()
        {
            self.pairs.remove(&old);
        }
        self.pairs.insert(*peer, k.clone());
        self.pair_order.push_back(*peer);
        Ok(k)
    }

    /// Refuses a GE from now on, and forgets what was cached about it.
    pub(crate) fn revoke_ge(&mut self, ge: GeId) {
        self.revoked_ges.insert(ge);
        self.purge(|c| c.info.id == ge);
    }

    /// Refuses a credential serial from now on.
    /// True if `ge` or its credential `serial` was revoked.
    pub(crate) fn is_revoked(&self, ge: GeId, serial: u64) -> bool {
        self.revoked_ges.contains(&ge) || self.revoked_serials.contains(&serial)
    }

    /// Refuses credentials valid from before `floor` (unix seconds), or
    /// stops doing so (`None`). Failures remembered under the old rule are
    /// forgotten.
    pub(crate) fn set_not_before_floor(&mut self, floor: Option<u64>) {
        if self.not_before_floor != floor {
            self.not_before_floor = floor;
            self.bad.clear();
        }
    }

    /// The GE of a verified credential with this serial, if one is cached.
    pub(crate) fn ge_of_serial(&self, serial: u64) -> Option<GeId> {
        self.creds
            .values()
            .find(|c| c.serial == serial)
            .map(|c| c.info.id)
    }

    /// The node key of the newest cached verified credential of `ge`.
    pub(crate) fn node_key_of(&self, ge: GeId) -> Option<[u8; PUBLIC_KEY_LEN]> {
        self.creds
            .values()
            .filter(|c| c.info.id == ge)
            .max_by_key(|c| c.serial)
            .map(|c| c.node_key)
    }

    pub(crate) fn revoke_serial(&mut self, serial: u64) {
        self.revoked_serials.insert(serial);
        self.purge(|c| c.serial == serial);
    }

    fn purge(&mut self, hit: impl Fn(&Credential) -> bool) {
        let gone: Vec<(CredentialBytes, [u8; PUBLIC_KEY_LEN])> = self
            .creds
            .iter()
            .filter(|(_, c)| hit(c))
            .map(|(b, c)| (b.clone(), c.node_key))
            .collect();
        for (bytes, node_key) in gone {
            self.creds.remove(&bytes);
            self.cred_order.retain(|b| *b != bytes);
            self.pairs.remove(&node_key);
            self.pair_order.retain(|k| *k != node_key);
        }
    }
}
