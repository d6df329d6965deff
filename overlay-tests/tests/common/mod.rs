//! Helpers shared by the lab's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;

/// The fpn-lab binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_fpn-lab");

/// Fails the test (never skips it) when the lab cannot run here.
pub fn need(tools: &[&'static str]) {
    if let Err(e) = fpn_lab::preflight(tools) {
        panic!("the lab tests need root and their tools (CI runs them as root): {e}");
    }
}

/// True while namespace `name` exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Namespaces whose name contains `-{id}-`.
pub fn namespaces_of(id: &str) -> Vec<String> {
    let pat = format!("-{id}-");
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.contains(&pat))
        .collect()
}

/// Pids of processes in namespace `ns` (`ip netns pids`).
pub fn pids_in(ns: &str) -> Vec<u32> {
    let out = std::process::Command::new(fpn_lab::find_tool("ip").unwrap())
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
