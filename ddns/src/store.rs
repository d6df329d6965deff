//! Persistence of the zone in sled.
//!
//! One tree, three key spaces, so a whole commit is one atomic
//! `apply_batch`: `n` + name key → the name's records; `j` + sequence →
//! an IXFR journal entry; `m…` → metadata (the zone's name). A commit is
//! durable after [`Store::flush`], which the commit thread calls once per
//! batch of updates (group commit) before any of them is answered.
//!
//! Record encoding (format 1): owner name (wire, case kept), record count,
//! then per record type, TTL, RDLENGTH, RDATA (names uncompressed).

use std::collections::BTreeMap;
use std::path::Path;

use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, Restrict};
use tracing::debug;

use crate::Error;
use crate::answer::name_wire_case;
use crate::zone::node::rdata_bytes;
use crate::zone::{ChangeSet, Diff, NameKey, NodeData, RrSet, key_of, type_allowed};

const FORMAT: u8 = 1;
const ORIGIN_KEY: &[u8] = b"m/origin";
/// Journal entries kept for IXFR; older clients get a full transfer.
pub const JOURNAL_MAX: u64 = 1000;

/// The zone's database (owned by the commit thread).
pub struct Store {
    db: sled::Db,
    /// sled's log file. sled 0.34 ends a flush with `sync_file_range`,
    /// which neither flushes the device cache nor commits metadata; an
    /// `fdatasync` on this file after every flush makes commits durable.
    log: std::fs::File,
    next_seq: u64,
}

/// Read access to the IXFR journal, for transfer handlers.
#[derive(Clone)]
pub struct JournalReader {
    db: sled::Db,
}

impl Store {
    /// Opens (or creates) the database in `dir` for zone `origin`.
    pub fn open(dir: &Path, origin: &Name) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)?;
        let db = open_db(dir)?;
        let want = key_of(origin);
        match db.get(ORIGIN_KEY)? {
            Some(stored) if stored.as_ref() != want.as_ref() => {
                let stored = Name::from_bytes(&stored)
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "?".into());
                return Err(Error::ZoneMismatch {
                    stored,
                    configured: origin.to_string(),
                });
            }
            Some(_) => {}
            None => {
                db.insert(ORIGIN_KEY, want.as_ref())?;
            }
        }
        let next_seq = match db.scan_prefix(b"j").next_back() {
            Some(entry) => seq_of(&entry?.0)? + 1,
            None => 0,
        };
        let log = std::fs::File::open(dir.join("db"))?;
        // The directory entries of a new database must survive a crash too.
        std::fs::File::open(dir)?.sync_all()?;
        Ok(Self { db, log, next_seq })
    }

    /// A handle for reading the journal from other threads.
    pub fn journal_reader(&self) -> JournalReader {
        JournalReader {
            db: self.db.clone(),
        }
    }

    /// All stored names. Empty for a new database.
    pub fn load(&self) -> Result<Vec<NodeData>, Error> {
        let mut nodes = Vec::new();
        for entry in self.db.scan_prefix(b"n") {
            let (_, value) = entry?;
            nodes.push(decode_node(&value)?);
        }
        Ok(nodes)
    }

    /// Writes the initial zone (a new database).
    pub fn init(&mut self, nodes: &[NodeData]) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for n in nodes {
            batch.insert(node_key(&key_of(&n.name)), encode_node(n)?);
        }
        self.db.apply_batch(batch)?;
        self.flush()
    }

    /// Writes a change set and its journal entry, atomically. Not durable
    /// until [`Store::flush`].
    pub fn write(&mut self, cs: &ChangeSet) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for (key, node) in &cs.nodes {
            match node {
                Some(n) => batch.insert(node_key(key), encode_node(n)?),
                None => batch.remove(node_key(key)),
            }
        }
        let seq = self.next_seq;
        batch.insert(journal_key(seq).to_vec(), encode_diff(cs)?);
        if let Some(old) = seq.checked_sub(JOURNAL_MAX) {
            batch.remove(journal_key(old).to_vec());
        }
        self.db.apply_batch(batch)?;
        self.next_seq += 1;
        Ok(())
    }

    /// Makes everything written so far durable (fsync).
    pub fn flush(&self) -> Result<(), Error> {
        let bytes = self.db.flush()?;
        self.log.sync_data()?;
        debug!(bytes, "zone flushed");
        Ok(())
    }
}

#[cfg(test)]
impl Store {
    /// Makes every later flush fail (the sync goes to a pipe, which
    /// `fdatasync` rejects), to test what happens when the disk fails.
    pub(crate) fn break_sync_for_test(&mut self) {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two new descriptors; we own the read end
        // from here on and close the write end.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            libc::close(fds[1]);
            self.log = std::fs::File::from_raw_fd(fds[0]);
        }
    }
}

impl JournalReader {
    /// The diffs that lead from serial `from` to the newest version, oldest
    /// first; `None` when the journal does not reach back to `from`.
    pub fn diffs_since(&self, from: u32) -> Result<Option<Vec<Diff>>, Error> {
        let serial_at = |v: &[u8], at: usize| {
            v.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let mut out = Vec::new();
        let mut found = false;
        let mut newest = None;
        for entry in self.db.scan_prefix(b"j") {
            let (_, value) = entry?;
            if !found && serial_at(&value, 1) == Some(from) {
                found = true;
            }
            if found {
                out.push(decode_diff(&value)?);
            }
            newest = serial_at(&value, 5);
        }
        // Already at the newest version: nothing to send.
        Ok((found || newest == Some(from)).then_some(out))
    }
}

fn node_key(key: &NameKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(b'n');
    k.extend_from_slice(key);
    k
}

fn journal_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'j';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(key: &[u8]) -> Result<u64, Error> {
    let b: [u8; 8] = key
        .get(1..9)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| Error::Corrupt("bad journal key".into()))?;
    Ok(u64::from_be_bytes(b))
}

/// Encodes a name's records.
pub fn encode_node(n: &NodeData) -> Result<Vec<u8>, Error> {
    let mut out = vec![FORMAT];
    out.extend_from_slice(&name_wire_case(&n.name));
    out.extend_from_slice(&(n.len() as u32).to_be_bytes());
    for (t, set) in &n.rrsets {
        for rd in &set.rdatas {
            put_rdata(&mut out, *t, set.ttl, rd)?;
        }
    }
    Ok(out)
}

/// Decodes a name's records; errors on anything malformed.
pub fn decode_node(b: &[u8]) -> Result<NodeData, Error> {
    let mut d = start(b)?;
    let name = Name::read(&mut d)?;
    let count = d.read_u32()?.unverified(/* bounded by the data: each record reads from it */);
    let mut node = NodeData::new(name);
    for _ in 0..count {
        let (t, ttl, rd) = read_rdata(&mut d)?;
        let set = node.rrsets.entry(t).or_insert_with(|| RrSet {
            ttl,
            rdatas: Vec::new(),
        });
        set.rdatas.push(rd);
    }
    finish(&d)?;
    Ok(node)
}

fn encode_diff(cs: &ChangeSet) -> Result<Vec<u8>, Error> {
    let d = &cs.diff;
    let mut out = vec![FORMAT];
    out.extend_from_slice(&cs.old_serial.to_be_bytes());
    out.extend_from_slice(&cs.serial.to_be_bytes());
    let (Some(old), Some(new)) = (&d.old_soa, &d.new_soa) else {
        return Err(Error::Corrupt("change set without SOA".into()));
    };
    put_records(&mut out, std::slice::from_ref(old))?;
    put_records(&mut out, &d.removed)?;
    put_records(&mut out, std::slice::from_ref(new))?;
    put_records(&mut out, &d.added)?;
    Ok(out)
}

fn decode_diff(b: &[u8]) -> Result<Diff, Error> {
    let mut d = start(b)?;
    d.read_u32()?.unverified(/* serials are informational here */);
    d.read_u32()?.unverified(/* idem */);
    let old_soa = read_records(&mut d)?.into_iter().next();
    let removed = read_records(&mut d)?;
    let new_soa = read_records(&mut d)?.into_iter().next();
    let added = read_records(&mut d)?;
    finish(&d)?;
    Ok(Diff {
        old_soa,
        removed,
        new_soa,
        added,
    })
}

fn start(b: &[u8]) -> Result<BinDecoder<'_>, Error> {
    if b.first() != Some(&FORMAT) {
        return Err(Error::Corrupt("unknown record format".into()));
    }
    let mut d = BinDecoder::new(b);
    d.read_u8()?.unverified(/* the format byte, checked above */);
    Ok(d)
}

fn finish(d: &BinDecoder<'_>) -> Result<(), Error> {
    if d.is_empty() {
        Ok(())
    } else {
        Err(Error::Corrupt("trailing bytes in stored record".into()))
    }
}

fn put_rdata(out: &mut Vec<u8>, t: u16, ttl: u32, rd: &RData) -> Result<(), Error> {
    let rdata = rdata_bytes(rd)?;
    out.extend_from_slice(&t.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
    Ok(())
}

fn read_rdata(d: &mut BinDecoder<'_>) -> Result<(u16, u32, RData), Error> {
    let t = d.read_u16()?.unverified(/* any type number; RData::read validates */);
    let ttl = d.read_u32()?.unverified(/* any TTL */);
    let len = d.read_u16()?.unverified(/* Restrict below bounds the read */);
    if len == 0 {
        return Err(Error::Corrupt("stored record without data".into()));
    }
    let rd = RData::read(d, RecordType::from(t), Restrict::new(len))?;
    Ok((t, ttl, rd))
}

fn put_records(out: &mut Vec<u8>, records: &[Record]) -> Result<(), Error> {
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for r in records {
        out.extend_from_slice(&name_wire_case(&r.name));
        put_rdata(out, u16::from(r.record_type()), r.ttl, &r.data)?;
    }
    Ok(())
}

fn read_records(d: &mut BinDecoder<'_>) -> Result<Vec<Record>, Error> {
    let n = d.read_u32()?.unverified(/* bounded by the data */);
    let mut out = Vec::new();
    for _ in 0..n {
        let name = Name::read(d)?;
        let (_, ttl, rd) = read_rdata(d)?;
        out.push(Record::from_rdata(name, ttl, rd));
    }
    Ok(out)
}

/// Reads a zone file (RFC 1035 master format) into nodes, for seeding a
/// new database. Only types the zone serves are accepted; LIP records
/// cannot be written in zone files the parser knows, add them by UPDATE.
pub fn import_zone_file(path: &Path, origin: &Name) -> Result<Vec<NodeData>, Error> {
    let bad = |reason: String| Error::ZoneFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let parser = hickory_proto::serialize::txt::Parser::new(
        text,
        Some(path.to_owned()),
        Some(origin.clone()),
    );
    let (parsed_origin, sets) = parser.parse().map_err(|e| bad(e.to_string()))?;
    if key_of(&parsed_origin) != key_of(origin) {
        return Err(bad(format!(
            "zone file is for {parsed_origin}, not {origin}"
        )));
    }
    let origin_key = key_of(origin);
    let mut nodes: BTreeMap<NameKey, NodeData> = BTreeMap::new();
    for set in sets.into_values() {
        let t = u16::from(set.record_type());
        let name = set.name().clone();
        let key = key_of(&name);
        if !crate::wire::in_zone(&key, &origin_key) {
            return Err(bad(format!("{name} is outside the zone")));
        }
        if !type_allowed(t, key == origin_key) || name.is_wildcard() {
            return Err(bad(format!(
                "{name} {}: type or name not served by fpn-ddns",
                set.record_type()
            )));
        }
        let rdatas: Vec<RData> = set
            .records_without_rrsigs()
            .map(|r| r.data.clone())
            .collect();
        let node = nodes.entry(key).or_insert_with(|| NodeData::new(name));
        node.rrsets.insert(
            t,
            RrSet {
                ttl: set.ttl(),
                rdatas,
            },
        );
    }
    Ok(nodes.into_values().collect())
}

/// How long [`open_db`] waits for a just-closed store's file lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens the sled database in `dir`. sled releases its file lock when its
/// last I/O task ends, which on a busy machine can be a moment after the
/// last handle was dropped: a store reopened at once (a restart in the same
/// process) waits for it, briefly, instead of failing. A lock another
/// process holds still fails after [`LOCK_WAIT`].
fn open_db(dir: &Path) -> Result<sled::Db, Error> {
    let start = std::time::Instant::now();
    loop {
        // Flushed explicitly after every commit; no background flusher.
        match sled::Config::new().path(dir).flush_every_ms(None).open() {
            Err(sled::Error::Io(e)) if is_lock_busy(&e) && start.elapsed() < LOCK_WAIT => {
                debug!(dir = %dir.display(), "zone store locked; waiting for it to be released");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return Ok(r?),
        }
    }
}

/// sled reports a held lock as an `Other` error around the `WouldBlock`
/// of `flock`.
fn is_lock_busy(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::rr::rdata::{SOA, TXT};

    use super::*;
    use crate::lip::lip_rdata;
    use crate::zone::{ApiChange, Txn, Zone};

    fn n(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn new_zone() -> Zone {
        let soa = SOA::new(
            n("ns1.home.fpn."),
            n("hostmaster.home.fpn."),
            10,
            3600,
            600,
            86400,
            60,
        );
        Zone::new_empty(&n("home.fpn."), soa, 3600, &[n("ns1.home.fpn.")]).unwrap()
    }

    fn nodes(z: &Zone) -> Vec<NodeData> {
        let mut v: Vec<NodeData> = z.snapshot().iter().map(|n| n.data().clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn set_ge(z: &Zone, name: &str, last: u8) -> ChangeSet {
        let mut txn = Txn::new(z);
        txn.api(&ApiChange::SetGe {
            name: n(name),
            ttl: 60,
            a: Some([198, 18, 0, last].into()),
            aaaa: None,
            lips: vec![[192, 168, 1, last].into()],
        })
        .unwrap();
        txn.finish().unwrap().unwrap()
    }

    #[test]
    fn nodes_round_trip_and_damage_is_an_error() {
        let mut node = NodeData::new(Name::from_ascii("NaS.home.fpn.").unwrap());
        node.rrsets.insert(
            crate::wire::rtype::LIP,
            RrSet {
                ttl: 5,
                rdatas: vec![lip_rdata("fd00::1".parse().unwrap())],
            },
        );
        node.rrsets.insert(
            16,
            RrSet {
                ttl: 7,
                rdatas: vec![RData::TXT(TXT::new(vec!["a b".into(), "c".into()]))],
            },
        );
        let b = encode_node(&node).unwrap();
        let back = decode_node(&b).unwrap();
        assert_eq!(back, node);
        assert_eq!(back.name.to_ascii(), "NaS.home.fpn.", "case kept");
        for cut in 0..b.len() {
            assert!(decode_node(&b[..cut]).is_err(), "truncated at {cut}");
        }
        let mut extra = b.clone();
        extra.push(0);
        assert!(decode_node(&extra).is_err());
    }

    #[test]
    fn reopening_serves_the_same_zone_and_the_journal_reaches_back() {
        let dir = tempfile::tempdir().unwrap();
        let origin = n("home.fpn.");
        let mut z = new_zone();
        {
            let mut store = Store::open(dir.path(), &origin).unwrap();
            assert!(store.load().unwrap().is_empty());
            store.init(&nodes(&z)).unwrap();
            for i in 1..=3 {
                let cs = set_ge(&z, &format!("h{i}.home.fpn."), i);
                store.write(&cs).unwrap();
                store.flush().unwrap();
                z.apply(&cs).unwrap();
            }
        }
        let store = Store::open(dir.path(), &origin).unwrap();
        let loaded = Zone::from_nodes(&origin, store.load().unwrap()).unwrap();
        assert_eq!(nodes(&loaded), nodes(&z));
        assert_eq!(loaded.serial(), 13);
        let j = store.journal_reader();
        let diffs = j.diffs_since(11).unwrap().unwrap();
        assert_eq!(diffs.len(), 2);
        assert_eq!(diffs[0].added.len(), 2, "A and LIP of h2");
        assert!(j.diffs_since(9).unwrap().is_none(), "before the journal");
        assert_eq!(j.diffs_since(13).unwrap().unwrap().len(), 0);
        drop((store, j));
        let err = Store::open(dir.path(), &n("other.fpn.")).err().unwrap();
        assert!(matches!(err, Error::ZoneMismatch { .. }), "{err}");
    }

    #[test]
    fn the_journal_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let origin = n("home.fpn.");
        let mut z = new_zone();
        let mut store = Store::open(dir.path(), &origin).unwrap();
        store.init(&nodes(&z)).unwrap();
        for i in 0..JOURNAL_MAX + 5 {
            let cs = set_ge(&z, "h.home.fpn.", (i % 250) as u8);
            store.write(&cs).unwrap();
            z.apply(&cs).unwrap();
        }
        store.flush().unwrap();
        assert_eq!(store.db.scan_prefix(b"j").count() as u64, JOURNAL_MAX);
    }

    #[test]
    fn zone_files_import_and_refuse_what_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z");
        std::fs::write(
            &path,
            "$ORIGIN home.fpn.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\n\
             ns1 IN A 127.0.0.1\nnas IN A 198.18.0.7\nnas IN TXT \"hi\"\n",
        )
        .unwrap();
        let nodes = import_zone_file(&path, &n("home.fpn.")).unwrap();
        let z = Zone::from_nodes(&n("home.fpn."), nodes).unwrap();
        assert_eq!((z.len(), z.serial()), (3, 1));
        std::fs::write(
            &path,
            "$ORIGIN home.fpn.\n@ 300 IN SOA ns1 h 1 1 1 1 1\nw 300 IN CNAME nas\n",
        )
        .unwrap();
        assert!(import_zone_file(&path, &n("home.fpn.")).is_err());
        assert!(import_zone_file(&dir.path().join("missing"), &n("home.fpn.")).is_err());
    }
}
