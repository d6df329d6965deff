//! The per-flow, per-direction replay window (RFC 6479 style).
//!
//! A bitmap of the last [`REPLAY_WINDOW`] counters below the highest one
//! accepted. [`ReplayWindow::check`] runs before decryption (cheap rejection
//! of duplicates and stale packets); [`ReplayWindow::update`] runs only after
//! the packet authenticated, so forged packets can never move the window.

use crate::{Error, Result};

/// How many counters below the highest accepted one are still accepted (once
/// each). 2048 packets cover reordering on multi-path links and in batched
/// receive paths at 10 Gbit/s rates.
pub const REPLAY_WINDOW: u64 = 2048;

/// Ring of 64-bit words: one more than the window needs, so the word being
/// cleared when the window slides is never one that is still inside it.
const WORDS: usize = (REPLAY_WINDOW / 64) as usize + 1;

/// Which counters of one direction of one flow were already received.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    /// The highest counter accepted; meaningless while `any` is false.
    highest: u64,
    any: bool,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every counter is acceptable.
    pub const fn new() -> Self {
        Self {
            highest: 0,
            any: false,
            bits: [0; WORDS],
        }
    }

    /// The highest counter accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.any.then_some(self.highest)
    }

    /// Fails with [`Error::Replay`] if `counter` was already accepted or is
    /// too far below the highest accepted counter. Changes nothing.
    #[inline]
    pub fn check(&self, counter: u64) -> Result<()> {
        if !self.any || counter > self.highest {
            return Ok(());
        }
        if self.highest - counter >= REPLAY_WINDOW {
            return Err(Error::Replay { counter });
        }
        let (word, bit) = position(counter);
        if self.bits[word] & bit != 0 {
            return Err(Error::Replay { counter });
        }
        Ok(())
    }

    /// Records `counter` as received. Call only after the packet
    /// authenticated and [`ReplayWindow::check`] passed.
    #[inline]
    pub fn update(&mut self, counter: u64) {
        if !self.any {
            self.any = true;
            self.highest = counter;
        } else if counter > self.highest {
            // Clear the words the window slides over, at most the whole ring.
            let old_word = self.highest / 64;
            let new_word = counter / 64;
            let steps = (new_word - old_word).min(WORDS as u64);
            for i in 1..=steps {
                self.bits[((old_word + i) % WORDS as u64) as usize] = 0;
            }
            self.highest = counter;
        }
        let (word, bit) = position(counter);
        self.bits[word] |= bit;
    }
}

#[inline]
fn position(counter: u64) -> (usize, u64) {
    (
        ((counter / 64) % WORDS as u64) as usize,
        1u64 << (counter % 64),
    )
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(w: &mut ReplayWindow, c: u64) -> Result<()> {
        w.check(c)?;
        w.update(c);
        Ok(())
    }

    #[test]
    fn duplicates_and_old_counters_are_refused() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 0).unwrap();
        assert_eq!(accept(&mut w, 0), Err(Error::Replay { counter: 0 }));
        accept(&mut w, 5000).unwrap();
        // 5000 - 2048 = 2952 is just outside; 2953 just inside.
        assert!(accept(&mut w, 2952).is_err());
        accept(&mut w, 2953).unwrap();
        assert!(accept(&mut w, 2953).is_err());
        accept(&mut w, 4999).unwrap();
        assert!(accept(&mut w, 5000).is_err());
    }

    #[test]
    fn reordering_inside_the_window_is_accepted_once() {
        let mut w = ReplayWindow::new();
        // Deliver 0..3000 in a scrambled order that never lags more than 2047.
        let mut order: Vec<u64> = (0..3000).collect();
        for chunk in order.chunks_mut(2000) {
            chunk.reverse();
        }
        for &c in &order {
            accept(&mut w, c).unwrap();
        }
        for &c in &order[order.len() - 500..] {
            assert!(accept(&mut w, c).is_err(), "{c} accepted twice");
        }
        assert_eq!(w.highest(), Some(2999));
    }

    #[test]
    fn a_big_jump_clears_the_whole_ring() {
        let mut w = ReplayWindow::new();
        for c in 0..100 {
            accept(&mut w, c).unwrap();
        }
        let far = 1_000_000 + 64 * WORDS as u64 * 3 + 17;
        accept(&mut w, far).unwrap();
        // Every counter in the new window except `far` itself is fresh, even
        // those whose bit positions the old counters used.
        for c in far - (REPLAY_WINDOW - 1)..far {
            w.check(c).unwrap();
        }
        assert!(w.check(far).is_err());
        accept(&mut w, u64::MAX).unwrap();
        assert!(w.check(u64::MAX).is_err());
        w.check(u64::MAX - 1).unwrap();
    }

    #[test]
    fn check_alone_never_moves_the_window() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 10).unwrap();
        w.check(1_000_000).unwrap();
        // Had the check advanced the window, 9 would now be too old.
        w.check(9).unwrap();
        assert_eq!(w.highest(), Some(10));
    }
}
