//! Candidates: which of a peer's addresses to dial when, which connection
//! to keep, and what the address in use says about the path. Sans-IO: the
//! carrier's connect task feeds a [`Race`] with handshake results and the
//! clock, and does what [`Race::poll_action`] says.
//!
//! - **Local candidates first.** The addresses a peer reported (its own
//!   interfaces) are dialed at once; its reflexive address (the public side
//!   of its NAT, as the GMS sees its carrier socket) after
//!   [`REFLEXIVE_DELAY`], or at once when every local one has failed. Two
//!   nodes on one LAN so connect over the LAN before a hairpin through
//!   their router could answer, and only one handshake normally completes
//!   (a second one would be a second connection the peer installs too).
//! - **Port-mapped candidates count as local.** A reported public address
//!   on the peer's NAT's public IP (the reflexive one's IP, another port)
//!   is a mapping the peer's router granted (NAT-PMP, `portmap`): it needs
//!   no punch, so it is dialed at once too.
//! - **First handshake wins.** The first candidate whose handshake
//!   completes is kept and the others are dropped; when a local and the
//!   reflexive one complete in the same wake-up, the local one is kept.
//! - **Give up** when every candidate failed (each has the carrier's
//!   connect timeout).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long local candidates have to themselves before the reflexive one is
/// dialed too. On a LAN a handshake takes a millisecond or two; across the
/// internet the delay is small next to the punch's own round trips.
pub const REFLEXIVE_DELAY: Duration = Duration::from_millis(150);

/// What kind of address a candidate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// An address the peer reported for itself (one of its interfaces).
    Local,
    /// A port the peer's router forwards to it (NAT-PMP): a reported public
    /// address on the reflexive address's IP, with another port.
    Mapped,
    /// Where the GMS sees the peer's carrier socket (its NAT's public side).
    Reflexive,
}

/// True when `a` (one of the peer's reported addresses) is a port mapping
/// on its NAT: the NAT's public IP (where the GMS sees the peer), another
/// port. A node reports its mapping among its addresses (no new wire
/// field, note 37), and a host with a public address of its own has no
/// reflexive address, so this never calls its address a mapping.
pub fn is_mapped(a: SocketAddr, reflexive: Option<SocketAddr>) -> bool {
    reflexive.is_some_and(|r| r.ip() == a.ip() && r != a && !is_private(a.ip()))
}

/// A peer's candidates with their kinds, local ones first, duplicates removed.
pub fn typed(
    addrs: &[SocketAddr],
    reflexive: Option<SocketAddr>,
) -> Vec<(SocketAddr, CandidateKind)> {
    let mut out: Vec<(SocketAddr, CandidateKind)> = Vec::with_capacity(addrs.len() + 1);
    for a in addrs {
        if Some(*a) != reflexive && !out.iter().any(|(x, _)| x == a) {
            let kind = if is_mapped(*a, reflexive) {
                CandidateKind::Mapped
            } else {
                CandidateKind::Local
            };
            out.push((*a, kind));
        }
    }
    if let Some(r) = reflexive {
        out.push((r, CandidateKind::Reflexive));
    }
    out
}

/// The path a connection to `remote` takes, for `status` (`reflexive` is
/// only set when it is not one of the reported addresses: a host with a
/// public address of its own is seen at that address and has no NAT): `direct LAN` (a
/// private local address of the peer), `direct (public address)` (a public
/// one it reported), `direct via NAT (reflexive)` (the peer's NAT's public
/// side), `direct via NAT (peer-reflexive)` (an address neither reported
/// nor seen by the GMS: the peer's NAT mapped its socket anew for us).
pub fn path_text(
    remote: SocketAddr,
    addrs: &[SocketAddr],
    reflexive: Option<SocketAddr>,
) -> &'static str {
    if Some(remote) == reflexive {
        "direct via NAT (reflexive)"
    } else if addrs.contains(&remote) && is_mapped(remote, reflexive) {
        "direct via NAT (port-mapped)"
    } else if addrs.contains(&remote) {
        if is_private(remote.ip()) {
            "direct LAN"
        } else {
            "direct (public address)"
        }
    } else {
        "direct via NAT (peer-reflexive)"
    }
}

/// The same words for a native path to the peer's underlay address `ip`
/// (native packets carry the flow's own ports, so only the address says
/// which of the peer's candidates the path uses).
pub fn native_path_text(
    ip: IpAddr,
    addrs: &[SocketAddr],
    reflexive: Option<SocketAddr>,
) -> &'static str {
    if reflexive.is_some_and(|r| r.ip() == ip) {
        "direct via NAT (reflexive)"
    } else if addrs.iter().any(|a| a.ip() == ip) {
        if is_private(ip) {
            "direct LAN"
        } else {
            "direct (public address)"
        }
    } else {
        "direct via NAT (peer-reflexive)"
    }
}

/// True for addresses that only mean something on a local network.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local() || v4.is_loopback(),
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            v6.is_loopback() || (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}

/// What the connect task does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start a handshake with candidate `i`.
    Dial(usize),
    /// Keep candidate `i`'s connection; drop every other attempt.
    Take(usize),
    /// Every candidate failed.
    GiveUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    NotStarted,
    Pending,
    Failed,
    Ready,
}

/// One connection attempt over all of a peer's candidates.
#[derive(Debug)]
pub struct Race {
    kinds: Vec<CandidateKind>,
    state: Vec<Attempt>,
    reflexive_at: Instant,
    done: bool,
}

impl Race {
    /// A race over candidates of these kinds, starting at `now`.
    pub fn new(kinds: Vec<CandidateKind>, now: Instant) -> Self {
        let n = kinds.len();
        Self {
            kinds,
            state: vec![Attempt::NotStarted; n],
            reflexive_at: now + REFLEXIVE_DELAY,
            done: false,
        }
    }

    /// Candidate `i`'s handshake completed (with the right GE).
    pub fn handle_ready(&mut self, i: usize) {
        if let Some(s) = self.state.get_mut(i) {
            *s = Attempt::Ready;
        }
    }

    /// Candidate `i`'s handshake failed or timed out.
    pub fn handle_failed(&mut self, i: usize) {
        if let Some(s) = self.state.get_mut(i) {
            *s = Attempt::Failed;
        }
    }

    /// The next thing to do at `now`; call until `None`, then wait for a
    /// result or [`Race::poll_timeout`].
    #[must_use]
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        if self.done {
            return None;
        }
        let ready = |k| {
            (0..self.state.len()).find(|&i| self.state[i] == Attempt::Ready && self.kinds[i] == k)
        };
        if let Some(i) = ready(CandidateKind::Local)
            .or_else(|| ready(CandidateKind::Mapped))
            .or_else(|| ready(CandidateKind::Reflexive))
        {
            self.done = true;
            return Some(Action::Take(i));
        }
        let locals_left = (0..self.state.len()).any(|i| {
            self.kinds[i] != CandidateKind::Reflexive
                && matches!(self.state[i], Attempt::NotStarted | Attempt::Pending)
        });
        for i in 0..self.state.len() {
            if self.state[i] != Attempt::NotStarted {
                continue;
            }
            let due = self.kinds[i] != CandidateKind::Reflexive
                || !locals_left
                || now >= self.reflexive_at;
            if due {
                self.state[i] = Attempt::Pending;
                return Some(Action::Dial(i));
            }
        }
        if self.state.iter().all(|s| *s == Attempt::Failed) {
            self.done = true;
            return Some(Action::GiveUp);
        }
        None
    }

    /// When the reflexive candidates are due, while they wait.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.done
            && self
                .state
                .iter()
                .zip(&self.kinds)
                .any(|(s, k)| *s == Attempt::NotStarted && *k == CandidateKind::Reflexive))
        .then_some(self.reflexive_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CandidateKind::{Local, Mapped, Reflexive};

    fn drain(r: &mut Race, now: Instant) -> Vec<Action> {
        std::iter::from_fn(|| r.poll_action(now)).collect()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn local_candidates_are_dialed_first_and_the_reflexive_one_after_the_delay() {
        let t0 = Instant::now();
        let mut r = Race::new(vec![Local, Local, Reflexive], t0);
        assert_eq!(drain(&mut r, t0), [Action::Dial(0), Action::Dial(1)]);
        assert_eq!(r.poll_timeout(), Some(t0 + REFLEXIVE_DELAY));
        assert_eq!(drain(&mut r, t0 + REFLEXIVE_DELAY / 2), []);
        assert_eq!(drain(&mut r, t0 + REFLEXIVE_DELAY), [Action::Dial(2)]);
        assert_eq!(r.poll_timeout(), None);
        // The reflexive one answers first (the peer is at another site).
        r.handle_ready(2);
        assert_eq!(drain(&mut r, t0 + REFLEXIVE_DELAY), [Action::Take(2)]);
        // Late results change nothing.
        r.handle_ready(0);
        assert_eq!(drain(&mut r, t0 + REFLEXIVE_DELAY * 2), []);
    }

    #[test]
    fn a_lan_answer_wins_before_the_reflexive_one_is_even_dialed() {
        let t0 = Instant::now();
        let mut r = Race::new(vec![Local, Reflexive], t0);
        assert_eq!(drain(&mut r, t0), [Action::Dial(0)]);
        r.handle_ready(0);
        assert_eq!(drain(&mut r, t0), [Action::Take(0)]);
    }

    #[test]
    fn when_both_answer_together_the_local_one_is_kept() {
        let t0 = Instant::now();
        let mut r = Race::new(vec![Local, Reflexive], t0);
        let later = t0 + REFLEXIVE_DELAY;
        assert_eq!(drain(&mut r, later), [Action::Dial(0), Action::Dial(1)]);
        r.handle_ready(1);
        r.handle_ready(0);
        assert_eq!(drain(&mut r, later), [Action::Take(0)]);
    }

    #[test]
    fn failed_local_candidates_bring_the_reflexive_one_forward_and_all_failed_gives_up() {
        let t0 = Instant::now();
        let mut r = Race::new(vec![Local, Reflexive], t0);
        assert_eq!(drain(&mut r, t0), [Action::Dial(0)]);
        r.handle_failed(0);
        assert_eq!(drain(&mut r, t0), [Action::Dial(1)]);
        r.handle_failed(1);
        assert_eq!(drain(&mut r, t0), [Action::GiveUp]);
        assert_eq!(drain(&mut r, t0), []);
        // Only a reflexive candidate: dialed at once.
        let mut r = Race::new(vec![Reflexive], t0);
        assert_eq!(drain(&mut r, t0), [Action::Dial(0)]);
        // None at all: nothing to wait for.
        let mut r = Race::new(vec![], t0);
        assert_eq!(drain(&mut r, t0), [Action::GiveUp]);
    }

    #[test]
    fn candidates_are_typed_deduplicated_and_local_first() {
        let lan = sa("192.168.1.10:7718");
        let public = sa("198.18.2.2:7718");
        assert_eq!(
            typed(&[public, lan, lan], Some(public)),
            [(lan, Local), (public, Reflexive)]
        );
        assert_eq!(typed(&[lan], None), [(lan, Local)]);
    }

    #[test]
    fn the_path_text_names_the_candidate_in_use() {
        let lan = sa("192.168.1.10:7718");
        let nat = sa("198.18.2.2:7718");
        let vps = sa("198.18.1.10:7718");
        assert_eq!(path_text(lan, &[lan, nat], Some(nat)), "direct LAN");
        assert_eq!(
            path_text(nat, &[lan, nat], Some(nat)),
            "direct via NAT (reflexive)"
        );
        assert_eq!(path_text(vps, &[vps], None), "direct (public address)");
        assert_eq!(
            path_text(sa("198.18.2.2:40000"), &[lan, nat], Some(nat)),
            "direct via NAT (peer-reflexive)"
        );
    }

    #[test]
    fn a_port_mapping_is_typed_dialed_at_once_and_named_in_the_path() {
        let lan = sa("192.168.1.10:7718");
        let mapped = sa("198.20.2.2:7718");
        let refl = sa("198.20.2.2:41234");
        let cands = typed(&[lan, mapped], Some(refl));
        assert_eq!(cands, [(lan, Local), (mapped, Mapped), (refl, Reflexive)]);
        assert_eq!(
            path_text(mapped, &[lan, mapped, refl], Some(refl)),
            "direct via NAT (port-mapped)"
        );
        // A public host (no reflexive address) is not "mapped".
        assert_eq!(typed(&[mapped], None), [(mapped, Local)]);
        let t0 = Instant::now();
        let mut r = Race::new(vec![Local, Mapped, Reflexive], t0);
        assert_eq!(drain(&mut r, t0), [Action::Dial(0), Action::Dial(1)]);
        // The LAN address leads nowhere; the mapping answers.
        r.handle_ready(1);
        assert_eq!(drain(&mut r, t0), [Action::Take(1)]);
        // Both local and mapped ready together: the local one is kept.
        let mut r = Race::new(vec![Mapped, Local], t0);
        assert_eq!(drain(&mut r, t0), [Action::Dial(0), Action::Dial(1)]);
        r.handle_ready(0);
        r.handle_ready(1);
        assert_eq!(drain(&mut r, t0), [Action::Take(1)]);
    }

    #[test]
    fn a_native_path_is_named_by_its_address_alone() {
        let lan: SocketAddr = "192.168.1.10:7718".parse().unwrap();
        let public: SocketAddr = "198.18.1.20:7718".parse().unwrap();
        let refl: SocketAddr = "198.18.2.2:7718".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let addrs = [lan, public];
        assert_eq!(
            native_path_text(ip("192.168.1.10"), &addrs, Some(refl)),
            "direct LAN"
        );
        assert_eq!(
            native_path_text(ip("198.18.1.20"), &addrs, Some(refl)),
            "direct (public address)"
        );
        assert_eq!(
            native_path_text(ip("198.18.2.2"), &addrs, Some(refl)),
            "direct via NAT (reflexive)"
        );
        assert_eq!(
            native_path_text(ip("198.18.9.9"), &addrs, Some(refl)),
            "direct via NAT (peer-reflexive)"
        );
    }
}
