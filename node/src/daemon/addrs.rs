//! The host's own addresses, which the node reports to the GMS as its
//! carrier addresses (peers dial them).

use std::net::{IpAddr, SocketAddr};

/// Addresses of the host's interfaces, except loopback, link-local and the
/// TUN `skip`, each with `port`; IPv4 first.
pub fn local_addresses(port: u16, skip: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; we only
    // read the entries while the list is alive.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated interface name owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if name == skip {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says its size.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let ip = match family {
            libc::AF_INET => {
                // SAFETY: the family is AF_INET, so it is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
            }
            libc::AF_INET6 => {
                // SAFETY: the family is AF_INET6, so it is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::from(sin6.sin6_addr.s6_addr)
            }
            _ => continue,
        };
        let skip_ip = ip.is_loopback()
            || ip.is_unspecified()
            || matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if !skip_ip {
            out.push(SocketAddr::new(ip, port));
        }
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort_by_key(|a| a.is_ipv6());
    out.dedup();
    out.truncate(fpn_gms_client::wire::MAX_ADDRS);
    out
}

/// The host's addresses of both families as [`local_addresses`] lists
/// them (IPv4 first): what the native carrier's receive path may take
/// packets to.
pub fn local_ips(skip: &str) -> Vec<IpAddr> {
    local_addresses(0, skip)
        .into_iter()
        .map(|a| a.ip())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_never_reported() {
        let a = super::local_addresses(7718, "none");
        assert!(a.iter().all(|a| !a.ip().is_loopback() && a.port() == 7718));
    }
}
