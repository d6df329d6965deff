//! The packet ring's classic-BPF filter (super::rx_ring): which packets
//! the kernel copies into the ring at all. IPv4 and IPv6, by the ethertype
//! (`skb->protocol`): TCP, UDP and ICMP/ICMPv6 echo towards one of the
//! node's addresses of the packet's family, except UDP to the node's own
//! sockets' ports. Each ring is bound to one family's ethertype and gets
//! the program of that family's addresses only ([`family_filter`]).
//!
//! A small assembler with labels builds the program, so every jump offset
//! is computed and checked (a conditional jump's is 8 bits): a program the
//! kernel would misread is an error, never attached.

use std::net::IpAddr;

use crate::error::{Error, Result};

/// Most UDP ports the filter skips (the jumps are 8-bit).
pub(super) const MAX_SKIP_PORTS: usize = 16;

fn check_skip(skip_udp: &[u16]) -> Result<()> {
    if skip_udp.len() > MAX_SKIP_PORTS {
        return Err(Error::NativeConfig {
            setting: "skip_udp_ports",
            reason: "the packet filter skips at most 16 ports",
        });
    }
    Ok(())
}

/// Most instructions of a classic-BPF program (the kernel's BPF_MAXINSNS).
const BPF_MAXINSNS: usize = 4096;
/// What the filter returns for a packet it keeps (its whole length).
const ACCEPT: u32 = 0x0004_0000;
/// `skb->protocol` (the ethertype) as a classic-BPF load offset.
const SKF_PROTOCOL: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_PROTOCOL) as u32;
const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;

/// The classic-BPF program: IPv4 or IPv6 (by the ethertype) TCP, UDP or
/// ICMP/ICMPv6 echo towards one of `local` of the same family, except UDP to
/// one of `skip_udp` (the node's own QUIC and GMS sockets: the bulk of its
/// traffic when a peer is on QUIC, and never a native flow, since the node
/// holds those ports on every address). The packet starts at the IP header
/// on a SOCK_DGRAM packet socket. IPv6 is read without extension headers
/// (next header at 6, ports at 40, the destination at 24..40).
///
/// Every conditional jump is short (a family's address comparisons each
/// end in a `ret` of their own; the families are reached by `ja`, whose
/// offset is 32 bits), so the only limit is the program's length: about
/// 2000 IPv4 or 450 IPv6 addresses; more is [`Error::NativeConfig`], as is
/// no address at all.
pub(super) fn filter(local: &[IpAddr], skip_udp: &[u16]) -> Result<Vec<libc::sock_filter>> {
    check_skip(skip_udp)?;
    let v4: Vec<u32> = local
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(u32::from(*a)),
            IpAddr::V6(_) => None,
        })
        .collect();
    let v6: Vec<[u8; 16]> = local
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(a) => Some(a.octets()),
            IpAddr::V4(_) => None,
        })
        .collect();
    if v4.is_empty() && v6.is_empty() {
        return Err(Error::NativeConfig {
            setting: "local_addrs",
            reason: "the packet ring needs at least one local address",
        });
    }
    let (ld_b, ld_h, ld_w, ld_b_ind, ld_h_ind, ldx_msh, ret) = (
        libc::BPF_LD | libc::BPF_B | libc::BPF_ABS,
        libc::BPF_LD | libc::BPF_H | libc::BPF_ABS,
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        libc::BPF_LD | libc::BPF_B | libc::BPF_IND,
        libc::BPF_LD | libc::BPF_H | libc::BPF_IND,
        libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH,
        libc::BPF_RET | libc::BPF_K,
    );
    let mut a = Asm::default();
    let (fam4, fam6) = (a.label(), a.label());
    a.op(ld_h, SKF_PROTOCOL);
    for (has, proto, fam) in [
        (!v4.is_empty(), ETH_P_IP, fam4),
        (!v6.is_empty(), ETH_P_IPV6, fam6),
    ] {
        if has {
            let other = a.label();
            a.jeq(proto, Next, To(other));
            a.ja(fam);
            a.bind(other);
        }
    }
    a.op(ret, 0);
    if !v4.is_empty() {
        a.bind(fam4);
        // X = the IPv4 header's length, for the transport fields.
        a.op(ldx_msh, 0);
        a.op(ld_b, 9);
        let ports = a.label();
        a.family_protocols(1, 17, ports);
        // The echo type: request 8, reply 0.
        a.op(ld_b_ind, 0);
        a.jeq(8, To(a.addrs), Next);
        a.jeq(0, To(a.addrs), To(a.drop));
        a.bind(ports);
        a.op(ld_h_ind, 2);
        a.skip_ports(skip_udp);
        a.op(ld_w, 16);
        for addr in &v4 {
            let next = a.label();
            a.jeq(*addr, Next, To(next));
            a.op(ret, ACCEPT);
            a.bind(next);
        }
        a.op(ret, 0);
    }
    if !v6.is_empty() {
        a.bind(fam6);
        a.op(ld_b, 6);
        let ports = a.label();
        a.family_protocols(58, 17, ports);
        a.op(ld_b, 40);
        a.jeq(128, To(a.addrs), Next);
        a.jeq(129, To(a.addrs), To(a.drop));
        a.bind(ports);
        a.op(ld_h, 42);
        a.skip_ports(skip_udp);
        for addr in &v6 {
            let next = a.label();
            for (i, w) in addr.chunks_exact(4).enumerate() {
                a.op(ld_w, 24 + 4 * i as u32);
                a.jeq(u32::from_be_bytes([w[0], w[1], w[2], w[3]]), Next, To(next));
            }
            a.op(ret, ACCEPT);
            a.bind(next);
        }
        a.op(ret, 0);
    }
    a.finish()
}

/// The program of a ring bound to one family's ethertype (IPv6 when
/// `v6`, super::rx_ring): [`filter`] over `local`'s addresses of that
/// family, or, with none, a program that takes nothing (the ring stays
/// open, so that an address of the family added later only changes its
/// filter). The ethertype check at the program's start then always finds
/// the ring's own family (`skb->protocol` is what the socket is bound to),
/// a guard that costs one load.
pub(super) fn family_filter(
    v6: bool,
    local: &[IpAddr],
    skip_udp: &[u16],
) -> Result<Vec<libc::sock_filter>> {
    check_skip(skip_udp)?;
    let mine: Vec<IpAddr> = local
        .iter()
        .copied()
        .filter(|a| a.is_ipv6() == v6)
        .collect();
    if mine.is_empty() {
        return Ok(vec![libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        }]);
    }
    filter(&mine, skip_udp)
}

/// A jump target of [`Asm`]: the next instruction or a label.
#[derive(Debug, Clone, Copy)]
enum Target {
    Next,
    To(usize),
}
use Target::{Next, To};

/// A classic-BPF program with labels, resolved (and their offsets checked)
/// by [`finish`](Self::finish). `drop` and `addrs` are the current
/// family's (set by [`family_protocols`](Self::family_protocols)).
#[derive(Default)]
struct Asm {
    code: Vec<(libc::sock_filter, Target, Target)>,
    labels: Vec<Option<usize>>,
    drop: usize,
    addrs: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }

    fn op(&mut self, code: u32, k: u32) {
        let ins = libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        self.code.push((ins, Next, Next));
    }

    fn jeq(&mut self, k: u32, jt: Target, jf: Target) {
        self.op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, k);
        if let Some(last) = self.code.last_mut() {
            (last.1, last.2) = (jt, jf);
        }
    }

    /// An unconditional jump: its offset is `k`, 32 bits.
    fn ja(&mut self, l: usize) {
        self.op(libc::BPF_JMP | libc::BPF_JA, 0);
        if let Some(last) = self.code.last_mut() {
            last.1 = To(l);
        }
    }

    /// With A = the protocol: TCP goes to the family's addresses, UDP to
    /// `udp_ports`, `echo` falls through (to the echo type check), anything
    /// else is dropped. Starts the family's labels.
    fn family_protocols(&mut self, echo: u32, udp: u32, udp_ports: usize) {
        self.drop = self.label();
        self.addrs = self.label();
        let (drop, addrs) = (self.drop, self.addrs);
        self.jeq(6, To(addrs), Next);
        self.jeq(udp, To(udp_ports), Next);
        self.jeq(echo, Next, To(drop));
    }

    /// With A = the UDP destination port: one of `skip` is dropped (the
    /// family's drop is placed here), any other goes on to the addresses
    /// (bound here).
    fn skip_ports(&mut self, skip: &[u16]) {
        let (drop, addrs) = (self.drop, self.addrs);
        for port in skip {
            self.jeq(u32::from(*port), To(drop), Next);
        }
        self.ja(addrs);
        self.bind(drop);
        self.op(libc::BPF_RET | libc::BPF_K, 0);
        self.bind(addrs);
    }

    fn finish(self) -> Result<Vec<libc::sock_filter>> {
        let too_long = Err(Error::NativeConfig {
            setting: "local_addrs",
            reason: "too many addresses for the packet filter",
        });
        if self.code.len() > BPF_MAXINSNS {
            return too_long;
        }
        let mut out = Vec::with_capacity(self.code.len());
        for (pc, (mut ins, jt, jf)) in self.code.into_iter().enumerate() {
            // Offsets count from the next instruction, forward only.
            let offset = |t: Target| -> Option<usize> {
                match t {
                    Next => Some(0),
                    To(l) => self.labels[l]?.checked_sub(pc + 1),
                }
            };
            let (Some(t), Some(f)) = (offset(jt), offset(jf)) else {
                return Err(Error::NativeConfig {
                    setting: "local_addrs",
                    reason: "the packet filter has a backward jump (a bug)",
                });
            };
            if u32::from(ins.code) == libc::BPF_JMP | libc::BPF_JA {
                ins.k = t as u32;
            } else {
                let (Ok(t), Ok(f)) = (u8::try_from(t), u8::try_from(f)) else {
                    return too_long;
                };
                (ins.jt, ins.jf) = (t, f);
            }
            out.push(ins);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Runs the classic-BPF subset `filter` uses over `pkt`, whose
    /// ethertype is `proto`; returns the accepted length (0 = dropped). A
    /// load past the end drops, as in the kernel.
    fn run(p: &[libc::sock_filter], proto: u16, pkt: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |o: usize, n: usize| -> Option<u32> {
            let b = pkt.get(o..o + n)?;
            Some(b.iter().fold(0u32, |v, b| v << 8 | u32::from(*b)))
        };
        loop {
            let ins = p[pc];
            let code = u32::from(ins.code);
            let k = ins.k as usize;
            pc += 1;
            let loaded = match code {
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_ABS && ins.k == SKF_PROTOCOL => {
                    Some(u32::from(proto))
                }
                c if c == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS => load(k, 1),
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_ABS => load(k, 2),
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => load(k, 4),
                c if c == libc::BPF_LD | libc::BPF_B | libc::BPF_IND => load(x as usize + k, 1),
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_IND => load(x as usize + k, 2),
                c if c == libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH => {
                    let Some(b) = load(k, 1) else { return 0 };
                    x = (b & 0x0f) * 4;
                    continue;
                }
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if a == ins.k { ins.jt } else { ins.jf });
                    continue;
                }
                c if c == libc::BPF_JMP | libc::BPF_JA => {
                    pc += k;
                    continue;
                }
                c if c == libc::BPF_RET | libc::BPF_K => return ins.k,
                other => panic!("unexpected op {other:#x}"),
            };
            match loaded {
                Some(v) => a = v,
                None => return 0,
            }
        }
    }

    /// An IPv4 packet with a 24-byte header (the port is read past the
    /// options); `port` is the destination port or, for ICMP, the type.
    fn packet(proto: u8, dst: Ipv4Addr, port: u16) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x46;
        p[9] = proto;
        p[16..20].copy_from_slice(&dst.octets());
        if proto == 1 {
            p[24] = port as u8;
        } else {
            p[26..28].copy_from_slice(&port.to_be_bytes());
        }
        p
    }

    /// An IPv6 packet; `port` as for [`packet`].
    fn packet6(next: u8, dst: Ipv6Addr, port: u16) -> Vec<u8> {
        let mut p = vec![0u8; 64];
        p[0] = 0x60;
        p[6] = next;
        p[8..24].copy_from_slice(&"fd00:18::1".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&dst.octets());
        if next == 58 {
            p[40] = port as u8;
        } else {
            p[42..44].copy_from_slice(&port.to_be_bytes());
        }
        p
    }

    const V4: u16 = 0x0800;
    const V6: u16 = 0x86dd;

    #[test]
    fn the_filter_skips_the_nodes_own_udp_ports_only() {
        let me = Ipv4Addr::new(198, 18, 0, 2);
        let other = Ipv4Addr::new(198, 18, 0, 9);
        for skip in [&[][..], &[7718][..], &[7718, 40001][..]] {
            let p = filter(&[Ipv4Addr::new(10, 0, 0, 1).into(), me.into()], skip).unwrap();
            for port in [7718u16, 40001, 7717, 5201] {
                let skipped = skip.contains(&port);
                assert_eq!(
                    run(&p, V4, &packet(17, me, port)) == 0,
                    skipped,
                    "udp {port} {skip:?}"
                );
                // TCP ports are another space: never skipped.
                assert_ne!(run(&p, V4, &packet(6, me, port)), 0, "tcp {port}");
                assert_eq!(run(&p, V4, &packet(17, other, port)), 0, "not ours");
            }
            assert_ne!(run(&p, V4, &packet(1, me, 0)), 0, "echo reply");
            assert_ne!(run(&p, V4, &packet(1, me, 8)), 0, "echo request");
            assert_eq!(run(&p, V4, &packet(1, me, 3)), 0, "unreachable");
            assert_eq!(run(&p, V4, &packet(47, me, 0)), 0, "gre");
            // No IPv6 address: IPv6 is not looked at.
            let v6 = packet6(17, "fd00:18::2".parse().unwrap(), 5201);
            assert_eq!(run(&p, V6, &v6), 0, "ipv6 without an ipv6 address");
            assert_eq!(run(&p, 0x0806, &packet(17, me, 5201)), 0, "arp");
        }
    }

    #[test]
    fn the_filter_takes_ipv6_to_a_local_ipv6_address() {
        let me: Ipv6Addr = "fd00:18::2".parse().unwrap();
        let me2: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let v4 = Ipv4Addr::new(198, 18, 0, 2);
        let local = [v4.into(), me.into(), me2.into()];
        for skip in [&[][..], &[7718, 40001][..]] {
            let p = filter(&local, skip).unwrap();
            for dst in [me, me2] {
                for port in [7718u16, 40001, 7717, 5201] {
                    let skipped = skip.contains(&port);
                    let udp = packet6(17, dst, port);
                    assert_eq!(run(&p, V6, &udp) == 0, skipped, "udp {port} {skip:?}");
                    assert_ne!(run(&p, V6, &packet6(6, dst, port)), 0, "tcp {port}");
                    // The same bytes as IPv4 are not IPv6.
                    assert_eq!(run(&p, V4, &udp), 0, "{port}: ethertype");
                }
                assert_ne!(run(&p, V6, &packet6(58, dst, 128)), 0, "echo request");
                assert_ne!(run(&p, V6, &packet6(58, dst, 129)), 0, "echo reply");
                for ty in [1, 135, 136, 8] {
                    assert_eq!(run(&p, V6, &packet6(58, dst, ty)), 0, "icmpv6 type {ty}");
                }
                // Extension headers, ICMP (v4's) and no next header.
                for next in [0u8, 43, 44, 60, 1, 59] {
                    assert_eq!(run(&p, V6, &packet6(next, dst, 5201)), 0, "next {next}");
                }
            }
            // Any other address, also one that shares three of four words.
            for dst in ["fd00:18::3", "fd00:19::2", "fe80::2", "::ffff:198.18.0.2"] {
                let dst: Ipv6Addr = dst.parse().unwrap();
                assert_eq!(run(&p, V6, &packet6(17, dst, 5201)), 0, "{dst}");
            }
            // Cut short: dropped, never a read past the end.
            let udp = packet6(17, me, 5201);
            for len in 0..44 {
                assert_eq!(run(&p, V6, &udp[..len]), 0, "{len} bytes");
            }
            // IPv4 still works beside.
            assert_ne!(run(&p, V4, &packet(17, v4, 5201)), 0);
        }
        // IPv6 only: IPv4 is not looked at.
        let p = filter(&[me.into()], &[]).unwrap();
        assert_eq!(run(&p, V4, &packet(17, v4, 5201)), 0);
        assert_ne!(run(&p, V6, &packet6(17, me, 5201)), 0);
    }

    #[test]
    fn the_filter_jumps_stay_inside_the_program() {
        for n in 0..=40u16 {
            let mut local: Vec<IpAddr> = (0..n)
                .map(|i| Ipv4Addr::from(0xc612_0000 + u32::from(i)).into())
                .collect();
            local.extend(
                (0..n).map(|i| IpAddr::from(Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, i))),
            );
            if n == 0 {
                assert!(filter(&local, &[]).is_err(), "no address");
                continue;
            }
            let p = filter(&local, &[7718, 40000]).unwrap();
            for (i, ins) in p.iter().enumerate() {
                if u32::from(ins.code) == libc::BPF_JMP | libc::BPF_JA {
                    assert!(i + 1 + (ins.k as usize) < p.len());
                } else if u32::from(ins.code) & 0x07 == libc::BPF_JMP {
                    assert!(i + 1 + (ins.jt as usize) < p.len());
                    assert!(i + 1 + (ins.jf as usize) < p.len());
                }
            }
            // The last address of each family is found (all jumps right).
            let last6 = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, n - 1);
            assert_ne!(run(&p, V6, &packet6(6, last6, 1)), 0, "{n}");
            let last4 = Ipv4Addr::from(0xc612_0000 + u32::from(n - 1));
            assert_ne!(run(&p, V4, &packet(6, last4, 1)), 0, "{n}");
        }
    }

    #[test]
    fn a_family_ring_takes_its_own_family_only() {
        let v4 = Ipv4Addr::new(198, 18, 0, 2);
        let v6: Ipv6Addr = "fd00:18::2".parse().unwrap();
        let both = [v4.into(), v6.into()];
        let p4 = family_filter(false, &both, &[7718]).unwrap();
        let p6 = family_filter(true, &both, &[7718]).unwrap();
        assert_ne!(run(&p4, V4, &packet(17, v4, 5201)), 0);
        assert_eq!(run(&p4, V4, &packet(17, v4, 7718)), 0, "skipped port");
        assert_eq!(run(&p4, V6, &packet6(17, v6, 5201)), 0);
        assert_ne!(run(&p6, V6, &packet6(17, v6, 5201)), 0);
        assert_eq!(run(&p6, V6, &packet6(17, v6, 7718)), 0, "skipped port");
        assert_eq!(run(&p6, V4, &packet(17, v4, 5201)), 0);
        // No address of the family: nothing, whatever comes.
        let none6 = family_filter(true, &[v4.into()], &[]).unwrap();
        let none4 = family_filter(false, &[v6.into()], &[]).unwrap();
        assert_eq!(run(&none6, V6, &packet6(17, v6, 5201)), 0);
        assert_eq!(run(&none4, V4, &packet(17, v4, 5201)), 0);
        assert_eq!(run(&family_filter(true, &[], &[]).unwrap(), V6, &[]), 0);
        assert!(family_filter(true, &[v6.into()], &[1; MAX_SKIP_PORTS + 1]).is_err());
    }

    #[test]
    fn too_many_addresses_are_an_error_not_a_wrong_filter() {
        let v6 = |n: u16| -> Vec<IpAddr> {
            (0..n)
                .map(|i| Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, i).into())
                .collect()
        };
        let p = filter(&v6(400), &[7718]).unwrap();
        assert!(p.len() <= BPF_MAXINSNS);
        let last = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 399);
        assert_ne!(run(&p, V6, &packet6(17, last, 5201)), 0);
        assert!(matches!(
            filter(&v6(500), &[]),
            Err(Error::NativeConfig {
                setting: "local_addrs",
                ..
            })
        ));
        assert!(filter(&v6(1), &[1; MAX_SKIP_PORTS + 1]).is_err());
    }
}
