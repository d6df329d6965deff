//! Two path machines on a fake network with a virtual clock.
//!
//! `Net` carries probes (UDP) and native data packets between GE 1 (`a`) and
//! GE 2 (`b`) with a one-way latency, optional jitter and loss, and two
//! firewall switches: one dropping probes, one dropping native data.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::Error;
use crate::ge::GeId;

const KEY: [u8; 32] = [3; 32];
const LATENCY: Duration = Duration::from_millis(10);
const UNIX: u64 = 1_800_000_000;

fn addr_a() -> SocketAddr {
    "198.18.0.1:7717".parse().unwrap()
}
fn addr_b() -> SocketAddr {
    "198.18.0.2:7717".parse().unwrap()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    A,
    B,
}

enum Packet {
    Probe(Vec<u8>),
    Data,
}

struct InFlight {
    at: Instant,
    to: Side,
    from: SocketAddr,
    packet: Packet,
}

struct Net {
    start: Instant,
    now: Instant,
    a: PathMachine,
    b: PathMachine,
    flight: Vec<InFlight>,
    block_probes: bool,
    block_data: bool,
    /// B sits behind a NAT that drops what A sends until B has sent to A
    /// (address-dependent filtering); `b_opened` once it has.
    filter_b: bool,
    b_opened: bool,
    /// B's NAT maps B's probe port here (address-dependent mapping): B's
    /// datagrams come from it, and only datagrams to it reach B.
    b_mapped: Option<SocketAddr>,
    /// Native data packets per side every `data_every` while its path is native.
    send_a: bool,
    send_b: bool,
    data_every: Duration,
    next_data: Instant,
    loss_percent: u64,
    jitter: Duration,
    /// Added to every probe's and answer's flight: the receiving node's
    /// driver, which answers, lags behind its receive thread, which counts
    /// the data at once (a data-path worker, node design note 67).
    probe_delay: Duration,
    rng: u64,
    events: Vec<(Instant, Side, PathEvent)>,
    /// Probes and answers each side put on the wire.
    sent: Vec<(Instant, Side, ProbeKind)>,
    /// The raw datagrams, for replay tests.
    wire: Vec<(Side, SocketAddr, Vec<u8>)>,
    errors: Vec<(Side, Error)>,
}

impl Net {
    fn new(cfg_a: PathConfig, cfg_b: PathConfig) -> Self {
        Self::with(cfg_a, cfg_b, vec![addr_b()], KEY)
    }

    fn with(
        cfg_a: PathConfig,
        cfg_b: PathConfig,
        cand_a: Vec<SocketAddr>,
        key_b: [u8; 32],
    ) -> Self {
        let start = Instant::now();
        let a = PathMachine::new(cfg_a, GeId(1), GeId(2), &KEY, cand_a, UNIX, start);
        let b = PathMachine::new(cfg_b, GeId(2), GeId(1), &key_b, vec![addr_a()], UNIX, start);
        let mut net = Self {
            start,
            now: start,
            a,
            b,
            flight: Vec::new(),
            block_probes: false,
            block_data: false,
            filter_b: false,
            b_opened: false,
            b_mapped: None,
            send_a: false,
            send_b: false,
            data_every: Duration::from_millis(10),
            next_data: start,
            loss_percent: 0,
            jitter: Duration::ZERO,
            probe_delay: Duration::ZERO,
            rng: 0x9e37_79b9_7f4a_7c15,
            events: Vec::new(),
            sent: Vec::new(),
            wire: Vec::new(),
            errors: Vec::new(),
        };
        net.drain();
        net
    }

    fn t(&self, secs: f64) -> Instant {
        self.start + Duration::from_secs_f64(secs)
    }

    fn machine(&mut self, side: Side) -> &mut PathMachine {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn delivery(&mut self) -> Option<Instant> {
        if self.loss_percent > 0 && self.random() % 100 < self.loss_percent {
            return None;
        }
        let jitter = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_micros(self.random() % self.jitter.as_micros() as u64)
        };
        Some(self.now + LATENCY + jitter)
    }

    /// Drains both machines' outputs at `now`.
    fn drain(&mut self) {
        for side in [Side::A, Side::B] {
            let b_public = self.b_mapped.unwrap_or(addr_b());
            let (from, to) = match side {
                Side::A => (addr_a(), Side::B),
                Side::B => (b_public, Side::A),
            };
            while let Some(t) = self.machine(side).poll_transmit() {
                self.sent.push((self.now, side, t.kind));
                self.wire.push((side, t.dst, t.payload().to_vec()));
                let reaches = match to {
                    Side::A => t.dst == addr_a(),
                    Side::B => t.dst == b_public,
                };
                if side == Side::B && reaches {
                    self.b_opened = true;
                }
                let filtered = to == Side::B && self.filter_b && !self.b_opened;
                // Notices and moved messages ride the QUIC carrier, which
                // no firewall here blocks.
                let carrier = matches!(
                    t.kind,
                    ProbeKind::Notice | ProbeKind::Moved | ProbeKind::MovedAck
                );
                if (self.block_probes && !carrier) || !reaches || filtered {
                    continue;
                }
                if let Some(at) = self.delivery() {
                    self.flight.push(InFlight {
                        at: at + self.probe_delay,
                        to,
                        from,
                        packet: Packet::Probe(t.payload().to_vec()),
                    });
                }
            }
            while let Some(e) = self.machine(side).poll_event() {
                self.events.push((self.now, side, e));
            }
        }
    }

    fn send_data(&mut self) {
        for (side, on, to, from) in [
            (Side::A, self.send_a, Side::B, addr_a()),
            (Side::B, self.send_b, Side::A, addr_b()),
        ] {
            // A trial sends native copies of what QUIC carries.
            if !on
                || (self.machine(side).current() != PathKind::Native
                    && !self.machine(side).take_trial_copy())
            {
                continue;
            }
            let now = self.now;
            self.machine(side).handle_native_data_sent(now);
            if side == Side::B {
                self.b_opened = true;
            }
            if self.block_data || (to == Side::B && self.filter_b && !self.b_opened) {
                continue;
            }
            if let Some(at) = self.delivery() {
                self.flight.push(InFlight {
                    at,
                    to,
                    from,
                    packet: Packet::Data,
                });
            }
        }
    }

    /// Runs until `until` (virtual time).
    fn run_until(&mut self, until: Instant) {
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(
                steps < 2_000_000,
                "no progress at {:?}: a {:?} b {:?} {:?} {:?}",
                self.now - self.start,
                self.a.poll_timeout().map(|(t, k)| (t - self.start, k)),
                self.b.poll_timeout().map(|(t, k)| (t - self.start, k)),
                self.a,
                self.b
            );
            let mut next = until + Duration::from_nanos(1);
            for side in [Side::A, Side::B] {
                if let Some((t, _)) = self.machine(side).poll_timeout() {
                    next = next.min(t);
                }
            }
            if let Some(f) = self.flight.iter().map(|f| f.at).min() {
                next = next.min(f);
            }
            if self.send_a || self.send_b {
                next = next.min(self.next_data);
            }
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            let now = self.now;
            // Deliveries first, in arrival order.
            let mut due: Vec<InFlight> = Vec::new();
            let mut i = 0;
            while i < self.flight.len() {
                if self.flight[i].at <= now {
                    due.push(self.flight.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            due.sort_by_key(|f| f.at);
            for f in due {
                match f.packet {
                    Packet::Probe(bytes) => {
                        if let Err(e) = self.machine(f.to).handle_datagram(&bytes, f.from, now) {
                            self.errors.push((f.to, e));
                        }
                    }
                    Packet::Data => self.machine(f.to).handle_native_data_received(now),
                }
            }
            if (self.send_a || self.send_b) && self.next_data <= now {
                self.send_data();
                self.next_data = now + self.data_every;
            }
            for side in [Side::A, Side::B] {
                if self
                    .machine(side)
                    .poll_timeout()
                    .is_some_and(|(t, _)| t <= now)
                {
                    self.machine(side).handle_timeout(now);
                }
            }
            self.drain();
        }
    }

    fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    fn switches(&self, side: Side, to: PathKind) -> Vec<Instant> {
        self.events
            .iter()
            .filter_map(|(t, s, e)| match e {
                PathEvent::Switched { to: k, .. } if *s == side && *k == to => Some(*t),
                _ => None,
            })
            .collect()
    }

    fn probes_sent(&self, side: Side) -> usize {
        self.sent
            .iter()
            .filter(|(_, s, k)| *s == side && *k == ProbeKind::Probe)
            .count()
    }
}

fn auto() -> PathConfig {
    PathConfig::default()
}

fn forced(force: Force) -> PathConfig {
    PathConfig {
        force,
        ..PathConfig::default()
    }
}

#[test]
fn native_answers_switches_to_native_within_one_rtt() {
    let mut net = Net::new(auto(), auto());
    assert_eq!(net.a.current(), PathKind::Quic);
    assert_eq!(net.a.status().to_string(), "quic (probing native)");
    net.run_for(2 * LATENCY);
    assert_eq!(net.a.current(), PathKind::Native);
    assert_eq!(net.a.status().to_string(), "native");
    assert_eq!(net.b.current(), PathKind::Native);
    let at = net.switches(Side::A, PathKind::Native)[0];
    assert!(at - net.start <= 2 * LATENCY);
    assert_eq!(net.a.native_addr(), Some(addr_b()));
    assert_eq!(net.a.reflexive_addr(), Some(addr_a()));
    assert_eq!(net.a.rtt(), Some(2 * LATENCY));
    assert!(net.errors.is_empty(), "{:?}", net.errors);
}

/// B behind a filtering NAT comes up `late` seconds after A: A's probes
/// died at B's NAT until then. B's first probe (answered: A's NAT is open
/// since A probed) also opens B's NAT towards A, and A, hearing a peer that
/// was silent, probes again at once instead of at its next round or retry.
/// Returns how long after A's start A carried data natively.
fn native_after_a_late_peer(late: f64, b_mapped: Option<SocketAddr>) -> Duration {
    // B is not up yet: a machine that never probes nor answers stands in.
    let mut net = Net::new(auto(), forced(Force::Quic));
    net.filter_b = true;
    net.b_mapped = b_mapped;
    net.flight.clear();
    net.b_opened = false;
    net.send_a = true;
    net.run_until(net.t(late));
    assert_eq!(net.a.current(), PathKind::Quic, "{:?}", net.a);
    let now = net.now;
    net.b = PathMachine::new(
        auto(),
        GeId(2),
        GeId(1),
        &KEY,
        vec![addr_a()],
        UNIX + 60,
        now,
    );
    net.drain();
    net.run_for(Duration::from_secs(30));
    assert!(net.errors.is_empty(), "{:?}", net.errors);
    let at = *net
        .switches(Side::A, PathKind::Native)
        .first()
        .unwrap_or_else(|| panic!("A never went native: {:?}", net.a));
    at - net.start
}

#[test]
fn a_peer_coming_up_behind_a_filtering_nat_is_probed_again_at_once() {
    // A is in its first rounds (the next is due at 1 s): native within a
    // few latencies of B's first probe.
    let took = native_after_a_late_peer(0.3, None);
    assert!(
        took < Duration::from_secs_f64(0.3) + 5 * LATENCY,
        "A went native {took:?} after it started"
    );
    // The same when B's NAT maps B's probe port to another port towards A
    // (address-dependent mapping): A learns it from B's probe
    // (peer-reflexive) and probes there, the only place that gets in.
    let mapped: SocketAddr = "198.18.0.2:40001".parse().unwrap();
    let took = native_after_a_late_peer(0.3, Some(mapped));
    assert!(
        took < Duration::from_secs_f64(0.3) + 5 * LATENCY,
        "A went native {took:?} after it started (peer-reflexive)"
    );
    // A had fallen back (retries at 4 s and 6 s, the next at 10 s): a
    // trial starts at once, and native data switches it within two
    // active-interval rounds.
    let took = native_after_a_late_peer(6.5, None);
    let bound =
        Duration::from_secs_f64(6.5) + 2 * PathConfig::default().active_interval() + 5 * LATENCY;
    assert!(
        took < bound,
        "A went native {took:?} after it started (bound {bound:?})"
    );
}

/// Blocks every native packet (probes and data) at several points of the
/// probe cycle while A sends a one-way transfer: A is on QUIC within 3 s.
#[test]
fn native_blocked_mid_transfer_falls_back_within_3s() {
    for offset_ms in (0..600).step_by(37) {
        let mut net = Net::new(auto(), auto());
        net.send_a = true;
        net.run_until(net.t(10.0));
        assert_eq!(net.a.current(), PathKind::Native);
        let block = net.t(10.0) + Duration::from_millis(offset_ms);
        net.run_until(block);
        net.block_probes = true;
        net.block_data = true;
        net.run_until(block + Duration::from_secs(3));
        assert_eq!(
            net.a.current(),
            PathKind::Quic,
            "offset {offset_ms} ms {:?} {:?} {:?}",
            net.a.stats(),
            net.a.poll_timeout().map(|(t, k)| (t - net.start, k)),
            net.now - net.start
        );
        assert_eq!(net.a.status().to_string(), "quic (native probe failed 3x)");
        let fell = net.switches(Side::A, PathKind::Quic)[0];
        assert!(
            fell - block <= Duration::from_secs(3),
            "offset {offset_ms}: {:?}",
            fell - block
        );
        assert!(net.a.stats().probes_lost >= 3);
    }
}

/// Probes (UDP) pass but the raw data packets are dropped: the peer's
/// count in the answers shows it, and A falls back within 3 s.
#[test]
fn data_dropped_but_probes_pass_falls_back_within_3s() {
    let mut net = Net::new(auto(), auto());
    net.send_a = true;
    net.run_until(net.t(5.0));
    assert_eq!(net.a.current(), PathKind::Native);
    net.block_data = true;
    net.run_until(net.t(8.0));
    let fell = net
        .events
        .iter()
        .find(|(_, s, e)| {
            *s == Side::A
                && matches!(
                    e,
                    PathEvent::Switched {
                        to: PathKind::Quic,
                        ..
                    }
                )
        })
        .unwrap();
    assert!(fell.0 - net.t(5.0) <= Duration::from_secs(3));
    assert_eq!(
        fell.2,
        PathEvent::Switched {
            from: PathKind::Native,
            to: PathKind::Quic,
            reason: Reason::DataNotDelivered { checks: 3 }
        }
    );
    assert!(net.a.stats().data_checks_failed >= 3);
    let fell_at = fell.0;
    // Probes alone cannot show the data would pass: each retry is a trial
    // with native copies while QUIC keeps the data, and every trial fails
    // without ever putting the flow back on the dead path.
    net.run_until(net.t(120.0));
    assert_eq!(net.a.current(), PathKind::Quic);
    assert_eq!(
        net.a.status().to_string(),
        "quic (native data not delivered 1x)"
    );
    assert_eq!(net.switches(Side::A, PathKind::Quic).len(), 1);
    assert!(
        net.switches(Side::A, PathKind::Native)
            .iter()
            .all(|t| *t < fell_at)
    );
    let st = net.a.stats();
    assert!(st.trials >= 4 && st.trials_failed == st.trials, "{st:?}");
    // The firewall goes: the next trial sees the copies arrive.
    net.block_data = false;
    net.run_until(net.t(150.0));
    assert_eq!(net.a.current(), PathKind::Native);
}

/// The peer counts data on another thread than the one that answers
/// probes: its answers carry counts that run ahead of what was sent before
/// the probe. Once the sender goes quiet every packet was delivered, and
/// the idle checks must not count the early ones as missing later (they
/// did: "native data not delivered 3x" after an iperf3 run in the lab).
#[test]
fn a_peer_whose_counts_run_ahead_of_the_probes_is_not_taken_for_stalled() {
    let mut net = Net::new(auto(), auto());
    net.probe_delay = Duration::from_millis(30);
    net.send_a = true;
    net.data_every = Duration::from_millis(2);
    net.run_until(net.t(8.0));
    assert_eq!(net.a.current(), PathKind::Native);
    net.send_a = false;
    net.run_until(net.t(20.0));
    assert!(
        net.switches(Side::A, PathKind::Quic).is_empty(),
        "{}",
        net.a.status()
    );
    assert_eq!(net.a.stats().data_checks_failed, 0);
}

/// When A first fell back to QUIC.
fn first_fallback(net: &Net) -> Instant {
    net.switches(Side::A, PathKind::Quic)
        .first()
        .copied()
        .expect("a fell back to QUIC")
}

/// The other side of the same change: a peer whose count includes packets
/// this node never counted as sent (NAT punch copies, duplicates) banks no
/// credit beyond what was sent, so a stall after it still falls back
/// within 3 s.
#[test]
fn counts_beyond_what_was_sent_hide_no_later_stall() {
    let mut net = Net::new(auto(), auto());
    net.probe_delay = Duration::from_millis(4);
    net.send_a = true;
    net.data_every = Duration::from_millis(2);
    net.run_until(net.t(5.0));
    assert_eq!(net.a.current(), PathKind::Native);
    for _ in 0..500 {
        let now = net.now;
        net.b.handle_native_data_received(now);
    }
    net.run_until(net.t(6.0));
    // Blocked, and the sender backs off to a trickle (as TCP does).
    net.block_data = true;
    net.data_every = Duration::from_millis(300);
    let blocked = net.now;
    net.run_until(net.t(10.0));
    let fell = first_fallback(&net);
    assert!(
        fell - blocked <= Duration::from_secs(3),
        "fell back after {:?}",
        fell - blocked
    );
}

/// A stalled TCP sender: its dropped segments come back only as one
/// retransmission per timeout, fewer packets between two answers than the
/// data check needs; the undelivered packets add up from the last delivery,
/// so the fallback still comes within 3 s (the lab found the per-answer
/// count blind to this).
#[test]
fn a_trickle_of_undelivered_packets_still_falls_back_within_3s() {
    let mut net = Net::new(auto(), auto());
    net.send_a = true;
    net.run_until(net.t(5.0));
    assert_eq!(net.a.current(), PathKind::Native);
    net.block_data = true;
    // One packet every 300 ms: at most two between answers.
    net.data_every = Duration::from_millis(300);
    net.run_until(net.t(9.0));
    let fell = net
        .events
        .iter()
        .find(|(_, s, e)| {
            *s == Side::A
                && matches!(
                    e,
                    PathEvent::Switched {
                        to: PathKind::Quic,
                        ..
                    }
                )
        })
        .expect("a fell back to QUIC");
    assert!(
        fell.0 - net.t(5.0) <= Duration::from_secs(3),
        "fell back after {:?}",
        fell.0 - net.t(5.0)
    );
}

/// The lab's case exactly: a TCP sender at full speed when the firewall
/// starts dropping its raw packets sends the rest of its window at once,
/// then only retransmissions after 0.2, 0.6, 1.4 and 3.0 s. The window
/// sent after the path died must count as undelivered even though the
/// first answer after it still shows deliveries from before: the fallback
/// comes within 2.5 s wherever the probe rounds fall.
#[test]
fn a_stalled_tcp_window_falls_back_within_2_5s() {
    for offset_ms in [0u64, 90, 180, 270, 360, 450] {
        let mut net = Net::new(auto(), auto());
        net.send_a = true;
        net.data_every = Duration::from_millis(1);
        let death = net.t(5.0) + Duration::from_millis(offset_ms);
        net.run_until(death);
        assert_eq!(net.a.current(), PathKind::Native);
        net.send_a = false;
        net.block_data = true;
        // The rest of the window, sent right after the path died.
        for _ in 0..50 {
            let now = net.now;
            net.a.handle_native_data_sent(now);
        }
        for rto in [0.2, 0.6, 1.4, 3.0] {
            net.run_until(death + Duration::from_secs_f64(rto));
            if net.a.current() == PathKind::Quic {
                break;
            }
            let now = net.now;
            net.a.handle_native_data_sent(now);
        }
        net.run_until(death + Duration::from_secs(4));
        let fell = first_fallback(&net);
        assert!(
            fell - death <= Duration::from_millis(2500),
            "offset {offset_ms} ms: fell back after {:?}",
            fell - death
        );
    }
}

/// The other end of the lab's TCP case: B sends only a few ACKs, too few
/// for its own data check. A's notice (over QUIC) moves B to QUIC at once;
/// B's retries then wait in their trial while B is idle, and a trickle of
/// copies that never arrives keeps B off native for as long as the block
/// lasts, probes passing or not.
#[test]
fn a_peers_notice_moves_a_quiet_end_off_native_until_its_data_gets_through() {
    let mut net = Net::new(auto(), auto());
    net.send_a = true;
    net.run_until(net.t(5.0));
    assert_eq!(net.b.current(), PathKind::Native);
    net.block_data = true;
    net.run_until(net.t(8.0));
    assert_eq!(net.a.current(), PathKind::Quic);
    assert_eq!(net.a.stats().notices_sent, 1);
    assert_eq!(net.b.stats().notices_received, 1);
    let b_fell = net.switches(Side::B, PathKind::Quic);
    assert_eq!(b_fell.len(), 1);
    let a_fell = net.switches(Side::A, PathKind::Quic)[0];
    assert!(
        b_fell[0] - a_fell <= LATENCY * 2,
        "{:?}",
        b_fell[0] - a_fell
    );
    // B idle: its retry's answer starts a trial that waits for data.
    net.run_until(net.t(30.0));
    assert_eq!(net.b.status().to_string(), "quic (trying native)");
    // B sends a trickle that the firewall drops: its trials fail.
    net.send_b = true;
    net.data_every = Duration::from_millis(300);
    net.run_until(net.t(90.0));
    assert_eq!(net.b.current(), PathKind::Quic);
    assert!(net.b.stats().trials_failed >= 1, "{:?}", net.b.stats());
    assert_eq!(net.switches(Side::B, PathKind::Native).len(), 1);
    // The block goes: both come back.
    net.block_data = false;
    net.run_until(net.t(125.0));
    assert_eq!(net.a.current(), PathKind::Native);
    assert_eq!(net.b.current(), PathKind::Native);
}

/// Notices are authenticated and replay-protected like probes.
#[test]
fn a_forged_or_replayed_notice_changes_nothing() {
    let mut net = Net::new(auto(), auto());
    net.send_a = true;
    net.send_b = true;
    net.run_until(net.t(5.0));
    net.block_data = true;
    net.run_until(net.t(8.0));
    let notice = net
        .wire
        .iter()
        .find(|(s, _, b)| *s == Side::A && b[1] == probe::TYPE_NOTICE)
        .map(|(_, _, b)| b.clone())
        .expect("a sent a notice");
    net.block_data = false;
    net.run_until(net.t(40.0));
    assert_eq!(net.b.current(), PathKind::Native);
    let now = net.now;
    assert!(matches!(
        net.b.handle_notice(&notice, now),
        Err(Error::ProbeReplay { .. })
    ));
    let mut forged = notice.clone();
    forged[12] ^= 1;
    assert!(net.b.handle_notice(&forged, now).is_err());
    assert_eq!(net.b.current(), PathKind::Native);
    assert_eq!(net.b.stats().notices_received, 1);
}

/// A long block (the retry delay reaches its cap), lifted at several
/// points: native again within 30 s.
#[test]
fn block_lifted_returns_to_native_within_30s() {
    for lift_s in [130.0, 131.3, 137.7, 142.1, 149.9] {
        let mut net = Net::new(auto(), auto());
        net.send_a = true;
        net.send_b = true;
        net.run_until(net.t(5.0));
        net.block_probes = true;
        net.block_data = true;
        net.run_until(net.t(lift_s));
        assert_eq!(net.a.current(), PathKind::Quic);
        net.block_probes = false;
        net.block_data = false;
        let lift = net.now;
        net.run_until(lift + Duration::from_secs(30));
        assert_eq!(net.a.current(), PathKind::Native, "lift at {lift_s}");
        assert_eq!(net.b.current(), PathKind::Native, "lift at {lift_s}");
        let back = *net.switches(Side::A, PathKind::Native).last().unwrap();
        assert!(
            back > lift && back - lift <= Duration::from_secs(26),
            "lift {lift_s}"
        );
        assert_eq!(net.a.status().to_string(), "native");
    }
}

/// The path flaps every 2 s: each stay on QUIC lasts at least the retry
/// delay, which doubles up to its cap, so switches slow down instead of
/// following the flapping.
#[test]
fn flapping_does_not_switch_faster_than_the_backoff() {
    let mut net = Net::new(auto(), auto());
    net.send_a = true;
    let mut t = 2.0;
    while t < 300.0 {
        net.run_until(net.t(t));
        net.block_probes = !net.block_probes;
        net.block_data = net.block_probes;
        t += 2.0;
    }
    let down = net.switches(Side::A, PathKind::Quic);
    let up = net.switches(Side::A, PathKind::Native);
    assert!(down.len() >= 4, "{} fallbacks", down.len());
    let cfg = auto();
    for (k, d) in down.iter().enumerate() {
        let Some(u) = up.iter().find(|u| *u > d) else {
            continue;
        };
        let min = (cfg.retry_initial * 2u32.pow(k as u32)).min(cfg.retry_max);
        assert!(*u - *d >= min, "stay {k} on quic {:?} < {:?}", *u - *d, min);
    }
    // 300 s of flapping every 2 s: far fewer than the 75 flaps.
    assert!(down.len() <= 15, "{} fallbacks", down.len());
}

/// Native fails each time right after it comes back, and heals as soon as
/// A is on QUIC: every stay on QUIC is exactly one retry delay, doubling
/// from 1 s to the 25 s cap; native held for `stable_after` resets it.
#[test]
fn retry_delay_doubles_to_its_cap_and_resets_after_a_stable_period() {
    let mut net = Net::new(auto(), auto());
    net.send_a = true;
    net.run_until(net.t(1.0));
    let mut stays = Vec::new();
    for round in 0..9 {
        if round == 8 {
            // Stable for longer than `stable_after`.
            net.run_for(Duration::from_secs(61));
        }
        net.block_probes = true;
        net.block_data = true;
        while net.a.current() == PathKind::Native {
            net.run_for(Duration::from_millis(10));
        }
        let down = net.now;
        net.block_probes = false;
        net.block_data = false;
        while net.a.current() == PathKind::Quic {
            net.run_for(Duration::from_millis(10));
        }
        stays.push((net.now - down).as_secs_f64());
    }
    // Each stay is the retry delay plus the trial's one probe round.
    let delays: Vec<u64> = stays.iter().map(|s| s.floor() as u64).collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 25, 25, 25, 1], "{stays:?}");
}

/// Probes still outstanding when native fails are abandoned: their answers
/// arriving late cannot switch straight back (only a retry can).
#[test]
fn late_answer_after_fallback_does_not_switch_back() {
    let mut net = Net::new(auto(), auto());
    net.send_a = true;
    net.run_until(net.t(5.0));
    net.block_probes = true;
    net.block_data = true;
    while net.a.current() == PathKind::Native {
        net.run_for(Duration::from_millis(10));
    }
    let (_, _, last) = net
        .wire
        .iter()
        .rev()
        .find(|(s, _, b)| *s == Side::A && b[1] == probe::TYPE_PROBE)
        .cloned()
        .unwrap();
    let now = net.now;
    net.b.handle_probe(&last, addr_a(), now).unwrap();
    let answer = net.b.poll_transmit().unwrap();
    net.a
        .handle_probe_answer(answer.payload(), addr_b(), now)
        .unwrap();
    assert_eq!(net.a.current(), PathKind::Quic);
    assert_eq!(net.a.stats().answers_late, 1);
    assert_eq!(net.a.poll_timeout().unwrap().1, Timer::Retry);
}

#[test]
fn forced_quic_never_probes_and_answers_no_probes() {
    let mut net = Net::new(forced(Force::Quic), auto());
    net.run_until(net.t(60.0));
    assert_eq!(net.probes_sent(Side::A), 0);
    assert!(net.sent.iter().all(|(_, s, _)| *s == Side::B));
    assert_eq!(net.a.current(), PathKind::Quic);
    assert_eq!(net.a.status().to_string(), "quic (forced)");
    assert_eq!(net.a.poll_timeout(), None);
    // B's probes go unanswered: B stays on QUIC.
    assert_eq!(net.b.current(), PathKind::Quic);
    assert_eq!(net.b.status().to_string(), "quic (native probe failed 3x)");
    assert!(net.events.iter().all(|(_, s, _)| *s == Side::B));
}

#[test]
fn forced_native_never_falls_back_but_reports_the_failure() {
    let mut net = Net::new(forced(Force::Native), auto());
    assert_eq!(net.a.status().to_string(), "native (forced)");
    net.send_a = true;
    net.run_until(net.t(5.0));
    net.block_probes = true;
    net.block_data = true;
    net.run_until(net.t(20.0));
    assert_eq!(net.a.current(), PathKind::Native);
    assert_eq!(
        net.a.status().to_string(),
        "native (forced; native probe failed 3x)"
    );
    assert!(net.switches(Side::A, PathKind::Quic).is_empty());
    assert!(net.events.iter().any(|(_, s, e)| *s == Side::A
        && *e
            == PathEvent::Reason {
                path: PathKind::Native,
                reason: Reason::ProbeFailed { lost: 3 }
            }));
    net.block_probes = false;
    net.block_data = false;
    net.run_until(net.t(60.0));
    assert_eq!(net.a.status().to_string(), "native (forced)");
}

#[test]
fn replayed_answer_and_probe_are_refused_and_counted() {
    let mut net = Net::new(auto(), auto());
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.a.current(), PathKind::Native);
    let (_, _, answer) = net
        .wire
        .iter()
        .find(|(s, _, b)| *s == Side::B && b[1] == probe::TYPE_ANSWER)
        .cloned()
        .unwrap();
    let (_, _, probe_b) = net
        .wire
        .iter()
        .find(|(s, _, b)| *s == Side::A && b[1] == probe::TYPE_PROBE)
        .cloned()
        .unwrap();
    let before = (net.a.status(), net.a.stats().probes_answered);
    let now = net.now;
    assert!(matches!(
        net.a.handle_probe_answer(&answer, addr_b(), now),
        Err(Error::ProbeReplay { .. })
    ));
    assert_eq!(net.a.stats().replays_refused, 1);
    assert_eq!((net.a.status(), net.a.stats().probes_answered), before);
    assert!(matches!(
        net.b.handle_probe(&probe_b, addr_a(), now),
        Err(Error::ProbeReplay { .. })
    ));
    assert_eq!(net.b.stats().replays_refused, 1);
    assert!(
        net.b.poll_transmit().is_none(),
        "a replayed probe got an answer"
    );
}

/// Answers pile up only to a bound when nobody drains them.
#[test]
fn transmit_queue_is_bounded() {
    let mut net = Net::new(auto(), auto());
    net.drain();
    let key = ProbeKey::new(&KEY);
    let mut buf = [0u8; probe::MAX_LEN];
    let now = net.now;
    for seq in 0..100 {
        let p = ProbeRepr {
            kind: ProbeKind::Probe,
            sender: GeId(1),
            receiver: GeId(2),
            seq,
            timestamp: 0,
            rx_native: 0,
            to: addr_b(),
            observed: None,
        };
        let n = p.emit(&key, &mut buf).unwrap();
        let r = net.b.handle_probe(&buf[..n], addr_a(), now);
        // The first probe of a silent peer also sends b's round again.
        assert_eq!(r.is_ok(), seq < 63, "seq {seq}: {r:?}");
    }
    assert_eq!(net.b.stats().punches, 1);
    assert_eq!(net.b.stats().transmits_dropped, 37);
    assert_eq!(std::iter::from_fn(|| net.b.poll_transmit()).count(), 64);
}

#[test]
fn answer_to_no_outstanding_probe_is_refused() {
    let mut net = Net::new(auto(), auto());
    let key = ProbeKey::new(&KEY);
    let forged = ProbeRepr {
        kind: ProbeKind::Answer,
        sender: GeId(2),
        receiver: GeId(1),
        seq: 12345,
        timestamp: 0,
        rx_native: 0,
        to: addr_a(),
        observed: Some(addr_a()),
    };
    let mut buf = [0u8; probe::MAX_LEN];
    let n = forged.emit(&key, &mut buf).unwrap();
    let now = net.now;
    assert_eq!(
        net.a.handle_probe_answer(&buf[..n], addr_b(), now),
        Err(Error::UnsolicitedAnswer { seq: 12345 })
    );
    assert_eq!(net.a.stats().replays_refused, 1);
    assert_eq!(net.a.current(), PathKind::Quic);
}

#[test]
fn wrong_key_is_refused_and_counted() {
    let mut net = Net::with(auto(), auto(), vec![addr_b()], [4; 32]);
    net.run_until(net.t(10.0));
    assert_eq!(net.a.current(), PathKind::Quic);
    assert_eq!(net.b.current(), PathKind::Quic);
    assert!(net.b.stats().bad_tags >= 3);
    assert_eq!(net.a.stats().probes_answered, 0);
    assert!(
        net.errors
            .iter()
            .all(|(_, e)| *e == Error::BadMac("path probe"))
    );
}

#[test]
fn reflected_and_misdirected_datagrams_are_refused() {
    let mut net = Net::new(auto(), auto());
    let (_, _, own) = net.wire[0].clone();
    let now = net.now;
    // A's own probe sent back to it.
    assert_eq!(
        net.a.handle_probe(&own, addr_b(), now),
        Err(Error::ProbePeerMismatch {
            sender: 1,
            receiver: 2
        })
    );
    // A probe handed in as an answer.
    assert!(matches!(
        net.b.handle_probe_answer(&own, addr_a(), now),
        Err(Error::InvalidField { .. })
    ));
    assert_eq!(
        net.a
            .handle_datagram(&own[..10], addr_b(), now)
            .unwrap_err(),
        Error::Truncated {
            what: "path probe header",
            needed: 35,
            available: 10
        }
    );
    assert_eq!(net.a.stats().misdirected, 1);
    assert_eq!(net.b.stats().misdirected, 1);
    assert_eq!(net.a.stats().malformed, 1);
}

/// Documented rule: an authenticated answer from another address than the
/// one probed is accepted; native keeps the probed address.
#[test]
fn answer_from_unexpected_address_is_accepted_and_counted() {
    let mut net = Net::new(auto(), auto());
    let probe_a = net.wire[0].2.clone();
    let now = net.now;
    net.b.handle_probe(&probe_a, addr_a(), now).unwrap();
    let answer = net.b.poll_transmit().unwrap();
    let other: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    net.a
        .handle_probe_answer(answer.payload(), other, now)
        .unwrap();
    assert_eq!(net.a.current(), PathKind::Native);
    assert_eq!(net.a.native_addr(), Some(addr_b()));
    assert_eq!(net.a.answer_source(), Some(other));
    assert_eq!(net.a.stats().answers_from_other_address, 1);
}

#[test]
fn first_answering_candidate_is_kept() {
    let dead: SocketAddr = "192.0.2.7:7717".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::2]:7717".parse().unwrap();
    let mut net = Net::with(auto(), auto(), vec![dead, v6, addr_b(), dead], KEY);
    assert_eq!(net.a.candidates(), &[dead, v6, addr_b()]);
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.a.current(), PathKind::Native);
    assert_eq!(net.a.native_addr(), Some(addr_b()));
    // Steady state probes the chosen address only.
    let before = net.wire.len();
    net.run_until(net.t(60.0));
    assert!(
        net.wire[before..]
            .iter()
            .filter(|(s, _, _)| *s == Side::A)
            .all(|(_, d, _)| *d == addr_b())
    );
    // The chosen address disappears: probing restarts on QUIC.
    let now = net.now;
    net.a.set_candidates(vec![dead], now);
    assert_eq!(net.a.current(), PathKind::Quic);
    net.a.set_candidates(vec![], now);
    assert_eq!(net.a.status().to_string(), "quic (no native address)");
    assert_eq!(net.a.poll_timeout(), None);
}

#[test]
fn no_raw_socket_means_quic_until_available() {
    let mut net = Net::new(auto(), auto());
    net.run_for(Duration::from_millis(100));
    let now = net.now;
    net.a
        .handle_native_unavailable(Unavailable::NoRawSocket, now);
    assert_eq!(net.a.status().to_string(), "quic (no raw socket)");
    assert_eq!(net.a.poll_timeout(), None);
    net.drain();
    let sent = net.probes_sent(Side::A);
    net.run_until(net.t(30.0));
    assert_eq!(net.probes_sent(Side::A), sent);
    // B's probes are not answered either: B falls back.
    assert_eq!(net.b.current(), PathKind::Quic);
    let now = net.now;
    net.a.handle_native_available(now);
    net.drain();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.a.current(), PathKind::Native);
}

#[test]
fn idle_native_path_sends_keepalives_only() {
    let mut net = Net::new(auto(), auto());
    net.run_until(net.t(1.0));
    let before = net.probes_sent(Side::A);
    net.run_until(net.t(61.0));
    // 60 s at one probe every 15 s.
    assert_eq!(net.probes_sent(Side::A) - before, 4);
    assert_eq!(net.a.poll_timeout().unwrap().1, Timer::NextProbe);
    // Sending natively speeds probing up to the active interval.
    net.send_a = true;
    let before = net.probes_sent(Side::A);
    net.run_until(net.t(71.0));
    let active = net.probes_sent(Side::A) - before;
    assert!((18..=21).contains(&active), "{active} probes in 10 s");
}

#[test]
fn active_interval_fits_the_detect_budget() {
    let cfg = auto();
    assert_eq!(cfg.active_interval(), Duration::from_millis(500));
    assert!(cfg.active_interval() * cfg.fail_after + cfg.probe_timeout <= Duration::from_secs(3));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random loss, jitter (reordering), blocks and forces: nothing panics,
    /// the status is consistent at every checkpoint, and after the network
    /// heals both ends of an auto pair end on native.
    #[test]
    fn random_schedules_end_in_a_defined_state(
        seed in 1u64..,
        loss in 0u64..60,
        jitter_ms in 0u64..400,
        blocks in proptest::collection::vec((0u64..100, 0u64..30, 0u8..3), 0..6),
        force_a in 0u8..3,
        send in 0u8..4,
    ) {
        let force = [Force::Auto, Force::Native, Force::Quic][force_a as usize];
        let mut net = Net::new(forced(force), auto());
        net.rng = seed;
        net.loss_percent = loss;
        net.jitter = Duration::from_millis(jitter_ms);
        net.send_a = send & 1 != 0;
        net.send_b = send & 2 != 0;
        let mut blocks = blocks;
        blocks.sort();
        for (start, len, what) in blocks {
            net.run_until(net.t(start as f64).max(net.now));
            check(&net.a);
            check(&net.b);
            net.block_probes = what != 1;
            net.block_data = what != 0;
            net.run_for(Duration::from_secs(len));
            net.block_probes = false;
            net.block_data = false;
        }
        net.loss_percent = 0;
        net.run_for(Duration::from_secs(40));
        check(&net.a);
        check(&net.b);
        match force {
            Force::Quic => prop_assert_eq!(net.b.current(), PathKind::Quic),
            // An end that sends is back on native; an idle one after a
            // fallback waits in its trial for data to test the path with.
            _ => {
                for (m, sends) in [(&net.a, net.send_a), (&net.b, net.send_b)] {
                    let st = m.status();
                    if sends || force == Force::Native && std::ptr::eq(m, &net.a) {
                        prop_assert_eq!(m.current(), PathKind::Native, "{}", st);
                    } else {
                        prop_assert!(
                            st.to_string() == "native" || st.to_string() == "quic (trying native)",
                            "{}", st
                        );
                    }
                }
                if net.send_b {
                    prop_assert_eq!(net.b.status().to_string(), "native");
                }
            }
        }
    }
}

/// Invariants of one machine's status.
fn check(m: &PathMachine) {
    let s = m.status();
    match s.force {
        Force::Native => assert_eq!(s.path, PathKind::Native),
        Force::Quic => assert_eq!(s.to_string(), "quic (forced)"),
        Force::Auto => assert_eq!(s.path == PathKind::Native, s.reason == Reason::Answered),
    }
    assert!(m.poll_timeout().is_some() || s.force == Force::Quic || s.path == PathKind::Quic);
}

#[test]
fn a_move_takes_quic_at_once_and_brings_native_back_after_one_round() {
    let mut net = Net::new(auto(), auto());
    net.run_for(2 * LATENCY);
    assert_eq!(net.a.current(), PathKind::Native);
    let probes = net.probes_sent(Side::A);
    let now = net.now;
    net.a.handle_local_change(now);
    net.drain();
    // Unproven from the new address: QUIC, with the reason, and a probe
    // round queued at once (not at the next periodic check).
    assert_eq!(net.a.current(), PathKind::Quic);
    assert_eq!(
        net.a.status().to_string(),
        "quic (moved; probing native again)"
    );
    net.run_for(2 * LATENCY);
    assert!(net.probes_sent(Side::A) > probes);
    assert_eq!(net.a.current(), PathKind::Native);
    let back = *net.switches(Side::A, PathKind::Native).last().unwrap();
    assert!(back - now <= 2 * LATENCY, "{:?}", back - now);
    assert!(net.errors.is_empty(), "{:?}", net.errors);
}

#[test]
fn a_move_changes_nothing_while_native_is_forced_off() {
    let mut net = Net::new(forced(Force::Quic), auto());
    net.run_for(2 * LATENCY);
    let now = net.now;
    net.a.handle_local_change(now);
    assert_eq!(net.a.status().to_string(), "quic (forced)");
}

#[test]
fn a_peer_probing_from_a_new_address_is_followed_there() {
    let mut net = Net::new(auto(), auto());
    net.run_for(2 * LATENCY);
    assert_eq!(net.a.native_addr(), Some(addr_b()));
    // B moves: its datagrams now come from (and reach it at) another
    // address, and its watcher makes it probe again at once.
    let moved: SocketAddr = "198.18.7.2:7717".parse().unwrap();
    net.b_mapped = Some(moved);
    let now = net.now;
    net.b.handle_local_change(now);
    net.drain();
    net.run_for(4 * LATENCY);
    assert_eq!(net.a.stats().peer_moves, 1);
    assert_eq!(net.a.current(), PathKind::Native);
    assert_eq!(
        net.a.native_addr(),
        Some(moved),
        "A follows B to its new address"
    );
    assert_eq!(net.b.current(), PathKind::Native);
    assert!(net.errors.is_empty(), "{:?}", net.errors);
}

#[test]
fn a_peer_probing_from_another_known_address_is_no_move() {
    // B is known at two addresses (say its LAN one and its NAT's); its
    // probes coming from the second one keep A's native path.
    let other: SocketAddr = "198.18.7.3:7717".parse().unwrap();
    let mut net = Net::with(auto(), auto(), vec![addr_b(), other], KEY);
    net.run_for(2 * LATENCY);
    assert_eq!(net.a.native_addr(), Some(addr_b()));
    net.b_mapped = Some(other);
    let now = net.now;
    net.b.handle_local_change(now);
    net.drain();
    net.run_for(4 * LATENCY);
    assert_eq!(net.a.stats().peer_moves, 0);
}

/// Issue 12: a peer's move is followed only on its own fresh, authenticated
/// probe. A third party replaying one of its probes from another address,
/// or sending one under another key, moves nothing.
#[test]
fn a_replayed_or_forged_probe_from_a_new_address_moves_nothing() {
    let mut net = Net::new(auto(), auto());
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.a.native_addr(), Some(addr_b()));
    let (_, _, probe_b) = net
        .wire
        .iter()
        .find(|(s, _, b)| *s == Side::B && b[1] == probe::TYPE_PROBE)
        .cloned()
        .unwrap();
    let elsewhere: SocketAddr = "198.18.66.6:7717".parse().unwrap();
    let now = net.now;
    assert!(matches!(
        net.a.handle_probe(&probe_b, elsewhere, now),
        Err(Error::ProbeReplay { .. })
    ));
    // The same probe with its tag broken (what a node without the pair's
    // key can send).
    let mut forged = probe_b.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    assert!(net.a.handle_probe(&forged, elsewhere, now).is_err());
    assert_eq!(net.a.stats().peer_moves, 0);
    assert_eq!(net.a.current(), PathKind::Native);
    assert_eq!(net.a.native_addr(), Some(addr_b()));
    assert!(!net.a.candidates().contains(&elsewhere));
}

/// Issue 12, the Binding Update: B moves and sends its moved message; A
/// acknowledges it, probes B again (QUIC meanwhile) and follows B to its
/// new address; B's message is acknowledged once.
#[test]
fn a_moved_message_is_acknowledged_and_the_peer_probes_the_new_address() {
    let mut net = Net::new(auto(), auto());
    net.run_for(2 * LATENCY);
    assert_eq!(net.a.current(), PathKind::Native);
    let moved: SocketAddr = "198.18.7.2:7717".parse().unwrap();
    net.b_mapped = Some(moved);
    let now = net.now;
    net.b.handle_local_change(now);
    net.b.send_moved(now);
    assert!(net.b.moved_pending());
    net.drain();
    net.run_for(4 * LATENCY);
    assert_eq!(net.a.stats().moved_received, 1);
    assert_eq!(net.b.stats().moved_acked, 1);
    assert!(!net.b.moved_pending());
    assert!(net.a.stats().peer_moves >= 1);
    assert_eq!(net.a.native_addr(), Some(moved));
    assert_eq!(net.a.current(), PathKind::Native);
    // Acknowledged: not sent again.
    let sent = net.b.stats().moved_sent;
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.b.stats().moved_sent, sent);
    assert!(net.errors.is_empty(), "{:?}", net.errors);
}

/// Unacknowledged moved messages are sent again with a doubling delay, and
/// at most MOVED_TRIES times in all.
#[test]
fn an_unanswered_moved_message_is_retransmitted_a_bounded_number_of_times() {
    let mut net = Net::new(auto(), auto());
    net.run_for(2 * LATENCY);
    net.loss_percent = 100;
    let now = net.now;
    net.b.send_moved(now);
    net.drain();
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.b.stats().moved_sent, u64::from(MOVED_TRIES));
    assert!(!net.b.moved_pending(), "given up after the last try");
    let times: Vec<_> = net
        .sent
        .iter()
        .filter(|(_, s, k)| *s == Side::B && *k == ProbeKind::Moved)
        .map(|(t, _, _)| *t - now)
        .collect();
    assert_eq!(times[1], MOVED_RETRY);
    assert_eq!(times[2], MOVED_RETRY * 3);
}

/// Forced QUIC: no probing, but the moved message is still acknowledged
/// (the ack is how the mover knows the carrier gets through).
#[test]
fn a_moved_message_is_acknowledged_with_native_forced_off() {
    let mut net = Net::new(forced(Force::Quic), forced(Force::Quic));
    let now = net.now;
    net.b.send_moved(now);
    net.drain();
    net.run_for(4 * LATENCY);
    assert_eq!(net.b.stats().moved_acked, 1);
    assert_eq!(net.a.status().to_string(), "quic (forced)");
    assert_eq!(net.a.stats().peer_moves, 0);
}

/// A third party replaying B's moved message (or its ack), or sending one
/// it made without the pair's key, changes nothing but counters.
#[test]
fn a_forged_or_replayed_moved_message_changes_nothing() {
    let mut net = Net::new(auto(), auto());
    net.run_for(2 * LATENCY);
    let now = net.now;
    net.b.send_moved(now);
    net.drain();
    net.run_for(4 * LATENCY);
    let wire = |k: u8, side: Side| {
        net.wire
            .iter()
            .find(|(s, _, b)| *s == side && b[1] == k)
            .map(|(_, _, b)| b.clone())
            .unwrap()
    };
    let moved_b = wire(probe::TYPE_MOVED, Side::B);
    let ack_a = wire(probe::TYPE_MOVED_ACK, Side::A);
    let moves = net.a.stats().peer_moves;
    let elsewhere: SocketAddr = "198.18.66.6:7717".parse().unwrap();
    let now = net.now;
    assert!(matches!(
        net.a.handle_moved(&moved_b, elsewhere, now),
        Err(Error::ProbeReplay { .. })
    ));
    let mut forged = moved_b.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    assert!(matches!(
        net.a.handle_moved(&forged, elsewhere, now),
        Err(Error::BadMac(_))
    ));
    // A moved message made under another key (a node without the pair's).
    let mut other = PathMachine::new(
        auto(),
        GeId(2),
        GeId(1),
        &[9; 32],
        vec![addr_a()],
        UNIX + 5,
        now,
    );
    other.send_moved(now);
    let t = std::iter::from_fn(|| other.poll_transmit())
        .find(|t| t.kind == ProbeKind::Moved)
        .unwrap();
    assert!(net.a.handle_moved(t.payload(), elsewhere, now).is_err());
    assert!(
        net.b.handle_moved_ack(&ack_a).is_err(),
        "an ack counts once"
    );
    assert_eq!(net.a.stats().peer_moves, moves);
    assert_eq!(net.a.stats().moved_received, 1);
    assert!(!net.a.candidates().contains(&elsewhere));
    assert!(net.a.stats().replays_refused >= 1 && net.a.stats().bad_tags >= 2);
}

/// A moved message that came through a relay names no address: its source
/// is the relay's stand-in for the peer (port 0). Acknowledged and probed
/// again from the candidates there are; no candidate is made of it.
#[test]
fn a_moved_message_through_a_relay_makes_no_candidate() {
    let mut net = Net::new(auto(), auto());
    net.run_for(2 * LATENCY);
    let before = net.a.candidates().to_vec();
    net.loss_percent = 100;
    let now = net.now;
    net.b.send_moved(now);
    net.drain();
    let moved_b = net
        .wire
        .iter()
        .rev()
        .find(|(s, _, b)| *s == Side::B && b[1] == probe::TYPE_MOVED)
        .map(|(_, _, b)| b.clone())
        .unwrap();
    let relayed: SocketAddr = "[100::2]:0".parse().unwrap();
    net.a.handle_moved(&moved_b, relayed, now).unwrap();
    assert_eq!(net.a.stats().moved_received, 1);
    assert_eq!(net.a.stats().peer_moves, 1);
    assert_eq!(net.a.candidates(), &before[..]);
    assert!(
        std::iter::from_fn(|| net.a.poll_transmit()).any(|t| t.kind == ProbeKind::MovedAck),
        "acknowledged"
    );
}
