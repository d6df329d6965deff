//! The systemd units in configs/systemd pass `systemd-analyze verify`
//! with no warning (an unknown or misspelt key is only a warning there, so
//! the test fails on any output), and keep the properties the docs promise:
//! `Type=notify`, reload by SIGHUP, the least capabilities, a read-only
//! system. The units name /usr/local/bin; the test points them at the
//! binaries just built, which `verify` checks are executable.

use std::path::{Path, PathBuf};
use std::process::Command;

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/systemd")
}

/// The unit's text with its /usr/local/bin paths pointed at the built binaries.
fn localized(unit: &str) -> String {
    let text = std::fs::read_to_string(units_dir().join(unit))
        .unwrap_or_else(|e| panic!("reading configs/systemd/{unit}: {e}"));
    let mut out = text.clone();
    for bin in ["fpn-node", "fpn-gms"] {
        let built =
            fpn_lab::workspace_binary(bin).expect("cargo build -p fpn-node -p fpn-gms first");
        out = out.replace(&format!("/usr/local/bin/{bin}"), built.to_str().unwrap());
    }
    out
}

/// The value of `key=` in the unit (the last one, as systemd reads it).
fn value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
}

#[test]
fn units_pass_systemd_analyze_verify_and_keep_their_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for unit in ["fpn-node.service", "fpn-gms.service"] {
        let p = dir.path().join(unit);
        std::fs::write(&p, localized(unit)).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/deps.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}): {said}",
        out.status
    );

    for unit in ["fpn-node.service", "fpn-gms.service"] {
        let text = localized(unit);
        assert_eq!(value(&text, "Type"), "notify", "{unit}");
        assert_eq!(
            value(&text, "ExecReload"),
            "/bin/kill -HUP $MAINPID",
            "{unit}"
        );
        assert_eq!(value(&text, "ProtectSystem"), "strict", "{unit}");
        assert_eq!(value(&text, "NoNewPrivileges"), "yes", "{unit}");
        assert_eq!(value(&text, "ProtectHome"), "yes", "{unit}");
        assert_eq!(value(&text, "PrivateTmp"), "yes", "{unit}");
    }
    let node = localized("fpn-node.service");
    let mut caps: Vec<&str> = value(&node, "CapabilityBoundingSet").split(' ').collect();
    caps.sort_unstable();
    assert_eq!(
        caps,
        ["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]
    );
    let families = value(&node, "RestrictAddressFamilies");
    for f in ["AF_NETLINK", "AF_PACKET", "AF_UNIX"] {
        assert!(families.contains(f), "fpn-node needs {f}: {families}");
    }
    let gms = localized("fpn-gms.service");
    assert_eq!(value(&gms, "CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    assert!(!value(&gms, "RestrictAddressFamilies").contains("AF_NETLINK"));
}
