//! Names of labs, namespaces and interfaces.
//!
//! A lab gets a short random id; each host and switch becomes the namespace
//! `{prefix}-{id}-{name}` (for example `fpnlab-k3x9q2-vps`). Namespace names
//! are file names under /run/netns, not interface names, so they may be
//! longer than 15 characters. Interfaces are created directly inside their
//! namespaces and never exist in the root namespace, so they keep the names
//! from the topology (`wan`, `eth0`): two labs, or two tests, cannot collide
//! on them. Inside a switch namespace the bridge is `br0` and each port is
//! named after the host it leads to.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Error;

/// Prefix of every namespace the lab creates, unless [`PREFIX_ENV`] says otherwise.
pub const DEFAULT_PREFIX: &str = "fpnlab";

/// Environment variable that overrides the namespace prefix. Tests that run
/// `fpn-lab down --all` use their own prefix so they cannot touch other labs.
pub const PREFIX_ENV: &str = "FPN_LAB_PREFIX";

/// Length of generated lab ids.
const ID_LEN: usize = 6;

/// The bridge's name inside a switch namespace.
pub const BRIDGE: &str = "br0";

/// The namespace prefix: [`PREFIX_ENV`] if set, else [`DEFAULT_PREFIX`].
pub fn prefix_from_env() -> Result<String, Error> {
    match std::env::var(PREFIX_ENV) {
        Ok(p) => {
            check_prefix(&p)?;
            Ok(p)
        }
        Err(_) => Ok(DEFAULT_PREFIX.to_string()),
    }
}

/// A prefix is 1 to 16 of a-z and 0-9, starting with a letter; no '-', so
/// `{prefix}-` never matches a longer prefix's namespaces.
pub fn check_prefix(p: &str) -> Result<(), Error> {
    let ok = !p.is_empty()
        && p.len() <= 16
        && p.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::BadLabId {
            id: p.to_string(),
            reason: "a namespace prefix is 1 to 16 of a-z and 0-9, starting with a letter",
        })
    }
}

/// A fresh random lab id of six characters from a-z and 0-9.
///
/// Random rather than pid-based so ids stay unique across machines sharing
/// /run (containers) and across pid reuse; the caller still checks that no
/// namespace with the id exists.
pub fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded from the OS once per process; mixing in the pid,
    // a counter and the time makes every call differ.
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    let mut v = h.finish();
    let mut id = String::with_capacity(ID_LEN);
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    for i in 0..ID_LEN {
        // The first character is a letter, so ids never look like numbers.
        let base = if i == 0 { 26 } else { 36 };
        id.push(char::from(ALPHABET[(v % base) as usize]));
        v /= base;
    }
    id
}

/// A lab id given by the user: 1 to 12 of a-z and 0-9.
pub fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 12
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::BadLabId {
            id: id.to_string(),
            reason: "use 1 to 12 of a-z and 0-9",
        })
    }
}

/// The namespace of host or switch `name` in lab `id`.
pub fn netns_name(prefix: &str, id: &str, name: &str) -> String {
    format!("{prefix}-{id}-{name}")
}

/// Splits a namespace name made by [`netns_name`] into (lab id, name).
pub fn parse_netns<'a>(prefix: &str, netns: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = netns.strip_prefix(prefix)?.strip_prefix('-')?;
    let (id, name) = rest.split_once('-')?;
    (!id.is_empty() && !name.is_empty()).then_some((id, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_valid_and_distinct() {
        // 1000 draws from 26 * 36^5 ids repeat one with probability ~3e-4
        // (CI once drew that); three repeats (~5e-12) mean a broken generator.
        // Lab creation checks that no namespace has the id, so a rare repeat
        // is harmless.
        let ids: std::collections::BTreeSet<String> = (0..1000).map(|_| new_id()).collect();
        assert!(ids.len() >= 998, "1000 ids, {} distinct", ids.len());
        for id in &ids {
            assert_eq!(id.len(), ID_LEN);
            check_id(id).unwrap();
            assert!(id.as_bytes()[0].is_ascii_lowercase());
        }
    }

    #[test]
    fn netns_names_round_trip() {
        let ns = netns_name("fpnlab", "k3x9q2", "home-gw");
        assert_eq!(ns, "fpnlab-k3x9q2-home-gw");
        assert_eq!(parse_netns("fpnlab", &ns), Some(("k3x9q2", "home-gw")));
        // Another prefix that starts the same way is not ours.
        assert_eq!(parse_netns("fpnlab", "fpnlabx-abc-h"), None);
        assert_eq!(parse_netns("fpnlab", "fpnlab-abc"), None);
    }

    #[test]
    fn prefixes_and_ids_are_checked() {
        check_prefix("fpnlab").unwrap();
        check_prefix("t1").unwrap();
        for bad in ["", "1abc", "a-b", "ABC", "abcdefghijklmnopq"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
        check_id("demo").unwrap();
        for bad in ["", "a-b", "Demo", "abcdefghijklm"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
