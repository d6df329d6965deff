//! What a running lab is made of, on disk, so another process can use it or
//! tear it down: `{state_dir}/{id}.json` (default state dir /run/fpn-lab).
//!
//! Every lab writes its state file as soon as its first namespace exists, so
//! even a lab whose builder crashed can be removed by `fpn-lab down ID`;
//! `fpn-lab down --all` also removes namespaces no state file mentions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::sys;
use crate::{Cidr, Error, Topology};

/// Environment variable that overrides the state directory.
pub const STATE_DIR_ENV: &str = "FPN_LAB_STATE_DIR";

/// Default state directory (tmpfs: a reboot clears it, as it clears namespaces).
pub const DEFAULT_STATE_DIR: &str = "/run/fpn-lab";

/// The state directory: [`STATE_DIR_ENV`] if set, else [`DEFAULT_STATE_DIR`].
pub fn state_dir() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into())
}

/// A lab's recorded state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// The lab id.
    pub id: String,
    /// Namespace prefix.
    pub prefix: String,
    /// The topology file, if the lab came from one.
    pub source: Option<PathBuf>,
    /// The (normalized) topology.
    pub topology: Topology,
    /// Host name -> namespace name.
    pub hosts: BTreeMap<String, String>,
    /// Switch (link) name -> namespace name holding its bridge.
    pub switches: BTreeMap<String, String>,
    /// Host -> link -> that end's current state.
    pub ends: BTreeMap<String, BTreeMap<String, EndState>>,
    /// Where process logs and captures go.
    pub log_dir: PathBuf,
    /// The process whose `Lab` guard owns this lab; None for labs started by
    /// `fpn-lab up`, which live until `fpn-lab down`.
    pub owner_pid: Option<u32>,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// The current state of one end of a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndState {
    /// Interface name in the host.
    pub ifname: String,
    /// Whether the interface exists now (switch ends can be detached).
    pub attached: bool,
    /// Addresses configured on it now.
    pub addrs: Vec<Cidr>,
}

impl LabState {
    /// The state file of lab `id` in `dir`.
    pub fn path(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("{id}.json"))
    }

    /// Writes the state file atomically (write, then rename).
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let path = LabState::path(dir, &self.id);
        let tmp = dir.join(format!(".{}.json.tmp", self.id));
        let json = serde_json::to_vec_pretty(self).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, json)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| Error::io(format!("renaming to {}", path.display()), e))
    }

    /// Reads the state of lab `id`.
    pub fn load(dir: &Path, id: &str) -> Result<Self, Error> {
        let path = LabState::path(dir, id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoSuchLab(id.to_string()));
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| Error::State { path, source })
    }

    /// Every readable state file in `dir`, by id. Unreadable files are skipped
    /// (their namespaces still fall to `down --all`).
    pub fn list(dir: &Path) -> Vec<LabState> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut labs: Vec<LabState> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name
                    .strip_suffix(".json")
                    .filter(|id| !id.starts_with('.'))?;
                match LabState::load(dir, id) {
                    Ok(s) => Some(s),
                    Err(err) => {
                        tracing::warn!(%err, "skipping unreadable lab state");
                        None
                    }
                }
            })
            .collect();
        labs.sort_by(|a, b| a.id.cmp(&b.id));
        labs
    }

    /// Picks a lab: `id` if given; else the only lab; else the only lab
    /// started by `fpn-lab up` (labs owned by running tests need `--lab`).
    pub fn resolve(dir: &Path, id: Option<&str>) -> Result<Self, Error> {
        if let Some(id) = id {
            return LabState::load(dir, id);
        }
        let all = LabState::list(dir);
        if all.len() <= 1 {
            return all.into_iter().next().ok_or(Error::NoLab);
        }
        let ids = all
            .iter()
            .map(|l| l.id.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut cli: Vec<LabState> = all.into_iter().filter(|l| l.owner_pid.is_none()).collect();
        if cli.len() == 1 {
            return Ok(cli.remove(0));
        }
        Err(Error::AmbiguousLab(ids))
    }

    /// Every namespace of the lab: hosts, then switches.
    pub fn namespaces(&self) -> Vec<String> {
        self.hosts
            .values()
            .chain(self.switches.values())
            .cloned()
            .collect()
    }

    /// The namespace of `host`.
    pub fn netns(&self, host: &str) -> Result<&str, Error> {
        self.hosts
            .get(host)
            .map(String::as_str)
            .ok_or_else(|| Error::UnknownHost(host.into()))
    }

    /// The current state of `host`'s end on `link`.
    pub fn end(&self, host: &str, link: &str) -> Result<&EndState, Error> {
        self.netns(host)?;
        self.ends
            .get(host)
            .and_then(|m| m.get(link))
            .ok_or_else(|| Error::UnknownEnd {
                host: host.into(),
                link: link.into(),
            })
    }

    /// True while the owning process lives (always true for CLI labs).
    pub fn owner_alive(&self) -> bool {
        self.owner_pid.is_none_or(|p| sys::pid_alive(p as i32))
    }
}

/// Kills every process in `namespaces` (SIGTERM, SIGKILL after `grace`) and
/// deletes the namespaces, which removes their interfaces. Returns what could
/// not be done; it never stops halfway.
pub(crate) fn teardown(ip: &Path, namespaces: &[String], grace: Duration) -> Vec<Error> {
    let present: Vec<String> = namespaces
        .iter()
        .filter(|ns| sys::netns_path(ns).exists())
        .cloned()
        .collect();
    for (pid, _) in sys::pids_in_netns(&present) {
        sys::kill_pid(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && !sys::pids_in_netns(&present).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = sys::pids_in_netns(&present);
        if left.is_empty() || Instant::now() >= deadline {
            break;
        }
        for (pid, _) in left {
            sys::kill_pid(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut errors = Vec::new();
    for ns in &present {
        if let Err(e) = sys::run(ip, &["netns", "delete", ns]) {
            errors.push(e);
        }
    }
    // `ip netns delete` leaves /etc/netns/NS alone.
    for ns in namespaces {
        crate::resolv::remove(ns);
    }
    errors
}

/// Tears down lab `id` from its state file: processes, namespaces, logs and
/// the state file itself.
pub fn down(dir: &Path, id: &str) -> Result<(), Error> {
    let state = LabState::load(dir, id)?;
    let ip = sys::find_tool("ip")?;
    let errors = teardown(&ip, &state.namespaces(), Duration::from_secs(1));
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    remove_state(dir, &state);
    Ok(())
}

/// Removes a lab's state file, and its log directory when that lives in the
/// state directory (labs from `fpn-lab up`).
pub(crate) fn remove_state(dir: &Path, state: &LabState) {
    let _ = std::fs::remove_file(LabState::path(dir, &state.id));
    if state.log_dir.starts_with(dir) {
        let _ = std::fs::remove_dir_all(&state.log_dir);
    }
}

/// Tears down every lab with namespace prefix `prefix`: those with state
/// files and any namespace `{prefix}-*` left by a crashed run. Returns the
/// namespaces removed.
pub fn down_all(dir: &Path, prefix: &str) -> Result<Vec<String>, Error> {
    let ip = sys::find_tool("ip")?;
    let ours = |ns: &String| crate::naming::parse_netns(prefix, ns).is_some();
    let mut doomed: Vec<String> = sys::list_netns().into_iter().filter(ours).collect();
    let labs: Vec<LabState> = LabState::list(dir)
        .into_iter()
        .filter(|s| s.prefix == prefix)
        .collect();
    for s in &labs {
        doomed.extend(
            s.namespaces()
                .into_iter()
                .filter(|ns| sys::netns_path(ns).exists()),
        );
    }
    doomed.sort();
    doomed.dedup();
    let errors = teardown(&ip, &doomed, Duration::from_secs(1));
    for s in &labs {
        remove_state(dir, s);
    }
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(doomed),
    }
}
