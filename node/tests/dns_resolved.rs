//! The systemd-resolved split-DNS set-up: when it applies, the exact command
//! lines, revert on failure and on shutdown, and the real command runner.

use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fpn_node::dns::resolved::{
    CommandLine, CommandRunner, NotPresent, ResolvedProbe, SplitDnsOutcome, SystemRunner, set_up,
};
use fpn_node::error::{Error, Result};

/// Records the commands and fails the one at `fail_at`, if any.
#[derive(Default)]
struct Recorder {
    ran: RefCell<Vec<String>>,
    fail_at: Option<usize>,
}

impl CommandRunner for Recorder {
    fn run(&self, cmd: &CommandLine) -> Result<()> {
        let mut ran = self.ran.borrow_mut();
        ran.push(cmd.to_string());
        if self.fail_at == Some(ran.len() - 1) {
            return Err(Error::SplitDnsCommand {
                command: cmd.to_string(),
                status: "exit status: 1".into(),
                stderr: "Failed to set DNS configuration".into(),
            });
        }
        Ok(())
    }
}

/// A fake system: `runtime` decides whether resolved's directory exists,
/// `tool` whether an executable `resolvectl` is on PATH.
fn probe(dir: &Path, runtime: bool, tool: bool) -> ResolvedProbe {
    let run = dir.join("run-resolve");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    if runtime {
        std::fs::create_dir_all(&run).unwrap();
    }
    if tool {
        let p = bin.join("resolvectl");
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    ResolvedProbe {
        runtime_dir: run,
        path: Some(std::env::join_paths([dir.join("empty"), bin]).unwrap()),
    }
}

#[test]
fn configures_the_zone_on_the_overlay_interface() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let out = set_up(
        &probe(dir.path(), true, true),
        &rec,
        "fpn0",
        "100.64.0.1:53".parse().unwrap(),
        "home.fpn.",
    )
    .unwrap();
    assert_eq!(
        *rec.ran.borrow(),
        [
            "resolvectl dns fpn0 100.64.0.1",
            "resolvectl domain fpn0 ~home.fpn",
            "resolvectl default-route fpn0 false",
        ]
    );
    let SplitDnsOutcome::Configured(split) = out else {
        panic!("not configured: {out:?}");
    };
    assert_eq!(split.ifname(), "fpn0");
    split.revert(&rec).unwrap();
    assert_eq!(rec.ran.borrow().last().unwrap(), "resolvectl revert fpn0");
}

#[test]
fn a_stub_off_port_53_is_given_with_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    for (addr, want) in [
        ("100.64.0.1:5353", "100.64.0.1:5353"),
        ("[fd00:5c::1]:53", "fd00:5c::1"),
        ("[fd00:5c::1]:5353", "[fd00:5c::1]:5353"),
    ] {
        rec.ran.borrow_mut().clear();
        let out = set_up(
            &probe(dir.path(), true, true),
            &rec,
            "fpn0",
            addr.parse().unwrap(),
            "home.fpn",
        )
        .unwrap();
        assert!(matches!(out, SplitDnsOutcome::Configured(_)));
        assert_eq!(rec.ran.borrow()[0], format!("resolvectl dns fpn0 {want}"));
    }
}

#[test]
fn without_resolved_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let stub = "100.64.0.1:53".parse().unwrap();
    for (runtime, tool, why) in [
        (false, true, NotPresent::NotRunning),
        (false, false, NotPresent::NotRunning),
        (true, false, NotPresent::NoResolvectl),
    ] {
        let sub = dir.path().join(format!("{runtime}-{tool}"));
        let rec = Recorder::default();
        let out = set_up(&probe(&sub, runtime, tool), &rec, "fpn0", stub, "home.fpn").unwrap();
        match out {
            SplitDnsOutcome::NotPresent(got) => {
                assert_eq!(got, why);
                let advice = got.advice("home.fpn.", stub);
                assert!(advice.contains("100.64.0.1"), "{advice}");
                assert!(advice.contains("home.fpn"), "{advice}");
            }
            other => panic!("{other:?}"),
        }
        assert!(rec.ran.borrow().is_empty());
    }
    // A non-executable file named resolvectl does not count.
    let sub = dir.path().join("noexec");
    let p = probe(&sub, true, false);
    std::fs::write(sub.join("bin/resolvectl"), "").unwrap();
    let out = set_up(&p, &Recorder::default(), "fpn0", stub, "home.fpn").unwrap();
    assert!(matches!(
        out,
        SplitDnsOutcome::NotPresent(NotPresent::NoResolvectl)
    ));
}

#[test]
fn a_failed_step_is_reverted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder {
        fail_at: Some(1),
        ..Recorder::default()
    };
    let err = set_up(
        &probe(dir.path(), true, true),
        &rec,
        "fpn0",
        "100.64.0.1:53".parse().unwrap(),
        "home.fpn",
    )
    .unwrap_err();
    assert!(matches!(err, Error::SplitDnsCommand { .. }), "{err}");
    assert_eq!(
        *rec.ran.borrow(),
        [
            "resolvectl dns fpn0 100.64.0.1",
            "resolvectl domain fpn0 ~home.fpn",
            "resolvectl revert fpn0",
        ]
    );
}

#[test]
fn the_system_runner_reports_failures() {
    let ok = CommandLine {
        program: "true".into(),
        args: vec![],
    };
    SystemRunner.run(&ok).unwrap();
    let fails = CommandLine {
        program: "sh".into(),
        args: vec!["-c".into(), "echo no such link >&2; exit 3".into()],
    };
    match SystemRunner.run(&fails) {
        Err(Error::SplitDnsCommand { stderr, status, .. }) => {
            assert_eq!(stderr, "no such link");
            assert!(status.contains('3'), "{status}");
        }
        other => panic!("{other:?}"),
    }
    let missing = CommandLine {
        program: "fpn-no-such-program".into(),
        args: vec![],
    };
    assert!(matches!(
        SystemRunner.run(&missing),
        Err(Error::SplitDnsSpawn { .. })
    ));
}
