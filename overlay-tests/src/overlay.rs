//! An fpn overlay inside a lab: fpn-gms on one host, fpn-node on others,
//! driven through their real command lines.
//!
//! [`Overlay::start`] initialises a GMS data directory in the GMS host, runs
//! `fpn-gms serve` there (with its DDNS), defines the groups and GEs of a
//! [`Spec`] with the admin CLI, creates one token per node, runs
//! `fpn-node enroll` and `fpn-node up` in each node's host and waits for
//! `node ready`. Then each node host's resolv.conf points at the node's DNS
//! stub, so ordinary programs there (`ping b.home.fpn`, `iperf3 -c
//! b.home.fpn`) resolve peers by name the way a user's would.
//!
//! The acceptance tests (`tests/node_*.rs`) and the demo (`fpn-demo`) use
//! it; configs/lab/overlay.toml is the topology they share. Binaries come
//! from [`crate::workspace_binary`]. State directories and logs live in the
//! lab's log directory, so a failed test leaves them as evidence.
//!
//! What it never does: reach into a daemon's state files or sockets itself;
//! every question goes through `fpn-gms` or `fpn-node` as a user would ask it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use crate::{Error, Lab, Output, Process};

/// The network's DNS zone in every overlay lab.
pub const ZONE: &str = "home.fpn";

/// fpn-gms's QUIC port.
pub const GMS_PORT: u16 = 4433;

/// How long `fpn-node up` may take to log `node ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The configuration every lab node runs with: the defaults, except that
/// it never touches systemd-resolved. resolved runs in the machine's network
/// namespace, not the lab host's: `resolvectl dns fpn0 ...` from inside a
/// lab host would hand an interface index of the lab's namespace to the
/// machine's resolver, i.e. change (or break) the DNS of the machine running
/// the tests or the demo. The lab points each host's resolv.conf at its stub
/// instead.
pub const NODE_CONFIG: &str = "# written by fpn_lab::overlay\nsplit_dns = false\n";

/// How long fpn-gms may take to log that it serves.
const GMS_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Admin and node CLI calls are short; a hang is a bug the test should see.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// OP (open) or CL (closed), as `fpn-gms ge add --mode` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Open: plain traffic with GEs it shares no group with is allowed.
    Op,
    /// Closed: only traffic with GEs it shares a group with.
    Cl,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Op => "op",
            Mode::Cl => "cl",
        }
    }
}

/// One node: its GE name, the lab host it runs in, mode and groups.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// GE name (one DNS label); also `NAME.home.fpn`.
    pub name: String,
    /// The lab host `fpn-node` runs in.
    pub host: String,
    /// OP or CL.
    pub mode: Mode,
    /// Group numbers.
    pub groups: Vec<u32>,
    /// Lines appended to this node's configuration after the spec's
    /// `node_config` (e.g. a `[metrics]` table); empty by default.
    pub config: String,
    /// GE kind at the GMS: `ges` (default), `gen` or `gea`.
    pub kind: String,
    /// Prefixes the GE protects (`--protect`, gateways only).
    pub protect: Vec<String>,
}

impl NodeSpec {
    /// A node named like its host.
    pub fn new(name: &str, mode: Mode, groups: &[u32]) -> Self {
        NodeSpec {
            name: name.to_string(),
            host: name.to_string(),
            mode,
            groups: groups.to_vec(),
            config: String::new(),
            kind: "ges".into(),
            protect: Vec::new(),
        }
    }
}

/// What to build on top of a lab.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The host running fpn-gms.
    pub gms_host: String,
    /// The GMS host's link whose address the GMS listens on.
    pub gms_link: String,
    /// Groups: number and name.
    pub groups: Vec<(u32, String)>,
    /// Nodes, enrolled and started in this order.
    pub nodes: Vec<NodeSpec>,
    /// Extra `fpn-gms init` arguments (e.g. `--grace 1m`).
    pub gms_init_args: Vec<String>,
    /// `fpn-gms init --listen` (default: the GMS link's address, port 4433).
    pub gms_listen: Option<String>,
    /// `fpn-gms init --public-addr`, what tokens name (default: as listen).
    pub gms_public_addr: Option<String>,
    /// Lines appended to every node's configuration after [`NODE_CONFIG`]
    /// (e.g. `carrier = "quic"`); empty by default.
    pub node_config: String,
    /// TOML appended to `gms.toml` after `init`, before the GMS first
    /// serves (e.g. a `[web]` section); empty by default.
    pub gms_config: String,
    /// Whether [`Overlay::prepare`] adds the groups and every node's GE
    /// with the CLI (default); false leaves that to the test (e.g. through
    /// the web admin).
    pub define: bool,
}

impl Spec {
    /// The GMS on `vps`/`pub-vps` of configs/lab/overlay.toml, with these
    /// groups and nodes.
    pub fn new(groups: &[(u32, &str)], nodes: Vec<NodeSpec>) -> Self {
        Spec {
            gms_host: "vps".into(),
            gms_link: "pub-vps".into(),
            groups: groups.iter().map(|(n, s)| (*n, s.to_string())).collect(),
            nodes,
            gms_init_args: vec!["--rotation-schedule".into(), "off".into()],
            gms_listen: None,
            gms_public_addr: None,
            node_config: String::new(),
            gms_config: String::new(),
            define: true,
        }
    }
}

/// A node of a running [`Overlay`].
#[derive(Debug)]
struct Node {
    spec: NodeSpec,
    state_dir: PathBuf,
    process: Mutex<Option<Process>>,
    overlay: Mutex<Option<Ipv4Addr>>,
}

/// A GMS and nodes running in a lab. Dropping it stops the daemons, then
/// removes the lab.
#[derive(Debug)]
pub struct Overlay {
    // Field order is drop order: daemons stop before the lab goes.
    gms: Mutex<Option<Process>>,
    nodes: BTreeMap<String, Node>,
    gms_data: PathBuf,
    gms_addr: SocketAddr,
    gms_host: String,
    gms_bin: PathBuf,
    /// [`Spec::node_config`].
    node_config: String,
    /// Looked up at first use, so a GMS-only overlay needs no fpn-node.
    node_bin: Mutex<Option<PathBuf>>,
    lab: Lab,
}

/// What `fpn-node ping` answered.
#[derive(Debug, Clone)]
pub struct Ping {
    /// Exit status 0.
    pub ok: bool,
    /// Its JSON answer (`{"name","address","action","carrier","rtt_ms"}`),
    /// Null if it printed none.
    pub json: Value,
    /// The raw output.
    pub output: Output,
}

impl Ping {
    /// `action` of the answer ("encrypt", "plain", "refuse"), or "".
    pub fn action(&self) -> &str {
        self.json["action"].as_str().unwrap_or("")
    }

    /// `carrier` of the answer ("quic"), or "".
    pub fn carrier(&self) -> &str {
        self.json["carrier"].as_str().unwrap_or("")
    }

    /// RTTs of the replies, in ms.
    pub fn rtts(&self) -> Vec<f64> {
        self.json["rtt_ms"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    }
}

impl Overlay {
    /// Starts the GMS, defines groups and GEs, enrolls and starts every node
    /// (waiting for `node ready`) and points each node host's resolv.conf at
    /// its DNS stub.
    pub fn start(lab: Lab, spec: &Spec) -> Result<Overlay, Error> {
        let ov = Overlay::prepare(lab, spec)?;
        let started = spec
            .nodes
            .iter()
            .try_for_each(|n| ov.enroll(&n.name).map(drop))
            .and_then(|()| spec.nodes.iter().try_for_each(|n| ov.up(&n.name)));
        match started {
            Ok(()) => Ok(ov),
            // The lab (and its logs) go with `ov`: say what the daemons said.
            Err(e) => Err(Error::Overlay(format!("{e}\n{}", ov.log_tails(30)))),
        }
    }

    /// The last `lines` lines of the GMS's and every node's log, labelled.
    pub fn log_tails(&self, lines: usize) -> String {
        let tail = |log: String| {
            let log = strip_ansi(&log);
            let v: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            v[v.len().saturating_sub(lines)..].join("\n")
        };
        let mut out = format!("--- fpn-gms log ---\n{}\n", tail(self.gms_log()));
        for name in self.nodes.keys() {
            out.push_str(&format!(
                "--- fpn-node {name} log ---\n{}\n",
                tail(self.node_log(name))
            ));
        }
        out
    }

    /// Starts the GMS and defines groups and GEs, but enrolls no node.
    pub fn prepare(lab: Lab, spec: &Spec) -> Result<Overlay, Error> {
        let gms_bin = crate::workspace_binary("fpn-gms")?;
        let gms_ip = lab.addr(&spec.gms_host, &spec.gms_link)?;
        let gms_addr = SocketAddr::new(gms_ip, GMS_PORT);
        let base = lab.log_dir();
        let gms_data = base.join("gms-data");
        let mut nodes = BTreeMap::new();
        for n in &spec.nodes {
            lab.netns(&n.host)?; // an unknown host fails here, not halfway
            let node = Node {
                spec: n.clone(),
                state_dir: base.join(format!("node-{}", n.name)),
                process: Mutex::new(None),
                overlay: Mutex::new(None),
            };
            nodes.insert(n.name.clone(), node);
        }
        let ov = Overlay {
            gms: Mutex::new(None),
            nodes,
            gms_data,
            gms_addr,
            gms_host: spec.gms_host.clone(),
            gms_bin,
            node_config: spec.node_config.clone(),
            node_bin: Mutex::new(None),
            lab,
        };
        let addr = gms_addr.to_string();
        let listen = spec.gms_listen.clone().unwrap_or_else(|| addr.clone());
        let public = spec.gms_public_addr.clone().unwrap_or_else(|| addr.clone());
        let mut init = vec![
            "init",
            "--zone",
            "home.fpn.",
            "--listen",
            &listen,
            "--public-addr",
            &public,
            "--overlay-range",
            "100.64.0.0/16",
        ];
        init.extend(spec.gms_init_args.iter().map(String::as_str));
        ov.gms_admin(&init)?;
        if !spec.gms_config.is_empty() {
            let path = ov.gms_config_path();
            let mut text = std::fs::read_to_string(&path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            text.push('\n');
            text.push_str(&spec.gms_config);
            std::fs::write(&path, text)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        ov.start_gms()?;
        if !spec.define {
            return Ok(ov);
        }
        for (num, name) in &spec.groups {
            ov.gms_admin(&["group", "add", &num.to_string(), "--name", name])?;
        }
        for n in &spec.nodes {
            let mut args = vec![
                "ge".to_string(),
                "add".into(),
                n.name.clone(),
                "--kind".into(),
                n.kind.clone(),
                "--mode".into(),
                n.mode.arg().into(),
            ];
            for p in &n.protect {
                args.push("--protect".into());
                args.push(p.clone());
            }
            for g in &n.groups {
                args.push("--group".into());
                args.push(g.to_string());
            }
            ov.gms_admin(&args)?;
        }
        Ok(ov)
    }

    /// The lab underneath.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The GMS's QUIC address (its DDNS answers on port 53 of the same IP).
    pub fn gms_addr(&self) -> SocketAddr {
        self.gms_addr
    }

    /// The GMS's gms.toml (in its data directory).
    pub fn gms_config_path(&self) -> PathBuf {
        self.gms_data.join("gms.toml")
    }

    /// The host the GMS runs in.
    pub fn gms_host(&self) -> &str {
        &self.gms_host
    }

    /// The lab host of node `name`.
    pub fn host_of(&self, name: &str) -> Result<&str, Error> {
        Ok(&self.node(name)?.spec.host)
    }

    /// Node names, sorted.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// `NAME.home.fpn`.
    pub fn fqdn(name: &str) -> String {
        format!("{name}.{ZONE}")
    }

    // ---- the GMS ----

    /// Runs `fpn-gms --data DIR ARGS...` in the GMS host; returns stdout.
    pub fn gms_admin<S: AsRef<str>>(&self, args: &[S]) -> Result<String, Error> {
        self.lab
            .command(&self.gms_host, self.gms_argv(args))
            .timeout(CLI_TIMEOUT)
            .run()
    }

    /// `fpn-gms --data DIR ARGS...` as an argument vector.
    fn gms_argv<S: AsRef<str>>(&self, args: &[S]) -> Vec<String> {
        let mut argv = vec![
            self.gms_bin.to_string_lossy().into_owned(),
            "--data".into(),
            self.gms_data.to_string_lossy().into_owned(),
        ];
        argv.extend(args.iter().map(|a| a.as_ref().to_string()));
        argv
    }

    /// [`gms_admin`](Self::gms_admin) with `stdin` as its standard input
    /// (e.g. the password of `admin-user set`).
    pub fn gms_admin_stdin<S: AsRef<str>>(&self, args: &[S], stdin: &str) -> Result<String, Error> {
        self.lab
            .command(&self.gms_host, self.gms_argv(args))
            .stdin(stdin.as_bytes().to_vec())
            .timeout(CLI_TIMEOUT)
            .run()
    }

    /// [`gms_admin`](Self::gms_admin) with `--json`, parsed.
    pub fn gms_json<S: AsRef<str>>(&self, args: &[S]) -> Result<Value, Error> {
        let mut a: Vec<String> = args.iter().map(|s| s.as_ref().to_string()).collect();
        a.push("--json".into());
        let out = self.gms_admin(&a)?;
        parse_json(&out, "fpn-gms")
    }

    /// Starts `fpn-gms serve` and waits until it serves.
    pub fn start_gms(&self) -> Result<(), Error> {
        let data = self.gms_data.to_string_lossy().into_owned();
        let p = self
            .lab
            .command(
                &self.gms_host,
                [
                    self.gms_bin.to_string_lossy().as_ref(),
                    "serve",
                    "--data",
                    &data,
                ],
            )
            .name("fpn-gms")
            .env(
                "RUST_LOG",
                std::env::var("FPN_TEST_GMS_LOG").unwrap_or_else(|_| "info".into()),
            )
            .spawn()?;
        p.wait_for_log("GMS serving", GMS_READY_TIMEOUT)?;
        *lock(&self.gms) = Some(p);
        Ok(())
    }

    /// Stops the GMS as an operator's restart does (SIGTERM: it closes every
    /// session with SHUTDOWN first).
    pub fn stop_gms(&self) {
        if let Some(p) = lock(&self.gms).take() {
            p.stop();
        }
    }

    /// Kills the GMS at once (SIGKILL), as a crash or a lost VPS would.
    pub fn kill_gms(&self) {
        if let Some(p) = lock(&self.gms).take() {
            p.kill();
        }
    }

    /// The GMS's log so far ("" when it is not running).
    pub fn gms_log(&self) -> String {
        lock(&self.gms)
            .as_ref()
            .map(Process::log)
            .unwrap_or_default()
    }

    /// A one-time enrollment token for GE `name`.
    pub fn token(&self, name: &str) -> Result<String, Error> {
        let v = self.gms_json(&["token", "create", name, "--ttl", "1h"])?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Overlay(format!("token create {name}: no `token` in {v}")))
    }

    // ---- nodes ----

    /// Runs `fpn-node ARGS... --state DIR` in node `name`'s host.
    pub fn node_cli<S: AsRef<str>>(&self, name: &str, args: &[S]) -> Result<Output, Error> {
        let node = self.node(name)?;
        let mut argv = vec![self.node_bin()?.to_string_lossy().into_owned()];
        argv.extend(args.iter().map(|a| a.as_ref().to_string()));
        argv.push("--state".into());
        argv.push(node.state_dir.to_string_lossy().into_owned());
        self.lab
            .command(&node.spec.host, argv)
            .timeout(CLI_TIMEOUT)
            .output()
    }

    /// Creates a token and runs `fpn-node enroll --token-file FILE --json`
    /// (a 0600 file next to the state directory, as an operator would keep
    /// it off the command line); remembers the overlay address it prints.
    pub fn enroll(&self, name: &str) -> Result<Value, Error> {
        let token = self.token(name)?;
        self.enroll_with_token(name, &token)
    }

    /// [`Overlay::enroll`] with a token made elsewhere (e.g. by the web admin).
    pub fn enroll_with_token(&self, name: &str, token: &str) -> Result<Value, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let node = self.node(name)?;
        let file = node.state_dir.with_extension("token");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, token.as_bytes()))
            .map_err(|e| Error::Overlay(format!("writing {}: {e}", file.display())))?;
        let file_arg = file.to_string_lossy().into_owned();
        let out = self.node_cli(name, &["enroll", "--token-file", &file_arg, "--json"]);
        let _ = std::fs::remove_file(&file);
        let out = out?;
        if !out.success() {
            return Err(Error::Overlay(format!(
                "fpn-node enroll for {name} failed ({}): {}",
                out.status,
                out.stderr.trim()
            )));
        }
        let v = parse_json(&out.stdout, "fpn-node enroll")?;
        if let Some(a) = overlay_of(&v) {
            *lock(&self.node(name)?.overlay) = Some(a);
        }
        Ok(v)
    }

    /// Starts `fpn-node up` (resolv.conf pointing at the upstream the
    /// topology gives the host, as a fresh machine would have), waits for
    /// `node ready`, then points the host's resolv.conf at the node's stub.
    pub fn up(&self, name: &str) -> Result<(), Error> {
        self.up_with_env(name, &[])
    }

    /// The configuration file `up` writes for node `name` and passes to
    /// `fpn-node up --config` (rewrite it and SIGHUP the node to reload).
    pub fn node_config_path(&self, name: &str) -> PathBuf {
        self.lab.log_dir().join(format!("node-{name}.toml"))
    }

    /// [`Overlay::up`] with extra environment variables for the daemon
    /// (e.g. `NOTIFY_SOCKET`).
    pub fn up_with_env(&self, name: &str, env: &[(&str, &str)]) -> Result<(), Error> {
        let node = self.node(name)?;
        let host = node.spec.host.clone();
        let upstream = self.lab.state().topology.hosts[&host].resolv_conf.clone();
        match &upstream {
            Some(text) => self.lab.set_resolv_conf(&host, text)?,
            None => self.lab.clear_resolv_conf(&host)?,
        }
        let state = node.state_dir.to_string_lossy().into_owned();
        let config = self.node_config_path(name);
        std::fs::write(
            &config,
            format!("{NODE_CONFIG}{}\n{}", self.node_config, node.spec.config),
        )
        .map_err(|e| Error::io(format!("writing {}", config.display()), e))?;
        let config = config.to_string_lossy().into_owned();
        let bin = self.node_bin()?;
        let mut cmd = self
            .lab
            .command(
                &host,
                [
                    bin.to_string_lossy().as_ref(),
                    "up",
                    "--state",
                    &state,
                    "--config",
                    &config,
                ],
            )
            .name(&format!("fpn-node-{name}"));
        // RUST_LOG fixes the filter for the whole run; a caller that wants
        // the config's `log` key (and its reload) passes RUST_LOG="".
        if !env.iter().any(|(k, _)| *k == "RUST_LOG") {
            cmd = cmd.env(
                "RUST_LOG",
                std::env::var("FPN_TEST_NODE_LOG").unwrap_or_else(|_| "info".into()),
            );
        }
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let p = cmd.spawn()?;
        p.wait_for_log("node ready", READY_TIMEOUT)?;
        *lock(&node.process) = Some(p);
        let st = self.status(name)?;
        let addr = overlay_of(&st).ok_or_else(|| {
            Error::Overlay(format!(
                "fpn-node status of {name} has no overlay address: {st}"
            ))
        })?;
        if let Some(prev) = lock(&node.overlay).replace(addr)
            && prev != addr
        {
            return Err(Error::Overlay(format!(
                "{name}: enroll said overlay {prev}, status says {addr}"
            )));
        }
        self.lab.set_resolv_conf(
            &host,
            &format!("nameserver {addr}\nsearch {ZONE}\noptions timeout:1 attempts:2\n"),
        )?;
        Ok(())
    }

    /// `fpn-node down`; waits for the daemon to exit and returns whether it
    /// exited with status 0.
    pub fn down(&self, name: &str) -> Result<bool, Error> {
        let out = self.node_cli(name, &["down"])?;
        if !out.success() {
            return Err(Error::Overlay(format!(
                "fpn-node down for {name} failed ({}): {}",
                out.stderr.trim(),
                out.status
            )));
        }
        let p = lock(&self.node(name)?.process).take();
        match p {
            Some(p) => Ok(p.wait_timeout(Duration::from_secs(10))?.success()),
            None => Ok(true),
        }
    }

    /// Kills node `name`'s daemon at once (SIGKILL).
    pub fn kill(&self, name: &str) -> Result<(), Error> {
        if let Some(p) = lock(&self.node(name)?.process).take() {
            p.kill();
        }
        Ok(())
    }

    /// The daemon of node `name`, while it runs under this harness.
    pub fn with_process<T>(
        &self,
        name: &str,
        f: impl FnOnce(Option<&Process>) -> T,
    ) -> Result<T, Error> {
        Ok(f(lock(&self.node(name)?.process).as_ref()))
    }

    /// Node `name`'s log so far.
    pub fn node_log(&self, name: &str) -> String {
        self.with_process(name, |p| p.map(Process::log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Node `name`'s state directory.
    pub fn state_dir(&self, name: &str) -> Result<&Path, Error> {
        Ok(&self.node(name)?.state_dir)
    }

    /// Node `name`'s overlay address (from enroll or status).
    pub fn overlay_addr(&self, name: &str) -> Result<Ipv4Addr, Error> {
        lock(&self.node(name)?.overlay)
            .ok_or_else(|| Error::Overlay(format!("{name} has no overlay address yet")))
    }

    /// `fpn-node status --json`.
    pub fn status(&self, name: &str) -> Result<Value, Error> {
        let out = self.node_cli(name, &["status", "--json"])?;
        if !out.success() {
            return Err(Error::Overlay(format!(
                "fpn-node status for {name} failed ({}): {}",
                out.status,
                out.stderr.trim()
            )));
        }
        parse_json(&out.stdout, "fpn-node status")
    }

    /// `fpn-node ping TARGET --json --count N` from node `from`.
    pub fn ping(&self, from: &str, target: &str, count: u32) -> Result<Ping, Error> {
        let out = self.node_cli(
            from,
            &["ping", target, "--json", "--count", &count.to_string()],
        )?;
        let json = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
        Ok(Ping {
            ok: out.success(),
            json,
            output: out,
        })
    }

    /// The flows in `name`'s status whose destination (or source) is `peer`'s
    /// overlay address.
    pub fn flows_with(&self, name: &str, peer: &str) -> Result<Vec<Value>, Error> {
        let st = self.status(name)?;
        // Either of the peer's overlay addresses (IPv6 when the host's
        // resolver picked it for a name).
        let mut addrs = vec![self.overlay_addr(peer)?.to_string()];
        if let Some(v6) = self.status(peer)?["overlay6"].as_str() {
            addrs.push(v6.to_owned());
        }
        let is_peer = |v: &Value| v.as_str().is_some_and(|s| addrs.iter().any(|a| a == s));
        Ok(st["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| is_peer(&f["dst"]) || is_peer(&f["src"]))
            .cloned()
            .collect())
    }

    /// Runs a command in node `name`'s host (resolving names with its stub).
    pub fn exec<I, S>(&self, name: &str, argv: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.lab.exec(self.host_of(name)?, argv)
    }

    /// The public (underlay) address of node `name`'s host on `link`.
    pub fn underlay(&self, name: &str, link: &str) -> Result<IpAddr, Error> {
        self.lab.addr(self.host_of(name)?, link)
    }

    fn node_bin(&self) -> Result<PathBuf, Error> {
        let mut bin = lock(&self.node_bin);
        if bin.is_none() {
            *bin = Some(crate::workspace_binary("fpn-node")?);
        }
        Ok(bin.clone().unwrap_or_default())
    }

    fn node(&self, name: &str) -> Result<&Node, Error> {
        self.nodes
            .get(name)
            .ok_or_else(|| Error::Overlay(format!("no node `{name}` in this overlay")))
    }
}

/// The overlay address in an enroll or status answer.
fn overlay_of(v: &Value) -> Option<Ipv4Addr> {
    ["overlay", "overlay_addr", "address"]
        .iter()
        .filter_map(|k| v[*k].as_str())
        .find_map(|s| s.split('/').next()?.parse().ok())
}

/// `text` without ANSI colour sequences (ESC [ ... letter), which a daemon
/// may write even into a log file.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_json(text: &str, what: &str) -> Result<Value, Error> {
    serde_json::from_str(text.trim())
        .map_err(|e| Error::Overlay(format!("{what} printed no JSON ({e}): {}", text.trim())))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_stripped_and_addresses_found() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m node ready"),
            "2026  INFO node ready"
        );
        assert_eq!(strip_ansi("plain [text]"), "plain [text]");
        let v: Value = serde_json::json!({"name": "a", "overlay": "100.64.0.1"});
        assert_eq!(overlay_of(&v), Some(Ipv4Addr::new(100, 64, 0, 1)));
        let v: Value = serde_json::json!({"overlay_addr": "100.64.0.9/16"});
        assert_eq!(overlay_of(&v), Some(Ipv4Addr::new(100, 64, 0, 9)));
        assert_eq!(overlay_of(&serde_json::json!({"overlay": 5})), None);
    }
}
