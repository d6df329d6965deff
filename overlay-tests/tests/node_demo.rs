//! The README's main command works: `fpn-demo` (what scripts/demo.sh runs,
//! in full: about 35 s in a debug build) passes every step and leaves no
//! namespace behind.

mod common;

use std::time::{Duration, Instant};

#[test]
fn the_demo_passes_every_step_and_cleans_up() {
    common::need(common::OVERLAY_TOOLS);
    let bin = env!("CARGO_BIN_EXE_fpn-demo");
    let start = Instant::now();
    let out = std::process::Command::new(bin)
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
