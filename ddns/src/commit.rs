//! The commit thread: the zone's only writer.
//!
//! It takes every update and API change from one bounded queue, in batches:
//! all jobs waiting when it wakes are evaluated in one transaction, written
//! to sled in one atomic batch and made durable by one flush (group
//! commit), then published to the zone, and only then answered. While one
//! flush runs, the next batch gathers in the queue, so the flush cost is
//! shared by every update in flight.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use tokio::sync::oneshot;
use tracing::{debug, error, info, info_span};

use crate::Error;
use crate::answer::{PendingUpdate, update_response};
use crate::server::{Counters, Shared};
use crate::store::Store;
use crate::wire::Rcode;
use crate::zone::{ApiChange, Txn};

/// Most jobs in one commit.
pub const MAX_BATCH: usize = 1024;
/// Capacity of the job queue; beyond it updates are answered SERVFAIL.
pub const QUEUE: usize = 4096;

/// Work for the commit thread.
pub enum Job {
    /// An authenticated RFC 2136 update.
    Update {
        /// The update.
        pending: PendingUpdate,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// A change from the embedding API.
    Api {
        /// The change.
        change: ApiChange,
        /// Receives the zone serial after the commit.
        reply: oneshot::Sender<Result<u32, Error>>,
    },
}

/// Where the answer to an update goes.
pub enum ReplyTo {
    /// A UDP datagram to `peer` from the socket the request came in on.
    Udp {
        /// The server socket.
        socket: Arc<UdpSocket>,
        /// The client.
        peer: SocketAddr,
    },
    /// A channel (TCP connections wait on it).
    Channel(oneshot::Sender<Vec<u8>>),
}

impl ReplyTo {
    fn send(self, bytes: Vec<u8>) {
        match self {
            Self::Udp { socket, peer } => {
                if let Err(e) = socket.send_to(&bytes, peer) {
                    debug!(%peer, error = %e, "sending an update answer failed");
                }
            }
            Self::Channel(tx) => {
                let _ = tx.send(bytes); // the connection may be gone
            }
        }
    }
}

/// Runs until every sender of `jobs` is gone.
///
/// After a storage error it refuses every later change (fail-stop): what
/// reached the disk is unknown, and serving on would let the zone in memory
/// and the one on disk drift apart. A restart reloads from disk.
pub fn run(shared: Arc<Shared>, mut store: Store, jobs: Receiver<Msg>) {
    let mut failed = false;
    let mut replays = ReplayCache::default();
    let mut stop = false;
    while !stop {
        let Ok(first) = jobs.recv() else { break };
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Job(job) => batch.push(job),
                Msg::Stop => {
                    stop = true;
                    break;
                }
            }
            next = if batch.len() < MAX_BATCH {
                jobs.try_recv().ok()
            } else {
                None
            };
        }
        if batch.is_empty() {
            continue;
        }
        if failed {
            refuse(batch);
        } else {
            failed = !commit(&shared, &mut store, &mut replays, batch);
        }
    }
    debug!("commit thread finished");
}

/// What goes through the commit queue.
// Nearly every message is a Job: boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Msg {
    /// A change to commit.
    Job(Job),
    /// Commit what came before, then end the thread (senders may remain:
    /// connections still being torn down get SERVFAIL).
    Stop,
}

/// Answers a batch without touching the zone (after a storage failure).
fn refuse(batch: Vec<Job>) {
    let now = crate::unix_now();
    for job in batch {
        match job {
            Job::Update { pending, reply } => {
                reply.send(update_response(&pending, Rcode::SERVFAIL, now))
            }
            Job::Api { reply, .. } => {
                let _ = reply.send(Err(Error::Commit(
                    "storage failed earlier; restart the server".into(),
                )));
            }
        }
    }
}

/// Commits one batch; `false` when storage failed.
fn commit(shared: &Shared, store: &mut Store, replays: &mut ReplayCache, batch: Vec<Job>) -> bool {
    let _span = info_span!("commit", jobs = batch.len()).entered();
    let now = crate::unix_now();
    let zone = shared.zone.read().unwrap_or_else(|e| e.into_inner());
    let mut txn = Txn::new(&zone);
    let results: Vec<Result<(), Rejected>> = batch
        .iter()
        .map(|job| match job {
            Job::Update { pending, .. } => {
                if let Some(rcode) = replays.get(&pending.request_mac) {
                    // A retransmission, or a replay: answer as the first
                    // time, apply nothing again.
                    info!(key = %pending.key.name(), %rcode, "update seen before: not applied again");
                    return if rcode == Rcode::NOERROR { Ok(()) } else { Err(Rejected::Update(rcode)) };
                }
                let r = txn.update(&pending.msg, pending.key.policy());
                match &r {
                    Ok(()) => debug!(key = %pending.key.name(), "update accepted"),
                    Err((rcode, reason)) => {
                        info!(key = %pending.key.name(), %rcode, reason, "update rejected")
                    }
                }
                r.map_err(|(rc, _)| Rejected::Update(rc))
            }
            Job::Api { change, .. } => txn.api(change).map_err(Rejected::Api),
        })
        .collect();
    let changes = txn.finish();
    let serial_before = zone.serial();
    drop(zone);

    let committed: Result<u32, String> = match changes {
        Ok(None) => Ok(serial_before),
        Ok(Some(cs)) => {
            match timed(|| store.write(&cs)).and_then(|w| Ok((w, timed(|| store.flush())?))) {
                Ok((write_us, sync_us)) => {
                    let mut zone = shared.zone.write().unwrap_or_else(|e| e.into_inner());
                    if let Err(e) = zone.apply(&cs) {
                        // Checked while merging; reaching this is a bug, and the
                        // stored data stays right for the next start.
                        error!(error = %e, "publishing a durable change failed");
                    }
                    drop(zone);
                    info!(
                        serial = cs.serial,
                        names = cs.nodes.len(),
                        write_us,
                        sync_us,
                        "zone changed"
                    );
                    shared.serial_changed(cs.serial);
                    Ok(cs.serial)
                }
                Err(e) => {
                    error!(error = %e, "storage failed: updates answered SERVFAIL, further updates refused until restart");
                    Err(e.to_string())
                }
            }
        }
        Err(e) => {
            error!(error = %e, "preparing the commit failed");
            Err(e.to_string())
        }
    };

    let stored = committed.is_ok();
    for (job, result) in batch.into_iter().zip(results) {
        match job {
            Job::Update { pending, reply } => {
                let rcode = match (&result, &committed) {
                    (Err(Rejected::Update(rc)), _) => *rc,
                    (Err(Rejected::Api(_)), _) => Rcode::SERVFAIL,
                    (Ok(()), Ok(_)) => Rcode::NOERROR,
                    (Ok(()), Err(_)) => Rcode::SERVFAIL,
                };
                if rcode != Rcode::SERVFAIL {
                    replays.insert(&pending, rcode, now);
                }
                let c = &shared.counters;
                Counters::add(
                    if rcode == Rcode::NOERROR {
                        &c.updates_applied
                    } else {
                        &c.updates_refused
                    },
                    1,
                );
                reply.send(update_response(&pending, rcode, now));
            }
            Job::Api { reply, .. } => {
                let r = match (result, &committed) {
                    (Err(Rejected::Api(e)), _) => Err(e),
                    (Err(Rejected::Update(rc)), _) => Err(Error::Commit(rc.to_string())),
                    (Ok(()), Ok(serial)) => Ok(*serial),
                    (Ok(()), Err(e)) => Err(Error::Commit(e.clone())),
                };
                if r.is_ok() {
                    Counters::add(&shared.counters.api_changes, 1);
                }
                let _ = reply.send(r);
            }
        }
    }
    stored
}

/// Runs a storage step and returns how long it took, in microseconds.
fn timed(f: impl FnOnce() -> Result<(), Error>) -> Result<u64, Error> {
    let t = std::time::Instant::now();
    f()?;
    Ok(t.elapsed().as_micros() as u64)
}

/// Most remembered update signatures; beyond it the oldest are forgotten.
const REPLAY_MAX: usize = 100_000;

/// The MACs of recent updates with the RCODE they got, kept while their
/// signatures are still within the fudge window: a retransmitted update gets
/// the same answer, a replayed one changes nothing.
#[derive(Default)]
struct ReplayCache {
    seen: std::collections::HashMap<Vec<u8>, Rcode>,
    expiry: std::collections::VecDeque<(u64, Vec<u8>)>,
}

impl ReplayCache {
    fn get(&self, mac: &[u8]) -> Option<Rcode> {
        self.seen.get(mac).copied()
    }

    fn insert(&mut self, p: &PendingUpdate, rcode: Rcode, now: u64) {
        while let Some((until, _)) = self.expiry.front() {
            if *until >= now && self.expiry.len() < REPLAY_MAX {
                break;
            }
            if let Some((_, mac)) = self.expiry.pop_front() {
                self.seen.remove(&mac);
            }
        }
        if self.seen.insert(p.request_mac.clone(), rcode).is_none() {
            self.expiry
                .push_back((p.valid_until, p.request_mac.clone()));
        }
    }
}

/// Why a job of a batch was not applied.
enum Rejected {
    Update(Rcode),
    Api(Error),
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::rr::Name;
    use hickory_proto::rr::rdata::SOA;

    use super::*;
    use crate::zone::Zone;

    fn n(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    /// An empty `home.fpn.` zone at serial 50 and its initialised store.
    fn fresh_zone() -> (tempfile::TempDir, Name, Zone, Store) {
        let dir = tempfile::tempdir().unwrap();
        let origin = n("home.fpn.");
        let soa = SOA::new(
            n("ns1.home.fpn."),
            n("h.home.fpn."),
            50,
            3600,
            600,
            86400,
            60,
        );
        let zone = Zone::new_empty(&origin, soa, 3600, &[n("ns1.home.fpn.")]).unwrap();
        let mut store = Store::open(dir.path(), &origin).unwrap();
        let seed: Vec<_> = zone.snapshot().iter().map(|n| n.data().clone()).collect();
        store.init(&seed).unwrap();
        (dir, origin, zone, store)
    }

    /// One batch of many jobs: one serial, every job answered, durable.
    #[test]
    fn a_batch_commits_once_and_answers_every_job() {
        let (dir, origin, zone, mut store) = fresh_zone();
        let shared = Shared::new(zone, Default::default(), store.journal_reader());
        let mut rxs = Vec::new();
        let mut batch = Vec::new();
        for i in 0..10u8 {
            let (tx, rx) = oneshot::channel();
            let name = if i == 9 {
                n("x.other.")
            } else {
                n(&format!("h{i}.home.fpn."))
            };
            let change = ApiChange::SetGe {
                name,
                ttl: 60,
                a: Some([198, 18, 0, i].into()),
                aaaa: None,
                lips: vec![],
            };
            batch.push(Job::Api { change, reply: tx });
            rxs.push(rx);
        }
        commit(&shared, &mut store, &mut ReplayCache::default(), batch);
        let results: Vec<_> = rxs
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap())
            .collect();
        for r in &results[..9] {
            assert_eq!(r.as_ref().unwrap(), &51, "one serial for the whole batch");
        }
        assert!(
            matches!(results[9], Err(Error::Name { .. })),
            "a bad job fails alone"
        );
        assert_eq!(shared.zone.read().unwrap().serial(), 51);
        drop(shared);
        let reopened = Store::open(dir.path(), &origin);
        drop(store);
        assert!(reopened.is_err(), "still open: the store is locked");
        // sled lets go of its lock file when its own threads have stopped,
        // a moment after the drop on a loaded machine: wait for it, bounded.
        let t0 = std::time::Instant::now();
        let store = loop {
            match Store::open(dir.path(), &origin) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() < std::time::Duration::from_secs(5) => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("the store stayed locked after its drop: {e}"),
            }
        };
        let zone = Zone::from_nodes(&origin, store.load().unwrap()).unwrap();
        assert_eq!((zone.serial(), zone.len()), (51, 10));
    }

    /// A failed flush answers SERVFAIL / an error, publishes nothing, and
    /// every later change is refused until a restart.
    #[test]
    fn a_storage_failure_stops_further_changes() {
        let (_dir, _origin, zone, mut store) = fresh_zone();
        store.break_sync_for_test();
        let shared = Arc::new(Shared::new(
            zone,
            Default::default(),
            store.journal_reader(),
        ));
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || run(shared, store, rx))
        };
        let set = |i: u8| {
            let (reply, done) = oneshot::channel();
            let name = n(&format!("h{i}.home.fpn."));
            let change = ApiChange::SetGe {
                name,
                ttl: 60,
                a: Some([198, 18, 0, i].into()),
                aaaa: None,
                lips: vec![],
            };
            tx.send(Msg::Job(Job::Api { change, reply })).unwrap();
            done.blocking_recv().unwrap()
        };
        assert!(matches!(set(1), Err(Error::Commit(_))));
        let second = set(2);
        assert!(
            matches!(&second, Err(Error::Commit(m)) if m.contains("restart")),
            "{second:?}"
        );
        assert_eq!(shared.zone.read().unwrap().serial(), 50);
        assert_eq!(shared.zone.read().unwrap().len(), 1);
        drop(tx);
        thread.join().unwrap();
    }

    /// The same signed update twice: the second time it is answered as the
    /// first but not applied, so it cannot undo a later change.
    #[test]
    fn a_replayed_update_is_answered_but_not_applied_again() {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
        use hickory_proto::rr::{DNSClass, RData, Record, RecordType, TSigner};

        use crate::answer::{Ctx, Outcome, handle};
        use crate::keys::{Algorithm, KeyPolicy, KeyRing, TsigKey};

        let (_dir, origin, zone, mut store) = fresh_zone();
        let mut keys = KeyRing::default();
        keys.insert(TsigKey::new(
            n("k."),
            Algorithm::HmacSha256,
            vec![3; 32],
            KeyPolicy::admin(&origin),
        ));
        let shared = Shared::new(zone, keys.clone(), store.journal_reader());
        let now = crate::unix_now();
        let signed = |rr: Record, id: u16| {
            let mut m = Message::new(id, MessageType::Query, OpCode::Update);
            m.add_query(Query::query(n("home.fpn."), RecordType::SOA));
            m.add_authority(rr);
            let signer =
                TSigner::new(vec![3; 32], TsigAlgorithm::HmacSha256, n("k."), 300).unwrap();
            m.finalize(&signer, now).unwrap();
            m.to_vec().unwrap()
        };
        let a = Record::from_rdata(
            n("x.home.fpn."),
            60,
            RData::A(std::net::Ipv4Addr::new(198, 18, 0, 1).into()),
        );
        let mut del = Record::update0(n("x.home.fpn."), 0, RecordType::A);
        del.dns_class = DNSClass::ANY;
        let (add, remove) = (signed(a, 1), signed(del, 2));
        let mut replays = ReplayCache::default();
        let mut run_one = |bytes: &[u8]| {
            let outcome = {
                let z = shared.zone.read().unwrap();
                handle(
                    &Ctx {
                        zone: &z,
                        keys: &keys,
                        now,
                        tcp: true,
                    },
                    bytes,
                    &mut Vec::new(),
                )
            };
            let Outcome::Update(pending) = outcome else {
                panic!("not an update: {outcome:?}")
            };
            let (tx, rx) = oneshot::channel();
            commit(
                &shared,
                &mut store,
                &mut replays,
                vec![Job::Update {
                    pending,
                    reply: ReplyTo::Channel(tx),
                }],
            );
            let answer = Message::from_vec(&rx.blocking_recv().unwrap()).unwrap();
            (
                answer.metadata.response_code,
                shared.zone.read().unwrap().serial(),
            )
        };
        let has_x = |s: &Shared| {
            s.zone
                .read()
                .unwrap()
                .node(&crate::zone::key_of(&n("x.home.fpn.")))
                .is_some()
        };
        assert_eq!(
            run_one(&add),
            (hickory_proto::op::ResponseCode::NoError, 51)
        );
        assert!(has_x(&shared));
        assert_eq!(
            run_one(&remove),
            (hickory_proto::op::ResponseCode::NoError, 52)
        );
        assert_eq!(
            run_one(&add),
            (hickory_proto::op::ResponseCode::NoError, 52),
            "same answer, nothing applied"
        );
        assert!(!has_x(&shared), "the replay did not undo the deletion");
    }
}
