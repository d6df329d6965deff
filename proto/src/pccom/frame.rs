//! Sealing and opening one packet in place: the PCCOM frame.
//!
//! ```text
//! | IP header | L4 header | ciphertext (= payload length) | counter (8, BE) | tag (16) |
//!                         '------------- L4 payload as the network sees it ---------'
//! ```
//!
//! The associated data ([`aad`]) is 8 bytes, built on the stack.

use super::aead::{NONCE_LEN, PacketAead, TAG_LEN};
use super::replay::ReplayWindow;
use super::{COUNTER_LEN, TRAILER_LEN};
use crate::packet::{Packet, Transport, tcp_flags};
use crate::{Error, Result};

/// Version byte at the start of the associated data. A future frame format
/// changes it, so a packet can never verify under the wrong interpretation.
/// Version 2 added TCP URG with the urgent pointer and ICMP bytes 4-7 of
/// non-echo messages.
const AAD_VERSION: u8 = 2;
/// Length of the associated data.
pub(crate) const AAD_LEN: usize = 8;
/// TCP flags bound by the AAD. PSH, ECE and CWR are left out: ECN bleaching
/// middleboxes clear ECE/CWR and normalisers clear PSH, and none of them
/// changes what the receiver does with authenticated data. URG is bound
/// although some normalisers clear it: a forged URG makes the receiving
/// stack pull a byte out of the stream (out-of-band data), an integrity
/// break; a path that strips URG breaks only the rare flows that use it.
const TCP_BOUND_FLAGS: u8 =
    tcp_flags::FIN | tcp_flags::SYN | tcp_flags::RST | tcp_flags::ACK | tcp_flags::URG;

/// The associated data of a packet:
/// `version (1) | protocol (1) | transport fields (6)`, where the transport
/// fields are TCP: the bound flags, then the urgent pointer when URG is set
/// (else zeros), then zeros; UDP: zeros; ICMP: type, code, then for echo
/// messages the sequence number and two zeros, for every other message
/// bytes 4-7 (a "packet too big" MTU, a parameter-problem pointer).
///
/// Not covered, because NATs and middleboxes rewrite them or because something
/// else already binds them: addresses and ports (NAT; the per-flow key binds
/// the flow), IP version (NAT64), TTL/hop limit, IPv4 ID and flags, DSCP/ECN,
/// IPv6 flow label, IPv4 options and IPv6 extension headers, checksums, the
/// lengths (GCM authenticates the ciphertext length), TCP sequence and
/// acknowledgment numbers (firewalls randomise them), window, the urgent
/// pointer without URG (meaningless, normalisers zero it) and options (MSS
/// clamping), the ICMP echo identifier (NAT rewrites it like a port), the
/// counter (it is the nonce).
pub(crate) fn aad<T: AsRef<[u8]>>(pkt: &Packet<T>) -> [u8; AAD_LEN] {
    let mut a = [0u8; AAD_LEN];
    a[0] = AAD_VERSION;
    a[1] = pkt.protocol();
    match pkt.transport() {
        Transport::Tcp(t) => {
            let flags = t.flags() & TCP_BOUND_FLAGS;
            a[2] = flags;
            if flags & tcp_flags::URG != 0 {
                a[3..5].copy_from_slice(&t.urgent().to_be_bytes());
            }
        }
        Transport::Udp(_) => {}
        Transport::Icmp(i) => {
            a[2] = i.icmp_type();
            a[3] = i.code();
            match i.echo_seq() {
                Some(seq) => a[4..6].copy_from_slice(&seq.to_be_bytes()),
                None => a[4..8].copy_from_slice(&i.rest_of_header()),
            }
        }
    }
    a
}

/// The GCM nonce for a counter: four zero bytes, then the counter big-endian.
/// Unique because each key serves one direction of one flow and the counter
/// never repeats under it.
#[inline]
pub(crate) fn nonce(counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// Protects the packet in `buf[..len]` with `counter`; returns the new length.
/// `counter` must be fresh for `aead`'s key (the caller checks its limits).
pub(crate) fn seal<A: PacketAead>(
    aead: &A,
    counter: u64,
    buf: &mut [u8],
    len: usize,
) -> Result<usize> {
    let mut pkt = Packet::parse_prefix(buf, len)?;
    let plain_len = pkt.payload().len();
    if pkt.room() < TRAILER_LEN {
        return Err(Error::BufferTooSmall {
            needed: pkt.len() + TRAILER_LEN,
            capacity: pkt.buffer().len(),
        });
    }
    // The peer's segments grow by the trailer too: announce a smaller MSS so
    // they still fit its path MTU once protected.
    pkt.reduce_mss(TRAILER_LEN as u16)?;
    // Fix the lengths before encrypting: if the packet cannot grow (IP length
    // limit), fail before any ciphertext exists.
    pkt.set_payload_len(plain_len + TRAILER_LEN)?;
    let aad = aad(&pkt);
    let payload = pkt.payload_mut();
    let (body, trailer) = payload.split_at_mut(plain_len);
    let (counter_field, tag) = trailer.split_at_mut(COUNTER_LEN);
    counter_field.copy_from_slice(&counter.to_be_bytes());
    let tag = <&mut [u8; TAG_LEN]>::try_from(tag)
        .map_err(|_| Error::MalformedPacket("PCCOM trailer length"))?;
    aead.seal_in_place(&nonce(counter), &aad, body, tag)?;
    pkt.fill_l4_checksum();
    Ok(pkt.len())
}

/// Checks, authenticates and decrypts the protected packet at the start of
/// `buf`; returns the new (plain) length. The window moves only on success.
pub(crate) fn open<A: PacketAead>(
    aead: &A,
    window: &mut ReplayWindow,
    buf: &mut [u8],
) -> Result<usize> {
    let mut pkt = Packet::parse(buf)?;
    let wire_len = pkt.payload().len();
    let Some(plain_len) = wire_len.checked_sub(TRAILER_LEN) else {
        return Err(Error::Truncated {
            what: "PCCOM trailer",
            needed: TRAILER_LEN,
            available: wire_len,
        });
    };
    let aad = aad(&pkt);
    let (body, trailer) = pkt.payload_mut().split_at_mut(plain_len);
    // The trailer is exactly TRAILER_LEN bytes: these conversions cannot fail.
    let (counter, tag) = trailer
        .split_first_chunk::<COUNTER_LEN>()
        .ok_or(Error::MalformedPacket("PCCOM trailer length"))?;
    let counter = u64::from_be_bytes(*counter);
    let tag = <&[u8; TAG_LEN]>::try_from(tag)
        .map_err(|_| Error::MalformedPacket("PCCOM trailer length"))?;
    window.check(counter)?;
    aead.open_in_place(&nonce(counter), &aad, body, tag)?;
    window.update(counter);
    pkt.set_payload_len(plain_len)?;
    pkt.fill_l4_checksum();
    Ok(pkt.len())
}
