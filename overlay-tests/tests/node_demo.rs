//! The README's main command works: `fpn-demo --quick` (what scripts/demo.sh
//! runs, with shorter transfers: about 40 s in a debug build) passes every
//! step on its NAT'ed network (configs/lab/demo.toml), says which path each
//! pair uses (the home LAN's native path, the relay once the laptop is at
//! the cafe) and leaves no namespace behind. Each step checks what it shows
//! and the demo exits non-zero when one fails, which fails this test.

mod common;

use std::time::{Duration, Instant};

#[test]
fn the_demo_passes_every_step_and_cleans_up() {
    common::need(common::OVERLAY_TOOLS);
    let bin = env!("CARGO_BIN_EXE_fpn-demo");
    let start = Instant::now();
    let out = std::process::Command::new(bin)
        .arg("--quick")
        .output()
        .expect("running fpn-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fpn-demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for n in 1..=7 {
        assert!(
            stdout.contains(&format!("==> Step {n}:")),
            "step {n} missing:\n{stdout}"
        );
    }
    assert!(stdout.contains("All steps passed"), "{stdout}");
    // The pairs' paths as the nodes' status shows them: at home over the
    // LAN, from the cafe through the relay.
    for path in [
        "laptop  -> nas      native  direct LAN",
        "laptop  -> nas      relay   relay (",
        "desktop -> nas      native  direct LAN",
    ] {
        assert!(stdout.contains(path), "no `{path}` in:\n{stdout}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "the demo took {:?}",
        start.elapsed()
    );
    let id = stdout
        .split_whitespace()
        .skip_while(|w| *w != "lab")
        .nth(1)
        .map(|w| w.trim_end_matches(':'))
        .expect("the demo names its lab");
    let left = common::namespaces_of(id);
    assert!(left.is_empty(), "the demo left namespaces behind: {left:?}");
}
