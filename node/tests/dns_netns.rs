//! The stub as the lab uses it: inside a network namespace of its own, on
//! an "overlay" address, port 53, upstreams from a resolv.conf that also
//! lists the stub itself, and the namespace's resolv.conf pointing at the
//! stub. Then plain `dig NAME` and `ping NAME` (the C library's resolver)
//! resolve names of the zone, and other names are forwarded.
//!
//! Needs root (ip netns); fails, never skips, without it.

mod dns_util;

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use fpn_node::dns::{DnsConfig, DnsStub, NameTable, Target, Upstreams};

const OVERLAY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 53);

/// A network namespace and its /etc/netns resolv.conf, removed on drop.
struct Netns {
    name: String,
    etc: PathBuf,
}

impl Netns {
    fn new() -> Self {
        let name = format!("fpndns-{}", std::process::id());
        let etc = PathBuf::from("/etc/netns").join(&name);
        let ns = Self { name, etc };
        ns.ip(&["netns", "add", &ns.name]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {} (these tests need root)",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// Runs the upstream and the stub inside `ns` on a thread of their own
/// (setns changes only the calling thread), until `stop` is dropped.
fn serve_in(ns: &str, table: NameTable, resolv: PathBuf) -> (SocketAddr, mpsc::Sender<()>) {
    let file = File::open(format!("/var/run/netns/{ns}")).expect("open the netns");
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // The real upstream on a "public" address.
            let up = dns_util::upstream_at((UPSTREAM, 53).into()).await;
            let mut cfg = DnsConfig::new((OVERLAY, 53).into(), "home.fpn", table).unwrap();
            cfg.upstreams = Upstreams::ResolvConf(resolv);
            let stub = DnsStub::bind(cfg).await.expect("bind the stub on port 53");
            // The resolv.conf lists the stub too: it must be left out.
            assert_eq!(stub.upstreams(), [SocketAddr::from((UPSTREAM, 53))]);
            ready_tx.send(stub.local_addr()).unwrap();
            let serve = tokio::spawn(stub.run());
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            serve.abort();
            up.stop().await;
        });
    });
    let addr = ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the stub starts");
    (addr, stop_tx)
}

#[test]
fn dig_and_ping_by_name_inside_a_namespace() {
    let ns = Netns::new();
    // The addresses live on the namespace's loopback: this test is about
    // names, not links (and the CI kernel has no dummy interfaces).
    ns.ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
    for addr in ["100.64.0.1/32", "100.64.0.2/32", "198.18.0.53/32"] {
        ns.ip(&["-n", &ns.name, "addr", "add", addr, "dev", "lo"]);
    }

    // The stub's view of the system resolver: itself first, then upstream.
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 100.64.0.1\nnameserver 198.18.0.53\n").unwrap();
    // What the lab writes: the namespace's programs ask the stub.
    std::fs::create_dir_all(&ns.etc).unwrap();
    std::fs::write(ns.etc.join("resolv.conf"), "nameserver 100.64.0.1\n").unwrap();

    let table = NameTable::new();
    table.insert("b", Target::peer(PEER)).unwrap();
    let (addr, _stop) = serve_in(&ns.name, table.clone(), resolv);
    assert_eq!(addr, SocketAddr::from((OVERLAY, 53)));

    let dig = |args: &[&str]| {
        let mut full = vec!["dig", "+time=5", "+tries=1", "+short"];
        full.extend_from_slice(args);
        let out = ns.exec(&full);
        assert!(out.status.success(), "dig {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(dig(&["b.home.fpn"]), "100.64.0.2");
    assert_eq!(dig(&["www.example.test"]), "198.18.0.80");
    assert_eq!(dig(&["nope.home.fpn"]), "");

    let ping = ns.exec(&["ping", "-c", "1", "-W", "5", "b.home.fpn"]);
    assert!(ping.status.success(), "ping b.home.fpn: {ping:?}");
    assert!(
        String::from_utf8_lossy(&ping.stdout).contains("100.64.0.2"),
        "{ping:?}"
    );

    // A name added to the table resolves through the C library at once.
    table.insert("c", Target::peer(OVERLAY)).unwrap();
    let ping = ns.exec(&["ping", "-c", "1", "-W", "5", "c.home.fpn"]);
    assert!(ping.status.success(), "ping c.home.fpn: {ping:?}");
}
