//! The NAT-f gateway's table: what the kernel does with the packets the
//! node writes into its TUN for hosts behind it.
//!
//! The node decrypts a remote's packet of a NAT-f flow and writes it into
//! its TUN as the remote sent it: from the remote's overlay address to the
//! remote's VIN for the host. This table (family `inet`, named after the
//! TUN, one per node, made only while the node fronts hosts) then:
//!
//! - DNATs it to the host's LAN address by the (remote, VIN) pair, a map
//!   element the node adds when a pair's first flow is established and
//!   removes with its last (netlink, synchronously, before the flow's CDN
//!   leaves: the first packet finds the element in place);
//! - assigns the kernel's FTP helper to control connections (TCP port 21)
//!   so a PASV answer is rewritten to the VIN the remote used and the data
//!   connection is expected (docs/DESIGN-NOTES.md says why the kernel's
//!   helper and not an ALG in the node);
//! - masquerades it to the gateway's LAN address (the host sees the gateway
//!   as its peer, and its answers come back through the gateway);
//! - drops anything else the TUN would forward to a fronted host (the set
//!   `natf_hosts`): a host behind the gateway is reachable only through a
//!   negotiated pair with its own groups, never as a plain LAN address of
//!   the gateway's prefix (the real-address plane's way in, which the
//!   gateway's groups decide).
//!
//! Answers are un-NATed by conntrack and routed back into the TUN (the
//! remote's overlay address is in the overlay route), where the core takes
//! them as the flow's reverse direction.
//!
//! IPv4 only: remotes, VINs and hosts' LAN addresses are IPv4 here (a LAN
//! address of another family is refused), unlike the native carrier's own
//! table (super::nft), which holds both families.
//!
//! On the path between other GEs (issue 11, part 2; a gateway node has
//! this table from its start):
//! - a forwarded DPRP DDE (UDP to port 7717 whose payload starts with
//!   DPRP's version and the DDE type) gets [`TRANSIT_MARK`], which the
//!   real-address plane's rule routes into the TUN: the node joins the
//!   negotiation and sends the DDE on itself, with its hop added;
//! - the flows this gateway's rules drop are elements of [`TRANSIT_DROP`],
//!   dropped in `forward` in both directions, so an end that ignores the
//!   refusal gets nothing through.

use std::net::{IpAddr, Ipv4Addr};

use super::nft::{self, Netns};
use super::nftnl::{Batch, ElemOp, Key, Socket};
use crate::error::{Error, Result};

/// The map of DNATed pairs.
pub const PAIRS_MAP: &str = "natf_pairs";
/// The set of the fronted hosts' LAN addresses.
pub const HOSTS_SET: &str = "natf_hosts";

/// The flows dropped on the path (both directions).
pub const TRANSIT_DROP: &str = "transit_drop";
/// The mark of a forwarded DDE (routed into the TUN by the real-address
/// plane's rule; inside the mask of `real_plane::MARK`, so that rule comes
/// first).
pub const TRANSIT_MARK: u32 = 0x7717_0001;
/// The first two payload bytes of a DDE: DPRP version 1, type DDE (1).
const DDE_START: u16 = 0x0101;
/// The same of a FOP (type 7): a fast open, which a gateway on the path
/// refuses so that the flow is negotiated through it.
const FOP_START: u16 = 0x0107;

/// The table's name for the node whose TUN is `tun`.
pub fn table_name(tun: &str) -> String {
    let clean: String = tun
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("fpn_natf_{clean}")
}

/// The table of a running gateway. Dropping it does not delete it:
/// [`NatfTable::delete`] does (and a restarted node replaces a stale one).
#[derive(Debug)]
pub struct NatfTable {
    name: String,
    ns: Netns,
    netlink: Socket,
}

impl NatfTable {
    /// Creates the table for TUN `tun` (replacing one a killed node left).
    pub fn create(tun: &str) -> Result<Self> {
        let name = table_name(tun);
        nft::check_name(&name)?;
        let ns = Netns::current()?;
        let script = ruleset(&name, tun, nft::exists(&ns, &name)?);
        nft::run(&ns, &script)?;
        let netlink = ns.open_netlink()?;
        Ok(Self { name, ns, netlink })
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Packets from `remote` to `vin` go to `lip` from now on.
    pub fn map(&mut self, remote: Ipv4Addr, vin: Ipv4Addr, lip: IpAddr) -> Result<()> {
        let IpAddr::V4(lip) = lip else {
            return Err(Error::NativeConfig {
                setting: "natf",
                reason: "hosts behind a gateway are IPv4 only for now",
            });
        };
        // The core maps a pair once (its first flow) and unmaps it with its
        // last, so an element is never replaced; a present one with the
        // same value is not an error.
        let mut batch = Batch::default();
        batch.push_map(
            ElemOp::Add,
            PAIRS_MAP,
            vec![(Key::addr_pair(remote, vin), Key::addr(lip))],
        );
        self.netlink.apply(&self.name, &batch)
    }

    /// Replaces the set of the fronted hosts' LAN addresses (IPv4 only).
    pub fn set_hosts(&mut self, lips: &[IpAddr]) -> Result<()> {
        let mut script = format!("flush set inet {} {HOSTS_SET}\n", self.name);
        let v4: Vec<String> = lips
            .iter()
            .filter(|l| l.is_ipv4())
            .map(IpAddr::to_string)
            .collect();
        if !v4.is_empty() {
            script.push_str(&format!(
                "add element inet {} {HOSTS_SET} {{ {} }}\n",
                self.name,
                v4.join(", ")
            ));
        }
        nft::run(&self.ns, &script)
    }

    /// The pair's last flow ended.
    pub fn unmap(&mut self, remote: Ipv4Addr, vin: Ipv4Addr) -> Result<()> {
        // An absent element is refused (ENOENT): the caller logs it.
        let mut batch = Batch::default();
        batch.push_map(
            ElemOp::Delete,
            PAIRS_MAP,
            vec![(
                Key::addr_pair(remote, vin),
                Key::addr(Ipv4Addr::UNSPECIFIED),
            )],
        );
        self.netlink.apply(&self.name, &batch)
    }

    /// Forwarded packets of `flow` (either direction) are dropped from now
    /// on (`drop`), or no longer. TCP and UDP flows only (an ICMP flow's
    /// refusal stands at its ends).
    pub fn transit_drop(&mut self, flow: &super::FiveTuple, drop: bool) -> Result<()> {
        if flow.proto == super::L4Proto::Icmp {
            return Ok(());
        }
        let key = vec![Key::flow(flow)];
        let mut batch = Batch::default();
        // An absent element cannot be deleted (ENOENT): add it first, as
        // the native table does; adding a present one is no error.
        batch.push(ElemOp::Add, TRANSIT_DROP, key.clone());
        if !drop {
            batch.push(ElemOp::Delete, TRANSIT_DROP, key);
        }
        self.netlink.apply(&self.name, &batch)
    }

    /// Deletes the table. Returns whether it existed.
    pub fn delete(self) -> Result<bool> {
        delete_in(&self.ns, &self.name)
    }
}

/// Deletes the gateway table of TUN `tun` if one is left (crash recovery,
/// `fpn-node down`). Returns whether there was one.
pub fn cleanup(tun: &str) -> Result<bool> {
    delete_in(&Netns::current()?, &table_name(tun))
}

fn delete_in(ns: &Netns, name: &str) -> Result<bool> {
    if !nft::exists(ns, name)? {
        return Ok(false);
    }
    nft::run(ns, &format!("delete table inet {name}\n"))?;
    Ok(true)
}

/// The whole table in one transaction (`stale`: delete the old one first).
fn ruleset(name: &str, tun: &str, stale: bool) -> String {
    let delete = if stale {
        format!("delete table inet {name}\n")
    } else {
        String::new()
    };
    // `tun` was checked by the config (letters, digits, - and _).
    format!(
        "{delete}table inet {name} {{\n\
         \x20 ct helper ftp {{ type \"ftp\" protocol tcp; l3proto ip; }}\n\
         \x20 map {PAIRS_MAP} {{ type ipv4_addr . ipv4_addr : ipv4_addr; }}\n\
         \x20 set {HOSTS_SET} {{ type ipv4_addr; }}\n\
         \x20 chain dnat_pairs {{\n\
         \x20   type nat hook prerouting priority dstnat; policy accept;\n\
         \x20   iifname \"{tun}\" dnat ip to ip saddr . ip daddr map @{PAIRS_MAP}\n\
         \x20 }}\n\
         \x20 chain helpers {{\n\
         \x20   type filter hook prerouting priority filter; policy accept;\n\
         \x20   iifname \"{tun}\" ct status dnat tcp dport 21 ct helper set \"ftp\"\n\
         \x20 }}\n\
         \x20 chain masquerade_pairs {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   iifname \"{tun}\" ct status dnat masquerade\n\
         \x20 }}\n\
         \x20 chain only_pairs {{\n\
         \x20   type filter hook forward priority filter; policy accept;\n\
         \x20   iifname \"{tun}\" ip daddr @{HOSTS_SET} ct status & dnat != dnat drop\n\
         \x20 }}\n\
         \x20 set {TRANSIT_DROP} {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service; }}\n\
         \x20 chain transit_dde {{\n\
         \x20   type filter hook prerouting priority mangle; policy accept;\n\
         \x20   iifname != \"{tun}\" udp dport {port} @th,64,16 {DDE_START:#06x} fib daddr type != local meta mark set {TRANSIT_MARK:#x}\n\
         \x20   iifname != \"{tun}\" udp dport {port} @th,64,16 {FOP_START:#06x} fib daddr type != local meta mark set {TRANSIT_MARK:#x}\n\
         \x20 }}\n\
         \x20 chain transit_drops {{\n\
         \x20   type filter hook forward priority filter - 1; policy accept;\n\
         \x20   ip saddr . ip daddr . meta l4proto . th sport . th dport @{TRANSIT_DROP} counter drop\n\
         \x20   ip daddr . ip saddr . meta l4proto . th dport . th sport @{TRANSIT_DROP} counter drop\n\
         \x20 }}\n\
         }}\n",
        port = crate::core::PROBE_PORT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_nft_identifiers() {
        assert_eq!(table_name("fpn0"), "fpn_natf_fpn0");
        assert_eq!(table_name("fpn-lab"), "fpn_natf_fpn_lab");
        assert!(nft::check_name(&table_name("a-b_c")).is_ok());
    }

    #[test]
    fn the_ruleset_forwards_only_pairs() {
        let rs = ruleset("fpn_natf_fpn0", "fpn0", false);
        assert!(
            rs.contains("dnat ip to ip saddr . ip daddr map @natf_pairs"),
            "{rs}"
        );
        assert!(rs.contains("ct helper set \"ftp\""), "{rs}");
        assert!(
            rs.contains("iifname \"fpn0\" ip daddr @natf_hosts ct status & dnat != dnat drop"),
            "{rs}"
        );
        assert!(
            rs.contains(
                "udp dport 7717 @th,64,16 0x0101 fib daddr type != local meta mark set 0x77170001"
            ),
            "{rs}"
        );
        assert!(
            rs.contains(
                "udp dport 7717 @th,64,16 0x0107 fib daddr type != local meta mark set 0x77170001"
            ),
            "{rs}"
        );
        assert!(!rs.starts_with("delete"));
        assert!(ruleset("t", "fpn0", true).starts_with("delete table inet t\n"));
    }
}
