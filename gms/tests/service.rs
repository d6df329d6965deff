//! `fpn-gms serve` as a systemd service (configs/systemd/fpn-gms.service,
//! `Type=notify`): the real daemon tells the socket in `NOTIFY_SOCKET`
//! `READY=1` once it serves and `STOPPING=1` on SIGTERM; SIGHUP reloads the
//! live keys (log filter, grace) and a broken file on SIGHUP keeps the
//! configuration in force. The unit files themselves are checked by
//! `systemd-analyze verify` in overlay-tests/tests/systemd_units.rs.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The next notification, within [`WAIT`].
fn next(sock: &UnixDatagram, log: &std::path::Path) -> String {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no notification from fpn-gms within the wait ({e}); its log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Waits until `what` is in the file at `log`.
fn wait_log(log: &std::path::Path, what: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {what:?} in the log: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the daemon if the test fails before it stopped it.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: a signal to the child this test spawned.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[test]
fn serve_notifies_systemd_and_sighup_reloads_live_keys_or_keeps_the_old_config() {
    let gms = Gms::init(&[]);
    let cfg_path = gms.data.join("gms.toml");
    // `init` wrote a grace: the test sets its own.
    let original: String = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("grace ="))
        .map(|l| format!("{l}\n"))
        .collect();
    // Top-level keys go before the first [table].
    std::fs::write(
        &cfg_path,
        format!("log = \"warn\"\ngrace = \"10m\"\n{original}"),
    )
    .unwrap();

    let notify_path = gms.tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let log = gms.tmp.path().join("service.log");
    let mut child = Reap(
        Command::new(BIN)
            .args(["serve", "--data", gms.data.to_str().unwrap()])
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;

    // READY=1 only once it serves: the admin socket answers at once.
    assert_eq!(next(&notify, &log), "READY=1");
    let status = gms.json(&["status"]);
    assert_eq!(status["grace_secs"], 600, "{status}");
    // `log = "warn"` is in force: the INFO start-up line is not written.
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains("GMS serving"),
        "log = warn not applied"
    );

    // A valid new file: the live keys change on SIGHUP, systemd is told
    // RELOADING=1 then READY=1.
    std::fs::write(
        &cfg_path,
        format!("log = \"info\"\ngrace = \"7m\"\n{original}"),
    )
    .unwrap();
    signal(child, libc::SIGHUP);
    let reloading = next(&notify, &log);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(&notify, &log), "READY=1");
    assert_eq!(gms.json(&["status"])["grace_secs"], 420);
    // The new filter (info) lets the reload's own INFO line through.
    wait_log(&log, "configuration reloaded");

    // A broken file: logged, and the configuration in force stays.
    std::fs::write(&cfg_path, format!("log = \"warn\"\ngrace = [\n{original}")).unwrap();
    signal(child, libc::SIGHUP);
    wait_log(&log, "reload failed; the configuration in force is kept");
    assert_eq!(gms.json(&["status"])["grace_secs"], 420);
    // An invalid log filter is refused the same way.
    std::fs::write(
        &cfg_path,
        format!("log = \"fpn_gms=loud\"\ngrace = \"1m\"\n{original}"),
    )
    .unwrap();
    signal(child, libc::SIGHUP);
    let text = wait_log(&log, "fpn_gms=loud");
    assert!(text.contains("reload failed"), "{text}");
    assert_eq!(gms.json(&["status"])["grace_secs"], 420);

    // SIGTERM: STOPPING=1, then a clean exit.
    signal(child, libc::SIGTERM);
    assert_eq!(next(&notify, &log), "STOPPING=1");
    let deadline = Instant::now() + WAIT;
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "{st}");
}

#[test]
fn without_notify_socket_serve_runs_as_before() {
    // The harness starts serve without NOTIFY_SOCKET: it must serve.
    let gms = Gms::start_new(&[]);
    assert_eq!(gms.json(&["status"])["zone"], "test.fpn.");
}
