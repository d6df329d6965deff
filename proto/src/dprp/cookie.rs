//! Stateless cookies, as WireGuard's cookie reply: under load an end GE
//! answers a direct DDE with a COOKIE instead of doing any signature or
//! X25519 work, and only a DDE that echoes a valid cookie (which proves the
//! initiator receives at its source address) goes further.
//!
//! `cookie = HMAC-SHA256(secret, label | address | port | id)[..16]`: no
//! state per DDE. The secret rotates every [`ROTATION`]; the current and the
//! previous secret are accepted. `binder = HMAC-SHA256(nonce, label | id |
//! cookie)[..16]` keys the COOKIE to the DDE's nonce, which only who saw the
//! DDE knows, so an off-path attacker cannot feed an initiator cookies.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ring::hmac;

use crate::dprp::msg::{COOKIE_LEN, NegotiationId};

/// How long one cookie secret is used.
pub(crate) const ROTATION: Duration = Duration::from_secs(120);

const COOKIE_LABEL: &[u8] = b"fpn v1 dprp cookie";
const BINDER_LABEL: &[u8] = b"fpn v1 dprp cookie binder";

/// The rotating secrets of one endpoint.
pub(crate) struct CookieJar {
    born: Instant,
    epoch: u64,
    current: hmac::Key,
    previous: Option<hmac::Key>,
}

impl CookieJar {
    /// A jar whose first secret is `secret`, valid from `now`.
    pub(crate) fn new(secret: [u8; 32], now: Instant) -> Self {
        Self {
            born: now,
            epoch: 0,
            current: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            previous: None,
        }
    }

    /// True when the current secret is older than [`ROTATION`] at `now`.
    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.epoch_at(now) > self.epoch
    }

    /// Replaces the secret at `now`; the old one stays valid for one more
    /// period, unless more than one period passed unused.
    pub(crate) fn rotate(&mut self, secret: [u8; 32], now: Instant) {
        let epoch = self.epoch_at(now);
        let old = std::mem::replace(
            &mut self.current,
            hmac::Key::new(hmac::HMAC_SHA256, &secret),
        );
        self.previous = (epoch == self.epoch + 1).then_some(old);
        self.epoch = epoch;
    }

    /// The cookie for a DDE with id `id` from `from`.
    pub(crate) fn make(&self, from: SocketAddr, id: NegotiationId) -> [u8; COOKIE_LEN] {
        mac(&self.current, from, id)
    }

    /// True when `cookie` is the one this jar made (now or one period ago)
    /// for a DDE with id `id` from `from`.
    pub(crate) fn check(
        &self,
        from: SocketAddr,
        id: NegotiationId,
        cookie: &[u8; COOKIE_LEN],
    ) -> bool {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .any(|k| same(&mac(k, from, id), cookie))
    }

    fn epoch_at(&self, now: Instant) -> u64 {
        let age = now.saturating_duration_since(self.born);
        (age.as_secs() / ROTATION.as_secs()).max(self.epoch)
    }
}

/// The binder of a COOKIE for the DDE with `nonce` and `id`.
pub(crate) fn binder(
    nonce: &[u8; 16],
    id: NegotiationId,
    cookie: &[u8; COOKIE_LEN],
) -> [u8; COOKIE_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, nonce);
    let tag = hmac::sign(&key, &[BINDER_LABEL, &id.0.to_be_bytes(), cookie].concat());
    truncate(tag.as_ref())
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guessed cookie or binder was right.
pub(crate) fn same(a: &[u8; COOKIE_LEN], b: &[u8; COOKIE_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn mac(key: &hmac::Key, from: SocketAddr, id: NegotiationId) -> [u8; COOKIE_LEN] {
    let addr: Vec<u8> = match from.ip() {
        IpAddr::V4(a) => [&[4u8][..], &a.octets()].concat(),
        IpAddr::V6(a) => [&[6u8][..], &a.octets()].concat(),
    };
    let msg = [
        COOKIE_LABEL,
        &addr,
        &from.port().to_be_bytes(),
        &id.0.to_be_bytes(),
    ]
    .concat();
    truncate(hmac::sign(key, &msg).as_ref())
}

fn truncate(tag: &[u8]) -> [u8; COOKIE_LEN] {
    tag[..COOKIE_LEN]
        .try_into()
        .expect("HMAC-SHA256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_bind_the_source_and_id_and_survive_one_rotation() {
        let t0 = Instant::now();
        let from: SocketAddr = "198.18.0.1:7717".parse().unwrap();
        let other: SocketAddr = "198.18.0.1:7718".parse().unwrap();
        let id = NegotiationId(7);
        let mut jar = CookieJar::new([1; 32], t0);
        let c = jar.make(from, id);
        assert!(jar.check(from, id, &c));
        assert!(!jar.check(other, id, &c));
        assert!(!jar.check(from, NegotiationId(8), &c));
        assert!(!jar.is_due(t0 + ROTATION - Duration::from_secs(1)));
        assert!(jar.is_due(t0 + ROTATION));
        jar.rotate([2; 32], t0 + ROTATION);
        assert!(jar.check(from, id, &c), "the previous secret still counts");
        jar.rotate([3; 32], t0 + ROTATION * 2);
        assert!(!jar.check(from, id, &c), "two rotations later it does not");
        // A jar left unused for longer keeps no previous secret.
        let mut idle = CookieJar::new([1; 32], t0);
        let c = idle.make(from, id);
        idle.rotate([2; 32], t0 + ROTATION * 5);
        assert!(!idle.check(from, id, &c));
    }

    #[test]
    fn the_binder_needs_the_nonce() {
        let c = [9; COOKIE_LEN];
        let b = binder(&[1; 16], NegotiationId(1), &c);
        assert!(same(&b, &binder(&[1; 16], NegotiationId(1), &c)));
        assert!(!same(&b, &binder(&[2; 16], NegotiationId(1), &c)));
        assert!(!same(
            &b,
            &binder(&[1; 16], NegotiationId(1), &[8; COOKIE_LEN])
        ));
    }
}
