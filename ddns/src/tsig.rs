//! TSIG (RFC 8945): finding, verifying and producing transaction signatures.
//!
//! Implemented here on ring's HMAC rather than through hickory-proto's
//! `TSigner`, because the server needs what that type does not offer: signed
//! multi-message transfers (later messages cover the previous MAC and the
//! timers only), signed BADTIME answers, and arithmetic on untrusted time
//! fields that cannot overflow. MACs are compared in constant time by ring.

use std::sync::Arc;

use fpn_proto::wire::Reader;
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use ring::hmac;

use crate::keys::{Algorithm, KeyRing, TsigKey};
use crate::wire::{self, Rcode, class, rtype};

/// TSIG error: the MAC does not verify.
pub const BADSIG: u16 = 16;
/// TSIG error: the key is unknown.
pub const BADKEY: u16 = 17;
/// TSIG error: the signature time is outside the fudge window.
pub const BADTIME: u16 = 18;
/// TSIG error: the MAC is truncated below what this server accepts.
pub const BADTRUNC: u16 = 22;

/// The TSIG record of a message, parsed but not yet verified.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigRecord {
    /// Offset of the record in the message (everything before it is signed).
    pub start: usize,
    /// The key name, lower case.
    pub key_name: Name,
    /// The algorithm name, lower case.
    pub algorithm: Name,
    /// Signing time, seconds since the epoch (48 bits on the wire).
    pub time: u64,
    /// Permitted clock difference, seconds.
    pub fudge: u16,
    /// The MAC.
    pub mac: Vec<u8>,
    /// The message id at signing time.
    pub original_id: u16,
    /// TSIG error field.
    pub error: u16,
    /// Other data (the server time in BADTIME answers).
    pub other: Vec<u8>,
}

impl std::fmt::Debug for TsigRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigRecord")
            .field("key_name", &self.key_name)
            .field("algorithm", &self.algorithm)
            .field("time", &self.time)
            .field("fudge", &self.fudge)
            .field("mac_len", &self.mac.len())
            .field("error", &self.error)
            .finish()
    }
}

/// Why a signed request was not accepted. Each maps to NOTAUTH with a TSIG
/// error, except `FormErr`.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The TSIG record is malformed (RCODE FORMERR).
    FormErr,
    /// Unknown key name or algorithm: answered unsigned (BADKEY).
    BadKey(Name),
    /// The MAC does not verify: answered unsigned (BADSIG).
    BadSig(Arc<TsigKey>),
    /// The MAC is shorter than we accept (BADTRUNC), answered signed.
    BadTrunc(Arc<TsigKey>),
    /// The time is outside the window: answered signed (BADTIME).
    BadTime(Arc<TsigKey>),
}

impl Failure {
    /// The TSIG error code.
    pub fn tsig_error(&self) -> u16 {
        match self {
            Self::FormErr => 0,
            Self::BadKey(_) => BADKEY,
            Self::BadSig(_) => BADSIG,
            Self::BadTrunc(_) => BADTRUNC,
            Self::BadTime(_) => BADTIME,
        }
    }

    /// The RCODE of the answer.
    pub fn rcode(&self) -> Rcode {
        match self {
            Self::FormErr => Rcode::FORMERR,
            _ => Rcode::NOTAUTH,
        }
    }

    /// Short reason for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::FormErr => "malformed TSIG record",
            Self::BadKey(_) => "unknown TSIG key",
            Self::BadSig(_) => "bad TSIG signature",
            Self::BadTrunc(_) => "truncated TSIG MAC",
            Self::BadTime(_) => "TSIG time outside the fudge window",
        }
    }
}

/// Finds the TSIG record of a message: `Ok(None)` when the last additional
/// record is not a TSIG record, `Err(FormErr)` when it is one but malformed.
pub fn find(msg: &[u8]) -> Result<Option<TsigRecord>, Failure> {
    let Some(start) = wire::last_additional(msg) else {
        return Ok(None);
    };
    let mut d = BinDecoder::new(msg);
    let formerr = |_| Failure::FormErr;
    d.read_slice(start).map_err(formerr)?;
    let key_name = Name::read(&mut d).map_err(formerr)?;
    let mut r = Reader::new(msg.get(d.index()..).ok_or(Failure::FormErr)?);
    let fixed = (|| -> fpn_proto::Result<_> {
        Ok((
            r.u16("type")?,
            r.u16("class")?,
            r.u32("ttl")?,
            r.u16("rdlength")?,
        ))
    })();
    let Ok((rr_type, rr_class, ttl, rdlen)) = fixed else {
        return Err(Failure::FormErr);
    };
    if rr_type != rtype::TSIG {
        return Ok(None);
    }
    if rr_class != class::ANY || ttl != 0 {
        return Err(Failure::FormErr);
    }
    let rdata_at = d.index() + 10;
    let end = rdata_at + usize::from(rdlen);
    if end != msg.len() {
        return Err(Failure::FormErr);
    }
    let mut d = BinDecoder::new(msg);
    d.read_slice(rdata_at).map_err(formerr)?;
    let algorithm = Name::read(&mut d).map_err(formerr)?;
    let rest = msg.get(d.index()..end).ok_or(Failure::FormErr)?;
    let mut r = Reader::new(rest);
    let parsed = (|| -> fpn_proto::Result<_> {
        let hi = u64::from(r.u16("time")?);
        let lo = u64::from(r.u32("time")?);
        let fudge = r.u16("fudge")?;
        let mac = r.long_bytes(usize::from(u16::MAX), "mac")?.to_vec();
        let original_id = r.u16("original id")?;
        let error = r.u16("error")?;
        let other = r.long_bytes(usize::from(u16::MAX), "other")?.to_vec();
        r.finish("TSIG rdata")?;
        Ok(((hi << 32) | lo, fudge, mac, original_id, error, other))
    })();
    let Ok((time, fudge, mac, original_id, error, other)) = parsed else {
        return Err(Failure::FormErr);
    };
    Ok(Some(TsigRecord {
        start,
        key_name: key_name.to_lowercase(),
        algorithm: algorithm.to_lowercase(),
        time,
        fudge,
        mac,
        original_id,
        error,
        other,
    }))
}

/// Verifies a signed request against the key ring at time `now` (unix
/// seconds). Returns the key that signed it.
pub fn verify_request(
    keys: &KeyRing,
    msg: &[u8],
    rec: &TsigRecord,
    now: u64,
) -> Result<Arc<TsigKey>, Failure> {
    let Some(key) = keys.get(&rec.key_name) else {
        return Err(Failure::BadKey(rec.key_name.clone()));
    };
    if Algorithm::from_name(&rec.algorithm) != Some(key.algorithm()) {
        return Err(Failure::BadKey(rec.key_name.clone()));
    }
    // RFC 8945 5.2.2.1: a MAC longer than the hash, or shorter than both 10
    // bytes and half the hash, is a format error; any other truncation is
    // below our policy (we accept only full MACs).
    let full = key.algorithm().output_len();
    if rec.mac.len() > full || rec.mac.len() < (full / 2).max(10) {
        return Err(Failure::FormErr);
    }
    if rec.mac.len() < full {
        return Err(Failure::BadTrunc(key.clone()));
    }
    let Some(mut tbs) = request_body(msg, rec) else {
        return Err(Failure::FormErr);
    };
    put_variables(
        &mut tbs,
        rec.key_name_wire(),
        &rec.algorithm,
        rec.time,
        rec.fudge,
        rec.error,
        &rec.other,
    );
    if hmac::verify(key.hmac(), &tbs, &rec.mac).is_err() {
        return Err(Failure::BadSig(key.clone()));
    }
    // Time is checked after the MAC (RFC 8945 5.2.3), so a forged request
    // cannot learn our clock.
    if now.abs_diff(rec.time) > u64::from(rec.fudge) {
        return Err(Failure::BadTime(key.clone()));
    }
    Ok(key.clone())
}

impl TsigRecord {
    fn key_name_wire(&self) -> Vec<u8> {
        name_wire(&self.key_name)
    }
}

/// The request as it was signed: without the TSIG record, ARCOUNT one less,
/// the original id.
fn request_body(msg: &[u8], rec: &TsigRecord) -> Option<Vec<u8>> {
    let body = msg.get(..rec.start)?;
    if body.len() < wire::HEADER_LEN {
        return None;
    }
    let mut tbs = Vec::with_capacity(msg.len() + 64);
    tbs.extend_from_slice(body);
    tbs[..2].copy_from_slice(&rec.original_id.to_be_bytes());
    let ar = wire::count(&tbs, 10).checked_sub(1)?;
    wire::set_count(&mut tbs, 10, ar);
    Some(tbs)
}

/// The uncompressed, lower-case wire form of a name.
pub fn name_wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

fn put_time(out: &mut Vec<u8>, time: u64) {
    out.extend_from_slice(&time.to_be_bytes()[2..]);
}

#[allow(clippy::too_many_arguments)]
fn put_variables(
    out: &mut Vec<u8>,
    key_wire: Vec<u8>,
    algorithm: &Name,
    time: u64,
    fudge: u16,
    error: u16,
    other: &[u8],
) {
    out.extend_from_slice(&key_wire);
    out.extend_from_slice(&class::ANY.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&name_wire(algorithm));
    put_time(out, time);
    out.extend_from_slice(&fudge.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(other.len() as u16).to_be_bytes());
    out.extend_from_slice(other);
}

/// Fields of a TSIG record to append.
struct Fields<'a> {
    key_wire: &'a [u8],
    algorithm: &'a Name,
    time: u64,
    fudge: u16,
    mac: &'a [u8],
    original_id: u16,
    error: u16,
    other: &'a [u8],
}

/// Appends a TSIG record to `msg` and increments ARCOUNT.
fn append(msg: &mut Vec<u8>, f: &Fields<'_>) {
    let alg = name_wire(f.algorithm);
    msg.extend_from_slice(f.key_wire);
    msg.extend_from_slice(&rtype::TSIG.to_be_bytes());
    msg.extend_from_slice(&class::ANY.to_be_bytes());
    msg.extend_from_slice(&0u32.to_be_bytes());
    let rdlen = alg.len() + 6 + 2 + 2 + f.mac.len() + 2 + 2 + 2 + f.other.len();
    msg.extend_from_slice(&(rdlen as u16).to_be_bytes());
    msg.extend_from_slice(&alg);
    put_time(msg, f.time);
    msg.extend_from_slice(&f.fudge.to_be_bytes());
    msg.extend_from_slice(&(f.mac.len() as u16).to_be_bytes());
    msg.extend_from_slice(f.mac);
    msg.extend_from_slice(&f.original_id.to_be_bytes());
    msg.extend_from_slice(&f.error.to_be_bytes());
    msg.extend_from_slice(&(f.other.len() as u16).to_be_bytes());
    msg.extend_from_slice(f.other);
    let ar = wire::count(msg, 10).saturating_add(1);
    wire::set_count(msg, 10, ar);
}

/// Signs the first (or only) message of a response to a signed request and
/// returns its MAC, which the next message of a transfer chains from.
/// `error` and `other` are the TSIG error fields (BADTIME sends our clock).
pub fn sign_response(
    msg: &mut Vec<u8>,
    key: &TsigKey,
    request_mac: &[u8],
    now: u64,
    error: u16,
    other: &[u8],
) -> Vec<u8> {
    let key_wire = key.name_wire();
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let mut tbs = Vec::with_capacity(msg.len() + request_mac.len() + 96);
    tbs.extend_from_slice(&(request_mac.len() as u16).to_be_bytes());
    tbs.extend_from_slice(request_mac);
    tbs.extend_from_slice(msg);
    let alg = key.algorithm().name();
    put_variables(
        &mut tbs,
        key_wire.to_vec(),
        &alg,
        now,
        key.fudge(),
        error,
        other,
    );
    let mac = hmac::sign(key.hmac(), &tbs);
    let fields = Fields {
        key_wire,
        algorithm: &alg,
        time: now,
        fudge: key.fudge(),
        mac: mac.as_ref(),
        original_id: id,
        error,
        other,
    };
    append(msg, &fields);
    mac.as_ref().to_vec()
}

/// Signs a later message of a multi-message response (a zone transfer): the
/// MAC covers the previous MAC, the message and the timers only
/// (RFC 8945 5.3.1).
pub fn sign_next(msg: &mut Vec<u8>, key: &TsigKey, previous_mac: &[u8], now: u64) -> Vec<u8> {
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let mut tbs = Vec::with_capacity(msg.len() + previous_mac.len() + 16);
    tbs.extend_from_slice(&(previous_mac.len() as u16).to_be_bytes());
    tbs.extend_from_slice(previous_mac);
    tbs.extend_from_slice(msg);
    put_time(&mut tbs, now);
    tbs.extend_from_slice(&key.fudge().to_be_bytes());
    let mac = hmac::sign(key.hmac(), &tbs);
    let alg = key.algorithm().name();
    let fields = Fields {
        key_wire: key.name_wire(),
        algorithm: &alg,
        time: now,
        fudge: key.fudge(),
        mac: mac.as_ref(),
        original_id: id,
        error: 0,
        other: &[],
    };
    append(msg, &fields);
    mac.as_ref().to_vec()
}

/// Appends the unsigned TSIG record of a BADKEY or BADSIG answer: the
/// request's key and algorithm names, an empty MAC (RFC 8945 5.3.2).
pub fn append_unsigned(msg: &mut Vec<u8>, rec: &TsigRecord, now: u64, error: u16) {
    let key_wire = rec.key_name_wire();
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let fields = Fields {
        key_wire: &key_wire,
        algorithm: &rec.algorithm,
        time: now,
        fudge: rec.fudge,
        mac: &[],
        original_id: id,
        error,
        other: &[],
    };
    append(msg, &fields);
}

/// Signs a request (used for the NOTIFY messages we send, and by tests
/// playing the client) and returns its MAC.
pub fn sign_request(msg: &mut Vec<u8>, key: &TsigKey, now: u64) -> Vec<u8> {
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let mut tbs = msg.clone();
    let alg = key.algorithm().name();
    put_variables(
        &mut tbs,
        key.name_wire().to_vec(),
        &alg,
        now,
        key.fudge(),
        0,
        &[],
    );
    let mac = hmac::sign(key.hmac(), &tbs);
    let fields = Fields {
        key_wire: key.name_wire(),
        algorithm: &alg,
        time: now,
        fudge: key.fudge(),
        mac: mac.as_ref(),
        original_id: id,
        error: 0,
        other: &[],
    };
    append(msg, &fields);
    mac.as_ref().to_vec()
}

/// Verifies a response to a request we signed (tests and clients): the MAC
/// must cover `request_mac`, the response and its TSIG variables.
pub fn verify_response(
    key: &TsigKey,
    msg: &[u8],
    request_mac: &[u8],
) -> Result<TsigRecord, Failure> {
    let rec = find(msg)?.ok_or(Failure::FormErr)?;
    let body = request_body(msg, &rec).ok_or(Failure::FormErr)?;
    let mut tbs = Vec::with_capacity(body.len() + 128);
    tbs.extend_from_slice(&(request_mac.len() as u16).to_be_bytes());
    tbs.extend_from_slice(request_mac);
    tbs.extend_from_slice(&body);
    put_variables(
        &mut tbs,
        rec.key_name_wire(),
        &rec.algorithm,
        rec.time,
        rec.fudge,
        rec.error,
        &rec.other,
    );
    hmac::verify(key.hmac(), &tbs, &rec.mac).map_err(|_| Failure::BadSig(Arc::new(key.clone())))?;
    Ok(rec)
}

/// Verifies a later message of a signed transfer: MAC over the previous
/// MAC, the message and the timers.
pub fn verify_next(key: &TsigKey, msg: &[u8], previous_mac: &[u8]) -> Result<TsigRecord, Failure> {
    let rec = find(msg)?.ok_or(Failure::FormErr)?;
    let body = request_body(msg, &rec).ok_or(Failure::FormErr)?;
    let mut tbs = Vec::with_capacity(body.len() + 80);
    tbs.extend_from_slice(&(previous_mac.len() as u16).to_be_bytes());
    tbs.extend_from_slice(previous_mac);
    tbs.extend_from_slice(&body);
    put_time(&mut tbs, rec.time);
    tbs.extend_from_slice(&rec.fudge.to_be_bytes());
    hmac::verify(key.hmac(), &tbs, &rec.mac).map_err(|_| Failure::BadSig(Arc::new(key.clone())))?;
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
    use hickory_proto::rr::{RecordType, TSigner};

    use super::*;
    use crate::keys::KeyPolicy;

    const SECRET: [u8; 32] = [7; 32];

    fn key() -> TsigKey {
        TsigKey::new(
            Name::from_str("test-key.").unwrap(),
            Algorithm::HmacSha256,
            SECRET.to_vec(),
            KeyPolicy::default(),
        )
    }

    fn ring() -> KeyRing {
        let mut r = KeyRing::default();
        r.insert(key());
        r
    }

    /// A request signed by hickory-proto's client-side signer, so our
    /// verifier is checked against an independent implementation.
    fn hickory_signed(now: u64, secret: &[u8]) -> Vec<u8> {
        let signer = TSigner::new(
            secret.to_vec(),
            TsigAlgorithm::HmacSha256,
            Name::from_str("Test-Key.").unwrap(),
            300,
        )
        .unwrap();
        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Update);
        m.add_query(Query::query(
            Name::from_str("home.fpn.").unwrap(),
            RecordType::SOA,
        ));
        m.finalize(&signer, now).unwrap();
        m.to_vec().unwrap()
    }

    #[test]
    fn verifies_a_request_signed_by_hickory() {
        let now = 1_700_000_000;
        let msg = hickory_signed(now, &SECRET);
        let rec = find(&msg).unwrap().unwrap();
        assert_eq!(rec.key_name, Name::from_str("test-key.").unwrap());
        let k = verify_request(&ring(), &msg, &rec, now + 10).unwrap();
        assert_eq!(k.name(), &Name::from_str("test-key.").unwrap());
    }

    #[test]
    fn rejects_wrong_secret_time_and_key() {
        let now = 1_700_000_000;
        let msg = hickory_signed(now, &[8; 32]);
        let rec = find(&msg).unwrap().unwrap();
        assert!(matches!(
            verify_request(&ring(), &msg, &rec, now),
            Err(Failure::BadSig(_))
        ));

        let msg = hickory_signed(now, &SECRET);
        let rec = find(&msg).unwrap().unwrap();
        assert!(matches!(
            verify_request(&ring(), &msg, &rec, now + 301),
            Err(Failure::BadTime(_))
        ));
        assert!(matches!(
            verify_request(&KeyRing::default(), &msg, &rec, now),
            Err(Failure::BadKey(_))
        ));

        // one flipped bit in the signed part
        let mut bad = msg.clone();
        bad[13] ^= 1;
        let rec = find(&bad).unwrap().unwrap();
        assert!(verify_request(&ring(), &bad, &rec, now).is_err());
    }

    #[test]
    fn our_signatures_verify_and_chain() {
        let k = key();
        let now = 1_700_000_000;
        let mut req = hickory_signed(now, &SECRET);
        let rec = find(&req).unwrap().unwrap();
        req.truncate(rec.start);
        let mut resp = req.clone();
        resp[2] |= 0x80;
        wire::set_count(&mut resp, 10, 0);
        let mac1 = sign_response(&mut resp, &k, &rec.mac, now, 0, &[]);
        verify_response(&k, &resp, &rec.mac).unwrap();
        let mut next = resp[..12].to_vec();
        wire::put_header_counts(&mut next, [0, 0, 0, 0]);
        let mac2 = sign_next(&mut next, &k, &mac1, now);
        verify_next(&k, &next, &mac1).unwrap();
        assert!(verify_next(&k, &next, &mac2).is_err());

        let mut own = req.clone();
        wire::set_count(&mut own, 10, 0);
        sign_request(&mut own, &k, now);
        let rec = find(&own).unwrap().unwrap();
        verify_request(&ring(), &own, &rec, now).unwrap();
    }

    #[test]
    fn malformed_records_are_format_errors() {
        let msg = hickory_signed(1_700_000_000, &SECRET);
        for cut in 1..40 {
            let mut m = msg[..msg.len() - cut].to_vec();
            // keep the header's counts: the record is now truncated
            let _ = find(&m);
            m.push(0);
            let _ = find(&m);
        }
        let mut long = msg.clone();
        long.push(0);
        assert!(matches!(find(&long), Ok(None) | Err(Failure::FormErr)));
    }
}
