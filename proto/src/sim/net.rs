//! The simulated underlay: a tree of nodes (GEs, gateways, terminals), routes
//! through it, and a link model with latency, jitter, loss, duplication and
//! reordering, all drawn from one seeded generator.

use std::net::IpAddr;
use std::time::Duration;

/// Index of a node in a [`Sim`](super::Sim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub usize);

/// How every link hop behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// One-way delay of one hop.
    pub latency: Duration,
    /// Extra delay, uniform in `0..=jitter`, per datagram and hop.
    pub jitter: Duration,
    /// Probability that a hop loses a datagram.
    pub loss: f64,
    /// Probability that a hop delivers a datagram twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back long enough (two latencies
    /// plus the jitter) to arrive after datagrams sent later.
    pub reorder: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
        }
    }
}

impl LinkConfig {
    /// A lossy link: `loss`, and the same rate of duplicates and reordering,
    /// with jitter of half the latency.
    pub fn lossy(loss: f64) -> Self {
        let latency = Duration::from_millis(10);
        Self {
            latency,
            jitter: latency / 2,
            loss,
            duplicate: loss,
            reorder: loss,
        }
    }
}

/// SplitMix64: small, seeded, good enough for network dice.
#[derive(Debug, Clone)]
pub(crate) struct Dice(u64);

impl Dice {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub(crate) fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        out
    }

    /// The delays at which one datagram arrives over one hop (none if lost).
    pub(crate) fn hop(&mut self, link: &LinkConfig) -> Vec<Duration> {
        if self.chance(link.loss) {
            return Vec::new();
        }
        let copies = if self.chance(link.duplicate) { 2 } else { 1 };
        (0..copies)
            .map(|_| {
                let jitter = match link.jitter.as_nanos() as u64 {
                    0 => 0,
                    j => self.next_u64() % (j + 1),
                };
                let mut d = link.latency + Duration::from_nanos(jitter);
                if self.chance(link.reorder) {
                    d += link.latency * 2 + link.jitter;
                }
                d
            })
            .collect()
    }
}

/// The nodes a datagram from `from` to the node `to` passes, in order, ending
/// with `to`. `parent` gives the gateway a node sits behind (None: the
/// node is on the public underlay). Gateways are crossed between a node and
/// the lowest gateway both sit behind (which two hosts of one LAN do not cross).
pub(crate) fn route(
    parent: impl Fn(NodeId) -> Option<NodeId>,
    from: NodeId,
    to: NodeId,
) -> Vec<NodeId> {
    let chain = |mut n: NodeId| {
        let mut v = vec![n];
        // Bounded: a tree built by Sim has no cycles, but never loop forever.
        while let Some(p) = parent(n) {
            if v.len() > 64 {
                break;
            }
            v.push(p);
            n = p;
        }
        v
    };
    let (a, b) = (chain(from), chain(to));
    let lca = a
        .iter()
        .enumerate()
        .find_map(|(i, n)| b.iter().position(|m| m == n).map(|j| (i, j)));
    let (i, j) = lca.unwrap_or((a.len(), b.len()));
    let mut path: Vec<NodeId> = a[1..i.max(1)].to_vec();
    if j == 0 {
        // `to` is a gateway `from` sits behind.
        path.push(to);
        return path;
    }
    path.extend(b[1..j].iter().rev());
    path.push(to);
    path
}

/// Finds the node with underlay address `addr`.
pub(crate) fn node_by_addr<'a>(
    addrs: impl Iterator<Item = &'a IpAddr>,
    addr: IpAddr,
) -> Option<NodeId> {
    addrs
        .enumerate()
        .find(|(_, a)| **a == addr)
        .map(|(i, _)| NodeId(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cross_the_right_gateways() {
        // 0: public GES; 1: GEN; 2: terminal behind 1; 3: GES behind 1; 4: GEA; 5: server behind 4
        let parents = [None, None, Some(1), Some(1), None, Some(4)];
        let p = |n: NodeId| parents[n.0].map(NodeId);
        let r = |a, b| {
            route(p, NodeId(a), NodeId(b))
                .iter()
                .map(|n| n.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(r(0, 2), [1, 2]);
        assert_eq!(r(2, 0), [1, 0]);
        assert_eq!(r(2, 5), [1, 4, 5]);
        assert_eq!(r(2, 3), [3]);
        assert_eq!(r(3, 1), [1]);
        assert_eq!(r(1, 3), [3]);
        assert_eq!(r(0, 4), [4]);
    }

    #[test]
    fn dice_follow_their_probabilities() {
        let mut d = Dice::new(7);
        let hits = (0..10_000).filter(|_| d.chance(0.2)).count();
        assert!((1_700..2_300).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| d.chance(0.0)));
        let lossless = LinkConfig::default();
        assert_eq!(d.hop(&lossless), [lossless.latency]);
    }
}
