//! The LIP ("local IP") record: RR type 65300 from the private-use range
//! (RFC 6895 section 3.1), RDATA = a 4-byte IPv4 or a 16-byte IPv6 address.
//!
//! It carries the private address of a host behind a NAT; the host's A/AAAA
//! record holds its gateway's public address, and answers for A/AAAA carry
//! the LIP records in the additional section. Presentation name: `LIP`;
//! standard tools show it as `TYPE65300` in RFC 3597 generic form
//! (`\# 4 c0a8010a` for 192.168.1.10).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::NULL;
use hickory_proto::rr::{RData, RecordType};

pub use crate::wire::rtype::LIP as LIP_TYPE;

/// The LIP record type as hickory-proto names it.
pub const LIP_RECORD_TYPE: RecordType = RecordType::Unknown(LIP_TYPE);

/// The RDATA of a LIP record for `addr`.
pub fn lip_rdata(addr: IpAddr) -> RData {
    let bytes = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    RData::Unknown {
        code: LIP_RECORD_TYPE,
        rdata: NULL::with(bytes),
    }
}

/// The address in a LIP record's RDATA; `None` if `rd` is not a valid LIP.
pub fn lip_addr(rd: &RData) -> Option<IpAddr> {
    let RData::Unknown { code, rdata } = rd else {
        return None;
    };
    if *code != LIP_RECORD_TYPE {
        return None;
    }
    let b = rdata.anything.as_slice();
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        Some(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(b) {
        Some(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        None
    }
}

/// Presentation form of a LIP record's data (`192.168.1.10`), or the RFC
/// 3597 generic form when it is not a valid address.
pub fn lip_presentation(rd: &RData) -> String {
    match (lip_addr(rd), rd) {
        (Some(a), _) => a.to_string(),
        (None, RData::Unknown { rdata, .. }) => {
            let hex: String = rdata.anything.iter().map(|b| format!("{b:02x}")).collect();
            format!("\\# {} {hex}", rdata.anything.len())
        }
        (None, other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        for a in ["192.168.1.10", "fd00::10"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(lip_addr(&lip_rdata(ip)), Some(ip));
            assert_eq!(lip_presentation(&lip_rdata(ip)), a);
        }
    }

    #[test]
    fn rejects_other_lengths_and_types() {
        let bad = RData::Unknown {
            code: LIP_RECORD_TYPE,
            rdata: NULL::with(vec![1, 2, 3]),
        };
        assert_eq!(lip_addr(&bad), None);
        assert_eq!(lip_presentation(&bad), "\\# 3 010203");
        let other = RData::Unknown {
            code: RecordType::Unknown(65301),
            rdata: NULL::with(vec![1, 2, 3, 4]),
        };
        assert_eq!(lip_addr(&other), None);
    }
}
