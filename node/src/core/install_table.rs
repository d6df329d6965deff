//! A worker's table of installs, split in shards by the key's hash so
//! that a sweep can go through it a bounded piece at a time (design note
//! 83): a step of the periodic sweep takes whole shards until it looked at
//! [`STEP_LOOKS`] installs, so neither a table of 100 000 live flows (a look
//! at each, 4-5 ms in one call before) nor one whose flows all ended (a
//! free of each) pauses the thread that carries packets for more than a
//! step. A shard also grows by itself: the rehash of a growing table moves
//! one shard's installs, not the whole table's.

use std::hash::BuildHasher;

use fpn_proto::flow::{FastHasher, FastMap};

use super::installs::{Install, InstallKey};

/// Installs a shard holds at the table's capacity, about: the table has
/// as many shards as its capacity needs of these (a power of two).
const SHARD_TARGET: usize = 512;

/// Most shards a table has: enough for the largest `max_flows` (4 194 304
/// flows, 5 242 880 installs) at [`SHARD_TARGET`]; a bound only against an
/// absurd capacity (each empty shard is a few dozen bytes, and a step
/// walks the empty ones too).
const MAX_SHARDS: usize = 16_384;

/// Installs a sweep step looks at: it stops after the shard that brings it
/// to this many, or at the last shard (a step takes whole shards, four to
/// eight of a full table).
pub const STEP_LOOKS: usize = 2048;

type Shard = FastMap<InstallKey, Install>;

/// The installs of one worker, sharded by key.
pub struct InstallTable {
    shards: Box<[Shard]>,
    /// Picks a key's shard; each shard's map hashes with its own seed, so
    /// the shard says nothing of a key's place inside it.
    hasher: FastHasher,
    mask: usize,
    len: usize,
    /// The next shard a sweep step takes.
    cursor: usize,
}

impl InstallTable {
    /// A table sized for about `capacity` installs (it holds any number:
    /// the worker bounds it).
    pub fn for_capacity(capacity: usize) -> Self {
        let n = capacity
            .div_ceil(SHARD_TARGET)
            .next_power_of_two()
            .clamp(1, MAX_SHARDS);
        Self {
            shards: (0..n).map(|_| Shard::default()).collect(),
            hasher: FastHasher::default(),
            mask: n - 1,
            len: 0,
            cursor: 0,
        }
    }

    fn shard_of(&self, key: &InstallKey) -> usize {
        // The table's own seed: a shard's keys still spread over its map.
        (self.hasher.hash_one(key) >> 32) as usize & self.mask
    }

    /// The install for `key`.
    pub fn get(&self, key: &InstallKey) -> Option<&Install> {
        self.shards[self.shard_of(key)].get(key)
    }

    /// The install for `key`, to change.
    pub fn get_mut(&mut self, key: &InstallKey) -> Option<&mut Install> {
        let s = self.shard_of(key);
        self.shards[s].get_mut(key)
    }

    /// Whether an install for `key` is held.
    pub fn contains_key(&self, key: &InstallKey) -> bool {
        self.shards[self.shard_of(key)].contains_key(key)
    }

    /// Holds `install` under `key`, replacing the one there.
    pub fn insert(&mut self, key: InstallKey, install: Install) {
        let s = self.shard_of(&key);
        if self.shards[s].insert(key, install).is_none() {
            self.len += 1;
        }
    }

    /// Installs held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No install held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps only the installs `keep` says to, in every shard: a whole
    /// pass, so the next step starts a new one from the first shard.
    pub fn retain(&mut self, mut keep: impl FnMut(&Install) -> bool) {
        for s in 0..self.shards.len() {
            self.retain_shard(s, &mut keep);
        }
        self.cursor = 0;
    }

    /// One step of a sweep: keeps only what `keep` says to in the next
    /// shards, whole ones, until it looked at [`STEP_LOOKS`] installs or
    /// reached the last shard. True when the step took the last shard (the
    /// next step starts from the first again).
    pub fn retain_step(&mut self, mut keep: impl FnMut(&Install) -> bool) -> bool {
        let mut looked = 0;
        while looked < STEP_LOOKS && self.cursor < self.shards.len() {
            looked += self.retain_shard(self.cursor, &mut keep);
            self.cursor += 1;
        }
        let through = self.cursor == self.shards.len();
        if through {
            self.cursor = 0;
        }
        through
    }

    /// Retains in shard `s`; the installs it looked at.
    fn retain_shard(&mut self, s: usize, keep: &mut impl FnMut(&Install) -> bool) -> usize {
        let shard = &mut self.shards[s];
        let before = shard.len();
        shard.retain(|_, i| keep(i));
        self.len -= before - shard.len();
        before
    }

    /// The most installs one shard holds.
    #[cfg(test)]
    pub fn largest_shard(&self) -> usize {
        self.shards.iter().map(Shard::len).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::installs::flow_for_test as flow;
    use super::*;

    fn install(n: u32) -> Install {
        Install::inbound_for_test(flow(n)).0
    }

    /// `n` installs sharing one cipher state (a table's behaviour does not
    /// depend on it; 100 000 of their own would be 150 MB).
    fn filled(capacity: usize, n: u32) -> InstallTable {
        let mut t = InstallTable::for_capacity(capacity);
        let one = install(0);
        for k in 0..n {
            let mut i = one.clone();
            i.key = InstallKey::Native(flow(k));
            t.insert(i.key, i);
        }
        t
    }

    /// The shard counts the docs quote (NODE.md, note 83), and the bounds.
    #[test]
    fn shards_follow_the_capacity() {
        let shards = |c| InstallTable::for_capacity(c).shards.len();
        assert_eq!(shards(0), 1);
        assert_eq!(shards(512), 1);
        assert_eq!(shards(513), 2);
        assert_eq!(shards(81_920), 256, "the default 65 536 flows");
        assert_eq!(shards(125_020), 256, "flow_scale's 100 000 flows");
        assert_eq!(shards(5_242_880), 16_384, "the largest max_flows");
        assert_eq!(shards(usize::MAX), MAX_SHARDS);
    }

    /// A whole-table retain in the middle of a pass ends it: the next step
    /// starts from the first shard, and a pass from there looks at each
    /// install once.
    #[test]
    fn a_whole_retain_starts_the_next_pass_from_the_first_shard() {
        let mut t = filled(20_000, 10_000);
        assert!(!t.retain_step(|_| true), "a pass of several steps");
        t.retain(|_| true);
        let mut looked = 0;
        while !t.retain_step(|_| {
            looked += 1;
            true
        }) {}
        assert_eq!(looked, 10_000);
    }

    /// A step of a sweep looks at a bounded share of a table of 100 000
    /// installs, whatever they are (a look at each install is a cache
    /// miss: a whole-table step of 100 000 live flows paused the thread
    /// 4-5 ms, design note 83), and the steps of a pass together look at
    /// each install once.
    #[test]
    fn a_sweep_step_looks_at_a_bounded_share_of_the_table() {
        let mut t = filled(125_000, 100_000);
        assert_eq!(t.len(), 100_000);
        let bound = STEP_LOOKS + t.largest_shard();
        assert!(bound < 4 * STEP_LOOKS, "shards too large: {bound}");
        let (mut steps, mut total) = (0, 0);
        loop {
            let mut looked = 0;
            let through = t.retain_step(|_| {
                looked += 1;
                true
            });
            assert!(looked <= bound, "a step looked at {looked}");
            total += looked;
            steps += 1;
            if through {
                break;
            }
        }
        assert_eq!(total, 100_000, "a pass looks at each install once");
        assert!(steps >= 100_000 / bound, "{steps} steps");
        assert_eq!(t.len(), 100_000);
    }

    /// What a step drops leaves the count right; a whole-table retain
    /// starts the next pass from the first shard.
    #[test]
    fn dropping_keeps_the_count_and_lookups_right() {
        let mut t = filled(4096, 3000);
        let gone = install(7).key;
        let mut looked = 0;
        while !t.retain_step(|i| {
            looked += 1;
            i.key != gone
        }) {}
        assert_eq!(looked, 3000);
        assert_eq!(t.len(), 2999);
        assert!(t.get(&gone).is_none());
        let kept = install(8);
        assert!(t.contains_key(&kept.key));
        assert!(t.get_mut(&kept.key).is_some());
        t.insert(kept.key, kept);
        assert_eq!(t.len(), 2999, "a replaced install is not counted twice");
        t.retain(|_| false);
        assert_eq!(t.len(), 0);
        assert_eq!(t.largest_shard(), 0);
    }
}
