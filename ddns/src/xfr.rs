//! Zone transfer responses: AXFR (RFC 5936) and IXFR (RFC 1995) as a
//! sequence of TCP messages, each TSIG-signed, the later ones chained to
//! the earlier ones' MACs (RFC 8945 5.3.1).
//!
//! Records are written uncompressed: every message's size is then known
//! while packing, and no record depends on its position.

use std::sync::Arc;

use hickory_proto::rr::Record;

use crate::Error;
use crate::answer::{TransferRequest, name_wire_case};
use crate::tsig;
use crate::wire::{self, class};
use crate::zone::node::rdata_bytes;
use crate::zone::{Diff, Node, Zone, serial_gt};

/// Soft size limit of one transfer message (a message always takes at
/// least one record; a name's records never exceed 16 KiB).
pub const MAX_MESSAGE: usize = 16 * 1024;

/// A response holding the question and our SOA only: the answer to an IXFR
/// from a client that is up to date, or to any IXFR over UDP.
pub fn put_soa_only(out: &mut Vec<u8>, id: u16, question: &[u8], zone: &Zone) {
    out.clear();
    wire::put_header(
        out,
        id,
        [0x84, 0],
        [u16::from(!question.is_empty()), 1, 0, 0],
    );
    out.extend_from_slice(question);
    if put_record(out, &zone.soa_record()).is_err() {
        // The SOA was encoded when it was published; this cannot fail.
        wire::put_header_counts(out, [1, 0, 0, 0]);
    }
}

/// The messages of an AXFR: SOA, every other record, SOA.
pub fn axfr(
    req: &TransferRequest,
    soa: &Record,
    mut nodes: Vec<Arc<Node>>,
    now: u64,
) -> Result<Vec<Vec<u8>>, Error> {
    // In canonical name order (apex first), so a transfer is deterministic.
    nodes.sort_by(|a, b| a.data().name.cmp(&b.data().name));
    let mut p = Packer::new(req, now);
    p.push(soa)?;
    for node in &nodes {
        for r in node.data().records() {
            if u16::from(r.record_type()) != wire::rtype::SOA {
                p.push(&r)?;
            }
        }
    }
    p.push(soa)?;
    Ok(p.finish())
}

/// The messages of an IXFR from `from` to the current serial, given the
/// journal's diffs from `from` on (oldest first). A client that is current
/// gets our SOA alone (RFC 1995 section 4).
pub fn ixfr(
    req: &TransferRequest,
    soa: &Record,
    diffs: &[Diff],
    now: u64,
) -> Result<Vec<Vec<u8>>, Error> {
    let mut p = Packer::new(req, now);
    p.push(soa)?;
    for d in diffs {
        let (Some(old), Some(new)) = (&d.old_soa, &d.new_soa) else {
            return Err(Error::Corrupt("journal entry without SOA".into()));
        };
        p.push(old)?;
        for r in &d.removed {
            p.push(r)?;
        }
        p.push(new)?;
        for r in &d.added {
            p.push(r)?;
        }
    }
    if !diffs.is_empty() {
        p.push(soa)?;
    }
    Ok(p.finish())
}

/// Whether a client at serial `from` is up to date with `current`.
pub fn up_to_date(from: u32, current: u32) -> bool {
    from == current || serial_gt(from, current)
}

/// Packs records into signed messages.
struct Packer<'a> {
    req: &'a TransferRequest,
    now: u64,
    done: Vec<Vec<u8>>,
    cur: Vec<u8>,
    count: u16,
    mac: Vec<u8>,
}

impl<'a> Packer<'a> {
    fn new(req: &'a TransferRequest, now: u64) -> Self {
        let mut p = Self {
            req,
            now,
            done: Vec::new(),
            cur: Vec::new(),
            count: 0,
            mac: Vec::new(),
        };
        p.start();
        p
    }

    fn start(&mut self) {
        self.cur = Vec::with_capacity(MAX_MESSAGE + 512);
        // The question goes into the first message only.
        let first = self.done.is_empty();
        wire::put_header(
            &mut self.cur,
            self.req.id,
            [0x84, 0],
            [u16::from(first), 0, 0, 0],
        );
        if first {
            self.cur.extend_from_slice(&self.req.question);
        }
        self.count = 0;
    }

    fn push(&mut self, r: &Record) -> Result<(), Error> {
        let mark = self.cur.len();
        put_record(&mut self.cur, r)?;
        if self.cur.len() > MAX_MESSAGE && self.count > 0 {
            let rec = self.cur.split_off(mark);
            self.seal();
            self.start();
            self.cur.extend_from_slice(&rec);
        }
        self.count += 1;
        Ok(())
    }

    fn seal(&mut self) {
        wire::set_count(&mut self.cur, 6, self.count);
        let mut msg = std::mem::take(&mut self.cur);
        self.mac = if self.done.is_empty() {
            tsig::sign_response(
                &mut msg,
                &self.req.key,
                &self.req.request_mac,
                self.now,
                0,
                &[],
            )
        } else {
            tsig::sign_next(&mut msg, &self.req.key, &self.mac, self.now)
        };
        self.done.push(msg);
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        self.seal();
        self.done
    }
}

/// Appends one record, uncompressed.
pub fn put_record(out: &mut Vec<u8>, r: &Record) -> Result<(), Error> {
    let rdata = rdata_bytes(&r.data)?;
    out.extend_from_slice(&name_wire_case(&r.name));
    out.extend_from_slice(&u16::from(r.record_type()).to_be_bytes());
    out.extend_from_slice(&class::IN.to_be_bytes());
    out.extend_from_slice(&r.ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
    Ok(())
}
