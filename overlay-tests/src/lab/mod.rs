//! [`Lab`]: a running topology, and the guard that removes it.
//!
//! ```no_run
//! use fpn_lab::Lab;
//! # fn main() -> Result<(), fpn_lab::Error> {
//! let lab = Lab::up(fpn_lab::config_path("two-hosts.toml"))?;
//! let bob = lab.addr("bob", "ab")?;
//! let out = lab.exec("alice", ["ping", "-c1", "-W2", &bob.to_string()])?;
//! assert!(out.success());
//! # Ok(()) }   // dropping `lab` kills its processes and deletes its namespaces
//! ```
//!
//! Everything a `Lab` creates is undone when it is dropped, also while a test
//! panics: processes it started are stopped, then anything else still
//! running in its namespaces is killed, then the namespaces (and with them
//! every interface, route and nftables rule) are deleted. Logs are kept when
//! the thread is panicking, so a failed test leaves its evidence.

mod command;
mod nat;
mod runtime;

pub use command::LabCommand;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::build::{self, Tools};
use crate::naming;
use crate::process::{Process, Registry};
use crate::state::{self, EndState, LabState};
use crate::sys::{self, FileLock, NetnsThread};
use crate::topology::Topology;
use crate::{Cidr, Error};

/// How long a topology's `run` commands may take each.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Grace between SIGTERM and SIGKILL at teardown.
const TEARDOWN_GRACE: Duration = Duration::from_secs(1);

/// Environment variable: keep log directories of labs that end normally.
pub const KEEP_LOGS_ENV: &str = "FPN_LAB_KEEP_LOGS";

/// How to bring a lab up. `LabOptions::default()` is what tests want: a
/// random id, the default prefix and state directory, logs in a temporary
/// directory, everything removed when the `Lab` is dropped.
#[derive(Debug, Clone, Default)]
pub struct LabOptions {
    /// Lab id (default: random). Must not be in use.
    pub id: Option<String>,
    /// Namespace prefix (default: `FPN_LAB_PREFIX` or `fpnlab`).
    pub prefix: Option<String>,
    /// State directory (default: `FPN_LAB_STATE_DIR` or /run/fpn-lab).
    pub state_dir: Option<PathBuf>,
    /// Log directory (default: a fresh directory in the system temp dir, or
    /// `{state_dir}/{id}` for persistent labs).
    pub log_dir: Option<PathBuf>,
    /// Keep the log directory after teardown (also set by `FPN_LAB_KEEP_LOGS`).
    pub keep_logs: bool,
    /// The lab will be handed to its state file with [`Lab::persist`] (as
    /// `fpn-lab up` does): its logs go to the state directory, where
    /// `fpn-lab down` removes them.
    pub persistent: bool,
}

/// A running lab. Drop it (or call [`Lab::down`]) to remove everything.
///
/// All methods take `&self`; a `Lab` can be shared between threads, e.g. a
/// transfer running in one thread while another roams a host.
#[derive(Debug)]
pub struct Lab {
    state: Mutex<LabState>,
    tools: Tools,
    state_dir: PathBuf,
    registry: Arc<Registry>,
    services: BTreeMap<(String, String), Process>,
    counter: AtomicU32,
    keep_logs: bool,
    /// Persistent labs (and labs opened from a state file) are not torn down on drop.
    persistent: bool,
    torn_down: bool,
}

impl Lab {
    /// Brings up the topology in `path` with default options.
    pub fn up(path: impl AsRef<Path>) -> Result<Lab, Error> {
        LabOptions::default().up_file(path)
    }

    /// Brings up a topology given as TOML text.
    pub fn from_toml(text: &str) -> Result<Lab, Error> {
        LabOptions::default().up(Topology::parse(text, "<inline>")?, None)
    }

    /// Opens a lab that is already running (from its state file) to run
    /// commands in it or change it. Dropping the handle leaves the lab up.
    pub fn open(id: Option<&str>) -> Result<Lab, Error> {
        Lab::open_in(&state::state_dir(), id)
    }

    /// [`Lab::open`] with an explicit state directory. With `id` None, picks
    /// the single running lab (see [`LabState::resolve`]).
    pub fn open_in(dir: &Path, id: Option<&str>) -> Result<Lab, Error> {
        let dir = dir.to_path_buf();
        let st = LabState::resolve(&dir, id)?;
        let tools = tools_for(&st.topology)?;
        Ok(Lab {
            state: Mutex::new(st),
            tools,
            state_dir: dir,
            registry: Arc::default(),
            services: BTreeMap::new(),
            counter: AtomicU32::new(0),
            keep_logs: true,
            persistent: true,
            torn_down: false,
        })
    }

    /// The lab id.
    pub fn id(&self) -> String {
        self.lock().id.clone()
    }

    /// A copy of the lab's current state (names, addresses, attachments).
    pub fn state(&self) -> LabState {
        self.lock().clone()
    }

    /// Host names, sorted.
    pub fn hosts(&self) -> Vec<String> {
        self.lock().hosts.keys().cloned().collect()
    }

    /// The network namespace of `host` (for `ip netns exec` by hand).
    pub fn netns(&self, host: &str) -> Result<String, Error> {
        self.lock().netns(host).map(str::to_string)
    }

    /// The interface name of `host`'s end of `link`.
    pub fn ifname(&self, host: &str, link: &str) -> Result<String, Error> {
        Ok(self.lock().end(host, link)?.ifname.clone())
    }

    /// The first address `host` has on `link` now.
    pub fn addr(&self, host: &str, link: &str) -> Result<IpAddr, Error> {
        self.addrs(host, link)?
            .first()
            .map(Cidr::addr)
            .ok_or_else(|| Error::NoAddress {
                host: host.into(),
                link: link.into(),
            })
    }

    /// The first IPv4 or IPv6 address (`v6`) `host` has on `link` now.
    pub fn addr_family(&self, host: &str, link: &str, v6: bool) -> Result<IpAddr, Error> {
        self.addrs(host, link)?
            .iter()
            .map(Cidr::addr)
            .find(|a| a.is_ipv6() == v6)
            .ok_or_else(|| Error::NoAddress {
                host: host.into(),
                link: link.into(),
            })
    }

    /// Every address `host` has on `link` now, with prefixes.
    pub fn addrs(&self, host: &str, link: &str) -> Result<Vec<Cidr>, Error> {
        Ok(self.lock().end(host, link)?.addrs.clone())
    }

    /// Where logs and captures of this lab go.
    pub fn log_dir(&self) -> PathBuf {
        self.lock().log_dir.clone()
    }

    /// A command to run in `host`; see [`LabCommand`] for timeout, env,
    /// stdin and spawning.
    pub fn command<I, S>(&self, host: &str, argv: I) -> LabCommand<'_>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        LabCommand::new(self, host, argv)
    }

    /// Runs a command in `host` to completion (timeout 60 s) and returns its
    /// output whatever its exit status.
    pub fn exec<I, S>(&self, host: &str, argv: I) -> Result<crate::Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command(host, argv).output()
    }

    /// Runs a command in `host`; a non-zero exit is an error. Returns stdout.
    pub fn exec_ok<I, S>(&self, host: &str, argv: I) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command(host, argv).run()
    }

    /// Runs a shell script (`sh -c`) in `host` and returns its output.
    pub fn sh(&self, host: &str, script: &str) -> Result<crate::Output, Error> {
        self.command(host, ["sh", "-c", script]).output()
    }

    /// Starts a background process in `host`; see [`Process`].
    pub fn spawn<I, S>(&self, host: &str, argv: I) -> Result<Process, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command(host, argv).spawn()
    }

    /// A service started from the topology's `services`.
    pub fn service(&self, host: &str, name: &str) -> Option<&Process> {
        self.services.get(&(host.to_string(), name.to_string()))
    }

    /// Runs `f` on a fresh thread inside `host`'s network namespace and
    /// returns its result. Sockets made there stay in that namespace.
    pub fn run_in<T, F>(&self, host: &str, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        Ok(self.thread_in(host, f)?.join())
    }

    /// Starts `f` on a fresh thread inside `host`'s network namespace.
    pub fn thread_in<T, F>(&self, host: &str, f: F) -> Result<NetnsThread<T>, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let ns = self.netns(host)?;
        sys::thread_in_netns(&ns, f)
    }

    /// Waits until a TCP connection from `host` to `addr` succeeds (a
    /// service is listening).
    pub fn wait_for_tcp(
        &self,
        host: &str,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<(), Error> {
        let ok = self.run_in(host, move || {
            let deadline = std::time::Instant::now() + timeout;
            loop {
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return true;
                }
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })?;
        if ok {
            Ok(())
        } else {
            Err(Error::WaitTimeout {
                what: format!("TCP {addr} from {host}"),
                after: timeout,
            })
        }
    }

    /// Tears the lab down now and reports what could not be removed.
    pub fn down(mut self) -> Result<(), Error> {
        self.teardown().into_iter().next().map_or(Ok(()), Err)
    }

    /// Hands the lab over to its state file (for `fpn-lab up`): services keep
    /// running, nothing is removed on drop, `fpn-lab down` removes it.
    pub fn persist(mut self) -> Result<LabState, Error> {
        self.persistent = true;
        for (_, p) in std::mem::take(&mut self.services) {
            p.release();
        }
        let st = {
            let mut st = self.lock();
            st.owner_pid = None;
            st.clone()
        };
        st.save(&self.state_dir)?;
        Ok(st)
    }

    // ---- internals shared with the submodules ----

    fn lock(&self) -> MutexGuard<'_, LabState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self) -> Result<(), Error> {
        self.lock().save(&self.state_dir)
    }

    /// A fresh file in the log directory: `{stem}.{ext}`, or `{stem}.N.{ext}`.
    fn new_file(&self, stem: &str, ext: &str) -> PathBuf {
        let dir = self.log_dir();
        let first = dir.join(format!("{stem}.{ext}"));
        if !first.exists() {
            return first;
        }
        loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed) + 2;
            let p = dir.join(format!("{stem}.{n}.{ext}"));
            if !p.exists() {
                return p;
            }
        }
    }

    /// Stops processes, deletes namespaces, removes the state file and (unless
    /// kept) the logs. Idempotent.
    fn teardown(&mut self) -> Vec<Error> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        self.services.clear(); // their guards are also in the registry
        self.registry.stop_all(TEARDOWN_GRACE);
        let st = self.lock().clone();
        let errors = state::teardown(&self.tools.ip, &st.namespaces(), TEARDOWN_GRACE);
        let _ = std::fs::remove_file(LabState::path(&self.state_dir, &st.id));
        let keep = self.keep_logs || std::thread::panicking();
        if keep {
            eprintln!(
                "fpn-lab: lab {} removed; logs kept in {}",
                st.id,
                st.log_dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&st.log_dir);
        }
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.persistent {
            return;
        }
        for e in self.teardown() {
            // Nobody can receive an error from drop; say it where a test
            // runner shows it.
            eprintln!("fpn-lab: cleanup of lab {} incomplete: {e}", self.lock().id);
        }
    }
}

impl LabOptions {
    /// Brings up the topology in `path`.
    pub fn up_file(&self, path: impl AsRef<Path>) -> Result<Lab, Error> {
        let path = path.as_ref();
        let topo = Topology::from_file(path)?;
        let source = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.up(topo, Some(source))
    }

    /// Brings up a parsed topology. On error everything made so far is removed.
    pub fn up(&self, topo: Topology, source: Option<PathBuf>) -> Result<Lab, Error> {
        if !sys::is_root() {
            return Err(Error::NotRoot);
        }
        let tools = tools_for(&topo)?;
        let prefix = match &self.prefix {
            Some(p) => {
                naming::check_prefix(p)?;
                p.clone()
            }
            None => naming::prefix_from_env()?,
        };
        let state_dir = self.state_dir.clone().unwrap_or_else(state::state_dir);
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| Error::io(format!("creating {}", state_dir.display()), e))?;
        // One lab at a time picks its id and creates its namespaces, so two
        // processes never race for an id (or for /run/netns's first mount).
        let lock = FileLock::acquire(&state_dir.join(".lock"))?;
        let id = choose_id(&state_dir, &prefix, self.id.as_deref())?;
        let log_dir = match (&self.log_dir, self.persistent) {
            (Some(d), _) => d.clone(),
            (None, true) => state_dir.join(&id),
            (None, false) => std::env::temp_dir().join(format!("fpn-lab-{id}")),
        };
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| Error::io(format!("creating {}", log_dir.display()), e))?;

        let ns_of = |name: &str| naming::netns_name(&prefix, &id, name);
        let hosts: BTreeMap<String, String> =
            topo.hosts.keys().map(|h| (h.clone(), ns_of(h))).collect();
        let switches: BTreeMap<String, String> = topo
            .links
            .iter()
            .filter(|l| l.is_switch())
            .map(|l| (l.name.clone(), ns_of(&l.name)))
            .collect();
        let mut ends: BTreeMap<String, BTreeMap<String, EndState>> = BTreeMap::new();
        for link in &topo.links {
            for end in &link.ends {
                let st = EndState {
                    ifname: end.ifname().to_string(),
                    attached: false,
                    addrs: vec![],
                };
                ends.entry(end.host.clone())
                    .or_default()
                    .insert(link.name.clone(), st);
            }
        }
        let st = LabState {
            id,
            prefix,
            source,
            hosts,
            switches,
            ends,
            log_dir,
            owner_pid: Some(std::process::id()),
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            topology: topo,
        };
        // From here on, dropping `lab` (also on `?`) removes what exists.
        let mut lab = Lab {
            state: Mutex::new(st),
            tools,
            state_dir,
            registry: Arc::default(),
            services: BTreeMap::new(),
            counter: AtomicU32::new(0),
            keep_logs: self.keep_logs || std::env::var_os(KEEP_LOGS_ENV).is_some(),
            persistent: false,
            torn_down: false,
        };
        lab.save()?;
        let span = tracing::info_span!("lab", id = %lab.id());
        let _enter = span.enter();
        lab.create_namespaces()?;
        drop(lock);
        lab.build_network()?;
        lab.save()?;
        lab.start_commands()?;
        tracing::info!(hosts = lab.hosts().len(), "lab up");
        Ok(lab)
    }
}

impl Lab {
    fn create_namespaces(&self) -> Result<(), Error> {
        for ns in self.state().namespaces() {
            self.tools.netns_add(&ns)?;
        }
        Ok(())
    }

    fn build_network(&self) -> Result<(), Error> {
        let st = self.state();
        let topo = &st.topology;
        for (name, ns) in &st.hosts {
            let host = &topo.hosts[name];
            if let Some(text) = &host.resolv_conf {
                crate::resolv::write(ns, text)?;
            }
            let sysctls = build::base_sysctls(topo.host_has_ipv6(name), host.forward);
            build::write_sysctls(ns, sysctls)?;
            self.tools.link_up(ns, "lo", true)?;
        }
        for ns in st.switches.values() {
            build::write_sysctls(ns, build::base_sysctls(false, false))?;
            self.tools.bridge(ns)?;
        }
        for link in &topo.links {
            if link.is_switch() {
                for end in link.ends.iter().filter(|e| e.attached) {
                    self.attach_end(&end.host, &link.name, false)?;
                }
            } else {
                self.build_pair(link)?;
            }
        }
        for (name, ns) in &st.hosts {
            let host = &topo.hosts[name];
            let user: Vec<(String, String)> = host
                .sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect();
            if !user.is_empty() {
                build::write_sysctls(ns, user)?;
            }
            for (link, end) in topo.ends_of(name).filter(|(_, e)| e.attached) {
                if let Some(gw) = end.gateway {
                    let dev = Some(end.ifname());
                    self.tools.route_replace(
                        ns,
                        &crate::topology::RouteTarget::Default,
                        Some(gw),
                        dev,
                    )?;
                    tracing::debug!(host = %name, link = %link.name, "default route");
                }
            }
            build::apply_routes(&self.tools, ns, &host.routes, |l| {
                topo.end(name, l).map(|e| e.ifname().to_string())
            })?;
            if let Some(nat) = &host.nat {
                self.tools
                    .nft_load(ns, &nat::ruleset_for(topo, name, nat))?;
                if nat.port_mapping.is_some() {
                    self.tools.nft_load(ns, &nat::upnp_ruleset())?;
                }
            }
            if let Some(rules) = &host.nft {
                self.tools.nft_load(ns, rules)?;
            }
        }
        Ok(())
    }

    fn build_pair(&self, link: &crate::topology::Link) -> Result<(), Error> {
        let (a, b) = (&link.ends[0], &link.ends[1]);
        let (ns_a, ns_b) = (self.netns(&a.host)?, self.netns(&b.host)?);
        self.tools.veth(&ns_a, a.ifname(), &ns_b, b.ifname())?;
        for (end, ns) in [(a, &ns_a), (b, &ns_b)] {
            if let Some(mtu) = link.mtu {
                self.tools.set_mtu(ns, end.ifname(), mtu)?;
            }
            for addr in &end.addrs {
                self.tools.addr_add(ns, end.ifname(), addr)?;
            }
            self.tools.shape(ns, end.ifname(), link)?;
            self.tools.link_up(ns, end.ifname(), true)?;
            let mut st = self.lock();
            if let Some(e) = st
                .ends
                .get_mut(&end.host)
                .and_then(|m| m.get_mut(&link.name))
            {
                e.attached = true;
                e.addrs = end.addrs.clone();
            }
        }
        Ok(())
    }

    /// Runs every host's `run` commands, then starts its services.
    fn start_commands(&mut self) -> Result<(), Error> {
        let topo = self.state().topology;
        for (name, host) in &topo.hosts {
            for cmd in &host.run {
                self.command(name, ["sh", "-c", cmd])
                    .timeout(RUN_TIMEOUT)
                    .run()?;
            }
        }
        for (name, host) in &topo.hosts {
            if let Some(nat) = &host.nat
                && let Some(pm) = &nat.port_mapping
            {
                let p = self.start_miniupnpd(&topo, name, nat, pm)?;
                self.services.insert((name.clone(), "miniupnpd".into()), p);
            }
        }
        for (name, host) in &topo.hosts {
            for svc in &host.services {
                let p = self
                    .command(name, ["sh", "-c", &svc.cmd])
                    .name(&svc.name)
                    .spawn()?;
                if let Some(needle) = &svc.wait_for {
                    let secs = svc.wait_secs.unwrap_or(10.0);
                    p.wait_for_log(needle, Duration::from_secs_f64(secs))?;
                }
                self.services.insert((name.clone(), svc.name.clone()), p);
            }
        }
        Ok(())
    }
}

impl Lab {
    /// Starts miniupnpd in router `host` (its chains are already loaded) and
    /// waits until it answers.
    fn start_miniupnpd(
        &self,
        topo: &Topology,
        host: &str,
        nat: &crate::topology::Nat,
        pm: &crate::topology::PortMapping,
    ) -> Result<Process, Error> {
        let out = topo
            .end(host, &nat.out)
            .map(|e| e.ifname().to_string())
            .unwrap_or_default();
        let inside: Vec<(String, Vec<Cidr>)> = topo
            .ends_of(host)
            .filter(|(l, e)| l.name != nat.out && e.attached)
            .map(|(_, e)| (e.ifname().to_string(), e.addrs.clone()))
            .collect();
        let conf = self.new_file(&format!("{host}-miniupnpd"), "conf");
        std::fs::write(&conf, nat::miniupnpd_conf(&out, &inside, pm))
            .map_err(|e| Error::io(format!("writing {}", conf.display()), e))?;
        let pid = conf.with_extension("pid");
        let bin = sys::find_tool("miniupnpd")?;
        // -d: foreground, log to stderr (our log file); -P: not /run's pid file.
        let p = self
            .command(
                host,
                [
                    bin.as_os_str(),
                    "-d".as_ref(),
                    "-f".as_ref(),
                    conf.as_os_str(),
                    "-P".as_ref(),
                    pid.as_os_str(),
                ],
            )
            .name("miniupnpd")
            .spawn()?;
        let ready = if pm.natpmp {
            "Listening for NAT-PMP/PCP traffic"
        } else {
            "HTTP listening on port"
        };
        p.wait_for_log(ready, Duration::from_secs(10))?;
        tracing::debug!(%host, "miniupnpd up");
        Ok(p)
    }
}

/// The tools a topology needs, found up front so a missing one fails first.
fn tools_for(topo: &Topology) -> Result<Tools, Error> {
    let ip = sys::find_tool("ip")?;
    let tc = if topo.links.iter().any(|l| l.is_shaped()) {
        Some(sys::find_tool("tc")?)
    } else {
        None
    };
    let needs_nft = topo
        .hosts
        .values()
        .any(|h| h.nat.is_some() || h.nft.is_some());
    if topo
        .hosts
        .values()
        .any(|h| h.nat.as_ref().is_some_and(|n| n.port_mapping.is_some()))
    {
        sys::find_tool("miniupnpd")?;
    }
    let nft = if needs_nft {
        Some(sys::find_tool("nft")?)
    } else {
        None
    };
    Ok(Tools { ip, tc, nft })
}

/// `wanted`, if free, or a fresh random id no lab uses.
fn choose_id(state_dir: &Path, prefix: &str, wanted: Option<&str>) -> Result<String, Error> {
    let in_use = |id: &str| {
        LabState::path(state_dir, id).exists()
            || sys::list_netns()
                .iter()
                .any(|ns| naming::parse_netns(prefix, ns).is_some_and(|(i, _)| i == id))
    };
    if let Some(id) = wanted {
        naming::check_id(id)?;
        if in_use(id) {
            return Err(Error::BadLabId {
                id: id.to_string(),
                reason: "a lab with this id exists",
            });
        }
        return Ok(id.to_string());
    }
    // 36^5 * 26 ids: a collision is rare, ten in a row is a bug.
    for _ in 0..10 {
        let id = naming::new_id();
        if !in_use(&id) {
            return Ok(id);
        }
    }
    Err(Error::BadLabId {
        id: String::new(),
        reason: "no free id after 10 tries",
    })
}
