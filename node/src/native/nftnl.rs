//! nftables set elements added and removed with netlink messages sent
//! straight from the node (a `NETLINK_NETFILTER` socket), no `nft` process.
//!
//! A change is one batch (`NFNL_MSG_BATCH_BEGIN`, one `NFT_MSG_NEWSETELEM`
//! or `NFT_MSG_DELSETELEM` per set, `NFNL_MSG_BATCH_END`) in one `sendto`,
//! every element message with `NLM_F_ACK`; the kernel applies the batch as
//! one transaction and has queued every answer before `sendto` returns, so
//! one `recvmmsg` reads them all. A refused message comes back with its own
//! error and the whole batch is undone. docs/DESIGN-NOTES.md (the note on
//! steering without an nft process) says why this replaced `nft -f`.
//!
//! Only elements: tables, chains and sets are made by `nft -f` at start
//! (super::nft), where a process start costs nothing that matters.
//! What this never does: create or delete tables, chains, sets or rules.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::packet::FiveTuple;
use crate::error::{Error, Result};

// <linux/netlink.h>, <linux/netfilter/nfnetlink.h>, <linux/netfilter/nf_tables.h>.
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NLMSG_HDRLEN: usize = 16;

/// Most keys in one message: 1024 elements of at most 56 bytes (a 44-byte
/// IPv6 flow key and three attribute headers) keep the elements list under
/// the 64 KiB an attribute can hold.
const MAX_KEYS: usize = 1024;
/// Send buffer asked for (a whole batch goes in one `sendto`, which
/// netlink refuses beyond the buffer less 32 bytes). The default 208 KiB
/// (212,992 bytes) holds about 3,800 IPv6 flow elements (56 bytes each: the
/// 44-byte key and three 4-byte attribute headers) or 6,600 IPv4 ones (32
/// bytes: a 20-byte key), less a few messages' headers; a removed flow
/// costs two (its key is added, then deleted).
const SNDBUF: libc::c_int = 4 << 20;

/// Longest wait for the kernel's answers: they are queued before `sendto`
/// returns, so this only guards against a kernel that never answers.
const ACK_TIMEOUT: libc::timeval = libc::timeval {
    tv_sec: 2,
    tv_usec: 0,
};

/// Whether a batch message adds or deletes its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElemOp {
    /// `NFT_MSG_NEWSETELEM` without `NLM_F_EXCL`: a present element is fine.
    Add,
    /// `NFT_MSG_DELSETELEM`: an absent element makes the kernel refuse
    /// (ENOENT), so callers add first in the same batch.
    Delete,
}

/// One set element key, as the kernel stores it: the concatenated fields,
/// each in network byte order and padded to 4 bytes (`NFT_REG32_SIZE`).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

impl Key {
    /// The key of `flow` in its flow set: `ipv4_addr . ipv4_addr .
    /// inet_proto . inet_service . inet_service` for TCP/UDP (`ipv6_addr`
    /// for an IPv6 flow), `ip saddr . ip daddr . icmp id` for an ICMP echo
    /// flow and `ip6 saddr . ip6 daddr . icmpv6 id` for an ICMPv6 one (id
    /// in `src_port`).
    pub(crate) fn flow(flow: &FiveTuple) -> Self {
        let mut k = Vec::with_capacity(44);
        push_ip(&mut k, flow.src);
        push_ip(&mut k, flow.dst);
        if flow.proto.is_echo() {
            push_padded(&mut k, &flow.src_port.to_be_bytes());
        } else {
            push_padded(&mut k, &[flow.proto.number()]);
            push_padded(&mut k, &flow.src_port.to_be_bytes());
            push_padded(&mut k, &flow.dst_port.to_be_bytes());
        }
        Self(k)
    }

    /// The key of `flow` in the ports set of its family: `ipv4_addr` (or
    /// `ipv6_addr`) `. inet_proto . inet_service` (destination, protocol,
    /// destination port: a copy of anything to the flow's local side, from
    /// any source port, for the NAT binding step of note 40).
    pub(crate) fn ports(flow: &FiveTuple) -> Self {
        let mut k = Vec::with_capacity(24);
        push_ip(&mut k, flow.dst);
        push_padded(&mut k, &[flow.proto.number()]);
        push_padded(&mut k, &flow.dst_port.to_be_bytes());
        Self(k)
    }

    /// The key of an `ipv4_addr` set (or a map's `ipv4_addr` value).
    pub(crate) fn addr(addr: Ipv4Addr) -> Self {
        Self(addr.octets().to_vec())
    }

    /// The key of an `ipv4_addr . ipv4_addr` map (NAT-f pairs).
    pub(crate) fn addr_pair(a: Ipv4Addr, b: Ipv4Addr) -> Self {
        let mut k = a.octets().to_vec();
        k.extend_from_slice(&b.octets());
        Self(k)
    }
}

/// An address field: 4 bytes for IPv4, 16 for IPv6 (both multiples of
/// 4: no padding).
fn push_ip(k: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => k.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => k.extend_from_slice(&a.octets()),
    }
}

fn push_padded(k: &mut Vec<u8>, field: &[u8]) {
    k.extend_from_slice(field);
    k.resize(k.len() + (4 - field.len() % 4) % 4, 0);
}

/// A batch of element changes being built; [`Socket::apply`] sends it.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    msgs: Vec<Msg>,
}

#[derive(Debug)]
struct Msg {
    op: ElemOp,
    set: String,
    keys: Vec<Key>,
    /// A map's values, one per key (empty for a set).
    data: Vec<Key>,
}

impl Batch {
    /// Appends `op` on `keys` in `set`: one message per [`MAX_KEYS`] keys
    /// (an attribute's length is 16 bits). No-op without keys.
    pub(crate) fn push(&mut self, op: ElemOp, set: &str, keys: Vec<Key>) {
        for chunk in keys.chunks(MAX_KEYS) {
            self.msgs.push(Msg {
                op,
                set: set.to_owned(),
                keys: chunk.to_vec(),
                data: Vec::new(),
            });
        }
    }

    /// Appends `op` on map elements `key : value` in map `map` (a delete
    /// needs no value: the kernel matches the key).
    pub(crate) fn push_map(&mut self, op: ElemOp, map: &str, elems: Vec<(Key, Key)>) {
        for chunk in elems.chunks(MAX_KEYS / 2) {
            let (keys, data): (Vec<Key>, Vec<Key>) = chunk.iter().cloned().unzip();
            self.msgs.push(Msg {
                op,
                set: map.to_owned(),
                keys,
                data: if op == ElemOp::Add { data } else { Vec::new() },
            });
        }
    }

    /// Whether the batch has no message.
    pub(crate) fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// The wire bytes: begin, the messages (sequence numbers `seq + 1..`),
    /// end (`seq + len + 1`), for the table `table` (family `inet`).
    pub(crate) fn encode(&self, table: &str, seq: u32) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.msgs.len() * 128);
        let subsys = NFNL_SUBSYS_NFTABLES << 8;
        put_header(
            &mut b,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        for (i, m) in self.msgs.iter().enumerate() {
            let (ty, flags) = match m.op {
                ElemOp::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK),
                ElemOp::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
            };
            let start = b.len();
            put_header(
                &mut b,
                subsys | ty,
                flags,
                seq + 1 + i as u32,
                NFPROTO_INET,
                0,
            );
            put_attr(&mut b, NFTA_SET_ELEM_LIST_TABLE, &nul_terminated(table));
            put_attr(&mut b, NFTA_SET_ELEM_LIST_SET, &nul_terminated(&m.set));
            let list = begin_nest(&mut b, NFTA_SET_ELEM_LIST_ELEMENTS);
            for (i, k) in m.keys.iter().enumerate() {
                let elem = begin_nest(&mut b, NFTA_LIST_ELEM);
                let key = begin_nest(&mut b, NFTA_SET_ELEM_KEY);
                put_attr(&mut b, NFTA_DATA_VALUE, &k.0);
                end_nest(&mut b, key);
                if let Some(d) = m.data.get(i) {
                    let data = begin_nest(&mut b, NFTA_SET_ELEM_DATA);
                    put_attr(&mut b, NFTA_DATA_VALUE, &d.0);
                    end_nest(&mut b, data);
                }
                end_nest(&mut b, elem);
            }
            end_nest(&mut b, list);
            let len = (b.len() - start) as u32;
            b[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        }
        let end_seq = seq + 1 + self.msgs.len() as u32;
        put_header(
            &mut b,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        b
    }
}

/// nlmsghdr (length 20, fixed up later for element messages) + nfgenmsg.
fn put_header(b: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
    b.extend_from_slice(&20u32.to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    b.push(family);
    b.push(0); // NFNETLINK_V0
    b.extend_from_slice(&res_id.to_be_bytes());
}

fn put_attr(b: &mut Vec<u8>, ty: u16, data: &[u8]) {
    b.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(data);
    b.resize(b.len().next_multiple_of(4), 0);
}

fn begin_nest(b: &mut Vec<u8>, ty: u16) -> usize {
    let at = b.len();
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

fn end_nest(b: &mut [u8], at: usize) {
    let len = (b.len() - at) as u16;
    b[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A `NETLINK_NETFILTER` socket in the namespace it was opened in (a
/// netlink socket keeps the namespace of its creation, whichever thread
/// uses it later).
#[derive(Debug)]
pub(crate) struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace.
    pub(crate) fn open() -> Result<Self> {
        // SAFETY: plain system calls on a descriptor we own; every pointer
        // passed points at a live local of the right size.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(sock_err("open a NETLINK_NETFILTER socket"));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        let timeout = ACK_TIMEOUT;
        let sndbuf = SNDBUF;
        // SAFETY: as above.
        unsafe {
            // Beyond wmem_max only with CAP_NET_ADMIN, which the node
            // has; without it the default stays (smaller batches only).
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                (&raw const sndbuf).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
            // Errors then carry only the header of the refused message.
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                NETLINK_CAP_ACK,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
            if libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            ) != 0
            {
                return Err(sock_err("set the netlink receive timeout"));
            }
        }
        // Start somewhere else than 0 so that a late answer to another
        // socket's batch can never look like ours.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() | 1);
        Ok(Self { fd, seq })
    }

    /// Sends `batch` for the table `table` (family `inet`) and reads every
    /// answer. The kernel applies all of it or none: the first refusal is
    /// returned as [`Error::NativeNftNetlink`] naming the set and the
    /// operation.
    pub(crate) fn apply(&mut self, table: &str, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.msgs.len() as u32;
        if self.seq > u32::MAX / 2 {
            // Far from overflow for any batch that fits in memory.
            self.seq = 1;
        }
        let seq = self.seq;
        self.seq += n + 2;
        let bytes = batch.encode(table, seq);
        // SAFETY: sockaddr_nl is plain data; all zero is the kernel (port 0).
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the buffer and address outlive the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(sock_err("send the nftables batch"));
        }
        let mut pending: Vec<u32> = (seq + 1..=seq + n).collect();
        let mut refused: Option<(u32, i32)> = None;
        let mut bufs = vec![[0u8; 512]; pending.len().clamp(1, 16)];
        while !pending.is_empty() {
            for answer in self.recv(&mut bufs)? {
                let (aseq, errno) = answer;
                if aseq == seq {
                    // An error for the batch begin: nothing of it ran.
                    return Err(refusal(batch, 0, errno));
                }
                if !pending.contains(&aseq) {
                    continue; // late answer to an earlier, timed-out batch
                }
                pending.retain(|s| *s != aseq);
                if errno != 0 && refused.is_none() {
                    refused = Some((aseq, errno));
                }
            }
        }
        match refused {
            None => Ok(()),
            Some((aseq, errno)) => Err(refusal(batch, (aseq - seq - 1) as usize, errno)),
        }
    }

    /// One `recvmmsg`: the (sequence, errno) of every NLMSG_ERROR read.
    fn recv(&self, bufs: &mut [[u8; 512]]) -> Result<Vec<(u32, i32)>> {
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain data; zero is a valid empty header.
        let mut hdrs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: every header points at a live iovec over a live buffer.
        let got = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(sock_err("read the nftables answers"));
        }
        let mut out = Vec::new();
        for (h, b) in hdrs.iter().zip(bufs.iter()).take(got as usize) {
            parse_answers(&b[..(h.msg_len as usize).min(b.len())], &mut out);
        }
        Ok(out)
    }
}

/// The (sequence, errno) of each NLMSG_ERROR message in one datagram;
/// other and malformed messages are skipped.
fn parse_answers(mut d: &[u8], out: &mut Vec<(u32, i32)>) {
    while d.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]) as usize;
        if len < NLMSG_HDRLEN || len > d.len() {
            return;
        }
        let ty = u16::from_ne_bytes([d[4], d[5]]);
        // The answer's own sequence is the request's (netlink_ack copies it).
        let seq = u32::from_ne_bytes([d[8], d[9], d[10], d[11]]);
        if ty == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
            let e = i32::from_ne_bytes([d[16], d[17], d[18], d[19]]);
            out.push((seq, -e));
        }
        d = &d[len.next_multiple_of(4).min(d.len())..];
    }
}

fn refusal(batch: &Batch, index: usize, errno: i32) -> Error {
    let (op, set) = batch.msgs.get(index).map_or(("batch", String::new()), |m| {
        (
            match m.op {
                ElemOp::Add => "add",
                ElemOp::Delete => "delete",
            },
            m.set.clone(),
        )
    });
    Error::NativeNftNetlink {
        op,
        set,
        source: std::io::Error::from_raw_os_error(errno),
    }
}

fn sock_err(what: &'static str) -> Error {
    Error::NativeSocket {
        what,
        source: std::io::Error::last_os_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::L4Proto;

    /// `nft --debug=mnl add element inet t1 native_flows { 198.18.0.1 .
    /// 198.18.0.2 . tcp . 40000 . 5201 }` (nft 1.0.6), the attributes of its
    /// NEWSETELEM message after the nfgenmsg, with its
    /// NFTA_SET_ELEM_LIST_SET_ID (8 bytes: `08 00 04 00 00 00 00 01`)
    /// left out: that id names a set created in the same batch, which ours
    /// never does.
    const NFT_NEWSETELEM_ATTRS: &[u8] = &[
        0x07, 0x00, 0x01, 0x00, b't', b'1', 0x00, 0x00, // table "t1"
        0x11, 0x00, 0x02, 0x00, b'n', b'a', b't', b'i', b'v', b'e', b'_', b'f', b'l', b'o', b'w',
        b's', 0x00, 0x00, 0x00, 0x00, // set "native_flows"
        0x24, 0x00, 0x03, 0x80, // elements (nested, 36)
        0x20, 0x00, 0x01, 0x80, // list elem (nested, 32)
        0x1c, 0x00, 0x01, 0x80, // key (nested, 28)
        0x18, 0x00, 0x01, 0x00, // value (24)
        0xc6, 0x12, 0x00, 0x01, 0xc6, 0x12, 0x00, 0x02, 0x06, 0x00, 0x00, 0x00, 0x9c, 0x40, 0x00,
        0x00, 0x14, 0x51, 0x00, 0x00,
    ];

    fn tcp() -> FiveTuple {
        FiveTuple {
            src: Ipv4Addr::new(198, 18, 0, 1).into(),
            dst: Ipv4Addr::new(198, 18, 0, 2).into(),
            proto: L4Proto::Tcp,
            src_port: 40000,
            dst_port: 5201,
        }
    }

    #[test]
    fn newsetelem_matches_what_nft_sends() {
        let mut b = Batch::default();
        b.push(ElemOp::Add, "native_flows", vec![Key::flow(&tcp())]);
        let bytes = b.encode("t1", 7);
        // Batch begin: 20 bytes, type 16, seq 7, res_id NFNL_SUBSYS_NFTABLES (BE).
        assert_eq!(&bytes[..4], &20u32.to_ne_bytes());
        assert_eq!(&bytes[4..6], &16u16.to_ne_bytes());
        assert_eq!(&bytes[8..12], &7u32.to_ne_bytes());
        assert_eq!(&bytes[16..20], &[0, 0, 0, 0x0a]);
        let m = &bytes[20..];
        let len = u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize;
        assert_eq!(len, 20 + NFT_NEWSETELEM_ATTRS.len());
        assert_eq!(&m[4..6], &0x0a0cu16.to_ne_bytes(), "NFT_MSG_NEWSETELEM");
        let flags = u16::from_ne_bytes([m[6], m[7]]);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK);
        assert_eq!(&m[8..12], &8u32.to_ne_bytes());
        assert_eq!(&m[16..20], &[1, 0, 0, 0], "inet, v0");
        assert_eq!(&m[20..len], NFT_NEWSETELEM_ATTRS);
        // Batch end, sequence after the message.
        let end = &m[len..];
        assert_eq!(end.len(), 20);
        assert_eq!(&end[4..6], &17u16.to_ne_bytes());
        assert_eq!(&end[8..12], &9u32.to_ne_bytes());
    }

    #[test]
    fn keys_match_nft_debug_netlink() {
        // `nft --debug=netlink` prints keys as little-endian u32 words:
        // native_echo  `element 010012c6 020012c6 00003412`
        // native_ports `element 020012c6 00000011 00005114`
        let words = |k: &Key| -> Vec<u32> {
            k.0.chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let echo = FiveTuple {
            proto: L4Proto::Icmp,
            src_port: 4660,
            dst_port: 4660,
            ..tcp()
        };
        assert_eq!(
            words(&Key::flow(&echo)),
            [0x010012c6, 0x020012c6, 0x00003412]
        );
        let udp = FiveTuple {
            proto: L4Proto::Udp,
            ..tcp()
        };
        assert_eq!(
            words(&Key::ports(&udp)),
            [0x020012c6, 0x00000011, 0x00005114]
        );
        assert_eq!(Key::flow(&tcp()).0.len(), 20);
    }

    #[test]
    fn ipv6_keys_match_nft_debug_netlink() {
        // `nft --debug=netlink add element inet t native_flows6 { fd00:18::1
        // . fd00:18::2 . udp . 40000 . 5201 }` prints the key as
        // little-endian u32 words, the addresses in 4 words each:
        // `element 180000fd 00000000 00000000 01000000 180000fd 00000000
        // 00000000 02000000 00000011 0000409c 00005114`; native_echo6
        // `... 00003412`, native_ports6 `<dst> 00000011 00005114`.
        let words = |k: &Key| -> Vec<u32> {
            k.0.chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let a = [0x180000fd, 0, 0, 0x01000000];
        let b = [0x180000fd, 0, 0, 0x02000000];
        let udp = FiveTuple {
            src: "fd00:18::1".parse().unwrap(),
            dst: "fd00:18::2".parse().unwrap(),
            proto: L4Proto::Udp,
            ..tcp()
        };
        let want: Vec<u32> = [&a[..], &b[..], &[0x11, 0x409c, 0x5114]].concat();
        assert_eq!(words(&Key::flow(&udp)), want);
        let echo = FiveTuple {
            proto: L4Proto::Icmpv6,
            src_port: 4660,
            dst_port: 4660,
            ..udp
        };
        let want: Vec<u32> = [&a[..], &b[..], &[0x3412]].concat();
        assert_eq!(words(&Key::flow(&echo)), want);
        let want: Vec<u32> = [&b[..], &[0x11, 0x5114]].concat();
        assert_eq!(words(&Key::ports(&udp)), want);
    }

    #[test]
    fn big_changes_are_split_into_messages_of_one_batch() {
        let mut b = Batch::default();
        let keys: Vec<Key> = (0..2500u16)
            .map(|p| {
                Key::flow(&FiveTuple {
                    src_port: p,
                    ..tcp()
                })
            })
            .collect();
        b.push(ElemOp::Add, "native_flows", keys);
        b.push(ElemOp::Delete, "native_echo", Vec::new());
        assert_eq!(b.msgs.len(), 3);
        assert_eq!(b.msgs.iter().map(|m| m.keys.len()).sum::<usize>(), 2500);
        // Begin, three messages (each under 64 KiB), end: sequences 1..=5.
        let bytes = b.encode("t1", 1);
        let mut at = 0;
        let mut seqs = Vec::new();
        while at < bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            assert!(len < 65536);
            seqs.push(u32::from_ne_bytes(
                bytes[at + 8..at + 12].try_into().unwrap(),
            ));
            at += len;
        }
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn answers_are_parsed_and_bad_lengths_stop_the_walk() {
        let mut d = Vec::new();
        for (seq, e) in [(5u32, 0i32), (6, -2)] {
            d.extend_from_slice(&36u32.to_ne_bytes());
            d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            d.extend_from_slice(&[0; 2]);
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&[0; 4]);
            d.extend_from_slice(&e.to_ne_bytes());
            d.extend_from_slice(&[0; 16]);
        }
        let mut out = Vec::new();
        parse_answers(&d, &mut out);
        assert_eq!(out, [(5, 0), (6, 2)]);
        let mut out = Vec::new();
        let mut bad = d.clone();
        bad[0] = 200; // longer than the datagram
        parse_answers(&bad, &mut out);
        assert!(out.is_empty());
        parse_answers(&d[..20], &mut out);
        assert!(out.is_empty());
    }
}
