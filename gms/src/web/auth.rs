//! Sessions, CSRF tokens and the login rate limit of the web admin.
//!
//! Everything here is in memory: a restart logs everyone out, which is the
//! safe direction. Session ids and CSRF tokens are 32 random bytes (hex);
//! the id travels only in a `Secure; HttpOnly; SameSite=Strict` cookie, the
//! CSRF token only in the forms of pages rendered for that session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::Result;

/// A session lives this long after login, active or not.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Most sessions at once (the oldest is dropped beyond it).
const MAX_SESSIONS: usize = 1024;
/// Failed logins an address may make within [`FAIL_WINDOW`]...
pub const MAX_FAILURES: u32 = 5;
/// ...before it is refused, without a password check, until the window ends.
pub const FAIL_WINDOW: Duration = Duration::from_secs(300);
/// Most addresses tracked by the rate limit (a flood of addresses evicts
/// the stale ones first).
const MAX_TRACKED: usize = 16 * 1024;

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user name (the audit log's `web:NAME`).
    pub user: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// When it ends.
    expires: Instant,
    /// A message for the next page (post/redirect/get).
    pub flash: Option<Flash>,
}

/// The outcome of the last change, shown once on the next page.
#[derive(Debug, Clone)]
pub struct Flash {
    /// True for a success.
    pub ok: bool,
    /// What the core said.
    pub text: String,
}

/// The sessions and the failed-login counters.
#[derive(Debug, Default)]
pub struct Auth {
    sessions: HashMap<String, Session>,
    failures: HashMap<IpAddr, (u32, Instant)>,
}

/// What the rate limit says about a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Check the password.
    Open,
    /// Refuse for this long without checking.
    Closed(Duration),
}

impl Auth {
    /// Opens a session for `user` and returns its id.
    pub fn login(&mut self, user: &str, now: Instant) -> Result<String> {
        self.sessions.retain(|_, s| s.expires > now);
        if self.sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            self.sessions.remove(&oldest);
        }
        let id = hex::encode(crate::random::<32>()?);
        let csrf = hex::encode(crate::random::<32>()?);
        self.sessions.insert(
            id.clone(),
            Session {
                user: user.to_owned(),
                csrf,
                expires: now + SESSION_TTL,
                flash: None,
            },
        );
        Ok(id)
    }

    /// The live session with id `id`.
    pub fn session(&mut self, id: &str, now: Instant) -> Option<&mut Session> {
        match self.sessions.get(id) {
            Some(s) if s.expires > now => self.sessions.get_mut(id),
            Some(_) => {
                self.sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends session `id`.
    pub fn logout(&mut self, id: &str) {
        self.sessions.remove(id);
    }

    /// Whether `ip` may try a password now.
    pub fn gate(&mut self, ip: IpAddr, now: Instant) -> Gate {
        match self.failures.get(&ip) {
            Some(&(n, since)) if now.duration_since(since) < FAIL_WINDOW => {
                if n >= MAX_FAILURES {
                    Gate::Closed(FAIL_WINDOW - now.duration_since(since))
                } else {
                    Gate::Open
                }
            }
            Some(_) => {
                self.failures.remove(&ip);
                Gate::Open
            }
            None => Gate::Open,
        }
    }

    /// Counts a failed login from `ip`; the window starts at its first failure.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if self.failures.len() >= MAX_TRACKED {
            self.failures
                .retain(|_, (_, since)| now.duration_since(*since) < FAIL_WINDOW);
        }
        if self.failures.len() >= MAX_TRACKED {
            // Still full of live entries: refuse to track more rather than
            // grow; those addresses are limited by the argon2 cost alone.
            return;
        }
        let e = self.failures.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= FAIL_WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
    }

    /// Forgets the failures of `ip` after a good login.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.failures.remove(&ip);
    }
}

/// Compares two tokens in time independent of where they differ (as the
/// rest of the workspace does, with `subtle`).
pub fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_closes_after_max_failures_and_reopens_after_the_window() {
        let mut a = Auth::default();
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert_eq!(a.gate(ip, t0), Gate::Open);
            a.failed(ip, t0);
        }
        assert!(matches!(a.gate(ip, t0), Gate::Closed(_)));
        // Another address is not affected.
        assert_eq!(a.gate("198.18.0.2".parse().unwrap(), t0), Gate::Open);
        assert_eq!(a.gate(ip, t0 + FAIL_WINDOW), Gate::Open);
    }

    #[test]
    fn sessions_expire_and_cookies_parse() {
        let mut a = Auth::default();
        let t0 = Instant::now();
        let id = a.login("alice", t0).unwrap();
        assert_eq!(a.session(&id, t0).unwrap().user, "alice");
        assert!(a.session(&id, t0 + SESSION_TTL).is_none());
        assert_eq!(
            cookie("a=1; fpn_session=xy; b=2", "fpn_session"),
            Some("xy")
        );
        assert_eq!(cookie("a=1", "fpn_session"), None);
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("a", "ab"));
    }
}
