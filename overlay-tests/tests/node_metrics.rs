//! Issue 15 part 2: `/metrics` on fpn-node and fpn-gms. A real HTTP client
//! (curl, inside each daemon's namespace) scrapes both before, during and
//! after an iperf3 transfer between two nodes, and the numbers move as the
//! traffic does: a's bytes to b grow by at least what iperf3 sent, the
//! negotiation is counted and timed, b's path label says what `status`
//! says; the GMS counts its sessions, enrollments, admin changes, DNS
//! requests and updates and a rotation, which reaches the node's key
//! version. A node without `[metrics]` has no listener, and an address the
//! daemon cannot bind stops it with the typed error that names the key.

mod common;

use std::time::{Duration, Instant};

use common::{iperf_server, overlay};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};

const NODE_METRICS: &str = "127.0.0.1:9477";
const GMS_METRICS: &str = "127.0.0.1:9478";
/// Not an address of any lab host (TEST-NET-2): nothing can bind it.
const FOREIGN: &str = "198.51.100.7";

#[test]
fn both_daemons_export_metrics_that_move_with_a_transfer() {
    let mut spec = Spec::new(
        &[(1, "home")],
        vec![
            NodeSpec {
                config: format!("[metrics]\nlisten = \"{NODE_METRICS}\"\n"),
                ..NodeSpec::new("a", Mode::Op, &[1])
            },
            // b keeps the default: no metrics.
            NodeSpec::new("b", Mode::Op, &[1]),
        ],
    );
    spec.gms_config = format!("[metrics]\nlisten = \"{GMS_METRICS}\"\n");
    let ov = overlay(&spec);
    let lab = ov.lab();
    let gms_host = ov.gms_host().to_owned();
    let node = |ov: &Overlay| scrape(ov, "a", NODE_METRICS);
    let gms = || scrape(&ov, &gms_host, GMS_METRICS);

    // Off by default: b's daemon listens on no TCP port but its DNS stub's.
    let b_tcp = fpn_node_tcp_ports(&ov, "b");
    assert!(
        b_tcp.iter().all(|p| *p == 53),
        "b has no [metrics] yet its fpn-node listens on TCP {b_tcp:?}"
    );
    let refused = lab
        .exec(
            "b",
            [
                "curl",
                "-sS",
                "-m",
                "3",
                &format!("http://{NODE_METRICS}/metrics"),
            ],
        )
        .unwrap();
    assert!(
        !refused.success(),
        "b answered /metrics: {}",
        refused.stdout
    );

    // The GMS: what set-up did (one group, two GEs added, two tokens, two
    // enrollments, two sessions) and the records it wrote into its zone.
    let g0 = gms();
    assert_eq!(g0.get("fpn_gms_ges", &[]), Some(2.0), "{}", g0.text);
    assert_eq!(g0.get("fpn_gms_sessions", &[]), Some(2.0), "{}", g0.text);
    assert_eq!(g0.get("fpn_gms_enrollments_total", &[]), Some(2.0));
    for (kind, n) in [
        ("group add", 1.0),
        ("ge add", 2.0),
        ("token create", 2.0),
        ("ge revoke", 0.0),
    ] {
        assert_eq!(
            g0.get("fpn_gms_admin_changes_total", &[("kind", kind)]),
            Some(n),
            "admin changes {kind}: {}",
            g0.text
        );
    }
    assert_eq!(
        g0.get("fpn_gms_key_version", &[("group", "1"), ("name", "home")]),
        Some(1.0)
    );
    assert_eq!(g0.get("fpn_gms_rotations_total", &[]), Some(0.0));
    let g0 = wait_for(&gms, "the GMS's own zone writes", |m| {
        m.get(
            "fpn_gms_dns_updates_total",
            &[("source", "gms"), ("result", "applied")],
        )
        .unwrap_or(0.0)
            >= 2.0
    });
    let gms_ip = ov.gms_addr().ip().to_string();
    let a_fqdn = Overlay::fqdn("a");
    for _ in 0..3 {
        lab.exec_ok(
            "b",
            [
                "dig",
                "+short",
                "+time=2",
                "+tries=1",
                &format!("@{gms_ip}"),
                &a_fqdn,
                "A",
            ],
        )
        .unwrap();
    }
    let g1 = gms();
    let udp = ("transport", "udp");
    assert!(
        g1.delta(&g0, "fpn_gms_dns_requests_total", &[udp]) >= 3.0,
        "three dig queries, DNS requests {} -> {}",
        g0.get("fpn_gms_dns_requests_total", &[udp]).unwrap_or(-1.0),
        g1.get("fpn_gms_dns_requests_total", &[udp]).unwrap_or(-1.0)
    );

    // The node before any flow to b.
    let b = Overlay::fqdn("b");
    let _iperf = iperf_server(lab, "b");
    let n0 = node(&ov);
    let b_ge = ov.status("b").unwrap()["ge"].as_u64().unwrap().to_string();
    let out_b = [("peer", "b"), ("ge", b_ge.as_str()), ("direction", "out")];
    let before = n0.get("fpn_node_peer_bytes_total", &out_b).unwrap_or(0.0);
    let native_before = n0
        .get(
            "fpn_node_carrier_bytes_total",
            &[("carrier", "native"), ("direction", "out")],
        )
        .unwrap();
    let started0 = n0.get("fpn_node_negotiations_started_total", &[]).unwrap();

    // During a 4 s transfer: a's bytes to b already grow.
    let report = lab.log_dir().join("metrics-iperf.json");
    let report_arg = report.to_string_lossy().into_owned();
    let client = lab
        .command(
            "a",
            [
                "iperf3",
                "-c",
                &b,
                "-t",
                "4",
                "-J",
                "--logfile",
                &report_arg,
            ],
        )
        .name("iperf3-client")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    let during = node(&ov);
    let mid = during
        .get("fpn_node_peer_bytes_total", &out_b)
        .unwrap_or(0.0);
    assert!(
        mid > before + 100_000.0,
        "a's bytes to b during the transfer: {before} -> {mid}\n{}",
        during.text
    );
    let status = client.wait_timeout(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "iperf3 -c: {}", client.log());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let sent = json["end"]["sum_sent"]["bytes"].as_f64().unwrap_or(0.0);
    assert!(sent > 1_000_000.0, "iperf3 sent only {sent} bytes: {json}");

    // After it: at least what iperf3 sent (its payload; the counters see
    // whole packets), on the peer and on the carrier b's path names.
    let n1 = node(&ov);
    if std::env::var_os("FPN_TEST_SHOW_METRICS").is_some() {
        eprintln!("--- a's /metrics after the transfer\n{}", n1.text);
    }
    let grown = n1.get("fpn_node_peer_bytes_total", &out_b).unwrap() - before;
    assert!(
        grown >= sent,
        "a's bytes to b grew {grown}, iperf3 sent {sent}"
    );
    let st = ov.status("a").unwrap();
    let path = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "b")
        .and_then(|p| p["carrier"].as_str())
        .unwrap()
        .to_owned();
    for kind in ["native", "quic", "relay"] {
        assert_eq!(
            n1.get(
                "fpn_node_peer_path",
                &[("peer", "b"), ("ge", &b_ge), ("path", kind)]
            ),
            Some(if kind == path { 1.0 } else { 0.0 }),
            "b's path label {kind}; status says {path}"
        );
    }
    assert_eq!(path, "native", "the lab's two nodes talk natively");
    let native = n1
        .get(
            "fpn_node_carrier_bytes_total",
            &[("carrier", "native"), ("direction", "out")],
        )
        .unwrap();
    assert!(
        native - native_before >= sent,
        "native carrier bytes out grew {}, iperf3 sent {sent}",
        native - native_before
    );
    // The negotiation of the iperf3 flows: started here, completed, timed.
    let started = n1.get("fpn_node_negotiations_started_total", &[]).unwrap();
    assert!(
        started > started0,
        "no negotiation counted: {started0} -> {started}"
    );
    assert!(
        n1.get("fpn_node_negotiations_completed_total", &[])
            .unwrap()
            >= 1.0
    );
    let timed = n1
        .get("fpn_node_negotiation_duration_seconds_count", &[])
        .unwrap();
    assert!(timed >= 1.0, "{}", n1.text);
    let sum = n1
        .get("fpn_node_negotiation_duration_seconds_sum", &[])
        .unwrap();
    assert!(
        sum > 0.0 && sum < timed * 5.0,
        "duration sum {sum} for {timed}"
    );
    assert_eq!(
        n1.get(
            "fpn_node_negotiation_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(timed)
    );
    assert!(n1.get("fpn_node_flows", &[("action", "encrypt")]).unwrap() >= 1.0);
    assert_eq!(n1.get("fpn_node_gms_connected", &[]), Some(1.0));
    assert_eq!(n1.get("fpn_node_key_version", &[("group", "1")]), Some(1.0));

    // A rotation: the GMS counts it and the node's key version follows.
    ov.gms_admin(&["rotate", "--group", "1"]).unwrap();
    let g2 = gms();
    if std::env::var_os("FPN_TEST_SHOW_METRICS").is_some() {
        eprintln!("--- the GMS's /metrics after the rotation\n{}", g2.text);
    }
    assert_eq!(g2.get("fpn_gms_rotations_total", &[]), Some(1.0));
    assert_eq!(
        g2.get("fpn_gms_key_version", &[("group", "1"), ("name", "home")]),
        Some(2.0)
    );
    assert_eq!(
        g2.get("fpn_gms_admin_changes_total", &[("kind", "ge add")]),
        Some(2.0),
        "a rotation is no admin change of a GE"
    );
    // Every series the Grafana dashboard queries is one the daemons export.
    let dashboard =
        std::fs::read_to_string(fpn_lab::config_dir().join("../grafana/fpn.json")).unwrap();
    let queried = series_names(&dashboard);
    assert!(queried.len() >= 20, "{queried:?}");
    for name in &queried {
        // A sample, or a family declared without one yet (b's RTT: no
        // QUIC connection on a native path).
        let exported = [&n1.text, &g2.text].iter().any(|t| {
            t.lines().any(|l| {
                l.strip_prefix(name.as_str())
                    .is_some_and(|r| r.starts_with([' ', '{']))
                    || l.starts_with(&format!("# TYPE {name} "))
            })
        });
        assert!(
            exported,
            "configs/grafana/fpn.json queries {name}, which nothing exports"
        );
    }

    wait_for(
        || node(&ov),
        "the node's key version after the rotation",
        |m| m.get("fpn_node_key_version", &[("group", "1")]) == Some(2.0),
    );

    // An address the daemon cannot bind: b's start fails at once, with the
    // key and the address in the message.
    assert!(ov.down("b").unwrap(), "b stopped cleanly");
    let bad = lab.log_dir().join("node-b-bad-metrics.toml");
    std::fs::write(
        &bad,
        format!("split_dns = false\n[metrics]\nlisten = \"{FOREIGN}:9477\"\n"),
    )
    .unwrap();
    let bad_arg = bad.to_string_lossy().into_owned();
    let t = Instant::now();
    let out = ov.node_cli("b", &["up", "--config", &bad_arg]).unwrap();
    assert!(!out.success(), "b started with metrics on {FOREIGN}");
    assert!(
        out.stderr.contains(&format!(
            "metrics listen = \"{FOREIGN}:9477\": cannot listen there"
        )),
        "{}",
        out.stderr
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    // Not an address at all: the configuration is refused before anything starts.
    std::fs::write(&bad, "[metrics]\nlisten = \"localhost\"\n").unwrap();
    let out = ov.node_cli("b", &["up", "--config", &bad_arg]).unwrap();
    assert!(!out.success());
    assert!(
        out.stderr.contains("config") && out.stderr.contains("socket address"),
        "{}",
        out.stderr
    );

    // The same for the GMS.
    ov.kill_gms();
    let cfg = ov.gms_config_path();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(GMS_METRICS, &format!("{FOREIGN}:9478"));
    std::fs::write(&cfg, text).unwrap();
    let err = ov.gms_admin(&["serve"]).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "metrics listen = \"{FOREIGN}:9478\": cannot listen there"
        )),
        "{err}"
    );
}

/// One scrape: the page and its samples.
struct Page {
    text: String,
}

impl Page {
    /// The value of sample `name{labels}` (labels in the order the daemon
    /// writes them).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let key = if labels.is_empty() {
            name.to_owned()
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", l.join(","))
        };
        self.text.lines().find_map(|line| {
            let (k, v) = line.rsplit_once(' ')?;
            (k == key).then(|| v.parse().ok()).flatten()
        })
    }

    /// How much a sample grew since `earlier`.
    fn delta(&self, earlier: &Page, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0) - earlier.get(name, labels).unwrap_or(0.0)
    }
}

/// `curl http://ADDR/metrics` inside `host`'s namespace.
fn scrape(ov: &Overlay, host: &str, addr: &str) -> Page {
    let out = ov
        .lab()
        .exec(
            host,
            [
                "curl",
                "-sS",
                "-f",
                "-m",
                "5",
                &format!("http://{addr}/metrics"),
            ],
        )
        .unwrap();
    assert!(out.success(), "scraping {addr} in {host}: {}", out.stderr);
    assert!(out.stdout.ends_with("# EOF\n"), "{}", out.stdout);
    Page { text: out.stdout }
}

/// Scrapes until `ok` holds (at most 10 s).
fn wait_for(mut scrape: impl FnMut() -> Page, what: &str, ok: impl Fn(&Page) -> bool) -> Page {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = scrape();
        if ok(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "{what}: never seen\n{}", p.text);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `fpn_node_*` and `fpn_gms_*` series names in `text`.
fn series_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for prefix in ["fpn_node_", "fpn_gms_"] {
        for (i, _) in text.match_indices(prefix) {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// The TCP ports fpn-node listens on in `host` (`ss -ltnp`).
fn fpn_node_tcp_ports(ov: &Overlay, host: &str) -> Vec<u16> {
    let out = ov.lab().exec_ok(host, ["ss", "-Hltnp"]).unwrap();
    out.lines()
        .filter(|l| l.contains("\"fpn-node\""))
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|local| local.rsplit_once(':'))
        .filter_map(|(_, p)| p.parse().ok())
        .collect()
}
