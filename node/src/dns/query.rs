//! The request path, without I/O: from the bytes of one request to the
//! response bytes, or to a forwarding job for the caller to run.
//!
//! No input makes this code panic or allocate without bound: requests that
//! cannot be parsed get FORMERR when their header is readable, responses and
//! runts are dropped.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::RecordType;
use tracing::debug;

use super::table::Snapshot;
use super::zone::Zone;

/// Length of the DNS header.
pub(crate) const HEADER_LEN: usize = 12;
/// The UDP payload size the stub announces in its own answers (the 2020 DNS
/// flag day value).
pub(crate) const EDNS_PAYLOAD: u16 = 1232;
/// Largest UDP response the stub sends (an IPv4 UDP datagram holds 65507
/// bytes; keep a margin for IPv6 and options).
pub(crate) const MAX_UDP_RESPONSE: usize = 65_000;
/// Largest response over TCP (the two-byte length prefix).
pub(crate) const MAX_TCP_RESPONSE: usize = u16::MAX as usize;

/// How a request reached the stub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A UDP datagram.
    Udp,
    /// A length-prefixed message on a TCP connection.
    Tcp,
}

/// What the request path decided.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Send these bytes back.
    Reply(Vec<u8>, Kind),
    /// The name is not ours: forward the request upstream.
    Forward(ForwardJob),
    /// Send nothing (a response, a runt).
    Drop,
}

/// Which counter a reply goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An answer from the zone (including NXDOMAIN and NODATA).
    Answered,
    /// FORMERR, NOTIMP, REFUSED or BADVERS.
    Rejected,
}

/// A request for a name outside the zone.
#[derive(Debug)]
pub(crate) struct ForwardJob {
    /// The request as received.
    pub(crate) raw: Vec<u8>,
    /// The request, parsed: exactly one question, opcode QUERY.
    pub(crate) request: Message,
    /// How it arrived.
    pub(crate) transport: Transport,
    /// The largest response the client takes on this transport.
    pub(crate) client_limit: usize,
}

/// Handles one request against the zone and a snapshot of the name table.
pub(crate) fn handle(zone: &Zone, snap: &Snapshot, msg: &[u8], transport: Transport) -> Decision {
    let Some(header) = msg.get(..HEADER_LEN) else {
        return Decision::Drop;
    };
    if header[2] & 0x80 != 0 {
        return Decision::Drop; // never answer a response: no reflection loops
    }
    let id = u16::from_be_bytes([header[0], header[1]]);
    let opcode = (header[2] >> 3) & 0x0f;
    let rd = header[2] & 0x01 != 0;
    let request = match Message::from_vec(msg) {
        Ok(m) => m,
        Err(e) => {
            debug!(len = msg.len(), error = %e, "malformed DNS request");
            return reject_raw(id, opcode, rd, ResponseCode::FormErr);
        }
    };
    if request.metadata.op_code != OpCode::Query {
        return reject(&request, ResponseCode::NotImp);
    }
    if request.queries.len() != 1 {
        return reject(&request, ResponseCode::FormErr);
    }
    if request.edns.as_ref().is_some_and(|e| e.version() != 0) {
        return reject(&request, ResponseCode::BADVERS);
    }
    let client_limit = match transport {
        Transport::Tcp => MAX_TCP_RESPONSE,
        Transport::Udp => request
            .edns
            .as_ref()
            .map_or(512, |e| usize::from(e.max_payload()).max(512))
            .min(MAX_UDP_RESPONSE),
    };
    let query = &request.queries[0];
    if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
        // A stub serves no zone transfers, neither its own nor forwarded.
        return reject(&request, ResponseCode::Refused);
    }
    if !zone.contains(query.name()) {
        debug!(qtype = %query.query_type(), ?transport, "forwarding");
        return Decision::Forward(ForwardJob {
            raw: msg.to_vec(),
            request,
            transport,
            client_limit,
        });
    }
    let mut resp = zone.answer(snap, &request, query);
    if request.edns.is_some() {
        resp.set_edns(our_edns());
    }
    debug!(
        name = %query.name(),
        qtype = %query.query_type(),
        rcode = %resp.metadata.response_code,
        answers = resp.answers.len(),
        "answered from the name table"
    );
    Decision::Reply(encode(&resp, client_limit), Kind::Answered)
}

/// The OPT record of the stub's own answers.
pub(crate) fn our_edns() -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    edns
}

/// Encodes `resp`; when it exceeds `limit`, encodes the truncated form (TC
/// set, question and OPT only) instead, so the client retries over TCP.
pub(crate) fn encode(resp: &Message, limit: usize) -> Vec<u8> {
    match resp.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        Ok(_) => resp
            .truncate()
            .to_vec()
            .unwrap_or_else(|_| servfail_raw(resp.metadata.id, resp.metadata.recursion_desired)),
        Err(e) => {
            debug!(error = %e, "cannot encode a response");
            servfail_raw(resp.metadata.id, resp.metadata.recursion_desired)
        }
    }
}

/// A response to `request` with only its question (and OPT) and `rcode`.
pub(crate) fn error_response(request: &Message, rcode: ResponseCode) -> Message {
    let mut resp = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata = hickory_proto::op::Metadata::response_from_request(&request.metadata);
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = rcode;
    resp.add_queries(request.queries.iter().take(1).cloned());
    if request.edns.is_some() {
        resp.set_edns(our_edns());
    }
    resp
}

fn reject(request: &Message, rcode: ResponseCode) -> Decision {
    debug!(rcode = %rcode, "request rejected");
    let resp = error_response(request, rcode);
    Decision::Reply(encode(&resp, 512), Kind::Rejected)
}

/// A header-only response, for requests that do not parse.
fn reject_raw(id: u16, opcode: u8, rd: bool, rcode: ResponseCode) -> Decision {
    let mut out = vec![0u8; HEADER_LEN];
    out[..2].copy_from_slice(&id.to_be_bytes());
    out[2] = 0x80 | (opcode << 3) | u8::from(rd);
    out[3] = 0x80 | (u16::from(rcode) & 0x0f) as u8; // RA
    Decision::Reply(out, Kind::Rejected)
}

/// A header-only SERVFAIL, the last resort when even encoding failed.
pub(crate) fn servfail_raw(id: u16, rd: bool) -> Vec<u8> {
    match reject_raw(id, 0, rd, ResponseCode::ServFail) {
        Decision::Reply(b, _) => b,
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use proptest::prelude::*;

    use super::*;
    use crate::dns::table::{NameTable, Target};

    fn setup() -> (Zone, NameTable) {
        let t = NameTable::new();
        t.insert("b", Target::peer(Ipv4Addr::new(100, 64, 0, 2)))
            .unwrap();
        (Zone::new("home.fpn", 60).unwrap(), t)
    }

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn reply(d: Decision) -> Message {
        match d {
            Decision::Reply(b, _) => Message::from_vec(&b).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn zone_names_are_answered_and_others_forwarded() {
        let (z, t) = setup();
        let r = reply(handle(
            &z,
            &t.snapshot(),
            &query("b.home.fpn.", RecordType::A, Some(4096)),
            Transport::Udp,
        ));
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.edns.as_ref().unwrap().max_payload(), EDNS_PAYLOAD);
        match handle(
            &z,
            &t.snapshot(),
            &query("www.example.test.", RecordType::A, Some(4096)),
            Transport::Udp,
        ) {
            Decision::Forward(job) => assert_eq!(job.client_limit, 4096),
            other => panic!("{other:?}"),
        }
        match handle(
            &z,
            &t.snapshot(),
            &query("www.example.test.", RecordType::A, None),
            Transport::Tcp,
        ) {
            Decision::Forward(job) => assert_eq!(job.client_limit, MAX_TCP_RESPONSE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_requests_are_rejected_or_dropped() {
        let (z, t) = setup();
        let s = t.snapshot();
        assert!(matches!(
            handle(&z, &s, &[1, 2, 3], Transport::Udp),
            Decision::Drop
        ));
        let mut resp = query("b.home.fpn.", RecordType::A, None);
        resp[2] |= 0x80;
        assert!(matches!(
            handle(&z, &s, &resp, Transport::Udp),
            Decision::Drop
        ));
        let mut garbage = query("b.home.fpn.", RecordType::A, None);
        garbage.truncate(20);
        let r = reply(handle(&z, &s, &garbage, Transport::Udp));
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        let mut update = query("b.home.fpn.", RecordType::A, None);
        update[2] = 5 << 3;
        let r = reply(handle(&z, &s, &update, Transport::Udp));
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
        let axfr = query("example.test.", RecordType::AXFR, None);
        let r = reply(handle(&z, &s, &axfr, Transport::Tcp));
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        let mut v1 = Message::from_vec(&query("b.home.fpn.", RecordType::A, Some(1232))).unwrap();
        v1.edns.as_mut().unwrap().set_version(1);
        let r = reply(handle(&z, &s, &v1.to_vec().unwrap(), Transport::Udp));
        // 16 reads back as BADSIG (the same number, RFC 6891 / 8945).
        assert_eq!(
            u16::from(r.metadata.response_code),
            u16::from(ResponseCode::BADVERS)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// Arbitrary bytes never panic, and every reply parses and carries
        /// the request's id.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (z, t) = setup();
            for transport in [Transport::Udp, Transport::Tcp] {
                if let Decision::Reply(out, _) = handle(&z, &t.snapshot(), &bytes, transport) {
                    let m = Message::from_vec(&out).unwrap();
                    prop_assert_eq!(&out[..2], &bytes[..2]);
                    prop_assert_eq!(m.metadata.message_type, MessageType::Response);
                }
            }
        }

        /// Mutated valid queries (a likelier path into the parser than
        /// random bytes) never panic either.
        #[test]
        fn mutated_queries_never_panic(at in 0usize..64, val in any::<u8>(), cut in 12usize..64) {
            let (z, t) = setup();
            let mut q = query("b.home.fpn.", RecordType::A, Some(1232));
            if at < q.len() { q[at] = val; }
            q.truncate(cut.max(12));
            if let Decision::Reply(out, _) = handle(&z, &t.snapshot(), &q, Transport::Udp) {
                prop_assert!(Message::from_vec(&out).is_ok());
            }
        }
    }
}
