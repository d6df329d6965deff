//! The request path: from request bytes to a response, or to the update or
//! transfer work the caller must hand on.
//!
//! Plain queries take the fast path ([`wire::parse_fast`] plus pre-encoded
//! answers: no allocation, no full parse). Everything else — updates,
//! transfers, signed or unusual messages — is parsed by hickory-proto. No
//! input makes this code panic: bad requests get FORMERR, responses and
//! runts are dropped.

use std::sync::Arc;

use hickory_proto::op::Message;
use hickory_proto::rr::{Name, RData};
use tracing::{debug, info};

use crate::keys::{KeyRing, TsigKey};
use crate::tsig::{self, Failure, TsigRecord};
use crate::wire::{self, EdnsReq, FastQuery, MAX_NAME_LEN, Rcode, class, opcode, rtype};
use crate::zone::{Lookup, Zone};

/// Room kept free in a UDP answer for the TSIG record of a signed answer.
const TSIG_ROOM: usize = 160;

/// What the request path decided.
#[derive(Debug)]
pub enum Outcome {
    /// The response is in the output buffer.
    Reply,
    /// An authenticated UPDATE for the commit thread; it answers later.
    Update(PendingUpdate),
    /// An authorized zone transfer (TCP only) for the caller to stream.
    Transfer(TransferRequest),
    /// Nothing to send (a response, a runt).
    Drop,
}

/// An UPDATE that passed TSIG and key checks, waiting for the commit thread.
#[derive(Debug)]
pub struct PendingUpdate {
    /// The parsed message.
    pub msg: Message,
    /// The key that signed it.
    pub key: Arc<TsigKey>,
    /// The request's MAC: the response signature covers it.
    pub request_mac: Vec<u8>,
    /// The zone section, re-encoded, echoed in the response.
    pub zone_section: Vec<u8>,
    /// Until when (unix seconds) the signature is acceptable: the request's
    /// signing time plus its fudge. The commit thread remembers the MAC
    /// until then, so a captured update cannot be replayed.
    pub valid_until: u64,
}

/// An authorized AXFR or IXFR request.
#[derive(Debug)]
pub struct TransferRequest {
    /// Message id.
    pub id: u16,
    /// The question, encoded (name, type, class), for the first message.
    pub question: Vec<u8>,
    /// The signing key.
    pub key: Arc<TsigKey>,
    /// The request's MAC.
    pub request_mac: Vec<u8>,
    /// `None` for AXFR; the client's serial for IXFR.
    pub ixfr_from: Option<u32>,
}

/// What a request is handled against.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// The zone (read-locked by the caller).
    pub zone: &'a Zone,
    /// Known TSIG keys.
    pub keys: &'a KeyRing,
    /// Unix time, seconds (TSIG).
    pub now: u64,
    /// Whether the request came over TCP (no size limit, transfers allowed).
    pub tcp: bool,
}

/// Handles one request; a response, if any, is written to `out`.
pub fn handle(ctx: &Ctx<'_>, msg: &[u8], out: &mut Vec<u8>) -> Outcome {
    out.clear();
    let mut key = [0u8; MAX_NAME_LEN];
    if let Some((q, len)) = wire::parse_fast(msg, &mut key) {
        let limit = if ctx.tcp {
            usize::from(u16::MAX)
        } else {
            EdnsReq::udp_limit(q.edns)
        };
        write_answer(out, ctx.zone, &q, &key[..len], limit);
        return Outcome::Reply;
    }
    slow(ctx, msg, out)
}

/// Writes the answer to a query: pre-encoded records, or a negative answer
/// with the SOA, or REFUSED for names outside the zone. Sets TC and drops
/// the records when the answer exceeds `limit`.
pub fn write_answer(
    out: &mut Vec<u8>,
    zone: &Zone,
    q: &FastQuery<'_>,
    key: &[u8],
    limit: usize,
) -> Rcode {
    let (rcode, aa, counts, body): (Rcode, bool, [u16; 3], &[u8]) = match zone.lookup(key, q.qtype)
    {
        Lookup::Answer(e) => (Rcode::NOERROR, true, [e.an, 0, e.ar], &e.body),
        Lookup::NoData => (Rcode::NOERROR, true, [0, 1, 0], &[]),
        Lookup::NxDomain => (Rcode::NXDOMAIN, true, [0, 1, 0], &[]),
        Lookup::NotInZone => (Rcode::REFUSED, false, [0, 0, 0], &[]),
    };
    let opt = u16::from(q.edns.is_some());
    let flags = [
        0x80 | if aa { 0x04 } else { 0 } | q.copy_flags.0,
        q.copy_flags.1 | rcode.low(),
    ];
    wire::put_header(out, q.id, flags, [1, counts[0], counts[1], counts[2] + opt]);
    out.extend_from_slice(q.qname);
    out.extend_from_slice(&q.qtype.to_be_bytes());
    out.extend_from_slice(&q.qclass.to_be_bytes());
    if counts[1] == 1 {
        // The SOA's owner is the apex: a suffix of the question name, which
        // sits uncompressed at offset 12.
        let at = (wire::HEADER_LEN + q.qname.len()).saturating_sub(zone.origin_key().len());
        out.extend_from_slice(&(0xc000 | at as u16).to_be_bytes());
        out.extend_from_slice(zone.soa_authority());
    } else {
        out.extend_from_slice(body);
    }
    if q.edns.is_some() {
        wire::put_opt(out, rcode);
    }
    if out.len() > limit {
        out.truncate(wire::HEADER_LEN + q.qname.len() + 4);
        out[2] |= 0x02;
        wire::put_header_counts(out, [1, 0, 0, opt]);
        if q.edns.is_some() {
            wire::put_opt(out, rcode);
        }
    }
    rcode
}

fn slow(ctx: &Ctx<'_>, msg: &[u8], out: &mut Vec<u8>) -> Outcome {
    let Some(h) = msg.get(..wire::HEADER_LEN) else {
        return Outcome::Drop;
    };
    if h[2] & 0x80 != 0 {
        return Outcome::Drop; // never answer a response
    }
    let id = u16::from_be_bytes([h[0], h[1]]);
    let op = (h[2] >> 3) & 0x0f;
    let parsed = match Message::from_vec(msg) {
        Ok(m) => m,
        Err(e) => {
            debug!(len = msg.len(), error = %e, "malformed request");
            put_simple(out, id, op, Rcode::FORMERR, &[]);
            return Outcome::Reply;
        }
    };
    let rec = match tsig::find(msg) {
        Ok(r) => r,
        Err(_) => {
            debug!(len = msg.len(), "malformed TSIG record");
            put_simple(out, id, op, Rcode::FORMERR, &[]);
            return Outcome::Reply;
        }
    };
    let question = parsed
        .queries
        .first()
        .map(encode_question)
        .unwrap_or_default();
    let auth = match rec {
        None => None,
        Some(rec) => match tsig::verify_request(ctx.keys, msg, &rec, ctx.now) {
            Ok(key) => Some((key, rec)),
            Err(f) => {
                if let Some(suppressed) = refusal_log_allowed(ctx.now) {
                    info!(key = %rec.key_name, reason = f.reason(), opcode = op, suppressed, "TSIG check failed");
                }
                tsig_failure(out, id, op, &question, &rec, &f, ctx.now);
                return Outcome::Reply;
            }
        },
    };
    let edns = parsed.edns.as_ref().map(|e| EdnsReq {
        payload: e.max_payload(),
        version: e.version(),
    });
    let reply = Reply {
        id,
        op,
        question: &question,
        edns,
        auth: auth.as_ref(),
        now: ctx.now,
    };
    if edns.is_some_and(|e| e.version != 0) {
        reply.simple(out, Rcode::BADVERS);
        return Outcome::Reply;
    }
    match op {
        opcode::QUERY => query(ctx, &parsed, &reply, out),
        opcode::UPDATE => update(&parsed, reply, out),
        // We are the primary: NOTIFY is for secondaries.
        opcode::NOTIFY => {
            reply.simple(out, Rcode::REFUSED);
            Outcome::Reply
        }
        _ => {
            reply.simple(out, Rcode::NOTIMP);
            Outcome::Reply
        }
    }
}

/// Response parameters of a request that went through the full parser.
struct Reply<'a> {
    id: u16,
    op: u8,
    question: &'a [u8],
    edns: Option<EdnsReq>,
    auth: Option<&'a (Arc<TsigKey>, TsigRecord)>,
    now: u64,
}

impl Reply<'_> {
    /// A response with no records (the question echoed), signed if the
    /// request was.
    fn simple(&self, out: &mut Vec<u8>, rcode: Rcode) {
        put_simple(out, self.id, self.op, rcode, self.question);
        if self.edns.is_some() {
            wire::put_opt(out, rcode);
            let ar = wire::count(out, 10) + 1;
            wire::set_count(out, 10, ar);
        }
        self.sign(out);
    }

    fn sign(&self, out: &mut Vec<u8>) {
        if let Some((key, rec)) = self.auth {
            tsig::sign_response(out, key, &rec.mac, self.now, 0, &[]);
        }
    }
}

fn query(ctx: &Ctx<'_>, parsed: &Message, reply: &Reply<'_>, out: &mut Vec<u8>) -> Outcome {
    let [q] = parsed.queries.as_slice() else {
        reply.simple(out, Rcode::FORMERR);
        return Outcome::Reply;
    };
    let qtype = u16::from(q.query_type());
    if u16::from(q.query_class()) != class::IN {
        reply.simple(out, Rcode::REFUSED);
        return Outcome::Reply;
    }
    if matches!(qtype, rtype::AXFR | rtype::IXFR) {
        return transfer(ctx, parsed, reply, qtype, out);
    }
    let key = crate::zone::key_of(q.name());
    let qname = &reply.question[..reply.question.len() - 4];
    let fq = FastQuery {
        id: reply.id,
        copy_flags: (
            u8::from(parsed.metadata.recursion_desired),
            if parsed.metadata.checking_disabled {
                0x10
            } else {
                0
            },
        ),
        qname,
        qtype,
        qclass: class::IN,
        edns: reply.edns,
    };
    let mut limit = if ctx.tcp {
        usize::from(u16::MAX)
    } else {
        EdnsReq::udp_limit(reply.edns)
    };
    if reply.auth.is_some() {
        limit -= TSIG_ROOM;
    }
    write_answer(out, ctx.zone, &fq, &key, limit);
    reply.sign(out);
    Outcome::Reply
}

fn transfer(
    ctx: &Ctx<'_>,
    parsed: &Message,
    reply: &Reply<'_>,
    qtype: u16,
    out: &mut Vec<u8>,
) -> Outcome {
    let what = if qtype == rtype::AXFR { "AXFR" } else { "IXFR" };
    let Some((key, rec)) = reply.auth else {
        if let Some(suppressed) = refusal_log_allowed(reply.now) {
            info!(
                what,
                suppressed, "zone transfer refused: request not signed"
            );
        }
        reply.simple(out, Rcode::REFUSED);
        return Outcome::Reply;
    };
    if !key.policy().transfer {
        info!(what, key = %key.name(), "zone transfer refused: key lacks the transfer permission");
        reply.simple(out, Rcode::REFUSED);
        return Outcome::Reply;
    }
    if crate::zone::key_of(parsed.queries[0].name()).as_ref() != ctx.zone.origin_key() {
        reply.simple(out, Rcode::NOTAUTH);
        return Outcome::Reply;
    }
    let ixfr_from = if qtype == rtype::IXFR {
        match parsed.authorities.first().map(|r| &r.data) {
            Some(RData::SOA(soa)) => Some(soa.serial),
            _ => {
                reply.simple(out, Rcode::FORMERR);
                return Outcome::Reply;
            }
        }
    } else {
        None
    };
    if !ctx.tcp {
        if ixfr_from.is_none() {
            reply.simple(out, Rcode::NOTIMP); // AXFR is TCP only (RFC 5936)
            return Outcome::Reply;
        }
        // IXFR over UDP: our SOA alone tells the client to come back over
        // TCP, or that it is up to date (RFC 1995 section 2).
        crate::xfr::put_soa_only(out, reply.id, reply.question, ctx.zone);
        reply.sign(out);
        return Outcome::Reply;
    }
    info!(what, key = %key.name(), "zone transfer");
    Outcome::Transfer(TransferRequest {
        id: reply.id,
        question: reply.question.to_vec(),
        key: key.clone(),
        request_mac: rec.mac.clone(),
        ixfr_from,
    })
}

fn update(parsed: &Message, reply: Reply<'_>, out: &mut Vec<u8>) -> Outcome {
    let Some((key, rec)) = reply.auth else {
        if let Some(suppressed) = refusal_log_allowed(reply.now) {
            info!(suppressed, "update refused: request not signed");
        }
        reply.simple(out, Rcode::REFUSED);
        return Outcome::Reply;
    };
    if key.policy().update.is_empty() {
        info!(key = %key.name(), "update refused: key lacks the update permission");
        reply.simple(out, Rcode::REFUSED);
        return Outcome::Reply;
    }
    Outcome::Update(PendingUpdate {
        msg: parsed.clone(),
        key: key.clone(),
        request_mac: rec.mac.clone(),
        zone_section: reply.question.to_vec(),
        valid_until: rec.time.saturating_add(u64::from(rec.fudge)),
    })
}

/// Refusals of unauthenticated requests logged per second at most; anyone
/// can send those, and a flood must not turn into a flood of log lines.
const REFUSAL_LOGS_PER_SECOND: u64 = 20;

static REFUSALS: LogLimiter = LogLimiter::new(REFUSAL_LOGS_PER_SECOND);

/// Whether a refusal may be logged now; if so, how many were suppressed
/// since the last one that was.
fn refusal_log_allowed(now: u64) -> Option<u64> {
    REFUSALS.allow(now)
}

/// A per-second budget of log lines, shared by all threads without a lock.
pub struct LogLimiter {
    /// The current second (upper 48 bits) and lines logged in it (lower 16).
    window: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
    per_second: u64,
}

impl LogLimiter {
    /// A limiter allowing `per_second` lines per second.
    pub const fn new(per_second: u64) -> Self {
        Self {
            window: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
            per_second,
        }
    }

    /// `Some(suppressed since the last allowed line)` if a line may be
    /// logged at `now` (unix seconds), else `None`.
    pub fn allow(&self, now: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = now & 0xffff_ffff_ffff;
        let cur = self.window.load(Relaxed);
        let (sec, n) = (cur >> 16, cur & 0xffff);
        let next = if sec == now {
            (sec << 16) | (n + 1)
        } else {
            (now << 16) | 1
        };
        if next & 0xffff > self.per_second
            || self
                .window
                .compare_exchange(cur, next, Relaxed, Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed))
    }
}

/// The response to an update, signed with the request's key.
pub fn update_response(p: &PendingUpdate, rcode: Rcode, now: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + p.zone_section.len() + 128);
    put_simple(
        &mut out,
        p.msg.metadata.id,
        opcode::UPDATE,
        rcode,
        &p.zone_section,
    );
    tsig::sign_response(&mut out, &p.key, &p.request_mac, now, 0, &[]);
    out
}

/// The answer to a request whose TSIG check failed (RFC 8945 5.3.2).
fn tsig_failure(
    out: &mut Vec<u8>,
    id: u16,
    op: u8,
    question: &[u8],
    rec: &TsigRecord,
    f: &Failure,
    now: u64,
) {
    put_simple(out, id, op, f.rcode(), question);
    match f {
        Failure::FormErr => {}
        Failure::BadKey(_) | Failure::BadSig(_) => {
            tsig::append_unsigned(out, rec, now, f.tsig_error())
        }
        Failure::BadTime(key) => {
            let other = now.to_be_bytes()[2..].to_vec();
            tsig::sign_response(out, key, &rec.mac, now, f.tsig_error(), &other);
        }
        Failure::BadTrunc(key) => {
            tsig::sign_response(out, key, &rec.mac, now, f.tsig_error(), &[]);
        }
    }
}

/// Header plus an optional echoed question (or zone section).
fn put_simple(out: &mut Vec<u8>, id: u16, op: u8, rcode: Rcode, question: &[u8]) {
    out.clear();
    let qd = u16::from(!question.is_empty());
    wire::put_header(
        out,
        id,
        [0x80 | (op & 0x0f) << 3, rcode.low()],
        [qd, 0, 0, 0],
    );
    out.extend_from_slice(question);
}

/// A question (name uncompressed, case kept; type; class).
fn encode_question(q: &hickory_proto::op::Query) -> Vec<u8> {
    let mut out = name_wire_case(q.name());
    out.extend_from_slice(&u16::from(q.query_type()).to_be_bytes());
    out.extend_from_slice(&u16::from(q.query_class()).to_be_bytes());
    out
}

/// The uncompressed wire form of a name, case kept.
pub fn name_wire_case(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out
}

#[cfg(test)]
mod tests;
