//! The lab itself: routed topologies, services, process control, parallel
//! labs and cleanup (after drop, after a panic, after a failed build).

mod common;

use std::time::Duration;

use common::{namespaces_of, need, netns_exists, pids_in};
use fpn_lab::{Error, Lab, LabOptions, Topology, config_path};

#[test]
fn ping_crosses_two_routers_with_static_routes() {
    need(&["ping"]);
    let lab = Lab::up(config_path("routed.toml")).unwrap();
    let server = lab.addr("server", "lan2").unwrap().to_string();
    let out = lab.exec("client", ["ping", "-c1", "-W2", &server]).unwrap();
    assert!(out.success(), "ping failed: {}{}", out.stdout, out.stderr);
    // Two routers decrement the reply's TTL from 64.
    assert!(out.stdout.contains("ttl=62"), "{}", out.stdout);
    let client = lab.addr("client", "lan1").unwrap().to_string();
    lab.exec_ok("server", ["ping", "-c1", "-W2", &client])
        .unwrap();
    let core = lab
        .exec_ok("r1", ["ip", "link", "show", "dev", "core"])
        .unwrap();
    assert!(core.contains("mtu 1400"), "{core}");
    // The routers forward, the end hosts do not.
    let fwd = |h: &str| {
        lab.exec_ok(h, ["cat", "/proc/sys/net/ipv4/ip_forward"])
            .unwrap()
    };
    assert_eq!(fwd("r1").trim(), "1");
    assert_eq!(fwd("client").trim(), "0");
    // IPv6 is off where no host asked for it (quiet captures).
    let v6 = lab
        .exec_ok(
            "client",
            ["cat", "/proc/sys/net/ipv6/conf/lan1/disable_ipv6"],
        )
        .unwrap();
    assert_eq!(v6.trim(), "1");
}

#[test]
fn two_labs_from_one_file_run_side_by_side() {
    need(&["ping"]);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Lab::up(config_path("two-hosts.toml")).unwrap());
        let b = s.spawn(|| Lab::up(config_path("two-hosts.toml")).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.id(), b.id());
    assert_ne!(a.netns("alice").unwrap(), b.netns("alice").unwrap());
    for lab in [&a, &b] {
        // Same addresses in both labs: each namespace set is its own network.
        lab.exec_ok("alice", ["ping", "-c1", "-W2", "198.18.0.2"])
            .unwrap();
        assert_eq!(lab.ifname("alice", "ab").unwrap(), "ab");
    }
    let a_ns = a.state().namespaces();
    drop(a);
    assert!(a_ns.iter().all(|ns| !netns_exists(ns)), "lab a removed");
    b.exec_ok("bob", ["ping", "-c1", "-W2", "198.18.0.1"])
        .unwrap();
}

#[test]
fn drop_kills_processes_and_removes_namespaces() {
    need(&[]);
    let lab = Lab::up(config_path("two-hosts.toml")).unwrap();
    let namespaces = lab.state().namespaces();
    let state_file = fpn_lab::LabState::path(&fpn_lab::state::state_dir(), &lab.id());
    assert!(state_file.exists());
    // A guard the test forgot about, and a process the lab no longer tracks
    // (released): both must die with the lab.
    let leaked = lab.spawn("alice", ["sleep", "300"]).unwrap();
    let pid = leaked.pid();
    std::mem::forget(leaked);
    lab.spawn("bob", ["sleep", "300"]).unwrap().release();
    let bob_ns = lab.netns("bob").unwrap();
    // `ip netns exec` enters the namespace after spawn returns: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut escaped = pids_in(&bob_ns);
    while escaped.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        escaped = pids_in(&bob_ns);
    }
    assert_eq!(escaped.len(), 1, "the released sleep runs in bob");
    let log_dir = lab.log_dir();
    drop(lab);
    for ns in &namespaces {
        assert!(!netns_exists(ns), "{ns} still exists");
    }
    assert!(!fpn_lab::pid_alive(pid as i32), "spawned process survived");
    assert!(
        !fpn_lab::pid_alive(escaped[0] as i32),
        "untracked process survived"
    );
    assert!(!state_file.exists(), "state file left behind");
    assert!(!log_dir.exists(), "log dir left behind");
}

#[test]
fn a_panicking_test_still_cleans_up() {
    need(&[]);
    let seen = std::sync::Mutex::new((Vec::new(), std::path::PathBuf::new()));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::up(config_path("nat-home.toml")).unwrap();
        let _p = lab.spawn("vps", ["sleep", "300"]).unwrap();
        *seen.lock().unwrap() = (lab.state().namespaces(), lab.log_dir());
        panic!("test failure inside a lab");
    }));
    assert!(result.is_err());
    let (seen, log_dir) = seen.into_inner().unwrap();
    // The logs stay as evidence of the failure (then this test tidies up).
    assert!(
        log_dir.join("vps-sleep.log").exists(),
        "logs of a panicking lab are kept"
    );
    std::fs::remove_dir_all(&log_dir).unwrap();
    assert_eq!(seen.len(), 11, "8 hosts and 3 switches");
    for ns in &seen {
        assert!(!netns_exists(ns), "{ns} survived the panic");
    }
}

#[test]
fn a_failed_build_removes_what_it_made() {
    need(&[]);
    let id = fpn_lab::naming::new_id();
    let topo = Topology::parse(
        "[hosts.a]\n[hosts.b]\nrun = [\"echo about to fail >&2; exit 3\"]\n\
         [[links]]\nname = \"ab\"\nends = [{ host = \"a\" }, { host = \"b\" }]\n",
        "<test>",
    )
    .unwrap();
    let opts = LabOptions {
        id: Some(id.clone()),
        ..LabOptions::default()
    };
    let err = opts.up(topo, None).unwrap_err();
    match &err {
        Error::CommandFailed { stderr, .. } => assert!(stderr.contains("about to fail"), "{err}"),
        other => panic!("expected CommandFailed, got {other}"),
    }
    assert!(
        namespaces_of(&id).is_empty(),
        "left behind: {:?}",
        namespaces_of(&id)
    );
}

#[test]
fn run_commands_and_services_from_the_topology() {
    need(&[]);
    let lab = Lab::from_toml(
        r#"
[hosts.a]
run = ["ip addr add 10.99.0.1/32 dev lo"]
services = [
  { name = "web", cmd = "echo host=$FPN_LAB_HOST ready; exec sleep 300", wait_for = "ready" },
  "sleep 301",
]
"#,
    )
    .unwrap();
    let lo = lab
        .exec_ok("a", ["ip", "addr", "show", "dev", "lo"])
        .unwrap();
    assert!(lo.contains("10.99.0.1/32"), "{lo}");
    let web = lab.service("a", "web").expect("service web");
    assert!(web.is_running());
    assert!(web.log().contains("host=a ready"), "{}", web.log());
    assert!(web.log_path().ends_with("a-web.log"));
    assert!(lab.service("a", "sleep").unwrap().is_running());
    assert!(lab.service("a", "nope").is_none());
}

#[test]
fn a_service_that_dies_before_it_is_ready_fails_the_build() {
    need(&[]);
    let err = Lab::from_toml(
        "[hosts.a]\nservices = [{ cmd = \"echo starting; exit 4\", wait_for = \"listening\" }]\n",
    )
    .unwrap_err();
    match err {
        Error::ProcessExited { tail, .. } => assert!(tail.contains("starting"), "{tail}"),
        other => panic!("expected ProcessExited, got {other}"),
    }
}

#[test]
fn exec_reports_status_output_and_timeouts() {
    need(&[]);
    let lab = Lab::up(config_path("two-hosts.toml")).unwrap();
    let out = lab.sh("alice", "echo out; echo err >&2; exit 5").unwrap();
    assert_eq!(out.code(), Some(5));
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    let e = lab
        .exec_ok("alice", ["sh", "-c", "echo nope >&2; exit 1"])
        .unwrap_err();
    assert!(
        matches!(&e, Error::CommandFailed { stderr, .. } if stderr == "nope"),
        "{e}"
    );
    let echoed = lab
        .command("alice", ["cat"])
        .stdin("from stdin")
        .run()
        .unwrap();
    assert_eq!(echoed, "from stdin");
    let env = lab
        .command("bob", ["sh", "-c", "echo $X $FPN_LAB_HOST"])
        .env("X", "x1")
        .run()
        .unwrap();
    assert_eq!(env.trim(), "x1 bob");

    // A hanging command is killed with everything it started.
    let e = lab
        .command("alice", ["sh", "-c", "sleep 30 & sleep 30"])
        .timeout(Duration::from_millis(300))
        .output()
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    let ns = lab.netns("alice").unwrap();
    assert!(
        pids_in(&ns).is_empty(),
        "processes left after the timeout: {:?}",
        pids_in(&ns)
    );

    assert!(matches!(
        lab.exec("carol", ["true"]),
        Err(Error::UnknownHost(_))
    ));
}

#[test]
fn spawned_processes_log_and_stop() {
    need(&[]);
    let lab = Lab::up(config_path("two-hosts.toml")).unwrap();
    let p = lab
        .command(
            "alice",
            [
                "sh",
                "-c",
                "trap 'echo got TERM; exit 0' TERM; echo up; while :; do sleep 0.05; done",
            ],
        )
        .name("looper")
        .spawn()
        .unwrap();
    p.wait_for_log("up", Duration::from_secs(5)).unwrap();
    assert!(p.is_running());
    let status = p.stop().expect("exit status");
    assert!(status.success(), "{status}");
    assert!(p.log().contains("got TERM"), "{}", p.log());
    assert!(!p.is_running());

    let q = lab.spawn("bob", ["sleep", "300"]).unwrap();
    let pid = q.pid() as i32;
    let status = q.kill().unwrap();
    assert!(!status.success());
    assert!(!fpn_lab::pid_alive(pid));

    let r = lab.spawn("bob", ["sleep", "300"]).unwrap();
    let pid = r.pid() as i32;
    drop(r);
    assert!(
        !fpn_lab::pid_alive(pid),
        "dropping the guard kills the process"
    );

    let w = lab.spawn("bob", ["sleep", "300"]).unwrap();
    let e = w
        .wait_for_log("never", Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(e, Error::WaitTimeout { .. }), "{e}");
}

#[test]
fn run_in_puts_sockets_in_the_host_namespace() {
    need(&[]);
    let lab = Lab::up(config_path("two-hosts.toml")).unwrap();
    // Binding to bob's address only works inside bob.
    let bob = lab.addr("bob", "ab").unwrap();
    let listener = lab
        .run_in("bob", move || std::net::TcpListener::bind((bob, 0)))
        .unwrap()
        .expect("bind in bob");
    let port = listener.local_addr().unwrap().port();
    assert!(
        std::net::TcpListener::bind((bob, 0)).is_err(),
        "the test's own namespace lacks bob's address"
    );
    std::thread::spawn(move || fpn_lab::echo::serve_tcp(listener));
    let target = std::net::SocketAddr::new(bob, port);
    lab.wait_for_tcp("alice", target, Duration::from_secs(5))
        .unwrap();
    let seen = lab
        .run_in("alice", move || {
            fpn_lab::echo::whoami_tcp(target, Duration::from_secs(5))
        })
        .unwrap()
        .unwrap();
    assert_eq!(seen.ip(), lab.addr("alice", "ab").unwrap());
}

#[test]
fn links_get_rate_limits_and_delay_where_the_kernel_can() {
    need(&[]);
    let rate = Lab::from_toml(
        "[hosts.a]\n[hosts.b]\n[[links]]\nname = \"ab\"\nrate = \"10mbit\"\nmtu = 1280\n\
         ends = [{ host = \"a\", addr = \"198.18.0.1/24\" }, { host = \"b\", addr = \"198.18.0.2/24\" }]\n",
    )
    .unwrap();
    let tc = fpn_lab::find_tool("tc").unwrap();
    let qdisc = |lab: &Lab, host: &str| {
        let ns = lab.netns(host).unwrap();
        let out = std::process::Command::new(&tc)
            .args(["-n", &ns, "qdisc", "show", "dev", "ab"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for h in ["a", "b"] {
        let q = qdisc(&rate, h);
        assert!(q.contains("tbf") && q.contains("rate 10Mbit"), "{h}: {q}");
    }
    rate.exec_ok("a", ["ping", "-c1", "-W2", "198.18.0.2"])
        .unwrap();

    let delayed = Lab::from_toml(
        "[hosts.a]\n[hosts.b]\n[[links]]\nname = \"ab\"\ndelay = \"10ms\"\nloss = \"0%\"\n\
         ends = [{ host = \"a\" }, { host = \"b\" }]\n",
    );
    // netem is a kernel option (CONFIG_NET_SCH_NETEM); where it is missing
    // the lab must say so, not build a link without the delay.
    let probe = Lab::from_toml("[hosts.p]\n").unwrap();
    let ns = probe.netns("p").unwrap();
    let netem_ok = std::process::Command::new(&tc)
        .args([
            "-n", &ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ])
        .output()
        .unwrap()
        .status
        .success();
    match delayed {
        Ok(lab) => {
            assert!(netem_ok);
            let q = qdisc(&lab, "a");
            assert!(q.contains("netem") && q.contains("delay 10ms"), "{q}");
        }
        Err(Error::Unsupported { feature, .. }) => {
            assert!(!netem_ok, "netem works here, yet the lab said unsupported");
            assert!(feature.contains("netem"), "{feature}");
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[test]
fn hosts_get_their_own_resolv_conf() {
    need(&[]);
    let text = r#"
[hosts.alice]
resolv_conf = "nameserver 198.18.0.2\nsearch home.fpn\n"
[hosts.bob]
[[links]]
name = "ab"
ends = [{ host = "alice", addr = "198.18.0.1/24" }, { host = "bob", addr = "198.18.0.2/24" }]
"#;
    let lab = Lab::from_toml(text).unwrap();
    let alice_ns = lab.netns("alice").unwrap();
    let file = std::path::Path::new("/etc/netns")
        .join(&alice_ns)
        .join("resolv.conf");
    let machine = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let cat = |host: &str| lab.exec_ok(host, ["cat", "/etc/resolv.conf"]).unwrap();
    assert_eq!(cat("alice"), "nameserver 198.18.0.2\nsearch home.fpn\n");
    assert_eq!(
        cat("bob"),
        machine,
        "a host without resolv_conf uses the machine's"
    );

    // A process that is running keeps its file; new ones see the new one.
    let sleeper = lab
        .spawn("alice", ["sh", "-c", "echo started; sleep 30"])
        .unwrap();
    sleeper
        .wait_for_log("started", Duration::from_secs(5))
        .unwrap();
    lab.set_resolv_conf("bob", "nameserver 100.64.0.3").unwrap();
    lab.set_resolv_conf("alice", "nameserver 100.64.0.2\n")
        .unwrap();
    assert_eq!(cat("alice"), "nameserver 100.64.0.2\n");
    assert_eq!(cat("bob"), "nameserver 100.64.0.3\n");
    let old = lab
        .exec_ok(
            "alice",
            [
                "nsenter",
                "-t",
                &sleeper.pid().to_string(),
                "-m",
                "cat",
                "/etc/resolv.conf",
            ],
        )
        .unwrap();
    assert_eq!(old, "nameserver 198.18.0.2\nsearch home.fpn\n");
    assert!(
        lab.set_resolv_conf("alice", "nameserver 1.2.3.4\0")
            .is_err(),
        "NUL refused"
    );
    lab.clear_resolv_conf("bob").unwrap();
    assert_eq!(cat("bob"), machine);

    drop(sleeper);
    lab.down().unwrap();
    assert!(!file.exists(), "teardown removes /etc/netns/NS");
    assert!(!file.parent().unwrap().exists());
}
