//! Raw IPv4 injection, for tests that play an on-path attacker: a packet
//! taken from a capture, edited or sent again as it is, leaves a lab host
//! exactly as given (a raw `IPPROTO_RAW` socket, the IP header included).
//!
//! Call [`send_ipv4`] on a thread inside the host's namespace
//! ([`crate::Lab::run_in`]). After editing a packet, [`fix_checksums`] makes
//! its IPv4 and TCP/UDP checksums right again, so the receiver judges the
//! edit itself and not a broken checksum.
//!
//! What it never does: send anything but IPv4, or touch a packet's bytes
//! beyond what the caller asks for (the kernel fills the IP header checksum
//! and total length of raw sends in any case).

use std::net::Ipv4Addr;

use crate::Error;

/// IPv4 header fields a test edits or checks: (source, destination,
/// protocol, header length in bytes, total length in bytes).
pub fn ipv4_fields(packet: &[u8]) -> Result<(Ipv4Addr, Ipv4Addr, u8, usize, usize), Error> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return Err(Error::BadPacket("not an IPv4 packet"));
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if ihl < 20 || total < ihl || total > packet.len() {
        return Err(Error::BadPacket("IPv4 header or total length out of range"));
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Ok((src, dst, packet[9], ihl, total))
}

/// Recomputes the IPv4 header checksum and, for TCP and UDP, the transport
/// checksum of `packet` (its first total-length bytes) from scratch.
pub fn fix_checksums(packet: &mut [u8]) -> Result<(), Error> {
    let (src, dst, proto, ihl, total) = ipv4_fields(packet)?;
    packet[10..12].fill(0);
    let ip = fold(sum(&packet[..ihl], 0));
    packet[10..12].copy_from_slice(&ip.to_be_bytes());
    let at = match proto {
        6 => 16,
        17 => 6,
        _ => return Ok(()),
    };
    let l4 = &mut packet[ihl..total];
    if l4.len() < at + 2 || (proto == 17 && l4.len() < 8) {
        return Err(Error::BadPacket("transport header cut short"));
    }
    l4[at..at + 2].fill(0);
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = proto;
    // The transport length fits: total length is a u16.
    pseudo[10..12].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    let mut c = fold(sum(l4, sum(&pseudo, 0)));
    // UDP sends a computed 0 as 0xffff (0 means "no checksum").
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Sends `packet` (a whole IPv4 packet, header included) from the calling
/// thread's network namespace, routed by its destination address. The
/// source address is the packet's, whatever addresses the host has.
pub fn send_ipv4(packet: &[u8]) -> Result<(), Error> {
    let (_, dst, _, _, total) = ipv4_fields(packet)?;
    // SAFETY: plain socket(2); the descriptor is owned and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(Error::io(
            "opening a raw socket",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the buffer and the address outlive the call; lengths are theirs.
    let n = unsafe {
        libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            packet.as_ptr().cast(),
            total,
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(Error::io(
            format!("sending a raw packet to {dst}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// One's-complement sum of `bytes` as big-endian 16-bit words onto `acc`.
fn sum(bytes: &[u8], mut acc: u64) -> u64 {
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits and complements it.
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // Folded to 16 bits above.
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// UDP 10.0.0.1:1234 -> 10.0.0.2:80 carrying "hi", checksums filled.
    fn sample() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 30, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 0x04, 0xd2, 0,
            80, 0, 10, 0, 0, b'h', b'i',
        ];
        fix_checksums(&mut p).unwrap();
        p
    }

    #[test]
    fn checksums_verify_to_zero() {
        let p = sample();
        assert_eq!(fold(sum(&p[..20], 0)), 0, "IPv4 header");
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&p[12..20]);
        pseudo[9] = 17;
        pseudo[11] = 10;
        assert_eq!(fold(sum(&p[20..], sum(&pseudo, 0))), 0, "UDP");
    }

    #[test]
    fn bad_packets_are_typed_errors() {
        assert!(matches!(
            fix_checksums(&mut [0x60; 40]),
            Err(Error::BadPacket(_))
        ));
        let mut cut = sample();
        cut[3] = 200;
        assert!(matches!(ipv4_fields(&cut), Err(Error::BadPacket(_))));
        let mut short = sample()[..24].to_vec();
        short[3] = 24;
        assert!(matches!(
            fix_checksums(&mut short),
            Err(Error::BadPacket(_))
        ));
    }
}
