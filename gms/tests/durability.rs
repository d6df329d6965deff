//! Durability of acknowledged changes, checked from outside the process:
//! the real `fpn-gms serve` under `strace` must fsync/fdatasync its sled log
//! between receiving each change and acknowledging it, and a crash exactly
//! between write and sync (the `FPN_GMS_FAILPOINT` test hook) must lose no
//! acknowledged change and leave a store that opens cleanly.
//!
//! Needs `strace` (scripts/deps.sh installs it); without it the trace tests
//! fail, naming the missing tool.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use fpn_gms::admin::{self, AdminRequest, GeView};

/// Changes issued one at a time in the trace test.
const SEQUENTIAL: usize = 12;
/// Changes issued at once in the group commit test.
const CONCURRENT: usize = 16;

/// Wall-clock seconds, as `strace -ttt` prints them.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn ge_add(name: &str) -> AdminRequest {
    AdminRequest::GeAdd {
        name: name.into(),
        kind: Some("ges".into()),
        mode: Some("op".into()),
        groups: vec![],
        protect: vec![],
    }
}

/// `fpn-gms serve` under `strace`, recording fsync, fdatasync and
/// sync_file_range with wall-clock times and the files behind the fds.
struct Traced {
    strace: Child,
    trace: PathBuf,
    socket: PathBuf,
}

impl Traced {
    fn start(gms: &Gms) -> Self {
        match Command::new("strace").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            _ => panic!(
                "strace is needed by this test: run scripts/deps.sh (apt-get install strace)"
            ),
        }
        let trace = gms.tmp.path().join("strace.txt");
        let log = std::fs::File::create(gms.tmp.path().join("serve-traced.log")).unwrap();
        let strace = Command::new("strace")
            .args([
                "-f",
                "-ttt",
                "-y",
                "-e",
                "trace=fsync,fdatasync,sync_file_range",
            ])
            .arg("-o")
            .arg(&trace)
            .args([BIN, "serve", "--data"])
            .arg(&gms.data)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut t = Self {
            strace,
            trace,
            socket: gms.socket(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if admin::request(&t.socket, &AdminRequest::Status, WAIT).is_ok_and(|r| r.ok) {
                return t;
            }
            if let Some(st) = t.strace.try_wait().unwrap() {
                panic!(
                    "strace/serve exited with {st} (ptrace not permitted here?): {}",
                    std::fs::read_to_string(gms.tmp.path().join("serve-traced.log"))
                        .unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "traced server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGTERM to the traced process) and returns the
    /// times of the syncs of sled's log file.
    fn stop(mut self) -> Vec<f64> {
        self.signal_server(libc::SIGTERM);
        let deadline = Instant::now() + WAIT;
        while self.strace.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "traced server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        log_syncs(&std::fs::read_to_string(&self.trace).unwrap())
    }

    /// Signals the server, strace's child (gone once strace exited).
    fn signal_server(&self, sig: libc::c_int) {
        let pid = self.strace.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace() {
            if let Ok(child) = child.parse::<libc::pid_t>() {
                // SAFETY: kill(2) on the process this test started under strace.
                unsafe { libc::kill(child, sig) };
            }
        }
    }
}

impl Drop for Traced {
    /// A failed test leaves no server or strace behind.
    fn drop(&mut self) {
        self.signal_server(libc::SIGKILL);
        let _ = self.strace.kill();
        let _ = self.strace.wait();
    }
}

/// A child process killed when the test ends, whichever way.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Times at which an fsync or fdatasync of sled's log (`.../db/db`) was
/// entered and returned 0 (an `<unfinished ...>` line counts once resumed
/// with 0). `sync_file_range` is deliberately not a sync.
fn log_syncs(trace: &str) -> Vec<f64> {
    let mut unfinished = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in trace.lines() {
        // "PID TIME CALL": strace pads the pid to a fixed width.
        let Some((pid, line)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((ts, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        let is_sync = rest.starts_with("fsync(") || rest.starts_with("fdatasync(");
        if is_sync && rest.contains("/db/db>") {
            if rest.ends_with("<unfinished ...>") {
                unfinished.insert(pid.to_owned(), ts);
            } else if rest.ends_with("= 0") {
                out.push(ts);
            }
        } else if (rest.starts_with("<... fsync resumed>")
            || rest.starts_with("<... fdatasync resumed>"))
            && let Some(entered) = unfinished.remove(pid)
            && rest.ends_with("= 0")
        {
            out.push(entered);
        }
    }
    out
}

#[test]
fn the_trace_parser_reads_padded_pids_and_resumed_calls() {
    let trace = "\
2386  1796339156.003316 fsync(9</d/gms/db/db>) = 0
2396  1796339156.008874 fdatasync(9</d/gms/db/db> <unfinished ...>
2386  1796339156.013088 fsync(12</d/gms/db/conf>) = 0
2396  1796339156.013004 <... fdatasync resumed>) = 0
12345 1796339157.000001 sync_file_range(9</d/gms/db/db>, 0, 12, 7) = 0
12345 1796339157.000002 fdatasync(9</d/gms/db/db>) = -1 EIO (Input/output error)
";
    assert_eq!(log_syncs(trace), vec![1796339156.003316, 1796339156.008874]);
}

/// How many syncs fall in `[from, to]`.
fn syncs_between(syncs: &[f64], from: f64, to: f64) -> usize {
    syncs.iter().filter(|t| (from..=to).contains(*t)).count()
}

#[test]
fn every_acknowledged_ge_add_is_preceded_by_a_sync_of_the_log() {
    let gms = Gms::init(&["--no-dns"]);
    let traced = Traced::start(&gms);
    let mut windows = Vec::new();
    for i in 0..SEQUENTIAL {
        // The real CLI, as an operator runs it.
        let sent = now();
        let out = gms.ok(&[
            "ge",
            "add",
            &format!("seq{i}"),
            "--kind",
            "ges",
            "--mode",
            "op",
        ]);
        let acked = now();
        assert!(!out.is_empty());
        windows.push((sent, acked));
    }
    let syncs = traced.stop();
    for (i, (sent, acked)) in windows.iter().enumerate() {
        assert!(
            syncs_between(&syncs, *sent, *acked) >= 1,
            "ge add #{i} was acknowledged without an fsync/fdatasync of sled's log \
             between request and answer ({} syncs in the whole trace)",
            syncs.len()
        );
    }
}

#[test]
fn concurrent_ge_adds_share_syncs_and_each_waits_for_one() {
    let gms = Gms::init(&["--no-dns"]);
    let traced = Traced::start(&gms);
    let socket = gms.socket();
    let start = now();
    let workers: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let sent = now();
                let r = admin::request(&socket, &ge_add(&format!("par{i}")), WAIT).unwrap();
                assert!(r.ok, "{:?}", r.error);
                (sent, now())
            })
        })
        .collect();
    let windows: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let end = now();
    let syncs = traced.stop();
    for (i, (sent, acked)) in windows.iter().enumerate() {
        assert!(
            syncs_between(&syncs, *sent, *acked) >= 1,
            "concurrent ge add #{i} was acknowledged without a sync in between"
        );
    }
    // Not a pass/fail criterion (it depends on timing): how many syncs the
    // group commit needed for the batch.
    eprintln!(
        "{CONCURRENT} concurrent ge add: {} syncs of the log in {:.1} ms",
        syncs_between(&syncs, start, end),
        (end - start) * 1e3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_and_a_rotation_push_come_after_a_sync() {
    let gms = Gms::init(&["--no-dns"]);
    let traced = Traced::start(&gms);
    gms.ok(&["group", "add", "1", "--name", "home"]);
    gms.ok(&[
        "ge", "add", "laptop", "--kind", "ges", "--mode", "op", "--group", "1",
    ]);
    let token = gms.token("laptop");
    // Enrollment marks the token used and stores the certificate: the node
    // gets its identity only once that is durable.
    let t0 = now();
    let id = fpn_gms::client::enroll(&token, &endpoint()).await.unwrap();
    let t1 = now();
    let session = connect(id, None).await;
    // A rotation's new key reaches the node only once it is durable.
    let t2 = now();
    let socket = gms.socket();
    let rotate = std::thread::spawn(move || {
        admin::request(&socket, &AdminRequest::Rotate { group: Some(1) }, WAIT).unwrap()
    });
    session
        .wait_for(WAIT, |st| {
            st.keys
                .current(fpn_proto::ge::GroupId(1))
                .is_some_and(|(v, _)| v == fpn_proto::keys::KeyVersion(2))
        })
        .await
        .expect("the rotated key arrives");
    let t3 = now();
    assert!(rotate.join().unwrap().ok);
    drop(session);
    let syncs = traced.stop();
    assert!(
        syncs_between(&syncs, t0, t1) >= 1,
        "enrollment answered without a sync"
    );
    assert!(
        syncs_between(&syncs, t2, t3) >= 1,
        "the rotated key was pushed without a sync"
    );
}

/// Starts `serve` with the failpoint armed for sync round `round`.
fn start_with_failpoint(gms: &Gms, round: u32) -> (KillOnDrop, PathBuf) {
    let log = gms.tmp.path().join("serve-failpoint.log");
    let child = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(&gms.data)
        .env(
            fpn_gms::store::Failpoint::ENV,
            format!("after-write-before-sync:{round}"),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let deadline = Instant::now() + WAIT;
    while !admin::request(&gms.socket(), &AdminRequest::Status, WAIT).is_ok_and(|r| r.ok) {
        assert!(Instant::now() < deadline, "server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, log)
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "the failpoint did not fire");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ge_names(gms: &Gms) -> Vec<String> {
    let ges: Vec<GeView> = serde_json::from_value(gms.admin(AdminRequest::GeList)).unwrap();
    ges.into_iter().map(|g| g.name).collect()
}

#[test]
fn a_crash_between_write_and_sync_loses_no_acknowledged_change() {
    const ACKED: u32 = 5;
    let mut gms = Gms::init(&["--no-dns"]);
    // Each ge add is one sync round: the one after ACKED aborts.
    let (mut child, log) = start_with_failpoint(&gms, ACKED + 1);
    for i in 0..ACKED {
        let r = gms.try_admin(&ge_add(&format!("fp{i}"))).unwrap();
        assert!(r.ok, "{:?}", r.error);
    }
    let doomed = gms.try_admin(&ge_add("doomed"));
    assert!(
        !doomed.as_ref().is_ok_and(|r| r.ok),
        "a change was acknowledged although its sync never ran: {doomed:?}"
    );
    let st = wait_exit(&mut child.0);
    assert_eq!(
        st.signal(),
        Some(libc::SIGABRT),
        "serve ended with {st}, not by the failpoint: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("aborting after write, before sync")
    );

    // The store opens cleanly; every acknowledged change is there; the
    // unacknowledged one may or may not be.
    gms.start();
    let names = ge_names(&gms);
    for i in 0..ACKED {
        assert!(
            names.contains(&format!("fp{i}")),
            "acknowledged fp{i} lost: {names:?}"
        );
    }
    let expected = ACKED as usize + usize::from(names.iter().any(|n| n == "doomed"));
    assert_eq!(names.len(), expected, "{names:?}");
    // And it takes changes again, with ids and overlay addresses that do
    // not collide with what survived.
    gms.admin(ge_add("after"));
    let ges: Vec<GeView> = serde_json::from_value(gms.admin(AdminRequest::GeList)).unwrap();
    let mut overlays: Vec<_> = ges.iter().map(|g| g.overlay).collect();
    overlays.sort();
    overlays.dedup();
    assert_eq!(overlays.len(), ges.len());
}

#[test]
fn an_unknown_failpoint_refuses_to_start() {
    let gms = Gms::init(&["--no-dns"]);
    let out = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(&gms.data)
        .env(fpn_gms::store::Failpoint::ENV, "after-lunch")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown failpoint"), "{err}");
    assert!(!Path::new(&gms.socket()).exists());
}
