//! Group commit: one sync makes every commit before it durable.
//!
//! Commits are numbered as they are applied. A caller that needs commit `n`
//! durable either finds it already synced, or waits while another caller's
//! sync runs, or runs the next sync itself (the leader); a sync covers every
//! commit applied before it started, so callers that arrive together share
//! one. A failed sync poisons the store: the state of the file since the last
//! good sync is unknown (a later fsync may report success for pages the
//! kernel already dropped), so nothing after it is acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::CommitSeq;
use crate::{Error, Result};

/// Sequence numbers and the leader/follower state of one store.
#[derive(Debug, Default)]
pub struct GroupCommit {
    committed: AtomicU64,
    synced: AtomicU64,
    rounds: AtomicU64,
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// A leader is syncing right now.
    syncing: bool,
    /// Why the store is poisoned.
    failed: Option<String>,
}

impl GroupCommit {
    /// Fails when an earlier sync failed (commits must stop then).
    pub fn check(&self) -> Result<()> {
        match &self.lock().failed {
            Some(why) => Err(Error::NotDurable(why.clone())),
            None => Ok(()),
        }
    }

    /// Records one applied commit; returns its number.
    pub fn committed_one(&self) -> CommitSeq {
        CommitSeq(self.committed.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// The latest commit.
    pub fn committed(&self) -> CommitSeq {
        CommitSeq(self.committed.load(Ordering::SeqCst))
    }

    /// The latest durable commit.
    pub fn synced(&self) -> CommitSeq {
        CommitSeq(self.synced.load(Ordering::SeqCst))
    }

    /// Sync rounds run so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Returns once `seq` is durable. `round(n)` is the sync itself (`n`
    /// counts rounds from 1); it runs without any lock held, so commits go
    /// on meanwhile and join the next round.
    pub fn sync_through(&self, seq: CommitSeq, round: impl Fn(u64) -> Result<()>) -> Result<()> {
        let mut st = self.lock();
        loop {
            if let Some(why) = &st.failed {
                return Err(Error::NotDurable(why.clone()));
            }
            if self.synced() >= seq {
                return Ok(());
            }
            if st.syncing {
                st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.syncing = true;
            // Every commit numbered up to here has been applied: this round
            // covers them all.
            let target = self.committed();
            let n = self.rounds.fetch_add(1, Ordering::SeqCst) + 1;
            drop(st);
            let r = round(n);
            st = self.lock();
            st.syncing = false;
            match r {
                Ok(()) => {
                    self.synced.fetch_max(target.0, Ordering::SeqCst);
                }
                Err(e) => {
                    tracing::error!(error = %e, "syncing the store failed; refusing changes until restarted");
                    st.failed = Some(e.to_string());
                }
            }
            self.done.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A test hook that aborts the process at a chosen point of the durability
/// path, so tests can crash it exactly between a write and its sync.
///
/// Set `FPN_GMS_FAILPOINT=after-write-before-sync` (first sync round) or
/// `after-write-before-sync:N` (the `N`-th round) in the environment of
/// `fpn-gms serve`. It costs one branch per sync round and is never set in
/// production; an unknown value refuses to open the store, so a typo in a
/// test cannot silently disarm it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// Abort after sled wrote its buffers to the file and before the fsync.
    AfterWriteBeforeSync {
        /// The sync round (from 1) that aborts.
        round: u64,
    },
}

impl Failpoint {
    /// The environment variable read by [`Failpoint::from_env`].
    pub const ENV: &'static str = "FPN_GMS_FAILPOINT";

    /// The failpoint armed in the environment, if any.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(Self::ENV) {
            Ok(v) if v.is_empty() => Ok(None),
            Ok(v) => Self::parse(&v).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Parses `after-write-before-sync[:N]`.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, round) = match s.split_once(':') {
            Some((n, r)) => (
                n,
                r.parse::<u64>()
                    .ok()
                    .filter(|r| *r > 0)
                    .ok_or_else(|| Error::Config(format!("{}={s}: bad round", Self::ENV)))?,
            ),
            None => (s, 1),
        };
        match name {
            "after-write-before-sync" => Ok(Self::AfterWriteBeforeSync { round }),
            _ => Err(Error::Config(format!(
                "{}={s}: unknown failpoint (known: after-write-before-sync[:N])",
                Self::ENV
            ))),
        }
    }

    /// Aborts the process if this failpoint is the one for `round`.
    pub fn after_write(self, round: u64) {
        let Self::AfterWriteBeforeSync { round: at } = self;
        if at == round {
            eprintln!(
                "{}: aborting after write, before sync (round {round})",
                Self::ENV
            );
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use super::*;

    #[test]
    fn commits_waiting_together_share_one_round() {
        let gc = Arc::new(GroupCommit::default());
        for _ in 0..10 {
            gc.committed_one();
        }
        // The first round is slow, so the other nine callers arrive while it
        // runs; it covers all ten commits, so no second round is needed.
        let waiters: Vec<_> = (1..=10)
            .map(|i| {
                let gc = gc.clone();
                std::thread::spawn(move || {
                    gc.sync_through(CommitSeq(i), |_| {
                        std::thread::sleep(Duration::from_millis(50));
                        Ok(())
                    })
                })
            })
            .collect();
        for w in waiters {
            w.join().unwrap().unwrap();
        }
        assert_eq!(gc.rounds(), 1);
        assert_eq!(gc.synced(), CommitSeq(10));
        // Already durable: no round at all.
        gc.sync_through(CommitSeq(7), |_| panic!("synced twice"))
            .unwrap();
    }

    #[test]
    fn a_commit_after_a_round_started_waits_for_the_next_round() {
        let gc = Arc::new(GroupCommit::default());
        gc.committed_one();
        let started = Arc::new(AtomicBool::new(false));
        let leader = {
            let (gc, started) = (gc.clone(), started.clone());
            std::thread::spawn(move || {
                gc.sync_through(CommitSeq(1), |_| {
                    started.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    Ok(())
                })
            })
        };
        while !started.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let late = gc.committed_one();
        gc.sync_through(late, |_| Ok(())).unwrap();
        leader.join().unwrap().unwrap();
        assert_eq!(gc.rounds(), 2, "the late commit needs a round of its own");
        assert_eq!(gc.synced(), late);
    }

    #[test]
    fn a_failed_sync_poisons_the_store() {
        let gc = GroupCommit::default();
        let s = gc.committed_one();
        let e = gc
            .sync_through(s, |_| Err(Error::Store("EIO (test)".into())))
            .unwrap_err();
        assert!(matches!(e, Error::NotDurable(_)), "{e}");
        assert!(matches!(gc.check(), Err(Error::NotDurable(_))));
        // A later sync does not paper over it.
        let e = gc.sync_through(s, |_| Ok(())).unwrap_err();
        assert!(matches!(e, Error::NotDurable(_)), "{e}");
        assert_eq!(gc.synced(), CommitSeq(0));
    }

    #[test]
    fn failpoint_values_parse_or_are_refused() {
        assert_eq!(
            Failpoint::parse("after-write-before-sync").unwrap(),
            Failpoint::AfterWriteBeforeSync { round: 1 }
        );
        assert_eq!(
            Failpoint::parse("after-write-before-sync:6").unwrap(),
            Failpoint::AfterWriteBeforeSync { round: 6 }
        );
        assert!(Failpoint::parse("after-write-before-sync:0").is_err());
        assert!(Failpoint::parse("before-lunch").is_err());
    }
}
