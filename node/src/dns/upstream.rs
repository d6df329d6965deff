//! Where names outside the zone go: the upstream resolvers.
//!
//! By default they are the `nameserver`s of /etc/resolv.conf, read once when
//! the stub binds. Entries that would send the stub's queries back to the
//! stub itself are left out, so a resolv.conf that already points at the
//! stub (as the lab writes it) cannot make a forwarding loop.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::PathBuf;

use tracing::debug;

use crate::error::{Error, Result};

/// The system's resolver configuration.
pub const SYSTEM_RESOLV_CONF: &str = "/etc/resolv.conf";
/// At most this many upstreams are used (more only lengthen the time to
/// SERVFAIL).
pub const MAX_UPSTREAMS: usize = 8;

/// Where the stub's upstream resolvers come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstreams {
    /// The `nameserver` lines of a resolv.conf file, read when the stub binds.
    ResolvConf(PathBuf),
    /// These resolvers, in order of preference.
    List(Vec<SocketAddr>),
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::ResolvConf(PathBuf::from(SYSTEM_RESOLV_CONF))
    }
}

impl Upstreams {
    /// The resolvers to use for a stub listening on `listen`: the configured
    /// ones, without those that point back at the stub, at most
    /// [`MAX_UPSTREAMS`].
    pub fn resolve(&self, listen: SocketAddr) -> Result<Vec<SocketAddr>> {
        let all = match self {
            Self::ResolvConf(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::ResolvConf {
                    path: path.clone(),
                    source,
                })?;
                parse_resolv_conf(&text)
            }
            Self::List(list) => list.clone(),
        };
        let mut out = Vec::new();
        for up in all {
            if points_back(up, listen) {
                debug!(%up, "upstream left out: it is the stub itself");
            } else if !out.contains(&up) && out.len() < MAX_UPSTREAMS {
                out.push(up);
            }
        }
        Ok(out)
    }
}

/// The `nameserver` addresses of a resolv.conf text, port 53, in order.
/// Lines that do not parse are skipped, as the C library does.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else {
            continue;
        };
        match parse_nameserver(addr) {
            Some(a) => out.push(a),
            None => debug!(addr, "unusable nameserver line in resolv.conf"),
        }
    }
    out
}

/// One nameserver address: IPv4, or IPv6 with an optional numeric zone
/// (`fe80::1%2`). Interface-name zones are not resolved here and skipped.
fn parse_nameserver(s: &str) -> Option<SocketAddr> {
    if let Some((ip, scope)) = s.split_once('%') {
        let ip: Ipv6Addr = ip.parse().ok()?;
        let scope: u32 = scope.parse().ok()?;
        return Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)));
    }
    let ip: IpAddr = s.parse().ok()?;
    Some(SocketAddr::new(ip, 53))
}

/// Whether sending to `up` would reach the stub listening on `listen`.
fn points_back(up: SocketAddr, listen: SocketAddr) -> bool {
    if up.port() != listen.port() {
        return false;
    }
    if up.ip() == listen.ip() {
        return true;
    }
    // A wildcard listener also answers on the loopback addresses, and
    // 0.0.0.0 / :: as a destination means this host's loopback.
    let (up, listen) = (up.ip(), listen.ip());
    (listen.is_unspecified() && (up.is_loopback() || up.is_unspecified()))
        || (up.is_unspecified() && listen.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_nameserver_lines() {
        let text = "# comment\nsearch lan\nnameserver 198.18.0.53\nnameserver  2001:db8::1 # v6\n\
                    nameserver fe80::1%3\nnameserver fe80::1%eth0\nnameserver bogus\n; nameserver 1.1.1.1\n\
                    options edns0\n";
        let got = parse_resolv_conf(text);
        assert_eq!(
            got,
            vec![
                sa("198.18.0.53:53"),
                sa("[2001:db8::1]:53"),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 3)),
            ]
        );
    }

    #[test]
    fn the_stub_itself_is_left_out() {
        let listen = sa("100.64.0.1:53");
        let list = Upstreams::List(vec![
            sa("100.64.0.1:53"),
            sa("198.18.0.53:53"),
            sa("198.18.0.53:53"),
            sa("127.0.0.53:53"),
        ]);
        assert_eq!(
            list.resolve(listen).unwrap(),
            vec![sa("198.18.0.53:53"), sa("127.0.0.53:53")]
        );
        // A wildcard stub on port 53 is reached through any loopback
        // address; a stub on one loopback address only through that one.
        let list = Upstreams::List(vec![
            sa("127.0.0.1:53"),
            sa("[::1]:53"),
            sa("127.0.0.1:5353"),
        ]);
        assert_eq!(
            list.resolve(sa("0.0.0.0:53")).unwrap(),
            vec![sa("127.0.0.1:5353")]
        );
        assert_eq!(list.resolve(sa("127.0.0.2:53")).unwrap().len(), 3);
        let zero = Upstreams::List(vec![sa("0.0.0.0:53")]);
        assert!(zero.resolve(sa("127.0.0.1:53")).unwrap().is_empty());
        // A stub on another port is not reached by port-53 entries.
        assert_eq!(list.resolve(sa("127.0.0.1:5300")).unwrap().len(), 3);
    }

    #[test]
    fn resolv_conf_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 198.18.0.1\nnameserver 100.64.0.1\n").unwrap();
        let got = Upstreams::ResolvConf(path.clone())
            .resolve(sa("100.64.0.1:53"))
            .unwrap();
        assert_eq!(got, vec![sa("198.18.0.1:53")]);
        let missing = Upstreams::ResolvConf(dir.path().join("nope"));
        assert!(matches!(
            missing.resolve(sa("100.64.0.1:53")),
            Err(Error::ResolvConf { .. })
        ));
    }
}
