//! The TUN interface: created with the overlay address and a prefix that
//! covers the overlay range (so the kernel routes the whole range into it),
//! the configured MTU, up. Closing the device removes the interface.

use std::net::Ipv4Addr;

use crate::error::{Error, Result};

/// Creates and brings up `name` with `addr/prefix` and `mtu`.
pub fn create(name: &str, addr: Ipv4Addr, prefix: u8, mtu: u16) -> Result<tun::AsyncDevice> {
    let netmask = Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix)));
    let mut cfg = tun::Configuration::default();
    cfg.tun_name(name)
        .address(addr)
        .netmask(netmask)
        .mtu(mtu)
        .up();
    let dev = tun::create_as_async(&cfg).map_err(|e| Error::Tun {
        name: name.to_owned(),
        reason: format!("{e} (needs root or CAP_NET_ADMIN; is the name taken?)"),
    })?;
    // The overlay is IPv4: without IPv6 on the interface the kernel sends
    // no router solicitations or MLD reports into it.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), b"1");
    Ok(dev)
}
