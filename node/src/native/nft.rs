//! The node's own nftables table: created at start (replacing a stale one a
//! killed node left behind), the sets of native flows (one per family and
//! kind: IPv4 and IPv6, TCP/UDP and echo), deleted on close.
//!
//! One table of family `inet` holds both families: every IPv4 rule and set
//! has its IPv6 twin (set names with a `6`), so one `delete table` removes
//! everything.
//!
//! The table, its chains and sets are made (and deleted) through the `nft`
//! binary (`nft -f -`, one atomic transaction per call; a call costs a
//! process start, docs/DESIGN-NOTES.md note 15). The per-flow changes, on
//! a new flow's first-packet path since note 36, go as netlink batches
//! straight to the kernel instead (super::nftnl). Never on the packet path.

use std::io::Write;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::nftnl::{Batch, ElemOp, Key, Socket};
use super::packet::FiveTuple;
use crate::error::{Error, Result};

/// The name of the set of native IPv4 TCP/UDP flows in the node's table.
pub const FLOW_SET: &str = "native_flows";
/// The set of native IPv6 TCP/UDP flows.
pub const FLOW_SET6: &str = "native_flows6";
/// The set of the native ICMP echo flows (source, destination, echo id):
/// ICMP has no ports, so `th sport`/`th dport` cannot match it.
pub const ECHO_SET: &str = "native_echo";
/// The set of the native ICMPv6 echo flows (source, destination, echo id).
pub const ECHO_SET6: &str = "native_echo6";
/// NFQUEUE only: the destination, protocol and ports of the native IPv4
/// TCP/UDP flows, from any source. A packet that matches here but not
/// [`FLOW_SET`] (a flow's ports from another source) is queued too, so the
/// node can count it; the thread gives it back to the kernel (ACCEPT).
pub const PORTS_SET: &str = "native_ports";
/// NFQUEUE only: [`PORTS_SET`] of the IPv6 flows.
pub const PORTS_SET6: &str = "native_ports6";
/// The node's IPv4 addresses (DPRP probes to them are taken).
const LOCAL_SET: &str = "local_addrs";
/// The node's IPv6 addresses.
const LOCAL_SET6: &str = "local_addrs6";
/// Most such packets a second the rule queues: the host's own traffic to
/// those ports beyond it goes straight to the kernel, uncounted.
const PORTS_RATE: u32 = 1000;

/// What the prerouting rule does with a packet of a registered flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RxVerdict {
    /// `queue num N` without `bypass`: fail closed when nobody listens.
    Queue(u16),
    /// `drop`: an AF_PACKET tap has copied the packet already.
    Drop,
}

/// The node's table. Dropping it does not delete it; [`NativeIo`] does.
///
/// [`NativeIo`]: super::NativeIo
#[derive(Debug)]
pub(crate) struct Table {
    name: String,
    ns: Netns,
    /// Whether the table has [`PORTS_SET`] (NFQUEUE).
    ports: bool,
    /// Set elements change through this (opened in the table's namespace).
    netlink: std::sync::Mutex<Socket>,
}

/// The network namespace a table lives in. An `nft`/`iptables` run for the
/// table started from a thread in another namespace enters it first (that
/// takes CAP_SYS_ADMIN; from the same namespace nothing is entered, so
/// CAP_NET_ADMIN is enough).
#[derive(Debug)]
pub(crate) struct Netns {
    fd: OwnedFd,
    id: (u64, u64),
}

impl Netns {
    /// The calling thread's network namespace.
    pub(crate) fn current() -> Result<Self> {
        let file = std::fs::File::open(NS_PATH).map_err(ns_err)?;
        let id = ns_id(&file.metadata().map_err(ns_err)?);
        Ok(Self {
            fd: file.into(),
            id,
        })
    }

    /// A netlink socket in this namespace: opened here, or from a short
    /// thread that enters the namespace first (CAP_SYS_ADMIN, as for `nft`).
    pub(super) fn open_netlink(&self) -> Result<Socket> {
        let here = std::fs::metadata(NS_PATH).map(|m| ns_id(&m)).ok();
        if here == Some(self.id) {
            return Socket::open();
        }
        let fd = self.fd.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on a descriptor this struct keeps open;
                // it changes only this short-lived thread's namespace.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(Error::NativeSocket {
                        what: "enter the table's network namespace",
                        source: std::io::Error::last_os_error(),
                    });
                }
                Socket::open()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(Error::NativeSocket {
                    what: "enter the table's network namespace",
                    source: std::io::Error::other("thread panicked"),
                })
            })
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let here = std::fs::metadata(NS_PATH).map(|m| ns_id(&m)).ok();
        if here == Some(self.id) {
            return cmd;
        }
        let fd = self.fd.as_raw_fd();
        // SAFETY: setns(2) is a plain system call, safe between fork and
        // exec; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        cmd
    }
}

const NS_PATH: &str = "/proc/thread-self/ns/net";

fn ns_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

fn ns_err(source: std::io::Error) -> Error {
    Error::NativeSocket {
        what: "open /proc/thread-self/ns/net",
        source,
    }
}

impl Table {
    /// Replaces any table of this name (a stale one from a killed node)
    /// with a fresh one, in one transaction.
    ///
    /// For [`RxVerdict::Queue`] on a kernel without nftables' `queue`
    /// expression (CONFIG_NFT_QUEUE unset, as on some minimal kernels), the
    /// rule marks the packet instead and one iptables rule in `raw
    /// PREROUTING` (the xtables NFQUEUE target, tagged with a comment naming
    /// the table) queues marked packets, and its ip6tables twin the IPv6
    /// ones; [`delete`] removes them too. Without a working ip6tables (a
    /// host without IPv6) the IPv6 rules drop instead: fail closed, the IPv6
    /// flows are lost rather than answered by the kernel.
    pub(crate) fn create(
        ns: Netns,
        name: &str,
        local: &[IpAddr],
        dprp_port: Option<u16>,
        own_iif: Option<&str>,
        verdict: RxVerdict,
    ) -> Result<Self> {
        check_name(name)?;
        delete_compat_rules(&ns, name)?;
        let ports = matches!(verdict, RxVerdict::Queue(_));
        // An interface name is at most 15 bytes; one with characters a
        // script could misread is left out (no such rule, not an error).
        let own_iif = own_iif.filter(|i| {
            !i.is_empty()
                && i.len() <= 15
                && i.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        });
        let script = |v4: &str, v6: &str| ruleset(name, local, dprp_port, own_iif, [v4, v6], ports);
        match verdict {
            RxVerdict::Drop => run(&ns, &script("drop", "drop"))?,
            RxVerdict::Queue(n) => {
                let queue = format!("queue num {n}");
                if let Err(native) = run(&ns, &script(&queue, &queue)) {
                    // Without nft_queue the kernel answers ENOENT for the rule.
                    let Error::NativeNft { stderr, .. } = &native else {
                        return Err(native);
                    };
                    if !(stderr.contains("queue") && stderr.contains("No such file")) {
                        return Err(native);
                    }
                    // `accept` ends this chain only (the iptables rule
                    // queues the marked packet after it), so a flow's own
                    // packet stops at its exact rule and never spends the
                    // ports rule's rate limit, which is the other sources'.
                    let mark = format!("meta mark set {COMPAT_MARK:#x} accept");
                    let mut args: Vec<String> =
                        ["-t", "raw", "-I", "PREROUTING"].map(String::from).to_vec();
                    args.extend(compat_rule(name, n));
                    // The IPv6 queue rule first: only with it in place may
                    // the table mark IPv6 packets and let them go.
                    let v6 = match xtables(&ns, IP6TABLES, &args) {
                        Ok(()) => mark.as_str(),
                        Err(e) => {
                            tracing::warn!(
                                error = %e,
                                "no ip6tables NFQUEUE rule: native IPv6 packets are dropped unread"
                            );
                            "drop"
                        }
                    };
                    if let Err(e) = run(&ns, &script(&mark, v6)) {
                        let _ = delete_compat_rules(&ns, name);
                        return Err(e);
                    }
                    if let Err(e) = xtables(&ns, IPTABLES, &args) {
                        let _ = run(&ns, &format!("delete table inet {name}\n"));
                        let _ = delete_compat_rules(&ns, name);
                        return Err(e);
                    }
                }
            }
        }
        let netlink = match ns.open_netlink() {
            Ok(s) => s,
            Err(e) => {
                let _ = delete_in(&ns, name);
                return Err(e);
            }
        };
        Ok(Self {
            name: name.to_owned(),
            ns,
            ports,
            netlink: std::sync::Mutex::new(netlink),
        })
    }

    /// The table's name (family `inet`).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Removes `remove` and adds `add` (flows in neither list keep their
    /// state) in one netlink batch: one `sendto`, one read of the answers,
    /// all or nothing. Adding a present flow or removing an absent one is
    /// not an error. `ports_gone`: flows of `remove` whose destination,
    /// protocol and ports no remaining flow shares (their [`PORTS_SET`]
    /// element goes too).
    pub(crate) fn change_flows(
        &self,
        add: &[FiveTuple],
        remove: &[FiveTuple],
        ports_gone: &[FiveTuple],
    ) -> Result<()> {
        let mut batch = Batch::default();
        // The kernel refuses to delete an absent element ("destroy", which
        // would not, is kernel 6.3+), so each removed element is added
        // first in the same batch: idempotent, like the old nft script.
        for (set, flows) in by_set(remove) {
            let keys: Vec<Key> = flows.iter().map(Key::flow).collect();
            batch.push(ElemOp::Add, set, keys.clone());
            batch.push(ElemOp::Delete, set, keys);
        }
        if self.ports {
            for (set, v6) in [(PORTS_SET, false), (PORTS_SET6, true)] {
                let keys = port_keys(ports_gone, v6);
                batch.push(ElemOp::Add, set, keys.clone());
                batch.push(ElemOp::Delete, set, keys);
            }
        }
        for (set, flows) in by_set(add) {
            batch.push(ElemOp::Add, set, flows.iter().map(Key::flow).collect());
        }
        if self.ports {
            // Adding a present element is not an error: flows sharing
            // their ports with another source's need no count here.
            for (set, v6) in [(PORTS_SET, false), (PORTS_SET6, true)] {
                batch.push(ElemOp::Add, set, port_keys(add, v6));
            }
        }
        self.netlink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&self.name, &batch)
    }

    /// Replaces the sets of local addresses, both families (DPRP probes to
    /// them are taken). Only for a table created with at least one address.
    pub(crate) fn set_local(&self, local: &[IpAddr]) -> Result<()> {
        let mut script = String::new();
        for (set, addrs) in [
            (LOCAL_SET, addr_list(local, false)),
            (LOCAL_SET6, addr_list(local, true)),
        ] {
            script.push_str(&format!("flush set inet {} {set}\n", self.name));
            if !addrs.is_empty() {
                script.push_str(&format!(
                    "add element inet {} {set} {{ {addrs} }}\n",
                    self.name
                ));
            }
        }
        run(&self.ns, &script)
    }

    /// Deletes the table (and any compat rule). Returns whether it existed.
    pub(crate) fn delete(&self) -> Result<bool> {
        delete_in(&self.ns, &self.name)
    }
}

/// Flows grouped by the set that holds them (by family, TCP/UDP or echo);
/// empty groups left out.
fn by_set(flows: &[FiveTuple]) -> Vec<(&'static str, Vec<FiveTuple>)> {
    let mut groups: Vec<(&'static str, Vec<FiveTuple>)> =
        [FLOW_SET, FLOW_SET6, ECHO_SET, ECHO_SET6]
            .into_iter()
            .map(|s| (s, Vec::new()))
            .collect();
    for f in flows {
        let set = flow_set(f);
        if let Some((_, g)) = groups.iter_mut().find(|(s, _)| *s == set) {
            g.push(*f);
        }
    }
    groups.retain(|(_, f)| !f.is_empty());
    groups
}

/// The set that holds `f`.
pub(crate) fn flow_set(f: &FiveTuple) -> &'static str {
    match (f.is_ipv6(), f.proto.is_echo()) {
        (false, false) => FLOW_SET,
        (true, false) => FLOW_SET6,
        (false, true) => ECHO_SET,
        (true, true) => ECHO_SET6,
    }
}

/// The addresses of `local` of one family (IPv6 when `v6`), as an nft
/// element list (`a, b`); empty if none.
fn addr_list(local: &[IpAddr], v6: bool) -> String {
    let addrs: Vec<String> = local
        .iter()
        .filter(|a| a.is_ipv6() == v6)
        .map(IpAddr::to_string)
        .collect();
    addrs.join(", ")
}

/// Deletes the table `name` (family `inet`) if it exists. Returns whether
/// there was one.
/// (In the calling thread's network namespace.)
pub(crate) fn delete(name: &str) -> Result<bool> {
    delete_in(&Netns::current()?, name)
}

fn delete_in(ns: &Netns, name: &str) -> Result<bool> {
    check_name(name)?;
    delete_compat_rules(ns, name)?;
    if !exists(ns, name)? {
        return Ok(false);
    }
    run(ns, &format!("delete table inet {name}\n"))?;
    Ok(true)
}

/// Whether the table `name` (family `inet`) exists.
pub(crate) fn exists(ns: &Netns, name: &str) -> Result<bool> {
    check_name(name)?;
    let out = ns
        .command("nft")
        .args(["list", "tables", "inet"])
        .output()
        .map_err(|source| Error::NativeNftSpawn { source })?;
    if !out.status.success() {
        return Err(nft_failed(&out));
    }
    let want = format!("table inet {name}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == want))
}

/// A table name must be a plain nftables identifier (it goes into a script).
pub(super) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::NativeConfig {
            setting: "table",
            reason: "must be letters, digits and '_', starting with a letter, at most 64",
        })
    }
}

/// The mark the compat NFQUEUE path puts on packets to queue.
const COMPAT_MARK: u32 = 0x0f9e_0000;

/// One family's names in the node's table.
struct Family {
    /// `ip` or `ip6`.
    ip: &'static str,
    addr: &'static str,
    flows: &'static str,
    echo: &'static str,
    ports: &'static str,
    local: &'static str,
    /// `icmp` or `icmpv6`.
    icmp: &'static str,
    /// IPv6: only packets without extension headers (the fixed header's
    /// next header is the transport's), the only ones the receive thread
    /// reads; any other is the kernel's, as the ring's filter leaves it.
    /// The matches for TCP/UDP, UDP and the echo.
    direct: [&'static str; 3],
}

const FAMILIES: [Family; 2] = [
    Family {
        ip: "ip",
        addr: "ipv4_addr",
        flows: FLOW_SET,
        echo: ECHO_SET,
        ports: PORTS_SET,
        local: LOCAL_SET,
        icmp: "icmp",
        direct: ["", "", ""],
    },
    Family {
        ip: "ip6",
        addr: "ipv6_addr",
        flows: FLOW_SET6,
        echo: ECHO_SET6,
        ports: PORTS_SET6,
        local: LOCAL_SET6,
        icmp: "icmpv6",
        direct: [
            "ip6 nexthdr { tcp, udp } ",
            "ip6 nexthdr udp ",
            "ip6 nexthdr ipv6-icmp ",
        ],
    },
];

/// The whole table as one nft script: replace any old one, then define.
/// `verdicts`: what the rules do with a taken IPv4 and IPv6 packet.
fn ruleset(
    name: &str,
    local: &[IpAddr],
    dprp_port: Option<u16>,
    own_iif: Option<&str>,
    verdicts: [&str; 2],
    ports: bool,
) -> String {
    let mut s = String::new();
    // "add" then "delete" makes the delete succeed whether or not a stale
    // table exists; all of it is one atomic batch.
    s.push_str(&format!(
        "add table inet {name}\ndelete table inet {name}\n"
    ));
    s.push_str(&format!("table inet {name} {{\n"));
    for f in &FAMILIES {
        let Family { ip, addr, icmp, .. } = f;
        s.push_str(&format!(
            "  set {} {{ type {addr} . {addr} . inet_proto . inet_service . inet_service; }}\n",
            f.flows
        ));
        s.push_str(&format!(
            "  set {} {{ typeof {ip} saddr . {ip} daddr . {icmp} id; }}\n",
            f.echo
        ));
        if ports {
            s.push_str(&format!(
                "  set {} {{ type {addr} . inet_proto . inet_service; }}\n",
                f.ports
            ));
        }
        if !local.is_empty() {
            // Both sets whenever there is an address (one may stay empty
            // until `set_local` brings one of its family).
            let addrs = addr_list(local, *ip == "ip6");
            let elements = if addrs.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {addrs} }};")
            };
            s.push_str(&format!("  set {} {{ type {addr};{elements} }}\n", f.local));
        }
    }
    // priority raw - 10: before conntrack (-200) and before iptables' raw
    // table (-300), so stolen packets leave no connection-tracking entry
    // and never meet the host's firewall.
    s.push_str("  chain rx {\n    type filter hook prerouting priority raw - 10; policy accept;\n");
    if let Some(tun) = own_iif {
        // What the node itself wrote into its TUN is the host's: an opened
        // packet of the real-address plane keeps the five-tuple it had on
        // the wire (the set's), and must not be taken a second time.
        s.push_str(&format!("    iifname \"{tun}\" accept\n"));
    }
    for (f, verdict) in FAMILIES.iter().zip(verdicts) {
        let (ip, nh) = (f.ip, f.direct[0]);
        s.push_str(&format!(
            "    {nh}{ip} saddr . {ip} daddr . meta l4proto . th sport . th dport @{} counter {verdict}\n",
            f.flows
        ));
    }
    if ports {
        // After the exact rules, whose verdict is final (`queue`, or with
        // the compat mark `accept`): only the other sources' packets get
        // here, so only they spend the limit (one per family).
        for (f, verdict) in FAMILIES.iter().zip(verdicts) {
            if verdict == "drop" {
                // The compat path without ip6tables: another source's
                // packet is the host's, never dropped (and not copied).
                continue;
            }
            let (ip, nh) = (f.ip, f.direct[0]);
            s.push_str(&format!(
                "    {nh}{ip} daddr . meta l4proto . th dport @{} limit rate {PORTS_RATE}/second counter {verdict}\n",
                f.ports
            ));
        }
    }
    // Echo requests and replies only: an ICMP error about the flow is the
    // kernel's to handle.
    for (f, verdict) in FAMILIES.iter().zip(verdicts) {
        let (ip, icmp, nh) = (f.ip, f.icmp, f.direct[2]);
        s.push_str(&format!(
            "    {nh}{icmp} type {{ echo-request, echo-reply }} {ip} saddr . {ip} daddr . {icmp} id @{} counter {verdict}\n",
            f.echo
        ));
    }
    if let (Some(port), false) = (dprp_port, local.is_empty()) {
        for (f, verdict) in FAMILIES.iter().zip(verdicts) {
            let (ip, nh) = (f.ip, f.direct[1]);
            s.push_str(&format!(
                "    {nh}{ip} daddr @{} udp dport {port} counter {verdict}\n",
                f.local
            ));
        }
    }
    s.push_str("  }\n");
    // Our raw-socket sends of a native flow are not tracked either: the
    // kernel has no socket for them and would only keep useless state.
    s.push_str("  chain tx {\n    type filter hook output priority raw; policy accept;\n");
    for f in &FAMILIES {
        let ip = f.ip;
        s.push_str(&format!(
            "    {ip} daddr . {ip} saddr . meta l4proto . th dport . th sport @{} notrack\n",
            f.flows
        ));
    }
    for f in &FAMILIES {
        let (ip, icmp) = (f.ip, f.icmp);
        s.push_str(&format!(
            "    {icmp} type {{ echo-request, echo-reply }} {ip} daddr . {ip} saddr . {icmp} id @{} notrack\n",
            f.echo
        ));
    }
    s.push_str("  }\n}\n");
    s
}

/// The iptables rule (after `-t raw -I/-D PREROUTING`) of the compat path.
fn compat_rule(name: &str, queue: u16) -> Vec<String> {
    [
        "-m",
        "mark",
        "--mark",
        &format!("{COMPAT_MARK:#x}/0xffff0000"),
        "-m",
        "comment",
        "--comment",
        &format!("fpn:{name}"),
        "-j",
        "NFQUEUE",
        "--queue-num",
        &queue.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The xtables binaries of the compat NFQUEUE path, IPv4 and IPv6.
const IPTABLES: &str = "iptables";
const IP6TABLES: &str = "ip6tables";

/// Deletes every compat iptables and ip6tables rule tagged with this
/// table's name. Without a binary there can be none: not an error.
fn delete_compat_rules(ns: &Netns, name: &str) -> Result<()> {
    for program in [IPTABLES, IP6TABLES] {
        delete_compat_rules_of(ns, program, name)?;
    }
    Ok(())
}

fn delete_compat_rules_of(ns: &Netns, program: &str, name: &str) -> Result<()> {
    let out = match ns
        .command(program)
        .args(["-t", "raw", "-S", "PREROUTING"])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(Error::NativeNftSpawn { source }),
    };
    if !out.status.success() {
        // No raw table support at all: nothing of ours can be there.
        return Ok(());
    }
    let tag = format!("\"fpn:{name}\"");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(spec) = line.strip_prefix("-A PREROUTING ") else {
            continue;
        };
        if !spec
            .split_whitespace()
            .any(|w| w == tag || w == &tag[1..tag.len() - 1])
        {
            continue;
        }
        let mut args = vec![
            "-t".to_owned(),
            "raw".into(),
            "-D".into(),
            "PREROUTING".into(),
        ];
        args.extend(
            spec.split_whitespace()
                .map(|w| w.trim_matches('"').to_owned()),
        );
        xtables(ns, program, &args)?;
    }
    Ok(())
}

fn xtables<S: AsRef<std::ffi::OsStr>>(ns: &Netns, program: &str, args: &[S]) -> Result<()> {
    let out = ns
        .command(program)
        .args(args)
        .output()
        .map_err(|source| Error::NativeNftSpawn { source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(nft_failed(&out))
    }
}

/// The [`PORTS_SET`] (`v6`: [`PORTS_SET6`]) keys of the TCP/UDP flows of
/// that family among `flows`.
fn port_keys(flows: &[FiveTuple], v6: bool) -> Vec<Key> {
    flows
        .iter()
        .filter(|f| !f.proto.is_echo() && f.is_ipv6() == v6)
        .map(Key::ports)
        .collect()
}

/// Runs an nft script as one transaction.
pub(super) fn run(ns: &Netns, script: &str) -> Result<()> {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::NativeNftSpawn { source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| Error::NativeNftSpawn { source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| Error::NativeNftSpawn { source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(nft_failed(&out))
    }
}

fn nft_failed(out: &std::process::Output) -> Error {
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if stderr.len() > 400 {
        let mut cut = 400;
        while !stderr.is_char_boundary(cut) {
            cut -= 1;
        }
        stderr.truncate(cut);
    }
    Error::NativeNft {
        status: out.status.to_string(),
        stderr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ipv4_rule_and_set_has_an_ipv6_twin() {
        let local: Vec<IpAddr> = vec!["198.18.0.2".parse().unwrap(), "fd00:18::2".parse().unwrap()];
        let s = ruleset(
            "t",
            &local,
            Some(7717),
            Some("fpn0"),
            ["queue num 3"; 2],
            true,
        );
        let lines: Vec<&str> = s.lines().map(str::trim).collect();
        let v4: Vec<&&str> = lines
            .iter()
            .filter(|l| {
                !l.starts_with("set ") && (l.contains("ip saddr") || l.contains("ip daddr"))
            })
            .collect();
        assert_eq!(v4.len(), 6, "{s}");
        for l in v4 {
            let twin = l
                .replace("ip saddr", "ip6 saddr")
                .replace("ip daddr", "ip6 daddr")
                .replace("icmp ", "icmpv6 ")
                .replace("@native_flows", "@native_flows6")
                .replace("@native_echo", "@native_echo6")
                .replace("@native_ports", "@native_ports6")
                .replace("@local_addrs", "@local_addrs6");
            assert!(
                lines.iter().any(|m| m.ends_with(&twin)),
                "no twin of {l}: {s}"
            );
        }
        for set in [FLOW_SET6, ECHO_SET6, PORTS_SET6, LOCAL_SET6] {
            assert!(s.contains(&format!("set {set} {{")), "{set}: {s}");
        }
        assert!(
            s.contains("type ipv6_addr; elements = { fd00:18::2 };"),
            "{s}"
        );
        assert!(
            s.contains("type ipv4_addr; elements = { 198.18.0.2 };"),
            "{s}"
        );
        // The compat path without ip6tables: IPv6 flows dropped, other
        // sources' IPv6 packets left alone.
        let s = ruleset("t", &local, Some(7717), None, ["accept", "drop"], true);
        assert!(!s.contains("@native_ports6 limit"), "{s}");
        assert!(s.contains("@native_flows6 counter drop"), "{s}");
        // One family only: the other's address set is there, empty.
        let s = ruleset("t", &local[1..], Some(7717), None, ["drop"; 2], false);
        assert!(s.contains("set local_addrs { type ipv4_addr; }"), "{s}");
        assert!(!s.contains("native_ports"), "{s}");
    }

    #[test]
    fn table_names_are_checked_before_reaching_a_script() {
        assert!(check_name("fpn_tun0").is_ok());
        for bad in ["", "0abc", "a b", "a;delete table", "x{", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
