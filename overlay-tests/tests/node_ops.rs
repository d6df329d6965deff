//! Issue 15 (operators), with real nodes in the lab:
//! - `fpn-node why` names the decision rule for an allowed and a refused
//!   peer without sending anything (the node's DPRP counters stay still),
//!   and `status` gives the reason of a refused flow;
//! - `fpn-node up` as a systemd `Type=notify` service: `READY=1` on the
//!   socket in `NOTIFY_SOCKET` once it serves, `RELOADING=1`/`READY=1`
//!   around a SIGHUP reload of the live `log` key (seen in `status`), a
//!   broken file on SIGHUP keeps the configuration in force, `STOPPING=1`
//!   on SIGTERM.
//!
//! Groups: 1 home {a, b}, 2 work {b, d}; a and b are OP, d is CL.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use serde_json::Value;

fn spec() -> Spec {
    Spec::new(
        &[(1, "home"), (2, "work")],
        vec![
            NodeSpec::new("a", Mode::Op, &[1]),
            NodeSpec::new("b", Mode::Op, &[1, 2]),
            NodeSpec::new("d", Mode::Cl, &[2]),
        ],
    )
}

/// `fpn-node why ARGS --json` on node `from`.
fn why(ov: &Overlay, from: &str, args: &[&str]) -> Value {
    let mut a = vec!["why"];
    a.extend_from_slice(args);
    a.push("--json");
    let out = ov.node_cli(from, &a).unwrap();
    assert!(
        out.success(),
        "fpn-node why {args:?} on {from}: {}",
        out.stderr
    );
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn counter(ov: &Overlay, name: &str, key: &str) -> u64 {
    ov.status(name).unwrap()["counters"][key]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn why_names_the_rule_for_an_allowed_and_a_refused_peer_without_sending_anything() {
    let ov = common::overlay(&spec());
    let ge = |n: &str| {
        ov.gms_json(&["ge", "show", n]).unwrap()["id"]
            .as_u64()
            .unwrap()
    };

    // d (CL, group 2) -> b (group 2): allowed, encrypted with group 2.
    let before = counter(&ov, "d", "dprp_started");
    let w = why(&ov, "d", &["b", "--port", "22"]);
    assert_eq!(w["rule"], "shared-group", "{w}");
    assert_eq!(w["action"], "encrypt", "{w}");
    assert_eq!(w["group"], 2, "{w}");
    assert_eq!(w["target"], "b.home.fpn", "{w}");
    assert_eq!(w["own"]["mode"], "closed", "{w}");
    assert_eq!(w["peer"]["groups"], serde_json::json!([1, 2]), "{w}");

    // d -> a (OP, group 1 only): refused, d itself drops it.
    let w = why(&ov, "d", &["a"]);
    assert_eq!(
        (w["rule"].as_str(), w["action"].as_str()),
        (Some("closed-drops"), Some("refuse")),
        "{w}"
    );
    assert_eq!(w["dropped_by"].as_u64(), Some(ge("d")), "{w}");
    assert!(w["reason"].as_str().unwrap().contains("this node"), "{w}");
    // Nothing was negotiated for either answer.
    assert_eq!(counter(&ov, "d", "dprp_started"), before, "why sent a DDE");

    // a (OP) -> d (CL): refused, d drops it; UDP and a port are carried.
    let w = why(&ov, "a", &["d", "--proto", "udp", "--port", "53"]);
    assert_eq!(
        (w["rule"].as_str(), w["proto"].as_str(), w["port"].as_u64()),
        (Some("closed-drops"), Some("udp"), Some(53)),
        "{w}"
    );
    assert_eq!(w["dropped_by"].as_u64(), Some(ge("d")), "{w}");
    // a -> b share group 1; a human answer too.
    let out = ov.node_cli("a", &["why", "b"]).unwrap();
    assert!(
        out.success() && out.stdout.contains("encrypt [shared-group]"),
        "{}",
        out.stdout
    );

    // A real refused flow: status and why give its reason.
    let _echo = common::echo_server(ov.lab(), "d", 7002);
    let to = SocketAddr::new(ov.overlay_addr("d").unwrap().into(), 7002);
    let r = ov
        .lab()
        .run_in("a", move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(5)).map(drop)
        })
        .unwrap();
    assert!(r.is_err(), "a -> d connected");
    let flows = ov.flows_with("a", "d").unwrap();
    let refused: Vec<&Value> = flows.iter().filter(|f| f["action"] == "refuse").collect();
    assert!(!refused.is_empty(), "{flows:?}");
    let reason = refused[0]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.contains("d (GE") && reason.contains("closed"),
        "{reason}"
    );
    let w = why(&ov, "a", &["d", "--port", "7002"]);
    assert_eq!(w["refused"].as_str(), Some(reason.as_str()), "{w}");
}

/// The next datagram on the notify socket, within 15 s.
fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("no notification from fpn-node");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn the_node_notifies_systemd_and_reloads_its_log_key_on_sighup() {
    common::need(common::OVERLAY_TOOLS);
    let lab = fpn_lab::Lab::up(fpn_lab::config_path("overlay.toml")).expect("overlay lab");
    let spec = Spec::new(&[(1, "home")], vec![NodeSpec::new("a", Mode::Op, &[1])]);
    let ov = Overlay::prepare(lab, &spec).unwrap_or_else(|e| panic!("{e}"));
    ov.enroll("a").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // RUST_LOG cleared: the config's `log` key is in force (and reloadable).
    ov.up_with_env(
        "a",
        &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("RUST_LOG", "")],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", ov.log_tails(30)));
    assert_eq!(next(&sock), "READY=1");
    let st = ov.status("a").unwrap();
    assert_eq!(st["config"]["log"], "info", "{}", st["config"]);
    assert_eq!(st["config"]["log_from_env"], false);

    // A new log filter and a key that needs a restart.
    let cfg = ov.node_config_path("a");
    let original = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{original}log = \"warn\"\nmtu = 1300\n")).unwrap();
    let hup = |ov: &Overlay| {
        ov.with_process("a", |p| p.expect("a runs").signal(libc::SIGHUP))
            .unwrap();
    };
    hup(&ov);
    assert!(next(&sock).starts_with("RELOADING=1\nMONOTONIC_USEC="));
    assert_eq!(next(&sock), "READY=1");
    let c = ov.status("a").unwrap()["config"].clone();
    assert_eq!(c["log"], "warn", "{c}");
    assert_eq!(c["reloads"], 1, "{c}");
    assert_eq!(c["restart_pending"], serde_json::json!(["mtu"]), "{c}");
    assert!(c["reload_error"].is_null(), "{c}");

    // A broken file: refused, the configuration in force stays.
    std::fs::write(&cfg, format!("{original}log = [\n")).unwrap();
    hup(&ov);
    assert!(next(&sock).starts_with("RELOADING=1"));
    assert_eq!(next(&sock), "READY=1");
    let c = ov.status("a").unwrap()["config"].clone();
    assert_eq!(
        (c["log"].as_str(), c["reloads"].as_u64()),
        (Some("warn"), Some(1)),
        "{c}"
    );
    assert!(
        c["reload_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{c}"
    );
    // The daemon logged it (a WARN passes the "warn" filter).
    assert!(
        ov.node_log("a").contains("reload failed"),
        "{}",
        ov.node_log("a")
    );

    // SIGTERM: STOPPING=1.
    ov.with_process("a", |p| p.expect("a runs").signal(libc::SIGTERM))
        .unwrap();
    assert_eq!(next(&sock), "STOPPING=1");
}
