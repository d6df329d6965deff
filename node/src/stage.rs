//! A pipeline stage on a thread of its own: the driver fills batches, the
//! stage's thread does the system calls that hand them to the kernel.
//!
//! The node's data path is one driver task (the core is single-threaded,
//! note 14). What a packet costs after the core is done with it is mostly
//! kernel work in the caller's context: a raw `sendmmsg` runs the route
//! lookup, the output hooks, the device's transmit and, on a veth, the
//! peer's receive path; a TUN write runs the host's own receive path (TCP
//! processing, waking the application). A stage moves that work to a
//! second core, so the driver seals or opens the next batch meanwhile:
//! the two stages the QUIC carrier gets from quinn's endpoint task
//! (docs/DESIGN-NOTES.md note 49).
//!
//! Batches travel in a fixed pool ([`POOL`] of them), allocated once and
//! recycled: nothing is allocated per packet. When every batch is with the
//! thread, the driver waits for one to come back (the thread is behind:
//! backpressure, as a synchronous send gave before); when the thread is
//! gone, [`Stage::send`] gives the batch back for the caller to send.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// Batches in flight between the driver and a stage's thread, at most.
pub const POOL: usize = 8;

/// What a stage's thread counts, read by the driver.
#[derive(Debug, Default)]
struct Counters {
    refused: AtomicU64,
    batches: AtomicU64,
}

/// The driver's handle on a stage: its thread and its pool of batches `B`.
#[derive(Debug)]
pub struct Stage<B> {
    to_thread: Option<SyncSender<B>>,
    returned: Receiver<B>,
    /// Batches the thread gave back, not yet reused.
    free: Vec<B>,
    /// Batches with the thread.
    outstanding: usize,
    allocated: usize,
    counters: Arc<Counters>,
    refused_seen: u64,
    thread: Option<JoinHandle<()>>,
}

impl<B: Default + Send + 'static> Stage<B> {
    /// Starts thread `name`, which runs `work` on every batch handed to it
    /// (`work` empties the batch and returns how many of its packets the
    /// kernel refused).
    pub fn start(name: &str, mut work: impl FnMut(&mut B) -> u64 + Send + 'static) -> Result<Self> {
        let (to_thread, batches) = sync_channel::<B>(POOL);
        let (give_back, returned) = sync_channel::<B>(POOL);
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Ok(mut b) = batches.recv() {
                    let refused = work(&mut b);
                    c.batches.fetch_add(1, Ordering::Relaxed);
                    if refused > 0 {
                        c.refused.fetch_add(refused, Ordering::Relaxed);
                    }
                    // The driver may have stopped: the batch is dropped then.
                    let _ = give_back.send(b);
                }
            })
            .map_err(|source| Error::Io {
                what: format!("starting the {name} thread"),
                source,
            })?;
        Ok(Self {
            to_thread: Some(to_thread),
            returned,
            free: Vec::with_capacity(POOL),
            outstanding: 0,
            allocated: 0,
            counters,
            refused_seen: 0,
            thread: Some(thread),
        })
    }

    /// An empty batch to fill: one the thread gave back, a new one while
    /// the pool is not all allocated, else the next one the thread gives
    /// back (waiting: the thread is behind). `None` when the thread is gone
    /// with every batch.
    pub fn empty_batch(&mut self) -> Option<B> {
        self.reclaim();
        if let Some(b) = self.free.pop() {
            return Some(b);
        }
        if self.allocated < POOL {
            self.allocated += 1;
            return Some(B::default());
        }
        let b = self.returned.recv().ok()?;
        self.outstanding -= 1;
        Some(b)
    }

    /// Whether the thread holds no batch: what the caller does itself now
    /// cannot overtake a batch handed over earlier.
    pub fn is_idle(&mut self) -> bool {
        self.reclaim();
        self.outstanding == 0
    }

    /// Whether the thread is still there.
    pub fn is_running(&self) -> bool {
        self.to_thread.is_some()
    }

    /// Hands a filled batch to the thread. `Err` gives it back when the
    /// thread is gone (the caller does the work itself).
    pub fn send(&mut self, batch: B) -> std::result::Result<(), B> {
        match &self.to_thread {
            // Never blocks: at most POOL batches exist.
            Some(tx) => {
                tx.send(batch).map_err(|e| e.0)?;
                self.outstanding += 1;
                Ok(())
            }
            None => Err(batch),
        }
    }

    /// Packets the kernel refused since the last call.
    pub fn take_refused(&mut self) -> u64 {
        let total = self.counters.refused.load(Ordering::Relaxed);
        let new = total - self.refused_seen;
        self.refused_seen = total;
        new
    }

    /// Batches the thread has done.
    pub fn batches_done(&self) -> u64 {
        self.counters.batches.load(Ordering::Relaxed)
    }

    /// Takes the batches the thread gave back.
    fn reclaim(&mut self) {
        loop {
            match self.returned.try_recv() {
                Ok(b) => {
                    self.outstanding -= 1;
                    self.free.push(b);
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    // The thread is gone: what it held is lost with it.
                    self.outstanding = 0;
                    self.to_thread = None;
                    return;
                }
            }
        }
    }
}

impl<B> Drop for Stage<B> {
    /// Lets the thread finish what it holds, then waits for it.
    fn drop(&mut self) {
        self.to_thread = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Batch(Vec<u32>);

    #[test]
    fn batches_are_worked_in_order_and_reused() {
        let (seen_tx, seen) = std::sync::mpsc::channel();
        let mut stage = Stage::<Batch>::start("test-stage", move |b| {
            for v in b.0.drain(..) {
                seen_tx.send(v).unwrap();
            }
            u64::from(b.0.capacity() == 0)
        })
        .unwrap();
        let mut next = 0;
        for _ in 0..10 * POOL {
            let mut b = stage.empty_batch().unwrap();
            assert!(b.0.is_empty(), "a batch comes back emptied");
            for _ in 0..3 {
                b.0.push(next);
                next += 1;
            }
            assert!(stage.send(b).is_ok());
        }
        assert!(stage.allocated <= POOL, "never more than the pool");
        drop(stage);
        let got: Vec<u32> = seen.try_iter().collect();
        assert_eq!(got, (0..next).collect::<Vec<_>>());
    }

    #[test]
    fn a_stage_without_its_thread_gives_batches_back() {
        let mut stage = Stage::<Batch>::start("test-stage", |_| panic!("the thread dies")).unwrap();
        let b = stage.empty_batch().unwrap();
        assert!(stage.send(b).is_ok());
        // The thread panics on that batch and is gone: the next batch
        // comes from the pool and is given back to the caller.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stage.is_running() && std::time::Instant::now() < end {
            stage.is_idle();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!stage.is_running());
        let b = stage.empty_batch().unwrap();
        assert!(stage.send(b).is_err());
    }
}
