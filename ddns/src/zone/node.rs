//! A published name: its records and their pre-encoded answers.
//!
//! Every record is encoded once, when the name changes, with its owner as a
//! compression pointer to offset 12 — where the question name sits in every
//! response — so answering copies a byte slice after the question.

use hickory_proto::rr::RData;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

use super::NodeData;
use crate::Error;
use crate::wire::{class, rtype};

/// Largest encoded size of all records of one name. Keeps every answer,
/// including ANY over TCP, and every transfer message within 64 KiB.
pub const MAX_NODE_BYTES: usize = 16 * 1024;

/// Pre-encoded answer records for one query type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Records in the answer section.
    pub an: u16,
    /// Records in the additional section (LIP with A/AAAA).
    pub ar: u16,
    /// The encoded records, answer section then additional section.
    pub body: Box<[u8]>,
}

/// A name as the answer path sees it.
#[derive(Debug)]
pub struct Node {
    data: NodeData,
    by_type: Box<[(u16, Encoded)]>,
    any: Encoded,
}

impl Node {
    /// Encodes the answers of a node.
    pub fn new(data: NodeData) -> Result<Self, Error> {
        let mut encoded_sets = Vec::with_capacity(data.rrsets.len());
        for (&t, set) in &data.rrsets {
            let mut body = Vec::new();
            for rd in &set.rdatas {
                put_rr(&mut body, t, set.ttl, rd)?;
            }
            encoded_sets.push((t, set.rdatas.len() as u16, body));
        }
        let lip = encoded_sets
            .iter()
            .find(|(t, _, _)| *t == rtype::LIP)
            .map(|(_, n, b)| (*n, b.clone()));
        let mut by_type = Vec::with_capacity(encoded_sets.len());
        let mut any = Encoded {
            an: 0,
            ar: 0,
            body: Box::new([]),
        };
        let mut any_body = Vec::new();
        for (t, n, body) in encoded_sets {
            any.an += n;
            any_body.extend_from_slice(&body);
            let mut e = Encoded {
                an: n,
                ar: 0,
                body: body.into_boxed_slice(),
            };
            // A and AAAA answers carry the name's LIP records (fpn's remote
            // access: the gateway's address plus the host's private one).
            if let (rtype::A | rtype::AAAA, Some((lip_n, lip_body))) = (t, &lip) {
                let mut b = e.body.into_vec();
                b.extend_from_slice(lip_body);
                e = Encoded {
                    an: n,
                    ar: *lip_n,
                    body: b.into_boxed_slice(),
                };
            }
            by_type.push((t, e));
        }
        if any_body.len() > MAX_NODE_BYTES {
            return Err(Error::Refused("records of one name exceed 16 KiB"));
        }
        any.body = any_body.into_boxed_slice();
        Ok(Self {
            data,
            by_type: by_type.into_boxed_slice(),
            any,
        })
    }

    /// The records.
    pub fn data(&self) -> &NodeData {
        &self.data
    }

    /// The pre-encoded answer for `qtype`, if the node has such records.
    #[inline]
    pub fn answer(&self, qtype: u16) -> Option<&Encoded> {
        if qtype == rtype::ANY {
            return Some(&self.any);
        }
        self.by_type
            .iter()
            .find(|(t, _)| *t == qtype)
            .map(|(_, e)| e)
    }
}

/// Appends one record with the owner pointer 0xC00C.
fn put_rr(out: &mut Vec<u8>, t: u16, ttl: u32, rd: &RData) -> Result<(), Error> {
    out.extend_from_slice(&[0xc0, 0x0c]);
    put_rr_fixed(out, t, ttl, rd)
}

/// Appends type, class IN, TTL, RDLENGTH and RDATA (names in RDATA
/// uncompressed, case kept: the bytes must not depend on their position).
pub fn put_rr_fixed(out: &mut Vec<u8>, t: u16, ttl: u32, rd: &RData) -> Result<(), Error> {
    let rdata = rdata_bytes(rd)?;
    out.extend_from_slice(&t.to_be_bytes());
    out.extend_from_slice(&class::IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
    Ok(())
}

/// The RDATA of a record in wire form, names uncompressed.
pub fn rdata_bytes(rd: &RData) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::with_capacity(32);
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_name_encoding(NameEncoding::Uncompressed);
    rd.emit(&mut enc)?;
    if buf.len() > usize::from(u16::MAX) {
        return Err(Error::Refused("record data longer than 65535 bytes"));
    }
    Ok(buf)
}

/// The RDATA in canonical form (names lower case): what "the same record"
/// means for duplicates and deletions (RFC 2136 1.1.1).
pub fn rdata_canonical(rd: &RData) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::with_capacity(32);
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_name_encoding(NameEncoding::UncompressedLowercase);
    rd.emit(&mut enc)?;
    Ok(buf)
}
