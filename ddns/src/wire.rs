//! Low-level DNS wire helpers: response codes, type numbers, header bits and
//! the bounded parser of the fast query path.
//!
//! The fast path reads a plain query (one question, at most an EDNS OPT
//! record) without allocating; everything else goes to the full parser in
//! hickory-proto. Nothing here panics on any input: every index is checked.

/// Length of the DNS header.
pub const HEADER_LEN: usize = 12;
/// Longest domain name in wire format (RFC 1035 section 3.1).
pub const MAX_NAME_LEN: usize = 255;
/// UDP payload size this server announces and honours at most (the 2020 DNS
/// flag day value: fits the IPv6 minimum MTU without fragmentation).
pub const EDNS_PAYLOAD: u16 = 1232;

/// RR type numbers used on the answer path.
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Name server.
    pub const NS: u16 = 2;
    /// Canonical name (not served: refused in updates).
    pub const CNAME: u16 = 5;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// Text.
    pub const TXT: u16 = 16;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// Delegation name (not served).
    pub const DNAME: u16 = 39;
    /// EDNS pseudo-record.
    pub const OPT: u16 = 41;
    /// Transaction signature.
    pub const TSIG: u16 = 250;
    /// Incremental zone transfer.
    pub const IXFR: u16 = 251;
    /// Full zone transfer.
    pub const AXFR: u16 = 252;
    /// Any type (query) or all RRsets (update).
    pub const ANY: u16 = 255;
    /// fpn's Local IP record (private-use range, RFC 6895).
    pub const LIP: u16 = 65300;
}

/// Class numbers.
pub mod class {
    /// Internet.
    pub const IN: u16 = 1;
    /// NONE (RFC 2136: "delete this RR" / "RRset does not exist").
    pub const NONE: u16 = 254;
    /// ANY (RFC 2136: "delete RRset" / "RRset exists"; TSIG records).
    pub const ANY: u16 = 255;
}

/// Opcodes.
pub mod opcode {
    /// Standard query.
    pub const QUERY: u8 = 0;
    /// Zone change notification (RFC 1996).
    pub const NOTIFY: u8 = 4;
    /// Dynamic update (RFC 2136).
    pub const UPDATE: u8 = 5;
}

/// A DNS response code, including the extended range of EDNS and TSIG.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rcode(pub u16);

impl Rcode {
    /// No error.
    pub const NOERROR: Self = Self(0);
    /// The request was malformed.
    pub const FORMERR: Self = Self(1);
    /// The server failed (storage error, overload).
    pub const SERVFAIL: Self = Self(2);
    /// The name does not exist (query) or a prerequisite name is not in use (update).
    pub const NXDOMAIN: Self = Self(3);
    /// The opcode or feature is not implemented.
    pub const NOTIMP: Self = Self(4);
    /// Refused by policy (unsigned update, out of scope, not our zone).
    pub const REFUSED: Self = Self(5);
    /// A name that must not exist does.
    pub const YXDOMAIN: Self = Self(6);
    /// An RRset that must not exist does.
    pub const YXRRSET: Self = Self(7);
    /// An RRset that must exist does not (or differs).
    pub const NXRRSET: Self = Self(8);
    /// Not authorized: TSIG failure, or not authoritative for the zone.
    pub const NOTAUTH: Self = Self(9);
    /// A name in the update is outside the zone.
    pub const NOTZONE: Self = Self(10);
    /// Unsupported EDNS version (extended rcode).
    pub const BADVERS: Self = Self(16);

    /// The low four bits that go into the header.
    pub fn low(self) -> u8 {
        (self.0 & 0x0f) as u8
    }

    /// The upper eight bits that go into the OPT record.
    pub fn high(self) -> u8 {
        ((self.0 >> 4) & 0xff) as u8
    }
}

impl std::fmt::Display for Rcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            0 => "NOERROR",
            1 => "FORMERR",
            2 => "SERVFAIL",
            3 => "NXDOMAIN",
            4 => "NOTIMP",
            5 => "REFUSED",
            6 => "YXDOMAIN",
            7 => "YXRRSET",
            8 => "NXRRSET",
            9 => "NOTAUTH",
            10 => "NOTZONE",
            16 => "BADVERS",
            n => return write!(f, "RCODE{n}"),
        };
        f.write_str(name)
    }
}

/// The EDNS parameters of a request that matter for the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdnsReq {
    /// The requester's UDP payload size.
    pub payload: u16,
    /// The EDNS version it speaks.
    pub version: u8,
}

impl EdnsReq {
    /// The largest UDP response this request allows.
    pub fn udp_limit(edns: Option<Self>) -> usize {
        match edns {
            None => 512,
            Some(e) => usize::from(e.payload.clamp(512, EDNS_PAYLOAD)),
        }
    }
}

/// A plain query as the fast path sees it: borrowed from the request.
#[derive(Clone, Copy, Debug)]
pub struct FastQuery<'a> {
    /// Message id.
    pub id: u16,
    /// The request's RD and CD bits, to be copied into the response.
    pub copy_flags: (u8, u8),
    /// The question name as sent (case preserved), uncompressed.
    pub qname: &'a [u8],
    /// Question type.
    pub qtype: u16,
    /// Question class.
    pub qclass: u16,
    /// EDNS parameters, when the request carried an OPT record.
    pub edns: Option<EdnsReq>,
}

/// Parses a request the fast path can answer: a QUERY with one question of
/// class IN and an uncompressed name, no answer or authority records, and at
/// most an OPT record in the additional section, nothing after it.
///
/// Writes the lower-cased wire name to `key` and returns its length with the
/// query. `None` means "use the full parser" — not that the request is bad.
pub fn parse_fast<'a>(
    msg: &'a [u8],
    key: &mut [u8; MAX_NAME_LEN],
) -> Option<(FastQuery<'a>, usize)> {
    let h = msg.get(..HEADER_LEN)?;
    // QR=0, opcode QUERY, TC=0 (AA is ignored in requests)
    if h[2] & 0xfa != 0 {
        return None;
    }
    let qd = u16::from_be_bytes([h[4], h[5]]);
    let an = u16::from_be_bytes([h[6], h[7]]);
    let ns = u16::from_be_bytes([h[8], h[9]]);
    let ar = u16::from_be_bytes([h[10], h[11]]);
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let name_len = lower_name(msg, HEADER_LEN, key)?;
    let q_end = HEADER_LEN + name_len;
    let fixed = msg.get(q_end..q_end + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    if qclass != class::IN || matches!(qtype, rtype::AXFR | rtype::IXFR | rtype::OPT | rtype::TSIG)
    {
        return None;
    }
    let mut pos = q_end + 4;
    let edns = if ar == 1 {
        // OPT: root name, type 41, class = payload size, TTL = ext-rcode,
        // version, flags; then the options, which we skip.
        let rr = msg.get(pos..pos + 11)?;
        if rr[0] != 0 || u16::from_be_bytes([rr[1], rr[2]]) != rtype::OPT {
            return None;
        }
        let payload = u16::from_be_bytes([rr[3], rr[4]]);
        let version = rr[6];
        let rdlen = usize::from(u16::from_be_bytes([rr[9], rr[10]]));
        pos += 11 + rdlen;
        if version != 0 {
            return None; // BADVERS is answered by the full path
        }
        Some(EdnsReq { payload, version })
    } else {
        None
    };
    if pos != msg.len() {
        return None;
    }
    let query = FastQuery {
        id: u16::from_be_bytes([h[0], h[1]]),
        copy_flags: (h[2] & 0x01, h[3] & 0x10),
        qname: &msg[HEADER_LEN..q_end],
        qtype,
        qclass,
        edns,
    };
    Some((query, name_len))
}

/// Copies the uncompressed name at `pos` into `key`, lower-cased, and returns
/// its wire length. `None` for compressed, malformed or oversized names.
pub fn lower_name(msg: &[u8], mut pos: usize, key: &mut [u8; MAX_NAME_LEN]) -> Option<usize> {
    let start = pos;
    loop {
        let len = usize::from(*msg.get(pos)?);
        if len > 63 {
            return None; // pointer or extended label type
        }
        let end = pos + 1 + len;
        if end - start > MAX_NAME_LEN {
            return None;
        }
        let label = msg.get(pos..end)?;
        for (dst, src) in key[pos - start..end - start].iter_mut().zip(label) {
            *dst = src.to_ascii_lowercase();
        }
        pos = end;
        if len == 0 {
            return Some(pos - start);
        }
    }
}

/// Whether the wire name `name` (uncompressed, lower case) is `origin` or
/// below it. Walks the labels so a label holding bytes that look like the
/// origin cannot fool the check.
pub fn in_zone(name: &[u8], origin: &[u8]) -> bool {
    let Some(prefix) = name.len().checked_sub(origin.len()) else {
        return false;
    };
    let mut pos = 0;
    while pos < prefix {
        match name.get(pos) {
            Some(&len) => pos += usize::from(len) + 1,
            None => return false,
        }
    }
    pos == prefix && &name[prefix..] == origin
}

/// Skips the (possibly compressed) name at `pos` and returns the position
/// after it. Does not follow pointers: a pointer ends the name in place.
pub fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    let start = pos;
    loop {
        let len = *msg.get(pos)?;
        match len & 0xc0 {
            0x00 => {
                pos += 1 + usize::from(len);
                if len == 0 {
                    return (pos <= msg.len()).then_some(pos);
                }
                if pos - start > MAX_NAME_LEN {
                    return None;
                }
            }
            0xc0 => return (pos + 2 <= msg.len()).then_some(pos + 2),
            _ => return None,
        }
    }
}

/// Walks the sections of a message and returns the offset of the last
/// record of the additional section (where a TSIG record must be), or
/// `None` when the message is malformed or has no additional record.
pub fn last_additional(msg: &[u8]) -> Option<usize> {
    let h = msg.get(..HEADER_LEN)?;
    let count = |i: usize| usize::from(u16::from_be_bytes([h[i], h[i + 1]]));
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if ar == 0 {
        return None;
    }
    let mut pos = HEADER_LEN;
    for _ in 0..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut last = pos;
    for _ in 0..an + ns + ar {
        last = pos;
        pos = skip_name(msg, pos)?;
        let fixed = msg.get(pos..pos + 10)?;
        pos += 10 + usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    }
    (pos <= msg.len()).then_some(last)
}

/// Writes a DNS header.
pub fn put_header(out: &mut Vec<u8>, id: u16, flags: [u8; 2], counts: [u16; 4]) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags);
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

/// Writes the OPT record of a response: our payload size, the extended
/// rcode bits, version 0, no flags, no options.
pub fn put_opt(out: &mut Vec<u8>, rcode: Rcode) {
    out.push(0);
    out.extend_from_slice(&rtype::OPT.to_be_bytes());
    out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[rcode.high(), 0, 0, 0, 0, 0]);
}

/// Overwrites the four section counts of a header.
pub fn put_header_counts(msg: &mut [u8], counts: [u16; 4]) {
    for (i, c) in counts.into_iter().enumerate() {
        set_count(msg, 4 + 2 * i, c);
    }
}

/// Sets the 16-bit count at header offset `at` (4, 6, 8 or 10).
pub fn set_count(msg: &mut [u8], at: usize, value: u16) {
    if let Some(b) = msg.get_mut(at..at + 2) {
        b.copy_from_slice(&value.to_be_bytes());
    }
}

/// Reads the 16-bit count at header offset `at`.
pub fn count(msg: &[u8], at: usize) -> u16 {
    match msg.get(at..at + 2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], qtype: u16, opt: bool) -> Vec<u8> {
        let mut m = Vec::new();
        put_header(&mut m, 0x1234, [0x01, 0x00], [1, 0, 0, u16::from(opt)]);
        m.extend_from_slice(name);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&class::IN.to_be_bytes());
        if opt {
            m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 4, 0, 10, 0, 0]);
        }
        m
    }

    #[test]
    fn fast_parse_lowercases_and_reads_edns() {
        let m = query(b"\x03NaS\x04Home\x03fpn\x00", rtype::A, true);
        let mut key = [0; MAX_NAME_LEN];
        let (q, len) = parse_fast(&m, &mut key).unwrap();
        assert_eq!(&key[..len], b"\x03nas\x04home\x03fpn\x00");
        assert_eq!(q.qname, b"\x03NaS\x04Home\x03fpn\x00");
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.copy_flags, (1, 0));
        assert_eq!(
            q.edns,
            Some(EdnsReq {
                payload: 4096,
                version: 0
            })
        );
    }

    #[test]
    fn fast_parse_declines_what_it_does_not_handle() {
        let mut key = [0; MAX_NAME_LEN];
        // compressed question name
        assert!(parse_fast(&query(b"\xc0\x0c", rtype::A, false), &mut key).is_none());
        // AXFR
        assert!(parse_fast(&query(b"\x03fpn\x00", rtype::AXFR, false), &mut key).is_none());
        // trailing garbage
        let mut m = query(b"\x03fpn\x00", rtype::A, false);
        m.push(0);
        assert!(parse_fast(&m, &mut key).is_none());
        // truncated
        assert!(parse_fast(&m[..14], &mut key).is_none());
        // a response
        let mut m = query(b"\x03fpn\x00", rtype::A, false);
        m[2] |= 0x80;
        assert!(parse_fast(&m, &mut key).is_none());
    }

    #[test]
    fn in_zone_walks_labels() {
        assert!(in_zone(b"\x03fpn\x00", b"\x03fpn\x00"));
        assert!(in_zone(b"\x01a\x03fpn\x00", b"\x03fpn\x00"));
        // label "ab\x03fpn" ends with bytes equal to the origin's wire form
        assert!(!in_zone(b"\x06ab\x03fpn\x00", b"\x03fpn\x00"));
        assert!(!in_zone(b"\x00", b"\x03fpn\x00"));
        assert!(!in_zone(b"\x04xfpn\x00", b"\x03fpn\x00"));
    }

    #[test]
    fn last_additional_finds_the_final_record() {
        let m = query(b"\x03fpn\x00", rtype::A, true);
        assert_eq!(last_additional(&m), Some(12 + 5 + 4));
        assert_eq!(last_additional(&m[..m.len() - 1]), None);
        assert_eq!(
            last_additional(&query(b"\x03fpn\x00", rtype::A, false)),
            None
        );
    }

    #[test]
    fn rcode_splits_into_header_and_opt_bits() {
        assert_eq!(Rcode::BADVERS.low(), 0);
        assert_eq!(Rcode::BADVERS.high(), 1);
        assert_eq!(Rcode::NOTAUTH.low(), 9);
        assert_eq!(Rcode::NOTAUTH.to_string(), "NOTAUTH");
    }
}
