//! fpn-lab: multi-host network topologies in Linux network namespaces, for
//! fpn's integration tests, benchmarks and demos.
//!
//! A topology file (TOML, see docs/LAB.md and configs/lab/) names hosts, the
//! veth links and switches between them with their addresses, routes, NATs
//! (nftables: masquerade or the RFC 4787 mapping, filtering and hairpinning
//! kinds, port forwards, short UDP timeouts, a miniupnpd port-mapping
//! daemon) and per-host commands. [`Lab`]
//! builds it with `ip`, `tc` and `nft`, runs commands and background
//! processes in its hosts, captures packets on its links, moves hosts between
//! networks at runtime, and removes everything when dropped, also when a test
//! panics. The `fpn-lab` binary does the same from a shell.
//!
//! What it never does: touch the root namespace's interfaces (every
//! interface is created inside a lab namespace), write sysctls outside
//! `net.*`, or leave a namespace behind after a `Lab` is dropped.
//! It needs root; [`preflight`] checks that and the tools, so a test fails
//! loudly instead of skipping.
//!
//! ```no_run
//! use std::time::Duration;
//! use fpn_lab::Lab;
//! # fn main() -> Result<(), fpn_lab::Error> {
//! fpn_lab::preflight(&["tcpdump"])?;
//! let lab = Lab::up(fpn_lab::config_path("nat-home.toml"))?;
//! let vps = lab.addr("vps", "pub-vps")?;
//! let cap = lab.capture("inet", "pub-vps", "icmp")?;
//! lab.exec_ok("laptop", ["ping", "-c1", "-W2", &vps.to_string()])?;
//! let pcap = cap.stop()?;
//! assert!(pcap.len() >= 2);
//! lab.roam("laptop", "homelan", "cafelan")?;
//! # Ok(()) }
//! ```

mod build;
mod capture;
mod cidr;
pub mod echo;
mod error;
pub mod http;
pub mod inject;
mod lab;
pub mod naming;
pub mod overlay;
mod pcap;
mod process;
pub mod records;
mod resolv;
pub mod state;
mod sys;
pub mod topology;

pub use capture::Capture;
pub use cidr::Cidr;
pub use error::Error;
pub use lab::{KEEP_LOGS_ENV, Lab, LabCommand, LabOptions};
pub use pcap::{Packet, Pcap};
pub use process::{Output, Process};
pub use state::{EndState, LabState};
pub use sys::{NetnsThread, find_tool, is_root, pid_alive, preflight};
pub use topology::Topology;

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The repository's configs/lab directory (where the example topologies are).
pub fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("configs")
        .join("lab")
}

/// A topology file in [`config_dir`], e.g. `config_path("two-hosts.toml")`.
pub fn config_path(name: &str) -> PathBuf {
    config_dir().join(name)
}

/// The path of a binary built from this workspace (e.g. `"fpn-node"`) for
/// running inside a lab: `FPN_BIN_DIR/NAME` if that variable is set, else
/// next to the running test executable's `deps` directory (where cargo puts
/// the workspace's binaries). Fails with a hint when it is not built.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("FPN_BIN_DIR") {
        Some(dir) => vec![PathBuf::from(dir).join(name)],
        None => {
            let exe =
                std::env::current_exe().map_err(|e| Error::io("locating the test binary", e))?;
            // target/debug/deps/test-hash -> target/debug/NAME; a binary itself
            // lives in target/debug.
            exe.ancestors()
                .skip(1)
                .take(2)
                .map(|d| d.join(name))
                .collect()
        }
    };
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        Error::io(
            format!("finding binary `{name}` (looked at {candidates:?}; build it first: cargo build --bins)"),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
}
