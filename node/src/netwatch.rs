//! Network changes as they happen (issue 12, Mobile PPC: "detect"): the
//! kernel's rtnetlink notifications of addresses, default routes and links,
//! read by a thread of its own and handed to the driver.
//!
//! Why netlink and not polling: a laptop that moves gets its new address
//! and default route from DHCP, and every millisecond between that and the
//! node noticing is part of the handover gap; rtnetlink multicast groups
//! deliver the change the moment the kernel applies it, and cost nothing
//! while nothing changes.
//!
//! What counts: an address added to or removed from an interface other than
//! the node's TUN, a default route added or removed in the main table, an
//! interface going up or down (its carrier). Routes of other tables (the
//! real-address plane's 7717 and 7718, policy routing of other software)
//! and everything about the TUN are left out: they are the node's own
//! doing, or not about where its packets leave.
//!
//! The parser ([`parse`]) is pure and bounded: a message shorter than its
//! header says, an attribute running past its message, or a type it does
//! not know is skipped, never a panic (a fuzz target runs it).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use tracing::{debug, warn};

use crate::error::{Error, Result};

/// One change the node acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetChange {
    /// An address appeared on interface `ifindex`.
    AddressAdded {
        /// The interface.
        ifindex: u32,
        /// The address.
        addr: IpAddr,
    },
    /// An address went away from interface `ifindex`.
    AddressRemoved {
        /// The interface.
        ifindex: u32,
        /// The address.
        addr: IpAddr,
    },
    /// A default route of the main table appeared (`added`) or went, out
    /// of interface `ifindex` (0 when the message names none).
    DefaultRoute {
        /// Added or removed.
        added: bool,
        /// Its interface.
        ifindex: u32,
        /// Its gateway, if any.
        gateway: Option<IpAddr>,
    },
    /// Interface `ifindex` came up (carrier and admin up) or went down.
    Link {
        /// The interface.
        ifindex: u32,
        /// Its name, as the kernel said it.
        name: String,
        /// Up and running with a carrier.
        up: bool,
    },
}

impl NetChange {
    /// The interface it is about.
    pub fn ifindex(&self) -> u32 {
        match self {
            Self::AddressAdded { ifindex, .. }
            | Self::AddressRemoved { ifindex, .. }
            | Self::DefaultRoute { ifindex, .. }
            | Self::Link { ifindex, .. } => *ifindex,
        }
    }
}

impl std::fmt::Display for NetChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AddressAdded { addr, ifindex } => {
                write!(f, "address {addr} added (if {ifindex})")
            }
            Self::AddressRemoved { addr, ifindex } => {
                write!(f, "address {addr} removed (if {ifindex})")
            }
            Self::DefaultRoute {
                added,
                ifindex,
                gateway,
            } => {
                let what = if *added { "new" } else { "lost" };
                match gateway {
                    Some(g) => write!(f, "{what} default route via {g} (if {ifindex})"),
                    None => write!(f, "{what} default route (if {ifindex})"),
                }
            }
            Self::Link { name, up, .. } => {
                write!(f, "link {name} {}", if *up { "up" } else { "down" })
            }
        }
    }
}

// rtnetlink constants (linux/rtnetlink.h, linux/if_addr.h, linux/if_link.h).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLMSG_HDRLEN: usize = 16;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFLA_IFNAME: u16 = 3;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
const GROUPS: u32 = 0x1 /* LINK */ | 0x10 /* IPV4_IFADDR */ | 0x40 /* IPV4_ROUTE */
    | 0x100 /* IPV6_IFADDR */ | 0x400 /* IPV6_ROUTE */;
const IFF_UP: u32 = 0x1;
const IFF_RUNNING: u32 = 0x40;
const IFF_LOWER_UP: u32 = 0x1_0000;

/// The changes in one datagram from the rtnetlink socket (several messages
/// may share it). Malformed or unknown parts are skipped.
pub fn parse(buf: &[u8]) -> Vec<NetChange> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, off) as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let body = &buf[off + NLMSG_HDRLEN..off + len];
        if let Some(c) = message(kind, body) {
            out.push(c);
        }
        // Messages are aligned to 4 bytes.
        off += (len + 3) & !3;
    }
    out
}

fn message(kind: u16, body: &[u8]) -> Option<NetChange> {
    match kind {
        RTM_NEWADDR | RTM_DELADDR => {
            // struct ifaddrmsg: family, prefixlen, flags, scope, index.
            let family = *body.first()?;
            let ifindex = u32_at_checked(body, 4)?;
            let mut local = None;
            let mut address = None;
            for (t, v) in attrs(body.get(8..)?) {
                match t {
                    IFA_LOCAL => local = ip_of(family, v),
                    IFA_ADDRESS => address = ip_of(family, v),
                    _ => {}
                }
            }
            // On a point-to-point link IFA_ADDRESS is the peer's; IFA_LOCAL,
            // when present, is ours.
            let addr = local.or(address)?;
            Some(if kind == RTM_NEWADDR {
                NetChange::AddressAdded { ifindex, addr }
            } else {
                NetChange::AddressRemoved { ifindex, addr }
            })
        }
        RTM_NEWROUTE | RTM_DELROUTE => {
            // struct rtmsg: family, dst_len, src_len, tos, table, protocol,
            // scope, type, flags (u32).
            let family = *body.first()?;
            let dst_len = *body.get(1)?;
            let mut table = u32::from(*body.get(4)?);
            let mut ifindex = 0;
            let mut gateway = None;
            for (t, v) in attrs(body.get(12..)?) {
                match t {
                    RTA_TABLE => table = u32_at_checked(v, 0)?,
                    RTA_OIF => ifindex = u32_at_checked(v, 0)?,
                    RTA_GATEWAY => gateway = ip_of(family, v),
                    _ => {}
                }
            }
            (dst_len == 0 && table == RT_TABLE_MAIN).then_some(NetChange::DefaultRoute {
                added: kind == RTM_NEWROUTE,
                ifindex,
                gateway,
            })
        }
        RTM_NEWLINK | RTM_DELLINK => {
            // struct ifinfomsg: family, pad, type (u16), index (i32),
            // flags (u32), change (u32).
            let ifindex = u32_at_checked(body, 4)?;
            let flags = u32_at_checked(body, 8)?;
            let change = u32_at_checked(body, 12)?;
            // Only a change of the running state is a move; the kernel
            // also sends NEWLINK for statistics and other attributes.
            let watched = IFF_UP | IFF_RUNNING | IFF_LOWER_UP;
            if kind == RTM_NEWLINK && change & watched == 0 {
                return None;
            }
            let name = attrs(body.get(16..)?)
                .find(|(t, _)| *t == IFLA_IFNAME)
                .map(|(_, v)| {
                    let v = v.split(|b| *b == 0).next().unwrap_or_default();
                    String::from_utf8_lossy(v).into_owned()
                })
                .unwrap_or_default();
            let up = kind == RTM_NEWLINK && flags & watched == watched;
            Some(NetChange::Link { ifindex, name, up })
        }
        _ => None,
    }
}

/// The route attributes of `buf`: (type, value), stopping at the first
/// malformed one.
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 4 > buf.len() {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[off], buf[off + 1]]));
        let t = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & 0x3fff;
        if len < 4 || off + len > buf.len() {
            return None;
        }
        let v = &buf[off + 4..off + len];
        off += (len + 3) & !3;
        Some((t, v))
    })
}

fn ip_of(family: u8, v: &[u8]) -> Option<IpAddr> {
    match (i32::from(family), v.len()) {
        (libc::AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
        (libc::AF_INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
        _ => None,
    }
}

fn u32_at(buf: &[u8], off: usize) -> u32 {
    u32_at_checked(buf, off).unwrap_or(0)
}

fn u32_at_checked(buf: &[u8], off: usize) -> Option<u32> {
    let b = buf.get(off..off + 4)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// The watcher thread; stops when dropped.
#[derive(Debug)]
pub struct NetWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NetWatch {
    /// Subscribes to the kernel's notifications and starts the thread,
    /// which calls `on_change` with the changes of each datagram that are
    /// not about interface `skip_ifindex` (the TUN; 0: none skipped).
    pub fn start(
        skip_ifindex: u32,
        on_change: impl Fn(Vec<NetChange>) + Send + 'static,
    ) -> Result<Self> {
        let fd = open_socket()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("fpn-netwatch".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !flag.load(Ordering::Relaxed) {
                    // SAFETY: recv into a buffer we own, on a socket we own.
                    let n = unsafe {
                        libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    };
                    if n < 0 {
                        let e = std::io::Error::last_os_error();
                        match e.kind() {
                            std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted => continue,
                            _ => {
                                // ENOBUFS: the kernel dropped notifications
                                // (a burst); what changed is read again by
                                // whoever acts on the next one.
                                debug!(error = %e, "network notifications lost");
                                on_change(Vec::new());
                                continue;
                            }
                        }
                    }
                    let changes: Vec<NetChange> = parse(&buf[..n as usize])
                        .into_iter()
                        .filter(|c| skip_ifindex == 0 || c.ifindex() != skip_ifindex)
                        .collect();
                    if !changes.is_empty() {
                        on_change(changes);
                    }
                }
            })
            .map_err(|e| Error::NetWatch(e.to_string()))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for NetWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The receive timeout bounds the wait.
            let _ = t.join();
        }
    }
}

fn open_socket() -> Result<OwnedFd> {
    let err = |what: &str| Error::NetWatch(format!("{what}: {}", std::io::Error::last_os_error()));
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(err("rtnetlink socket"));
    }
    // SAFETY: `raw` is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: zeroed sockaddr_nl is valid; fields set below.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = GROUPS;
    // SAFETY: bind with a valid sockaddr_nl of the right size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(err("rtnetlink bind"));
    }
    // A receive timeout lets the thread see its stop flag.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 300_000,
    };
    // SAFETY: setsockopt with a valid timeval.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        warn!(error = %std::io::Error::last_os_error(), "rtnetlink receive timeout not set");
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn attr(t: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&t.to_ne_bytes());
        a.extend_from_slice(v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn addr_msg(kind: u16, ifindex: u32, ip: [u8; 4]) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, 24, 0, 0];
        body.extend_from_slice(&ifindex.to_ne_bytes());
        body.extend(attr(IFA_ADDRESS, &ip));
        body.extend(attr(IFA_LOCAL, &ip));
        nlmsg(kind, &body)
    }

    fn route_msg(kind: u16, dst_len: u8, table: u32, oif: u32) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, dst_len, 0, 0, 254, 3, 0, 1];
        body.extend_from_slice(&0u32.to_ne_bytes());
        body.extend(attr(RTA_TABLE, &table.to_ne_bytes()));
        body.extend(attr(RTA_OIF, &oif.to_ne_bytes()));
        body.extend(attr(RTA_GATEWAY, &[10, 20, 0, 1]));
        nlmsg(kind, &body)
    }

    #[test]
    fn addresses_default_routes_and_links_are_read() {
        let mut buf = addr_msg(RTM_NEWADDR, 3, [10, 20, 0, 50]);
        buf.extend(route_msg(RTM_NEWROUTE, 0, RT_TABLE_MAIN, 3));
        buf.extend(addr_msg(RTM_DELADDR, 2, [192, 168, 1, 50]));
        let mut link = vec![0u8, 0, 1, 0];
        link.extend_from_slice(&4u32.to_ne_bytes());
        link.extend_from_slice(&(IFF_UP | IFF_RUNNING | IFF_LOWER_UP).to_ne_bytes());
        link.extend_from_slice(&IFF_LOWER_UP.to_ne_bytes());
        link.extend(attr(IFLA_IFNAME, b"wlan0\0"));
        buf.extend(nlmsg(RTM_NEWLINK, &link));
        let got = parse(&buf);
        assert_eq!(
            got,
            [
                NetChange::AddressAdded {
                    ifindex: 3,
                    addr: "10.20.0.50".parse().unwrap()
                },
                NetChange::DefaultRoute {
                    added: true,
                    ifindex: 3,
                    gateway: Some("10.20.0.1".parse().unwrap())
                },
                NetChange::AddressRemoved {
                    ifindex: 2,
                    addr: "192.168.1.50".parse().unwrap()
                },
                NetChange::Link {
                    ifindex: 4,
                    name: "wlan0".into(),
                    up: true
                },
            ]
        );
        assert_eq!(got[1].to_string(), "new default route via 10.20.0.1 (if 3)");
    }

    #[test]
    fn other_tables_other_routes_and_statistics_are_left_out() {
        // The real-address plane's own table, a LAN route, a NEWLINK that
        // changes nothing about the running state.
        let mut buf = route_msg(RTM_NEWROUTE, 0, 7717, 5);
        buf.extend(route_msg(RTM_NEWROUTE, 24, RT_TABLE_MAIN, 3));
        let mut link = vec![0u8, 0, 1, 0];
        link.extend_from_slice(&4u32.to_ne_bytes());
        link.extend_from_slice(&(IFF_UP | IFF_RUNNING).to_ne_bytes());
        link.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend(nlmsg(RTM_NEWLINK, &link));
        assert!(parse(&buf).is_empty());
    }

    #[test]
    fn malformed_input_is_skipped_without_a_panic() {
        let good = addr_msg(RTM_NEWADDR, 3, [10, 0, 0, 1]);
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
        // A length beyond the buffer, a zero length, an attribute running
        // past its message.
        let mut bad = good.clone();
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse(&bad).is_empty());
        let mut zero = good.clone();
        zero[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse(&zero).is_empty());
        let mut long_attr = good;
        long_attr[NLMSG_HDRLEN + 8..NLMSG_HDRLEN + 10].copy_from_slice(&200u16.to_ne_bytes());
        assert!(parse(&long_attr).is_empty());
    }
}

/// True when the main table has an IPv4 default route (`/proc/net/route`
/// of this namespace): after a move, connections are opened again only
/// once one exists, or their first packets go nowhere.
pub fn has_default_route() -> bool {
    std::fs::read_to_string("/proc/net/route").is_ok_and(|t| default_route_in(&t))
        || std::fs::read_to_string("/proc/net/ipv6_route").is_ok_and(|t| default_route6_in(&t))
}

/// [`has_default_route`] for IPv6, on /proc/net/ipv6_route's text: a line
/// with destination `::/0`, flags up (bit 0) and not a reject route (the
/// kernel's own unreachable default on `lo`, flag 0x200).
fn default_route6_in(text: &str) -> bool {
    text.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 10
            && f[0].bytes().all(|b| b == b'0')
            && f[1] == "00"
            && f[9] != "lo"
            && u32::from_str_radix(f[8], 16).is_ok_and(|flags| flags & 1 != 0 && flags & 0x200 == 0)
    })
}

/// [`has_default_route`] on the file's text: a line whose destination and
/// mask are 0 and whose flags say up (bit 0).
fn default_route_in(text: &str) -> bool {
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8
            && f[1] == "00000000"
            && f[7] == "00000000"
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 1 != 0)
    })
}

#[cfg(test)]
mod route_tests {
    use super::default_route_in;

    #[test]
    fn a_default_route_is_found_in_proc_net_route() {
        let with = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    wlan0\t00000000\t01001E0A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    wlan0\t0000140A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert!(default_route_in(with));
        let without = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                       wlan0\t0000140A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert!(!default_route_in(without));
        assert!(!default_route_in(""));
    }

    #[test]
    fn an_ipv6_default_route_is_found_and_the_kernels_reject_route_is_not() {
        let with = "20010db8000500000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     wlan0\n\
                    00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000500000000000000000001 00000400 00000001 00000000 00000003     wlan0\n";
        assert!(super::default_route6_in(with));
        let reject = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n\
                      20010db8000500000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     wlan0\n";
        assert!(!super::default_route6_in(reject));
        assert!(!super::default_route6_in(""));
    }
}
