//! A reader for the classic pcap files tcpdump writes.
//!
//! Enough to assert on captures: every record with its timestamp and bytes,
//! the IP packet inside the link-layer frame, and byte searches ("does the
//! plaintext marker appear on the wire?"). Every length is checked before it
//! is used: a damaged file is an error, never a panic.

use std::path::Path;
use std::time::Duration;

use crate::Error;

/// Largest record we accept; tcpdump's default snap length is 262144.
const MAX_RECORD: usize = 262_144;

/// Link-layer header types (www.tcpdump.org/linktypes.html) we can strip.
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_IPV4: u32 = 228;
const LINKTYPE_IPV6: u32 = 229;
const LINKTYPE_LINUX_SLL2: u32 = 276;

/// A parsed capture.
#[derive(Debug, Clone, Default)]
pub struct Pcap {
    link_type: u32,
    packets: Vec<Packet>,
}

/// One captured frame.
#[derive(Clone)]
pub struct Packet {
    /// Capture time since the Unix epoch.
    pub ts: Duration,
    /// Length on the wire (may exceed `data.len()` if the snap length cut it).
    pub orig_len: u32,
    /// The captured bytes, link-layer header included.
    pub data: Vec<u8>,
    /// Where the IP header starts in `data`, when the frame carries IP.
    ip_offset: Option<usize>,
}

impl std::fmt::Debug for Packet {
    // Lengths, not bytes: a capture can hold anything.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packet")
            .field("ts", &self.ts)
            .field("orig_len", &self.orig_len)
            .field("captured", &self.data.len())
            .finish()
    }
}

impl Packet {
    /// The IP packet (IPv4 or IPv6 header onwards), if the frame holds one.
    pub fn ip(&self) -> Option<&[u8]> {
        self.ip_offset.and_then(|o| self.data.get(o..))
    }

    /// True when `needle` occurs anywhere in the captured bytes.
    pub fn contains(&self, needle: &[u8]) -> bool {
        find(&self.data, needle)
    }

    /// An IPv4 packet's source, destination, protocol and (TCP/UDP) ports
    /// (0 for other protocols and for fragments after the first).
    pub fn five_tuple(&self) -> Option<(std::net::IpAddr, std::net::IpAddr, u8, u16, u16)> {
        let ip = self.ip()?;
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let proto = ip[9];
        let first = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
        let ports = match (proto, ip.get(ihl..ihl + 4)) {
            (6 | 17, Some(p)) if first => (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            ),
            _ => (0, 0),
        };
        Some((src.into(), dst.into(), proto, ports.0, ports.1))
    }
}

impl Pcap {
    /// Reads a whole capture file. `partial_ok` accepts a last record that
    /// was cut short (a capture still being written).
    pub fn read(path: &Path, partial_ok: bool) -> Result<Self, Error> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io(format!("reading capture {}", path.display()), e))?;
        Pcap::parse(&bytes, partial_ok).map_err(|reason| Error::Pcap {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses capture bytes.
    pub fn parse(bytes: &[u8], partial_ok: bool) -> Result<Self, String> {
        let header = bytes
            .get(..24)
            .ok_or("shorter than the 24-byte pcap header")?;
        let magic = [header[0], header[1], header[2], header[3]];
        let (little, nanos) = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
            [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
            [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
            [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
            _ => return Err("not a pcap file (bad magic; pcapng is not supported)".into()),
        };
        let u32_at = |b: &[u8], at: usize| -> u32 {
            let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            if little {
                u32::from_le_bytes(w)
            } else {
                u32::from_be_bytes(w)
            }
        };
        // The top bits of the link-type field hold FCS flags.
        let link_type = u32_at(header, 20) & 0x0fff_ffff;
        let mut packets = Vec::new();
        let mut rest = &bytes[24..];
        while !rest.is_empty() {
            let Some(rec) = rest.get(..16) else {
                if partial_ok {
                    break;
                }
                return Err(format!("record {} header cut short", packets.len()));
            };
            let (sec, frac, incl, orig) = (
                u32_at(rec, 0),
                u32_at(rec, 4),
                u32_at(rec, 8) as usize,
                u32_at(rec, 12),
            );
            if incl > MAX_RECORD {
                return Err(format!("record {} claims {incl} bytes", packets.len()));
            }
            let Some(data) = rest.get(16..16 + incl) else {
                if partial_ok {
                    break;
                }
                return Err(format!("record {} data cut short", packets.len()));
            };
            let sub = if nanos {
                frac
            } else {
                frac.saturating_mul(1000)
            };
            let ts = Duration::new(u64::from(sec), sub.min(999_999_999));
            let ip_offset = ip_offset(link_type, data);
            packets.push(Packet {
                ts,
                orig_len: orig,
                data: data.to_vec(),
                ip_offset,
            });
            rest = &rest[16 + incl..];
        }
        Ok(Pcap { link_type, packets })
    }

    /// The link-layer type (1 = Ethernet, as on veth).
    pub fn link_type(&self) -> u32 {
        self.link_type
    }

    /// All packets, in capture order.
    pub fn packets(&self) -> &[Packet] {
        &self.packets
    }

    /// Number of packets.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// True when nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// True when some packet contains `needle`.
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.packets.iter().any(|p| p.contains(needle))
    }

    /// How many packets contain `needle`.
    pub fn count_containing(&self, needle: &[u8]) -> usize {
        self.packets.iter().filter(|p| p.contains(needle)).count()
    }
}

/// Offset of the IP header in a frame of `link_type`, if it carries IP.
fn ip_offset(link_type: u32, data: &[u8]) -> Option<usize> {
    let is_ip = |ethertype: u16| ethertype == 0x0800 || ethertype == 0x86dd;
    let be16 = |at: usize| {
        data.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    match link_type {
        LINKTYPE_ETHERNET => {
            let mut off = 12;
            // Skip 802.1Q / 802.1ad tags.
            while matches!(be16(off)?, 0x8100 | 0x88a8) {
                off += 4;
            }
            is_ip(be16(off)?).then_some(off + 2)
        }
        LINKTYPE_LINUX_SLL => is_ip(be16(14)?).then_some(16),
        LINKTYPE_LINUX_SLL2 => is_ip(be16(0)?).then_some(20),
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 | 12 | 14 => {
            matches!(data.first()? >> 4, 4 | 6).then_some(0)
        }
        _ => None,
    }
}

/// Naive substring search; captures in tests are small.
fn find(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(magic: [u8; 4], link_type: u32, records: &[(&[u8], u32)]) -> Vec<u8> {
        let mut v = magic.to_vec();
        v.extend_from_slice(&[2, 0, 4, 0]);
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&262_144u32.to_le_bytes());
        v.extend_from_slice(&link_type.to_le_bytes());
        for (i, (data, frac)) in records.iter().enumerate() {
            v.extend_from_slice(&(1_700_000_000 + i as u32).to_le_bytes());
            v.extend_from_slice(&frac.to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(data);
        }
        v
    }

    fn eth_ipv4(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.push(0x45);
        f.extend_from_slice(&[0; 19]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn reads_records_and_finds_bytes() {
        let a = eth_ipv4(b"hello MARKER");
        let b = eth_ipv4(b"other");
        let bytes = file([0xd4, 0xc3, 0xb2, 0xa1], 1, &[(&a, 250), (&b, 0)]);
        let cap = Pcap::parse(&bytes, false).unwrap();
        assert_eq!(cap.len(), 2);
        assert_eq!(cap.link_type(), 1);
        assert!(cap.contains(b"MARKER"));
        assert_eq!(cap.count_containing(b"MARKER"), 1);
        assert!(!cap.contains(b"absent"));
        assert_eq!(cap.packets()[0].ts, Duration::new(1_700_000_000, 250_000));
        assert_eq!(cap.packets()[0].ip().unwrap()[0], 0x45);
    }

    #[test]
    fn nanosecond_files_and_raw_ip() {
        let ip = [0x60u8, 0, 0, 0];
        let bytes = file([0x4d, 0x3c, 0xb2, 0xa1], 101, &[(&ip, 7)]);
        let cap = Pcap::parse(&bytes, false).unwrap();
        assert_eq!(cap.packets()[0].ts.subsec_nanos(), 7);
        assert_eq!(cap.packets()[0].ip(), Some(&ip[..]));
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        assert!(Pcap::parse(b"short", false).is_err());
        assert!(Pcap::parse(&[0u8; 24], false).is_err(), "bad magic");
        let a = eth_ipv4(b"x");
        let full = file([0xd4, 0xc3, 0xb2, 0xa1], 1, &[(&a, 0)]);
        for cut in 25..full.len() {
            assert!(Pcap::parse(&full[..cut], false).is_err(), "cut at {cut}");
            assert_eq!(Pcap::parse(&full[..cut], true).unwrap().len(), 0);
        }
        let mut huge = file([0xd4, 0xc3, 0xb2, 0xa1], 1, &[]);
        huge.extend_from_slice(&[0; 8]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert!(Pcap::parse(&huge, true).is_err());
    }

    #[test]
    fn non_ip_frames_have_no_ip_slice() {
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&[0x08, 0x06, 0, 1]);
        let bytes = file([0xd4, 0xc3, 0xb2, 0xa1], 1, &[(&arp, 0), (&[0u8; 3], 0)]);
        let cap = Pcap::parse(&bytes, false).unwrap();
        assert!(cap.packets().iter().all(|p| p.ip().is_none()));
    }
}
