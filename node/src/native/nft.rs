//! The node's own nftables table: created at start (replacing a stale one a
//! killed node left behind), one set of native flows, deleted on close.
//!
//! The table, its chains and sets are made (and deleted) through the `nft`
//! binary (`nft -f -`, one atomic transaction per call; a call costs a
//! process start, docs/DESIGN-NOTES.md note 15). The per-flow changes, on
//! a new flow's first-packet path since note 36, go as netlink batches
//! straight to the kernel instead (super::nftnl). Never on the packet path.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::nftnl::{Batch, ElemOp, Key, Socket};
use super::packet::{FiveTuple, L4Proto};
use crate::error::{Error, Result};

/// The name of the set of native flows in the node's table.
pub const FLOW_SET: &str = "native_flows";
/// The set of the native ICMP echo flows (source, destination, echo id):
/// ICMP has no ports, so `th sport`/`th dport` cannot match it.
pub const ECHO_SET: &str = "native_echo";
/// NFQUEUE only: the destination, protocol and ports of the native TCP/UDP
/// flows, from any source. A packet that matches here but not
/// [`FLOW_SET`] (a flow's ports from another source) is queued too, so the
/// node can count it; the thread gives it back to the kernel (ACCEPT).
pub const PORTS_SET: &str = "native_ports";
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
    /// the table) queues marked packets; [`delete`] removes it too.
    pub(crate) fn create(
        ns: Netns,
        name: &str,
        local: &[Ipv4Addr],
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
        let script = |v: &str| ruleset(name, local, dprp_port, own_iif, v, ports);
        match verdict {
            RxVerdict::Drop => run(&ns, &script("drop"))?,
            RxVerdict::Queue(n) => {
                if let Err(native) = run(&ns, &script(&format!("queue num {n}"))) {
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
                    run(
                        &ns,
                        &script(&format!("meta mark set {COMPAT_MARK:#x} accept")),
                    )?;
                    let mut args: Vec<String> =
                        ["-t", "raw", "-I", "PREROUTING"].map(String::from).to_vec();
                    args.extend(compat_rule(name, n));
                    if let Err(e) = iptables(&ns, &args) {
                        let _ = run(&ns, &format!("delete table inet {name}\n"));
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
            let keys = port_keys(ports_gone);
            batch.push(ElemOp::Add, PORTS_SET, keys.clone());
            batch.push(ElemOp::Delete, PORTS_SET, keys);
        }
        for (set, flows) in by_set(add) {
            batch.push(ElemOp::Add, set, flows.iter().map(Key::flow).collect());
        }
        if self.ports {
            // Adding a present element is not an error: flows sharing
            // their ports with another source's need no count here.
            batch.push(ElemOp::Add, PORTS_SET, port_keys(add));
        }
        self.netlink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&self.name, &batch)
    }

    /// Replaces the set of local addresses (DPRP probes to them are taken).
    /// Only for a table created with at least one address.
    pub(crate) fn set_local(&self, local: &[Ipv4Addr]) -> Result<()> {
        let mut script = format!("flush set inet {} local_addrs\n", self.name);
        if !local.is_empty() {
            let addrs: Vec<String> = local.iter().map(Ipv4Addr::to_string).collect();
            script.push_str(&format!(
                "add element inet {} local_addrs {{ {} }}\n",
                self.name,
                addrs.join(", ")
            ));
        }
        run(&self.ns, &script)
    }

    /// Deletes the table (and any compat rule). Returns whether it existed.
    pub(crate) fn delete(&self) -> Result<bool> {
        delete_in(&self.ns, &self.name)
    }
}

/// Flows grouped by the set that holds them (TCP/UDP or ICMP echo); empty
/// groups left out.
fn by_set(flows: &[FiveTuple]) -> Vec<(&'static str, Vec<FiveTuple>)> {
    let (echo, ports): (Vec<FiveTuple>, Vec<FiveTuple>) =
        flows.iter().partition(|f| f.proto == L4Proto::Icmp);
    [(FLOW_SET, ports), (ECHO_SET, echo)]
        .into_iter()
        .filter(|(_, f)| !f.is_empty())
        .collect()
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

/// The whole table as one nft script: replace any old one, then define.
fn ruleset(
    name: &str,
    local: &[Ipv4Addr],
    dprp_port: Option<u16>,
    own_iif: Option<&str>,
    verdict: &str,
    ports: bool,
) -> String {
    let mut s = String::new();
    // "add" then "delete" makes the delete succeed whether or not a stale
    // table exists; all of it is one atomic batch.
    s.push_str(&format!(
        "add table inet {name}\ndelete table inet {name}\n"
    ));
    s.push_str(&format!("table inet {name} {{\n"));
    s.push_str(&format!(
        "  set {FLOW_SET} {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service; }}\n"
    ));
    s.push_str(&format!(
        "  set {ECHO_SET} {{ typeof ip saddr . ip daddr . icmp id; }}\n"
    ));
    if ports {
        s.push_str(&format!(
            "  set {PORTS_SET} {{ type ipv4_addr . inet_proto . inet_service; }}\n"
        ));
    }
    if !local.is_empty() {
        let addrs: Vec<String> = local.iter().map(Ipv4Addr::to_string).collect();
        s.push_str(&format!(
            "  set local_addrs {{ type ipv4_addr; elements = {{ {} }}; }}\n",
            addrs.join(", ")
        ));
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
    s.push_str(&format!(
        "    ip saddr . ip daddr . meta l4proto . th sport . th dport @{FLOW_SET} counter {verdict}\n"
    ));
    if ports {
        // After the exact rule, whose verdict is final (`queue`, or with
        // the compat mark `accept`): only the other sources' packets get
        // here, so only they spend the limit.
        s.push_str(&format!(
            "    ip daddr . meta l4proto . th dport @{PORTS_SET} limit rate {PORTS_RATE}/second counter {verdict}\n"
        ));
    }
    // Echo requests and replies only: an ICMP error about the flow is the
    // kernel's to handle.
    s.push_str(&format!(
        "    icmp type {{ echo-request, echo-reply }} ip saddr . ip daddr . icmp id @{ECHO_SET} counter {verdict}\n"
    ));
    if let (Some(port), false) = (dprp_port, local.is_empty()) {
        s.push_str(&format!(
            "    ip daddr @local_addrs udp dport {port} counter {verdict}\n"
        ));
    }
    s.push_str("  }\n");
    // Our raw-socket sends of a native flow are not tracked either: the
    // kernel has no socket for them and would only keep useless state.
    s.push_str("  chain tx {\n    type filter hook output priority raw; policy accept;\n");
    s.push_str(&format!(
        "    ip daddr . ip saddr . meta l4proto . th dport . th sport @{FLOW_SET} notrack\n"
    ));
    s.push_str(&format!(
        "    icmp type {{ echo-request, echo-reply }} ip daddr . ip saddr . icmp id @{ECHO_SET} notrack\n"
    ));
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

/// Deletes every compat iptables rule tagged with this table's name.
/// Without an iptables binary there can be none: not an error.
fn delete_compat_rules(ns: &Netns, name: &str) -> Result<()> {
    let out = match ns
        .command("iptables")
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
        iptables(ns, &args)?;
    }
    Ok(())
}

fn iptables<S: AsRef<std::ffi::OsStr>>(ns: &Netns, args: &[S]) -> Result<()> {
    let out = ns
        .command("iptables")
        .args(args)
        .output()
        .map_err(|source| Error::NativeNftSpawn { source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(nft_failed(&out))
    }
}

/// The [`PORTS_SET`] keys of the TCP/UDP flows among `flows`.
fn port_keys(flows: &[FiveTuple]) -> Vec<Key> {
    flows
        .iter()
        .filter(|f| f.proto != L4Proto::Icmp)
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
    fn table_names_are_checked_before_reaching_a_script() {
        assert!(check_name("fpn_tun0").is_ok());
        for bad in ["", "0abc", "a b", "a;delete table", "x{", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
