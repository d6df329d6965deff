//! The real-address plane's steering (issue 11, part 2): the host's traffic
//! to the real addresses peers speak for goes through the node.
//!
//! When this node's credential names prefixes besides its overlay address
//! (a GES's own real address, a gateway's LAN: `--protect` at the GMS), the
//! node steers, with policy routing:
//! - a routing table of its own ([`TABLE`]) holding one route per prefix a
//!   peer's credential names, into the TUN, with this node's real address
//!   as the source the host picks (else the host would pick the TUN's
//!   overlay address, and the flow would not be the real one);
//! - rules ([`RULE_PREF`], [`Steer`]) that make the steered packets look
//!   that table up first: on a GES the host's own (`iif lo`), on a gateway
//!   those from the prefixes it protects (forwarded from its LAN); a
//!   destination without a route there falls through to the main table,
//!   so everything else is untouched;
//! - the node's own sockets (the QUIC carrier's, the raw sender's, the
//!   local-address lookup: see [`mark`]) carry [`MARK`], and a rule before
//!   those ([`MARK_PREF`]) sends them to the main table, so the carrier's
//!   packets to a peer's real address never loop into the TUN.
//!
//! - on a gateway, a rule ([`TRANSIT_PREF`]) that routes the DDEs of other
//!   GEs' flows crossing it (the gateway table marks them) into the TUN
//!   through [`TRANSIT_TABLE`], so the node joins their negotiations.
//!
//! A packet so steered enters the core as a TUN packet whose source is a
//! real address (`core::real`); an inbound protected packet of the flow is
//! taken by the native carrier's receive path and written, opened, into the
//! TUN, whence the kernel delivers it (a GES) or forwards it (a gateway).
//!
//! Changes go to a thread of its own (each is an `ip` run, milliseconds):
//! the driver never blocks on them. The rule and the table are removed on
//! drop, and replaced at start (a killed node's are stale).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;

use fpn_proto::dprp::Prefix;
use tracing::{debug, warn};

use crate::error::{Error, Result};

/// The mark on the node's own sockets: their packets skip [`TABLE`].
pub const MARK: u32 = 0x7717_0000;
/// The routing table of the peers' real prefixes.
pub const TABLE: u32 = 7717;
/// The preference of the rules that send the steered packets to [`TABLE`].
pub const RULE_PREF: u32 = 7717;
/// The preference of the rule that sends the node's own (marked) packets
/// to the main table, before [`RULE_PREF`].
pub const MARK_PREF: u32 = 7716;
/// The table a gateway routes forwarded DDEs through: its one route
/// leads into the TUN (the core joins their negotiations, `core/transit.rs`).
pub const TRANSIT_TABLE: u32 = 7718;
/// The preference of the rule that sends packets with
/// `native::TRANSIT_MARK` to [`TRANSIT_TABLE`]: before
/// [`MARK_PREF`], whose mask that mark matches too.
pub const TRANSIT_PREF: u32 = 7715;
/// Most rules of one preference removed at cleanup (a gateway has one per
/// prefix, at most 16).
const MAX_RULES: usize = 32;

/// Which packets take [`TABLE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steer {
    /// A GES: the host's own packets (`iif lo`), not what it forwards (a
    /// container's, a VM's: not addresses this node speaks for).
    Local,
    /// A gateway: packets from the prefixes it protects (forwarded from
    /// its LAN), not its own nor anyone else's it routes.
    From(Vec<Prefix>),
}

/// Marks a socket of the node with [`MARK`] (best effort: without
/// CAP_NET_ADMIN the mark is refused, and then no real-address plane runs
/// either, since it needs the same right to install its rule).
pub fn mark(sock: &impl AsRawFd) {
    let v: libc::c_int = MARK as libc::c_int;
    // SAFETY: setsockopt with a valid int on a socket the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        debug!(error = %std::io::Error::last_os_error(), "socket mark refused");
    }
}

/// The steering of one node: its thread and the channel to it.
#[derive(Debug)]
pub struct RealPlane {
    tx: Option<mpsc::Sender<Vec<Prefix>>>,
    thread: Option<JoinHandle<()>>,
}

impl RealPlane {
    /// Installs the rule (replacing a stale one) and starts the thread that
    /// keeps the routes of [`TABLE`] equal to the prefixes it is given.
    /// `tun` is the TUN's name, `src` the source address the host should
    /// pick toward them (this node's real address).
    pub fn start(tun: &str, src: Option<Ipv4Addr>, steer: &Steer) -> Result<Self> {
        cleanup();
        let table = TABLE.to_string();
        ip(&[
            "rule",
            "add",
            "pref",
            &MARK_PREF.to_string(),
            "fwmark",
            &format!("{MARK:#x}/{MARK:#x}"),
            "lookup",
            "main",
        ])?;
        let pref = RULE_PREF.to_string();
        match steer {
            Steer::Local => ip(&["rule", "add", "pref", &pref, "iif", "lo", "lookup", &table])?,
            Steer::From(prefixes) => {
                for p in prefixes.iter().filter(|p| p.addr().is_ipv4()) {
                    let p = p.to_string();
                    ip(&["rule", "add", "pref", &pref, "from", &p, "lookup", &table])?;
                }
                // On the path between other GEs: their DDEs (marked by the
                // gateway table) go into the TUN instead of on.
                let transit = TRANSIT_TABLE.to_string();
                let mark = crate::native::TRANSIT_MARK;
                ip(&["route", "replace", "default", "dev", tun, "table", &transit])?;
                ip(&[
                    "rule",
                    "add",
                    "pref",
                    &TRANSIT_PREF.to_string(),
                    "fwmark",
                    &format!("{mark:#x}"),
                    "lookup",
                    &transit,
                ])?;
            }
        }
        let (tx, rx) = mpsc::channel::<Vec<Prefix>>();
        let tun = tun.to_owned();
        let thread = std::thread::Builder::new()
            .name("fpn-real-plane".into())
            .spawn(move || {
                let mut installed: BTreeSet<Prefix> = BTreeSet::new();
                while let Ok(mut want) = rx.recv() {
                    // Only the newest set matters.
                    while let Ok(newer) = rx.try_recv() {
                        want = newer;
                    }
                    sync(&tun, src, &mut installed, want.into_iter().collect());
                }
            })
            .map_err(|e| Error::RealPlane {
                command: "(thread)".into(),
                stderr: e.to_string(),
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// The prefixes peers speak for now (IPv4 ones are routed).
    pub fn set_prefixes(&self, prefixes: Vec<Prefix>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(prefixes);
        }
    }
}

impl Drop for RealPlane {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        cleanup();
    }
}

/// Removes the rule and the table's routes (a killed node's too).
pub fn cleanup() {
    // Fails when there is nothing (more) to remove: the normal end.
    for pref in [RULE_PREF, MARK_PREF, TRANSIT_PREF] {
        let pref = pref.to_string();
        for _ in 0..MAX_RULES {
            if ip(&["rule", "del", "pref", &pref]).is_err() {
                break;
            }
        }
    }
    for t in [TABLE, TRANSIT_TABLE] {
        let _ = ip(&["route", "flush", "table", &t.to_string()]);
    }
}

fn sync(
    tun: &str,
    src: Option<Ipv4Addr>,
    installed: &mut BTreeSet<Prefix>,
    want: BTreeSet<Prefix>,
) {
    let table = TABLE.to_string();
    for p in installed.difference(&want) {
        if let Err(e) = ip(&["route", "del", &p.to_string(), "table", &table]) {
            debug!(error = %e, "real-address route not removed");
        }
    }
    for p in want.difference(installed) {
        if !matches!(p.addr(), IpAddr::V4(_)) {
            continue;
        }
        let p = p.to_string();
        let mut args = vec!["route", "replace", &p, "dev", tun, "table", &table];
        let src = src.map(|s| s.to_string());
        if let Some(s) = &src {
            args.extend(["src", s.as_str()]);
        }
        if let Err(e) = ip(&args) {
            warn!(error = %e, "real-address route not installed: that peer's real addresses are not protected");
        }
    }
    debug!(routes = want.len(), "real-address routes");
    *installed = want;
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::RealPlane {
            command: args.join(" "),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    stderr.truncate(400);
    Err(Error::RealPlane {
        command: args.join(" "),
        stderr,
    })
}
